// linear.c: the fully connected layer, forward and backward, on BLIS (core/gemm).
// T = rows, I = in, O = out. Weights (O, I), as in PyTorch's nn.Linear.
#include "core/gemm.h"
#include "nn/nn.h"

void moe_linear_forward(float *y, size_t ldy, const float *x, size_t ldx, const float *w, const float *b,
                        size_t T, size_t I, size_t O)
{
    if (b) {
        for (size_t t = 0; t < T; t++)
            for (size_t o = 0; o < O; o++)
                y[t * ldy + o] = b[o];
    }
    moe_gemm(0, 1, T, O, I, 1.0f, x, ldx, w, I, b ? 1.0f : 0.0f, y, ldy);
}

static void linear_backward(float *dx, size_t lddx, float *dw, float *db, const float *dy, size_t lddy,
                            const float *x, size_t ldx, const float *w, size_t T, size_t I, size_t O, float beta_dx)
{
    if (T == 0)
        return;
    if (dx)
        moe_gemm(0, 0, T, I, O, 1.0f, dy, lddy, w, I, beta_dx, dx, lddx);
    moe_gemm(1, 0, O, I, T, 1.0f, dy, lddy, x, ldx, 1.0f, dw, I);
    if (db) {
        // Summed in row order, so the result does not depend on the thread count.
        for (size_t t = 0; t < T; t++)
            for (size_t o = 0; o < O; o++)
                db[o] += dy[t * lddy + o];
    }
}

void moe_linear_backward(float *dx, size_t lddx, float *dw, float *db, const float *dy, size_t lddy,
                         const float *x, size_t ldx, const float *w, size_t T, size_t I, size_t O)
{
    linear_backward(dx, lddx, dw, db, dy, lddy, x, ldx, w, T, I, O, 1.0f);
}

void moe_linear_backward_set(float *dx, size_t lddx, float *dw, float *db, const float *dy, size_t lddy,
                             const float *x, size_t ldx, const float *w, size_t T, size_t I, size_t O)
{
    linear_backward(dx, lddx, dw, db, dy, lddy, x, ldx, w, T, I, O, 0.0f);
}
