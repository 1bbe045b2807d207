// gemm.c: BLIS GEMM wrapper and sub-configuration choice (see gemm.h).
// reference: BLIS typed API bli_sgemm (docs/BLISTypedAPI.md in the BLIS source tree,
// github.com/flame/blis); README.md, Speed notes, for why we override BLIS 0.9.0's
// CPU detection.
#include "core/gemm.h"

#include <assert.h>
#include <blis.h>

#include <cpuid.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/prof.h"
#ifdef _OPENMP
#include <omp.h>
#endif

static struct moe_blas_info g_info;
static int g_current;              // threads in use now (adaptive threads), 0 before the first change
static double g_last_check = -1.0; // when moe_threads_adapt last looked
static int g_initialised;
// Per-call thread counts: BLIS's OpenMP start-up costs far more than a small
// GEMM (a 400x2x4 product ran ~80x slower on 2 threads than on 1), so only
// products of at least MT_MIN_FLOPS use every thread. BLIS never splits the k
// dimension, so the result is the same either way.
#define MT_MIN_FLOPS (2.0 * 128 * 128 * 128)
static rntm_t g_rntm_one = BLIS_RNTM_INITIALIZER;
static rntm_t g_rntm_all = BLIS_RNTM_INITIALIZER;

static void gemm_rntm(int trans_a, int trans_b, size_t M, size_t N, size_t K, float alpha, const float *A,
                      size_t lda, const float *B, size_t ldb, float beta, float *C, size_t ldc, rntm_t rntm)
{
    assert(g_initialised && "moe_blas_init must run before moe_gemm");
    if (M == 0 || N == 0)
        return;
    if (K == 0) {
        // BLIS handles k = 0, but keep the beta semantics explicit (beta = 0 overwrites NaN).
        for (size_t i = 0; i < M; i++)
            for (size_t j = 0; j < N; j++)
                C[i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[i * ldc + j];
        return;
    }
    // BLIS takes general strides, so row-major is rs = ld, cs = 1 and a transpose
    // is a flag on the stored matrix; its prototypes take non-const pointers.
    bli_sgemm_ex(trans_a ? BLIS_TRANSPOSE : BLIS_NO_TRANSPOSE, trans_b ? BLIS_TRANSPOSE : BLIS_NO_TRANSPOSE,
                 (dim_t)M, (dim_t)N, (dim_t)K, &alpha, (float *)A, (inc_t)lda, 1, (float *)B, (inc_t)ldb, 1,
                 &beta, C, (inc_t)ldc, 1, NULL, &rntm);
}

static int g_threads_now = 1; // threads of the next parallel product (adaptive threads change it)

static int packed_shape(size_t M, size_t N, size_t K)
{
    return 2.0 * (double)M * (double)N * (double)K >= MT_MIN_FLOPS && moe_gemm_packed_ready();
}

// The threads a product of this size gets from moe_gemm: all of them when it is
// big enough and not called from a caller's own parallel loop, else one.
static int product_threads(size_t M, size_t N, size_t K)
{
    int big = 2.0 * (double)M * (double)N * (double)K >= MT_MIN_FLOPS;
#ifdef _OPENMP
    big = big && !omp_in_parallel(); // called from a caller's own parallel loop: one thread each
#endif
    return big ? g_threads_now : 1;
}

void moe_gemm(int trans_a, int trans_b, size_t M, size_t N, size_t K, float alpha, const float *A,
              size_t lda, const float *B, size_t ldb, float beta, float *C, size_t ldc)
{
    if (K > 0)
        moe_gemm_record_add(trans_a, trans_b, M, N, K);
    const int threads = product_threads(M, N, K);
    if (packed_shape(M, N, K) &&
        moe_gemm_packed(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, threads) == 0)
        return;
    gemm_rntm(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, threads > 1 ? g_rntm_all : g_rntm_one);
}

void moe_gemm_blis(int trans_a, int trans_b, size_t M, size_t N, size_t K, float alpha, const float *A,
                   size_t lda, const float *B, size_t ldb, float beta, float *C, size_t ldc)
{
    gemm_rntm(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc,
              product_threads(M, N, K) > 1 ? g_rntm_all : g_rntm_one);
}

void moe_gemm_serial(int trans_a, int trans_b, size_t M, size_t N, size_t K, float alpha, const float *A,
                     size_t lda, const float *B, size_t ldb, float beta, float *C, size_t ldc)
{
    if (packed_shape(M, N, K) && moe_gemm_packed(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, 1) == 0)
        return;
    gemm_rntm(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, g_rntm_one);
}

void moe_gemm_ref(int trans_a, int trans_b, size_t M, size_t N, size_t K, float alpha, const float *A,
                  size_t lda, const float *B, size_t ldb, float beta, float *C, size_t ldc)
{
    for (size_t i = 0; i < M; i++)
        for (size_t j = 0; j < N; j++) {
            double acc = 0.0;
            for (size_t k = 0; k < K; k++) {
                float a = trans_a ? A[k * lda + i] : A[i * lda + k];
                float b = trans_b ? B[j * ldb + k] : B[k * ldb + j];
                acc += (double)a * b;
            }
            float c = beta == 0.0f ? 0.0f : beta * C[i * ldc + j];
            C[i * ldc + j] = (float)(alpha * acc) + c;
        }
}

// Would BLIS 0.9.0's own detection (frame/base/bli_cpuid.c) fall back to generic?
// It knows Intel (skx, knl, haswell, sandybridge) by features, and AMD only by
// family: 0x15 (bulldozer line), 0x17 (zen, zen2), 0x19 (zen3). Any other AMD
// family (zen4 is 0x19, zen5 is 0x1A) or vendor gets `generic`.
static int blis_would_be_generic(void)
{
    unsigned a, b, c, d;
    if (!__get_cpuid(0, &a, &b, &c, &d))
        return 1;
    char vendor[13];
    memcpy(vendor, &b, 4);
    memcpy(vendor + 4, &d, 4);
    memcpy(vendor + 8, &c, 4);
    vendor[12] = 0;
    __get_cpuid(1, &a, &b, &c, &d);
    unsigned family = (a >> 8) & 0xf;
    if (family == 0xf)
        family += (a >> 20) & 0xff;
    if (strcmp(vendor, "GenuineIntel") == 0)
        return !__builtin_cpu_supports("avx");
    if (strcmp(vendor, "AuthenticAMD") == 0)
        return !(family == 0x15 || family == 0x17 || family == 0x19);
    return 1;
}

int moe_blas_init(int threads, struct moe_err *err)
{
    if (threads < 1)
        return moe_error(err, MOE_EINVAL, "thread count must be at least 1, got %d", threads);
    if (!g_initialised) {
        const char *user = getenv("BLIS_ARCH_TYPE");
        const char *chosen_by = "blis";
        if (user && *user) {
            chosen_by = "BLIS_ARCH_TYPE";
            char *end;
            long id = strtol(user, &end, 10);
            // BLIS 0.9.0 aborts on an invalid id; refuse it with a message instead.
            if (*end != '\0' || end == user || id < 0 || id >= BLIS_NUM_ARCHS)
                return moe_error(err, MOE_EINVAL,
                                 "BLIS_ARCH_TYPE='%s' is not a BLIS arch id (a number from 0 to %d)", user,
                                 BLIS_NUM_ARCHS - 1);
        } else if (blis_would_be_generic()) {
            __builtin_cpu_init();
            int pick = -1;
            if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
                __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl"))
                pick = BLIS_ARCH_SKX;
            else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
                pick = BLIS_ARCH_HASWELL;
            if (pick >= 0) {
                char buf[16];
                snprintf(buf, sizeof buf, "%d", pick);
                setenv("BLIS_ARCH_TYPE", buf, 1);
                chosen_by = "moe";
            }
        }
        bli_init();
        arch_t id = bli_arch_query_id();
        snprintf(g_info.arch, sizeof g_info.arch, "%s", bli_arch_string(id));
        snprintf(g_info.chosen_by, sizeof g_info.chosen_by, "%s", chosen_by);
        snprintf(g_info.version, sizeof g_info.version, "%s", bli_info_get_version_str());
        moe_gemm_packed_init();
        g_initialised = 1;
    }
    bli_thread_set_num_threads(threads);
    g_threads_now = threads;
    bli_rntm_set_num_threads(1, &g_rntm_one);
    bli_rntm_set_num_threads(threads, &g_rntm_all);
#ifdef _OPENMP
    omp_set_num_threads(threads);
    omp_set_max_active_levels(1); // a parallel loop inside a parallel loop (experts) runs on its thread
#endif
    g_info.threads = threads;
    g_current = 0;
    return 0;
}

const struct moe_blas_info *moe_blas_get_info(void) { return &g_info; }

// ---------------------------------------------------------------- adaptive threads


void moe_threads_set_adaptive(int on) { g_info.adaptive = on; }

static void set_threads(int t)
{
    bli_thread_set_num_threads(t);
    bli_rntm_set_num_threads(t, &g_rntm_all);
#ifdef _OPENMP
    omp_set_num_threads(t);
#endif
    g_current = t;
    g_threads_now = t;
}

// Runnable tasks on the machine (/proc/stat procs_running, this process's included), or -1.
static long procs_running(void)
{
    FILE *f = fopen("/proc/stat", "r");
    if (!f)
        return -1;
    char line[256];
    long n = -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "procs_running %ld", &n) == 1)
            break;
    fclose(f);
    return n;
}

// This process's threads in state R (running or runnable), or -1.
static long own_running(void)
{
    DIR *d = opendir("/proc/self/task");
    if (!d)
        return -1;
    long n = 0;
    for (struct dirent *de; (de = readdir(d));) {
        if (de->d_name[0] == '.')
            continue;
        char path[64], buf[512];
        snprintf(path, sizeof path, "/proc/self/task/%.20s/stat", de->d_name);
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        size_t got = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[got] = 0;
        const char *p = strrchr(buf, ')'); // the state follows the command name, which may hold spaces
        n += p && p[1] == ' ' && p[2] == 'R';
    }
    closedir(d);
    return n;
}

void moe_threads_adapt(void)
{
    if (!g_info.adaptive || g_info.threads <= 1)
        return;
    double now = moe_prof_clock();
    if (g_last_check >= 0.0 && now - g_last_check < 0.2)
        return;
    g_last_check = now;
    long all = procs_running(), ours = own_running(), cores = sysconf(_SC_NPROCESSORS_ONLN);
    if (all < 0 || ours < 0 || cores < 1)
        return;
    long idle = cores - (all - ours);
    int t = idle < 1 ? 1 : idle > g_info.threads ? g_info.threads : (int)idle;
    if (t != (g_current ? g_current : g_info.threads))
        set_threads(t);
}
