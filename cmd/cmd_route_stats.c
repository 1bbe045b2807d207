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

#include "backend/backend.h"
#include "ckpt.h"
#include "cli.h"
#include "cuda/model.h"
#include "cuda/ops.h"
#include "estimate.h"
#include "io/atomic.h"
#include "io/csv_writer.h"
#include "io/safetensors.h"
#include "moe/moe_layer.h"
#include "train/train.h"

static const char *const usage =
    "usage: moe route-stats --checkpoint CKPT --out DIR [--data train|valid|test] [--capacity-factors A,B,...]\n"
    "                       [--trace FILE.jsonl] [--set key.path=value]... [--threads N] [--ignore-memory]\n"
    "                       [--device cpu|cuda|cuda:N]\n"
    "                       [--quiet] [--tag KEY=VALUE]...\n"
    "Route a data split (default test; valid: the validation split when the config has one, else the\n"
    "held-out split, as moe eval does) through a trained checkpoint in evaluation mode and write,\n"
    "per sparse layer, DIR/layers.csv, experts.csv, labels.csv, capacity.csv and coselect.csv (k >= 2);\n"
    "print the JSON summary on stdout (also DIR/summary.json). The data is the checkpoint's own config's,\n"
    "unless --set data.* points elsewhere; features are standardised with the checkpoint's statistics.\n"
    "--capacity-factors re-runs the split at each evaluation capacity factor (0 = dropless).\n"
    "--trace writes one JSON line per token and layer: index, layer, experts, gates, dropped.\n"
    "--tag KEY=VALUE (repeatable): a column KEY holding VALUE after every table's own columns.\n"
    "--device cuda[:N]: the forward passes on a GPU (mlp-moe and transformer checkpoints; the summary\n"
    "names the device); the statistics are summed on the host as for --device cpu.\n"
    "Language models: the split's fixed windows; MI between expert and the input byte class and,\n"
    "over several languages, the language, each beside its random-routing chance level.\n";

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
        if (strcmp(arg, "train") != 0 && strcmp(arg, "valid") != 0 && strcmp(arg, "test") != 0)
            return cli_error("route-stats", 2, "option '--data': expected train, valid or test, got '%s'", arg);
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
static size_t rs_batch(const struct moe_run_cfg *rcfg, size_t n_train, size_t n_test, const void *ctx)
{
    size_t rows = strcmp((const char *)ctx, "train") == 0 ? n_train : n_test;
    size_t chunk = rcfg->train.max_batch_eval;
    size_t bs = rcfg->optim.batch_size;
    if (rcfg->data.source == MOE_DATA_TEXT && bs > 0 && chunk > bs)
        chunk = bs; // windows per pass, as the trainer evaluates them
    return chunk > rows && rows > 0 ? rows : chunk;
}

// Run the split once in evaluation mode, accumulating into st (reset first).
// Language models: the split's fixed windows, every token of them traced.
static int route_pass(struct moe_model *m, struct moe_cuda_model *dev, const struct moe_dataset *d, size_t chunk,
                      struct moe_stats *st, FILE *trace, struct moe_err *err)
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
        rc = dev ? moe_cuda_model_eval(dev, &b, st, err) : moe_model_run(m, &b, 0, st, err);
        if (!rc && trace && dev) // the device's routing into the host layers' buffers, which the trace reads
            rc = moe_cuda_model_route_to(dev, m, err);
        if (!rc && trace)
            trace_batch(trace, m, start * C, n * C);
    }
    moe_lm_batch_release(&lb);
    return rc;
}

// A layer's expert-label table (E x W, first choices before capacity): part -1
// the whole label; 0, 1: the byte class or the language of a language model.
// NULL when out of memory.
static uint64_t *label_table(const struct moe_route_acc *a, int part, size_t *ret_W)
{
    size_t W = part < 0 ? a->G : part == 0 ? a->G / a->G2 : a->G2;
    uint64_t *t = malloc(a->E * W * sizeof *t);
    if (!t)
        return NULL;
    if (part < 0)
        memcpy(t, a->label, a->E * W * sizeof *t);
    else
        moe_contingency_part(a->label, a->E, a->G, a->G2, part, t);
    *ret_W = W;
    return t;
}

// Mutual information of a layer's expert-label table and its chance level
// (route_stats.h moe_mi_bits_null: the same loads, labels permuted; 5 draws);
// NaN without labels.
static int label_mi(const struct moe_route_acc *a, int part, uint64_t seed, double *ret_mi, double *ret_null,
                    struct moe_err *err)
{
    *ret_mi = *ret_null = NAN;
    if (!a->label || (part >= 0 && !a->G2))
        return 0;
    size_t W;
    uint64_t *t = label_table(a, part, &W);
    if (!t)
        return moe_error(err, MOE_ENOMEM, "out of memory");
    *ret_mi = moe_mi_bits(t, a->E, W);
    *ret_null = moe_mi_bits_null(t, a->E, W, seed, 5);
    free(t);
    return 0;
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
static int label_rows(struct moe_csv *csv, const struct cli_tags *tags, const struct moe_route_acc *a, uint32_t layer,
                      const struct moe_dataset *d, const struct moe_data *data, struct moe_err *err)
{
    if (!a->label)
        return 0;
    int lm = d->task == MOE_TASK_LM;
    for (int part = lm ? 0 : -1; part <= (lm && a->G2 > 1 ? 1 : lm ? 0 : -1); part++) {
        size_t W;
        uint64_t *t = label_table(a, part, &W);
        if (!t)
            return moe_error(err, MOE_ENOMEM, "out of memory");
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
                rc = cli_csv_end_row(csv, tags, err);
            }
        }
        free(t);
        if (rc)
            return rc;
    }
    return 0;
}

// The tables in DIR, closed in this order.
enum { T_LAYERS, T_EXPERTS, T_CAPACITY, T_COSELECT, T_LABELS, N_TABLES };
static const struct {
    const char *file;
    const char *const *cols;
    size_t n_cols;
} tables[N_TABLES] = {
    { "layers.csv", layer_cols, N_LAYER_COLS }, { "experts.csv", expert_cols, 7 }, { "capacity.csv", cap_cols, 5 },
    { "coselect.csv", cosel_cols, 4 }, { "labels.csv", label_cols, 5 },
};

// What one route-stats run holds; rs_release frees it all, whatever step it reached.
struct rs_run {
    const char *cmd;
    const struct cli_common *c;
    const struct rs_opts *o;
    struct moe_st_file f;    // the checkpoint, closed once the model is loaded
    struct moe_config cfg;
    struct moe_run_cfg rc;   // cfg read once, typed
    struct moe_vocab vocab;
    struct moe_data data;
    struct moe_dataset *d;   // the split routed
    size_t chunk;            // rows per forward pass
    struct moe_model model;
    struct moe_backend_info cuda;    // --device cuda[:N]: the device found
    struct moe_cuda_model *dev;      // the model on it (NULL: on the CPU)
    struct moe_stats st;
    struct moe_csv csv[N_TABLES];
    struct moe_atomic_file trace;
    cJSON *summary, *caps;   // caps: summary.capacity until it joins the summary
};

static void rs_release(struct rs_run *r)
{
    for (int i = 0; i < N_TABLES; i++)
        moe_csv_abort(&r->csv[i]);
    moe_vocab_release(&r->vocab);
    moe_atomic_abort(&r->trace);
    cJSON_Delete(r->caps);
    cJSON_Delete(r->summary);
    moe_stats_release(&r->st);
    moe_cuda_model_free(r->dev);
    moe_model_release(&r->model);
    moe_data_release(&r->data);
    moe_safetensors_close(&r->f);
    moe_run_cfg_release(&r->rc);
    moe_config_release(&r->cfg);
}

static int open_table(struct rs_run *r, int i, struct moe_err *err)
{
    char *path = cli_path(r->c->out, tables[i].file, err);
    int rc = path ? cli_csv_open(&r->csv[i], path, tables[i].cols, tables[i].n_cols, &r->c->tags, err) : MOE_ENOMEM;
    free(path);
    return rc;
}

// The checkpoint, its config (with --set), the split it routes (standardised
// with the checkpoint's statistics), the model and its statistics, and DIR. A
// run that will not fit is refused before synthetic data is generated, or
// once the data is loaded.
static int rs_load(struct rs_run *r)
{
    const char *cmd = r->cmd, *split = r->o->split;
    struct moe_err err = { 0 };
    int std_on = 0, checked = 0, rc;
    if (moe_safetensors_open(r->o->ckpt, &r->f, &err) ||
        cli_ckpt_config(&r->f, r->c->sets, r->c->n_sets, &r->cfg, &r->rc, &std_on, &err))
        return cli_fail(cmd, &err);
    // the file as read, beside the data and the model until the model has its tensors
    const struct cli_ckpt_mem ck = { r->f.size, 1, 0 };
    if ((rc = cli_check_run(cmd, &r->rc, NULL, NULL, rs_batch, split, 0, &ck, r->c->ignore_memory, NULL, &checked)))
        return rc;
    int has_vocab = moe_data_vocab_read(&r->f, &r->vocab, &err);
    if (has_vocab < 0 || moe_data_load_cfg(&r->data, &r->rc.data, has_vocab ? &r->vocab : NULL, &err) ||
        moe_data_check_text_checkpoint(&r->data, &r->f, &err))
        return cli_fail(cmd, &err);
    r->d = strcmp(split, "train") == 0 ? &r->data.train : &r->data.test;
    if (strcmp(split, "valid") == 0 && r->data.valid.n) // a validation split of its own (else the held-out one)
        r->d = &r->data.valid;
    if (std_on && !r->data.has_text && cli_ckpt_standardize(&r->f, r->d, &err))
        return cli_fail(cmd, &err);
    r->chunk = rs_batch(&r->rc, r->data.train.n, r->data.test.n, split);
    if (!checked &&
        (rc = cli_check_run(cmd, &r->rc, NULL, &r->data, rs_batch, split, 0, &ck, r->c->ignore_memory, NULL, &checked)))
        return rc;
    if (moe_model_create_hp(&r->model, &r->rc.model, NULL, r->d->task, r->d->n_in, r->d->n_out, r->chunk, &err) ||
        moe_model_load(&r->model, &r->f, 1, &err))
        return cli_fail(cmd, &err);
    moe_safetensors_close(&r->f); // the model holds its own copy of every tensor
    if (!r->model.n_moe_layers)
        return cli_error(cmd, 2, "'%s' is a '%s' model without sparse layers: nothing to route", r->o->ckpt,
                         r->model.ops->type);
    if (strcmp(r->c->device, "cpu") != 0) { // the model on the device, before DIR is made
        if (moe_cuda_model_check(&r->model, &r->rc.model, &err))
            return cli_error(cmd, 2, "option '--device %s': %s", r->c->device, err.msg);
        if (moe_cuda_use_device(r->c->device_id, &err) || // evaluation only: no gradients or moments
            moe_cuda_model_create(&r->dev, &r->model, &r->rc.model, NULL, r->chunk, &err))
            return cli_fail(cmd, &err);
    }
    if (moe_train_stats_init(&r->st, &r->model, r->d, &err) || cli_mkdir_p(r->c->out, &err))
        return cli_fail(cmd, &err);
    return 0;
}

// summary.json's identity; the run id covers the checkpoint's path, the split
// and the capacity factors besides the config (the checkpoint's, with --set).
static void summary_identity(struct rs_run *r)
{
    char cfs[MAX_CF * 26 + 1] = "", id[17];
    size_t at = 0;
    for (size_t i = 0; i < r->o->n_cf; i++)
        at += (size_t)snprintf(cfs + at, sizeof cfs - at, "%s%.17g", i ? "," : "", r->o->cf[i]);
    const char *extra[] = { r->o->ckpt, r->o->split, cfs };
    cli_run_id(id, r->cmd, &r->cfg, extra, 3, &r->c->tags);
    cli_summary_identity(r->summary, id, r->c->sets, r->c->n_sets, &r->c->tags);
}

// --capacity-factors: the split again at each evaluation capacity factor into
// capacity.csv and summary.capacity (each pass overwrites the statistics, so
// this comes before the main pass); then the model's own factor again.
static int capacity_sweep(struct rs_run *r)
{
    struct moe_model *m = &r->model;
    struct moe_csv *csv = &r->csv[T_CAPACITY];
    struct moe_err err = { 0 };
    double own = m->ops->moe_layer_at(m, 0)->c.eval_capacity_factor;
    if (open_table(r, T_CAPACITY, &err))
        return cli_fail(r->cmd, &err);
    r->caps = cJSON_CreateArray();
    r->summary = cli_summary_new(r->cmd, &r->cfg, r->rc.train.seed);
    summary_identity(r);
    for (size_t i = 0; i < r->o->n_cf; i++) {
        double cf = r->o->cf[i];
        m->ops->set_eval_capacity(m, cf);
        if (r->dev)
            moe_cuda_model_set_eval_capacity(r->dev, cf);
        if (route_pass(m, r->dev, r->d, r->chunk, &r->st, NULL, &err))
            return cli_fail(r->cmd, &err);
        struct moe_eval_row row;
        memset(&row, 0, sizeof row);
        moe_eval_row_fill(&row, &r->st, r->d->task, 0.0);
        cJSON *cj = cJSON_CreateObject();
        cJSON_AddItemToArray(r->caps, cj);
        cJSON_AddNumberToObject(cj, "capacity_factor", cf);
        cJSON *df = cJSON_AddArrayToObject(cj, "dropped_fraction");
        for (size_t l = 0; l < m->n_moe_layers; l++) {
            double v = moe_route_acc_dropped_fraction(&r->st.route[l]);
            cJSON_AddItemToArray(df, cJSON_CreateNumber(v));
            moe_csv_num(csv, cf);
            moe_csv_int(csv, (long long)m->ops->moe_layer_at(m, l)->c.index);
            moe_csv_num(csv, v);
            moe_csv_num(csv, row.loss);
            moe_csv_num(csv, row.accuracy);
            if (cli_csv_end_row(csv, &r->c->tags, &err))
                return cli_fail(r->cmd, &err);
        }
        json_num(cj, "loss", row.loss);
        json_num(cj, "accuracy", row.accuracy);
    }
    m->ops->set_eval_capacity(m, own);
    if (r->dev)
        moe_cuda_model_set_eval_capacity(r->dev, own);
    return 0;
}

// The split at the model's own evaluation capacity (with --trace, every token
// traced), and the summary's account of it.
static int main_pass(struct rs_run *r)
{
    struct moe_model *m = &r->model;
    const struct moe_dataset *d = r->d;
    cJSON *s = r->summary;
    struct moe_err err = { 0 };
    int lm = d->task == MOE_TASK_LM;
    if ((r->o->trace && moe_atomic_open(&r->trace, r->o->trace, &err)) ||
        route_pass(m, r->dev, d, r->chunk, &r->st, r->o->trace ? r->trace.f : NULL, &err))
        return cli_fail(r->cmd, &err);
    struct moe_eval_row row;
    memset(&row, 0, sizeof row);
    moe_eval_row_fill(&row, &r->st, d->task, 0.0);
    if (r->dev) { // the forward passes' device
        char name[32];
        snprintf(name, sizeof name, "cuda:%d", r->c->device_id);
        cJSON_ReplaceItemInObject(s, "device", cJSON_CreateString(name));
        cJSON_AddStringToObject(s, "device_name", r->cuda.dev.name);
    }
    cJSON_AddStringToObject(s, "checkpoint", r->o->ckpt);
    cJSON_AddStringToObject(s, "split", r->o->split);
    cJSON_AddNumberToObject(s, "rows", (double)(lm ? d->n_win : d->n));
    if (lm) {
        cJSON_AddNumberToObject(s, "tokens", (double)row.n);
        json_num(s, "bits_per_byte", row.bits_per_byte);
    }
    cJSON_AddStringToObject(s, "model", m->ops->type);
    cli_routing_json(s, m);
    cJSON_AddStringToObject(s, "label", lm ? "byte class of the input token (letter, digit, space, punct, other)"
                                        : d->task == MOE_TASK_CLASSIFICATION ? "class" : d->n_group ? "region" : "none");
    if (lm)
        cJSON_AddStringToObject(s, "mi_random", "the same statistic with the tokens' labels randomly permuted across the experts' loads (mean of 5 draws): the estimator's chance level");
    json_num(s, "loss", row.loss);
    json_num(s, "accuracy", row.accuracy);
    return 0;
}

// layers.csv's row of sparse layer l, and the same figures in its JSON object.
static int layer_row(struct rs_run *r, size_t l, cJSON *lj, struct moe_err *err)
{
    const struct moe_route_acc *a = &r->st.route[l];
    const struct moe_layer *ml = r->model.ops->moe_layer_at(&r->model, l);
    size_t E = r->model.n_route_expert;
    int lm = r->d->task == MOE_TASK_LM;
    uint64_t seed = r->rc.train.seed;
    double tok = a->tokens ? (double)a->tokens : NAN;
    double mi_label, mi_label0, mi_lang = NAN, mi_lang0 = NAN;
    if (label_mi(a, lm ? 0 : -1, seed, &mi_label, &mi_label0, err) ||
        (lm && a->G2 > 1 && label_mi(a, 1, seed, &mi_lang, &mi_lang0, err)))
        return MOE_ENOMEM;
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
    cJSON_AddStringToObject(lj, "name", ml->prefix);
    for (size_t i = 0; i < sizeof v / sizeof *v; i++) {
        moe_csv_num(&r->csv[T_LAYERS], v[i]);
        if (i > 0)
            json_num(lj, layer_cols[i], v[i]);
    }
    return cli_csv_end_row(&r->csv[T_LAYERS], &r->c->tags, err);
}

// experts.csv's rows of sparse layer l, and its tokens and share per expert.
static int expert_rows(struct rs_run *r, size_t l, cJSON *lj, struct moe_err *err)
{
    const struct moe_route_acc *a = &r->st.route[l];
    struct moe_csv *csv = &r->csv[T_EXPERTS];
    uint32_t layer = r->model.ops->moe_layer_at(&r->model, l)->c.index;
    size_t E = r->model.n_route_expert;
    double tok = a->tokens ? (double)a->tokens : NAN, routed = 0.0, frac[1024]; // E <= 1024 (model.n_expert)
    for (size_t e = 0; e < E; e++)
        routed += a->routed[e];
    for (size_t e = 0; e < E && e < 1024; e++) {
        frac[e] = routed > 0 ? a->routed[e] / routed : NAN;
        moe_csv_int(csv, (long long)layer);
        moe_csv_int(csv, (long long)e);
        moe_csv_num(csv, a->routed[e]);
        moe_csv_num(csv, frac[e]);
        moe_csv_num(csv, a->gate_sum[e] / tok);
        moe_csv_num(csv, a->has_probs ? a->prob_sum[e] / tok : NAN);
        moe_csv_num(csv, a->dropped[e]);
        int rc = cli_csv_end_row(csv, &r->c->tags, err);
        if (rc)
            return rc;
    }
    cJSON_AddItemToObject(lj, "tokens_per_expert", cJSON_CreateDoubleArray(a->routed, (int)E));
    cJSON_AddItemToObject(lj, "fraction_per_expert", cJSON_CreateDoubleArray(frac, (int)E));
    return 0;
}

// coselect.csv's rows of sparse layer l (k >= 2), and its co-selection matrix.
static int coselect_rows(struct rs_run *r, size_t l, cJSON *lj, struct moe_err *err)
{
    const struct moe_route_acc *a = &r->st.route[l];
    if (!a->cosel)
        return 0;
    struct moe_csv *csv = &r->csv[T_COSELECT];
    uint32_t layer = r->model.ops->moe_layer_at(&r->model, l)->c.index;
    size_t E = r->model.n_route_expert;
    cJSON *m = cJSON_AddArrayToObject(lj, "coselect");
    for (size_t i = 0; i < E; i++) {
        cJSON *rowj = cJSON_CreateArray();
        cJSON_AddItemToArray(m, rowj);
        for (size_t j = 0; j < E; j++) {
            uint64_t cnt = a->cosel[i * E + j];
            cJSON_AddItemToArray(rowj, cJSON_CreateNumber((double)cnt));
            if (i == j)
                continue;
            moe_csv_int(csv, (long long)layer);
            moe_csv_int(csv, (long long)i);
            moe_csv_int(csv, (long long)j);
            moe_csv_int(csv, (long long)cnt);
            int rc = cli_csv_end_row(csv, &r->c->tags, err);
            if (rc)
                return rc;
        }
    }
    return 0;
}

// Per sparse layer: layers.csv, labels.csv, experts.csv, coselect.csv and
// summary.layers; then every table, the trace and summary.json.
static int write_layers(struct rs_run *r)
{
    struct moe_model *m = &r->model;
    struct moe_err err = { 0 };
    cJSON *layers = cJSON_AddArrayToObject(r->summary, "layers");
    int rc = open_table(r, T_LAYERS, &err) || open_table(r, T_LABELS, &err) || open_table(r, T_EXPERTS, &err) ||
             (m->n_route_slots >= 2 && open_table(r, T_COSELECT, &err));
    for (size_t l = 0; !rc && l < m->n_moe_layers; l++) {
        cJSON *lj = cJSON_CreateObject();
        cJSON_AddItemToArray(layers, lj);
        rc = layer_row(r, l, lj, &err) ||
             label_rows(&r->csv[T_LABELS], &r->c->tags, &r->st.route[l], m->ops->moe_layer_at(m, l)->c.index, r->d, &r->data,
                        &err) ||
             expert_rows(r, l, lj, &err) || coselect_rows(r, l, lj, &err);
    }
    if (!rc) {
        cJSON_AddItemToObject(r->summary, "capacity", r->caps);
        r->caps = NULL;
    }
    for (int i = 0; !rc && i < N_TABLES; i++)
        if (r->csv[i].open)
            rc = moe_csv_close(&r->csv[i], &err);
    if (!rc && r->o->trace)
        rc = moe_atomic_commit(&r->trace, &err);
    return rc ? cli_fail(r->cmd, &err) : cli_write_summary(r->cmd, r->c->out, r->summary);
}

int cmd_route_stats(int argc, char **argv)
{
    static const struct option opts[] = { CLI_COMMON_OPTIONS, CLI_TAG_OPTION,
                                          { "checkpoint", required_argument, NULL, OPT_CKPT },
                                          { "data", required_argument, NULL, OPT_DATA },
                                          { "capacity-factors", required_argument, NULL, OPT_CF },
                                          { "trace", required_argument, NULL, OPT_TRACE },
                                          { 0, 0, 0, 0 } };
    const char *cmd = "route-stats";
    struct cli_common c;
    struct rs_opts o = { .split = "test" };
    struct rs_run r;
    memset(&r, 0, sizeof r);
    r.cmd = cmd;
    r.c = &c;
    r.o = &o;
    cli_common_init(&c);
    int rc = cli_parse(argc, argv, cmd, opts, &c, on_opt, &o);
    if (rc == -1) {
        fputs(usage, stdout);
        rc = 0;
        goto out;
    }
    if (rc || (rc = cli_setup_compute_cuda(cmd, &c, &r.cuda)))
        goto out;
    if (!o.ckpt || !c.out) {
        rc = cli_error(cmd, 2, "options '--checkpoint' and '--out' are required (see 'moe help route-stats')");
        goto out;
    }
    if (c.config) {
        rc = cli_error(cmd, 2, "option '--config' does not apply: the config is the checkpoint's (use --set to change data.*)");
        goto out;
    }
    for (int i = 0; i < N_TABLES; i++)
        if ((rc = cli_tags_check_cols(&c.tags, cmd, tables[i].file, tables[i].cols, tables[i].n_cols)))
            goto out;
    if ((rc = rs_load(&r)) || (rc = capacity_sweep(&r)) || (rc = main_pass(&r)) || (rc = write_layers(&r)))
        goto out;
    cli_log(&c, "moe route-stats: %zu %s rows through %zu sparse layer(s); outputs in %s/", r.d->n, o.split,
            r.model.n_moe_layers, c.out);
out:
    rs_release(&r);
    cli_common_release(&c);
    return rc;
}
