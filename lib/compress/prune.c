// prune.c: expert selection, FFN unit scores and masks (prune.h).
// Nothing here prints or exits.
#include "compress/prune.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"

// Increasing score, then decreasing index: the first n_drop entries are dropped.
struct ranked {
    double s;
    size_t i;
};
static int by_score(const void *a, const void *b)
{
    const struct ranked *x = a, *y = b;
    if (x->s != y->s)
        return x->s < y->s ? -1 : 1;
    return x->i > y->i ? -1 : x->i < y->i ? 1 : 0;
}

int moe_prune_select(const double *score, size_t n, size_t n_drop, uint8_t *drop, struct moe_err *err)
{
    if (n_drop > n)
        return moe_error(err, MOE_EINVAL, "cannot drop %zu of %zu", n_drop, n);
    for (size_t i = 0; i < n; i++)
        if (isnan(score[i]))
            return moe_error(err, MOE_EINVAL, "score %zu is NaN", i);
    struct ranked *r = malloc((n ? n : 1) * sizeof *r);
    if (!r)
        return moe_error(err, MOE_ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++)
        r[i] = (struct ranked){ score[i], i };
    qsort(r, n, sizeof *r, by_score); // a total order: the result does not depend on qsort
    memset(drop, 0, n);
    for (size_t k = 0; k < n_drop; k++)
        drop[r[k].i] = 1;
    free(r);
    return 0;
}

void moe_prune_random_scores(double *score, size_t n, uint64_t seed, uint32_t stream)
{
    struct moe_rng r = moe_rng_make(seed, MOE_RNG_PRUNE, stream);
    for (size_t i = 0; i < n; i++)
        score[i] = moe_rng_uniform(&r, i);
}

void moe_prune_gather_rows(float *dst, const float *src, size_t n_rows, size_t row, const uint8_t *drop)
{
    size_t k = 0;
    for (size_t i = 0; i < n_rows; i++)
        if (!drop[i])
            memcpy(dst + k++ * row, src + i * row, row * sizeof *dst);
}

// ---------------------------------------------------------------- FFN units

static int find_suffix(const struct moe_params *p, const char *base, const char *suffix)
{
    char name[MOE_NAME_MAX + 8];
    snprintf(name, sizeof name, "%s%s", base, suffix);
    return moe_params_find(p, name);
}

static int same_dims(const struct moe_tensor *a, const struct moe_tensor *b)
{
    if (a->ndim != b->ndim)
        return 0;
    for (int d = 0; d < a->ndim; d++)
        if (a->shape[d] != b->shape[d])
            return 0;
    return 1;
}

size_t moe_ffn_find(const struct moe_params *p, struct moe_ffn *ret, size_t max)
{
    size_t n = 0;
    for (size_t i = 0; i < p->n; i++) {
        const struct moe_tensor *w1 = &p->t[i];
        size_t len = strlen(w1->name);
        if (len < 4 || strcmp(w1->name + len - 3, ".w1") != 0 || (w1->ndim != 2 && w1->ndim != 3))
            continue;
        struct moe_ffn f;
        memset(&f, 0, sizeof f);
        snprintf(f.name, sizeof f.name, "%.*s", (int)(len - 3), w1->name);
        f.t[MOE_FFN_W1] = (int)i;
        f.t[MOE_FFN_W3] = find_suffix(p, f.name, ".w3");
        f.t[MOE_FFN_W2] = find_suffix(p, f.name, ".w2");
        f.t[MOE_FFN_B1] = find_suffix(p, f.name, ".b1");
        int three = w1->ndim == 3;
        f.M = three ? w1->shape[0] : 1;
        f.F = w1->shape[three];
        f.D = w1->shape[three + 1];
        if (f.t[MOE_FFN_W2] < 0)
            continue;
        const struct moe_tensor *w2 = &p->t[f.t[MOE_FFN_W2]];
        // w2 is (M,) D', F: its last dimension is the units (D' may differ from D: the mixture's outputs)
        if (w2->ndim != w1->ndim || (three && w2->shape[0] != f.M) || w2->shape[w2->ndim - 1] != f.F)
            continue;
        if (f.t[MOE_FFN_W3] >= 0 && !same_dims(&p->t[f.t[MOE_FFN_W3]], w1))
            f.t[MOE_FFN_W3] = -1;
        if (f.t[MOE_FFN_B1] >= 0) {
            const struct moe_tensor *b1 = &p->t[f.t[MOE_FFN_B1]];
            if (b1->ndim != w1->ndim - 1 || (three && b1->shape[0] != f.M) || b1->shape[b1->ndim - 1] != f.F)
                f.t[MOE_FFN_B1] = -1;
        }
        if (n < max)
            ret[n] = f;
        n++;
    }
    return n;
}

// Calls fn(ctx, unit, element index in the registry) for every weight of every unit.
#define FOR_UNIT_WEIGHTS(p, f, BODY)                                                              \
    do {                                                                                          \
        for (int k_ = 0; k_ < MOE_FFN_N; k_++) {                                                  \
            if ((f)->t[k_] < 0)                                                                   \
                continue;                                                                         \
            const struct moe_tensor *t_ = &(p)->t[(f)->t[k_]];                                    \
            size_t per_m_ = t_->numel / (f)->M, cols_ = t_->shape[t_->ndim - 1];                  \
            for (size_t m_ = 0; m_ < (f)->M; m_++)                                                \
                for (size_t e_ = 0; e_ < per_m_; e_++) {                                          \
                    /* w1, w3: rows are units; w2: columns; b1: elements */                       \
                    size_t j_ = k_ == MOE_FFN_W2 ? e_ % cols_ : k_ == MOE_FFN_B1 ? e_ : e_ / cols_; \
                    size_t unit = m_ * (f)->F + j_, at = t_->offset + m_ * per_m_ + e_;           \
                    BODY;                                                                         \
                }                                                                                 \
        }                                                                                         \
    } while (0)

void moe_ffn_scores(const struct moe_params *p, const struct moe_ffn *f, enum moe_neuron_score kind,
                    const float *grad, double *score)
{
    size_t U = f->M * f->F;
    memset(score, 0, U * sizeof *score);
    FOR_UNIT_WEIGHTS(p, f, {
        double w = p->data[at];
        score[unit] += kind == MOE_NEURON_L1 ? fabs(w) : kind == MOE_NEURON_L2 ? w * w : w * (double)grad[at];
    });
    for (size_t u = 0; u < U; u++)
        score[u] = kind == MOE_NEURON_L2 ? sqrt(score[u]) : fabs(score[u]);
}

void moe_ffn_apply_mask(struct moe_params *p, const struct moe_ffn *f, const uint8_t *mask)
{
    FOR_UNIT_WEIGHTS(p, f, {
        if (mask[unit])
            p->data[at] = 0.0f;
    });
}

size_t moe_params_zeros(const struct moe_params *p, int i)
{
    const float *w = moe_params_data(p, i);
    size_t z = 0;
    for (size_t j = 0; j < p->t[i].numel; j++)
        z += w[j] == 0.0f;
    return z;
}

// ---------------------------------------------------------------- masks

void moe_ffn_masks_release(struct moe_ffn_masks *k)
{
    if (!k)
        return;
    for (size_t i = 0; k->mask && i < k->n; i++)
        free(k->mask[i]);
    free(k->mask);
    free(k->ffn);
    free(k->name);
    memset(k, 0, sizeof *k);
}

int moe_ffn_masks_init(struct moe_ffn_masks *k, const struct moe_params *p, struct moe_err *err)
{
    memset(k, 0, sizeof *k);
    size_t n = moe_ffn_find(p, NULL, 0);
    if (!n)
        return 0;
    k->ffn = calloc(n, sizeof *k->ffn);
    k->mask = calloc(n, sizeof *k->mask);
    k->name = calloc(n, sizeof *k->name);
    if (!k->ffn || !k->mask || !k->name) {
        moe_ffn_masks_release(k);
        return moe_error(err, MOE_ENOMEM, "out of memory for %zu FFN masks", n);
    }
    k->n = n;
    moe_ffn_find(p, k->ffn, n);
    for (size_t i = 0; i < n; i++) {
        size_t U = k->ffn[i].M * k->ffn[i].F;
        snprintf(k->name[i], sizeof k->name[i], "%s%s", k->ffn[i].name, MOE_PRUNED_SUFFIX);
        if (!(k->mask[i] = calloc(U ? U : 1, 1))) {
            moe_ffn_masks_release(k);
            return moe_error(err, MOE_ENOMEM, "out of memory for %zu FFN masks", n);
        }
        k->units += U;
    }
    return 0;
}

static int mask_dims(const struct moe_ffn *f, const struct moe_params *p, size_t shape[2])
{
    int two = p->t[f->t[MOE_FFN_W1]].ndim == 2;
    shape[0] = two ? f->F : f->M;
    shape[1] = f->F;
    return two ? 1 : 2;
}

int moe_ffn_masks_read(struct moe_ffn_masks *k, const struct moe_st_file *f, const struct moe_params *p,
                       struct moe_err *err)
{
    for (int pass = 0; pass < 2; pass++) // every tensor checked before any mask changes
        for (size_t i = 0; i < k->n; i++) {
            const struct moe_st_entry *e = moe_safetensors_find(f, k->name[i]);
            if (!e)
                continue;
            const struct moe_ffn *x = &k->ffn[i];
            size_t U = x->M * x->F, shape[2];
            int nd = mask_dims(x, p, shape);
            if (pass) {
                memcpy(k->mask[i], e->data, U);
                continue;
            }
            if (e->dtype != MOE_U8 || e->ndim != nd || e->shape[0] != shape[0] || (nd == 2 && e->shape[1] != shape[1])) {
                char want[64];
                if (nd == 2)
                    snprintf(want, sizeof want, "(%zu, %zu)", shape[0], shape[1]);
                else
                    snprintf(want, sizeof want, "(%zu)", shape[0]);
                return moe_safetensors_fail(err, MOE_EFORMAT, f->path, "tensor '%s': expected U8 pruning flags of shape %s, one per unit of the FFN '%s'",
                                            e->name, want, x->name);
            }
            const uint8_t *v = e->data;
            for (size_t u = 0; u < U; u++)
                if (v[u] > 1)
                    return moe_safetensors_fail(err, MOE_EFORMAT, f->path, "tensor '%s': element %zu is %u (pruning flags are 0 or 1)",
                                                e->name, u, (unsigned)v[u]);
        }
    return 0;
}

size_t moe_ffn_masks_refs(const struct moe_ffn_masks *k, const struct moe_params *p, struct moe_st_ref *refs)
{
    for (size_t i = 0; i < k->n; i++) {
        refs[i] = (struct moe_st_ref){ .name = k->name[i], .dtype = MOE_U8, .data = k->mask[i] };
        refs[i].ndim = mask_dims(&k->ffn[i], p, refs[i].shape);
    }
    return k->n;
}

size_t moe_ffn_masks_pruned(const struct moe_ffn_masks *k, size_t i)
{
    size_t c = 0, lo = i < k->n ? i : 0, hi = i < k->n ? i + 1 : k->n;
    for (size_t j = lo; j < hi; j++)
        for (size_t u = 0; u < k->ffn[j].M * k->ffn[j].F; u++)
            c += k->mask[j][u];
    return c;
}

void moe_ffn_masks_apply(const struct moe_ffn_masks *k, struct moe_params *p)
{
    for (size_t i = 0; i < k->n; i++)
        moe_ffn_apply_mask(p, &k->ffn[i], k->mask[i]);
}

void moe_ffn_masks_dead(const struct moe_ffn_masks *k, const struct moe_params *p, uint8_t *dead)
{
    memset(dead, 0, p->numel);
    for (size_t i = 0; i < k->n; i++) {
        const uint8_t *mask = k->mask[i];
        FOR_UNIT_WEIGHTS(p, &k->ffn[i], { dead[at] = mask[unit]; });
    }
}

int moe_ffn_masks_grow(struct moe_ffn_masks *k, struct moe_params *p, enum moe_neuron_score kind,
                       const float *grad, double fraction, int global, struct moe_err *err)
{
    if (!(fraction >= 0.0 && fraction < 1.0))
        return moe_error(err, MOE_EINVAL, "a pruning fraction must be in [0, 1), got %g", fraction);
    double *score = malloc((k->units ? k->units : 1) * sizeof *score);
    uint8_t *drop = malloc(k->units ? k->units : 1);
    int rc = 0;
    if (!score || !drop) {
        rc = moe_error(err, MOE_ENOMEM, "out of memory for %zu unit scores", k->units);
        goto out;
    }
    // the pruned units score -1 (live scores are >= 0), so they are dropped first
    for (size_t i = 0, at = 0; i < k->n; at += k->ffn[i].M * k->ffn[i].F, i++) {
        moe_ffn_scores(p, &k->ffn[i], kind, grad, score + at);
        for (size_t u = 0; u < k->ffn[i].M * k->ffn[i].F; u++)
            if (k->mask[i][u])
                score[at + u] = -1.0;
    }
    for (size_t i = 0, at = 0; !global && !rc && i < k->n; i++) {
        size_t U = k->ffn[i].M * k->ffn[i].F, want = (size_t)floor(fraction * (double)U),
               have = moe_ffn_masks_pruned(k, i);
        rc = moe_prune_select(score + at, U, want > have ? want : have, drop + at, err);
        at += U;
    }
    if (global && !rc) {
        size_t want = (size_t)floor(fraction * (double)k->units), have = moe_ffn_masks_pruned(k, k->n);
        rc = moe_prune_select(score, k->units, want > have ? want : have, drop, err);
    }
    for (size_t i = 0, at = 0; !rc && i < k->n; i++) {
        size_t U = k->ffn[i].M * k->ffn[i].F;
        memcpy(k->mask[i], drop + at, U);
        moe_ffn_apply_mask(p, &k->ffn[i], k->mask[i]);
        at += U;
    }
out:
    free(score);
    free(drop);
    return rc;
}

int moe_prune_schedule(double final, uint64_t start, uint64_t n, uint64_t every, uint64_t t, double *ret)
{
    if (final <= 0.0 || n == 0 || every == 0 || t <= start || t - start > n)
        return 0;
    uint64_t d = t - start;
    if (d % every != 0 && d != n)
        return 0;
    double f = 1.0 - (double)d / (double)n;
    *ret = final * (1.0 - f * f * f);
    return 1;
}
