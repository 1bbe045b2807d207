// optim.h: the optimizer's per-element update as host/device functions
// (core/hd.h), in the CPU's order of operations (train/optim.c): one thread
// per parameter on a GPU; tests/test_kernels.c runs them over every element
// and compares with moe_optim_step_norm. The per-step scalars (bias
// corrections, the clipping scale from the global gradient norm) are computed
// once on the host into struct moe_k_optim.
// reference: Loshchilov & Hutter 2019 (AdamW: decoupled weight decay,
// bias-corrected moments).
// The gradient norm's sum of squares (moe_optim_sum_sq) is below, as the
// CPU's fixed blocks and lanes; the clipping decision stays on the host.
#ifndef MOE_K_OPTIM_H
#define MOE_K_OPTIM_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "core/hd.h"

enum moe_k_optim_type { MOE_K_GD = 0, MOE_K_SGD = 1, MOE_K_ADAMW = 2 };

struct moe_k_optim {
    enum moe_k_optim_type type;
    float lr, wd, mu;              // learning rate, weight decay, SGD momentum
    float b1, b2, ob1, ob2, eps;   // AdamW betas, 1 - betas, epsilon
    float c1, c2;                  // AdamW bias corrections 1 - beta^t
    float clip_scale;              // the gradient's scale (1: not clipped)
};

// The step's scalars, as train/optim.c computes them (t: the step number, from 1).
static inline void moe_k_optim_setup(struct moe_k_optim *o, enum moe_k_optim_type type, double lr, double wd,
                                     double momentum, double beta1, double beta2, double eps, uint64_t t,
                                     float clip_scale)
{
    o->type = type;
    o->lr = (float)lr;
    o->wd = (float)wd;
    o->mu = (float)momentum;
    o->b1 = (float)beta1;
    o->b2 = (float)beta2;
    o->ob1 = (float)(1.0 - beta1);
    o->ob2 = (float)(1.0 - beta2);
    o->eps = (float)eps;
    o->c1 = (float)(1.0 - pow(beta1, (double)t));
    o->c2 = (float)(1.0 - pow(beta2, (double)t));
    o->clip_scale = clip_scale;
}

// Update weight i: w[i], and the moments m[i] (SGD, AdamW) and v[i] (AdamW);
// the clipped gradient is written back to g[i].
static inline MOE_HD void moe_k_optim_elem(const struct moe_k_optim *o, size_t i, float *w, float *g, float *m,
                                           float *v)
{
    float gi = g[i];
    if (o->clip_scale != 1.0f)
        g[i] = gi *= o->clip_scale;
    switch (o->type) {
    case MOE_K_GD:
        w[i] -= o->lr * gi;
        break;
    case MOE_K_SGD:
        m[i] = o->mu * m[i] + gi;
        w[i] -= o->lr * (m[i] + o->wd * w[i]);
        break;
    case MOE_K_ADAMW: {
        m[i] = o->b1 * m[i] + o->ob1 * gi;
        v[i] = o->b2 * v[i] + o->ob2 * gi * gi;
        float mhat = m[i] / o->c1, vhat = v[i] / o->c2;
        w[i] -= o->lr * (mhat / (sqrtf(vhat) + o->eps) + o->wd * w[i]);
        break;
    }
    }
}

// The sum of g[i]^2 over n values in double, in train/optim.c's order: the
// values cut into MOE_K_SQ_BLOCKS fixed blocks of ceil(n / MOE_K_SQ_BLOCKS)
// (the last ones short or empty), each summed in MOE_K_SQ_LANES interleaved
// lanes (lane k: the block's values k, k + 8, ... in order; the CPU's tail
// values fall in the lanes that continue these strides) joined in a fixed
// tree, then the blocks in order from 0. Two launches: one thread per
// (block, lane); one block of a thread per block, then its thread 0 for the
// total.
#define MOE_K_SQ_BLOCKS 256 // train/optim.c NB
#define MOE_K_SQ_LANES 8    // train/optim.c LANES

// lanes[b * 8 + k] = block b's lane k.
static inline MOE_HD void moe_k_sumsq_lane(double *lanes, const float *g, size_t n, size_t b, size_t k)
{
    size_t bs = (n + MOE_K_SQ_BLOCKS - 1) / MOE_K_SQ_BLOCKS;
    size_t lo = b * bs < n ? b * bs : n, hi = lo + bs < n ? lo + bs : n;
    double acc = 0.0;
    for (size_t i = lo + k; i < hi; i += MOE_K_SQ_LANES)
        acc += (double)g[i] * g[i];
    lanes[b * MOE_K_SQ_LANES + k] = acc;
}

// part[b] = block b's lanes joined.
static inline MOE_HD void moe_k_sumsq_block(double *part, const double *lanes, size_t b)
{
    const double *a = lanes + b * MOE_K_SQ_LANES;
    part[b] = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
}

// *acc += the blocks added in order (the trainer's sq += moe_optim_sum_sq(unit)).
static inline MOE_HD void moe_k_sumsq_total(double *acc, const double *part)
{
    double s = 0.0;
    for (size_t b = 0; b < MOE_K_SQ_BLOCKS; b++)
        s += part[b];
    *acc += s;
}

// Gradient accumulation's sum (core/params.h moe_fold: train/trainer.c's
// train.accumulate), element i: micro-batch k of a step adds its gradient g
// with weight w (its share of the step's rows) into the accumulator a, a =
// w g for k = 0, a += w g after; the last one writes out = a + w g (a
// multiplication then an addition, as the CPU's loop: no fused multiply-add).
static inline MOE_HD void moe_k_fold(float *a, const float *g, float *out, size_t i, float w, size_t k, int last)
{
    if (k == 0)
        a[i] = w * g[i];
    else if (!last)
        a[i] += w * g[i];
    else
        out[i] = a[i] + w * g[i];
}

// LoRA's merged weight (train/tune.c moe_lora_apply, Hu et al. 2021 eq. 3),
// element i: W = W0 + delta with delta = s B A already formed (a GEMM), one
// rounding as merging does; an element whose delta is exactly zero keeps
// W0's bits (a zero B gives the base model exactly, -0.0 included).
static inline MOE_HD void moe_k_lora_merge(float *w, const float *w0, const float *delta, size_t i)
{
    w[i] = delta[i] != 0.0f ? w0[i] + delta[i] : w0[i];
}

#endif
