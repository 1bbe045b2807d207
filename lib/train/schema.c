// schema.c: the run configuration's schema, every key with its default, range
// and meaning, joined from the tables of the files that read them (data.c:
// data.*; model/model_config.c: model.* and loss.*; moe/layer_config.c: moe.*;
// optim.c: optim.*; trainer.c: train.*; distill.c: distill.*; tune.c: lora.*)
// in the order of docs/config.md. The schema is the single source of
// docs/config.md (`moe help config` prints it) and of validation; never parse
// JSON elsewhere. Also moe_model_estimate, which needs every part of the
// configuration typed at once (model/estimate.c reads no key).
#include "train/train.h"

#include <assert.h>
#include <string.h>

#define N_MAX 256 // room for every table; asserted

static struct moe_cfg_key schema[N_MAX];
static size_t schema_len;

// Joined on first use (the tables of other files are not constant expressions here).
static void join(void)
{
    if (schema_len)
        return;
    struct { const struct moe_cfg_key *keys; size_t n; } parts[] = {
        { moe_data_keys, moe_data_keys_len },
        { moe_model_keys, moe_model_keys_len },
        { moe_layer_keys, moe_layer_keys_len },
        { moe_optim_keys, moe_optim_keys_len },
        { moe_train_keys, moe_train_keys_len },
        { moe_distill_keys, moe_distill_keys_len },
        { moe_lora_keys, moe_lora_keys_len },
    };
    size_t n = 0;
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
        assert(n + parts[i].n <= N_MAX);
        memcpy(schema + n, parts[i].keys, parts[i].n * sizeof *schema);
        n += parts[i].n;
    }
    schema_len = n;
}

const struct moe_cfg_key *moe_run_schema(void)
{
    join();
    return schema;
}

size_t moe_run_schema_len(void)
{
    join();
    return schema_len;
}

int moe_run_cfg_parse(struct moe_run_cfg *rc, const struct moe_config *cfg, struct moe_err *err)
{
    memset(rc, 0, sizeof *rc);
    int r = moe_model_hp_parse(&rc->model, cfg, err);
    if (!r)
        r = moe_data_cfg_parse(&rc->data, cfg, err);
    if (!r) {
        moe_optim_cfg_parse(&rc->optim, cfg);
        moe_distill_cfg_parse(&rc->distill, cfg);
        r = moe_train_cfg_parse(&rc->train, cfg, err);
        if (!r)
            r = moe_train_cfg_check(&rc->train, &rc->optim, err);
    }
    if (!r)
        r = moe_lora_cfg_parse(&rc->lora, cfg, err);
    const struct moe_data_cfg *d = &rc->data;
    int has_valid = d->source == MOE_DATA_TEXT || (d->source == MOE_DATA_SYNTHETIC && d->synthetic.n_valid) ||
                    (d->source == MOE_DATA_IDX && d->idx.valid_fraction > 0) ||
                    (d->source == MOE_DATA_TABLE && d->table_valid_fraction > 0);
    if (!r && rc->train.criterion_valid && !has_valid)
        r = moe_error(err, MOE_ECONFIG, "key 'train.criterion_split': 'valid' needs a validation split (data.synthetic.n_valid, data.idx.valid_fraction or data.table.valid_fraction)");
    if (!r && rc->train.select_best && !has_valid)
        r = moe_error(err, MOE_ECONFIG, "key 'train.select': 'best_valid_loss' needs a validation split (data.synthetic.n_valid, data.idx.valid_fraction or data.table.valid_fraction)");
    if (r)
        moe_run_cfg_release(rc);
    return r;
}

void moe_run_cfg_release(struct moe_run_cfg *rc)
{
    if (!rc)
        return;
    moe_data_cfg_release(&rc->data);
    moe_train_cfg_release(&rc->train);
    moe_lora_cfg_release(&rc->lora);
    memset(rc, 0, sizeof *rc);
}

// The optimizer's moments, and with train.accumulate > 1 the trainer's
// gradient accumulator (trainer.c: one float per trained parameter).
static int declare_optimizer(const void *arg, size_t numel, struct moe_plan *p)
{
    const struct moe_run_cfg *rc = arg;
    struct moe_optim o;
    int r = moe_optim_declare(&o, &rc->optim, numel, p); // nothing is allocated: o is dropped
    if (!r && rc->train.accumulate > 1) {
        float *acc;
        struct moe_dim d = { numel, "parameter floats" };
        moe_plan_buf(p, &acc, MOE_ROLE_OPTIM, MOE_DT_F32, MOE_DIMS(d), "train.accumulate gradient sum");
        r = p->rc;
    }
    return r;
}

// MOE_RUN_LORA: the tuning cmd/train_tune.c sets up over the model (the
// selection and the adapters' layout of moe_lora_setup, over the registry the
// model will have): the floats its optimizer updates, and what its adapters
// allocate (tune.h moe_lora_trained, moe_lora_bytes).
static int lora_tuning(const void *arg, const struct moe_params *params, size_t *ret_numel, size_t *ret_bytes,
                       struct moe_err *err)
{
    const struct moe_run_cfg *rc = arg;
    const struct moe_train_cfg *tc = &rc->train;
    struct moe_tune_sel sel;
    struct moe_lora l;
    int r = moe_lora_setup(&sel, &l, params, &rc->lora, tc->trainable, tc->n_trainable, tc->freeze, tc->n_freeze,
                           err);
    if (r)
        return r;
    *ret_numel = moe_lora_trained(&sel, params, &l);
    *ret_bytes = moe_lora_bytes(&l);
    moe_lora_release(&l);
    moe_tune_sel_release(&sel);
    return 0;
}

int moe_run_estimate(const struct moe_run_cfg *rc, const char *loss, enum moe_task task, size_t n_in, size_t n_out,
                     size_t n_train_rows, size_t n_test_rows, size_t max_batch, enum moe_run_kind kind,
                     struct moe_model_estimate *ret, struct moe_err *err)
{
    // the rules a run checks, so that --dry-run refuses what train would
    int r = moe_model_check(&rc->model, moe_model_loss(&rc->model, loss, task), task, n_in, n_out, err);
    if (r)
        return r;
    const struct moe_optim_cfg *oc = &rc->optim;
    struct moe_estimate_loop loop = {
        .declare_optimizer = declare_optimizer,
        .optimizer = rc,
        .batch_size = oc->type == MOE_OPTIM_GD ? 0 : oc->batch_size, // gd: always the full batch
        // trainer.c: shuffled (a batch buffer) when an optimizer step takes less than the split
        .shuffle = rc->train.shuffle && (rc->train.accumulate <= 1 || oc->batch_size == 0 ||
                                         oc->batch_size * rc->train.accumulate < n_train_rows),
        .select_best = rc->train.select_best,
        .tuning = kind == MOE_RUN_LORA ? lora_tuning : NULL,
        .tuning_arg = rc,
    };
    return moe_model_estimate_hp(&rc->model, &rc->data, kind != MOE_RUN_EVAL ? &loop : NULL, task, n_in, n_out,
                                 n_train_rows, n_test_rows, max_batch, ret, err);
}

int moe_model_estimate(const struct moe_config *cfg, const char *loss, enum moe_task task, size_t n_in, size_t n_out,
                       size_t n_train_rows, size_t n_test_rows, size_t max_batch, enum moe_run_kind kind,
                       struct moe_model_estimate *ret, struct moe_err *err)
{
    struct moe_run_cfg rc;
    int r = moe_run_cfg_parse(&rc, cfg, err);
    if (r)
        return r;
    r = moe_run_estimate(&rc, loss, task, n_in, n_out, n_train_rows, n_test_rows, max_batch, kind, ret, err);
    moe_run_cfg_release(&rc);
    return r;
}
