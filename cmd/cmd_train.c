// cmd_train.c: `moe train` trains one model from a config and writes a run
// directory: config.json, metrics.csv, model.safetensors, summary.json; the
// summary JSON also goes to stdout.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "io/csv_writer.h"
#include "io/safetensors.h"
#include "train/train.h"

static const char *const usage =
    "usage: moe train [--config FILE] [--set key.path=value]... [--out DIR] [--seed N]\n"
    "                 [--threads N] [--init CKPT] [--device cpu] [--quiet]\n"
    "Train the model a config describes; write DIR/config.json, metrics.csv,\n"
    "model.safetensors and summary.json, and print the summary JSON on stdout.\n"
    "Without --out, DIR is runs/train-<config hash>.\n";

enum { OPT_INIT = OPT_FIRST_CMD };

struct train_opts {
    const char *init;
};

static int on_opt(void *ctx, int opt, const char *arg)
{
    struct train_opts *o = ctx;
    if (opt == OPT_INIT) {
        o->init = arg;
        return 0;
    }
    return 2;
}

static const char *const metric_cols[] = { "step", "epoch", "split", "loss", "mse", "accuracy", "gate_entropy",
                                           "active_experts", "expert_region_mi" };

static int write_metric_row(void *ctx, const struct moe_eval_row *r, struct moe_err *err)
{
    struct moe_csv *csv = ctx;
    moe_csv_int(csv, (long long)r->step);
    moe_csv_int(csv, (long long)r->epoch);
    moe_csv_str(csv, r->split);
    moe_csv_num(csv, r->loss);
    moe_csv_num(csv, r->mse);
    moe_csv_num(csv, r->accuracy);
    moe_csv_num(csv, r->gate_entropy);
    moe_csv_num(csv, r->active_experts);
    moe_csv_num(csv, r->expert_region_mi);
    return moe_csv_end_row(csv, err);
}

static cJSON *eval_json(const struct moe_eval_row *r)
{
    cJSON *o = cJSON_CreateObject();
    const char *keys[] = { "loss", "mse", "accuracy", "gate_entropy", "active_experts", "expert_region_mi" };
    double vals[] = { r->loss, r->mse, r->accuracy, r->gate_entropy, r->active_experts, r->expert_region_mi };
    cJSON_AddNumberToObject(o, "rows", (double)r->n);
    for (size_t i = 0; i < sizeof vals / sizeof *vals; i++) {
        if (isnan(vals[i]))
            cJSON_AddNullToObject(o, keys[i]);
        else
            cJSON_AddNumberToObject(o, keys[i], vals[i]);
    }
    return o;
}

int cmd_train(int argc, char **argv)
{
    static const struct option opts[] = { CLI_COMMON_OPTIONS, { "init", required_argument, NULL, OPT_INIT },
                                          { 0, 0, 0, 0 } };
    const char *cmd = "train";
    struct cli_common c;
    struct train_opts o = { 0 };
    cli_common_init(&c);
    struct moe_err err = { 0 };
    struct moe_config cfg = { 0 };
    struct moe_data data;
    struct moe_model model;
    struct moe_csv csv;
    struct moe_st_file init = { 0 };
    cJSON *summary = NULL;
    char *cfg_text = NULL;
    memset(&data, 0, sizeof data);
    memset(&model, 0, sizeof model);
    memset(&csv, 0, sizeof csv);
    char outbuf[4096], path[4200];
    int rc = cli_parse(argc, argv, cmd, opts, &c, on_opt, &o);
    if (rc == -1) {
        fputs(usage, stdout);
        rc = 0;
        goto out;
    }
    if (rc || (rc = cli_setup_compute(cmd, &c)))
        goto out;
    if (cli_load_config(&c, &cfg, &err) || moe_data_load(&data, &cfg, &err)) {
        rc = cli_fail(cmd, &err);
        goto out;
    }
    const char *out = c.out;
    if (!out) {
        snprintf(outbuf, sizeof outbuf, "runs/train-%016llx", (unsigned long long)moe_config_hash(&cfg));
        out = outbuf;
    }
    size_t bs = (size_t)moe_cfg_int(&cfg, "optim.batch_size");
    size_t max_batch = bs == 0 || strcmp(moe_cfg_str(&cfg, "optim.type"), "gd") == 0 ? data.train.n : bs;
    size_t chunk = (size_t)moe_cfg_int(&cfg, "train.max_batch_eval");
    size_t biggest = data.train.n > data.test.n ? data.train.n : data.test.n;
    if (chunk > biggest)
        chunk = biggest;
    if (chunk > max_batch)
        max_batch = chunk;
    if (moe_model_create(&model, &cfg, NULL, data.train.task, data.train.n_in, data.train.n_out, max_batch, &err)) {
        rc = cli_fail(cmd, &err);
        goto out;
    }
    moe_model_init_weights(&model, (uint64_t)moe_cfg_int(&cfg, "train.seed"));
    if (o.init) {
        if (moe_safetensors_open(o.init, &init, &err) || moe_safetensors_load_params(&init, &model.params, 1, &err)) {
            rc = cli_fail(cmd, &err);
            goto out;
        }
    }
    if (cli_mkdir_p(out, &err)) {
        rc = cli_fail(cmd, &err);
        goto out;
    }
    cfg_text = moe_config_to_json(&cfg, 1);
    size_t cfg_len = cfg_text ? strlen(cfg_text) : 0;
    if (cfg_text) {
        cfg_text = realloc(cfg_text, cfg_len + 2);
        cfg_text[cfg_len++] = '\n';
        cfg_text[cfg_len] = '\0';
    }
    if (!cfg_text || moe_atomic_write(cli_path(path, sizeof path, out, "config.json"), cfg_text, cfg_len, &err) ||
        moe_csv_open(&csv, cli_path(path, sizeof path, out, "metrics.csv"), metric_cols,
                     sizeof metric_cols / sizeof *metric_cols, &err)) {
        rc = cfg_text ? cli_fail(cmd, &err) : cli_error(cmd, 1, "out of memory");
        goto out;
    }
    cli_log(&c, "moe train: %s model, %zu parameters, %zu train / %zu test rows, writing %s/", model.ops->type,
            moe_params_count(&model.params), data.train.n, data.test.n, out);
    struct moe_train_result res;
    if (moe_train(&model, &data, &cfg, write_metric_row, &csv, &res, &err) || moe_csv_close(&csv, &err)) {
        moe_csv_abort(&csv);
        rc = cli_fail(cmd, &err);
        goto out;
    }

    // checkpoint: parameters, normalisation statistics, and the resolved config
    struct moe_st_ref extra[2];
    size_t n_extra = 0;
    if (data.standardized) {
        extra[n_extra++] = (struct moe_st_ref){ "data.mean", MOE_F32, 1, { data.stats.n_in }, data.stats.mean };
        extra[n_extra++] = (struct moe_st_ref){ "data.std", MOE_F32, 1, { data.stats.n_in }, data.stats.std };
    }
    char *cfg_compact = moe_config_to_json(&cfg, 0);
    struct moe_st_meta meta[] = { { "format", "moe" }, { "format_version", "1" }, { "moe_version", MOE_VERSION },
                                  { "model", model.ops->type }, { "loss", model.loss_name },
                                  { "config", cfg_compact ? cfg_compact : "{}" } };
    rc = moe_safetensors_write_params(cli_path(path, sizeof path, out, "model.safetensors"), &model.params, extra,
                                      n_extra, meta, sizeof meta / sizeof *meta, &err);
    free(cfg_compact);
    if (rc) {
        rc = cli_fail(cmd, &err);
        goto out;
    }

    summary = cli_summary_new(cmd, &cfg);
    cJSON_AddStringToObject(summary, "model", model.ops->type);
    cJSON_AddStringToObject(summary, "loss", model.loss_name);
    cJSON_AddStringToObject(summary, "loss_convention",
                            "per-row objective averaged over rows; squared errors summed over outputs");
    cJSON_AddNumberToObject(summary, "parameters", (double)moe_params_count(&model.params));
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
    cJSON_AddStringToObject(summary, "out", out);
    if (o.init)
        cJSON_AddStringToObject(summary, "init", o.init);
    if (cli_write_json(cli_path(path, sizeof path, out, "summary.json"), summary, &err)) {
        rc = cli_fail(cmd, &err);
        goto out;
    }
    cli_print_json(summary);
    cli_log(&c, "moe train: done in %.2f s; outputs in %s/ (config.json, metrics.csv, model.safetensors, summary.json)",
            res.wall_seconds, out);
    rc = 0;
out:
    cJSON_Delete(summary);
    free(cfg_text);
    moe_safetensors_close(&init);
    moe_model_release(&model);
    moe_data_release(&data);
    moe_config_release(&cfg);
    cli_common_release(&c);
    return rc;
}
