// transformer.c: the decoder-only Transformer language model (GPT-2 layout,
// pre-norm) with a sparse MoE FFN in every moe_every-th block and a dense FFN
// elsewhere. Rows are windows of C + 1 tokens (io/corpus.h): the model reads
// tokens 0..C-1 and predicts 1..C; the loss is the mean next-token
// cross-entropy in nats per predicted token, plus the sparse layers'
// auxiliary losses. Not here: tokenisation, windows, sampling text.
//
//   h_0 = tok_emb[x_t] + pos_emb[t]
//   m_l = h_l + Wo . Attn(norm1_l(h_l) . Wqkv^T)        causal, H heads
//   h_{l+1} = m_l + FFN_l(norm2_l(m_l))                 FFN_l = MoE layer or dense FFN
//   logits = norm_f(h_L) . W_head^T                      W_head = tok_emb when tied
// Block l is sparse iff l % moe_every == moe_every - 1 (as in mlp-moe).
// Language-aware routing (moe.lang_router): the router of each sparse layer
// sees norm2_l(m_l) + lang_emb_l[language of the window] (the embedding starts
// at zero, so step 0 routes like the plain model).
// Hash routing keys on the input token id, with a table over the vocabulary.
// Dropout (model.dropout.*, training passes only; Srivastava et al. 2014, inverted,
// nn/dropout.c), with D_p(x) = x * m / (1 - p):
//   m_l = h_l + D_res(Wo . D_att(P) V)          P: the attention probabilities
//   h_{l+1} = m_l + D_res(FFN_l(norm2_l(m_l)))  FFN_l's hidden activation under D_ffn
// Mask sites (nn.h): layer l * 8 + kind; elements: (b, h, t, s) of the attention
// probabilities, (t, d) of a sub-layer output, (t, j) of a dense FFN's hidden
// units, (t, slot, j) of an expert's.
//
// reference: Vaswani et al. 2017 (attention); Radford et al. 2019 (GPT-2
// pre-norm layout, learned positions); Fedus et al. 2022 and Lepikhin et al.
// 2021 (an MoE FFN in every other block); Roller et al. 2021 (hash layers).
//
// B = windows, C = n_ctx, T = B * C tokens, D = n_embd, H = n_head, F = n_ff,
// Fd = n_ff_dense, V = vocabulary, G = languages, L = n_layer.
//
// Tensors (docs/checkpoint.md):
//   tok_emb.weight (V, D), pos_emb.weight (C, D)
//   layers.{l}.attn_norm.weight (D), .bias (D) (layernorm only)
//   layers.{l}.attn.wqkv (3D, D), layers.{l}.attn.wo (D, D)
//   layers.{l}.ffn_norm.weight (D), .bias (D) (layernorm only)
//   layers.{l}.moe.* (moe/moe_layer.h), layers.{l}.moe.lang_emb (G, D) (moe.lang_router)
//     or layers.{l}.ffn.w1 (Fd, D), .w3 (Fd, D) (swiglu), .w2 (D, Fd)
//   norm.weight (D), norm.bias (D) (layernorm only), head.weight (V, D) (untied only)
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/params.h"
#include "core/prof.h"
#include "io/corpus.h"
#include "model/model.h"
#include "moe/moe_layer.h"
#include "nn/nn.h"

#define PAR_MIN (1u << 15) // values before an elementwise loop goes parallel


struct block {
    int sparse;
    int i_g1, i_b1, i_qkv, i_wo, i_g2, i_b2; // norms (biases -1 for rmsnorm), attention
    struct moe_layer moe;                    // sparse blocks
    int i_lang;                              // lang_emb (G, D) of a sparse block, or -1
    int i_w1, i_w3, i_w2;                    // dense blocks
    float *a, *b, *hh;                       // (T, Fd) dense FFN activations
    // saved for backward, (T, .) each
    float *n1, *mean1, *rstd1, *qkv, *att, *ao, *m, *n2, *mean2, *rstd2;
    float *attp;                             // (B, H, C, C) probabilities before dropout (model.dropout.attention)
};

struct transformer {
    size_t C, D, H, V, G, L, Fd, T_max;
    int rms, tied, lang_router;
    double p_attn, p_res, p_ffn;  // model.dropout.*
    enum moe_ffn_act act;
    float init_scale;
    int has_hash;
    struct block *blk;
    size_t n_sparse;
    struct moe_layer **moe;     // (n_sparse) the sparse layers in order
    int i_wte, i_wpe, i_gf, i_bf, i_wh;
    float *h;                   // (L+1, T, D) block inputs; h[L] = final residual
    float *nf, *meanf, *rstdf;  // (T, D), (T), (T) final norm
    float *logits, *dlogits;    // (T, V)
    float *dh, *dn, *tmp;       // (T, D)
    float *dqkv, *datt, *dao;   // (T, 3D), (B, H, C, C), (T, D)
    float *da, *db, *dhh;       // (T, Fd)
    float *radd, *dradd;        // (T, D) language embedding at each token, its gradient
    int32_t *target, *label;    // (T) next tokens; routing labels (byte class * G + language)
    uint32_t *keys;             // (T) hash keys: input token ids
};

static void release(struct moe_model *m)
{
    struct transformer *n = m->impl;
    if (!n)
        return;
    // the buffers belong to the model's plan
    for (size_t l = 0; n->blk && l < n->L; l++)
        moe_layer_release(&n->blk[l].moe);
    free(n->blk);
    free(n->moe);
    free(n);
    m->impl = NULL;
}

// The head's tensor: the token embedding when tied.
static int head(const struct transformer *n) { return n->tied ? n->i_wte : n->i_wh; }

static void fill(struct moe_params *p, int i, float v)
{
    if (i < 0)
        return;
    float *w = moe_params_data(p, i);
    for (size_t k = 0; k < p->t[i].numel; k++)
        w[k] = v;
}

static void init_weights(struct moe_model *m, uint64_t seed)
{
    struct transformer *n = m->impl;
    struct moe_params *p = &m->params;
    moe_init_uniform(p, n->i_wte, seed, n->init_scale);
    moe_init_uniform(p, n->i_wpe, seed, n->init_scale);
    for (size_t l = 0; l < n->L; l++) {
        struct block *b = &n->blk[l];
        fill(p, b->i_g1, 1.0f);
        fill(p, b->i_b1, 0.0f);
        fill(p, b->i_g2, 1.0f);
        fill(p, b->i_b2, 0.0f);
        moe_init_uniform(p, b->i_qkv, seed, n->init_scale);
        moe_init_uniform(p, b->i_wo, seed, n->init_scale);
        if (b->sparse) {
            moe_layer_init(&b->moe, p, seed, n->init_scale);
            fill(p, b->i_lang, 0.0f);
        } else {
            int w[] = { b->i_w1, b->i_w3, b->i_w2 };
            for (int k = 0; k < 3; k++)
                if (w[k] >= 0)
                    moe_init_uniform(p, w[k], seed, n->init_scale);
        }
    }
    fill(p, n->i_gf, 1.0f);
    fill(p, n->i_bf, 0.0f);
    if (!n->tied)
        moe_init_uniform(p, n->i_wh, seed, n->init_scale);
}

// Balanced hash tables: greedy by the training split's token frequencies.
static int fit(struct moe_model *m, const struct moe_dataset *train, struct moe_err *err)
{
    struct transformer *n = m->impl;
    if (!n->has_hash || !train->text)
        return 0;
    uint64_t *freq = calloc(n->V, sizeof *freq);
    if (!freq)
        return moe_error(err, MOE_ENOMEM, "out of memory for token counts");
    moe_text_count(train->text, n->V, freq);
    moe_model_layers_fit_hash(m, freq);
    free(freq);
    return 0;
}

// Statistics of one batch from the loss pass's per-token cross-entropy and
// argmax (nn.h moe_ce_rows): loss and accuracy, bytes, per-language sums, and
// per target token when the statistics ask for them (moe_stats_init_tokens).
void moe_transformer_add_stats(const struct moe_model *m, const struct moe_batch *bt, struct moe_stats *s,
                               const float *row_loss, const int32_t *row_argmax)
{
    const struct transformer *n = m->impl;
    size_t B = bt->n, C = n->C;
    for (size_t w = 0; w < B; w++) {
        double loss = 0.0;
        size_t correct = 0;
        for (size_t c = 0; c < C; c++) {
            size_t t = w * C + c;
            int32_t y = bt->tok[w * (C + 1) + c + 1];
            loss += (double)row_loss[t];
            correct += row_argmax[t] == y;
            if (y >= 0 && (size_t)y < s->n_vocab) {
                s->tok_count[y]++;
                s->tok_correct[y] += row_argmax[t] == y;
                s->tok_loss[y] += (double)row_loss[t];
            }
        }
        s->n += C;
        s->loss += loss;
        s->correct += correct;
        double bytes = bt->bytes ? (double)bt->bytes[w] : (double)C;
        s->bytes += bytes;
        size_t g = bt->lang ? (size_t)bt->lang[w] : 0;
        if (g < s->n_lang) {
            s->lang_loss[g] += loss;
            s->lang_tokens[g] += C;
            s->lang_bytes[g] += bytes;
        }
    }
}

int moe_transformer_batch(const struct moe_model *m, const struct moe_batch *bt, int32_t *target, uint32_t *keys,
                          int32_t *label, struct moe_err *err)
{
    const struct transformer *n = m->impl;
    size_t B = bt->n, C = n->C, V = n->V, G = n->G, ld = C + 1;
    if (B > m->max_batch)
        return moe_error(err, MOE_EINVAL, "batch of %zu windows exceeds the model's maximum %zu", B, m->max_batch);
    if (B && !bt->tok)
        return moe_error(err, MOE_EINVAL, "model 'transformer' needs token windows (data.source 'text')");
    for (size_t w = 0; w < B; w++) {
        if (bt->lang && (bt->lang[w] < 0 || (size_t)bt->lang[w] >= G))
            return moe_error(err, MOE_EINVAL, "window %zu: language %d outside [0, %zu)", w, bt->lang[w], G);
        for (size_t c = 0; c <= C; c++) {
            int32_t id = bt->tok[w * ld + c];
            if (id < 0 || (size_t)id >= V)
                return moe_error(err, MOE_EINVAL, "window %zu: token id %d outside the vocabulary [0, %zu)", w,
                                 id, V);
        }
        for (size_t c = 0; c < C; c++) {
            size_t t = w * C + c;
            int32_t g = bt->lang ? bt->lang[w] : 0;
            target[t] = bt->tok[w * ld + c + 1];
            if (keys)
                keys[t] = (uint32_t)bt->tok[w * ld + c];
            label[t] = (bt->cls ? (int32_t)bt->cls[w * ld + c] : MOE_CLASS_OTHER) * (int32_t)G + g;
        }
    }
    return 0;
}

// Block l's dropout of one kind: p at training time (with_grad), off otherwise.
static struct moe_dropout drop(double p, int with_grad, const struct moe_model *m, const struct moe_batch *bt,
                               size_t l, enum moe_drop_kind kind)
{
    return moe_dropout_make(with_grad ? p : 0.0, m->seed, bt->step, l, kind);
}

// The gradient of a sub-layer's output under residual dropout: dy * m / (1 - p) in tmp, or dy itself.
static const float *dropped_grad(float *tmp, const float *dy, size_t n, const struct moe_dropout *d)
{
    if (!moe_dropout_on(d))
        return dy;
    memcpy(tmp, dy, n * sizeof *tmp);
    moe_dropout_apply(d, tmp, n, 0);
    return tmp;
}

static int run(struct moe_model *m, const struct moe_batch *bt, int with_grad, struct moe_stats *stats,
               struct moe_err *err)
{
    struct transformer *n = m->impl;
    struct moe_params *p = &m->params;
    size_t B = bt->n, C = n->C, D = n->D, H = n->H, V = n->V, L = n->L, Fd = n->Fd;
    size_t T = B * C, TD = T * D, ld = C + 1;
    int rc = moe_transformer_batch(m, bt, n->target, n->keys, n->label, err);
    if (rc || B == 0)
        return rc;

    // forward
    MOE_TIMED(MOE_PHASE_EMBEDDING, moe_embedding_forward(n->h, bt->tok, ld, moe_params_data(p, n->i_wte),
                                                          moe_params_data(p, n->i_wpe), B, C, D));
    size_t si = 0;
    for (size_t l = 0; l < L; l++) {
        struct block *b = &n->blk[l];
        float *hin = n->h + l * TD, *hout = n->h + (l + 1) * TD;
        struct moe_dropout d_att = drop(n->p_attn, with_grad, m, bt, l, MOE_DROP_ATTN),
                           d_ra = drop(n->p_res, with_grad, m, bt, l, MOE_DROP_RESID_ATTN),
                           d_rf = drop(n->p_res, with_grad, m, bt, l, MOE_DROP_RESID_FFN),
                           d_ffn = drop(n->p_ffn, with_grad, m, bt, l, MOE_DROP_FFN);
        moe_model_norm_forward(n->rms, p, b->n1, b->mean1, b->rstd1, hin, b->i_g1, b->i_b1, T, n->D);
        MOE_TIMED(MOE_PHASE_LINEAR, moe_linear_forward(b->qkv, 3 * D, b->n1, D, moe_params_data(p, b->i_qkv), NULL,
                                                       T, D, 3 * D));
        MOE_TIMED(MOE_PHASE_ATTENTION, moe_attention_forward_drop(b->ao, b->att, b->attp, b->qkv, B, C, D, H, &d_att));
        MOE_TIMED(MOE_PHASE_LINEAR, moe_linear_forward(n->tmp, D, b->ao, D, moe_params_data(p, b->i_wo), NULL, T, D, D));
        moe_dropout_apply(&d_ra, n->tmp, TD, 0);
        #pragma omp parallel for schedule(static) if (TD >= PAR_MIN)
        for (size_t i = 0; i < TD; i++) {
            b->m[i] = hin[i] + n->tmp[i];
            hout[i] = b->m[i];
        }
        moe_model_norm_forward(n->rms, p, b->n2, b->mean2, b->rstd2, b->m, b->i_g2, b->i_b2, T, n->D);
        if (b->sparse) {
            struct moe_route_acc *acc = stats && si < stats->n_route ? &stats->route[si] : NULL;
            b->moe.radd = b->moe.dradd = NULL;
            if (b->i_lang >= 0) {
                const float *le = moe_params_data(p, b->i_lang);
                for (size_t t = 0; t < T; t++) {
                    size_t g = bt->lang ? (size_t)bt->lang[t / C] : 0;
                    memcpy(n->radd + t * D, le + g * D, D * sizeof(float));
                }
                b->moe.radd = n->radd;
            }
            if (moe_dropout_on(&d_rf)) { // the layer's output on its own, dropped, then added
                moe_zero(n->tmp, TD);
                moe_layer_forward(&b->moe, p, n->tmp, b->n2, T, n->keys, with_grad, m->seed, bt->step, acc, n->label);
                moe_dropout_apply(&d_rf, n->tmp, TD, 0);
                #pragma omp parallel for schedule(static) if (TD >= PAR_MIN)
                for (size_t i = 0; i < TD; i++)
                    hout[i] += n->tmp[i];
            } else {
                moe_layer_forward(&b->moe, p, hout, b->n2, T, n->keys, with_grad, m->seed, bt->step, acc, n->label);
            }
            si++;
        } else {
            moe_ffn_forward_drop(n->tmp, b->a, b->b, b->hh, b->n2, moe_params_data(p, b->i_w1),
                                 b->i_w3 >= 0 ? moe_params_data(p, b->i_w3) : NULL, moe_params_data(p, b->i_w2), T, D,
                                 Fd, n->act, &d_ffn, NULL, NULL, 0);
            moe_dropout_apply(&d_rf, n->tmp, TD, 0);
            #pragma omp parallel for schedule(static) if (TD >= PAR_MIN)
            for (size_t i = 0; i < TD; i++)
                hout[i] += n->tmp[i];
        }
    }
    const float *hL = n->h + L * TD;
    moe_model_norm_forward(n->rms, p, n->nf, n->meanf, n->rstdf, hL, n->i_gf, n->i_bf, T, n->D);
    MOE_TIMED(MOE_PHASE_LINEAR, moe_linear_forward(n->logits, V, n->nf, D, moe_params_data(p, head(n)), NULL, T, D, V));
    // The loss pass: per-token CE and argmax for the statistics, and with_grad the
    // head's gradient, in one sweep over the logits. tmp and dn (T, D) are free
    // until the backward and hold the per-token values.
    float *row_loss = n->tmp;
    int32_t *row_argmax = (int32_t *)n->dn;
    double t0 = moe_prof_begin();
    if (with_grad) {
        moe_zero(n->dlogits, T * V);
        moe_model_ce_head(n->dlogits, row_loss, row_argmax, n->logits, n->target, bt, T, V);
    } else if (stats) {
        moe_ce_rows(NULL, row_loss, row_argmax, n->logits, n->target, T, V, 0.0f);
    }
    if (stats)
        moe_transformer_add_stats(m, bt, stats, row_loss, row_argmax);
    moe_prof_end(MOE_PHASE_LOSS, t0);
    const struct moe_batch_kd *kd = bt->kd;
    if (kd && kd->hidden_out)
        memcpy(kd->hidden_out, n->h + TD, L * TD * sizeof(float));
    if (!with_grad) {
        if (kd && kd->logits_out)
            memcpy(kd->logits_out, n->logits, T * V * sizeof(float));
        return 0;
    }

    // backward (the head's gradient is in dlogits already)
    MOE_TIMED(MOE_PHASE_LINEAR, moe_linear_backward_set(n->dn, D, moe_params_grad(p, head(n)), NULL, n->dlogits, V, n->nf,
                                                    D, moe_params_data(p, head(n)), T, D, V));
    moe_zero(n->dh, TD);
    moe_model_norm_backward(n->rms, p, n->dh, n->dn, hL, n->meanf, n->rstdf, n->i_gf, n->i_bf, T, n->D);
    for (size_t l = L; l-- > 0;) {
        struct block *b = &n->blk[l];
        struct moe_dropout d_att = drop(n->p_attn, 1, m, bt, l, MOE_DROP_ATTN),
                           d_ra = drop(n->p_res, 1, m, bt, l, MOE_DROP_RESID_ATTN),
                           d_rf = drop(n->p_res, 1, m, bt, l, MOE_DROP_RESID_FFN),
                           d_ffn = drop(n->p_ffn, 1, m, bt, l, MOE_DROP_FFN);
        if (kd && kd->teacher_hidden) // MoEBERT: the block output's distance to the teacher's
            moe_mse_forward_backward(n->dh, n->h + (l + 1) * TD, kd->teacher_hidden + l * TD, 1, TD,
                                     kd->alpha / (float)TD);
        // FFN branch: dm = dh (residual) + norm2'(dFFN), dFFN = dh under the residual dropout's mask
        const float *dffn = dropped_grad(n->tmp, n->dh, TD, &d_rf);
        moe_zero(n->dn, TD);
        if (b->sparse) {
            if (b->i_lang >= 0) {
                memset(n->dradd, 0, TD * sizeof(float));
                b->moe.dradd = n->dradd;
            }
            moe_layer_backward(&b->moe, p, n->dn, dffn, b->n2);
            if (b->i_lang >= 0) {
                float *gl = moe_params_grad(p, b->i_lang);
                for (size_t t = 0; t < T; t++) {
                    size_t g = bt->lang ? (size_t)bt->lang[t / C] : 0;
                    for (size_t d = 0; d < D; d++)
                        gl[g * D + d] += n->dradd[t * D + d];
                }
                b->moe.dradd = NULL;
            }
        } else {
            moe_ffn_backward_drop(n->dn, moe_params_grad(p, b->i_w1),
                                  b->i_w3 >= 0 ? moe_params_grad(p, b->i_w3) : NULL, moe_params_grad(p, b->i_w2),
                                  n->dhh, n->da, n->db, dffn, b->n2, b->a, b->b, b->hh, moe_params_data(p, b->i_w1),
                                  b->i_w3 >= 0 ? moe_params_data(p, b->i_w3) : NULL, moe_params_data(p, b->i_w2), T,
                                  D, Fd, n->act, &d_ffn, NULL, NULL, 0, 1.0f);
            if (kd && kd->ffn_importance) // an example is a window: the mean over its C tokens, 1/B of the batch's
                moe_ffn_importance_add(kd->ffn_importance + l * Fd, b->a, b->b, b->hh, n->dhh, n->da, n->db, T, Fd,
                                       C, (double)B, n->act);
        }
        moe_model_norm_backward(n->rms, p, n->dh, n->dn, b->m, b->mean2, b->rstd2, b->i_g2, b->i_b2, T, n->D);
        // attention branch: dh_l = dm (residual) + norm1'(Wqkv'(Attn'(Wo'(dm))))
        const float *dattn = dropped_grad(n->tmp, n->dh, TD, &d_ra);
        MOE_TIMED(MOE_PHASE_LINEAR, moe_linear_backward_set(n->dao, D, moe_params_grad(p, b->i_wo), NULL, dattn, D, b->ao,
                                                        D, moe_params_data(p, b->i_wo), T, D, D));
        moe_zero(n->dqkv, 3 * TD);
        MOE_TIMED(MOE_PHASE_ATTENTION, moe_attention_backward_drop(n->dqkv, n->datt, n->dao, b->qkv, b->att, b->attp, B,
                                                                   C, D, H, &d_att));
        MOE_TIMED(MOE_PHASE_LINEAR, moe_linear_backward_set(n->dn, D, moe_params_grad(p, b->i_qkv), NULL, n->dqkv, 3 * D,
                                                        b->n1, D, moe_params_data(p, b->i_qkv), T, D, 3 * D));
        moe_model_norm_backward(n->rms, p, n->dh, n->dn, n->h + l * TD, b->mean1, b->rstd1, b->i_g1, b->i_b1, T, n->D);
    }
    MOE_TIMED(MOE_PHASE_EMBEDDING, moe_embedding_backward(moe_params_grad(p, n->i_wte), moe_params_grad(p, n->i_wpe),
                                                           n->dh, bt->tok, ld, B, C, D));
    return 0;
}

static const struct moe_model_ops ops = {
    .type = "transformer",
    .run = run,
    .init_weights = init_weights,
    .release = release,
    .fit = fit,
    .state = moe_model_layers_state,
    .moe_layer_at = moe_model_layers_at,
    .set_eval_capacity = moe_model_layers_set_eval_capacity,
};

int moe_transformer_check(const struct moe_model_hp *hp, const char *loss, enum moe_task task, size_t n_in,
                          size_t n_out, struct moe_err *err)
{
    (void)task, (void)n_in;
    if (strcmp(loss, "ce") != 0)
        return moe_error(err, MOE_ECONFIG, "key 'loss.type': model 'transformer' takes ce (next-token cross-entropy), got '%s'", loss);
    if (hp->n_embd % hp->n_head)
        return moe_error(err, MOE_ECONFIG, "key 'model.n_head': %zu heads do not divide model.n_embd = %zu",
                         hp->n_head, hp->n_embd);
    if (n_out < 2)
        return moe_error(err, MOE_ECONFIG, "model 'transformer' needs a vocabulary of at least 2 tokens, got %zu", n_out);
    return 0;
}

// Block l's attention half: its tensors and saved activations, and its FLOPs.
static void declare_attention(struct moe_plan *pl, struct transformer *n, struct block *b, size_t l,
                              struct moe_dim dT, struct moe_dim dB)
{
    size_t C = n->C, D = n->D;
    struct moe_dim dD = { D, "model.n_embd" }, dD3 = { 3 * D, "3 x model.n_embd" }, dC = { C, "model.n_ctx" },
                   dH = { n->H, "model.n_head" };
    moe_plan_param(pl, &b->i_g1, MOE_DIMS(dD), "layers.%zu.attn_norm.weight", l);
    if (!n->rms)
        moe_plan_param(pl, &b->i_b1, MOE_DIMS(dD), "layers.%zu.attn_norm.bias", l);
    moe_plan_param(pl, &b->i_qkv, MOE_DIMS(dD3, dD), "layers.%zu.attn.wqkv", l);
    moe_plan_param(pl, &b->i_wo, MOE_DIMS(dD, dD), "layers.%zu.attn.wo", l);
    moe_plan_param(pl, &b->i_g2, MOE_DIMS(dD), "layers.%zu.ffn_norm.weight", l);
    if (!n->rms)
        moe_plan_param(pl, &b->i_b2, MOE_DIMS(dD), "layers.%zu.ffn_norm.bias", l);
    // the projections, and attention over (C + 1) / 2 positions on average (QK and AV)
    moe_plan_macs(pl, 4.0 * (double)D * D + 2.0 * (double)D * ((double)C + 1.0) / 2.0);
    float **td[] = { &b->n1, &b->ao, &b->m, &b->n2 }, **tt[] = { &b->mean1, &b->rstd1, &b->mean2, &b->rstd2 };
    const char *tdn[] = { "n1", "ao", "m", "n2" }, *ttn[] = { "mean1", "rstd1", "mean2", "rstd2" };
    for (int i = 0; i < 4; i++)
        moe_plan_buf(pl, td[i], MOE_ROLE_ACT, MOE_DT_F32, MOE_DIMS(dT, dD), "layers.%zu.%s", l, tdn[i]);
    for (int i = 0; i < 4; i++)
        moe_plan_buf(pl, tt[i], MOE_ROLE_ACT, MOE_DT_F32, MOE_DIMS(dT), "layers.%zu.%s", l, ttn[i]);
    moe_plan_buf(pl, &b->qkv, MOE_ROLE_ACT, MOE_DT_F32, MOE_DIMS(dT, dD3), "layers.%zu.qkv", l);
    moe_plan_buf(pl, &b->att, MOE_ROLE_ACT, MOE_DT_F32, MOE_DIMS(dB, dH, dC, dC), "layers.%zu.att", l);
    if (n->p_attn > 0.0) // att holds the dropped probabilities, attp the softmax's own
        moe_plan_buf(pl, &b->attp, MOE_ROLE_ACT, MOE_DT_F32, MOE_DIMS(dB, dH, dC, dC), "layers.%zu.att_keep", l);
}

// The model's own buffers, outside the blocks.
static void declare_top(struct moe_plan *pl, struct transformer *n, struct moe_dim dT, struct moe_dim dB,
                        struct moe_dim dFd)
{
    struct moe_dim dD = { n->D, "model.n_embd" }, dD3 = { 3 * n->D, "3 x model.n_embd" }, dC = { n->C, "model.n_ctx" },
                   dH = { n->H, "model.n_head" }, dV = { n->V, "vocabulary" }, dL1 = { n->L + 1, "model.n_layer + 1" };
    moe_plan_buf(pl, &n->h, MOE_ROLE_ACT, MOE_DT_F32, MOE_DIMS(dL1, dT, dD), "h");
    moe_plan_buf(pl, &n->nf, MOE_ROLE_ACT, MOE_DT_F32, MOE_DIMS(dT, dD), "nf");
    moe_plan_buf(pl, &n->meanf, MOE_ROLE_ACT, MOE_DT_F32, MOE_DIMS(dT), "meanf");
    moe_plan_buf(pl, &n->rstdf, MOE_ROLE_ACT, MOE_DT_F32, MOE_DIMS(dT), "rstdf");
    moe_plan_buf(pl, &n->logits, MOE_ROLE_ACT, MOE_DT_F32, MOE_DIMS(dT, dV), "logits");
    moe_plan_buf(pl, &n->dlogits, MOE_ROLE_SCRATCH, MOE_DT_F32, MOE_DIMS(dT, dV), "dlogits");
    float **td[] = { &n->dh, &n->dn, &n->tmp };
    const char *tdn[] = { "dh", "dn", "tmp" };
    for (int i = 0; i < 3; i++)
        moe_plan_buf(pl, td[i], MOE_ROLE_SCRATCH, MOE_DT_F32, MOE_DIMS(dT, dD), "%s", tdn[i]);
    moe_plan_buf(pl, &n->dqkv, MOE_ROLE_SCRATCH, MOE_DT_F32, MOE_DIMS(dT, dD3), "dqkv");
    moe_plan_buf(pl, &n->datt, MOE_ROLE_SCRATCH, MOE_DT_F32, MOE_DIMS(dB, dH, dC, dC), "datt");
    moe_plan_buf(pl, &n->dao, MOE_ROLE_SCRATCH, MOE_DT_F32, MOE_DIMS(dT, dD), "dao");
    if (n->n_sparse < n->L) { // the dense blocks' backward
        moe_plan_buf(pl, &n->da, MOE_ROLE_SCRATCH, MOE_DT_F32, MOE_DIMS(dT, dFd), "ffn.da");
        if (n->act == MOE_FFN_SWIGLU)
            moe_plan_buf(pl, &n->db, MOE_ROLE_SCRATCH, MOE_DT_F32, MOE_DIMS(dT, dFd), "ffn.db");
        moe_plan_buf(pl, &n->dhh, MOE_ROLE_SCRATCH, MOE_DT_F32, MOE_DIMS(dT, dFd), "ffn.dhh");
    }
    if (n->lang_router && n->n_sparse) { // the language embedding at each token, its gradient
        moe_plan_buf(pl, &n->radd, MOE_ROLE_ACT, MOE_DT_F32, MOE_DIMS(dT, dD), "lang_add");
        moe_plan_buf(pl, &n->dradd, MOE_ROLE_SCRATCH, MOE_DT_F32, MOE_DIMS(dT, dD), "lang_add_grad");
    }
    moe_plan_buf(pl, &n->target, MOE_ROLE_SCRATCH, MOE_DT_I32, MOE_DIMS(dT), "target");
    moe_plan_buf(pl, &n->label, MOE_ROLE_SCRATCH, MOE_DT_I32, MOE_DIMS(dT), "label");
    moe_plan_buf(pl, &n->keys, MOE_ROLE_SCRATCH, MOE_DT_U32, MOE_DIMS(dT), "keys");
}

int moe_transformer_declare(struct moe_model *m, const struct moe_model_hp *hp, const char *loss, struct moe_plan *pl)
{
    struct transformer *n = calloc(1, sizeof *n);
    if (!n)
        return moe_plan_fail(pl, MOE_ENOMEM, "out of memory");
    m->impl = n;
    m->ops = &ops;
    (void)loss; // ce: moe_transformer_check accepted it
    m->loss_name = "ce";
    n->C = hp->n_ctx;
    n->D = hp->n_embd;
    n->H = hp->n_head;
    n->L = hp->n_layer;
    n->V = m->n_out;
    n->G = m->n_in ? m->n_in : 1;
    n->tied = hp->tie_embeddings;
    n->lang_router = hp->moe.lang_router;
    size_t every = hp->moe_every;
    n->rms = hp->rms;
    n->act = hp->ffn_act;
    n->init_scale = (float)hp->init_scale;
    n->Fd = hp->n_ff_dense;
    n->p_attn = hp->dropout.attention;
    n->p_res = hp->dropout.residual;
    n->p_ffn = hp->dropout.ffn;
    size_t C = n->C, D = n->D, V = n->V, G = n->G, L = n->L;
    struct moe_dim dB = { m->max_batch, MOE_KEY_BATCH }, dT;
    if (moe_plan_product(pl, &n->T_max, MOE_DIMS(dB, { C, "model.n_ctx" })))
        return pl->rc;
    dT = (struct moe_dim){ n->T_max, MOE_KEY_BATCH " x model.n_ctx" };
    struct moe_layer_cfg lc = hp->moe;
    lc.hash_vocab = V; // hash routing keys on token ids
    lc.router.seq = C; // windows of C tokens: causal-safe expert choice in evaluation (moe.ec_eval)
    n->blk = calloc(L, sizeof *n->blk);
    n->moe = calloc(L, sizeof *n->moe);
    if (!n->blk || !n->moe)
        return moe_plan_fail(pl, MOE_ENOMEM, "out of memory");
    struct moe_dim dV = { V, "vocabulary" }, dG = { G, "languages" }, dD = { D, "model.n_embd" },
                   dC = { C, "model.n_ctx" };
    moe_plan_macs(pl, (double)V * D); // the head
    moe_plan_param(pl, &n->i_wte, MOE_DIMS(dV, dD), "tok_emb.weight");
    moe_plan_param(pl, &n->i_wpe, MOE_DIMS(dC, dD), "pos_emb.weight");
    for (size_t l = 0; l < L && !pl->rc; l++) {
        struct block *b = &n->blk[l];
        b->i_b1 = b->i_b2 = b->i_lang = -1;
        b->sparse = l % every == every - 1;
        declare_attention(pl, n, b, l, dT, dB);
        int *w[3] = { &b->i_w1, &b->i_w3, &b->i_w2 };
        float **act[3] = { &b->a, &b->b, &b->hh };
        moe_model_ffn_declare(pl, hp, &lc, l, b->sparse, dT, &b->moe, w, act);
        if (b->sparse) {
            if (n->lang_router)
                moe_plan_param(pl, &b->i_lang, MOE_DIMS(dG, dD), "layers.%zu.moe.lang_emb", l);
            n->moe[n->n_sparse++] = &b->moe;
            n->has_hash |= moe_router_info(lc.router.type)->token_table;
        }
    }
    n->i_bf = -1;
    moe_plan_param(pl, &n->i_gf, MOE_DIMS(dD), "norm.weight");
    if (!n->rms)
        moe_plan_param(pl, &n->i_bf, MOE_DIMS(dD), "norm.bias");
    if (n->tied)
        n->i_wh = -1; // the head is tok_emb (head())
    else
        moe_plan_param(pl, &n->i_wh, MOE_DIMS(dV, dD), "head.weight");
    declare_top(pl, n, dT, dB, moe_model_dense_dim(hp));
    m->hidden_per_row = n->C * n->L * n->D;
    m->n_moe_layers = n->n_sparse;
    m->moe_layers = n->moe;
    m->n_route_expert = lc.router.E;
    m->n_route_slots = moe_router_slots(&lc.router);
    return pl->rc;
}
