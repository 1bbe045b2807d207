// checkpoint.c: training checkpoints that continue a run exactly (see train.h).
// A checkpoint is a model file (moe_model_save: weights, state tensors, the
// caller's extra tensors and metadata) plus what lives outside the model:
//   optim.m, optim.v     F32 (numel)  optimizer moments (absent for plain gd / sgd's v)
//   train.batch_stats    F64 (n)      the split=batch statistics accumulated since the last row
//   metadata train.*                  position: step, epoch, next_row, optimizer t, ...
// Counts in the statistics are stored as doubles: exact below 2^53.
// Not a general serialiser: the reader trusts only what it has checked against
// the model the config builds (lengths, shapes, dtypes), never the file alone.
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/safetensors.h"
#include "moe/route_stats.h"
#include "train/train.h"

// ---- the batch statistics as one flat F64 vector ----
// Layout: n, loss, sq_err, correct, gate_entropy, gate_sum (E), contingency (E·G),
// then per routed layer: tokens, weight, entropy, top1, lse, aux, z, routed (E),
// dropped (E), gate_sum (E), prob_sum (E), cosel (E·E, when kept), label (E·G, when kept);
// then for language models: bytes, lang_loss (n_lang), lang_tokens (n_lang), lang_bytes (n_lang).
// pack with out == NULL just counts.
size_t moe_stats_pack(const struct moe_stats *s, double *out)
{
    size_t k = 0;
#define PUT(v) do { if (out) out[k] = (double)(v); k++; } while (0)
#define PUTV(p, len) do { for (size_t i_ = 0; i_ < (len); i_++) PUT((p)[i_]); } while (0)
    PUT(s->n);
    PUT(s->loss);
    PUT(s->sq_err);
    PUT(s->correct);
    PUT(s->gate_entropy);
    if (s->gate_sum)
        PUTV(s->gate_sum, s->n_expert);
    if (s->contingency)
        PUTV(s->contingency, s->n_expert * s->n_group);
    for (size_t l = 0; l < s->n_route; l++) {
        const struct moe_route_acc *a = &s->route[l];
        PUT(a->tokens);
        PUT(a->weight);
        PUT(a->entropy);
        PUT(a->top1);
        PUT(a->lse);
        PUT(a->aux);
        PUT(a->z);
        PUTV(a->routed, a->E);
        PUTV(a->dropped, a->E);
        PUTV(a->gate_sum, a->E);
        PUTV(a->prob_sum, a->E);
        if (a->cosel)
            PUTV(a->cosel, a->E * a->E);
        if (a->label)
            PUTV(a->label, a->E * a->G);
    }
    if (s->n_lang) {
        PUT(s->bytes);
        PUTV(s->lang_loss, s->n_lang);
        PUTV(s->lang_tokens, s->n_lang);
        PUTV(s->lang_bytes, s->n_lang);
    }
#undef PUTV
#undef PUT
    return k;
}

// A stored count back as an integer; a file could hold anything, and casting a
// negative or huge double to an unsigned type is undefined, so clamp to [0, 2^53].
static uint64_t count_of(double v) { return v > 0.0 && v <= 9007199254740992.0 ? (uint64_t)v : 0; }

void moe_stats_unpack(struct moe_stats *s, const double *in)
{
    size_t k = 0;
#define GET(dst, type) (dst) = _Generic((dst), double: in[k], default: (type)count_of(in[k])), k++
#define GETV(p, len, type) do { for (size_t i_ = 0; i_ < (len); i_++) GET((p)[i_], type); } while (0)
    GET(s->n, size_t);
    GET(s->loss, double);
    GET(s->sq_err, double);
    GET(s->correct, size_t);
    GET(s->gate_entropy, double);
    if (s->gate_sum)
        GETV(s->gate_sum, s->n_expert, double);
    if (s->contingency)
        GETV(s->contingency, s->n_expert * s->n_group, uint64_t);
    for (size_t l = 0; l < s->n_route; l++) {
        struct moe_route_acc *a = &s->route[l];
        GET(a->tokens, uint64_t);
        GET(a->weight, double);
        GET(a->entropy, double);
        GET(a->top1, double);
        GET(a->lse, double);
        GET(a->aux, double);
        GET(a->z, double);
        GETV(a->routed, a->E, double);
        GETV(a->dropped, a->E, double);
        GETV(a->gate_sum, a->E, double);
        GETV(a->prob_sum, a->E, double);
        if (a->cosel)
            GETV(a->cosel, a->E * a->E, uint64_t);
        if (a->label)
            GETV(a->label, a->E * a->G, uint64_t);
    }
    if (s->n_lang) {
        GET(s->bytes, double);
        GETV(s->lang_loss, s->n_lang, double);
        GETV(s->lang_tokens, s->n_lang, uint64_t);
        GETV(s->lang_bytes, s->n_lang, double);
    }
#undef GETV
#undef GET
}

// ---- the position as metadata ----
enum { N_POS_META = 8 };

int moe_train_checkpoint_write(const char *path, struct moe_model *m, const struct moe_train_ckpt *ck,
                               const struct moe_st_ref *extra, size_t n_extra, const struct moe_st_meta *meta,
                               size_t n_meta, struct moe_err *err)
{
    const struct moe_optim *o = ck->opt;
    size_t n_stats = moe_stats_pack(ck->batch_stats, NULL);
    double *stats = malloc(n_stats * sizeof *stats);
    struct moe_st_ref *refs = calloc(n_extra + 4, sizeof *refs);
    struct moe_st_meta *mt = calloc(n_meta + N_POS_META + 2, sizeof *mt);
    char vals[N_POS_META][32], best_vals[2][32];
    int rc;
    if (!stats || !refs || !mt) {
        rc = moe_error(err, MOE_ENOMEM, "out of memory writing '%s'", path);
        goto out;
    }
    moe_stats_pack(ck->batch_stats, stats);
    size_t nr = 0;
    for (size_t i = 0; i < n_extra; i++)
        refs[nr++] = extra[i];
    if (ck->whole_m)
        refs[nr++] = *ck->whole_m;
    else if (o->m)
        refs[nr++] = (struct moe_st_ref){ .name = "optim.m", .dtype = MOE_F32, .ndim = 1, .shape = { o->numel }, .data = o->m };
    if (ck->whole_v)
        refs[nr++] = *ck->whole_v;
    else if (o->v)
        refs[nr++] = (struct moe_st_ref){ .name = "optim.v", .dtype = MOE_F32, .ndim = 1, .shape = { o->numel }, .data = o->v };
    refs[nr++] = (struct moe_st_ref){ .name = "train.batch_stats", .dtype = MOE_F64, .ndim = 1, .shape = { n_stats }, .data = stats };
    if (ck->whole_best) // train.select = best_valid_loss
        refs[nr++] = *ck->whole_best;
    else if (ck->best)
        refs[nr++] = (struct moe_st_ref){ .name = "train.best", .dtype = MOE_F32, .ndim = 1, .shape = { ck->best_n }, .data = ck->best };

    const struct moe_train_pos *p = &ck->pos;
    size_t nm = 0;
    for (size_t i = 0; i < n_meta; i++)
        mt[nm++] = meta[i];
    const char *keys[N_POS_META] = { "train.step", "train.epoch", "train.next_row", "train.optim_t",
                                     "train.criterion_epoch", "train.rows_seen", "train.seconds", "train.finished" };
    snprintf(vals[0], sizeof vals[0], "%" PRIu64, p->steps);
    snprintf(vals[1], sizeof vals[1], "%" PRIu64, p->epoch);
    snprintf(vals[2], sizeof vals[2], "%" PRIu64, p->next_row);
    snprintf(vals[3], sizeof vals[3], "%" PRIu64, o->t);
    snprintf(vals[4], sizeof vals[4], "%" PRId64, p->criterion_epoch);
    snprintf(vals[5], sizeof vals[5], "%" PRIu64, p->rows_seen);
    snprintf(vals[6], sizeof vals[6], "%.17g", p->train_seconds);
    snprintf(vals[7], sizeof vals[7], "%d", p->finished ? 1 : 0);
    for (int i = 0; i < N_POS_META; i++)
        mt[nm++] = (struct moe_st_meta){ keys[i], vals[i] };
    if (ck->best) {
        snprintf(best_vals[0], sizeof best_vals[0], "%" PRId64, ck->best_epoch);
        snprintf(best_vals[1], sizeof best_vals[1], "%.17g", ck->best_loss);
        mt[nm++] = (struct moe_st_meta){ "train.best_epoch", best_vals[0] };
        mt[nm++] = (struct moe_st_meta){ "train.best_loss", best_vals[1] };
    }
    rc = moe_model_save(m, path, refs, nr, mt, nm, err);
out:
    free(stats);
    free(refs);
    free(mt);
    return rc;
}

int moe_train_meta_count(const struct moe_st_file *f, const char *key, uint64_t *ret, struct moe_err *err)
{
    const char *v = moe_safetensors_meta(f, key);
    if (!v)
        return moe_error(err, MOE_EFORMAT, "%s: not a training checkpoint (no metadata '%s')", f->path, key);
    char *end;
    errno = 0;
    unsigned long long x = *v == '-' ? 0 : strtoull(v, &end, 10);
    char shown[64];
    if (*v == '-' || errno || end == v || *end)
        return moe_error(err, MOE_EFORMAT, "%s: metadata '%s' = '%s' is not a count", f->path, key,
                         moe_msg_str(v, shown, sizeof shown));
    *ret = x;
    return 0;
}

// train.criterion_epoch: a count, or -1 for none yet.
static int meta_epoch_or_none(const struct moe_st_file *f, const char *key, int64_t *ret, struct moe_err *err)
{
    const char *v = moe_safetensors_meta(f, key);
    if (v && strcmp(v, "-1") == 0) {
        *ret = -1;
        return 0;
    }
    uint64_t x;
    int rc = moe_train_meta_count(f, key, &x, err);
    if (!rc && x > INT64_MAX)
        rc = moe_error(err, MOE_EFORMAT, "%s: metadata '%s' is out of range", f->path, key);
    if (!rc)
        *ret = (int64_t)x;
    return rc;
}

int moe_train_best_read(const struct moe_st_file *f, float *best, size_t best_n, int64_t *best_epoch,
                        double *best_loss, struct moe_err *err)
{
    int rc = meta_epoch_or_none(f, "train.best_epoch", best_epoch, err);
    if (rc)
        return rc;
    const char *v = moe_safetensors_meta(f, "train.best_loss");
    char *end = NULL;
    *best_loss = v ? strtod(v, &end) : NAN;
    if (!v || end == v || *end)
        return moe_error(err, MOE_EFORMAT, "%s: metadata 'train.best_loss' is missing or not a number", f->path);
    if (*best_epoch < 0)
        return 0;
    if ((rc = moe_safetensors_load_ref(f, &(struct moe_st_ref){ .name = "train.best", .dtype = MOE_F32, .ndim = 1, .shape = { best_n }, .data = best }, err)))
        return rc;
    for (size_t i = 0; i < best_n; i++)
        if (!isfinite(best[i]))
            return moe_error(err, MOE_EFORMAT, "%s: tensor 'train.best' element %zu is not a finite number", f->path, i);
    return 0;
}

int moe_train_pos_read(const struct moe_st_file *f, struct moe_train_pos *ret, struct moe_err *err)
{
    struct moe_train_pos p = { 0 };
    uint64_t fin = 0, dummy;
    int rc;
    if ((rc = moe_train_meta_count(f, "train.step", &p.steps, err)) ||
        (rc = moe_train_meta_count(f, "train.epoch", &p.epoch, err)) ||
        (rc = moe_train_meta_count(f, "train.next_row", &p.next_row, err)) ||
        (rc = moe_train_meta_count(f, "train.optim_t", &dummy, err)) ||
        (rc = meta_epoch_or_none(f, "train.criterion_epoch", &p.criterion_epoch, err)) ||
        (rc = moe_train_meta_count(f, "train.rows_seen", &p.rows_seen, err)) ||
        (rc = moe_train_meta_count(f, "train.finished", &fin, err)))
        return rc;
    const char *sec = moe_safetensors_meta(f, "train.seconds");
    char *end = NULL;
    p.train_seconds = sec ? strtod(sec, &end) : 0.0;
    if (!sec || end == sec || *end || !(p.train_seconds >= 0.0))
        return moe_error(err, MOE_EFORMAT, "%s: metadata 'train.seconds' is missing or not a number", f->path);
    if (fin > 1)
        return moe_error(err, MOE_EFORMAT, "%s: metadata 'train.finished' must be 0 or 1", f->path);
    p.finished = (int)fin;
    *ret = p;
    return 0;
}

int moe_train_state_restore(const struct moe_st_file *f, struct moe_optim *o, struct moe_stats *batch_stats,
                            struct moe_err *err)
{
    uint64_t t;
    int rc = moe_train_meta_count(f, "train.optim_t", &t, err);
    if (rc)
        return rc;
    if (o->m && (rc = moe_safetensors_load_ref(f, &(struct moe_st_ref){ .name = "optim.m", .dtype = MOE_F32, .ndim = 1, .shape = { o->numel }, .data = o->m }, err)))
        return rc;
    if (o->v && (rc = moe_safetensors_load_ref(f, &(struct moe_st_ref){ .name = "optim.v", .dtype = MOE_F32, .ndim = 1, .shape = { o->numel }, .data = o->v }, err)))
        return rc;
    // the moments are weights of the update like any other: a NaN would reach every step
    const float *mom[2] = { o->m, o->v };
    static const char *const mom_name[2] = { "optim.m", "optim.v" };
    for (int k = 0; k < 2; k++)
        for (size_t i = 0; mom[k] && i < o->numel; i++)
            if (!isfinite(mom[k][i]))
                return moe_error(err, MOE_EFORMAT, "%s: tensor '%s' element %zu is %s, not a finite number", f->path,
                                 mom_name[k], i, isnan(mom[k][i]) ? "NaN" : mom[k][i] > 0 ? "+infinity" : "-infinity");
    size_t n = moe_stats_pack(batch_stats, NULL);
    double *buf = malloc(n * sizeof *buf);
    if (!buf)
        return moe_error(err, MOE_ENOMEM, "out of memory reading '%s'", f->path);
    rc = moe_safetensors_load_ref(f, &(struct moe_st_ref){ .name = "train.batch_stats", .dtype = MOE_F64, .ndim = 1, .shape = { n }, .data = buf }, err);
    if (!rc) { // NaN sums are legitimate (e.g. the aux value of a layer without one) and round-trip
        moe_stats_reset(batch_stats);
        moe_stats_unpack(batch_stats, buf);
        o->t = t;
    }
    free(buf);
    return rc;
}
