// train_run.h (cmd): the parts of the run behind `moe train`, `moe distill` and
// `moe lora`, which cmd_train.c puts together: the run directory's files
// (run_output.c), the teacher and baseline of a distillation (train_distill.c)
// and what a tuning run trains (train_tune.c). Internal to cmd/, not an API:
// a function that takes cmd prints its one-line error and returns the exit
// code; one that takes a struct moe_err fills it and returns a MOE_E* code.
#ifndef MOE_CLI_TRAIN_RUN_H
#define MOE_CLI_TRAIN_RUN_H

#include <cjson/cJSON.h>
#include <stdint.h>

#include "cli.h"
#include "io/csv_writer.h"
#include "io/safetensors.h"
#include "train/train.h"

// ---------------------------------------------------------------- run_output.c

// The live tables: rows appended to the files as the run goes, fsynced before every checkpoint.
enum { LIVE_METRICS, LIVE_EXPERTS, LIVE_LANGS, N_LIVE };

// The run directory of one run.
struct run_output {
    const char *dir;
    struct moe_model *model;         // for the block number of each sparse layer
    const struct moe_config *cfg;
    uint64_t seed;                   // train.seed, for the summaries
    const struct moe_data *data;
    struct moe_csv live[N_LIVE];     // metrics.csv, experts.csv (sparse layers), languages.csv (text data)
    uint64_t resume_bytes[N_LIVE];   // a resumed run: the tables' lengths its checkpoint counts
    size_t rows;                     // evaluation rows this process has written
    char *vocab;                     // text data: the vocabulary file's bytes (checkpoint tensor vocab.text)
    size_t vocab_len;
    char *languages;                 // text data: JSON array of the language names
    int lora, merge;                 // moe lora (adapters.safetensors, no checkpoint), --merge (merged.safetensors)
    // The run's identity (README "Run identity"): its id, tags and --set
    // overrides; a resumed run takes them from its checkpoint.
    char run_id[17];
    const struct cli_tags *tags;     // = &own_tags once an identity is set
    struct cli_tags own_tags;
    char **sets;
    size_t n_sets;
    char *tags_json, *sets_json;     // the checkpoint's run.tags and run.sets (NULL: none)
    const struct moe_ffn_masks *masks; // pruned FFN units, written beside the weights (NULL: none)
};

// A new run's identity from its options (o->cfg set): tags, --set overrides and
// the run id over cmd, the config, extra (inputs named by option) and the tags.
int run_output_identity(struct run_output *o, const struct cli_common *c, const char *const *extra, size_t n_extra,
                        const char *cmd, struct moe_err *err);
// A resumed run's identity from its checkpoint (o->cfg set).
int run_output_identity_resume(struct run_output *o, const struct moe_st_file *ck, struct moe_err *err);
int run_output_identity_json(struct run_output *o, struct moe_err *err);
// summary.json's run_id, argv, sets and tags.
void run_output_summary_identity(cJSON *s, const struct run_output *o);
// Refuse a tag key equal to a column of metrics.csv, experts.csv or languages.csv (exit 2).
int run_output_check_tags(const char *cmd, const struct cli_tags *tags);

// Text data: the vocabulary's bytes and the language names, for the
// checkpoints, vocab.txt and the summary.
int run_output_text(const char *cmd, struct run_output *o, const struct moe_data *d);
// A resumed run: the tables' lengths its checkpoint counts, of the tables for
// text data only (text = 1) or the others (text = 0).
int run_output_lengths(struct run_output *o, const struct moe_st_file *ck, int text, struct moe_err *err);
// The summary of a finished run in dir into *ret (NULL if there is none, or it
// records an interruption).
int run_output_complete(const char *dir, cJSON **ret, struct moe_err *err);
// The live tables (new, or with resume the rows the checkpoint counts, read
// back), config.json and vocab.txt. Before writing anything it refuses a
// directory in the place of any file the run will write (MOE_EIO, naming it),
// rather than after training. dir, model, cfg, data, lora and merge must be set.
int run_output_open(struct run_output *o, int resume, struct moe_err *err);
// Training hooks (ctx = the struct run_output): a row for every live table, and
// the checkpoint after flushing them, with their lengths.
int run_output_row(void *ctx, const struct moe_eval_row *r, struct moe_err *err);
int run_output_checkpoint(void *ctx, const struct moe_train_ckpt *ck, struct moe_err *err);
// fsync the live tables (their rows are in the files already). err NULL: all
// of them, whatever fails (what can be kept is kept).
int run_output_flush(struct run_output *o, struct moe_err *err);
int run_output_close(struct run_output *o, struct moe_err *err);
void run_output_release(struct run_output *o);
// model.safetensors; with lora adapters.safetensors instead (the adapters and
// the base tensors not frozen), and with merge also merged.safetensors.
int run_output_model(struct run_output *o, const struct moe_lora *lora, const uint8_t *frozen, int merge,
                     struct moe_err *err);
// summary.json and stdout of a run a signal stopped after `steps` steps.
int run_output_interrupted(const char *cmd, struct run_output *o, const char *signal, uint64_t steps,
                           int has_checkpoint);
// A finished run's summary: what the model and data are (first), and what
// training gave (after tuning and distillation).
void run_output_summary_model(cJSON *s, const struct run_output *o);
void run_output_summary_result(cJSON *s, const struct run_output *o, const struct moe_train_result *res,
                               double flops_per_token);
// An evaluation row's figures (null for NaN).
cJSON *run_output_eval_json(const struct moe_eval_row *r);

// ---------------------------------------------------------------- train_distill.c

// The checkpoints a distillation learns from and compares with (distill.*).
struct distill {
    struct moe_model teacher, baseline; // ops NULL: none (their checkpoints are closed once they are loaded)
    cJSON *copied;  // distill.teacher_init: the tensors the student took from the teacher
    int moebert;    // distill.moebert
    struct moe_distill_cfg c; // the distill.* keys (distill_setup)
    // the teacher's model.* and moe.* settings (its device model's, --device
    // cuda), the configuration strings left out
    struct moe_model_hp teacher_hp;
};

// Load distill.teacher and distill.baseline for the student and, for a new run
// with distill.teacher_init, start the student from the teacher. est: the
// student's run as checked (cli_check_run); each model is checked beside it
// before it is made (--ignore-memory: ignore_memory).
int distill_setup(const char *cmd, struct distill *d, const struct moe_run_cfg *rcfg, const struct moe_data *data,
                  struct moe_model *student, int resume, const struct moe_model_estimate *est, int ignore_memory);
// --dry-run with distill.teacher or distill.baseline: each checkpoint's model,
// from its config, as the run will hold it beside the student's batches of
// max_batch, and the part of its checkpoint's bytes that the student's buffers
// allocated after it is freed do not cover (cli_ckpt_peak_bytes). Adds its
// bytes to est->bytes_total (the figure the run checks before it makes the
// model) and an object per checkpoint ("teacher",
// "baseline": path, model, parameters, memory_bytes) to out; *ret_device: what
// the teacher adds on a CUDA device (its weights and activations: an
// evaluation-only model; the baseline stays on the CPU).
int distill_peers_estimate(const char *cmd, const struct moe_run_cfg *rcfg, enum moe_task task, size_t n_in,
                           size_t n_out, size_t max_batch, struct moe_model_estimate *est, size_t *ret_device,
                           cJSON *out);
// A new run with distill.moebert: the teacher's FFNs become the student's
// experts; DIR/importance.csv and DIR/moebert.json say how.
int distill_moebert(const char *cmd, const struct cli_common *c, struct distill *d, const struct moe_run_cfg *rcfg,
                    struct moe_model *student, const struct moe_data *data, size_t max_batch, const char *dir);
// summary.distill (nothing without a teacher).
int distill_summary(const char *cmd, cJSON *s, struct distill *d, const struct moe_run_cfg *rcfg,
                    const struct moe_data *data, const struct moe_eval_row *student, const char *dir);
void distill_release(struct distill *d);
// Refuse a tag key equal to a column of importance.csv (exit 2).
int distill_check_tags(const char *cmd, const struct cli_tags *tags);

// ---------------------------------------------------------------- train_tune.c

// Refuse lora.rank > 0 outside moe lora (lora_mode 0), and in it a rank of 0
// or no lora.targets (exit 2): before the memory check, which lays the adapters
// out (train.h MOE_RUN_LORA), and before a dry run.
int tune_check(const char *cmd, const struct moe_run_cfg *rcfg, int lora_mode);
// What the run trains (train.trainable / train.freeze, and for moe lora the
// adapters of lora.*): fills *ret_sel (frozen = NULL: everything) and, with
// adapters, *lora: the layout the memory check counted, allocated and initialised.
int tune_setup(const char *cmd, const struct moe_run_cfg *rcfg, struct moe_model *m, int lora_mode,
               struct moe_tune_sel *ret_sel, struct moe_lora *lora);
// moe lora --dry-run: summary.tuning into s, as tune_summary will write it for
// the run, from the model's registry (model/estimate.h moe_model_params_hp) and
// the same selection and adapters (tune.h moe_lora_setup), nothing allocated.
int tune_dry(const char *cmd, const struct moe_run_cfg *rcfg, enum moe_task task, size_t n_in, size_t n_out,
             cJSON *s);
// summary.tuning: the trainable parameters and their share (p: the model's registry).
void tune_summary(cJSON *s, const struct moe_params *p, const struct moe_tune_sel *sel, const struct moe_lora *l);
// adapters.safetensors: the adapters and the base tensors not frozen.
int tune_write_adapters(const char *path, const struct moe_model *m, const uint8_t *frozen,
                        const struct moe_lora *l, const struct moe_st_meta *meta, size_t n_meta,
                        struct moe_err *err);

#endif
