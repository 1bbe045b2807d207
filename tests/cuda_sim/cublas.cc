// cublas.cc: the CUDA simulator's cuBLAS (tests/cuda_sim/README.md), built as
// libcublas.so.sim, which lib/cuda/blas.cu loads by name as it loads
// libcublas.so.<major> on a GPU machine. The functions blas.cu looks up, with
// cuBLAS's C names and its documented argument checks: a negative size, a
// leading dimension smaller than its matrix's rows (column-major), an
// unknown operation or data type, or an operand that is not device memory is
// CUBLAS_STATUS_INVALID_VALUE (cuBLAS itself reads no operand on the host and
// would fault on a GPU instead: the check stands in for that). The products
// are plain loops in float, each entry summed over 8 lanes (not BLIS's order,
// as cuBLAS's is not); the tests compare them with the CPU library within
// their GPU tolerances. A grouped call whose problems overlap (one writes
// what another reads or writes, a race on a GPU) is refused (disjoint below).
// MOE_CUDA_SIM_GROUPED=unsupported
// makes cublasGemmGroupedBatchedEx answer CUBLAS_STATUS_NOT_SUPPORTED, as a
// libcublas or GPU without it for fp32 does.
#include <cublas_v2.h>

#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <vector>

struct moe_sim_cublas {
    cublasMath_t math;
    cublasAtomicsMode_t atomics;
    cublasPointerMode_t pointers;
};

// The simulator's runtime (sim.cc) lives in the test program, exported to
// this library (the program is linked with --export-dynamic); without it
// nothing here can work, so its absence stops the program.
template <class F> static F runtime(const char *name)
{
    void *f = dlsym(RTLD_DEFAULT, name);
    if (!f) {
        fprintf(stderr, "libcublas.so.sim: no %s in the program (the CUDA simulator, linked with --export-dynamic)\n",
                name);
        abort();
    }
    return (F)f;
}

static int device_span(const void *p, size_t bytes)
{
    static const auto fn = runtime<int (*)(const void *, size_t)>("moe_sim_device_span");
    return fn(p, bytes);
}

// A faulted kernel's sticky error (sim.cc): every later call fails.
static int sticky(void)
{
    static const auto fn = runtime<int (*)(void)>("moe_sim_sticky");
    return fn();
}

static void device_access(int open)
{
    static const auto fn = runtime<void (*)(int)>("moe_sim_device_access");
    fn(open);
}

extern "C" {

cublasStatus_t cublasCreate_v2(cublasHandle_t *h)
{
    *h = (cublasHandle_t)calloc(1, sizeof **h);
    return *h ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_ALLOC_FAILED;
}

cublasStatus_t cublasSetMathMode(cublasHandle_t h, cublasMath_t m)
{
    if (!h)
        return CUBLAS_STATUS_NOT_INITIALIZED;
    if (m != CUBLAS_DEFAULT_MATH && m != CUBLAS_TF32_TENSOR_OP_MATH)
        return CUBLAS_STATUS_INVALID_VALUE;
    h->math = m;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetAtomicsMode(cublasHandle_t h, cublasAtomicsMode_t m)
{
    if (!h)
        return CUBLAS_STATUS_NOT_INITIALIZED;
    h->atomics = m;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetPointerMode_v2(cublasHandle_t h, cublasPointerMode_t m)
{
    if (!h)
        return CUBLAS_STATUS_NOT_INITIALIZED;
    if (m != CUBLAS_POINTER_MODE_HOST && m != CUBLAS_POINTER_MODE_DEVICE)
        return CUBLAS_STATUS_INVALID_VALUE;
    h->pointers = m;
    return CUBLAS_STATUS_SUCCESS;
}

const char *cublasGetStatusString(cublasStatus_t s)
{
    switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "the operation completed successfully";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "the library was not initialized";
    case CUBLAS_STATUS_ALLOC_FAILED: return "the resource allocation failed";
    case CUBLAS_STATUS_INVALID_VALUE: return "an invalid numeric value was used as an argument";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "an absent device architectural feature is required";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "the GPU program failed to execute";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "an internal operation failed";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "the functionality requested is not supported";
    }
    return "unknown error";
}

} // extern "C"

// Bytes spanned by a column-major rows x cols matrix with leading dimension ld.
static size_t span(int rows, int cols, int ld) { return rows && cols ? ((size_t)(cols - 1) * ld + rows) * 4 : 0; }
// The same for an operand that op(X) makes rows x cols (X itself cols x rows when transposed).
static size_t op_span(cublasOperation_t t, int rows, int cols, int ld)
{
    return t == CUBLAS_OP_N ? span(rows, cols, ld) : span(cols, rows, ld);
}

// C = alpha op(A) op(B) + beta C, column-major, C m x n; C is not read when beta is 0 (BLAS).
static cublasStatus_t gemm(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, float alpha,
                           const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc)
{
    if (sticky())
        return CUBLAS_STATUS_EXECUTION_FAILED;
    if ((ta != CUBLAS_OP_N && ta != CUBLAS_OP_T) || (tb != CUBLAS_OP_N && tb != CUBLAS_OP_T) || m < 0 || n < 0 ||
        k < 0)
        return CUBLAS_STATUS_INVALID_VALUE;
    const int ar = ta == CUBLAS_OP_N ? m : k, br = tb == CUBLAS_OP_N ? k : n; // A's and B's rows
    if (lda < (ar > 1 ? ar : 1) || ldb < (br > 1 ? br : 1) || ldc < (m > 1 ? m : 1))
        return CUBLAS_STATUS_INVALID_VALUE;
    if (m == 0 || n == 0)
        return CUBLAS_STATUS_SUCCESS;
    if ((k > 0 && alpha != 0.0f &&
         (!device_span(A, op_span(ta, m, k, lda)) || !device_span(B, op_span(tb, k, n, ldb)))) ||
        !device_span(C, span(m, n, ldc)))
        return CUBLAS_STATUS_INVALID_VALUE;
    // op(A) as m rows of k, op(B) as n rows of k, each row contiguous; each
    // entry of C a dot product over 8 lanes (l mod 8) joined in a fixed order
    std::vector<float> a((size_t)m * k), b((size_t)n * k);
    device_access(1);
    for (int i = 0; i < m; i++)
        for (int l = 0; l < k; l++)
            a[(size_t)i * k + l] = ta == CUBLAS_OP_N ? A[i + (size_t)l * lda] : A[l + (size_t)i * lda];
    for (int j = 0; j < n; j++)
        for (int l = 0; l < k; l++)
            b[(size_t)j * k + l] = tb == CUBLAS_OP_N ? B[l + (size_t)j * ldb] : B[j + (size_t)l * ldb];
    for (int j = 0; j < n; j++)
        for (int i = 0; i < m; i++) {
            const float *x = a.data() + (size_t)i * k, *y = b.data() + (size_t)j * k;
            float lane[8] = { 0, 0, 0, 0, 0, 0, 0, 0 };
            int l = 0;
            for (; l + 8 <= k; l += 8)
                for (int q = 0; q < 8; q++)
                    lane[q] += x[l + q] * y[l + q];
            for (; l < k; l++)
                lane[l % 8] += x[l] * y[l];
            const float s = ((lane[0] + lane[4]) + (lane[1] + lane[5])) + ((lane[2] + lane[6]) + (lane[3] + lane[7]));
            float *c = &C[i + (size_t)j * ldc];
            *c = beta == 0.0f ? alpha * s : alpha * s + beta * *c;
        }
    device_access(0);
    return CUBLAS_STATUS_SUCCESS;
}

namespace {
struct problem { // one product of a grouped call: its group and its operands
    int group;
    const float *A, *B;
    float *C;
};
// Byte ranges [lo, hi) of a problem's operands; empty (lo == hi) when not read.
struct range {
    uintptr_t lo, hi;
};
} // namespace
static range range_of(const void *p, size_t bytes) { return { (uintptr_t)p, (uintptr_t)p + bytes }; }
static int meet(range a, range b) { return a.lo < a.hi && b.lo < b.hi && a.lo < b.hi && b.lo < a.hi; }

// cuBLAS runs a grouped call's problems concurrently: one that writes what
// another reads or writes is a race on a GPU, with whatever bits the timing
// gives. The simulator runs them one after another, so it checks instead
// (the operands' spans, as gemm's device check takes them; problems that
// compute nothing are left out) and refuses such a call with
// CUBLAS_STATUS_INVALID_VALUE, the two problems named on stderr.
static cublasStatus_t disjoint(const std::vector<problem> &pr, const cublasOperation_t *ta,
                               const cublasOperation_t *tb, const int *m, const int *n, const int *k, const int *lda,
                               const int *ldb, const int *ldc, const float *beta)
{
    auto computes = [&](int g) { return m[g] > 0 && n[g] > 0 && !(k[g] == 0 && beta[g] == 1.0f); };
    for (size_t p = 0; p < pr.size(); p++) {
        const int g = pr[p].group;
        if (!computes(g))
            continue;
        const range c = range_of(pr[p].C, span(m[g], n[g], ldc[g]));
        for (size_t q = 0; q < pr.size(); q++) {
            const int h = pr[q].group;
            if (q == p || !computes(h))
                continue;
            const char *met = meet(c, range_of(pr[q].C, span(m[h], n[h], ldc[h])))                ? "writes"
                            : meet(c, range_of(pr[q].A, op_span(ta[h], m[h], k[h], lda[h]))) ||
                                      meet(c, range_of(pr[q].B, op_span(tb[h], k[h], n[h], ldb[h]))) ? "reads"
                                                                                                 : NULL;
            if (met) {
                fprintf(stderr,
                        "libcublas.so.sim: cublasGemmGroupedBatchedEx: problem %zu writes what problem %zu %s "
                        "(a GPU runs them concurrently)\n",
                        p, q, met);
                return CUBLAS_STATUS_INVALID_VALUE;
            }
        }
    }
    return CUBLAS_STATUS_SUCCESS;
}

extern "C" {

cublasStatus_t cublasSgemm_v2(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                              const float *alpha, const float *A, int lda, const float *B, int ldb, const float *beta,
                              float *C, int ldc)
{
    if (!h)
        return CUBLAS_STATUS_NOT_INITIALIZED;
    if (h->pointers != CUBLAS_POINTER_MODE_HOST) // the simulator takes the scalars from the host only
        return CUBLAS_STATUS_NOT_SUPPORTED;
    return gemm(ta, tb, m, n, k, *alpha, A, lda, B, ldb, *beta, C, ldc);
}

// The problem arrays (transposes, sizes, leading dimensions, scalars, group
// sizes) are host arrays of group_count; Aarray, Barray and Carray are device
// arrays of the sum of the group sizes, each a device pointer.
cublasStatus_t cublasGemmGroupedBatchedEx(cublasHandle_t h, const cublasOperation_t *transa,
                                          const cublasOperation_t *transb, const int *m, const int *n, const int *k,
                                          const void *alpha, const void *const *Aarray, cudaDataType_t Atype,
                                          const int *lda, const void *const *Barray, cudaDataType_t Btype,
                                          const int *ldb, const void *beta, void *const *Carray, cudaDataType_t Ctype,
                                          const int *ldc, int group_count, const int *group_size,
                                          cublasComputeType_t compute)
{
    if (!h)
        return CUBLAS_STATUS_NOT_INITIALIZED;
    const char *g = getenv("MOE_CUDA_SIM_GROUPED");
    if (g && strcmp(g, "unsupported") == 0)
        return CUBLAS_STATUS_NOT_SUPPORTED;
    if (Atype != CUDA_R_32F || Btype != CUDA_R_32F || Ctype != CUDA_R_32F || compute != CUBLAS_COMPUTE_32F)
        return CUBLAS_STATUS_NOT_SUPPORTED; // the simulator has the fp32 products only
    if (h->pointers != CUBLAS_POINTER_MODE_HOST || group_count < 0)
        return CUBLAS_STATUS_INVALID_VALUE;
    size_t total = 0;
    for (int i = 0; i < group_count; i++) {
        if (group_size[i] < 0)
            return CUBLAS_STATUS_INVALID_VALUE;
        total += (size_t)group_size[i];
    }
    const size_t bytes = total * sizeof(void *);
    if (total && (!device_span(Aarray, bytes) || !device_span(Barray, bytes) || !device_span(Carray, bytes)))
        return CUBLAS_STATUS_INVALID_VALUE;
    const float *al = (const float *)alpha, *be = (const float *)beta;
    std::vector<problem> pr(total);
    size_t p = 0;
    device_access(1); // the pointer arrays are device memory
    for (int i = 0; i < group_count; i++)
        for (int j = 0; j < group_size[i]; j++, p++)
            pr[p] = { i, (const float *)Aarray[p], (const float *)Barray[p], (float *)Carray[p] };
    device_access(0);
    cublasStatus_t s = disjoint(pr, transa, transb, m, n, k, lda, ldb, ldc, be);
    for (p = 0; p < total && s == CUBLAS_STATUS_SUCCESS; p++) {
        const int i = pr[p].group;
        s = gemm(transa[i], transb[i], m[i], n[i], k[i], al[i], pr[p].A, lda[i], pr[p].B, ldb[i], be[i], pr[p].C,
                 ldc[i]);
    }
    return s;
}

} // extern "C"
