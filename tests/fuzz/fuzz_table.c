// fuzz_table.c: libFuzzer harness for the CSV / TSV table reader
// (lib/io/table.c, libcsv): moe_table_read with a spec chosen by the first
// input byte, then standardisation of the splits it returns.
// Input: one option byte, then the file bytes. Corpus:
// tests/fuzz/corpus/table/ (each seed starts with its option byte; most are
// printable, so the seeds read as text).
// Option byte, bit by bit:
//   0-1  delimiter: 0 = auto on a path without extension (comma), 1 = ',',
//        2 = tab, 3 = auto on a path ending in .tsv (tab)
//   2    task: 0 = classification, 1 = regression
//   3    columns: 0 = the Peterson & Barney set (F0 F1 F2 F3 Sex Speaker
//        Vowel), 1 = a small set (x y t label s)
//   4    classification: an explicit class list
//   5    split by a column's value (else random, by test_fraction)
//   6    row filters
//   7    test_fraction 0.5 (else 0)
// Checks beyond the sanitizers: failures carry a one-line message and a
// matching code; the splits have the spec's width, finite features and
// targets, labels within [0, n_out), the right class and feature names.
// fuzz-max-len: 4096
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fuzz_util.h"
#include "io/dataset.h"

struct colset {
    const char *features[2];
    const char *label[1];
    const char *targets[2];
    size_t n_targets;
    const char *classes[4];
    size_t n_classes;
    const char *where[2];
    const char *split;
    double train_range[2], test_range[2];
};

static const struct colset sets[2] = {
    {{"F1", "F2"}, {"Vowel"}, {"F3", "F0"}, 2, {"iy", "ih", "aa", "ah"}, 4, {"Sex=m|w", "F0<=300"}, "Speaker",
     {1, 50}, {51, 75}},
    {{"x", "y"}, {"label"}, {"t"}, 1, {"p", "q"}, 2, {"x>-1e9", "label != skip | none"}, "s", {0, 0.5}, {0.6, 1}},
};

// A path ending in ".tsv" for the memfd of slot 0, so the reader picks the
// delimiter from the extension: a symlink to /proc/self/fd/N (resolved when
// opened, by this process), made once per process.
static const char *tsv_path(const char *target)
{
    static char path[4096];
    if (!path[0]) {
        snprintf(path, sizeof path, "%s/table-%ld.tsv", fuzz_tmpdir(), (long)getpid());
        unlink(path);
        if (symlink(target, path) != 0) {
            perror("symlink");
            abort();
        }
    }
    return path;
}

static void check_split(const struct moe_dataset *d, const struct moe_table_spec *s, int train)
{
    if (train)
        FUZZ_CHECK(d->n > 0, "empty training split accepted");
    FUZZ_CHECK(d->task == s->task && d->n_in == s->n_features, "wrong task or width");
    if (d->n == 0 && !d->x)
        return;
    FUZZ_CHECK(d->x && d->feature_names, "missing features");
    for (size_t j = 0; j < d->n_in; j++)
        FUZZ_CHECK(d->feature_names[j] && strcmp(d->feature_names[j], s->features[j]) == 0, "feature name %zu", j);
    for (size_t i = 0; i < d->n * d->n_in; i++)
        FUZZ_CHECK(isfinite(d->x[i]), "x[%zu] = %g", i, d->x[i]);
    if (s->task == MOE_TASK_REGRESSION) {
        FUZZ_CHECK(d->n_out == s->n_targets && d->y && !d->label, "regression layout");
        for (size_t i = 0; i < d->n * d->n_out; i++)
            FUZZ_CHECK(isfinite(d->y[i]), "y[%zu] = %g", i, d->y[i]);
    } else {
        FUZZ_CHECK(d->label && !d->y && d->class_names && d->n_out >= 1, "classification layout");
        if (s->classes)
            FUZZ_CHECK(d->n_out == s->n_classes, "n_out %zu with %zu classes listed", d->n_out, s->n_classes);
        for (size_t i = 0; i < d->n; i++)
            FUZZ_CHECK(d->label[i] >= 0 && (size_t)d->label[i] < d->n_out, "label[%zu] = %d of %zu", i,
                       (int)d->label[i], d->n_out);
        for (size_t c = 0; c < d->n_out; c++) {
            FUZZ_CHECK(d->class_names[c], "class name %zu missing", c);
            if (c && !s->classes)
                FUZZ_CHECK(strcmp(d->class_names[c - 1], d->class_names[c]) < 0, "classes not sorted and distinct");
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    unsigned opt = data[0];
    const struct colset *cs = &sets[(opt >> 3) & 1];
    struct moe_table_spec s = {0};
    const char *path = fuzz_file(0, data + 1, size - 1);
    switch (opt & 3) {
    case 0: s.delimiter = 0; break;
    case 1: s.delimiter = ','; break;
    case 2: s.delimiter = '\t'; break;
    default: s.delimiter = 0; path = tsv_path(path); break;
    }
    s.path = path;
    s.task = (opt >> 2) & 1 ? MOE_TASK_REGRESSION : MOE_TASK_CLASSIFICATION;
    s.features = cs->features;
    s.n_features = 2;
    if (s.task == MOE_TASK_REGRESSION) {
        s.targets = cs->targets;
        s.n_targets = cs->n_targets;
    } else {
        s.targets = cs->label;
        s.n_targets = 1;
        if ((opt >> 4) & 1) {
            s.classes = cs->classes;
            s.n_classes = cs->n_classes;
        }
    }
    if ((opt >> 5) & 1) {
        s.split_column = cs->split;
        memcpy(s.train_range, cs->train_range, sizeof s.train_range);
        memcpy(s.test_range, cs->test_range, sizeof s.test_range);
    }
    if ((opt >> 6) & 1) {
        s.where = cs->where;
        s.n_where = 2;
    }
    s.test_fraction = (opt >> 7) & 1 ? 0.5 : 0.0;
    s.seed = 1991;

    struct moe_err err = {0};
    struct moe_dataset tr, te;
    int rc = moe_table_read(&s, &tr, &te, &err);
    if (rc) {
        fuzz_check_err(rc, &err);
        FUZZ_CHECK(!tr.x && !te.x && tr.n == 0 && te.n == 0, "failed read returned data");
        return 0;
    }
    check_split(&tr, &s, 1);
    check_split(&te, &s, 0);
    FUZZ_CHECK(tr.n_out == te.n_out, "train and test disagree on n_out");
    struct moe_standardize st;
    if (moe_standardize_fit(&st, &tr, &err) == 0) {
        moe_standardize_apply(&st, &tr);
        moe_standardize_apply(&st, &te);
        moe_standardize_release(&st);
    }
    moe_dataset_release(&tr);
    moe_dataset_release(&te);
    return 0;
}
