// experts.h: expert feed-forward networks, one GEMM per expert block.
// moe_ffn_* is one FFN over N rows (an expert's block, or a dense FFN layer);
// moe_experts_* runs all E experts of a layer over a dispatch plan: gather the
// kept rows into per-expert blocks, one FFN per block, combine back into
// tokens weighted by their gates. Not here: routing, capacity (dispatch.h).
//
// T = tokens, S = slots per token, E = n_expert, D = n_embd, F = n_ff,
// N = rows in a block or plan.
//
// FFN (no biases, as in Switch/T5 and Mixtral):
//   relu, gelu:  a = x.W1^T (N, F); h = act(a); y = h.W2^T (N, D)
//   swiglu:      a = x.W1^T, b = x.W3^T; h = silu(a) * b; y = h.W2^T
//                (reference: Shazeer 2020, "GLU variants improve Transformer")
// Weights per expert: w1 (F, D), w3 (F, D) (swiglu only), w2 (D, F); a layer
// stores them stacked as (E, F, D), (E, F, D), (E, D, F), so expert e is one
// pointer offset. Kernels never allocate; buffers come from the caller.
#ifndef MOE_EXPERTS_H
#define MOE_EXPERTS_H

#include <stddef.h>
#include <stdint.h>

#include "core/plan.h"
#include "core/status.h"
#include "moe/dispatch.h"
#include "nn/nn.h"

enum moe_ffn_act { MOE_FFN_RELU = 0, MOE_FFN_GELU = 1, MOE_FFN_SWIGLU = 2 };
int moe_ffn_act_from_name(const char *name); // "relu", "gelu", "swiglu"; -1 when unknown
const char *moe_ffn_act_name(enum moe_ffn_act a);

// One FFN over N rows of x (N, D), into y (N, D) (overwritten).
// Saved for backward: a (N, F), b (N, F) (swiglu only; else may be NULL), h (N, F).
void moe_ffn_forward(float *y, float *a, float *b, float *h, const float *x, const float *w1, const float *w3,
                     const float *w2, size_t N, size_t D, size_t F, enum moe_ffn_act act);
// The same with hidden dropout after the activation (drop NULL or off: moe_ffn_forward bit for bit;
// nn.h moe_dropout_rows: row r's mask key is row_tok[r] * S + row_slot[r], or r when row_tok is NULL).
void moe_ffn_forward_drop(float *y, float *a, float *b, float *h, const float *x, const float *w1, const float *w3,
                          const float *w2, size_t N, size_t D, size_t F, enum moe_ffn_act act,
                          const struct moe_dropout *drop, const int32_t *row_tok, const int32_t *row_slot, size_t S);
// Backward: dx (N, D) += (may be NULL), dw1 (F, D) +=, dw3 (F, D) += (swiglu), dw2 (D, F) +=.
// Scratch: dh, da, db (N, F) (db swiglu only), overwritten.
void moe_ffn_backward(float *dx, float *dw1, float *dw3, float *dw2, float *dh, float *da, float *db,
                      const float *dy, const float *x, const float *a, const float *b, const float *h,
                      const float *w1, const float *w3, const float *w2, size_t N, size_t D, size_t F,
                      enum moe_ffn_act act);
// The backward of moe_ffn_forward_drop, with the same dropout arguments; the
// weight gradients are dw = beta_dw dw + (this pass's), beta_dw 1 (add) or 0
// (write: dw's old contents are not read, and N = 0 writes zeros).
void moe_ffn_backward_drop(float *dx, float *dw1, float *dw3, float *dw2, float *dh, float *da, float *db,
                           const float *dy, const float *x, const float *a, const float *b, const float *h,
                           const float *w1, const float *w3, const float *w2, size_t N, size_t D, size_t F,
                           enum moe_ffn_act act, const struct moe_dropout *drop, const int32_t *row_tok,
                           const int32_t *row_slot, size_t S, float beta_dw);
// MoEBERT neuron importance (Zuo et al. 2022, eq. 5): for an example x, neuron j's
// I_j(x) = |sum_d w1_jd dL/dw1_jd + sum_d w2_dj dL/dw2_dj (+ sum_d w3_jd dL/dw3_jd, swiglu)|,
// the gradients of x's own loss. Written in the activations: with a = x.w1^T,
// h the hidden units and g = dL/dh, sum_d w1_jd dL/dw1_jd = a_j dL/da_j and
// sum_d w2_dj dL/dw2_dj = h_j g_j (swiglu: b = x.w3^T adds b_j dL/db_j, which
// equals h_j g_j). Adds sum over examples of I_j into imp (F); an example is
// `group` consecutive rows (its tokens), and `scale` turns the rows' gradients
// into the example's own (e.g. N / group when the loss is the mean over N rows and
// each example's loss the mean over its rows). Reads a, b, h and dh, da, db as
// moe_ffn_backward leaves them (for swiglu dh then holds g * b, so the w2 term is
// taken as b * db).
void moe_ffn_importance_add(double *imp, const float *a, const float *b, const float *h, const float *dh,
                            const float *da, const float *db, size_t N, size_t F, size_t group, double scale,
                            enum moe_ffn_act act);

// Buffers for a layer of E experts, sized for up to N_max = T_max * S rows.
struct moe_experts_buf {
    size_t N_max, D, F;
    float *xd, *yd;         // (N_max, D) gathered inputs, expert outputs
    float *a, *b, *h;       // (N_max, F) saved activations (b swiglu only)
    float *dyd, *dxd;       // (N_max, D)
    float *da, *db, *dh;    // (N_max, F)
    struct moe_plan *own;   // the buffers of moe_experts_buf_alloc; NULL when they belong to a model's plan
    // Hidden dropout of the experts (nn.h; p 0 = off), set by the caller before the forward and
    // kept for its backward; the mask key of a row is its (token, slot).
    struct moe_dropout drop;
};
// Declare the buffers for N.v rows in p, named prefix.* (b and db only for swiglu). Returns p->rc.
int moe_experts_buf_declare(struct moe_experts_buf *buf, struct moe_plan *p, const char *prefix, struct moe_dim N,
                            size_t D, size_t F, int swiglu);
// The same buffers allocated on their own (tests, benchmarks); moe_experts_buf_release frees them.
int moe_experts_buf_alloc(struct moe_experts_buf *buf, size_t N_max, size_t D, size_t F, int swiglu,
                          struct moe_err *err);
void moe_experts_buf_release(struct moe_experts_buf *buf);

// out (T, D) += sum over kept slots (t, s) of gate[t, s] * FFN_{expert}(x_t).
// x (T, D); gate (T, S); plan from moe_dispatch_plan; w1, w3, w2 stacked (E, ...).
void moe_experts_forward(float *out, const float *x, const float *gate, const struct moe_dispatch *plan,
                         const float *w1, const float *w3, const float *w2, struct moe_experts_buf *buf,
                         enum moe_ffn_act act);
// Backward of moe_experts_forward, given dout (T, D):
//   dgate[t, s] += dout_t . FFN(x_t) for kept slots (dgate may be NULL),
//   dx (T, D) += (may be NULL), dw1, dw3, dw2 (stacked like the weights)
//   = beta_dw dw + this pass's: beta_dw 1 adds, 0 writes every expert's
//   (zeros for an expert without rows) without reading the old values.
// Uses the activations the forward saved in buf.
void moe_experts_backward(float *dx, float *dgate, float *dw1, float *dw3, float *dw2, const float *dout,
                          const float *x, const float *gate, const struct moe_dispatch *plan, const float *w1,
                          const float *w3, const float *w2, struct moe_experts_buf *buf, enum moe_ffn_act act,
                          float beta_dw);

// The parts of moe_experts_forward and moe_experts_backward, one after another,
// for expert parallelism (dist/ep.h), where the blocks of some experts run in
// another process:
// gather: x's kept rows into buf->xd, in the plan's block order;
void moe_experts_gather(struct moe_experts_buf *buf, const float *x, const struct moe_dispatch *plan);
// blocks: every expert's FFN over its block of buf->xd into buf->yd (fwd), or
// its backward from buf->dyd: dw1, dw3, dw2 = beta_dw dw + this pass's (as in
// moe_experts_backward; ignored in the forward) and, with_dx, buf->dxd (set);
// the weights and gradients stacked over the plan's E experts;
void moe_experts_blocks(struct moe_experts_buf *buf, const struct moe_dispatch *plan, int fwd, int with_dx,
                        float beta_dw, float *dw1, float *dw3, float *dw2, const float *w1, const float *w3,
                        const float *w2, enum moe_ffn_act act);
// combine: out += gate-weighted buf->yd rows, by token then slot;
void moe_experts_combine(float *out, const float *gate, const struct moe_dispatch *plan,
                         const struct moe_experts_buf *buf);
// combine_backward: buf->dyd from dout, and dgate += (may be NULL);
void moe_experts_combine_backward(float *dgate, const float *dout, const float *gate,
                                  const struct moe_dispatch *plan, struct moe_experts_buf *buf);
// scatter: dx += buf->dxd rows, by token then slot.
void moe_experts_scatter(float *dx, const struct moe_dispatch *plan, const struct moe_experts_buf *buf);

// How the per-expert FFNs share threads. GEMM: the experts one after another,
// each product on every thread. EXPERTS: whole experts handed to the threads
// (one-thread products), which spares small blocks (many experts, few rows
// each) BLIS's per-call thread start-up and split. AUTO (default): EXPERTS when
// there are at least two non-empty experts per thread, except that blocks
// holding more than a 1/(2 threads) share of the rows run first, GEMM-style, so
// a skewed router does not leave threads waiting on one big expert; else GEMM.
// Every expert writes its own rows and weight gradients, so the results are
// the same bits either way (tests/test_dispatch.c checks all three).
enum moe_experts_par { MOE_EXPERTS_PAR_AUTO, MOE_EXPERTS_PAR_GEMM, MOE_EXPERTS_PAR_EXPERTS };
void moe_experts_set_parallel(enum moe_experts_par mode);

// Naive twin of moe_experts_forward for tests: loops over tokens and slots,
// applies moe_dispatch_kept_ref's keep rule itself, and runs the FFN one row at
// a time with plain loops (no BLAS). scratch: at least 3*F + D floats.
void moe_experts_forward_ref(float *out, const float *x, const int32_t *idx, const float *gate, const float *prio,
                             size_t T, size_t S, size_t E, size_t cap, enum moe_drop_policy policy,
                             const float *w1, const float *w3, const float *w2, size_t D, size_t F,
                             enum moe_ffn_act act, float *scratch);

#endif
