// norm.c: LayerNorm and RMSNorm over the last dimension, forward and backward.
// T = rows (tokens), D = n_embd (the normalised width). x, y, dx, dy (T, D) with row stride D;
// g, b, dg, db (D); mean, rstd (T) are saved by forward for backward.
// Not here: normalisation over other axes (batch norm), or learned eps.
// The per-row statistics are summed in double, in index order, one row at a time, and the
// parameter gradients dg, db are summed over rows in row order, so every result is a fixed
// function of the inputs (no dependence on a thread count). Kernels never allocate.
// Threads: the forward and the input gradient split rows; the parameter gradients split
// columns (each column still summed over every row in row order), so no split changes a value.
#include <assert.h>
#include <math.h>

#include "nn/nn.h"

#define PAR_MIN (1u << 14) // values (T x D) before a loop goes parallel
#define CB 32              // columns per block of the parameter-gradient loops

// reference: Ba, Kiros & Hinton 2016, "Layer Normalization" (arXiv:1607.06450).
//   xhat = (x - mean) * rstd,  y = xhat * g + b,  var the population variance (divide by D).
// Backward with dxhat = dy * g:
//   dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)),  dg = sum_t dy * xhat,  db = sum_t dy.
void moe_layernorm_forward(float *y, float *mean, float *rstd, const float *x, const float *g, const float *b,
                           size_t T, size_t D, float eps)
{
    assert(D > 0);
    #pragma omp parallel for schedule(static) if (T * D >= PAR_MIN)
    for (size_t t = 0; t < T; t++) {
        const float *xt = x + t * D;
        float *yt = y + t * D;
        double s = 0.0;
        for (size_t i = 0; i < D; i++)
            s += xt[i];
        double m = s / (double)D;
        // two passes: the variance of values far from zero does not cancel catastrophically
        double v = 0.0;
        for (size_t i = 0; i < D; i++) {
            double d = (double)xt[i] - m;
            v += d * d;
        }
        v /= (double)D;
        float mf = (float)m;
        float rf = (float)(1.0 / sqrt(v + (double)eps));
        for (size_t i = 0; i < D; i++)
            yt[i] = (xt[i] - mf) * rf * g[i] + b[i];
        mean[t] = mf;
        rstd[t] = rf;
    }
}

void moe_layernorm_backward(float *dx, float *dg, float *db, const float *dy, const float *x, const float *mean,
                            const float *rstd, const float *g, size_t T, size_t D)
{
    assert(D > 0);
    #pragma omp parallel if (T * D >= PAR_MIN)
    {
        // dg, db: each thread its own blocks of CB columns, rows in order (the
        // inner loop runs across a block's columns, so it vectorises)
        #pragma omp for schedule(static) nowait
        for (size_t i0 = 0; i0 < D; i0 += CB) {
            size_t i1 = i0 + CB < D ? i0 + CB : D;
            for (size_t t = 0; t < T; t++) {
                const float *xt = x + t * D, *dyt = dy + t * D;
                float m = mean[t], r = rstd[t];
                for (size_t i = i0; i < i1; i++) {
                    float xh = (xt[i] - m) * r;
                    dg[i] += dyt[i] * xh;
                    db[i] += dyt[i];
                }
            }
        }
        if (dx) {
            #pragma omp for schedule(static)
            for (size_t t = 0; t < T; t++) {
                const float *xt = x + t * D, *dyt = dy + t * D;
                float m = mean[t], r = rstd[t];
                double s_dxh = 0.0, s_dxh_xh = 0.0;
                for (size_t i = 0; i < D; i++) {
                    float xh = (xt[i] - m) * r;
                    float dxh = dyt[i] * g[i];
                    s_dxh += dxh;
                    s_dxh_xh += (double)dxh * xh;
                }
                float a = (float)(s_dxh / (double)D), c = (float)(s_dxh_xh / (double)D);
                float *dxt = dx + t * D;
                for (size_t i = 0; i < D; i++) {
                    float xh = (xt[i] - m) * r;
                    dxt[i] += r * (dyt[i] * g[i] - a - xh * c);
                }
            }
        }
    }
}

// reference: Zhang & Sennrich 2019, "Root Mean Square Layer Normalization" (NeurIPS 2019).
//   xhat = x * rstd,  rstd = 1 / sqrt(mean(x^2) + eps),  y = xhat * g (no centring, no bias).
// Backward with dxhat = dy * g:  dx = rstd * (dxhat - xhat * mean(dxhat * xhat)),  dg = sum_t dy * xhat.
void moe_rmsnorm_forward(float *y, float *rstd, const float *x, const float *g, size_t T, size_t D, float eps)
{
    assert(D > 0);
    #pragma omp parallel for schedule(static) if (T * D >= PAR_MIN)
    for (size_t t = 0; t < T; t++) {
        const float *xt = x + t * D;
        float *yt = y + t * D;
        double ss = 0.0;
        for (size_t i = 0; i < D; i++)
            ss += (double)xt[i] * xt[i];
        float rf = (float)(1.0 / sqrt(ss / (double)D + (double)eps));
        for (size_t i = 0; i < D; i++)
            yt[i] = xt[i] * rf * g[i];
        rstd[t] = rf;
    }
}

void moe_rmsnorm_backward(float *dx, float *dg, const float *dy, const float *x, const float *rstd, const float *g,
                          size_t T, size_t D)
{
    assert(D > 0);
    #pragma omp parallel if (T * D >= PAR_MIN)
    {
        #pragma omp for schedule(static) nowait
        for (size_t i0 = 0; i0 < D; i0 += CB) {
            size_t i1 = i0 + CB < D ? i0 + CB : D;
            for (size_t t = 0; t < T; t++) {
                const float *xt = x + t * D, *dyt = dy + t * D;
                float r = rstd[t];
                for (size_t i = i0; i < i1; i++)
                    dg[i] += dyt[i] * (xt[i] * r);
            }
        }
        if (dx) {
            #pragma omp for schedule(static)
            for (size_t t = 0; t < T; t++) {
                const float *xt = x + t * D, *dyt = dy + t * D;
                float r = rstd[t];
                double s_dxh_xh = 0.0;
                for (size_t i = 0; i < D; i++) {
                    float xh = xt[i] * r;
                    s_dxh_xh += (double)(dyt[i] * g[i]) * xh;
                }
                float c = (float)(s_dxh_xh / (double)D);
                float *dxt = dx + t * D;
                for (size_t i = 0; i < D; i++)
                    dxt[i] += r * (dyt[i] * g[i] - xt[i] * r * c);
            }
        }
    }
}
