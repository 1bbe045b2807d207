// cmd_generate.c: `moe generate` samples a continuation of a prompt from a
// transformer language-model checkpoint, one token at a time over the last
// model.n_ctx tokens, with the vocabulary the run saved. Draws come from the
// counter-based generator (core/rng.h, purpose MOE_RNG_GENERATE, index = the
// generated token's number), so a seed gives the same text on any machine and
// thread count; temperature 0 is greedy. Sparse layers route dropless
// (evaluation capacity factor 0): one token has no batch to share capacity with.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "ckpt.h"
#include "cli.h"
#include "core/rng.h"
#include "moe/moe_layer.h"

static const char *const usage =
    "usage: moe generate --checkpoint CKPT --prompt TEXT [--tokens N] [--temperature T] [--top-k K]\n"
    "                    [--seed S] [--trace] [--set key.path=value]... [--threads N] [--quiet]\n"
    "Sample N tokens (default 64) continuing TEXT from a transformer language-model checkpoint, with\n"
    "the vocabulary it was trained with (bytes or words), and print the prompt and the continuation\n"
    "on stdout, then a newline. Each token is drawn from softmax(logits / T) (default T 1) over the K\n"
    "most likely tokens (default all; ties with the K-th are kept); T 0 takes the most likely one.\n"
    "Deterministic for a seed (default: the checkpoint's train.seed). Sparse layers route dropless.\n"
    "--trace prints one JSON object instead: the text, and per generated token its id, its text and,\n"
    "for each sparse layer, the experts (and gates) the last context token was routed to.\n"
    "The checkpoint's text data must be readable (or named with --set data.text.path=...).\n";

enum { OPT_CKPT = OPT_FIRST_CMD, OPT_PROMPT, OPT_TOKENS, OPT_TEMP, OPT_TOPK, OPT_TRACE };

struct gen_opts {
    const char *ckpt, *prompt;
    long long tokens, top_k; // top_k 0: every token
    double temperature;
    int trace;
};

static int on_opt(void *ctx, int opt, const char *arg)
{
    struct gen_opts *o = ctx;
    char *end;
    switch (opt) {
    case OPT_CKPT:
        o->ckpt = arg;
        return 0;
    case OPT_PROMPT:
        o->prompt = arg;
        return 0;
    case OPT_TOKENS:
        if (cli_parse_ll(arg, 0, 1000000, &o->tokens))
            return cli_error("generate", 2, "option '--tokens': expected an integer in [0, 1000000], got '%s'", arg);
        return 0;
    case OPT_TEMP:
        o->temperature = strtod(arg, &end);
        if (end == arg || *end || !isfinite(o->temperature) || o->temperature < 0 || o->temperature > 1e6)
            return cli_error("generate", 2, "option '--temperature': expected a number in [0, 1e6], got '%s'", arg);
        return 0;
    case OPT_TOPK:
        if (cli_parse_ll(arg, 1, 1LL << 31, &o->top_k))
            return cli_error("generate", 2, "option '--top-k': expected a positive integer, got '%s'", arg);
        return 0;
    case OPT_TRACE:
        o->trace = 1;
        return 0;
    }
    return 2;
}

static size_t gen_batch(const struct moe_run_cfg *rc, size_t n_train, size_t n_test, const void *ctx)
{
    (void)rc, (void)n_train, (void)n_test, (void)ctx;
    return 1;
}

static int cmp_desc(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

// The next token from one row of logits (V): greedy at temperature 0 (the
// first largest), else a draw u in (0, 1) against the cumulative softmax of
// logits / T over the top-k (work: V floats).
static int32_t sample(const float *logits, size_t V, const struct gen_opts *o, const struct moe_rng *rng,
                      uint64_t i, float *work, double *p)
{
    size_t best = 0;
    for (size_t v = 1; v < V; v++)
        if (logits[v] > logits[best])
            best = v;
    if (o->temperature == 0.0)
        return (int32_t)best;
    float thr = -INFINITY;
    if (o->top_k > 0 && (size_t)o->top_k < V) {
        memcpy(work, logits, V * sizeof *work);
        qsort(work, V, sizeof *work, cmp_desc);
        thr = work[o->top_k - 1];
    }
    double sum = 0.0, mx = logits[best];
    for (size_t v = 0; v < V; v++) {
        p[v] = logits[v] >= thr ? exp(((double)logits[v] - mx) / o->temperature) : 0.0;
        sum += p[v];
    }
    double u = (double)moe_rng_uniform(rng, i) * sum, cum = 0.0;
    size_t last = best;
    for (size_t v = 0; v < V; v++) {
        if (p[v] <= 0.0)
            continue;
        last = v;
        cum += p[v];
        if (u < cum)
            return (int32_t)v;
    }
    return (int32_t)last;
}

// summary of the routing of context position t (the last token) in the last pass
static cJSON *trace_layers(struct moe_model *m, size_t t)
{
    cJSON *a = cJSON_CreateArray();
    for (size_t i = 0; i < m->n_moe_layers; i++) {
        const struct moe_layer *l = m->ops->moe_layer_at(m, i);
        cJSON *lj = cJSON_CreateObject(), *ex = cJSON_CreateArray(), *gs = cJSON_CreateArray();
        cJSON_AddItemToArray(a, lj);
        cJSON_AddNumberToObject(lj, "layer", (double)l->c.index);
        for (size_t s = 0; s < l->S; s++) {
            size_t j = t * l->S + s;
            if (l->route.sel[j] < 0)
                continue;
            cJSON_AddItemToArray(ex, cJSON_CreateNumber(l->route.sel[j]));
            cJSON_AddItemToArray(gs, cJSON_CreateNumber((double)l->route.gate[j]));
        }
        cJSON_AddItemToObject(lj, "experts", ex);
        cJSON_AddItemToObject(lj, "gates", gs);
    }
    return a;
}

static char *token_text(const struct moe_vocab *v, int32_t id, size_t *len)
{
    *len = v->len[id];
    return v->tok[id];
}

int cmd_generate(int argc, char **argv)
{
    static const struct option opts[] = { CLI_COMMON_OPTIONS,
                                          { "checkpoint", required_argument, NULL, OPT_CKPT },
                                          { "prompt", required_argument, NULL, OPT_PROMPT },
                                          { "tokens", required_argument, NULL, OPT_TOKENS },
                                          { "temperature", required_argument, NULL, OPT_TEMP },
                                          { "top-k", required_argument, NULL, OPT_TOPK },
                                          { "trace", no_argument, NULL, OPT_TRACE },
                                          { 0, 0, 0, 0 } };
    const char *cmd = "generate";
    struct cli_common c;
    struct gen_opts o = { .tokens = 64, .temperature = 1.0 };
    struct cli_ckpt k;
    memset(&k, 0, sizeof k);
    int32_t *ids = NULL, *tok = NULL;
    float *logits = NULL, *work = NULL;
    double *p = NULL;
    cJSON *out = NULL, *steps = NULL;
    char *text = NULL;
    size_t text_len = 0;
    cli_common_init(&c);
    int rc = cli_parse(argc, argv, cmd, opts, &c, on_opt, &o);
    if (rc == -1) {
        fputs(usage, stdout);
        rc = 0;
        goto done;
    }
    if (rc || (rc = cli_setup_compute(cmd, &c)))
        goto done;
    if (!o.ckpt || !o.prompt) {
        rc = cli_error(cmd, 2, "options '--checkpoint' and '--prompt' are required (see 'moe help generate')");
        goto done;
    }
    if (c.config || c.out) {
        rc = cli_error(cmd, 2, "option '%s' does not apply: the config is the checkpoint's and the text goes to stdout",
                       c.config ? "--config" : "--out");
        goto done;
    }
    if ((rc = cli_ckpt_refuse_model_sets(cmd, "--set", c.sets, c.n_sets)) ||
        (rc = cli_ckpt_load(cmd, o.ckpt, c.sets, c.n_sets, c.ignore_memory, gen_batch, NULL, NULL, 0, &k)))
        goto done;
    struct moe_model *m = &k.model;
    if (m->task != MOE_TASK_LM || !k.data.has_text) {
        rc = cli_error(cmd, 2, "'%s' is a '%s' model, not a language model (generate needs a transformer trained on text)",
                       o.ckpt, m->ops->type);
        goto done;
    }
    if (m->n_moe_layers && m->ops->set_eval_capacity)
        m->ops->set_eval_capacity(m, 0.0);
    const struct moe_vocab *v = &k.data.corpus.vocab;
    size_t V = v->n, C = k.data.train.n_ctx, plen = strlen(o.prompt);
    size_t total = plen + (size_t)o.tokens;
    ids = malloc(total * sizeof *ids);
    tok = calloc(C + 1, sizeof *tok);
    logits = malloc(C * V * sizeof *logits);
    work = malloc(V * sizeof *work);
    p = malloc(V * sizeof *p);
    if (!ids || !tok || !logits || !work || !p) {
        rc = cli_error(cmd, 1, "out of memory");
        goto done;
    }
    size_t n = moe_tokenize(v, (const uint8_t *)o.prompt, plen, ids, NULL), n_prompt = n;
    uint64_t seed = c.seed >= 0 ? (uint64_t)c.seed : k.rc.train.seed;
    struct moe_rng rng = moe_rng_make(seed, MOE_RNG_GENERATE, 0);
    if (o.trace) {
        out = cJSON_CreateObject();
        cJSON_AddStringToObject(out, "checkpoint", o.ckpt);
        cJSON_AddStringToObject(out, "prompt", o.prompt);
        cJSON_AddNumberToObject(out, "prompt_tokens", (double)n_prompt);
        cJSON_AddNumberToObject(out, "seed", (double)seed);
        cJSON_AddNumberToObject(out, "temperature", o.temperature);
        if (o.top_k)
            cJSON_AddNumberToObject(out, "top_k", (double)o.top_k);
        else
            cJSON_AddNullToObject(out, "top_k");
        steps = cJSON_CreateArray();
    }
    struct moe_err err = { 0 };
    struct moe_batch_kd kd = { .logits_out = logits };
    for (uint64_t i = 0; i < (uint64_t)o.tokens; i++) {
        size_t w = n < C ? n : C;
        memset(tok, 0, (C + 1) * sizeof *tok);
        memcpy(tok, ids + (n - w), w * sizeof *tok);
        struct moe_batch b = { .n = 1, .tok = tok, .kd = &kd };
        if (moe_model_run(m, &b, 0, NULL, &err)) {
            rc = cli_fail(cmd, &err);
            goto done;
        }
        int32_t id = sample(logits + (w - 1) * V, V, &o, &rng, i, work, p);
        ids[n++] = id;
        if (steps) {
            size_t len;
            const char *s = token_text(v, id, &len);
            cJSON *sj = cJSON_CreateObject();
            cJSON_AddItemToArray(steps, sj);
            cJSON_AddNumberToObject(sj, "index", (double)i);
            cJSON_AddNumberToObject(sj, "id", id);
            char *t = strndup(s, len);
            cJSON_AddStringToObject(sj, "text", t ? t : "");
            free(t);
            if (m->n_moe_layers)
                cJSON_AddItemToObject(sj, "layers", trace_layers(m, w - 1));
        }
    }
    // the prompt as given, then the generated tokens' bytes
    size_t cap = plen + 1;
    for (size_t j = n_prompt; j < n; j++)
        cap += v->len[ids[j]];
    if (!(text = malloc(cap))) {
        rc = cli_error(cmd, 1, "out of memory");
        goto done;
    }
    memcpy(text, o.prompt, plen);
    text_len = plen;
    for (size_t j = n_prompt; j < n; j++) {
        memcpy(text + text_len, v->tok[ids[j]], v->len[ids[j]]);
        text_len += v->len[ids[j]];
    }
    text[text_len] = '\0';
    if (out) {
        cJSON_AddStringToObject(out, "text", text);
        cJSON_AddNumberToObject(out, "generated_tokens", (double)(n - n_prompt));
        cJSON_AddItemToObject(out, "tokens", steps);
        steps = NULL;
        rc = cli_print_json(cmd, out);
    } else {
        fwrite(text, 1, text_len, stdout);
        fputc('\n', stdout);
        fflush(stdout);
    }
    cli_log(&c, "moe generate: %zu prompt tokens, %lld generated (seed %llu)", n_prompt, o.tokens,
            (unsigned long long)seed);
done:
    cJSON_Delete(steps);
    cJSON_Delete(out);
    free(text);
    free(ids);
    free(tok);
    free(logits);
    free(work);
    free(p);
    cli_ckpt_release(&k);
    cli_common_release(&c);
    return rc;
}
