// moebert.c: dense FFNs into experts by neuron importance (moebert.h).
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"
#include "train/moebert.h"
#include "train/train.h"

void moe_moebert_release(struct moe_moebert *mb)
{
    for (size_t k = 0; mb->layer && k < mb->n; k++) {
        struct moe_moebert_layer *ly = &mb->layer[k];
        free(ly->order);
        free(ly->expert);
        free(ly->rank);
        free(ly->slots);
    }
    free(mb->layer);
    free(mb->table);
    memset(mb, 0, sizeof *mb);
}

static int find(const struct moe_model *m, const char *fmt, size_t l)
{
    char name[MOE_NAME_MAX];
    snprintf(name, sizeof name, fmt, l);
    return moe_params_find(&m->params, name);
}

// Blocks of a model: one more than the largest l of a "layers.<l>." tensor.
static size_t n_blocks(const struct moe_model *m)
{
    size_t L = 0, l;
    for (size_t i = 0; i < m->params.n; i++)
        if (sscanf(m->params.t[i].name, "layers.%zu.", &l) == 1 && l + 1 > L)
            L = l + 1;
    return L;
}

int moe_moebert_plan(struct moe_moebert *mb, const struct moe_model *student, const struct moe_model *teacher,
                     size_t shared, int random, struct moe_err *err)
{
    memset(mb, 0, sizeof *mb);
    const struct moe_params *sp = &student->params, *tp = &teacher->params;
    if (strcmp(student->ops->type, teacher->ops->type) != 0 || !student->hidden_per_row ||
        student->hidden_per_row != teacher->hidden_per_row)
        return moe_error(err, MOE_ESHAPE, "moebert: the teacher (%s) and the student (%s) must be mlp-moe or transformer models of the same type, depth and width",
                         teacher->ops->type, student->ops->type);
    mb->L = n_blocks(teacher);
    mb->s = shared;
    mb->random = random;
    if (!(mb->layer = calloc(mb->L ? mb->L : 1, sizeof *mb->layer)))
        return moe_error(err, MOE_ENOMEM, "out of memory");
    for (size_t l = 0; l < mb->L; l++) {
        int iw = find(student, "layers.%zu.moe.experts.w1", l);
        if (iw < 0)
            continue;
        int tw = find(teacher, "layers.%zu.ffn.w1", l);
        if (tw < 0)
            return moe_error(err, MOE_ESHAPE, "moebert: the student's block %zu is sparse, but the teacher's is not a dense FFN (no 'layers.%zu.ffn.w1')",
                             l, l);
        if (find(student, "layers.%zu.moe.shared.w1", l) >= 0)
            return moe_error(err, MOE_ECONFIG, "moebert: the student has shared experts (model.n_expert_shared); MoEBERT shares neurons instead (distill.shared)");
        const struct moe_tensor *st = &sp->t[iw], *tt = &tp->t[tw];
        size_t E = st->shape[0], F = st->shape[1], D = st->shape[2], Fd = tt->shape[0];
        if (tt->shape[1] != D)
            return moe_error(err, MOE_ESHAPE, "moebert: block %zu: the teacher's width is %zu, the student's %zu", l,
                             tt->shape[1], D);
        int swiglu = find(student, "layers.%zu.moe.experts.w3", l) >= 0;
        if (swiglu != (find(teacher, "layers.%zu.ffn.w3", l) >= 0))
            return moe_error(err, MOE_ESHAPE, "moebert: block %zu: teacher and student differ in model.ffn_activation (swiglu or not)", l);
        if (mb->n && (E != mb->E || F != mb->F || Fd != mb->Fd))
            return moe_error(err, MOE_ESHAPE, "moebert: block %zu differs in shape from block %zu", l, mb->layer[0].block);
        mb->E = E, mb->F = F, mb->D = D, mb->Fd = Fd, mb->swiglu = swiglu;
        mb->layer[mb->n++].block = l;
    }
    if (!mb->n)
        return moe_error(err, MOE_ECONFIG, "moebert: the student has no sparse block (model.moe_every) to convert");
    size_t E = mb->E, F = mb->F, Fd = mb->Fd, s = mb->s;
    if (s > F || s > Fd || Fd - s < E * (F - s))
        return moe_error(err, MOE_ECONFIG, "moebert: %zu experts of n_ff %zu with %zu shared neurons need %zu of the teacher's %zu neurons per block (distill.shared, model.n_ff)",
                         E, F, s, s + E * (F > s ? F - s : 0), Fd);
    if (!(mb->table = calloc(mb->L * Fd, sizeof *mb->table)))
        return moe_error(err, MOE_ENOMEM, "out of memory");
    for (size_t k = 0; k < mb->n; k++) {
        struct moe_moebert_layer *ly = &mb->layer[k];
        ly->importance = mb->table + ly->block * Fd;
        ly->order = malloc(Fd * sizeof *ly->order);
        ly->expert = malloc(Fd * sizeof *ly->expert);
        ly->rank = malloc(Fd * sizeof *ly->rank);
        ly->slots = malloc(E * F * sizeof *ly->slots);
        if (!ly->order || !ly->expert || !ly->rank || !ly->slots)
            return moe_error(err, MOE_ENOMEM, "out of memory");
    }
    return 0;
}

int moe_moebert_importance(struct moe_moebert *mb, struct moe_model *teacher, const struct moe_dataset *train,
                           size_t bs, uint64_t seed, struct moe_err *err)
{
    int lm = train->task == MOE_TASK_LM;
    if (bs > teacher->max_batch)
        bs = teacher->max_batch;
    if (bs == 0)
        return moe_error(err, MOE_EINVAL, "moebert: the teacher takes no rows");
    struct moe_lm_batch lb = { 0 };
    int rc = lm ? moe_lm_batch_alloc(&lb, bs, train->n_ctx, err) : 0;
    for (size_t start = 0; !rc && start < train->n; start += bs) {
        size_t n = train->n - start < bs ? train->n - start : bs;
        struct moe_batch b;
        if (lm) {
            b = moe_lm_batch_fill(train, &lb, seed, 1, start, n);
        } else {
            memset(&b, 0, sizeof b);
            b.n = n;
            b.x = train->x + start * train->n_in;
            b.y = train->y ? train->y + start * train->n_out : NULL;
            b.label = train->label ? train->label + start : NULL;
            b.group = train->group ? train->group + start : NULL;
        }
        struct moe_batch_kd kd = { .ffn_importance = mb->table };
        b.kd = &kd;
        moe_params_zero_grad(&teacher->params);
        rc = moe_model_run(teacher, &b, 1, NULL, err);
    }
    moe_params_zero_grad(&teacher->params);
    if (lm)
        moe_lm_batch_release(&lb);
    return rc;
}

// Decreasing importance, then increasing index (a total order: the result does not depend on qsort).
static const double *sort_key;
static int by_importance(const void *a, const void *b)
{
    uint32_t i = *(const uint32_t *)a, j = *(const uint32_t *)b;
    if (sort_key[i] != sort_key[j])
        return sort_key[i] > sort_key[j] ? -1 : 1;
    return i < j ? -1 : i > j;
}

void moe_moebert_split(struct moe_moebert *mb, uint64_t seed)
{
    size_t E = mb->E, F = mb->F, Fd = mb->Fd, s = mb->s;
    for (size_t k = 0; k < mb->n; k++) {
        struct moe_moebert_layer *ly = &mb->layer[k];
        if (mb->random) {
            struct moe_rng r = moe_rng_make(seed, MOE_RNG_MOEBERT, (uint32_t)ly->block);
            moe_rng_permutation(&r, ly->order, Fd);
        } else {
            for (size_t j = 0; j < Fd; j++)
                ly->order[j] = (uint32_t)j;
            sort_key = ly->importance;
            qsort(ly->order, Fd, sizeof *ly->order, by_importance);
        }
        ly->dropped = 0;
        for (size_t i = 0; i < Fd; i++) {
            uint32_t j = ly->order[i];
            ly->rank[j] = (uint32_t)i;
            if (i < s) {
                ly->expert[j] = MOE_MOEBERT_SHARED;
                for (size_t e = 0; e < E; e++)
                    ly->slots[e * F + i] = (int32_t)j;
            } else if (i - s < E * (F - s)) {
                size_t e = (i - s) % E, slot = s + (i - s) / E;
                ly->expert[j] = (int32_t)e;
                ly->slots[e * F + slot] = (int32_t)j;
            } else {
                ly->expert[j] = MOE_MOEBERT_DROPPED;
                ly->dropped++;
            }
        }
    }
}

size_t moe_moebert_convert(const struct moe_moebert *mb, struct moe_model *student, const struct moe_model *teacher)
{
    struct moe_params *sp = &student->params;
    const struct moe_params *tp = &teacher->params;
    size_t copied = moe_params_copy_matching(sp, tp, NULL);
    size_t E = mb->E, F = mb->F, D = mb->D, Fd = mb->Fd;
    for (size_t k = 0; k < mb->n; k++) {
        const struct moe_moebert_layer *ly = &mb->layer[k];
        size_t l = ly->block;
        const float *t1 = moe_params_data(tp, find(teacher, "layers.%zu.ffn.w1", l));
        const float *t2 = moe_params_data(tp, find(teacher, "layers.%zu.ffn.w2", l));
        float *s1 = moe_params_data(sp, find(student, "layers.%zu.moe.experts.w1", l));
        float *s2 = moe_params_data(sp, find(student, "layers.%zu.moe.experts.w2", l));
        const float *t3 = mb->swiglu ? moe_params_data(tp, find(teacher, "layers.%zu.ffn.w3", l)) : NULL;
        float *s3 = mb->swiglu ? moe_params_data(sp, find(student, "layers.%zu.moe.experts.w3", l)) : NULL;
        for (size_t e = 0; e < E; e++)
            for (size_t f = 0; f < F; f++) {
                size_t j = (size_t)ly->slots[e * F + f];
                // w1, w3: (E, F, D) rows from (Fd, D); w2: (E, D, F) columns from (D, Fd)
                memcpy(s1 + (e * F + f) * D, t1 + j * D, D * sizeof(float));
                if (s3)
                    memcpy(s3 + (e * F + f) * D, t3 + j * D, D * sizeof(float));
                for (size_t d = 0; d < D; d++)
                    s2[(e * D + d) * F + f] = t2[d * Fd + j];
            }
    }
    return copied;
}
