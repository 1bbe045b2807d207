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
//
// Grouped GEMMs (moe_cuda_gemm_grouped): cublasGemmGroupedBatchedEx, cuBLAS
// 12.5+, looked up like the rest but optional: a libcublas without it, or one
// that answers NOT_SUPPORTED or ARCH_MISMATCH for these fp32 products, gets
// one cublasSgemm per group (from then on, for the whole process). Its
// compute type is CUBLAS_COMPUTE_32F (plain fp32, no TF32, as the handle's
// math mode). It sums in its own order, which
// may differ from cublasSgemm's for the same product: the bits are the
// grouped call's, repeated run after run as above, not the per-group loop's.
// Not run on a GPU yet (none was available when it was written); the host
// emulation (tests/cuda_host.c) runs the loop.
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <dlfcn.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda/blas.h"
#include "cuda/ops.h"

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
    // optional (NULL: not in this libcublas); the type spelt out, so this
    // builds against headers older than the function too
    cublasStatus_t (*gemm_grouped)(cublasHandle_t, const cublasOperation_t *, const cublasOperation_t *,
                                   const int *, const int *, const int *, const void *, const void *const *,
                                   cudaDataType_t, const int *, const void *const *, cudaDataType_t, const int *,
                                   const void *, void *const *, cudaDataType_t, const int *, int, const int *,
                                   cublasComputeType_t);
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
    void *f = dlsym(lib, "cublasGemmGroupedBatchedEx");
    if (f)
        memcpy(&api.gemm_grouped, &f, sizeof f);
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
    int rc = moe_cuda_gemm_int_sizes(M, N, K, lda, ldb, ldc, what, err);
    if (!rc)
        rc = moe_cuda_blas_init(err);
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

// moe_cuda_gemm_grouped's arguments for cuBLAS, kept for the process and
// grown on demand: the per-group shapes, transposes, leading dimensions,
// scalars and group sizes are host arrays (cuBLAS reads them during the
// call), the operand pointers a device array (its kernels read them), copied
// from ptr on the host. For a call of n groups each array is (rows, n).
static struct {
    size_t cap;                  // groups there is room for
    cublasOperation_t *op;       // (2, n): transa, transb
    int *dim;                    // (7, n): m, n, k, lda, ldb, ldc, group size
    float *scal;                 // (2, n): alpha, beta
    const void **ptr, **ptr_dev; // (3, n): A, B, C (cuBLAS's: row-major B, A, C); host, device
} grp;

static int grp_reserve(size_t n, struct moe_err *err)
{
    if (n <= grp.cap)
        return 0;
    size_t cap = n > 2 * grp.cap ? n : 2 * grp.cap;
    // cudaFree waits for the device, so no grouped GEMM still reads the old pointers
    free(grp.op), free(grp.dim), free(grp.scal), free(grp.ptr), moe_cuda_free(grp.ptr_dev);
    memset(&grp, 0, sizeof grp);
    grp.op = (cublasOperation_t *)malloc(2 * cap * sizeof *grp.op);
    grp.dim = (int *)malloc(7 * cap * sizeof *grp.dim);
    grp.scal = (float *)malloc(2 * cap * sizeof *grp.scal);
    grp.ptr = (const void **)malloc(3 * cap * sizeof *grp.ptr);
    int rc = 0;
    if (!grp.op || !grp.dim || !grp.scal || !grp.ptr)
        rc = moe_error(err, MOE_ENOMEM, "out of memory");
    else
        rc = moe_cuda_malloc((void **)&grp.ptr_dev, 3 * cap * sizeof *grp.ptr, "grouped GEMM pointers", err);
    if (rc) {
        free(grp.op), free(grp.dim), free(grp.scal), free(grp.ptr);
        memset(&grp, 0, sizeof grp);
        return rc;
    }
    grp.cap = cap;
    return 0;
}

extern "C" const char *moe_cuda_gemm_grouped_path(void)
{
    return !api.lib ? "not loaded" : api.gemm_grouped ? "cublasGemmGroupedBatchedEx" : "cublasSgemm per group";
}

// Each group as its own cublasSgemm, in group order.
static int gemm_loop(int ta, int tb, size_t G, const struct moe_cuda_gemm_group *g, float alpha, size_t lda,
                     size_t ldb, float beta, size_t ldc, const char *what, struct moe_err *err)
{
    for (size_t i = 0; i < G; i++) {
        int rc = moe_cuda_gemm(ta, tb, g[i].M, g[i].N, g[i].K, alpha, g[i].A, lda, g[i].B, ldb, beta, g[i].C, ldc,
                               what, err);
        if (rc)
            return rc;
    }
    return 0;
}

static int skipped(const struct moe_cuda_gemm_group *g, float beta)
{
    return g->M == 0 || g->N == 0 || (g->K == 0 && beta == 1.0f); // moe_cuda_gemm's early returns
}

// Each group as moe_cuda_gemm does it (operands swapped for column-major), in
// one call over the groups that compute something. The pointer array goes to
// the device with a synchronous cudaMemcpy on the default stream, so it lands
// after the GEMMs before it on that stream have read the last one, and before
// this one reads it.
extern "C" int moe_cuda_gemm_grouped(int ta, int tb, size_t G, const struct moe_cuda_gemm_group *g, float alpha,
                                     size_t lda, size_t ldb, float beta, size_t ldc, const char *what,
                                     struct moe_err *err)
{
    size_t n = 0, last = 0;
    int rc = 0;
    for (size_t i = 0; i < G && !rc; i++)
        if (!skipped(&g[i], beta)) {
            n++, last = i;
            rc = moe_cuda_gemm_int_sizes(g[i].M, g[i].N, g[i].K, lda, ldb, ldc, what, err);
        }
    if (rc || n == 0)
        return rc;
    rc = moe_cuda_blas_init(err);
    if (rc)
        return rc;
    if (n == 1) // one product: no pointers to copy
        return moe_cuda_gemm(ta, tb, g[last].M, g[last].N, g[last].K, alpha, g[last].A, lda, g[last].B, ldb, beta,
                             g[last].C, ldc, what, err);
    if (!api.gemm_grouped)
        return gemm_loop(ta, tb, G, g, alpha, lda, ldb, beta, ldc, what, err);
    if (n > (size_t)INT_MAX)
        return moe_error(err, MOE_EINVAL, "cuBLAS: %zu groups in one grouped GEMM (%s), more than %d", n, what,
                         INT_MAX);
    if ((rc = grp_reserve(n, err)))
        return rc;
    size_t j = 0;
    for (size_t i = 0; i < G; i++) {
        if (skipped(&g[i], beta))
            continue;
        grp.op[j] = tb ? CUBLAS_OP_T : CUBLAS_OP_N, grp.op[n + j] = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
        grp.dim[j] = (int)g[i].N, grp.dim[n + j] = (int)g[i].M, grp.dim[2 * n + j] = (int)g[i].K;
        grp.dim[3 * n + j] = (int)ldb, grp.dim[4 * n + j] = (int)lda, grp.dim[5 * n + j] = (int)ldc;
        grp.dim[6 * n + j] = 1;
        grp.scal[j] = alpha, grp.scal[n + j] = beta;
        grp.ptr[j] = g[i].B, grp.ptr[n + j] = g[i].A, grp.ptr[2 * n + j] = g[i].C;
        j++;
    }
    if ((rc = moe_cuda_to_device(grp.ptr_dev, grp.ptr, 3 * n * sizeof *grp.ptr, err)))
        return rc;
    const int *dim = grp.dim;
    cublasStatus_t s = api.gemm_grouped(api.handle, grp.op, grp.op + n, dim, dim + n, dim + 2 * n, grp.scal,
                                        grp.ptr_dev, CUDA_R_32F, dim + 3 * n, grp.ptr_dev + n, CUDA_R_32F, dim + 4 * n,
                                        grp.scal + n, (void *const *)(grp.ptr_dev + 2 * n), CUDA_R_32F, dim + 5 * n,
                                        (int)n, dim + 6 * n, CUBLAS_COMPUTE_32F);
    if (s == CUBLAS_STATUS_SUCCESS)
        return 0;
    if (s == CUBLAS_STATUS_NOT_SUPPORTED || s == CUBLAS_STATUS_ARCH_MISMATCH) {
        // this libcublas or GPU has the call but not for fp32 here: the loop,
        // for this and every later grouped GEMM of the process (its bits, run after run)
        api.gemm_grouped = NULL;
        return gemm_loop(ta, tb, G, g, alpha, lda, ldb, beta, ldc, what, err);
    }
    char call[96];
    snprintf(call, sizeof call, "cublasGemmGroupedBatchedEx (%s)", what);
    return blas_check(s, call, err);
}
