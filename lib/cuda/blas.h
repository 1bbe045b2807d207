// blas.h: fp32 GEMMs on the CUDA device through cuBLAS, callable from C with
// core/gemm.h's row-major arguments, so a device step reads like its CPU twin.
// cuBLAS is loaded with dlopen on first use (blas.cu says why), one handle per
// process on the device current at that time, on the default stream the
// launches of ops.cu use. Built only with CUDA.
#ifndef MOE_CUDA_BLAS_H
#define MOE_CUDA_BLAS_H

#include <stddef.h>

#include "core/status.h"

#ifdef __cplusplus
extern "C" {
#endif

// Load cuBLAS and make the process's handle (fp32 math, no atomics, host
// scalars), if not done yet: MOE_EIO naming what failed (the library, a
// symbol, the call).
int moe_cuda_blas_init(struct moe_err *err);

// Row-major C (M, N) = alpha op(A) op(B) + beta C on the device (moe_gemm's
// arguments: ta / tb transpose A (M, K) / B (K, N), leading dimensions in
// floats). M or N 0, or K 0 with beta 1: nothing. what names the product in
// an error ("cuBLAS: cublasSgemm (what) failed: ...").
int moe_cuda_gemm(int ta, int tb, size_t M, size_t N, size_t K, float alpha, const float *A, size_t lda,
                  const float *B, size_t ldb, float beta, float *C, size_t ldc, const char *what,
                  struct moe_err *err);

#ifdef __cplusplus
}
#endif

#endif
