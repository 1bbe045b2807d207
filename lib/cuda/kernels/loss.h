// loss.h: softmax cross-entropy and the FFN activations as host/device
// functions (core/hd.h), in the CPU's order of operations (nn/loss.c
// moe_ce_rows, nn/activation.c). The exponentials and tanh are arguments, not
// calls: the CPU library takes them from SLEEF's vector functions
// (core/vmath.h), a device from its own expf/tanhf, so only those values differ
// between the two; tests/test_kernels.c feeds these functions the CPU's
// exponentials and checks the rest bit for bit.
//
// Cross-entropy (L_t = lse(y_t) - y_t[label_t], dL/dy = softmax(y_t) -
// onehot(label_t)): one thread per row. The row's max and argmax (the first on
// ties), then sum_o exp(y_o - max) in double in class order, then the loss; the
// gradient element by element from exp(y_o - lse). The batch sum, as on the CPU:
// MOE_K_CE_BLOCKS fixed blocks of rows (their size depends on T only), each
// summed in row order by one thread, then the blocks in order by one thread.
//
// Activations (elementwise, one thread per value): ReLU; GELU with the tanh
// approximation (Hendrycks & Gimpel 2016), given th = tanh(sqrt(2/pi) (x +
// 0.044715 x^3)) from moe_k_gelu_inner; SiLU (x sigmoid(x), Elfwing et al. 2018),
// given e = exp(-x).
#ifndef MOE_K_LOSS_H
#define MOE_K_LOSS_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "core/hd.h"

#define MOE_K_CE_BLOCKS 256 // nn/loss.c NB

// The largest logit of a row and its index (the first on ties).
static inline MOE_HD float moe_k_ce_max(const float *y, size_t O, int32_t *argmax)
{
    float m = y[0];
    size_t am = 0;
    for (size_t o = 1; o < O; o++)
        if (y[o] > m) {
            m = y[o];
            am = o;
        }
    if (argmax)
        *argmax = (int32_t)am;
    return m;
}

// The argument of the row's o-th exponential in the forward: y_o - max.
static inline MOE_HD float moe_k_ce_shift(float y, float m) { return y - m; }

// lse = max + log(sum), sum the exponentials of the shifted logits added in
// double in class order; the row's loss lse - y_label.
static inline MOE_HD double moe_k_ce_lse(float m, double sum) { return (double)m + log(sum); }
static inline MOE_HD double moe_k_ce_loss(double lse, const float *y, int32_t label) { return lse - (double)y[label]; }

// The argument of the o-th exponential of the gradient: y_o - lse, in float.
static inline MOE_HD float moe_k_ce_grad_arg(float y, double lse) { return (float)((double)y - lse); }
// dy_o += scale p_o, with p_o = exp(y_o - lse); then the label's element -= scale.
static inline MOE_HD void moe_k_ce_grad_elem(float *dy, float p, float scale) { *dy += scale * p; }
static inline MOE_HD void moe_k_ce_grad_label(float *dy, float scale) { *dy -= scale; }

// Rows [lo, hi) of block b of T rows: ceil(T / MOE_K_CE_BLOCKS) rows a block.
static inline MOE_HD void moe_k_ce_block(size_t T, size_t b, size_t *lo, size_t *hi)
{
    size_t bs = (T + MOE_K_CE_BLOCKS - 1) / MOE_K_CE_BLOCKS;
    *lo = b * bs < T ? b * bs : T;
    *hi = *lo + bs < T ? *lo + bs : T;
}

// ---------------------------------------------------------------- activations

#define MOE_K_GELU_C 0.7978845608028654f // sqrt(2/pi)
#define MOE_K_GELU_A 0.044715f

static inline MOE_HD float moe_k_relu(float x) { return x > 0.0f ? x : 0.0f; }
static inline MOE_HD float moe_k_relu_dx(float dy, float x) { return x > 0.0f ? dy : 0.0f; }

// The argument of GELU's tanh.
static inline MOE_HD float moe_k_gelu_inner(float x) { return MOE_K_GELU_C * (x + MOE_K_GELU_A * x * x * x); }
static inline MOE_HD float moe_k_gelu(float x, float th) { return 0.5f * x * (1.0f + th); }
// dx = dy d/dx gelu(x), written (nn/activation.c moe_gelu_backward).
static inline MOE_HD float moe_k_gelu_dx(float dy, float x, float th)
{
    float dth = (1.0f - th * th) * MOE_K_GELU_C * (1.0f + 3.0f * MOE_K_GELU_A * x * x);
    return dy * (0.5f * (1.0f + th) + 0.5f * x * dth);
}

// SiLU from e = exp(-x): s = 1 / (1 + e), y = x s.
static inline MOE_HD float moe_k_sigmoid_from_exp(float e) { return 1.0f / (1.0f + e); }
static inline MOE_HD float moe_k_silu(float x, float e) { return x * moe_k_sigmoid_from_exp(e); }
// dx = dy s (1 + x (1 - s)), written (nn/activation.c moe_silu_backward).
static inline MOE_HD float moe_k_silu_dx(float dy, float x, float e)
{
    float s = moe_k_sigmoid_from_exp(e);
    return dy * s * (1.0f + x * (1.0f - s));
}

#endif
