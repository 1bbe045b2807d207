// schema.c: the run configuration's schema, every key with its default, range
// and meaning: the distill.* and lora.* keys here, and the tables of the files
// that read the others (data.c: data.*; model/model_config.c: model.* and
// loss.*; moe/layer_config.c: moe.*; optim.c: optim.*; trainer.c: train.*)
// joined in the order of docs/config.md. The schema is the single source of
// docs/config.md (`moe help config` prints it) and of validation; never parse
// JSON elsewhere. Also moe_model_estimate, which needs every part of the
// configuration typed at once (model/estimate.c reads no key).
#include "train/train.h"

#include <assert.h>
#include <string.h>


static const struct moe_cfg_key run_keys[] = {
    // distillation (moe distill)
    { "distill.teacher", MOE_CFG_STR, "null", 1, 0, NULL, "teacher checkpoint (moe distill --teacher): every training batch is distilled from its outputs; null = none" },
    { "distill.temperature", MOE_CFG_NUM, "2", 0.01, 100, NULL, "softmax temperature tau of the distillation term (moe distill --temperature)" },
    { "distill.alpha", MOE_CFG_NUM, "0.5", 0, 1, NULL, "weight of the distillation term: alpha tau^2 KL(teacher || student) + (1 - alpha) CE (moe distill --alpha)" },
    { "distill.teacher_init", MOE_CFG_BOOL, "false", 1, 0, NULL, "start every student tensor that has a namesake of the same shape in the teacher from the teacher's values (sparse-to-dense: the non-expert weights)" },
    { "distill.baseline", MOE_CFG_STR, "null", 1, 0, NULL, "a baseline checkpoint (e.g. the student trained without a teacher): the summary reports the fraction of the teacher-baseline gap the student recovers on the test split" },
    { "distill.moebert", MOE_CFG_BOOL, "false", 1, 0, NULL, "MoEBERT (moe distill --mode moebert): the student's sparse layers start as the teacher's dense FFNs split into experts (distill.split, distill.shared); the objective is CE + distill.weight (hidden-state MSE per block + symmetric KL of the outputs)" },
    { "distill.split", MOE_CFG_STR, "\"importance\"", 1, 0, "importance|random", "MoEBERT: neurons in order of importance (summed over the training data, importance.csv) or in a seeded random order (moe distill --split)" },
    { "distill.shared", MOE_CFG_INT, "0", 0, 1 << 20, NULL, "MoEBERT: the first s neurons of the order go to every expert; the rest are dealt round-robin until each expert holds n_ff (moe distill --shared)" },
    { "distill.weight", MOE_CFG_NUM, "5", 0, 1e6, NULL, "MoEBERT: weight of the distillation terms (hidden-state MSE + symmetric KL) next to the task loss (moe distill --weight)" },
    // LoRA adapters (moe lora)
    { "lora.rank", MOE_CFG_INT, "0", 0, 65536, NULL, "rank r of the adapters (0 = no adapters; moe lora --rank)" },
    { "lora.alpha", MOE_CFG_NUM, "8", 1e-6, 1e6, NULL, "adapter scale numerator: W = W0 + (alpha / r) B A (moe lora --alpha)" },
    { "lora.targets", MOE_CFG_STR_LIST, "[]", 1, 0, NULL, "globs over tensor names: the matrices that get adapters (moe lora --targets)" },
    { "lora.expert_mode", MOE_CFG_STR, "\"per-expert\"", 1, 0, "per-expert|shared", "expert tensors [E, out, in]: one adapter per expert, or one shared by all" },
    { "lora.freeze_router", MOE_CFG_BOOL, "false", 1, 0, NULL, "keep the routers as they are; otherwise they are trained in full along with the adapters" },
};

#define N_RUN (sizeof run_keys / sizeof run_keys[0])
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
        { run_keys, N_RUN },
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

int moe_model_estimate(const struct moe_config *cfg, enum moe_task task, size_t n_in, size_t n_out,
                       size_t n_train_rows, size_t n_test_rows, size_t max_batch, int training,
                       struct moe_model_estimate *ret, struct moe_err *err)
{
    struct moe_model_hp hp;
    struct moe_data_cfg data;
    int rc = moe_model_hp_parse(&hp, cfg, err);
    if (rc || (rc = moe_data_cfg_parse(&data, cfg, err)))
        return rc;
    struct moe_optim_cfg oc;
    struct moe_train_cfg tc;
    moe_optim_cfg_parse(&oc, cfg);
    moe_train_cfg_parse(&tc, cfg);
    struct moe_estimate_loop loop = {
        .moments = oc.type == MOE_OPTIM_ADAMW ? 2 : oc.type == MOE_OPTIM_SGD ? 1 : 0,
        .batch_size = oc.type == MOE_OPTIM_GD ? 0 : oc.batch_size, // gd: always the full batch
        .shuffle = tc.shuffle,
    };
    rc = moe_model_estimate_hp(&hp, &data, training ? &loop : NULL, task, n_in, n_out, n_train_rows, n_test_rows,
                               max_batch, ret, err);
    moe_data_cfg_release(&data);
    return rc;
}
