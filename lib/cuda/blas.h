// blas.h: fp32 GEMMs on the CUDA device through cuBLAS, callable from C with
// core/gemm.h's row-major arguments, so a device step reads like its CPU twin.
// cuBLAS is loaded with dlopen on first use (blas.cu says why), one handle per
// process on the device current at that time, on the default stream the
// launches of ops.cu use. Built only with CUDA.
#ifndef MOE_CUDA_BLAS_H
#define MOE_CUDA_BLAS_H

#include <limits.h>
#include <stddef.h>

#include "core/status.h"

#ifdef __cplusplus
extern "C" {
#endif

// Load cuBLAS and make the process's handle (fp32 math, no atomics, host
// scalars), if not done yet: MOE_EIO naming what failed (the library, a
// symbol, the call).
int moe_cuda_blas_init(struct moe_err *err);

// cublasSgemm and the grouped call take int sizes: a size_t past INT_MAX
// would wrap in the cast (a wrong product, or cuBLAS refusing a negative
// size), so moe_cuda_gemm and moe_cuda_gemm_grouped refuse it (MOE_EINVAL)
// with this check (the host emulation, tests/cuda_host.c, with the same).
static inline int moe_cuda_gemm_int_sizes(size_t M, size_t N, size_t K, size_t lda, size_t ldb, size_t ldc,
                                          const char *what, struct moe_err *err)
{
    const size_t lim = (size_t)INT_MAX;
    if (M > lim || N > lim || K > lim || lda > lim || ldb > lim || ldc > lim)
        return moe_error(err, MOE_EINVAL,
                         "cuBLAS (%s): a size over INT_MAX (M %zu, N %zu, K %zu, lda %zu, ldb %zu, ldc %zu)", what, M,
                         N, K, lda, ldb, ldc);
    return 0;
}

// Row-major C (M, N) = alpha op(A) op(B) + beta C on the device (moe_gemm's
// arguments: ta / tb transpose A (M, K) / B (K, N), leading dimensions in
// floats). M or N 0, or K 0 with beta 1: nothing. what names the product in
// an error ("cuBLAS: cublasSgemm (what) failed: ...").
int moe_cuda_gemm(int ta, int tb, size_t M, size_t N, size_t K, float alpha, const float *A, size_t lda,
                  const float *B, size_t ldb, float beta, float *C, size_t ldc, const char *what,
                  struct moe_err *err);

// One product of moe_cuda_gemm_grouped: its row-major shape (C (M, N), K the
// inner dimension) and its operands in device memory.
struct moe_cuda_gemm_group {
    size_t M, N, K;
    const float *A, *B;
    float *C;
};

// G products C_g = alpha op(A_g) op(B_g) + beta C_g (g: G groups in host
// memory) that share the transposes, the leading dimensions, alpha and beta,
// each with its own shape and operands: what moe_cuda_gemm does for each
// group in turn, its early returns included (M or N 0, or K 0 with beta 1:
// that group is skipped). The MoE layer's expert blocks: the forward's and the
// input gradients' products vary M (an expert's rows), the weight gradients'
// vary K. With cuBLAS 12.5+ the groups run as one cublasGemmGroupedBatchedEx
// call, concurrently: no group may write what another reads or writes. One
// group, or an older libcublas without it: cublasSgemm per group, in order.
// what names the call in an error ("cuBLAS: cublasGemmGroupedBatchedEx (what)
// failed: ...").
int moe_cuda_gemm_grouped(int ta, int tb, size_t G, const struct moe_cuda_gemm_group *g, float alpha, size_t lda,
                          size_t ldb, float beta, size_t ldc, const char *what, struct moe_err *err);

// How grouped GEMMs of several groups have run in this process so far (for
// reports, e.g. moe bench's): "cublasGemmGroupedBatchedEx", or "cublasSgemm per
// group" (no grouped call in this libcublas, or it refused fp32), or, before
// cuBLAS is loaded, "not loaded".
const char *moe_cuda_gemm_grouped_path(void);

#ifdef __cplusplus
}
#endif

#endif
