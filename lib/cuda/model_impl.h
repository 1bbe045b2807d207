// model_impl.h: the device model's state (cuda/model.h), shared by its two
// halves: model.c (creation, the mlp-moe pass, the gradient norm, the
// update, the copies to and from the host) and transformer.c (the
// Transformer language model's pass). Not installed, not for other callers.
//
// Layout on the device: the registry's flat weights, gradients and moments
// (core/params.h offsets), then per-pass activations for up to T_max rows
// (mlp-moe: batch rows; transformer: tokens, B_max windows of C).
#ifndef MOE_CUDA_MODEL_IMPL_H
#define MOE_CUDA_MODEL_IMPL_H

#include <stddef.h>
#include <stdint.h>

#include "core/status.h"
#include "cuda/layer.h"
#include "cuda/ops.h"
#include "moe/dispatch.h"
#include "moe/router.h"
#include "nn/nn.h"
#include "train/train.h"

#define MOE_CUDA_NORM_EPS 1e-5f // model/model.c's epsilon of the block norms
#define MOE_CUDA_MODEL_MEM 48   // device buffers of one model at most

struct moe_model;
struct moe_model_hp;
struct moe_batch;
struct moe_stats;
struct moe_cuda_layer;

struct moe_cuda_block {
    int i_g, i_b;                // the FFN's norm: gain and bias (-1: rmsnorm)
    struct moe_cuda_layer *moe;  // a sparse block's layer, or NULL
    int si;                      // a sparse block's index among the sparse ones (the statistics' route[si])
    int i_w1, i_w3, i_w2;        // a dense block's FFN (w3: swiglu, else -1)
    float *a, *b, *hh;           // its activations (T_max, Fd): kept for the backward
    // a transformer block's attention half: its norm (gain, bias), projections, and
    // what its backward reads: n1, ao, m (T, D), mean1, rstd1 (T), qkv (T, 3D),
    // att (B, H, C, C) the probabilities
    int i_g1, i_b1, i_qkv, i_wo;
    int i_lang;                  // a sparse block's language embedding (moe.lang_router), or -1
    float *n1, *mean1, *rstd1, *qkv, *att, *ao, *m;
    float *attp;                 // (B, H, C, C) the probabilities before attention dropout, or NULL
};

struct moe_cuda_model {
    size_t I, D, O, L, T_max, numel;
    int rms, ce;
    enum moe_optim_type opt;
    const struct moe_model *host; // the host model: its task and targets (moe_model_batch_targets)
    const struct moe_params *p;  // its registry: tensor offsets, names, expert marks
    int i_win, i_bin, i_gf, i_bf, i_wh, i_bh;
    struct moe_cuda_block *blk;
    void *mem[MOE_CUDA_MODEL_MEM];
    int n_mem;
    float *w, *g, *m, *v;        // (numel) the registry's layout; m, v as the optimizer needs
    float *acc;                  // (numel) gradient accumulation's sum (train.accumulate > 1), or NULL
    float *x, *target;           // (T_max, I), (T_max, O) regression targets
    int32_t *label;              // (T_max) classes (transformer: next tokens)
    float *h, *n, *mean, *rstd;  // (L + 1, T_max, D) and (L + 1, T_max): block inputs, FFN norms, the final norm
    float *y, *dy;               // (T_max, O) the head's outputs (transformer: logits over the vocabulary)
    float *dh, *dn;              // (T_max, D)
    // dense blocks (model.moe_every > 1): the FFN's width, activation, and
    // scratch shared by the blocks: the output before the residual add (also
    // the transformer's attention output), the backward's dh, da, db
    size_t Fd;
    enum moe_cuda_act cact;
    float *tmp, *fdh, *fda, *fdb;
    double *part, *lse, *sq;     // cross-entropy's blocks and rows; the sum of squares' scratch
    uint64_t seed;
    double p_attn, p_res, p_ffn;  // model.dropout.* (training passes only)
    double loss;                 // the last pass's summed loss (moe_cuda_model_stats)
    size_t T;                    // its rows (tokens)
    // host scratch of moe_cuda_model_stats: the head's outputs and
    // probabilities, one-hot targets (classes), one layer's routing and plan counts
    float *yh, *pred, *onehot;
    struct moe_route hr;
    struct moe_dispatch hplan;
    int has_host;
    uint32_t *hkeys;             // (T_max) host: the batch's hash keys (a model with hash routing), or NULL
    size_t hash_V;               // their vocabulary (moe.hash_vocab)
    // the transformer (tf set; transformer.c): B_max windows of C tokens, H
    // heads; the token and position embeddings and the head (tok_emb when
    // tied); on the device the batch's windows (B_max, C + 1), the attention's
    // backward scratch, the loss pass's per-token values, the embedding
    // backward's sort scratch (4 T_max); on the host the per-token targets and
    // routing labels of the last batch and the per-token values' copies
    int tf;
    size_t B_max, C, H;
    int i_wte, i_wpe, i_head;
    int32_t *tok;
    int32_t *lang;               // (B_max) the windows' languages (moe.lang_router)
    float *radd, *dradd;         // (T_max, D) a sparse block's language embedding at each token, its gradient
    size_t n_lang;               // languages
    float *dqkv, *datt, *dao;
    float *row_loss;
    int32_t *row_argmax, *emb_scratch;
    void *emb_sort;              // the embedding backward's sort scratch (emb_sort_bytes)
    size_t emb_sort_bytes;
    int32_t *htarget, *hlabel, *hargmax;
    float *hrow_loss;
    size_t B;                    // the last pass's windows
    uint64_t step;               // the last pass's step (the dropout masks of its backward)
    int has_lang;                // it had languages (else language 0 throughout)
    // distillation (moe_cuda_model_set_teacher): the teacher's device model,
    // the objective's weight alpha and temperature tau, MoEBERT's form (sym),
    // the distillation kernels' scratch (MOE_CUDA_DISTILL_SCRATCH(T_max))
    struct moe_cuda_model *teacher;
    float kd_alpha, kd_tau;
    int kd_sym;
    double *kd_scratch;
    // what an update changes (moe_cuda_model_set_train): the optimizer's
    // segments (train.h moe_train_segments over the device's buffers; their
    // moments one after another, n_opt floats of m and v) and the gradient
    // norm's units (moe_train_norm_units), host arrays of device pointers
    struct moe_optim_seg *seg, *unit;
    size_t n_seg, n_unit, n_opt, seg_total; // seg_total: the segments' floats
    // LoRA (train/tune.h): the host's adapters (targets, offsets, rank,
    // scale; their weights and gradients come back there), on the device
    // their weights lw and gradients lg (the adapters' registry layout), each
    // target's W0 at lw0 + w0_off[k], and the product s B A's scratch (the
    // largest target matrix)
    struct moe_lora *lora;
    float *lw, *lg, *lw0, *ltmp;
    size_t *w0_off;
};

int moe_cuda_model_alloc(struct moe_cuda_model *d, void *ret, size_t bytes, const char *what, struct moe_err *err);
// nn.h moe_dropout_make as ops.h's struct: block l's site of one kind, on at
// probability p in a training pass (train), off otherwise.
static inline struct moe_cuda_drop moe_cuda_drop_at(const struct moe_cuda_model *d, double p, int train,
                                                    uint64_t step, size_t l, enum moe_drop_kind kind)
{
    return moe_cuda_drop_of(moe_dropout_make(train ? p : 0.0, d->seed, step, l, kind));
}
static inline float *moe_cuda_model_w(const struct moe_cuda_model *d, int i)
{
    return i < 0 ? NULL : d->w + d->p->t[i].offset;
}
static inline float *moe_cuda_model_g(const struct moe_cuda_model *d, int i)
{
    return i < 0 || !d->g ? NULL : d->g + d->p->t[i].offset; // no gradients: a model for evaluation only
}
// A tensor's index by name (printf-style with the block number), or -1.
int moe_cuda_model_find(const struct moe_params *p, const char *fmt, size_t l);
// A dense block's FFN: out += D_res(FFN(x)) with hidden dropout dffn and
// residual dropout dres (either off: p 0), and its backward dx += from the
// branch's output gradient dy (already under dres's mask) (model.c).
int moe_cuda_dense_forward(struct moe_cuda_model *d, const struct moe_cuda_block *k, float *out, const float *x,
                           size_t T, const struct moe_cuda_drop *dffn, const struct moe_cuda_drop *dres,
                           struct moe_err *err);
int moe_cuda_dense_backward(struct moe_cuda_model *d, const struct moe_cuda_block *k, float *dx, const float *dy,
                            const float *x, size_t T, const struct moe_cuda_drop *dffn, struct moe_err *err);
// The FFN half of block l in a training (train) or evaluation pass: out +=
// D_res(FFN(x)), the sparse layer's weighted auxiliary loss into *ret_aux;
// and its backward: dn (zeroed here) = the FFN's input gradient from dy, the
// block output's gradient (model.c; the same in both models).
int moe_cuda_ffn_forward(struct moe_cuda_model *d, size_t l, float *out, const float *x, size_t T, int train,
                         uint64_t step, double *ret_aux, struct moe_err *err);
int moe_cuda_ffn_backward(struct moe_cuda_model *d, size_t l, float *dn, const float *dy, const float *x, size_t T,
                          uint64_t step, struct moe_err *err);

// Both models' head on the last block's output h_L (T rows): the final
// norm into n_L, y = n_L W^T (+ b; tensors i_w, i_b, -1: none), and with
// clear_dy the loss's dy set to zero for its gradient.
int moe_cuda_head_forward(struct moe_cuda_model *d, size_t T, int i_w, int i_b, int clear_dy, struct moe_err *err);

// The head's cross-entropy over T rows of the logits d->y against d->label
// (model/model.c moe_model_ce_head): *ret_loss the rows' sum, row_loss and
// row_argmax (T) when not NULL, dy (T, O) += the gradient at scale 1 / T when
// not NULL; in a training pass (train) of a model with a teacher, the
// distillation term's gradient too, weighted as there. The teacher's pass
// over the batch must have run.
int moe_cuda_model_ce_head(struct moe_cuda_model *d, double *ret_loss, float *dy, float *row_loss, int32_t *row_argmax,
                           size_t T, int train, struct moe_err *err);
// MoEBERT's hidden-state term of block l's output in a training pass with a
// teacher of that form (kd_sym): dh (T, D) += the gradient of alpha mean((h_{l+1}
// - teacher's h_{l+1})^2) (model/mlp_moe.c, model/transformer.c); else nothing.
int moe_cuda_model_hidden_kd(struct moe_cuda_model *d, size_t l, size_t T, struct moe_err *err);
// A training pass's first part with a teacher: its evaluation pass over b.
int moe_cuda_model_teacher_pass(struct moe_cuda_model *d, const struct moe_batch *b, struct moe_err *err);

// Hash routing: the T tokens' keys in d->hkeys handed to every hash layer
// with its host table (moe_cuda_layer_set_keys), before a forward.
int moe_cuda_model_set_keys(struct moe_cuda_model *d, size_t T, struct moe_err *err);

// transformer.c: its buffers (after model.c's: the registry, h, n, y and the
// rest for T_max tokens) and tensor indices; its forward with the loss pass,
// its backward, its statistics.
int moe_cuda_tf_alloc(struct moe_cuda_model *d, const struct moe_model_hp *hp, struct moe_err *err);
int moe_cuda_tf_forward(struct moe_cuda_model *d, const struct moe_batch *b, int train, double *ret_loss,
                        double *ret_aux, struct moe_err *err);
int moe_cuda_tf_backward(struct moe_cuda_model *d, struct moe_err *err);
int moe_cuda_tf_stats(struct moe_cuda_model *d, const struct moe_batch *b, struct moe_stats *s,
                      struct moe_err *err);

#endif
