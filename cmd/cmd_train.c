// cmd_train.c: `moe train` trains one model from a config and writes a run
// directory: config.json, metrics.csv, model.safetensors, summary.json; the
// summary JSON also goes to stdout. Along the way it keeps checkpoint.safetensors
// (weights, optimizer moments, position) after every epoch, every
// train.checkpoint_every steps and on SIGINT/SIGTERM; `--resume DIR` continues
// from it and ends with the same bytes as a run never stopped.
#include <glob.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "estimate.h"
#include "io/atomic.h"
#include "io/csv_writer.h"
#include "io/safetensors.h"
#include "moe/moe_layer.h"
#include "train/moebert.h"
#include "train/train.h"

static const char *const usage =
    "usage: moe train [--config FILE] [--set key.path=value]... [--out DIR] [--seed N]\n"
    "                 [--threads N] [--init CKPT] [--device cpu] [--quiet]\n"
    "       moe train --resume DIR [--threads N] [--quiet]\n"
    "       moe train --dry-run [--config FILE] [--set key.path=value]...\n"
    "       moe train --init CKPT [--trainable GLOB[,GLOB]] [--freeze GLOB[,GLOB]] ...\n"
    "Train the model a config describes; write DIR/config.json, metrics.csv,\n"
    "model.safetensors and summary.json, and print the summary JSON on stdout.\n"
    "Without --out, DIR is runs/train-<config hash>. DIR/checkpoint.safetensors is\n"
    "rewritten after every epoch (and every train.checkpoint_every steps); SIGINT or\n"
    "SIGTERM finishes the current step, writes it and exits 130 or 143.\n"
    "--resume DIR continues that run from its checkpoint, with its own config;\n"
    "the result is byte-identical to a run that was never stopped.\n"
    "--dry-run prints the parameter count, active parameters and FLOPs per token\n"
    "and the memory estimate as JSON, and trains nothing. A run whose estimate\n"
    "exceeds the memory available is refused (exit 1) before it allocates.\n"
    "--trainable / --freeze (repeatable; config keys train.trainable, train.freeze)\n"
    "train only the tensors whose names match a --trainable glob (fnmatch, '*'\n"
    "crosses dots) and no --freeze glob; the others stay byte-identical.\n"
    "GLOB@A-B (or GLOB@A) selects only experts A..B (0-based, inclusive) of the\n"
    "expert tensors [E, out, in] it matches (e.g. --trainable\n"
    "'layers.*.moe.experts.*@0-1', --freeze '*.experts.*@3'); the other experts'\n"
    "slices stay byte-identical.\n";

// The old cli_path: a path in a fixed buffer, silently cut short. Goes when
// this file takes cli_path's allocated paths.
static const char *path_in(char *buf, size_t len, const char *dir, const char *name)
{
    snprintf(buf, len, "%s/%s", dir, name);
    return buf;
}

enum { OPT_INIT = OPT_FIRST_CMD, OPT_RESUME, OPT_DRY_RUN, OPT_TRAINABLE, OPT_FREEZE };

struct train_ctx {
    struct cli_train_opts *o;
    struct cli_common *c;
};

static int on_opt(void *ctx_, int opt, const char *arg)
{
    struct train_ctx *ctx = ctx_;
    struct cli_train_opts *o = ctx->o;
    if (opt == OPT_TRAINABLE || opt == OPT_FREEZE)
        return cli_add_set(ctx->c, opt == OPT_TRAINABLE ? "--trainable" : "--freeze",
                           opt == OPT_TRAINABLE ? "train.trainable" : "train.freeze", arg, 1);
    if (opt == OPT_INIT) {
        o->init = arg;
        return 0;
    }
    if (opt == OPT_RESUME) {
        o->resume = arg;
        return 0;
    }
    if (opt == OPT_DRY_RUN) {
        o->dry_run = 1;
        return 0;
    }
    return 2;
}

// SIGINT/SIGTERM: ask the trainer to stop after the current step. A second
// signal gets the default action (the disposition is reset), so a stuck run
// can still be killed with a second Ctrl-C.
static volatile sig_atomic_t stop_signal;

static void on_signal(int sig)
{
    stop_signal = sig;
    signal(sig, SIG_DFL);
}

static void catch_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

static const char *const metric_cols[] = { "step", "epoch", "split", "loss", "mse", "accuracy", "gate_entropy",
                                           "active_experts", "expert_region_mi", "aux_loss", "z_loss", "load_cv",
                                           "importance_cv", "load_max_mean", "dropped_fraction", "router_entropy",
                                           "expert_label_mi", "bits_per_byte", "expert_lang_mi" };
static const char *const expert_cols[] = { "step", "epoch", "split", "layer", "expert", "tokens", "dropped",
                                           "gate_mean", "importance" };
static const char *const lang_cols[] = { "step", "epoch", "split", "language", "tokens", "bytes", "loss",
                                         "bits_per_byte" };

struct outputs {
    struct moe_csv metrics, experts, langs; // langs: text data only (languages.csv)
    struct moe_model *model; // for the block number of each sparse layer
    const char *dir;
    const struct moe_config *cfg;
    const struct moe_data *data;
    char *vocab;             // text data: the vocabulary file's bytes (checkpoint tensor vocab.text)
    size_t vocab_len;
    char *languages;         // text data: JSON array of the language names
};

static int write_metric_row(void *ctx, const struct moe_eval_row *r, struct moe_err *err)
{
    struct outputs *o = ctx;
    struct moe_csv *csv = &o->metrics;
    moe_csv_int(csv, (long long)r->step);
    moe_csv_int(csv, (long long)r->epoch);
    moe_csv_str(csv, r->split);
    moe_csv_num(csv, r->loss);
    moe_csv_num(csv, r->mse);
    moe_csv_num(csv, r->accuracy);
    moe_csv_num(csv, r->gate_entropy);
    moe_csv_num(csv, r->active_experts);
    moe_csv_num(csv, r->expert_region_mi);
    double route[] = { r->aux_loss, r->z_loss, r->load_cv, r->importance_cv, r->load_max_mean, r->dropped_fraction,
                       r->router_entropy, r->expert_label_mi, r->bits_per_byte, r->expert_lang_mi };
    for (size_t i = 0; i < sizeof route / sizeof *route; i++)
        moe_csv_num(csv, route[i]);
    int rc = moe_csv_end_row(csv, err);
    // languages.csv: one row per (step, split, language)
    for (size_t g = 0; !rc && o->data->has_text && g < r->n_lang; g++) {
        moe_csv_int(&o->langs, (long long)r->step);
        moe_csv_int(&o->langs, (long long)r->epoch);
        moe_csv_str(&o->langs, r->split);
        moe_csv_str(&o->langs, o->data->corpus.lang[g]);
        moe_csv_int(&o->langs, (long long)r->lang_tokens[g]);
        moe_csv_num(&o->langs, r->lang_bytes[g]);
        moe_csv_num(&o->langs, r->lang_tokens[g] ? r->lang_loss[g] / (double)r->lang_tokens[g] : NAN);
        moe_csv_num(&o->langs, r->lang_bytes[g] > 0 ? r->lang_loss[g] / (M_LN2 * r->lang_bytes[g]) : NAN);
        rc = moe_csv_end_row(&o->langs, err);
    }
    if (rc || !o->model->n_moe_layers)
        return rc;
    // experts.csv: one row per (step, split, layer, expert)
    for (size_t l = 0; l < r->n_route; l++) {
        const struct moe_route_acc *a = &r->route[l];
        for (size_t e = 0; e < a->E; e++) {
            moe_csv_int(&o->experts, (long long)r->step);
            moe_csv_int(&o->experts, (long long)r->epoch);
            moe_csv_str(&o->experts, r->split);
            moe_csv_int(&o->experts, (long long)o->model->ops->moe_layer_at(o->model, l)->c.index);
            moe_csv_int(&o->experts, (long long)e);
            moe_csv_num(&o->experts, a->routed[e]);
            moe_csv_num(&o->experts, a->dropped[e]);
            moe_csv_num(&o->experts, a->has_probs && a->tokens ? a->prob_sum[e] / (double)a->tokens : NAN);
            moe_csv_num(&o->experts, a->tokens ? a->gate_sum[e] / (double)a->tokens : NAN);
            if ((rc = moe_csv_end_row(&o->experts, err)))
                return rc;
        }
    }
    return 0;
}

static cJSON *eval_json(const struct moe_eval_row *r)
{
    cJSON *o = cJSON_CreateObject();
    const char *keys[] = { "loss", "mse", "accuracy", "gate_entropy", "active_experts", "expert_region_mi",
                           "aux_loss", "z_loss", "load_cv", "importance_cv", "load_max_mean", "dropped_fraction",
                           "router_entropy", "expert_label_mi", "bits_per_byte", "expert_lang_mi" };
    double vals[] = { r->loss, r->mse, r->accuracy, r->gate_entropy, r->active_experts, r->expert_region_mi,
                      r->aux_loss, r->z_loss, r->load_cv, r->importance_cv, r->load_max_mean, r->dropped_fraction,
                      r->router_entropy, r->expert_label_mi, r->bits_per_byte, r->expert_lang_mi };
    cJSON_AddNumberToObject(o, "rows", (double)r->n);
    for (size_t i = 0; i < sizeof vals / sizeof *vals; i++) {
        if (isnan(vals[i]))
            cJSON_AddNullToObject(o, keys[i]);
        else
            cJSON_AddNumberToObject(o, keys[i], vals[i]);
    }
    return o;
}

// The largest batch the model sees: the training batch (the whole split for
// full-batch gd) or the evaluation chunk, whichever is larger.
static size_t train_batch(const struct moe_config *cfg, size_t n_train, size_t n_test, const void *ctx)
{
    (void)ctx;
    size_t bs = (size_t)moe_cfg_int(cfg, "optim.batch_size");
    size_t max_batch = bs == 0 || strcmp(moe_cfg_str(cfg, "optim.type"), "gd") == 0 ? n_train : bs;
    if (strcmp(moe_cfg_str(cfg, "data.source"), "text") == 0)
        return max_batch; // evaluation passes are at most a training batch of windows (trainer.c)
    size_t chunk = (size_t)moe_cfg_int(cfg, "train.max_batch_eval");
    size_t biggest = n_train > n_test ? n_train : n_test;
    if (chunk > biggest)
        chunk = biggest;
    return chunk > max_batch ? chunk : max_batch;
}

// --dry-run: the estimate on stdout, from the config alone when it gives the
// data's shape (synthetic), else after loading the data.
static int dry_run(const char *cmd, const struct moe_config *cfg)
{
    struct moe_err err = { 0 };
    struct moe_data data;
    memset(&data, 0, sizeof data);
    enum moe_task task;
    size_t n_in, n_out, n_train, n_test;
    int known = moe_data_shape(cfg, &task, &n_in, &n_out, &n_train, &n_test, &err);
    if (known < 0)
        return cli_fail(cmd, &err);
    if (!known) {
        if (moe_data_load(&data, cfg, &err))
            return cli_fail(cmd, &err);
        task = data.train.task, n_in = data.train.n_in, n_out = data.train.n_out;
        n_train = data.train.n, n_test = data.test.n;
    }
    struct moe_model_estimate est;
    int rc = moe_model_estimate(cfg, task, n_in, n_out, n_train, n_test, train_batch(cfg, n_train, n_test, NULL), 1,
                                &est, &err);
    if (rc) {
        moe_data_release(&data);
        return cli_fail(cmd, &err);
    }
    cJSON *s = cli_summary_new(cmd, cfg);
    cJSON_AddBoolToObject(s, "dry_run", 1);
    cJSON_AddStringToObject(s, "model", moe_cfg_str(cfg, "model.type"));
    cJSON_AddNumberToObject(s, "train_rows", (double)n_train);
    cJSON_AddNumberToObject(s, "test_rows", (double)n_test);
    cJSON_AddNumberToObject(s, "max_batch", (double)train_batch(cfg, n_train, n_test, NULL));
    cJSON *e = cli_estimate_json(&est, !known);
    for (cJSON *it = e->child; it;) { // merge the estimate's keys into the summary
        cJSON *next = it->next;
        cJSON_AddItemToObject(s, it->string, cJSON_DetachItemViaPointer(e, it));
        it = next;
    }
    cJSON_Delete(e);
    cli_print_json(cmd, s);
    cJSON_Delete(s);
    moe_data_release(&data);
    return 0;
}

// The model file's tensors beyond the parameters and its metadata; *cfg_json is
// to be freed by the caller.
static size_t model_extras(const struct outputs *o, struct moe_st_ref extra[3])
{
    size_t n = 0;
    if (o->vocab)
        extra[n++] = (struct moe_st_ref){ MOE_VOCAB_TENSOR, MOE_U8, 1, { o->vocab_len }, o->vocab };
    if (o->data->standardized) {
        const struct moe_standardize *st = &o->data->stats;
        extra[n++] = (struct moe_st_ref){ "data.mean", MOE_F32, 1, { st->n_in }, st->mean };
        extra[n++] = (struct moe_st_ref){ "data.std", MOE_F32, 1, { st->n_in }, st->std };
    }
    return n;
}

enum { N_MODEL_META = 7 };

// Returns the number of entries (N_MODEL_META with text data, one fewer without).
static size_t model_meta(const struct outputs *o, const char *cfg_json, struct moe_st_meta meta[N_MODEL_META])
{
    meta[0] = (struct moe_st_meta){ "format", "moe" };
    meta[1] = (struct moe_st_meta){ "format_version", "1" };
    meta[2] = (struct moe_st_meta){ "moe_version", MOE_VERSION };
    meta[3] = (struct moe_st_meta){ "model", o->model->ops->type };
    meta[4] = (struct moe_st_meta){ "loss", o->model->loss_name };
    meta[5] = (struct moe_st_meta){ "config", cfg_json ? cfg_json : "{}" };
    if (!o->languages)
        return N_MODEL_META - 1;
    meta[6] = (struct moe_st_meta){ MOE_LANGUAGES_META, o->languages };
    return N_MODEL_META;
}

// Checkpoint hook: the metric tables first (so they hold at least every row the
// checkpoint counts), then the checkpoint with the tables' lengths.
static int write_checkpoint(void *ctx, const struct moe_train_ckpt *ck, struct moe_err *err)
{
    struct outputs *o = ctx;
    int rc = moe_csv_flush(&o->metrics, err);
    if (rc || (o->model->n_moe_layers && (rc = moe_csv_flush(&o->experts, err))) ||
        (o->data->has_text && (rc = moe_csv_flush(&o->langs, err))))
        return rc;
    char path[4200], mb[32], eb[32], lb[32];
    snprintf(mb, sizeof mb, "%zu", moe_csv_bytes(&o->metrics));
    snprintf(eb, sizeof eb, "%zu", o->model->n_moe_layers ? moe_csv_bytes(&o->experts) : (size_t)0);
    snprintf(lb, sizeof lb, "%zu", o->data->has_text ? moe_csv_bytes(&o->langs) : (size_t)0);
    char *cfg_json = moe_config_to_json(o->cfg, 0);
    struct moe_st_ref extra[3];
    struct moe_st_meta meta[N_MODEL_META + 3];
    size_t n_extra = model_extras(o, extra);
    size_t n_meta = model_meta(o, cfg_json, meta);
    meta[n_meta++] = (struct moe_st_meta){ "train.metrics_bytes", mb };
    meta[n_meta++] = (struct moe_st_meta){ "train.experts_bytes", eb };
    if (o->data->has_text)
        meta[n_meta++] = (struct moe_st_meta){ "train.languages_bytes", lb };
    rc = moe_train_checkpoint_write(path_in(path, sizeof path, o->dir, "checkpoint.safetensors"), o->model, ck,
                                    extra, n_extra, meta, n_meta, err);
    free(cfg_json);
    return rc;
}

// The summary of a finished run in dir, or NULL if there is none (or it records an interruption).
static cJSON *complete_summary(const char *dir)
{
    char path[4200], *text = NULL;
    if (moe_read_file(path_in(path, sizeof path, dir, "summary.json"), &text, NULL, NULL))
        return NULL;
    cJSON *s = cJSON_Parse(text);
    free(text);
    if (s && (!cJSON_IsObject(s) || cJSON_GetObjectItemCaseSensitive(s, "interrupted") ||
              !cJSON_GetObjectItemCaseSensitive(s, "final"))) {
        cJSON_Delete(s);
        s = NULL;
    }
    return s;
}

// Temporary files a killed process left behind ("<name>.tmp.<pid>", io/atomic.h).
static void remove_stale_tmp(const char *dir)
{
    char pattern[4200];
    glob_t g;
    if (snprintf(pattern, sizeof pattern, "%s/*.tmp.*", dir) >= (int)sizeof pattern ||
        glob(pattern, GLOB_NOSORT, NULL, &g) != 0)
        return;
    static const char *const ours[] = { "config.json", "metrics.csv", "experts.csv", "languages.csv", "vocab.txt",
                                        "model.safetensors", "checkpoint.safetensors", "summary.json",
                                        "importance.csv", "moebert.json" };
    for (size_t i = 0; i < g.gl_pathc; i++) {
        const char *base = strrchr(g.gl_pathv[i], '/') + 1;
        for (size_t k = 0; k < sizeof ours / sizeof *ours; k++) {
            size_t len = strlen(ours[k]);
            if (strncmp(base, ours[k], len) == 0 && strncmp(base + len, ".tmp.", 5) == 0)
                remove(g.gl_pathv[i]);
        }
    }
    globfree(&g);
}

// Text data: the vocabulary file's bytes and the language names, for the
// checkpoints, vocab.txt and the summary.
static int text_outputs(const char *cmd, struct outputs *o, const struct moe_data *d)
{
    struct moe_err err = { 0 };
    if (moe_vocab_serialize(&d->corpus.vocab, &o->vocab, &o->vocab_len, &err))
        return cli_fail(cmd, &err);
    cJSON *a = cJSON_CreateArray();
    for (size_t g = 0; a && g < d->corpus.n_lang; g++)
        cJSON_AddItemToArray(a, cJSON_CreateString(d->corpus.lang[g]));
    o->languages = a ? cJSON_PrintUnformatted(a) : NULL;
    cJSON_Delete(a);
    return o->languages ? 0 : cli_error(cmd, 1, "out of memory");
}

// summary.json: what the text data was.
static void text_summary(cJSON *s, const struct moe_data *d)
{
    const struct moe_corpus *c = &d->corpus;
    cJSON *t = cJSON_AddObjectToObject(s, "text");
    cJSON_AddStringToObject(t, "tokens", c->vocab.kind == MOE_TOK_WORDS ? "words" : "bytes");
    cJSON_AddNumberToObject(t, "vocab_size", (double)c->vocab.n);
    cJSON_AddNumberToObject(t, "n_ctx", (double)d->train.n_ctx);
    cJSON_AddNumberToObject(t, "train_tokens", (double)c->train.n_tok);
    cJSON_AddNumberToObject(t, "train_bytes", (double)(c->train.n_tok ? c->train.off[c->train.n_tok] : 0));
    cJSON_AddNumberToObject(t, "valid_tokens", (double)c->valid.n_tok);
    cJSON_AddNumberToObject(t, "valid_bytes", (double)(c->valid.n_tok ? c->valid.off[c->valid.n_tok] : 0));
    cJSON_AddNumberToObject(t, "windows_per_epoch", (double)d->train.n);
    cJSON_AddNumberToObject(t, "train_eval_windows", (double)d->train.n_win);
    cJSON_AddNumberToObject(t, "valid_eval_windows", (double)d->test.n_win);
    cJSON *l = cJSON_AddArrayToObject(t, "languages");
    for (size_t g = 0; g < c->n_lang; g++)
        cJSON_AddItemToArray(l, cJSON_CreateString(c->lang[g]));
}

// The strings of a list key, for the glob functions (a view into cfg).
static const char **str_list(const struct moe_config *cfg, const char *key, size_t *ret_n)
{
    size_t n = moe_cfg_len(cfg, key);
    const char **v = malloc((n ? n : 1) * sizeof *v);
    for (size_t i = 0; v && i < n; i++)
        v[i] = moe_cfg_str_at(cfg, key, i);
    *ret_n = n;
    return v;
}

// A checkpoint the run compares with (distill.teacher, distill.baseline): the
// model built from its own config and weights. It must read the student's data
// as it was trained to (same inputs, outputs, standardisation, vocabulary and
// languages). No path = nothing to do.
static int peer_setup(const char *cmd, const char *key, const struct moe_config *cfg, const struct moe_data *data,
                      const struct moe_model *student, struct moe_model *peer, struct moe_st_file *f)
{
    const char *path = moe_cfg_str(cfg, key);
    if (!path)
        return 0;
    struct moe_err err = { 0 };
    struct moe_config tc = { 0 };
    const char *text;
    int rc = 0;
    if (moe_safetensors_open(path, f, &err) || moe_data_check_text_checkpoint(data, f, &err)) {
        rc = cli_fail(cmd, &err);
        goto out;
    }
    if (!(text = moe_safetensors_meta(f, "config"))) {
        rc = cli_error(cmd, 1, "%s: no 'config' in the checkpoint's metadata (not written by moe train?)", path);
        goto out;
    }
    if (moe_config_parse(&tc, moe_run_schema, moe_run_schema_len, text, path, NULL, 0, &err)) {
        rc = cli_error(cmd, 1, "%s: the 'config' metadata is not a valid config: %s", path, err.msg);
        goto out;
    }
    if (moe_cfg_bool(&tc, "data.standardize") != moe_cfg_bool(cfg, "data.standardize")) {
        rc = cli_error(cmd, 2, "%s '%s' was trained with data.standardize=%s, the student has %s", key, path,
                       moe_cfg_bool(&tc, "data.standardize") ? "true" : "false",
                       moe_cfg_bool(cfg, "data.standardize") ? "true" : "false");
        goto out;
    }
    if (data->train.task == MOE_TASK_REGRESSION) {
        rc = cli_error(cmd, 2, "%s: distillation needs a classification or language-model task (data gives regression)", key);
        goto out;
    }
    if (moe_model_create(peer, &tc, NULL, data->train.task, data->train.n_in, data->train.n_out, student->max_batch,
                         &err)) {
        rc = cli_fail(cmd, &err);
        goto out;
    }
    if (moe_model_load(peer, f, 1, &err)) { // the teacher's (baseline's) fault, said so
        moe_error_prefix(&err, "%s: ", key);
        rc = cli_fail(cmd, &err);
        goto out;
    }
    if (!peer->loss_name || strcmp(peer->loss_name, "ce") != 0 || strcmp(student->loss_name, "ce") != 0)
        rc = cli_error(cmd, 2, "%s: distillation needs cross-entropy models (%s loss '%s', student loss '%s')", key,
                       path, peer->loss_name ? peer->loss_name : "?", student->loss_name ? student->loss_name : "?");
out:
    moe_config_release(&tc);
    return rc;
}

// distill.teacher_init: every student tensor with a namesake of the same shape
// in the teacher (the non-expert weights when an MoE teaches a dense model)
// starts from the teacher's values. Returns the tensors copied as a JSON array.
static cJSON *init_from_teacher(struct moe_model *m, const struct moe_model *teacher)
{
    cJSON *names = cJSON_CreateArray();
    uint8_t *copied = calloc(m->params.n ? m->params.n : 1, 1);
    if (copied)
        moe_params_copy_matching(&m->params, &teacher->params, copied);
    for (size_t i = 0; copied && i < m->params.n; i++)
        if (copied[i])
            cJSON_AddItemToArray(names, cJSON_CreateString(m->params.t[i].name));
    free(copied);
    return names;
}

// Evaluate m on the test split (distill.teacher, .baseline, MoEBERT's converted student).
static int eval_test(struct moe_model *m, const struct moe_data *data, const struct moe_config *cfg,
                     struct moe_eval_row *r, struct moe_err *err)
{
    struct moe_stats st;
    memset(&st, 0, sizeof st);
    int rc = moe_train_stats_init(&st, m, &data->test, err) ||
             moe_evaluate(m, &data->test, "test", (size_t)moe_cfg_int(cfg, "train.max_batch_eval"),
                          moe_cfg_num(cfg, "train.active_threshold"), &st, r, err);
    moe_stats_release(&st);
    return rc;
}

// summary.distill: the teacher, the settings, and with distill.baseline the
// test-split quality of teacher, baseline and student, with the fraction of the
// teacher-baseline gap the student recovers: (student - baseline) / (teacher - baseline).
static int distill_summary(const char *cmd, cJSON *s, const struct moe_config *cfg, struct moe_model *teacher,
                           struct moe_model *baseline, const struct moe_data *data, const struct moe_eval_row *student,
                           cJSON *copied)
{
    cJSON *d = cJSON_AddObjectToObject(s, "distill");
    cJSON_AddStringToObject(d, "teacher", moe_cfg_str(cfg, "distill.teacher"));
    cJSON_AddStringToObject(d, "teacher_model", teacher->ops->type);
    cJSON_AddNumberToObject(d, "teacher_parameters", (double)moe_params_count(&teacher->params));
    int moebert = moe_cfg_bool(cfg, "distill.moebert");
    cJSON_AddStringToObject(d, "mode", moebert ? "moebert" : moe_cfg_bool(cfg, "distill.teacher_init") ? "sparse-to-dense" : "kd");
    if (!moebert) { // MoEBERT's objective has its own weight (distill.moebert.weight in the summary)
        cJSON_AddNumberToObject(d, "alpha", moe_cfg_num(cfg, "distill.alpha"));
        cJSON_AddNumberToObject(d, "temperature", moe_cfg_num(cfg, "distill.temperature"));
    }
    if (copied)
        cJSON_AddItemToObject(d, "initialised_from_teacher", copied);
    if (!baseline->ops)
        return 0;
    cJSON_AddStringToObject(d, "baseline", moe_cfg_str(cfg, "distill.baseline"));
    struct moe_eval_row rt, rb;
    struct moe_err err = { 0 };
    if (eval_test(teacher, data, cfg, &rt, &err) || eval_test(baseline, data, cfg, &rb, &err))
        return cli_fail(cmd, &err);
    int lm = data->test.task == MOE_TASK_LM;
    const char *metric = lm ? "bits_per_byte" : "accuracy";
    double vt = lm ? rt.bits_per_byte : rt.accuracy, vb = lm ? rb.bits_per_byte : rb.accuracy;
    double vs = lm ? student->bits_per_byte : student->accuracy;
    cJSON *g = cJSON_AddObjectToObject(d, "gap");
    cJSON_AddStringToObject(g, "metric", metric);
    cJSON_AddStringToObject(g, "split", "test");
    cJSON_AddNumberToObject(g, "teacher", vt);
    cJSON_AddNumberToObject(g, "baseline", vb);
    cJSON_AddNumberToObject(g, "student", vs);
    // A fraction of the gap means something only when there is a gap: the teacher
    // better than the baseline (higher accuracy; lower bits per byte and loss).
    // Otherwise it is null, with the reason beside it.
    char why[160];
    if (lm ? vt < vb : vt > vb) {
        cJSON_AddNumberToObject(g, "fraction_recovered", (vs - vb) / (vt - vb));
    } else {
        cJSON_AddNullToObject(g, "fraction_recovered");
        snprintf(why, sizeof why, "the teacher (%s %.6g) does not beat the baseline (%.6g)", metric, vt, vb);
        cJSON_AddStringToObject(g, "fraction_recovered_reason", why);
    }
    cJSON_AddNumberToObject(g, "teacher_loss", rt.loss);
    cJSON_AddNumberToObject(g, "baseline_loss", rb.loss);
    cJSON_AddNumberToObject(g, "student_loss", student->loss);
    if (rt.loss < rb.loss) {
        cJSON_AddNumberToObject(g, "fraction_recovered_loss", (student->loss - rb.loss) / (rt.loss - rb.loss));
    } else {
        cJSON_AddNullToObject(g, "fraction_recovered_loss");
        snprintf(why, sizeof why, "the teacher (loss %.6g) does not beat the baseline (%.6g)", rt.loss, rb.loss);
        cJSON_AddStringToObject(g, "fraction_recovered_loss_reason", why);
    }
    return 0;
}

// distill.moebert: the dense teacher's FFNs become the student's experts
// (train/moebert.h): neuron importance over the training split into
// DIR/importance.csv, the split, the copy, and the student's quality right after
// conversion; what it did goes to DIR/moebert.json, which the summary repeats
// (also for a resumed run).
static int moebert_setup(const char *cmd, const struct cli_common *c, const struct moe_config *cfg,
                         struct moe_model *m, struct moe_model *teacher, const struct moe_data *data, size_t bs,
                         const char *dir)
{
    struct moe_err err = { 0 };
    struct moe_moebert mb;
    struct moe_csv csv;
    memset(&csv, 0, sizeof csv);
    char path[4200];
    const char *split = moe_cfg_str(cfg, "distill.split");
    uint64_t seed = (uint64_t)moe_cfg_int(cfg, "train.seed");
    int rc = moe_moebert_plan(&mb, m, teacher, (size_t)moe_cfg_int(cfg, "distill.shared"),
                              strcmp(split, "random") == 0, &err);
    if (!rc) {
        cli_log(c, "moe %s: moebert: neuron importance over %zu training %s, %zu blocks into %zu experts", cmd,
                data->train.n, data->train.task == MOE_TASK_LM ? "windows" : "rows", mb.n, mb.E);
        rc = moe_moebert_importance(&mb, teacher, &data->train, bs, seed, &err);
    }
    if (rc) {
        moe_moebert_release(&mb);
        return cli_fail(cmd, &err);
    }
    moe_moebert_split(&mb, seed);
    size_t copied = moe_moebert_convert(&mb, m, teacher);
    static const char *const cols[] = { "layer", "neuron", "importance", "rank", "role", "expert" };
    rc = moe_csv_open(&csv, path_in(path, sizeof path, dir, "importance.csv"), cols, 6, &err);
    for (size_t k = 0; !rc && k < mb.n; k++) {
        const struct moe_moebert_layer *ly = &mb.layer[k];
        for (size_t j = 0; !rc && j < mb.Fd; j++) {
            int32_t e = ly->expert[j];
            moe_csv_int(&csv, (long long)ly->block);
            moe_csv_int(&csv, (long long)j);
            moe_csv_num(&csv, ly->importance[j]);
            moe_csv_int(&csv, (long long)ly->rank[j]);
            moe_csv_str(&csv, e == MOE_MOEBERT_SHARED ? "shared" : e == MOE_MOEBERT_DROPPED ? "dropped" : "routed");
            moe_csv_int(&csv, e >= 0 ? (long long)e : -1);
            rc = moe_csv_end_row(&csv, &err);
        }
    }
    if (!rc)
        rc = moe_csv_close(&csv, &err);
    moe_csv_abort(&csv);
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "split", split);
    cJSON_AddNumberToObject(j, "shared_neurons", (double)mb.s);
    cJSON_AddNumberToObject(j, "experts", (double)mb.E);
    cJSON_AddNumberToObject(j, "expert_neurons", (double)mb.F);
    cJSON_AddNumberToObject(j, "teacher_neurons", (double)mb.Fd);
    cJSON_AddNumberToObject(j, "weight", moe_cfg_num(cfg, "distill.weight"));
    cJSON_AddNumberToObject(j, "tensors_copied", (double)copied);
    cJSON *ls = cJSON_AddArrayToObject(j, "layers");
    for (size_t k = 0; k < mb.n; k++) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "layer", (double)mb.layer[k].block);
        cJSON_AddNumberToObject(o, "dropped_neurons", (double)mb.layer[k].dropped);
        cJSON_AddItemToArray(ls, o);
    }
    moe_moebert_release(&mb);
    // the test split, for the teacher and for the student as converted (before any training)
    struct moe_eval_row rt, rs;
    if (!rc)
        rc = eval_test(teacher, data, cfg, &rt, &err) || eval_test(m, data, cfg, &rs, &err);
    if (!rc) {
        cJSON_AddItemToObject(j, "teacher_test", eval_json(&rt));
        cJSON_AddItemToObject(j, "converted_test", eval_json(&rs));
        rc = cli_write_json(path_in(path, sizeof path, dir, "moebert.json"), j, &err);
    }
    cJSON_Delete(j);
    return rc ? cli_fail(cmd, &err) : 0;
}

// The trainable parameters of a tuning run (unfrozen tensors, trained expert
// slices and adapters) and their share of all parameters (base and adapters);
// trained_experts lists the experts trained of each tensor trained in part.
static void tune_summary(cJSON *s, const struct moe_model *m, const struct moe_tune_sel *sel, const struct moe_lora *l)
{
    const uint8_t *frozen = sel->frozen;
    size_t base = moe_params_count(&m->params), adapter = l ? moe_lora_count(l) : 0, n_frozen = 0;
    size_t trained = adapter + moe_tune_sel_count(sel, &m->params);
    for (size_t i = 0; i < m->params.n; i++)
        n_frozen += frozen[i];
    cJSON *t = cJSON_AddObjectToObject(s, "tuning");
    cJSON_AddNumberToObject(t, "base_parameters", (double)base);
    cJSON_AddNumberToObject(t, "adapter_parameters", (double)adapter);
    cJSON_AddNumberToObject(t, "trainable_parameters", (double)trained);
    cJSON_AddNumberToObject(t, "trainable_fraction", (double)trained / (double)(base + adapter));
    cJSON_AddNumberToObject(t, "frozen_tensors", (double)n_frozen);
    cJSON *tr = cJSON_AddArrayToObject(t, "trained_tensors");
    for (size_t i = 0; i < m->params.n; i++)
        if (!frozen[i])
            cJSON_AddItemToArray(tr, cJSON_CreateString(m->params.t[i].name));
    cJSON *te = cJSON_AddArrayToObject(t, "trained_experts");
    for (size_t i = 0; i < m->params.n; i++) {
        if (frozen[i] || !sel->frozen_experts[i])
            continue;
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "tensor", m->params.t[i].name);
        cJSON *ex = cJSON_AddArrayToObject(o, "experts");
        for (size_t e = 0; e < m->params.t[i].shape[0]; e++)
            if (!sel->frozen_experts[i][e])
                cJSON_AddItemToArray(ex, cJSON_CreateNumber((double)e));
        cJSON_AddItemToArray(te, o);
    }
    if (!l)
        return;
    cJSON_AddNumberToObject(t, "rank", (double)l->rank);
    cJSON_AddNumberToObject(t, "alpha", l->alpha);
    cJSON *a = cJSON_AddArrayToObject(t, "adapted_tensors");
    for (size_t k = 0; k < l->n; k++)
        cJSON_AddItemToArray(a, cJSON_CreateString(m->params.t[l->t[k].base].name));
}

// adapters.safetensors: the adapter tensors, the base tensors the run trained in
// full (routers) or in part (expert slices; written whole), and the model file's
// metadata (config with lora.*).
static int write_adapters(const char *path, const struct moe_model *m, const uint8_t *frozen,
                          const struct moe_lora *l, const struct moe_st_meta *meta, size_t n_meta, struct moe_err *err)
{
    struct moe_st_ref *refs = calloc(m->params.n ? m->params.n : 1, sizeof *refs);
    if (!refs)
        return moe_error(err, MOE_ENOMEM, "out of memory");
    size_t n = 0;
    for (size_t i = 0; i < m->params.n; i++) {
        const struct moe_tensor *t = &m->params.t[i];
        if (frozen[i])
            continue;
        refs[n] = (struct moe_st_ref){ t->name, MOE_F32, t->ndim, { 0 }, moe_params_data(&m->params, (int)i) };
        memcpy(refs[n].shape, t->shape, sizeof t->shape);
        n++;
    }
    int rc = moe_safetensors_write_params(path, &l->p, refs, n, meta, n_meta, err);
    free(refs);
    return rc;
}

// What the run trains (train.trainable / train.freeze, and for moe lora the
// adapters of lora.*): fills *ret_sel (frozen = NULL: everything) and, with adapters, *lora.
static int tune_setup(const char *cmd, const struct moe_config *cfg, struct moe_model *m, int lora_mode,
                      struct moe_tune_sel *ret_sel, struct moe_lora *lora)
{
    static const char *const what_t = "train.trainable (--trainable)", *const what_f = "train.freeze (--freeze)";
    struct moe_err err = { 0 };
    struct moe_tune_sel sel = { 0 };
    size_t n_t, n_f, n_g;
    const char **tr = str_list(cfg, "train.trainable", &n_t), **fr = str_list(cfg, "train.freeze", &n_f);
    const char **tg = str_list(cfg, "lora.targets", &n_g);
    size_t rank = (size_t)moe_cfg_int(cfg, "lora.rank");
    int rc = 0;
    if (!tr || !fr || !tg) {
        rc = cli_error(cmd, 1, "out of memory");
        goto out;
    }
    if (!lora_mode) {
        if (rank > 0) {
            rc = cli_error(cmd, 2, "config key 'lora.rank' is %zu: adapters are trained by 'moe lora --base CKPT', not 'moe train'", rank);
            goto out;
        }
        if (n_t || n_f) {
            if (moe_tune_select_ex(&sel, &m->params, tr, n_t, fr, n_f, what_t, what_f, &err)) {
                rc = cli_fail(cmd, &err);
                goto out;
            }
            *ret_sel = sel;
            memset(&sel, 0, sizeof sel);
        }
        goto out;
    }
    if (rank == 0 || !n_g) {
        rc = cli_error(cmd, 2, rank == 0 ? "config key 'lora.rank' is 0: give the adapters' rank with --rank R (R >= 1)"
                                         : "config key 'lora.targets' is empty: name the adapted matrices with --targets GLOB[,GLOB...]");
        goto out;
    }
    // The base is frozen but for the routers (unless lora.freeze_router) and what
    // train.trainable names (tensors or expert slices); train.freeze has the last word.
    int train_router = !moe_cfg_bool(cfg, "lora.freeze_router");
    static const char *const router_globs[] = { "*.router.*", "*.lang_emb" };
    if (moe_tune_sel_init(&sel, &m->params, 1, &err) ||
        (train_router && moe_tune_sel_mark(&sel, &m->params, router_globs, 2, 0, NULL, &err)) ||
        moe_tune_sel_mark(&sel, &m->params, tr, n_t, 0, what_t, &err) ||
        moe_tune_sel_mark(&sel, &m->params, fr, n_f, 1, what_f, &err)) {
        rc = cli_fail(cmd, &err);
        goto out;
    }
    if (moe_lora_create(lora, &m->params, sel.frozen, tg, n_g, rank, moe_cfg_num(cfg, "lora.alpha"),
                        strcmp(moe_cfg_str(cfg, "lora.expert_mode"), "shared") == 0, &err)) {
        rc = cli_fail(cmd, &err);
        goto out;
    }
    moe_lora_init(lora, (uint64_t)moe_cfg_int(cfg, "train.seed"));
    *ret_sel = sel;
    memset(&sel, 0, sizeof sel);
out:
    free(tr);
    free(fr);
    free(tg);
    moe_tune_sel_release(&sel);
    return rc;
}

int cmd_train(int argc, char **argv)
{
    static const struct option opts[] = { CLI_COMMON_OPTIONS, { "init", required_argument, NULL, OPT_INIT },
                                          { "resume", required_argument, NULL, OPT_RESUME },
                                          { "dry-run", no_argument, NULL, OPT_DRY_RUN },
                                          { "trainable", required_argument, NULL, OPT_TRAINABLE },
                                          { "freeze", required_argument, NULL, OPT_FREEZE }, { 0, 0, 0, 0 } };
    const char *cmd = "train";
    struct cli_common c;
    struct cli_train_opts o = { 0 };
    cli_common_init(&c);
    struct train_ctx ctx = { &o, &c };
    int rc = cli_parse(argc, argv, cmd, opts, &c, on_opt, &ctx);
    if (rc == -1) {
        fputs(usage, stdout);
        rc = 0;
    } else if (!rc) {
        if (o.resume && c.n_owned)
            rc = cli_error(cmd, 2, "option '%s' cannot be combined with '--resume' (the run keeps the config in its checkpoint)",
                           c.first_owned_opt);
        else
            rc = cli_train_run(cmd, &c, &o);
    }
    cli_common_release(&c);
    return rc;
}

int cli_train_run(const char *cmd, struct cli_common *cp, const struct cli_train_opts *op)
{
    struct cli_common c = *cp; // read-only here: the caller owns and releases it
    struct cli_train_opts o = *op;
    struct moe_err err = { 0 };
    struct moe_config cfg = { 0 };
    struct moe_data data;
    struct moe_model model;
    struct outputs outs;
    struct moe_st_file init = { 0 }, resume = { 0 };
    cJSON *summary = NULL;
    char *cfg_text = NULL;
    struct moe_vocab ck_vocab; // a resumed run's vocabulary (text data)
    memset(&ck_vocab, 0, sizeof ck_vocab);
    memset(&data, 0, sizeof data);
    memset(&model, 0, sizeof model);
    memset(&outs, 0, sizeof outs);
    char outbuf[4096], path[4200];
    struct moe_lora lora;
    memset(&lora, 0, sizeof lora);
    struct moe_model teacher;
    memset(&teacher, 0, sizeof teacher);
    struct moe_st_file teacher_file = { 0 }, baseline_file = { 0 };
    struct moe_model baseline;
    memset(&baseline, 0, sizeof baseline);
    cJSON *copied = NULL;
    struct moe_tune_sel tune = { 0 }; // what a tuning run trains (tune.frozen = NULL: everything)
    int rc = 0;
    if (o.resume) {
        const char *clash = c.config ? "--config" : c.n_sets ? "--set" : c.seed >= 0 ? "--seed" : o.init ? "--init"
                            : c.out ? "--out" : NULL;
        if (clash) {
            rc = cli_error(cmd, 2, "option '%s' cannot be combined with '--resume' (the run keeps the config in its checkpoint)",
                           clash);
            goto out;
        }
    }
    if ((rc = cli_setup_compute(cmd, &c)))
        goto out;
    catch_signals();
    const char *out = o.resume ? o.resume : c.out;
    struct moe_train_pos pos = { 0 };
    uint64_t keep_metrics = 0, keep_experts = 0, keep_langs = 0;
    int has_vocab = 0;
    if (o.resume) {
        summary = complete_summary(out);
        if (summary) { // nothing left to do: say so, and print the run's summary again
            cli_log(&c, "moe %s: the run in %s/ is already complete", cmd, out);
            cli_print_json(cmd, summary);
            rc = 0;
            goto out;
        }
        const char *cfg_json;
        if (moe_safetensors_open(path_in(path, sizeof path, out, "checkpoint.safetensors"), &resume, &err) ||
            moe_train_pos_read(&resume, &pos, &err) ||
            moe_train_meta_count(&resume, "train.metrics_bytes", &keep_metrics, &err) ||
            moe_train_meta_count(&resume, "train.experts_bytes", &keep_experts, &err) ||
            (has_vocab = moe_data_vocab_read(&resume, &ck_vocab, &err)) < 0 ||
            (has_vocab && moe_train_meta_count(&resume, "train.languages_bytes", &keep_langs, &err))) {
            rc = cli_fail(cmd, &err);
            goto out;
        }
        if (!(cfg_json = moe_safetensors_meta(&resume, "config"))) {
            rc = cli_error(cmd, 1, "%s: no metadata 'config'", resume.path);
            goto out;
        }
        struct moe_err perr;
        if (moe_config_parse(&cfg, moe_run_schema, moe_run_schema_len, cfg_json, resume.path, NULL, 0, &perr)) {
            rc = cli_error(cmd, 1, "%s: the 'config' metadata is not a valid config: %s", resume.path, perr.msg);
            goto out;
        }
    } else if (cli_load_config(&c, &cfg, &err)) {
        rc = cli_fail(cmd, &err);
        goto out;
    }
    if (o.dry_run) {
        rc = dry_run(cmd, &cfg);
        goto out;
    }
    // Refuse a run that will not fit before allocating: from the config's shape
    // when it gives one (synthetic data), else once the data is loaded.
    int checked = 0;
    struct moe_model_estimate est; // its FLOPs per token give summary.json's train_gflops
    if ((rc = cli_check_run(cmd, &cfg, NULL, train_batch, NULL, 1, &est, &checked)))
        goto out;
    // A resumed run reads its text with the vocabulary it was trained with.
    if (moe_data_load_ex(&data, &cfg, has_vocab > 0 ? &ck_vocab : NULL, &err)) {
        rc = cli_fail(cmd, &err);
        goto out;
    }
    if (data.has_text && ((rc = text_outputs(cmd, &outs, &data))))
        goto out;
    if (!checked && (rc = cli_check_run(cmd, &cfg, &data, train_batch, NULL, 1, &est, &checked)))
        goto out;
    if (!out) {
        snprintf(outbuf, sizeof outbuf, "runs/train-%016llx", (unsigned long long)moe_config_hash(&cfg));
        out = outbuf;
    }
    size_t max_batch = train_batch(&cfg, data.train.n, data.test.n, NULL);
    if (moe_model_create(&model, &cfg, NULL, data.train.task, data.train.n_in, data.train.n_out, max_batch, &err)) {
        rc = cli_fail(cmd, &err);
        goto out;
    }
    moe_model_init_weights(&model, (uint64_t)moe_cfg_int(&cfg, "train.seed"));
    if (moe_model_fit(&model, &data.train, &err) ||
        (o.init && (moe_safetensors_open(o.init, &init, &err) || moe_data_check_text_checkpoint(&data, &init, &err) ||
                    moe_model_load(&model, &init, 1, &err))) ||
        (o.resume && moe_model_load(&model, &resume, 1, &err))) {
        rc = cli_fail(cmd, &err);
        goto out;
    }
    if ((rc = peer_setup(cmd, "distill.teacher", &cfg, &data, &model, &teacher, &teacher_file)) ||
        (rc = peer_setup(cmd, "distill.baseline", &cfg, &data, &model, &baseline, &baseline_file)))
        goto out;
    if (baseline.ops && !teacher.ops) {
        rc = cli_error(cmd, 2, "config key 'distill.baseline' needs distill.teacher (--teacher)");
        goto out;
    }
    if (moe_cfg_bool(&cfg, "distill.teacher_init") && !o.resume) {
        if (!teacher.ops) {
            rc = cli_error(cmd, 2, "config key 'distill.teacher_init' needs distill.teacher (--teacher)");
            goto out;
        }
        copied = init_from_teacher(&model, &teacher);
    }
    if ((rc = tune_setup(cmd, &cfg, &model, o.lora, &tune, &lora)))
        goto out;
    if (cli_mkdir_p(out, &err)) {
        rc = cli_fail(cmd, &err);
        goto out;
    }
    outs.model = &model;
    outs.dir = out;
    outs.cfg = &cfg;
    outs.data = &data;
    if (o.resume)
        remove_stale_tmp(out);
    int moebert = moe_cfg_bool(&cfg, "distill.moebert");
    if (!o.resume) {
        // A new run in an old directory: drop what would make it look resumable or complete.
        remove(path_in(path, sizeof path, out, "checkpoint.safetensors"));
        remove(path_in(path, sizeof path, out, "summary.json"));
        remove(path_in(path, sizeof path, out, "importance.csv"));
        remove(path_in(path, sizeof path, out, "moebert.json"));
        if (moebert) {
            if (!teacher.ops) {
                rc = cli_error(cmd, 2, "config key 'distill.moebert' needs distill.teacher (--teacher)");
                goto out;
            }
            if ((rc = moebert_setup(cmd, &c, &cfg, &model, &teacher, &data, max_batch, out)))
                goto out;
        }
    }
    cfg_text = moe_config_to_json(&cfg, 1);
    size_t cfg_len = cfg_text ? strlen(cfg_text) : 0;
    if (cfg_text) {
        cfg_text = realloc(cfg_text, cfg_len + 2);
        cfg_text[cfg_len++] = '\n';
        cfg_text[cfg_len] = '\0';
    }
    const char *mpath = "metrics.csv", *epath = "experts.csv", *lpath = "languages.csv";
    size_t n_mcols = sizeof metric_cols / sizeof *metric_cols, n_ecols = sizeof expert_cols / sizeof *expert_cols;
    size_t n_lcols = sizeof lang_cols / sizeof *lang_cols;
    char path2[4200], path3[4200];
    if (!cfg_text || moe_atomic_write(path_in(path, sizeof path, out, "config.json"), cfg_text, cfg_len, &err) ||
        (o.resume ? moe_csv_reopen(&outs.metrics, path_in(path, sizeof path, out, mpath), metric_cols, n_mcols,
                                   keep_metrics, &err)
                  : moe_csv_open(&outs.metrics, path_in(path, sizeof path, out, mpath), metric_cols, n_mcols, &err)) ||
        (model.n_moe_layers &&
         (o.resume ? moe_csv_reopen(&outs.experts, path_in(path2, sizeof path2, out, epath), expert_cols, n_ecols,
                                    keep_experts, &err)
                   : moe_csv_open(&outs.experts, path_in(path2, sizeof path2, out, epath), expert_cols, n_ecols,
                                  &err))) ||
        (data.has_text &&
         (o.resume ? moe_csv_reopen(&outs.langs, path_in(path3, sizeof path3, out, lpath), lang_cols, n_lcols,
                                    keep_langs, &err)
                   : moe_csv_open(&outs.langs, path_in(path3, sizeof path3, out, lpath), lang_cols, n_lcols, &err))) ||
        (outs.vocab && moe_atomic_write(path_in(path, sizeof path, out, "vocab.txt"), outs.vocab, outs.vocab_len,
                                        &err))) {
        rc = cfg_text ? cli_fail(cmd, &err) : cli_error(cmd, 1, "out of memory");
        goto out;
    }
    if (o.resume)
        cli_log(&c, "moe %s: resuming %s/ at step %llu (epoch %llu)", cmd, out, (unsigned long long)pos.steps,
                (unsigned long long)pos.epoch);
    else
        cli_log(&c, "moe %s: %s model, %zu parameters, %zu train / %zu test rows, writing %s/", cmd, model.ops->type,
                moe_params_count(&model.params), data.train.n, data.test.n, out);
    struct moe_train_result res;
    // A LoRA run keeps no checkpoint (it cannot be resumed yet): its model slots hold W0 + sBA.
    struct moe_train_hooks hooks = { .row = write_metric_row, .ctx = &outs,
                                     .checkpoint = o.lora ? NULL : write_checkpoint, .stop = &stop_signal,
                                     .resume = o.resume ? &resume : NULL, .frozen = tune.frozen,
                                     .frozen_experts = tune.frozen_experts,
                                     .lora = o.lora ? &lora : NULL,
                                     .teacher = teacher.ops ? &teacher : NULL,
                                     .kd_alpha = (float)moe_cfg_num(&cfg, moebert ? "distill.weight" : "distill.alpha"),
                                     .kd_tau = (float)moe_cfg_num(&cfg, "distill.temperature"),
                                     .kd_sym = moebert };
    rc = moe_train_ex(&model, &data, &cfg, &hooks, &res, &err);
    if (rc == MOE_EINTR) {
        // The checkpoint is written: say where the run stopped and how to go on.
        // A LoRA run has no checkpoint hook: keep its metric rows at least.
        int sig = stop_signal;
        if (o.lora && (moe_csv_close(&outs.metrics, &err) || (model.n_moe_layers && moe_csv_close(&outs.experts, &err)) ||
                       (data.has_text && moe_csv_close(&outs.langs, &err)))) {
            rc = cli_fail(cmd, &err);
            goto out;
        }
        summary = cli_summary_new(cmd, &cfg);
        cJSON_AddStringToObject(summary, "interrupted", sig == SIGINT ? "SIGINT" : "SIGTERM");
        cJSON_AddNumberToObject(summary, "steps", (double)res.steps);
        cJSON_AddStringToObject(summary, "out", out);
        if (!o.lora)
            cJSON_AddStringToObject(summary, "checkpoint", path_in(path, sizeof path, out, "checkpoint.safetensors"));
        if (cli_write_json(path_in(path, sizeof path, out, "summary.json"), summary, &err)) {
            rc = cli_fail(cmd, &err);
            goto out;
        }
        cli_print_json(cmd, summary);
        if (o.lora)
            rc = cli_error(cmd, 128 + sig, "interrupted by %s at step %llu; a LoRA run cannot be resumed, run it again",
                           sig == SIGINT ? "SIGINT" : "SIGTERM", (unsigned long long)res.steps);
        else
            rc = cli_error(cmd, 128 + sig, "interrupted by %s at step %llu; checkpoint written (continue with: moe train --resume %s)",
                           sig == SIGINT ? "SIGINT" : "SIGTERM", (unsigned long long)res.steps, out);
        goto out;
    }
    if (rc) {
        // Keep the rows written so far for diagnosis; the last checkpoint stays as it was.
        struct moe_err ignored;
        moe_csv_flush(&outs.metrics, &ignored);
        if (model.n_moe_layers)
            moe_csv_flush(&outs.experts, &ignored);
        if (data.has_text)
            moe_csv_flush(&outs.langs, &ignored);
        rc = cli_fail(cmd, &err);
        goto out;
    }
    if (moe_csv_close(&outs.metrics, &err) || (model.n_moe_layers && moe_csv_close(&outs.experts, &err)) ||
        (data.has_text && moe_csv_close(&outs.langs, &err))) {
        rc = cli_fail(cmd, &err);
        goto out;
    }

    // the model: parameters, state, normalisation statistics, and the resolved config
    {
        struct moe_st_ref extra[3];
        struct moe_st_meta meta[N_MODEL_META];
        size_t n_extra = model_extras(&outs, extra);
        char *cfg_compact = moe_config_to_json(&cfg, 0);
        size_t n_meta = model_meta(&outs, cfg_compact, meta);
        if (!o.lora || o.merge)
            rc = moe_model_save(&model, path_in(path, sizeof path, out, o.lora ? "merged.safetensors" : "model.safetensors"),
                                extra, n_extra, meta, n_meta, &err);
        if (!rc && o.lora)
            rc = write_adapters(path_in(path, sizeof path, out, "adapters.safetensors"), &model, tune.frozen, &lora, meta,
                                n_meta, &err);
        free(cfg_compact);
        if (rc) {
            rc = cli_fail(cmd, &err);
            goto out;
        }
    }

    summary = cli_summary_new(cmd, &cfg);
    cJSON_AddStringToObject(summary, "model", model.ops->type);
    cJSON_AddStringToObject(summary, "loss", model.loss_name);
    cJSON_AddStringToObject(summary, "loss_convention",
                            data.has_text ? "next-token cross-entropy in nats, averaged over predicted tokens; bits_per_byte = the summed nats / ln 2 / the source bytes of those tokens"
                                          : "per-row objective averaged over rows; squared errors summed over outputs");
    if (data.has_text)
        text_summary(summary, &data);
    cJSON_AddNumberToObject(summary, "parameters", (double)moe_params_count(&model.params));
    if (tune.frozen)
        tune_summary(summary, &model, &tune, o.lora ? &lora : NULL);
    if (teacher.ops) {
        rc = distill_summary(cmd, summary, &cfg, &teacher, &baseline, &data, &res.final_test, copied);
        copied = NULL; // owned by the summary now
        if (rc)
            goto out;
        char *mtext = NULL;
        cJSON *mj = moebert && !moe_read_file(path_in(path, sizeof path, out, "moebert.json"), &mtext, NULL, NULL)
                        ? cJSON_Parse(mtext) : NULL;
        free(mtext);
        if (mj)
            cJSON_AddItemToObject(cJSON_GetObjectItemCaseSensitive(summary, "distill"), "moebert", mj);
    }
    if (model.n_moe_layers)
        cli_routing_json(summary, &model);
    cJSON_AddNumberToObject(summary, "epochs", (double)res.epochs);
    cJSON_AddNumberToObject(summary, "steps", (double)res.steps);
    if (res.criterion_epoch >= 0)
        cJSON_AddNumberToObject(summary, "criterion_epoch", (double)res.criterion_epoch);
    else
        cJSON_AddNullToObject(summary, "criterion_epoch");
    cJSON *fin = cJSON_AddObjectToObject(summary, "final");
    cJSON_AddItemToObject(fin, "train", eval_json(&res.final_train));
    cJSON_AddItemToObject(fin, "test", eval_json(&res.final_test));
    if (model.n_expert) {
        size_t k = model.n_expert < 64 ? model.n_expert : 64;
        cJSON_AddItemToObject(summary, "gate_mean_train", cJSON_CreateDoubleArray(res.final_gate_mean, (int)k));
    }
    cJSON_AddNumberToObject(summary, "wall_seconds", res.wall_seconds);
    cJSON_AddNumberToObject(summary, "train_rows_per_second", res.rows_per_second);
    if (data.has_text)
        cJSON_AddNumberToObject(summary, "train_tokens_per_second", res.tokens_per_second);
    // achieved rate in the estimate's convention (3 x the forward weight-matrix FLOPs per token or row)
    cJSON_AddNumberToObject(summary, "train_gflops",
                            est.flops_per_token * (data.has_text ? res.tokens_per_second : res.rows_per_second) * 1e-9);
    cJSON_AddStringToObject(summary, "out", out);
    if (o.init)
        cJSON_AddStringToObject(summary, "init", o.init);
    if (o.resume)
        cJSON_AddNumberToObject(summary, "resumed_at_step", (double)pos.steps);
    if (cli_write_json(path_in(path, sizeof path, out, "summary.json"), summary, &err)) {
        rc = cli_fail(cmd, &err);
        goto out;
    }
    cli_print_json(cmd, summary);
    cli_log(&c, "moe %s: done in %.2f s; outputs in %s/ (config.json, metrics.csv, %s, summary.json)", cmd,
            res.wall_seconds, out,
            !o.lora ? "model.safetensors" : o.merge ? "adapters.safetensors, merged.safetensors" : "adapters.safetensors");
    rc = 0;
out:
    moe_csv_abort(&outs.metrics);
    moe_csv_abort(&outs.experts);
    moe_csv_abort(&outs.langs);
    free(outs.vocab);
    free(outs.languages);
    moe_vocab_release(&ck_vocab);
    cJSON_Delete(summary);
    free(cfg_text);
    moe_safetensors_close(&init);
    moe_safetensors_close(&resume);
    moe_model_release(&model);
    moe_data_release(&data);
    moe_config_release(&cfg);
    moe_lora_release(&lora);
    moe_tune_sel_release(&tune);
    if (teacher.ops)
        moe_model_release(&teacher);
    if (baseline.ops)
        moe_model_release(&baseline);
    moe_safetensors_close(&teacher_file);
    moe_safetensors_close(&baseline_file);
    cJSON_Delete(copied);
    return rc;
}
