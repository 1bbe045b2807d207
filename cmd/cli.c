// cli.c: shared plumbing of the subcommands (see cli.h).
#include "cli.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backend/backend.h"
#include "core/gemm.h"
#include "core/sysmem.h"
#include "dist/dist.h"
#include "io/atomic.h"
#include "io/csv_writer.h"
#include "moe/moe_layer.h"
#include "moe_revision.h"
#include "progress.h"
#include "train/train.h"

void cli_common_init(struct cli_common *c)
{
    memset(c, 0, sizeof *c);
    c->seed = -1;
    c->threads = 0;
    c->device = "cpu";
}

void cli_common_release(struct cli_common *c)
{
    for (size_t i = 0; i < c->n_owned; i++)
        free(c->owned[i]);
    free(c->owned);
    free(c->appends);
    free(c->sets);
    cli_tags_release(&c->tags);
}

static int push_set(struct cli_common *c, const char *set)
{
    if (c->n_sets == c->cap_sets) {
        size_t cap = c->cap_sets ? 2 * c->cap_sets : 8;
        const char **s = realloc(c->sets, cap * sizeof *s);
        if (!s)
            return 1;
        c->sets = s;
        c->cap_sets = cap;
    }
    c->sets[c->n_sets++] = set;
    return 0;
}

int cli_add_set(struct cli_common *c, const char *opt, const char *key, const char *value, int append)
{
    size_t len = strlen(key) + strlen(value) + 2;
    char *set = malloc(len), **owned = realloc(c->owned, (c->n_owned + 1) * sizeof *owned);
    const char **appends = append ? realloc(c->appends, (c->n_appends + 1) * sizeof *appends) : NULL;
    if (owned)
        c->owned = owned;
    if (appends)
        c->appends = appends;
    if (!set || !owned || (append ? !appends : push_set(c, set))) {
        free(set);
        return cli_error(NULL, 1, "out of memory");
    }
    if (append)
        c->appends[c->n_appends++] = set;
    snprintf(set, len, "%s=%s", key, value);
    if (!c->n_owned)
        c->first_owned_opt = opt;
    c->owned[c->n_owned++] = set;
    return 0;
}

int cli_rank;
char cli_last_error[MOE_ERR_MSG_MAX];

int cli_error(const char *cmd, int exit_code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cli_last_error, sizeof cli_last_error, fmt, ap);
    va_end(ap);
    if (cli_rank)
        return exit_code;
    progress_break();
    va_start(ap, fmt);
    fprintf(stderr, "moe%s%s: ", cmd ? " " : "", cmd ? cmd : "");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return exit_code;
}

int cli_agree(const char *cmd, struct moe_dist *d, int exit_code)
{
    if (!d)
        return exit_code;
    struct moe_err err = { 0 };
    if (exit_code)
        snprintf(err.msg, sizeof err.msg, "%s", cli_last_error);
    int rc = moe_dist_agree(d, exit_code, &err);
    if (!rc)
        return 0;
    int code = rc > 0 ? rc : moe_status_exit_code(rc);
    // what failed elsewhere (or the agreement itself), said once by rank 0
    if (!exit_code)
        cli_error(cmd, code, "%s", err.msg);
    return code;
}

int cli_fail(const char *cmd, const struct moe_err *err)
{
    return cli_error(cmd, moe_status_exit_code(err->code), "%s", err->msg);
}

int cli_parse_ll(const char *s, long long lo, long long hi, long long *ret)
{
    if (!s || !*s)
        return -1;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || *end || v < lo || v > hi)
        return -1;
    *ret = v;
    return 0;
}

int cli_common_option(struct cli_common *c, const char *cmd, int opt, const char *arg)
{
    long long v;
    switch (opt) {
    case OPT_CONFIG:
        c->config = arg;
        return 1;
    case OPT_SET:
        if (push_set(c, arg))
            return -cli_error(cmd, 1, "out of memory");
        return 1;
    case OPT_OUT:
        c->out = arg;
        return 1;
    case OPT_SEED:
        if (cli_parse_ll(arg, 0, 4294967295LL, &v))
            return -cli_error(cmd, 2, "option '--seed' expects an integer from 0 to 4294967295, got '%s'", arg);
        c->seed = v;
        return 1;
    case OPT_THREADS:
        if (cli_parse_ll(arg, 1, 1024, &v))
            return -cli_error(cmd, 2, "option '--threads' expects an integer from 1 to 1024, got '%s'", arg);
        c->threads = (int)v;
        return 1;
    case OPT_DEVICE:
        if (cli_device_parse(arg, &c->device_id)) {
            if (strncmp(arg, "cuda", 4) != 0)
                return -cli_error(cmd, 2, "option '--device' expects cpu, cuda or cuda:N, got '%s'", arg);
            struct moe_backend_info info;
            char devs[MOE_BACKEND_REASON_MAX + 64];
            moe_backend_find("cuda")->probe(-1, &info);
            cli_cuda_devices_str(devs, sizeof devs, &info);
            return -cli_error(cmd, 2, "option '--device' expects cpu, cuda or cuda:N, got '%s'; %s", arg, devs);
        }
        c->device = arg;
        return 1;
    case OPT_QUIET:
        c->quiet = 1;
        return 1;
    case OPT_IGNORE_MEMORY:
        c->ignore_memory = 1;
        return 1;
    case OPT_FORCE:
        c->force = 1;
        return 1;
    case OPT_TAG:
        return cli_tag_add(&c->tags, cmd, arg) ? -2 : 1;
    case OPT_PROGRESS_EVERY:
        if (progress_parse_every(arg, &c->progress_every))
            return -cli_error(cmd, 2, "option '--progress-every' expects a number of seconds greater than 0 (e.g. 10 or 0.5), got '%s'",
                              arg);
        return 1;
    }
    return 0;
}

static const char *nearest_option(const struct option *opts, const char *name)
{
    const char *best = NULL;
    size_t bd = (size_t)-1;
    for (const struct option *o = opts; o->name; o++) {
        size_t d = moe_edit_distance(name, o->name);
        if (d < bd) {
            bd = d;
            best = o->name;
        }
    }
    return bd <= 3 ? best : NULL;
}

int cli_parse(int argc, char **argv, const char *cmd, const struct option *opts, struct cli_common *c,
              int (*on_opt)(void *ctx, int opt, const char *arg), void *ctx)
{
    opterr = 0;
    optind = 1;
    int opt, idx;
    while ((opt = getopt_long(argc, argv, ":", opts, &idx)) != -1) {
        const char *bad = argv[optind - 1];
        if (opt == '?') {
            const char *name = bad;
            while (*name == '-')
                name++;
            char stem[128] = ""; // far longer than any option name: a longer stem is near none
            size_t len = strcspn(name, "=");
            const char *near = NULL;
            if (len < sizeof stem) {
                memcpy(stem, name, len);
                stem[len] = '\0';
                near = nearest_option(opts, stem);
            }
            if (strcmp(stem, "force") == 0) // --force was the memory override before it cleared run directories
                return cli_error(cmd, 2, "unknown option '%s' (it clears a previous run's directory, for train, distill, lora and compare-loss; the memory check's override is '--ignore-memory')",
                                 bad);
            if (near)
                return cli_error(cmd, 2, "unknown option '%s' (did you mean '--%s'?)", bad, near);
            return cli_error(cmd, 2, "unknown option '%s'", bad);
        }
        if (opt == ':')
            return cli_error(cmd, 2, "option '%s' needs a value", bad);
        if (opt == OPT_HELP)
            return -1;
        if (optarg && !*optarg) // an empty path or number is always a mistake (e.g. an unset shell variable)
            return cli_error(cmd, 2, "option '--%s' needs a non-empty value", opts[idx].name);
        int r = cli_common_option(c, cmd, opt, optarg);
        if (r < 0)
            return -r;
        if (r == 0) {
            r = on_opt ? on_opt(ctx, opt, optarg) : 2;
            if (r)
                return r;
        }
    }
    if (optind < argc)
        return cli_error(cmd, 2, "unexpected argument '%s'", argv[optind]);
    return 0;
}

int cli_device_parse(const char *arg, int *id)
{
    long long v;
    if (strcmp(arg, "cpu") == 0 || strcmp(arg, "cuda") == 0)
        v = 0;
    else if (strncmp(arg, "cuda:", 5) != 0 || arg[5] < '0' || arg[5] > '9' || cli_parse_ll(arg + 5, 0, INT_MAX, &v))
        return -1; // digits only: no sign, no space, no "0x"
    *id = (int)v;
    return 0;
}

void cli_cuda_devices_str(char *buf, size_t len, const struct moe_backend_info *cuda)
{
    if (!cuda->available)
        snprintf(buf, len, "CUDA devices: 0 (%s)", cuda->reason);
    else if (cuda->device_count == 1)
        snprintf(buf, len, "CUDA devices: 1 (cuda:0)");
    else
        snprintf(buf, len, "CUDA devices: %d (cuda:0 to cuda:%d)", cuda->device_count, cuda->device_count - 1);
}

void cli_device_refusal(char *buf, size_t len, const char *device, int device_id, const struct moe_backend_info *cuda)
{
    char devs[MOE_BACKEND_REASON_MAX + 64], mem[32];
    if (!cuda->built)
        snprintf(buf, len, "option '--device %s' cannot be used: %s; use --device cpu", device, cuda->reason);
    else if (!cuda->available)
        snprintf(buf, len, "option '--device %s' cannot be used: no usable CUDA device (%s); use --device cpu", device,
                 cuda->reason);
    else if (device_id >= cuda->device_count) {
        cli_cuda_devices_str(devs, sizeof devs, cuda);
        snprintf(buf, len, "option '--device %s' cannot be used: no CUDA device %d; %s; use --device cpu", device,
                 device_id, devs);
    } else if (cuda->device != device_id)
        snprintf(buf, len, "option '--device %s' cannot be used: %s; use --device cpu", device, cuda->reason);
    else {
        moe_bytes_str(mem, sizeof mem, (double)cuda->dev.total_memory);
        snprintf(buf, len,
                 "option '--device %s' cannot be used: this command does not run on a CUDA device yet (cuda:%d is "
                 "%s, compute capability %d.%d, %s); use --device cpu",
                 device, device_id, cuda->dev.name, cuda->dev.cc_major, cuda->dev.cc_minor, mem);
    }
}

// cuda (moe bench): a usable CUDA device is accepted and described in
// *cuda; otherwise every --device but cpu is refused. dry (train --dry-run,
// which runs nothing): in a build with CUDA, what the probe found is handed
// back whether or not a device is usable; refused are a build without CUDA
// and a device number beyond the devices there are.
static int setup_compute(const char *cmd, const struct cli_common *c, struct moe_backend_info *cuda, int dry)
{
    if (cuda)
        memset(cuda, 0, sizeof *cuda);
    if (strcmp(c->device, "cpu") != 0) { // cuda, cuda:N: refused until the CUDA backend runs models
        struct moe_backend_info info;
        char why[2 * MOE_BACKEND_REASON_MAX + 2 * MOE_DEVICE_NAME_MAX];
        moe_backend_find("cuda")->probe(c->device_id, &info);
        int dry_ok = dry && info.built && (!info.available || c->device_id < info.device_count);
        if (cuda && (dry_ok || (info.available && info.device == c->device_id))) {
            *cuda = info;
        } else {
            cli_device_refusal(why, sizeof why, c->device, c->device_id, &info);
            return cli_error(cmd, 2, "%s", why);
        }
    }
    int threads = c->threads;
    if (threads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        threads = n > 0 ? (int)n : 1;
    }
    struct moe_err err;
    if (moe_blas_init(threads, &err))
        return cli_fail(cmd, &err);
    moe_threads_set_adaptive(c->threads <= 0); // the default: all cores that other processes leave idle
    return 0;
}

int cli_setup_compute(const char *cmd, const struct cli_common *c) { return setup_compute(cmd, c, NULL, 0); }

int cli_setup_compute_cuda(const char *cmd, const struct cli_common *c, struct moe_backend_info *cuda)
{
    return setup_compute(cmd, c, cuda, 0);
}

int cli_setup_compute_dry(const char *cmd, const struct cli_common *c, struct moe_backend_info *cuda)
{
    return setup_compute(cmd, c, cuda, 1);
}

int cli_cuda_model_type(const char *cmd, const struct cli_common *c, const char *type)
{
    if (strcmp(type, "mlp-moe") == 0 || strcmp(type, "transformer") == 0)
        return 0;
    return cli_error(cmd, 2, "option '--device %s' cannot be used with model.type '%s': the CUDA backend is for "
                     "mlp-moe and transformer models; use --device cpu", c->device, type);
}

// An option that adds to a list key ("key=items", cli_add_set): the list so far, then its items.
static int append_items(struct moe_config *cfg, const char *append, struct moe_err *err)
{
    const char *items = strchr(append, '=') + 1;
    char *key = strndup(append, (size_t)(items - 1 - append));
    if (!key)
        return moe_error(err, MOE_ENOMEM, "out of memory");
    size_t len = strlen(append) + 2, k = moe_cfg_len(cfg, key);
    for (size_t j = 0; j < k; j++)
        len += strlen(moe_cfg_str_at(cfg, key, j)) + 1;
    char *set = malloc(len);
    if (!set) {
        free(key);
        return moe_error(err, MOE_ENOMEM, "out of memory");
    }
    size_t at = (size_t)snprintf(set, len, "%s=", key);
    for (size_t j = 0; j < k; j++)
        at += (size_t)snprintf(set + at, len - at, "%s,", moe_cfg_str_at(cfg, key, j));
    snprintf(set + at, len - at, "%s", items);
    int rc = moe_config_set(cfg, set, err);
    free(set);
    free(key);
    return rc;
}

int cli_load_config(const struct cli_common *c, struct moe_config *ret, struct moe_err *err)
{
    size_t n = c->n_sets + 1;
    const char **over = calloc(n, sizeof *over);
    char seedbuf[64];
    if (!over)
        return moe_error(err, MOE_ENOMEM, "out of memory");
    for (size_t i = 0; i < c->n_sets; i++)
        over[i] = c->sets[i];
    n = c->n_sets;
    if (c->seed >= 0) {
        snprintf(seedbuf, sizeof seedbuf, "train.seed=%lld", c->seed);
        over[n++] = seedbuf;
    }
    int rc = moe_config_load(ret, moe_run_schema(), moe_run_schema_len(), c->config, over, n, err);
    free(over);
    for (size_t i = 0; !rc && i < c->n_appends; i++)
        rc = append_items(ret, c->appends[i], err);
    return rc;
}

int cli_mkdir_p(const char *path, struct moe_err *err)
{
    char buf[4096];
    if (!*path)
        return moe_error(err, MOE_EINVAL, "empty directory name");
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf)
        return moe_error(err, MOE_EINVAL, "path too long: '%s'", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(buf, 0777) != 0 && errno != EEXIST)
            return moe_error(err, MOE_EIO, "cannot create directory '%s': %s", buf, strerror(errno));
        *p = '/';
    }
    if (mkdir(buf, 0777) != 0 && errno != EEXIST)
        return moe_error(err, MOE_EIO, "cannot create directory '%s': %s", buf, strerror(errno));
    struct stat st;
    if (stat(buf, &st) != 0 || !S_ISDIR(st.st_mode))
        return moe_error(err, MOE_EIO, "output path '%s' exists and is not a directory", buf);
    return 0;
}

char *cli_path(const char *dir, const char *name, struct moe_err *err)
{
    size_t len = strlen(dir) + strlen(name) + 2;
    char *path = malloc(len);
    if (!path) {
        moe_error(err, MOE_ENOMEM, "out of memory");
        return NULL;
    }
    snprintf(path, len, "%s/%s", dir, name);
    return path;
}

int cli_write_json(const char *path, const cJSON *obj, struct moe_err *err)
{
    char *text = cJSON_Print(obj);
    if (!text)
        return moe_error(err, MOE_ENOMEM, "out of memory printing '%s'", path);
    size_t len = strlen(text);
    char *buf = malloc(len + 2);
    if (!buf) {
        free(text);
        return moe_error(err, MOE_ENOMEM, "out of memory printing '%s'", path);
    }
    memcpy(buf, text, len);
    buf[len] = '\n';
    int rc = moe_atomic_write(path, buf, len + 1, err);
    free(buf);
    free(text);
    return rc;
}

int cli_write_summary(const char *cmd, const char *dir, const cJSON *summary)
{
    struct moe_err err = { 0 };
    char *path = cli_path(dir, "summary.json", &err);
    int rc = path ? cli_write_json(path, summary, &err) : MOE_ENOMEM;
    free(path);
    return rc ? cli_fail(cmd, &err) : cli_print_json(cmd, summary);
}

int cli_print_json(const char *cmd, const cJSON *obj)
{
    if (cli_rank)
        return 0;
    char *text = cJSON_PrintUnformatted(obj);
    if (!text)
        return cli_error(cmd, 1, "out of memory");
    puts(text);
    free(text);
    fflush(stdout);
    return 0;
}

cJSON *cli_summary_new(const char *cmd, const struct moe_config *cfg, uint64_t seed)
{
    cJSON *s = cJSON_CreateObject();
    char hash[32];
    snprintf(hash, sizeof hash, "%016llx", (unsigned long long)moe_config_hash(cfg));
    const struct moe_blas_info *b = moe_blas_get_info();
    cJSON_AddStringToObject(s, "command", cmd);
    cJSON_AddStringToObject(s, "version", MOE_VERSION);
    cJSON_AddStringToObject(s, "revision", cli_revision());
    cJSON_AddStringToObject(s, "config_hash", hash);
    cJSON_AddNumberToObject(s, "seed", (double)seed);
    cJSON *blas = cJSON_AddObjectToObject(s, "blas");
    cJSON_AddStringToObject(blas, "library", "blis");
    cJSON_AddStringToObject(blas, "version", b->version);
    cJSON_AddStringToObject(blas, "arch", b->arch);
    cJSON_AddStringToObject(blas, "chosen_by", b->chosen_by);
    cJSON_AddNumberToObject(s, "threads", b->threads);
    cJSON_AddBoolToObject(s, "threads_adaptive", b->adaptive);
    cJSON_AddStringToObject(s, "device", "cpu");
    return s;
}

void cli_log(const struct cli_common *c, const char *fmt, ...)
{
    if (c->quiet || cli_rank)
        return;
    va_list ap;
    progress_break();
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

void cli_routing_json(cJSON *summary, struct moe_model *m)
{
    const struct moe_layer *l0 = m->ops->moe_layer_at(m, 0);
    const struct moe_layer_cfg *c = &l0->c;
    double inactive = 0.0;
    cJSON *layers = cJSON_CreateArray();
    for (size_t i = 0; i < m->n_moe_layers; i++) {
        const struct moe_layer *l = m->ops->moe_layer_at(m, i);
        const struct moe_layer_cfg *lc = &l->c;
        double per_expert = (double)lc->F * (double)lc->D * (lc->act == MOE_FFN_SWIGLU ? 3.0 : 2.0);
        double used = moe_router_experts_per_token(&lc->router);
        inactive += ((double)lc->router.E - used) * per_expert;
        cJSON_AddItemToArray(layers, cJSON_CreateString(l->prefix));
    }
    cJSON *r = cJSON_AddObjectToObject(summary, "routing");
    cJSON_AddStringToObject(r, "router", moe_router_name(c->router.type));
    cJSON_AddItemToObject(r, "sparse_layers", layers);
    cJSON_AddNumberToObject(r, "n_expert", (double)c->router.E);
    cJSON_AddNumberToObject(r, "n_expert_used", (double)c->router.K);
    cJSON_AddNumberToObject(r, "n_expert_shared", (double)c->n_shared);
    cJSON_AddStringToObject(r, "ffn_activation", moe_ffn_act_name(c->act));
    cJSON_AddStringToObject(r, "aux_loss", moe_aux_name(c->aux));
    const char *conv = "none";
    switch (c->aux) {
    case MOE_AUX_SWITCH: conv = "aux_weight * E * sum_e f_e P_e, f from the first choice before capacity (balanced: 1)"; break;
    case MOE_AUX_GSHARD: conv = "aux_weight * E^2 * mean_e f_e P_e, f from the first choice before capacity (balanced: 1)"; break;
    case MOE_AUX_TOPK_ALL: conv = "aux_weight * E * sum_e f_e P_e, f counting all k choices (balanced: k)"; break;
    case MOE_AUX_SHAZEER: conv = "w_importance * CV(importance)^2 + w_load * CV(smooth load)^2, population variance"; break;
    case MOE_AUX_NONE: conv = !moe_router_info(c->router.type)->balancing_loss
                                  ? "none (this router takes no balancing loss)" : "none"; break;
    }
    cJSON_AddStringToObject(r, "aux_convention", conv);
    cJSON_AddNumberToObject(r, "aux_weight", c->aux_weight);
    cJSON_AddNumberToObject(r, "w_importance", c->w_importance);
    cJSON_AddNumberToObject(r, "w_load", c->w_load);
    cJSON_AddNumberToObject(r, "z_weight", c->z_weight);
    cJSON_AddStringToObject(r, "z_convention", "z_weight * mean_t logsumexp(z_t)^2");
    cJSON_AddStringToObject(r, "capacity", moe_router_info(c->router.type)->quota
                                               ? "expert choice: each expert takes ceil(ec_factor * T / E) tokens"
                                               : "ceil(capacity_factor * k * T / E) per expert per batch; 0 = dropless");
    cJSON_AddNumberToObject(r, "capacity_factor", c->capacity_factor);
    cJSON_AddNumberToObject(r, "eval_capacity_factor", c->eval_capacity_factor);
    if (moe_router_info(c->router.type)->quota) { // expert choice: its selection in evaluation (moe.ec_eval)
        static const char *const ec_eval[] = { "full", "prefix", "position", "topk" }; // enum moe_ec_eval
        cJSON_AddStringToObject(r, "ec_eval", ec_eval[c->router.ec_eval]);
    }
    cJSON_AddStringToObject(r, "drop_policy", moe_drop_policy_name(c->drop));
    cJSON_AddNumberToObject(summary, "active_parameters", (double)moe_params_count(&m->params) - inactive);
}

// ---------------------------------------------------------------- run identity

const char *cli_revision(void)
{
    return MOE_REVISION[0] ? MOE_REVISION : "unknown";
}

static int g_argc;
static char **g_argv;

void cli_set_argv(int argc, char **argv)
{
    g_argc = argc;
    g_argv = argv;
}

void cli_summary_identity(cJSON *s, const char *run_id, const char *const *sets, size_t n_sets,
                          const struct cli_tags *tags)
{
    cJSON_AddStringToObject(s, "run_id", run_id);
    cJSON *a = cJSON_AddArrayToObject(s, "argv");
    for (int i = 0; i < g_argc; i++)
        cJSON_AddItemToArray(a, cJSON_CreateString(g_argv[i]));
    a = cJSON_AddArrayToObject(s, "sets");
    for (size_t i = 0; i < n_sets; i++)
        cJSON_AddItemToArray(a, cJSON_CreateString(sets[i]));
    cli_tags_summary(s, tags);
}

// FNV-1a 64 (Fowler, Noll, Vo), each string followed by a 0 byte so that
// ("ab","c") and ("a","bc") differ.
static uint64_t fnv1a(uint64_t h, const char *str)
{
    for (const unsigned char *p = (const unsigned char *)str;; p++) {
        h ^= *p;
        h *= 1099511628211ULL;
        if (!*p)
            return h;
    }
}

void cli_run_id(char *buf, const char *cmd, const struct moe_config *cfg, const char *const *extra, size_t n_extra,
                const struct cli_tags *tags)
{
    uint64_t h = fnv1a(14695981039346656037ULL, "moe run id v1");
    h = fnv1a(h, cmd);
    char *json = cfg ? moe_config_to_json(cfg, 0) : NULL;
    h = fnv1a(h, json ? json : "");
    free(json);
    for (size_t i = 0; i < n_extra; i++)
        h = fnv1a(h, extra[i] ? extra[i] : "");
    for (size_t i = 0; tags && i < tags->n; i++) {
        h = fnv1a(h, tags->key[i]);
        h = fnv1a(h, tags->value[i]);
    }
    snprintf(buf, 17, "%016llx", (unsigned long long)h);
}

// ---------------------------------------------------------------- tags

static int is_ident(const char *s, size_t len)
{
    if (!len || len > 64 || !(s[0] == '_' || (s[0] >= 'A' && s[0] <= 'Z') || (s[0] >= 'a' && s[0] <= 'z')))
        return 0;
    for (size_t i = 1; i < len; i++)
        if (!(s[i] == '_' || (s[i] >= 'A' && s[i] <= 'Z') || (s[i] >= 'a' && s[i] <= 'z') ||
              (s[i] >= '0' && s[i] <= '9')))
            return 0;
    return 1;
}

// The first control character of s (< 0x20 or DEL), or NULL.
static const char *control_char(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            return s;
    return NULL;
}

int cli_tag_add(struct cli_tags *t, const char *cmd, const char *arg)
{
    const char *eq = strchr(arg, '=');
    if (!eq)
        return cli_error(cmd, 2, "option '--tag' expects KEY=VALUE, got '%s'", arg);
    size_t klen = (size_t)(eq - arg);
    if (!klen)
        return cli_error(cmd, 2, "option '--tag': empty key in '%s' (expected KEY=VALUE)", arg);
    if (control_char(arg))
        return cli_error(cmd, 2, "option '--tag': control character 0x%02x in '%.*s' (tag values are one line of text)",
                         (unsigned char)*control_char(arg), (int)klen, arg);
    if (!is_ident(arg, klen))
        return cli_error(cmd, 2, "option '--tag': key '%.*s' is not a simple identifier ([A-Za-z_][A-Za-z0-9_]*, at most 64 bytes)",
                         (int)klen, arg);
    for (size_t i = 0; i < t->n; i++)
        if (strlen(t->key[i]) == klen && strncmp(t->key[i], arg, klen) == 0)
            return cli_error(cmd, 2, "option '--tag': key '%s' given twice", t->key[i]);
    if (t->n == CLI_MAX_TAGS)
        return cli_error(cmd, 2, "option '--tag': at most %d tags", CLI_MAX_TAGS);
    char *k = strndup(arg, klen), *v = strdup(eq + 1);
    if (!k || !v) {
        free(k);
        free(v);
        return cli_error(cmd, 1, "out of memory");
    }
    t->key[t->n] = k;
    t->value[t->n++] = v;
    return 0;
}

int cli_tags_check_cols(const struct cli_tags *t, const char *cmd, const char *file, const char *const *cols,
                        size_t n)
{
    for (size_t i = 0; i < t->n; i++)
        for (size_t j = 0; j < n; j++)
            if (strcmp(t->key[i], cols[j]) == 0)
                return cli_error(cmd, 2, "option '--tag': key '%s' is a column of %s; choose another name", t->key[i],
                                 file);
    return 0;
}

void cli_tags_release(struct cli_tags *t)
{
    for (size_t i = 0; i < t->n; i++) {
        free(t->key[i]);
        free(t->value[i]);
    }
    t->n = 0;
}

void cli_tags_summary(cJSON *s, const struct cli_tags *t)
{
    cJSON *o = cJSON_AddObjectToObject(s, "tags");
    for (size_t i = 0; t && i < t->n; i++)
        cJSON_AddStringToObject(o, t->key[i], t->value[i]);
}

char *cli_tags_json(const struct cli_tags *t)
{
    cJSON *o = cJSON_CreateObject();
    for (size_t i = 0; o && i < t->n; i++)
        cJSON_AddStringToObject(o, t->key[i], t->value[i]);
    char *text = o ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    return text;
}

int cli_tags_parse(struct cli_tags *t, const char *json, const char *what, struct moe_err *err)
{
    cJSON *o = cJSON_Parse(json);
    int rc = 0;
    if (!cJSON_IsObject(o))
        rc = moe_error(err, MOE_EFORMAT, "%s is not a JSON object of tags", what);
    for (cJSON *it = o ? o->child : NULL; !rc && it; it = it->next) {
        size_t klen = it->string ? strlen(it->string) : 0;
        int dup = 0;
        for (size_t i = 0; i < t->n; i++)
            dup |= strcmp(t->key[i], it->string) == 0;
        if (!cJSON_IsString(it) || !is_ident(it->string, klen) || control_char(it->valuestring) || dup ||
            t->n == CLI_MAX_TAGS) {
            rc = moe_error(err, MOE_EFORMAT, "%s: a malformed tag", what);
            break;
        }
        t->key[t->n] = strdup(it->string);
        t->value[t->n] = strdup(it->valuestring);
        if (!t->key[t->n] || !t->value[t->n]) {
            free(t->key[t->n]);
            free(t->value[t->n]);
            rc = moe_error(err, MOE_ENOMEM, "out of memory");
            break;
        }
        t->n++;
    }
    cJSON_Delete(o);
    return rc;
}

const char **cli_tags_header(const char *const *cols, size_t n, const struct cli_tags *t)
{
    size_t nt = t ? t->n : 0;
    const char **h = malloc((n + nt) * sizeof *h);
    if (!h)
        return NULL;
    for (size_t i = 0; i < n; i++)
        h[i] = cols[i];
    for (size_t i = 0; i < nt; i++)
        h[n + i] = t->key[i];
    return h;
}

int cli_csv_open(struct moe_csv *csv, const char *path, const char *const *cols, size_t n, const struct cli_tags *t,
                 struct moe_err *err)
{
    const char **h = cli_tags_header(cols, n, t);
    if (!h)
        return moe_error(err, MOE_ENOMEM, "out of memory");
    int rc = moe_csv_open(csv, path, h, n + (t ? t->n : 0), err);
    free(h);
    return rc;
}

int cli_csv_end_row(struct moe_csv *csv, const struct cli_tags *t, struct moe_err *err)
{
    for (size_t i = 0; t && i < t->n; i++)
        moe_csv_str(csv, t->value[i]);
    return moe_csv_end_row(csv, err);
}

volatile sig_atomic_t cli_stop_signal;

// A second SIGINT or SIGTERM gets the default action (the disposition is reset);
// SIGUSR1, a request that may come twice (a scheduler signalling every process
// of the job, mpirun among them, which passes it on), stays a request.
static void on_stop_signal(int sig)
{
    if (sig == SIGUSR1) {
        if (!cli_stop_signal)
            cli_stop_signal = sig;
        return;
    }
    cli_stop_signal = sig;
    signal(sig, SIG_DFL);
    moe_dist_stop_signal(); // over processes: was it the runtime ending the job after a death? (dist.h)
}

void cli_catch_stop_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL);
}

const char *cli_stop_name(int sig) { return sig == SIGINT ? "SIGINT" : sig == SIGUSR1 ? "SIGUSR1" : "SIGTERM"; }

int cli_stop_exit(int sig) { return sig == SIGINT ? 128 + SIGINT : 128 + SIGTERM; }
