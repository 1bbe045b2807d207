// bench_gemm_threads.c: throwaway timing (not built by meson) of what a second thread gives one
// product, through our packed GEMM (core/gemm_pack.c) and through bli_sgemm, over the shapes the
// models make: an expert's 128-row blocks at E = 64 (bench-mlp-moe.json), the 1024-row blocks at
// E = 8, lm.json's 64-wide layers over 2048 tokens, lm-base.json's. Each line: GFLOP/s at 1 and 2
// threads (best of 5 timings of calls adding up to 2 GFLOP) and the ratio, and whether
// the 2-thread result is the same bits as the 1-thread one (it must be).
// From the repository root:
//   cc -O2 -fopenmp -I lib dev/bench_gemm_threads.c build/lib/libmoe.a $(pkg-config --libs sleef)
//      -lblis -lcjson -lcsv -lz -lm -o /tmp/bgt && /tmp/bgt
// Set BLIS_ARCH_TYPE=6 for BLIS's AVX2 zen3 kernels.
//
// Why it exists: until 2026-12-05 gemm_pack.c split each packed block's micro-tiles between the
// threads (BLIS's scheme), and products with a small side gained little from a second thread. The
// same program with that scheme, 2026-12-05, skx, 2-core Zen 5 (GFLOP/s 1 thread, 2 threads
// shared blocks, 2 threads in strips as now):
//   M=128 N=1024 K=256 x.W^T  190  200 (1.05x)  287 (1.51x)
//   M=128 N=256 K=1024 x.W^T  173  192 (1.11x)  277 (1.60x)
//   M=1024 N=256 K=128 dW     180  290 (1.61x)  314 (1.74x)
//   M=1024 N=1024 K=1024      179  334 (1.86x)  345 (1.92x)
//   M=2048 N=64 K=64 x.W^T    166  242 (1.46x)  275 (1.65x)
//   M=64 N=64 K=2048 dW       123  103 (0.84x)  210 (1.71x)
// and every shape of the list below was faster in strips, with the same bits.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/gemm.h"
#include "core/prof.h"

struct shape {
    size_t M, N, K;
    int ta, tb;
    const char *what;
};

static const struct shape shapes[] = {
    { 128, 1024, 256, 0, 1, "E=64 expert, x.W1^T" },
    { 128, 256, 1024, 0, 1, "E=64 expert, h.W2^T" },
    { 128, 1024, 256, 0, 0, "E=64 expert, dy.W2" },
    { 256, 1024, 128, 1, 0, "E=64 expert, dW2" },
    { 1024, 256, 128, 1, 0, "E=64 expert, dW1" },
    { 1024, 1024, 256, 0, 1, "E=8 expert, x.W1^T" },
    { 1024, 256, 1024, 0, 1, "E=8 expert, h.W2^T" },
    { 1024, 1024, 1024, 0, 0, "square" },
    { 2048, 64, 64, 0, 1, "lm.json, x.Wq^T" },
    { 2048, 192, 64, 0, 1, "lm.json, x.Wqkv^T" },
    { 2048, 256, 64, 0, 1, "lm.json, x.Wout^T" },
    { 64, 64, 2048, 1, 0, "lm.json, dW" },
    { 2048, 64, 256, 0, 1, "lm.json, head" },
    { 4096, 256, 1024, 0, 1, "lm-base, FFN down" },
    { 256, 1024, 4096, 1, 0, "lm-base, dW FFN" },
};

typedef void gemm_fn(int, int, size_t, size_t, size_t, float, const float *, size_t, const float *, size_t, float,
                     float *, size_t);

static void packed(int ta, int tb, size_t M, size_t N, size_t K, float alpha, const float *A, size_t lda,
                   const float *B, size_t ldb, float beta, float *C, size_t ldc, int threads)
{
    if (moe_gemm_packed(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, threads)) {
        fprintf(stderr, "moe_gemm_packed refused (micro-kernel not usable)\n");
        exit(1);
    }
}

int main(void)
{
    struct moe_err err;
    if (moe_blas_init(2, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    const size_t cap = (size_t)1 << 24;
    float *A = malloc(cap * 4), *B = malloc(cap * 4), *C = malloc(cap * 4), *C1 = malloc(cap * 4);
    if (!A || !B || !C || !C1)
        return 1;
    for (size_t i = 0; i < cap; i++)
        A[i] = B[i] = 0.001f * (float)(i % 7) - 0.002f, C[i] = 0.0f;
    printf("BLIS %s; GFLOP/s: packed 1t, 2t (ratio, same bits) | bli_sgemm 1t, 2t (ratio)\n",
           moe_blas_get_info()->arch);
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
        const struct shape *g = &shapes[s];
        const size_t lda = g->ta ? g->M : g->K, ldb = g->tb ? g->K : g->N;
        const double flops = 2.0 * (double)g->M * (double)g->N * (double)g->K;
        const int reps = (int)(2e9 / flops) + 1;
        double r[4];
        int same = 1;
        for (int v = 0; v < 4; v++) { // packed 1, packed 2, blis 1, blis 2
            const int th = v % 2 + 1;
            if (moe_blas_init(th, &err)) // later calls only change the thread count
                return 1;
            double best = 1e30;
            for (int rep = 0; rep < 5; rep++) {
                double c = moe_prof_clock();
                for (int i = 0; i < reps; i++) {
                    if (v < 2)
                        packed(g->ta, g->tb, g->M, g->N, g->K, 1.0f, A, lda, B, ldb, 0.0f, C, g->N, th);
                    else
                        moe_gemm_blis(g->ta, g->tb, g->M, g->N, g->K, 1.0f, A, lda, B, ldb, 0.0f, C, g->N);
                }
                double t = moe_prof_clock() - c;
                best = t < best ? t : best;
            }
            r[v] = flops * reps / best / 1e9;
            if (v == 0)
                memcpy(C1, C, g->M * g->N * 4);
            else if (v == 1)
                same = memcmp(C1, C, g->M * g->N * 4) == 0;
        }
        printf("M=%5zu N=%5zu K=%5zu %-20s %5.0f %5.0f (%.2fx, %s) | %5.0f %5.0f (%.2fx)\n", g->M, g->N, g->K,
               g->what, r[0], r[1], r[1] / r[0], same ? "same" : "DIFFER", r[2], r[3], r[3] / r[2]);
    }
    return 0;
}
