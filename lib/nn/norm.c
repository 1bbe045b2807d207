// norm.c: LayerNorm and RMSNorm over the last dimension, forward and backward.
// T = rows (tokens), D = n_embd (the normalised width). x, y, dx, dy (T, D) with row stride D;
// g, b, dg, db (D); mean, rstd (T) are saved by forward for backward.
// Not here: normalisation over other axes (batch norm), or learned eps.
// The per-row statistics are summed in double in LANES interleaved partial sums (lane k takes
// the indices i = k mod LANES) joined in a fixed tree, one row at a time; the parameter
// gradients dg, db are summed over rows in row order. Every result is a fixed function of the
// inputs (no dependence on a thread count). One running sum in index order would be a chain
// of D dependent adds per statistic (about 4 cycles each), which made the norms 7% of a
// Transformer step; the lanes vectorise. Kernels never allocate.
// Threads: the forward and the input gradient split rows; the parameter gradients split
// columns (each column still summed over every row in row order), so no split changes a value.
#include <assert.h>
#include <math.h>
#include <omp.h>
#include <string.h>

#include "core/hot.h"
#include "nn/nn.h"

#define PAR_MIN (1u << 14) // values (T x D) before a loop goes parallel
#define CB 16              // columns per block (a cache line) of the parameter-gradient split
#define LANES 8            // partial sums per row statistic
#define CW 256             // columns of parameter gradient a thread sums on its stack at a time

// This thread's columns [*i0, *i1) of the parameter gradients: whole blocks of CB,
// split evenly over the team. Each column is still summed over every row in row
// order, so the split changes no value; rows outside, columns inside, the loop
// walks memory in order and its inner loop vectorises.
static void col_range(size_t *i0, size_t *i1, size_t D)
{
    size_t nb = (D + CB - 1) / CB, nt = (size_t)omp_get_num_threads(), id = (size_t)omp_get_thread_num();
    size_t b0 = nb * id / nt, b1 = nb * (id + 1) / nt;
    *i0 = b0 * CB < D ? b0 * CB : D;
    *i1 = b1 * CB < D ? b1 * CB : D;
}

static inline double lanes_total(const double *acc)
{
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

// sum_i x_i, and sum_i (x_i - m)^2, each in LANES partial sums (inlined into the MOE_HOT loops below,
// so they take the loop's instruction set)
static inline __attribute__((always_inline)) double row_sum(const float *x, size_t D)
{
    double acc[LANES] = { 0 };
    size_t i = 0;
    for (; i + LANES <= D; i += LANES)
        for (size_t k = 0; k < LANES; k++)
            acc[k] += x[i + k];
    for (; i < D; i++)
        acc[i % LANES] += x[i];
    return lanes_total(acc);
}

static inline __attribute__((always_inline)) double row_sq_dev(const float *x, double m, size_t D)
{
    double acc[LANES] = { 0 };
    size_t i = 0;
    for (; i + LANES <= D; i += LANES)
        for (size_t k = 0; k < LANES; k++) {
            double d = (double)x[i + k] - m;
            acc[k] += d * d;
        }
    for (; i < D; i++) {
        double d = (double)x[i] - m;
        acc[i % LANES] += d * d;
    }
    return lanes_total(acc);
}

// For the input gradient: sum_i dy_i g_i (when s1 is not NULL) and sum_i dy_i g_i xhat_i,
// xhat_i = (x_i - m) r, in LANES partial sums each.
static inline __attribute__((always_inline)) void row_grad_sums(double *s1, double *s2, const float *x,
                                                                const float *dy, const float *g, float m,
                                                                float r, size_t D)
{
    double a1[LANES] = { 0 }, a2[LANES] = { 0 };
    size_t i = 0;
    for (; i + LANES <= D; i += LANES)
        for (size_t k = 0; k < LANES; k++) {
            float xh = (x[i + k] - m) * r;
            float dxh = dy[i + k] * g[i + k];
            a1[k] += dxh;
            a2[k] += (double)dxh * xh;
        }
    for (; i < D; i++) {
        float xh = (x[i] - m) * r;
        float dxh = dy[i] * g[i];
        a1[i % LANES] += dxh;
        a2[i % LANES] += (double)dxh * xh;
    }
    if (s1)
        *s1 = lanes_total(a1);
    *s2 = lanes_total(a2);
}

// This thread's rows [*t0, *t1) of T: the static split (rows are independent, so
// any split gives the same values).
static void row_range(size_t *t0, size_t *t1, size_t T)
{
    size_t nt = (size_t)omp_get_num_threads(), id = (size_t)omp_get_thread_num();
    *t0 = T * id / nt;
    *t1 = T * (id + 1) / nt;
}

// The loops over rows and columns below are MOE_HOT (core/hot.h): an AVX2 clone
// beside the SSE2 default, the same bits on both (explicit lanes, no contraction).

// reference: Ba, Kiros & Hinton 2016, "Layer Normalization" (arXiv:1607.06450).
//   xhat = (x - mean) * rstd,  y = xhat * g + b,  var the population variance (divide by D).
// Backward with dxhat = dy * g:
//   dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)),  dg = sum_t dy * xhat,  db = sum_t dy.
// rms: RMSNorm (Zhang & Sennrich 2019, "Root Mean Square Layer Normalization", NeurIPS 2019):
//   xhat = x * rstd,  rstd = 1 / sqrt(mean(x^2) + eps),  y = xhat * g (no centring, no bias; mean unused).
// Backward with dxhat = dy * g:  dx = rstd * (dxhat - xhat * mean(dxhat * xhat)),  dg = sum_t dy * xhat.
MOE_HOT static void forward_rows(float *y, float *mean, float *rstd, const float *x, const float *g, const float *b,
                                 size_t t0, size_t t1, size_t D, float eps, int rms)
{
    for (size_t t = t0; t < t1; t++) {
        const float *xt = x + t * D;
        float *yt = y + t * D;
        if (rms) {
            double ss = row_sq_dev(xt, 0.0, D);
            float rf = (float)(1.0 / sqrt(ss / (double)D + (double)eps));
            for (size_t i = 0; i < D; i++)
                yt[i] = xt[i] * rf * g[i];
            rstd[t] = rf;
            continue;
        }
        double m = row_sum(xt, D) / (double)D;
        // two passes: the variance of values far from zero does not cancel catastrophically
        double v = row_sq_dev(xt, m, D) / (double)D;
        float mf = (float)m;
        float rf = (float)(1.0 / sqrt(v + (double)eps));
        for (size_t i = 0; i < D; i++)
            yt[i] = (xt[i] - mf) * rf * g[i] + b[i];
        mean[t] = mf;
        rstd[t] = rf;
    }
}

// dg (and db unless rms) += over every row in row order, for columns [i0, i1):
// summed on the stack CW columns at a time (the runs' ends need not be
// cache-line aligned in the gradient buffer: two threads adding to one line
// every row would fight over it).
MOE_HOT static void param_cols(float *dg, float *db, const float *dy, const float *x, const float *mean,
                               const float *rstd, size_t T, size_t D, size_t i0, size_t i1, int rms)
{
    for (size_t c0 = i0; c0 < i1; c0 += CW) {
        const size_t w = i1 - c0 < CW ? i1 - c0 : CW;
        float ag[CW], ab[CW];
        memcpy(ag, dg + c0, w * sizeof *ag);
        if (!rms)
            memcpy(ab, db + c0, w * sizeof *ab);
        for (size_t t = 0; t < T; t++) {
            const float *xt = x + t * D + c0, *dyt = dy + t * D + c0;
            float r = rstd[t];
            if (rms) {
                for (size_t i = 0; i < w; i++)
                    ag[i] += dyt[i] * (xt[i] * r);
                continue;
            }
            float m = mean[t];
            for (size_t i = 0; i < w; i++) {
                float xh = (xt[i] - m) * r;
                ag[i] += dyt[i] * xh;
                ab[i] += dyt[i];
            }
        }
        memcpy(dg + c0, ag, w * sizeof *ag);
        if (!rms)
            memcpy(db + c0, ab, w * sizeof *ab);
    }
}

// dx (rows [t0, t1)) += the input gradient.
MOE_HOT static void dx_rows(float *dx, const float *dy, const float *x, const float *mean, const float *rstd,
                            const float *g, size_t t0, size_t t1, size_t D, int rms)
{
    for (size_t t = t0; t < t1; t++) {
        const float *xt = x + t * D, *dyt = dy + t * D;
        float *dxt = dx + t * D;
        float r = rstd[t];
        if (rms) {
            double s_dxh_xh;
            row_grad_sums(NULL, &s_dxh_xh, xt, dyt, g, 0.0f, r, D);
            float c = (float)(s_dxh_xh / (double)D);
            for (size_t i = 0; i < D; i++)
                dxt[i] += r * (dyt[i] * g[i] - xt[i] * r * c);
            continue;
        }
        float m = mean[t];
        double s_dxh, s_dxh_xh;
        row_grad_sums(&s_dxh, &s_dxh_xh, xt, dyt, g, m, r, D);
        float a = (float)(s_dxh / (double)D), c = (float)(s_dxh_xh / (double)D);
        for (size_t i = 0; i < D; i++) {
            float xh = (xt[i] - m) * r;
            dxt[i] += r * (dyt[i] * g[i] - a - xh * c);
        }
    }
}

static void forward(float *y, float *mean, float *rstd, const float *x, const float *g, const float *b, size_t T,
                    size_t D, float eps, int rms)
{
    assert(D > 0);
    #pragma omp parallel if (T * D >= PAR_MIN)
    {
        size_t t0, t1;
        row_range(&t0, &t1, T);
        forward_rows(y, mean, rstd, x, g, b, t0, t1, D, eps, rms);
    }
}

static void backward(float *dx, float *dg, float *db, const float *dy, const float *x, const float *mean,
                     const float *rstd, const float *g, size_t T, size_t D, int rms)
{
    assert(D > 0);
    #pragma omp parallel if (T * D >= PAR_MIN)
    {
        size_t i0, i1;
        col_range(&i0, &i1, D);
        param_cols(dg, db, dy, x, mean, rstd, T, D, i0, i1, rms);
        if (dx) {
            size_t t0, t1;
            row_range(&t0, &t1, T);
            dx_rows(dx, dy, x, mean, rstd, g, t0, t1, D, rms);
        }
    }
}

void moe_layernorm_forward(float *y, float *mean, float *rstd, const float *x, const float *g, const float *b,
                           size_t T, size_t D, float eps)
{
    forward(y, mean, rstd, x, g, b, T, D, eps, 0);
}

void moe_layernorm_backward(float *dx, float *dg, float *db, const float *dy, const float *x, const float *mean,
                            const float *rstd, const float *g, size_t T, size_t D)
{
    backward(dx, dg, db, dy, x, mean, rstd, g, T, D, 0);
}

void moe_rmsnorm_forward(float *y, float *rstd, const float *x, const float *g, size_t T, size_t D, float eps)
{
    forward(y, NULL, rstd, x, g, NULL, T, D, eps, 1);
}

void moe_rmsnorm_backward(float *dx, float *dg, const float *dy, const float *x, const float *rstd, const float *g,
                          size_t T, size_t D)
{
    backward(dx, dg, NULL, dy, x, NULL, rstd, g, T, D, 1);
}
