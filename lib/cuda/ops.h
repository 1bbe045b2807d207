// ops.h: the CUDA backend's first operations, callable from C: device memory,
// and launches of the kernel bodies in lib/cuda/kernels/ (router, capacity
// plan, gather and combine, aux losses, embeddings, norms, cross-entropy,
// the distillation losses, activations, optimizer update, causal self-attention). Every pointer argument of a launch is device memory.
// Each function returns 0 or MOE_EIO with the failing CUDA call named in err.
// Built only with CUDA (meson -Dcuda); nothing here runs without a GPU.
// Not here: choosing a backend or probing devices (lib/backend/), the models'
// use of these operations (later), GEMMs (cuBLAS).
#ifndef MOE_CUDA_OPS_H
#define MOE_CUDA_OPS_H

#include <stddef.h>
#include <stdint.h>

#include "core/status.h"

#ifdef __cplusplus
extern "C" {
#endif

// Device memory.
int moe_cuda_malloc(void **ret, size_t bytes, const char *what, struct moe_err *err);
void moe_cuda_free(void *p);
int moe_cuda_to_device(void *dst, const void *src, size_t bytes, struct moe_err *err);
int moe_cuda_to_host(void *dst, const void *src, size_t bytes, struct moe_err *err);
// The device memory held through moe_cuda_malloc (lib/cuda/mem.c; the bytes
// asked for, without cudaMalloc's rounding or the CUDA context): now, and the
// most at once since the process started or moe_cuda_mem_reset_peak (which
// sets the mark to what is held now). Either pointer may be NULL.
void moe_cuda_mem_usage(size_t *ret_live, size_t *ret_peak);
void moe_cuda_mem_reset_peak(void);
// For moe_cuda_malloc and moe_cuda_free's implementations only (ops.cu, the
// tests' host emulation): an allocation made (MOE_ENOMEM when the host's table
// of them cannot grow), and one released (unknown or NULL p: nothing).
int moe_cuda_mem_note(void *p, size_t bytes, struct moe_err *err);
void moe_cuda_mem_forget(void *p);

// Make CUDA device id the current one (cudaSetDevice) for what follows.
int moe_cuda_use_device(int id, struct moe_err *err);
// bytes bytes from device memory src to device memory dst (cudaMemcpy).
int moe_cuda_copy(void *dst, const void *src, size_t bytes, struct moe_err *err);
// Set bytes bytes at p to the byte value (cudaMemset); what names the buffer in an error.
int moe_cuda_memset(void *p, int value, size_t bytes, const char *what, struct moe_err *err);

// Points on the device's stream for timing (CUDA events): record marks the
// point after everything queued so far; elapsed waits for b and gives the
// seconds from a to b.
struct moe_cuda_event;
int moe_cuda_event_create(struct moe_cuda_event **ret, struct moe_err *err);
void moe_cuda_event_free(struct moe_cuda_event *e);
int moe_cuda_event_record(struct moe_cuda_event *e, struct moe_err *err);
int moe_cuda_event_elapsed(double *ret_seconds, struct moe_cuda_event *a, struct moe_cuda_event *b,
                           struct moe_err *err);

// The router's forward for T tokens (moe/router.c moe_router_forward, for
// softmax, gshard, noisy-topk, switch and deepseek; expert choice and hash
// below): p, lse from z; for noisy-topk h, eps from z and u (eps drawn in
// training, 0 otherwise); sel,
// idx, gate, prio (T, K). bias (E) or NULL: selection offsets.
struct moe_cuda_route {
    int T, E, K;
    int raw_gates;        // switch, deepseek: gate = p (else softmax over the selected logits)
    int noisy;            // noisy-topk
    int gshard_random;    // GShard's random second expert (training)
    int train;
    uint64_t seed;        // the counters of the noise / the second expert's draw
    uint32_t purpose, stream;
    uint64_t base;
};
int moe_cuda_route_forward(const struct moe_cuda_route *a, float *p, float *lse, float *h, float *eps, int32_t *sel,
                           int32_t *idx, float *gate, float *prio, const float *z, const float *u, const float *bias,
                           struct moe_err *err);

// Its backward (moe_router_backward) from the gates' gradient dgate (T, K):
// dz (T, E) +=, and for noisy-topk du (T, E) +=. The route's buffers as the
// forward left them (h, eps, u only for noisy-topk).
int moe_cuda_route_backward(const struct moe_cuda_route *a, float *dz, float *du, const float *dgate,
                            const int32_t *sel, const int32_t *idx, const float *p, const float *z, const float *h,
                            const float *eps, const float *u, struct moe_err *err);

// Expert choice's forward (moe/router.c moe_router_forward for
// expert-choice; Zhou et al. 2022): p, lse from z (T, E), then sel, idx, gate,
// prio (T, E: slot e is expert e) by one thread per (token, expert) pair, or
// for ec_eval topk one per token. mode: enum moe_ec_eval's value (the
// evaluation's; training passes 0 = full); seq: tokens per sequence (prefix
// and position).
struct moe_cuda_route_ec {
    int T, E;
    double ec_factor;
    int mode;
    int seq;
};
int moe_cuda_route_ec_forward(const struct moe_cuda_route_ec *a, float *p, float *lse, int32_t *sel, int32_t *idx,
                              float *gate, float *prio, const float *z, struct moe_err *err);
// Its backward: the raw-gate backward with K = E (moe_cuda_route_backward).
int moe_cuda_route_ec_backward(int T, int E, float *dz, const float *dgate, const int32_t *sel, const int32_t *idx,
                               const float *p, struct moe_err *err);

// Hash routing's forward (Roller et al. 2021): from each token's expert
// hash_expert (T; the table already looked up), p (T, E) and lse (T) zeroed,
// sel, idx (T, 1) = expert, gate, prio = 1. No backward.
int moe_cuda_route_hash_forward(int T, int E, float *p, float *lse, int32_t *sel, int32_t *idx, float *gate,
                                float *prio, const int32_t *hash_expert, struct moe_err *err);

// DeepSeek-V3's bias balancing (moe_router_bias_update): after a training
// batch's routing, bias (E) += rate for each expert with less than its share
// of the n = T S selections in sel, -= rate for more; one thread per expert.
int moe_cuda_bias_update(float *bias, const int32_t *sel, size_t n, size_t E, double rate, struct moe_err *err);

// LayerNorm (b non-NULL: mean written) or RMSNorm (b NULL: mean unused) over T
// rows of D: nn/norm.c's forward, the same lanes and tree.
int moe_cuda_norm_forward(float *y, float *mean, float *rstd, const float *x, const float *g, const float *b,
                          size_t T, size_t D, float eps, struct moe_err *err);

// The capacity plan for T tokens of S slots over E experts from idx, prio
// (T, S) (moe/dispatch.c moe_dispatch_plan): row_tok, row_slot (T * S: the
// first offset[E] rows are used), slot_row (T, S), offset (E + 1), routed,
// dropped (E). prob: MOE_DROP_PROB (else token order). The keep pass: by
// priority, a block per (slot, expert) (kernels/dispatch.h moe_k_prob_*); in
// token order, in chunks of MOE_CUDA_PLAN_CHUNK positions (moe_k_chunk_*), as
// are the rows. Scratch: kept (T * S bytes), n_kept (E), cnt
// (MOE_CUDA_PLAN_CNT(T, S, E)).
#define MOE_CUDA_PLAN_CHUNK 256
#define MOE_CUDA_PLAN_CNT(T, S, E) ((((size_t)(T) * (S) + MOE_CUDA_PLAN_CHUNK - 1) / MOE_CUDA_PLAN_CHUNK) * (E))
struct moe_cuda_plan {
    int32_t *row_tok, *row_slot, *slot_row;
    size_t *offset, *routed, *dropped;
    uint8_t *kept;
    size_t *n_kept, *cnt;
};
int moe_cuda_dispatch_plan(const struct moe_cuda_plan *p, const int32_t *idx, const float *prio, size_t T, size_t S,
                           size_t E, size_t cap, int prob, struct moe_err *err);
// xd (rows, D) = the plan's tokens' rows of x (T, D), for the offset[E] rows
// (at most n_max) of plan p.
int moe_cuda_gather(float *xd, const float *x, const struct moe_cuda_plan *p, size_t E, size_t n_max, size_t D,
                    struct moe_err *err);
// out (T, D) += the gated expert outputs yd (rows, D) of each token's kept slots, in slot order.
int moe_cuda_combine(float *out, const float *yd, const float *gate, const int32_t *slot_row, size_t T, size_t S,
                     size_t D, struct moe_err *err);

// The f.P balancing loss (moe/aux_loss.c): *ret = sum_e f_e P_e over the
// route's sel (T, S; f over the first n_slots slots) and p (T, E); when dz is
// non-NULL, dz (T, E) += the gradient of scale * that sum. Scratch: f, P (E
// doubles each) and one double, all device memory. ret NULL: f and P already
// hold this route's sums (a call with ret before, e.g. the forward's): only the
// gradient.
int moe_cuda_aux_fp(double *ret, float *dz, const int32_t *sel, const float *p, size_t T, size_t E, size_t S,
                    size_t n_slots, double scale, double *f, double *P, double *value, struct moe_err *err);
// Shazeer et al. 2017's importance loss: *ret = CV^2 of the experts' summed
// gates (idx, gate: T, S); when dgate is non-NULL, dgate (T, S) += coef times
// its gradient. Scratch: x, g (E doubles each) and one double, device memory.
int moe_cuda_aux_importance(double *ret, float *dgate, const int32_t *idx, const float *gate, size_t T, size_t E,
                            size_t S, float coef, double *x, double *g, double *value, struct moe_err *err);
// Their smooth load loss (noisy top-K, K selections per token of S slots):
// *ret = CV^2 of the experts' summed probabilities of staying in the top K;
// when dz is non-NULL, dz and du (T, E) += coef times its gradients through the
// logits z and the noise logits u. h, eps (T, E): the route's noisy logits and
// draws. Scratch as above.
int moe_cuda_aux_load(double *ret, float *dz, float *du, const float *z, const float *u, const float *h,
                      const float *eps, const int32_t *sel, size_t T, size_t E, size_t S, size_t K, float coef,
                      double *x, double *g, double *value, struct moe_err *err);
// The z-loss: *ret = (1/T) sum_t lse_t^2 (ret NULL: not computed); dz (T, E) +=
// its gradient times coef when dz is non-NULL. value: one device double of scratch.
int moe_cuda_aux_z(double *ret, float *dz, const float *lse, const float *p, size_t T, size_t E, float coef,
                   double *value, struct moe_err *err);

// The embedding (nn/embedding.c) of B sequences of C tokens (ids tok, row
// stride ld) of width D: out (B C, D) = wte[id] + wpe[c]; and the backward,
// dwte (V, D) += and dwpe (C, D) += from dout (B C, D), in the CPU's order of
// additions (the rows sorted stably by id with a device radix sort). Scratch
// for the backward: ids, sorted_ids, rows, order (B C each, int32), and the
// sort's temporary storage sort (sort_bytes, at least
// moe_cuda_embed_sort_bytes' figure for B C rows; made once by the caller, so
// that no step allocates device memory).
int moe_cuda_embed_sort_bytes(size_t n, size_t *ret, struct moe_err *err);
int moe_cuda_embed_forward(float *out, const int32_t *tok, size_t ld, const float *wte, const float *wpe, size_t B,
                           size_t C, size_t D, struct moe_err *err);
int moe_cuda_embed_backward(float *dwte, float *dwpe, const float *dout, const int32_t *tok, size_t ld, size_t B,
                            size_t C, size_t D, size_t V, int32_t *ids, int32_t *sorted_ids, int32_t *rows,
                            int32_t *order, void *sort, size_t sort_bytes, struct moe_err *err);

// The language embedding le (G, D) at each token of B windows of C
// (kernels/embed.h; language-aware routing): radd (B C, D) = le[lang of the
// token's window] (lang (B) device memory, or NULL: language 0); and its
// gradient, dle (G, D) += dradd summed over each language's tokens in order.
int moe_cuda_lang_rows(float *radd, const float *le, const int32_t *lang, size_t B, size_t C, size_t D,
                       struct moe_err *err);
int moe_cuda_lang_grad(float *dle, const float *dradd, const int32_t *lang, size_t B, size_t C, size_t D, size_t G,
                       struct moe_err *err);

// Their backward (nn/norm.c): dx += (when dx is non-NULL), dg +=, and for
// LayerNorm (db non-NULL; mean from the forward) db +=.
int moe_cuda_norm_backward(float *dx, float *dg, float *db, const float *dy, const float *x, const float *mean,
                           const float *rstd, const float *g, size_t T, size_t D, struct moe_err *err);

// The combine's backward for the plan's rows (offset[E] of them, at most
// n_max): dyd (rows, D) = gate dout[token], dgate (T, S) += dout[token] . yd[row]
// (dgate may be NULL).
int moe_cuda_combine_backward(float *dyd, float *dgate, const float *dout, const float *yd, const float *gate,
                              const struct moe_cuda_plan *p, size_t E, size_t n_max, size_t S, size_t D,
                              struct moe_err *err);

// One optimizer update of n weights (kernels/optim.h: the step's scalars).
struct moe_k_optim;
int moe_cuda_optim_update(const struct moe_k_optim *o, float *w, float *g, float *m, float *v, size_t n,
                          struct moe_err *err);
// Gradient accumulation (moe_fold): micro-batch k's gradient g (n values)
// with weight w into the accumulator a (a = w g for k = 0, a += w g before
// the last), the last one into out = a + w g. k = 0 and last both: nothing
// (the gradient stays as it is, as the trainer's single micro-batch).
int moe_cuda_fold(float *a, const float *g, float *out, size_t n, float w, size_t k, int last, struct moe_err *err);
// LoRA's merge of n weights (kernels/optim.h moe_k_lora_merge): w = w0 +
// delta where delta is not zero, else w0.
int moe_cuda_lora_merge(float *w, const float *w0, const float *delta, size_t n, struct moe_err *err);
// The sum of squares of g (n values) for the global gradient norm, in
// moe_optim_sum_sq's blocks, lanes and order (kernels/optim.h), added to *acc
// in device memory (one double addition, as the trainer adds its units' sums
// in order on the host): the norm adds all its units on the device and copies
// one double back, not one per unit. Scratch: MOE_K_SQ_BLOCKS *
// (MOE_K_SQ_LANES + 1) doubles of device memory.
int moe_cuda_sum_sq(double *acc, const float *g, size_t n, double *scratch, struct moe_err *err);

// Softmax cross-entropy over T rows of O logits y with labels (nn/loss.c
// moe_ce_rows): row_loss, row_argmax (T) written when not NULL; dy (T, O) +=
// scale (softmax - onehot) when not NULL; *sum (host) = the sum of the row
// losses, over kernels/loss.h's fixed blocks. Scratch: part (MOE_K_CE_BLOCKS
// doubles) and lse (T doubles).
int moe_cuda_ce_rows(double *sum, float *dy, float *row_loss, int32_t *row_argmax, const float *y,
                     const int32_t *label, size_t T, size_t O, float scale, double *part, double *lse,
                     struct moe_err *err);

// The distillation losses (nn/loss.c; kernels/distill.h) of T rows of O
// logits, student s against teacher z: *sum (host; NULL: not computed) = the
// sum of the row losses in row order; dy (T, O) += scale times their gradient
// with respect to s when dy is not NULL. Knowledge distillation at temperature
// tau (moe_kd_forward_backward) and MoEBERT's symmetric KL
// (moe_symkl_forward_backward). Scratch: MOE_CUDA_DISTILL_SCRATCH(T) doubles.
#define MOE_CUDA_DISTILL_SCRATCH(T) (4 * (size_t)(T) + 1)
int moe_cuda_kd(double *sum, float *dy, const float *s, const float *z, size_t T, size_t O, float tau, float scale,
                double *scratch, struct moe_err *err);
int moe_cuda_symkl(double *sum, float *dy, const float *s, const float *z, size_t T, size_t O, float scale,
                   double *scratch, struct moe_err *err);
// Squared error (moe_mse_forward_backward) of y against d, n values: *sum
// (host; NULL: not computed) = sum (y - d)^2 in element order by one thread;
// dy += scale 2 (y - d) when dy is not NULL. Scratch: one double.
int moe_cuda_mse(double *sum, float *dy, const float *y, const float *d, size_t n, float scale, double *scratch,
                 struct moe_err *err);

// FFN activations over n values (nn/activation.c): forward y = f(x) and
// backward dx = dy f'(x) (written), from the saved input x.
enum moe_cuda_act { MOE_CUDA_RELU = 0, MOE_CUDA_GELU = 1, MOE_CUDA_SILU = 2 };
int moe_cuda_act_forward(enum moe_cuda_act a, float *y, const float *x, size_t n, struct moe_err *err);
int moe_cuda_act_backward(enum moe_cuda_act a, float *dx, const float *dy, const float *x, size_t n,
                          struct moe_err *err);

// Causal multi-head self-attention (nn/attention.c moe_attention_forward /
// backward, without dropout (below: with it); kernels/attention.h): qkv (B, C, 3D), out (B, C,
// D), att (B, H, C, C) the probabilities (0 above the diagonal), saved for the
// backward; dqkv (B, C, 3D) += the gradient from dout (B, C, D), datt (B, H,
// C, C) scratch (dS on return, 0 above the diagonal). D % H == 0, else MOE_EINVAL.
int moe_cuda_attention_forward(float *out, float *att, const float *qkv, size_t B, size_t C, size_t D, size_t H,
                               struct moe_err *err);
int moe_cuda_attention_backward(float *dqkv, float *datt, const float *dout, const float *qkv, const float *att,
                                size_t B, size_t C, size_t D, size_t H, struct moe_err *err);

// The linear layer's bias (nn/linear.c; kernels/linear.h): y (T, ldy) rows
// set to b (O), before a GEMM that adds x W^T with beta = 1; db (O) += the
// column sums of dy (T, lddy) in row order. And y[i] += x[i] for i < n.
int moe_cuda_bias_rows(float *y, size_t ldy, const float *b, size_t T, size_t O, struct moe_err *err);
int moe_cuda_bias_grad(float *db, const float *dy, size_t lddy, size_t T, size_t O, struct moe_err *err);
int moe_cuda_add(float *y, const float *x, size_t n, struct moe_err *err);

// The MoE layer's small steps (kernels/experts.h): Switch jitter over n
// values, xr = x jit with jit from the Philox counters (seed, purpose, stream,
// base + i); its backward dx += dxr jit; SwiGLU's h *= b and its backward (db
// holding silu(a)) db *= dh, dh *= b; and the experts' input gradients back to
// their tokens, dx (T, D) += dxd rows over each token's kept slots (slot_row
// (T, S), -1: none) in slot order.
int moe_cuda_jitter(float *xr, float *jit, const float *x, size_t n, float eps, uint64_t seed, uint32_t purpose,
                    uint32_t stream, uint64_t base, struct moe_err *err);
int moe_cuda_jitter_back(float *dx, const float *dxr, const float *jit, size_t n, struct moe_err *err);
int moe_cuda_mul(float *h, const float *b, size_t n, struct moe_err *err);
int moe_cuda_swiglu_back(float *db, float *dh, const float *b, size_t n, struct moe_err *err);
int moe_cuda_scatter(float *dx, const float *dxd, const int32_t *slot_row, size_t T, size_t S, size_t D,
                     struct moe_err *err);

// Inverted dropout (nn/dropout.c; kernels/dropout.h) at one site: nn/nn.h's
// struct moe_dropout, field for field (p = 0: off, nothing is launched).
struct moe_cuda_drop {
    float p;
    uint64_t seed, step;
    uint32_t site;
};
// x[j] for j < n, mask elements first + j (moe_dropout_apply).
int moe_cuda_dropout(float *x, size_t n, uint64_t first, const struct moe_cuda_drop *d, struct moe_err *err);
// Rows of F values gathered for the experts (moe_dropout_rows): row r is token
// row_tok[r]'s slot row_slot[r] of S, mask elements (tok S + slot) F + column;
// row_tok NULL: row r is element r F + column.
int moe_cuda_dropout_rows(float *x, size_t N, size_t F, const int32_t *row_tok, const int32_t *row_slot, size_t S,
                          const struct moe_cuda_drop *d, struct moe_err *err);
// The attention above with probability dropout (moe_attention_forward_drop /
// backward_drop): with d on, the forward leaves P in attp (B, H, C, C) and P' =
// P m / (1 - p) in att, which out read; the backward reads both (dS from P, dv
// from P'). d NULL or off: as moe_cuda_attention_forward / backward (attp unused).
int moe_cuda_attention_forward_drop(float *out, float *att, float *attp, const float *qkv, size_t B, size_t C,
                                    size_t D, size_t H, const struct moe_cuda_drop *d, struct moe_err *err);
int moe_cuda_attention_backward_drop(float *dqkv, float *datt, const float *dout, const float *qkv, const float *att,
                                     const float *attp, size_t B, size_t C, size_t D, size_t H,
                                     const struct moe_cuda_drop *d, struct moe_err *err);

#ifdef __cplusplus
}
#endif

#endif
