// ops.cu: launch wrappers of the kernel bodies (lib/cuda/kernels/*.h); see
// ops.h. Each kernel computes its thread's indices and calls the body the CPU
// tests check; nothing else happens on the device here. No atomics: every
// value is written by one thread, reductions run in the bodies' fixed order.
#include <cub/device/device_radix_sort.cuh>
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda/ops.h"
#include "cuda/kernels/attention.h"
#include "cuda/kernels/dropout.h"
#include "cuda/kernels/linear.h"
#include "cuda/kernels/aux.h"
#include "cuda/kernels/dispatch.h"
#include "cuda/kernels/distill.h"
#include "cuda/kernels/embed.h"
#include "cuda/kernels/experts.h"
#include "cuda/kernels/loss.h"
#include "cuda/kernels/norm.h"
#include "cuda/kernels/optim.h"
#include "cuda/kernels/route.h"

static int check(cudaError_t e, const char *call, struct moe_err *err)
{
    if (e == cudaSuccess)
        return 0;
    // a call's own error (a failed cudaMalloc, say) is also the runtime's last
    // error: take it back, so the next launch's check does not report it as its own
    (void)cudaGetLastError();
    return moe_error(err, MOE_EIO, "CUDA: %s failed: %s", call, cudaGetErrorString(e));
}

// A launch's own error, then the kernel's: every launch waits for its kernel,
// so a fault is reported under the name of the kernel that made it. With
// MOE_CUDA_ASYNC=1 in the environment launches are queued instead (the
// launch's own error is still checked): the host runs ahead of the device and
// a kernel's fault surfaces at the next call that waits (a copy to the host,
// say), under that call's name. The same kernels in the same order on one
// stream, so the same bits; for timing the cost of waiting (dev/gpu-check.sh
// runs the LM both ways).
static int launched(const char *kernel, struct moe_err *err)
{
    static int async = -1;
    if (async < 0) {
        const char *v = getenv("MOE_CUDA_ASYNC");
        async = v && strcmp(v, "1") == 0;
    }
    int rc = check(cudaGetLastError(), kernel, err);
    return rc || async ? rc : check(cudaDeviceSynchronize(), kernel, err);
}

extern "C" int moe_cuda_malloc(void **ret, size_t bytes, const char *what, struct moe_err *err)
{
    *ret = NULL;
    cudaError_t e = cudaMalloc(ret, bytes ? bytes : 1);
    if (e == cudaSuccess) {
        int rc = moe_cuda_mem_note(*ret, bytes, err);
        if (rc) {
            cudaFree(*ret);
            *ret = NULL;
        }
        return rc;
    }
    (void)cudaGetLastError(); // as check(): not the next launch's error
    return moe_error(err, e == cudaErrorMemoryAllocation ? MOE_ENOMEM : MOE_EIO,
                     "CUDA: cudaMalloc of %zu bytes for %s failed: %s", bytes, what, cudaGetErrorString(e));
}

extern "C" void moe_cuda_free(void *p)
{
    moe_cuda_mem_forget(p);
    cudaFree(p);
}

extern "C" int moe_cuda_to_device(void *dst, const void *src, size_t bytes, struct moe_err *err)
{
    return check(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice), "cudaMemcpy (to device)", err);
}

extern "C" int moe_cuda_to_host(void *dst, const void *src, size_t bytes, struct moe_err *err)
{
    return check(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy (to host)", err);
}

extern "C" int moe_cuda_use_device(int id, struct moe_err *err)
{
    return check(cudaSetDevice(id), "cudaSetDevice", err);
}

extern "C" int moe_cuda_copy(void *dst, const void *src, size_t bytes, struct moe_err *err)
{
    return check(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToDevice), "cudaMemcpy (on the device)", err);
}

extern "C" int moe_cuda_memset(void *p, int value, size_t bytes, const char *what, struct moe_err *err)
{
    char call[96];
    snprintf(call, sizeof call, "cudaMemset (%s)", what);
    return check(cudaMemset(p, value, bytes), call, err);
}

struct moe_cuda_event {
    cudaEvent_t ev;
};

extern "C" int moe_cuda_event_create(struct moe_cuda_event **ret, struct moe_err *err)
{
    struct moe_cuda_event *e = (struct moe_cuda_event *)calloc(1, sizeof *e);
    *ret = NULL;
    if (!e)
        return moe_error(err, MOE_ENOMEM, "out of memory");
    int rc = check(cudaEventCreate(&e->ev), "cudaEventCreate", err);
    if (rc) {
        free(e);
        return rc;
    }
    *ret = e;
    return 0;
}

extern "C" void moe_cuda_event_free(struct moe_cuda_event *e)
{
    if (!e)
        return;
    cudaEventDestroy(e->ev);
    free(e);
}

extern "C" int moe_cuda_event_record(struct moe_cuda_event *e, struct moe_err *err)
{
    return check(cudaEventRecord(e->ev, 0), "cudaEventRecord", err);
}

extern "C" int moe_cuda_event_elapsed(double *ret_seconds, struct moe_cuda_event *a, struct moe_cuda_event *b,
                                      struct moe_err *err)
{
    float ms = 0.0f;
    int rc;
    if ((rc = check(cudaEventSynchronize(b->ev), "cudaEventSynchronize", err)) ||
        (rc = check(cudaEventElapsedTime(&ms, a->ev, b->ev), "cudaEventElapsedTime", err)))
        return rc;
    *ret_seconds = 1e-3 * ms;
    return 0;
}

// ---------------------------------------------------------------- router: one thread per token

__global__ void route_kernel(struct moe_cuda_route a, float *p, float *lse, float *h, float *eps, int32_t *sel,
                             int32_t *idx, float *gate, float *prio, const float *z, const float *u, const float *bias)
{
    const int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; // widened before the product
    if (t >= a.T)
        return;
    size_t o = (size_t)t * a.E, os = (size_t)t * a.K;
    moe_k_softmax_row(p + o, lse + t, z + o, a.E);
    const float *v = z + o;
    if (a.noisy) {
        if (a.train) {
            moe_k_noisy_row(h + o, eps + o, z + o, u + o, a.E, a.seed, a.purpose, a.stream, a.base + o);
        } else {
            for (int e = 0; e < a.E; e++) {
                eps[o + e] = 0.0f;
                h[o + e] = z[o + e];
            }
        }
        v = h + o;
    }
    moe_k_topk_row(sel + os, a.noisy ? v : p + o, bias, a.E, a.K);
    moe_k_gates_row(idx + os, gate + os, prio + os, sel + os, v, p + o, a.K,
                    a.raw_gates ? MOE_K_GATE_RAW : MOE_K_GATE_RENORM);
    if (a.gshard_random && a.train)
        moe_k_gshard_second(idx + os, gate + os, a.seed, a.purpose, a.stream, a.base + (uint64_t)t);
}

extern "C" int moe_cuda_route_forward(const struct moe_cuda_route *a, float *p, float *lse, float *h, float *eps,
                                      int32_t *sel, int32_t *idx, float *gate, float *prio, const float *z,
                                      const float *u, const float *bias, struct moe_err *err)
{
    if (a->T <= 0)
        return 0;
    const unsigned threads = 128, blocks = (unsigned)(((size_t)a->T + threads - 1) / threads);
    route_kernel<<<blocks, threads>>>(*a, p, lse, h, eps, sel, idx, gate, prio, z, u, bias);
    return launched("route_kernel", err);
}

__global__ void route_backward_kernel(struct moe_cuda_route a, float *dz, float *du, const float *dgate,
                                      const int32_t *sel, const int32_t *idx, const float *p, const float *z,
                                      const float *h, const float *eps, const float *u)
{
    const int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; // widened before the product
    if (t >= a.T)
        return;
    size_t o = (size_t)t * a.E, os = (size_t)t * a.K;
    moe_k_route_backward_row(dz + o, a.noisy ? du + o : NULL, dgate + os, sel + os, idx + os, p + o,
                             (a.noisy ? h : z) + o, a.noisy ? eps + o : NULL, a.noisy ? u + o : NULL, a.E, a.K,
                             a.raw_gates ? MOE_K_GATE_RAW : MOE_K_GATE_RENORM);
}

extern "C" int moe_cuda_route_backward(const struct moe_cuda_route *a, float *dz, float *du, const float *dgate,
                                       const int32_t *sel, const int32_t *idx, const float *p, const float *z,
                                       const float *h, const float *eps, const float *u, struct moe_err *err)
{
    if (a->T <= 0)
        return 0;
    const unsigned threads = 128, blocks = (unsigned)(((size_t)a->T + threads - 1) / threads);
    route_backward_kernel<<<blocks, threads>>>(*a, dz, du, dgate, sel, idx, p, z, h, eps, u);
    return launched("route_backward_kernel", err);
}

// ---------------------------------------------------------------- expert choice
// Training (FULL): a block per expert finds the C-th best key by radix
// selection, at most 16 passes of O(T / SELECT_THREADS) per thread, then marks its
// column. The causal evaluation modes: one thread per (token, expert) pair
// counts its rank over the expert's candidates, O(T) per thread. Neither
// sorts nor uses atomics (route.h).

// One radix-selection pass's digit (kernels/select.h) for a block of
// SELECT_THREADS that has each counted its stride into cnt, laid out
// [digit][thread] so a warp's counts land in distinct banks: the first 16
// threads add one digit's bins each (integers, so the order is free: thread k
// starts 2 k along, and the 16 read distinct banks), thread 0 picks the digit
// into the shared *thr and its own *need, and sets the shared *done when the
// passes may stop. Every thread of the block calls it.
#define SELECT_THREADS 256
__device__ void block_pick(uint64_t *thr, int64_t *need, int *done, const uint32_t *cnt, uint64_t *tot, int k,
                           int shift)
{
    __syncthreads();
    if (k < MOE_K_SELECT_BINS) {
        uint64_t sum = 0;
        for (int j = 0; j < SELECT_THREADS; j++)
            sum += cnt[k * SELECT_THREADS + (j + 2 * k) % SELECT_THREADS];
        tot[k] = sum;
    }
    __syncthreads();
    if (k == 0)
        *done = moe_k_select_pick(thr, need, tot, shift);
    __syncthreads();
}

__global__ void softmax_rows_kernel(int T, int E, float *p, float *lse, const float *z)
{
    const int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; // widened before the product
    if (t >= T)
        return;
    moe_k_softmax_row(p + (size_t)t * E, lse + t, z + (size_t)t * E, E);
}

__global__ void route_ec_kernel(struct moe_cuda_route_ec a, int32_t *sel, int32_t *idx, float *gate, float *prio,
                                const float *p)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)a.T * a.E)
        return;
    moe_k_ec_slot(sel, idx, gate, prio, p, a.T, a.E, (int64_t)(i / a.E), (int)(i % a.E), a.ec_factor,
                  (enum moe_k_ec)a.mode, a.seq);
}

__global__ void route_ec_select_kernel(struct moe_cuda_route_ec a, int32_t *sel, int32_t *idx, float *gate,
                                       float *prio, const float *p)
{
    __shared__ uint32_t cnt[MOE_K_SELECT_BINS * SELECT_THREADS];
    __shared__ uint64_t tot[MOE_K_SELECT_BINS];
    __shared__ uint64_t thr;
    __shared__ int done;
    const int e = blockIdx.x, k = threadIdx.x;
    const int64_t C = moe_k_ec_quota(a.ec_factor, a.T, a.E);
    int64_t need = C; // thread 0's
    if (k == 0)
        thr = 0, done = 0;
    __syncthreads();
    if (moe_k_ec_selects(C, a.T)) // the same for the whole block, as is done after each block_pick
        for (int shift = 64 - 4; shift >= 0 && !done; shift -= 4) {
            moe_k_ec_count(cnt + k, SELECT_THREADS, p, a.T, a.E, e, thr, shift, k, SELECT_THREADS);
            block_pick(&thr, &need, &done, cnt, tot, k, shift);
        }
    moe_k_ec_mark(sel, idx, gate, prio, p, a.T, a.E, e, C, thr, k, SELECT_THREADS);
}

__global__ void route_ec_topk_kernel(struct moe_cuda_route_ec a, int32_t *sel, int32_t *idx, float *gate,
                                     float *prio, const float *p)
{
    const int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; // widened before the product
    if (t >= a.T)
        return;
    size_t o = (size_t)t * a.E;
    moe_k_ec_topk_row(sel + o, idx + o, gate + o, prio + o, p + o, a.E, a.ec_factor);
}

extern "C" int moe_cuda_route_ec_forward(const struct moe_cuda_route_ec *a, float *p, float *lse, int32_t *sel,
                                         int32_t *idx, float *gate, float *prio, const float *z, struct moe_err *err)
{
    if (a->T <= 0)
        return 0;
    const unsigned threads = 128, blocks = (unsigned)(((size_t)a->T + threads - 1) / threads);
    softmax_rows_kernel<<<blocks, threads>>>(a->T, a->E, p, lse, z);
    int rc = launched("softmax_rows_kernel", err);
    if (rc)
        return rc;
    if (a->mode == MOE_K_EC_TOPK) {
        route_ec_topk_kernel<<<blocks, threads>>>(*a, sel, idx, gate, prio, p);
        return launched("route_ec_topk_kernel", err);
    }
    if (a->mode == MOE_K_EC_FULL) {
        route_ec_select_kernel<<<a->E, SELECT_THREADS>>>(*a, sel, idx, gate, prio, p);
        return launched("route_ec_select_kernel", err);
    }
    size_t n = (size_t)a->T * a->E;
    route_ec_kernel<<<(unsigned)((n + threads - 1) / threads), threads>>>(*a, sel, idx, gate, prio, p);
    return launched("route_ec_kernel", err);
}

extern "C" int moe_cuda_route_ec_backward(int T, int E, float *dz, const float *dgate, const int32_t *sel,
                                          const int32_t *idx, const float *p, struct moe_err *err)
{
    struct moe_cuda_route a = {};
    a.T = T;
    a.E = E;
    a.K = E;
    a.raw_gates = 1;
    // raw gates read neither the logits nor the noise; p stands in for z so no
    // pointer is offset from NULL
    return moe_cuda_route_backward(&a, dz, NULL, dgate, sel, idx, p, p, NULL, NULL, NULL, err);
}

// ---------------------------------------------------------------- hash routing: one thread per token

__global__ void route_hash_kernel(int T, int E, float *p, float *lse, int32_t *sel, int32_t *idx, float *gate,
                                  float *prio, const int32_t *hash_expert)
{
    const int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; // widened before the product
    if (t >= T)
        return;
    moe_k_hash_row(p + (size_t)t * E, lse + t, sel + t, idx + t, gate + t, prio + t, hash_expert[t], E);
}

extern "C" int moe_cuda_route_hash_forward(int T, int E, float *p, float *lse, int32_t *sel, int32_t *idx,
                                           float *gate, float *prio, const int32_t *hash_expert, struct moe_err *err)
{
    if (T <= 0)
        return 0;
    const unsigned threads = 128, blocks = (unsigned)(((size_t)T + threads - 1) / threads);
    route_hash_kernel<<<blocks, threads>>>(T, E, p, lse, sel, idx, gate, prio, hash_expert);
    return launched("route_hash_kernel", err);
}

// A block per expert: each thread counts a stride of the slots, thread 0 adds
// the integer counts (any order: the same) and moves the offset.
#define BIAS_THREADS 256
__global__ void bias_update_kernel(float *bias, const int32_t *sel, int64_t n, int E, double rate)
{
    __shared__ uint64_t total[BIAS_THREADS], load[BIAS_THREADS];
    const int e = blockIdx.x, k = threadIdx.x;
    total[k] = load[k] = 0;
    moe_k_bias_count(&total[k], &load[k], sel, n, e, k, BIAS_THREADS);
    __syncthreads();
    if (k != 0)
        return;
    for (int j = 1; j < BIAS_THREADS; j++)
        total[0] += total[j], load[0] += load[j];
    moe_k_bias_apply(bias, E, e, total[0], load[0], rate);
}

extern "C" int moe_cuda_bias_update(float *bias, const int32_t *sel, size_t n, size_t E, double rate,
                                    struct moe_err *err)
{
    if (E == 0)
        return 0;
    bias_update_kernel<<<(unsigned)E, BIAS_THREADS>>>(bias, sel, (int64_t)n, (int)E, rate);
    return launched("bias_update_kernel", err);
}

// ---------------------------------------------------------------- norms: (row, lane) threads

#define NORM_ROWS 32 // rows per block: NORM_ROWS x MOE_K_LANES threads

__global__ void norm_kernel(float *y, float *mean, float *rstd, const float *x, const float *g, const float *b,
                            size_t T, size_t D, float eps)
{
    __shared__ double lanes[NORM_ROWS][MOE_K_LANES];
    __shared__ float stat[NORM_ROWS][2];
    int lane = threadIdx.x % MOE_K_LANES, r = threadIdx.x / MOE_K_LANES;
    size_t t = (size_t)blockIdx.x * NORM_ROWS + r;
    const float *xt = x + t * D;
    int live = t < T;
    double m = 0.0;
    if (b) { // LayerNorm: the mean first
        lanes[r][lane] = live ? moe_k_lane_sum(xt, D, lane) : 0.0;
        __syncthreads();
        m = moe_k_layernorm_mean(moe_k_lanes_join(lanes[r]), D);
        __syncthreads();
    }
    lanes[r][lane] = live ? moe_k_lane_sq_dev(xt, m, D, lane) : 0.0;
    __syncthreads();
    if (lane == 0 && live) {
        double ss = moe_k_lanes_join(lanes[r]);
        stat[r][0] = (float)m;
        stat[r][1] = b ? moe_k_layernorm_rstd(ss, D, eps) : moe_k_rmsnorm_rstd(ss, D, eps);
        if (b)
            mean[t] = stat[r][0];
        rstd[t] = stat[r][1];
    }
    __syncthreads();
    if (!live)
        return;
    float mf = stat[r][0], rf = stat[r][1];
    for (size_t i = (size_t)lane; i < D; i += MOE_K_LANES)
        y[t * D + i] = b ? moe_k_layernorm_elem(xt[i], mf, rf, g[i], b[i]) : moe_k_rmsnorm_elem(xt[i], rf, g[i]);
}

extern "C" int moe_cuda_norm_forward(float *y, float *mean, float *rstd, const float *x, const float *g,
                                     const float *b, size_t T, size_t D, float eps, struct moe_err *err)
{
    if (T == 0)
        return 0;
    unsigned blocks = (unsigned)((T + NORM_ROWS - 1) / NORM_ROWS);
    norm_kernel<<<blocks, NORM_ROWS * MOE_K_LANES>>>(y, mean, rstd, x, g, b, T, D, eps);
    return launched("norm_kernel", err);
}

// ---------------------------------------------------------------- dispatch plan, gather, combine

static unsigned blocks_for(size_t n, unsigned threads)
{
    size_t b = (n + threads - 1) / threads;
    return b < 65535 ? (unsigned)(b ? b : 1) : 65535u;
}

// The keep pass by priority (MOE_DROP_PROB; kernels/dispatch.h moe_k_prob_*):
// block s E + e keeps slot s's best assignments to expert e that still fit.
// Every thread adds the block's tallies itself (the same integers in the same
// order), so all agree on R; then block_pick's passes.
__global__ void prob_keep_kernel(struct moe_cuda_plan p, const int32_t *idx, const float *prio, size_t T, size_t S,
                                 size_t E, size_t cap)
{
    __shared__ uint32_t cnt[MOE_K_SELECT_BINS * SELECT_THREADS];
    __shared__ uint64_t tot[MOE_K_SELECT_BINS], part[2][SELECT_THREADS];
    __shared__ uint64_t thr;
    __shared__ int done;
    const size_t s = blockIdx.x / E;
    const int32_t e = (int32_t)(blockIdx.x % E);
    const int k = threadIdx.x;
    uint64_t before = 0, here = 0;
    moe_k_prob_tally(&before, &here, idx, T, S, s, e, (size_t)k, SELECT_THREADS);
    part[0][k] = before;
    part[1][k] = here;
    if (k == 0)
        thr = 0, done = 0;
    __syncthreads();
    before = here = 0;
    for (int j = 0; j < SELECT_THREADS; j++)
        before += part[0][j], here += part[1][j];
    const uint64_t R = moe_k_prob_quota(before, here, cap);
    int64_t need = (int64_t)R; // thread 0's
    if (R > 0 && R < here) // the same for the whole block, as is done after each block_pick
        for (int shift = 64 - 4; shift >= 0 && !done; shift -= 4) {
            moe_k_prob_count(cnt + k, SELECT_THREADS, idx, prio, T, S, s, e, thr, shift, (size_t)k, SELECT_THREADS);
            block_pick(&thr, &need, &done, cnt, tot, k, shift);
        }
    moe_k_prob_mark(p.kept, idx, prio, T, S, s, e, R, thr, (size_t)k, SELECT_THREADS);
    if (k == 0 && s + 1 == S)
        moe_k_prob_counts(p.routed, p.n_kept, p.dropped, before, here, cap, (size_t)e);
}

__global__ void offsets_kernel(struct moe_cuda_plan p, size_t E) { moe_k_dispatch_offsets(p.offset, p.n_kept, E); }

// The plan in chunks (kernels/dispatch.h moe_k_chunk_*): one thread per chunk of
// MOE_CUDA_PLAN_CHUNK positions, one per expert for the scans over the chunks.
// Positions in token order (the keep by priority is prob_keep_kernel's): no order.
__global__ void chunk_count_kernel(size_t *cnt, const int32_t *idx, const uint8_t *kept, size_t T, size_t S, size_t E,
                                   size_t n_chunks, int rows)
{
    size_t c = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (c < n_chunks)
        moe_k_chunk_count(cnt + c * E, idx, NULL, kept, T, S, E, MOE_CUDA_PLAN_CHUNK, c, rows);
}

// keep stage: routed, dropped, n_kept per expert; rows stage: from offset[e].
__global__ void chunk_scan_kernel(struct moe_cuda_plan p, size_t *cnt, size_t n_chunks, size_t E, size_t cap,
                                  int rows)
{
    size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= E)
        return;
    if (rows) {
        moe_k_chunk_scan(cnt, n_chunks, E, e, p.offset[e]);
        return;
    }
    size_t routed = moe_k_chunk_scan(cnt, n_chunks, E, e, 0), k = routed < cap ? routed : cap;
    p.routed[e] = routed;
    p.n_kept[e] = k;
    p.dropped[e] = routed - k;
}

__global__ void chunk_keep_kernel(size_t *cnt, uint8_t *kept, const int32_t *idx, size_t T, size_t S, size_t E,
                                  size_t cap, size_t n_chunks)
{
    size_t c = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (c < n_chunks)
        moe_k_chunk_keep(cnt + c * E, kept, idx, NULL, T, S, cap, MOE_CUDA_PLAN_CHUNK, c);
}

__global__ void chunk_rows_kernel(struct moe_cuda_plan p, size_t *cnt, const int32_t *idx, size_t T, size_t S,
                                  size_t E, size_t n_chunks)
{
    size_t c = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (c < n_chunks)
        moe_k_chunk_rows(cnt + c * E, idx, p.kept, T, S, MOE_CUDA_PLAN_CHUNK, c, p.row_tok, p.row_slot,
                         p.slot_row);
}

extern "C" int moe_cuda_dispatch_plan(const struct moe_cuda_plan *p, const int32_t *idx, const float *prio, size_t T,
                                      size_t S, size_t E, size_t cap, int prob, struct moe_err *err)
{
    size_t *cnt = p->cnt;
    const size_t nc = (T * S + MOE_CUDA_PLAN_CHUNK - 1) / MOE_CUDA_PLAN_CHUNK;
    const unsigned cb = (unsigned)((nc + 127) / 128), eb = (unsigned)((E + 63) / 64);
    int rc;
    if ((rc = check(cudaMemset(p->kept, 0, T * S), "cudaMemset (kept)", err)) ||
        (rc = check(cudaMemset(p->slot_row, 0xff, T * S * sizeof(int32_t)), "cudaMemset (slot_row)", err)))
        return rc;
    if (nc == 0)
        return check(cudaMemset(p->offset, 0, (E + 1) * sizeof(size_t)), "cudaMemset (offsets)", err);
    if (prob) {
        prob_keep_kernel<<<(unsigned)(S * E), SELECT_THREADS>>>(*p, idx, prio, T, S, E, cap);
        if ((rc = launched("prob_keep_kernel", err)))
            return rc;
    } else {
        chunk_count_kernel<<<cb, 128>>>(cnt, idx, NULL, T, S, E, nc, 0);
        if ((rc = launched("chunk_count_kernel (keep)", err)))
            return rc;
        chunk_scan_kernel<<<eb, 64>>>(*p, cnt, nc, E, cap, 0);
        if ((rc = launched("chunk_scan_kernel (keep)", err)))
            return rc;
        chunk_keep_kernel<<<cb, 128>>>(cnt, p->kept, idx, T, S, E, cap, nc);
        if ((rc = launched("chunk_keep_kernel", err)))
            return rc;
    }
    offsets_kernel<<<1, 1>>>(*p, E);
    if ((rc = launched("offsets_kernel", err)))
        return rc;
    chunk_count_kernel<<<cb, 128>>>(cnt, idx, p->kept, T, S, E, nc, 1);
    if ((rc = launched("chunk_count_kernel (rows)", err)))
        return rc;
    chunk_scan_kernel<<<eb, 64>>>(*p, cnt, nc, E, cap, 1);
    if ((rc = launched("chunk_scan_kernel (rows)", err)))
        return rc;
    chunk_rows_kernel<<<cb, 128>>>(*p, cnt, idx, T, S, E, nc);
    return launched("chunk_rows_kernel", err);
}

__global__ void gather_kernel(float *xd, const float *x, const int32_t *row_tok, const size_t *offset, size_t E,
                              size_t n_max, size_t D)
{
    size_t n = offset[E] < n_max ? offset[E] : n_max;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n * D; i += (size_t)gridDim.x * blockDim.x)
        moe_k_gather(xd, x, row_tok, D, i / D, i % D);
}

extern "C" int moe_cuda_gather(float *xd, const float *x, const struct moe_cuda_plan *p, size_t E, size_t n_max,
                               size_t D, struct moe_err *err)
{
    gather_kernel<<<blocks_for(n_max * D, 256), 256>>>(xd, x, p->row_tok, p->offset, E, n_max, D);
    return launched("gather_kernel", err);
}

__global__ void combine_kernel(float *out, const float *yd, const float *gate, const int32_t *slot_row, size_t T,
                               size_t S, size_t D)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < T * D; i += (size_t)gridDim.x * blockDim.x)
        moe_k_combine(out, yd, gate, slot_row, S, D, i / D, i % D);
}

extern "C" int moe_cuda_combine(float *out, const float *yd, const float *gate, const int32_t *slot_row, size_t T,
                                size_t S, size_t D, struct moe_err *err)
{
    if (T == 0)
        return 0;
    combine_kernel<<<blocks_for(T * D, 256), 256>>>(out, yd, gate, slot_row, T, S, D);
    return launched("combine_kernel", err);
}

// A block per tile of MOE_K_CB_ROWS rows (grid-stride over the tiles), the
// columns in chunks of MOE_K_CB_COLS (kernels/dispatch.h): the block's threads
// go along rows, so a warp's loads and stores are one row's consecutive
// columns, and stage the products; then thread j adds row j's chunk in column
// order. The barriers are the block's alone: every thread runs the same tiles
// and chunks.
#define CB_THREADS 256
__global__ void combine_backward_kernel(float *dyd, float *dgate, const float *dout, const float *yd,
                                        const float *gate, const int32_t *row_tok, const int32_t *row_slot,
                                        const size_t *offset, size_t E, size_t n_max, size_t S, size_t D)
{
    // a row of MOE_K_CB_COLS + 1 doubles: thread j's reads of column c, row j,
    // fall in distinct banks
    __shared__ double prod[MOE_K_CB_ROWS][MOE_K_CB_COLS + 1];
    __shared__ size_t tok[MOE_K_CB_ROWS], slot[MOE_K_CB_ROWS];
    __shared__ float g[MOE_K_CB_ROWS];
    const size_t n = offset[E] < n_max ? offset[E] : n_max, n_tiles = (n + MOE_K_CB_ROWS - 1) / MOE_K_CB_ROWS;
    const unsigned j = threadIdx.x;
    for (size_t tile = blockIdx.x; tile < n_tiles; tile += gridDim.x) {
        const size_t r0 = tile * MOE_K_CB_ROWS, m = n - r0 < MOE_K_CB_ROWS ? n - r0 : MOE_K_CB_ROWS;
        if (j < m) {
            tok[j] = (size_t)row_tok[r0 + j];
            slot[j] = tok[j] * S + (size_t)row_slot[r0 + j];
            g[j] = gate[slot[j]];
        }
        double acc = 0.0; // row r0 + j's, for j < m
        __syncthreads();
        for (size_t c0 = 0; c0 < D; c0 += MOE_K_CB_COLS) {
            const size_t w = D - c0 < MOE_K_CB_COLS ? D - c0 : MOE_K_CB_COLS;
            for (size_t i = j; i < m * MOE_K_CB_COLS; i += blockDim.x) {
                const size_t row = i / MOE_K_CB_COLS, c = i % MOE_K_CB_COLS;
                if (c < w)
                    prod[row][c] = moe_k_combine_backward_elem(dyd, dout, yd, g[row], tok[row], D, r0 + row, c0 + c);
            }
            __syncthreads();
            if (dgate && j < m)
                moe_k_sum_tile(&acc, prod[j], w);
            __syncthreads();
        }
        if (dgate && j < m)
            dgate[slot[j]] += (float)acc;
        __syncthreads(); // the next tile's row information replaces this one's
    }
}

extern "C" int moe_cuda_combine_backward(float *dyd, float *dgate, const float *dout, const float *yd,
                                         const float *gate, const struct moe_cuda_plan *p, size_t E, size_t n_max,
                                         size_t S, size_t D, struct moe_err *err)
{
    combine_backward_kernel<<<blocks_for(n_max, MOE_K_CB_ROWS), CB_THREADS>>>(
        dyd, dgate, dout, yd, gate, p->row_tok, p->row_slot, p->offset, E, n_max, S, D);
    return launched("combine_backward_kernel", err);
}

// ---------------------------------------------------------------- balancing and z losses

// A block's sum of term(i) for i < n in order, returned to thread 0 (the
// others get 0): tiles of MOE_K_AUX_TERMS terms in shared memory, two buffers.
// Thread 0 adds tile k in order (moe_k_sum_tile) while the threads of the
// other warps compute tile k + 1 (warp 0's other lanes stay out: they would
// share thread 0's issue slots). The serial sum's additions, so its bits; the
// terms' loads and work overlap the additions. Launched with SUM_THREADS
// threads; every thread of the block calls it.
#define SUM_THREADS 256
template <class Term> __device__ double block_sum_in_order(size_t n, const Term &term)
{
    __shared__ double v[2][MOE_K_AUX_TERMS];
    const size_t n_tiles = (n + MOE_K_AUX_TERMS - 1) / MOE_K_AUX_TERMS;
    // the stagers of tiles 1, 2, ...: warps 1, 2, ... (a block of one warp: all, thread 0 first staging)
    const unsigned first = blockDim.x > 32 ? 32 : 0;
    const bool stager = threadIdx.x >= first;
    double sum = 0.0;
    for (size_t i = threadIdx.x; i < MOE_K_AUX_TERMS && i < n; i += blockDim.x)
        v[0][i] = term(i);
    __syncthreads();
    for (size_t k = 0; k < n_tiles; k++) {
        const size_t i0 = k * MOE_K_AUX_TERMS, m = n - i0 < MOE_K_AUX_TERMS ? n - i0 : MOE_K_AUX_TERMS;
        const size_t rest = n - i0 - m, n1 = rest < MOE_K_AUX_TERMS ? rest : MOE_K_AUX_TERMS;
        if (stager)
            for (size_t i = threadIdx.x - first; i < n1; i += blockDim.x - first)
                v[(k + 1) & 1][i] = term(i0 + m + i);
        if (threadIdx.x == 0)
            moe_k_sum_tile(&sum, v[k & 1], m);
        __syncthreads();
    }
    return sum;
}

struct fp_term {
    const float *p;
    size_t E, e;
    __device__ double operator()(size_t t) const { return moe_k_aux_fp_term(p, E, t, e); }
};

// One block per expert: f_e an integer count (each thread its tokens', then
// thread 0 adds the threads' counts: an integer sum, the same in any order),
// P_e the in-order block sum. One thread per expert reading p with stride E was
// latency-bound: 28 ms at T = 65536, E = 8 on an H200; tiles staged then added
// by thread 0 (the hits counted there too, the loads not overlapped) 6.4 ms
// for this and the z-loss's sum together.
__global__ void fp_expert_kernel(double *f, double *P, const int32_t *sel, const float *p, size_t T, size_t E,
                                 size_t S, size_t n_slots)
{
    __shared__ unsigned long long hits[SUM_THREADS];
    const size_t e = blockIdx.x;
    unsigned long long h = 0;
    for (size_t t = threadIdx.x; t < T; t += blockDim.x)
        h += moe_k_aux_fp_hits(sel, S, n_slots, t, e);
    hits[threadIdx.x] = h;
    const double pe = block_sum_in_order(T, fp_term{ p, E, e }); // its barriers order hits[] before the reads
    if (threadIdx.x == 0) {
        unsigned long long fe = 0;
        for (unsigned i = 0; i < blockDim.x; i++)
            fe += hits[i];
        f[e] = (double)fe / (double)T;
        P[e] = pe / (double)T;
    }
}

__global__ void fp_sum_kernel(double *value, const double *f, const double *P, size_t E)
{
    *value = moe_k_aux_fp_sum(f, P, E);
}

__global__ void fp_grad_kernel(float *dz, const float *p, const double *f, size_t E, double scale, size_t T)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < T * E; i += (size_t)gridDim.x * blockDim.x)
        moe_k_aux_fp_grad(dz, p, f, E, scale, T, i / E, i % E);
}

extern "C" int moe_cuda_aux_fp(double *ret, float *dz, const int32_t *sel, const float *p, size_t T, size_t E,
                               size_t S, size_t n_slots, double scale, double *f, double *P, double *value,
                               struct moe_err *err)
{
    if (ret)
        *ret = 0.0;
    if (T == 0)
        return 0;
    int rc;
    if (ret) {
        fp_expert_kernel<<<(unsigned)E, SUM_THREADS>>>(f, P, sel, p, T, E, S, n_slots);
        if ((rc = launched("fp_expert_kernel", err)))
            return rc;
        fp_sum_kernel<<<1, 1>>>(value, f, P, E);
        if ((rc = launched("fp_sum_kernel", err)) || (rc = moe_cuda_to_host(ret, value, sizeof *ret, err)))
            return rc;
    }
    if (!dz)
        return 0;
    fp_grad_kernel<<<blocks_for(T * E, 256), 256>>>(dz, p, f, E, scale, T);
    return launched("fp_grad_kernel", err);
}

// Shazeer et al.'s CV^2 losses: per-expert sums, CV^2 (one thread), gradients.
__global__ void cv2_kernel(double *value, double *g, const double *x, size_t E) { *value = moe_k_cv2(g, x, E); }

struct importance_term {
    const int32_t *idx;
    const float *gate;
    size_t e;
    __device__ double operator()(size_t i) const { return moe_k_importance_term(idx, gate, i, e); }
};

// A block per expert over the T S slots in order. One thread per expert over
// all of them left the GPU idle but for E threads.
__global__ void importance_expert_kernel(double *x, const int32_t *idx, const float *gate, size_t T, size_t S)
{
    const double sum = block_sum_in_order(T * S, importance_term{ idx, gate, blockIdx.x });
    if (threadIdx.x == 0)
        x[blockIdx.x] = sum;
}

__global__ void importance_grad_kernel(float *dgate, const int32_t *idx, const double *g, float coef, size_t n)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        moe_k_importance_grad(dgate, idx, g, coef, i);
}

extern "C" int moe_cuda_aux_importance(double *ret, float *dgate, const int32_t *idx, const float *gate, size_t T,
                                       size_t E, size_t S, float coef, double *x, double *g, double *value,
                                       struct moe_err *err)
{
    *ret = 0.0;
    int rc;
    importance_expert_kernel<<<(unsigned)E, SUM_THREADS>>>(x, idx, gate, T, S);
    if ((rc = launched("importance_expert_kernel", err)))
        return rc;
    cv2_kernel<<<1, 1>>>(value, dgate ? g : NULL, x, E);
    if ((rc = launched("cv2_kernel", err)) || (rc = moe_cuda_to_host(ret, value, sizeof *ret, err)))
        return rc;
    if (!dgate || T == 0)
        return 0;
    importance_grad_kernel<<<blocks_for(T * S, 256), 256>>>(dgate, idx, g, coef, T * S);
    return launched("importance_grad_kernel", err);
}

struct load_term {
    const float *z, *u, *h;
    const int32_t *sel;
    size_t E, S, K, e;
    __device__ double operator()(size_t t) const { return moe_k_load_term(z, u, h, sel, E, S, K, t, e); }
};

// A block per expert over the T tokens in order: each token's term (its
// thresholds, an erfc) computed by the block's threads. One thread per expert
// did all T tokens' work alone.
__global__ void load_expert_kernel(double *x, const float *z, const float *u, const float *h, const int32_t *sel,
                                   size_t T, size_t E, size_t S, size_t K)
{
    const double sum = block_sum_in_order(T, load_term{ z, u, h, sel, E, S, K, blockIdx.x });
    if (threadIdx.x == 0)
        x[blockIdx.x] = sum;
}

__global__ void load_grad_kernel(float *dz, float *du, const float *z, const float *u, const float *h,
                                 const float *eps, const int32_t *sel, const double *g, float coef, size_t T,
                                 size_t E, size_t S, size_t K)
{
    for (size_t t = (size_t)blockIdx.x * blockDim.x + threadIdx.x; t < T; t += (size_t)gridDim.x * blockDim.x)
        moe_k_load_grad(dz, du, z, u, h, eps, sel, g, coef, E, S, K, t);
}

extern "C" int moe_cuda_aux_load(double *ret, float *dz, float *du, const float *z, const float *u, const float *h,
                                 const float *eps, const int32_t *sel, size_t T, size_t E, size_t S, size_t K,
                                 float coef, double *x, double *g, double *value, struct moe_err *err)
{
    *ret = 0.0;
    int rc;
    load_expert_kernel<<<(unsigned)E, SUM_THREADS>>>(x, z, u, h, sel, T, E, S, K);
    if ((rc = launched("load_expert_kernel", err)))
        return rc;
    cv2_kernel<<<1, 1>>>(value, dz ? g : NULL, x, E);
    if ((rc = launched("cv2_kernel", err)) || (rc = moe_cuda_to_host(ret, value, sizeof *ret, err)))
        return rc;
    if (!dz || T == 0)
        return 0;
    load_grad_kernel<<<blocks_for(T, 128), 128>>>(dz, du, z, u, h, eps, sel, g, coef, T, E, S, K);
    return launched("load_grad_kernel", err);
}

struct z_term {
    const float *lse;
    __device__ double operator()(size_t t) const { return moe_k_z_term(lse, t); }
};

// One block: the in-order block sum of lse_t^2.
__global__ void z_loss_kernel(double *value, const float *lse, size_t T)
{
    const double sum = block_sum_in_order(T, z_term{ lse });
    if (threadIdx.x == 0)
        *value = sum / (double)T;
}

__global__ void z_grad_kernel(float *dz, const float *lse, const float *p, size_t E, float coef, size_t T)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < T * E; i += (size_t)gridDim.x * blockDim.x)
        moe_k_z_grad(dz, lse, p, E, coef, T, i / E, i % E);
}

extern "C" int moe_cuda_aux_z(double *ret, float *dz, const float *lse, const float *p, size_t T, size_t E,
                              float coef, double *value, struct moe_err *err)
{
    if (ret)
        *ret = 0.0;
    if (T == 0)
        return 0;
    int rc;
    if (ret) {
        z_loss_kernel<<<1, SUM_THREADS>>>(value, lse, T);
        if ((rc = launched("z_loss_kernel", err)) || (rc = moe_cuda_to_host(ret, value, sizeof *ret, err)))
            return rc;
    }
    if (!dz)
        return 0;
    z_grad_kernel<<<blocks_for(T * E, 256), 256>>>(dz, lse, p, E, coef, T);
    return launched("z_grad_kernel", err);
}

// ---------------------------------------------------------------- embedding

__global__ void embed_forward_kernel(float *out, const int32_t *tok, size_t ld, const float *wte, const float *wpe,
                                     size_t n, size_t C, size_t D)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n * D; i += (size_t)gridDim.x * blockDim.x)
        moe_k_embed_forward(out, tok, ld, wte, wpe, C, D, i / D, i % D);
}

extern "C" int moe_cuda_embed_forward(float *out, const int32_t *tok, size_t ld, const float *wte, const float *wpe,
                                      size_t B, size_t C, size_t D, struct moe_err *err)
{
    if (B * C == 0)
        return 0;
    embed_forward_kernel<<<blocks_for(B * C * D, 256), 256>>>(out, tok, ld, wte, wpe, B * C, C, D);
    return launched("embed_forward_kernel", err);
}

// ids[row] = the token id of row b C + c; rows[row] = row.
__global__ void embed_ids_kernel(int32_t *ids, int32_t *rows, const int32_t *tok, size_t ld, size_t n, size_t C)
{
    for (size_t r = (size_t)blockIdx.x * blockDim.x + threadIdx.x; r < n; r += (size_t)gridDim.x * blockDim.x) {
        ids[r] = tok[(r / C) * ld + r % C];
        rows[r] = (int32_t)r;
    }
}

__global__ void embed_backward_tok_kernel(float *dwte, const float *dout, const int32_t *sorted_ids,
                                          const int32_t *order, size_t n, size_t V, size_t D)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < V * D; i += (size_t)gridDim.x * blockDim.x) {
        int32_t id = (int32_t)(i / D);
        size_t start = moe_k_lower_bound(sorted_ids, n, id), end = moe_k_lower_bound(sorted_ids, n, id + 1);
        if (start < end)
            moe_k_embed_backward_tok(dwte, dout, order, start, end, D, (size_t)id, i % D);
    }
}

__global__ void embed_backward_pos_kernel(float *dwpe, const float *dout, size_t B, size_t C, size_t D)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < C * D; i += (size_t)gridDim.x * blockDim.x)
        moe_k_embed_backward_pos(dwpe, dout, B, C, D, i / D, i % D);
}

extern "C" int moe_cuda_embed_sort_bytes(size_t n, size_t *ret, struct moe_err *err)
{
    *ret = 0; // cub's size query: no pointer is read
    return check(cub::DeviceRadixSort::SortPairs(NULL, *ret, (const int32_t *)NULL, (int32_t *)NULL,
                                                 (const int32_t *)NULL, (int32_t *)NULL, (int)n),
                 "cub::DeviceRadixSort::SortPairs (size)", err);
}

extern "C" int moe_cuda_embed_backward(float *dwte, float *dwpe, const float *dout, const int32_t *tok, size_t ld,
                                       size_t B, size_t C, size_t D, size_t V, int32_t *ids, int32_t *sorted_ids,
                                       int32_t *rows, int32_t *order, void *sort, size_t sort_bytes,
                                       struct moe_err *err)
{
    size_t n = B * C;
    if (n == 0)
        return 0;
    size_t temp_bytes = 0;
    int rc = moe_cuda_embed_sort_bytes(n, &temp_bytes, err);
    if (rc)
        return rc;
    if (temp_bytes > sort_bytes)
        return moe_error(err, MOE_EINVAL, "CUDA: the embedding backward's sort needs %zu bytes of scratch, given %zu",
                         temp_bytes, sort_bytes);
    embed_ids_kernel<<<blocks_for(n, 256), 256>>>(ids, rows, tok, ld, n, C);
    if ((rc = launched("embed_ids_kernel", err)))
        return rc;
    // a stable radix sort of (id, row): each id's rows stay in row order
    if ((rc = check(cub::DeviceRadixSort::SortPairs(sort, temp_bytes, ids, sorted_ids, rows, order, (int)n),
                    "cub::DeviceRadixSort::SortPairs", err)) ||
        (rc = launched("cub::DeviceRadixSort::SortPairs", err))) // its kernels' faults under its name
        return rc;
    embed_backward_tok_kernel<<<blocks_for(V * D, 256), 256>>>(dwte, dout, sorted_ids, order, n, V, D);
    if ((rc = launched("embed_backward_tok_kernel", err)))
        return rc;
    embed_backward_pos_kernel<<<blocks_for(C * D, 256), 256>>>(dwpe, dout, B, C, D);
    return launched("embed_backward_pos_kernel", err);
}

__global__ void lang_rows_kernel(float *radd, const float *le, const int32_t *lang, size_t n, size_t C, size_t D)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n * D; i += (size_t)gridDim.x * blockDim.x)
        moe_k_lang_rows(radd, le, lang, C, D, i / D, i % D);
}

extern "C" int moe_cuda_lang_rows(float *radd, const float *le, const int32_t *lang, size_t B, size_t C, size_t D,
                                  struct moe_err *err)
{
    if (B * C * D == 0)
        return 0;
    lang_rows_kernel<<<blocks_for(B * C * D, 256), 256>>>(radd, le, lang, B * C, C, D);
    return launched("lang_rows_kernel", err);
}

__global__ void lang_grad_kernel(float *dle, const float *dradd, const int32_t *lang, size_t B, size_t C, size_t D,
                                 size_t G)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < G * D; i += (size_t)gridDim.x * blockDim.x)
        moe_k_lang_grad(dle, dradd, lang, B, C, D, i / D, i % D);
}

extern "C" int moe_cuda_lang_grad(float *dle, const float *dradd, const int32_t *lang, size_t B, size_t C, size_t D,
                                  size_t G, struct moe_err *err)
{
    if (G * D == 0)
        return 0;
    lang_grad_kernel<<<blocks_for(G * D, 256), 256>>>(dle, dradd, lang, B, C, D, G);
    return launched("lang_grad_kernel", err);
}

__global__ void norm_param_kernel(float *dg, float *db, const float *dy, const float *x, const float *mean,
                                  const float *rstd, size_t T, size_t D)
{
    for (size_t col = (size_t)blockIdx.x * blockDim.x + threadIdx.x; col < D; col += (size_t)gridDim.x * blockDim.x)
        moe_k_norm_param_col(dg, db, dy, x, mean, rstd, T, D, col);
}

__global__ void norm_dx_kernel(float *dx, const float *dy, const float *x, const float *mean, const float *rstd,
                               const float *g, size_t T, size_t D, int layernorm)
{
    __shared__ double l1[NORM_ROWS][MOE_K_LANES], l2[NORM_ROWS][MOE_K_LANES];
    __shared__ float ac[NORM_ROWS][2];
    int lane = threadIdx.x % MOE_K_LANES, r = threadIdx.x / MOE_K_LANES;
    size_t t = (size_t)blockIdx.x * NORM_ROWS + r;
    int live = t < T;
    float m = live && layernorm ? mean[t] : 0.0f, rs = live ? rstd[t] : 0.0f;
    if (live)
        moe_k_norm_grad_lane(&l1[r][lane], &l2[r][lane], x + t * D, dy + t * D, g, m, rs, D, lane);
    __syncthreads();
    if (lane == 0 && live) {
        ac[r][0] = (float)(moe_k_lanes_join(l1[r]) / (double)D);
        ac[r][1] = (float)(moe_k_lanes_join(l2[r]) / (double)D);
    }
    __syncthreads();
    if (!live)
        return;
    for (size_t i = (size_t)lane; i < D; i += MOE_K_LANES) {
        size_t j = t * D + i;
        dx[j] = layernorm ? moe_k_layernorm_dx(dx[j], x[j], dy[j], g[i], m, rs, ac[r][0], ac[r][1])
                          : moe_k_rmsnorm_dx(dx[j], x[j], dy[j], g[i], rs, ac[r][1]);
    }
}

extern "C" int moe_cuda_norm_backward(float *dx, float *dg, float *db, const float *dy, const float *x,
                                      const float *mean, const float *rstd, const float *g, size_t T, size_t D,
                                      struct moe_err *err)
{
    if (T == 0)
        return 0;
    norm_param_kernel<<<blocks_for(D, 128), 128>>>(dg, db, dy, x, mean, rstd, T, D);
    int rc = launched("norm_param_kernel", err);
    if (rc || !dx)
        return rc;
    norm_dx_kernel<<<(unsigned)((T + NORM_ROWS - 1) / NORM_ROWS), NORM_ROWS * MOE_K_LANES>>>(dx, dy, x, mean, rstd,
                                                                                           g, T, D, db != NULL);
    return launched("norm_dx_kernel", err);
}

// ---------------------------------------------------------------- optimizer: one thread per element

__global__ void optim_kernel(struct moe_k_optim o, float *w, float *g, float *m, float *v, size_t n)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        moe_k_optim_elem(&o, i, w, g, m, v);
}

extern "C" int moe_cuda_optim_update(const struct moe_k_optim *o, float *w, float *g, float *m, float *v, size_t n,
                                     struct moe_err *err)
{
    if (n == 0)
        return 0;
    optim_kernel<<<blocks_for(n, 256), 256>>>(*o, w, g, m, v, n);
    return launched("optim_kernel", err);
}

// The sum of squares: one thread per (block, lane), one per block, one for the total.
__global__ void sumsq_lane_kernel(double *lanes, const float *g, size_t n)
{
    size_t m = (size_t)MOE_K_SQ_BLOCKS * MOE_K_SQ_LANES;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < m; i += (size_t)gridDim.x * blockDim.x)
        moe_k_sumsq_lane(lanes, g, n, i / MOE_K_SQ_LANES, i % MOE_K_SQ_LANES);
}

// One block of MOE_K_SQ_BLOCKS threads: the blocks' lanes joined in shared
// memory, then thread 0 adds them in order to *acc.
__global__ void sumsq_block_kernel(double *acc, const double *lanes)
{
    __shared__ double part[MOE_K_SQ_BLOCKS];
    for (size_t b = threadIdx.x; b < MOE_K_SQ_BLOCKS; b += blockDim.x)
        moe_k_sumsq_block(part, lanes, b);
    __syncthreads();
    if (threadIdx.x == 0)
        moe_k_sumsq_total(acc, part);
}

__global__ void fold_kernel(float *a, const float *g, float *out, size_t n, float w, size_t k, int last)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        moe_k_fold(a, g, out, i, w, k, last);
}

extern "C" int moe_cuda_fold(float *a, const float *g, float *out, size_t n, float w, size_t k, int last,
                             struct moe_err *err)
{
    if (n == 0 || (k == 0 && last))
        return 0;
    fold_kernel<<<blocks_for(n, 256), 256>>>(a, g, out, n, w, k, last);
    return launched("fold_kernel", err);
}

__global__ void lora_merge_kernel(float *w, const float *w0, const float *delta, size_t n)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        moe_k_lora_merge(w, w0, delta, i);
}

extern "C" int moe_cuda_lora_merge(float *w, const float *w0, const float *delta, size_t n, struct moe_err *err)
{
    if (n == 0)
        return 0;
    lora_merge_kernel<<<blocks_for(n, 256), 256>>>(w, w0, delta, n);
    return launched("lora_merge_kernel", err);
}

extern "C" int moe_cuda_sum_sq(double *acc, const float *g, size_t n, double *scratch, struct moe_err *err)
{
    double *lanes = scratch;
    int rc;
    sumsq_lane_kernel<<<blocks_for((size_t)MOE_K_SQ_BLOCKS * MOE_K_SQ_LANES, 256), 256>>>(lanes, g, n);
    if ((rc = launched("sumsq_lane_kernel", err)))
        return rc;
    sumsq_block_kernel<<<1, MOE_K_SQ_BLOCKS>>>(acc, lanes);
    return launched("sumsq_block_kernel", err);
}

// ---------------------------------------------------------------- cross-entropy: one thread per row, then per block

// Row t: max and argmax, the exponentials' sum in double in class order, the
// loss and its lse (kept for the gradient pass).
__global__ void ce_row_kernel(float *row_loss, int32_t *row_argmax, double *lse, const float *y, const int32_t *label,
                              size_t T, size_t O)
{
    for (size_t t = (size_t)blockIdx.x * blockDim.x + threadIdx.x; t < T; t += (size_t)gridDim.x * blockDim.x) {
        const float *yt = y + t * O;
        int32_t am;
        float m = moe_k_ce_max(yt, O, &am);
        double s = 0.0;
        for (size_t o = 0; o < O; o++)
            s += expf(moe_k_ce_shift(yt[o], m));
        double l = moe_k_ce_lse(m, s);
        lse[t] = l;
        double loss = moe_k_ce_loss(l, yt, label[t]);
        if (row_loss)
            row_loss[t] = (float)loss;
        if (row_argmax)
            row_argmax[t] = am;
    }
}

// One thread per (row, class) element of the gradient; the label's element
// also takes -scale (one writer per element).
__global__ void ce_grad_kernel(float *dy, const double *lse, const float *y, const int32_t *label, size_t T, size_t O,
                               float scale)
{
    for (size_t j = (size_t)blockIdx.x * blockDim.x + threadIdx.x; j < T * O; j += (size_t)gridDim.x * blockDim.x) {
        size_t t = j / O, o = j % O;
        moe_k_ce_grad_elem(&dy[j], expf(moe_k_ce_grad_arg(y[j], lse[t])), scale);
        if ((int32_t)o == label[t])
            moe_k_ce_grad_label(&dy[j], scale);
    }
}

// The batch sum: block b's rows in order (one thread per block), recomputing
// each row's loss in double from lse (the float row_loss would round it).
__global__ void ce_block_kernel(double *part, const double *lse, const float *y, const int32_t *label, size_t T,
                                size_t O)
{
    size_t b = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= MOE_K_CE_BLOCKS)
        return;
    size_t lo, hi;
    moe_k_ce_block(T, b, &lo, &hi);
    double acc = 0.0;
    for (size_t t = lo; t < hi; t++)
        acc += moe_k_ce_loss(lse[t], y + t * O, label[t]);
    part[b] = acc;
}

extern "C" int moe_cuda_ce_rows(double *sum, float *dy, float *row_loss, int32_t *row_argmax, const float *y,
                                const int32_t *label, size_t T, size_t O, float scale, double *part, double *lse,
                                struct moe_err *err)
{
    *sum = 0.0;
    if (T == 0)
        return 0;
    ce_row_kernel<<<blocks_for(T, 128), 128>>>(row_loss, row_argmax, lse, y, label, T, O);
    int rc = launched("ce_row_kernel", err);
    if (!rc && dy) {
        ce_grad_kernel<<<blocks_for(T * O, 256), 256>>>(dy, lse, y, label, T, O, scale);
        rc = launched("ce_grad_kernel", err);
    }
    if (!rc) {
        ce_block_kernel<<<1, MOE_K_CE_BLOCKS>>>(part, lse, y, label, T, O);
        rc = launched("ce_block_kernel", err);
    }
    double h[MOE_K_CE_BLOCKS];
    if (!rc)
        rc = moe_cuda_to_host(h, part, sizeof h, err);
    if (rc)
        return rc;
    for (size_t b = 0; b < MOE_K_CE_BLOCKS; b++) // the blocks in order, as on the CPU
        *sum += h[b];
    return 0;
}

// ---------------------------------------------------------------- distillation losses: rows, elements, one sum

// Row t: the student's and the teacher's lse (at tau; 1 for the symmetric KL),
// and the row's loss (KD: tau^2 KL(p || q); symmetric: KL(p || q) + KL(q || p),
// KL(q || p) kept for the gradient).
__global__ void distill_row_kernel(int sym, double *lse_s, double *lse_z, double *row, double *qp, const float *s,
                                   const float *z, size_t T, size_t O, double tau)
{
    for (size_t t = (size_t)blockIdx.x * blockDim.x + threadIdx.x; t < T; t += (size_t)gridDim.x * blockDim.x) {
        const float *st = s + t * O, *zt = z + t * O;
        double ls = moe_k_lse_tau(st, O, tau), lz = moe_k_lse_tau(zt, O, tau);
        lse_s[t] = ls, lse_z[t] = lz;
        if (sym) {
            double pq, q;
            moe_k_symkl_row(&pq, &q, st, zt, O, ls, lz);
            qp[t] = q;
            row[t] = pq + q;
        } else {
            row[t] = moe_k_kd_row(st, zt, O, tau, ls, lz);
        }
    }
}

// One thread per (row, class) element of the gradient.
__global__ void distill_grad_kernel(int sym, float *dy, const double *lse_s, const double *lse_z, const double *qp,
                                    const float *s, const float *z, size_t T, size_t O, double tau, float scale)
{
    for (size_t j = (size_t)blockIdx.x * blockDim.x + threadIdx.x; j < T * O; j += (size_t)gridDim.x * blockDim.x) {
        size_t t = j / O;
        if (sym)
            moe_k_symkl_grad(&dy[j], s[j], z[j], lse_s[t], lse_z[t], qp[t], scale);
        else
            moe_k_kd_grad(&dy[j], s[j], z[j], tau, lse_s[t], lse_z[t], scale);
    }
}

// One thread: the n values in order (the CPU's running sum over rows).
__global__ void ordered_sum_kernel(double *total, const double *v, size_t n)
{
    double acc = 0.0;
    for (size_t i = 0; i < n; i++)
        acc += v[i];
    *total = acc;
}

static int distill(int sym, double *sum, float *dy, const float *s, const float *z, size_t T, size_t O, double tau,
                   float scale, double *scratch, struct moe_err *err)
{
    if (sum)
        *sum = 0.0;
    if (T == 0 || O == 0)
        return 0;
    double *lse_s = scratch, *lse_z = scratch + T, *row = scratch + 2 * T, *qp = scratch + 3 * T,
           *total = scratch + 4 * T;
    distill_row_kernel<<<blocks_for(T, 128), 128>>>(sym, lse_s, lse_z, row, qp, s, z, T, O, tau);
    int rc = launched("distill_row_kernel", err);
    if (!rc && dy) {
        distill_grad_kernel<<<blocks_for(T * O, 256), 256>>>(sym, dy, lse_s, lse_z, qp, s, z, T, O, tau, scale);
        rc = launched("distill_grad_kernel", err);
    }
    if (rc || !sum)
        return rc;
    ordered_sum_kernel<<<1, 1>>>(total, row, T);
    if ((rc = launched("ordered_sum_kernel", err)))
        return rc;
    return moe_cuda_to_host(sum, total, sizeof *sum, err);
}

extern "C" int moe_cuda_kd(double *sum, float *dy, const float *s, const float *z, size_t T, size_t O, float tau,
                           float scale, double *scratch, struct moe_err *err)
{
    return distill(0, sum, dy, s, z, T, O, (double)tau, scale, scratch, err);
}

extern "C" int moe_cuda_symkl(double *sum, float *dy, const float *s, const float *z, size_t T, size_t O,
                              float scale, double *scratch, struct moe_err *err)
{
    return distill(1, sum, dy, s, z, T, O, 1.0, scale, scratch, err);
}

__global__ void mse_grad_kernel(float *dy, const float *y, const float *d, size_t n, float scale)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        moe_k_mse_grad(&dy[i], y[i], d[i], scale);
}

__global__ void mse_sum_kernel(double *total, const float *y, const float *d, size_t n)
{
    double acc = 0.0;
    for (size_t i = 0; i < n; i++)
        acc += moe_k_sq_term(y[i], d[i]);
    *total = acc;
}

extern "C" int moe_cuda_mse(double *sum, float *dy, const float *y, const float *d, size_t n, float scale,
                            double *scratch, struct moe_err *err)
{
    if (sum)
        *sum = 0.0;
    if (n == 0)
        return 0;
    int rc = 0;
    if (dy) {
        mse_grad_kernel<<<blocks_for(n, 256), 256>>>(dy, y, d, n, scale);
        rc = launched("mse_grad_kernel", err);
    }
    if (rc || !sum)
        return rc;
    mse_sum_kernel<<<1, 1>>>(scratch, y, d, n);
    if ((rc = launched("mse_sum_kernel", err)))
        return rc;
    return moe_cuda_to_host(sum, scratch, sizeof *sum, err);
}

// ---------------------------------------------------------------- activations: one thread per value

__global__ void act_forward_kernel(int a, float *y, const float *x, size_t n)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float v = x[i];
        y[i] = a == MOE_CUDA_RELU ? moe_k_relu(v)
             : a == MOE_CUDA_GELU ? moe_k_gelu(v, tanhf(moe_k_gelu_inner(v)))
                                  : moe_k_silu(v, expf(-v));
    }
}

__global__ void act_backward_kernel(int a, float *dx, const float *dy, const float *x, size_t n)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float v = x[i];
        dx[i] = a == MOE_CUDA_RELU ? moe_k_relu_dx(dy[i], v)
              : a == MOE_CUDA_GELU ? moe_k_gelu_dx(dy[i], v, tanhf(moe_k_gelu_inner(v)))
                                   : moe_k_silu_dx(dy[i], v, expf(-v));
    }
}

extern "C" int moe_cuda_act_forward(enum moe_cuda_act a, float *y, const float *x, size_t n, struct moe_err *err)
{
    if (n == 0)
        return 0;
    act_forward_kernel<<<blocks_for(n, 256), 256>>>((int)a, y, x, n);
    return launched("act_forward_kernel", err);
}

extern "C" int moe_cuda_act_backward(enum moe_cuda_act a, float *dx, const float *dy, const float *x, size_t n,
                                     struct moe_err *err)
{
    if (n == 0)
        return 0;
    act_backward_kernel<<<blocks_for(n, 256), 256>>>((int)a, dx, dy, x, n);
    return launched("act_backward_kernel", err);
}

// ---------------------------------------------------------------- causal self-attention (kernels/attention.h)

// The scores (a = q, b = k, alpha = 1 / sqrt(hs)) or dP (a = dout, b = v,
// alpha = 1): out[bh, t, s] = alpha sum_i a_t[i] b_s[i] for s <= t, 0 above
// the diagonal, with a_t = a + (b C + t) lda + h hs and b_s = b + (b C + s)
// ldb + h hs. A block of ATTN_TY x MOE_K_ATTN_TILE threads per tile of
// MOE_K_ATTN_TILE queries t x as many keys s of one bh (the tiles in turn):
// the rows of both staged in shared memory MOE_K_ATTN_CHUNK dimensions at a
// time (a warp's loads are consecutive dimensions of a row), then thread (x,
// y) adds the chunk to its elements (t0 + y + ATTN_TY k, s0 + x) in index
// order (kernels/attention.h moe_k_attn_dot_chunk: moe_k_attn_dot's bits).
// The rows are padded to MOE_K_ATTN_CHUNK + 1 floats: a warp reads one a row
// (a broadcast) and 32 b rows at one dimension, in 32 banks. A tile wholly
// above the diagonal (the same for the whole block) only writes its zeros.
#define ATTN_TY 8
#define ATTN_ROWS (MOE_K_ATTN_TILE / ATTN_TY) // elements per thread
__global__ void attn_pairs_kernel(float *out, const float *a, size_t lda, const float *b, size_t ldb, size_t B,
                                  size_t C, size_t H, size_t hs, float alpha)
{
    __shared__ float as[MOE_K_ATTN_TILE][MOE_K_ATTN_CHUNK + 1], bs[MOE_K_ATTN_TILE][MOE_K_ATTN_CHUNK + 1];
    const size_t T = MOE_K_ATTN_TILE, nt = (C + T - 1) / T, tiles = B * H * nt * nt;
    const unsigned x = threadIdx.x, y = threadIdx.y, tid = y * MOE_K_ATTN_TILE + x;
    for (size_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
        const size_t bh = tile / (nt * nt), t0 = tile / nt % nt * T, s0 = tile % nt * T;
        const size_t bb = bh / H, col = bh % H * hs;
        float acc[ATTN_ROWS];
        for (unsigned k = 0; k < ATTN_ROWS; k++)
            acc[k] = 0.0f;
        if (s0 <= t0 + T - 1) {
            for (size_t i0 = 0; i0 < hs; i0 += MOE_K_ATTN_CHUNK) {
                const size_t w = hs - i0 < MOE_K_ATTN_CHUNK ? hs - i0 : MOE_K_ATTN_CHUNK;
                for (size_t e = tid; e < T * w; e += T * ATTN_TY) {
                    const size_t r = e / w, c = e % w;
                    as[r][c] = t0 + r < C ? a[(bb * C + t0 + r) * lda + col + i0 + c] : 0.0f;
                    bs[r][c] = s0 + r < C ? b[(bb * C + s0 + r) * ldb + col + i0 + c] : 0.0f;
                }
                __syncthreads();
                for (unsigned k = 0; k < ATTN_ROWS; k++)
                    acc[k] = moe_k_attn_dot_chunk(acc[k], as[y + ATTN_TY * k], bs[x], w);
                __syncthreads();
            }
        }
        for (unsigned k = 0; k < ATTN_ROWS; k++) {
            const size_t t = t0 + y + ATTN_TY * k, sk = s0 + x;
            if (t < C && sk < C)
                out[(bh * C + t) * C + sk] = sk > t ? 0.0f : alpha * acc[k];
        }
    }
}

static int attn_pairs(const char *name, float *out, const float *a, size_t lda, const float *b, size_t ldb,
                      size_t B, size_t C, size_t H, size_t hs, float alpha, struct moe_err *err)
{
    const size_t nt = (C + MOE_K_ATTN_TILE - 1) / MOE_K_ATTN_TILE;
    attn_pairs_kernel<<<blocks_for(B * H * nt * nt, 1), dim3(MOE_K_ATTN_TILE, ATTN_TY)>>>(out, a, lda, b, ldb, B, C,
                                                                                        H, hs, alpha);
    return launched(name, err);
}

// The rows of att (softmax) or datt (dS): a block of MOE_K_ATTN_LANES x
// ATTN_ROW_Y threads takes ATTN_ROW_Y rows at a time, thread (j, y) lane j of
// row y (keys j, j + 8, ...: the 8 lanes of a row read 8 consecutive floats).
// The lanes' parts meet in shared memory; lane 0 adds them as
// moe_k_attn_lane_sum does (kernels/attention.h), so the bits of the row
// bodies. Every thread of a block runs the same rows and barriers.
#define ATTN_ROW_Y 32

// Softmax rows: the max of the lanes' maxima subtracted, the device's expf,
// the normaliser, each entry times its reciprocal.
__global__ void attn_softmax_kernel(float *att, size_t rows, size_t C)
{
    __shared__ float part[ATTN_ROW_Y][MOE_K_ATTN_LANES], inv[ATTN_ROW_Y];
    const unsigned j = threadIdx.x, y = threadIdx.y;
    for (size_t r0 = (size_t)blockIdx.x * ATTN_ROW_Y; r0 < rows; r0 += (size_t)gridDim.x * ATTN_ROW_Y) {
        const size_t r = r0 + y, n = r < rows ? r % C + 1 : 0;
        float *row = att + r * C;
        part[y][j] = moe_k_attn_lane_max(row, n, j);
        __syncthreads();
        float m = part[y][0];
        for (unsigned k = 1; k < MOE_K_ATTN_LANES; k++)
            m = part[y][k] > m ? part[y][k] : m;
        for (size_t s = j; s < n; s += MOE_K_ATTN_LANES)
            row[s] = expf(row[s] - m);
        __syncthreads(); // the maxima read; every exponential written (lane 0 adds the tail)
        part[y][j] = moe_k_attn_lane_part(row, NULL, n, j);
        __syncthreads();
        if (j == 0 && n)
            inv[y] = 1.0f / moe_k_attn_lanes_finish(part[y], row, NULL, n);
        __syncthreads();
        for (size_t s = j; s < n; s += MOE_K_ATTN_LANES)
            row[s] *= inv[y];
        __syncthreads(); // part and inv are the next rows'
    }
}

static unsigned row_blocks(size_t rows) { return blocks_for(rows, ATTN_ROW_Y); }

// One thread per element (b, t, column) of out.
__global__ void attn_out_kernel(float *out, const float *att, const float *qkv, size_t B, size_t C, size_t D,
                                size_t H)
{
    size_t n = B * C * D;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        moe_k_attn_out(out, att, qkv, C, D, H, i / (C * D), i / D % C, i % D);
}

static int attn_shape(size_t D, size_t H, struct moe_err *err)
{
    if (H == 0 || D % H != 0)
        return moe_error(err, MOE_EINVAL, "CUDA attention: n_embd %zu is not a multiple of the heads %zu", D, H);
    return 0;
}

static int drop_on(const struct moe_cuda_drop *d) { return d && d->p > 0.0f; }

static struct moe_k_drop drop_make(const struct moe_cuda_drop *d)
{
    return moe_k_drop_make(d->p, d->seed, d->step, d->site);
}

// One thread per element (bh, t, s) of att: P into attp, P' on and below the diagonal.
__global__ void attn_drop_kernel(float *att, float *attp, struct moe_k_drop d, size_t n, size_t C)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        moe_k_attn_drop(att, attp, &d, C, i);
}

// One thread per element (bh, t, s) of datt: dP' to dP on and below the diagonal.
__global__ void attn_drop_grad_kernel(float *datt, struct moe_k_drop d, size_t n, size_t C)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        moe_k_attn_drop_grad(datt, &d, C, i);
}

extern "C" int moe_cuda_attention_forward_drop(float *out, float *att, float *attp, const float *qkv, size_t B,
                                               size_t C, size_t D, size_t H, const struct moe_cuda_drop *d,
                                               struct moe_err *err)
{
    int rc = attn_shape(D, H, err);
    if (rc || B * C == 0)
        return rc;
    if ((rc = attn_pairs("attn_pairs_kernel (scores)", att, qkv, 3 * D, qkv + D, 3 * D, B, C, H, D / H,
                         moe_k_attn_scale(D / H), err)))
        return rc;
    attn_softmax_kernel<<<row_blocks(B * H * C), dim3(MOE_K_ATTN_LANES, ATTN_ROW_Y)>>>(att, B * H * C, C);
    if ((rc = launched("attn_softmax_kernel", err)))
        return rc;
    if (drop_on(d)) {
        attn_drop_kernel<<<blocks_for(B * H * C * C, 256), 256>>>(att, attp, drop_make(d), B * H * C * C, C);
        if ((rc = launched("attn_drop_kernel", err)))
            return rc;
    }
    attn_out_kernel<<<blocks_for(B * C * D, 256), 256>>>(out, att, qkv, B, C, D, H);
    return launched("attn_out_kernel", err);
}

extern "C" int moe_cuda_attention_forward(float *out, float *att, const float *qkv, size_t B, size_t C, size_t D,
                                          size_t H, struct moe_err *err)
{
    return moe_cuda_attention_forward_drop(out, att, NULL, qkv, B, C, D, H, NULL, err);
}

// dS rows in place (the rows' launch above): sum_s P dP as the normaliser, then
// dS = P (dP - that sum).
__global__ void attn_dsoftmax_kernel(float *datt, const float *att, size_t rows, size_t C)
{
    __shared__ float part[ATTN_ROW_Y][MOE_K_ATTN_LANES], pdp[ATTN_ROW_Y];
    const unsigned j = threadIdx.x, y = threadIdx.y;
    for (size_t r0 = (size_t)blockIdx.x * ATTN_ROW_Y; r0 < rows; r0 += (size_t)gridDim.x * ATTN_ROW_Y) {
        const size_t r = r0 + y, n = r < rows ? r % C + 1 : 0;
        float *d = datt + r * C;
        const float *p = att + r * C;
        part[y][j] = moe_k_attn_lane_part(p, d, n, j);
        __syncthreads();
        if (j == 0 && n)
            pdp[y] = moe_k_attn_lanes_finish(part[y], p, d, n);
        __syncthreads(); // lane 0 has read the tail of dP before it changes
        for (size_t s = j; s < n; s += MOE_K_ATTN_LANES)
            d[s] = p[s] * (d[s] - pdp[y]);
        __syncthreads();
    }
}

// One thread per element (b, position, j < 3D) of dqkv: dq, dk or dv.
__global__ void attn_dqkv_kernel(float *dqkv, const float *datt, const float *att, const float *dout,
                                 const float *qkv, size_t B, size_t C, size_t D, size_t H)
{
    size_t n = B * C * 3 * D;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        moe_k_attn_dqkv(dqkv, datt, att, dout, qkv, C, D, H, i / (C * 3 * D), i / (3 * D) % C, i % (3 * D));
}

extern "C" int moe_cuda_attention_backward_drop(float *dqkv, float *datt, const float *dout, const float *qkv,
                                                const float *att, const float *attp, size_t B, size_t C, size_t D,
                                                size_t H, const struct moe_cuda_drop *d, struct moe_err *err)
{
    int rc = attn_shape(D, H, err);
    if (rc || B * C == 0)
        return rc;
    const int on = drop_on(d);
    if ((rc = attn_pairs("attn_pairs_kernel (dP)", datt, dout, D, qkv + 2 * D, 3 * D, B, C, H, D / H, 1.0f, err)))
        return rc;
    if (on) {
        attn_drop_grad_kernel<<<blocks_for(B * H * C * C, 256), 256>>>(datt, drop_make(d), B * H * C * C, C);
        if ((rc = launched("attn_drop_grad_kernel", err)))
            return rc;
    }
    attn_dsoftmax_kernel<<<row_blocks(B * H * C), dim3(MOE_K_ATTN_LANES, ATTN_ROW_Y)>>>(datt, on ? attp : att,
                                                                                      B * H * C, C);
    if ((rc = launched("attn_dsoftmax_kernel", err)))
        return rc;
    attn_dqkv_kernel<<<blocks_for(B * C * 3 * D, 256), 256>>>(dqkv, datt, att, dout, qkv, B, C, D, H);
    return launched("attn_dqkv_kernel", err);
}

extern "C" int moe_cuda_attention_backward(float *dqkv, float *datt, const float *dout, const float *qkv,
                                           const float *att, size_t B, size_t C, size_t D, size_t H,
                                           struct moe_err *err)
{
    return moe_cuda_attention_backward_drop(dqkv, datt, dout, qkv, att, NULL, B, C, D, H, NULL, err);
}

// ---------------------------------------------------------------- the MoE layer's small steps (kernels/experts.h)

__global__ void jitter_kernel(float *xr, float *jit, const float *x, size_t n, float eps, uint64_t seed,
                              uint32_t purpose, uint32_t stream, uint64_t base)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        moe_k_jitter(xr, jit, x, eps, seed, purpose, stream, base, i);
}

__global__ void jitter_back_kernel(float *dx, const float *dxr, const float *jit, size_t n)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        moe_k_jitter_back(dx, dxr, jit, i);
}

__global__ void mul_kernel(float *h, const float *b, size_t n)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        moe_k_mul(h, b, i);
}

__global__ void swiglu_back_kernel(float *db, float *dh, const float *b, size_t n)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        moe_k_swiglu_back(db, dh, b, i);
}

__global__ void scatter_kernel(float *dx, const float *dxd, const int32_t *slot_row, size_t T, size_t S, size_t D)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < T * D; i += (size_t)gridDim.x * blockDim.x)
        moe_k_scatter(dx, dxd, slot_row, S, D, i / D, i % D);
}

extern "C" int moe_cuda_jitter(float *xr, float *jit, const float *x, size_t n, float eps, uint64_t seed,
                               uint32_t purpose, uint32_t stream, uint64_t base, struct moe_err *err)
{
    if (n == 0)
        return 0;
    jitter_kernel<<<blocks_for(n, 256), 256>>>(xr, jit, x, n, eps, seed, purpose, stream, base);
    return launched("jitter_kernel", err);
}

extern "C" int moe_cuda_jitter_back(float *dx, const float *dxr, const float *jit, size_t n, struct moe_err *err)
{
    if (n == 0)
        return 0;
    jitter_back_kernel<<<blocks_for(n, 256), 256>>>(dx, dxr, jit, n);
    return launched("jitter_back_kernel", err);
}

extern "C" int moe_cuda_mul(float *h, const float *b, size_t n, struct moe_err *err)
{
    if (n == 0)
        return 0;
    mul_kernel<<<blocks_for(n, 256), 256>>>(h, b, n);
    return launched("mul_kernel", err);
}

extern "C" int moe_cuda_swiglu_back(float *db, float *dh, const float *b, size_t n, struct moe_err *err)
{
    if (n == 0)
        return 0;
    swiglu_back_kernel<<<blocks_for(n, 256), 256>>>(db, dh, b, n);
    return launched("swiglu_back_kernel", err);
}

extern "C" int moe_cuda_scatter(float *dx, const float *dxd, const int32_t *slot_row, size_t T, size_t S, size_t D,
                                struct moe_err *err)
{
    if (T * D == 0)
        return 0;
    scatter_kernel<<<blocks_for(T * D, 256), 256>>>(dx, dxd, slot_row, T, S, D);
    return launched("scatter_kernel", err);
}

// ---------------------------------------------------------------- dropout (kernels/dropout.h)

// One thread per element j < n: mask element first + j.
__global__ void dropout_kernel(float *x, size_t n, uint64_t first, struct moe_k_drop d)
{
    for (size_t j = (size_t)blockIdx.x * blockDim.x + threadIdx.x; j < n; j += (size_t)gridDim.x * blockDim.x)
        moe_k_dropout(x, &d, first, j);
}

// One thread per element (r, column) of the gathered rows.
__global__ void dropout_rows_kernel(float *x, size_t N, size_t F, const int32_t *row_tok, const int32_t *row_slot,
                                    size_t S, struct moe_k_drop d)
{
    size_t n = N * F;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        size_t r = i / F;
        uint64_t key = row_tok ? (uint64_t)row_tok[r] * S + (uint64_t)row_slot[r] : r;
        moe_k_dropout(x + r * F, &d, key * F, i % F);
    }
}

extern "C" int moe_cuda_dropout(float *x, size_t n, uint64_t first, const struct moe_cuda_drop *d,
                                struct moe_err *err)
{
    if (!drop_on(d) || n == 0)
        return 0;
    dropout_kernel<<<blocks_for(n, 256), 256>>>(x, n, first, drop_make(d));
    return launched("dropout_kernel", err);
}

extern "C" int moe_cuda_dropout_rows(float *x, size_t N, size_t F, const int32_t *row_tok, const int32_t *row_slot,
                                     size_t S, const struct moe_cuda_drop *d, struct moe_err *err)
{
    if (!drop_on(d) || N * F == 0)
        return 0;
    dropout_rows_kernel<<<blocks_for(N * F, 256), 256>>>(x, N, F, row_tok, row_slot, S, drop_make(d));
    return launched("dropout_rows_kernel", err);
}

// ---------------------------------------------------------------- linear bias, residual add (kernels/linear.h)

// One thread per (t, o).
__global__ void bias_rows_kernel(float *y, size_t ldy, const float *b, size_t T, size_t O)
{
    size_t n = T * O;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        moe_k_bias_rows(y, ldy, b, i / O, i % O);
}

// One thread per column o: rows in order.
__global__ void bias_grad_kernel(float *db, const float *dy, size_t lddy, size_t T, size_t O)
{
    for (size_t o = (size_t)blockIdx.x * blockDim.x + threadIdx.x; o < O; o += (size_t)gridDim.x * blockDim.x)
        moe_k_bias_grad(db, dy, lddy, T, o);
}

// One thread per value.
__global__ void add_kernel(float *y, const float *x, size_t n)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        moe_k_add(y, x, i);
}

extern "C" int moe_cuda_bias_rows(float *y, size_t ldy, const float *b, size_t T, size_t O, struct moe_err *err)
{
    if (T * O == 0)
        return 0;
    bias_rows_kernel<<<blocks_for(T * O, 256), 256>>>(y, ldy, b, T, O);
    return launched("bias_rows_kernel", err);
}

extern "C" int moe_cuda_bias_grad(float *db, const float *dy, size_t lddy, size_t T, size_t O, struct moe_err *err)
{
    if (T * O == 0)
        return 0;
    bias_grad_kernel<<<blocks_for(O, 128), 128>>>(db, dy, lddy, T, O);
    return launched("bias_grad_kernel", err);
}

extern "C" int moe_cuda_add(float *y, const float *x, size_t n, struct moe_err *err)
{
    if (n == 0)
        return 0;
    add_kernel<<<blocks_for(n, 256), 256>>>(y, x, n);
    return launched("add_kernel", err);
}
