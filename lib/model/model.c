// model.c: model construction by name, shared initialisation and the
// evaluation statistics every model fills (see model.h).
#include "model/model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/prof.h"
#include "core/rng.h"
#include "io/config.h"
#include "model/estimate.h"
#include "moe/moe_layer.h"
#include "moe/route_stats.h"
#include "nn/nn.h"

int moe_stats_init(struct moe_stats *s, size_t n_expert, size_t n_group, struct moe_err *err)
{
    memset(s, 0, sizeof *s);
    s->n_expert = n_expert;
    s->n_group = n_group;
    if (n_expert) {
        s->gate_sum = calloc(n_expert, sizeof *s->gate_sum);
        if (!s->gate_sum)
            return moe_error(err, MOE_ENOMEM, "out of memory for statistics");
        if (n_group) {
            s->contingency = calloc(n_expert * n_group, sizeof *s->contingency);
            if (!s->contingency)
                return moe_error(err, MOE_ENOMEM, "out of memory for statistics");
        }
    }
    return 0;
}

int moe_stats_init_routing(struct moe_stats *s, const struct moe_model *m, size_t n_label, struct moe_err *err)
{
    if (!m->n_moe_layers)
        return 0;
    s->route = calloc(m->n_moe_layers, sizeof *s->route);
    if (!s->route)
        return moe_error(err, MOE_ENOMEM, "out of memory for routing statistics");
    s->n_route = m->n_moe_layers;
    for (size_t i = 0; i < s->n_route; i++) {
        int rc = moe_route_acc_init(&s->route[i], m->n_route_expert, m->n_route_slots, n_label, err);
        if (rc)
            return rc;
    }
    return 0;
}

int moe_stats_init_lang(struct moe_stats *s, size_t n_lang, struct moe_err *err)
{
    s->n_lang = n_lang;
    s->lang_loss = calloc(n_lang ? n_lang : 1, sizeof *s->lang_loss);
    s->lang_tokens = calloc(n_lang ? n_lang : 1, sizeof *s->lang_tokens);
    s->lang_bytes = calloc(n_lang ? n_lang : 1, sizeof *s->lang_bytes);
    if (!s->lang_loss || !s->lang_tokens || !s->lang_bytes)
        return moe_error(err, MOE_ENOMEM, "out of memory for per-language statistics");
    return 0;
}

void moe_stats_reset(struct moe_stats *s)
{
    for (size_t i = 0; i < s->n_route; i++)
        moe_route_acc_reset(&s->route[i]);
    s->n = 0;
    s->loss = s->sq_err = s->gate_entropy = 0.0;
    s->correct = 0;
    s->bytes = 0.0;
    if (s->n_lang) {
        memset(s->lang_loss, 0, s->n_lang * sizeof *s->lang_loss);
        memset(s->lang_tokens, 0, s->n_lang * sizeof *s->lang_tokens);
        memset(s->lang_bytes, 0, s->n_lang * sizeof *s->lang_bytes);
    }
    if (s->gate_sum)
        memset(s->gate_sum, 0, s->n_expert * sizeof *s->gate_sum);
    if (s->contingency)
        memset(s->contingency, 0, s->n_expert * s->n_group * sizeof *s->contingency);
}

void moe_stats_release(struct moe_stats *s)
{
    if (!s)
        return;
    free(s->gate_sum);
    free(s->contingency);
    free(s->lang_loss);
    free(s->lang_tokens);
    free(s->lang_bytes);
    for (size_t i = 0; i < s->n_route; i++)
        moe_route_acc_release(&s->route[i]);
    free(s->route);
    memset(s, 0, sizeof *s);
}

double moe_stats_expert_region_mi(const struct moe_stats *s)
{
    if (!s->contingency || s->n == 0)
        return 0.0;
    double mi = moe_mi_bits(s->contingency, s->n_expert, s->n_group);
    return isnan(mi) ? 0.0 : mi;
}

size_t moe_stats_active_experts(const struct moe_stats *s, double threshold)
{
    size_t k = 0;
    for (size_t e = 0; e < s->n_expert; e++)
        if (s->n && s->gate_sum[e] / (double)s->n > threshold)
            k++;
    return k;
}

int moe_model_create(struct moe_model *ret, const struct moe_config *cfg, const char *loss, enum moe_task task,
                     size_t n_in, size_t n_out, size_t max_batch, struct moe_err *err)
{
    memset(ret, 0, sizeof *ret);
    moe_params_init(&ret->params);
    ret->task = task;
    ret->n_in = n_in;
    ret->n_out = n_out;
    ret->max_batch = max_batch ? max_batch : 1;
    if (!loss)
        loss = moe_cfg_str(cfg, "loss.type");
    const char *type = moe_cfg_str(cfg, "model.type");
    int cls = task == MOE_TASK_CLASSIFICATION, mixture = strcmp(type, "mixture") == 0;
    int lm = task == MOE_TASK_LM, transformer = strcmp(type, "transformer") == 0;
    if (strcmp(loss, "auto") == 0)
        loss = mixture ? (cls ? "nll-cat" : "nll") : (cls || lm ? "ce" : "mse");
    if (lm != transformer) {
        moe_model_release(ret);
        return lm ? moe_error(err, MOE_ECONFIG, "key 'model.type': text data (data.source 'text') needs model 'transformer', got '%s'", type)
                  : moe_error(err, MOE_ECONFIG, "key 'model.type': model 'transformer' reads text (data.source 'text'), not examples with features");
    }
    // Sizes first, before any allocation: a product that overflows or a model
    // no machine could hold is a config error, not a crash half-way through.
    struct moe_model_estimate est;
    int rc = moe_model_estimate(cfg, task, n_in, n_out, 0, 0, ret->max_batch, 0, &est, err);
    if (rc) {
        moe_model_release(ret);
        return rc;
    }
    if (mixture)
        rc = moe_mixture_create(ret, cfg, loss, err);
    else if (strcmp(type, "mlp") == 0)
        rc = moe_mlp_create(ret, cfg, loss, err);
    else if (strcmp(type, "mlp-moe") == 0)
        rc = moe_mlp_moe_create(ret, cfg, loss, err);
    else if (transformer)
        rc = moe_transformer_create(ret, cfg, loss, err);
    else
        rc = moe_error(err, MOE_ECONFIG, "key 'model.type': unknown model '%s'", type);
    if (rc)
        moe_model_release(ret);
    return rc;
}

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

size_t moe_model_layers_state(struct moe_model *m, struct moe_st_ref *refs, size_t max)
{
    size_t k = 0;
    for (size_t i = 0; i < m->n_moe_layers; i++) {
        struct moe_layer *l = m->moe_layers[i];
        if (l->bias && k < max)
            refs[k] = (struct moe_st_ref){ l->bias_name, MOE_F32, 1, { l->c.router.E }, l->bias };
        if (l->bias)
            k++;
        if (l->table && k < max)
            refs[k] = (struct moe_st_ref){ l->table_name, MOE_I32, 1, { l->c.hash_vocab }, l->table };
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

// The routers that support bias balancing, as "'a', 'b' or 'c'".
static void bias_routers(char *buf, size_t len)
{
    size_t n = 0, at = 0, total = 0;
    for (size_t t = 0; t < moe_router_count(); t++)
        total += moe_router_info((enum moe_router_type)t)->bias_balance;
    buf[0] = '\0';
    for (size_t t = 0; t < moe_router_count(); t++) {
        const struct moe_router_info *ri = moe_router_info((enum moe_router_type)t);
        if (!ri->bias_balance)
            continue;
        const char *sep = n == 0 ? "" : n + 1 == total ? " or " : ", ";
        int w = snprintf(buf + at, len - at, "%s'%s'", sep, ri->name);
        if (w < 0 || (size_t)w >= len - at)
            return; // cut short: the message stays readable
        at += (size_t)w;
        n++;
    }
}

// Router settings from the moe.* keys, checked against the router's needs.
int moe_model_layer_cfg(struct moe_layer_cfg *c, const struct moe_config *cfg, size_t D, size_t F, int act,
                        struct moe_err *err)
{
    memset(c, 0, sizeof *c);
    const char *rname = moe_cfg_str(cfg, "moe.router");
    int rt = moe_router_from_name(rname);
    if (rt < 0)
        return moe_error(err, MOE_ECONFIG, "key 'moe.router': unknown router '%s'", rname);
    size_t E = (size_t)moe_cfg_int(cfg, "model.n_expert"), K = (size_t)moe_cfg_int(cfg, "model.n_expert_used");
    c->router.type = (enum moe_router_type)rt;
    c->router.E = E;
    c->router.K = K;
    c->router.second = strcmp(moe_cfg_str(cfg, "moe.second_policy"), "random") == 0 ? MOE_SECOND_RANDOM
                                                                                   : MOE_SECOND_ALL;
    c->router.ec_factor = moe_cfg_num(cfg, "moe.ec_factor");
    c->router.bias_balance = moe_cfg_bool(cfg, "moe.bias_balance");
    c->D = D;
    c->F = F;
    c->n_shared = (size_t)moe_cfg_int(cfg, "model.n_expert_shared");
    c->act = (enum moe_ffn_act)act;
    c->capacity_factor = moe_cfg_num(cfg, "moe.capacity_factor");
    c->eval_capacity_factor = moe_cfg_num(cfg, "moe.eval_capacity_factor");
    c->drop = (enum moe_drop_policy)moe_drop_policy_from_name(moe_cfg_str(cfg, "moe.drop_policy"));
    c->jitter = moe_cfg_num(cfg, "moe.jitter");
    c->aux = (enum moe_aux_type)moe_aux_from_name(moe_cfg_str(cfg, "moe.aux_loss"));
    c->aux_weight = moe_cfg_num(cfg, "moe.aux_weight");
    c->w_importance = moe_cfg_num(cfg, "moe.w_importance");
    c->w_load = moe_cfg_num(cfg, "moe.w_load");
    c->z_weight = moe_cfg_num(cfg, "moe.z_weight");
    c->bias_rate = moe_cfg_num(cfg, "moe.bias_rate");
    c->hash_vocab = (size_t)moe_cfg_int(cfg, "moe.hash_vocab");
    c->hash_balanced = strcmp(moe_cfg_str(cfg, "moe.hash_table"), "balanced") == 0;
    c->router_init_scale = moe_cfg_num(cfg, "moe.router_init_scale");

    if (K > E)
        return moe_error(err, MOE_ECONFIG, "key 'model.n_expert_used': %zu experts per token but only %zu experts",
                         K, E);
    const struct moe_router_info *ri = moe_router_info(c->router.type);
    if (ri->fixed_k && K != ri->fixed_k)
        return moe_error(err, MOE_ECONFIG, "key 'model.n_expert_used': router '%s' %s, got %zu", rname, ri->k_rule, K);
    if (c->router.bias_balance && !ri->bias_balance) {
        char names[128];
        bias_routers(names, sizeof names);
        return moe_error(err, MOE_ECONFIG, "key 'moe.bias_balance': needs router %s, got '%s'", names, rname);
    }
    // Hash routing has no router probabilities, and expert choice is balanced
    // by construction: neither takes a balancing loss.
    if (!ri->balancing_loss)
        c->aux = MOE_AUX_NONE;
    if (!ri->probs)
        c->z_weight = 0.0;
    if (c->aux == MOE_AUX_SHAZEER && c->w_load > 0.0) {
        if (!ri->noise_weights)
            return moe_error(err, MOE_ECONFIG, "key 'moe.w_load': the smooth load estimator needs router 'noisy-topk', got '%s' (set moe.w_load = 0 to use the importance loss alone)", rname);
        if (K >= E)
            return moe_error(err, MOE_ECONFIG, "key 'moe.w_load': the smooth load estimator needs n_expert_used < n_expert");
    }
    return 0;
}

int moe_model_head_loss_check(struct moe_model *m, const char *loss, int *ret_ce, struct moe_err *err)
{
    int ce = strcmp(loss, "ce") == 0;
    if (!ce && strcmp(loss, "mse") != 0)
        return moe_error(err, MOE_ECONFIG, "key 'loss.type': model '%s' takes mse or ce, got '%s'", m->ops->type, loss);
    if (ce && m->task != MOE_TASK_CLASSIFICATION)
        return moe_error(err, MOE_ECONFIG, "key 'loss.type': 'ce' needs class labels, but the data is regression");
    m->loss_name = ce ? "ce" : "mse";
    *ret_ce = ce;
    return 0;
}

double moe_model_ce_head(float *dy, float *row_loss, int32_t *row_argmax, const float *y, const int32_t *label,
                         const struct moe_batch *b, size_t rows, size_t O)
{
    if (b->logits_out)
        memcpy(b->logits_out, y, rows * O * sizeof(float));
    float scale = 1.0f / (float)rows;
    if (!b->teacher)
        return moe_ce_rows(dy, row_loss, row_argmax, y, label, rows, O, scale);
    if (b->kd_sym) {
        double ce = moe_ce_rows(dy, row_loss, row_argmax, y, label, rows, O, scale);
        if (dy)
            moe_symkl_forward_backward(dy, y, b->teacher, rows, O, b->kd_alpha * scale);
        return ce;
    }
    double ce = moe_ce_rows(dy, row_loss, row_argmax, y, label, rows, O, (1.0f - b->kd_alpha) * scale);
    if (dy)
        moe_kd_forward_backward(dy, y, b->teacher, rows, O, b->kd_tau, b->kd_alpha * scale);
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
    if (!ce && b->logits_out)
        memcpy(b->logits_out, y, T * O * sizeof(float));
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
    int rc = moe_safetensors_load_params(f, &m->params, allow_extra || n > 0, err);
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
            int known = moe_params_find(&m->params, f->e[i].name) >= 0;
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
    return moe_safetensors_write_params(path, &m->params, refs, n, meta, n_meta, err);
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
    moe_params_release(&m->params);
    memset(m, 0, sizeof *m);
}

static size_t argmax(const float *v, size_t n)
{
    size_t best = 0;
    for (size_t i = 1; i < n; i++)
        if (v[i] > v[best])
            best = i;
    return best;
}

void moe_stats_add_predictions(struct moe_stats *s, const float *pred, const float *target, const int32_t *label,
                               size_t T, size_t O)
{
    for (size_t t = 0; t < T; t++) {
        const float *pt = pred + t * O;
        for (size_t o = 0; o < O; o++) {
            double r = (double)pt[o] - target[t * O + o];
            s->sq_err += r * r;
        }
        if (label && argmax(pt, O) == (size_t)label[t])
            s->correct++;
    }
    s->n += T;
}

void moe_stats_add_gates(struct moe_stats *s, const float *p, const int32_t *group, size_t T)
{
    size_t E = s->n_expert;
    for (size_t t = 0; t < T; t++) {
        const float *pt = p + t * E;
        double h = 0.0;
        for (size_t e = 0; e < E; e++) {
            if (pt[e] > 0.0f)
                h -= (double)pt[e] * log((double)pt[e]);
            s->gate_sum[e] += pt[e];
        }
        s->gate_entropy += h;
        if (group && s->contingency && (size_t)group[t] < s->n_group)
            s->contingency[argmax(pt, E) * s->n_group + (size_t)group[t]]++;
    }
}
