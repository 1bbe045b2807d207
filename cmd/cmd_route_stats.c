// cmd_route_stats.c: `moe route-stats` runs a trained checkpoint over a data
// split in evaluation mode and reports, per sparse layer, what its router did:
// load and importance per expert and their CVs, dead experts, dropped fraction
// at each capacity factor, router entropy, top-1 probability, logsumexp,
// co-selection and the mutual information between expert and label. JSON
// summary on stdout; CSV tables in DIR; optionally one JSON line per token.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "estimate.h"
#include "io/atomic.h"
#include "io/csv_writer.h"
#include "io/safetensors.h"
#include "moe/moe_layer.h"
#include "train/train.h"

static const char *const usage =
    "usage: moe route-stats --checkpoint CKPT --out DIR [--data train|test] [--capacity-factors A,B,...]\n"
    "                       [--trace FILE.jsonl] [--set key.path=value]... [--threads N] [--quiet]\n"
    "Route a data split (default test) through a trained checkpoint in evaluation mode and write,\n"
    "per sparse layer, DIR/layers.csv, experts.csv, labels.csv, capacity.csv and coselect.csv (k >= 2);\n"
    "print the JSON summary on stdout (also DIR/summary.json). The data is the checkpoint's own config's,\n"
    "unless --set data.* points elsewhere; features are standardised with the checkpoint's statistics.\n"
    "--capacity-factors re-runs the split at each evaluation capacity factor (0 = dropless).\n"
    "--trace writes one JSON line per token and layer: index, layer, experts, gates, dropped.\n"
    "Language models: the split's fixed windows; MI between expert and the input byte class and,\n"
    "over several languages, the language, each beside its random-routing chance level.\n";

// The old cli_path: a path in a fixed buffer, silently cut short. Goes when
// this file takes cli_path's allocated paths.
static const char *path_in(char *buf, size_t len, const char *dir, const char *name)
{
    snprintf(buf, len, "%s/%s", dir, name);
    return buf;
}

enum { OPT_CKPT = OPT_FIRST_CMD, OPT_DATA, OPT_CF, OPT_TRACE };
#define MAX_CF 32

struct rs_opts {
    const char *ckpt, *split, *trace;
    double cf[MAX_CF];
    size_t n_cf;
};

static int parse_cf(struct rs_opts *o, const char *arg)
{
    char buf[1024];
    if (snprintf(buf, sizeof buf, "%s", arg) >= (int)sizeof buf)
        return cli_error("route-stats", 2, "option '--capacity-factors': list too long");
    o->n_cf = 0;
    char *save = NULL;
    for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        char *end;
        double v = strtod(tok, &end);
        if (end == tok || *end || !isfinite(v) || v < 0 || v > 1e6)
            return cli_error("route-stats", 2,
                             "option '--capacity-factors': expected numbers in [0, 1e6] separated by commas, got '%s'",
                             tok);
        if (o->n_cf == MAX_CF)
            return cli_error("route-stats", 2, "option '--capacity-factors': at most %d values", MAX_CF);
        o->cf[o->n_cf++] = v;
    }
    if (!o->n_cf)
        return cli_error("route-stats", 2, "option '--capacity-factors' names no value");
    return 0;
}

static int on_opt(void *ctx, int opt, const char *arg)
{
    struct rs_opts *o = ctx;
    switch (opt) {
    case OPT_CKPT:
        o->ckpt = arg;
        return 0;
    case OPT_DATA:
        if (strcmp(arg, "train") != 0 && strcmp(arg, "test") != 0)
            return cli_error("route-stats", 2, "option '--data': expected train or test, got '%s'", arg);
        o->split = arg;
        return 0;
    case OPT_CF:
        return parse_cf(o, arg);
    case OPT_TRACE:
        o->trace = arg;
        return 0;
    }
    return 2;
}

// The checkpoint's config, then --set overrides; standardisation is applied
// from the checkpoint's statistics, not refitted.
static int load_config(const struct moe_st_file *f, const struct cli_common *c, struct moe_config *cfg,
                       int *ret_standardize, struct moe_err *err)
{
    const char *text = moe_safetensors_meta(f, "config");
    if (!text)
        return moe_error(err, MOE_EFORMAT, "%s: no 'config' in the checkpoint's metadata (not written by moe train?)",
                         f->path);
    // The checkpoint's own config first: if that fails the file is at fault (exit 1);
    // then the user's --set overrides, whose mistakes are usage errors (exit 2).
    struct moe_err perr;
    int rc = moe_config_parse(cfg, moe_run_schema, moe_run_schema_len, text, f->path, NULL, 0, &perr);
    if (rc)
        return moe_error(err, MOE_EFORMAT, "%s: the 'config' metadata is not a valid config: %s", f->path, perr.msg);
    for (size_t i = 0; i < c->n_sets; i++)
        if ((rc = moe_config_set(cfg, c->sets[i], err)))
            return rc;
    *ret_standardize = moe_cfg_bool(cfg, "data.standardize");
    return moe_config_set(cfg, "data.standardize=false", err);
}

static int standardize(const struct moe_st_file *f, struct moe_dataset *d, struct moe_err *err)
{
    const struct moe_st_entry *m = moe_safetensors_find(f, "data.mean"), *s = moe_safetensors_find(f, "data.std");
    if (!m || !s)
        return moe_error(err, MOE_EFORMAT, "%s: the config standardises features but 'data.mean'/'data.std' are missing",
                         f->path);
    if (m->dtype != MOE_F32 || s->dtype != MOE_F32)
        return moe_error(err, MOE_EFORMAT, "%s: 'data.mean'/'data.std' must have dtype F32", f->path);
    if (m->numel != d->n_in || s->numel != d->n_in)
        return moe_error(err, MOE_ESHAPE, "%s: 'data.mean'/'data.std' must be F32 of %zu features", f->path, d->n_in);
    struct moe_standardize st = { d->n_in, malloc(d->n_in * sizeof(float)), malloc(d->n_in * sizeof(float)) };
    if (!st.mean || !st.std) {
        free(st.mean);
        free(st.std);
        return moe_error(err, MOE_ENOMEM, "out of memory");
    }
    memcpy(st.mean, m->data, d->n_in * sizeof(float));
    memcpy(st.std, s->data, d->n_in * sizeof(float));
    moe_standardize_apply(&st, d);
    free(st.mean);
    free(st.std);
    return 0;
}

static void json_num(cJSON *o, const char *k, double v)
{
    if (isnan(v))
        cJSON_AddNullToObject(o, k);
    else
        cJSON_AddNumberToObject(o, k, v);
}

// One JSON line per (token, layer) of the last forward pass.
static void trace_batch(FILE *f, struct moe_model *m, size_t start, size_t n)
{
    for (size_t t = 0; t < n; t++) {
        for (size_t i = 0; i < m->n_moe_layers; i++) {
            const struct moe_layer *l = m->ops->moe_layer_at(m, i);
            const struct moe_route *r = &l->route;
            fprintf(f, "{\"index\":%zu,\"layer\":%u", start + t, l->c.index);
            const char *keys[] = { "experts", "gates", "dropped" };
            for (int k = 0; k < 3; k++) {
                fprintf(f, ",\"%s\":[", keys[k]);
                int first = 1;
                for (size_t s = 0; s < l->S; s++) {
                    size_t j = t * l->S + s;
                    if (r->sel[j] < 0)
                        continue;
                    if (!first)
                        fputc(',', f);
                    first = 0;
                    if (k == 0)
                        fprintf(f, "%d", r->sel[j]);
                    else if (k == 1)
                        fprintf(f, "%.9g", (double)r->gate[j]);
                    else
                        fputs(l->plan.slot_row[j] < 0 ? "true" : "false", f);
                }
                fputc(']', f);
            }
            fputs("}\n", f);
        }
    }
}

// The model's batch: evaluation chunks of train.max_batch_eval rows, at most the split.
static size_t rs_batch(const struct moe_config *cfg, size_t n_train, size_t n_test, const void *ctx)
{
    size_t rows = strcmp((const char *)ctx, "train") == 0 ? n_train : n_test;
    size_t chunk = (size_t)moe_cfg_int(cfg, "train.max_batch_eval");
    size_t bs = (size_t)moe_cfg_int(cfg, "optim.batch_size");
    if (strcmp(moe_cfg_str(cfg, "data.source"), "text") == 0 && bs > 0 && chunk > bs)
        chunk = bs; // windows per pass, as the trainer evaluates them
    return chunk > rows && rows > 0 ? rows : chunk;
}

// Run the split once in evaluation mode, accumulating into st (reset first).
// Language models: the split's fixed windows, every token of them traced.
static int route_pass(struct moe_model *m, const struct moe_dataset *d, size_t chunk, struct moe_stats *st,
                      FILE *trace, struct moe_err *err)
{
    moe_stats_reset(st);
    int lm = d->task == MOE_TASK_LM;
    size_t rows = lm ? d->n_win : d->n, C = lm ? d->n_ctx : 1;
    struct moe_lm_batch lb = { 0 };
    int rc = lm ? moe_lm_batch_alloc(&lb, chunk, d->n_ctx, err) : 0;
    for (size_t start = 0; !rc && start < rows; start += chunk) {
        size_t n = rows - start < chunk ? rows - start : chunk;
        struct moe_batch b = {
            .n = n,
            .x = d->x ? d->x + start * d->n_in : NULL,
            .y = d->y ? d->y + start * d->n_out : NULL,
            .label = d->label ? d->label + start : NULL,
            .group = d->group ? d->group + start : NULL,
        };
        if (lm)
            b = moe_lm_batch_fill(d, &lb, 0, 0, start, n);
        rc = moe_model_run(m, &b, 0, st, err);
        if (!rc && trace)
            trace_batch(trace, m, start * C, n * C);
    }
    moe_lm_batch_release(&lb);
    return rc;
}

// Mutual information of a layer's expert-label table and its chance level
// (route_stats.h moe_mi_bits_null: the same loads, labels permuted; 5 draws).
// part -1: the whole label; 0, 1: the byte class or the language of a language model.
static void label_mi(const struct moe_route_acc *a, int part, uint64_t seed, double *ret_mi, double *ret_null)
{
    *ret_mi = *ret_null = NAN;
    if (!a->label || (part >= 0 && !a->G2))
        return;
    size_t W = part < 0 ? a->G : part == 0 ? a->G / a->G2 : a->G2;
    uint64_t *t = malloc(a->E * W * sizeof *t);
    if (!t)
        return;
    if (part < 0)
        memcpy(t, a->label, a->E * W * sizeof *t);
    else
        moe_contingency_part(a->label, a->E, a->G, a->G2, part, t);
    *ret_mi = moe_mi_bits(t, a->E, W);
    *ret_null = moe_mi_bits_null(t, a->E, W, seed, 5);
    free(t);
}

static const char *const layer_cols[] = { "layer", "tokens", "load_cv", "importance_cv", "load_max_mean",
                                          "dead_experts", "dropped_fraction", "router_entropy", "top1_prob",
                                          "mean_lse", "z_loss", "aux_loss", "expert_label_mi",
                                          "expert_label_mi_random", "expert_lang_mi", "expert_lang_mi_random" };
#define N_LAYER_COLS (sizeof layer_cols / sizeof *layer_cols)
static const char *const label_cols[] = { "layer", "kind", "label", "expert", "tokens" };
static const char *const expert_cols[] = { "layer", "expert", "tokens", "fraction", "importance", "gate_mean",
                                           "dropped" };
static const char *const cap_cols[] = { "capacity_factor", "layer", "dropped_fraction", "loss", "accuracy" };
static const char *const cosel_cols[] = { "layer", "expert_a", "expert_b", "tokens" };

// labels.csv: the expert-label table of one layer in long form (first choices
// before capacity): kind class, region, byte_class or language.
static int label_rows(struct moe_csv *csv, const struct moe_route_acc *a, uint32_t layer,
                      const struct moe_dataset *d, const struct moe_data *data, struct moe_err *err)
{
    if (!a->label)
        return 0;
    int lm = d->task == MOE_TASK_LM;
    for (int part = lm ? 0 : -1; part <= (lm && a->G2 > 1 ? 1 : lm ? 0 : -1); part++) {
        size_t W = part < 0 ? a->G : part == 0 ? a->G / a->G2 : a->G2;
        uint64_t *t = malloc(a->E * W * sizeof *t);
        if (!t)
            return moe_error(err, MOE_ENOMEM, "out of memory");
        if (part < 0)
            memcpy(t, a->label, a->E * W * sizeof *t);
        else
            moe_contingency_part(a->label, a->E, a->G, a->G2, part, t);
        const char *kind = part == 0 ? "byte_class" : part == 1 ? "language"
                           : d->task == MOE_TASK_CLASSIFICATION ? "class" : "region";
        int rc = 0;
        for (size_t g = 0; !rc && g < W; g++) {
            for (size_t e = 0; !rc && e < a->E; e++) {
                char num[32];
                const char *name = num;
                snprintf(num, sizeof num, "%zu", g);
                if (part == 0)
                    name = moe_byte_class_name((int)g);
                else if (part == 1)
                    name = data->corpus.lang[g];
                else if (d->class_names && d->class_names[g])
                    name = d->class_names[g];
                moe_csv_int(csv, (long long)layer);
                moe_csv_str(csv, kind);
                moe_csv_str(csv, name);
                moe_csv_int(csv, (long long)e);
                moe_csv_int(csv, (long long)t[e * W + g]);
                rc = moe_csv_end_row(csv, err);
            }
        }
        free(t);
        if (rc)
            return rc;
    }
    return 0;
}

int cmd_route_stats(int argc, char **argv)
{
    static const struct option opts[] = { CLI_COMMON_OPTIONS,
                                          { "checkpoint", required_argument, NULL, OPT_CKPT },
                                          { "data", required_argument, NULL, OPT_DATA },
                                          { "capacity-factors", required_argument, NULL, OPT_CF },
                                          { "trace", required_argument, NULL, OPT_TRACE },
                                          { 0, 0, 0, 0 } };
    const char *cmd = "route-stats";
    struct cli_common c;
    struct rs_opts o = { .split = "test" };
    cli_common_init(&c);
    struct moe_err err = { 0 };
    struct moe_config cfg = { 0 };
    struct moe_st_file f = { 0 };
    struct moe_data data;
    struct moe_model model;
    struct moe_stats st;
    struct moe_csv csv[5];
    struct moe_vocab vocab;
    memset(&vocab, 0, sizeof vocab);
    struct moe_atomic_file trace = { 0 };
    cJSON *summary = NULL;
    memset(&data, 0, sizeof data);
    memset(&model, 0, sizeof model);
    memset(&st, 0, sizeof st);
    memset(csv, 0, sizeof csv);
    char path[4200];
    int rc = cli_parse(argc, argv, cmd, opts, &c, on_opt, &o);
    if (rc == -1) {
        fputs(usage, stdout);
        rc = 0;
        goto out;
    }
    if (rc || (rc = cli_setup_compute(cmd, &c)))
        goto out;
    if (!o.ckpt || !c.out) {
        rc = cli_error(cmd, 2, "options '--checkpoint' and '--out' are required (see 'moe help route-stats')");
        goto out;
    }
    if (c.config) {
        rc = cli_error(cmd, 2, "option '--config' does not apply: the config is the checkpoint's (use --set to change data.*)");
        goto out;
    }
    int std_on = 0, checked = 0;
    if (moe_safetensors_open(o.ckpt, &f, &err) || load_config(&f, &c, &cfg, &std_on, &err)) {
        rc = cli_fail(cmd, &err);
        goto out;
    }
    // synthetic data: refuse a run that will not fit before generating it
    if ((rc = cli_check_run(cmd, &cfg, NULL, rs_batch, o.split, 0, NULL, &checked)))
        goto out;
    int has_vocab = moe_data_vocab_read(&f, &vocab, &err);
    if (has_vocab < 0 || moe_data_load_ex(&data, &cfg, has_vocab ? &vocab : NULL, &err) ||
        moe_data_check_text_checkpoint(&data, &f, &err)) {
        rc = cli_fail(cmd, &err);
        goto out;
    }
    struct moe_dataset *d = strcmp(o.split, "train") == 0 ? &data.train : &data.test;
    if (std_on && !data.has_text && standardize(&f, d, &err)) {
        rc = cli_fail(cmd, &err);
        goto out;
    }
    size_t chunk = rs_batch(&cfg, data.train.n, data.test.n, o.split);
    if (!checked && (rc = cli_check_run(cmd, &cfg, &data, rs_batch, o.split, 0, NULL, &checked)))
        goto out;
    if (moe_model_create(&model, &cfg, NULL, d->task, d->n_in, d->n_out, chunk, &err) ||
        moe_model_load(&model, &f, 1, &err)) {
        rc = cli_fail(cmd, &err);
        goto out;
    }
    if (!model.n_moe_layers) {
        rc = cli_error(cmd, 2, "'%s' is a '%s' model without sparse layers: nothing to route", o.ckpt, model.ops->type);
        goto out;
    }
    int lm = d->task == MOE_TASK_LM;
    uint64_t seed = (uint64_t)moe_cfg_int(&cfg, "train.seed");
    if (moe_train_stats_init(&st, &model, d, &err) || cli_mkdir_p(c.out, &err)) {
        rc = cli_fail(cmd, &err);
        goto out;
    }
    size_t L = model.n_moe_layers, E = model.n_route_expert;
    double eval_cf = model.ops->moe_layer_at(&model, 0)->c.eval_capacity_factor;

    // capacity sweep first (each pass overwrites the statistics), then the main pass
    if (moe_csv_open(&csv[2], path_in(path, sizeof path, c.out, "capacity.csv"), cap_cols, 5, &err)) {
        rc = cli_fail(cmd, &err);
        goto out;
    }
    cJSON *caps = cJSON_CreateArray();
    summary = cli_summary_new(cmd, &cfg);
    for (size_t i = 0; i < o.n_cf; i++) {
        model.ops->set_eval_capacity(&model, o.cf[i]);
        if (route_pass(&model, d, chunk, &st, NULL, &err)) {
            cJSON_Delete(caps);
            rc = cli_fail(cmd, &err);
            goto out;
        }
        struct moe_eval_row row;
        memset(&row, 0, sizeof row);
        moe_eval_row_fill(&row, &st, d->task, 0.0);
        cJSON *cj = cJSON_CreateObject();
        cJSON_AddNumberToObject(cj, "capacity_factor", o.cf[i]);
        cJSON *df = cJSON_AddArrayToObject(cj, "dropped_fraction");
        for (size_t l = 0; l < L; l++) {
            double v = moe_route_acc_dropped_fraction(&st.route[l]);
            cJSON_AddItemToArray(df, cJSON_CreateNumber(v));
            moe_csv_num(&csv[2], o.cf[i]);
            moe_csv_int(&csv[2], (long long)model.ops->moe_layer_at(&model, l)->c.index);
            moe_csv_num(&csv[2], v);
            moe_csv_num(&csv[2], row.loss);
            moe_csv_num(&csv[2], row.accuracy);
            if (moe_csv_end_row(&csv[2], &err)) {
                cJSON_Delete(caps);
                rc = cli_fail(cmd, &err);
                goto out;
            }
        }
        json_num(cj, "loss", row.loss);
        json_num(cj, "accuracy", row.accuracy);
        cJSON_AddItemToArray(caps, cj);
    }
    model.ops->set_eval_capacity(&model, eval_cf);
    if (o.trace && moe_atomic_open(&trace, o.trace, &err)) {
        cJSON_Delete(caps);
        rc = cli_fail(cmd, &err);
        goto out;
    }
    if (route_pass(&model, d, chunk, &st, o.trace ? trace.f : NULL, &err)) {
        cJSON_Delete(caps);
        rc = cli_fail(cmd, &err);
        goto out;
    }
    struct moe_eval_row row;
    memset(&row, 0, sizeof row);
    moe_eval_row_fill(&row, &st, d->task, 0.0);

    cJSON_AddStringToObject(summary, "checkpoint", o.ckpt);
    cJSON_AddStringToObject(summary, "split", o.split);
    cJSON_AddNumberToObject(summary, "rows", (double)(lm ? d->n_win : d->n));
    if (lm) {
        cJSON_AddNumberToObject(summary, "tokens", (double)row.n);
        json_num(summary, "bits_per_byte", row.bits_per_byte);
    }
    cJSON_AddStringToObject(summary, "model", model.ops->type);
    cli_routing_json(summary, &model);
    cJSON_AddStringToObject(summary, "label", lm ? "byte class of the input token (letter, digit, space, punct, other)"
                                              : d->task == MOE_TASK_CLASSIFICATION ? "class" : d->n_group ? "region" : "none");
    if (lm)
        cJSON_AddStringToObject(summary, "mi_random", "the same statistic with the tokens' labels randomly permuted across the experts' loads (mean of 5 draws): the estimator's chance level");
    json_num(summary, "loss", row.loss);
    json_num(summary, "accuracy", row.accuracy);
    cJSON *layers = cJSON_AddArrayToObject(summary, "layers");
    if (moe_csv_open(&csv[0], path_in(path, sizeof path, c.out, "layers.csv"), layer_cols, N_LAYER_COLS, &err) ||
        moe_csv_open(&csv[4], path_in(path, sizeof path, c.out, "labels.csv"), label_cols, 5, &err) ||
        moe_csv_open(&csv[1], path_in(path, sizeof path, c.out, "experts.csv"), expert_cols, 7, &err) ||
        (model.n_route_slots >= 2 &&
         moe_csv_open(&csv[3], path_in(path, sizeof path, c.out, "coselect.csv"), cosel_cols, 4, &err))) {
        cJSON_Delete(caps);
        rc = cli_fail(cmd, &err);
        goto out;
    }
    for (size_t l = 0; l < L; l++) {
        const struct moe_route_acc *a = &st.route[l];
        const struct moe_layer *ml = model.ops->moe_layer_at(&model, l);
        double tok = a->tokens ? (double)a->tokens : NAN, routed = 0.0;
        for (size_t e = 0; e < E; e++)
            routed += a->routed[e];
        double mi_label, mi_label0, mi_lang = NAN, mi_lang0 = NAN;
        label_mi(a, lm ? 0 : -1, seed, &mi_label, &mi_label0);
        if (lm && a->G2 > 1)
            label_mi(a, 1, seed, &mi_lang, &mi_lang0);
        double v[] = { (double)ml->c.index,
                       (double)a->tokens,
                       moe_cv(a->routed, E),
                       moe_cv(a->gate_sum, E),
                       moe_max_mean(a->routed, E),
                       (double)moe_route_acc_dead(a),
                       moe_route_acc_dropped_fraction(a),
                       a->has_probs ? a->entropy / tok : NAN,
                       a->has_probs ? a->top1 / tok : NAN,
                       a->has_probs ? a->lse / tok : NAN,
                       a->weight > 0 ? a->z / a->weight : NAN,
                       a->weight > 0 ? a->aux / a->weight : NAN,
                       mi_label, mi_label0, mi_lang, mi_lang0 };
        cJSON *lj = cJSON_CreateObject();
        cJSON_AddStringToObject(lj, "name", ml->prefix);
        for (size_t i = 0; i < sizeof v / sizeof *v; i++) {
            moe_csv_num(&csv[0], v[i]);
            if (i > 0)
                json_num(lj, layer_cols[i], v[i]);
        }
        if ((rc = moe_csv_end_row(&csv[0], &err)) || (rc = label_rows(&csv[4], a, ml->c.index, d, &data, &err)))
            goto fail;
        double frac[1024];
        for (size_t e = 0; e < E && e < 1024; e++) {
            frac[e] = routed > 0 ? a->routed[e] / routed : NAN;
            moe_csv_int(&csv[1], (long long)ml->c.index);
            moe_csv_int(&csv[1], (long long)e);
            moe_csv_num(&csv[1], a->routed[e]);
            moe_csv_num(&csv[1], frac[e]);
            moe_csv_num(&csv[1], a->gate_sum[e] / tok);
            moe_csv_num(&csv[1], a->has_probs ? a->prob_sum[e] / tok : NAN);
            moe_csv_num(&csv[1], a->dropped[e]);
            if ((rc = moe_csv_end_row(&csv[1], &err)))
                goto fail;
        }
        cJSON_AddItemToObject(lj, "tokens_per_expert", cJSON_CreateDoubleArray(a->routed, (int)E));
        cJSON_AddItemToObject(lj, "fraction_per_expert", cJSON_CreateDoubleArray(frac, (int)E));
        if (a->cosel) {
            cJSON *m = cJSON_AddArrayToObject(lj, "coselect");
            for (size_t i = 0; i < E; i++) {
                cJSON *rowj = cJSON_CreateArray();
                for (size_t j = 0; j < E; j++) {
                    uint64_t cnt = a->cosel[i * E + j];
                    cJSON_AddItemToArray(rowj, cJSON_CreateNumber((double)cnt));
                    if (i == j)
                        continue;
                    moe_csv_int(&csv[3], (long long)ml->c.index);
                    moe_csv_int(&csv[3], (long long)i);
                    moe_csv_int(&csv[3], (long long)j);
                    moe_csv_int(&csv[3], (long long)cnt);
                    if ((rc = moe_csv_end_row(&csv[3], &err)))
                        goto fail;
                }
                cJSON_AddItemToArray(m, rowj);
            }
        }
        cJSON_AddItemToArray(layers, lj);
    }
    cJSON_AddItemToObject(summary, "capacity", caps);
    caps = NULL;
    for (int i = 0; i < 5; i++)
        if (csv[i].buf && (rc = moe_csv_close(&csv[i], &err)))
            goto fail;
    if (o.trace && (rc = moe_atomic_commit(&trace, &err)))
        goto fail;
    if (cli_write_json(path_in(path, sizeof path, c.out, "summary.json"), summary, &err)) {
        rc = cli_fail(cmd, &err);
        goto out;
    }
    cli_print_json(cmd, summary);
    cli_log(&c, "moe route-stats: %zu %s rows through %zu sparse layer(s); outputs in %s/", d->n, o.split, L, c.out);
    rc = 0;
    goto out;
fail:
    cJSON_Delete(caps);
    rc = cli_fail(cmd, &err);
out:
    for (int i = 0; i < 5; i++)
        moe_csv_abort(&csv[i]);
    moe_vocab_release(&vocab);
    moe_atomic_abort(&trace);
    cJSON_Delete(summary);
    moe_stats_release(&st);
    moe_model_release(&model);
    moe_data_release(&data);
    moe_safetensors_close(&f);
    moe_config_release(&cfg);
    cli_common_release(&c);
    return rc;
}
