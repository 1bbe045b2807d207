// bench_expert_gemms.c: throwaway timing of the six GEMMs of a ReLU expert FFN (not built by meson),
// summed over E experts of n rows each with their own weights (D = 256, F = 1024, the shapes
// of experiments/common/bench-mlp-moe.json), to see which products lose speed when the same
// tokens are spread over more, smaller experts. Each line: milliseconds and GFLOP/s of one
// product over all experts (median of REPS passes), through bli_sgemm (moe_gemm_blis) and
// through moe_gemm (our packed path, core/gemm_pack.c). The products, as experts.c runs them:
//   x.W1^T  (n x D) . (F x D)^T     forward, first layer
//   h.W2^T  (n x F) . (D x F)^T     forward, second layer
//   dy.W2   (n x D) . (D x F)       backward, dh
//   dy^T.h  (D x n) . (n x F)       backward, dW2 += (k = n)
//   da.W1   (n x F) . (F x D)       backward, dx
//   da^T.x  (F x n) . (n x D)       backward, dW1 += (k = n)
// From the repository root:
//   cc -O2 -fopenmp -I lib dev/bench_expert_gemms.c build/lib/libmoe.a $(pkg-config --libs sleef)
//      -lblis -lcjson -lcsv -lz -lm -o /tmp/beg && /tmp/beg 8 1024 && /tmp/beg 64 128
// Arguments: E n [threads] [hot]; hot = 1 gives every expert the same weights (cache-resident).
// Set BLIS_ARCH_TYPE=6 for BLIS's AVX2 zen3 kernels.
#include <stdio.h>
#include <stdlib.h>

#include "core/gemm.h"
#include "core/prof.h"

#define REPS 5
#define NG 6

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s E n [threads] [hot]\n", argv[0]);
        return 2;
    }
    const size_t E = strtoul(argv[1], NULL, 10), n = strtoul(argv[2], NULL, 10), D = 256, F = 1024;
    const int threads = argc > 3 ? atoi(argv[3]) : 1, hot = argc > 4 && atoi(argv[4]);
    struct moe_err err;
    if (moe_blas_init(threads, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    const size_t We = hot ? 1 : E;
    float *W1 = malloc(We * F * D * sizeof(float)), *W2 = malloc(We * F * D * sizeof(float));
    float *dW1 = calloc(We * F * D, sizeof(float)), *dW2 = calloc(We * F * D, sizeof(float));
    float *x = malloc(E * n * D * sizeof(float)), *y = malloc(E * n * D * sizeof(float));
    float *a = malloc(E * n * F * sizeof(float)), *dh = malloc(E * n * F * sizeof(float));
    float *dx = calloc(E * n * D, sizeof(float));
    if (!W1 || !W2 || !dW1 || !dW2 || !x || !y || !a || !dh || !dx) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    for (size_t i = 0; i < We * F * D; i++)
        W1[i] = W2[i] = 0.001f * (float)(i % 7);
    for (size_t i = 0; i < E * n * D; i++)
        x[i] = y[i] = 0.01f * (float)(i % 5);
    for (size_t i = 0; i < E * n * F; i++)
        a[i] = dh[i] = 0.01f * (float)(i % 3);
    static const char *const names[NG] = { "x.W1^T", "h.W2^T", "dy.W2", "dy^T.h", "da.W1", "da^T.x" };
    const double flops = 2.0 * (double)n * D * F * E; // each product
    printf("E=%zu n=%zu threads=%d %s weights, BLIS %s\n", E, n, threads, hot ? "shared (hot)" : "own",
           moe_blas_get_info()->arch);
    for (int path = 0; path < 2; path++) {
    typedef void gemm_fn(int, int, size_t, size_t, size_t, float, const float *, size_t, const float *, size_t,
                         float, float *, size_t);
    gemm_fn *const G = path ? moe_gemm : moe_gemm_blis;
    double t[NG][REPS];
    for (int rep = -1; rep < REPS; rep++) { // rep -1: warm-up
        double s[NG] = { 0 };
        for (size_t e = 0; e < E; e++) {
            const size_t we = hot ? 0 : e;
            const float *w1 = W1 + we * F * D, *w2 = W2 + we * F * D;
            float *dw1 = dW1 + we * F * D, *dw2 = dW2 + we * F * D;
            float *xe = x + e * n * D, *ae = a + e * n * F, *ye = y + e * n * D, *dhe = dh + e * n * F;
            float *dxe = dx + e * n * D;
            double c = moe_prof_clock(), c2;
            G(0, 1, n, F, D, 1, xe, D, w1, D, 0, ae, F);
            s[0] += (c2 = moe_prof_clock()) - c;
            G(0, 1, n, D, F, 1, ae, F, w2, F, 0, ye, D);
            s[1] += (c = moe_prof_clock()) - c2;
            G(0, 0, n, F, D, 1, ye, D, w2, F, 0, dhe, F);
            s[2] += (c2 = moe_prof_clock()) - c;
            G(1, 0, D, F, n, 1, ye, D, ae, F, 1, dw2, F);
            s[3] += (c = moe_prof_clock()) - c2;
            G(0, 0, n, D, F, 1, dhe, F, w1, D, 1, dxe, D);
            s[4] += (c2 = moe_prof_clock()) - c;
            G(1, 0, F, D, n, 1, dhe, F, xe, D, 1, dw1, D);
            s[5] += moe_prof_clock() - c2;
        }
        if (rep >= 0)
            for (int g = 0; g < NG; g++)
                t[g][rep] = s[g];
    }
    double total = 0.0;
    printf(" %s\n", path ? "moe_gemm (packed)" : "bli_sgemm");
    for (int g = 0; g < NG; g++) {
        qsort(t[g], REPS, sizeof(double), cmp_d);
        double m = t[g][REPS / 2];
        total += m;
        printf("  %-7s %7.2f ms %6.0f GFLOP/s\n", names[g], m * 1e3, flops / m / 1e9);
    }
    printf("  all     %7.2f ms %6.0f GFLOP/s\n", total * 1e3, NG * flops / total / 1e9);
    }
    return 0;
}
