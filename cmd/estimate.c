// estimate.c (cmd): the resource estimate as JSON and the memory check (see estimate.h).
#include "estimate.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "core/sysmem.h"

// cli_memory_for_run, where the process also holds ckpt_read bytes of a
// checkpoint already read (struct cli_ckpt_mem).
static int memory_for_run(const struct moe_model_estimate *e, int data_loaded, size_t ckpt_read, size_t *ret_bytes,
                          const char **ret_source, struct moe_err *err)
{
    struct moe_sysmem m;
    int rc = moe_sysmem_available(&m, err);
    if (rc)
        return rc;
    size_t avail = m.available;
    int budget = strcmp(m.source, MOE_MEMORY_LIMIT_ENV) == 0;
    // what this process already holds (or held: the readers' peak is past) is not counted as available
    size_t held = e->bytes_process;
    if (data_loaded && (__builtin_add_overflow(held, e->bytes_data, &held) ||
                        __builtin_add_overflow(held, e->bytes_readers, &held)))
        held = SIZE_MAX;
    if (__builtin_add_overflow(held, ckpt_read, &held))
        held = SIZE_MAX;
    if (!budget && __builtin_add_overflow(avail, held, &avail))
        avail = SIZE_MAX;
    *ret_bytes = avail;
    *ret_source = m.source;
    return 0;
}

int cli_memory_for_run(const struct moe_model_estimate *e, int data_loaded, size_t *ret_bytes,
                       const char **ret_source, struct moe_err *err)
{
    return memory_for_run(e, data_loaded, 0, ret_bytes, ret_source, err);
}

cJSON *cli_estimate_json(const struct moe_model_estimate *e, int data_loaded)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "parameters", (double)e->parameters);
    cJSON_AddNumberToObject(o, "active_parameters", e->active_parameters);
    cJSON_AddNumberToObject(o, "flops_per_token", e->flops_per_token);
    cJSON_AddNumberToObject(o, "flops_forward_per_token", e->flops_forward_per_token);
    cJSON_AddStringToObject(o, "flops_convention",
                            "training = 3 x forward; forward = 2 x multiply-accumulates of the weight matrices a token "
                            "uses (routers over all experts, k routed + shared experts); biases, norms, activations, "
                            "softmax, dispatch and the optimizer left out");
    cJSON *m = cJSON_AddObjectToObject(o, "memory_bytes");
    cJSON_AddNumberToObject(m, "params", (double)e->bytes_params);
    cJSON_AddNumberToObject(m, "grads", (double)e->bytes_grads);
    cJSON_AddNumberToObject(m, "optimizer", (double)e->bytes_optimizer);
    cJSON_AddNumberToObject(m, "adapters", (double)e->bytes_adapters);
    cJSON_AddNumberToObject(m, "activations", (double)e->bytes_activations);
    cJSON_AddNumberToObject(m, "trainer", (double)e->bytes_trainer);
    cJSON_AddNumberToObject(m, "data", (double)e->bytes_data);
    cJSON_AddNumberToObject(m, "data_readers", (double)e->bytes_readers);
    cJSON_AddNumberToObject(m, "checkpoint", (double)e->bytes_checkpoint);
    cJSON_AddNumberToObject(m, "process", (double)e->bytes_process);
    cJSON_AddNumberToObject(m, "total", (double)e->bytes_total);
    cJSON_AddStringToObject(o, "largest_buffer", e->largest);
    size_t avail;
    const char *src;
    struct moe_err err = { 0 };
    if (cli_memory_for_run(e, data_loaded, &avail, &src, &err) == 0) {
        cJSON_AddNumberToObject(o, "memory_available_bytes", (double)avail);
        cJSON_AddStringToObject(o, "memory_available_source", src);
        size_t headroom = cli_memory_headroom(e, src);
        cJSON_AddNumberToObject(o, "memory_headroom_bytes", (double)headroom);
        cJSON_AddBoolToObject(o, "fits", e->bytes_total <= avail && headroom <= avail - e->bytes_total);
    } else {
        cJSON_AddNullToObject(o, "memory_available_bytes");
        cJSON_AddNullToObject(o, "memory_available_source");
        cJSON_AddNullToObject(o, "memory_headroom_bytes");
        cJSON_AddNullToObject(o, "fits");
    }
    return o;
}

size_t cli_memory_headroom(const struct moe_model_estimate *e, const char *source)
{
    if (strcmp(source, MOE_MEMORY_LIMIT_ENV) == 0)
        return 0; // the user's own budget, taken as given
    size_t h = e->bytes_total / 4;
    return h > CLI_HEADROOM_MIN ? h : CLI_HEADROOM_MIN;
}

// cli_check_memory_with, where the process also holds ckpt_read bytes of a checkpoint already read.
static int check_memory(const char *cmd, const struct moe_model_estimate *e, int data_loaded, size_t ckpt_read,
                        int ignore_memory, const char *with)
{
    size_t avail;
    const char *src;
    struct moe_err err = { 0 };
    if (memory_for_run(e, data_loaded, ckpt_read, &avail, &src, &err))
        return cli_fail(cmd, &err);
    size_t headroom = cli_memory_headroom(e, src), want;
    if (__builtin_add_overflow(e->bytes_total, headroom, &want))
        want = SIZE_MAX;
    if (want <= avail || (ignore_memory && headroom))
        return 0; // --ignore-memory runs past the headroom and the machine's figure, never past MOE_MEMORY_LIMIT
    char need[32], have[32], keep[32], what[1100];
    moe_bytes_str(need, sizeof need, (double)e->bytes_total);
    moe_bytes_str(have, sizeof have, (double)avail);
    moe_bytes_str(keep, sizeof keep, (double)headroom);
    snprintf(what, sizeof what, "this config%s%s%s", with ? ", with " : "", with ? with : "", with ? "," : "");
    if (strcmp(src, MOE_MEMORY_LIMIT_ENV) == 0)
        return cli_error(cmd, 1, "%s needs about %s, more than the %s that %s allows", what, need, have,
                         MOE_MEMORY_LIMIT_ENV);
    if (strncmp(src, "RLIMIT_", 7) == 0)
        return cli_error(cmd, 1, "%s needs about %s plus %s of headroom, only %s left under this process's %s (ulimit %s); --ignore-memory runs it anyway",
                         what, need, keep, have, src, strcmp(src, "RLIMIT_AS") == 0 ? "-v" : "-d");
    return cli_error(cmd, 1, "%s needs about %s plus %s of headroom, only %s available (--ignore-memory runs it anyway; %s sets a budget)",
                     what, need, keep, have, MOE_MEMORY_LIMIT_ENV);
}

int cli_check_memory(const char *cmd, const struct moe_model_estimate *e, int data_loaded, int ignore_memory)
{
    return check_memory(cmd, e, data_loaded, 0, ignore_memory, NULL);
}

int cli_check_memory_with(const char *cmd, const struct moe_model_estimate *e, int data_loaded, int ignore_memory,
                          const char *with)
{
    return check_memory(cmd, e, data_loaded, 0, ignore_memory, with);
}

size_t cli_ckpt_file_bytes(const char *path)
{
    struct stat st;
    if (!path || stat(path, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size < 0 ||
        (uintmax_t)st.st_size > SIZE_MAX)
        return 0;
    return (size_t)st.st_size;
}

size_t cli_ckpt_peak_bytes(const struct moe_model_estimate *e, size_t file_bytes, int whole_run)
{
    if (whole_run)
        return file_bytes;
    // freed before these are allocated: the peak holds either the file or them
    size_t later = 0;
    const size_t parts[] = { e->bytes_optimizer, e->bytes_adapters, e->bytes_trainer };
    for (size_t i = 0; i < sizeof parts / sizeof *parts; i++)
        if (__builtin_add_overflow(later, parts[i], &later))
            later = SIZE_MAX;
    return file_bytes > later ? file_bytes - later : 0;
}

int cli_run_estimate_ex(const struct moe_run_cfg *rc, const char *loss, enum moe_task task, size_t n_in, size_t n_out,
                        size_t n_train, size_t n_test, size_t max_batch, enum moe_run_kind kind,
                        const struct cli_ckpt_mem *ck, cli_extra_fn extra, const void *extra_ctx,
                        struct moe_model_estimate *ret, struct moe_err *err)
{
    struct moe_model_estimate e;
    int r = moe_run_estimate(rc, loss, task, n_in, n_out, n_train, n_test, max_batch, kind, &e, err);
    if (r)
        return r;
    if (ck) {
        e.bytes_checkpoint = cli_ckpt_peak_bytes(&e, ck->bytes, ck->whole_run);
        if (__builtin_add_overflow(e.bytes_total, e.bytes_checkpoint, &e.bytes_total))
            e.bytes_total = SIZE_MAX;
    }
    size_t more = 0;
    if (extra && (r = extra(rc, task, n_in, n_out, max_batch, extra_ctx, &more, err)))
        return r;
    if (__builtin_add_overflow(e.bytes_total, more, &e.bytes_total))
        e.bytes_total = SIZE_MAX;
    *ret = e;
    return 0;
}

int cli_run_estimate(const struct moe_run_cfg *rc, const char *loss, enum moe_task task, size_t n_in, size_t n_out,
                     size_t n_train, size_t n_test, size_t max_batch, enum moe_run_kind kind,
                     const struct cli_ckpt_mem *ck, struct moe_model_estimate *ret, struct moe_err *err)
{
    return cli_run_estimate_ex(rc, loss, task, n_in, n_out, n_train, n_test, max_batch, kind, ck, NULL, NULL, ret,
                               err);
}

int cli_check_run_ex(const char *cmd, const struct moe_run_cfg *rc, const char *loss, const struct moe_data *data,
                     cli_batch_fn batch, cli_extra_fn extra, const void *ctx, enum moe_run_kind kind,
                     const struct cli_ckpt_mem *ck, int ignore_memory, struct moe_model_estimate *ret_est,
                     int *ret_checked)
{
    struct moe_err err = { 0 };
    enum moe_task task;
    size_t n_in, n_out, n_train, n_test;
    *ret_checked = 0;
    if (data) {
        task = data->train.task;
        n_in = data->train.n_in;
        n_out = data->train.n_out;
        n_train = data->train.n;
        n_test = data->test.n;
    } else {
        int known = moe_data_shape_cfg(&rc->data, &task, &n_in, &n_out, &n_train, &n_test, &err);
        if (known <= 0)
            return known < 0 ? cli_fail(cmd, &err) : 0;
    }
    struct moe_model_estimate est;
    if (cli_run_estimate_ex(rc, loss, task, n_in, n_out, n_train, n_test, batch(rc, n_train, n_test, ctx), kind, ck,
                            extra, ctx, &est, &err))
        return cli_fail(cmd, &err);
    *ret_checked = 1;
    if (ret_est)
        *ret_est = est;
    return check_memory(cmd, &est, data != NULL, ck && ck->read ? ck->bytes : 0, ignore_memory, NULL);
}

int cli_check_run(const char *cmd, const struct moe_run_cfg *rc, const char *loss, const struct moe_data *data,
                  cli_batch_fn batch, const void *ctx, enum moe_run_kind kind, const struct cli_ckpt_mem *ck,
                  int ignore_memory, struct moe_model_estimate *ret_est, int *ret_checked)
{
    return cli_check_run_ex(cmd, rc, loss, data, batch, NULL, ctx, kind, ck, ignore_memory, ret_est, ret_checked);
}
