// nn.h: dense building blocks as forward/backward pairs over plain float buffers.
// T = rows (tokens or examples), I = input width, O = output width.
// Conventions (llm.c): outputs first, then inputs, then weights, then dims;
// backward ADDS into gradient buffers (caller zeroes them once); leading
// dimensions (row strides) are explicit so expert blocks can live inside
// larger arrays. Weights are stored (out, in). Kernels never allocate.
#ifndef MOE_NN_H
#define MOE_NN_H

#include <stddef.h>
#include <stdint.h>

// y (T, O; row stride ldy) = x (T, I; stride ldx) . W^T + b, W (O, I), b (O) or NULL.
void moe_linear_forward(float *y, size_t ldy, const float *x, size_t ldx, const float *w, const float *b,
                        size_t T, size_t I, size_t O);
// dx += dy . W (dx may be NULL), dW += dy^T . x, db += sum_t dy (db may be NULL).
void moe_linear_backward(float *dx, size_t lddx, float *dw, float *db, const float *dy, size_t lddy,
                         const float *x, size_t ldx, const float *w, size_t T, size_t I, size_t O);

enum moe_act { MOE_ACT_TANH = 0, MOE_ACT_RELU = 1, MOE_ACT_SIGMOID = 2, MOE_ACT_IDENTITY = 3 };
int moe_act_from_name(const char *name); // -1 when unknown
const char *moe_act_name(enum moe_act a);
// y = act(x) elementwise over n values (in place allowed).
void moe_act_forward(enum moe_act a, float *y, const float *x, size_t n);
// dx += dy * act'(x), written in terms of the saved output y.
void moe_act_backward(enum moe_act a, float *dx, const float *dy, const float *y, size_t n);

// Mean squared error over rows, summed over outputs: L = (1/T) sum_t ||y_t - d_t||^2.
// Returns sum_t ||y_t - d_t||^2 (the caller divides by its own T);
// dy (may be NULL) += scale * 2 (y - d).
double moe_mse_forward_backward(float *dy, const float *y, const float *d, size_t T, size_t O, float scale);

// Softmax cross-entropy over O classes: L_t = -log softmax(y_t)[label_t].
// Returns sum_t L_t; dy (may be NULL) += scale * (softmax(y_t) - onehot(label_t)).
double moe_ce_forward_backward(float *dy, const float *y, const int32_t *label, size_t T, size_t O, float scale);

// Row-wise softmax of z (T, E) into p; log-sum-exp per row into lse (may be NULL).
void moe_softmax_forward(float *p, float *lse, const float *z, size_t T, size_t E);

#endif
