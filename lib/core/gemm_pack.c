// gemm_pack.c: our own blocked GEMM around BLIS's native micro-kernel (see
// gemm.h, moe_gemm_packed).
//
// reference: Van Zee & van de Geijn, "BLIS: A Framework for Rapidly
// Instantiating BLAS Functionality", ACM TOMS 41(3), 2015 (the five loops
// around the micro-kernel: jc over NC columns, pc over KC, ic over MC rows,
// jr over NR, ir over MR; A packed into MR-row micro-panels stored by column,
// B into NR-column micro-panels stored by row), and docs/KernelsHowTo.md in
// the BLIS source tree for the micro-kernel's contract.
//
// Why not bli_sgemm: the experts of a sparse layer make many products with
// one small dimension (128 rows per expert at E = 64, T = 4096, k = 2), and
// half of them read a weight transposed (x . W^T). BLIS 0.9 packs a transposed
// operand with a scalar strided gather, which at 128 rows costs as much as a
// third of the multiply; its small-matrix ("sup") path, taken on AVX2 kernels,
// is slower again on these shapes. Here the transposing pack runs 4 x 4 SSE
// transposes, B is packed once per (jc, pc) block however many MC blocks
// reuse it, and the micro-kernel and block sizes are BLIS's own, so where
// BLIS takes its packed path (every product on its skx kernels) the values
// are the same bits as bli_sgemm's.
//
// Threads: C is cut into one strip per thread along its longer side, in whole
// micro-panels, and each thread runs the five loops over its strip alone, with
// its own pack buffers: it packs its share of one operand and all of the other
// (the smaller one, packed twice). BLIS's own scheme (and ours until
// 2026-12-05) shares the packed blocks and splits each block's micro-tiles
// between threads: then every block one thread packs is read by the other, and
// packing the next block into the same buffer first takes its cache lines
// back from the other core. Where one side of C is small (an expert's 128
// rows; lm.json's 64-wide layers) that traffic and the barriers around it cost
// as much as the arithmetic: 128 x 1024 x 256 gained 1.05-1.2x from a second
// thread, and gains 1.5-1.6x in strips (dev/bench_gemm_threads.c has the
// shapes and figures).
//
// Determinism: every element of C is one micro-kernel call per KC block, in
// the order of pc, whatever thread runs it; strips start on micro-panel
// boundaries and threads never split k. So the result is the same bits at
// every thread count.
#include "core/gemm.h"

#include <blis.h>

#include <stdlib.h>
#include <string.h>
#ifdef __SSE__
#include <xmmintrin.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

static struct {
    int ready, rows;              // rows: the micro-kernel prefers row-stored C
    size_t mr, nr, kc, kc_max, mc, nc;
    sgemm_ukr_ft ukr;
    cntx_t *cntx;
} g_k;

// Pack buffers, one per strip, owned by the thread that calls moe_gemm_packed
// (a caller's loop over experts runs products on several threads at once, each
// with its own set) and kept for that thread's life: strip k of a product on
// several threads uses the caller's buffer k, whichever OpenMP thread runs it.
// Owned by the caller, not by the OpenMP threads, because a team's threads
// may end (a smaller team next time) and their thread-local memory with them.
struct pack_buf {
    float *p;
    size_t n; // floats
};
static _Thread_local struct pack_buf *t_bufs;
static _Thread_local size_t t_nbufs;

// At least n buffers for the calling thread: its array, or NULL when out of memory.
static struct pack_buf *bufs_reserve(size_t n)
{
    if (t_nbufs < n) {
        struct pack_buf *b = realloc(t_bufs, n * sizeof *b);
        if (!b)
            return NULL;
        memset(b + t_nbufs, 0, (n - t_nbufs) * sizeof *b);
        t_bufs = b, t_nbufs = n;
    }
    return t_bufs;
}

void moe_gemm_packed_init(void)
{
    cntx_t *cntx = bli_gks_query_cntx();
    g_k.cntx = cntx;
    g_k.ukr = (sgemm_ukr_ft)bli_cntx_get_l3_nat_ukr_dt(BLIS_FLOAT, BLIS_GEMM_UKR, cntx);
    g_k.rows = bli_cntx_l3_nat_ukr_prefers_rows_dt(BLIS_FLOAT, BLIS_GEMM_UKR, cntx);
    // Panel leading dimensions are the packing sizes (max of MR, NR), as BLIS packs.
    g_k.mr = (size_t)bli_cntx_get_blksz_max_dt(BLIS_FLOAT, BLIS_MR, cntx);
    g_k.nr = (size_t)bli_cntx_get_blksz_max_dt(BLIS_FLOAT, BLIS_NR, cntx);
    g_k.kc = (size_t)bli_cntx_get_blksz_def_dt(BLIS_FLOAT, BLIS_KC, cntx);
    g_k.kc_max = (size_t)bli_cntx_get_blksz_max_dt(BLIS_FLOAT, BLIS_KC, cntx);
    g_k.mc = (size_t)bli_cntx_get_blksz_def_dt(BLIS_FLOAT, BLIS_MC, cntx);
    g_k.nc = (size_t)bli_cntx_get_blksz_def_dt(BLIS_FLOAT, BLIS_NC, cntx);
    // The packed panels below assume MR/NR as the panel widths; a configuration
    // whose packing sizes differ from them falls back to bli_sgemm.
    g_k.ready = g_k.ukr && g_k.mr == (size_t)bli_cntx_get_blksz_def_dt(BLIS_FLOAT, BLIS_MR, cntx) &&
                g_k.nr == (size_t)bli_cntx_get_blksz_def_dt(BLIS_FLOAT, BLIS_NR, cntx) && g_k.kc >= 1 &&
                g_k.mc >= g_k.mr && g_k.nc >= g_k.nr;
    if (g_k.ready) {
        g_k.mc -= g_k.mc % g_k.mr;
        g_k.nc -= g_k.nc % g_k.nr;
    }
}

int moe_gemm_packed_ready(void) { return g_k.ready; }

// BLIS's partitioning of k (bli_determine_blocksize_f): KC at a time, and the
// rest in one block once it is at most the maximum, so no sliver is left.
static size_t kc_block(size_t left) { return left <= g_k.kc_max ? left : g_k.kc; }

// Packs rows x kc of a matrix whose element (i, p) is src[i * rs + p * cs] into
// one micro-panel of width w >= rows: dst[p * w + i], zero past `rows`.
static void pack_panel(float *restrict dst, const float *restrict src, size_t rs, size_t cs, size_t rows,
                       size_t w, size_t kc)
{
    size_t i0 = 0;
    if (cs == 1) { // rows are contiguous: a transpose, 4 x 4 at a time
#ifdef __SSE__
        for (; i0 + 4 <= rows; i0 += 4) {
            const float *s0 = src + i0 * rs, *s1 = s0 + rs, *s2 = s1 + rs, *s3 = s2 + rs;
            size_t p = 0;
            for (; p + 4 <= kc; p += 4) {
                __m128 r0 = _mm_loadu_ps(s0 + p), r1 = _mm_loadu_ps(s1 + p);
                __m128 r2 = _mm_loadu_ps(s2 + p), r3 = _mm_loadu_ps(s3 + p);
                _MM_TRANSPOSE4_PS(r0, r1, r2, r3);
                _mm_storeu_ps(dst + p * w + i0, r0);
                _mm_storeu_ps(dst + (p + 1) * w + i0, r1);
                _mm_storeu_ps(dst + (p + 2) * w + i0, r2);
                _mm_storeu_ps(dst + (p + 3) * w + i0, r3);
            }
            for (; p < kc; p++) {
                dst[p * w + i0] = s0[p];
                dst[p * w + i0 + 1] = s1[p];
                dst[p * w + i0 + 2] = s2[p];
                dst[p * w + i0 + 3] = s3[p];
            }
        }
#endif
        for (size_t i = i0; i < rows; i++)
            for (size_t p = 0; p < kc; p++)
                dst[p * w + i] = src[i * rs + p];
    } else if (rs == 1) { // columns are contiguous: a copy per k
        for (size_t p = 0; p < kc; p++)
            memcpy(dst + p * w, src + p * cs, rows * sizeof(float));
    } else {
        for (size_t p = 0; p < kc; p++)
            for (size_t i = 0; i < rows; i++)
                dst[p * w + i] = src[i * rs + p * cs];
    }
    if (rows < w)
        for (size_t p = 0; p < kc; p++)
            memset(dst + p * w + rows, 0, (w - rows) * sizeof(float));
}

static size_t min_sz(size_t a, size_t b) { return a < b ? a : b; }

// C (M, N), element (i, j) at C[i * crs + j * ccs], = alpha op(A) op(B) + beta C,
// with A's element (i, p) at A[i * ars + p * acs] and B's (p, j) at B[j * brs + p * bcs].
struct job {
    size_t M, N, K, ars, acs, brs, bcs, crs, ccs;
    float alpha, beta;
    const float *A, *B;
    float *C, *abuf, *bbuf;
};

// The five loops over all of job j on the calling thread, with its pack buffers.
static void run_job(const struct job *j)
{
    const size_t mr = g_k.mr, nr = g_k.nr;
    auxinfo_t aux;
    memset(&aux, 0, sizeof aux);
    for (size_t jc = 0; jc < j->N; jc += g_k.nc) {
        const size_t nc = min_sz(j->N - jc, g_k.nc), n_jr = (nc + nr - 1) / nr;
        for (size_t pc = 0, kc; pc < j->K; pc += kc) {
            kc = kc_block(j->K - pc);
            float beta = pc == 0 ? j->beta : 1.0f;
            for (size_t q = 0; q < n_jr; q++)
                pack_panel(j->bbuf + q * nr * kc, j->B + (jc + q * nr) * j->brs + pc * j->bcs, j->brs, j->bcs,
                           min_sz(nr, nc - q * nr), nr, kc);
            for (size_t ic = 0; ic < j->M; ic += g_k.mc) {
                const size_t mc = min_sz(j->M - ic, g_k.mc), n_ir = (mc + mr - 1) / mr;
                for (size_t q = 0; q < n_ir; q++)
                    pack_panel(j->abuf + q * mr * kc, j->A + (ic + q * mr) * j->ars + pc * j->acs, j->ars, j->acs,
                               min_sz(mr, mc - q * mr), mr, kc);
                // micro-tiles jr-major: a run of tiles reuses one B panel
                for (size_t qj = 0; qj < n_jr; qj++)
                    for (size_t qi = 0; qi < n_ir; qi++) {
                        float *a = j->abuf + qi * mr * kc, *b = j->bbuf + qj * nr * kc;
                        bli_auxinfo_set_next_a(qi + 1 < n_ir ? a + mr * kc : j->abuf, &aux);
                        bli_auxinfo_set_next_b(qi + 1 < n_ir ? b : b + nr * kc, &aux);
                        float alpha = j->alpha;
                        g_k.ukr((dim_t)min_sz(mr, mc - qi * mr), (dim_t)min_sz(nr, nc - qj * nr), (dim_t)kc, &alpha,
                                a, b, &beta, j->C + (ic + qi * mr) * j->crs + (jc + qj * nr) * j->ccs, (inc_t)j->crs,
                                (inc_t)j->ccs, &aux, g_k.cntx);
                    }
            }
        }
    }
}

// Grow pack buffer b to fit job j and point j at it: 0, or -1 when it could not
// be allocated.
static int buffers(struct job *j, struct pack_buf *b)
{
    // An A block (MC x kc) then a B block (kc x NC), each start 64-byte aligned
    const size_t kc = min_sz(j->K, g_k.kc_max), na = (min_sz(j->M, g_k.mc) + g_k.mr) * kc / 16 * 16 + 16,
                 nb = ((min_sz(j->N, g_k.nc) + g_k.nr - 1) / g_k.nr) * g_k.nr * kc;
    if (b->n < na + nb) {
        free(b->p);
        b->p = aligned_alloc(64, ((na + nb) * sizeof(float) + 63) / 64 * 64);
        b->n = b->p ? na + nb : 0;
        if (!b->p)
            return -1;
    }
    j->abuf = b->p, j->bbuf = b->p + na;
    return 0;
}

// Thread `me` of `nth`'s strip of job j (above): rows of C in whole MR panels
// when C has more rows than columns, else columns in whole NR panels. *s is
// left with M or N zero when the strip is empty.
static void strip(struct job *s, const struct job *j, int me, int nth)
{
    *s = *j;
    const int rows = j->M >= j->N;
    const size_t w = rows ? g_k.mr : g_k.nr, n = rows ? j->M : j->N, panels = (n + w - 1) / w;
    const size_t lo = min_sz(panels * (size_t)me / (size_t)nth * w, n),
                 hi = min_sz(panels * (size_t)(me + 1) / (size_t)nth * w, n);
    if (rows)
        s->M = hi - lo, s->A = j->A + lo * j->ars, s->C = j->C + lo * j->crs;
    else
        s->N = hi - lo, s->B = j->B + lo * j->brs, s->C = j->C + lo * j->ccs;
}

int moe_gemm_packed(int trans_a, int trans_b, size_t M, size_t N, size_t K, float alpha, const float *A, size_t lda,
                    const float *B, size_t ldb, float beta, float *C, size_t ldc, int threads)
{
    if (!g_k.ready || M == 0 || N == 0 || K == 0)
        return -1;
    struct job j = { .K = K, .alpha = alpha, .beta = beta };
    // Row-major C is C[i * ldc + j]. A micro-kernel that prefers column-stored C
    // gets the transposed problem C^T = op(B)^T op(A)^T instead, as BLIS does.
    if (g_k.rows) {
        j.M = M, j.N = N, j.A = A, j.B = B, j.crs = ldc, j.ccs = 1;
        j.ars = trans_a ? 1 : lda, j.acs = trans_a ? lda : 1;
        j.brs = trans_b ? ldb : 1, j.bcs = trans_b ? 1 : ldb;
    } else {
        j.M = N, j.N = M, j.A = B, j.B = A, j.crs = 1, j.ccs = ldc;
        j.ars = trans_b ? ldb : 1, j.acs = trans_b ? 1 : ldb; // (op(B)^T)(i, p) = op(B)(p, i)
        j.brs = trans_a ? 1 : lda, j.bcs = trans_a ? lda : 1; // (op(A)^T)(p, j) = op(A)(j, p)
    }
    j.C = C;
#ifdef _OPENMP
    if (threads > 1) {
        // Every thread gets its buffers before any writes C, so a failure
        // leaves C as it was for the caller's fallback (bli_sgemm).
        struct pack_buf *bufs = bufs_reserve((size_t)threads); // the caller's, shared with the team
        if (!bufs)
            return -1;
        int fail = 0;
        #pragma omp parallel num_threads(threads) shared(fail, bufs)
        {
            struct job s;
            const int me = omp_get_thread_num();
            strip(&s, &j, me, omp_get_num_threads());
            if (s.M && s.N && buffers(&s, &bufs[me])) {
                #pragma omp atomic write
                fail = 1;
            }
            #pragma omp barrier
            int failed;
            #pragma omp atomic read
            failed = fail;
            if (!failed && s.M && s.N)
                run_job(&s);
        }
        return fail ? -1 : 0;
    }
#endif
    (void)threads;
    struct pack_buf *bufs = bufs_reserve(1);
    if (!bufs || buffers(&j, &bufs[0]))
        return -1;
    run_job(&j);
    return 0;
}
