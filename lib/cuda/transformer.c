// transformer.c: the Transformer language model's pass on the CUDA device
// (cuda/model.h, cuda/model_impl.h), operation for operation as
// model/transformer.c runs it (dropout, where configured, as there: the
// attention probabilities, each sub-layer's output, the FFNs' hidden units):
//
//   h_0 = tok_emb[x_t] + pos_emb[t]                          moe_cuda_embed_forward
//   per block l:  n1 = norm1(h_l); qkv = n1 Wqkv^T; ao = Attn(qkv) (causal, H heads);
//                 m = h_l + ao Wo^T; n2 = norm2(m);
//                 h_{l+1} = m + FFN_l(n2)                    the device MoE layer or the dense FFN
//   logits = norm_f(h_L) W_head^T  (W_head = tok_emb when tied)
//   loss: per-token cross-entropy and argmax (moe_cuda_ce_rows), dlogits
//   scale 1 / T; then the backward in reverse, each linear layer's dx and dW in
//   nn/linear.c's order, the embeddings' gradients last (tok_emb's after the
//   tied head's).
//
// The per-token values are the only things the statistics take from the
// device: the loss and argmax of each token (2 T values) and each sparse
// layer's routing; model/transformer.c's moe_transformer_add_stats sums them
// on the host in its order (per window, in double), so the host emulation's
// statistics are the CPU's bits. The batch's windows go in as token ids; the
// next-token targets are derived on the host with the CPU's own checks
// (moe_transformer_batch) and go in beside them.
//
// Buffers: model.c allocates the registry, h (L + 1, T, D), n, mean, rstd (the
// FFN norms, and the final norm at L), the logits y and dlogits dy (T, V),
// dh, dn, tmp (T, D); this file the attention's per-block activations and
// the rest below. C against ops.h, blas.h and linear.h: run on the host by
// tests/cuda_host.c in test_cuda_model_host.
#include <stdlib.h>
#include <string.h>

#include "core/params.h"
#include "cuda/layer.h"
#include "cuda/linear.h"
#include "cuda/model_impl.h"
#include "cuda/ops.h"
#include "model/model.h"
#include "moe/route_stats.h"

#define W moe_cuda_model_w
#define G moe_cuda_model_g

int moe_cuda_tf_alloc(struct moe_cuda_model *d, const struct moe_model_hp *hp, struct moe_err *err)
{
    const struct moe_params *p = d->p;
    const int lang = hp->moe.lang_router && d->host->n_moe_layers;
    d->n_lang = d->host->n_in ? d->host->n_in : 1;
    const size_t T = d->T_max, D = d->D, L = d->L, B = d->B_max, C = d->C, H = d->H, f = sizeof(float);
    const size_t TD = T * D, att = B * H * C * C;
    d->i_wte = moe_params_find(p, "tok_emb.weight");
    d->i_wpe = moe_params_find(p, "pos_emb.weight");
    d->i_head = d->i_wh >= 0 ? d->i_wh : d->i_wte;
    // per block: n1, ao, m (T, D), qkv (T, 3D), mean1, rstd1 (T), att (B, H, C, C), and
    // with attention dropout attp (B, H, C, C): att holds the dropped probabilities, attp the softmax's
    const int drop_att = d->p_attn > 0.0;
    const size_t per = 6 * TD + 2 * T + (drop_att ? 2 : 1) * att;
    float *act = NULL;
    const int bw = d->g != NULL; // the backward's buffers: not for a model made for evaluation passes only
    int rc = bw ? moe_cuda_embed_sort_bytes(T, &d->emb_sort_bytes, err) : 0;
    if (rc)
        return rc;
    const struct moe_cuda_want b[] = {
        { 1, &d->tok, B * (C + 1) * sizeof(int32_t), "batch windows" },
        { 1, &act, L * per * f, "attention activations" },
        { bw, &d->dqkv, 3 * TD * f, "dqkv" },
        { bw, &d->datt, att * f, "attention probability gradients" },
        { bw, &d->dao, TD * f, "dao" },
        { 1, &d->row_loss, T * f, "token losses" },
        { 1, &d->row_argmax, T * sizeof(int32_t), "token predictions" },
        { bw, &d->emb_scratch, 4 * T * sizeof(int32_t), "embedding backward scratch" },
        { bw, &d->emb_sort, d->emb_sort_bytes, "embedding backward sort" },
        { lang, &d->lang, B * sizeof(int32_t), "batch languages" },
        { lang, &d->radd, TD * f, "language embedding at each token" },
        { lang && bw, &d->dradd, TD * f, "its gradient" },
    };
    for (size_t i = 0; i < sizeof b / sizeof *b; i++)
        if (b[i].need && (rc = moe_cuda_model_alloc(d, b[i].p, b[i].bytes, b[i].what, err)))
            return rc;
    for (size_t l = 0; l < L; l++) {
        struct moe_cuda_block *k = &d->blk[l];
        float *a = act + l * per;
        k->n1 = a, k->ao = a + TD, k->m = a + 2 * TD, k->qkv = a + 3 * TD;
        k->mean1 = a + 6 * TD, k->rstd1 = a + 6 * TD + T, k->att = a + 6 * TD + 2 * T;
        k->attp = drop_att ? k->att + att : NULL;
        k->i_g1 = moe_cuda_model_find(p, "layers.%zu.attn_norm.weight", l);
        k->i_b1 = moe_cuda_model_find(p, "layers.%zu.attn_norm.bias", l);
        k->i_qkv = moe_cuda_model_find(p, "layers.%zu.attn.wqkv", l);
        k->i_wo = moe_cuda_model_find(p, "layers.%zu.attn.wo", l);
        k->i_lang = moe_cuda_model_find(p, "layers.%zu.moe.lang_emb", l);
    }
    if (!(d->htarget = malloc(T * sizeof(int32_t))) || !(d->hlabel = malloc(T * sizeof(int32_t))) ||
        !(d->hargmax = malloc(T * sizeof(int32_t))) || !(d->hrow_loss = malloc(T * f)))
        return moe_error(err, MOE_ENOMEM, "out of memory for the per-token host buffers (%zu tokens)", T);
    return 0;
}

// Block l's attention half (model/transformer.c run()): n1, qkv, the
// attention, its output projection into tmp, then m = h + tmp, also the
// block's output before the FFN adds to it.
static int attention_forward(struct moe_cuda_model *d, size_t l, float *hout, const float *hin, size_t B, int train,
                             uint64_t step, struct moe_err *err)
{
    const struct moe_cuda_block *k = &d->blk[l];
    const size_t C = d->C, D = d->D, H = d->H, T = B * C, TD = T * D;
    const struct moe_cuda_drop da = moe_cuda_drop_at(d, d->p_attn, train, step, l, MOE_DROP_ATTN),
                               dr = moe_cuda_drop_at(d, d->p_res, train, step, l, MOE_DROP_RESID_ATTN);
    int rc;
    if ((rc = moe_cuda_norm_forward(k->n1, k->mean1, k->rstd1, hin, W(d, k->i_g1), W(d, k->i_b1), T, D,
                                    MOE_CUDA_NORM_EPS, err)) ||
        (rc = moe_cuda_linear_forward(k->qkv, k->n1, W(d, k->i_qkv), NULL, T, D, 3 * D, "attention wqkv", err)) ||
        (rc = moe_cuda_attention_forward_drop(k->ao, k->att, k->attp, k->qkv, B, C, D, H, &da, err)) ||
        (rc = moe_cuda_linear_forward(d->tmp, k->ao, W(d, k->i_wo), NULL, T, D, D, "attention wo", err)) ||
        (rc = moe_cuda_dropout(d->tmp, TD, 0, &dr, err)) ||
        (rc = moe_cuda_copy(k->m, hin, TD * sizeof(float), err)) || (rc = moe_cuda_add(k->m, d->tmp, TD, err)))
        return rc;
    return moe_cuda_copy(hout, k->m, TD * sizeof(float), err);
}

int moe_cuda_tf_forward(struct moe_cuda_model *d, const struct moe_batch *b, int train, double *ret_loss,
                        double *ret_aux, struct moe_err *err)
{
    const size_t B = b->n, C = d->C, D = d->D, L = d->L, T = B * C, TD = T * D;
    int rc;
    *ret_loss = *ret_aux = 0.0;
    d->T = d->B = 0;
    if (B > d->B_max)
        return moe_error(err, MOE_EINVAL, "batch of %zu windows exceeds the device model's maximum %zu", B, d->B_max);
    if (b->kd)
        return moe_error(err, MOE_EINVAL, "CUDA model: a batch's distillation buffers are the host's (on the device: moe_cuda_model_set_teacher)");
    if ((rc = moe_transformer_batch(d->host, b, d->htarget, d->hkeys, d->hlabel, err)) ||
        (d->hkeys && (rc = moe_cuda_model_set_keys(d, T, err)))) // hash routing: keys are the input token ids
        return rc;
    if (B == 0)
        return moe_error(err, MOE_EINVAL, "CUDA model: an empty batch");
    d->has_lang = b->lang != NULL;
    if ((rc = moe_cuda_to_device(d->tok, b->tok, B * (C + 1) * sizeof(int32_t), err)) ||
        (d->lang && b->lang && (rc = moe_cuda_to_device(d->lang, b->lang, B * sizeof(int32_t), err))) ||
        (rc = moe_cuda_to_device(d->label, d->htarget, T * sizeof(int32_t), err)) ||
        (rc = moe_cuda_embed_forward(d->h, d->tok, C + 1, W(d, d->i_wte), W(d, d->i_wpe), B, C, D, err)))
        return rc;
    double aux = 0.0;
    for (size_t l = 0; l < L; l++) {
        const struct moe_cuda_block *k = &d->blk[l];
        float *hin = d->h + l * TD, *hout = d->h + (l + 1) * TD, *n2 = d->n + l * TD;
        double al = 0.0;
        if (k->moe) // the router's input: + the language embedding of each token's window (moe.lang_router)
            moe_cuda_layer_set_radd(k->moe, k->i_lang >= 0 ? d->radd : NULL, NULL);
        if ((rc = attention_forward(d, l, hout, hin, B, train, b->step, err)) ||
            (rc = moe_cuda_norm_forward(n2, d->mean + l * T, d->rstd + l * T, k->m, W(d, k->i_g), W(d, k->i_b), T,
                                        D, MOE_CUDA_NORM_EPS, err)) ||
            (k->i_lang >= 0 && (rc = moe_cuda_lang_rows(d->radd, W(d, k->i_lang), d->has_lang ? d->lang : NULL, B,
                                                         C, D, err))) ||
            (rc = moe_cuda_ffn_forward(d, l, hout, n2, T, train, b->step, &al, err)))
            return rc;
        aux += al;
    }
    if ((rc = moe_cuda_head_forward(d, T, d->i_head, -1, train, err))) // tied: the token embedding
        return rc;
    double loss = 0.0;
    if ((rc = moe_cuda_model_ce_head(d, &loss, train ? d->dy : NULL, d->row_loss, d->row_argmax, T, train, err)))
        return rc;
    d->loss = loss, d->T = T, d->B = B, d->step = b->step;
    *ret_loss = loss, *ret_aux = aux;
    return 0;
}

int moe_cuda_tf_backward(struct moe_cuda_model *d, struct moe_err *err)
{
    const size_t B = d->B, C = d->C, D = d->D, H = d->H, V = d->O, L = d->L, T = B * C, TD = T * D;
    float *nf = d->n + L * TD;
    int32_t *s = d->emb_scratch;
    int rc;
    // the head (dn set), the final norm (dh from zero)
    if ((rc = moe_cuda_linear_backward(d->dn, G(d, d->i_head), NULL, d->dy, nf, W(d, d->i_head), T, D, V, 0.0f,
                                       "head backward", err)) ||
        (rc = moe_cuda_memset(d->dh, 0, TD * sizeof(float), "dh", err)) ||
        (rc = moe_cuda_norm_backward(d->dh, G(d, d->i_gf), G(d, d->i_bf), d->dn, d->h + L * TD, d->mean + L * T,
                                     d->rstd + L * T, W(d, d->i_gf), T, D, err)))
        return rc;
    for (size_t l = L; l-- > 0;) {
        const struct moe_cuda_block *k = &d->blk[l];
        const float *n2 = d->n + l * TD;
        if ((rc = moe_cuda_model_hidden_kd(d, l, T, err))) // MoEBERT: the block output's distance to the teacher's
            return rc;
        // FFN branch: dm = dh (the residual) + norm2'(FFN'(dh))
        if (k->i_lang >= 0) { // the router's input gradient with respect to the language embedding
            if ((rc = moe_cuda_memset(d->dradd, 0, TD * sizeof(float), "language embedding gradient", err)))
                return rc;
            moe_cuda_layer_set_radd(k->moe, d->radd, d->dradd);
        }
        if ((rc = moe_cuda_ffn_backward(d, l, d->dn, d->dh, n2, T, d->step, err)) ||
            (k->i_lang >= 0 && (rc = moe_cuda_lang_grad(G(d, k->i_lang), d->dradd, d->has_lang ? d->lang : NULL, B,
                                                         C, D, d->n_lang, err))) ||
            (rc = moe_cuda_norm_backward(d->dh, G(d, k->i_g), G(d, k->i_b), d->dn, k->m, d->mean + l * T,
                                         d->rstd + l * T, W(d, k->i_g), T, D, err)))
            return rc;
        // attention branch: dh_l = dm + norm1'(Wqkv'(Attn'(Wo'(dm)))), dm under the residual dropout's mask
        const struct moe_cuda_drop da = moe_cuda_drop_at(d, d->p_attn, 1, d->step, l, MOE_DROP_ATTN),
                                   dr = moe_cuda_drop_at(d, d->p_res, 1, d->step, l, MOE_DROP_RESID_ATTN);
        const float *dattn = d->dh;
        if (dr.p > 0.0f) {
            if ((rc = moe_cuda_copy(d->tmp, d->dh, TD * sizeof(float), err)) ||
                (rc = moe_cuda_dropout(d->tmp, TD, 0, &dr, err)))
                return rc;
            dattn = d->tmp;
        }
        if ((rc = moe_cuda_linear_backward(d->dao, G(d, k->i_wo), NULL, dattn, k->ao, W(d, k->i_wo), T, D, D, 0.0f,
                                           "attention wo backward", err)) ||
            (rc = moe_cuda_memset(d->dqkv, 0, 3 * TD * sizeof(float), "dqkv", err)) ||
            (rc = moe_cuda_attention_backward_drop(d->dqkv, d->datt, d->dao, k->qkv, k->att, k->attp, B, C, D, H, &da,
                                                   err)) ||
            (rc = moe_cuda_linear_backward(d->dn, G(d, k->i_qkv), NULL, d->dqkv, k->n1, W(d, k->i_qkv), T, D, 3 * D,
                                           0.0f, "attention wqkv backward", err)) ||
            (rc = moe_cuda_norm_backward(d->dh, G(d, k->i_g1), G(d, k->i_b1), d->dn, d->h + l * TD, k->mean1,
                                         k->rstd1, W(d, k->i_g1), T, D, err)))
            return rc;
    }
    return moe_cuda_embed_backward(G(d, d->i_wte), G(d, d->i_wpe), d->dh, d->tok, C + 1, B, C, D, d->O, s, s + T,
                                   s + 2 * T, s + 3 * T, d->emb_sort, d->emb_sort_bytes, err);
}

int moe_cuda_tf_stats(struct moe_cuda_model *d, const struct moe_batch *b, struct moe_stats *s, struct moe_err *err)
{
    const size_t T = d->T;
    int rc;
    if (!T || d->B != b->n)
        return moe_error(err, MOE_EINVAL, "CUDA model: no pass of %zu windows to take statistics of", b->n);
    for (size_t l = 0; l < d->L; l++) {
        const struct moe_cuda_block *k = &d->blk[l];
        if (!k->moe || (size_t)k->si >= s->n_route)
            continue;
        if ((rc = moe_cuda_layer_route_acc(k->moe, &s->route[k->si], d->hlabel, &d->hr, &d->hplan, err)))
            return rc;
    }
    if ((rc = moe_cuda_to_host(d->hrow_loss, d->row_loss, T * sizeof(float), err)) ||
        (rc = moe_cuda_to_host(d->hargmax, d->row_argmax, T * sizeof(int32_t), err)))
        return rc;
    moe_transformer_add_stats(d->host, b, s, d->hrow_loss, d->hargmax);
    return 0;
}
