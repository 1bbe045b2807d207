// cmd_compress.c: `moe compress` makes a smaller model from a trained
// checkpoint: whole experts dropped from every sparse layer (with their
// router rows), FFN neurons masked by an importance score, weights stored as
// int8 with scales. It evaluates the model before and after on a split, as
// `moe eval` does, and writes DIR/model.safetensors (readable by every command
// that reads a checkpoint), DIR/config.json (the model's config: n_expert
// after expert pruning) and DIR/summary.json. The steps, in this order:
//   1. --prune-experts N: the checkpoint's model runs over --prune-data in
//      evaluation mode; each sparse layer's experts are scored by the tokens
//      routed to them (usage), the sum of their gate weights (importance), or
//      at random (--seed), and the N lowest go (compress/prune.h).
//   2. --prune-neurons F: the FFN units of the (pruned) model are scored (l1,
//      l2, or taylor: |sum w g| with g the loss's gradient over --prune-data)
//      and the fraction F of lowest score is zeroed, within each FFN (layer) or
//      ranked over all of them (global); the masks go in the file as
//      NAME.pruned (U8, 1 = pruned unit) beside the weights.
//   3. --quantize int8: the tensors --targets names, stored as I8 with their
//      scales (compress/quant.h). The model evaluated "after" holds exactly the
//      dequantized weights the file gives every reader.
// Everything is checked and computed before DIR is claimed: a refusal writes
// nothing.
#include <fnmatch.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>

#include "ckpt.h"
#include "cli.h"
#include "compress/prune.h"
#include "compress/quant.h"
#include "moe/moe_layer.h"
#include "run_dir.h"
#include "train_run.h"

static const char *const usage =
    "usage: moe compress --checkpoint CKPT --out DIR [--prune-experts N] [--prune-by usage|importance|random]\n"
    "                    [--prune-neurons FRACTION] [--neuron-score l1|l2|taylor] [--neuron-scope layer|global]\n"
    "                    [--prune-data train|valid|test] [--quantize int8] [--scheme symmetric|asymmetric]\n"
    "                    [--granularity channel|tensor] [--targets GLOB[,GLOB...]] [--data train|valid|test]\n"
    "                    [--config FILE] [--set key.path=value]... [--seed N] [--threads N] [--force]\n"
    "                    [--ignore-memory] [--quiet]\n"
    "Compress a trained checkpoint, evaluate it before and after on a split (--data, default the\n"
    "held-out split, as moe eval), and write DIR/model.safetensors, config.json and summary.json\n"
    "(parameters, bytes on disk and resident per token, and the quality, before and after).\n"
    "At least one of:\n"
    "  --prune-experts N     drop the N lowest-scoring experts of every sparse layer, with their\n"
    "                        router rows (the model then has n_expert - N experts; at least\n"
    "                        n_expert_used must remain). --prune-by: usage (tokens routed to the\n"
    "                        expert, the default), importance (the sum of its gate weights) on\n"
    "                        --prune-data (default train), or random (--seed; default train.seed).\n"
    "  --prune-neurons F     zero the fraction F (0 <= F < 1) of FFN units (experts, shared experts,\n"
    "                        dense FFNs) of lowest --neuron-score: l1 (default), l2 (of the unit's\n"
    "                        weights: rows of w1, w3, columns of w2) or taylor (|sum of w times the\n"
    "                        loss gradient on --prune-data|); --neuron-scope layer (each FFN loses F\n"
    "                        of its units, the default) or global (all units ranked together).\n"
    "  --quantize int8       store the weight matrices --targets names (fnmatch globs, '*' crosses\n"
    "                        dots; default every 2-d and 3-d tensor) as int8 with float scales:\n"
    "                        --scheme symmetric (default) or asymmetric (with zero points),\n"
    "                        --granularity channel (one scale per output row, default) or tensor.\n"
    "The steps run in that order. --config FILE and --set may point data.* elsewhere (as for moe\n"
    "eval); no model.* key may change. DIR is refused if it holds a run, unless --force.\n";

enum { OPT_CKPT = OPT_FIRST_CMD, OPT_DATA, OPT_PRUNE_EXPERTS, OPT_PRUNE_BY, OPT_PRUNE_NEURONS, OPT_NEURON_SCORE,
       OPT_NEURON_SCOPE, OPT_PRUNE_DATA, OPT_QUANTIZE, OPT_SCHEME, OPT_GRAN, OPT_TARGETS };

enum prune_by { BY_USAGE, BY_IMPORTANCE, BY_RANDOM };
static const char *const by_names[] = { "usage", "importance", "random" };
static const char *const score_names[] = { "l1", "l2", "taylor" };

#define MAX_GLOBS 32

struct compress_opts {
    const char *ckpt, *split, *prune_split;
    long long prune_experts; // 0: none
    enum prune_by by;
    double neurons; // < 0: none
    enum moe_neuron_score score;
    int global;
    int quantize;
    struct moe_quant_spec spec;
    char globs_buf[1024];
    const char *globs[MAX_GLOBS];
    size_t n_globs;
};

static int parse_split(const char *opt, const char *arg, const char **ret)
{
    if (strcmp(arg, "train") != 0 && strcmp(arg, "test") != 0 && strcmp(arg, "valid") != 0)
        return cli_error("compress", 2, "option '%s': expected train, valid or test, got '%s'", opt, arg);
    *ret = strcmp(arg, "train") == 0 ? "train" : strcmp(arg, "valid") == 0 ? "valid" : "test";
    return 0;
}

static int pick(const char *opt, const char *arg, const char *const *names, int n, const char *list)
{
    for (int i = 0; i < n; i++)
        if (strcmp(arg, names[i]) == 0)
            return i;
    return -cli_error("compress", 2, "option '%s': expected %s, got '%s'", opt, list, arg);
}

static int on_opt(void *ctx, int opt, const char *arg)
{
    struct compress_opts *o = ctx;
    long long v;
    int i;
    switch (opt) {
    case OPT_CKPT:
        o->ckpt = arg;
        return 0;
    case OPT_DATA:
        return parse_split("--data", arg, &o->split);
    case OPT_PRUNE_DATA:
        return parse_split("--prune-data", arg, &o->prune_split);
    case OPT_PRUNE_EXPERTS:
        if (cli_parse_ll(arg, 1, 1 << 20, &v))
            return cli_error("compress", 2, "option '--prune-experts': expected a positive number of experts, got '%s'",
                             arg);
        o->prune_experts = v;
        return 0;
    case OPT_PRUNE_BY:
        if ((i = pick("--prune-by", arg, by_names, 3, "usage, importance or random")) < 0)
            return -i;
        o->by = (enum prune_by)i;
        return 0;
    case OPT_PRUNE_NEURONS: {
        char *end;
        double f = strtod(arg, &end);
        if (end == arg || *end || !(f >= 0.0 && f < 1.0))
            return cli_error("compress", 2, "option '--prune-neurons': expected a fraction in [0, 1), got '%s'", arg);
        o->neurons = f;
        return 0;
    }
    case OPT_NEURON_SCORE:
        if ((i = pick("--neuron-score", arg, score_names, 3, "l1, l2 or taylor")) < 0)
            return -i;
        o->score = (enum moe_neuron_score)i;
        return 0;
    case OPT_NEURON_SCOPE: {
        static const char *const scopes[] = { "layer", "global" };
        if ((i = pick("--neuron-scope", arg, scopes, 2, "layer or global")) < 0)
            return -i;
        o->global = i;
        return 0;
    }
    case OPT_QUANTIZE:
        if (strcmp(arg, "int8") != 0)
            return cli_error("compress", 2, "option '--quantize': expected int8, got '%s'", arg);
        o->quantize = 1;
        return 0;
    case OPT_SCHEME: {
        static const char *const schemes[] = { "symmetric", "asymmetric" };
        if ((i = pick("--scheme", arg, schemes, 2, "symmetric or asymmetric")) < 0)
            return -i;
        o->spec.scheme = i ? MOE_QUANT_ASYM : MOE_QUANT_SYM;
        return 0;
    }
    case OPT_GRAN: {
        static const char *const grans[] = { "channel", "tensor" };
        if ((i = pick("--granularity", arg, grans, 2, "channel or tensor")) < 0)
            return -i;
        o->spec.gran = i ? MOE_QUANT_PER_TENSOR : MOE_QUANT_PER_CHANNEL;
        return 0;
    }
    case OPT_TARGETS: {
        if (snprintf(o->globs_buf, sizeof o->globs_buf, "%s", arg) >= (int)sizeof o->globs_buf)
            return cli_error("compress", 2, "option '--targets': list too long");
        o->n_globs = 0;
        char *save = NULL;
        for (char *tok = strtok_r(o->globs_buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
            if (o->n_globs == MAX_GLOBS)
                return cli_error("compress", 2, "option '--targets': at most %d globs", MAX_GLOBS);
            o->globs[o->n_globs++] = tok;
        }
        if (!o->n_globs)
            return cli_error("compress", 2, "option '--targets' names no glob");
        return 0;
    }
    }
    return 2;
}

// The model's batch: the evaluation chunk, at most the larger split (both splits may be run).
static size_t compress_batch(const struct moe_run_cfg *rc, size_t n_train, size_t n_test, const void *ctx)
{
    (void)ctx;
    size_t rows = n_train > n_test ? n_train : n_test;
    size_t chunk = cli_ckpt_eval_chunk(rc, n_train);
    return chunk > rows && rows > 0 ? rows : chunk;
}

struct compress_run {
    const char *cmd;
    struct cli_common *c;
    struct compress_opts *o;
    struct cli_ckpt k;
    struct moe_config cfg2;  // the compressed model's config: the checkpoint's, n_expert after pruning
    struct moe_config cfg_run; // the run's (the checkpoint's with the overrides), n_expert after pruning
    struct moe_run_cfg rc2;  // of cfg_run: the compressed model is evaluated as the checkpoint's is
    struct moe_model m2;     // the compressed model (pruned; quantized targets dequantized)
    int have_m2;
    struct moe_stats st;
    size_t chunk;
    uint64_t seed;
    uint8_t **drop;          // (n_moe_layers) expert pruning: the experts dropped, or NULL
    double **escore;         // (n_moe_layers) their scores
    struct moe_ffn_masks masks; // m2's FFN masks: the checkpoint's, and those of --prune-neurons
    int neurons;             // --prune-neurons ran
    struct moe_quant_spec *spec; // (m2 params) how each tensor is stored; m2's gradient buffer then
                                 // holds its weights before dequantization (what the writer quantizes)
    cJSON *summary, *what;
};

// What compress holds at its peak besides the run cli_ckpt_load counts (moe
// eval's: the data, the checkpoint's model, one set of statistics, which m2's
// replace, and the checkpoint's file, whole, until the output is written):
//   - m2, the compressed model, from make_m2 to the end: its parameters,
//     gradients and activations (for the checkpoint model's batch), with
//     n_expert - N experts after --prune-experts N;
//   - with m2, one at a time: --neuron-score taylor's gradient summed in doubles
//     (its floats go in m2's gradient buffer), freed before quantization;
//     --quantize's int8 values, scales and zero points, which the writer makes
//     (the weights it quantizes wait in m2's gradient buffer).
// The output, read back once written, takes the place of the checkpoint's file
// and the writer's buffers, freed before it. Sizes are below
// MOE_ESTIMATE_MAX_BYTES (moe_run_estimate checks), so these sums do not overflow.
static int m2_bytes(const struct compress_opts *o, const struct moe_run_cfg *rc2, enum moe_task task, size_t n_in,
                    size_t n_out, size_t max_batch, size_t *ret_bytes, struct moe_err *err)
{
    struct moe_model_estimate e;
    struct moe_params p = { 0 };
    struct moe_err ignored = { 0 };
    uint8_t *target = NULL;
    int ret = moe_run_estimate(rc2, NULL, task, n_in, n_out, 0, 0, max_batch, MOE_RUN_EVAL, &e, err);
    if (!ret)
        ret = moe_model_params_hp(&rc2->model, task, n_in, n_out, &p, err);
    size_t taylor = 0, quant = 0;
    if (!ret && o->neurons >= 0 && o->score == MOE_NEURON_TAYLOR)
        taylor = p.numel * sizeof(double);
    if (!ret && o->quantize) { // globs the run refuses later: every weight matrix
        if (!(target = calloc(p.n ? p.n : 1, 1)))
            ret = moe_error(err, MOE_ENOMEM, "out of memory");
        else if (moe_quant_select(&p, o->globs, o->n_globs, target, &ignored))
            moe_quant_select(&p, NULL, 0, target, &ignored);
        for (size_t i = 0; !ret && i < p.n; i++) {
            size_t groups, len;
            const struct moe_tensor *t = &p.t[i];
            if (target[i] && !moe_quant_groups(t->ndim, t->shape, o->spec.gran, &groups, &len, &ignored))
                quant += t->numel + groups * sizeof(float) * (o->spec.scheme == MOE_QUANT_ASYM ? 2 : 1);
        }
    }
    if (!ret)
        *ret_bytes = e.bytes_params + e.bytes_grads + e.bytes_activations + (taylor > quant ? taylor : quant);
    free(target);
    moe_params_release(&p);
    return ret;
}

// cli_extra_fn: m2_bytes of the model make_m2 builds (a pruning the run refuses
// later counts as none).
static int compress_extra(const struct moe_run_cfg *rc, enum moe_task task, size_t n_in, size_t n_out,
                          size_t max_batch, const void *ctx, size_t *ret_bytes, struct moe_err *err)
{
    const struct compress_run *r = ctx;
    size_t E = rc->model.n_expert, N = (size_t)r->o->prune_experts;
    int pruned = 0;
    if (N && N < E) {
        struct moe_config cfg = { 0 };
        struct moe_run_cfg rc2 = { 0 };
        struct moe_err ignored = { 0 };
        char set[64];
        snprintf(set, sizeof set, "model.n_expert=%zu", E - N);
        pruned = !moe_config_copy(&cfg, &r->k.cfg, &ignored) && !moe_config_set(&cfg, set, &ignored) &&
                 !moe_run_cfg_parse(&rc2, &cfg, &ignored) &&
                 !m2_bytes(r->o, &rc2, task, n_in, n_out, max_batch, ret_bytes, &ignored);
        moe_run_cfg_release(&rc2);
        moe_config_release(&cfg);
    }
    return pruned ? 0 : m2_bytes(r->o, rc, task, n_in, n_out, max_batch, ret_bytes, err);
}

static const struct moe_dataset *split_data(const struct moe_data *d, const char *split)
{
    if (strcmp(split, "train") == 0)
        return &d->train;
    if (strcmp(split, "valid") == 0 && d->valid.n)
        return &d->valid;
    return &d->test;
}

static const char *split_name(const struct moe_data *d, const char *split)
{
    return strcmp(split, "valid") == 0 && !d->valid.n ? "test" : split;
}

// Evaluate m on split into a JSON object (moe eval's figures).
static int eval_json(struct compress_run *r, struct moe_model *m, const char *split, cJSON **ret)
{
    struct moe_err err = { 0 };
    struct moe_eval_row row;
    const struct moe_dataset *d = split_data(&r->k.data, split);
    moe_stats_release(&r->st);
    memset(&r->st, 0, sizeof r->st);
    if (moe_train_stats_init(&r->st, m, &r->k.data.train, &err) ||
        moe_evaluate(m, d, split_name(&r->k.data, split), r->chunk, r->k.rc.train.active_threshold, &r->st, &row, &err))
        return cli_fail(r->cmd, &err);
    if (!(*ret = run_output_eval_json(&row)))
        return cli_error(r->cmd, 1, "out of memory");
    return 0;
}

// ---------------------------------------------------------------- expert pruning

static int prune_experts_check(struct compress_run *r)
{
    const struct moe_model *m = &r->k.model;
    const struct moe_model_hp *hp = &r->k.rc.model;
    long long N = r->o->prune_experts;
    if (!m->n_moe_layers)
        return cli_error(r->cmd, 2, "option '--prune-experts': '%s' is a '%s' model without sparse layers", r->o->ckpt,
                         m->ops->type);
    const struct moe_router_info *ri = moe_router_info(hp->moe.router.type);
    if (!ri->gate_weights)
        return cli_error(r->cmd, 2, "option '--prune-experts': the %s router has no router rows to drop (its table sends tokens to every expert)",
                         ri->name);
    size_t E = hp->n_expert, k = hp->n_expert_used ? hp->n_expert_used : 1;
    if ((size_t)N >= E || E - (size_t)N < k)
        return cli_error(r->cmd, 2,
                         "option '--prune-experts': dropping %lld of %zu experts leaves %lld, fewer than the %zu each token uses (model.n_expert_used)",
                         N, E, (long long)E - N, k);
    if (r->o->by == BY_IMPORTANCE && !ri->probs)
        return cli_error(r->cmd, 2, "option '--prune-by importance': the %s router has no gate weights", ri->name);
    return 0;
}

// Scores of every layer's experts, and which go.
static int prune_experts_select(struct compress_run *r)
{
    struct moe_model *m = &r->k.model;
    size_t L = m->n_moe_layers, E = r->k.rc.model.n_expert;
    struct moe_err err = { 0 };
    r->drop = calloc(L, sizeof *r->drop);
    r->escore = calloc(L, sizeof *r->escore);
    if (!r->drop || !r->escore)
        return cli_error(r->cmd, 1, "out of memory");
    struct moe_eval_row row;
    if (r->o->by != BY_RANDOM) {
        moe_stats_release(&r->st);
        memset(&r->st, 0, sizeof r->st);
        const struct moe_dataset *d = split_data(&r->k.data, r->o->prune_split);
        if (moe_train_stats_init(&r->st, m, &r->k.data.train, &err) ||
            moe_evaluate(m, d, split_name(&r->k.data, r->o->prune_split), r->chunk, r->k.rc.train.active_threshold, &r->st, &row, &err))
            return cli_fail(r->cmd, &err);
    }
    for (size_t l = 0; l < L; l++) {
        r->drop[l] = malloc(E);
        r->escore[l] = malloc(E * sizeof **r->escore);
        if (!r->drop[l] || !r->escore[l])
            return cli_error(r->cmd, 1, "out of memory");
        if (r->o->by == BY_RANDOM)
            moe_prune_random_scores(r->escore[l], E, r->seed, (uint32_t)l);
        else
            memcpy(r->escore[l], r->o->by == BY_USAGE ? r->st.route[l].routed : r->st.route[l].gate_sum,
                   E * sizeof(double));
        if (moe_prune_select(r->escore[l], E, (size_t)r->o->prune_experts, r->drop[l], &err))
            return cli_fail(r->cmd, &err);
    }
    return 0;
}

// The sparse layer whose tensor this is (its name starts with the layer's prefix and a dot), or -1.
static int layer_of(const struct moe_model *m, const char *name)
{
    for (size_t l = 0; l < m->n_moe_layers; l++) {
        const char *x = m->moe_layers[l]->prefix;
        size_t n = strlen(x);
        if (strncmp(name, x, n) == 0 && name[n] == '.')
            return (int)l;
    }
    return -1;
}

// dst (the pruned model's tensor) from src (the checkpoint's): the same, or
// the kept experts' rows of a sparse layer's tensor whose first dimension is E.
static int copy_pruned(struct compress_run *r, const char *name, float *dst, const struct moe_tensor *td,
                       const float *src, const struct moe_tensor *ts)
{
    int same = td->ndim == ts->ndim;
    for (int d = 0; same && d < td->ndim; d++)
        same = td->shape[d] == ts->shape[d];
    if (same) {
        memcpy(dst, src, ts->numel * sizeof *dst);
        return 0;
    }
    int l = layer_of(&r->k.model, name);
    size_t E = r->k.rc.model.n_expert;
    int rows_only = td->ndim == ts->ndim && ts->shape[0] == E && td->shape[0] == E - (size_t)r->o->prune_experts;
    for (int d = 1; rows_only && d < td->ndim; d++)
        rows_only = td->shape[d] == ts->shape[d];
    if (l < 0 || !r->drop || !rows_only)
        return cli_error(r->cmd, 1, "internal error: tensor '%s' of the pruned model has no counterpart", name);
    moe_prune_gather_rows(dst, src, E, ts->numel / E, r->drop[l]);
    return 0;
}

// The compressed model: the checkpoint's config with n_expert after pruning,
// its weights and state from the checkpoint's model.
static int make_m2(struct compress_run *r)
{
    struct moe_err err = { 0 };
    const char *text = moe_safetensors_meta(&r->k.f, "config");
    if (moe_config_parse(&r->cfg2, moe_run_schema(), moe_run_schema_len(), text, r->k.f.path, NULL, 0, &err))
        return cli_fail(r->cmd, &err);
    if (moe_config_copy(&r->cfg_run, &r->k.cfg, &err))
        return cli_fail(r->cmd, &err);
    if (r->drop) {
        char set[64];
        snprintf(set, sizeof set, "model.n_expert=%zu", r->k.rc.model.n_expert - (size_t)r->o->prune_experts);
        if (moe_config_set(&r->cfg2, set, &err) || moe_config_set(&r->cfg_run, set, &err))
            return cli_fail(r->cmd, &err);
    }
    if (moe_run_cfg_parse(&r->rc2, &r->cfg_run, &err))
        return cli_fail(r->cmd, &err);
    const struct moe_dataset *tr = &r->k.data.train;
    if (moe_model_create_hp(&r->m2, &r->rc2.model, NULL, tr->task, tr->n_in, tr->n_out, r->k.max_batch, &err))
        return cli_fail(r->cmd, &err);
    r->have_m2 = 1;
    struct moe_model *m = &r->k.model, *m2 = &r->m2;
    m2->seed = m->seed;
    for (size_t i = 0; i < m2->params.n; i++) {
        const struct moe_tensor *td = &m2->params.t[i];
        int j = moe_params_find(&m->params, td->name);
        if (j < 0)
            return cli_error(r->cmd, 1, "internal error: no tensor '%s' in the checkpoint's model", td->name);
        int rc = copy_pruned(r, td->name, moe_params_data(&m2->params, (int)i), td, moe_params_data(&m->params, j),
                             &m->params.t[j]);
        if (rc)
            return rc;
    }
    // state tensors (bias-balancing offsets): the same rule
    enum { MAX_STATE = 64 };
    struct moe_st_ref s1[MAX_STATE], s2[MAX_STATE];
    size_t n1 = m->ops->state ? m->ops->state(m, s1, MAX_STATE) : 0;
    size_t n2 = m2->ops->state ? m2->ops->state(m2, s2, MAX_STATE) : 0;
    if (n1 > MAX_STATE || n2 > MAX_STATE || n1 != n2)
        return cli_error(r->cmd, 1, "internal error: state tensors %zu and %zu", n1, n2);
    for (size_t i = 0; i < n2; i++) {
        if (s1[i].dtype != MOE_F32 || s2[i].dtype != MOE_F32 || strcmp(s1[i].name, s2[i].name) != 0)
            return cli_error(r->cmd, 1, "internal error: state tensor '%s' cannot be pruned", s2[i].name);
        struct moe_tensor t1 = { .ndim = s1[i].ndim }, t2 = { .ndim = s2[i].ndim };
        memcpy(t1.shape, s1[i].shape, sizeof t1.shape);
        memcpy(t2.shape, s2[i].shape, sizeof t2.shape);
        t1.numel = t2.numel = 1;
        for (int d = 0; d < t1.ndim; d++)
            t1.numel *= t1.shape[d];
        for (int d = 0; d < t2.ndim; d++)
            t2.numel *= t2.shape[d];
        int rc = copy_pruned(r, s2[i].name, (float *)s2[i].data, &t2, s1[i].data, &t1);
        if (rc)
            return rc;
    }
    // the FFN masks: the checkpoint's (kept when its experts are; run refuses pruning them then)
    if (moe_ffn_masks_init(&r->masks, &m2->params, &err) || (!r->drop && moe_ffn_masks_read(&r->masks, &r->k.f, &m2->params, &err)))
        return cli_fail(r->cmd, &err);
    return 0;
}

// Whether a checkpoint has pruned FFN units (a NAME.pruned tensor with a flag set).
static int has_pruned_units(const struct moe_st_file *f)
{
    size_t ls = strlen(MOE_PRUNED_SUFFIX);
    for (size_t i = 0; i < f->n; i++) {
        const struct moe_st_entry *e = &f->e[i];
        size_t len = strlen(e->name);
        if (len <= ls || strcmp(e->name + len - ls, MOE_PRUNED_SUFFIX) != 0 || e->dtype != MOE_U8)
            continue;
        for (size_t u = 0; u < e->numel; u++)
            if (((const uint8_t *)e->data)[u])
                return 1;
    }
    return 0;
}

// ---------------------------------------------------------------- neuron pruning

static int prune_neurons(struct compress_run *r)
{
    struct moe_model *m2 = &r->m2;
    struct moe_params *p = &m2->params;
    struct moe_err err = { 0 };
    if (!r->masks.n)
        return cli_error(r->cmd, 2, "option '--prune-neurons': the '%s' model has no FFN (NAME.w1 and NAME.w2) to prune",
                         m2->ops->type);
    const float *grad = NULL;
    int rc = 0;
    if (r->o->score == MOE_NEURON_TAYLOR) {
        // summed in doubles, then as floats in m2's gradient buffer (moe_split_gradient
        // leaves it zero; zeroed again below): no third copy of the parameters
        double *g = malloc(p->numel * sizeof *g);
        const struct moe_dataset *d = split_data(&r->k.data, r->o->prune_split);
        if (!g)
            rc = cli_error(r->cmd, 1, "out of memory");
        else if (moe_split_gradient(m2, d, r->chunk, g, &err))
            rc = cli_fail(r->cmd, &err);
        for (size_t i = 0; !rc && i < p->numel; i++)
            p->grad[i] = (float)g[i];
        free(g);
        grad = p->grad;
    }
    // per layer: each FFN has floor(F x its units) pruned; global: floor(F x all units) over all
    if (!rc && moe_ffn_masks_grow(&r->masks, p, r->o->score, grad, r->o->neurons, r->o->global, &err))
        rc = cli_fail(r->cmd, &err);
    r->neurons = !rc;
    if (grad)
        moe_params_zero_grad(p);
    return rc;
}

// ---------------------------------------------------------------- quantization

// Which tensors are quantized (each glob must name a 2-d or 3-d tensor), then
// their dequantized values in the model. The originals, which the writer
// quantizes, wait in m2's gradient buffer (the registry's layout): nothing
// takes a gradient after this step and evaluation (moe_model_run without
// gradients) does not touch it, so the weights are not copied a third time.
static int quantize(struct compress_run *r)
{
    struct moe_params *p = &r->m2.params;
    struct moe_err err = { 0 };
    uint8_t *target = malloc(p->n ? p->n : 1);
    if (!target)
        return cli_error(r->cmd, 1, "out of memory");
    if (moe_quant_select(p, r->o->globs, r->o->n_globs, target, &err)) {
        free(target);
        return cli_error(r->cmd, 2, "option '--targets': %s", err.msg);
    }
    r->spec = calloc(p->n ? p->n : 1, sizeof *r->spec);
    if (!r->spec) {
        free(target);
        return cli_error(r->cmd, 1, "out of memory");
    }
    memcpy(p->grad, p->data, p->numel * sizeof *p->grad);
    int rc = 0;
    for (size_t i = 0; i < p->n; i++) {
        const struct moe_tensor *t = &p->t[i];
        if (!target[i])
            continue;
        r->spec[i] = r->o->spec;
        float *w = moe_params_data(p, (int)i);
        if ((rc = moe_quant_fake(w, w, t->ndim, t->shape, r->o->spec, &err)) == MOE_ENOMEM)
            rc = cli_error(r->cmd, 1, "out of memory");
        else if (rc)
            rc = cli_error(r->cmd, 1, "%s: tensor '%s': %s", r->o->ckpt, t->name, err.msg);
        if (rc)
            break;
    }
    free(target);
    return rc;
}

// ---------------------------------------------------------------- figures

// Bytes a registry tensor takes in file f: its entry and, quantized, its scales and zero points.
static double stored_bytes(const struct moe_st_file *f, const char *name)
{
    const struct moe_st_entry *e = moe_safetensors_find(f, name);
    if (!e)
        return 0.0;
    double b = (double)(e->end - e->begin);
    const char *suffix[] = { MOE_QUANT_SCALE_SUFFIX, MOE_QUANT_ZERO_SUFFIX };
    for (int k = 0; e->dtype == MOE_I8 && k < 2; k++) {
        char part[2 * MOE_NAME_MAX];
        snprintf(part, sizeof part, "%s%s", name, suffix[k]);
        const struct moe_st_entry *s = moe_safetensors_find(f, part);
        if (s)
            b += (double)(s->end - s->begin);
    }
    return b;
}

// The share of tensor i a token reads: its sparse layer's experts per token
// over n_expert for a routed-expert tensor, else all of it.
static double token_share(const struct moe_model *m, int i)
{
    const struct moe_tensor *t = &m->params.t[i];
    int l = layer_of(m, t->name);
    if (!t->experts || l < 0)
        return 1.0;
    const struct moe_router_cfg *rc = &m->moe_layers[l]->c.router;
    return moe_router_experts_per_token(rc) / (double)rc->E;
}

struct footprint {
    double params, params_nonzero, bytes, resident;
};

static struct footprint footprint(const struct moe_model *m, const struct moe_st_file *f)
{
    struct footprint fp = { 0 };
    for (size_t i = 0; i < m->params.n; i++) {
        double b = stored_bytes(f, m->params.t[i].name);
        fp.params += (double)m->params.t[i].numel;
        fp.params_nonzero += (double)(m->params.t[i].numel - moe_params_zeros(&m->params, (int)i));
        fp.bytes += b;
        fp.resident += b * token_share(m, (int)i);
    }
    return fp;
}

static double file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (double)st.st_size : NAN;
}

static cJSON *footprint_json(const struct footprint *fp, double file_bytes)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "parameters", fp->params);
    cJSON_AddNumberToObject(o, "parameters_nonzero", fp->params_nonzero);
    cJSON_AddNumberToObject(o, "parameter_bytes", fp->bytes);
    cJSON_AddNumberToObject(o, "resident_bytes_per_token", fp->resident);
    cJSON_AddNumberToObject(o, "file_bytes", file_bytes);
    return o;
}

// summary.compress: what each step did.
static void describe(struct compress_run *r)
{
    cJSON *w = r->what = cJSON_CreateObject();
    const struct compress_opts *o = r->o;
    if (r->drop) {
        cJSON *pe = cJSON_AddObjectToObject(w, "prune_experts");
        cJSON_AddNumberToObject(pe, "experts", (double)o->prune_experts);
        cJSON_AddStringToObject(pe, "by", by_names[o->by]);
        if (o->by == BY_RANDOM)
            cJSON_AddNumberToObject(pe, "seed", (double)r->seed);
        else
            cJSON_AddStringToObject(pe, "data", split_name(&r->k.data, o->prune_split));
        cJSON *layers = cJSON_AddArrayToObject(pe, "layers");
        size_t E = r->k.rc.model.n_expert;
        for (size_t l = 0; l < r->k.model.n_moe_layers; l++) {
            cJSON *x = cJSON_CreateObject(), *kept = cJSON_AddArrayToObject(x, "kept"),
                  *dropped = cJSON_AddArrayToObject(x, "dropped"), *score = cJSON_AddArrayToObject(x, "score");
            cJSON_AddStringToObject(x, "layer", r->k.model.moe_layers[l]->prefix);
            for (size_t e = 0; e < E; e++) {
                cJSON_AddItemToArray(r->drop[l][e] ? dropped : kept, cJSON_CreateNumber((double)e));
                cJSON_AddItemToArray(score, cJSON_CreateNumber(r->escore[l][e]));
            }
            cJSON_AddItemToArray(layers, x);
        }
    }
    if (r->neurons) {
        const struct moe_ffn_masks *k = &r->masks;
        cJSON *pn = cJSON_AddObjectToObject(w, "prune_neurons");
        cJSON_AddNumberToObject(pn, "fraction", o->neurons);
        cJSON_AddStringToObject(pn, "score", score_names[o->score]);
        cJSON_AddStringToObject(pn, "scope", o->global ? "global" : "layer");
        if (o->score == MOE_NEURON_TAYLOR)
            cJSON_AddStringToObject(pn, "data", split_name(&r->k.data, o->prune_split));
        cJSON_AddItemToObject(pn, "ffns", cli_masks_json(k));
        cJSON *tensors = cJSON_AddArrayToObject(pn, "tensors");
        for (size_t i = 0; i < k->n; i++) {
            for (int j = 0; j < MOE_FFN_N; j++) {
                int t = k->ffn[i].t[j];
                if (t < 0)
                    continue;
                size_t z = moe_params_zeros(&r->m2.params, t), numel = r->m2.params.t[t].numel;
                cJSON *y = cJSON_CreateObject();
                cJSON_AddStringToObject(y, "tensor", r->m2.params.t[t].name);
                cJSON_AddNumberToObject(y, "elements", (double)numel);
                cJSON_AddNumberToObject(y, "zeros", (double)z);
                cJSON_AddNumberToObject(y, "sparsity", numel ? (double)z / (double)numel : 0.0);
                cJSON_AddItemToArray(tensors, y);
            }
        }
    }
    if (r->spec) {
        cJSON *q = cJSON_AddObjectToObject(w, "quantize");
        cJSON_AddStringToObject(q, "type", "int8");
        cJSON_AddStringToObject(q, "scheme", moe_quant_scheme_name(o->spec.scheme));
        cJSON_AddStringToObject(q, "granularity", moe_quant_gran_name(o->spec.gran));
        cJSON *g = cJSON_AddArrayToObject(q, "targets"), *t = cJSON_AddArrayToObject(q, "tensors");
        for (size_t i = 0; i < o->n_globs; i++)
            cJSON_AddItemToArray(g, cJSON_CreateString(o->globs[i]));
        for (size_t i = 0; i < r->m2.params.n; i++)
            if (r->spec[i].scheme != MOE_QUANT_NONE)
                cJSON_AddItemToArray(t, cJSON_CreateString(r->m2.params.t[i].name));
    }
}

// ---------------------------------------------------------------- writing

static int write_model(struct compress_run *r, const char *path, struct moe_err *err)
{
    const struct moe_st_file *f = &r->k.f;
    struct moe_params *p = &r->m2.params;
    size_t n_extra = 0, cap = 3 + r->masks.n;
    struct moe_st_ref *extra = calloc(cap, sizeof *extra);
    char *cfg_json = moe_config_to_json(&r->cfg2, 0), *what = cJSON_PrintUnformatted(r->what);
    int rc = 0;
    if (!extra || !cfg_json || !what) {
        rc = moe_error(err, MOE_ENOMEM, "out of memory");
        goto out;
    }
    // the checkpoint's vocabulary and feature statistics, as they are
    const char *keep[] = { MOE_VOCAB_TENSOR, "data.mean", "data.std" };
    for (size_t i = 0; i < 3; i++) {
        const struct moe_st_entry *e = moe_safetensors_find(f, keep[i]);
        if (!e)
            continue;
        struct moe_st_ref *x = &extra[n_extra++];
        *x = (struct moe_st_ref){ .name = e->name, .dtype = e->dtype, .ndim = e->ndim, .data = e->data };
        memcpy(x->shape, e->shape, sizeof x->shape);
    }
    if (moe_ffn_masks_pruned(&r->masks, r->masks.n)) // NAME.pruned, when any unit is
        n_extra += moe_ffn_masks_refs(&r->masks, p, extra + n_extra);
    struct moe_st_meta meta[8];
    size_t n_meta = 0;
    meta[n_meta++] = (struct moe_st_meta){ "format", "moe" };
    meta[n_meta++] = (struct moe_st_meta){ "format_version", "1" };
    meta[n_meta++] = (struct moe_st_meta){ "moe_version", MOE_VERSION };
    meta[n_meta++] = (struct moe_st_meta){ "model", r->m2.ops->type };
    meta[n_meta++] = (struct moe_st_meta){ "loss", r->m2.loss_name };
    meta[n_meta++] = (struct moe_st_meta){ "config", cfg_json };
    meta[n_meta++] = (struct moe_st_meta){ "compress", what };
    const char *langs = moe_safetensors_meta(f, MOE_LANGUAGES_META);
    if (langs)
        meta[n_meta++] = (struct moe_st_meta){ MOE_LANGUAGES_META, langs };
    // the writer quantizes the weights before dequantization (the same q, scales and zero points)
    if (r->spec) {
        float *deq = p->data;
        p->data = p->grad;
        rc = moe_model_save_quant(&r->m2, path, r->spec, extra, n_extra, meta, n_meta, err);
        p->data = deq;
    } else {
        rc = moe_model_save_quant(&r->m2, path, NULL, extra, n_extra, meta, n_meta, err);
    }
out:
    free(extra);
    free(cfg_json);
    free(what);
    return rc;
}

static void run_release(struct compress_run *r)
{
    for (size_t l = 0; l < r->k.model.n_moe_layers; l++) {
        if (r->drop)
            free(r->drop[l]);
        if (r->escore)
            free(r->escore[l]);
    }
    free(r->drop);
    free(r->escore);
    moe_ffn_masks_release(&r->masks);
    free(r->spec);
    moe_stats_release(&r->st);
    if (r->have_m2)
        moe_model_release(&r->m2);
    moe_run_cfg_release(&r->rc2);
    moe_config_release(&r->cfg2);
    moe_config_release(&r->cfg_run);
    cli_ckpt_release(&r->k);
    cJSON_Delete(r->summary);
    cJSON_Delete(r->what);
}

static int run(struct compress_run *r, char **sets, size_t n_sets)
{
    const char *cmd = r->cmd;
    struct compress_opts *o = r->o;
    struct cli_common *c = r->c;
    int rc;
    if ((rc = run_dir_check(cmd, c, c->out, RUN_DIR_NEW)) ||
        (rc = cli_ckpt_load(cmd, o->ckpt, (const char *const *)sets, n_sets, c->ignore_memory, compress_batch,
                            compress_extra, r, 1, &r->k)))
        return rc;
    const struct moe_st_file *f = &r->k.f;
    if (o->quantize)
        for (size_t i = 0; i < r->k.model.params.n; i++) {
            const struct moe_st_entry *e = moe_safetensors_find(f, r->k.model.params.t[i].name);
            if (e && e->dtype == MOE_I8)
                return cli_error(cmd, 2, "option '--quantize': '%s' is quantized already (tensor '%s' is I8); quantize the F32 checkpoint it came from",
                                 o->ckpt, e->name);
        }
    if (o->prune_experts && (rc = prune_experts_check(r)))
        return rc;
    if (o->prune_experts && has_pruned_units(f))
        return cli_error(cmd, 2, "option '--prune-experts': '%s' has pruned FFN units (NAME" MOE_PRUNED_SUFFIX " tensors); prune the experts of the checkpoint it came from first",
                         o->ckpt);
    r->chunk = cli_ckpt_eval_chunk(&r->k.rc, r->k.data.train.n);
    r->seed = c->seed >= 0 ? (uint64_t)c->seed : r->k.rc.train.seed;
    cJSON *before = NULL, *after = NULL;
    if ((rc = eval_json(r, &r->k.model, o->split, &before)))
        return rc;
    r->summary = cli_summary_new(cmd, &r->k.cfg, r->seed);
    cJSON *q = cJSON_CreateObject();
    cJSON_AddStringToObject(q, "split", split_name(&r->k.data, o->split));
    cJSON_AddItemToObject(q, "before", before);
    if ((o->prune_experts && (rc = prune_experts_select(r))) || (rc = make_m2(r)) ||
        (o->neurons >= 0 && (rc = prune_neurons(r))) || (o->quantize && (rc = quantize(r))) ||
        (rc = eval_json(r, &r->m2, o->split, &after))) {
        cJSON_Delete(q);
        return rc;
    }
    cJSON_AddItemToObject(q, "after", after);
    describe(r);
    // DIR is claimed once everything is known; then the model, its config, the summary
    struct run_dir lock = { 0 };
    struct moe_err err = { 0 };
    char *path = NULL, *cfg_path = NULL;
    if ((rc = run_dir_claim(cmd, c, c->out, RUN_DIR_NEW, &lock))) {
        cJSON_Delete(q);
        return rc;
    }
    char *cfg_json = moe_config_to_json(&r->cfg2, 1);
    cJSON *cfg_obj = cfg_json ? cJSON_Parse(cfg_json) : NULL;
    free(cfg_json);
    if (!(path = cli_path(c->out, "model.safetensors", &err)) || !(cfg_path = cli_path(c->out, "config.json", &err)) ||
        !cfg_obj || write_model(r, path, &err) || cli_write_json(cfg_path, cfg_obj, &err)) {
        rc = err.code ? cli_fail(cmd, &err) : cli_error(cmd, 1, "out of memory");
        goto done;
    }
    // the footprints: the checkpoint's as its file stores it (the parameters before any
    // pruning of neurons: the checkpoint's as read), the output's as written. The
    // checkpoint's bytes are freed first: the output, read back whole, takes their place.
    struct footprint fb = footprint(&r->k.model, f);
    moe_safetensors_close(&r->k.f);
    struct moe_st_file out = { 0 };
    if (moe_safetensors_open(path, &out, &err)) {
        rc = cli_fail(cmd, &err);
        goto done;
    }
    struct footprint fa = footprint(&r->m2, &out);
    moe_safetensors_close(&out);
    // run id over the checkpoint's path and the options besides the config
    char id[17], opts[512];
    snprintf(opts, sizeof opts, "%s|%lld|%s|%s|%.17g|%s|%d|%d|%d|%d|%s|%" PRIu64, o->split, o->prune_experts,
             by_names[o->by], o->prune_split, o->neurons, score_names[o->score], o->global, o->quantize,
             (int)o->spec.scheme, (int)o->spec.gran, o->n_globs ? o->globs[0] : "", r->seed);
    const char *extra[2 + MAX_GLOBS] = { o->ckpt, opts };
    for (size_t g = 0; g < o->n_globs; g++)
        extra[2 + g] = o->globs[g];
    cli_run_id(id, cmd, &r->k.cfg, extra, 2 + o->n_globs, &c->tags);
    cli_summary_identity(r->summary, id, c->sets, c->n_sets, &c->tags);
    cJSON_AddStringToObject(r->summary, "checkpoint", o->ckpt);
    cJSON_AddStringToObject(r->summary, "model", r->m2.ops->type);
    cJSON_AddItemToObject(r->summary, "compress", r->what);
    r->what = NULL;
    cJSON_AddItemToObject(r->summary, "before", footprint_json(&fb, file_size(o->ckpt)));
    cJSON_AddItemToObject(r->summary, "after", footprint_json(&fa, file_size(path)));
    cJSON_AddItemToObject(r->summary, "quality", q);
    q = NULL;
    rc = cli_write_summary(cmd, c->out, r->summary);
    cli_log(c, "moe compress: %s -> %s: %.0f -> %.0f parameter bytes", o->ckpt, path, fb.bytes, fa.bytes);
done:
    cJSON_Delete(q);
    cJSON_Delete(cfg_obj);
    free(path);
    free(cfg_path);
    run_dir_release(&lock);
    return rc;
}

int cmd_compress(int argc, char **argv)
{
    static const struct option opts[] = { CLI_COMMON_OPTIONS,
                                          CLI_FORCE_OPTION,
                                          { "checkpoint", required_argument, NULL, OPT_CKPT },
                                          { "data", required_argument, NULL, OPT_DATA },
                                          { "prune-experts", required_argument, NULL, OPT_PRUNE_EXPERTS },
                                          { "prune-by", required_argument, NULL, OPT_PRUNE_BY },
                                          { "prune-neurons", required_argument, NULL, OPT_PRUNE_NEURONS },
                                          { "neuron-score", required_argument, NULL, OPT_NEURON_SCORE },
                                          { "neuron-scope", required_argument, NULL, OPT_NEURON_SCOPE },
                                          { "prune-data", required_argument, NULL, OPT_PRUNE_DATA },
                                          { "quantize", required_argument, NULL, OPT_QUANTIZE },
                                          { "scheme", required_argument, NULL, OPT_SCHEME },
                                          { "granularity", required_argument, NULL, OPT_GRAN },
                                          { "targets", required_argument, NULL, OPT_TARGETS },
                                          { 0, 0, 0, 0 } };
    const char *cmd = "compress";
    struct cli_common c;
    struct compress_opts o = { .split = "test", .prune_split = "train", .neurons = -1.0,
                               .spec = { MOE_QUANT_SYM, MOE_QUANT_PER_CHANNEL } };
    struct compress_run r;
    memset(&r, 0, sizeof r);
    r.cmd = cmd;
    r.c = &c;
    r.o = &o;
    char **sets = NULL;
    size_t n_sets = 0, n_config = 0;
    cli_common_init(&c);
    int rc = cli_parse(argc, argv, cmd, opts, &c, on_opt, &o);
    if (rc == -1) {
        fputs(usage, stdout);
        rc = 0;
        goto done;
    }
    if (rc || (rc = cli_setup_compute(cmd, &c)))
        goto done;
    if (!o.ckpt) {
        rc = cli_error(cmd, 2, "option '--checkpoint' is required (see 'moe help compress')");
        goto done;
    }
    if (!c.out) {
        rc = cli_error(cmd, 2, "option '--out' is required (see 'moe help compress')");
        goto done;
    }
    if (!o.prune_experts && o.neurons < 0 && !o.quantize) {
        rc = cli_error(cmd, 2, "nothing to do: give --prune-experts, --prune-neurons or --quantize (see 'moe help compress')");
        goto done;
    }
    if (o.n_globs && !o.quantize) {
        rc = cli_error(cmd, 2, "option '--targets' applies to --quantize only");
        goto done;
    }
    if ((rc = cli_ckpt_config_sets(cmd, &c, &sets, &n_sets, &n_config)) ||
        (rc = cli_ckpt_refuse_model_sets(cmd, "--config", (const char *const *)sets, n_config)) ||
        (rc = cli_ckpt_refuse_model_sets(cmd, "--set", (const char *const *)sets + n_config, n_sets - n_config)))
        goto done;
    rc = run(&r, sets, n_sets);
done:
    run_release(&r);
    for (size_t i = 0; i < n_sets; i++)
        free(sets[i]);
    free(sets);
    cli_common_release(&c);
    return rc;
}
