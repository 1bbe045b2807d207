// model.c: what the models share: the block norms, the sparse layers' common
// ops, the output head's losses, batch targets, checkpoint load and save, and
// release (see model.h).
// Not here: the model table and construction by name (registry.c), the typed
// hyperparameters (model_config.c), evaluation statistics (stats.c).
#include "model/model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/prof.h"
#include "core/rng.h"
#include "io/config.h"
#include "moe/moe_layer.h"
#include "moe/route_stats.h"
#include "nn/nn.h"

#define NORM_EPS 1e-5f // epsilon of the block norms

void moe_model_norm_forward(int rms, const struct moe_params *p, float *y, float *mean, float *rstd,
                            const float *x, int ig, int ib, size_t T, size_t D)
{
    double t0 = moe_prof_begin();
    if (rms)
        moe_rmsnorm_forward(y, rstd, x, moe_params_data(p, ig), T, D, NORM_EPS);
    else
        moe_layernorm_forward(y, mean, rstd, x, moe_params_data(p, ig), moe_params_data(p, ib), T, D, NORM_EPS);
    moe_prof_end(MOE_PHASE_NORM, t0);
}

void moe_model_norm_backward(int rms, const struct moe_params *p, float *dx, const float *dy, const float *x,
                             const float *mean, const float *rstd, int ig, int ib, size_t T, size_t D)
{
    double t0 = moe_prof_begin();
    if (rms)
        moe_rmsnorm_backward(dx, moe_params_grad(p, ig), dy, x, rstd, moe_params_data(p, ig), T, D);
    else
        moe_layernorm_backward(dx, moe_params_grad(p, ig), moe_params_grad(p, ib), dy, x, mean, rstd,
                               moe_params_data(p, ig), T, D);
    moe_prof_end(MOE_PHASE_NORM, t0);
}

struct moe_dim moe_model_dense_dim(const struct moe_model_hp *hp)
{
    return (struct moe_dim){ hp->n_ff_dense,
                             hp->n_ff_dense_auto ? "model.n_expert_used x model.n_ff" : "model.n_ff_dense" };
}

int moe_model_ffn_declare(struct moe_plan *pl, const struct moe_model_hp *hp, const struct moe_layer_cfg *lc,
                          size_t l, int sparse, struct moe_dim dT, struct moe_layer *moe, int *w[3], float **act[3])
{
    *w[0] = *w[1] = *w[2] = -1;
    if (sparse) {
        struct moe_layer_cfg c = *lc;
        char prefix[64];
        c.index = (uint32_t)l;
        snprintf(prefix, sizeof prefix, "layers.%zu.moe", l);
        return moe_layer_plan_declare(moe, &c, prefix, dT, pl);
    }
    int swiglu = hp->ffn_act == MOE_FFN_SWIGLU;
    size_t D = hp->n_embd;
    struct moe_dim dD = { D, "model.n_embd" }, dFd = moe_model_dense_dim(hp);
    moe_plan_param(pl, w[0], MOE_DIMS(dFd, dD), "layers.%zu.ffn.w1", l);
    if (swiglu)
        moe_plan_param(pl, w[1], MOE_DIMS(dFd, dD), "layers.%zu.ffn.w3", l);
    moe_plan_param(pl, w[2], MOE_DIMS(dD, dFd), "layers.%zu.ffn.w2", l);
    moe_plan_macs(pl, (double)dFd.v * D * (swiglu ? 3.0 : 2.0));
    moe_plan_buf(pl, act[0], MOE_ROLE_ACT, MOE_DT_F32, MOE_DIMS(dT, dFd), "layers.%zu.ffn.a", l);
    moe_plan_buf(pl, act[2], MOE_ROLE_ACT, MOE_DT_F32, MOE_DIMS(dT, dFd), "layers.%zu.ffn.hh", l);
    if (swiglu)
        moe_plan_buf(pl, act[1], MOE_ROLE_ACT, MOE_DT_F32, MOE_DIMS(dT, dFd), "layers.%zu.ffn.b", l);
    return pl->rc;
}

size_t moe_model_layers_state(struct moe_model *m, struct moe_st_ref *refs, size_t max)
{
    size_t k = 0;
    for (size_t i = 0; i < m->n_moe_layers; i++) {
        struct moe_layer *l = m->moe_layers[i];
        if (l->bias && k < max)
            refs[k] = (struct moe_st_ref){ .name = l->bias_name, .dtype = MOE_F32, .ndim = 1, .shape = { l->c.router.E }, .data = l->bias };
        if (l->bias)
            k++;
        if (l->table && k < max)
            refs[k] = (struct moe_st_ref){ .name = l->table_name, .dtype = MOE_I32, .ndim = 1, .shape = { l->c.hash_vocab }, .data = l->table };
        if (l->table)
            k++;
    }
    return k;
}

struct moe_layer *moe_model_layers_at(struct moe_model *m, size_t i)
{
    return i < m->n_moe_layers ? m->moe_layers[i] : NULL;
}

void moe_model_layers_set_eval_capacity(struct moe_model *m, double cf)
{
    for (size_t i = 0; i < m->n_moe_layers; i++)
        m->moe_layers[i]->c.eval_capacity_factor = cf;
}

void moe_model_layers_fit_hash(struct moe_model *m, const uint64_t *freq)
{
    for (size_t i = 0; i < m->n_moe_layers; i++)
        moe_layer_fit_hash(m->moe_layers[i], freq);
}

int moe_model_head_loss_check(const char *model, const char *loss, enum moe_task task, struct moe_err *err)
{
    int ce = strcmp(loss, "ce") == 0;
    if (!ce && strcmp(loss, "mse") != 0)
        return moe_error(err, MOE_ECONFIG, "key 'loss.type': model '%s' takes mse or ce, got '%s'", model, loss);
    if (ce && task != MOE_TASK_CLASSIFICATION)
        return moe_error(err, MOE_ECONFIG, "key 'loss.type': 'ce' needs class labels, but the data is regression");
    return 0;
}

double moe_model_ce_head(float *dy, float *row_loss, int32_t *row_argmax, const float *y, const int32_t *label,
                         const struct moe_batch *b, size_t rows, size_t O)
{
    const struct moe_batch_kd *kd = b->kd;
    if (kd && kd->logits_out)
        memcpy(kd->logits_out, y, rows * O * sizeof(float));
    float scale = 1.0f / (float)rows;
    if (!kd || !kd->teacher)
        return moe_ce_rows(dy, row_loss, row_argmax, y, label, rows, O, scale);
    if (kd->sym) {
        double ce = moe_ce_rows(dy, row_loss, row_argmax, y, label, rows, O, scale);
        if (dy)
            moe_symkl_forward_backward(dy, y, kd->teacher, rows, O, kd->alpha * scale);
        return ce;
    }
    double ce = moe_ce_rows(dy, row_loss, row_argmax, y, label, rows, O, (1.0f - kd->alpha) * scale);
    if (dy)
        moe_kd_forward_backward(dy, y, kd->teacher, rows, O, kd->tau, kd->alpha * scale);
    return ce;
}

void moe_model_head_loss(const struct moe_model *m, int ce, const float *y, float *dy, float *pred,
                         const float *target, const struct moe_batch *b, struct moe_stats *stats)
{
    size_t T = b->n, O = m->n_out;
    if (dy)
        memset(dy, 0, T * O * sizeof(float));
    float scale = 1.0f / (float)T;
    double loss = ce ? moe_model_ce_head(dy, NULL, NULL, y, b->label, b, T, O) : moe_mse_forward_backward(dy, y, target, T, O, scale);
    if (!ce && b->kd && b->kd->logits_out)
        memcpy(b->kd->logits_out, y, T * O * sizeof(float));
    if (!stats)
        return;
    if (ce) {
        moe_softmax_forward(pred, NULL, y, T, O);
        y = pred;
    }
    moe_stats_add_predictions(stats, y, target, m->task == MOE_TASK_CLASSIFICATION ? b->label : NULL, T, O);
    stats->loss += loss;
}

#define MAX_STATE 256

int moe_model_load(struct moe_model *m, const struct moe_st_file *f, int allow_extra, struct moe_err *err)
{
    struct moe_st_ref refs[MAX_STATE];
    size_t n = m->ops->state ? m->ops->state(m, refs, MAX_STATE) : 0;
    if (n > MAX_STATE)
        return moe_error(err, MOE_EINVAL, "model has %zu state tensors, at most %d supported", n, MAX_STATE);
    int rc = moe_quant_load_params(f, &m->params, allow_extra || n > 0, err);
    if (rc)
        return rc;
    for (size_t i = 0; i < n; i++)
        if ((rc = moe_safetensors_load_ref(f, &refs[i], err)))
            return rc;
    // Weights from a file are checked like any input: a NaN or infinity (say in
    // the embedding row of a byte that never occurs) would train, evaluate and be
    // written back without a word. The first one found is named.
    const struct moe_params *p = &m->params;
    for (size_t t = 0; t < p->n; t++) {
        const float *w = p->data + p->t[t].offset;
        for (size_t j = 0; j < p->t[t].numel; j++)
            if (!isfinite(w[j]))
                return moe_error(err, MOE_EFORMAT, "%s: tensor '%s' element %zu is %s, not a finite number", f->path,
                                 p->t[t].name, j, isnan(w[j]) ? "NaN" : w[j] > 0 ? "+infinity" : "-infinity");
    }
    // State read from a file is checked like any input: a hash table entry
    // outside [0, E) would index past the experts, a non-finite bias poisons routing.
    for (size_t i = 0; i < m->n_moe_layers && m->ops->moe_layer_at; i++) {
        const struct moe_layer *l = m->ops->moe_layer_at(m, i);
        size_t E = l->c.router.E;
        for (size_t v = 0; l->table && v < l->c.hash_vocab; v++)
            if (l->table[v] < 0 || (size_t)l->table[v] >= E)
                return moe_error(err, MOE_EFORMAT, "%s: tensor '%s' entry %zu is expert %d, outside [0, %zu)", f->path,
                                 l->table_name, v, (int)l->table[v], E);
        for (size_t e = 0; l->bias && e < E; e++)
            if (!isfinite(l->bias[e]))
                return moe_error(err, MOE_EFORMAT, "%s: tensor '%s' entry %zu is not finite", f->path, l->bias_name, e);
    }
    if (!allow_extra && n > 0) {
        for (size_t i = 0; i < f->n; i++) {
            int known = moe_params_find(&m->params, f->e[i].name) >= 0 || moe_quant_is_part(f, &m->params, f->e[i].name);
            for (size_t j = 0; j < n && !known; j++)
                known = strcmp(refs[j].name, f->e[i].name) == 0;
            if (!known)
                return moe_error(err, MOE_ESHAPE, "%s: tensor '%s' is not a parameter of the model", f->path,
                                 f->e[i].name);
        }
    }
    return 0;
}

int moe_model_save(struct moe_model *m, const char *path, const struct moe_st_ref *extra, size_t n_extra,
                   const struct moe_st_meta *meta, size_t n_meta, struct moe_err *err)
{
    return moe_model_save_quant(m, path, NULL, extra, n_extra, meta, n_meta, err);
}

int moe_model_save_quant(struct moe_model *m, const char *path, const struct moe_quant_spec *spec,
                         const struct moe_st_ref *extra, size_t n_extra, const struct moe_st_meta *meta, size_t n_meta,
                         struct moe_err *err)
{
    struct moe_st_ref refs[MAX_STATE + 8];
    size_t n = 0;
    for (size_t i = 0; i < n_extra && n < 8; i++)
        refs[n++] = extra[i];
    if (m->ops->state) {
        size_t k = m->ops->state(m, refs + n, MAX_STATE);
        if (k > MAX_STATE)
            return moe_error(err, MOE_EINVAL, "model has %zu state tensors, at most %d supported", k, MAX_STATE);
        n += k;
    }
    return moe_quant_write_params(path, &m->params, spec, refs, n, meta, n_meta, err);
}

int moe_model_batch_targets(const struct moe_model *m, const struct moe_batch *b, float *onehot,
                            const float **ret_target, struct moe_err *err)
{
    if (b->n > m->max_batch)
        return moe_error(err, MOE_EINVAL, "batch of %zu rows exceeds the model's maximum %zu", b->n, m->max_batch);
    *ret_target = b->y;
    if (m->task == MOE_TASK_CLASSIFICATION) {
        size_t O = m->n_out;
        memset(onehot, 0, b->n * O * sizeof(float));
        for (size_t t = 0; t < b->n; t++)
            onehot[t * O + (size_t)b->label[t]] = 1.0f;
        *ret_target = onehot;
    }
    return 0;
}

void moe_model_release(struct moe_model *m)
{
    if (!m)
        return;
    if (m->ops && m->ops->release)
        m->ops->release(m);
    moe_plan_release(&m->plan);
    moe_params_release(&m->params);
    memset(m, 0, sizeof *m);
}
