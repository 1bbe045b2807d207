// cuda_test.h: what the GPU test programs (test_cuda_ops.c, test_cuda_layer.c)
// share: a failure counter with EXPECT (print the line and go on), and device
// copies that end the program with the CUDA error on failure. Header-only,
// included by one test program each.
#ifndef MOE_TESTS_CUDA_TEST_H
#define MOE_TESTS_CUDA_TEST_H

#include <stdio.h>
#include <stdlib.h>

#include "core/status.h"
#include "cuda/ops.h"

static int failures;
#define EXPECT(c, ...)                                           \
    do {                                                         \
        if (!(c)) {                                              \
            failures++;                                          \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
            fprintf(stderr, __VA_ARGS__);                        \
            fputc('\n', stderr);                                 \
        }                                                        \
    } while (0)

static void die(const struct moe_err *err)
{
    fprintf(stderr, "%s\n", err->msg);
    exit(1);
}

// Device copy of bytes of host x (x NULL: uninitialised device memory).
static inline void *dev(const void *x, size_t bytes)
{
    struct moe_err err;
    void *d;
    if (moe_cuda_malloc(&d, bytes, "test", &err) || (x && moe_cuda_to_device(d, x, bytes, &err)))
        die(&err);
    return d;
}

static inline void host(void *dst, const void *d, size_t bytes)
{
    struct moe_err err;
    if (moe_cuda_to_host(dst, d, bytes, &err))
        die(&err);
}

#endif
