// cli.h: what every subcommand shares: option parsing helpers, error output,
// config loading with --set/--seed, run directories, JSON summaries.
// cmd/ is the only place that prints or picks an exit code.
#ifndef MOE_CLI_H
#define MOE_CLI_H

#include <cjson/cJSON.h>
#include <getopt.h>
#include <signal.h>
#include <stddef.h>

#include "core/status.h"
#include "io/config.h"

#define MOE_VERSION "0.1.0"

struct moe_csv;

// --tag KEY=VALUE (repeatable): a column KEY, VALUE on every row, at the end of
// every CSV table a run writes, and summary.json's "tags" object. KEY is a
// simple identifier ([A-Za-z_][A-Za-z0-9_]*, at most 64 bytes), named once, and
// no column of the command's tables; VALUE is any text without control
// characters (commas and quotes are quoted in the CSV, RFC 4180).
#define CLI_MAX_TAGS 32
struct cli_tags {
    size_t n;
    char *key[CLI_MAX_TAGS], *value[CLI_MAX_TAGS]; // owned
};

struct cli_common {
    const char *config;     // --config FILE
    const char **sets;      // --set k=v, in order
    size_t n_sets, cap_sets;
    const char *out;        // --out DIR
    long long seed;         // --seed N (-1: from config)
    int threads;            // --threads N
    const char *device;     // --device cpu|cuda|cuda:N, as given
    int device_id;          // N of cuda:N (0 for cuda and cpu)
    int quiet;              // --quiet: no log lines, no progress line
    double progress_every;  // --progress-every SECONDS (0: the default, progress.h)
    int ignore_memory;      // --ignore-memory: run even past the memory check's headroom
    int force;              // --force (train, distill, lora, compare-loss): clear the previous run in --out (run_dir.h)
    char **owned;           // --set strings a command's own options stand for (cli_add_set)
    size_t n_owned;
    const char **appends;   // of them, "key=value" added to a list key after the config and --set
    size_t n_appends;
    const char *first_owned_opt; // the option behind owned[0], for messages
    struct cli_tags tags;   // --tag KEY=VALUE, in order
};

// Long options every subcommand accepts; a command appends its own.
enum { OPT_CONFIG = 1000, OPT_SET, OPT_OUT, OPT_SEED, OPT_THREADS, OPT_DEVICE, OPT_QUIET, OPT_HELP, OPT_IGNORE_MEMORY,
       OPT_PROGRESS_EVERY, OPT_FORCE, OPT_TAG, OPT_FIRST_CMD };
#define CLI_COMMON_OPTIONS                                                                          \
    { "config", required_argument, NULL, OPT_CONFIG }, { "set", required_argument, NULL, OPT_SET }, \
    { "out", required_argument, NULL, OPT_OUT }, { "seed", required_argument, NULL, OPT_SEED },     \
    { "threads", required_argument, NULL, OPT_THREADS }, { "device", required_argument, NULL, OPT_DEVICE }, \
    { "quiet", no_argument, NULL, OPT_QUIET }, { "help", no_argument, NULL, OPT_HELP },                  \
    { "ignore-memory", no_argument, NULL, OPT_IGNORE_MEMORY },                                            \
    { "progress-every", required_argument, NULL, OPT_PROGRESS_EVERY }
// --force, for the commands that write a run directory (train, distill, lora,
// compare-loss): clear the previous run there first (run_dir.h).
#define CLI_FORCE_OPTION { "force", no_argument, NULL, OPT_FORCE }
// --tag: only the commands that write CSV tables (train, lora, distill, compare-loss, route-stats) list it.
#define CLI_TAG_OPTION { "tag", required_argument, NULL, OPT_TAG }

void cli_common_init(struct cli_common *c);
void cli_common_release(struct cli_common *c);
// Handle a common option; returns 1 if handled, 0 if not a common option, or a
// negative value after printing an error (exit code = -value).
int cli_common_option(struct cli_common *c, const char *cmd, int opt, const char *arg);
// Parse argv with getopt_long; handles the common options and calls
// on_opt(ctx, opt, optarg) for the command's own. Returns 0, or an exit code
// (2 for usage errors, with a one-line message naming the option), or -1 for --help.
int cli_parse(int argc, char **argv, const char *cmd, const struct option *opts, struct cli_common *c,
              int (*on_opt)(void *ctx, int opt, const char *arg), void *ctx);

// A command option that stands for `--set key=value` (in argv order with the
// real --set options), or with append for adding value's comma-separated items
// to a list key (after the config file and every --set); opt names it in
// messages. Returns 0, or 1 (out of memory).
int cli_add_set(struct cli_common *c, const char *opt, const char *key, const char *value, int append);

// One-line error on stderr: "moe CMD: message" (after ending a progress line
// drawn in place, progress.h). Returns exit_code.
int cli_error(const char *cmd, int exit_code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
// Report a library error and return its exit code.
int cli_fail(const char *cmd, const struct moe_err *err);
// Strict integer parse; returns 0 on success.
int cli_parse_ll(const char *s, long long lo, long long hi, long long *ret);

// Set up BLAS and threads (default: every online core at most, adapting to the
// cores other processes leave idle: core/gemm.h moe_threads_adapt); check --device
// (cli_device_refusal: anything but cpu is refused, exit 2: the command does
// not run on a CUDA device).
int cli_setup_compute(const char *cmd, const struct cli_common *c);
// The same for a command that can run on a CUDA device (moe bench, train):
// --device cuda or cuda:N is accepted when this build has CUDA and that
// device is usable (then cuda->device == the device's number, and cuda->dev describes
// it; cuda->device is 0 or -1 and cuda->available 0 for --device cpu);
// refused as above otherwise.
struct moe_backend_info;
int cli_setup_compute_cuda(const char *cmd, const struct cli_common *c, struct moe_backend_info *cuda);
// The same for train --dry-run: in a build with CUDA, --device cuda or cuda:N
// is accepted whether or not a device is usable here (*cuda says what the probe
// found: available 0 and the reason, or the device); refused are a build
// without CUDA and N beyond the devices there are. --device cpu: *cuda zeroed.
int cli_setup_compute_dry(const char *cmd, const struct cli_common *c, struct moe_backend_info *cuda);
// 0 when the CUDA backend runs model type `type` (mlp-moe, transformer);
// otherwise one line naming it and the model types it runs, exit 2.
int cli_cuda_model_type(const char *cmd, const struct cli_common *c, const char *type);
// --device's value: "cpu", "cuda" (device 0) or "cuda:N", N decimal digits.
// Returns 0 and sets *id (0 unless cuda:N), or -1 when malformed.
int cli_device_parse(const char *arg, int *id);
// Why --device `device` (parsed: device_id) cannot run, given what the CUDA
// row's probe found for that device (backend/backend.h): one line in buf
// without the "moe CMD: " prefix: a build without CUDA, no usable device (the
// driver's reason), N out of range (the device count), and a usable device
// (for a command that does not run on one yet).
struct moe_backend_info;
void cli_device_refusal(char *buf, size_t len, const char *device, int device_id, const struct moe_backend_info *cuda);
// "CUDA devices: N (cuda:0 to cuda:N-1)", or "CUDA devices: 0 (why)", for messages.
void cli_cuda_devices_str(char *buf, size_t len, const struct moe_backend_info *cuda);
// Load the run config: --config, then --set in order, then --seed.
int cli_load_config(const struct cli_common *c, struct moe_config *ret, struct moe_err *err);
// mkdir -p
int cli_mkdir_p(const char *path, struct moe_err *err);
// "dir/name" in a new string (the caller frees it), or NULL with err filled
// (out of memory).
char *cli_path(const char *dir, const char *name, struct moe_err *err);
// Write a cJSON object (pretty, trailing newline) atomically.
int cli_write_json(const char *path, const cJSON *obj, struct moe_err *err);
// DIR/summary.json (cli_write_json), then the same on stdout (cli_print_json).
// Returns 0, or the exit code after printing one line.
int cli_write_summary(const char *cmd, const char *dir, const cJSON *summary);
// Print a cJSON object compactly on stdout (one line). Returns 0, or 1 after
// printing "moe CMD: out of memory".
int cli_print_json(const char *cmd, const cJSON *obj);
// Common summary fields: command, version, revision, config hash, seed (train.seed), blas, threads.
cJSON *cli_summary_new(const char *cmd, const struct moe_config *cfg, uint64_t seed);

// ---- run identity (README "Run identity")
// The source revision baked in at build time (git describe, "unknown" outside git).
const char *cli_revision(void);
// main() records the whole command line for the summaries.
void cli_set_argv(int argc, char **argv);
// summary.json's identity: run_id, argv (the command line, volatile), sets
// (the --set overrides as given, in order) and tags. sets NULL: c->sets.
void cli_summary_identity(cJSON *s, const char *run_id, const char *const *sets, size_t n_sets,
                          const struct cli_tags *tags);
// A run id: 16 hex digits of FNV-1a 64 over "moe run id v1", the command, the
// resolved config (compact JSON: the seed is in it), the extra strings (the
// inputs a command names by option, e.g. --init's path, compare-loss's
// systems and seeds) and the tags. Identical runs have identical ids; nothing
// volatile (time, host, threads, argv) goes in. buf: at least 17 bytes.
void cli_run_id(char *buf, const char *cmd, const struct moe_config *cfg, const char *const *extra, size_t n_extra,
                const struct cli_tags *tags);

// ---- tags
// Parse one --tag KEY=VALUE into t; 0, or 2 after printing why (exit 2).
int cli_tag_add(struct cli_tags *t, const char *cmd, const char *arg);
// Refuse (exit 2, one line) a tag key equal to one of the columns cols[0..n).
int cli_tags_check_cols(const struct cli_tags *t, const char *cmd, const char *file, const char *const *cols,
                        size_t n);
void cli_tags_release(struct cli_tags *t);
// The tags as a compact JSON object (the caller frees it), NULL when out of memory.
char *cli_tags_json(const struct cli_tags *t);
// Tags back from cli_tags_json's text (a checkpoint's metadata); MOE_EFORMAT if malformed.
int cli_tags_parse(struct cli_tags *t, const char *json, const char *what, struct moe_err *err);
// summary.json's "tags" object.
void cli_tags_summary(cJSON *s, const struct cli_tags *t);
// A table's header with the tag keys after cols: a new array (free() it) of
// n + t->n names that point into cols and t.
const char **cli_tags_header(const char *const *cols, size_t n, const struct cli_tags *t);
// moe_csv_open with the tag columns after cols.
int cli_csv_open(struct moe_csv *csv, const char *path, const char *const *cols, size_t n, const struct cli_tags *t,
                 struct moe_err *err);
// The tag values, then moe_csv_end_row.
int cli_csv_end_row(struct moe_csv *csv, const struct cli_tags *t, struct moe_err *err);
// Log line on stderr unless quiet (after ending a progress line drawn in place).
void cli_log(const struct cli_common *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

// Subcommands (one file each).
int cmd_train(int argc, char **argv);
int cmd_lora(int argc, char **argv);
int cmd_distill(int argc, char **argv);
// The run behind `moe train`, shared with `moe lora` (cmd_train.c). c and o are
// parsed options; the caller releases c.
// SIGINT/SIGTERM for the commands that train (train, lora, distill,
// compare-loss): cli_catch_stop_signals installs a handler that records the
// signal in cli_stop_signal, for the trainer to stop after its current step; a
// second signal gets the default action (the disposition is reset), so a stuck
// run can still be killed with a second Ctrl-C.
// SIGUSR1 is a stop request like SIGTERM, with SIGTERM's exit status (143),
// and a second one changes nothing: Open MPI's mpirun passes SIGUSR1 on to
// every process of the job at once and exits with their status, whereas
// SIGTERM to mpirun makes it exit 1 (README, Training over several processes;
// cmd/moe-mpirun turns the one into the other).
extern volatile sig_atomic_t cli_stop_signal;
// The stop signal's name ("SIGINT", "SIGTERM", "SIGUSR1") and the exit status
// it gives: 130 for SIGINT, 143 for SIGTERM and SIGUSR1.
const char *cli_stop_name(int sig);
int cli_stop_exit(int sig);

// In a run over MPI processes (train --data-parallel N), this process's rank:
// only rank 0 prints (errors, log lines, JSON on stdout) and writes the run
// directory. 0 in every other run.
struct moe_dist;
extern int cli_rank;
// The message of the last cli_error (on every rank), for cli_agree.
extern char cli_last_error[MOE_ERR_MSG_MAX];
// In a run over processes (d non-NULL): every process passes the exit code of
// what it did, and all return the same one: 0, or the lowest failing rank's,
// whose message rank 0 prints when that rank is not itself ("rank R: ...").
int cli_agree(const char *cmd, struct moe_dist *d, int exit_code);
void cli_catch_stop_signals(void);

struct cli_train_opts {
    const char *init;   // --init CKPT (moe lora: --base)
    const char *resume; // --resume DIR
    int dry_run;
    uint64_t check_device; // train --check-device STEPS: compare that many steps on the CPU and the device
    int lora;           // moe lora: adapters (config lora.*) on the frozen base
    int merge;          // moe lora --merge: also write the merged model
    struct moe_dist *dist; // train --data-parallel N or --expert-parallel N (N > 1): the processes, else NULL
    int expert_parallel;   // --expert-parallel: the experts spread over them (dist/ep.h)
};
int cli_train_run(const char *cmd, struct cli_common *c, const struct cli_train_opts *o);
int cmd_compare_loss(int argc, char **argv);
int cmd_route_stats(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_eval(int argc, char **argv);     // cmd_eval.c
int cmd_generate(int argc, char **argv); // cmd_generate.c
int cmd_compress(int argc, char **argv); // cmd_compress.c

// summary.json's "routing" object (router, conventions, capacity, active
// parameters per token) for a model with sparse layers; also sets
// "active_parameters" in the summary.
struct moe_model;
void cli_routing_json(cJSON *summary, struct moe_model *m);

#endif
