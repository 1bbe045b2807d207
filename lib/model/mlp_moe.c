// mlp_moe.c: the MLP-MoE model: an input projection, n_layer pre-norm
// residual blocks whose FFN is a sparse MoE layer (every moe_every-th block)
// or a dense FFN, a final norm and a linear head; softmax cross-entropy for
// classes or squared error for regression, plus the layers' auxiliary losses.
// Not a sequence model: every example is one token (the Transformer is issue 5).
//
//   h_0 = x.W_in^T + b_in
//   h_{l+1} = h_l + FFN_l(norm_l(h_l))        FFN_l = MoE layer or dense FFN
//   y = norm_f(h_L).W_head^T + b_head
// Block l is sparse iff l % moe_every == moe_every - 1 (moe_every = 1: all).
// Dropout (model.dropout.residual, .ffn; training passes only; Srivastava et al.
// 2014, inverted, nn/dropout.c): h_{l+1} = h_l + D_res(FFN_l(norm_l(h_l))), and
// every FFN's (dense or expert) hidden activation under D_ffn; mask sites as in
// the Transformer (nn.h: layer * 8 + kind), elements (t, d) and (t[, slot], j).
//
// T = rows, I = n_in, D = n_embd, F = n_ff, Fd = n_ff_dense, O = n_out, L = n_layer.
//
// Tensors (docs/checkpoint.md):
//   input.weight (D, I), input.bias (D)
//   layers.{l}.norm.weight (D), layers.{l}.norm.bias (D) (layernorm only)
//   layers.{l}.moe.* (moe/moe_layer.h) or layers.{l}.ffn.w1 (Fd, D), .w3 (Fd, D) (swiglu), .w2 (D, Fd)
//   norm.weight (D), norm.bias (D) (layernorm only), head.weight (O, D), head.bias (O)
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/prof.h"
#include "model/model.h"
#include "moe/moe_layer.h"
#include "nn/nn.h"


struct block {
    int sparse;
    int i_g, i_b;               // norm gain and bias (bias -1 for rmsnorm)
    struct moe_layer moe;       // sparse blocks
    int i_w1, i_w3, i_w2;       // dense blocks
    float *a, *b, *hh;          // (T, Fd) dense FFN activations
};

struct mlp_moe {
    size_t I, D, O, L, Fd, V;
    int rms;                    // rmsnorm (else layernorm)
    double p_res, p_ffn;        // model.dropout.residual, .ffn
    int ce;
    enum moe_ffn_act act;
    float init_scale;
    int has_hash;
    struct block *blk;
    size_t n_sparse;
    struct moe_layer **moe;     // (n_sparse) the sparse layers in order      // (n_sparse) the sparse blocks in order
    int i_win, i_bin, i_gf, i_bf, i_wh, i_bh;
    float *h;                   // (L+1, T, D) residual stream
    float *n;                   // (L+1, T, D) normalised inputs of each block; n[L] = final norm
    float *mean, *rstd;         // (L+1, T)
    float *y, *dy;              // (T, O) head outputs and their gradient
    float *dh, *dn, *tmp;       // (T, D)
    float *da, *db, *dhh;       // (T, Fd) dense FFN backward scratch
    float *target, *pred;       // (T, O)
    uint32_t *keys;             // (T) hash keys
};

static void release(struct moe_model *m)
{
    struct mlp_moe *n = m->impl;
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

static void set_ones(struct moe_params *p, int i)
{
    float *w = moe_params_data(p, i);
    for (size_t k = 0; k < p->t[i].numel; k++)
        w[k] = 1.0f;
}

static void set_zero(struct moe_params *p, int i)
{
    if (i >= 0)
        memset(moe_params_data(p, i), 0, p->t[i].numel * sizeof(float));
}

static void init_weights(struct moe_model *m, uint64_t seed)
{
    struct mlp_moe *n = m->impl;
    struct moe_params *p = &m->params;
    moe_init_uniform(p, n->i_win, seed, n->init_scale);
    set_zero(p, n->i_bin);
    for (size_t l = 0; l < n->L; l++) {
        struct block *b = &n->blk[l];
        set_ones(p, b->i_g);
        set_zero(p, b->i_b);
        if (b->sparse) {
            moe_layer_init(&b->moe, p, seed, n->init_scale);
        } else {
            int w[] = { b->i_w1, b->i_w3, b->i_w2 };
            for (int k = 0; k < 3; k++)
                if (w[k] >= 0)
                    moe_init_uniform(p, w[k], seed, n->init_scale);
        }
    }
    set_ones(p, n->i_gf);
    set_zero(p, n->i_bf);
    moe_init_uniform(p, n->i_wh, seed, n->init_scale);
    set_zero(p, n->i_bh);
}

static void hash_keys(const struct mlp_moe *n, const float *x, size_t T)
{
    for (size_t t = 0; t < T; t++)
        n->keys[t] = moe_hash_key_row(x + t * n->I, n->I, n->V);
}

static int fit(struct moe_model *m, const struct moe_dataset *train, struct moe_err *err)
{
    struct mlp_moe *n = m->impl;
    if (!n->has_hash)
        return 0;
    uint64_t *freq = calloc(n->V, sizeof *freq);
    if (!freq)
        return moe_error(err, MOE_ENOMEM, "out of memory for hash key counts");
    for (size_t t = 0; t < train->n; t++)
        freq[moe_hash_key_row(train->x + t * n->I, n->I, n->V)]++;
    moe_model_layers_fit_hash(m, freq);
    free(freq);
    return 0;
}

static int run(struct moe_model *m, const struct moe_batch *bt, int with_grad, struct moe_stats *stats,
               struct moe_err *err)
{
    struct mlp_moe *n = m->impl;
    struct moe_params *p = &m->params;
    size_t T = bt->n, I = n->I, D = n->D, O = n->O, L = n->L, Fd = n->Fd;
    const float *target;
    int rc = moe_model_batch_targets(m, bt, n->target, &target, err);
    if (rc || T == 0)
        return rc;
    const int32_t *label = m->task == MOE_TASK_CLASSIFICATION ? bt->label : bt->group;
    if (n->has_hash)
        hash_keys(n, bt->x, T);
    size_t TD = T * D;
    // forward
    MOE_TIMED(MOE_PHASE_LINEAR, moe_linear_forward(n->h, D, bt->x, I, moe_params_data(p, n->i_win),
                                                   moe_params_data(p, n->i_bin), T, I, D));
    size_t si = 0;
    for (size_t l = 0; l < L; l++) {
        struct block *b = &n->blk[l];
        float *hin = n->h + l * TD, *hout = n->h + (l + 1) * TD, *nl = n->n + l * TD;
        moe_model_norm_forward(n->rms, p, nl, n->mean + l * T, n->rstd + l * T, hin, b->i_g, b->i_b, T, n->D);
        memcpy(hout, hin, TD * sizeof(float));
        struct moe_dropout d_rf = moe_dropout_make(with_grad ? n->p_res : 0.0, m->seed, bt->step, l, MOE_DROP_RESID_FFN),
                           d_ffn = moe_dropout_make(with_grad ? n->p_ffn : 0.0, m->seed, bt->step, l, MOE_DROP_FFN);
        if (b->sparse) {
            struct moe_route_acc *acc = stats && si < stats->n_route ? &stats->route[si] : NULL;
            // the weighted auxiliary loss is in b->moe.loss (reported per layer, not in `loss`)
            if (moe_dropout_on(&d_rf)) { // the layer's output on its own, dropped, then added
                moe_zero(n->tmp, TD);
                moe_layer_forward(&b->moe, p, n->tmp, nl, T, n->keys, with_grad, m->seed, bt->step, acc, label);
                moe_dropout_apply(&d_rf, n->tmp, TD, 0);
                for (size_t i = 0; i < TD; i++)
                    hout[i] += n->tmp[i];
            } else {
                moe_layer_forward(&b->moe, p, hout, nl, T, n->keys, with_grad, m->seed, bt->step, acc, label);
            }
            si++;
        } else {
            moe_ffn_forward_drop(n->tmp, b->a, b->b, b->hh, nl, moe_params_data(p, b->i_w1),
                                 b->i_w3 >= 0 ? moe_params_data(p, b->i_w3) : NULL, moe_params_data(p, b->i_w2), T, D,
                                 Fd, n->act, &d_ffn, NULL, NULL, 0);
            moe_dropout_apply(&d_rf, n->tmp, TD, 0);
            for (size_t i = 0; i < TD; i++)
                hout[i] += n->tmp[i];
        }
    }
    float *nf = n->n + L * TD;
    moe_model_norm_forward(n->rms, p, nf, n->mean + L * T, n->rstd + L * T, n->h + L * TD, n->i_gf, n->i_bf, T, n->D);
    MOE_TIMED(MOE_PHASE_LINEAR,
              moe_linear_forward(n->y, O, nf, D, moe_params_data(p, n->i_wh), moe_params_data(p, n->i_bh), T, D, O));
    MOE_TIMED(MOE_PHASE_LOSS, moe_model_head_loss(m, n->ce, n->y, with_grad ? n->dy : NULL, n->pred, target, bt, stats));
    const struct moe_batch_kd *kd = bt->kd;
    if (kd && kd->hidden_out)
        memcpy(kd->hidden_out, n->h + TD, L * TD * sizeof(float));
    if (!with_grad)
        return 0;

    // backward: dh holds dL/dh_l for the current l
    memset(n->dn, 0, TD * sizeof(float));
    MOE_TIMED(MOE_PHASE_LINEAR, moe_linear_backward(n->dn, D, moe_params_grad(p, n->i_wh), moe_params_grad(p, n->i_bh),
                                                    n->dy, O, nf, D, moe_params_data(p, n->i_wh), T, D, O));
    memset(n->dh, 0, TD * sizeof(float));
    moe_model_norm_backward(n->rms, p, n->dh, n->dn, n->h + L * TD, n->mean + L * T, n->rstd + L * T, n->i_gf, n->i_bf, T, n->D);
    for (size_t l = L; l-- > 0;) {
        struct block *b = &n->blk[l];
        float *hin = n->h + l * TD, *nl = n->n + l * TD;
        if (kd && kd->teacher_hidden) // MoEBERT: the block output's distance to the teacher's
            moe_mse_forward_backward(n->dh, n->h + (l + 1) * TD, kd->teacher_hidden + l * TD, 1, TD,
                                     kd->alpha / (float)TD);
        memset(n->dn, 0, TD * sizeof(float));
        struct moe_dropout d_rf = moe_dropout_make(n->p_res, m->seed, bt->step, l, MOE_DROP_RESID_FFN),
                           d_ffn = moe_dropout_make(n->p_ffn, m->seed, bt->step, l, MOE_DROP_FFN);
        const float *dffn = n->dh; // the branch's output gradient, under the residual dropout's mask
        if (moe_dropout_on(&d_rf)) {
            memcpy(n->tmp, n->dh, TD * sizeof(float));
            moe_dropout_apply(&d_rf, n->tmp, TD, 0);
            dffn = n->tmp;
        }
        if (b->sparse) {
            moe_layer_backward(&b->moe, p, n->dn, dffn, nl);
        } else {
            moe_ffn_backward_drop(n->dn, moe_params_grad(p, b->i_w1),
                                  b->i_w3 >= 0 ? moe_params_grad(p, b->i_w3) : NULL, moe_params_grad(p, b->i_w2),
                                  n->dhh, n->da, n->db, dffn, nl, b->a, b->b, b->hh, moe_params_data(p, b->i_w1),
                                  b->i_w3 >= 0 ? moe_params_data(p, b->i_w3) : NULL, moe_params_data(p, b->i_w2), T,
                                  D, Fd, n->act, &d_ffn, NULL, NULL, 0, 1.0f);
            if (kd && kd->ffn_importance) // every row is an example with loss (1/T)-scaled in the batch mean
                moe_ffn_importance_add(kd->ffn_importance + l * Fd, b->a, b->b, b->hh, n->dhh, n->da, n->db, T, Fd, 1,
                                       (double)T, n->act);
        }
        // the residual passes dh through; the branch adds norm'(dn)
        moe_model_norm_backward(n->rms, p, n->dh, n->dn, hin, n->mean + l * T, n->rstd + l * T, b->i_g, b->i_b, T, n->D);
    }
    MOE_TIMED(MOE_PHASE_LINEAR, moe_linear_backward(NULL, 0, moe_params_grad(p, n->i_win), moe_params_grad(p, n->i_bin),
                                                    n->dh, D, bt->x, I, moe_params_data(p, n->i_win), T, I, D));
    return 0;
}

static const struct moe_model_ops ops = {
    .type = "mlp-moe",
    .run = run,
    .init_weights = init_weights,
    .release = release,
    .fit = fit,
    .state = moe_model_layers_state,
    .moe_layer_at = moe_model_layers_at,
    .set_eval_capacity = moe_model_layers_set_eval_capacity,
};

int moe_mlp_moe_check(const struct moe_model_hp *hp, const char *loss, enum moe_task task, size_t n_in, size_t n_out,
                      struct moe_err *err)
{
    (void)hp, (void)n_in, (void)n_out;
    return moe_model_head_loss_check("mlp-moe", loss, task, err);
}

int moe_mlp_moe_declare(struct moe_model *m, const struct moe_model_hp *hp, const char *loss, struct moe_plan *pl)
{
    struct mlp_moe *n = calloc(1, sizeof *n);
    if (!n)
        return moe_plan_fail(pl, MOE_ENOMEM, "out of memory");
    m->impl = n;
    m->ops = &ops;
    n->ce = strcmp(loss, "ce") == 0; // moe_mlp_moe_check accepted it
    m->loss_name = n->ce ? "ce" : "mse";
    n->I = m->n_in;
    n->O = m->n_out;
    n->D = hp->n_embd;
    n->L = hp->n_layer;
    size_t every = hp->moe_every;
    n->rms = hp->rms;
    n->p_res = hp->dropout.residual;
    n->p_ffn = hp->dropout.ffn;
    n->act = hp->ffn_act;
    n->init_scale = (float)hp->init_scale;
    n->V = hp->moe.hash_vocab;
    n->Fd = hp->n_ff_dense;
    size_t D = n->D, I = n->I, O = n->O, L = n->L;
    int swiglu = n->act == MOE_FFN_SWIGLU;
    n->blk = calloc(L, sizeof *n->blk);
    n->moe = calloc(L, sizeof *n->moe);
    if (!n->blk || !n->moe)
        return moe_plan_fail(pl, MOE_ENOMEM, "out of memory");
    struct moe_dim dI = { I, MOE_KEY_FEATURES }, dO = { O, MOE_KEY_OUTPUTS }, dD = { D, "model.n_embd" },
                   dT = { m->max_batch, MOE_KEY_BATCH }, dL1 = { L + 1, "model.n_layer + 1" },
                   dFd = moe_model_dense_dim(hp);
    moe_plan_macs(pl, (double)I * D + (double)O * D); // input projection and head
    moe_plan_param(pl, &n->i_win, MOE_DIMS(dD, dI), "input.weight");
    moe_plan_param(pl, &n->i_bin, MOE_DIMS(dD), "input.bias");
    for (size_t l = 0; l < L && !pl->rc; l++) {
        struct block *b = &n->blk[l];
        b->i_b = -1;
        b->sparse = l % every == every - 1;
        moe_plan_param(pl, &b->i_g, MOE_DIMS(dD), "layers.%zu.norm.weight", l);
        if (!n->rms)
            moe_plan_param(pl, &b->i_b, MOE_DIMS(dD), "layers.%zu.norm.bias", l);
        int *w[3] = { &b->i_w1, &b->i_w3, &b->i_w2 };
        float **act[3] = { &b->a, &b->b, &b->hh };
        moe_model_ffn_declare(pl, hp, &hp->moe, l, b->sparse, dT, &b->moe, w, act);
        if (b->sparse) {
            n->moe[n->n_sparse++] = &b->moe;
            n->has_hash |= moe_router_info(hp->moe.router.type)->token_table;
        }
    }
    n->i_bf = -1;
    moe_plan_param(pl, &n->i_gf, MOE_DIMS(dD), "norm.weight");
    if (!n->rms)
        moe_plan_param(pl, &n->i_bf, MOE_DIMS(dD), "norm.bias");
    moe_plan_param(pl, &n->i_wh, MOE_DIMS(dO, dD), "head.weight");
    moe_plan_param(pl, &n->i_bh, MOE_DIMS(dO), "head.bias");

    moe_plan_buf(pl, &n->h, MOE_ROLE_ACT, MOE_DT_F32, MOE_DIMS(dL1, dT, dD), "h");
    moe_plan_buf(pl, &n->n, MOE_ROLE_ACT, MOE_DT_F32, MOE_DIMS(dL1, dT, dD), "n");
    moe_plan_buf(pl, &n->mean, MOE_ROLE_ACT, MOE_DT_F32, MOE_DIMS(dL1, dT), "mean");
    moe_plan_buf(pl, &n->rstd, MOE_ROLE_ACT, MOE_DT_F32, MOE_DIMS(dL1, dT), "rstd");
    moe_plan_buf(pl, &n->y, MOE_ROLE_ACT, MOE_DT_F32, MOE_DIMS(dT, dO), "y");
    float **to[] = { &n->dy, &n->target, &n->pred };
    const char *ton[] = { "dy", "target", "pred" };
    for (int i = 0; i < 3; i++)
        moe_plan_buf(pl, to[i], MOE_ROLE_SCRATCH, MOE_DT_F32, MOE_DIMS(dT, dO), "%s", ton[i]);
    float **td[] = { &n->dh, &n->dn, &n->tmp };
    const char *tdn[] = { "dh", "dn", "tmp" };
    for (int i = 0; i < 3; i++)
        moe_plan_buf(pl, td[i], MOE_ROLE_SCRATCH, MOE_DT_F32, MOE_DIMS(dT, dD), "%s", tdn[i]);
    if (n->n_sparse < L) { // the dense blocks' backward
        moe_plan_buf(pl, &n->da, MOE_ROLE_SCRATCH, MOE_DT_F32, MOE_DIMS(dT, dFd), "ffn.da");
        if (swiglu)
            moe_plan_buf(pl, &n->db, MOE_ROLE_SCRATCH, MOE_DT_F32, MOE_DIMS(dT, dFd), "ffn.db");
        moe_plan_buf(pl, &n->dhh, MOE_ROLE_SCRATCH, MOE_DT_F32, MOE_DIMS(dT, dFd), "ffn.dhh");
    }
    moe_plan_buf(pl, &n->keys, MOE_ROLE_SCRATCH, MOE_DT_U32, MOE_DIMS(dT), "keys");
    m->hidden_per_row = L * D;
    m->n_moe_layers = n->n_sparse;
    m->moe_layers = n->moe;
    m->n_route_expert = hp->moe.router.E;
    m->n_route_slots = moe_router_slots(&hp->moe.router);
    return pl->rc;
}
