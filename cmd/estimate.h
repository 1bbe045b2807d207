// estimate.h (cmd): a config's resource estimate (model/estimate.h) as JSON,
// and the refusal of a run that will not fit in memory, before it allocates.
// Used by `moe train --dry-run` and before model creation in every command
// that builds a model.
#ifndef MOE_CLI_ESTIMATE_H
#define MOE_CLI_ESTIMATE_H

#include <cjson/cJSON.h>

#include "model/estimate.h"
#include "train/train.h"

// What the run can use: with MOE_MEMORY_LIMIT set, that budget (it covers the
// whole run, data and process included); otherwise the memory available now
// (core/sysmem.h) plus what the process already holds, no longer counted as
// available: itself (e->bytes_process) and, when data_loaded, the data
// (e->bytes_data) and its readers' peak, which is past (e->bytes_readers).
// 0, or a library code with err filled (a malformed MOE_MEMORY_LIMIT).
int cli_memory_for_run(const struct moe_model_estimate *e, int data_loaded, size_t *ret_bytes,
                       const char **ret_source, struct moe_err *err);

// {"parameters", "active_parameters", "flops_per_token", "flops_forward_per_token",
//  "memory_bytes": {"params", "grads", "optimizer", "adapters", "activations", "trainer", "data",
//                   "data_readers", "checkpoint", "process", "total"},
//  "largest_buffer": "...", "memory_available_bytes", "memory_available_source", "fits"}
// memory_available_bytes as cli_memory_for_run, fits = total <= available
// (both null when it cannot be told: a malformed MOE_MEMORY_LIMIT).
cJSON *cli_estimate_json(const struct moe_model_estimate *e, int data_loaded);

// The memory a run must leave free beside its estimate: a quarter of the
// estimate, at least CLI_HEADROOM_MIN, when what is available comes from the
// machine (MemAvailable, the cgroup, RLIMIT_AS / RLIMIT_DATA); none under a
// MOE_MEMORY_LIMIT budget, which the user chose. The quarter is the margin the
// estimate is tested to (peak RSS within 1.25x of it, tests/cli/test_memory.sh).
#define CLI_HEADROOM_MIN ((size_t)64 << 20)
size_t cli_memory_headroom(const struct moe_model_estimate *e, const char *source);
// 0 when the run fits with its headroom (or ignore_memory is set and the figure is the
// machine's); otherwise print one line and return the exit code: 1 "moe CMD:
// this config needs about 41.2 GiB plus 10.3 GiB of headroom, only 23.1 GiB
// available (--ignore-memory runs it anyway; MOE_MEMORY_LIMIT sets a budget)", 2 for a
// malformed MOE_MEMORY_LIMIT.
int cli_check_memory(const char *cmd, const struct moe_model_estimate *e, int data_loaded, int ignore_memory);
// The same for a run that also holds other models (a distillation teacher, a
// baseline): e's total counts them, and the line names them ("this config,
// with distill.teacher 'PATH', needs about ...").
int cli_check_memory_with(const char *cmd, const struct moe_model_estimate *e, int data_loaded, int ignore_memory,
                          const char *with);

// The rows of a command's largest batch (the model's max_batch), from the
// run's settings and the sizes of the splits; ctx is the command's own.
typedef size_t (*cli_batch_fn)(const struct moe_run_cfg *rc, size_t n_train, size_t n_test, const void *ctx);

// A checkpoint a run reads: moe_safetensors_open reads the whole file into one
// buffer, and the model's tensors are copied out of it.
struct cli_ckpt_mem {
    size_t bytes;  // the file's size (0: no checkpoint)
    int read;      // already read when the memory is checked: its bytes are the process's, not available
    // Held until the run ends (--resume: the trainer reads its moments once it has
    // allocated its own; compress writes its vocabulary and statistics back).
    // Else freed once the model is built, before the optimizer, the adapters and
    // the trainer's buffers are allocated (eval's statistics: its trainer bytes).
    int whole_run;
};
// The size of the checkpoint at path as the reader will read it (a regular
// file's size; 0 when it is not one, which the reader then refuses).
size_t cli_ckpt_file_bytes(const char *path);
// The bytes a checkpoint of file_bytes adds to the peak of the run e estimates:
// all of them when it is held for the whole run, else what e's optimizer,
// adapters and trainer (allocated once it is freed) do not cover.
size_t cli_ckpt_peak_bytes(const struct moe_model_estimate *e, size_t file_bytes, int whole_run);
// moe_run_estimate, plus ck's checkpoint (NULL: none) in bytes_checkpoint and
// bytes_total: the figure cli_check_run checks and --dry-run prints.
int cli_run_estimate(const struct moe_run_cfg *rc, const char *loss, enum moe_task task, size_t n_in, size_t n_out,
                     size_t n_train, size_t n_test, size_t max_batch, enum moe_run_kind kind,
                     const struct cli_ckpt_mem *ck, struct moe_model_estimate *ret, struct moe_err *err);
// What a command holds at its peak besides the run that rc, task, n_in, n_out
// and max_batch describe (moe_run_estimate's buffers and the checkpoint's), in
// bytes, into *ret_bytes (compress: the compressed model and what it makes for
// it, cmd_compress.c). ctx: the command's. 0, or a library error code with err filled.
typedef int (*cli_extra_fn)(const struct moe_run_cfg *rc, enum moe_task task, size_t n_in, size_t n_out,
                            size_t max_batch, const void *ctx, size_t *ret_bytes, struct moe_err *err);
// cli_run_estimate, plus extra's bytes (NULL: none) in bytes_total.
int cli_run_estimate_ex(const struct moe_run_cfg *rc, const char *loss, enum moe_task task, size_t n_in, size_t n_out,
                        size_t n_train, size_t n_test, size_t max_batch, enum moe_run_kind kind,
                        const struct cli_ckpt_mem *ck, cli_extra_fn extra, const void *extra_ctx,
                        struct moe_model_estimate *ret, struct moe_err *err);

// Estimate the run of rc (trained with loss; NULL: loss.type), checking the
// model's rules, and refuse it when it will not fit: 0 to go on, or
// the exit code after printing one line (an estimate error as cli_fail: 2 for
// an absurd config; the refusal as cli_check_memory: 1). data: the loaded
// splits; or NULL before loading, when the shape comes from the config if it
// can (synthetic data, moe_data_shape_cfg) and otherwise nothing is checked yet
// (returns 0 with *ret_checked = 0: call again once the data is loaded).
// kind: as moe_run_estimate (0 evaluation, 1 training, MOE_RUN_LORA). ck: the
// checkpoint the run reads (cli_run_estimate; NULL: none). ignore_memory: --ignore-memory.
// ret_est (may be NULL): the estimate, for --dry-run; written when *ret_checked is set.
int cli_check_run(const char *cmd, const struct moe_run_cfg *rc, const char *loss, const struct moe_data *data,
                  cli_batch_fn batch, const void *ctx, enum moe_run_kind kind, const struct cli_ckpt_mem *ck,
                  int ignore_memory, struct moe_model_estimate *ret_est, int *ret_checked);
// cli_check_run of cli_run_estimate_ex's figure: extra (NULL: none) gets ctx, as batch does.
int cli_check_run_ex(const char *cmd, const struct moe_run_cfg *rc, const char *loss, const struct moe_data *data,
                     cli_batch_fn batch, cli_extra_fn extra, const void *ctx, enum moe_run_kind kind,
                     const struct cli_ckpt_mem *ck, int ignore_memory, struct moe_model_estimate *ret_est,
                     int *ret_checked);

#endif
