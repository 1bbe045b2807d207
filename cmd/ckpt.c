// ckpt.c (cmd): a trained checkpoint, its run config, its data and its model,
// read back the same way by route-stats, eval, generate and compress (ckpt.h).
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "ckpt.h"
#include "cli.h"

int cli_ckpt_config(const struct moe_st_file *f, const char *const *sets, size_t n_sets, struct moe_config *cfg,
                    struct moe_run_cfg *rcfg, int *ret_standardize, struct moe_err *err)
{
    const char *text = moe_safetensors_meta(f, "config");
    if (!text)
        return moe_error(err, MOE_EFORMAT, "%s: no 'config' in the checkpoint's metadata (not written by moe train?)",
                         f->path);
    // The checkpoint's own config first: if that fails the file is at fault (exit 1);
    // then the user's --set overrides, whose mistakes are usage errors (exit 2).
    struct moe_err perr;
    int rc = moe_config_parse(cfg, moe_run_schema(), moe_run_schema_len(), text, f->path, NULL, 0, &perr);
    if (rc)
        return moe_error(err, MOE_EFORMAT, "%s: the 'config' metadata is not a valid config: %s", f->path, perr.msg);
    for (size_t i = 0; i < n_sets; i++)
        if ((rc = moe_config_set(cfg, sets[i], err)))
            return rc;
    // The checkpoint's data.standardize says whether to apply its statistics; the
    // config then says false (the loader must not refit), and is read as it ends up.
    if ((rc = moe_run_cfg_parse(rcfg, cfg, err)))
        return rc;
    *ret_standardize = rcfg->data.standardize;
    moe_run_cfg_release(rcfg); // its strings point into cfg, which the next line changes
    if ((rc = moe_config_set(cfg, "data.standardize=false", err)))
        return rc;
    return moe_run_cfg_parse(rcfg, cfg, err);
}

int cli_ckpt_standardize(const struct moe_st_file *f, struct moe_dataset *d, struct moe_err *err)
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

size_t cli_ckpt_eval_chunk(const struct moe_run_cfg *rc, size_t n_train)
{
    size_t chunk = rc->train.max_batch_eval;
    if (rc->data.source != MOE_DATA_TEXT)
        return chunk; // the model's max_batch is at least this, or the largest split (cmd_train.c train_batch)
    size_t bs = rc->optim.batch_size;
    if (rc->optim.type == MOE_OPTIM_GD || bs == 0 || bs > n_train)
        bs = n_train;
    return chunk > bs ? bs : chunk;
}

int cli_ckpt_load(const char *cmd, const char *path, const char *const *sets, size_t n_sets, int ignore_memory,
                  cli_batch_fn batch, cli_extra_fn extra, const void *ctx, int keep_file, struct cli_ckpt *k)
{
    struct moe_err err = { 0 };
    int std_on = 0, checked = 0, rc;
    if (moe_safetensors_open(path, &k->f, &err) || cli_ckpt_config(&k->f, sets, n_sets, &k->cfg, &k->rc, &std_on, &err))
        return cli_fail(cmd, &err);
    // the file as read, beside the data and the model until the model has its tensors
    const struct cli_ckpt_mem ck = { k->f.size, 1, keep_file };
    if ((rc = cli_check_run_ex(cmd, &k->rc, NULL, NULL, batch, extra, ctx, 0, &ck, ignore_memory, NULL, &checked)))
        return rc;
    k->has_vocab = moe_data_vocab_read(&k->f, &k->vocab, &err);
    if (k->has_vocab < 0 || moe_data_load_cfg(&k->data, &k->rc.data, k->has_vocab ? &k->vocab : NULL, &err) ||
        moe_data_check_text_checkpoint(&k->data, &k->f, &err))
        return cli_fail(cmd, &err);
    if (std_on && !k->data.has_text &&
        (cli_ckpt_standardize(&k->f, &k->data.train, &err) || cli_ckpt_standardize(&k->f, &k->data.test, &err)))
        return cli_fail(cmd, &err);
    if (!checked &&
        (rc = cli_check_run_ex(cmd, &k->rc, NULL, &k->data, batch, extra, ctx, 0, &ck, ignore_memory, NULL, &checked)))
        return rc;
    const struct moe_dataset *tr = &k->data.train;
    k->max_batch = batch(&k->rc, tr->n, k->data.test.n, ctx);
    if (moe_model_create_hp(&k->model, &k->rc.model, NULL, tr->task, tr->n_in, tr->n_out, k->max_batch, &err) ||
        moe_model_load(&k->model, &k->f, 1, &err))
        return cli_fail(cmd, &err);
    if (!keep_file) // the model holds its own copy of every tensor
        moe_safetensors_close(&k->f);
    return 0;
}

void cli_ckpt_release(struct cli_ckpt *k)
{
    moe_model_release(&k->model);
    moe_data_release(&k->data);
    moe_vocab_release(&k->vocab);
    moe_safetensors_close(&k->f);
    moe_run_cfg_release(&k->rc);
    moe_config_release(&k->cfg);
}

int cli_ckpt_refuse_model_sets(const char *cmd, const char *opt, const char *const *sets, size_t n_sets)
{
    for (size_t i = 0; i < n_sets; i++)
        if (strncmp(sets[i], "model.", 6) == 0)
            return cli_error(cmd, 2,
                             "option '%s': '%s' would change the checkpoint's model (its shape is the checkpoint's; data.*, moe.* and train.* may change)",
                             opt, sets[i]);
    return 0;
}

// The leaves of a JSON object as "a.b.c=value" overrides, appended to *sets.
static int flatten(const cJSON *o, const char *prefix, char ***sets, size_t *n, size_t *cap)
{
    for (const cJSON *it = o->child; it; it = it->next) {
        char path[512];
        snprintf(path, sizeof path, "%s%s%s", prefix, *prefix ? "." : "", it->string ? it->string : "");
        if (cJSON_IsObject(it)) {
            if (flatten(it, path, sets, n, cap))
                return 1;
            continue;
        }
        char *val = cJSON_PrintUnformatted(it);
        if (!val)
            return 1;
        if (*n == *cap) {
            size_t nc = *cap ? 2 * *cap : 16;
            char **ns = realloc(*sets, nc * sizeof *ns);
            if (!ns) {
                free(val);
                return 1;
            }
            *sets = ns;
            *cap = nc;
        }
        size_t len = strlen(path) + strlen(val) + 2;
        char *s = malloc(len);
        if (!s) {
            free(val);
            return 1;
        }
        snprintf(s, len, "%s=%s", path, val);
        free(val);
        (*sets)[(*n)++] = s;
    }
    return 0;
}

int cli_ckpt_config_sets(const char *cmd, const struct cli_common *c, char ***ret, size_t *ret_n, size_t *ret_n_config)
{
    size_t n = 0, cap = 0;
    char **sets = NULL;
    int rc = 0;
    if (c->config) {
        struct moe_config chk;
        struct moe_err err = { 0 };
        if (moe_config_load(&chk, moe_run_schema(), moe_run_schema_len(), c->config, NULL, 0, &err))
            return cli_fail(cmd, &err);
        moe_config_release(&chk);
        FILE *f = fopen(c->config, "rb");
        char *buf = NULL;
        long len = -1;
        if (f && fseek(f, 0, SEEK_END) == 0 && (len = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0 &&
            (buf = malloc((size_t)len + 1)) && fread(buf, 1, (size_t)len, f) == (size_t)len)
            buf[len] = '\0';
        else
            len = -1;
        if (f)
            fclose(f);
        cJSON *j = len >= 0 ? cJSON_Parse(buf) : NULL;
        free(buf);
        if (!j || flatten(j, "", &sets, &n, &cap))
            rc = cli_error(cmd, 1, "%s: cannot read the config back", c->config);
        cJSON_Delete(j);
    }
    *ret_n_config = n;
    for (size_t i = 0; !rc && i < c->n_sets; i++) {
        if (n == cap) {
            size_t nc = cap ? 2 * cap : 16;
            char **ns = realloc(sets, nc * sizeof *ns);
            if (!ns) {
                rc = cli_error(cmd, 1, "out of memory");
                break;
            }
            sets = ns;
            cap = nc;
        }
        if (!(sets[n] = strdup(c->sets[i])))
            rc = cli_error(cmd, 1, "out of memory");
        else
            n++;
    }
    *ret = sets;
    *ret_n = n;
    return rc;
}

cJSON *cli_masks_json(const struct moe_ffn_masks *k)
{
    cJSON *a = cJSON_CreateArray();
    for (size_t i = 0; a && i < k->n; i++) {
        cJSON *x = cJSON_CreateObject();
        cJSON_AddStringToObject(x, "ffn", k->ffn[i].name);
        cJSON_AddNumberToObject(x, "units", (double)(k->ffn[i].M * k->ffn[i].F));
        cJSON_AddNumberToObject(x, "pruned", (double)moe_ffn_masks_pruned(k, i));
        cJSON_AddItemToArray(a, x);
    }
    return a;
}
