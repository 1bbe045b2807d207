// cmd_compare_loss.c: `moe compare-loss` trains one config under several
// objectives (and the mlp baseline) for many seeds, and tabulates the runs the
// way Table 1 of Jacobs et al. 1991 does: epochs to criterion (mean, SD),
// runs that reached it, accuracy, active experts. Writes curves.csv (long
// format), table.csv and summary.json; prints the summary on stdout.
//
// The sweep resumes: DIR/sweep.json holds its settings (config, systems, seeds,
// tags), and each (system, seed) run, once finished, is recorded whole in
// DIR/parts/SYSTEM-seedN.json (written atomically: a file there is a finished
// run). A restart with the same settings takes the finished runs from there
// and trains the rest; every table row comes from those records, in sweep
// order, so the final files are byte-identical to an uninterrupted sweep's.
// SIGINT/SIGTERM ends the run in progress after its current step, drops it,
// and exits 130/143 with the finished runs kept.
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "estimate.h"
#include "progress.h"
#include "run_dir.h"
#include "io/atomic.h"
#include "io/csv_writer.h"
#include "train/train.h"

static const char *const usage =
    "usage: moe compare-loss --config FILE --losses L1,L2,... --seeds A-B|A,B,... --out DIR\n"
    "                        [--set key.path=value]... [--threads N] [--force] [--ignore-memory]\n"
    "                        [--quiet] [--progress-every SECONDS] [--tag KEY=VALUE]...\n"
    "Train the config under each loss for every seed. Losses: cooperative, competitive,\n"
    "nll, nll-cat (the mixture, model.type forced to mixture) and mlp (the baseline net,\n"
    "model.type = mlp with loss.baseline). Writes DIR/curves.csv, table.csv, summary.json.\n"
    "A run whose loss turns non-finite is counted as diverged and the sweep goes on.\n"
    "Each run's progress line starts 'compare-loss: SYSTEM seed N: ' (see moe help train).\n"
    "Each finished run is kept in DIR/parts/; run the same command again into the same DIR\n"
    "after an interruption (SIGINT: exit 130, SIGTERM or SIGUSR1: 143) and it trains only the runs\n"
    "left, ending with the files an uninterrupted sweep writes. A DIR that holds a sweep\n"
    "with other settings (DIR/sweep.json: config, losses, seeds, tags), or another run,\n"
    "is refused (exit 2) unless --force, which first removes the previous run's or\n"
    "sweep's files; DIR/moe.lock keeps a second process out (moe help train).\n"
    "--tag KEY=VALUE (repeatable): a column KEY holding VALUE after the tables' own columns.\n";

enum { OPT_LOSSES = OPT_FIRST_CMD, OPT_SEEDS };

#define MAX_SYSTEMS 16
#define MAX_SEEDS 100000

struct cl_opts {
    char *losses_buf;
    const char *systems[MAX_SYSTEMS];
    size_t n_systems;
    long long *seeds;
    size_t n_seeds;
};

static int parse_losses(struct cl_opts *o, const char *arg)
{
    free(o->losses_buf);
    o->losses_buf = strdup(arg);
    o->n_systems = 0;
    if (!o->losses_buf)
        return cli_error("compare-loss", 1, "out of memory");
    static const char *const known[] = { "cooperative", "competitive", "nll", "nll-cat", "mlp" };
    for (char *save, *tok = strtok_r(o->losses_buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        int ok = 0;
        for (size_t i = 0; i < sizeof known / sizeof *known; i++)
            ok |= strcmp(tok, known[i]) == 0;
        if (!ok)
            return cli_error("compare-loss", 2,
                             "option '--losses': unknown system '%s' (expected cooperative, competitive, nll, nll-cat or mlp)",
                             tok);
        for (size_t i = 0; i < o->n_systems; i++)
            if (strcmp(o->systems[i], tok) == 0)
                return cli_error("compare-loss", 2, "option '--losses': '%s' named twice", tok);
        if (o->n_systems == MAX_SYSTEMS)
            return cli_error("compare-loss", 2, "option '--losses': at most %d systems", MAX_SYSTEMS);
        o->systems[o->n_systems++] = tok;
    }
    if (o->n_systems == 0)
        return cli_error("compare-loss", 2, "option '--losses' names no system");
    return 0;
}

// Room for more seeds: 0, or 1 after printing why not.
static int grow_seeds(struct cl_opts *o, size_t *cap)
{
    size_t n = *cap ? 2 * *cap : 32;
    long long *seeds = realloc(o->seeds, n * sizeof *seeds);
    if (!seeds)
        return cli_error("compare-loss", 1, "out of memory");
    o->seeds = seeds;
    *cap = n;
    return 0;
}

// "1-25", "3", "1,2,7", "1-3,10"
static int parse_seeds(struct cl_opts *o, const char *arg)
{
    char *buf = strdup(arg);
    free(o->seeds);
    o->seeds = NULL;
    o->n_seeds = 0;
    size_t cap = 0;
    int rc = 0;
    if (!buf)
        return cli_error("compare-loss", 1, "out of memory");
    for (char *save, *tok = strtok_r(buf, ",", &save); tok && !rc; tok = strtok_r(NULL, ",", &save)) {
        long long lo, hi;
        char *dash = strchr(tok + 1, '-');
        if (dash)
            *dash = '\0';
        if (cli_parse_ll(tok, 0, 4294967295LL, &lo) ||
            (dash ? cli_parse_ll(dash + 1, 0, 4294967295LL, &hi) : (hi = lo, 0)) || hi < lo ||
            hi - lo >= MAX_SEEDS || o->n_seeds + (size_t)(hi - lo + 1) > MAX_SEEDS) {
            rc = cli_error("compare-loss", 2, "option '--seeds': expected ranges like 1-25 or lists like 1,2,3, got '%s'",
                           arg);
            break;
        }
        for (long long s = lo; s <= hi && !rc; s++) {
            if (o->n_seeds == cap)
                rc = grow_seeds(o, &cap);
            if (!rc)
                o->seeds[o->n_seeds++] = s;
        }
    }
    if (!rc && o->n_seeds == 0)
        rc = cli_error("compare-loss", 2, "option '--seeds' names no seed");
    free(buf);
    return rc;
}

static int on_opt(void *ctx, int opt, const char *arg)
{
    struct cl_opts *o = ctx;
    if (opt == OPT_LOSSES)
        return parse_losses(o, arg);
    if (opt == OPT_SEEDS)
        return parse_seeds(o, arg);
    return 2;
}

static const char *const curve_cols[] = { "system", "seed", "epoch", "step", "train_loss", "train_mse",
                                          "train_accuracy", "test_loss", "test_mse", "test_accuracy",
                                          "active_experts", "gate_entropy" };

// A run's curve, collected into its record: one array per evaluation, the
// figures of curves.csv after system and seed (epoch, step, then 8 numbers;
// NaN is null). JSON numbers print with 17 significant digits where 15 do not
// give the double back (cJSON), so the record replays exactly.
#define CURVE_FIGURES 10
struct curve_ctx {
    cJSON *rows;
    struct moe_eval_row train; // held until its test row arrives
};

static int write_curve(void *ctx, const struct moe_eval_row *r, struct moe_err *err)
{
    struct curve_ctx *cc = ctx;
    if (strcmp(r->split, "batch") == 0 || strcmp(r->split, "valid") == 0) // training-mode means, validation: not part of the curves
        return 0;
    if (strcmp(r->split, "train") == 0) {
        cc->train = *r;
        return 0;
    }
    double v[CURVE_FIGURES] = { (double)r->epoch, (double)r->step, cc->train.loss, cc->train.mse,
                                cc->train.accuracy, r->loss, r->mse, r->accuracy, cc->train.active_experts,
                                cc->train.gate_entropy };
    cJSON *row = cJSON_CreateDoubleArray(v, CURVE_FIGURES);
    if (!row || !cJSON_AddItemToArray(cc->rows, row)) {
        cJSON_Delete(row);
        return moe_error(err, MOE_ENOMEM, "out of memory");
    }
    return 0;
}

// A record's number (null: NaN).
static double rec_num(const cJSON *o, const char *key)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, key);
    if (cJSON_IsRaw(it)) // a record built in this process (rec_add_num): its exact text
        return strtod(it->valuestring, NULL);
    return cJSON_IsNumber(it) ? it->valuedouble : NAN;
}

// curves.csv's rows of one finished run, from its record.
static int replay_curve(struct moe_csv *csv, const struct cli_tags *tags, const char *sys, long long seed,
                        const cJSON *rows, struct moe_err *err)
{
    const cJSON *row;
    cJSON_ArrayForEach(row, rows)
    {
        moe_csv_str(csv, sys);
        moe_csv_int(csv, seed);
        for (int i = 0; i < CURVE_FIGURES; i++) {
            const cJSON *it = cJSON_GetArrayItem(row, i);
            double v = cJSON_IsNumber(it) ? it->valuedouble : NAN;
            if (i < 2)
                moe_csv_int(csv, (long long)v);
            else
                moe_csv_num(csv, v);
        }
        int rc = cli_csv_end_row(csv, tags, err);
        if (rc)
            return rc;
    }
    return 0;
}

// Running mean and sample SD of finite values (Welford's update, so equal
// values give an SD of exactly 0).
struct acc {
    size_t n;
    double mean, m2;
};
static void acc_add(struct acc *a, double v)
{
    if (isnan(v))
        return;
    a->n++;
    double d = v - a->mean;
    a->mean += d / (double)a->n;
    a->m2 += d * (v - a->mean);
}
static double acc_mean(const struct acc *a) { return a->n ? a->mean : NAN; }
static double acc_sd(const struct acc *a)
{
    if (a->n < 2)
        return a->n ? 0.0 : NAN;
    return sqrt(a->m2 / (double)(a->n - 1));
}

enum { A_EPOCHS, A_TRAIN_ACC, A_TEST_ACC, A_TRAIN_MSE, A_TEST_MSE, A_ACTIVE, A_ENTROPY, N_ACC };
static const char *const acc_names[N_ACC] = { "epochs", "train_accuracy", "test_accuracy", "train_mse", "test_mse",
                                              "active_experts", "gate_entropy" };

// The model's batch: full-batch training and evaluation, the larger split.
static size_t cl_batch(const struct moe_run_cfg *rcfg, size_t n_train, size_t n_test, const void *ctx)
{
    (void)rcfg, (void)ctx;
    size_t rows = n_train > n_test ? n_train : n_test;
    return rows ? rows : 1;
}

static void json_num(cJSON *o, const char *k, double v)
{
    if (isnan(v))
        cJSON_AddNullToObject(o, k);
    else
        cJSON_AddNumberToObject(o, k, v);
}

// What the runs of one system add up to.
struct tally {
    struct acc acc[N_ACC];
    size_t reached, diverged, params;
};

// A number of a record, written so that reading it back gives the same
// double: 17 significant digits (cJSON's own printing keeps 15 where the
// value reads back within a relative epsilon, which can lose the last bit,
// and a rerun's summary from the records would then differ from the first
// run's); a non-finite value as null, which reads back as NaN.
static void rec_add_num(cJSON *rec, const char *key, double v)
{
    char buf[32];
    if (!isfinite(v)) {
        cJSON_AddNullToObject(rec, key);
        return;
    }
    snprintf(buf, sizeof buf, "%.17g", v);
    cJSON_AddRawToObject(rec, key, buf);
}

// The figures a finished run adds to its system's tally, into its record.
static void record_result(cJSON *rec, const struct moe_model *m, const struct moe_train_result *res)
{
    rec_add_num(rec, "parameters", (double)moe_params_count(&m->params));
    rec_add_num(rec, "criterion_epoch", (double)res->criterion_epoch);
    rec_add_num(rec, "epochs", (double)res->epochs);
    double v[N_ACC] = { NAN, res->final_train.accuracy, res->final_test.accuracy, res->final_train.mse,
                        res->final_test.mse, res->final_train.active_experts, res->final_train.gate_entropy };
    for (int i = 1; i < N_ACC; i++)
        rec_add_num(rec, acc_names[i], v[i]);
}

// A run's record into its system's tally.
static void tally_run(struct tally *t, const cJSON *rec)
{
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(rec, "diverged"))) {
        t->diverged++;
        return;
    }
    t->params = (size_t)rec_num(rec, "parameters");
    double crit = rec_num(rec, "criterion_epoch");
    if (crit >= 0) {
        t->reached++;
        acc_add(&t->acc[A_EPOCHS], crit);
    }
    for (int i = 1; i < N_ACC; i++)
        acc_add(&t->acc[i], rec_num(rec, acc_names[i]));
}

// The config of one run of the sweep: the base config with model.type
// (mixture, or mlp for the baseline) and the seed set, parsed into rcfg.
static int system_config(struct moe_config *cfg, struct moe_run_cfg *rcfg, const struct moe_config *base,
                         const char *sys, long long seed, struct moe_err *err)
{
    char set_model[64], set_seed[64];
    snprintf(set_model, sizeof set_model, "model.type=%s", strcmp(sys, "mlp") == 0 ? "mlp" : "mixture");
    snprintf(set_seed, sizeof set_seed, "train.seed=%lld", seed);
    int r = moe_config_copy(cfg, base, err);
    if (!r)
        r = moe_config_set(cfg, set_model, err);
    if (!r)
        r = moe_config_set(cfg, set_seed, err);
    if (!r)
        r = moe_run_cfg_parse(rcfg, cfg, err);
    return r;
}

// Every system's config parses (with the first seed: the seed changes no
// check) before the output directory is touched, so a config error writes
// nothing (and leaves no sweep.json to refuse the corrected command).
static int check_systems(const char *cmd, const struct moe_config *base, const struct cl_opts *o)
{
    for (size_t si = 0; si < o->n_systems; si++) {
        struct moe_err err = { 0 };
        struct moe_config cfg = { 0 };
        struct moe_run_cfg rcfg = { 0 };
        int r = system_config(&cfg, &rcfg, base, o->systems[si], o->seeds[0], &err);
        moe_run_cfg_release(&rcfg);
        moe_config_release(&cfg);
        if (r) {
            moe_error_prefix(&err, "system '%s': ", o->systems[si]);
            return cli_fail(cmd, &err);
        }
    }
    return 0;
}

// One run of the sweep: system sys (a loss, or mlp) with seed, its curve and
// result into a new record *rec (a run that diverges is recorded as such and the
// sweep goes on). first: the system's first run trained here, whose memory is
// checked (every seed of a system has the same sizes), before generating
// synthetic data when the config gives its shape. 0, or the exit code after
// printing one line; -1 when a signal stopped it (nothing recorded).
static int sweep_run(const char *cmd, const struct cli_common *c, const struct moe_config *base, const char *sys,
                     long long seed, int first, cJSON **rec)
{
    struct moe_err err = { 0 };
    struct moe_config cfg = { 0 };
    struct moe_run_cfg rcfg = { 0 };
    struct moe_data data;
    struct moe_model model;
    memset(&data, 0, sizeof data);
    memset(&model, 0, sizeof model);
    int is_mlp = strcmp(sys, "mlp") == 0, checked = !first, refused = 0;
    const char *loss = is_mlp ? NULL : sys;
    int r = system_config(&cfg, &rcfg, base, sys, seed, &err);
    if (!r && is_mlp)
        loss = rcfg.model.loss_baseline;
    if (!r && !checked)
        refused = cli_check_run(cmd, &rcfg, loss, NULL, cl_batch, NULL, 1, NULL, c->ignore_memory, NULL, &checked);
    if (!r && !refused)
        r = moe_data_load_cfg(&data, &rcfg.data, NULL, &err);
    if (!r && !refused && !checked)
        refused = cli_check_run(cmd, &rcfg, loss, &data, cl_batch, NULL, 1, NULL, c->ignore_memory, NULL, &checked);
    if (!r && !refused)
        r = moe_model_create_hp(&model, &rcfg.model, loss, data.train.task, data.train.n_in, data.train.n_out,
                                cl_batch(&rcfg, data.train.n, data.test.n, NULL), &err);
    struct moe_train_result res;
    struct curve_ctx cc = { .rows = cJSON_CreateArray() };
    if (!cc.rows)
        r = moe_error(&err, MOE_ENOMEM, "out of memory");
    if (!r && !refused) {
        moe_model_init_weights(&model, (uint64_t)seed);
        struct progress prog;
        char label[96];
        snprintf(label, sizeof label, "compare-loss: %s seed %lld", sys, seed);
        progress_start(&prog, c, label);
        struct moe_train_hooks hooks = { .row = write_curve, .ctx = &cc, .step = progress_step, .step_ctx = &prog,
                                         .stop = &cli_stop_signal };
        r = moe_train_run(&model, &data, &rcfg.train, &rcfg.optim, &hooks, &res, &err);
        if (!r)
            progress_finish(&prog);
        else
            progress_break();
    }
    cJSON *out = NULL;
    if (!refused && (!r || r == MOE_ENUMERIC)) {
        out = cJSON_CreateObject();
        cJSON_AddStringToObject(out, "system", sys);
        cJSON_AddNumberToObject(out, "seed", (double)seed);
        cJSON_AddBoolToObject(out, "diverged", r == MOE_ENUMERIC);
        if (!r)
            record_result(out, &model, &res);
        else
            cJSON_AddStringToObject(out, "message", err.msg);
        cJSON_AddItemToObject(out, "curve", cc.rows);
        cc.rows = NULL;
    }
    cJSON_Delete(cc.rows);
    if (!r && !refused) {
        int cls = data.train.task == MOE_TASK_CLASSIFICATION;
        cli_log(c, "compare-loss: %s seed %lld: %s epoch %lld, train %s %.4g, test %s %.4g", sys, seed,
                res.criterion_epoch >= 0 ? "criterion at" : "no criterion by",
                (long long)(res.criterion_epoch >= 0 ? res.criterion_epoch : (int64_t)res.epochs),
                cls ? "accuracy" : "mse", cls ? res.final_train.accuracy : res.final_train.mse,
                cls ? "accuracy" : "mse", cls ? res.final_test.accuracy : res.final_test.mse);
    }
    moe_model_release(&model);
    moe_data_release(&data);
    moe_run_cfg_release(&rcfg);
    moe_config_release(&cfg);
    if (refused)
        return refused;
    if (r == MOE_EINTR)
        return -1;
    if (r == MOE_ENUMERIC) {
        // A diverged run is a result of the sweep, not a failure of the command.
        cli_log(c, "compare-loss: %s seed %lld diverged: %s", sys, seed, err.msg);
        *rec = out;
        return 0;
    }
    if (r) {
        moe_error_prefix(&err, "system '%s', seed %lld: ", sys, seed);
        return cli_fail(cmd, &err);
    }
    *rec = out;
    return out ? 0 : cli_error(cmd, 1, "out of memory");
}

// summary.json's head: the seeds (in place of the one seed), the criterion,
// and the systems array that write_table fills.
static cJSON *summary_start(const char *cmd, const struct moe_config *base, const struct moe_train_cfg *tc,
                            const struct cl_opts *o)
{
    cJSON *s = cli_summary_new(cmd, base, tc->seed);
    cJSON_DeleteItemFromObject(s, "seed");
    cJSON *seeds = cJSON_AddArrayToObject(s, "seeds");
    for (size_t k = 0; k < o->n_seeds; k++)
        cJSON_AddItemToArray(seeds, cJSON_CreateNumber((double)o->seeds[k]));
    cJSON *crit = cJSON_AddObjectToObject(s, "criterion");
    cJSON_AddStringToObject(crit, "metric", moe_criterion_name(tc->criterion));
    cJSON_AddNumberToObject(crit, "value", tc->criterion_value);
    cJSON_AddNumberToObject(crit, "max_epochs", (double)tc->epochs);
    cJSON_AddArrayToObject(s, "systems");
    return s;
}

static const char *const table_cols[] = { "system", "parameters", "runs", "reached", "diverged", "epochs_mean",
                                          "epochs_sd", "train_accuracy_mean", "train_accuracy_sd",
                                          "test_accuracy_mean", "test_accuracy_sd", "train_mse_mean", "test_mse_mean",
                                          "active_experts_mean", "active_experts_sd", "gate_entropy_mean" };

// A system's row of table.csv (the row is not ended).
static void table_row(struct moe_csv *csv, const char *sys, size_t runs, const struct tally *t)
{
    const struct acc *a = t->acc;
    moe_csv_str(csv, sys);
    moe_csv_int(csv, (long long)t->params);
    moe_csv_int(csv, (long long)runs);
    moe_csv_int(csv, (long long)t->reached);
    moe_csv_int(csv, (long long)t->diverged);
    double row[] = { acc_mean(&a[A_EPOCHS]), acc_sd(&a[A_EPOCHS]), acc_mean(&a[A_TRAIN_ACC]),
                     acc_sd(&a[A_TRAIN_ACC]), acc_mean(&a[A_TEST_ACC]), acc_sd(&a[A_TEST_ACC]),
                     acc_mean(&a[A_TRAIN_MSE]), acc_mean(&a[A_TEST_MSE]), acc_mean(&a[A_ACTIVE]),
                     acc_sd(&a[A_ACTIVE]), acc_mean(&a[A_ENTROPY]) };
    for (size_t i = 0; i < sizeof row / sizeof *row; i++)
        moe_csv_num(csv, row[i]);
}

// A system in summary.systems: the counts, and the mean and SD of every figure.
static cJSON *system_json(const char *sys, size_t runs, const struct tally *t)
{
    cJSON *sj = cJSON_CreateObject();
    cJSON_AddStringToObject(sj, "system", sys);
    cJSON_AddNumberToObject(sj, "parameters", (double)t->params);
    cJSON_AddNumberToObject(sj, "runs", (double)runs);
    cJSON_AddNumberToObject(sj, "reached", (double)t->reached);
    cJSON_AddNumberToObject(sj, "diverged", (double)t->diverged);
    for (int i = 0; i < N_ACC; i++) {
        char key[64];
        snprintf(key, sizeof key, "%s_mean", acc_names[i]);
        json_num(sj, key, acc_mean(&t->acc[i]));
        snprintf(key, sizeof key, "%s_sd", acc_names[i]);
        json_num(sj, key, acc_sd(&t->acc[i]));
    }
    return sj;
}

// DIR/table.csv and summary.systems: one row, one object per system.
static int write_table(const char *cmd, const char *dir, const struct cl_opts *o, const struct tally *t,
                       const struct cli_tags *tags, cJSON *summary)
{
    struct moe_err err = { 0 };
    struct moe_csv table;
    memset(&table, 0, sizeof table);
    cJSON *systems = cJSON_GetObjectItemCaseSensitive(summary, "systems");
    char *path = cli_path(dir, "table.csv", &err);
    int rc = path ? cli_csv_open(&table, path, table_cols, sizeof table_cols / sizeof *table_cols, tags, &err)
                  : MOE_ENOMEM;
    for (size_t si = 0; !rc && si < o->n_systems; si++) {
        table_row(&table, o->systems[si], o->n_seeds, &t[si]);
        if (!(rc = cli_csv_end_row(&table, tags, &err)))
            cJSON_AddItemToArray(systems, system_json(o->systems[si], o->n_seeds, &t[si]));
    }
    if (!rc)
        rc = moe_csv_close(&table, &err);
    moe_csv_abort(&table);
    free(path);
    return rc ? cli_fail(cmd, &err) : 0;
}

// The sweep's settings, DIR/sweep.json: what its files depend on. Not the
// threads, --quiet, progress or --force, which change no output byte.
static cJSON *settings_json(const struct moe_config *base, const struct cl_opts *o, const struct cli_tags *tags)
{
    cJSON *j = cJSON_CreateObject();
    char *cfg = moe_config_to_json(base, 0);
    cJSON_AddStringToObject(j, "command", "compare-loss");
    cJSON_AddItemToObject(j, "config", cfg ? cJSON_Parse(cfg) : cJSON_CreateNull());
    free(cfg);
    cJSON *a = cJSON_AddArrayToObject(j, "losses");
    for (size_t i = 0; i < o->n_systems; i++)
        cJSON_AddItemToArray(a, cJSON_CreateString(o->systems[i]));
    a = cJSON_AddArrayToObject(j, "seeds");
    for (size_t k = 0; k < o->n_seeds; k++)
        cJSON_AddItemToArray(a, cJSON_CreateNumber((double)o->seeds[k]));
    cli_tags_summary(j, tags);
    // for the record only (not compared): records from another build are taken as they are
    cJSON_AddStringToObject(j, "revision", cli_revision());
    return j;
}

// DIR/sweep.json: written for a new sweep (whose old records, if any, go);
// for a restarted one it must hold the same settings, or the sweep is refused
// (exit 2). 0, or the exit code after printing one line.
static int check_settings(const char *cmd, const char *dir, const cJSON *want, const struct cl_opts *o)
{
    struct moe_err err = { 0 };
    char *path = cli_path(dir, "sweep.json", &err), *text = NULL, why[256];
    int at_open = 0, rc = 0;
    if (!path)
        return cli_fail(cmd, &err);
    if (moe_read_file_why(path, &text, NULL, why, sizeof why, &at_open) == 0) {
        cJSON *have = cJSON_Parse(text);
        const char *differs = NULL;
        static const char *const keys[] = { "command", "config", "losses", "seeds", "tags" };
        static const char *const what[] = { "it is not a compare-loss sweep", "the config differs",
                                            "the --losses differ", "the --seeds differ", "the --tag options differ" };
        for (size_t i = 0; !differs && i < sizeof keys / sizeof *keys; i++)
            if (!cJSON_Compare(cJSON_GetObjectItemCaseSensitive(have, keys[i]),
                               cJSON_GetObjectItemCaseSensitive(want, keys[i]), 1))
                differs = what[i];
        if (differs)
            rc = cli_error(cmd, 2,
                           "'%s' holds a compare-loss sweep with other settings (%s; see %s); use another --out, or --force to clear it",
                           dir, differs, path);
        cJSON_Delete(have);
    } else if (!at_open) {
        rc = cli_error(cmd, 1, "cannot read '%s': %s", path, why);
    } else {
        // A new sweep: records of an earlier one with other settings must not count.
        for (size_t si = 0; si < o->n_systems; si++)
            for (size_t k = 0; k < o->n_seeds; k++) {
                char name[128];
                snprintf(name, sizeof name, "parts/%s-seed%lld.json", o->systems[si], o->seeds[k]);
                char *part = cli_path(dir, name, &err);
                if (part)
                    remove(part);
                free(part);
            }
        if (cli_write_json(path, want, &err))
            rc = cli_fail(cmd, &err);
    }
    free(text);
    free(path);
    return rc;
}

// A finished run's record, or NULL (none yet). 0, or the exit code after one line.
static int read_record(const char *cmd, const char *path, const char *sys, long long seed, cJSON **ret)
{
    char *text = NULL, why[256];
    int at_open = 0;
    *ret = NULL;
    if (moe_read_file_why(path, &text, NULL, why, sizeof why, &at_open) != 0)
        return at_open ? 0 : cli_error(cmd, 1, "cannot read '%s': %s", path, why);
    cJSON *rec = cJSON_Parse(text);
    free(text);
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(rec, "system");
    if (!cJSON_IsString(s) || strcmp(s->valuestring, sys) != 0 || rec_num(rec, "seed") != (double)seed ||
        !cJSON_IsArray(cJSON_GetObjectItemCaseSensitive(rec, "curve"))) {
        cJSON_Delete(rec);
        return cli_error(cmd, 1, "'%s' is not the record of run %s seed %lld (remove it to train that run again)",
                         path, sys, seed);
    }
    *ret = rec;
    return 0;
}

int cmd_compare_loss(int argc, char **argv)
{
    static const struct option opts[] = { CLI_COMMON_OPTIONS, CLI_FORCE_OPTION, CLI_TAG_OPTION,
                                          { "losses", required_argument, NULL, OPT_LOSSES },
                                          { "seeds", required_argument, NULL, OPT_SEEDS },
                                          { 0, 0, 0, 0 } };
    const char *cmd = "compare-loss";
    struct cli_common c;
    struct cl_opts o;
    memset(&o, 0, sizeof o);
    cli_common_init(&c);
    struct moe_err err = { 0 };
    struct moe_config base = { 0 };
    struct moe_train_cfg btc = { 0 }; // the base config's train.* (the summary's criterion)
    struct moe_csv curves;
    memset(&curves, 0, sizeof curves);
    struct run_dir lock = { .fd = -1 };
    struct tally tally[MAX_SYSTEMS];
    memset(tally, 0, sizeof tally);
    cJSON *summary = NULL, *settings = NULL;
    char *path = NULL, *parts = NULL, *losses = NULL, *seeds = NULL;
    size_t finished = 0, total = 0;
    int rc = cli_parse(argc, argv, cmd, opts, &c, on_opt, &o);
    if (rc == -1) {
        fputs(usage, stdout);
        rc = 0;
        goto out;
    }
    if (rc)
        goto out;
    if (!o.n_systems || !o.n_seeds || !c.out) {
        rc = cli_error(cmd, 2, "options '--losses', '--seeds' and '--out' are required (see 'moe help compare-loss')");
        goto out;
    }
    if (c.seed >= 0) {
        rc = cli_error(cmd, 2, "option '--seed' does not apply here; use '--seeds'");
        goto out;
    }
    if ((rc = cli_tags_check_cols(&c.tags, cmd, "curves.csv", curve_cols, sizeof curve_cols / sizeof *curve_cols)) ||
        (rc = cli_tags_check_cols(&c.tags, cmd, "table.csv", table_cols, sizeof table_cols / sizeof *table_cols)) ||
        (rc = cli_setup_compute(cmd, &c)))
        goto out;
    if (cli_load_config(&c, &base, &err) || moe_train_cfg_parse(&btc, &base, &err)) {
        rc = cli_fail(cmd, &err);
        goto out;
    }
    if ((rc = check_systems(cmd, &base, &o)))
        goto out;
    // DIR: a sweep there continues (its settings are checked below); another
    // run is refused unless --force (which also clears a sweep); another
    // process there is refused; then it is locked
    if ((rc = run_dir_check(cmd, &c, c.out, RUN_DIR_SWEEP)) || (rc = run_dir_claim(cmd, &c, c.out, RUN_DIR_SWEEP, &lock)))
        goto out;
    if (!(parts = cli_path(c.out, "parts", &err)) || cli_mkdir_p(parts, &err)) {
        rc = cli_fail(cmd, &err);
        goto out;
    }
    settings = settings_json(&base, &o, &c.tags);
    losses = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(settings, "losses"));
    seeds = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(settings, "seeds"));
    if (!losses || !seeds) {
        rc = cli_error(cmd, 1, "out of memory");
        goto out;
    }
    if ((rc = check_settings(cmd, c.out, settings, &o)))
        goto out;
    if (!(path = cli_path(c.out, "curves.csv", &err)) ||
        cli_csv_open(&curves, path, curve_cols, sizeof curve_cols / sizeof *curve_cols, &c.tags, &err)) {
        rc = cli_fail(cmd, &err);
        goto out;
    }
    cli_catch_stop_signals(); // SIGINT/SIGTERM: stop the run in progress after its current step, as moe train does
    summary = summary_start(cmd, &base, &btc, &o);
    char run_id[17];
    const char *extra[] = { losses, seeds };
    cli_run_id(run_id, cmd, &base, extra, 2, &c.tags);
    cli_summary_identity(summary, run_id, c.sets, c.n_sets, &c.tags);
    total = o.n_systems * o.n_seeds;
    for (size_t si = 0; si < o.n_systems; si++) {
        int first = 1; // the system's first run trained here: its memory is checked
        for (size_t k = 0; k < o.n_seeds; k++) {
            const char *sys = o.systems[si];
            long long seed = o.seeds[k];
            char name[128];
            snprintf(name, sizeof name, "%s-seed%lld.json", sys, seed);
            char *rec_path = cli_path(parts, name, &err);
            cJSON *rec = NULL;
            if (!rec_path) {
                rc = cli_fail(cmd, &err);
                goto out;
            }
            rc = read_record(cmd, rec_path, sys, seed, &rec);
            if (!rc && rec)
                cli_log(&c, "compare-loss: %s seed %lld: finished earlier (%s)", sys, seed, rec_path);
            else if (!rc && cli_stop_signal) // a signal between runs: start no other
                rc = -1;
            else if (!rc) {
                rc = sweep_run(cmd, &c, &base, sys, seed, first, &rec);
                first = 0;
                if (!rc && cli_write_json(rec_path, rec, &err))
                    rc = cli_fail(cmd, &err);
            }
            free(rec_path);
            if (!rc && rec) {
                tally_run(&tally[si], rec);
                if (replay_curve(&curves, &c.tags, sys, seed, cJSON_GetObjectItemCaseSensitive(rec, "curve"), &err))
                    rc = cli_fail(cmd, &err);
                finished++;
            }
            cJSON_Delete(rec);
            if (rc > 0)
                goto out;
            if (rc < 0) { // stopped: keep what finished, say how to go on
                int sig = cli_stop_signal ? cli_stop_signal : SIGTERM;
                const char *sig_name = cli_stop_name(sig);
                if (moe_csv_close(&curves, &err)) {
                    rc = cli_fail(cmd, &err);
                    goto out;
                }
                cJSON_AddStringToObject(summary, "interrupted", sig_name);
                cJSON_AddNumberToObject(summary, "runs_finished", (double)finished);
                cJSON_AddNumberToObject(summary, "runs", (double)total);
                cJSON_AddStringToObject(summary, "out", c.out);
                if ((rc = cli_write_summary(cmd, c.out, summary)))
                    goto out;
                rc = cli_error(cmd, cli_stop_exit(sig),
                               "interrupted by %s with %zu of %zu runs finished (kept in %s/); run the same command again to finish the sweep",
                               sig_name, finished, total, parts);
                goto out;
            }
        }
    }
    if (moe_csv_close(&curves, &err)) {
        rc = cli_fail(cmd, &err);
        goto out;
    }
    if ((rc = write_table(cmd, c.out, &o, tally, &c.tags, summary)))
        goto out;
    cJSON_AddStringToObject(summary, "sd", "sample standard deviation (n - 1) over runs; epochs over runs that reached the criterion");
    cJSON_AddStringToObject(summary, "out", c.out);
    if ((rc = cli_write_summary(cmd, c.out, summary)))
        goto out;
    cli_log(&c, "compare-loss: outputs in %s/ (curves.csv, table.csv, summary.json)", c.out);
out:
    free(path);
    free(parts);
    free(losses);
    free(seeds);
    moe_csv_abort(&curves);
    run_dir_release(&lock);
    cJSON_Delete(summary);
    cJSON_Delete(settings);
    free(o.losses_buf);
    free(o.seeds);
    moe_train_cfg_release(&btc);
    moe_config_release(&base);
    cli_common_release(&c);
    return rc;
}
