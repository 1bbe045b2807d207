// nn.h: dense building blocks as forward/backward pairs over plain float buffers.
// T = rows (tokens or examples), I = input width, O = output width.
// Conventions (llm.c): outputs first, then inputs, then weights, then dims;
// backward ADDS into gradient buffers (caller zeroes them once); leading
// dimensions (row strides) are explicit so expert blocks can live inside
// larger arrays. Weights are stored (out, in). Kernels never allocate.
#ifndef MOE_NN_H
#define MOE_NN_H

#include <stddef.h>
#include <stdint.h>

// y (T, O; row stride ldy) = x (T, I; stride ldx) . W^T + b, W (O, I), b (O) or NULL.
void moe_linear_forward(float *y, size_t ldy, const float *x, size_t ldx, const float *w, const float *b,
                        size_t T, size_t I, size_t O);
// dx += dy . W (dx may be NULL), dW += dy^T . x, db += sum_t dy (db may be NULL).
void moe_linear_backward(float *dx, size_t lddx, float *dw, float *db, const float *dy, size_t lddy,
                         const float *x, size_t ldx, const float *w, size_t T, size_t I, size_t O);
// The same, but dx = dy . W is written rather than added to (no need to clear it first).
void moe_linear_backward_set(float *dx, size_t lddx, float *dw, float *db, const float *dy, size_t lddy,
                             const float *x, size_t ldx, const float *w, size_t T, size_t I, size_t O);

enum moe_act { MOE_ACT_TANH = 0, MOE_ACT_RELU = 1, MOE_ACT_SIGMOID = 2, MOE_ACT_IDENTITY = 3 };
int moe_act_from_name(const char *name); // -1 when unknown
const char *moe_act_name(enum moe_act a);
// y = act(x) elementwise over n values (in place allowed).
void moe_act_forward(enum moe_act a, float *y, const float *x, size_t n);
// dx += dy * act'(x), written in terms of the saved output y.
void moe_act_backward(enum moe_act a, float *dx, const float *dy, const float *y, size_t n);

// Mean squared error over rows, summed over outputs: L = (1/T) sum_t ||y_t - d_t||^2.
// Returns sum_t ||y_t - d_t||^2 (the caller divides by its own T);
// dy (may be NULL) += scale * 2 (y - d).
double moe_mse_forward_backward(float *dy, const float *y, const float *d, size_t T, size_t O, float scale);

// Softmax cross-entropy over O classes: L_t = -log softmax(y_t)[label_t].
// Returns sum_t L_t; dy (may be NULL) += scale * (softmax(y_t) - onehot(label_t)).
double moe_ce_forward_backward(float *dy, const float *y, const int32_t *label, size_t T, size_t O, float scale);
// The same, also writing each row's loss L_t into row_loss (T) and the index of its
// largest logit (the first, on ties) into row_argmax (T) when they are not NULL:
// the statistics of a batch come out of the loss pass instead of a second one.
double moe_ce_rows(float *dy, float *row_loss, int32_t *row_argmax, const float *y, const int32_t *label, size_t T,
                   size_t O, float scale);

// Knowledge distillation (Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in
// a Neural Network", sec. 2): student logits s against teacher logits z at
// temperature tau, L_t = tau^2 KL(softmax(z_t/tau) || softmax(s_t/tau)); the tau^2
// keeps the gradient's scale independent of tau. Returns sum_t L_t;
// dy (may be NULL) += scale * tau * (softmax(s_t/tau) - softmax(z_t/tau)).
double moe_kd_forward_backward(float *dy, const float *s, const float *z, size_t T, size_t O, float tau,
                               float scale);

// Symmetric KL of MoEBERT's output distillation (Zuo et al. 2022, "MoEBERT: from
// BERT to Mixture-of-Experts via Importance-Guided Adaptation", sec. 3.3):
// L_t = KL(p_t || q_t) + KL(q_t || p_t), p = softmax(z_t) the teacher's, q =
// softmax(s_t) the student's. Returns sum_t L_t; dy (may be NULL) += scale *
// dL_t/ds_t = (q - p) + q * (log q - log p - KL(q || p)).
double moe_symkl_forward_backward(float *dy, const float *s, const float *z, size_t T, size_t O, float scale);

// GELU, tanh form (Hendrycks & Gimpel 2016):
//   gelu(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
// SiLU / swish (Elfwing et al. 2018; the gate of SwiGLU, Shazeer 2020): silu(x) = x sigmoid(x).
// Forward: y = f(x) (in place allowed). Backward: dx = dy * f'(x) (written, not added to;
// in place over dy allowed), from the saved input x.
void moe_gelu_forward(float *y, const float *x, size_t n);
void moe_gelu_backward(float *dx, const float *dy, const float *x, size_t n);
void moe_silu_forward(float *y, const float *x, size_t n);
void moe_silu_backward(float *dx, const float *dy, const float *x, size_t n);

// LayerNorm over the last dimension (Ba, Kiros & Hinton 2016), population variance:
//   y_t = (x_t - mean_t) * rstd_t * g + b,  rstd_t = 1 / sqrt(var_t + eps).
// x, y (T, D) with row strides D; g, b (D); mean, rstd (T) saved for backward.
// Backward adds into dx (may be NULL), dg and db.
void moe_layernorm_forward(float *y, float *mean, float *rstd, const float *x, const float *g, const float *b,
                           size_t T, size_t D, float eps);
void moe_layernorm_backward(float *dx, float *dg, float *db, const float *dy, const float *x, const float *mean,
                            const float *rstd, const float *g, size_t T, size_t D);
// RMSNorm (Zhang & Sennrich 2019): y_t = x_t * rstd_t * g, rstd_t = 1 / sqrt(mean(x_t^2) + eps).
void moe_rmsnorm_forward(float *y, float *rstd, const float *x, const float *g, size_t T, size_t D, float eps);
void moe_rmsnorm_backward(float *dx, float *dg, const float *dy, const float *x, const float *rstd, const float *g,
                          size_t T, size_t D);

// Row-wise softmax of z (T, E) into p; log-sum-exp per row into lse (may be NULL).
void moe_softmax_forward(float *p, float *lse, const float *z, size_t T, size_t E);

// Inverted dropout (Srivastava et al. 2014, nn/dropout.c): at training time x * m / (1 - p) with
// m ~ Bernoulli(1 - p) per element, the identity at evaluation (callers simply do not call it).
// The mask is a pure function of (seed, step, site, element) through the counter-based generator
// (core/rng.h, purpose MOE_RNG_DROPOUT, stream = step, index = site * 2^40 + element), so the
// backward draws the same mask again rather than storing it. Sites (model/model.h documents them):
// layer * MOE_DROP_KINDS + kind.
struct moe_dropout {
    float p;        // drop probability, in [0, 1); 0 = off
    uint64_t seed;  // train.seed
    uint64_t step;  // optimizer step (the batch's), the generator's stream
    uint32_t site;  // layer * MOE_DROP_KINDS + kind
};
enum moe_drop_kind {
    MOE_DROP_ATTN = 0,       // attention probabilities
    MOE_DROP_RESID_ATTN = 1, // the attention sub-layer's output, before the residual add
    MOE_DROP_RESID_FFN = 2,  // the FFN (dense or MoE) sub-layer's output, before the residual add
    MOE_DROP_FFN = 3,        // hidden activation of a dense FFN or of the routed experts
    MOE_DROP_SHARED = 4,     // hidden activation of the shared experts
    MOE_DROP_KINDS = 8
};
#define MOE_DROP_SITE_SHIFT 40
static inline int moe_dropout_on(const struct moe_dropout *d) { return d && d->p > 0.0f; }
static inline struct moe_dropout moe_dropout_make(double p, uint64_t seed, uint64_t step, size_t layer,
                                                  enum moe_drop_kind kind)
{
    struct moe_dropout d = { (float)p, seed, step, (uint32_t)(layer * MOE_DROP_KINDS + kind) };
    return d;
}
// Whether element `element` of the site is kept (for tests).
int moe_dropout_keep(const struct moe_dropout *d, uint64_t element);
// x[i] := x[i] * m(first + i) / (1 - p) for i < n (nothing when d is NULL or off). Forward and backward.
void moe_dropout_apply(const struct moe_dropout *d, float *x, size_t n, uint64_t first);
// x (N, F): row r's element j has index key(r) * F + j, key(r) = row_tok[r] * S + row_slot[r]
// (the dispatched rows of an expert block: token and slot), or r when row_tok is NULL.
void moe_dropout_rows(const struct moe_dropout *d, float *x, size_t N, size_t F, const int32_t *row_tok,
                      const int32_t *row_slot, size_t S);

// Causal multi-head self-attention (Vaswani et al. 2017, decoder masking).
// B = sequences, C = positions, D = n_embd, H = heads, hs = D / H (D % H == 0).
// qkv (B, C, 3D): per position [q (D) | k (D) | v (D)]; head h uses columns
// h*hs .. (h+1)*hs - 1 of each of q, k, v.
// att (B, H, C, C): the softmax probabilities, saved for backward (entries
// above the diagonal are written as 0).
// out (B, C, D): out[b, t, h*hs + i] = sum_{s <= t} att[b, h, t, s] v[b, s, h*hs + i],
// att[b, h, t, :] = softmax_{s <= t}(q[b, t, h] . k[b, s, h] / sqrt(hs)).
void moe_attention_forward(float *out, float *att, const float *qkv, size_t B, size_t C, size_t D, size_t H);
// dqkv (B, C, 3D) += gradient given dout (B, C, D); datt (B, H, C, C) is scratch.
void moe_attention_backward(float *dqkv, float *datt, const float *dout, const float *qkv, const float *att,
                            size_t B, size_t C, size_t D, size_t H);
// With attention-probability dropout (drop on, see below): att receives the dropped probabilities
// P' = P * m / (1 - p) that multiply v, and attp (B, H, C, C) the probabilities P themselves (the
// softmax backward needs both); element (b, h, t, s) of the mask has index ((b H + h) C + t) C + s.
// drop NULL or off: attp is not used and the result is moe_attention_forward's, bit for bit.
void moe_attention_forward_drop(float *out, float *att, float *attp, const float *qkv, size_t B, size_t C, size_t D,
                                size_t H, const struct moe_dropout *drop);
// The backward of that forward (att and attp as it left them; the mask is drawn again).
void moe_attention_backward_drop(float *dqkv, float *datt, const float *dout, const float *qkv, const float *att,
                                 const float *attp, size_t B, size_t C, size_t D, size_t H,
                                 const struct moe_dropout *drop);
// The reference twins of the two above: the same contract, every dot product summed in double in
// index order (plain loops, several times slower). The tests compare the fast kernels against them.
void moe_attention_forward_ref(float *out, float *att, const float *qkv, size_t B, size_t C, size_t D, size_t H);
void moe_attention_backward_ref(float *dqkv, float *datt, const float *dout, const float *qkv, const float *att,
                                size_t B, size_t C, size_t D, size_t H);
// Token plus learned position embedding: out (B, C, D) = wte[tok[b*ld + c]] + wpe[c].
// tok: B rows of at least C token ids with row stride ld (windows of C + 1 tokens use ld = C + 1),
// each id in [0, V); wte (V, D), wpe (C_max >= C, D).
void moe_embedding_forward(float *out, const int32_t *tok, size_t ld, const float *wte, const float *wpe, size_t B,
                           size_t C, size_t D);
// dwte += scatter of dout by token id, dwpe += sum over b of dout[b]. Serial in a fixed order so the
// result is bit-identical for any thread count.
void moe_embedding_backward(float *dwte, float *dwpe, const float *dout, const int32_t *tok, size_t ld, size_t B,
                            size_t C, size_t D);

#endif
