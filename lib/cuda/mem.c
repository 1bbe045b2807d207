// mem.c: the device memory moe holds (cuda/ops.h moe_cuda_mem_usage), counted
// on the host as moe_cuda_malloc and moe_cuda_free pass through: a table of the
// live allocations and their sizes, the sum, and its high-water mark. Plain C
// with no CUDA, in every build: ops.cu calls it around cudaMalloc / cudaFree,
// the tests' host emulation (tests/cuda_host.c) around its aligned_alloc, so
// the same figures come out with or without a GPU. Not thread-safe: the device
// is driven from one host thread.
//
// The figures are the bytes asked for. cudaMalloc rounds each allocation up
// (to 512 bytes or more) and the CUDA context, kernel images and cuBLAS's
// workspace come on top; the dry run's reserve (model/estimate.h
// MOE_ESTIMATE_CUDA_RESERVE_BYTES) stands for those.
#include <stdlib.h>

#include "cuda/ops.h"

static struct {
    void **p;
    size_t *bytes;
    size_t n, cap;
    size_t live, peak;
} mem;

int moe_cuda_mem_note(void *p, size_t bytes, struct moe_err *err)
{
    if (mem.n == mem.cap) {
        size_t cap = mem.cap ? 2 * mem.cap : 64;
        void **np = realloc(mem.p, cap * sizeof *np);
        if (np)
            mem.p = np;
        size_t *nb = np ? realloc(mem.bytes, cap * sizeof *nb) : NULL;
        if (!nb)
            return moe_error(err, MOE_ENOMEM, "out of memory for the device allocation table (%zu entries)", cap);
        mem.bytes = nb;
        mem.cap = cap;
    }
    mem.p[mem.n] = p;
    mem.bytes[mem.n++] = bytes;
    mem.live += bytes;
    if (mem.live > mem.peak)
        mem.peak = mem.live;
    return 0;
}

void moe_cuda_mem_forget(void *p)
{
    for (size_t i = mem.n; p && i-- > 0;) // the newest first: scratch is freed soon after it is made
        if (mem.p[i] == p) {
            mem.live -= mem.bytes[i];
            mem.p[i] = mem.p[--mem.n];
            mem.bytes[i] = mem.bytes[mem.n];
            return;
        }
}

void moe_cuda_mem_usage(size_t *ret_live, size_t *ret_peak)
{
    if (ret_live)
        *ret_live = mem.live;
    if (ret_peak)
        *ret_peak = mem.peak;
}

void moe_cuda_mem_reset_peak(void) { mem.peak = mem.live; }
