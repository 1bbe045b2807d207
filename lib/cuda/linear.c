// linear.c: linear.h, C against ops.h and blas.h (no CUDA here: the tests run
// it on the host through tests/cuda_host.c).
#include "cuda/linear.h"

#include "cuda/blas.h"
#include "cuda/ops.h"

int moe_cuda_linear_forward(float *y, const float *x, const float *w, const float *b, size_t T, size_t I, size_t O,
                            const char *what, struct moe_err *err)
{
    int rc = b ? moe_cuda_bias_rows(y, O, b, T, O, err) : 0;
    return rc ? rc : moe_cuda_gemm(0, 1, T, O, I, 1.0f, x, I, w, I, b ? 1.0f : 0.0f, y, O, what, err);
}

int moe_cuda_linear_backward(float *dx, float *dw, float *db, const float *dy, const float *x, const float *w,
                             size_t T, size_t I, size_t O, float beta_dx, const char *what, struct moe_err *err)
{
    int rc;
    if (T == 0)
        return 0;
    if (dx && (rc = moe_cuda_gemm(0, 0, T, I, O, 1.0f, dy, O, w, I, beta_dx, dx, I, what, err)))
        return rc;
    if ((rc = moe_cuda_gemm(1, 0, O, I, T, 1.0f, dy, O, x, I, 1.0f, dw, I, what, err)))
        return rc;
    return db ? moe_cuda_bias_grad(db, dy, O, T, O, err) : 0;
}
