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

int moe_model_estimate(const struct moe_config *cfg, const char *loss, enum moe_task task, size_t n_in, size_t n_out,
                       size_t n_train_rows, size_t n_test_rows, size_t max_batch, int training,
                       struct moe_model_estimate *ret, struct moe_err *err)
{
    struct moe_model_hp hp;
    struct moe_data_cfg data;
    int rc = moe_model_hp_parse(&hp, cfg, err);
    if (!rc) // the rules a run checks, so that --dry-run refuses what train would
        rc = moe_model_check(&hp, moe_model_loss(&hp, loss, task), task, n_in, n_out, err);
    if (rc || (rc = moe_data_cfg_parse(&data, cfg, err)))
        return rc;
    struct moe_optim_cfg oc;
    struct moe_train_cfg tc;
    moe_optim_cfg_parse(&oc, cfg);
    if ((rc = moe_train_cfg_parse(&tc, cfg, err))) {
        moe_data_cfg_release(&data);
        return rc;
    }
    struct moe_estimate_loop loop = {
        .moments = oc.type == MOE_OPTIM_ADAMW ? 2 : oc.type == MOE_OPTIM_SGD ? 1 : 0,
        .batch_size = oc.type == MOE_OPTIM_GD ? 0 : oc.batch_size, // gd: always the full batch
        .shuffle = tc.shuffle,
    };
    moe_train_cfg_release(&tc);
    rc = moe_model_estimate_hp(&hp, &data, training ? &loop : NULL, task, n_in, n_out, n_train_rows, n_test_rows,
                               max_batch, ret, err);
    moe_data_cfg_release(&data);
    return rc;
}
