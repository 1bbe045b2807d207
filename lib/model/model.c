// model.c: model construction by name, shared initialisation and the
// evaluation statistics every model fills (see model.h).
#include "model/model.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"
#include "io/config.h"

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

void moe_stats_reset(struct moe_stats *s)
{
    s->n = 0;
    s->loss = s->sq_err = s->gate_entropy = 0.0;
    s->correct = 0;
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
    memset(s, 0, sizeof *s);
}

double moe_stats_expert_region_mi(const struct moe_stats *s)
{
    // I(expert; group) = sum_{e,g} p(e,g) log2( p(e,g) / (p(e) p(g)) )
    if (!s->contingency || s->n == 0)
        return 0.0;
    size_t E = s->n_expert, G = s->n_group;
    double n = 0.0, mi = 0.0;
    double *pe = calloc(E, sizeof *pe), *pg = calloc(G, sizeof *pg);
    if (!pe || !pg) {
        free(pe);
        free(pg);
        return NAN;
    }
    for (size_t e = 0; e < E; e++)
        for (size_t g = 0; g < G; g++) {
            double c = (double)s->contingency[e * G + g];
            pe[e] += c;
            pg[g] += c;
            n += c;
        }
    for (size_t e = 0; e < E; e++)
        for (size_t g = 0; g < G; g++) {
            double c = (double)s->contingency[e * G + g];
            if (c > 0)
                mi += c / n * log2(c * n / (pe[e] * pg[g]));
        }
    free(pe);
    free(pg);
    return mi;
}

size_t moe_stats_active_experts(const struct moe_stats *s, double threshold)
{
    size_t k = 0;
    for (size_t e = 0; e < s->n_expert; e++)
        if (s->n && s->gate_sum[e] / (double)s->n > threshold)
            k++;
    return k;
}

void moe_init_uniform(struct moe_params *p, int idx, uint64_t seed, float scale)
{
    const struct moe_tensor *t = &p->t[idx];
    float bound = scale / sqrtf((float)t->shape[t->ndim - 1]);
    struct moe_rng r = moe_rng_make(seed, MOE_RNG_INIT, moe_hash32(t->name));
    moe_rng_fill_uniform(&r, moe_params_data(p, idx), t->numel, -bound, bound);
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
    int rc;
    if (strcmp(type, "mixture") == 0)
        rc = moe_mixture_create(ret, cfg, loss, err);
    else if (strcmp(type, "mlp") == 0)
        rc = moe_mlp_create(ret, cfg, loss, err);
    else
        rc = moe_error(err, MOE_ECONFIG, "key 'model.type': unknown model '%s'", type);
    if (rc)
        moe_model_release(ret);
    return rc;
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
