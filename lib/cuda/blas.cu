// blas.cu: blas.h. cuBLAS is loaded with dlopen (libcublas.so.<major> of the
// CUDA this was built with, by name, else beside the libcudart in use) when the
// first GEMM or moe_cuda_blas_init asks for it, not linked: linked, its
// libraries (libcublas, libcublasLt) cost every run of a CUDA build, CPU runs
// included, about 200 MB of resident memory and half a second at start-up.
//
// Numerics: cublasSetMathMode(CUBLAS_DEFAULT_MATH), so no TF32 tensor-op math:
// products round like fp32 FMA sums, in cuBLAS's own order (not BLIS's:
// results agree with the CPU within a tolerance, not bit for bit).
// Determinism: cuBLAS gives the same bits run after run on the same GPU
// architecture and SM count when one stream is active (cuBLAS documentation,
// "Results reproducibility"); the handle works on the default stream, with
// cublasSetAtomicsMode(CUBLAS_ATOMICS_NOT_ALLOWED) said explicitly.
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

#include "cuda/blas.h"

#define STR_(x) #x
#define STR(x) STR_(x)
#define CUBLAS_SONAME "libcublas.so." STR(CUBLAS_VER_MAJOR)

static struct {
    void *lib;
    cublasHandle_t handle;
    cublasStatus_t (*create)(cublasHandle_t *);
    cublasStatus_t (*set_math)(cublasHandle_t, cublasMath_t);
    cublasStatus_t (*set_atomics)(cublasHandle_t, cublasAtomicsMode_t);
    cublasStatus_t (*set_pointer)(cublasHandle_t, cublasPointerMode_t);
    cublasStatus_t (*sgemm)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int, const float *,
                            const float *, int, const float *, int, const float *, float *, int);
    const char *(*status_string)(cublasStatus_t);
} api;

static int load(struct moe_err *err)
{
    void *lib = dlopen(CUBLAS_SONAME, RTLD_NOW | RTLD_LOCAL);
    char path[4096];
    Dl_info di;
    if (!lib && dladdr((void *)&cudaGetDeviceCount, &di) && di.dli_fname) {
        const char *slash = strrchr(di.dli_fname, '/');
        if (slash && (size_t)(slash - di.dli_fname) + sizeof "/" CUBLAS_SONAME < sizeof path) {
            snprintf(path, sizeof path, "%.*s/%s", (int)(slash - di.dli_fname), di.dli_fname, CUBLAS_SONAME);
            lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
        }
    }
    if (!lib)
        return moe_error(err, MOE_EIO, "cuBLAS: cannot load %s: %s", CUBLAS_SONAME, dlerror());
    struct {
        void *fn;
        const char *name;
    } sym[] = {
        { &api.create, "cublasCreate_v2" },       { &api.set_math, "cublasSetMathMode" },
        { &api.set_atomics, "cublasSetAtomicsMode" }, { &api.set_pointer, "cublasSetPointerMode_v2" },
        { &api.sgemm, "cublasSgemm_v2" },         { &api.status_string, "cublasGetStatusString" },
    };
    for (size_t i = 0; i < sizeof sym / sizeof *sym; i++) {
        void *f = dlsym(lib, sym[i].name);
        if (!f) {
            dlclose(lib);
            return moe_error(err, MOE_EIO, "cuBLAS: %s has no %s", CUBLAS_SONAME, sym[i].name);
        }
        memcpy(sym[i].fn, &f, sizeof f);
    }
    api.lib = lib;
    return 0;
}

static int blas_check(cublasStatus_t s, const char *call, struct moe_err *err)
{
    if (s == CUBLAS_STATUS_SUCCESS)
        return 0;
    return moe_error(err, s == CUBLAS_STATUS_ALLOC_FAILED ? MOE_ENOMEM : MOE_EIO, "cuBLAS: %s failed: %s", call,
                     api.status_string(s));
}

extern "C" int moe_cuda_blas_init(struct moe_err *err)
{
    if (api.handle)
        return 0;
    int rc = api.lib ? 0 : load(err);
    cublasHandle_t h = NULL;
    if (!rc)
        rc = blas_check(api.create(&h), "cublasCreate", err);
    if (!rc)
        rc = blas_check(api.set_math(h, CUBLAS_DEFAULT_MATH), "cublasSetMathMode", err);
    if (!rc)
        rc = blas_check(api.set_atomics(h, CUBLAS_ATOMICS_NOT_ALLOWED), "cublasSetAtomicsMode", err);
    if (!rc)
        rc = blas_check(api.set_pointer(h, CUBLAS_POINTER_MODE_HOST), "cublasSetPointerMode", err);
    if (!rc)
        api.handle = h; // kept for the process: the driver releases it at exit
    return rc;
}

// cuBLAS is column-major: a row-major matrix is its transpose, so this is
// C^T = op(B)^T op(A)^T with the operands swapped.
extern "C" int moe_cuda_gemm(int ta, int tb, size_t M, size_t N, size_t K, float alpha, const float *A, size_t lda,
                             const float *B, size_t ldb, float beta, float *C, size_t ldc, const char *what,
                             struct moe_err *err)
{
    if (M == 0 || N == 0)
        return 0;
    if (K == 0 && beta == 1.0f)
        return 0;
    int rc = moe_cuda_blas_init(err);
    if (rc)
        return rc;
    cublasStatus_t s = api.sgemm(api.handle, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N, (int)N,
                                 (int)M, (int)K, &alpha, B, (int)ldb, A, (int)lda, &beta, C, (int)ldc);
    if (s == CUBLAS_STATUS_SUCCESS)
        return 0;
    char call[96];
    snprintf(call, sizeof call, "cublasSgemm (%s)", what);
    return blas_check(s, call, err);
}
