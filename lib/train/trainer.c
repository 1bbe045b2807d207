// trainer.c: the training loop and split evaluation.
// A step: gather a batch -> model forward/backward (gradients of the batch
// mean) -> optimizer over the flat buffer at the step's learning rate
// (moe_lr_at). With train.accumulate = N a step sums the weighted gradients
// of N micro-batches first (accumulate). After each epoch the training split
// is evaluated when a metrics row or the stopping criterion needs it.
// moe_train_ex reads as run_init, run_resume, then run_epochs: per epoch
// train_epoch (train_step per batch, with stops and checkpoints between) and
// eval_point (the evaluations, metrics rows and stopping criterion).
// Everything here is serial or thread-count independent, so a run's metrics
// and weights are byte-identical for any --threads. With hooks->device the
// steps run on a CUDA device (dev_step); the rest is the same.
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/gemm.h"
#include "core/rng.h"
#include "cuda/model.h"
#include "cuda/ops.h"
#include "dist/ep.h"
#include "moe/route_stats.h"
#include "train/train.h"

#define BIG 1e9

const struct moe_cfg_key moe_train_keys[] = {
    // training
    { "train.seed", MOE_CFG_INT, "1", 0, 4294967295.0, NULL, "seed of every random draw (init, data, order); --seed overrides" },
    { "train.epochs", MOE_CFG_INT, "20", 1, BIG, NULL, "maximum passes over the training split" },
    { "train.shuffle", MOE_CFG_BOOL, "true", 1, 0, NULL, "reshuffle mini-batches every epoch" },
    { "train.eval_every", MOE_CFG_INT, "1", 1, BIG, NULL, "write metrics every N epochs (and at epoch 0, the last epoch, and the criterion epoch)" },
    { "train.criterion", MOE_CFG_STR, "\"none\"", 1, 0, "none|loss|mse|accuracy", "stop when the training split reaches criterion_value on this metric" },
    { "train.criterion_split", MOE_CFG_STR, "\"train\"", 1, 0, "train|valid", "the split whose evaluation the criterion reads: train, or valid (the validation split: data.synthetic.n_valid, data.idx.valid_fraction, data.table.valid_fraction; for text data the corpus's validation part, the test rows)" },
    { "train.select", MOE_CFG_STR, "\"last\"", 1, 0, "last|best_valid_loss", "the parameters the run ends with: the last epoch's, or those of the evaluation with the lowest validation loss (kept in memory and in the checkpoint as train.best; model.safetensors and the summary's final rows are then that epoch's, selected_epoch names it)" },
    { "train.criterion_value", MOE_CFG_NUM, "0", -1e30, 1e30, NULL, "loss/mse: stop at or below; accuracy: stop at or above" },
    { "train.active_threshold", MOE_CFG_NUM, "0.05", 0, 1, NULL, "an expert is active when its mean mixing proportion exceeds this" },
    { "train.log_every", MOE_CFG_INT, "0", 0, BIG, NULL, "write a split=batch row to metrics.csv every N steps: training-mode means over those steps (0 = one per evaluation, over the steps since the last)" },
    { "train.checkpoint_every", MOE_CFG_INT, "0", 0, 1e12, NULL, "write DIR/checkpoint.safetensors every N training steps as well (0: only after each epoch and on SIGINT/SIGTERM)" },
    { "train.trainable", MOE_CFG_STR_LIST, "[]", 1, 0, NULL, "partial fine-tuning: train only the tensors whose names match one of these globs (fnmatch; [] = all); GLOB@A-B or GLOB@A selects only experts A..B (0-based, inclusive) of the expert tensors [E, out, in] it matches; --trainable adds to it" },
    { "train.freeze", MOE_CFG_STR_LIST, "[]", 1, 0, NULL, "keep the tensors whose names match one of these globs as they are (byte-identical); GLOB@A-B or GLOB@A keeps only experts A..B of the expert tensors it matches; --freeze adds to it" },
    { "train.max_batch_eval", MOE_CFG_INT, "4096", 1, 1 << 24, NULL, "rows per forward pass during evaluation (text: windows, at most optim.batch_size)" },
    { "train.prune.sparsity", MOE_CFG_NUM, "0", 0, 1, NULL, "iterative pruning: the fraction of FFN units (neurons of experts, shared experts, dense FFNs) pruned at the end of the schedule, below 1 (0: no schedule; units a checkpoint marks pruned stay pruned either way)" },
    { "train.prune.start", MOE_CFG_INT, "0", 0, 1e12, NULL, "the optimizer step the pruning schedule starts from" },
    { "train.prune.steps", MOE_CFG_INT, "1", 1, 1e12, NULL, "optimizer steps over which the sparsity rises to train.prune.sparsity (s_t = s (1 - (1 - (t - start) / steps)^3), Zhu & Gupta 2017)" },
    { "train.prune.every", MOE_CFG_INT, "1", 1, 1e12, NULL, "optimizer steps between two prunes (the masks stay fixed between them); the schedule's last step prunes too" },
    { "train.prune.score", MOE_CFG_STR, "\"l1\"", 1, 0, "l1|l2", "what ranks the live units at each prune: the l1 or l2 norm of the unit's weights (rows of w1, w3, columns of w2)" },
    { "train.prune.scope", MOE_CFG_STR, "\"layer\"", 1, 0, "layer|global", "layer: each FFN reaches the sparsity on its own; global: all FFNs' units ranked together" },
    { "train.qat.quantize", MOE_CFG_STR, "\"none\"", 1, 0, "none|int8", "quantization-aware training: the forward pass (training and evaluation) sees the targets' weights quantized to int8 and back, the backward pass uses the straight-through estimator" },
    { "train.qat.scheme", MOE_CFG_STR, "\"symmetric\"", 1, 0, "symmetric|asymmetric", "the int8 scheme (as moe compress --scheme)" },
    { "train.qat.granularity", MOE_CFG_STR, "\"channel\"", 1, 0, "channel|tensor", "one scale per output row, or per tensor (as moe compress --granularity)" },
    { "train.qat.targets", MOE_CFG_STR_LIST, "[]", 1, 0, NULL, "fnmatch globs of the weight matrices to quantize ([] = every 2-d and 3-d tensor, as moe compress --targets)" },
    { "train.accumulate", MOE_CFG_INT, "1", 1, 1e6, NULL, "gradient accumulation: each optimizer step sums the gradients of this many micro-batches of optim.batch_size rows (effective batch accumulate x batch_size); steps, epochs, log_every, checkpoint_every count optimizer steps" },
};
const size_t moe_train_keys_len = sizeof moe_train_keys / sizeof moe_train_keys[0];

static const char *const crits[] = { "none", "loss", "mse", "accuracy" }; // enum moe_criterion's names

const char *moe_criterion_name(enum moe_criterion c) { return crits[c]; }

int moe_train_cfg_parse(struct moe_train_cfg *c, const struct moe_config *cfg, struct moe_err *err)
{
    memset(c, 0, sizeof *c);
    c->seed = (uint64_t)moe_cfg_int(cfg, "train.seed");
    c->epochs = (uint64_t)moe_cfg_int(cfg, "train.epochs");
    c->shuffle = moe_cfg_bool(cfg, "train.shuffle");
    c->eval_every = (uint64_t)moe_cfg_int(cfg, "train.eval_every");
    const char *crit = moe_cfg_str(cfg, "train.criterion");
    for (size_t i = 0; i < sizeof crits / sizeof crits[0]; i++)
        if (strcmp(crit, crits[i]) == 0)
            c->criterion = (enum moe_criterion)i;
    c->criterion_value = moe_cfg_num(cfg, "train.criterion_value");
    c->criterion_valid = strcmp(moe_cfg_str(cfg, "train.criterion_split"), "valid") == 0;
    c->select_best = strcmp(moe_cfg_str(cfg, "train.select"), "best_valid_loss") == 0;
    c->active_threshold = moe_cfg_num(cfg, "train.active_threshold");
    c->log_every = (uint64_t)moe_cfg_int(cfg, "train.log_every");
    c->checkpoint_every = (uint64_t)moe_cfg_int(cfg, "train.checkpoint_every");
    c->max_batch_eval = (size_t)moe_cfg_int(cfg, "train.max_batch_eval");
    c->accumulate = (size_t)moe_cfg_int(cfg, "train.accumulate");
    c->prune.sparsity = moe_cfg_num(cfg, "train.prune.sparsity");
    c->prune.start = (uint64_t)moe_cfg_int(cfg, "train.prune.start");
    c->prune.steps = (uint64_t)moe_cfg_int(cfg, "train.prune.steps");
    c->prune.every = (uint64_t)moe_cfg_int(cfg, "train.prune.every");
    c->prune.score = strcmp(moe_cfg_str(cfg, "train.prune.score"), "l2") == 0 ? MOE_NEURON_L2 : MOE_NEURON_L1;
    c->prune.global = strcmp(moe_cfg_str(cfg, "train.prune.scope"), "global") == 0;
    c->qat = strcmp(moe_cfg_str(cfg, "train.qat.quantize"), "int8") == 0;
    c->qat_spec.scheme = strcmp(moe_cfg_str(cfg, "train.qat.scheme"), "asymmetric") == 0 ? MOE_QUANT_ASYM : MOE_QUANT_SYM;
    c->qat_spec.gran = strcmp(moe_cfg_str(cfg, "train.qat.granularity"), "tensor") == 0 ? MOE_QUANT_PER_TENSOR
                                                                                      : MOE_QUANT_PER_CHANNEL;
    int rc = moe_cfg_str_list(cfg, "train.trainable", &c->trainable, &c->n_trainable, err);
    if (!rc)
        rc = moe_cfg_str_list(cfg, "train.freeze", &c->freeze, &c->n_freeze, err);
    if (!rc)
        rc = moe_cfg_str_list(cfg, "train.qat.targets", &c->qat_targets, &c->n_qat_targets, err);
    if (!rc && c->prune.sparsity >= 1.0)
        rc = moe_error(err, MOE_ECONFIG, "key 'train.prune.sparsity' must be below 1 (a fraction of the units in [0, 1)), got %g",
                       c->prune.sparsity);
    if (rc)
        moe_train_cfg_release(c);
    return rc;
}

int moe_train_cfg_check(const struct moe_train_cfg *tc, const struct moe_optim_cfg *oc, struct moe_err *err)
{
    int rc = moe_optim_cfg_check(oc, err);
    if (rc)
        return rc;
    if (tc->prune.sparsity > 0 && tc->select_best)
        return moe_error(err, MOE_ECONFIG, "key 'train.select': 'best_valid_loss' cannot be combined with train.prune.sparsity (an earlier epoch's weights would not match the final masks)");
    if (tc->accumulate > 1 && (oc->type == MOE_OPTIM_GD || oc->batch_size == 0))
        return moe_error(err, MOE_ECONFIG, "key 'train.accumulate' (%zu) needs mini-batches: %s takes the whole training split in one step",
                         tc->accumulate, oc->type == MOE_OPTIM_GD ? "optim.type 'gd'" : "optim.batch_size 0");
    return 0;
}

void moe_train_cfg_release(struct moe_train_cfg *c)
{
    if (!c)
        return;
    free(c->trainable);
    free(c->freeze);
    free(c->qat_targets);
    memset(c, 0, sizeof *c);
}

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static struct moe_batch slice(const struct moe_dataset *d, size_t start, size_t n)
{
    struct moe_batch b = {
        .n = n,
        .x = d->x + start * d->n_in,
        .y = d->y ? d->y + start * d->n_out : NULL,
        .label = d->label ? d->label + start : NULL,
        .group = d->group ? d->group + start : NULL,
    };
    return b;
}

int moe_lm_batch_alloc(struct moe_lm_batch *b, size_t n, size_t C, struct moe_err *err)
{
    b->tok = malloc(n * (C + 1) * sizeof *b->tok);
    b->cls = malloc(n * (C + 1) * sizeof *b->cls);
    b->lang = malloc(n * sizeof *b->lang);
    b->bytes = malloc(n * sizeof *b->bytes);
    if (!b->tok || !b->cls || !b->lang || !b->bytes)
        return moe_error(err, MOE_ENOMEM, "out of memory for a batch of %zu windows", n);
    return 0;
}

void moe_lm_batch_release(struct moe_lm_batch *b)
{
    free(b->tok);
    free(b->cls);
    free(b->lang);
    free(b->bytes);
    memset(b, 0, sizeof *b);
}

struct moe_batch moe_lm_batch_fill(const struct moe_dataset *d, struct moe_lm_batch *lb, uint64_t seed,
                                   uint64_t epoch, size_t first, size_t n)
{
    const struct moe_text *t = d->text;
    size_t C = d->n_ctx;
    for (size_t i = 0; i < n; i++) {
        size_t seg, start;
        if (epoch > 0) {
            start = moe_text_random_start(t, C, seed, epoch, first + i, &seg);
        } else {
            start = d->win[first + i];
            seg = moe_text_seg_of(t, start);
        }
        memcpy(lb->tok + i * (C + 1), t->tok + start, (C + 1) * sizeof *lb->tok);
        memcpy(lb->cls + i * (C + 1), t->cls + start, (C + 1) * sizeof *lb->cls);
        lb->lang[i] = t->seg[seg].lang;
        lb->bytes[i] = t->off[start + C + 1] - t->off[start + 1];
    }
    struct moe_batch b = { .n = n, .tok = lb->tok, .cls = lb->cls, .lang = lb->lang, .bytes = lb->bytes };
    return b;
}

// moe_evaluate's passes, each on m, or with dev (a training run on a CUDA
// device, cuda/model.h) on the device model holding m's weights.
// Every row of a split (language models: its fixed windows) in chunks of at
// most `chunk` rows (capped at the model's batch): fn(ctx, batch, share of
// the split's rows) for each, in order; stops at the first error.
typedef int (*chunk_fn)(void *ctx, const struct moe_batch *b, double share, struct moe_err *err);
static int for_chunks(const struct moe_model *m, const struct moe_dataset *d, size_t chunk, chunk_fn fn, void *ctx,
                      struct moe_err *err)
{
    if (chunk > m->max_batch)
        chunk = m->max_batch;
    int lm = d->task == MOE_TASK_LM;
    size_t rows = lm ? d->n_win : d->n;
    struct moe_lm_batch lb = { 0 };
    int rc = lm ? moe_lm_batch_alloc(&lb, chunk, d->n_ctx, err) : 0;
    for (size_t start = 0; !rc && start < rows; start += chunk) {
        size_t n = rows - start < chunk ? rows - start : chunk;
        struct moe_batch b = lm ? moe_lm_batch_fill(d, &lb, 0, 0, start, n) : slice(d, start, n);
        moe_threads_adapt();
        rc = fn(ctx, &b, (double)n / (double)rows, err);
    }
    moe_lm_batch_release(&lb);
    return rc;
}

struct eval_ctx {
    struct moe_model *m;
    struct moe_cuda_model *dev;
    struct moe_stats *s;
};
static int eval_rows(void *ctx, const struct moe_batch *b, double share, struct moe_err *err)
{
    struct eval_ctx *e = ctx;
    (void)share;
    return e->dev ? moe_cuda_model_eval(e->dev, b, e->s, err) : moe_model_run(e->m, b, 0, e->s, err);
}

static int evaluate(struct moe_model *m, struct moe_cuda_model *dev, const struct moe_dataset *d, const char *split,
                    size_t chunk, double active_threshold, struct moe_stats *s, struct moe_eval_row *ret,
                    struct moe_err *err)
{
    moe_stats_reset(s);
    struct eval_ctx e = { m, dev, s };
    int rc = for_chunks(m, d, chunk, eval_rows, &e, err);
    if (rc)
        return rc;
    memset(ret, 0, sizeof *ret);
    ret->split = split;
    moe_eval_row_fill(ret, s, d->task, active_threshold);
    return 0;
}

int moe_evaluate(struct moe_model *m, const struct moe_dataset *d, const char *split, size_t chunk,
                 double active_threshold, struct moe_stats *s, struct moe_eval_row *ret, struct moe_err *err)
{
    return evaluate(m, NULL, d, split, chunk, active_threshold, s, ret, err);
}

int moe_evaluate_on(struct moe_model *m, struct moe_cuda_model *dev, const struct moe_dataset *d, const char *split,
                    size_t chunk, double active_threshold, struct moe_stats *s, struct moe_eval_row *ret,
                    struct moe_err *err)
{
    return evaluate(m, dev, d, split, chunk, active_threshold, s, ret, err);
}

struct grad_ctx {
    struct moe_model *m;
    double *g;
};
static int grad_rows(void *ctx, const struct moe_batch *b, double share, struct moe_err *err)
{
    struct grad_ctx *c = ctx;
    struct moe_params *p = &c->m->params;
    moe_params_zero_grad(p);
    int rc = moe_model_run(c->m, b, 1, NULL, err);
    for (size_t i = 0; !rc && i < p->numel; i++) // the batch mean's share of the split mean
        c->g[i] += share * (double)p->grad[i];
    return rc;
}

int moe_split_gradient(struct moe_model *m, const struct moe_dataset *d, size_t chunk, double *g, struct moe_err *err)
{
    memset(g, 0, m->params.numel * sizeof *g);
    if (!(d->task == MOE_TASK_LM ? d->n_win : d->n) || !chunk)
        return moe_error(err, MOE_EINVAL, "no rows to take the gradient over");
    struct grad_ctx c = { m, g };
    int rc = for_chunks(m, d, chunk, grad_rows, &c, err);
    moe_params_zero_grad(&m->params);
    return rc;
}

void moe_eval_row_fill(struct moe_eval_row *r, const struct moe_stats *s, enum moe_task task, double active_threshold)
{
    r->n = s->n;
    double n = s->n ? (double)s->n : NAN;
    r->loss = s->loss / n;
    r->mse = s->sq_err / n;
    r->accuracy = task != MOE_TASK_REGRESSION ? (double)s->correct / n : NAN;
    if (task == MOE_TASK_LM)
        r->mse = NAN;
    r->bits_per_byte = task == MOE_TASK_LM && s->bytes > 0 ? s->loss / (M_LN2 * s->bytes) : NAN;
    r->lang_loss = s->lang_loss;
    r->lang_tokens = s->lang_tokens;
    r->lang_bytes = s->lang_bytes;
    r->n_lang = s->n_lang;
    r->expert_lang_mi = NAN;
    r->gate_entropy = s->n_expert ? s->gate_entropy / n : NAN;
    r->active_experts = s->n_expert ? (double)moe_stats_active_experts(s, active_threshold) : NAN;
    r->expert_region_mi = s->n_expert && s->contingency ? moe_stats_expert_region_mi(s) : NAN;
    r->n_expert = s->n_expert;
    r->route = s->route;
    r->n_route = s->n_route;
    double *f[] = { &r->aux_loss, &r->z_loss, &r->load_cv, &r->importance_cv, &r->load_max_mean,
                    &r->dropped_fraction, &r->router_entropy, &r->expert_label_mi };
    size_t nf = sizeof f / sizeof *f;
    for (size_t i = 0; i < nf; i++)
        *f[i] = s->n_route ? 0.0 : NAN;
    for (size_t l = 0; l < s->n_route; l++) {
        const struct moe_route_acc *a = &s->route[l];
        double tok = a->tokens ? (double)a->tokens : NAN;
        double v[] = { a->weight > 0 ? a->aux / a->weight : NAN, a->weight > 0 ? a->z / a->weight : NAN,
                       moe_cv(a->routed, a->E), moe_cv(a->gate_sum, a->E), moe_max_mean(a->routed, a->E),
                       moe_route_acc_dropped_fraction(a), a->has_probs ? a->entropy / tok : NAN,
                       a->G2 ? moe_route_acc_label_mi_part(a, 0) : moe_route_acc_label_mi(a) };
        for (size_t i = 0; i < nf; i++)
            *f[i] += v[i] / (double)s->n_route;
        if (a->G2 > 1)
            r->expert_lang_mi = (l ? r->expert_lang_mi : 0.0) + moe_route_acc_label_mi_part(a, 1) / (double)s->n_route;
    }
}

static int criterion_met(enum moe_criterion metric, double value, const struct moe_eval_row *r)
{
    switch (metric) {
    case MOE_CRIT_LOSS: return r->loss <= value;
    case MOE_CRIT_MSE: return r->mse <= value;
    case MOE_CRIT_ACCURACY: return r->accuracy >= value;
    default: return 0;
    }
}

// Gate means for a row: a per-run buffer of E doubles.
static void fill_gate_mean(struct moe_eval_row *r, const struct moe_stats *s, double *buf)
{
    if (!s->n_expert || !s->n)
        return;
    for (size_t e = 0; e < s->n_expert; e++)
        buf[e] = s->gate_sum[e] / (double)s->n;
    r->gate_mean = buf;
}

// A split=batch row from the training steps accumulated in sb, which is then reset.
static int batch_row(struct moe_stats *sb, enum moe_task task, double thr, uint64_t step, uint64_t epoch,
                     moe_eval_cb cb, void *ctx, struct moe_err *err)
{
    if (!sb->n)
        return 0;
    struct moe_eval_row r;
    memset(&r, 0, sizeof r);
    moe_eval_row_fill(&r, sb, task, thr);
    r.split = "batch";
    r.step = step;
    r.epoch = epoch;
    int rc = cb ? cb(ctx, &r, err) : 0;
    moe_stats_reset(sb);
    return rc;
}

// Name the first tensor of the registry whose values in buf (data or grad) are not finite.
static const char *first_nonfinite(const struct moe_params *p, const float *buf, const char **ret_kind)
{
    for (size_t t = 0; t < p->n; t++) {
        const float *v = buf + p->t[t].offset;
        for (size_t i = 0; i < p->t[t].numel; i++)
            if (!isfinite(v[i])) {
                *ret_kind = isnan(v[i]) ? "nan" : "inf";
                return p->t[t].name;
            }
    }
    return NULL;
}

// The largest |w| over all weights, and the tensor holding it (all finite).
static double largest_weight(const struct moe_params *p, const char **ret_name)
{
    double big = -1.0;
    *ret_name = p->n ? p->t[0].name : "?";
    for (size_t t = 0; t < p->n; t++) {
        const float *v = p->data + p->t[t].offset;
        for (size_t i = 0; i < p->t[t].numel; i++)
            if (fabs(v[i]) > big) {
                big = fabs(v[i]);
                *ret_name = p->t[t].name;
            }
    }
    return big;
}

int moe_train_stats_init(struct moe_stats *s, const struct moe_model *m, const struct moe_dataset *d,
                         struct moe_err *err)
{
    int lm = d->task == MOE_TASK_LM;
    size_t n_label = lm ? MOE_N_BYTE_CLASS * d->n_group : d->task == MOE_TASK_CLASSIFICATION ? d->n_out : d->n_group;
    int rc;
    if ((rc = moe_stats_init(s, m->n_expert, lm ? 0 : d->n_group, err)) ||
        (rc = moe_stats_init_routing(s, m, n_label, err)) ||
        (lm && (rc = moe_stats_init_lang(s, d->n_group, err))))
        return rc;
    for (size_t i = 0; lm && i < s->n_route; i++)
        s->route[i].G2 = d->n_group;
    return 0;
}

int moe_train(struct moe_model *m, const struct moe_data *data, const struct moe_config *cfg, moe_eval_cb cb,
              void *ctx, struct moe_train_result *ret, struct moe_err *err)
{
    struct moe_train_hooks h = { .row = cb, .ctx = ctx };
    return moe_train_ex(m, data, cfg, &h, ret, err);
}

// ---- moe_train_ex, one part of a run at a time ----

// A run: the settings, what the optimizer updates, the buffers a step and an
// evaluation use, and where the run stands (ck.pos).
struct run {
    struct moe_model *m;
    const struct moe_dataset *tr, *te;
    const struct moe_dataset *va;    // the validation split, or NULL (text: its validation part is te)
    int crit_valid;                  // the criterion reads the validation split (va, or te for text)
    int select_best;                 // train.select = best_valid_loss
    float *best;                     // (best_n) the snapshot of the best validation evaluation (ck.best)
    const struct moe_train_hooks *hooks;
    uint64_t seed, epochs, eval_every, ckpt_every, log_every;
    int use_crit, lm, shuffled;
    enum moe_criterion crit;
    double crit_value, thr;
    size_t bs, chunk;                // rows of a training (micro-)batch, of an evaluation pass
    size_t accum;                    // micro-batches per optimizer step (train.accumulate)
    uint64_t steps_per_epoch;        // optimizer steps per epoch: ceil(rows / (bs x accum))
    uint64_t run_steps;              // train.epochs x steps_per_epoch, the schedule's length
    struct moe_optim_seg *segs;      // (n_seg) what the optimizer updates
    size_t n_seg;
    struct moe_optim_seg *units;     // (n_unit) the gradient norm's units (g and n; grad_norm)
    size_t n_unit;
    float *acc;                      // accum > 1: the segments' gradients summed so far, one after another
    size_t numel;                    // floats in the segments, one after another
    // Data parallelism (hooks->dist with N > 1 processes; see dp_step): this
    // rank's micro-batches' raw gradients (per_rank slots of dp_n floats), the
    // buffers of the exchange, and one micro-batch's statistics on the wire.
    struct moe_dist *dist;
    size_t per_rank;                 // micro-batches per rank: accum / N
    float *slots, *xsend, *xrecv, *xfull;
    double *wire, *wire_all;         // (per_rank, wire_n), (accum, wire_n)
    size_t wire_n;                   // moe_stats_pack's length + one has_probs flag per routed layer
    uint64_t dp_steps;               // steps exchanged in this call, their seconds and the bytes sent
    double dp_seconds, dp_bytes;
    struct moe_ep *ep;               // expert parallelism (hooks->expert_parallel; dist/ep.h), or NULL
    // With expert parallelism each process holds only its experts (core/params.h,
    // shard_size): the data-parallel sum covers the other tensors (xsegs, dp_n
    // floats), the experts' gradients are summed where they are (moe_ep_backward), and
    // the norm's expert terms are exchanged (grad_norm: nsq, nsq_all).
    int sharded;
    struct moe_optim_seg *xsegs;
    size_t n_xseg, dp_n;
    double *nsq, *nsq_all;
    size_t n_nsq;
    struct moe_optim_cfg oc;         // the optimizer's settings, for the learning-rate schedule
    struct moe_optim opt;
    // evaluation of the training and the test split (each row keeps pointers into its
    // own statistics until it is written), and training steps since the last batch row
    struct moe_stats st, ste, sb, sva;
    struct moe_stats sm;             // accum > 1: one micro-batch's statistics, added to sb in order
    struct moe_eval_row rtr, rte, rva;
    double *gm_train, *gm_test, *gm_valid; // (n_expert + 1) the rows' gate means
    uint32_t *perm;                  // (rows) the epoch's order, shuffled runs
    struct moe_dataset batch;        // a shuffled batch's rows
    struct moe_lm_batch lb;          // language models: a batch's windows
    float *teacher_logits, *teacher_hidden;
    struct moe_batch_kd kd; // what a training batch carries to the student (hooks->distill)
    struct moe_train_ckpt ck;
    // hooks->device: the device model, and whether the host's weights and
    // moments are behind it (a step since the last dev_sync); with
    // hooks->distill the teacher's (evaluation passes only)
    struct moe_cuda_model *dev, *tdev;
    int dev_stale;
    // hooks->prune: the masks, the registry's elements they prune (numel
    // flags), and the schedule (train.prune.*); train.qat: the fake quantization
    struct moe_ffn_masks *masks;
    uint8_t *dead;
    struct moe_prune_cfg prune;
    struct moe_qat qat;
};

// What the run trains over the host's buffers (train.h moe_train_layout).
static struct moe_train_layout host_layout(const struct run *r)
{
    struct moe_params *p = &r->m->params;
    struct moe_lora *lora = r->hooks->lora;
    return (struct moe_train_layout){ p->data, p->grad, lora ? lora->p.data : NULL, lora ? lora->p.grad : NULL,
                                      lora ? lora->p.numel : 0 };
}

// What the optimizer updates (moe_train_segments) and the gradient norm's
// units (moe_train_norm_units) over the host's buffers; applies the adapters
// to the model.
static int train_parts(struct run *r, struct moe_err *err)
{
    const struct moe_train_hooks *h = r->hooks;
    const struct moe_params *p = &r->m->params;
    uint8_t *const *fe = h->frozen ? h->frozen_experts : NULL;
    const struct moe_train_layout b = host_layout(r);
    size_t n_seg = moe_train_segments(p, h->frozen, fe, &b, NULL),
           n_unit = moe_train_norm_units(p, h->frozen, fe, &b, NULL);
    r->segs = malloc(n_seg * sizeof *r->segs);
    r->units = malloc((n_unit ? n_unit : 1) * sizeof *r->units);
    if (!r->segs || !r->units)
        return moe_error(err, MOE_ENOMEM, "out of memory for %zu segments and %zu gradient norm units", n_seg,
                         n_unit);
    r->n_seg = moe_train_segments(p, h->frozen, fe, &b, r->segs);
    r->n_unit = moe_train_norm_units(p, h->frozen, fe, &b, r->units);
    if (h->lora)
        moe_lora_apply(h->lora, &r->m->params);
    return 0;
}

// The teacher's output buffers, once the teacher is found to fit the student
// (none on a device: its passes stay there, moe_cuda_model_set_teacher).
static int teacher_alloc(struct run *r, struct moe_err *err)
{
    const struct moe_model *m = r->m, *teacher = r->hooks->distill->teacher;
    size_t bs = r->bs, rows = bs * (r->lm ? r->tr->n_ctx : 1);
    if (teacher->n_out != m->n_out || teacher->n_in != m->n_in || teacher->task != m->task || bs > teacher->max_batch)
        return moe_error(err, MOE_ESHAPE, "the teacher (%zu inputs, %zu outputs, batches up to %zu) does not match the student (%zu inputs, %zu outputs, batches of %zu)",
                         teacher->n_in, teacher->n_out, teacher->max_batch, m->n_in, m->n_out, bs);
    const int dev = r->hooks->device != NULL;
    if (!dev && !(r->teacher_logits = malloc(rows * m->n_out * sizeof *r->teacher_logits)))
        return moe_error(err, MOE_ENOMEM, "out of memory for the teacher's logits (%zu x %zu)", rows, m->n_out);
    if (!r->hooks->distill->sym)
        return 0;
    if (!m->hidden_per_row || teacher->hidden_per_row != m->hidden_per_row)
        return moe_error(err, MOE_ESHAPE, "MoEBERT distillation needs teacher and student with block outputs of one shape (%zu and %zu floats per row)",
                         teacher->hidden_per_row, m->hidden_per_row);
    if (!dev && !(r->teacher_hidden = malloc(bs * m->hidden_per_row * sizeof *r->teacher_hidden)))
        return moe_error(err, MOE_ENOMEM, "out of memory for the teacher's hidden states (%zu x %zu)", bs,
                         m->hidden_per_row);
    return 0;
}

// train.select = best_valid_loss: the snapshot is the parameters' flat buffer (padding included),
// then every F32 state tensor of the model (bias-balancing offsets) in the model's order; hash tables
// do not change after fit. snapshot(m, NULL) is its size in floats; restore copies it back.
// Copy the parameters and the F32 state tensors to out (snapshot) or back from
// in (restore); either may be NULL. Returns the size in floats.
static size_t copy_state(struct moe_model *m, float *out, const float *in)
{
    size_t n = m->params.numel;
    if (out)
        memcpy(out, m->params.data, n * sizeof *out);
    if (in)
        memcpy(m->params.data, in, n * sizeof *in);
    struct moe_st_ref refs[64];
    size_t k = m->ops->state ? m->ops->state(m, refs, 64) : 0;
    for (size_t i = 0; i < k && i < 64; i++) {
        if (refs[i].dtype != MOE_F32)
            continue;
        size_t len = 1;
        for (int d = 0; d < refs[i].ndim; d++)
            len *= refs[i].shape[d];
        if (out)
            memcpy(out + n, refs[i].data, len * sizeof *out);
        if (in)
            memcpy((void *)refs[i].data, in + n, len * sizeof *in);
        n += len;
    }
    return n;
}

static size_t snapshot(struct moe_model *m, float *out) { return copy_state(m, out, NULL); }
static void restore(struct moe_model *m, const float *in) { copy_state(m, NULL, in); }

static int dp_init(struct run *r, struct moe_dist *d, struct moe_err *err);

// Rows of a training (micro-)batch for n training rows (the whole split for
// gd or batch_size 0, at most the model's max_batch), optimizer steps per
// epoch (micro-batches / train.accumulate, rounded up) and in the run.
static size_t step_shape(const struct moe_train_cfg *tc, const struct moe_optim_cfg *oc, size_t n, size_t max_batch,
                         uint64_t *ret_per_epoch, uint64_t *ret_run)
{
    size_t bs = oc->batch_size;
    if (oc->type == MOE_OPTIM_GD || bs == 0 || bs > n)
        bs = n;
    if (bs > max_batch)
        bs = max_batch;
    size_t step_rows = bs * (tc->accumulate > 1 ? tc->accumulate : 1);
    uint64_t per = n && step_rows ? (n + step_rows - 1) / step_rows : 0;
    *ret_per_epoch = per;
    *ret_run = per && tc->epochs > UINT64_MAX / per ? UINT64_MAX : tc->epochs * per;
    return bs;
}

// ---- pruning and quantization-aware training (hooks->prune, train.prune, train.qat) ----

int moe_train_compress_check(const struct moe_model *m, size_t n_train, const struct moe_train_cfg *tc,
                             const struct moe_optim_cfg *oc, int masks, int device, int dist, int lora,
                             struct moe_err *err)
{
    const char *what = tc->qat ? "train.qat" : tc->prune.sparsity > 0 ? "train.prune" : masks ? "pruned FFN units (NAME.pruned)" : NULL;
    if (!what)
        return 0;
    if (device)
        return moe_error(err, MOE_EINVAL, "%s: training on a CUDA device does not support it yet (train on the CPU)", what);
    if (dist)
        return moe_error(err, MOE_EINVAL, "%s: training over several processes does not support it yet (run one process)", what);
    if (lora)
        return moe_error(err, MOE_ECONFIG, "%s cannot be combined with LoRA adapters", what);
    if (tc->prune.sparsity > 0 && !moe_ffn_find(&m->params, NULL, 0))
        return moe_error(err, MOE_ECONFIG, "key 'train.prune.sparsity': the '%s' model has no FFN (NAME.w1 and NAME.w2) to prune",
                         m->ops->type);
    uint64_t per, run;
    step_shape(tc, oc, n_train, m->max_batch, &per, &run);
    if (tc->prune.sparsity > 0 && tc->prune.start + tc->prune.steps > run)
        return moe_error(err, MOE_ECONFIG, "key 'train.prune.steps': the schedule ends after step %llu (train.prune.start + train.prune.steps), but the run has %llu optimizer steps",
                         (unsigned long long)(tc->prune.start + tc->prune.steps), (unsigned long long)run);
    if (tc->qat) {
        uint8_t *target = malloc(m->params.n ? m->params.n : 1);
        if (!target)
            return moe_error(err, MOE_ENOMEM, "out of memory");
        int rc = moe_quant_select(&m->params, tc->qat_targets, tc->n_qat_targets, target, err);
        free(target);
        if (rc) {
            moe_error_prefix(err, "key 'train.qat.targets': ");
            return MOE_ECONFIG;
        }
    }
    return 0;
}

// Both run in one process on the CPU, without adapters, so far. Masks: the
// pruned units' weights are zeroed once here; from then on their gradients
// are zeroed before every update (prune_grads), so with zero moments (a new
// run's, or a checkpoint's that kept them zero) the optimizer leaves them zero
// (AdamW and SGD's decay of a zero weight is zero). QAT: the registry holds
// the quantized weights during each training step's passes and each
// evaluation (qat.h), the float weights otherwise (checkpoints, the update).
static int compress_init(struct run *r, const struct moe_train_cfg *tc, const struct moe_optim_cfg *oc,
                         struct moe_err *err)
{
    const struct moe_train_hooks *h = r->hooks;
    struct moe_params *p = &r->m->params;
    int rc = moe_train_compress_check(r->m, r->tr->n, tc, oc, h->prune && moe_ffn_masks_pruned(h->prune, h->prune->n),
                                      h->device != NULL, h->dist && h->dist->size > 1, h->lora != NULL, err);
    if (rc)
        return rc;
    if (tc->prune.sparsity > 0 && !h->prune)
        return moe_error(err, MOE_EINVAL, "train.prune: the run has no FFN masks (hooks->prune)");
    if (h->prune && (r->masks = h->prune)->n) {
        if (!(r->dead = malloc(p->numel ? p->numel : 1)))
            return moe_error(err, MOE_ENOMEM, "out of memory for the pruning flags (%zu)", p->numel);
        moe_ffn_masks_apply(r->masks, p);
        moe_ffn_masks_dead(r->masks, p, r->dead);
    }
    r->prune = tc->prune;
    if (tc->qat && (rc = moe_qat_init(&r->qat, p, tc->qat_spec, tc->qat_targets, tc->n_qat_targets, err)))
        return rc;
    return 0;
}

// The gradients of the pruned elements zero, and with moments 1 their moments
// (a prune's new units), over the optimizer's segments (the registry's
// tensors, nothing else: no adapters here).
static void prune_grads(struct run *r, int moments)
{
    const float *base = r->m->params.data;
    size_t off = 0;
    for (size_t k = 0; k < r->n_seg; off += r->segs[k].n, k++) {
        const struct moe_optim_seg *sg = &r->segs[k];
        const uint8_t *d = r->dead + (sg->w - base);
        for (size_t j = 0; j < sg->n; j++) {
            if (!d[j])
                continue;
            sg->g[j] = 0.0f;
            if (moments && r->opt.m)
                r->opt.m[off + j] = 0.0f;
            if (moments && r->opt.v)
                r->opt.v[off + j] = 0.0f;
        }
    }
}

// After step t (steps taken): the schedule's prune, when one is due.
static int prune_step(struct run *r, uint64_t t, struct moe_err *err)
{
    double s;
    const struct moe_prune_cfg *c = &r->prune;
    if (!r->dead || !moe_prune_schedule(c->sparsity, c->start, c->steps, c->every, t, &s))
        return 0;
    struct moe_params *p = &r->m->params;
    int rc = moe_ffn_masks_grow(r->masks, p, c->score, NULL, s, c->global, err);
    if (rc)
        return rc;
    moe_ffn_masks_dead(r->masks, p, r->dead);
    prune_grads(r, 1);
    return 0;
}

static int qat_enter(struct run *r, struct moe_err *err)
{
    return r->qat.target ? moe_qat_enter(&r->qat, &r->m->params, err) : 0;
}
static void qat_leave(struct run *r) { moe_qat_leave(&r->qat, &r->m->params); }

// Settings, optimizer, statistics and buffers, at the start of a run. r is
// zeroed first: run_release frees what this allocated, whether it succeeded or not.
static int run_init(struct run *r, struct moe_model *m, const struct moe_data *data, const struct moe_train_cfg *tc,
                    const struct moe_optim_cfg *oc, const struct moe_train_hooks *hooks, struct moe_err *err)
{
    memset(r, 0, sizeof *r);
    r->m = m;
    r->tr = &data->train;
    r->te = &data->test;
    r->va = data->valid.n ? &data->valid : NULL;
    r->hooks = hooks;
    r->ck = (struct moe_train_ckpt){ .pos = { .criterion_epoch = -1 }, .opt = &r->opt, .batch_stats = &r->sb };
    r->seed = tc->seed;
    r->epochs = tc->epochs;
    r->eval_every = tc->eval_every;
    r->ckpt_every = tc->checkpoint_every;
    r->log_every = tc->log_every;
    r->crit = tc->criterion;
    r->crit_value = tc->criterion_value;
    r->use_crit = tc->criterion != MOE_CRIT_NONE;
    r->crit_valid = tc->criterion_valid;
    r->select_best = tc->select_best;
    r->ck.best_epoch = -1;
    r->thr = tc->active_threshold;
    r->chunk = tc->max_batch_eval;
    r->lm = r->tr->task == MOE_TASK_LM;
    const struct moe_dataset *tr = r->tr;
    int rc;
    if (hooks->device &&
        ((rc = moe_train_device_check(hooks->dist && hooks->dist->size > 1, err)) ||
         (rc = moe_cuda_use_device(hooks->device->id, err))))
        return rc;
    if ((rc = train_parts(r, err)) || (rc = compress_init(r, tc, oc, err)))
        return rc;
    size_t numel = 0;
    for (size_t k = 0; k < r->n_seg; k++)
        numel += r->segs[k].n;
    r->numel = numel;
    if ((rc = moe_optim_init(&r->opt, oc, numel, err)))
        return rc;
    size_t bs = step_shape(tc, oc, tr->n, m->max_batch, &r->steps_per_epoch, &r->run_steps);
    if (r->lm && r->chunk > bs)
        r->chunk = bs; // evaluation windows per pass: at most a training batch (memory grows with n_ctx)
    r->bs = bs;
    r->accum = tc->accumulate > 1 ? tc->accumulate : 1;
    size_t step_rows = bs * r->accum; // rows of an optimizer step (bs <= rows, accum <= 10^6: no overflow)
    r->oc = *oc;
    // shuffled when an optimizer step takes less than the split (accumulated or not)
    r->shuffled = tc->shuffle && step_rows < tr->n && !r->lm;
    if (r->crit_valid && !r->va && !r->lm)
        return moe_error(err, MOE_ECONFIG, "key 'train.criterion_split': 'valid' needs a validation split (data.synthetic.n_valid, data.idx.valid_fraction or data.table.valid_fraction)");
    if (r->select_best && !r->va && !r->lm)
        return moe_error(err, MOE_ECONFIG, "key 'train.select': 'best_valid_loss' needs a validation split (data.synthetic.n_valid, data.idx.valid_fraction or data.table.valid_fraction)");
    if (r->select_best) {
        r->ck.best_n = snapshot(m, NULL);
        if (!(r->best = malloc(r->ck.best_n * sizeof *r->best)))
            return moe_error(err, MOE_ENOMEM, "out of memory for the selected parameters (%zu floats)", r->ck.best_n);
        r->ck.best = r->best;
    }
    if ((rc = moe_train_stats_init(&r->st, m, tr, err)) || (rc = moe_train_stats_init(&r->ste, m, tr, err)) ||
        (rc = moe_train_stats_init(&r->sb, m, tr, err)) || (r->va && (rc = moe_train_stats_init(&r->sva, m, tr, err))))
        return rc;
    r->perm = malloc((tr->n ? tr->n : 1) * sizeof *r->perm);
    r->gm_train = calloc(m->n_expert + 1, sizeof *r->gm_train);
    r->gm_test = calloc(m->n_expert + 1, sizeof *r->gm_test);
    r->gm_valid = calloc(m->n_expert + 1, sizeof *r->gm_valid);
    if (!r->perm || !r->gm_train || !r->gm_test || !r->gm_valid)
        return moe_error(err, MOE_ENOMEM, "out of memory");
    // over processes the sum is dp_step's (and the experts' processes'), not r->acc
    int over = hooks->dist && hooks->dist->size > 1;
    if (r->accum > 1 && !over && !(r->acc = malloc((numel ? numel : 1) * sizeof *r->acc)))
        return moe_error(err, MOE_ENOMEM, "out of memory for the gradient accumulator (%zu floats)", numel);
    if (r->accum > 1 && (rc = moe_train_stats_init(&r->sm, m, tr, err)))
        return rc;
    if (hooks->dist && hooks->dist->size > 1 && (rc = dp_init(r, hooks->dist, err)))
        return rc;
    if ((r->lm && (rc = moe_lm_batch_alloc(&r->lb, bs, tr->n_ctx, err))) ||
        (hooks->distill && (rc = teacher_alloc(r, err))) ||
        (r->shuffled && (rc = moe_dataset_alloc(&r->batch, tr->task, bs, tr->n_in, tr->n_out, tr->group != NULL, err))))
        return rc;
    return 0;
}

static int resume_sharded(struct run *r, const struct moe_st_file *f, struct moe_err *err);

// A resumed run: the position, and the state outside the model (whose weights
// and state the caller loaded), from the checkpoint.
static int run_resume(struct run *r, struct moe_err *err)
{
    const struct moe_st_file *f = r->hooks->resume;
    struct moe_train_pos *pos = &r->ck.pos;
    int rc;
    if ((rc = moe_train_pos_read(f, pos, err)))
        return rc;
    if (r->sharded)
        rc = resume_sharded(r, f, err);
    else if (!(rc = moe_train_state_restore(f, &r->opt, &r->sb, err)) && r->select_best)
        rc = moe_train_best_read(f, r->best, r->ck.best_n, &r->ck.best_epoch, &r->ck.best_loss, err);
    if (rc)
        return rc;
    if (pos->finished)
        return moe_error(err, MOE_EINVAL, "'%s': the run is already complete (step %llu)", f->path,
                         (unsigned long long)pos->steps);
    return 0;
}

static void run_release(struct run *r)
{
    moe_cuda_model_free(r->dev);
    moe_cuda_model_free(r->tdev);
    moe_optim_release(&r->opt);
    free(r->segs);
    free(r->units);
    free(r->acc);
    moe_stats_release(&r->st);
    moe_stats_release(&r->ste);
    moe_stats_release(&r->sb);
    moe_stats_release(&r->sva);
    moe_stats_release(&r->sm);
    free(r->slots);
    free(r->xsend);
    free(r->xrecv);
    free(r->xfull);
    free(r->wire);
    free(r->wire_all);
    moe_ep_free(r->ep);
    if (r->xsegs != r->segs)
        free(r->xsegs);
    free(r->nsq);
    free(r->nsq_all);
    moe_dataset_release(&r->batch);
    moe_lm_batch_release(&r->lb);
    free(r->perm);
    free(r->teacher_logits);
    free(r->teacher_hidden);
    free(r->gm_train);
    free(r->gm_test);
    free(r->gm_valid);
    free(r->best);
    free(r->dead);
    moe_qat_release(&r->qat);
}

// Over processes, every rank leaves with the same status: rc, or another
// rank's failure (a hook that failed on rank 0 only, a micro-batch that failed
// on one rank).
static int agree(struct run *r, int rc, struct moe_err *err)
{
    return r->dist ? moe_dist_agree(r->dist, rc, err) : rc;
}

// ---- checkpoints of a run whose processes hold only their experts ----
// Rank 0 writes the file as one process would (its layout does not depend on
// N); the experts' parts stream to it as the writer reaches them
// (dist/whole.c).
static int write_whole(void *ctx, const struct moe_st_ref *const whole[MOE_WHOLE_N], struct moe_err *err)
{
    struct run *r = ctx;
    if (!r->hooks->checkpoint)
        return 0;
    r->ck.whole_m = whole[MOE_WHOLE_M];
    r->ck.whole_v = whole[MOE_WHOLE_V];
    r->ck.whole_best = whole[MOE_WHOLE_BEST];
    int rc = r->hooks->checkpoint(r->hooks->ctx, &r->ck, err);
    r->ck.whole_m = r->ck.whole_v = r->ck.whole_best = NULL;
    return rc;
}

static int checkpoint_sharded(struct run *r, struct moe_err *err)
{
    struct moe_whole_src src = { .m = r->opt.m, .v = r->opt.v, .best = r->ck.best,
                                 .best_extra = r->ck.best ? r->ck.best_n - r->m->params.numel : 0 };
    return moe_ep_write_whole(r->dist, &r->m->params, &src, write_whole, r, err);
}

// hooks->device: the host's weights and moments brought up to the device's
// (before an evaluation, a checkpoint, a fault's report). The gradients come
// too, for grad_fault.
static int dev_sync(struct run *r, struct moe_err *err)
{
    if (!r->dev || !r->dev_stale)
        return 0;
    int rc = moe_cuda_model_download(r->dev, r->m, &r->opt, err);
    if (!rc)
        r->dev_stale = 0;
    return rc;
}

// Hand the state to the checkpoint hook.
static int checkpoint(struct run *r, struct moe_err *err)
{
    int rc = dev_sync(r, err);
    if (rc)
        return rc;
    if (r->sharded)
        return agree(r, checkpoint_sharded(r, err), err);
    return agree(r, r->hooks->checkpoint ? r->hooks->checkpoint(r->hooks->ctx, &r->ck, err) : 0, err);
}

// A resumed sharded run: the moments and the selected snapshot are read whole
// and this process keeps its part.
static int resume_sharded(struct run *r, const struct moe_st_file *f, struct moe_err *err)
{
    const struct moe_params *p = &r->m->params;
    const size_t F = p->full_numel, n_state = r->best ? r->ck.best_n - p->numel : 0;
    struct moe_optim o = r->opt;
    o.m = r->opt.m ? moe_alloc(F, sizeof *o.m) : NULL;
    o.v = r->opt.v ? moe_alloc(F, sizeof *o.v) : NULL;
    o.numel = F;
    float *b = r->best ? moe_alloc(F + n_state, sizeof *b) : NULL;
    int rc;
    if ((r->opt.m && !o.m) || (r->opt.v && !o.v) || (r->best && !b))
        rc = moe_error(err, MOE_ENOMEM, "out of memory reading the optimizer's moments (%zu floats each)", F);
    else if (!(rc = moe_train_state_restore(f, &o, &r->sb, err)) &&
             !(r->best && (rc = moe_train_best_read(f, b, F + n_state, &r->ck.best_epoch, &r->ck.best_loss, err)))) {
        if (o.m)
            moe_params_from_full(p, o.m, r->opt.m);
        if (o.v)
            moe_params_from_full(p, o.v, r->opt.v);
        if (b) {
            moe_params_from_full(p, b, r->best);
            memcpy(r->best + p->numel, b + F, n_state * sizeof *b);
        }
        r->opt.t = o.t;
    }
    moe_free(o.m);
    moe_free(o.v);
    moe_free(b);
    return rc;
}

// Whether the stop flag is raised: in a run over processes, on any rank (the
// largest flag, a signal number, is raised on every rank), so that all stop
// after the same step.
static int stop_raised(struct run *r, int *stop, struct moe_err *err)
{
    volatile sig_atomic_t *f = r->hooks->stop;
    long long v = f ? *f : 0;
    if (r->dist) {
        int rc = moe_dist_max(r->dist, v, &v, err);
        if (rc)
            return rc;
        if (v && f)
            *f = (sig_atomic_t)v;
    }
    *stop = v != 0;
    return 0;
}

// A raised stop flag ends the run after a checkpoint.
static int stop_if_asked(struct run *r, struct moe_err *err)
{
    int stop, rc = stop_raised(r, &stop, err);
    if (rc || !stop)
        return rc;
    rc = checkpoint(r, err);
    if (rc)
        return rc;
    return moe_error(err, MOE_EINTR, "stopped at step %llu (epoch %llu)", (unsigned long long)r->ck.pos.steps,
                     (unsigned long long)r->ck.pos.epoch);
}

// Rows start .. start + n - 1 of the epoch's order as a batch.
static struct moe_batch gather_batch(struct run *r, uint64_t epoch, size_t start, size_t n)
{
    const struct moe_dataset *tr = r->tr;
    if (r->lm)
        return moe_lm_batch_fill(tr, &r->lb, r->seed, epoch, start, n);
    if (!r->shuffled)
        return slice(tr, start, n);
    struct moe_dataset *batch = &r->batch;
    for (size_t i = 0; i < n; i++) {
        size_t src = r->perm[start + i];
        memcpy(batch->x + i * tr->n_in, tr->x + src * tr->n_in, tr->n_in * sizeof(float));
        if (tr->y)
            memcpy(batch->y + i * tr->n_out, tr->y + src * tr->n_out, tr->n_out * sizeof(float));
        if (tr->label)
            batch->label[i] = tr->label[src];
        if (tr->group)
            batch->group[i] = tr->group[src];
    }
    return slice(batch, 0, n);
}

// A non-finite training loss: name the first non-finite weight tensor, or with
// finite weights the largest weight (the forward pass overflowed).
static int loss_fault(const struct moe_params *p, uint64_t step, uint64_t epoch, double step_loss,
                      struct moe_err *err)
{
    const char *big_name = NULL, *kind = "nan";
    double big = largest_weight(p, &big_name);
    const char *bad = first_nonfinite(p, p->data, &kind);
    if (bad)
        return moe_error(err, MOE_ENUMERIC, "step %llu (epoch %llu): training loss is %s; first non-finite tensor: '%s' (weights, %s)",
                         (unsigned long long)step, (unsigned long long)epoch, isnan(step_loss) ? "nan" : "inf", bad,
                         kind);
    return moe_error(err, MOE_ENUMERIC, "step %llu (epoch %llu): training loss is %s with finite weights; the forward pass overflowed (largest |w| = %g, in '%s'; try a smaller optim.lr)",
                     (unsigned long long)step, (unsigned long long)epoch, isnan(step_loss) ? "nan" : "inf", big,
                     big_name);
}

// A non-finite gradient norm: name the first tensor (model, then adapters) with a non-finite gradient.
static int grad_fault(const struct moe_params *p, const struct moe_lora *lora, uint64_t step, uint64_t epoch,
                      double mean_loss, struct moe_err *err)
{
    const char *kind = "nan", *bad = first_nonfinite(p, p->grad, &kind);
    if (!bad && lora)
        bad = first_nonfinite(&lora->p, lora->p.grad, &kind);
    return moe_error(err, MOE_ENUMERIC, "step %llu (epoch %llu): gradient of '%s' is not finite (%s) at training loss %g (diverged; try a smaller optim.lr)",
                     (unsigned long long)step, (unsigned long long)epoch, bad ? bad : "?", kind, mean_loss);
}

// Gradient accumulation (train.accumulate = N): an optimizer step covers the
// rows of N micro-batches; micro-batch k of n_k rows gives g_k, the gradient of
// its mean objective, and the step uses sum_k (n_k / n) g_k with n = sum_k n_k:
// the gradient of the mean over all n rows, as one batch of n rows would give
// (up to float rounding) wherever the objective is a mean over rows. Terms
// computed per forward pass (balancing and z losses, capacity, router noise)
// are per micro-batch. Summed in the accumulator r->acc, in micro-batch order:
// acc = w_0 g_0, acc += w_k g_k, and the last one into the gradient buffers,
// g = acc + w_last g_last (moe_fold, core/params.h: the same arithmetic in
// dp_step's slices and in the experts' processes). Elementwise: the same values
// for any thread count.

// The weight of micro-batch k of a step of step_rows rows in its gradient sum.
static float micro_weight(const struct run *r, size_t k, size_t M, size_t step_rows)
{
    return (float)((double)(k + 1 < M ? r->bs : step_rows - k * r->bs) / (double)step_rows);
}

static void accumulate(struct run *r, size_t k, int last, float w)
{
    if (k == 0 && last)
        return; // a step of one micro-batch: its gradient as it is
    size_t off = 0;
    for (size_t j = 0; j < r->n_seg; j++) {
        moe_fold(r->acc + off, r->segs[j].g, r->segs[j].g, r->segs[j].n, w, k, last);
        off += r->segs[j].n;
    }
}

// ---- data parallelism over N processes (hooks->dist; dist/dist.h) ----
// An optimizer step's micro-batches k = 0 .. M-1 (M <= accum = A, a multiple of
// N) are dealt out in turn: rank q computes k = q, q + N, q + 2N, ... (its j-th
// is k = j N + q), each with moe_model_run exactly as one process would, keeping the raw gradient g_k
// (dp_keep) and the statistics. Then (dp_step):
// - statistics: every rank gathers every micro-batch's (MPI_Allgather) and adds
//   them to sb in k order, as one process does; the finite-loss check follows
//   on the same numbers, so every rank takes the same decision;
// - gradients: the flat buffer is cut into N slices; rank q receives slice q of
//   every g_k (MPI_Alltoallv, in k order) and forms w_0 g_0 + ... + w_{M-1}
//   g_{M-1} with fold(), the same operations in the same order as accumulate()
//   in one process; the summed slices go to every rank (MPI_Allgatherv).
// So the step's gradient, and with it every weight and metric, is the same bits
// as one process's with the same train.accumulate, for any N that divides it.
// Evaluation runs on every rank (the same model, the same numbers).

static size_t dp_lo(const struct run *r, size_t q) { return r->dp_n * q / (size_t)r->dist->size; }
static size_t dp_len(const struct run *r, size_t q) { return dp_lo(r, q + 1) - dp_lo(r, q); }
// Micro-batches of rank q in a step of M (k = j N + q < M).
static size_t dp_nloc(const struct run *r, size_t q, size_t M)
{
    return q < M ? (M - 1 - q) / (size_t)r->dist->size + 1 : 0;
}

int moe_train_dp_check(const struct moe_model *m, size_t accumulate, int n, int distill, int lora, struct moe_err *err)
{
    size_t N = (size_t)n;
    if (accumulate % N)
        return moe_error(err, MOE_ECONFIG, "key 'train.accumulate' (%zu) must be a multiple of the %zu processes of --data-parallel: each optimizer step's micro-batches are shared out among them (e.g. --set train.accumulate=%zu)",
                         accumulate, N, N);
    if (distill || lora)
        return moe_error(err, MOE_EINVAL, "data parallelism does not cover %s yet; train in one process",
                         distill ? "distillation" : "LoRA adapters");
    for (size_t i = 0; i < m->n_moe_layers; i++)
        if (m->moe_layers[i]->bias)
            return moe_error(err, MOE_ECONFIG, "key 'moe.bias_balance': the router offsets change after every micro-batch, so micro-batches cannot run side by side on %zu processes; train in one process",
                             N);
    return 0;
}

int moe_train_ep_check(const struct moe_model *m, int n, int frozen, struct moe_err *err)
{
    if (frozen)
        return moe_error(err, MOE_EINVAL, "expert parallelism does not cover frozen tensors or experts yet; train in one process or with --data-parallel");
    return moe_ep_check(m->n_moe_layers, m->moe_layers, m->ops->type, n, err);
}

// What the data-parallel sum covers: the optimizer's segments, or, when each
// process holds only its experts, every other tensor (runs of neighbouring
// tensors merged, the alignment gaps between them included).
static int exchange_segments(struct run *r, struct moe_err *err)
{
    const struct moe_params *p = &r->m->params;
    if (!r->sharded) {
        r->xsegs = r->segs;
        r->n_xseg = r->n_seg;
        r->dp_n = r->numel;
        return 0;
    }
    if (!(r->xsegs = malloc((p->n + 1) * sizeof *r->xsegs)))
        return moe_error(err, MOE_ENOMEM, "out of memory");
    size_t lo = 0, hi = 0;
    for (size_t i = 0; i <= p->n; i++) {
        if (i < p->n && !p->t[i].experts) {
            if (hi == lo)
                lo = p->t[i].offset;
            hi = p->t[i].offset + p->t[i].numel;
            continue;
        }
        if (hi > lo) {
            r->xsegs[r->n_xseg++] = (struct moe_optim_seg){ p->data + lo, p->grad + lo, hi - lo };
            r->dp_n += hi - lo;
        }
        lo = hi = 0;
    }
    for (size_t i = 0; i < p->n; i++)
        r->n_nsq += p->t[i].experts ? p->t[i].shape[0] / (size_t)p->shard_size : 0;
    r->nsq = malloc((r->n_nsq + 1) * sizeof *r->nsq);
    r->nsq_all = malloc((r->n_nsq * (size_t)p->shard_size + 1) * sizeof *r->nsq_all);
    if (!r->nsq || !r->nsq_all)
        return moe_error(err, MOE_ENOMEM, "out of memory");
    return 0;
}

static int dp_init(struct run *r, struct moe_dist *d, struct moe_err *err)
{
    size_t N = (size_t)d->size;
    int rc = moe_train_dp_check(r->m, r->accum, d->size, r->hooks->distill != NULL, r->hooks->lora != NULL, err);
    if (!rc && r->hooks->expert_parallel)
        rc = moe_train_ep_check(r->m, d->size, r->hooks->frozen != NULL, err);
    if (rc)
        return rc;
    r->dist = d;
    r->per_rank = r->accum / N;
    r->sharded = moe_params_sharded(&r->m->params);
    if (r->hooks->expert_parallel && r->m->params.shard_size != d->size)
        return moe_error(err, MOE_EINVAL, "expert parallelism over %d processes needs a model holding 1/%d of the experts (moe_model_create_shard)",
                         d->size, d->size);
    if ((rc = exchange_segments(r, err)))
        return rc;
    size_t P = r->dp_n ? r->dp_n : 1, L = r->per_rank;
    r->wire_n = moe_stats_pack(&r->sb, NULL) + r->sb.n_route;
    r->slots = malloc(L * P * sizeof *r->slots);
    r->xsend = malloc(L * P * sizeof *r->xsend);
    r->xrecv = malloc(r->accum * (P / N + 1) * sizeof *r->xrecv);
    r->xfull = malloc(P * sizeof *r->xfull);
    r->wire = calloc(L * r->wire_n, sizeof *r->wire);
    r->wire_all = malloc(r->accum * r->wire_n * sizeof *r->wire_all);
    if (!r->slots || !r->xsend || !r->xrecv || !r->xfull || !r->wire || !r->wire_all)
        return moe_error(err, MOE_ENOMEM, "out of memory for the exchange of %zu micro-batches' gradients (%zu floats each)",
                         L, P);
    if (r->hooks->expert_parallel)
        return moe_ep_create(&r->ep, d, r->m->moe_layers, r->m->n_moe_layers, r->per_rank, r->accum, err);
    return 0;
}

// This rank's micro-batch j (of per_rank) has run: keep its raw gradient and statistics.
static void dp_keep(struct run *r, size_t j)
{
    float *slot = r->slots + j * r->dp_n;
    for (size_t s = 0, off = 0; s < r->n_xseg; off += r->xsegs[s].n, s++)
        memcpy(slot + off, r->xsegs[s].g, r->xsegs[s].n * sizeof *slot);
    double *w = r->wire + j * r->wire_n;
    size_t n = moe_stats_pack(&r->sm, w);
    for (size_t l = 0; l < r->sm.n_route; l++)
        w[n + l] = r->sm.route[l].has_probs;
}

// The exchange after a step's micro-batches (see above): sb and the segments'
// gradients as one process would have them.
static int dp_step(struct run *r, uint64_t epoch, size_t step_rows, struct moe_err *err)
{
    struct moe_dist *d = r->dist;
    size_t N = (size_t)d->size, me = (size_t)d->rank, L = r->per_rank, W = r->wire_n;
    size_t M = (step_rows + r->bs - 1) / r->bs;
    double t0 = now_seconds();
    int rc = moe_dist_allgather(d, r->wire, L * W * sizeof *r->wire, r->wire_all, err);
    if (rc)
        return rc;
    size_t np = moe_stats_pack(&r->sm, NULL);
    for (size_t k = 0; k < M; k++) { // micro-batch k: rank k % N's (k / N)-th
        const double *w = r->wire_all + (k % N * L + k / N) * W;
        moe_stats_unpack(&r->sm, w);
        for (size_t l = 0; l < r->sm.n_route; l++)
            r->sm.route[l].has_probs = w[np + l] != 0.0;
        moe_stats_merge(&r->sb, &r->sm);
        if (!isfinite(r->sm.loss))
            return loss_fault(&r->m->params, r->ck.pos.steps + 1, epoch, r->sm.loss, err);
    }
    // slice q of each of this rank's gradients to rank q; slice me of every
    // gradient, rank by rank (at[q]: where rank q's first one lands)
    size_t *cnt = malloc(3 * N * sizeof *cnt), *at = cnt + 2 * N;
    if (!cnt)
        return moe_error(err, MOE_ENOMEM, "out of memory");
    size_t mine = dp_nloc(r, me, M), off = 0;
    for (size_t q = 0; q < N; q++) {
        for (size_t j = 0; j < mine; j++, off += dp_len(r, q))
            memcpy(r->xsend + off, r->slots + j * r->dp_n + dp_lo(r, q), dp_len(r, q) * sizeof *r->xsend);
        cnt[q] = mine * dp_len(r, q);
        cnt[N + q] = dp_nloc(r, q, M) * dp_len(r, me);
        at[q] = q ? at[q - 1] + dp_nloc(r, q - 1, M) : 0;
    }
    rc = moe_dist_alltoallv(d, r->xsend, cnt, r->xrecv, cnt + N, err);
    size_t len = dp_len(r, me);
    // bytes to the other processes: the statistics, the gradient slices, the summed slice
    r->dp_bytes += (double)(N - 1) * (double)(L * W * sizeof *r->wire + len * sizeof *r->xfull) +
                   (double)(off - mine * len) * sizeof *r->xsend;
    // micro-batch k's slice in xrecv, in k order; the last one's, where fold leaves the sum
#define SLICE(k) (r->xrecv + (at[(k) % N] + (k) / N) * len)
    float *out = SLICE(M - 1);
    for (size_t k = 0; !rc && M > 1 && k < M; k++)
        moe_fold(r->xsend, SLICE(k), SLICE(k), len, micro_weight(r, k, M, step_rows), k, k + 1 == M);
#undef SLICE
    for (size_t q = 0; q < N; q++)
        cnt[q] = dp_len(r, q);
    if (!rc)
        rc = moe_dist_allgatherv(d, out, cnt, r->xfull, err);
    free(cnt);
    if (rc)
        return rc;
    for (size_t s = 0, o = 0; s < r->n_xseg; o += r->xsegs[s].n, s++)
        memcpy(r->xsegs[s].g, r->xfull + o, r->xsegs[s].n * sizeof *r->xfull);
    r->dp_seconds += now_seconds() - t0;
    r->dp_steps++;
    return 0;
}

// Micro-batch k (of an optimizer step of step_rows rows) b of n rows: the
// teacher's outputs (distillation), forward and backward with the training
// statistics added into sb, the check for a non-finite loss, and the gradient
// into the accumulation. The position is the caller's.
static int train_micro(struct run *r, struct moe_batch *b, uint64_t epoch, size_t k, size_t n, int last,
                       size_t step_rows, struct moe_err *err)
{
    const struct moe_train_hooks *hooks = r->hooks;
    struct moe_model *m = r->m;
    const struct moe_distill *d = hooks->distill;
    struct moe_lora *lora = hooks->lora;
    moe_params_zero_grad(&m->params);
    if (lora)
        moe_params_zero_grad(&lora->p);
    // router noise's stream: one per micro-batch (the optimizer step's index without accumulation)
    b->step = r->ck.pos.steps * r->accum + k;
    if (d) { // the teacher's pass hands back its outputs; the student's learns from them
        struct moe_batch_kd out = { .logits_out = r->teacher_logits, .hidden_out = r->teacher_hidden };
        b->kd = &out;
        int rc = moe_model_run(d->teacher, b, 0, NULL, err);
        if (rc)
            return rc;
        r->kd = (struct moe_batch_kd){ .teacher = r->teacher_logits, .teacher_hidden = r->teacher_hidden,
                                       .sym = d->sym, .alpha = d->alpha, .tau = d->tau };
        b->kd = &r->kd;
    }
    // with accumulation, each micro-batch's statistics apart (sm), then added to sb in order
    struct moe_stats *st = r->accum > 1 ? &r->sm : &r->sb;
    if (r->accum > 1)
        moe_stats_reset(st);
    double before = st->loss;
    int rc = moe_model_run(m, b, 1, st, err);
    if (rc)
        return rc;
    if (lora)
        moe_lora_backward(lora, &m->params);
    if (r->dist) { // over processes: the checks and the sum wait for the exchange (dp_step)
        dp_keep(r, k / (size_t)r->dist->size);
        return 0;
    }
    double step_loss = st->loss - before;
    if (r->accum > 1)
        moe_stats_merge(&r->sb, st);
    if (!isfinite(step_loss))
        return loss_fault(&m->params, r->ck.pos.steps + 1, epoch, step_loss, err);
    if (r->accum > 1)
        accumulate(r, k, last, (float)((double)n / (double)step_rows));
    return 0;
}

// Expert parallelism (dist/ep.h): the step's M micro-batches in rounds, rank q
// running k = j N + q in round j, every rank in every round's exchanges (a
// rank without a micro-batch, or whose micro-batch failed before its sparse
// layers, serves the others: moe_ep_idle). Each rank sums its experts'
// gradients as they are computed, in k order (moe_ep_backward); dp_step sums
// the rest.
static int ep_rounds(struct run *r, uint64_t epoch, size_t start, size_t step_rows, struct moe_err *err)
{
    const size_t M = (step_rows + r->bs - 1) / r->bs, N = (size_t)r->dist->size, me = (size_t)r->dist->rank;
    const struct moe_params *p = &r->m->params;
    int rc = 0;
    r->ep->M = M;
    for (size_t k = 0; k < M; k++)
        r->ep->w[k] = micro_weight(r, k, M, step_rows);
    for (size_t j = 0; j * N < M; j++) {
        size_t k = j * N + me;
        r->ep->round = j;
        if (k < M && !rc) {
            size_t n = k + 1 < M ? r->bs : step_rows - k * r->bs;
            struct moe_batch b = gather_batch(r, epoch, start + k * r->bs, n);
            if (!(rc = train_micro(r, &b, epoch, k, n, k + 1 == M, step_rows, err)) && r->ep->rc)
                rc = moe_ep_idle(r->ep, p, err); // the exchange's failure, in err
            else if (rc)
                moe_ep_idle(r->ep, p, NULL);
        } else {
            int e = moe_ep_idle(r->ep, p, rc ? NULL : err);
            rc = rc ? rc : e;
        }
    }
    if (!rc && r->ep->rc) { // the first exchange's failure
        if (err)
            *err = r->ep->err;
        rc = r->ep->rc;
    }
    return rc;
}

// The global gradient norm (optim.clip, and the check for a non-finite
// gradient). Its square is a sum over units in a fixed order (moe_train_norm_units),
// each unit summed by moe_optim_sum_sq (fixed blocks). The units do not
// depend on the number of processes: with expert parallelism each process
// sums its own experts, the sums are exchanged (MPI_Allgather), and every
// process adds the same numbers in the same order as one process does.
static int grad_norm(struct run *r, double *ret, struct moe_err *err)
{
    const struct moe_params *p = &r->m->params;
    const size_t N = (size_t)p->shard_size, K = r->n_nsq;
    double sq = 0.0;
    if (!r->sharded) {
        for (size_t k = 0; k < r->n_unit; k++)
            sq += moe_optim_sum_sq(r->units[k].g, r->units[k].n);
        *ret = sqrt(sq);
        return 0;
    }
    // expert parallelism (nothing frozen, no adapters: moe_train_ep_check,
    // moe_train_dp_check): every tensor is a unit, each expert of a tensor of
    // routed experts too, their sums from the processes that hold them
    size_t k = 0;
    for (size_t i = 0; i < p->n; i++) {
        const struct moe_tensor *t = &p->t[i];
        size_t El = t->experts ? t->shape[0] / N : 0, slice = El ? t->numel / El : 0;
        for (size_t e = 0; e < El; e++)
            r->nsq[k++] = moe_optim_sum_sq(p->grad + t->offset + e * slice, slice);
    }
    int rc = moe_dist_allgather(r->dist, r->nsq, K * sizeof *r->nsq, r->nsq_all, err);
    if (rc)
        return rc;
    for (size_t i = 0, ks = 0; i < p->n; i++) {
        const struct moe_tensor *t = &p->t[i];
        if (t->experts) { // expert e's sum from its process q = e / El, at ks + e % El there
            size_t El = t->shape[0] / N;
            for (size_t e = 0; e < t->shape[0]; e++)
                sq += r->nsq_all[(e / El) * K + ks + e % El];
            ks += El;
        } else {
            sq += moe_optim_sum_sq(p->grad + t->offset, t->numel);
        }
    }
    *ret = sqrt(sq);
    return 0;
}

// The update after the step's micro-batches: the checks for a non-finite
// gradient, the learning rate of this step (moe_lr_at), the optimizer.
static int train_update(struct run *r, uint64_t epoch, double step_loss, size_t rows, struct moe_err *err)
{
    struct moe_model *m = r->m;
    struct moe_lora *lora = r->hooks->lora;
    double gnorm;
    if (r->dead)
        prune_grads(r, 0);
    int rc = grad_norm(r, &gnorm, err);
    if (rc)
        return rc;
    if (!isfinite(gnorm))
        return grad_fault(&m->params, lora, r->ck.pos.steps + 1, epoch, step_loss / (double)rows, err);
    r->opt.lr = moe_lr_at(&r->oc, r->run_steps, r->ck.pos.steps);
    moe_optim_step_segs(&r->opt, r->segs, r->n_seg, gnorm);
    if (lora)
        moe_lora_apply(lora, &m->params);
    return 0;
}

// ---- training steps on a CUDA device (hooks->device; cuda/model.h) ----
// What it needs beyond what the device model checks itself.
int moe_train_device_check(int dist, struct moe_err *err)
{
    if (dist)
        return moe_error(err, MOE_EINVAL, "training on a CUDA device runs in one process (no mpirun) so far");
    return 0;
}

// The teacher's device model (evaluation passes, batches of a training
// step's micro-batch) behind the student's loss.
static int dev_teacher(struct run *r, struct moe_err *err)
{
    const struct moe_distill *kd = r->hooks->distill;
    if (!kd->teacher_hp)
        return moe_error(err, MOE_EINVAL, "distillation on a CUDA device needs the teacher's hyperparameters");
    int rc = moe_cuda_model_create(&r->tdev, kd->teacher, kd->teacher_hp, NULL, r->bs, err);
    if (rc) {
        moe_error_prefix(err, "the teacher: ");
        return rc;
    }
    return moe_cuda_model_set_teacher(r->dev, r->tdev, kd->alpha, kd->tau, kd->sym, err);
}

// One optimizer step of step_rows rows from start on the device:
// train_micro, accumulate and train_update's work in their order (per
// micro-batch: the batch with its router stream, forward and backward, the
// statistics into sb (through sm when a step has several), the check for a
// non-finite loss, the weighted sum of the gradients; then the gradient
// norm's check, the learning rate, the update), each fault reported from the
// host's copy of the device's weights or gradients as on the CPU.
static int dev_step(struct run *r, uint64_t epoch, size_t start, size_t step_rows, struct moe_err *err)
{
    const size_t M = (step_rows + r->bs - 1) / r->bs;
    const uint64_t step = r->ck.pos.steps + 1;
    double step_loss = 0.0, gnorm;
    int rc;
    for (size_t k = 0, done = 0; k < M; k++) {
        size_t n = step_rows - done < r->bs ? step_rows - done : r->bs;
        struct moe_batch b = gather_batch(r, epoch, start + done, n);
        b.step = r->ck.pos.steps * r->accum + k; // train_micro's stream: one per micro-batch
        double loss, aux;
        struct moe_stats *st = r->accum > 1 ? &r->sm : &r->sb;
        if (r->accum > 1)
            moe_stats_reset(st);
        rc = moe_cuda_model_backprop(r->dev, &b, &loss, &aux, err);
        r->dev_stale = 1;
        if (rc || (rc = moe_cuda_model_stats(r->dev, &b, st, err)))
            return rc;
        if (r->accum > 1)
            moe_stats_merge(&r->sb, st);
        if (!isfinite(loss))
            return (rc = dev_sync(r, err)) ? rc : loss_fault(&r->m->params, step, epoch, loss, err);
        step_loss += loss;
        done += n;
        if ((rc = moe_cuda_model_fold(r->dev, k, done == step_rows, (float)((double)n / (double)step_rows), err)))
            return rc;
    }
    if ((rc = moe_cuda_model_gnorm(r->dev, &gnorm, err)))
        return rc;
    if (!isfinite(gnorm))
        return (rc = dev_sync(r, err)) ? rc
                                       : grad_fault(&r->m->params, r->hooks->lora, step, epoch,
                                                    step_loss / (double)step_rows, err);
    r->opt.lr = moe_lr_at(&r->oc, r->run_steps, r->ck.pos.steps);
    return moe_cuda_model_update(r->dev, &r->opt, gnorm, err);
}

// Rows per evaluation pass (moe_evaluate caps train.max_batch_eval at the model's batch).
static size_t eval_chunk(const struct run *r) { return r->chunk < r->m->max_batch ? r->chunk : r->m->max_batch; }

// The training steps of an epoch (epoch >= 1) from pos->next_row on, with the
// batch rows, stops and checkpoints due between them. A step takes up to
// accum micro-batches of bs rows; stops and checkpoints fall between steps only.
static int train_epoch(struct run *r, uint64_t epoch, struct moe_err *err)
{
    const struct moe_dataset *tr = r->tr;
    struct moe_train_pos *pos = &r->ck.pos;
    double ts = now_seconds();
    if (r->shuffled) {
        struct moe_rng rng = moe_rng_make(r->seed, MOE_RNG_SHUFFLE, (uint32_t)epoch);
        moe_rng_permutation(&rng, r->perm, tr->n);
    }
    int rc = 0;
    size_t step_max = r->bs * r->accum;
    for (size_t start = pos->next_row; start < tr->n;) {
        size_t step_rows = tr->n - start < step_max ? tr->n - start : step_max;
        moe_threads_adapt(); // runs sharing cores: threads for the cores left idle
        double loss0 = r->sb.loss;
        size_t n0 = r->sb.n;
        if ((rc = qat_enter(r, err)))
            return rc;
        rc = r->dev ? dev_step(r, epoch, start, step_rows, err) : r->ep ? ep_rounds(r, epoch, start, step_rows, err) : 0;
        for (size_t k = 0, done = 0; !r->ep && !r->dev && done < step_rows; k++) {
            size_t n = step_rows - done < r->bs ? step_rows - done : r->bs;
            if (!r->dist || k % (size_t)r->dist->size == (size_t)r->dist->rank) { // over processes: this rank's turns
                struct moe_batch b = gather_batch(r, epoch, start + done, n);
                if ((rc = train_micro(r, &b, epoch, k, n, done + n == step_rows, step_rows, err)))
                    break;
            }
            done += n;
        }
        if (r->dist && !(rc = agree(r, rc, err)))
            rc = dp_step(r, epoch, step_rows, err);
        qat_leave(r); // the update is the float weights' (the straight-through estimator)
        if (rc || (!r->dev && (rc = train_update(r, epoch, r->sb.loss - loss0, step_rows, err))))
            return rc;
        start += step_rows;
        pos->steps++;
        if ((rc = prune_step(r, pos->steps, err)))
            return rc;
        pos->rows_seen += step_rows;
        pos->next_row = start;
        if (r->hooks->step) {
            struct moe_train_step_info si = {
                .step = pos->steps, .epoch = epoch, .epochs = r->epochs,
                .steps_per_epoch = r->steps_per_epoch, .rows = step_rows, .tokens_per_row = r->lm ? tr->n_ctx : 0,
                .loss_sum = r->sb.loss - loss0, .loss_n = (double)(r->sb.n - n0), .lr = r->opt.lr,
                .lr_scheduled = r->oc.schedule != MOE_SCHED_CONSTANT || r->oc.warmup_steps > 0
            };
            r->hooks->step(r->hooks->step_ctx, &si);
        }
        if (r->log_every && pos->steps % r->log_every == 0 &&
            (rc = agree(r, batch_row(&r->sb, tr->task, r->thr, pos->steps, epoch, r->hooks->row, r->hooks->ctx, err),
                        err)))
            return rc;
        int stop;
        if ((rc = stop_raised(r, &stop, err)))
            return rc;
        if (stop) {
            pos->train_seconds += now_seconds() - ts;
            if ((rc = stop_if_asked(r, err)))
                return rc;
        }
        if (r->ckpt_every && pos->steps % r->ckpt_every == 0 && pos->next_row < tr->n) {
            double tn = now_seconds();
            pos->train_seconds += tn - ts;
            ts = tn;
            if ((rc = checkpoint(r, err)))
                return rc;
        }
    }
    pos->train_seconds += now_seconds() - ts;
    pos->next_row = tr->n;
    return 0;
}

// Evaluate split d into row (its gate means into gm) at the end of an epoch
// (on the device model in a device run).
static int eval_split(struct run *r, const struct moe_dataset *d, const char *split, uint64_t epoch,
                      struct moe_stats *s, struct moe_eval_row *row, double *gm, struct moe_err *err)
{
    int rc = qat_enter(r, err);
    if (!rc)
        rc = evaluate(r->m, r->dev, d, split, r->chunk, r->thr, s, row, err);
    qat_leave(r);
    if (!rc && r->ep && r->ep->rc) { // an exchange of the sharded experts failed
        if (err)
            *err = r->ep->err;
        rc = r->ep->rc;
    }
    if (rc)
        return rc;
    row->step = r->ck.pos.steps;
    row->epoch = epoch;
    fill_gate_mean(row, s, gm);
    return 0;
}

// The end of an epoch: evaluate the training split when a metrics row or the
// stopping criterion needs it, and when a row is due (or the criterion is met
// for the first time, which makes this epoch the last: *last = 1) write the
// batch row (without train.log_every), then the train and the test rows.
static int eval_point(struct run *r, uint64_t epoch, int *last, struct moe_err *err)
{
    struct moe_train_pos *pos = &r->ck.pos;
    int log_due = epoch % r->eval_every == 0 || *last;
    if (!log_due && !r->use_crit)
        return 0;
    int rc = eval_split(r, r->tr, "train", epoch, &r->st, &r->rtr, r->gm_train, err);
    if (rc)
        return rc;
    if (!isfinite(r->rtr.loss)) {
        if ((rc = dev_sync(r, err)))
            return rc;
        const char *kind = "nan", *bad = first_nonfinite(&r->m->params, r->m->params.data, &kind);
        return moe_error(err, MOE_ENUMERIC, "epoch %llu (step %llu): evaluated training loss is not finite; first non-finite tensor: '%s' (weights, %s)",
                         (unsigned long long)epoch, (unsigned long long)pos->steps, bad ? bad : "none", kind);
    }
    // the validation split (split=valid rows) whenever the training split is evaluated
    if (r->va && (rc = eval_split(r, r->va, "valid", epoch, &r->sva, &r->rva, r->gm_valid, err)))
        return rc;
    // the criterion's row: training, or validation (text: the test rows, the corpus's validation part)
    const struct moe_eval_row *crow = &r->rtr;
    if (r->crit_valid && r->va)
        crow = &r->rva;
    else if (r->crit_valid && r->use_crit && (rc = eval_split(r, r->te, "test", epoch, &r->ste, &r->rte, r->gm_test, err)))
        return rc;
    else if (r->crit_valid)
        crow = &r->rte;
    int met = r->use_crit && epoch > 0 && pos->criterion_epoch < 0 && criterion_met(r->crit, r->crit_value, crow);
    if (met) {
        pos->criterion_epoch = (int64_t)epoch;
        *last = 1;
    }
    if (!log_due && !met)
        return 0;
    moe_eval_cb cb = r->hooks->row;
    void *ctx = r->hooks->ctx;
    if ((!r->log_every && (rc = batch_row(&r->sb, r->tr->task, r->thr, pos->steps, epoch, cb, ctx, err))) ||
        (!(r->crit_valid && !r->va && r->use_crit) && (rc = eval_split(r, r->te, "test", epoch, &r->ste, &r->rte, r->gm_test, err))))
        return rc;
    if (cb && ((rc = cb(ctx, &r->rtr, err)) || (r->va && (rc = cb(ctx, &r->rva, err))) || (rc = cb(ctx, &r->rte, err))))
        return rc;
    // train.select: keep these parameters if this validation loss is the lowest so far (ties: the earlier)
    const double vloss = r->va ? r->rva.loss : r->rte.loss;
    if (r->select_best && (r->ck.best_epoch < 0 || vloss < r->ck.best_loss)) {
        if ((rc = dev_sync(r, err)))
            return rc;
        snapshot(r->m, r->best);
        r->ck.best_epoch = (int64_t)epoch;
        r->ck.best_loss = vloss;
    }
    return 0;
}

// The last epoch's rows and gate means into ret. No checkpoint here: the caller
// writes the model and the summary, whose presence marks the run complete;
// until then the last checkpoint stands.
static int run_finish(struct run *r, uint64_t epoch, struct moe_train_result *ret, struct moe_err *err)
{
    ret->select_best = r->select_best;
    ret->selected_epoch = r->select_best ? (int64_t)epoch : -1;
    if (r->select_best && r->ck.best_epoch >= 0 && (uint64_t)r->ck.best_epoch != epoch) {
        // the selected parameters, and the final rows evaluated on them (the values of that epoch's rows),
        // on the host (a device run's model is the host's from here on)
        int rs = dev_sync(r, err);
        if (rs)
            return rs;
        moe_cuda_model_free(r->dev);
        moe_cuda_model_free(r->tdev);
        r->dev = r->tdev = NULL;
        restore(r->m, r->best);
        uint64_t be = (uint64_t)r->ck.best_epoch;
        int rc;
        if ((rc = eval_split(r, r->tr, "train", be, &r->st, &r->rtr, r->gm_train, err)) ||
            (r->va && (rc = eval_split(r, r->va, "valid", be, &r->sva, &r->rva, r->gm_valid, err))) ||
            (rc = eval_split(r, r->te, "test", be, &r->ste, &r->rte, r->gm_test, err)))
            return rc;
        ret->selected_epoch = r->ck.best_epoch;
    }
    ret->final_train = r->rtr;
    ret->final_test = r->rte;
    if (r->va)
        ret->final_valid = r->rva;
    // the rows' pointers into the statistics do not outlive this call
    struct moe_eval_row *fin[] = { &ret->final_train, &ret->final_test, &ret->final_valid };
    for (int i = 0; i < 3; i++) {
        fin[i]->gate_mean = NULL;
        fin[i]->route = NULL;
        fin[i]->n_route = 0;
        fin[i]->lang_loss = fin[i]->lang_bytes = NULL;
        fin[i]->lang_tokens = NULL;
        fin[i]->n_lang = 0;
    }
    for (size_t e = 0; e < r->m->n_expert && e < 64; e++)
        ret->final_gate_mean[e] = r->gm_train[e];
    r->ck.pos.finished = 1;
    return 0;
}

// Epochs from pos->epoch on, each one its training steps (none in epoch 0 or
// when only its evaluation is left), then its evaluation point; a stop or a
// checkpoint between epochs.
static int run_epochs(struct run *r, struct moe_train_result *ret, struct moe_err *err)
{
    struct moe_train_pos *pos = &r->ck.pos;
    for (;;) {
        uint64_t epoch = pos->epoch;
        int rc;
        if (epoch > 0 && pos->next_row < r->tr->n) {
            if ((rc = train_epoch(r, epoch, err)))
                return rc;
            // The last epoch's training is done: a checkpoint before its
            // evaluation, from which a longer run (--resume with more
            // train.epochs) continues exactly as if it had never stopped.
            if (epoch == r->epochs && (rc = checkpoint(r, err)))
                return rc;
        }
        ret->epochs = epoch;
        int last = epoch == r->epochs;
        if ((rc = agree(r, eval_point(r, epoch, &last, err), err)))
            return rc;
        if (last)
            return run_finish(r, epoch, ret, err);
        // The epoch is done: the next one starts at its first row.
        pos->epoch++;
        pos->next_row = 0;
        if ((rc = stop_if_asked(r, err)) || (rc = checkpoint(r, err)))
            return rc;
    }
}

int moe_train_ex(struct moe_model *m, const struct moe_data *data, const struct moe_config *cfg,
                 const struct moe_train_hooks *hooks, struct moe_train_result *ret, struct moe_err *err)
{
    struct moe_train_cfg tc;
    struct moe_optim_cfg oc;
    memset(ret, 0, sizeof *ret);
    int rc = moe_train_cfg_parse(&tc, cfg, err);
    if (rc)
        return rc;
    moe_optim_cfg_parse(&oc, cfg);
    rc = moe_train_cfg_check(&tc, &oc, err);
    if (!rc)
        rc = moe_train_run(m, data, &tc, &oc, hooks, ret, err);
    moe_train_cfg_release(&tc);
    return rc;
}

int moe_train_run(struct moe_model *m, const struct moe_data *data, const struct moe_train_cfg *tc,
                  const struct moe_optim_cfg *oc, const struct moe_train_hooks *hooks, struct moe_train_result *ret,
                  struct moe_err *err)
{
    memset(ret, 0, sizeof *ret);
    double t0 = now_seconds();
    struct run r;
    int rc = run_init(&r, m, data, tc, oc, hooks, err);
    if (!rc && hooks->resume)
        rc = run_resume(&r, err);
    // the device model from the weights and the moments as they now are (loaded or resumed)
    if (!rc && hooks->device) // batches of training steps and of evaluation passes
        rc = moe_cuda_model_create(&r.dev, m, hooks->device->hp, &r.opt, r.bs > eval_chunk(&r) ? r.bs : eval_chunk(&r),
                                   err);
    if (!rc && r.dev && (hooks->frozen || hooks->lora)) // what it trains, when not everything
        rc = moe_cuda_model_set_train(r.dev, hooks->frozen, hooks->frozen ? hooks->frozen_experts : NULL, hooks->lora,
                                      err);
    if (!rc && r.dev && hooks->distill) // the teacher beside it, for the training batches
        rc = dev_teacher(&r, err);
    double train0 = r.ck.pos.train_seconds;
    if (!rc)
        rc = run_epochs(&r, ret, err);
    const struct moe_train_pos *pos = &r.ck.pos;
    ret->steps = pos->steps;
    ret->criterion_epoch = pos->criterion_epoch;
    ret->steps_per_epoch = r.steps_per_epoch;
    ret->run_steps = r.run_steps;
    ret->lr_last = pos->steps ? moe_lr_at(oc, r.run_steps, pos->steps - 1) : NAN;
    ret->wall_seconds = now_seconds() - t0;
    if (r.dist) {
        ret->dp_processes = r.dist->size;
        ret->dp_steps = r.dp_steps;
        ret->dp_exchange_seconds = r.dp_seconds;
        ret->dp_bytes_sent = r.dp_bytes;
        ret->dp_train_seconds = r.ck.pos.train_seconds - train0;
        if (r.ep) {
            ret->ep = 1;
            ret->ep_exchange_seconds = r.ep->seconds;
            ret->ep_bytes_sent = r.ep->bytes;
        }
    }
    if (!rc)
        rc = dev_sync(&r, err);
    if (!rc) {
        ret->rows_per_second = pos->train_seconds > 0 ? (double)pos->rows_seen / pos->train_seconds : 0.0;
        ret->tokens_per_second = r.lm ? ret->rows_per_second * (double)r.tr->n_ctx : NAN;
    }
    run_release(&r);
    return rc;
}
