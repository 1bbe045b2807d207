// dataset.c: allocation and release of in-memory data sets, and per-feature
// standardisation (see dataset.h).
// Not a reader: the file formats live in idx.c (IDX), table.c (CSV/TSV) and
// synth.c (built-in synthetic tasks). Nothing here prints or exits.
// Ownership: x, y, label and group come from moe_alloc (free with moe_free);
// class_names and feature_names are malloc'd arrays of malloc'd strings
// (n_out and n_in entries, NULL entries allowed), freed with free(); win is
// malloc'd; text belongs to the corpus it came from.
#include "io/dataset.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/params.h"

static void free_names(char **names, size_t n)
{
    if (!names)
        return;
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
}

void moe_dataset_release(struct moe_dataset *d)
{
    if (!d)
        return;
    moe_free(d->x);
    moe_free(d->y);
    moe_free(d->label);
    moe_free(d->group);
    free_names(d->class_names, d->n_out);
    free_names(d->feature_names, d->n_in);
    free(d->win);
    memset(d, 0, sizeof *d);
}

int moe_dataset_split_tail(struct moe_dataset *d, size_t n, struct moe_dataset *ret, struct moe_err *err)
{
    if (n > d->n)
        return moe_error(err, MOE_EINVAL, "data set: %zu rows asked of %zu", n, d->n);
    int rc = moe_dataset_alloc(ret, d->task, n, d->n_in, d->n_out, d->group != NULL, err);
    if (rc)
        return rc;
    size_t first = d->n - n;
    memcpy(ret->x, d->x + first * d->n_in, n * d->n_in * sizeof *d->x);
    if (d->y)
        memcpy(ret->y, d->y + first * d->n_out, n * d->n_out * sizeof *d->y);
    if (d->label)
        memcpy(ret->label, d->label + first, n * sizeof *d->label);
    if (d->group)
        memcpy(ret->group, d->group + first, n * sizeof *d->group);
    ret->n_group = d->n_group;
    d->n = first;
    return 0;
}

int moe_dataset_alloc(struct moe_dataset *d, enum moe_task task, size_t n, size_t n_in, size_t n_out,
                      int with_group, struct moe_err *err)
{
    memset(d, 0, sizeof *d);
    if (task != MOE_TASK_REGRESSION && task != MOE_TASK_CLASSIFICATION)
        return moe_error(err, MOE_EINVAL, "data set: unknown task %d", (int)task);
    if (n_in == 0)
        return moe_error(err, MOE_EINVAL, "data set: n_in must be > 0");
    if (n_out == 0)
        return moe_error(err, MOE_EINVAL, "data set: n_out must be > 0");
    if (task == MOE_TASK_CLASSIFICATION && n_out > INT32_MAX)
        return moe_error(err, MOE_EINVAL, "data set: %zu classes is too many", n_out);
    if (n > SIZE_MAX / n_in || n > SIZE_MAX / n_out)
        return moe_error(err, MOE_ENOMEM, "data set: %zu rows of %zu features overflows", n, n_in);
    d->task = task;
    d->n = n;
    d->n_in = n_in;
    d->n_out = n_out;
    d->x = moe_alloc(n * n_in, sizeof(float));
    int bad = d->x == NULL;
    if (task == MOE_TASK_REGRESSION) {
        d->y = moe_alloc(n * n_out, sizeof(float));
        bad |= d->y == NULL;
    } else {
        d->label = moe_alloc(n, sizeof(int32_t));
        bad |= d->label == NULL;
    }
    if (with_group) {
        d->group = moe_alloc(n, sizeof(int32_t));
        bad |= d->group == NULL;
    }
    if (bad) {
        moe_dataset_release(d);
        return moe_error(err, MOE_ENOMEM, "data set: out of memory for %zu rows x %zu features", n, n_in);
    }
    return 0;
}

int moe_standardize_fit(struct moe_standardize *ret, const struct moe_dataset *train, struct moe_err *err)
{
    memset(ret, 0, sizeof *ret);
    if (!train || train->n == 0 || train->n_in == 0 || !train->x)
        return moe_error(err, MOE_EINVAL, "cannot fit standardisation on an empty data set");
    size_t n = train->n, d = train->n_in;
    double *sum = calloc(d, sizeof *sum), *sq = calloc(d, sizeof *sq);
    ret->mean = moe_alloc(d, sizeof(float));
    ret->std = moe_alloc(d, sizeof(float));
    if (!sum || !sq || !ret->mean || !ret->std) {
        free(sum);
        free(sq);
        moe_standardize_release(ret);
        return moe_error(err, MOE_ENOMEM, "out of memory fitting standardisation");
    }
    // Two passes (mean, then squared deviations) for accuracy.
    for (size_t i = 0; i < n; i++) {
        const float *row = train->x + i * d;
        for (size_t j = 0; j < d; j++)
            sum[j] += row[j];
    }
    for (size_t j = 0; j < d; j++)
        sum[j] /= (double)n;
    for (size_t i = 0; i < n; i++) {
        const float *row = train->x + i * d;
        for (size_t j = 0; j < d; j++) {
            double dev = row[j] - sum[j];
            sq[j] += dev * dev;
        }
    }
    for (size_t j = 0; j < d; j++) {
        double sd = sqrt(sq[j] / (double)n);
        if (!(sd >= 1e-12)) // also catches NaN
            sd = 1.0;
        ret->mean[j] = (float)sum[j];
        ret->std[j] = (float)sd;
    }
    ret->n_in = d;
    free(sum);
    free(sq);
    return 0;
}

// A statistics/data width mismatch is a caller bug; the set is left unchanged.
void moe_standardize_apply(const struct moe_standardize *s, struct moe_dataset *d)
{
    if (!s || !d || !s->mean || !s->std || s->n_in != d->n_in || !d->x)
        return;
    size_t w = d->n_in;
    for (size_t i = 0; i < d->n; i++) {
        float *row = d->x + i * w;
        for (size_t j = 0; j < w; j++)
            row[j] = (float)(((double)row[j] - (double)s->mean[j]) / (double)s->std[j]);
    }
}

void moe_standardize_release(struct moe_standardize *s)
{
    if (!s)
        return;
    moe_free(s->mean);
    moe_free(s->std);
    memset(s, 0, sizeof *s);
}
