// cmd_eval.c: `moe eval` evaluates a trained checkpoint on a split of the data
// its run config names, the way training's final evaluation does (the same
// chunks, the same statistics), and prints the figures as one JSON object: the
// object summary.json holds under final.train or final.test for that split.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "backend/backend.h"
#include "ckpt.h"
#include "cli.h"
#include "cuda/model.h"
#include "cuda/ops.h"
#include "io/csv_writer.h"
#include "train_run.h"

static const char *const usage =
    "usage: moe eval --checkpoint CKPT [--data train|valid|test] [--config FILE] [--set key.path=value]...\n"
    "                [--by-token FILE] [--threads N] [--device cpu|cuda|cuda:N] [--ignore-memory] [--quiet]\n"
    "Evaluate a trained checkpoint on a split of its data as training's final evaluation does, and\n"
    "print one JSON object on stdout: the keys and values of summary.json's final.train (--data train)\n"
    "or final.test (--data test or valid: the held-out split; for text data the corpus's validation\n"
    "part), or final.valid (--data valid with a validation split: data.synthetic.n_valid,\n"
    "data.idx.valid_fraction, data.table.valid_fraction). Default: the held-out split. The data is the checkpoint's own config's, standardised with\n"
    "the checkpoint's statistics; --config FILE (its keys applied over the checkpoint's config, then\n"
    "each --set) may point data.* elsewhere, but no model.* key may change.\n"
    "--device cuda[:N]: the forward passes on a GPU (mlp-moe and transformer checkpoints), the\n"
    "statistics summed on the host as for --device cpu; the same keys on stdout.\n"
    "--by-token FILE (language models): also write FILE, a CSV table of the split's loss by target\n"
    "token, one row per token id that occurs as a target, ids ascending:\n"
    "token,text,count,correct,loss_sum,loss_mean: the id; its text (valid UTF-8 as is, any other\n"
    "byte, a control byte and the backslash as \\xHH; word vocabularies' <unk>); the predicted\n"
    "positions whose target it is; those whose most likely token was it; their summed and mean loss\n"
    "in nats. The loss_sum column adds up to the JSON's loss times its rows.\n";

enum { OPT_CKPT = OPT_FIRST_CMD, OPT_DATA, OPT_BY_TOKEN };

struct eval_opts {
    const char *ckpt, *split, *by_token;
};

static int on_opt(void *ctx, int opt, const char *arg)
{
    struct eval_opts *o = ctx;
    switch (opt) {
    case OPT_CKPT:
        o->ckpt = arg;
        return 0;
    case OPT_DATA:
        if (strcmp(arg, "train") != 0 && strcmp(arg, "test") != 0 && strcmp(arg, "valid") != 0)
            return cli_error("eval", 2, "option '--data': expected train, valid or test, got '%s'", arg);
        o->split = strcmp(arg, "train") == 0 ? "train" : strcmp(arg, "valid") == 0 ? "valid" : "test";
        return 0;
    case OPT_BY_TOKEN:
        o->by_token = arg;
        return 0;
    }
    return 2;
}

// Length of the valid UTF-8 sequence of 2 to 4 bytes at s (n bytes left), else
// 0 (RFC 3629: no overlong forms, no surrogates, nothing above U+10FFFF).
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    unsigned char b = s[0];
    size_t len = b >= 0xC2 && b <= 0xDF ? 2 : b >= 0xE0 && b <= 0xEF ? 3 : b >= 0xF0 && b <= 0xF4 ? 4 : 0;
    if (!len || len > n)
        return 0;
    unsigned char lo = b == 0xE0 ? 0xA0 : b == 0xF0 ? 0x90 : 0x80, hi = b == 0xED ? 0x9F : b == 0xF4 ? 0x8F : 0xBF;
    if (s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < len; i++)
        if (s[i] < 0x80 || s[i] > 0xBF)
            return 0;
    return len;
}

// A token's text for the --by-token table, NUL-terminated in buf (4 n + 1
// bytes): printable ASCII and valid UTF-8 as is; the backslash, control bytes
// and bytes outside a valid sequence (a lone UTF-8 lead byte of a byte-level
// vocabulary) as \xHH.
static void token_text(const char *tok, size_t n, char *buf)
{
    const unsigned char *s = (const unsigned char *)tok;
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        size_t len = s[i] >= 0x80 ? utf8_seq(s + i, n - i) : s[i] >= 0x20 && s[i] < 0x7F && s[i] != '\\';
        if (len) {
            memcpy(buf + o, s + i, len);
            o += len;
            i += len;
        } else {
            o += (size_t)sprintf(buf + o, "\\x%02X", s[i]);
            i++;
        }
    }
    buf[o] = '\0';
}

static const char *const by_token_header[] = { "token", "text", "count", "correct", "loss_sum", "loss_mean" };

// The --by-token table's rows, from the statistics s over vocabulary v (ids 0 ..
// n_vocab - 1), into csv (opened with by_token_header), which is closed.
static int write_by_token(struct moe_csv *csv, const struct moe_stats *s, const struct moe_vocab *v,
                          struct moe_err *err)
{
    size_t longest = 5; // "<unk>"
    for (size_t i = 0; i < v->n; i++)
        longest = v->len[i] > longest ? v->len[i] : longest;
    char *buf = malloc(4 * longest + 1);
    if (!buf)
        return moe_error(err, MOE_ENOMEM, "out of memory");
    int rc = 0;
    for (size_t id = 0; !rc && id < s->n_vocab; id++) {
        uint64_t n = s->tok_count[id];
        if (!n)
            continue;
        if (v->kind == MOE_TOK_WORDS && id == MOE_VOCAB_UNK)
            strcpy(buf, "<unk>");
        else
            token_text(v->tok[id], v->len[id], buf);
        moe_csv_int(csv, (long long)id);
        moe_csv_str(csv, buf);
        moe_csv_int(csv, (long long)n);
        moe_csv_int(csv, (long long)s->tok_correct[id]);
        moe_csv_num(csv, s->tok_loss[id]);
        moe_csv_num(csv, s->tok_loss[id] / (double)n);
        rc = moe_csv_end_row(csv, err);
    }
    if (!rc)
        rc = moe_csv_close(csv, err);
    free(buf);
    return rc;
}

// The model's batch: as large as the trainer's evaluation chunk (train.max_batch_eval
// rows; text: at most a training batch of windows), at most the split.
static size_t eval_batch(const struct moe_run_cfg *rc, size_t n_train, size_t n_test, const void *ctx)
{
    size_t rows = strcmp((const char *)ctx, "train") == 0 ? n_train : n_test;
    size_t chunk = cli_ckpt_eval_chunk(rc, n_train);
    return chunk > rows && rows > 0 ? rows : chunk;
}

int cmd_eval(int argc, char **argv)
{
    static const struct option opts[] = { CLI_COMMON_OPTIONS,
                                          { "checkpoint", required_argument, NULL, OPT_CKPT },
                                          { "data", required_argument, NULL, OPT_DATA },
                                          { "by-token", required_argument, NULL, OPT_BY_TOKEN },
                                          { 0, 0, 0, 0 } };
    const char *cmd = "eval";
    struct cli_common c;
    struct eval_opts o = { .split = "test" };
    struct cli_ckpt k;
    memset(&k, 0, sizeof k);
    char **sets = NULL;
    size_t n_sets = 0;
    struct moe_stats st;
    memset(&st, 0, sizeof st);
    cJSON *out = NULL;
    struct moe_backend_info cuda;
    struct moe_cuda_model *dev = NULL; // --device cuda: the model on it
    struct moe_csv by_token = { .fd = -1 };
    int by_token_state = 0; // 1: opened, 2: written whole
    cli_common_init(&c);
    int rc = cli_parse(argc, argv, cmd, opts, &c, on_opt, &o);
    if (rc == -1) {
        fputs(usage, stdout);
        rc = 0;
        goto done;
    }
    if (rc || (rc = cli_setup_compute_cuda(cmd, &c, &cuda)))
        goto done;
    if (!o.ckpt) {
        rc = cli_error(cmd, 2, "option '--checkpoint' is required (see 'moe help eval')");
        goto done;
    }
    if (c.out) {
        rc = cli_error(cmd, 2, "option '--out' does not apply: eval prints its figures on stdout");
        goto done;
    }
    size_t n_config = 0;
    if ((rc = cli_ckpt_config_sets(cmd, &c, &sets, &n_sets, &n_config)) ||
        (rc = cli_ckpt_refuse_model_sets(cmd, "--config", (const char *const *)sets, n_config)) ||
        (rc = cli_ckpt_refuse_model_sets(cmd, "--set", (const char *const *)sets + n_config, n_sets - n_config)))
        goto done;
    int want_valid = strcmp(o.split, "valid") == 0;
    if ((rc = cli_ckpt_load(cmd, o.ckpt, (const char *const *)sets, n_sets, c.ignore_memory, eval_batch, NULL,
                            want_valid ? "test" : o.split, 0, &k)))
        goto done;
    const struct moe_dataset *d = strcmp(o.split, "train") == 0 ? &k.data.train : &k.data.test;
    if (want_valid && k.data.valid.n) // a validation split of its own (else the held-out split, as before)
        d = &k.data.valid;
    else if (want_valid)
        o.split = "test";
    struct moe_err err = { 0 };
    struct moe_eval_row row;
    if (o.by_token && (d->task != MOE_TASK_LM || !k.data.has_text)) {
        rc = cli_error(cmd, 2, "option '--by-token': '%s' is a '%s' model, not a language model", o.ckpt,
                       k.model.ops->type);
        goto done;
    }
    if (strcmp(c.device, "cpu") != 0) { // evaluation passes only: no gradients, moments or backward buffers
        if ((rc = cli_cuda_model_type(cmd, &c, moe_model_kind(k.rc.model.type)->name)))
            goto done;
        if (moe_cuda_model_check(&k.model, &k.rc.model, &err)) {
            rc = cli_error(cmd, 2, "option '--device %s': %s", c.device, err.msg);
            goto done;
        }
        if (moe_cuda_use_device(c.device_id, &err) ||
            moe_cuda_model_create(&dev, &k.model, &k.rc.model, NULL, k.model.max_batch, &err)) {
            rc = cli_fail(cmd, &err);
            goto done;
        }
    }
    // the table is opened (its header written) before the passes, so that a path it cannot be
    // written to fails first; a run that fails later removes it
    if (o.by_token &&
        moe_csv_open(&by_token, o.by_token, by_token_header, sizeof by_token_header / sizeof *by_token_header, &err)) {
        rc = cli_fail(cmd, &err);
        goto done;
    }
    by_token_state = o.by_token ? 1 : 0;
    if (moe_train_stats_init(&st, &k.model, &k.data.train, &err) ||
        (o.by_token && moe_stats_init_tokens(&st, k.data.corpus.vocab.n, &err)) ||
        moe_evaluate_on(&k.model, dev, d, o.split, cli_ckpt_eval_chunk(&k.rc, k.data.train.n),
                        k.rc.train.active_threshold, &st, &row, &err)) {
        rc = cli_fail(cmd, &err);
        goto done;
    }
    if (!(out = run_output_eval_json(&row))) {
        rc = cli_error(cmd, 1, "out of memory");
        goto done;
    }
    if (o.by_token) {
        if (write_by_token(&by_token, &st, &k.data.corpus.vocab, &err)) {
            rc = cli_fail(cmd, &err);
            goto done;
        }
        by_token_state = 2;
    }
    rc = cli_print_json(cmd, out);
    cli_log(&c, "moe eval: %zu %s rows of %s%s%s", d->task == MOE_TASK_LM ? d->n_win : d->n, o.split, o.ckpt,
            dev ? " on " : "", dev ? cuda.dev.name : "");
done:
    moe_csv_abort(&by_token);
    if (by_token_state == 1) // the run failed after the header: no partial table is left
        unlink(o.by_token);
    moe_cuda_model_free(dev);
    cJSON_Delete(out);
    moe_stats_release(&st);
    cli_ckpt_release(&k);
    for (size_t i = 0; i < n_sets; i++)
        free(sets[i]);
    free(sets);
    cli_common_release(&c);
    return rc;
}
