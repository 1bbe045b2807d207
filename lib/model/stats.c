// stats.c: the evaluation statistics every model fills during `run` (struct
// moe_stats, model.h): loss and prediction sums, gate usage, the expert-region
// contingency table, routing accumulators and per-language sums.
// Not here: the models' forward passes that feed them, the metrics rows built
// from them (train/trainer.c).
#include "model/model.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "moe/route_stats.h"

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

int moe_stats_init_tokens(struct moe_stats *s, size_t n_vocab, struct moe_err *err)
{
    s->n_vocab = n_vocab;
    s->tok_count = calloc(n_vocab ? n_vocab : 1, sizeof *s->tok_count);
    s->tok_correct = calloc(n_vocab ? n_vocab : 1, sizeof *s->tok_correct);
    s->tok_loss = calloc(n_vocab ? n_vocab : 1, sizeof *s->tok_loss);
    if (!s->tok_count || !s->tok_correct || !s->tok_loss)
        return moe_error(err, MOE_ENOMEM, "out of memory for per-token statistics (%zu tokens)", n_vocab);
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
    if (s->n_vocab) {
        memset(s->tok_count, 0, s->n_vocab * sizeof *s->tok_count);
        memset(s->tok_correct, 0, s->n_vocab * sizeof *s->tok_correct);
        memset(s->tok_loss, 0, s->n_vocab * sizeof *s->tok_loss);
    }
    if (s->gate_sum)
        memset(s->gate_sum, 0, s->n_expert * sizeof *s->gate_sum);
    if (s->contingency)
        memset(s->contingency, 0, s->n_expert * s->n_group * sizeof *s->contingency);
}

// dst += src, field by field (every field is a sum over rows or batches).
static void add_d(double *a, const double *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        a[i] += b[i];
}

static void add_u(uint64_t *a, const uint64_t *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        a[i] += b[i];
}

void moe_stats_merge(struct moe_stats *dst, const struct moe_stats *src)
{
    dst->n += src->n;
    dst->loss += src->loss;
    dst->sq_err += src->sq_err;
    dst->correct += src->correct;
    dst->gate_entropy += src->gate_entropy;
    if (dst->gate_sum && src->gate_sum)
        add_d(dst->gate_sum, src->gate_sum, dst->n_expert);
    if (dst->contingency && src->contingency)
        add_u(dst->contingency, src->contingency, dst->n_expert * dst->n_group);
    for (size_t l = 0; l < dst->n_route && l < src->n_route; l++) {
        struct moe_route_acc *a = &dst->route[l];
        const struct moe_route_acc *b = &src->route[l];
        if (b->tokens)
            a->has_probs = b->has_probs;
        a->tokens += b->tokens;
        a->weight += b->weight;
        a->entropy += b->entropy;
        a->top1 += b->top1;
        a->lse += b->lse;
        a->aux += b->aux;
        a->z += b->z;
        add_d(a->routed, b->routed, a->E);
        add_d(a->dropped, b->dropped, a->E);
        add_d(a->gate_sum, b->gate_sum, a->E);
        add_d(a->prob_sum, b->prob_sum, a->E);
        if (a->cosel && b->cosel)
            add_u(a->cosel, b->cosel, a->E * a->E);
        if (a->label && b->label)
            add_u(a->label, b->label, a->E * a->G);
    }
    dst->bytes += src->bytes;
    if (dst->n_lang && src->n_lang == dst->n_lang) {
        add_d(dst->lang_loss, src->lang_loss, dst->n_lang);
        add_u(dst->lang_tokens, src->lang_tokens, dst->n_lang);
        add_d(dst->lang_bytes, src->lang_bytes, dst->n_lang);
    }
    if (dst->n_vocab && src->n_vocab == dst->n_vocab) {
        add_u(dst->tok_count, src->tok_count, dst->n_vocab);
        add_u(dst->tok_correct, src->tok_correct, dst->n_vocab);
        add_d(dst->tok_loss, src->tok_loss, dst->n_vocab);
    }
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
    free(s->tok_count);
    free(s->tok_correct);
    free(s->tok_loss);
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
