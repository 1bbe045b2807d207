// prof.h: opt-in timing of a training step by phase, and a record of the GEMM
// shapes a step runs, for `moe bench`. Off by default: a disabled timer costs one
// predictable branch. Phases are timed around whole calls from the orchestrating
// thread; where a parallel loop runs timed calls on every thread (the experts of
// moe/experts.c), the timers inside add to per-thread sums, which
// moe_prof_region_end turns into shares of the region's wall time. The GEMM
// record takes a lock because attention and experts call GEMMs from their own loops.
// Not here: wall time of whole runs (train.h) or any effect on results.
#ifndef MOE_PROF_H
#define MOE_PROF_H

#include <stddef.h>

// Phases of a step. Each timer wraps a leaf call, so phases never nest and
// their sum is at most the step's time; the rest (residual adds, buffer
// clearing, batch gathering) is "other" in the bench report.
enum moe_phase {
    MOE_PHASE_ROUTER,     // router logits, noise, top-k, gates and their backward (moe/router.c, the router GEMMs)
    MOE_PHASE_DISPATCH,   // capacity plan and the gather of token rows into expert blocks
    MOE_PHASE_FFN_GEMM,   // expert and dense FFN GEMMs
    MOE_PHASE_ACTIVATION, // FFN activations (relu, gelu, swiglu) and their backward
    MOE_PHASE_COMBINE,    // gated combine of expert outputs, and its backward (scatter, gate gradients)
    MOE_PHASE_AUX,        // auxiliary and z losses, forward and backward
    MOE_PHASE_ATTENTION,  // causal attention kernels (nn/attention.c)
    MOE_PHASE_LINEAR,     // other dense GEMMs: attention projections, output head, mlp layers
    MOE_PHASE_NORM,       // layer norms and RMS norms
    MOE_PHASE_LOSS,       // output loss, its gradient and the per-batch statistics
    MOE_PHASE_EMBEDDING,  // token and position embeddings
    MOE_PHASE_OPTIMIZER,  // gradient norm, clipping and the parameter update
    MOE_PHASE_N
};

extern int moe_prof_enabled;
extern double moe_prof_seconds[MOE_PHASE_N];

double moe_prof_clock(void); // monotonic seconds
const char *moe_phase_name(enum moe_phase ph);
void moe_prof_reset(void);   // zero every phase

static inline double moe_prof_begin(void) { return moe_prof_enabled ? moe_prof_clock() : 0.0; }
void moe_prof_add(enum moe_phase ph, double seconds); // to this thread's sums inside a parallel region
static inline void moe_prof_end(enum moe_phase ph, double t0)
{
    if (moe_prof_enabled)
        moe_prof_add(ph, moe_prof_clock() - t0);
}

// A parallel region whose threads run timed calls: t0 = moe_prof_begin() before
// it; each thread calls moe_prof_region_flush() as its last statement inside it;
// after it, moe_prof_region_end(t0) splits the region's wall time over the
// phases in proportion to the threads' summed times (so phases still add up to
// at most the step's wall time).
void moe_prof_region_flush(void);
void moe_prof_region_end(double t0);

// Time one statement (a leaf call) as phase ph.
#define MOE_TIMED(ph, stmt)                   \
    do {                                      \
        double moe_t0_ = moe_prof_begin();    \
        stmt;                                 \
        moe_prof_end((ph), moe_t0_);          \
    } while (0)

// The GEMM record: while on, moe_gemm adds the shape of each call (op flags, M,
// N, K) to a table of distinct shapes with their counts: the products with
// weights (linear layers, experts, router, head). Attention's per-head products
// (moe_gemm_serial) are not recorded, so the reference does not depend on how
// attention is computed.
struct moe_gemm_shape {
    int trans_a, trans_b;
    size_t M, N, K;
    size_t count;
};
struct moe_gemm_record {
    struct moe_gemm_shape *shape;
    size_t n, cap;
    int failed; // out of memory: the table is incomplete
};
// Start recording into r (emptied first); stop with NULL.
void moe_gemm_record_into(struct moe_gemm_record *r);
void moe_gemm_record_add(int trans_a, int trans_b, size_t M, size_t N, size_t K);
void moe_gemm_record_release(struct moe_gemm_record *r);
// Floating-point operations of the recorded calls: sum of 2 M N K x count.
double moe_gemm_record_flops(const struct moe_gemm_record *r);

#endif
