// model.c: model.h, the device model's creation, the update, the copies to
// and from the host, and an mlp-moe training step on the device (the
// Transformer's pass is transformer.c's), operation for operation as the CPU
// runs it:
//
//   model/mlp_moe.c run():   h_0 = x W_in^T + b_in; per block l, n_l = norm_l(h_l),
//                            h_{l+1} = h_l + MoE_l(n_l); n_L = norm_f(h_L);
//                            y = n_L W_head^T + b_head; the head's loss (model.c
//                            moe_model_head_loss: dy from zero, scale 1 / T); then
//                            the backward in reverse, each linear layer's dx, dW,
//                            db in nn/linear.c's order;
//   train/trainer.c:         gradients from zero, the global norm over the
//                            trainer's units (each tensor, and each routed
//                            expert of an expert tensor, summed by
//                            moe_optim_sum_sq, in registry order, added in double);
//   train/optim.c:           the clipping scale and step count, then one update
//                            over the flat registry.
//
// The linear layers are linear.h's (nn/linear.c's order); the norms, losses
// and optimizer ops.h's launches of the bodies the CPU library is checked
// against; the MoE blocks cuda/layer.h's layer made in the registry's slices.
// Weight gradients are accumulated (beta 1) into gradients cleared at the
// start of the step, where the CPU writes some whole (beta 0):
// the same values, up to the sign of a zero.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/params.h"
#include "cuda/kernels/loss.h"
#include "cuda/kernels/optim.h"
#include "cuda/layer.h"
#include "cuda/linear.h"
#include "cuda/blas.h"
#include "model/estimate.h"
#include "cuda/model.h"
#include "cuda/model_impl.h"
#include "cuda/ops.h"
#include "model/model.h"
#include "moe/moe_layer.h"
#include "moe/route_stats.h"
#include "nn/nn.h"
#include "train/train.h"
#include "train/tune.h"

int moe_cuda_model_alloc(struct moe_cuda_model *d, void *ret, size_t bytes, const char *what, struct moe_err *err)
{
    if (d->n_mem == MOE_CUDA_MODEL_MEM)
        return moe_error(err, MOE_EINVAL, "CUDA model: more than %d buffers", MOE_CUDA_MODEL_MEM);
    int rc = moe_cuda_malloc(ret, bytes, what, err);
    if (!rc)
        d->mem[d->n_mem++] = *(void **)ret;
    return rc;
}

#define dalloc moe_cuda_model_alloc
#define W moe_cuda_model_w
#define G moe_cuda_model_g
#define NORM_EPS MOE_CUDA_NORM_EPS

int moe_cuda_model_find(const struct moe_params *p, const char *fmt, size_t l)
{
    char name[MOE_NAME_MAX];
    snprintf(name, sizeof name, fmt, l);
    return moe_params_find(p, name);
}

#define find moe_cuda_model_find

void moe_cuda_model_free(struct moe_cuda_model *d)
{
    if (!d)
        return;
    for (size_t l = 0; d->blk && l < d->L; l++)
        moe_cuda_layer_free(d->blk[l].moe);
    for (int i = 0; i < d->n_mem; i++)
        moe_cuda_free(d->mem[i]);
    free(d->yh), free(d->pred), free(d->onehot);
    free(d->htarget), free(d->hlabel), free(d->hargmax), free(d->hrow_loss);
    free(d->hkeys);
    free(d->seg), free(d->unit), free(d->w0_off);
    if (d->has_host) {
        moe_route_release(&d->hr);
        moe_dispatch_release(&d->hplan);
    }
    free(d->blk);
    free(d);
}

// What the device step does not do, as the one-line reason (NULL: supported).
static const char *unsupported(const struct moe_model *m, const struct moe_model_hp *hp)
{
    if (hp->type != MOE_MODEL_MLP_MOE && hp->type != MOE_MODEL_TRANSFORMER)
        return "the device training step is for the mlp-moe and transformer models only";
    if (m->params.shard_size > 1)
        return "expert parallelism is not on the device";
    return NULL;
}

// The dry run's estimate counts these fixed buffers of create's (the gradient
// norm's block sums, the loss's blocks) within its device extra.
_Static_assert(((size_t)1 + MOE_K_SQ_BLOCKS * MOE_K_SQ_LANES + MOE_K_CE_BLOCKS) * sizeof(double) <=
                   MOE_ESTIMATE_CUDA_FIXED_BYTES,
               "model/estimate.h MOE_ESTIMATE_CUDA_FIXED_BYTES is below the device model's fixed buffers");

int moe_cuda_model_check(const struct moe_model *m, const struct moe_model_hp *hp, struct moe_err *err)
{
    const char *why = unsupported(m, hp);
    if (why)
        return moe_error(err, MOE_EINVAL, "CUDA model: %s", why);
    for (size_t l = 0; l < m->n_moe_layers; l++) {
        int rc = moe_cuda_layer_check(&m->moe_layers[l]->c, 1, err);
        if (rc)
            return rc;
    }
    return 0;
}

static int train_parts(struct moe_cuda_model *d, const uint8_t *frozen, uint8_t *const *fe, struct moe_err *err);

int moe_cuda_model_create(struct moe_cuda_model **ret, const struct moe_model *m, const struct moe_model_hp *hp,
                          const struct moe_optim *o, size_t T_max, struct moe_err *err)
{
    *ret = NULL;
    if (moe_cuda_model_check(m, hp, err))
        return MOE_EINVAL;
    struct moe_cuda_model *d = calloc(1, sizeof *d);
    if (!d)
        return moe_error(err, MOE_ENOMEM, "out of memory");
    const struct moe_params *p = &m->params;
    d->host = m, d->p = p;
    d->I = m->n_in, d->O = m->n_out, d->D = hp->n_embd, d->L = hp->n_layer;
    d->T_max = T_max ? T_max : 1;
    d->tf = hp->type == MOE_MODEL_TRANSFORMER;
    if (d->tf) { // T_max windows of n_ctx tokens; the model's inputs are its languages, not features
        d->B_max = d->T_max, d->C = hp->n_ctx, d->H = hp->n_head;
        d->T_max = d->B_max * d->C;
        d->I = 0;
    }
    d->numel = p->numel;
    d->rms = hp->rms;
    d->ce = strcmp(m->loss_name, "ce") == 0;
    d->opt = o ? o->type : MOE_OPTIM_GD;
    d->seed = m->seed;
    d->p_attn = hp->dropout.attention, d->p_res = hp->dropout.residual, d->p_ffn = hp->dropout.ffn;
    d->i_win = moe_params_find(p, "input.weight"), d->i_bin = moe_params_find(p, "input.bias");
    d->i_gf = moe_params_find(p, "norm.weight"), d->i_bf = moe_params_find(p, "norm.bias");
    d->i_wh = moe_params_find(p, "head.weight"), d->i_bh = moe_params_find(p, "head.bias");
    const size_t T = d->T_max, D = d->D, L = d->L, f = sizeof(float), n = p->numel * f;
    d->n_opt = o ? o->numel : 0; // the moments' floats: the trained segments' (all of the registry by default)
    const size_t nm = d->n_opt * f;
    int rc = 0;
    d->blk = calloc(L, sizeof *d->blk);
    if (!d->blk)
        rc = moe_error(err, MOE_ENOMEM, "out of memory");
    const struct moe_cuda_want b[] = {
        { 1, &d->w, n, "parameters" },
        { o != NULL, &d->g, n, "gradients" },
        { d->opt != MOE_OPTIM_GD, &d->m, nm, "optimizer moments (m)" },
        { d->opt == MOE_OPTIM_ADAMW, &d->v, nm, "optimizer moments (v)" },
        { !d->tf, &d->x, T * d->I * f, "batch inputs" },
        { !d->ce, &d->target, T * d->O * f, "batch targets" },
        { d->ce, &d->label, T * sizeof(int32_t), "batch labels" },
        { 1, &d->h, (L + 1) * T * D * f, "h" },
        { 1, &d->n, (L + 1) * T * D * f, "n" },
        { 1, &d->mean, (L + 1) * T * f, "mean" },
        { 1, &d->rstd, (L + 1) * T * f, "rstd" },
        { 1, &d->y, T * d->O * f, "y" },
        { o != NULL, &d->dy, T * d->O * f, "dy" },
        { o != NULL, &d->dh, T * D * f, "dh" },
        { o != NULL, &d->dn, T * D * f, "dn" },
        { 1, &d->part, MOE_K_CE_BLOCKS * sizeof(double), "loss blocks" },
        { 1, &d->lse, T * sizeof(double), "loss rows" },
        { o != NULL, &d->sq, (1 + MOE_K_SQ_BLOCKS * MOE_K_SQ_LANES) * sizeof(double), "gradient norm" },
    };
    for (size_t i = 0; !rc && i < sizeof b / sizeof *b; i++)
        if (b[i].need)
            rc = dalloc(d, b[i].p, b[i].bytes, b[i].what, err);
    // block l is sparse iff l % moe_every == moe_every - 1 (model/mlp_moe.c)
    const size_t every = hp->moe_every ? hp->moe_every : 1;
    size_t n_dense = 0, si = 0, E = 1, S = 1;
    d->cact = moe_cuda_ffn_act(hp->ffn_act);
    for (size_t l = 0; !rc && l < L; l++) {
        struct moe_cuda_block *k = &d->blk[l];
        k->i_g = find(p, d->tf ? "layers.%zu.ffn_norm.weight" : "layers.%zu.norm.weight", l);
        k->i_b = find(p, d->tf ? "layers.%zu.ffn_norm.bias" : "layers.%zu.norm.bias", l);
        if (l % every != every - 1) {
            k->i_w1 = find(p, "layers.%zu.ffn.w1", l);
            k->i_w3 = find(p, "layers.%zu.ffn.w3", l);
            k->i_w2 = find(p, "layers.%zu.ffn.w2", l);
            d->Fd = p->t[k->i_w1].shape[0];
            n_dense++;
            continue;
        }
        const struct moe_layer *ml = m->moe_layers[si];
        k->si = (int)si++;
        const struct moe_cuda_layer_tensors w = { W(d, ml->i_router), W(d, ml->i_noise), W(d, ml->i_w1),
                                                  W(d, ml->i_w3),     W(d, ml->i_w2),    W(d, ml->i_sw1),
                                                  W(d, ml->i_sw3),    W(d, ml->i_sw2) },
                                            g = { G(d, ml->i_router), G(d, ml->i_noise), G(d, ml->i_w1),
                                                  G(d, ml->i_w3),     G(d, ml->i_w2),    G(d, ml->i_sw1),
                                                  G(d, ml->i_sw3),    G(d, ml->i_sw2) };
        if ((rc = moe_cuda_layer_create_in(&k->moe, &ml->c, T, &w, d->g ? &g : NULL, err)))
            break;
        if ((rc = moe_cuda_layer_set_bias(k->moe, ml->bias, err))) // bias balancing's state, as the host has it
            break;
        if (ml->table && !d->hkeys && !(d->hkeys = malloc(T * sizeof *d->hkeys)))
            rc = moe_error(err, MOE_ENOMEM, "out of memory for %zu hash keys", T);
        if (ml->table)
            d->hash_V = ml->c.hash_vocab; // moe.hash_vocab, every layer's
        E = ml->c.router.E > E ? ml->c.router.E : E;
        S = moe_cuda_layer_slots(k->moe) > S ? moe_cuda_layer_slots(k->moe) : S;
    }
    // the dense blocks' activations a, hh (and b with swiglu) each, the backward's dh, da (db)
    float *fact = NULL, *fback = NULL;
    const size_t TF = T * d->Fd, nf = hp->ffn_act == MOE_FFN_SWIGLU ? 3 : 2;
    if (!rc && (n_dense || d->tf || d->p_res > 0.0))
        rc = dalloc(d, &d->tmp, T * D * f, "sub-layer output", err);
    if (!rc && n_dense && !(rc = dalloc(d, &fact, n_dense * nf * TF * f, "dense FFN activations", err)) &&
        !(o && (rc = dalloc(d, &fback, nf * TF * f, "dense FFN backward", err)))) {
        if (fback)
            d->fdh = fback, d->fda = fback + TF, d->fdb = nf == 3 ? fback + 2 * TF : NULL;
        for (size_t l = 0, j = 0; l < L; l++)
            if (!d->blk[l].moe) {
                float *a = fact + nf * j++ * TF;
                d->blk[l].a = a, d->blk[l].hh = a + TF, d->blk[l].b = nf == 3 ? a + 2 * TF : NULL;
            }
    }
    if (!rc && d->tf)
        rc = moe_cuda_tf_alloc(d, hp, err);
    if (!rc && !d->tf && (!(d->yh = malloc(T * d->O * f)) || !(d->pred = malloc(T * d->O * f)) ||
                          !(d->onehot = malloc(T * d->O * f))))
        rc = moe_error(err, MOE_ENOMEM, "out of memory for the statistics' host buffers (%zu x %zu)", T, d->O);
    if (!rc && !(rc = moe_route_alloc(&d->hr, T, E, S, 0, err))) {
        if ((rc = moe_dispatch_alloc(&d->hplan, T, S, E, err)))
            moe_route_release(&d->hr);
        else
            d->has_host = 1;
    }
    if (!rc)
        rc = moe_cuda_to_device(d->w, p->data, n, err);
    if (!rc && d->m) // (d->m, d->v: only with o)
        rc = o->m ? moe_cuda_to_device(d->m, o->m, nm, err) : moe_cuda_memset(d->m, 0, nm, "optimizer moments", err);
    if (!rc && d->v)
        rc = o->v ? moe_cuda_to_device(d->v, o->v, nm, err) : moe_cuda_memset(d->v, 0, nm, "optimizer moments", err);
    if (!rc && d->g) // every weight trained, until moe_cuda_model_set_train says otherwise
        rc = train_parts(d, NULL, NULL, err);
    if (rc) {
        moe_cuda_model_free(d);
        return rc;
    }
    *ret = d;
    return 0;
}

// The trainer's global gradient norm: its units in order (by default each
// tensor in registry order, each routed expert of an expert tensor on its
// own), each unit's sum of squares in moe_optim_sum_sq's blocks, added in
// double in that order on the device (d->sq[0], from +0.0 as the trainer's
// sum), then one double copied back: one wait for the norm, not one per unit.
static int grad_norm(struct moe_cuda_model *d, double *ret, struct moe_err *err)
{
    double sq = 0.0;
    int rc = moe_cuda_memset(d->sq, 0, sizeof *d->sq, "gradient norm", err);
    for (size_t k = 0; !rc && k < d->n_unit; k++)
        rc = moe_cuda_sum_sq(d->sq, d->unit[k].g, d->unit[k].n, d->sq + 1, err);
    if (!rc)
        rc = moe_cuda_to_host(&sq, d->sq, sizeof sq, err);
    *ret = sqrt(sq);
    return rc;
}

// A dense block's FFN (moe/experts.c moe_ffn_forward_drop, then the model's
// residual dropout and add): tmp = D_ffn(act(x W1^T) [* x W3^T]) W2^T, out +=
// D_res(tmp).
int moe_cuda_dense_forward(struct moe_cuda_model *d, const struct moe_cuda_block *k, float *out, const float *x,
                           size_t T, const struct moe_cuda_drop *dffn, const struct moe_cuda_drop *dres,
                           struct moe_err *err)
{
    const size_t D = d->D, F = d->Fd, n = T * F;
    const int swiglu = k->i_w3 >= 0;
    int rc;
    if ((rc = moe_cuda_linear_forward(k->a, x, W(d, k->i_w1), NULL, T, D, F, "ffn w1", err)) ||
        (swiglu && (rc = moe_cuda_linear_forward(k->b, x, W(d, k->i_w3), NULL, T, D, F, "ffn w3", err))) ||
        (rc = moe_cuda_act_forward(d->cact, k->hh, k->a, n, err)) ||
        (swiglu && (rc = moe_cuda_mul(k->hh, k->b, n, err))) ||
        (rc = moe_cuda_dropout_rows(k->hh, T, F, NULL, NULL, 0, dffn, err)) ||
        (rc = moe_cuda_linear_forward(d->tmp, k->hh, W(d, k->i_w2), NULL, T, F, D, "ffn w2", err)) ||
        (rc = moe_cuda_dropout(d->tmp, T * D, 0, dres, err)))
        return rc;
    return moe_cuda_add(out, d->tmp, T * D, err);
}

// Its backward (moe_ffn_backward_drop with beta_dw 1, the hidden units'
// gradient under dffn's mask): dx (T, D) += the input's gradient, the weight
// gradients +=, in that function's order.
int moe_cuda_dense_backward(struct moe_cuda_model *d, const struct moe_cuda_block *k, float *dx, const float *dy,
                            const float *x, size_t T, const struct moe_cuda_drop *dffn, struct moe_err *err)
{
    const size_t D = d->D, F = d->Fd, n = T * F;
    const int swiglu = k->i_w3 >= 0;
    int rc;
    if ((rc = moe_cuda_gemm(0, 0, T, F, D, 1.0f, dy, D, W(d, k->i_w2), F, 0.0f, d->fdh, F, "ffn w2 backward (dh)",
                            err)) ||
        (rc = moe_cuda_gemm(1, 0, D, F, T, 1.0f, dy, D, k->hh, F, 1.0f, G(d, k->i_w2), F, "ffn w2 backward (dw2)",
                            err)) ||
        (rc = moe_cuda_dropout_rows(d->fdh, T, F, NULL, NULL, 0, dffn, err)))
        return rc;
    if (swiglu && ((rc = moe_cuda_act_forward(MOE_CUDA_SILU, d->fdb, k->a, n, err)) ||
                   (rc = moe_cuda_swiglu_back(d->fdb, d->fdh, k->b, n, err))))
        return rc;
    if ((rc = moe_cuda_act_backward(d->cact, d->fda, d->fdh, k->a, n, err)))
        return rc;
    if (swiglu &&
        ((rc = moe_cuda_gemm(0, 0, T, D, F, 1.0f, d->fdb, F, W(d, k->i_w3), D, 1.0f, dx, D, "ffn w3 backward (dx)",
                             err)) ||
         (rc = moe_cuda_gemm(1, 0, F, D, T, 1.0f, d->fdb, F, x, D, 1.0f, G(d, k->i_w3), D, "ffn w3 backward (dw3)",
                             err))))
        return rc;
    if ((rc = moe_cuda_gemm(0, 0, T, D, F, 1.0f, d->fda, F, W(d, k->i_w1), D, 1.0f, dx, D, "ffn w1 backward (dx)",
                            err)))
        return rc;
    return moe_cuda_gemm(1, 0, F, D, T, 1.0f, d->fda, F, x, D, 1.0f, G(d, k->i_w1), D, "ffn w1 backward (dw1)", err);
}

int moe_cuda_ffn_forward(struct moe_cuda_model *d, size_t l, float *out, const float *x, size_t T, int train,
                         uint64_t step, double *ret_aux, struct moe_err *err)
{
    const struct moe_cuda_block *k = &d->blk[l];
    const size_t TD = T * d->D;
    const struct moe_cuda_drop dres = moe_cuda_drop_at(d, d->p_res, train, step, l, MOE_DROP_RESID_FFN),
                               dffn = moe_cuda_drop_at(d, d->p_ffn, train, step, l, MOE_DROP_FFN);
    int rc;
    *ret_aux = 0.0;
    if (!k->moe)
        return moe_cuda_dense_forward(d, k, out, x, T, &dffn, &dres, err);
    if (dres.p <= 0.0f)
        return moe_cuda_layer_forward(k->moe, out, x, T, train, d->seed, step, ret_aux, err);
    // under residual dropout the layer's output on its own, dropped, then added
    if ((rc = moe_cuda_memset(d->tmp, 0, TD * sizeof(float), "sub-layer output", err)) ||
        (rc = moe_cuda_layer_forward(k->moe, d->tmp, x, T, train, d->seed, step, ret_aux, err)) ||
        (rc = moe_cuda_dropout(d->tmp, TD, 0, &dres, err)))
        return rc;
    return moe_cuda_add(out, d->tmp, TD, err);
}

int moe_cuda_ffn_backward(struct moe_cuda_model *d, size_t l, float *dn, const float *dy, const float *x, size_t T,
                          uint64_t step, struct moe_err *err)
{
    const struct moe_cuda_block *k = &d->blk[l];
    const size_t TD = T * d->D;
    const struct moe_cuda_drop dres = moe_cuda_drop_at(d, d->p_res, 1, step, l, MOE_DROP_RESID_FFN),
                               dffn = moe_cuda_drop_at(d, d->p_ffn, 1, step, l, MOE_DROP_FFN);
    int rc;
    if (dres.p > 0.0f) { // the branch's output gradient under the residual dropout's mask
        if ((rc = moe_cuda_copy(d->tmp, dy, TD * sizeof(float), err)) ||
            (rc = moe_cuda_dropout(d->tmp, TD, 0, &dres, err)))
            return rc;
        dy = d->tmp;
    }
    if ((rc = moe_cuda_memset(dn, 0, TD * sizeof(float), "dn", err)))
        return rc;
    return k->moe ? moe_cuda_layer_backward(k->moe, dn, dy, x, err)
                  : moe_cuda_dense_backward(d, k, dn, dy, x, T, &dffn, err);
}

int moe_cuda_model_set_keys(struct moe_cuda_model *d, size_t T, struct moe_err *err)
{
    for (size_t l = 0; l < d->L; l++) {
        const struct moe_cuda_block *k = &d->blk[l];
        const struct moe_layer *ml = k->moe ? d->host->moe_layers[k->si] : NULL;
        int rc;
        if (ml && ml->table && (rc = moe_cuda_layer_set_keys(k->moe, d->hkeys, ml->table, ml->c.hash_vocab, T, err)))
            return rc;
    }
    return 0;
}

int moe_cuda_head_forward(struct moe_cuda_model *d, size_t T, int i_w, int i_b, int clear_dy, struct moe_err *err)
{
    const size_t D = d->D, L = d->L, TD = T * D;
    float *nf = d->n + L * TD;
    int rc;
    if ((rc = moe_cuda_norm_forward(nf, d->mean + L * T, d->rstd + L * T, d->h + L * TD, W(d, d->i_gf),
                                    W(d, d->i_bf), T, D, NORM_EPS, err)) ||
        (rc = moe_cuda_linear_forward(d->y, nf, W(d, i_w), W(d, i_b), T, D, d->O, "head", err)))
        return rc;
    return clear_dy && d->dy ? moe_cuda_memset(d->dy, 0, T * d->O * sizeof(float), "dy", err) : 0;
}

static int forward(struct moe_cuda_model *d, const struct moe_batch *b, int train, double *ret_loss, double *ret_aux,
                   struct moe_err *err);

int moe_cuda_model_ce_head(struct moe_cuda_model *d, double *ret_loss, float *dy, float *row_loss, int32_t *row_argmax,
                           size_t T, int train, struct moe_err *err)
{
    const size_t O = d->O;
    const float scale = 1.0f / (float)T;
    const struct moe_cuda_model *t = train ? d->teacher : NULL;
    if (!t || !dy)
        return moe_cuda_ce_rows(ret_loss, dy, row_loss, row_argmax, d->y, d->label, T, O, scale, d->part, d->lse,
                                err);
    if (t->T != T)
        return moe_error(err, MOE_EINVAL, "CUDA model: the teacher's last pass has %zu rows, the student's %zu", t->T,
                         T);
    // knowledge distillation: (1 - alpha) of the cross-entropy; MoEBERT: all of it
    int rc = moe_cuda_ce_rows(ret_loss, dy, row_loss, row_argmax, d->y, d->label, T, O,
                              d->kd_sym ? scale : (1.0f - d->kd_alpha) * scale, d->part, d->lse, err);
    if (rc)
        return rc;
    return d->kd_sym ? moe_cuda_symkl(NULL, dy, d->y, t->y, T, O, d->kd_alpha * scale, d->kd_scratch, err)
                     : moe_cuda_kd(NULL, dy, d->y, t->y, T, O, d->kd_tau, d->kd_alpha * scale, d->kd_scratch, err);
}

int moe_cuda_model_hidden_kd(struct moe_cuda_model *d, size_t l, size_t T, struct moe_err *err)
{
    if (!d->teacher || !d->kd_sym)
        return 0;
    const size_t TD = T * d->D;
    return moe_cuda_mse(NULL, d->dh, d->h + (l + 1) * TD, d->teacher->h + (l + 1) * TD, TD,
                        d->kd_alpha / (float)TD, NULL, err);
}

int moe_cuda_model_teacher_pass(struct moe_cuda_model *d, const struct moe_batch *b, struct moe_err *err)
{
    struct moe_cuda_model *t = d->teacher;
    double loss, aux;
    int rc = t->tf ? moe_cuda_tf_forward(t, b, 0, &loss, &aux, err) : forward(t, b, 0, &loss, &aux, err);
    if (rc)
        moe_error_prefix(err, "the teacher: ");
    return rc;
}

int moe_cuda_model_set_teacher(struct moe_cuda_model *d, struct moe_cuda_model *teacher, float alpha, float tau,
                               int sym, struct moe_err *err)
{
    d->teacher = NULL;
    if (!teacher)
        return 0;
    // (its batches: the training passes', at most its T_max rows, which moe_cuda_tf_forward / forward check)
    if (!d->ce || !teacher->ce || teacher->O != d->O || teacher->tf != d->tf || (d->tf && teacher->C != d->C))
        return moe_error(err, MOE_EINVAL, "CUDA model: the teacher (%s, %zu outputs%s) does not fit the student (%s, %zu outputs)",
                         teacher->ce ? "cross-entropy" : "squared error", teacher->O,
                         teacher->tf != d->tf ? ", another model type" : d->tf && teacher->C != d->C ? ", another n_ctx" : "",
                         d->ce ? "cross-entropy" : "squared error", d->O);
    if (sym && (teacher->L != d->L || teacher->D != d->D))
        return moe_error(err, MOE_EINVAL, "CUDA model: MoEBERT distillation needs teacher and student with block outputs of one shape (%zu x %zu and %zu x %zu)",
                         teacher->L, teacher->D, d->L, d->D);
    int rc;
    if (!d->kd_scratch && (rc = dalloc(d, &d->kd_scratch, MOE_CUDA_DISTILL_SCRATCH(d->T_max) * sizeof(double),
                                       "distillation scratch", err)))
        return rc;
    d->teacher = teacher;
    d->kd_alpha = alpha, d->kd_tau = tau, d->kd_sym = sym;
    return 0;
}

// The forward pass of batch b in training (train: noise, jitter, the
// training capacity) or evaluation mode, with the head's loss and its dy:
// *ret_loss, *ret_aux; d->loss and d->T for the statistics.
static int forward(struct moe_cuda_model *d, const struct moe_batch *b, int train, double *ret_loss, double *ret_aux,
                   struct moe_err *err)
{
    const size_t T = b->n, I = d->I, D = d->D, O = d->O, L = d->L, TD = T * D;
    int rc;
    *ret_loss = *ret_aux = 0.0;
    d->T = 0;
    if (T > d->T_max)
        return moe_error(err, MOE_EINVAL, "batch of %zu rows exceeds the device model's maximum %zu", T, d->T_max);
    if (b->kd)
        return moe_error(err, MOE_EINVAL, "CUDA model: a batch's distillation buffers are the host's (on the device: moe_cuda_model_set_teacher)");
    if (d->hkeys) { // hash routing keys on the input rows (mlp_moe.c hash_keys)
        for (size_t t = 0; t < T; t++)
            d->hkeys[t] = moe_hash_key_row(b->x + t * I, I, d->hash_V);
        if ((rc = moe_cuda_model_set_keys(d, T, err)))
            return rc;
    }
    if ((rc = moe_cuda_to_device(d->x, b->x, T * I * sizeof(float), err)) ||
        (d->ce && (rc = moe_cuda_to_device(d->label, b->label, T * sizeof(int32_t), err))) ||
        (!d->ce && (rc = moe_cuda_to_device(d->target, b->y, T * O * sizeof(float), err))))
        return rc;
    // forward
    if ((rc = moe_cuda_linear_forward(d->h, d->x, W(d, d->i_win), W(d, d->i_bin), T, I, D, "input", err)))
        return rc;
    double aux = 0.0;
    for (size_t l = 0; l < L; l++) {
        const struct moe_cuda_block *k = &d->blk[l];
        float *hin = d->h + l * TD, *hout = d->h + (l + 1) * TD, *nl = d->n + l * TD;
        double al = 0.0;
        if ((rc = moe_cuda_norm_forward(nl, d->mean + l * T, d->rstd + l * T, hin, W(d, k->i_g), W(d, k->i_b), T, D,
                                        NORM_EPS, err)) ||
            (rc = moe_cuda_copy(hout, hin, TD * sizeof(float), err)) ||
            (rc = moe_cuda_ffn_forward(d, l, hout, nl, T, train, b->step, &al, err)))
            return rc;
        aux += al;
    }
    if ((rc = moe_cuda_head_forward(d, T, d->i_wh, d->i_bh, 1, err)))
        return rc;
    double loss = 0.0;
    rc = d->ce ? moe_cuda_model_ce_head(d, &loss, d->dy, NULL, NULL, T, train, err)
               : moe_cuda_mse(&loss, d->dy, d->y, d->target, T * O, 1.0f / (float)T, d->part, err);
    if (rc)
        return rc;
    d->loss = loss, d->T = T, d->step = b->step;
    *ret_loss = loss, *ret_aux = aux;
    return 0;
}

int moe_cuda_model_eval(struct moe_cuda_model *d, const struct moe_batch *b, struct moe_stats *s, struct moe_err *err)
{
    double loss, aux;
    int rc = d->tf ? moe_cuda_tf_forward(d, b, 0, &loss, &aux, err) : forward(d, b, 0, &loss, &aux, err);
    return rc ? rc : moe_cuda_model_stats(d, b, s, err);
}

static int mlp_backward(struct moe_cuda_model *d, const struct moe_batch *b, struct moe_err *err);
static int lora_backward(struct moe_cuda_model *d, struct moe_err *err);
static int lora_apply(struct moe_cuda_model *d, struct moe_err *err);

int moe_cuda_model_backprop(struct moe_cuda_model *d, const struct moe_batch *b, double *ret_loss, double *ret_aux,
                            struct moe_err *err)
{
    *ret_loss = *ret_aux = 0.0;
    if (!d->g)
        return moe_error(err, MOE_EINVAL, "CUDA model: made for evaluation passes only (no gradients)");
    int rc = d->teacher ? moe_cuda_model_teacher_pass(d, b, err) : 0;
    if (!rc)
        rc = d->tf ? moe_cuda_tf_forward(d, b, 1, ret_loss, ret_aux, err) : forward(d, b, 1, ret_loss, ret_aux, err);
    if (rc || (rc = moe_cuda_memset(d->g, 0, d->numel * sizeof(float), "gradients", err)) ||
        (d->lora && (rc = moe_cuda_memset(d->lg, 0, d->lora->p.numel * sizeof(float), "LoRA gradients", err))))
        return rc;
    rc = d->tf ? moe_cuda_tf_backward(d, err) : mlp_backward(d, b, err);
    return rc || !d->lora ? rc : lora_backward(d, err);
}

// The mlp-moe backward of the last training pass (batch b).
static int mlp_backward(struct moe_cuda_model *d, const struct moe_batch *b, struct moe_err *err)
{
    const size_t T = b->n, I = d->I, D = d->D, O = d->O, L = d->L, TD = T * D;
    int rc;
    float *nf = d->n + L * TD;
    // backward: dh holds dL/dh_l for the current l
    if ((rc = moe_cuda_memset(d->dn, 0, TD * sizeof(float), "dn", err)) ||
        (rc = moe_cuda_linear_backward(d->dn, G(d, d->i_wh), G(d, d->i_bh), d->dy, nf, W(d, d->i_wh), T, D, O,
                                       1.0f, "head backward", err)) ||
        (rc = moe_cuda_memset(d->dh, 0, TD * sizeof(float), "dh", err)) ||
        (rc = moe_cuda_norm_backward(d->dh, G(d, d->i_gf), G(d, d->i_bf), d->dn, d->h + L * TD, d->mean + L * T,
                                     d->rstd + L * T, W(d, d->i_gf), T, D, err)))
        return rc;
    for (size_t l = L; l-- > 0;) {
        const struct moe_cuda_block *k = &d->blk[l];
        if ((rc = moe_cuda_model_hidden_kd(d, l, T, err)) ||
            (rc = moe_cuda_ffn_backward(d, l, d->dn, d->dh, d->n + l * TD, T, d->step, err)) ||
            (rc = moe_cuda_norm_backward(d->dh, G(d, k->i_g), G(d, k->i_b), d->dn, d->h + l * TD, d->mean + l * T,
                                         d->rstd + l * T, W(d, k->i_g), T, D, err)))
            return rc;
    }
    return moe_cuda_linear_backward(NULL, G(d, d->i_win), G(d, d->i_bin), d->dh, d->x, W(d, d->i_win), T, I, D,
                                    1.0f, "input backward", err);
}

int moe_cuda_model_gnorm(struct moe_cuda_model *d, double *ret_gnorm, struct moe_err *err)
{
    return grad_norm(d, ret_gnorm, err);
}

int moe_cuda_model_grad(struct moe_cuda_model *d, const struct moe_batch *b, double *ret_loss, double *ret_aux,
                        double *ret_gnorm, struct moe_err *err)
{
    *ret_gnorm = 0.0;
    int rc = moe_cuda_model_backprop(d, b, ret_loss, ret_aux, err);
    return rc ? rc : grad_norm(d, ret_gnorm, err);
}

// The trainer's accumulate(): a fold over each of the optimizer's segments
// (by default the flat registry; padding folds zeros), the sums one after
// another in d->acc, made at the first step of more than one micro-batch.
int moe_cuda_model_fold(struct moe_cuda_model *d, size_t k, int last, float w, struct moe_err *err)
{
    int rc;
    if (k == 0 && last)
        return 0;
    size_t n = 0;
    for (size_t j = 0; j < d->n_seg; j++)
        n += d->seg[j].n;
    if (!d->acc && (rc = dalloc(d, &d->acc, n * sizeof(float), "gradient accumulator", err)))
        return rc;
    for (size_t j = 0, off = 0; j < d->n_seg; off += d->seg[j++].n)
        if ((rc = moe_cuda_fold(d->acc + off, d->seg[j].g, d->seg[j].g, d->seg[j].n, w, k, last, err)))
            return rc;
    return 0;
}

// train/optim.c moe_optim_step_segs: the clipping scale, the step count, the
// update of each segment with its moments (one after another); then LoRA's
// merge of the adapters into the weights (the trainer's moe_lora_apply).
int moe_cuda_model_update(struct moe_cuda_model *d, struct moe_optim *o, double gnorm, struct moe_err *err)
{
    if (!d->g)
        return moe_error(err, MOE_EINVAL, "CUDA model: made for evaluation passes only (no gradients)");
    if ((d->m || d->v) && d->seg_total != d->n_opt) // a trainer that trains part of the model says which part first
        return moe_error(err, MOE_EINVAL, "CUDA model: the optimizer's moments hold %zu floats, its segments %zu (moe_cuda_model_set_train)",
                         d->n_opt, d->seg_total);
    float clip_scale = o->clip > 0.0 && gnorm > o->clip ? (float)(o->clip / gnorm) : 1.0f;
    o->t++;
    struct moe_k_optim k;
    enum moe_k_optim_type kt = o->type == MOE_OPTIM_ADAMW ? MOE_K_ADAMW : o->type == MOE_OPTIM_SGD ? MOE_K_SGD
                                                                                                    : MOE_K_GD;
    moe_k_optim_setup(&k, kt, o->lr, o->weight_decay, o->momentum, o->beta1, o->beta2, o->eps, o->t, clip_scale);
    int rc;
    for (size_t j = 0, off = 0; j < d->n_seg; off += d->seg[j++].n)
        if ((rc = moe_cuda_optim_update(&k, d->seg[j].w, d->seg[j].g, d->m ? d->m + off : NULL,
                                        d->v ? d->v + off : NULL, d->seg[j].n, err)))
            return rc;
    return d->lora ? lora_apply(d, err) : 0;
}

int moe_cuda_model_step(struct moe_cuda_model *d, const struct moe_batch *b, struct moe_optim *o, double *ret_loss,
                        double *ret_aux, double *ret_gnorm, struct moe_err *err)
{
    int rc = moe_cuda_model_grad(d, b, ret_loss, ret_aux, ret_gnorm, err);
    if (rc)
        return rc;
    if (!isfinite(*ret_gnorm))
        return moe_error(err, MOE_ENUMERIC, "step %llu: the gradient norm on the device is not finite (%g)",
                         (unsigned long long)b->step + 1, *ret_gnorm);
    return moe_cuda_model_update(d, o, *ret_gnorm, err);
}

// model.c moe_model_head_loss's statistics (the head's outputs, softmax for
// cross-entropy, moe_stats_add_predictions against the targets, one-hot for
// classes; the loss) and each layer's routing (moe_layer_forward's
// moe_route_acc_add, labels as mlp_moe.c gives them), in the CPU's order.
int moe_cuda_model_stats(struct moe_cuda_model *d, const struct moe_batch *b, struct moe_stats *s,
                         struct moe_err *err)
{
    if (d->tf)
        return moe_cuda_tf_stats(d, b, s, err);
    const size_t T = d->T, O = d->O;
    const int cls = d->host->task == MOE_TASK_CLASSIFICATION;
    const float *y = d->yh, *target;
    if (!T || T != b->n)
        return moe_error(err, MOE_EINVAL, "CUDA model: no pass of %zu rows to take statistics of", b->n);
    int rc = moe_model_batch_targets(d->host, b, d->onehot, &target, err);
    if (rc)
        return rc;
    const int32_t *label = cls ? b->label : b->group;
    for (size_t l = 0; l < d->L; l++) {
        const struct moe_cuda_block *k = &d->blk[l];
        if (!k->moe || (size_t)k->si >= s->n_route)
            continue;
        if ((rc = moe_cuda_layer_route_acc(k->moe, &s->route[k->si], label, &d->hr, &d->hplan, err)))
            return rc;
    }
    if ((rc = moe_cuda_to_host(d->yh, d->y, T * O * sizeof(float), err)))
        return rc;
    if (d->ce) {
        moe_softmax_forward(d->pred, NULL, y, T, O);
        y = d->pred;
    }
    moe_stats_add_predictions(s, y, target, cls ? b->label : NULL, T, O);
    s->loss += d->loss;
    return 0;
}

void moe_cuda_model_set_eval_capacity(struct moe_cuda_model *d, double cf)
{
    for (size_t l = 0; l < d->L; l++)
        if (d->blk[l].moe)
            moe_cuda_layer_set_eval_capacity(d->blk[l].moe, cf);
}

int moe_cuda_model_route_to(const struct moe_cuda_model *d, struct moe_model *m, struct moe_err *err)
{
    for (size_t l = 0; l < d->L; l++) {
        const struct moe_cuda_block *k = &d->blk[l];
        struct moe_layer *ml = k->moe ? m->moe_layers[k->si] : NULL;
        int rc;
        if (ml && (rc = moe_cuda_layer_route_to(k->moe, &ml->route, &ml->plan, err)))
            return rc;
    }
    return 0;
}

// ---- what the updates change: partial fine-tuning and LoRA ----

// Adapter e of target t in an adapter buffer (train/tune.c's layout: A (r,
// in) and B (out, r) per expert, or one of each for a shared adapter).
static float *adapter_a(const struct moe_lora *l, const struct moe_lora_target *t, size_t e, float *base)
{
    return base + l->p.t[t->a].offset + (t->shared ? 0 : e * l->rank * t->in);
}
static float *adapter_b(const struct moe_lora *l, const struct moe_lora_target *t, size_t e, float *base)
{
    return base + l->p.t[t->b].offset + (t->shared ? 0 : e * t->out * l->rank);
}

// train/tune.c moe_lora_apply: for each target matrix, delta = s B A (a GEMM
// into ltmp), then W = W0 + delta (moe_k_lora_merge: zero delta keeps W0).
static int lora_apply(struct moe_cuda_model *d, struct moe_err *err)
{
    const struct moe_lora *l = d->lora;
    const float s = (float)l->scale;
    const size_t r = l->rank;
    int rc;
    for (size_t k = 0; k < l->n; k++) {
        const struct moe_lora_target *t = &l->t[k];
        const size_t mn = t->out * t->in;
        float *w = W(d, t->base);
        for (size_t e = 0; e < t->E; e++)
            if ((rc = moe_cuda_gemm(0, 0, t->out, t->in, r, s, adapter_b(l, t, e, d->lw), r,
                                    adapter_a(l, t, e, d->lw), t->in, 0.0f, d->ltmp, t->in, "LoRA s B A", err)) ||
                (rc = moe_cuda_lora_merge(w + e * mn, d->lw0 + d->w0_off[k] + e * mn, d->ltmp, mn, err)))
                return rc;
    }
    return 0;
}

// train/tune.c moe_lora_backward: from the model's dL/dW of each target,
// dB += s G A^T and dA += s B^T G (a shared adapter sums over the experts,
// in expert order).
static int lora_backward(struct moe_cuda_model *d, struct moe_err *err)
{
    const struct moe_lora *l = d->lora;
    const float s = (float)l->scale;
    const size_t r = l->rank;
    int rc;
    for (size_t k = 0; k < l->n; k++) {
        const struct moe_lora_target *t = &l->t[k];
        const float *g = G(d, t->base);
        for (size_t e = 0; e < t->E; e++) {
            const float *ge = g + e * t->out * t->in;
            if ((rc = moe_cuda_gemm(0, 1, t->out, r, t->in, s, ge, t->in, adapter_a(l, t, e, d->lw), t->in, 1.0f,
                                    adapter_b(l, t, e, d->lg), r, "LoRA backward (dB)", err)) ||
                (rc = moe_cuda_gemm(1, 0, r, t->in, t->out, s, adapter_b(l, t, e, d->lw), r, ge, t->in, 1.0f,
                                    adapter_a(l, t, e, d->lg), t->in, "LoRA backward (dA)", err)))
                return rc;
        }
    }
    return 0;
}

// The adapters on the device: their weights (as the host has them), zero
// gradients, every target's W0, the product's scratch.
static int lora_upload(struct moe_cuda_model *d, struct moe_lora *l, struct moe_err *err)
{
    const size_t f = sizeof(float), n = l->p.numel;
    size_t n0 = 0, big = 1;
    if (!(d->w0_off = malloc((l->n ? l->n : 1) * sizeof *d->w0_off)))
        return moe_error(err, MOE_ENOMEM, "out of memory for %zu LoRA targets", l->n);
    for (size_t k = 0; k < l->n; k++) {
        const struct moe_lora_target *t = &l->t[k];
        d->w0_off[k] = n0;
        n0 += t->E * t->out * t->in;
        big = t->out * t->in > big ? t->out * t->in : big;
    }
    int rc;
    if ((rc = dalloc(d, &d->lw, n * f, "LoRA adapters", err)) ||
        (rc = dalloc(d, &d->lg, n * f, "LoRA adapter gradients", err)) ||
        (rc = dalloc(d, &d->lw0, (n0 ? n0 : 1) * f, "LoRA base weights (W0)", err)) ||
        (rc = dalloc(d, &d->ltmp, big * f, "LoRA product scratch", err)) ||
        (rc = moe_cuda_to_device(d->lw, l->p.data, n * f, err)) ||
        (rc = moe_cuda_memset(d->lg, 0, n * f, "LoRA adapter gradients", err)))
        return rc;
    for (size_t k = 0; k < l->n; k++) {
        const struct moe_lora_target *t = &l->t[k];
        if ((rc = moe_cuda_to_device(d->lw0 + d->w0_off[k], t->w0, t->E * t->out * t->in * f, err)))
            return rc;
    }
    d->lora = l;
    return 0;
}

// The optimizer's segments and the norm's units of what the model trains,
// over the device's buffers (train.h moe_train_segments, moe_train_norm_units:
// the trainer's own rule).
static int train_parts(struct moe_cuda_model *d, const uint8_t *frozen, uint8_t *const *fe, struct moe_err *err)
{
    const struct moe_params *p = d->p;
    const struct moe_train_layout b = { d->w, d->g, d->lw, d->lg, d->lora ? d->lora->p.numel : 0 };
    size_t n_seg = moe_train_segments(p, frozen, fe, &b, NULL), n_unit = moe_train_norm_units(p, frozen, fe, &b, NULL);
    struct moe_optim_seg *s = malloc(n_seg * sizeof *s), *u = malloc((n_unit ? n_unit : 1) * sizeof *u);
    if (!s || !u) {
        free(s), free(u);
        return moe_error(err, MOE_ENOMEM, "out of memory for %zu segments and %zu norm units", n_seg, n_unit);
    }
    free(d->seg), free(d->unit);
    d->seg = s, d->n_seg = moe_train_segments(p, frozen, fe, &b, s);
    d->unit = u, d->n_unit = moe_train_norm_units(p, frozen, fe, &b, u);
    d->seg_total = 0;
    for (size_t j = 0; j < d->n_seg; j++)
        d->seg_total += s[j].n;
    return 0;
}

int moe_cuda_model_set_train(struct moe_cuda_model *d, const uint8_t *frozen, uint8_t *const *frozen_experts,
                             struct moe_lora *lora, struct moe_err *err)
{
    if (!d->g)
        return moe_error(err, MOE_EINVAL, "CUDA model: made for evaluation passes only (no gradients)");
    if (d->lora)
        return moe_error(err, MOE_EINVAL, "CUDA model: what it trains is set already");
    int rc;
    if ((lora && (rc = lora_upload(d, lora, err))) || (rc = train_parts(d, frozen, frozen_experts, err)))
        return rc;
    if ((d->m || d->v) && d->seg_total != d->n_opt)
        return moe_error(err, MOE_EINVAL, "CUDA model: the segments hold %zu weights, the optimizer's moments %zu",
                         d->seg_total, d->n_opt);
    return 0;
}

int moe_cuda_model_download(const struct moe_cuda_model *d, struct moe_model *m, struct moe_optim *o,
                            struct moe_err *err)
{
    const size_t n = d->numel * sizeof(float), nm = d->n_opt * sizeof(float);
    int rc = moe_cuda_to_host(m->params.data, d->w, n, err);
    if (!rc && m->params.grad && d->g)
        rc = moe_cuda_to_host(m->params.grad, d->g, n, err);
    if (!rc && o && o->m && d->m)
        rc = moe_cuda_to_host(o->m, d->m, nm, err);
    if (!rc && o && o->v && d->v)
        rc = moe_cuda_to_host(o->v, d->v, nm, err);
    struct moe_lora *l = d->lora; // the adapters: weights, and gradients where the host keeps them
    if (!rc && l)
        rc = moe_cuda_to_host(l->p.data, d->lw, l->p.numel * sizeof(float), err);
    if (!rc && l && l->p.grad)
        rc = moe_cuda_to_host(l->p.grad, d->lg, l->p.numel * sizeof(float), err);
    for (size_t l = 0; !rc && l < d->L; l++) // bias balancing's offsets: state, not parameters
        if (d->blk[l].moe)
            rc = moe_cuda_layer_get_bias(d->blk[l].moe, m->moe_layers[d->blk[l].si]->bias, err);
    return rc;
}
