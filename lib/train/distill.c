// distill.c: the distill.* configuration keys (defaults, ranges, docs) and
// their reading into struct moe_distill_cfg: the teacher and baseline
// checkpoints, the distillation objective's temperature and weight, and the
// MoEBERT conversion (split, shared neurons, weight).
// Not here: loading the checkpoints and the summary (cmd/train_distill.c), the
// objective (trainer.c, moe_train_hooks.distill), the conversion (moebert.c).
#include <string.h>

#include "train/train.h"

const struct moe_cfg_key moe_distill_keys[] = {
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
};
const size_t moe_distill_keys_len = sizeof moe_distill_keys / sizeof moe_distill_keys[0];

void moe_distill_cfg_parse(struct moe_distill_cfg *c, const struct moe_config *cfg)
{
    memset(c, 0, sizeof *c);
    c->teacher = moe_cfg_str(cfg, "distill.teacher");
    c->temperature = moe_cfg_num(cfg, "distill.temperature");
    c->alpha = moe_cfg_num(cfg, "distill.alpha");
    c->teacher_init = moe_cfg_bool(cfg, "distill.teacher_init");
    c->baseline = moe_cfg_str(cfg, "distill.baseline");
    c->moebert = moe_cfg_bool(cfg, "distill.moebert");
    c->split = moe_cfg_str(cfg, "distill.split");
    c->split_random = strcmp(c->split, "random") == 0;
    c->shared = (size_t)moe_cfg_int(cfg, "distill.shared");
    c->weight = moe_cfg_num(cfg, "distill.weight");
}
