// ckpt.h (cmd): a trained checkpoint read back with the run config it
// records, the data that config names and the model it describes: the path
// shared by the commands that read a checkpoint (route-stats, eval, generate).
#ifndef MOE_CLI_CKPT_H
#define MOE_CLI_CKPT_H

#include <cjson/cJSON.h>

#include "estimate.h"
#include "io/safetensors.h"
#include "train/train.h"

// The checkpoint's config (metadata "config"), then the overrides ("key=value",
// in order). A config the file holds that does not parse is the file's fault
// (MOE_EFORMAT, exit 1); an override's mistake is a config error (exit 2). The
// checkpoint's data.standardize goes to *ret_standardize and the config then
// says false: the loader must not refit, the checkpoint's statistics apply
// (cli_ckpt_standardize). rcfg is cfg read once (its strings point into cfg).
int cli_ckpt_config(const struct moe_st_file *f, const char *const *sets, size_t n_sets, struct moe_config *cfg,
                    struct moe_run_cfg *rcfg, int *ret_standardize, struct moe_err *err);
// Standardise d's features with the checkpoint's statistics ("data.mean",
// "data.std"; MOE_EFORMAT / MOE_ESHAPE when missing or malformed).
int cli_ckpt_standardize(const struct moe_st_file *f, struct moe_dataset *d, struct moe_err *err);

// Everything cli_ckpt_load reads; cli_ckpt_release frees it at any stage.
struct cli_ckpt {
    struct moe_st_file f;   // the checkpoint (closed once the model is loaded, unless kept)
    struct moe_config cfg;
    struct moe_run_cfg rc;
    struct moe_vocab vocab; // text data: the checkpoint's vocabulary
    int has_vocab;
    struct moe_data data;   // both splits, standardised as in training
    struct moe_model model; // weights and state from the checkpoint
    size_t max_batch;       // the model's, from batch()
};
// Open the checkpoint at path, read its config (cli_ckpt_config with sets),
// refuse a run that will not fit (cli_check_run_ex with batch, extra and ctx:
// extra, NULL for none, counts what the command holds besides; before
// synthetic data is generated or once the data is loaded), load the data with
// the checkpoint's vocabulary, standardise both splits with its statistics,
// then build the model (max_batch from batch()) and load its tensors. The
// file's bytes are freed then, unless keep_file (k->f stays open for the
// caller; the memory check counts the file for the whole run). Returns
// 0, or the exit code after printing one line "moe CMD: ...".
int cli_ckpt_load(const char *cmd, const char *path, const char *const *sets, size_t n_sets, int ignore_memory,
                  cli_batch_fn batch, cli_extra_fn extra, const void *ctx, int keep_file, struct cli_ckpt *k);
void cli_ckpt_release(struct cli_ckpt *k);

// The evaluation chunk the trainer uses for split evaluations (trainer.c:
// train.max_batch_eval rows, for text data at most a training batch of
// windows), given the number of training rows (windows per epoch for text).
// Evaluating in the same chunks gives the same figures, bit for bit.
size_t cli_ckpt_eval_chunk(const struct moe_run_cfg *rc, size_t n_train);

// For eval and generate: 0 when no override in sets names a model.* key,
// else the exit code (2) after "moe CMD: option 'OPT': ..." (opt names where it came from).
int cli_ckpt_refuse_model_sets(const char *cmd, const char *opt, const char *const *sets, size_t n_sets);

// eval's and compress's --config FILE over a checkpoint's config: checked as a
// config on its own (every message of moe train's --config), then its keys
// as overrides "key=value" (the first *ret_n_config of *ret), then c's --set
// options. The caller frees each string and the array. 0, or the exit code
// after printing one line.
struct cli_common;
int cli_ckpt_config_sets(const char *cmd, const struct cli_common *c, char ***ret, size_t *ret_n, size_t *ret_n_config);

// summary.json's account of FFN masks: an array of {ffn, units, pruned}, one per FFN (NULL: out of memory).
cJSON *cli_masks_json(const struct moe_ffn_masks *k);

#endif
