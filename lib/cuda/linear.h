// linear.h: nn/linear.c's fully connected layer on the CUDA device, for the
// device MoE layer (layer.c) and the device model step (model.c): the bias
// rows (ops.h) and GEMMs (blas.h) in nn/linear.c's order, so a layer reads like
// its CPU twin. Weights (O, I), rows of x (T, I); every pointer is device memory.
#ifndef MOE_CUDA_LINEAR_H
#define MOE_CUDA_LINEAR_H

#include <stddef.h>

#include "core/status.h"

// y (T, O) = x w^T + b (moe_linear_forward): with b, y's rows are set to b and
// the GEMM adds with beta 1; without (NULL), the GEMM writes y.
int moe_cuda_linear_forward(float *y, const float *x, const float *w, const float *b, size_t T, size_t I, size_t O,
                            const char *what, struct moe_err *err);
// moe_linear_backward: dx (T, I) = beta_dx dx + dy w (dx NULL: not wanted),
// dw (O, I) += dy^T x, db (O) += dy's column sums in row order (db NULL: none).
int moe_cuda_linear_backward(float *dx, float *dw, float *db, const float *dy, const float *x, const float *w,
                             size_t T, size_t I, size_t O, float beta_dx, const char *what, struct moe_err *err);

#endif
