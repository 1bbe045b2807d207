// cmd_train.c: `moe train` trains one model from a config and writes a run
// directory: config.json, metrics.csv, model.safetensors, summary.json; the
// summary JSON also goes to stdout. Along the way it keeps checkpoint.safetensors
// (weights, optimizer moments, position) after every epoch, every
// train.checkpoint_every steps and on SIGINT/SIGTERM; `--resume DIR` continues
// from it and ends with the same bytes as a run never stopped. `moe distill`
// and `moe lora` are this run with other options (cli_train_run). This file
// parses the options and takes the run's steps in order; the steps' parts are
// the run directory (run_output.c), distillation (train_distill.c) and tuning
// (train_tune.c).
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ckpt.h"
#include "estimate.h"
#include "progress.h"
#include "backend/backend.h"
#include "cuda/model.h"
#include "cuda/ops.h"
#include "dist/dist.h"
#include "dist/ep.h"
#include "run_dir.h"
#include "train_run.h"

static const char *const usage =
    "usage: moe train [--config FILE] [--set key.path=value]... [--out DIR] [--seed N]\n"
    "                 [--threads N] [--init CKPT] [--device cpu|cuda[:N]] [--force] [--ignore-memory]\n"
    "                 [--quiet] [--progress-every SECONDS] [--tag KEY=VALUE]...\n"
    "                 [--expert-parallel N | --data-parallel N]\n"
    "       moe train --resume DIR [--set train.epochs=N] [--threads N] [--quiet]\n"
    "                 [--progress-every SECONDS]\n"
    "       moe train --dry-run [--config FILE] [--set key.path=value]... [--device D]\n"
    "       moe train --check-device STEPS --device cuda[:N] [--config FILE] [--set ...]...\n"
    "       moe train --init CKPT [--trainable GLOB[,GLOB]] [--freeze GLOB[,GLOB]] ...\n"
    "Train the model a config describes; write DIR/config.json, metrics.csv,\n"
    "model.safetensors and summary.json, and print the summary JSON on stdout.\n"
    "Without --out, DIR is runs/train-<config hash>. DIR/checkpoint.safetensors is\n"
    "rewritten after every epoch (and every train.checkpoint_every steps); SIGINT,\n"
    "SIGTERM or SIGUSR1 finishes the current step, writes it and exits (SIGINT 130,\n"
    "else 143).\n"
    "--resume DIR continues that run from its checkpoint, with its own config;\n"
    "the result is byte-identical to a run that was never stopped. With\n"
    "--set train.epochs=N (more than the run's) it extends a run, finished or not,\n"
    "to N epochs: the same files as a run of N epochs from the start, unless the\n"
    "learning rate decays over the run's length (refused: optim.schedule cosine or\n"
    "linear without optim.decay_steps).\n"
    "A DIR that holds another run (any file a run writes: config.json, metrics.csv,\n"
    "model.safetensors, summary.json, checkpoint.safetensors, ...) is refused (exit 2;\n"
    "one with a checkpoint and no model file: continue it with --resume) unless\n"
    "--force, which first removes those files (other files are left alone). While a\n"
    "run writes DIR it holds DIR/moe.lock: a second moe process there fails at once\n"
    "(exit 1, naming the holder's PID).\n"
    "metrics.csv (and experts.csv, languages.csv) grow a whole row at a time as the\n"
    "run goes (tail -f follows them); a reader ignores a last line without a\n"
    "trailing newline (a row torn by a kill; --resume cuts it off).\n"
    "--device cuda[:N] (a build with CUDA: moe --version) runs the training steps\n"
    "and evaluations on that GPU (mlp-moe, transformer; checkpoints are the\n"
    "CPU's files, written from the device's weights); the same seed gives the\n"
    "same bytes on the same GPU, and checkpoints resume on either side.\n"
    "--check-device STEPS runs that many steps from the same weights and\n"
    "batches on the CPU and on the device and prints, as JSON, the largest\n"
    "relative difference per tensor (weights, gradients, moments) and per step\n"
    "(loss, gradient norm); it writes no files.\n"
    "--dry-run prints the parameter count, active parameters and FLOPs per token\n"
    "and the memory estimate as JSON, and trains nothing. A run whose estimate\n"
    "plus a headroom of a quarter of it (at least 64 MiB) exceeds the memory\n"
    "available is refused (exit 1) before it allocates; --ignore-memory runs it anyway.\n"
    "--trainable / --freeze (repeatable; config keys train.trainable, train.freeze)\n"
    "train only the tensors whose names match a --trainable glob (fnmatch, '*'\n"
    "crosses dots) and no --freeze glob; the others stay byte-identical.\n"
    "GLOB@A-B (or GLOB@A) selects only experts A..B (0-based, inclusive) of the\n"
    "expert tensors [E, out, in] it matches (e.g. --trainable\n"
    "'layers.*.moe.experts.*@0-1', --freeze '*.experts.*@3'); the other experts'\n"
    "slices stay byte-identical.\n"
    "--tag KEY=VALUE (repeatable) adds a column KEY holding VALUE to every row of\n"
    "every CSV table the run writes (after the table's own columns) and KEY to\n"
    "summary.json's \"tags\"; --resume keeps the run's tags (from its checkpoint).\n"
    "--data-parallel N (in a build with MPI: moe --version, line 'mpi') trains over\n"
    "N processes started by mpirun (mpirun -np N moe train --data-parallel N ...):\n"
    "each optimizer step's train.accumulate micro-batches (a multiple of N) are\n"
    "shared out among them, and the run's files are byte-identical to those of\n"
    "the same config in one process. Rank 0 writes the run directory and prints;\n"
    "every process must get the same options. --expert-parallel N does the same\n"
    "with each process holding n_expert/N experts of every sparse layer (mlp-moe,\n"
    "transformer; N must divide model.n_expert): the rows routed to an expert go\n"
    "to its process and back (MPI_Alltoallv), with the same byte-identical files.\n"
    "--quiet: no log or progress lines on stderr. Progress while training: one\n"
    "line, e.g. 'step 120/600 (20%)  epoch 3/15  loss 0.4213  18.2k tok/s  ETA 0:27'\n"
    "(rows/s for data other than text), redrawn in place at a terminal, else\n"
    "printed every --progress-every SECONDS (default 10; the first after as long).\n";

enum { OPT_INIT = OPT_FIRST_CMD, OPT_RESUME, OPT_DRY_RUN, OPT_CHECK_DEVICE, OPT_TRAINABLE, OPT_FREEZE, OPT_EXPERT_PARALLEL, OPT_DATA_PARALLEL };

struct train_ctx {
    struct cli_train_opts *o;
    struct cli_common *c;
    const char *parallel_opt; // --expert-parallel or --data-parallel, as given
    int n_proc;               // its N
};

static int on_opt(void *ctx_, int opt, const char *arg)
{
    struct train_ctx *ctx = ctx_;
    struct cli_train_opts *o = ctx->o;
    if (opt == OPT_TRAINABLE || opt == OPT_FREEZE)
        return cli_add_set(ctx->c, opt == OPT_TRAINABLE ? "--trainable" : "--freeze",
                           opt == OPT_TRAINABLE ? "train.trainable" : "train.freeze", arg, 1);
    if (opt == OPT_INIT) {
        o->init = arg;
        return 0;
    }
    if (opt == OPT_RESUME) {
        o->resume = arg;
        return 0;
    }
    if (opt == OPT_DRY_RUN) {
        o->dry_run = 1;
        return 0;
    }
    if (opt == OPT_CHECK_DEVICE) {
        long long v;
        if (cli_parse_ll(arg, 1, 1000000, &v))
            return cli_error("train", 2, "option '--check-device' expects a number of steps from 1 to 1000000, got '%s'", arg);
        o->check_device = (uint64_t)v;
        return 0;
    }
    if (opt == OPT_EXPERT_PARALLEL || opt == OPT_DATA_PARALLEL) {
        const char *name = opt == OPT_EXPERT_PARALLEL ? "--expert-parallel" : "--data-parallel";
        long long v;
        if (cli_parse_ll(arg, 1, 4096, &v))
            return cli_error("train", 2, "option '%s' expects a number of processes from 1 to 4096, got '%s'", name, arg);
        ctx->parallel_opt = name;
        ctx->n_proc = (int)v;
        return 0;
    }
    return 2;
}

// train --data-parallel N or --expert-parallel N (opt): MPI started with N
// processes (else one line, exit 2, from rank 0), then cli_train_run with
// them, then MPI's end. N = 1 is a run in one process.
static int over_processes(const char *cmd, struct cli_common *c, struct cli_train_opts *o, const char *opt, int n)
{
    struct moe_dist d;
    struct moe_err err = { 0 };
    int rc = moe_dist_init(&d, n, opt, &err);
    cli_rank = d.rank;
    if (!rc) {
        o->dist = n > 1 ? &d : NULL;
        o->expert_parallel = n > 1 && strcmp(opt, "--expert-parallel") == 0;
        rc = cli_train_run(cmd, c, o);
        o->dist = NULL;
    } else {
        rc = cli_fail(cmd, &err);
    }
    moe_dist_finalize(&d);
    cli_rank = 0;
    return rc;
}

// The largest batch the model sees: the training batch (the whole split for
// full-batch gd) or the evaluation chunk, whichever is larger.
static size_t train_batch(const struct moe_run_cfg *rc, size_t n_train, size_t n_test, const void *ctx)
{
    (void)ctx;
    size_t bs = rc->optim.batch_size;
    size_t max_batch = bs == 0 || rc->optim.type == MOE_OPTIM_GD ? n_train : bs;
    if (rc->data.source == MOE_DATA_TEXT)
        return max_batch; // evaluation passes are at most a training batch of windows (trainer.c)
    size_t chunk = rc->train.max_batch_eval;
    size_t biggest = n_train > n_test ? n_train : n_test;
    if (chunk > biggest)
        chunk = biggest;
    return chunk > max_batch ? chunk : max_batch;
}

// --dry-run --device cuda[:N]: the "device" object of the estimate, from what
// the probe found (cuda): the device memory the run needs and, with a usable
// device, its memory and whether the need fits; without one, fits is null and
// the reason is given. The CUDA backend takes the sparse models only.
static int dry_device(const char *cmd, const struct cli_common *c, const struct moe_run_cfg *rcfg,
                      const struct moe_model_estimate *est, size_t teacher_bytes,
                      const struct moe_backend_info *cuda, cJSON *s)
{
    int rc = cli_cuda_model_type(cmd, c, moe_model_kind(rcfg->model.type)->name);
    if (rc)
        return rc;
    cJSON *d = cJSON_AddObjectToObject(s, "device");
    if (!d)
        return cli_error(cmd, 1, "out of memory");
    char name[32];
    snprintf(name, sizeof name, "cuda:%d", c->device_id);
    cJSON_AddStringToObject(d, "device", name);
    size_t need = moe_estimate_device_bytes(est);
    if (__builtin_add_overflow(need, teacher_bytes, &need))
        need = SIZE_MAX;
    cJSON_AddNumberToObject(d, "memory_bytes", (double)need);
    cJSON_AddNumberToObject(d, "extra_bytes", (double)est->bytes_device_extra);
    if (rcfg->distill.teacher)
        cJSON_AddNumberToObject(d, "teacher_bytes", (double)teacher_bytes);
    cJSON_AddNumberToObject(d, "reserve_bytes", (double)MOE_ESTIMATE_CUDA_RESERVE_BYTES);
    const int usable = cuda->available && cuda->device == c->device_id;
    cJSON_AddBoolToObject(d, "available", usable);
    if (usable) {
        cJSON_AddStringToObject(d, "name", cuda->dev.name);
        cJSON_AddNumberToObject(d, "total_memory_bytes", (double)cuda->dev.total_memory);
        cJSON_AddBoolToObject(d, "fits", need <= cuda->dev.total_memory);
    } else {
        cJSON_AddStringToObject(d, "reason", cuda->reason[0] ? cuda->reason : "the device could not be described");
        cJSON_AddNullToObject(d, "fits");
    }
    return 0;
}

// moe lora --dry-run: the base checkpoint read as the run will read it (a
// missing or malformed file refused with the run's message; with text data
// loaded, its vocabulary and languages checked against the data's).
static int dry_base(const char *cmd, const char *path, const struct moe_data *data)
{
    struct moe_err err = { 0 };
    struct moe_st_file f;
    int rc = moe_safetensors_open(path, &f, &err) || moe_data_check_text_checkpoint(data, &f, &err);
    moe_safetensors_close(&f);
    return rc ? cli_fail(cmd, &err) : 0;
}

// --dry-run: the estimate on stdout, from the config alone when it gives the
// data's shape (synthetic), else after loading the data. cuda: what the CUDA
// probe found for --device cuda[:N] (then the output has a "device" object),
// NULL for --device cpu. ck: the checkpoint of --init or --resume, counted as
// the run counts it (run_ckpt). moe lora (o->lora): the run's estimate with its
// adapters (MOE_RUN_LORA, the figure it checks), the base checkpoint read, and
// summary.tuning as the run will write it.
static int dry_run(const char *cmd, const struct cli_common *c, const struct cli_train_opts *o,
                   const struct moe_config *cfg, const struct moe_run_cfg *rcfg, const struct cli_ckpt_mem *ck,
                   const struct moe_backend_info *cuda)
{
    struct moe_err err = { 0 };
    struct moe_data data;
    memset(&data, 0, sizeof data);
    enum moe_task task;
    size_t n_in, n_out, n_train, n_test;
    int known = moe_data_shape_cfg(&rcfg->data, &task, &n_in, &n_out, &n_train, &n_test, &err);
    if (known < 0)
        return cli_fail(cmd, &err);
    if (!known) {
        if (moe_data_load_cfg(&data, &rcfg->data, NULL, &err))
            return cli_fail(cmd, &err);
        task = data.train.task, n_in = data.train.n_in, n_out = data.train.n_out;
        n_train = data.train.n, n_test = data.test.n;
    }
    struct moe_model_estimate est;
    const size_t max_batch = train_batch(rcfg, n_train, n_test, NULL);
    int rc = cli_run_estimate(rcfg, NULL, task, n_in, n_out, n_train, n_test, max_batch,
                              o->lora ? MOE_RUN_LORA : MOE_RUN_TRAIN, ck, &est, &err);
    if (rc) {
        moe_data_release(&data);
        return cli_fail(cmd, &err);
    }
    if (o->lora && (rc = dry_base(cmd, o->init, &data))) {
        moe_data_release(&data);
        return rc;
    }
    // a distillation's teacher and baseline beside the student (distill.*)
    cJSON *peers = cJSON_CreateObject();
    size_t teacher_device = 0;
    if (!peers || (rc = distill_peers_estimate(cmd, rcfg, task, n_in, n_out, max_batch, &est, &teacher_device,
                                               peers))) {
        cJSON_Delete(peers);
        moe_data_release(&data);
        return peers ? rc : cli_error(cmd, 1, "out of memory");
    }
    cJSON *s = cli_summary_new(cmd, cfg, rcfg->train.seed);
    cJSON_AddBoolToObject(s, "dry_run", 1);
    cJSON_AddStringToObject(s, "model", moe_model_kind(rcfg->model.type)->name);
    cJSON_AddNumberToObject(s, "train_rows", (double)n_train);
    cJSON_AddNumberToObject(s, "test_rows", (double)n_test);
    cJSON_AddNumberToObject(s, "max_batch", (double)max_batch);
    if (peers->child) // memory_bytes.total below counts them, as the run's check does
        cJSON_AddItemToObject(s, "distill", peers);
    else
        cJSON_Delete(peers);
    if (o->lora && (rc = tune_dry(cmd, rcfg, task, n_in, n_out, s))) {
        cJSON_Delete(s);
        moe_data_release(&data);
        return rc;
    }
    cJSON *e = cli_estimate_json(&est, !known);
    for (cJSON *it = e ? e->child : NULL; it;) { // merge the estimate's keys into the summary
        cJSON *next = it->next;
        cJSON_AddItemToObject(s, it->string, cJSON_DetachItemViaPointer(e, it));
        it = next;
    }
    rc = !e ? cli_error(cmd, 1, "out of memory") : cuda ? dry_device(cmd, c, rcfg, &est, teacher_device, cuda, s) : 0;
    if (!rc)
        rc = cli_print_json(cmd, s);
    cJSON_Delete(e);
    cJSON_Delete(s);
    moe_data_release(&data);
    return rc;
}

// Everything one run holds; run_release frees it all, whatever step it reached.
struct train_run {
    const char *cmd;
    const struct cli_common *c;
    const struct cli_train_opts *o;
    const char *out;                 // the run directory
    char default_out[32];            // without --out: runs/train-<config hash>
    struct moe_config cfg;
    struct moe_run_cfg rc;           // cfg read once, typed
    struct moe_data data;
    struct moe_model model;
    size_t max_batch;
    struct moe_model_estimate est;   // its FLOPs per token give summary.json's train_gflops
    struct moe_st_file init, resume; // the checkpoints of --init (closed once read) and --resume
    struct moe_train_pos pos;        // where a resumed run stopped
    uint64_t extend_from;            // --resume --set train.epochs=N: the run's epochs before (0: no extension)
    struct moe_vocab ck_vocab;       // a resumed run's vocabulary (text data)
    int has_vocab;
    struct distill distill;
    struct moe_tune_sel tune;        // what a tuning run trains (tune.frozen = NULL: everything)
    struct moe_lora lora;
    struct moe_ffn_masks masks;      // pruned FFN units (has_masks: train.prune, or a checkpoint with NAME.pruned)
    int has_masks;
    struct run_output outs;
    struct run_dir lock;             // the run directory's moe.lock, held from its claim to the end
    // --device cuda[:N]: what the probe found, and the trainer's device hook
    struct moe_backend_info cuda;
    struct moe_train_device dev;
    int on_device;
};

static void run_release(struct train_run *r)
{
    run_output_release(&r->outs);
    moe_vocab_release(&r->ck_vocab);
    moe_safetensors_close(&r->init);
    moe_safetensors_close(&r->resume);
    moe_model_release(&r->model);
    moe_data_release(&r->data);
    moe_run_cfg_release(&r->rc);
    moe_config_release(&r->cfg);
    moe_lora_release(&r->lora);
    moe_ffn_masks_release(&r->masks);
    moe_tune_sel_release(&r->tune);
    distill_release(&r->distill);
    run_dir_release(&r->lock);
}

#define EXTEND_KEY "train.epochs"

// A resumed run keeps the config, seed, initial weights and directory it had;
// only its length may change (--set train.epochs=N, which extends it).
static int check_resume_options(const struct train_run *r)
{
    const struct cli_common *c = r->c;
    if (!r->o->resume)
        return 0;
    const char *clash = c->config ? "--config" : c->seed >= 0 ? "--seed" : r->o->init ? "--init"
                        : c->out ? "--out" : c->force ? "--force" : NULL;
    if (clash)
        return cli_error(r->cmd, 2, "option '%s' cannot be combined with '--resume' (the run keeps the config in its checkpoint)",
                         clash);
    if (c->tags.n)
        return cli_error(r->cmd, 2,
                         "option '--tag' cannot be combined with '--resume' (the run keeps its tags in its checkpoint)");
    for (size_t i = 0; i < c->n_sets; i++) {
        const char *eq = strchr(c->sets[i], '=');
        size_t len = eq ? (size_t)(eq - c->sets[i]) : strlen(c->sets[i]);
        if (len != strlen(EXTEND_KEY) || strncmp(c->sets[i], EXTEND_KEY, len) != 0)
            return cli_error(r->cmd, 2, "option '--set' cannot be combined with '--resume' for key '%.*s' (the run keeps the config in its checkpoint; only " EXTEND_KEY " may be set, to extend the run)",
                             (int)(len > 200 ? 200 : len), c->sets[i]);
    }
    return 0;
}

// --resume DIR --set train.epochs=N: the run's config with N epochs. Fewer
// epochs than the run's are refused, and so is a longer run whose learning
// rate decays over its length (each step's rate would change, so the result
// would match no run started from scratch). *ret_extend: 1 when N is larger.
static int extend_config(struct train_run *r, const char *cfg_json, int *ret_extend)
{
    struct moe_err perr;
    uint64_t before = (uint64_t)moe_cfg_int(&r->cfg, EXTEND_KEY);
    struct moe_config longer;
    if (moe_config_parse(&longer, moe_run_schema(), moe_run_schema_len(), cfg_json, r->resume.path, r->c->sets,
                         r->c->n_sets, &perr))
        return cli_fail(r->cmd, &perr);
    uint64_t after = (uint64_t)moe_cfg_int(&longer, EXTEND_KEY);
    struct moe_optim_cfg oc;
    moe_optim_cfg_parse(&oc, &longer);
    int rc = 0;
    if (after < before)
        rc = cli_error(r->cmd, 2, EXTEND_KEY "=%llu is fewer than the %llu epochs of the run in %s/: --resume can only extend a run",
                       (unsigned long long)after, (unsigned long long)before, r->out);
    else if (after > before && moe_lr_schedule_uses_length(&oc))
        rc = cli_error(r->cmd, 2, "cannot extend the run in %s/ from %llu to %llu epochs: its optim.schedule '%s' decays over the run's length (optim.decay_steps 0), so every step's learning rate would change; start a new run, or give optim.decay_steps",
                       r->out, (unsigned long long)before, (unsigned long long)after, moe_lr_schedule_name(oc.schedule));
    if (rc) {
        moe_config_release(&longer);
        return rc;
    }
    moe_config_release(&r->cfg);
    r->cfg = longer;
    *ret_extend = after > before;
    if (*ret_extend)
        r->extend_from = before;
    return 0;
}

// --resume DIR: from DIR/checkpoint.safetensors, where the run stopped, the
// lengths of its tables, its vocabulary (text data) and its config.
static int resume_config(struct train_run *r)
{
    struct moe_err err = { 0 };
    char *path = cli_path(r->out, "checkpoint.safetensors", &err);
    int failed = !path || moe_safetensors_open(path, &r->resume, &err) ||
                 moe_train_pos_read(&r->resume, &r->pos, &err) ||
                 run_output_lengths(&r->outs, &r->resume, 0, &err) ||
                 (r->has_vocab = moe_data_vocab_read(&r->resume, &r->ck_vocab, &err)) < 0 ||
                 (r->has_vocab && run_output_lengths(&r->outs, &r->resume, 1, &err));
    free(path);
    if (failed)
        return cli_fail(r->cmd, &err);
    const char *cfg_json = moe_safetensors_meta(&r->resume, "config");
    if (!cfg_json)
        return cli_error(r->cmd, 1, "%s: no metadata 'config'", r->resume.path);
    struct moe_err perr;
    if (moe_config_parse(&r->cfg, moe_run_schema(), moe_run_schema_len(), cfg_json, r->resume.path, NULL, 0, &perr))
        return cli_error(r->cmd, 1, "%s: the 'config' metadata is not a valid config: %s", r->resume.path, perr.msg);
    int extend = 0;
    return r->c->n_sets ? extend_config(r, cfg_json, &extend) : 0;
}

// An extended run is no longer complete: its summary and model go, so that
// neither is taken for the longer run's should this one be stopped.
static int extend_outputs(struct train_run *r)
{
    static const char *const stale[] = { "summary.json", "model.safetensors" };
    struct moe_err err = { 0 };
    for (size_t i = 0; r->extend_from && i < sizeof stale / sizeof *stale; i++) {
        char *path = cli_path(r->out, stale[i], &err);
        if (!path)
            return cli_fail(r->cmd, &err);
        int gone = remove(path) == 0 || errno == ENOENT;
        free(path);
        if (!gone)
            return cli_error(r->cmd, 1, "cannot remove '%s/%s' to extend the run: %s", r->out, stale[i],
                             strerror(errno));
    }
    return 0;
}

// The checkpoint the run reads whole, as the memory check counts it: --resume's,
// read before the config and held until the trainer has read its moments and
// statistics (after it allocated its own); or --init's (moe lora's --base), read
// once the model is made and closed once its weights and FFN masks are copied
// out (setup), before the teacher, the adapters and the trainer allocate.
static struct cli_ckpt_mem run_ckpt(const struct train_run *r)
{
    if (r->o->resume)
        return (struct cli_ckpt_mem){ r->resume.size, 1, 1 };
    return (struct cli_ckpt_mem){ cli_ckpt_file_bytes(r->o->init), 0, 0 };
}

// The data (a resumed run reads its text with the vocabulary it was trained
// with). A run that will not fit is refused before it allocates: from the
// config's shape when it gives one (synthetic data), else once the data is loaded.
static int load_data(struct train_run *r)
{
    struct moe_err err = { 0 };
    int checked = 0, rc;
    // moe lora: its adapters and what it trains (train.h MOE_RUN_LORA), the figure its dry run prints
    const enum moe_run_kind kind = r->o->lora ? MOE_RUN_LORA : MOE_RUN_TRAIN;
    const struct cli_ckpt_mem ck = run_ckpt(r);
    if ((rc = cli_check_run(r->cmd, &r->rc, NULL, NULL, train_batch, NULL, kind, &ck, r->c->ignore_memory, &r->est,
                            &checked)))
        return rc;
    if (moe_data_load_cfg(&r->data, &r->rc.data, r->has_vocab > 0 ? &r->ck_vocab : NULL, &err))
        return cli_fail(r->cmd, &err);
    if (r->data.has_text && (rc = run_output_text(r->cmd, &r->outs, &r->data)))
        return rc;
    if (!checked)
        rc = cli_check_run(r->cmd, &r->rc, NULL, &r->data, train_batch, NULL, kind, &ck, r->c->ignore_memory,
                           &r->est, &checked);
    return rc;
}

// The model, its weights from the seed, then from --init or the resumed checkpoint.
static int build_model(struct train_run *r)
{
    const struct cli_train_opts *o = r->o;
    const struct moe_dataset *tr = &r->data.train;
    struct moe_err err = { 0 };
    r->max_batch = train_batch(&r->rc, tr->n, r->data.test.n, NULL);
    // --expert-parallel N: this process holds its 1/N of every sparse layer's experts
    int rank = o->expert_parallel ? o->dist->rank : 0, size = o->expert_parallel ? o->dist->size : 1;
    if ((size > 1 && moe_ep_check_experts(r->rc.model.n_expert, size, &err)) ||
        moe_model_create_shard(&r->model, &r->rc.model, NULL, tr->task, tr->n_in, tr->n_out, r->max_batch, rank, size,
                               &err))
        return cli_fail(r->cmd, &err);
    moe_model_init_weights(&r->model, r->rc.train.seed);
    if (moe_model_fit(&r->model, tr, &err) ||
        (o->init && (moe_safetensors_open(o->init, &r->init, &err) ||
                     moe_data_check_text_checkpoint(&r->data, &r->init, &err) ||
                     moe_model_load(&r->model, &r->init, 1, &err))) ||
        (o->resume && moe_model_load(&r->model, &r->resume, 1, &err)))
        return cli_fail(r->cmd, &err);
    return 0;
}

// The FFN masks of a run with train.prune, or from a checkpoint (--init,
// --resume) with pruned units: kept fixed, grown by the schedule, written
// beside the weights. Not for LoRA (its base stays as it is).
static int masks_setup(struct train_run *r)
{
    const struct moe_st_file *f = r->o->resume ? &r->resume : r->o->init ? &r->init : NULL;
    struct moe_err err = { 0 };
    if (r->o->lora)
        return 0;
    if (moe_ffn_masks_init(&r->masks, &r->model.params, &err))
        return cli_fail(r->cmd, &err);
    int found = 0;
    for (size_t i = 0; f && i < r->masks.n; i++)
        found |= moe_safetensors_find(f, r->masks.name[i]) != NULL;
    if (!found && r->rc.train.prune.sparsity <= 0) {
        moe_ffn_masks_release(&r->masks);
        return 0;
    }
    if (r->o->dist && r->o->dist->size > 1)
        return cli_error(r->cmd, 2, "%s: training over several processes does not support it yet (run one process)",
                         found ? "pruned FFN units (NAME.pruned)" : "train.prune");
    if (f && moe_ffn_masks_read(&r->masks, f, &r->model.params, &err))
        return cli_fail(r->cmd, &err);
    r->has_masks = 1;
    r->outs.masks = &r->masks;
    return 0;
}

// The run directory: a new run claims it (created, locked, cleared with
// --force, run_dir.h; a resumed run claimed it before reading its checkpoint);
// MoEBERT's conversion (a new run); then config.json, the tables and vocab.txt.
static int open_outputs(struct train_run *r)
{
    struct moe_err err = { 0 };
    int rc, resume = r->o->resume != NULL;
    if (!resume && (rc = run_dir_claim(r->cmd, r->c, r->out, RUN_DIR_NEW, &r->lock)))
        return rc;
    if (cli_mkdir_p(r->out, &err))
        return cli_fail(r->cmd, &err);
    r->outs.dir = r->out;
    r->outs.model = &r->model;
    r->outs.cfg = &r->cfg;
    r->outs.seed = r->rc.train.seed;
    r->outs.data = &r->data;
    r->outs.lora = r->o->lora;
    r->outs.merge = r->o->merge;
    if (resume ? run_output_identity_resume(&r->outs, &r->resume, &err)
               : run_output_identity(&r->outs, r->c, &r->o->init, 1, r->cmd, &err))
        return cli_fail(r->cmd, &err);
    if (!resume && (rc = distill_moebert(r->cmd, r->c, &r->distill, &r->rc, &r->model, &r->data, r->max_batch,
                                         r->out)))
        return rc;
    if (run_output_open(&r->outs, resume, &err))
        return cli_fail(r->cmd, &err);
    return 0;
}

// A signal stopped the run after a step, its checkpoint written: say where it
// stopped and how to go on. A LoRA run has no checkpoint, but keeps its rows.
static int interrupted(struct train_run *r, uint64_t steps)
{
    int sig = cli_stop_signal, lora = r->o->lora, rc;
    const char *name = cli_stop_name(sig);
    struct moe_err err = { 0 };
    if (lora && run_output_close(&r->outs, &err))
        return cli_fail(r->cmd, &err);
    if ((rc = run_output_interrupted(r->cmd, &r->outs, name, steps, !lora)))
        return rc;
    if (lora)
        return cli_error(r->cmd, cli_stop_exit(sig), "interrupted by %s at step %llu; a LoRA run cannot be resumed, run it again",
                         name, (unsigned long long)steps);
    return cli_error(r->cmd, cli_stop_exit(sig), "interrupted by %s at step %llu; checkpoint written (continue with: moe train --resume %s)",
                     name, (unsigned long long)steps, r->out);
}

// Train with the run's hooks; then close the tables. A failed run keeps the
// rows written so far for diagnosis; its last checkpoint stays as it was. A
// new run that failed before its first step and row (a full device while the
// model was made) removes the files it wrote: nothing to diagnose or resume.
static int train(struct train_run *r, struct moe_train_result *res)
{
    const struct cli_train_opts *o = r->o;
    struct distill *d = &r->distill;
    struct moe_err err = { 0 };
    struct moe_distill kd = { .teacher = &d->teacher, .alpha = (float)(d->moebert ? d->c.weight : d->c.alpha),
                              .tau = (float)d->c.temperature, .sym = d->moebert, .teacher_hp = &d->teacher_hp };
    struct progress prog;
    progress_start(&prog, r->c, NULL);
    int files = !cli_rank; // over processes, rank 0 writes the files and prints
    // A LoRA run keeps no checkpoint (it cannot be resumed yet): its model slots hold W0 + sBA.
    struct moe_train_hooks hooks = { .row = files ? run_output_row : NULL, .ctx = &r->outs,
                                     .checkpoint = o->lora || !files ? NULL : run_output_checkpoint,
                                     .stop = &cli_stop_signal,
                                     .resume = o->resume ? &r->resume : NULL, .frozen = r->tune.frozen,
                                     .frozen_experts = r->tune.frozen_experts,
                                     .lora = o->lora ? &r->lora : NULL,
                                     .distill = d->teacher.ops ? &kd : NULL,
                                     .prune = r->has_masks ? &r->masks : NULL,
                                     .step = files ? progress_step : NULL, .step_ctx = &prog,
                                     .dist = o->dist, .expert_parallel = o->expert_parallel,
                                     .device = r->on_device ? &r->dev : NULL };
    int rc = moe_train_run(&r->model, &r->data, &r->rc.train, &r->rc.optim, &hooks, res, &err);
    if (!rc)
        progress_finish(&prog);
    else
        progress_break(); // before the summary of an interrupted run goes to stdout
    if (rc == MOE_EINTR)
        return files ? interrupted(r, res->steps) : cli_stop_exit(cli_stop_signal);
    if (rc) {
        if (files)
            run_output_flush(&r->outs, NULL);
        if (files && !o->resume && res->steps == 0 && r->outs.rows == 0) // nothing ran: no run left to refuse the next
            run_dir_discard(r->out);
        return cli_fail(r->cmd, &err);
    }
    return files && run_output_close(&r->outs, &err) ? cli_fail(r->cmd, &err) : 0;
}

// The optimizer steps' shape and learning rates: "schedule" (optim.schedule
// with its settings, decay_steps resolved to the run's length when 0 (null
// for schedules without one), the rate
// of the last step), "accumulate" and "steps_per_epoch" (optimizer steps).
static void add_schedule(cJSON *s, const struct moe_run_cfg *rc, const struct moe_train_result *res)
{
    const struct moe_optim_cfg *oc = &rc->optim;
    cJSON *o = cJSON_AddObjectToObject(s, "schedule");
    if (o) {
        cJSON_AddStringToObject(o, "name", moe_lr_schedule_name(oc->schedule));
        cJSON_AddNumberToObject(o, "lr", oc->lr);
        cJSON_AddNumberToObject(o, "min_lr", oc->min_lr);
        cJSON_AddNumberToObject(o, "warmup_steps", (double)oc->warmup_steps);
        if (oc->schedule == MOE_SCHED_COSINE || oc->schedule == MOE_SCHED_LINEAR)
            cJSON_AddNumberToObject(o, "decay_steps", (double)(oc->decay_steps ? oc->decay_steps : res->run_steps));
        else
            cJSON_AddNullToObject(o, "decay_steps");
        if (isfinite(res->lr_last))
            cJSON_AddNumberToObject(o, "lr_last", res->lr_last);
        else
            cJSON_AddNullToObject(o, "lr_last");
    }
    cJSON_AddNumberToObject(s, "accumulate", (double)rc->train.accumulate);
    cJSON_AddNumberToObject(s, "steps_per_epoch", (double)res->steps_per_epoch);
}

// "prune" (a run with FFN masks: the schedule, and the units pruned at the
// end, per FFN and in all) and "qat" (train.qat: the scheme and the tensors).
static void add_compress(cJSON *s, const struct train_run *r)
{
    const struct moe_train_cfg *tc = &r->rc.train;
    const struct moe_ffn_masks *k = &r->masks;
    if (r->has_masks) {
        cJSON *p = cJSON_AddObjectToObject(s, "prune");
        const struct moe_prune_cfg *c = &tc->prune;
        cJSON_AddNumberToObject(p, "sparsity", c->sparsity);
        if (c->sparsity > 0) {
            cJSON_AddNumberToObject(p, "start", (double)c->start);
            cJSON_AddNumberToObject(p, "steps", (double)c->steps);
            cJSON_AddNumberToObject(p, "every", (double)c->every);
            cJSON_AddStringToObject(p, "score", c->score == MOE_NEURON_L2 ? "l2" : "l1");
            cJSON_AddStringToObject(p, "scope", c->global ? "global" : "layer");
        }
        size_t all = moe_ffn_masks_pruned(k, k->n);
        cJSON_AddNumberToObject(p, "units", (double)k->units);
        cJSON_AddNumberToObject(p, "pruned", (double)all);
        cJSON_AddNumberToObject(p, "pruned_fraction", k->units ? (double)all / (double)k->units : 0.0);
        cJSON_AddItemToObject(p, "ffns", cli_masks_json(k));
    }
    if (tc->qat) {
        cJSON *q = cJSON_AddObjectToObject(s, "qat");
        cJSON_AddStringToObject(q, "quantize", "int8");
        cJSON_AddStringToObject(q, "scheme", moe_quant_scheme_name(tc->qat_spec.scheme));
        cJSON_AddStringToObject(q, "granularity", moe_quant_gran_name(tc->qat_spec.gran));
        cJSON *t = cJSON_AddArrayToObject(q, "targets");
        for (size_t i = 0; i < tc->n_qat_targets; i++)
            cJSON_AddItemToArray(t, cJSON_CreateString(tc->qat_targets[i]));
    }
}

// summary.json, also on stdout: the model and data, what the run tuned and
// distilled, what training gave, and where it went.
static int write_summary(struct train_run *r, const struct moe_train_result *res)
{
    const struct cli_train_opts *o = r->o;
    cJSON *s = cli_summary_new(r->cmd, &r->cfg, r->rc.train.seed);
    if (r->on_device) { // the training steps' device (evaluations run on the CPU)
        char name[32];
        snprintf(name, sizeof name, "cuda:%d", r->c->device_id);
        cJSON_ReplaceItemInObject(s, "device", cJSON_CreateString(name));
        cJSON_AddStringToObject(s, "device_name", r->cuda.dev.name);
        size_t peak; // the most device memory the run's buffers held at once (a teacher's included)
        moe_cuda_mem_usage(NULL, &peak);
        cJSON_AddNumberToObject(s, "device_memory_bytes", (double)peak);
    }
    run_output_summary_identity(s, &r->outs);
    run_output_summary_model(s, &r->outs);
    if (r->tune.frozen)
        tune_summary(s, &r->model.params, &r->tune, o->lora ? &r->lora : NULL);
    int rc = distill_summary(r->cmd, s, &r->distill, &r->rc, &r->data, &res->final_test, r->out);
    if (rc) {
        cJSON_Delete(s);
        return rc;
    }
    run_output_summary_result(s, &r->outs, res, r->est.flops_per_token);
    add_schedule(s, &r->rc, res);
    add_compress(s, r);
    if (res->dp_processes) { // --data-parallel: rank 0's share of the step exchanges (not part of the exactness promise)
        cJSON *dp = cJSON_AddObjectToObject(s, "data_parallel");
        cJSON_AddNumberToObject(dp, "processes", res->dp_processes);
        cJSON_AddNumberToObject(dp, "steps", (double)res->dp_steps);
        cJSON_AddNumberToObject(dp, "exchange_seconds", res->dp_exchange_seconds);
        cJSON_AddNumberToObject(dp, "exchange_share",
                                res->dp_train_seconds > 0 ? res->dp_exchange_seconds / res->dp_train_seconds : 0.0);
        cJSON_AddNumberToObject(dp, "bytes_sent_per_step",
                                res->dp_steps ? res->dp_bytes_sent / (double)res->dp_steps : 0.0);
    }
    if (res->ep) { // --expert-parallel: rank 0's rows and expert gradients to and from the other processes
        cJSON *ep = cJSON_AddObjectToObject(s, "expert_parallel");
        cJSON_AddNumberToObject(ep, "processes", res->dp_processes);
        cJSON_AddNumberToObject(ep, "exchange_seconds", res->ep_exchange_seconds);
        cJSON_AddNumberToObject(ep, "exchange_share",
                                res->dp_train_seconds > 0 ? res->ep_exchange_seconds / res->dp_train_seconds : 0.0);
        cJSON_AddNumberToObject(ep, "bytes_sent_per_step",
                                res->dp_steps ? res->ep_bytes_sent / (double)res->dp_steps : 0.0);
    }
    cJSON_AddStringToObject(s, "out", r->out);
    if (o->init)
        cJSON_AddStringToObject(s, "init", o->init);
    if (o->resume)
        cJSON_AddNumberToObject(s, "resumed_at_step", (double)r->pos.steps);
    if (r->extend_from)
        cJSON_AddNumberToObject(s, "extended_from_epochs", (double)r->extend_from);
    rc = cli_write_summary(r->cmd, r->out, s);
    cJSON_Delete(s);
    return rc;
}

int cmd_train(int argc, char **argv)
{
    static const struct option opts[] = { CLI_COMMON_OPTIONS, CLI_FORCE_OPTION, { "init", required_argument, NULL, OPT_INIT },
                                          { "resume", required_argument, NULL, OPT_RESUME },
                                          { "dry-run", no_argument, NULL, OPT_DRY_RUN },
                                          { "check-device", required_argument, NULL, OPT_CHECK_DEVICE },
                                          { "trainable", required_argument, NULL, OPT_TRAINABLE },
                                          { "freeze", required_argument, NULL, OPT_FREEZE }, CLI_TAG_OPTION,
                                          { "expert-parallel", required_argument, NULL, OPT_EXPERT_PARALLEL },
                                          { "data-parallel", required_argument, NULL, OPT_DATA_PARALLEL },
                                          { 0, 0, 0, 0 } };
    const char *cmd = "train";
    struct cli_common c;
    struct cli_train_opts o = { 0 };
    cli_common_init(&c);
    struct train_ctx ctx = { &o, &c, NULL, 0 };
    int rc = cli_parse(argc, argv, cmd, opts, &c, on_opt, &ctx);
    if (rc == -1) {
        fputs(usage, stdout);
        rc = 0;
    } else if (!rc) {
        const char *clash = o.dry_run ? "--dry-run" : o.resume ? "--resume" : ctx.parallel_opt;
        if (o.check_device && clash)
            rc = cli_error(cmd, 2, "option '--check-device' cannot be combined with '%s'", clash);
        else if (o.check_device && strcmp(c.device, "cpu") == 0)
            rc = cli_error(cmd, 2, "option '--check-device' needs a device to compare the CPU with: add --device cuda[:N]");
        else if (ctx.parallel_opt && o.dry_run)
            rc = cli_error(cmd, 2, "option '%s' cannot be combined with '--dry-run' (the estimate is per process: run --dry-run alone)",
                           ctx.parallel_opt);
        else if (ctx.parallel_opt)
            rc = over_processes(cmd, &c, &o, ctx.parallel_opt, ctx.n_proc);
        else if (o.resume && c.n_owned)
            rc = cli_error(cmd, 2, "option '%s' cannot be combined with '--resume' (the run keeps the config in its checkpoint)",
                           c.first_owned_opt);
        else
            rc = cli_train_run(cmd, &c, &o);
    }
    cli_common_release(&c);
    return rc;
}

// In a run over processes: every process must have been given the same
// options. The hash of the config (after --set and --seed) and of the paths
// of --out, --resume and --init, against rank 0's; then the agreement.
static int agree_options(struct train_run *r, int rc, int finished)
{
    struct moe_dist *d = r->o->dist;
    if (!d)
        return rc;
    uint64_t h = 0;
    if (!rc && !finished) {
        const char *paths[] = { r->out, r->o->resume, r->o->init };
        h = moe_config_hash(&r->cfg);
        for (size_t i = 0; i < sizeof paths / sizeof *paths; i++)
            for (const unsigned char *p = (const unsigned char *)(paths[i] ? paths[i] : ""); ; p++) {
                h = (h ^ *p) * 0x100000001b3ull; // FNV-1a over each path and its terminating 0
                if (!*p)
                    break;
            }
    }
    uint64_t *all = calloc((size_t)d->size, sizeof *all);
    struct moe_err err = { 0 };
    if (!all)
        return cli_agree(r->cmd, d, rc ? rc : cli_error(r->cmd, 1, "out of memory"));
    if (moe_dist_allgather(d, &h, sizeof h, all, &err))
        rc = rc ? rc : cli_fail(r->cmd, &err);
    else if (!rc && all[0] && h != all[0])
        rc = cli_error(r->cmd, 2, "this process was started with other options than rank 0 (config, --set, --seed, --out, --resume or --init; hash %016llx against %016llx): every process of %s must get the same",
                       (unsigned long long)h, (unsigned long long)all[0],
                       r->o->expert_parallel ? "--expert-parallel" : "--data-parallel");
    free(all);
    return cli_agree(r->cmd, d, rc);
}

// Up to the run's config: the options' checks, a resumed run's checkpoint and
// config, --dry-run. Reads, writes nothing. *ret_done: the command is over
// (a finished run's summary printed again, or the dry run's estimate).
static int prepare(struct train_run *r, cJSON **done, int *ret_done)
{
    const char *cmd = r->cmd;
    const struct cli_common *c = r->c;
    const struct cli_train_opts *o = r->o;
    struct moe_err err = { 0 };
    int rc;
    *ret_done = 0;
    struct moe_backend_info *cuda = &r->cuda; // --device cuda[:N]: what the probe found
    r->on_device = strcmp(c->device, "cpu") != 0;
    if ((rc = check_resume_options(r)) || (rc = run_output_check_tags(cmd, &c->tags)) ||
        (rc = distill_check_tags(cmd, &c->tags)) ||
        (rc = o->dry_run ? cli_setup_compute_dry(cmd, c, cuda) : cli_setup_compute_cuda(cmd, c, cuda)))
        return rc;
    cli_catch_stop_signals();
    // --resume: lock the directory (another process there: fail now) and clear
    // a dead process's temporary files before anything is read from it (rank 0)
    if (o->resume && !cli_rank && (rc = run_dir_claim(cmd, c, r->out, RUN_DIR_RESUME, &r->lock)))
        return rc;
    if (o->resume && run_output_complete(r->out, done, &err))
        return cli_fail(cmd, &err);
    if (o->resume)
        rc = *done && !c->n_sets ? 0 : resume_config(r); // --set train.epochs: the config decides
    else if (cli_load_config(c, &r->cfg, &err))
        rc = cli_fail(cmd, &err);
    if (rc)
        return rc;
    if (*done && !r->extend_from) { // nothing left to do: say so, and print the run's summary again
        cli_log(c, "moe %s: the run in %s/ is already complete", cmd, r->out);
        *ret_done = 1;
        return cli_print_json(cmd, *done);
    }
    if (moe_run_cfg_parse(&r->rc, &r->cfg, &err))
        return cli_fail(cmd, &err);
    if ((rc = tune_check(cmd, &r->rc, o->lora)))
        return rc;
    if (o->dry_run) {
        *ret_done = 1;
        const struct cli_ckpt_mem ck = run_ckpt(r);
        return dry_run(cmd, c, o, &r->cfg, &r->rc, &ck, r->on_device ? cuda : NULL);
    }
    if (!r->out) {
        snprintf(r->default_out, sizeof r->default_out, "runs/train-%016llx", (unsigned long long)moe_config_hash(&r->cfg));
        r->out = r->default_out;
    }
    if (o->dist) { // the end of the line a process prints when another of the job dies (dist.h)
        char note[300];
        snprintf(note, sizeof note, "; the last checkpoint, if one was written, is intact (continue with: moe %s --resume %.200s)",
                 cmd, r->out);
        moe_dist_set_stop_note(cmd, note);
    }
    return 0;
}

// --device cuda[:N]: what the device's training step takes, checked before
// the run directory is touched (one line, exit 2): the model type (mlp-moe
// or transformer), the model's settings
// (cuda/model.h), and the run's (train.h moe_train_device_check).
static int device_check(struct train_run *r)
{
    const char *cmd = r->cmd, *dv = r->c->device;
    struct moe_err err = { 0 };
    int rc = cli_cuda_model_type(cmd, r->c, moe_model_kind(r->rc.model.type)->name);
    if (rc)
        return rc;
    if (moe_cuda_model_check(&r->model, &r->rc.model, &err) ||
        moe_train_device_check(r->o->dist != NULL, &err))
        return cli_error(cmd, 2, "option '--device %s': %s", dv, err.msg);
    const struct distill *kd = &r->distill; // the teacher's passes run there too
    enum moe_model_type tt = kd->teacher_hp.type;
    if (kd->teacher.ops && tt != MOE_MODEL_MLP_MOE && tt != MOE_MODEL_TRANSFORMER)
        return cli_error(cmd, 2, "option '--device %s': the teacher '%s' is model.type '%s'; on the CUDA device the "
                         "teacher must be mlp-moe or transformer too; use --device cpu", dv, kd->c.teacher,
                         moe_model_kind(tt)->name);
    if (kd->teacher.ops && moe_cuda_model_check(&kd->teacher, &kd->teacher_hp, &err))
        return cli_error(cmd, 2, "option '--device %s': the teacher '%s': %s", dv, kd->c.teacher, err.msg);
    r->dev = (struct moe_train_device){ .id = r->c->device_id, .hp = &r->rc.model };
    return 0;
}

// --check-device STEPS: the data and the model, the device's checks, then
// the CPU's steps against the device's (train.h moe_train_check_device); the
// report as JSON on stdout, a line per tensor on stderr. No run directory.
static int check_device(struct train_run *r)
{
    const char *cmd = r->cmd;
    int rc;
    struct moe_err err = { 0 };
    if ((rc = load_data(r)) || (rc = build_model(r)))
        return rc;
    moe_safetensors_close(&r->init); // the model holds its own copy of every tensor
    if ((rc = device_check(r)))
        return rc;
    const struct moe_dataset *tr = &r->data.train;
    size_t bs = r->rc.optim.batch_size;
    if (r->rc.optim.type == MOE_OPTIM_GD || bs == 0 || bs > tr->n)
        bs = tr->n;
    uint64_t per_epoch = tr->n ? (tr->n + bs - 1) / bs : 0, steps = r->o->check_device;
    struct moe_device_check k;
    if (moe_train_check_device(&r->model, &r->rc.model, r->c->device_id, tr, &r->rc.optim, bs, steps,
                               r->rc.train.epochs * per_epoch, &k, &err))
        return cli_fail(cmd, &err);
    cJSON *s = cli_summary_new(cmd, &r->cfg, r->rc.train.seed), *d = s ? cJSON_AddObjectToObject(s, "check_device") : NULL;
    cJSON *ts = d ? cJSON_AddArrayToObject(d, "tensors") : NULL, *ss = d ? cJSON_AddArrayToObject(d, "steps") : NULL;
    if (!ts || !ss) {
        cJSON_Delete(s);
        moe_device_check_release(&k);
        return cli_error(cmd, 1, "out of memory");
    }
    char name[32];
    snprintf(name, sizeof name, "cuda:%d", r->c->device_id);
    cJSON_ReplaceItemInObject(s, "device", cJSON_CreateString(name));
    cJSON_AddStringToObject(s, "device_name", r->cuda.dev.name);
    cJSON_AddNumberToObject(d, "n_steps", (double)steps);
    cJSON_AddNumberToObject(d, "batch_size", (double)bs);
    cJSON_AddNumberToObject(d, "max_rel", k.max_rel); // NaN prints as null: a non-finite value on a side
    cJSON_AddStringToObject(d, "max_at", k.max_what);
    cJSON_AddStringToObject(d, "max_tensor", k.max_name);
    cli_log(r->c, "moe %s: %llu steps of %zu rows on the CPU and on %s (%s); max |device - cpu| / max |cpu| per tensor:",
            cmd, (unsigned long long)steps, bs, name, r->cuda.dev.name);
    cli_log(r->c, "  %-40s %10s %10s %10s %10s", "tensor", "weights", "gradients", "moment m", "moment v");
    for (size_t i = 0; i < k.n; i++) {
        const struct moe_device_diff *x = &k.t[i];
        cJSON *t = cJSON_CreateObject();
        cJSON_AddStringToObject(t, "name", x->name);
        cJSON_AddNumberToObject(t, "weights", x->w);
        cJSON_AddNumberToObject(t, "gradients", x->g);
        cJSON_AddNumberToObject(t, "m", x->m);
        cJSON_AddNumberToObject(t, "v", x->v);
        cJSON_AddItemToArray(ts, t);
        cli_log(r->c, "  %-40s %10.3g %10.3g %10.3g %10.3g", x->name, x->w, x->g, x->m, x->v);
    }
    for (uint64_t i = 0; i < steps; i++) {
        cJSON *t = cJSON_CreateObject();
        cJSON_AddNumberToObject(t, "step", (double)(i + 1));
        cJSON_AddNumberToObject(t, "loss_cpu", k.loss_cpu[i]);
        cJSON_AddNumberToObject(t, "loss_device", k.loss_dev[i]);
        cJSON_AddNumberToObject(t, "grad_norm_cpu", k.gnorm_cpu[i]);
        cJSON_AddNumberToObject(t, "grad_norm_device", k.gnorm_dev[i]);
        cJSON_AddItemToArray(ss, t);
    }
    cli_log(r->c, "moe %s: largest relative difference %.3g (%s%s%s)", cmd, k.max_rel, k.max_what,
            k.max_name[0] ? " of " : "", k.max_name);
    moe_device_check_release(&k);
    rc = cli_print_json(cmd, s);
    cJSON_Delete(s);
    return rc;
}

// The data, the model and (rank 0) the run directory, up to the first step.
static int setup(struct train_run *r)
{
    const char *cmd = r->cmd;
    const struct cli_common *c = r->c;
    const struct cli_train_opts *o = r->o;
    int rc;
    // a new run: a directory holding another run, or in use, is refused before the data is loaded
    if (!o->resume && !cli_rank && (rc = run_dir_check(cmd, c, r->out, RUN_DIR_NEW)))
        return rc;
    if ((rc = load_data(r)) || (rc = build_model(r)) || (rc = masks_setup(r)))
        return rc;
    // --init's bytes were for the weights and the FFN masks: freed before the teacher, the
    // adapters and the trainer allocate, as the memory check counts them (run_ckpt)
    moe_safetensors_close(&r->init);
    if ((rc = distill_setup(cmd, &r->distill, &r->rc, &r->data, &r->model, o->resume != NULL, &r->est,
                            c->ignore_memory)) ||
        (rc = tune_setup(cmd, &r->rc, &r->model, o->lora, &r->tune, &r->lora)))
        return rc;
    struct moe_err err = { 0 };
    if (r->on_device && (rc = device_check(r)))
        return rc;
    if (moe_train_compress_check(&r->model, r->data.train.n, &r->rc.train, &r->rc.optim,
                                 r->has_masks && moe_ffn_masks_pruned(&r->masks, r->masks.n), r->on_device,
                                 o->dist && o->dist->size > 1, o->lora, &err))
        return cli_fail(cmd, &err);
    if (o->dist && (moe_train_dp_check(&r->model, r->rc.train.accumulate, o->dist->size,
                                       r->distill.teacher.ops != NULL, o->lora, &err) ||
                    (o->expert_parallel &&
                     moe_train_ep_check(&r->model, o->dist->size, r->tune.frozen != NULL, &err))))
        return cli_fail(cmd, &err);
    if (!cli_rank && ((rc = open_outputs(r)) || (rc = extend_outputs(r))))
        return rc;
    if (r->extend_from)
        cli_log(c, "moe %s: extending %s/ from %llu to %llu epochs, at step %llu (epoch %llu)", cmd, r->out,
                (unsigned long long)r->extend_from, (unsigned long long)r->rc.train.epochs,
                (unsigned long long)r->pos.steps, (unsigned long long)r->pos.epoch);
    else if (o->resume)
        cli_log(c, "moe %s: resuming %s/ at step %llu (epoch %llu)", cmd, r->out, (unsigned long long)r->pos.steps,
                (unsigned long long)r->pos.epoch);
    else
        cli_log(c, "moe %s: %s model, %zu parameters, %zu train / %zu test rows, writing %s/", cmd,
                r->model.ops->type, moe_params_count(&r->model.params), r->data.train.n, r->data.test.n, r->out);
    if (o->dist)
        cli_log(c, "moe %s: %s parallel over %d processes, %zu micro-batches of %zu rows each per step%s", cmd,
                o->expert_parallel ? "expert" : "data", o->dist->size, r->rc.train.accumulate / (size_t)o->dist->size,
                r->rc.optim.batch_size, o->expert_parallel ? ", each process holding 1/N of every sparse layer's experts" : "");
    return 0;
}

// model.safetensors (rank 0; with --expert-parallel, inside moe_ep_write_whole).
static int write_model(void *ctx, const struct moe_st_ref *const whole[MOE_WHOLE_N], struct moe_err *err)
{
    (void)whole;
    struct train_run *r = ctx;
    return run_output_model(&r->outs, r->o->lora ? &r->lora : NULL, r->tune.frozen, r->o->merge, err);
}

int cli_train_run(const char *cmd, struct cli_common *c, const struct cli_train_opts *o)
{
    struct train_run r;
    memset(&r, 0, sizeof r);
    r.cmd = cmd;
    r.c = c;
    r.o = o;
    r.out = o->resume ? o->resume : c->out;
    struct moe_err err = { 0 };
    struct moe_train_result res;
    cJSON *done = NULL;
    int finished = 0;
    // over processes, every step that may fail on some of them ends in an agreement
    int rc = prepare(&r, &done, &finished);
    if (!rc && !finished && o->check_device) {
        rc = check_device(&r);
        goto out;
    }
    rc = agree_options(&r, rc, finished);
    if (rc || finished || (rc = cli_agree(cmd, o->dist, setup(&r))) || (rc = train(&r, &res)))
        goto out;
    if (moe_params_sharded(&r.model.params)) { // --expert-parallel: every process sends rank 0 its experts
        rc = moe_ep_write_whole(o->dist, &r.model.params, NULL, write_model, &r, &err);
        if ((rc = cli_agree(cmd, o->dist, rc ? cli_fail(cmd, &err) : 0)))
            goto out;
    } else if (!cli_rank && write_model(&r, NULL, &err)) {
        rc = cli_fail(cmd, &err);
        goto out;
    }
    if (cli_rank)
        goto out;
    if ((rc = write_summary(&r, &res)))
        goto out;
    cli_log(c, "moe %s: done in %.2f s; outputs in %s/ (config.json, metrics.csv, %s, summary.json)", cmd,
            res.wall_seconds, r.out,
            !o->lora ? "model.safetensors" : o->merge ? "adapters.safetensors, merged.safetensors" : "adapters.safetensors");
out:
    cJSON_Delete(done);
    run_release(&r);
    return rc;
}
