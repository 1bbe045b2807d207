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
#include "moe/moe_layer.h"
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
                                           "active_experts", "expert_region_mi", "aux_loss", "z_loss", "load_cv",
                                           "importance_cv", "load_max_mean", "dropped_fraction", "router_entropy",
                                           "expert_label_mi" };
static const char *const expert_cols[] = { "step", "epoch", "split", "layer", "expert", "tokens", "dropped",
                                           "gate_mean", "importance" };

struct outputs {
    struct moe_csv metrics, experts;
    struct moe_model *model; // for the block number of each sparse layer
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
                       r->router_entropy, r->expert_label_mi };
    for (size_t i = 0; i < sizeof route / sizeof *route; i++)
        moe_csv_num(csv, route[i]);
    int rc = moe_csv_end_row(csv, err);
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
                           "router_entropy", "expert_label_mi" };
    double vals[] = { r->loss, r->mse, r->accuracy, r->gate_entropy, r->active_experts, r->expert_region_mi,
                      r->aux_loss, r->z_loss, r->load_cv, r->importance_cv, r->load_max_mean, r->dropped_fraction,
                      r->router_entropy, r->expert_label_mi };
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
    struct outputs outs;
    struct moe_st_file init = { 0 };
    cJSON *summary = NULL;
    char *cfg_text = NULL;
    memset(&data, 0, sizeof data);
    memset(&model, 0, sizeof model);
    memset(&outs, 0, sizeof outs);
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
    if (moe_model_fit(&model, &data.train, &err) ||
        (o.init && (moe_safetensors_open(o.init, &init, &err) || moe_model_load(&model, &init, 1, &err)))) {
        rc = cli_fail(cmd, &err);
        goto out;
    }
    if (cli_mkdir_p(out, &err)) {
        rc = cli_fail(cmd, &err);
        goto out;
    }
    outs.model = &model;
    cfg_text = moe_config_to_json(&cfg, 1);
    size_t cfg_len = cfg_text ? strlen(cfg_text) : 0;
    if (cfg_text) {
        cfg_text = realloc(cfg_text, cfg_len + 2);
        cfg_text[cfg_len++] = '\n';
        cfg_text[cfg_len] = '\0';
    }
    if (!cfg_text || moe_atomic_write(cli_path(path, sizeof path, out, "config.json"), cfg_text, cfg_len, &err) ||
        moe_csv_open(&outs.metrics, cli_path(path, sizeof path, out, "metrics.csv"), metric_cols,
                     sizeof metric_cols / sizeof *metric_cols, &err) ||
        (model.n_moe_layers && moe_csv_open(&outs.experts, cli_path(path, sizeof path, out, "experts.csv"),
                                          expert_cols, sizeof expert_cols / sizeof *expert_cols, &err))) {
        rc = cfg_text ? cli_fail(cmd, &err) : cli_error(cmd, 1, "out of memory");
        goto out;
    }
    cli_log(&c, "moe train: %s model, %zu parameters, %zu train / %zu test rows, writing %s/", model.ops->type,
            moe_params_count(&model.params), data.train.n, data.test.n, out);
    struct moe_train_result res;
    if (moe_train(&model, &data, &cfg, write_metric_row, &outs, &res, &err) || moe_csv_close(&outs.metrics, &err) ||
        (model.n_moe_layers && moe_csv_close(&outs.experts, &err))) {
        moe_csv_abort(&outs.metrics);
        moe_csv_abort(&outs.experts);
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
    rc = moe_model_save(&model, cli_path(path, sizeof path, out, "model.safetensors"), extra, n_extra, meta,
                        sizeof meta / sizeof *meta, &err);
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
    moe_csv_abort(&outs.metrics);
    moe_csv_abort(&outs.experts);
    cJSON_Delete(summary);
    free(cfg_text);
    moe_safetensors_close(&init);
    moe_model_release(&model);
    moe_data_release(&data);
    moe_config_release(&cfg);
    cli_common_release(&c);
    return rc;
}
