// cuda_test.h: what the GPU test programs (test_cuda_ops.c, test_cuda_layer.c,
// test_cuda_model.c) share: their start (the device probe, or with
// -DMOE_TEST_CUDA_HOST the host emulation's banner; the CPU library's GEMMs),
// a failure counter with EXPECT (print the line and go on), and device copies
// that end the program with the CUDA error on failure. Header-only, included
// by one test program each.
#ifndef MOE_TESTS_CUDA_TEST_H
#define MOE_TESTS_CUDA_TEST_H

#include <stdio.h>
#include <stdlib.h>

#include "backend/backend.h"
#include "core/gemm.h"
#include "core/status.h"
#include "cuda/ops.h"

static int failures;
#ifdef MOE_TEST_CUDA_HOST
extern long cuda_host_fail_malloc, cuda_host_fail_optim; // tests/cuda_host.c's faults
extern int cuda_host_sticky;                               // set by a kernel fault, as a GPU's context is spoilt
extern void (*cuda_host_on_malloc)(size_t bytes, const char *what); // and its allocation hook
struct cuda_host_copies { // host-device copies so far (cuda_host.c)
    size_t in_calls, in_bytes, out_calls, out_bytes;
};
extern struct cuda_host_copies cuda_host_copies;
#endif
#define EXPECT(c, ...)                                           \
    do {                                                         \
        if (!(c)) {                                              \
            failures++;                                          \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
            fprintf(stderr, __VA_ARGS__);                        \
            fputc('\n', stderr);                                 \
        }                                                        \
    } while (0)

// The start of a GPU test's main: 0 to go on, else the exit status (77, which
// meson reports as skipped: no usable CUDA device; 1: the CPU library's GEMMs,
// which the comparisons run, could not start).
static inline int cuda_test_begin(void)
{
#ifndef MOE_TEST_CUDA_HOST
    struct moe_backend_info info;
    const struct moe_backend *cuda = moe_backend_find("cuda");
    if (!cuda || cuda->probe(0, &info) != 0 || !info.available) {
        printf("no usable CUDA device (%s): skipped\n", cuda ? info.reason : "no backend");
        return 77;
    }
    printf("device 0: %s, compute capability %d.%d\n", info.dev.name, info.dev.cc_major, info.dev.cc_minor);
#else
    printf("host emulation of the CUDA ops (tests/cuda_host.c)\n");
#endif
    struct moe_err err;
    if (moe_blas_init(1, &err)) {
        printf("%s\n", err.msg);
        return 1;
    }
    return 0;
}

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
