// linear.h: what the fully connected layer (nn/linear.c) does around its GEMMs,
// and the residual add, as host/device functions (core/hd.h). The products
// themselves are cuBLAS's.
//
// Forward with a bias: y's rows are set to b, then the GEMM adds x W^T with
// beta = 1 (y = b + x W^T, the CPU's order: moe_linear_forward). Backward: the
// bias gradient db[o] += dy[t, o] over the rows t in order, one thread per
// column o, one float accumulator starting from db[o] (the CPU's loop, which
// is rows outer, so each column's sum is in row order). Each value has one
// writer. T = rows, O = outputs; ld = row strides.
#ifndef MOE_K_LINEAR_H
#define MOE_K_LINEAR_H

#include <stddef.h>

#include "core/hd.h"

// y[t, o] = b[o], one thread per (t, o).
static inline MOE_HD void moe_k_bias_rows(float *y, size_t ldy, const float *b, size_t t, size_t o)
{
    y[t * ldy + o] = b[o];
}

// db[o] += sum over t < T of dy[t, o], in row order.
static inline MOE_HD void moe_k_bias_grad(float *db, const float *dy, size_t lddy, size_t T, size_t o)
{
    float acc = db[o];
    for (size_t t = 0; t < T; t++)
        acc += dy[t * lddy + o];
    db[o] = acc;
}

// y[i] += x[i] (a residual connection), one thread per value.
static inline MOE_HD void moe_k_add(float *y, const float *x, size_t i) { y[i] += x[i]; }

#endif
