// gemm.h: the one GEMM wrapper (gemm.c and gemm_pack.c are the only code that
// includes blis.h), and the choice of BLIS sub-configuration. Row-major throughout:
//   C (M, N) = alpha * op(A) (M, K) * op(B) (K, N) + beta * C
// with op(X) = X or X^T and leading dimensions (row strides) lda, ldb, ldc.
// moe_gemm_ref is the naive twin every caller's tests compare against.
#ifndef MOE_GEMM_H
#define MOE_GEMM_H

#include <stddef.h>

#include "core/status.h"

// Called from inside an OpenMP parallel region (a caller's loop over experts),
// the product runs on the calling thread alone.
void moe_gemm(int trans_a, int trans_b, size_t M, size_t N, size_t K, float alpha, const float *A,
              size_t lda, const float *B, size_t ldb, float beta, float *C, size_t ldc);
// The same product on one BLIS thread whatever the thread count: for callers that
// run many small products from inside their own OpenMP loop (one per head, one per
// expert). Same results as moe_gemm (BLIS never splits the k dimension). Not
// seen by the GEMM record of core/prof.h, which holds the weight products that
// go through moe_gemm (`moe bench` times sgemm over those).
void moe_gemm_serial(int trans_a, int trans_b, size_t M, size_t N, size_t K, float alpha, const float *A,
                     size_t lda, const float *B, size_t ldb, float beta, float *C, size_t ldc);
// Products of at least 2 * 128^3 flops run through moe_gemm_packed, smaller ones
// through bli_sgemm on one thread; the choice depends on the shape alone, so the
// values do not depend on the thread count.
//
// moe_gemm_packed: our own loops, packing and threading around BLIS's native
// micro-kernel (gemm_pack.c), with `threads` threads (1 inside a caller's own
// parallel loop). Faster than bli_sgemm where one dimension is small (experts'
// blocks) and where an operand is read transposed; the same bits as bli_sgemm
// wherever BLIS takes its packed path. Returns -1, doing nothing, when the
// micro-kernel is not usable (then moe_gemm uses bli_sgemm for every shape),
// or when M, N or K is 0.
int moe_gemm_packed(int trans_a, int trans_b, size_t M, size_t N, size_t K, float alpha, const float *A,
                    size_t lda, const float *B, size_t ldb, float beta, float *C, size_t ldc, int threads);
void moe_gemm_packed_init(void); // by moe_blas_init
int moe_gemm_packed_ready(void);
// bli_sgemm under moe_gemm's threading rule, whatever the shape: the reference
// `moe bench` times the model's GEMM shapes with.
void moe_gemm_blis(int trans_a, int trans_b, size_t M, size_t N, size_t K, float alpha, const float *A,
                   size_t lda, const float *B, size_t ldb, float beta, float *C, size_t ldc);
void moe_gemm_ref(int trans_a, int trans_b, size_t M, size_t N, size_t K, float alpha, const float *A,
                  size_t lda, const float *B, size_t ldb, float beta, float *C, size_t ldc);

struct moe_blas_info {
    char arch[32];     // sub-configuration BLIS reports in use, e.g. "skx"
    char chosen_by[32];// "blis" (its own detection), "moe" (we overrode generic), "BLIS_ARCH_TYPE" (user)
    char version[32];  // BLIS version string
    int threads;       // BLIS threads (and OpenMP threads for our own loops); with adaptive threads, the most
    int adaptive;      // moe_threads_set_adaptive is on
};

// Pick the sub-configuration (when BLIS 0.9.0 would fall back to `generic`, choose
// from the CPU features: AVX-512 F/DQ/BW/VL -> skx, AVX2+FMA -> haswell; an
// explicit BLIS_ARCH_TYPE from the user always wins), initialise BLIS and set the
// thread count. Call once, before any moe_gemm; later calls only change threads.
int moe_blas_init(int threads, struct moe_err *err);

// Runs sharing cores: with adaptive threads on, moe_threads_adapt (called by the
// training loop before each step, at most every 0.2 s) sets the threads of the next
// step to the cores that other processes leave idle (from /proc/stat's
// procs_running, less this process's own running threads), between 1 and the
// moe_blas_init count. Results do not depend on the thread count, so this changes
// only speed. Off by default; the CLI turns it on when --threads is not given.
void moe_threads_set_adaptive(int on);
void moe_threads_adapt(void);
const struct moe_blas_info *moe_blas_get_info(void);

#endif
