// run_output.c (cmd): the run directory of `moe train` (and distill, lora):
// config.json, vocab.txt, the live tables metrics.csv, experts.csv and
// languages.csv, checkpoint.safetensors, the model file and summary.json. The
// three live tables are one table of tables below: each is opened (or cut back
// to its checkpoint's rows on --resume), given its rows (each appended to the
// file as it ends, io/csv_writer.h), fsynced before every checkpoint, counted
// in it and closed by the same loops. Not here: what the
// run trains (train_tune.c), the teacher (train_distill.c), the order of the
// steps (cmd_train.c), the directory's lock and what a new run may find
// there (run_dir.c).
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "io/atomic.h"
#include "moe/moe_layer.h"
#include "train_run.h"

static const char *const metric_cols[] = { "step", "epoch", "split", "loss", "mse", "accuracy", "gate_entropy",
                                           "active_experts", "expert_region_mi", "aux_loss", "z_loss", "load_cv",
                                           "importance_cv", "load_max_mean", "dropped_fraction", "router_entropy",
                                           "expert_label_mi", "bits_per_byte", "expert_lang_mi" };
static const char *const expert_cols[] = { "step", "epoch", "split", "layer", "expert", "tokens", "dropped",
                                           "gate_mean", "importance" };
static const char *const lang_cols[] = { "step", "epoch", "split", "language", "tokens", "bytes", "loss",
                                         "bits_per_byte" };

// An evaluation row's figures: metrics.csv's columns after step, epoch and split
// (also the keys of run_output_eval_json).
#define N_FIGURES (sizeof metric_cols / sizeof *metric_cols - 3)
static const char *const *const figure_keys = metric_cols + 3;

static void figures(const struct moe_eval_row *r, double v[N_FIGURES])
{
    double f[] = { r->loss, r->mse, r->accuracy, r->gate_entropy, r->active_experts, r->expert_region_mi,
                   r->aux_loss, r->z_loss, r->load_cv, r->importance_cv, r->load_max_mean, r->dropped_fraction,
                   r->router_entropy, r->expert_label_mi, r->bits_per_byte, r->expert_lang_mi };
    _Static_assert(sizeof f / sizeof *f == N_FIGURES, "a figure for every metrics.csv column");
    memcpy(v, f, sizeof f);
}

// The cells every live table's row starts with; its row ends with the tags'
// values (cli_csv_end_row).
static void row_start(struct moe_csv *csv, const struct moe_eval_row *r)
{
    moe_csv_int(csv, (long long)r->step);
    moe_csv_int(csv, (long long)r->epoch);
    moe_csv_str(csv, r->split);
}

// metrics.csv: one row per (step, split)
static int metric_rows(const struct run_output *o, struct moe_csv *csv, const struct moe_eval_row *r,
                       struct moe_err *err)
{
    double v[N_FIGURES];
    figures(r, v);
    row_start(csv, r);
    for (size_t i = 0; i < N_FIGURES; i++)
        moe_csv_num(csv, v[i]);
    return cli_csv_end_row(csv, o->tags, err);
}

// experts.csv: one row per (step, split, layer, expert)
static int expert_rows(const struct run_output *o, struct moe_csv *csv, const struct moe_eval_row *r,
                       struct moe_err *err)
{
    for (size_t l = 0; l < r->n_route; l++) {
        const struct moe_route_acc *a = &r->route[l];
        for (size_t e = 0; e < a->E; e++) {
            row_start(csv, r);
            moe_csv_int(csv, (long long)o->model->ops->moe_layer_at(o->model, l)->c.index);
            moe_csv_int(csv, (long long)e);
            moe_csv_num(csv, a->routed[e]);
            moe_csv_num(csv, a->dropped[e]);
            moe_csv_num(csv, a->has_probs && a->tokens ? a->prob_sum[e] / (double)a->tokens : NAN);
            moe_csv_num(csv, a->tokens ? a->gate_sum[e] / (double)a->tokens : NAN);
            int rc = cli_csv_end_row(csv, o->tags, err);
            if (rc)
                return rc;
        }
    }
    return 0;
}

// languages.csv: one row per (step, split, language)
static int lang_rows(const struct run_output *o, struct moe_csv *csv, const struct moe_eval_row *r,
                     struct moe_err *err)
{
    for (size_t g = 0; g < r->n_lang; g++) {
        row_start(csv, r);
        moe_csv_str(csv, o->data->corpus.lang[g]);
        moe_csv_int(csv, (long long)r->lang_tokens[g]);
        moe_csv_num(csv, r->lang_bytes[g]);
        moe_csv_num(csv, r->lang_tokens[g] ? r->lang_loss[g] / (double)r->lang_tokens[g] : NAN);
        moe_csv_num(csv, r->lang_bytes[g] > 0 ? r->lang_loss[g] / (M_LN2 * r->lang_bytes[g]) : NAN);
        int rc = cli_csv_end_row(csv, o->tags, err);
        if (rc)
            return rc;
    }
    return 0;
}

// In the order of LIVE_*; a checkpoint counts their lengths in this order.
static const struct live_table {
    const char *file;
    const char *const *cols;
    size_t n_cols;
    const char *bytes_key; // checkpoint metadata: the table's complete rows in bytes
    int sparse;            // written for models with sparse layers only (counted always: 0 without)
    int text;              // written for text data only, and only then counted
    int (*rows)(const struct run_output *o, struct moe_csv *csv, const struct moe_eval_row *r, struct moe_err *err);
} live_tables[N_LIVE] = {
    { "metrics.csv", metric_cols, sizeof metric_cols / sizeof *metric_cols, "train.metrics_bytes", 0, 0, metric_rows },
    { "experts.csv", expert_cols, sizeof expert_cols / sizeof *expert_cols, "train.experts_bytes", 1, 0, expert_rows },
    { "languages.csv", lang_cols, sizeof lang_cols / sizeof *lang_cols, "train.languages_bytes", 0, 1, lang_rows },
};

// Whether this run writes live table i.
static int written(const struct run_output *o, size_t i)
{
    return (!live_tables[i].sparse || o->model->n_moe_layers) && (!live_tables[i].text || o->data->has_text);
}

int run_output_lengths(struct run_output *o, const struct moe_st_file *ck, int text, struct moe_err *err)
{
    for (size_t i = 0; i < N_LIVE; i++) {
        if (live_tables[i].text != text)
            continue;
        int rc = moe_train_meta_count(ck, live_tables[i].bytes_key, &o->resume_bytes[i], err);
        if (rc)
            return rc;
    }
    return 0;
}

static int open_table(struct run_output *o, size_t i, int resume, struct moe_err *err)
{
    const struct live_table *t = &live_tables[i];
    char *path = cli_path(o->dir, t->file, err);
    const char **cols = cli_tags_header(t->cols, t->n_cols, o->tags); // the tag columns last
    size_t n = t->n_cols + (o->tags ? o->tags->n : 0);
    int rc = !path || !cols ? moe_error(err, MOE_ENOMEM, "out of memory")
             : resume       ? moe_csv_reopen(&o->live[i], path, cols, n, o->resume_bytes[i], err)
                            : moe_csv_open(&o->live[i], path, cols, n, err);
    free(cols);
    free(path);
    return rc;
}

int run_output_check_tags(const char *cmd, const struct cli_tags *tags)
{
    int rc = 0;
    for (size_t i = 0; !rc && i < N_LIVE; i++)
        rc = cli_tags_check_cols(tags, cmd, live_tables[i].file, live_tables[i].cols, live_tables[i].n_cols);
    return rc;
}

int run_output_row(void *ctx, const struct moe_eval_row *r, struct moe_err *err)
{
    struct run_output *o = ctx;
    int rc = 0;
    for (size_t i = 0; !rc && i < N_LIVE; i++)
        if (written(o, i))
            rc = live_tables[i].rows(o, &o->live[i], r, err);
    o->rows += !rc;
    return rc;
}

int run_output_flush(struct run_output *o, struct moe_err *err)
{
    for (size_t i = 0; i < N_LIVE; i++) {
        int rc = written(o, i) ? moe_csv_flush(&o->live[i], err) : 0;
        if (rc && err)
            return rc;
    }
    return 0;
}

int run_output_close(struct run_output *o, struct moe_err *err)
{
    int rc = 0;
    for (size_t i = 0; !rc && i < N_LIVE; i++)
        if (written(o, i))
            rc = moe_csv_close(&o->live[i], err);
    return rc;
}

void run_output_release(struct run_output *o)
{
    for (size_t i = 0; i < N_LIVE; i++)
        moe_csv_abort(&o->live[i]);
    free(o->vocab);
    free(o->languages);
    free(o->tags_json);
    free(o->sets_json);
    for (size_t i = 0; i < o->n_sets; i++)
        free(o->sets[i]);
    free(o->sets);
    cli_tags_release(&o->own_tags);
}

int run_output_identity(struct run_output *o, const struct cli_common *c, const char *const *extra, size_t n_extra,
                        const char *cmd, struct moe_err *err)
{
    o->tags = &o->own_tags;
    for (size_t i = 0; i < c->tags.n; i++) {
        o->own_tags.key[i] = strdup(c->tags.key[i]);
        o->own_tags.value[i] = strdup(c->tags.value[i]);
        o->own_tags.n++;
        if (!o->own_tags.key[i] || !o->own_tags.value[i])
            return moe_error(err, MOE_ENOMEM, "out of memory");
    }
    if (c->n_sets && !(o->sets = calloc(c->n_sets, sizeof *o->sets)))
        return moe_error(err, MOE_ENOMEM, "out of memory");
    for (size_t i = 0; i < c->n_sets; i++)
        if (!(o->sets[o->n_sets++] = strdup(c->sets[i])))
            return moe_error(err, MOE_ENOMEM, "out of memory");
    cli_run_id(o->run_id, cmd, o->cfg, extra, n_extra, o->tags);
    return run_output_identity_json(o, err);
}

int run_output_identity_json(struct run_output *o, struct moe_err *err)
{
    if (o->own_tags.n && !(o->tags_json = cli_tags_json(&o->own_tags)))
        return moe_error(err, MOE_ENOMEM, "out of memory");
    if (o->n_sets) {
        cJSON *a = cJSON_CreateArray();
        for (size_t i = 0; a && i < o->n_sets; i++)
            cJSON_AddItemToArray(a, cJSON_CreateString(o->sets[i]));
        o->sets_json = a ? cJSON_PrintUnformatted(a) : NULL;
        cJSON_Delete(a);
        if (!o->sets_json)
            return moe_error(err, MOE_ENOMEM, "out of memory");
    }
    return 0;
}

int run_output_identity_resume(struct run_output *o, const struct moe_st_file *ck, struct moe_err *err)
{
    o->tags = &o->own_tags;
    const char *id = moe_safetensors_meta(ck, "run.id"), *tags = moe_safetensors_meta(ck, "run.tags"),
               *sets = moe_safetensors_meta(ck, "run.sets");
    if (id && (strlen(id) != 16 || strspn(id, "0123456789abcdef") != 16))
        return moe_error(err, MOE_EFORMAT, "%s: metadata 'run.id' is not 16 hex digits", ck->path);
    if (id)
        memcpy(o->run_id, id, 17);
    else // a checkpoint from before run ids: the id from what it records
        cli_run_id(o->run_id, "train", o->cfg, NULL, 0, NULL);
    if (tags && cli_tags_parse(&o->own_tags, tags, "metadata 'run.tags'", err))
        return moe_error_prefix(err, "%s: ", ck->path);
    if (sets) {
        cJSON *a = cJSON_Parse(sets);
        int n = cJSON_IsArray(a) ? cJSON_GetArraySize(a) : -1;
        int ok = n >= 0 && (o->sets = calloc((size_t)n + 1, sizeof *o->sets));
        for (int i = 0; ok && i < n; i++) {
            cJSON *it = cJSON_GetArrayItem(a, i);
            ok = cJSON_IsString(it) && (o->sets[o->n_sets++] = strdup(it->valuestring));
        }
        cJSON_Delete(a);
        if (!ok)
            return moe_error(err, MOE_EFORMAT, "%s: metadata 'run.sets' is not a JSON array of strings", ck->path);
    }
    return run_output_identity_json(o, err);
}

void run_output_summary_identity(cJSON *s, const struct run_output *o)
{
    cli_summary_identity(s, o->run_id, (const char *const *)o->sets, o->n_sets, o->tags);
}

// dir/name, written atomically.
static int write_file(const char *dir, const char *name, const void *buf, size_t len, struct moe_err *err)
{
    char *path = cli_path(dir, name, err);
    int rc = path ? moe_atomic_write(path, buf, len, err) : MOE_ENOMEM;
    free(path);
    return rc;
}

// config.json: the resolved config, pretty, with a final newline.
static int write_config(const struct run_output *o, struct moe_err *err)
{
    char *text = moe_config_to_json(o->cfg, 1);
    size_t len = text ? strlen(text) : 0;
    char *line = text ? realloc(text, len + 2) : NULL;
    if (!line) {
        free(text);
        return moe_error(err, MOE_ENOMEM, "out of memory");
    }
    line[len++] = '\n';
    line[len] = '\0';
    int rc = write_file(o->dir, "config.json", line, len, err);
    free(line);
    return rc;
}

// dir/name must not be a directory: every file of the run is written by
// renaming a temporary onto its name, which cannot replace a directory, and the
// model file and summary.json come only after the whole training. Anything else
// there (a FIFO, a link) is replaced, never opened. lstat, as rename does not
// follow a link.
static int check_not_dir(const char *dir, const char *name, struct moe_err *err)
{
    char *path = cli_path(dir, name, err);
    if (!path)
        return MOE_ENOMEM;
    struct stat st;
    int rc = 0;
    if (lstat(path, &st) == 0 && S_ISDIR(st.st_mode))
        rc = moe_error(err, MOE_EIO, "cannot write '%s': it is a directory, not a regular file", path);
    free(path);
    return rc;
}

// Every file this run will write, checked before the first step (a resumed
// run's tables are checked as moe_csv_reopen reads them).
static int check_outputs(const struct run_output *o, int resume, struct moe_err *err)
{
    const char *files[] = { "config.json", "summary.json",
                            o->lora ? "adapters.safetensors" : "model.safetensors",
                            o->lora ? (o->merge ? "merged.safetensors" : NULL) : "checkpoint.safetensors",
                            o->vocab ? "vocab.txt" : NULL };
    int rc = 0;
    for (size_t i = 0; !rc && !resume && i < N_LIVE; i++)
        if (written(o, i))
            rc = check_not_dir(o->dir, live_tables[i].file, err);
    for (size_t i = 0; !rc && i < sizeof files / sizeof *files; i++)
        if (files[i])
            rc = check_not_dir(o->dir, files[i], err);
    return rc;
}

// Every place checked first, then the tables: new ones start with their header
// row alone; a resumed run reads its own back (refusing one that is not a
// regular file) and cuts each to the length its checkpoint counts.
int run_output_open(struct run_output *o, int resume, struct moe_err *err)
{
    int rc = check_outputs(o, resume, err);
    for (size_t i = 0; !rc && i < N_LIVE; i++)
        if (written(o, i))
            rc = open_table(o, i, resume, err);
    if (!rc)
        rc = write_config(o, err);
    if (!rc && o->vocab)
        rc = write_file(o->dir, "vocab.txt", o->vocab, o->vocab_len, err);
    return rc;
}

int run_output_text(const char *cmd, struct run_output *o, const struct moe_data *d)
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

int run_output_complete(const char *dir, cJSON **ret, struct moe_err *err)
{
    char *path = cli_path(dir, "summary.json", err), *text = NULL;
    if (!path)
        return MOE_ENOMEM;
    cJSON *s = NULL;
    if (!moe_read_file(path, &text, NULL, NULL))
        s = cJSON_Parse(text);
    free(text);
    free(path);
    if (s && (!cJSON_IsObject(s) || cJSON_GetObjectItemCaseSensitive(s, "interrupted") ||
              !cJSON_GetObjectItemCaseSensitive(s, "final"))) {
        cJSON_Delete(s);
        s = NULL;
    }
    *ret = s;
    return 0;
}

// The model file's tensors beyond the parameters: the vocabulary, the
// features' standardisation and the FFN masks; NULL when out of memory.
static struct moe_st_ref *model_extras(const struct run_output *o, size_t *ret_n)
{
    size_t n = 0;
    struct moe_st_ref *extra = calloc(3 + (o->masks ? o->masks->n : 0), sizeof *extra);
    if (!extra)
        return NULL;
    if (o->vocab)
        extra[n++] = (struct moe_st_ref){ .name = MOE_VOCAB_TENSOR, .dtype = MOE_U8, .ndim = 1, .shape = { o->vocab_len }, .data = o->vocab };
    if (o->data->standardized) {
        const struct moe_standardize *st = &o->data->stats;
        extra[n++] = (struct moe_st_ref){ .name = "data.mean", .dtype = MOE_F32, .ndim = 1, .shape = { st->n_in }, .data = st->mean };
        extra[n++] = (struct moe_st_ref){ .name = "data.std", .dtype = MOE_F32, .ndim = 1, .shape = { st->n_in }, .data = st->std };
    }
    if (o->masks)
        n += moe_ffn_masks_refs(o->masks, &o->model->params, extra + n);
    *ret_n = n;
    return extra;
}

enum { N_MODEL_META = 7 };

// The model file's metadata; returns the number of entries (N_MODEL_META with
// text data, one fewer without).
static size_t model_meta(const struct run_output *o, const char *cfg_json, struct moe_st_meta meta[N_MODEL_META])
{
    meta[0] = (struct moe_st_meta){ "format", "moe" };
    meta[1] = (struct moe_st_meta){ "format_version", "1" };
    meta[2] = (struct moe_st_meta){ "moe_version", MOE_VERSION };
    meta[3] = (struct moe_st_meta){ "model", o->model->ops->type };
    meta[4] = (struct moe_st_meta){ "loss", o->model->loss_name };
    meta[5] = (struct moe_st_meta){ "config", cfg_json };
    if (!o->languages)
        return N_MODEL_META - 1;
    meta[6] = (struct moe_st_meta){ MOE_LANGUAGES_META, o->languages };
    return N_MODEL_META;
}

// The live tables are flushed first (so they hold at least every row the
// checkpoint counts), then the checkpoint records their lengths.
int run_output_checkpoint(void *ctx, const struct moe_train_ckpt *ck, struct moe_err *err)
{
    struct run_output *o = ctx;
    int rc = run_output_flush(o, err);
    if (rc)
        return rc;
    char *cfg_json = moe_config_to_json(o->cfg, 0), *path = cli_path(o->dir, "checkpoint.safetensors", err);
    char bytes[N_LIVE][32];
    struct moe_st_meta meta[N_MODEL_META + N_LIVE + 3];
    size_t n_extra = 0, n_meta = model_meta(o, cfg_json, meta);
    struct moe_st_ref *extra = model_extras(o, &n_extra);
    // The run's identity, which --resume keeps: its id, tags and --set overrides.
    meta[n_meta++] = (struct moe_st_meta){ "run.id", o->run_id };
    if (o->tags_json)
        meta[n_meta++] = (struct moe_st_meta){ "run.tags", o->tags_json };
    if (o->sets_json)
        meta[n_meta++] = (struct moe_st_meta){ "run.sets", o->sets_json };
    for (size_t i = 0; i < N_LIVE; i++) {
        if (live_tables[i].text && !o->data->has_text)
            continue;
        snprintf(bytes[i], sizeof bytes[i], "%" PRIu64, written(o, i) ? moe_csv_bytes(&o->live[i]) : (uint64_t)0);
        meta[n_meta++] = (struct moe_st_meta){ live_tables[i].bytes_key, bytes[i] };
    }
    if (!cfg_json || !path || !extra)
        rc = moe_error(err, MOE_ENOMEM, "out of memory");
    else
        rc = moe_train_checkpoint_write(path, o->model, ck, extra, n_extra, meta, n_meta, err);
    free(extra);
    free(path);
    free(cfg_json);
    return rc;
}

int run_output_model(struct run_output *o, const struct moe_lora *lora, const uint8_t *frozen, int merge,
                     struct moe_err *err)
{
    char *cfg_json = moe_config_to_json(o->cfg, 0);
    char *path = cli_path(o->dir, lora ? "merged.safetensors" : "model.safetensors", err);
    char *adapters = lora ? cli_path(o->dir, "adapters.safetensors", err) : NULL;
    struct moe_st_meta meta[N_MODEL_META];
    size_t n_extra = 0, n_meta = model_meta(o, cfg_json, meta);
    struct moe_st_ref *extra = model_extras(o, &n_extra);
    int rc = 0;
    if (!cfg_json || !path || (lora && !adapters) || !extra)
        rc = moe_error(err, MOE_ENOMEM, "out of memory");
    if (!rc && (!lora || merge))
        rc = moe_model_save(o->model, path, extra, n_extra, meta, n_meta, err);
    if (!rc && lora)
        rc = tune_write_adapters(adapters, o->model, frozen, lora, meta, n_meta, err);
    free(extra);
    free(adapters);
    free(path);
    free(cfg_json);
    return rc;
}

int run_output_interrupted(const char *cmd, struct run_output *o, const char *sig_name, uint64_t steps,
                           int has_checkpoint)
{
    struct moe_err err = { 0 };
    char *ck = has_checkpoint ? cli_path(o->dir, "checkpoint.safetensors", &err) : NULL;
    if (has_checkpoint && !ck)
        return cli_fail(cmd, &err);
    cJSON *s = cli_summary_new(cmd, o->cfg, o->seed);
    run_output_summary_identity(s, o);
    cJSON_AddStringToObject(s, "interrupted", sig_name);
    cJSON_AddNumberToObject(s, "steps", (double)steps);
    cJSON_AddStringToObject(s, "out", o->dir);
    if (ck)
        cJSON_AddStringToObject(s, "checkpoint", ck);
    int rc = cli_write_summary(cmd, o->dir, s);
    cJSON_Delete(s);
    free(ck);
    return rc;
}

cJSON *run_output_eval_json(const struct moe_eval_row *r)
{
    cJSON *o = cJSON_CreateObject();
    double v[N_FIGURES];
    figures(r, v);
    cJSON_AddNumberToObject(o, "rows", (double)r->n);
    for (size_t i = 0; i < N_FIGURES; i++) {
        if (isnan(v[i]))
            cJSON_AddNullToObject(o, figure_keys[i]);
        else
            cJSON_AddNumberToObject(o, figure_keys[i], v[i]);
    }
    return o;
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

void run_output_summary_model(cJSON *s, const struct run_output *o)
{
    const struct moe_data *d = o->data;
    cJSON_AddStringToObject(s, "model", o->model->ops->type);
    cJSON_AddStringToObject(s, "loss", o->model->loss_name);
    cJSON_AddStringToObject(s, "loss_convention",
                            d->has_text ? "next-token cross-entropy in nats, averaged over predicted tokens; bits_per_byte = the summed nats / ln 2 / the source bytes of those tokens"
                                        : "per-row objective averaged over rows; squared errors summed over outputs");
    if (d->has_text)
        text_summary(s, d);
    cJSON_AddNumberToObject(s, "parameters", (double)moe_params_count(&o->model->params));
}

void run_output_summary_result(cJSON *s, const struct run_output *o, const struct moe_train_result *res,
                               double flops_per_token)
{
    struct moe_model *m = o->model;
    int text = o->data->has_text;
    if (m->n_moe_layers)
        cli_routing_json(s, m);
    cJSON_AddNumberToObject(s, "epochs", (double)res->epochs);
    cJSON_AddNumberToObject(s, "steps", (double)res->steps);
    if (res->criterion_epoch >= 0)
        cJSON_AddNumberToObject(s, "criterion_epoch", (double)res->criterion_epoch);
    else
        cJSON_AddNullToObject(s, "criterion_epoch");
    if (res->select_best) { // train.select = best_valid_loss: the epoch whose parameters the run ends with
        cJSON_AddStringToObject(s, "select", "best_valid_loss");
        cJSON_AddNumberToObject(s, "selected_epoch", (double)res->selected_epoch);
    }
    cJSON *fin = cJSON_AddObjectToObject(s, "final");
    cJSON_AddItemToObject(fin, "train", run_output_eval_json(&res->final_train));
    cJSON_AddItemToObject(fin, "test", run_output_eval_json(&res->final_test));
    if (res->final_valid.split) // a validation split (data.*.valid_fraction, data.synthetic.n_valid)
        cJSON_AddItemToObject(fin, "valid", run_output_eval_json(&res->final_valid));
    if (m->n_expert) {
        size_t k = m->n_expert < 64 ? m->n_expert : 64;
        cJSON_AddItemToObject(s, "gate_mean_train", cJSON_CreateDoubleArray(res->final_gate_mean, (int)k));
    }
    cJSON_AddNumberToObject(s, "wall_seconds", res->wall_seconds);
    cJSON_AddNumberToObject(s, "train_rows_per_second", res->rows_per_second);
    if (text)
        cJSON_AddNumberToObject(s, "train_tokens_per_second", res->tokens_per_second);
    // achieved rate in the estimate's convention (3 x the forward weight-matrix FLOPs per token or row)
    cJSON_AddNumberToObject(s, "train_gflops",
                            flops_per_token * (text ? res->tokens_per_second : res->rows_per_second) * 1e-9);
}
