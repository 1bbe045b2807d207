// norm.h: LayerNorm and RMSNorm forward as host/device functions (core/hd.h),
// in the CPU's exact order of operations (nn/norm.c): each row statistic is
// summed in double in MOE_K_LANES interleaved partial sums (lane k takes the
// indices i = k mod LANES, in increasing order) joined in a fixed tree. A GPU
// launch gives each (row, lane) to one thread, joins the lanes of a row in
// that tree, then normalises one element per thread; the result does not
// depend on the launch shape. tests/test_kernels.c runs the same functions
// over every (row, lane) and element and compares with nn/norm.c.
// D = the normalised width.
// Backward (Ba et al. 2016; Zhang & Sennrich 2019): the input gradient by
// (row, lane) threads and a join like the forward's, and the parameter
// gradients by one thread per column summing over rows in row order.
#ifndef MOE_K_NORM_H
#define MOE_K_NORM_H

#include <math.h>
#include <stddef.h>

#include "core/hd.h"

#define MOE_K_LANES 8

// Lane `lane` of sum_i x_i over a row of D values.
static inline MOE_HD double moe_k_lane_sum(const float *x, size_t D, int lane)
{
    double acc = 0.0;
    for (size_t i = (size_t)lane; i < D; i += MOE_K_LANES)
        acc += x[i];
    return acc;
}

// Lane `lane` of sum_i (x_i - m)^2 (m = 0: the sum of squares).
static inline MOE_HD double moe_k_lane_sq_dev(const float *x, double m, size_t D, int lane)
{
    double acc = 0.0;
    for (size_t i = (size_t)lane; i < D; i += MOE_K_LANES) {
        double d = (double)x[i] - m;
        acc += d * d;
    }
    return acc;
}

// The fixed tree that joins the lanes.
static inline MOE_HD double moe_k_lanes_join(const double *acc)
{
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

// LayerNorm statistics of a row from its lane sums: mean from sum, then the
// reciprocal standard deviation from the second pass's sum of squared
// deviations (two passes: no catastrophic cancellation far from zero).
static inline MOE_HD double moe_k_layernorm_mean(double sum, size_t D) { return sum / (double)D; }
static inline MOE_HD float moe_k_layernorm_rstd(double sq_dev, size_t D, float eps)
{
    return (float)(1.0 / sqrt(sq_dev / (double)D + (double)eps));
}
static inline MOE_HD float moe_k_layernorm_elem(float x, float mean, float rstd, float g, float b)
{
    return (x - mean) * rstd * g + b;
}

// RMSNorm: rstd from the lanes of the sum of squares; y = x rstd g.
static inline MOE_HD float moe_k_rmsnorm_rstd(double sum_sq, size_t D, float eps)
{
    return (float)(1.0 / sqrt(sum_sq / (double)D + (double)eps));
}
static inline MOE_HD float moe_k_rmsnorm_elem(float x, float rstd, float g) { return x * rstd * g; }

// Lane `lane` of a row's backward sums: a1 = sum_i dxh_i, a2 = sum_i dxh_i xhat_i,
// dxh = dy g, xhat = (x - mean) rstd (RMSNorm: mean 0).
static inline MOE_HD void moe_k_norm_grad_lane(double *a1, double *a2, const float *x, const float *dy, const float *g,
                                               float mean, float rstd, size_t D, int lane)
{
    double s1 = 0.0, s2 = 0.0;
    for (size_t i = (size_t)lane; i < D; i += MOE_K_LANES) {
        float xh = (x[i] - mean) * rstd;
        float dxh = dy[i] * g[i];
        s1 += dxh;
        s2 += (double)dxh * xh;
    }
    *a1 = s1;
    *a2 = s2;
}

// dx_i += rstd (dxh_i - a - xhat_i c), a = mean(dxh), c = mean(dxh xhat) as floats.
static inline MOE_HD float moe_k_layernorm_dx(float dx, float x, float dy, float g, float mean, float rstd, float a,
                                              float c)
{
    float xh = (x - mean) * rstd;
    return dx + rstd * (dy * g - a - xh * c);
}

// dx_i += rstd (dxh_i - x_i rstd c).
static inline MOE_HD float moe_k_rmsnorm_dx(float dx, float x, float dy, float g, float rstd, float c)
{
    return dx + rstd * (dy * g - x * rstd * c);
}

// Column col's parameter gradients over T rows in row order: dg += dy xhat,
// and for LayerNorm (db non-NULL) db += dy.
static inline MOE_HD void moe_k_norm_param_col(float *dg, float *db, const float *dy, const float *x,
                                               const float *mean, const float *rstd, size_t T, size_t D, size_t col)
{
    float ag = dg[col], ab = db ? db[col] : 0.0f;
    for (size_t t = 0; t < T; t++) {
        float xv = x[t * D + col], dv = dy[t * D + col], r = rstd[t];
        if (db) {
            float xh = (xv - mean[t]) * r;
            ag += dv * xh;
            ab += dv;
        } else {
            ag += dv * (xv * r);
        }
    }
    dg[col] = ag;
    if (db)
        db[col] = ab;
}

#endif
