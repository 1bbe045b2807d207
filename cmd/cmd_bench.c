// cmd_bench.c: `moe bench` times one configuration in one process: its first
// sparse MoE layer alone (forward, and forward + backward), the whole training
// step (forward, backward, statistics, optimizer), and, interleaved with them,
// BLIS sgemm over exactly the GEMM shapes that layer and that step ran (recorded
// by core/gemm.c during a warm-up pass), so every figure is also a ratio to what
// the same BLIS does on the same shapes at equal FLOPs in the same minute. Each
// figure is the median over --repeats with its min and max; per-phase times come
// from the library's phase timers (core/prof.h). Not here: correctness (the
// tests), or training anything to completion.
#include <assert.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "cli.h"
#include "core/gemm.h"
#include "core/prof.h"
#include "core/rng.h"
#include "core/vmath.h"
#include "cuda/blas.h"
#include "cuda/layer.h"
#include "cuda/ops.h"
#include "dist/ep.h"
#include "moe/moe_layer.h"
#include "train/train.h"

static const char *const usage =
    "usage: moe bench [--config F] [--set key.path=value]... [--tokens T] [--repeats R]\n"
    "                 [--warmup W] [--seed N] [--threads N] [--device cpu|cuda[:N]] [--quiet]\n"
    "Times the model the config describes, in this process, on its own training data:\n"
    "  layer  its first sparse MoE layer alone on T random tokens (model.n_embd wide):\n"
    "         forward, forward + backward, and the time per phase (router, dispatch,\n"
    "         expert GEMMs, activations, combine, aux losses);\n"
    "  step   one whole training step (forward, backward, batch statistics, optimizer)\n"
    "         on T tokens of training data (language models: T / model.n_ctx windows;\n"
    "         others: T rows), with the time per phase;\n"
    "  sgemm  after each timed pass, BLIS sgemm over exactly the GEMM shapes that pass\n"
    "         ran (same count, same FLOPs): ratio_to_sgemm = sgemm time / pass time.\n"
    "Every figure is {median, min, max} over R repeats (default 5) after W warm-up\n"
    "passes (default 1). T defaults to one training batch (optim.batch_size rows, or\n"
    "optim.batch_size x model.n_ctx tokens). Prints one JSON object.\n"
    "--expert-parallel N (a build with MPI; mpirun -np N moe bench --expert-parallel\n"
    "N ...): every process runs the layer and the step on its own T tokens with\n"
    "n_expert/N experts of each sparse layer, the rows exchanged as in train\n"
    "--expert-parallel; the step also hands the expert gradients back and sums\n"
    "the gradients over the processes. \"expert_parallel\" then gives the exchanges'\n"
    "seconds and bytes per pass beside the compute; rank 0 prints.\n"
    "--device cuda (or cuda:N; a build with CUDA and a usable GPU): times the first\n"
    "sparse layer on the GPU only (lib/cuda/layer.h; not every router or option is\n"
    "there yet, and what is not is refused): forward and forward + backward over T\n"
    "tokens, timed with CUDA events, the time per phase, and a dense reference\n"
    "timed after each repeat: the same cuBLAS sgemm calls with the experts' blocks\n"
    "merged into one GEMM per product (same FLOPs); ratio_to_sgemm = reference\n"
    "seconds / layer seconds; layer.expert_gemms names the expert GEMMs' cuBLAS path.\n"
    "\"step\" is null: the bench does not time a device step (moe train --device cuda\n"
    "reports the step's rate in its summary).\n";

enum { OPT_TOKENS = OPT_FIRST_CMD, OPT_REPEATS, OPT_WARMUP, OPT_EXPERT_PARALLEL };
#define MAX_REPEATS 1000

struct bench_opts {
    long long tokens, repeats, warmup, n_proc;
};

static int on_opt(void *ctx, int opt, const char *arg)
{
    struct bench_opts *o = ctx;
    if (opt == OPT_EXPERT_PARALLEL) {
        if (cli_parse_ll(arg, 1, 4096, &o->n_proc))
            return cli_error("bench", 2, "option '--expert-parallel' expects a number of processes from 1 to 4096, got '%s'",
                             arg);
        return 0;
    }
    long long *dst = opt == OPT_TOKENS ? &o->tokens : opt == OPT_REPEATS ? &o->repeats : &o->warmup;
    const char *name = opt == OPT_TOKENS ? "--tokens" : opt == OPT_REPEATS ? "--repeats" : "--warmup";
    long long lo = opt == OPT_WARMUP ? 0 : 1, hi = opt == OPT_TOKENS ? (1LL << 30) : MAX_REPEATS;
    if (cli_parse_ll(arg, lo, hi, dst))
        return cli_error("bench", 2, "option '%s' expects an integer from %lld to %lld, got '%s'", name, lo, hi, arg);
    return 0;
}

// ---------------------------------------------------------------- figures

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

// {median, min, max} of n values (one per repeat)
static cJSON *fig_json(const double *v, size_t n)
{
    double s[MAX_REPEATS];
    assert(n >= 1 && n <= MAX_REPEATS);
    memcpy(s, v, n * sizeof *s);
    qsort(s, n, sizeof *s, cmp_double);
    double med = n % 2 ? s[n / 2] : 0.5 * (s[n / 2 - 1] + s[n / 2]);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "median", med);
    cJSON_AddNumberToObject(o, "min", s[0]);
    cJSON_AddNumberToObject(o, "max", s[n - 1]);
    return o;
}

// ---------------------------------------------------------------- sgemm reference

struct replay {
    float *a, *b, *c;
};

static int replay_alloc(struct replay *r, const struct moe_gemm_record *rec, struct moe_err *err)
{
    size_t na = 1, nb = 1, nc = 1;
    for (size_t i = 0; i < rec->n; i++) {
        const struct moe_gemm_shape *s = &rec->shape[i];
        na = s->M * s->K > na ? s->M * s->K : na;
        nb = s->K * s->N > nb ? s->K * s->N : nb;
        nc = s->M * s->N > nc ? s->M * s->N : nc;
    }
    r->a = moe_alloc(na, sizeof(float));
    r->b = moe_alloc(nb, sizeof(float));
    r->c = moe_alloc(nc, sizeof(float));
    if (!r->a || !r->b || !r->c)
        return moe_error(err, MOE_ENOMEM, "out of memory for the sgemm reference (%zu floats)", na + nb + nc);
    struct moe_rng g = moe_rng_make(1, MOE_RNG_INIT, 0);
    for (size_t i = 0; i < na; i++)
        r->a[i] = moe_rng_uniform(&g, i) - 0.5f;
    for (size_t i = 0; i < nb; i++)
        r->b[i] = moe_rng_uniform(&g, na + i) - 0.5f;
    return 0;
}

static void replay_release(struct replay *r)
{
    moe_free(r->a);
    moe_free(r->b);
    moe_free(r->c);
}

// Seconds BLIS takes for every recorded call, under the same threading rule as
// moe_gemm (moe_gemm_blis); dense operands of the same shapes.
static double replay_time(const struct replay *r, const struct moe_gemm_record *rec)
{
    double t0 = moe_prof_clock();
    for (size_t i = 0; i < rec->n; i++) {
        const struct moe_gemm_shape *s = &rec->shape[i];
        size_t lda = s->trans_a ? s->M : s->K, ldb = s->trans_b ? s->K : s->N;
        for (size_t k = 0; k < s->count; k++)
            moe_gemm_blis(s->trans_a, s->trans_b, s->M, s->N, s->K, 1.0f, r->a, lda, r->b, ldb, 0.0f, r->c, s->N);
    }
    return moe_prof_clock() - t0;
}

// ---------------------------------------------------------------- the report

struct pass_figs {
    double *seconds, *ref, *ratio, *phase[MOE_PHASE_N], *other;
};

static int figs_alloc(struct pass_figs *f, size_t R)
{
    memset(f, 0, sizeof *f);
    double *p = calloc((4 + MOE_PHASE_N) * R, sizeof *p);
    if (!p)
        return -1;
    f->seconds = p, p += R;
    f->ref = p, p += R;
    f->ratio = p, p += R;
    f->other = p, p += R;
    for (int ph = 0; ph < MOE_PHASE_N; ph++)
        f->phase[ph] = p, p += R;
    return 0;
}

static void figs_release(struct pass_figs *f) { free(f->seconds); }

// Repeat r of a pass: its time, the reference's, and the phase timers.
static void figs_take(struct pass_figs *f, size_t r, double seconds, double ref)
{
    f->seconds[r] = seconds;
    f->ref[r] = ref;
    f->ratio[r] = ref / seconds;
    double sum = 0.0;
    for (int ph = 0; ph < MOE_PHASE_N; ph++) {
        f->phase[ph][r] = moe_prof_seconds[ph];
        sum += moe_prof_seconds[ph];
    }
    f->other[r] = seconds - sum;
}

// Phases that ran (any repeat above zero), plus "other": the pass's time outside every timer.
static cJSON *phases_json(const struct pass_figs *f, size_t R)
{
    cJSON *o = cJSON_CreateObject();
    for (int ph = 0; ph < MOE_PHASE_N; ph++) {
        int ran = 0;
        for (size_t r = 0; r < R; r++)
            ran |= f->phase[ph][r] > 0.0;
        if (ran)
            cJSON_AddItemToObject(o, moe_phase_name((enum moe_phase)ph), fig_json(f->phase[ph], R));
    }
    cJSON_AddItemToObject(o, "other", fig_json(f->other, R));
    return o;
}

// ---------------------------------------------------------------- the layer

struct layer_bench {
    struct moe_params p;
    struct moe_layer l;
    float *x, *out, *dout, *dx;
    uint32_t *keys;
    size_t T, D;
    struct moe_ep *ep; // --expert-parallel: the layer's experts over the processes
};

static void layer_bench_release(struct layer_bench *b)
{
    moe_ep_free(b->ep);
    moe_layer_release(&b->l);
    moe_params_release(&b->p);
    void *bufs[] = { b->x, b->out, b->dout, b->dx, b->keys };
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++)
        moe_free(bufs[i]);
}

// --expert-parallel: a step of N micro-batches, one per process, each 1/N of
// the expert gradients' sum (as train with train.accumulate = N).
static void ep_shares(struct moe_ep *ep)
{
    ep->M = (size_t)ep->dist->size;
    for (size_t k = 0; k < ep->M; k++)
        ep->w[k] = 1.0f / (float)ep->dist->size;
}

// A copy of the model's first sparse layer (same settings) for T tokens of
// random input (over processes: rank r's input drawn from seed + r).
static int layer_bench_init(struct layer_bench *b, const struct moe_layer_cfg *c, size_t T, uint64_t seed,
                            float init_scale, struct moe_dist *d, struct moe_err *err)
{
    memset(b, 0, sizeof *b);
    moe_params_init(&b->p);
    b->T = T;
    b->D = c->D;
    int rc = moe_layer_declare(&b->l, c, "layers.0.moe", &b->p, err);
    if (rc || (rc = moe_params_alloc(&b->p, err)) || (rc = moe_layer_alloc(&b->l, T, err)))
        return rc;
    moe_layer_init(&b->l, &b->p, seed, init_scale);
    size_t TD = T * c->D;
    b->x = moe_alloc(TD, sizeof(float));
    b->out = moe_alloc(TD, sizeof(float));
    b->dout = moe_alloc(TD, sizeof(float));
    b->dx = moe_alloc(TD, sizeof(float));
    b->keys = moe_alloc(T, sizeof(uint32_t));
    if (!b->x || !b->out || !b->dout || !b->dx || !b->keys)
        return moe_error(err, MOE_ENOMEM, "out of memory for a layer of %zu tokens", T);
    struct moe_layer *l = &b->l;
    if (d && (rc = moe_ep_create(&b->ep, d, &l, 1, 1, (size_t)d->size, err)))
        return rc;
    if (b->ep) // every process's tokens a 1/N share of one step (a micro-batch each)
        ep_shares(b->ep);
    struct moe_rng g = moe_rng_make(seed + (d ? (uint64_t)d->rank : 0), MOE_RNG_INIT, 1);
    for (size_t i = 0; i < TD; i++) {
        b->x[i] = 2.0f * moe_rng_uniform(&g, i) - 1.0f;
        b->dout[i] = (2.0f * moe_rng_uniform(&g, TD + i) - 1.0f) / (float)TD;
    }
    size_t V = c->hash_vocab ? c->hash_vocab : 1;
    for (size_t t = 0; t < T; t++)
        b->keys[t] = (uint32_t)(moe_rng_uniform(&g, 2 * TD + t) * (float)V) % (uint32_t)V;
    return 0;
}

// One forward + backward; returns the forward's seconds in *ret_fwd.
static double layer_pass(struct layer_bench *b, uint64_t step, uint64_t seed, double *ret_fwd)
{
    size_t TD = b->T * b->D;
    double t0 = moe_prof_clock();
    memset(b->out, 0, TD * sizeof(float));
    moe_layer_forward(&b->l, &b->p, b->out, b->x, b->T, b->keys, 1, seed, step, NULL, NULL);
    double t1 = moe_prof_clock();
    moe_params_zero_grad(&b->p);
    memset(b->dx, 0, TD * sizeof(float));
    moe_layer_backward(&b->l, &b->p, b->dx, b->dout, b->x);
    double t2 = moe_prof_clock();
    *ret_fwd = t1 - t0;
    return t2 - t0;
}

// ---------------------------------------------------------------- the step

struct step_bench {
    struct moe_model *m;
    const struct moe_data *data;
    struct moe_optim opt;
    struct moe_stats stats;
    struct moe_lm_batch lb;
    size_t n;          // rows (windows) per step
    size_t tokens;     // tokens (rows) per step
    uint64_t seed;
    struct moe_ep *ep; // --expert-parallel: the sparse layers' experts over the processes
    double sum_seconds, sum_bytes; // the last step's sum of the gradients over the processes
};

static struct moe_batch step_batch(struct step_bench *s, uint64_t step)
{
    const struct moe_dataset *d = &s->data->train;
    if (s->ep) // over processes, each its own rows
        step = step * (uint64_t)s->ep->dist->size + (uint64_t)s->ep->dist->rank;
    if (d->task == MOE_TASK_LM)
        return moe_lm_batch_fill(d, &s->lb, s->seed, 1, (size_t)step * s->n % (d->n - s->n + 1), s->n);
    size_t start = (size_t)step * s->n % (d->n - s->n + 1);
    struct moe_batch b = {
        .n = s->n,
        .x = d->x + start * d->n_in,
        .y = d->y ? d->y + start * d->n_out : NULL,
        .label = d->label ? d->label + start : NULL,
        .group = d->group ? d->group + start : NULL,
    };
    return b;
}

// One training step as the trainer takes it; seconds, or a negative value on failure.
static double step_pass(struct step_bench *s, uint64_t step, struct moe_err *err)
{
    struct moe_batch b = step_batch(s, step);
    b.step = step;
    double t0 = moe_prof_clock();
    moe_params_zero_grad(&s->m->params);
    if (moe_model_run(s->m, &b, 1, &s->stats, err))
        return -1.0;
    if (s->ep) { // as train --expert-parallel: the experts' gradients stay, the others are summed
        s->sum_bytes = 0.0;
        double ts = moe_prof_clock();
        const struct moe_params *p = &s->m->params;
        for (size_t i = 0, lo = 0; i <= p->n; i++) { // runs of tensors between expert tensors
            if (i < p->n && !p->t[i].experts)
                continue;
            size_t hi = i < p->n ? p->t[i].offset : p->numel;
            if (hi > lo && moe_dist_sum(s->ep->dist, p->grad + lo, hi - lo, &s->sum_bytes, err))
                return -1.0;
            lo = i < p->n ? p->t[i].offset + p->t[i].numel : lo;
        }
        s->sum_seconds = moe_prof_clock() - ts;
    }
    double t1 = moe_prof_begin();
    float *w = s->m->params.data, *g = s->m->params.grad;
    double norm = moe_optim_grad_norm(g, s->m->params.numel);
    moe_optim_step_norm(&s->opt, w, g, norm);
    moe_prof_end(MOE_PHASE_OPTIMIZER, t1);
    return moe_prof_clock() - t0;
}

// ---------------------------------------------------------------- the command

// One timed pass kind (layer or step): warm-up passes with the GEMM record on
// during the first, then R repeats each followed by the sgemm reference.
struct pass_kind {
    const char *name;
    struct moe_gemm_record rec;
    struct replay ref;
    struct pass_figs f;
    double *fwd;      // layer only: forward seconds
    // --expert-parallel: per repeat, the seconds in the expert exchanges and
    // (step) in the sum of the gradients; the bytes each sends per pass
    double *ex, *sum;
    double ex_bytes, sum_bytes;
};

enum { PASS_LAYER, PASS_STEP };

// What one bench run holds; bench_release frees it all, whatever step it reached.
struct bench {
    struct moe_config cfg;
    struct moe_run_cfg rc;  // cfg read once, typed
    struct moe_data data;
    struct moe_model model;
    struct layer_bench lb;  // models with sparse layers
    struct step_bench sb;
    struct pass_kind pk[2]; // PASS_LAYER, PASS_STEP
    size_t T, R, W;         // tokens, repeats, warm-up passes
    uint64_t seed;
    struct moe_dist *dist;  // --expert-parallel N > 1, else NULL
};

static void bench_release(struct bench *b)
{
    moe_prof_enabled = 0;
    moe_gemm_record_into(NULL);
    for (int k = 0; k < 2; k++) {
        moe_gemm_record_release(&b->pk[k].rec);
        replay_release(&b->pk[k].ref);
        figs_release(&b->pk[k].f);
        free(b->pk[k].fwd);
        free(b->pk[k].ex);
        free(b->pk[k].sum);
    }
    moe_ep_free(b->sb.ep);
    layer_bench_release(&b->lb);
    moe_lm_batch_release(&b->sb.lb);
    moe_stats_release(&b->sb.stats);
    moe_optim_release(&b->sb.opt);
    moe_model_release(&b->model);
    moe_data_release(&b->data);
    moe_run_cfg_release(&b->rc);
    moe_config_release(&b->cfg);
}

// The config, its training data, the model and its optimizer for the step; the
// first sparse layer's copy for the layer; the figures' buffers.
static int bench_setup(const char *cmd, const struct cli_common *c, const struct bench_opts *bo, struct bench *b)
{
    struct moe_err err = { 0 };
    if (cli_load_config(c, &b->cfg, &err) || moe_run_cfg_parse(&b->rc, &b->cfg, &err) ||
        moe_data_load_cfg(&b->data, &b->rc.data, NULL, &err))
        return cli_fail(cmd, &err);
    const struct moe_dataset *tr = &b->data.train;
    int lm = tr->task == MOE_TASK_LM;
    size_t C = lm ? tr->n_ctx : 1;
    b->T = bo->tokens > 0 ? (size_t)bo->tokens : b->rc.optim.batch_size * C;
    if (b->T == 0)
        b->T = C; // optim.batch_size 0 (full batch): one window or row unless --tokens says otherwise
    size_t n = (b->T + C - 1) / C;
    if (n > tr->n)
        return cli_error(cmd, 2, "option '--tokens': %zu %s need more than the %zu training %s", b->T,
                         lm ? "tokens" : "rows", tr->n, lm ? "windows per epoch" : "rows");
    b->seed = b->rc.train.seed;
    // --expert-parallel: each process holds its experts only, as in train
    if ((b->dist && moe_ep_check_experts(b->rc.model.n_expert, b->dist->size, &err)) ||
        moe_model_create_shard(&b->model, &b->rc.model, NULL, tr->task, tr->n_in, tr->n_out, n,
                               b->dist ? b->dist->rank : 0, b->dist ? b->dist->size : 1, &err))
        return cli_fail(cmd, &err);
    moe_model_init_weights(&b->model, b->seed);
    b->sb = (struct step_bench){ .m = &b->model, .data = &b->data, .n = n, .tokens = n * C, .seed = b->seed };
    if (moe_model_fit(&b->model, tr, &err) || moe_optim_init(&b->sb.opt, &b->rc.optim, b->model.params.numel, &err) ||
        moe_train_stats_init(&b->sb.stats, &b->model, tr, &err) || (lm && moe_lm_batch_alloc(&b->sb.lb, n, C, &err)))
        return cli_fail(cmd, &err);
    if (b->dist && (moe_ep_check(b->model.n_moe_layers, b->model.moe_layers, b->model.ops->type, b->dist->size, &err) ||
                    moe_ep_create(&b->sb.ep, b->dist, b->model.moe_layers, b->model.n_moe_layers, 1,
                                  (size_t)b->dist->size, &err)))
        return cli_fail(cmd, &err);
    if (b->sb.ep)
        ep_shares(b->sb.ep);
    if (b->model.n_moe_layers > 0 &&
        layer_bench_init(&b->lb, &b->model.moe_layers[0]->c, b->T, b->seed,
                         (float)b->rc.model.init_scale, b->dist, &err))
        return cli_fail(cmd, &err);
    for (int k = 0; k < 2; k++)
        if (figs_alloc(&b->pk[k].f, b->R) || !(b->pk[k].fwd = calloc(b->R, sizeof(double))) ||
            !(b->pk[k].ex = calloc(b->R, sizeof(double))) || !(b->pk[k].sum = calloc(b->R, sizeof(double))))
            return cli_error(cmd, 1, "out of memory");
    return 0;
}

// One pass of kind k (pass number i): its seconds in *ret_seconds and, for a
// layer pass, the forward's in *ret_fwd; 0, or the exit code after printing why it failed.
static int bench_pass(const char *cmd, struct bench *b, int k, uint64_t i, double *ret_seconds, double *ret_fwd)
{
    struct moe_err err = { 0 };
    struct moe_ep *ep = k == PASS_LAYER ? b->lb.ep : b->sb.ep;
    if (k == PASS_LAYER)
        *ret_seconds = layer_pass(&b->lb, i, b->seed, ret_fwd);
    else
        *ret_seconds = step_pass(&b->sb, i, &err);
    if (ep && ep->rc && *ret_seconds >= 0) {
        err = ep->err;
        *ret_seconds = -1.0;
    }
    return *ret_seconds < 0 ? cli_fail(cmd, &err) : 0;
}

// Time pass kind k: W + 1 warm-up passes, the first recording its GEMM shapes,
// then R repeats, each followed by the sgemm reference over those shapes.
static int bench_time(const char *cmd, struct bench *b, int k)
{
    struct pass_kind *p = &b->pk[k];
    struct moe_err err = { 0 };
    double t, fwd;
    int rc;
    for (size_t w = 0; w < b->W + 1; w++) {
        moe_gemm_record_into(w == 0 ? &p->rec : NULL);
        if ((rc = bench_pass(cmd, b, k, w, &t, &fwd)))
            return rc;
    }
    moe_gemm_record_into(NULL);
    if (p->rec.failed)
        return cli_error(cmd, 1, "out of memory recording GEMM shapes");
    if (replay_alloc(&p->ref, &p->rec, &err))
        return cli_fail(cmd, &err);
    struct moe_ep *ep = k == PASS_LAYER ? b->lb.ep : b->sb.ep;
    for (size_t r = 0; r < b->R; r++) {
        moe_prof_reset();
        double ex0 = ep ? ep->seconds : 0.0, by0 = ep ? ep->bytes : 0.0;
        if ((rc = bench_pass(cmd, b, k, b->W + 1 + r, &t, &fwd)))
            return rc;
        if (k == PASS_LAYER)
            p->fwd[r] = fwd;
        if (ep) {
            p->ex[r] = ep->seconds - ex0;
            p->ex_bytes = ep->bytes - by0;
            p->sum[r] = k == PASS_STEP ? b->sb.sum_seconds : 0.0;
            p->sum_bytes = k == PASS_STEP ? b->sb.sum_bytes : 0.0;
        }
        double phases[MOE_PHASE_N];
        memcpy(phases, moe_prof_seconds, sizeof phases);
        double ref = replay_time(&p->ref, &p->rec);
        memcpy(moe_prof_seconds, phases, sizeof phases);
        figs_take(&p->f, r, t, ref);
    }
    return 0;
}

// The report's "layer": its shape, forward and forward + backward times, their
// GEMM rate, the routing share and the phases; the sgemm reference's rate.
static cJSON *layer_json(const struct bench *b, double *gf, double *share, cJSON *ref)
{
    const struct moe_layer_cfg *lc = &b->lb.l.c;
    const struct pass_kind *p = &b->pk[PASS_LAYER];
    size_t R = b->R;
    double flops = moe_gemm_record_flops(&p->rec);
    cJSON *l = cJSON_CreateObject();
    cJSON *shape = cJSON_AddObjectToObject(l, "shape");
    cJSON_AddNumberToObject(shape, "tokens", (double)b->T);
    cJSON_AddNumberToObject(shape, "n_embd", (double)lc->D);
    cJSON_AddNumberToObject(shape, "n_ff", (double)lc->F);
    cJSON_AddNumberToObject(shape, "n_expert", (double)lc->router.E);
    cJSON_AddNumberToObject(shape, "n_expert_used", (double)lc->router.K);
    cJSON_AddStringToObject(shape, "router", moe_router_name(lc->router.type));
    cJSON *fw = cJSON_AddObjectToObject(l, "forward");
    cJSON_AddItemToObject(fw, "seconds", fig_json(p->fwd, R));
    cJSON *fb = cJSON_AddObjectToObject(l, "forward_backward");
    cJSON_AddItemToObject(fb, "seconds", fig_json(p->f.seconds, R));
    cJSON_AddItemToObject(fb, "ratio_to_sgemm", fig_json(p->f.ratio, R));
    for (size_t r = 0; r < R; r++) {
        gf[r] = flops / p->f.seconds[r] * 1e-9;
        share[r] = (p->f.phase[MOE_PHASE_ROUTER][r] + p->f.phase[MOE_PHASE_DISPATCH][r] +
                    p->f.phase[MOE_PHASE_COMBINE][r] + p->f.phase[MOE_PHASE_AUX][r]) / p->f.seconds[r];
    }
    cJSON_AddItemToObject(fb, "gemm_gflops", fig_json(gf, R));
    cJSON_AddNumberToObject(fb, "gemm_flops", flops);
    cJSON_AddNumberToObject(fb, "gemm_calls_shapes", (double)p->rec.n);
    cJSON_AddItemToObject(l, "routing_share", fig_json(share, R));
    cJSON_AddItemToObject(l, "phases", phases_json(&p->f, R));
    for (size_t r = 0; r < R; r++)
        gf[r] = flops / p->f.ref[r] * 1e-9;
    cJSON_AddItemToObject(ref, "layer_sgemm_gflops", fig_json(gf, R));
    return l;
}

// The report's "step": its rows and tokens, time, throughput, GEMM rate and
// phases; the sgemm reference's rate.
static void step_json(cJSON *out, const struct bench *b, double *gf, double *tps, cJSON *ref)
{
    const struct pass_kind *p = &b->pk[PASS_STEP];
    size_t R = b->R;
    double flops = moe_gemm_record_flops(&p->rec);
    cJSON *st = cJSON_AddObjectToObject(out, "step");
    cJSON_AddNumberToObject(st, "rows", (double)b->sb.n);
    cJSON_AddNumberToObject(st, "tokens", (double)b->sb.tokens);
    cJSON_AddItemToObject(st, "seconds", fig_json(p->f.seconds, R));
    for (size_t r = 0; r < R; r++) {
        tps[r] = (double)b->sb.tokens / p->f.seconds[r];
        gf[r] = flops / p->f.seconds[r] * 1e-9;
    }
    cJSON_AddItemToObject(st, "tokens_per_second", fig_json(tps, R));
    cJSON_AddItemToObject(st, "ratio_to_sgemm", fig_json(p->f.ratio, R));
    cJSON_AddItemToObject(st, "gemm_gflops", fig_json(gf, R));
    cJSON_AddNumberToObject(st, "gemm_flops", flops);
    cJSON_AddNumberToObject(st, "gemm_shapes", (double)p->rec.n);
    cJSON_AddItemToObject(st, "phases", phases_json(&p->f, R));
    for (size_t r = 0; r < R; r++)
        gf[r] = flops / p->f.ref[r] * 1e-9;
    cJSON_AddItemToObject(ref, "sgemm_gflops", fig_json(gf, R));
}

// --expert-parallel: rank 0's exchanges beside its compute, per pass.
static void ep_json(cJSON *out, const struct bench *b, double *v)
{
    size_t R = b->R, N = (size_t)b->dist->size;
    cJSON *e = cJSON_AddObjectToObject(out, "expert_parallel");
    cJSON_AddNumberToObject(e, "processes", (double)N);
    cJSON_AddStringToObject(e, "what", "rank 0, per pass: seconds in the expert exchanges (rows to and from the experts' processes, expert gradients back; waits for the others included), in the sum of the gradients over the processes (step), the rest; bytes sent to the other processes");
    for (int k = b->model.n_moe_layers > 0 ? PASS_LAYER : PASS_STEP; k <= PASS_STEP; k++) {
        const struct pass_kind *p = &b->pk[k];
        cJSON *o = cJSON_AddObjectToObject(e, p->name);
        cJSON_AddItemToObject(o, "exchange_seconds", fig_json(p->ex, R));
        if (k == PASS_STEP)
            cJSON_AddItemToObject(o, "gradient_sum_seconds", fig_json(p->sum, R));
        for (size_t r = 0; r < R; r++)
            v[r] = p->f.seconds[r] - p->ex[r] - p->sum[r];
        cJSON_AddItemToObject(o, "compute_seconds", fig_json(v, R));
        cJSON_AddNumberToObject(o, "exchange_bytes_sent", p->ex_bytes);
        if (k == PASS_STEP) {
            cJSON_AddNumberToObject(o, "gradient_sum_bytes_sent", p->sum_bytes);
            for (size_t r = 0; r < R; r++)
                v[r] = (double)(N * b->sb.tokens) / p->f.seconds[r];
            cJSON_AddItemToObject(o, "tokens_per_second_all_processes", fig_json(v, R));
        }
    }
}

// The JSON object on stdout.
static int bench_report(const char *cmd, const struct bench *b)
{
    double *gf = calloc(b->R, sizeof *gf), *share = calloc(b->R, sizeof *share), *tps = calloc(b->R, sizeof *tps);
    if (!gf || !share || !tps) {
        free(gf), free(share), free(tps);
        return cli_error(cmd, 1, "out of memory");
    }
    cJSON *out = cli_summary_new(cmd, &b->cfg, b->rc.train.seed); // "device": "cpu" included
    cJSON_AddStringToObject(out, "vmath", moe_vmath_isa());
    cJSON_AddNumberToObject(out, "tokens", (double)b->T);
    cJSON_AddNumberToObject(out, "repeats", (double)b->R);
    cJSON_AddNumberToObject(out, "warmup", (double)b->W);
    cJSON *ref = cJSON_AddObjectToObject(out, "reference");
    if (b->model.n_moe_layers > 0)
        cJSON_AddItemToObject(out, "layer", layer_json(b, gf, share, ref));
    else
        cJSON_AddNullToObject(out, "layer");
    step_json(out, b, gf, tps, ref);
    cJSON_AddStringToObject(ref, "what", "BLIS sgemm (bli_sgemm under moe_gemm's threading rule) over the shapes each pass ran, timed right after it");
    if (b->dist)
        ep_json(out, b, gf);
    free(gf), free(share), free(tps);
    int rc = cli_print_json(cmd, out);
    cJSON_Delete(out);
    return rc;
}

static int bench_run(const char *cmd, struct cli_common *c, const struct bench_opts *bo, struct moe_dist *d)
{
    struct bench b;
    memset(&b, 0, sizeof b);
    b.dist = d;
    b.pk[PASS_LAYER].name = "layer";
    b.pk[PASS_STEP].name = "step";
    b.R = (size_t)bo->repeats;
    b.W = (size_t)bo->warmup;
    int rc = bench_setup(cmd, c, bo, &b);
    if (!rc) {
        cli_log(c, "bench: %zu tokens%s, %zu repeats, %d threads, BLIS %s", b.T, d ? " per process" : "", b.R,
                moe_blas_get_info()->threads, moe_blas_get_info()->arch);
        moe_prof_enabled = 1;
        for (int k = b.model.n_moe_layers > 0 ? PASS_LAYER : PASS_STEP; !rc && k <= PASS_STEP; k++)
            rc = bench_time(cmd, &b, k);
        moe_prof_enabled = 0;
    }
    rc = cli_agree(cmd, d, rc);
    if (!rc)
        rc = bench_report(cmd, &b);
    bench_release(&b);
    return rc;
}

// --expert-parallel N: MPI started with N processes, then bench_run over them.
static int bench_over(const char *cmd, struct cli_common *c, const struct bench_opts *bo)
{
    struct moe_dist d;
    struct moe_err err = { 0 };
    int rc = moe_dist_init(&d, (int)bo->n_proc, "--expert-parallel", &err);
    cli_rank = d.rank;
    rc = rc ? cli_fail(cmd, &err) : bench_run(cmd, c, bo, bo->n_proc > 1 ? &d : NULL);
    moe_dist_finalize(&d);
    cli_rank = 0;
    return rc;
}

// ---------------------------------------------------------------- the layer on a CUDA device

// What a --device cuda run holds; gpu_release frees it all.
struct gpu_bench {
    struct moe_config cfg;
    struct moe_run_cfg rc;
    struct moe_data data;
    struct moe_model model;     // for its first sparse layer's settings (one row of batch)
    struct moe_params p;        // that layer's weights, initialised on the host
    struct moe_layer l;
    struct moe_cuda_layer *dl;
    struct moe_cuda_timer *tf, *tb;
    float *x, *out, *dout, *dx; // device (T, D)
    size_t T, R, W;
    uint64_t seed;
    // per repeat: forward and forward + backward seconds, their references, phases
    double *fwd, *fb, *ref_f, *ref_fb, *ph_f[MOE_PHASE_N], *ph_fb[MOE_PHASE_N];
    double flops_f, flops_fb;
    size_t rows;
};

static void gpu_release(struct gpu_bench *g)
{
    moe_cuda_free(g->x), moe_cuda_free(g->out), moe_cuda_free(g->dout), moe_cuda_free(g->dx);
    moe_cuda_timer_free(g->tf);
    moe_cuda_timer_free(g->tb);
    moe_cuda_layer_free(g->dl);
    moe_layer_release(&g->l);
    moe_params_release(&g->p);
    free(g->fwd);
    moe_model_release(&g->model);
    moe_data_release(&g->data);
    moe_run_cfg_release(&g->rc);
    moe_config_release(&g->cfg);
}

// The config's first sparse layer with its initial weights on the device, T
// random tokens and output gradients (drawn as layer_bench_init draws them).
static int gpu_setup(const char *cmd, const struct cli_common *c, const struct bench_opts *bo, int device,
                     struct gpu_bench *g)
{
    struct moe_err err = { 0 };
    if (cli_load_config(c, &g->cfg, &err) || moe_run_cfg_parse(&g->rc, &g->cfg, &err) ||
        moe_data_load_cfg(&g->data, &g->rc.data, NULL, &err))
        return cli_fail(cmd, &err);
    const struct moe_dataset *tr = &g->data.train;
    size_t C = tr->task == MOE_TASK_LM ? tr->n_ctx : 1;
    g->T = bo->tokens > 0 ? (size_t)bo->tokens : g->rc.optim.batch_size * C;
    if (g->T == 0)
        g->T = C;
    g->seed = g->rc.train.seed;
    // one row (window) of batch: only the layer's settings are wanted
    if (moe_model_create_hp(&g->model, &g->rc.model, NULL, tr->task, tr->n_in, tr->n_out, 1, &err))
        return cli_fail(cmd, &err);
    if (g->model.n_moe_layers == 0)
        return cli_error(cmd, 2, "option '--device %s' cannot be used: bench times only the first sparse MoE layer "
                         "on a GPU, and model.type '%s' has none; use --device cpu", c->device, g->model.ops->type);
    const struct moe_layer_cfg *lc = &g->model.moe_layers[0]->c;
    if (moe_cuda_use_device(device, &err) || moe_cuda_layer_create(&g->dl, lc, g->T, &err))
        return cli_fail(cmd, &err);
    moe_params_init(&g->p);
    // (its CPU buffers for one token: the device has its own; what matters is its state, e.g. the hash table)
    if (moe_layer_declare(&g->l, lc, "layers.0.moe", &g->p, &err) || moe_params_alloc(&g->p, &err) ||
        moe_layer_alloc(&g->l, 1, &err))
        return cli_fail(cmd, &err);
    moe_layer_init(&g->l, &g->p, g->seed, (float)g->rc.model.init_scale);
    const struct moe_params *p = &g->p;
    const struct moe_layer *l = &g->l;
#define HOST_W(i) ((i) >= 0 ? moe_params_data(p, (i)) : NULL)
    const struct moe_cuda_layer_tensors w = { HOST_W(l->i_router), HOST_W(l->i_noise), HOST_W(l->i_w1),
                                              HOST_W(l->i_w3),     HOST_W(l->i_w2),    HOST_W(l->i_sw1),
                                              HOST_W(l->i_sw3),    HOST_W(l->i_sw2) };
#undef HOST_W
    if (moe_cuda_layer_set_weights(g->dl, &w, &err))
        return cli_fail(cmd, &err);
    const size_t TD = g->T * lc->D, bytes = TD * sizeof(float);
    float *h = moe_alloc(TD, sizeof(float));
    uint32_t *keys = moe_alloc(g->T, sizeof(uint32_t));
    if (!h || !keys) {
        moe_free(h), moe_free(keys);
        return cli_error(cmd, 1, "out of memory for %zu tokens of input", g->T);
    }
    struct moe_rng r = moe_rng_make(g->seed, MOE_RNG_INIT, 1);
    int rc = moe_cuda_malloc((void **)&g->x, bytes, "the bench's input", &err) ||
             moe_cuda_malloc((void **)&g->out, bytes, "the bench's output", &err) ||
             moe_cuda_malloc((void **)&g->dout, bytes, "the bench's output gradient", &err) ||
             moe_cuda_malloc((void **)&g->dx, bytes, "the bench's input gradient", &err);
    if (!rc) {
        for (size_t i = 0; i < TD; i++)
            h[i] = 2.0f * moe_rng_uniform(&r, i) - 1.0f;
        rc = moe_cuda_to_device(g->x, h, bytes, &err);
    }
    if (!rc) {
        for (size_t i = 0; i < TD; i++)
            h[i] = (2.0f * moe_rng_uniform(&r, TD + i) - 1.0f) / (float)TD;
        rc = moe_cuda_to_device(g->dout, h, bytes, &err);
    }
    if (!rc && l->table) { // hash routing: keys drawn as layer_bench_init draws them
        size_t V = lc->hash_vocab ? lc->hash_vocab : 1;
        for (size_t t = 0; t < g->T; t++)
            keys[t] = (uint32_t)(moe_rng_uniform(&r, 2 * TD + t) * (float)V) % (uint32_t)V;
        rc = moe_cuda_layer_set_keys(g->dl, keys, l->table, V, g->T, &err);
    }
    moe_free(h), moe_free(keys);
    if (rc || moe_cuda_timer_create(&g->tf, &err) || moe_cuda_timer_create(&g->tb, &err))
        return cli_fail(cmd, &err);
    size_t R = g->R;
    double *v = calloc((4 + 2 * MOE_PHASE_N) * R, sizeof *v);
    if (!v)
        return cli_error(cmd, 1, "out of memory");
    g->fwd = v, v += R;
    g->fb = v, v += R;
    g->ref_f = v, v += R;
    g->ref_fb = v, v += R;
    for (int ph = 0; ph < MOE_PHASE_N; ph++) {
        g->ph_f[ph] = v, v += R;
        g->ph_fb[ph] = v, v += R;
    }
    return 0;
}

// One forward + backward as layer_pass takes it (output, input gradient and
// weight gradients zeroed inside the timed span); seconds of the forward in
// *ret_fwd, of both in *ret_fb; with ph_f, ph_fb the phases (added).
static int gpu_pass(struct gpu_bench *g, uint64_t step, double *ret_fwd, double *ret_fb, double *ph_f, double *ph_fb,
                    struct moe_err *err)
{
    const size_t bytes = g->T * g->l.c.D * sizeof(float);
    int rc;
    if ((rc = moe_cuda_timer_start(g->tb, err)) || (rc = moe_cuda_timer_start(g->tf, err)) ||
        (rc = moe_cuda_layer_memzero(g->out, bytes, err)) ||
        (rc = moe_cuda_layer_forward(g->dl, g->out, g->x, g->T, 1, g->seed, step, NULL, err)) ||
        (rc = moe_cuda_timer_stop(g->tf, ret_fwd, err)))
        return rc;
    if (ph_f && (rc = moe_cuda_layer_phases(g->dl, ph_f, err)))
        return rc;
    if ((rc = moe_cuda_layer_zero_grad(g->dl, err)) || (rc = moe_cuda_layer_memzero(g->dx, bytes, err)) ||
        (rc = moe_cuda_layer_backward(g->dl, g->dx, g->dout, g->x, err)) ||
        (rc = moe_cuda_timer_stop(g->tb, ret_fb, err)))
        return rc;
    if (ph_fb && (rc = moe_cuda_layer_phases(g->dl, ph_fb, err)))
        return rc;
    return 0;
}

// W + 1 warm-up passes, then R repeats, each followed by the dense
// references of its forward and of its forward + backward.
static int gpu_time(const char *cmd, struct gpu_bench *g)
{
    struct moe_err err = { 0 };
    double f, fb, flops;
    for (size_t w = 0; w < g->W + 1; w++)
        if (gpu_pass(g, w, &f, &fb, NULL, NULL, &err))
            return cli_fail(cmd, &err);
    moe_cuda_layer_timing(g->dl, 1);
    for (size_t r = 0; r < g->R; r++) {
        double pf[MOE_PHASE_N] = { 0 }, pb[MOE_PHASE_N] = { 0 };
        if (gpu_pass(g, g->W + 1 + r, &g->fwd[r], &g->fb[r], pf, pb, &err) ||
            moe_cuda_layer_route(g->dl, NULL, NULL, NULL, &g->rows, NULL, NULL, &err))
            return cli_fail(cmd, &err);
        g->flops_f = moe_cuda_layer_flops(g->dl, 0);
        g->flops_fb = moe_cuda_layer_flops(g->dl, 1);
        if (moe_cuda_layer_reference(g->dl, 0, &g->ref_f[r], &flops, &err) ||
            moe_cuda_layer_reference(g->dl, 1, &g->ref_fb[r], &flops, &err))
            return cli_fail(cmd, &err);
        for (int ph = 0; ph < MOE_PHASE_N; ph++) {
            g->ph_f[ph][r] = pf[ph];
            g->ph_fb[ph][r] = pf[ph] + pb[ph];
        }
    }
    moe_cuda_layer_timing(g->dl, 0);
    return 0;
}

// One pass kind's figures: seconds, ratio to the reference, GEMM rate, the
// routing share (router, dispatch, combine, aux over the pass) and phases.
static cJSON *gpu_pass_json(const struct gpu_bench *g, const double *sec, const double *ref,
                            double *const *ph, double flops, double *v)
{
    size_t R = g->R;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddItemToObject(o, "seconds", fig_json(sec, R));
    for (size_t r = 0; r < R; r++)
        v[r] = ref[r] / sec[r];
    cJSON_AddItemToObject(o, "ratio_to_sgemm", fig_json(v, R));
    for (size_t r = 0; r < R; r++)
        v[r] = flops / sec[r] * 1e-9;
    cJSON_AddItemToObject(o, "gemm_gflops", fig_json(v, R));
    cJSON_AddNumberToObject(o, "gemm_flops", flops);
    for (size_t r = 0; r < R; r++)
        v[r] = (ph[MOE_PHASE_ROUTER][r] + ph[MOE_PHASE_DISPATCH][r] + ph[MOE_PHASE_COMBINE][r] +
                ph[MOE_PHASE_AUX][r]) / sec[r];
    cJSON_AddItemToObject(o, "routing_share", fig_json(v, R));
    cJSON *p = cJSON_AddObjectToObject(o, "phases");
    static const enum moe_phase shown[] = { MOE_PHASE_ROUTER, MOE_PHASE_DISPATCH, MOE_PHASE_FFN_GEMM,
                                            MOE_PHASE_ACTIVATION, MOE_PHASE_COMBINE, MOE_PHASE_AUX };
    double sum[MAX_REPEATS] = { 0 };
    for (size_t i = 0; i < sizeof shown / sizeof *shown; i++) {
        cJSON_AddItemToObject(p, moe_phase_name(shown[i]), fig_json(ph[shown[i]], R));
        for (size_t r = 0; r < R; r++)
            sum[r] += ph[shown[i]][r];
    }
    for (size_t r = 0; r < R; r++)
        v[r] = sec[r] - sum[r];
    cJSON_AddItemToObject(p, "other", fig_json(v, R));
    return o;
}

static int gpu_report(const char *cmd, const struct gpu_bench *g, const struct cli_common *c,
                      const struct moe_backend_info *info)
{
    size_t R = g->R;
    double *v = calloc(R, sizeof *v);
    if (!v)
        return cli_error(cmd, 1, "out of memory");
    const struct moe_layer_cfg *lc = &g->l.c;
    cJSON *out = cli_summary_new(cmd, &g->cfg, g->rc.train.seed);
    char dev[32];
    snprintf(dev, sizeof dev, "cuda:%d", c->device_id);
    cJSON_DeleteItemFromObject(out, "device"); // cli_summary_new's "cpu"
    cJSON_AddStringToObject(out, "device", dev);
    cJSON_AddStringToObject(out, "device_name", info->dev.name);
    char cc[16];
    snprintf(cc, sizeof cc, "%d.%d", info->dev.cc_major, info->dev.cc_minor);
    cJSON_AddStringToObject(out, "compute_capability", cc);
    cJSON_AddNumberToObject(out, "tokens", (double)g->T);
    cJSON_AddNumberToObject(out, "repeats", (double)R);
    cJSON_AddNumberToObject(out, "warmup", (double)g->W);
    cJSON *l = cJSON_AddObjectToObject(out, "layer");
    cJSON *shape = cJSON_AddObjectToObject(l, "shape");
    cJSON_AddNumberToObject(shape, "tokens", (double)g->T);
    cJSON_AddNumberToObject(shape, "n_embd", (double)lc->D);
    cJSON_AddNumberToObject(shape, "n_ff", (double)lc->F);
    cJSON_AddNumberToObject(shape, "n_expert", (double)lc->router.E);
    cJSON_AddNumberToObject(shape, "n_expert_used", (double)lc->router.K);
    cJSON_AddStringToObject(shape, "router", moe_router_name(lc->router.type));
    cJSON_AddStringToObject(shape, "act", moe_ffn_act_name(lc->act));
    cJSON_AddNumberToObject(l, "rows_kept", (double)g->rows);
    cJSON_AddStringToObject(l, "expert_gemms", moe_cuda_gemm_grouped_path());
    cJSON_AddItemToObject(l, "forward", gpu_pass_json(g, g->fwd, g->ref_f, g->ph_f, g->flops_f, v));
    cJSON_AddItemToObject(l, "forward_backward", gpu_pass_json(g, g->fb, g->ref_fb, g->ph_fb, g->flops_fb, v));
    // the figures the CPU report has at the layer's top level: forward + backward's
    for (size_t r = 0; r < R; r++)
        v[r] = (g->ph_fb[MOE_PHASE_ROUTER][r] + g->ph_fb[MOE_PHASE_DISPATCH][r] + g->ph_fb[MOE_PHASE_COMBINE][r] +
                g->ph_fb[MOE_PHASE_AUX][r]) / g->fb[r];
    cJSON_AddItemToObject(l, "routing_share", fig_json(v, R));
    cJSON *ref = cJSON_AddObjectToObject(out, "reference");
    cJSON_AddStringToObject(ref, "what", "cuBLAS sgemm (fp32, no TF32) over the shapes of the layer's own GEMM "
                                         "calls with every expert's block merged into one GEMM over all kept rows "
                                         "(same FLOPs), timed with CUDA events right after each repeat");
    cJSON_AddItemToObject(ref, "forward_seconds", fig_json(g->ref_f, R));
    cJSON_AddItemToObject(ref, "forward_backward_seconds", fig_json(g->ref_fb, R));
    for (size_t r = 0; r < R; r++)
        v[r] = g->flops_f / g->ref_f[r] * 1e-9;
    cJSON_AddItemToObject(ref, "forward_gflops", fig_json(v, R));
    for (size_t r = 0; r < R; r++)
        v[r] = g->flops_fb / g->ref_fb[r] * 1e-9;
    cJSON_AddItemToObject(ref, "forward_backward_gflops", fig_json(v, R));
    cJSON_AddNullToObject(out, "step");
    cJSON_AddStringToObject(out, "step_note", "--device cuda times the first sparse layer only; moe train "
                                              "--device cuda reports the whole step's rate (train_tokens_per_second "
                                              "or train_rows_per_second in its summary)");
    free(v);
    int rc = cli_print_json(cmd, out);
    cJSON_Delete(out);
    return rc;
}

static int bench_gpu(const char *cmd, struct cli_common *c, const struct bench_opts *bo,
                     const struct moe_backend_info *info)
{
    if (bo->n_proc)
        return cli_error(cmd, 2, "option '--expert-parallel' cannot be used with '--device %s'", c->device);
    struct gpu_bench g;
    memset(&g, 0, sizeof g);
    g.R = (size_t)bo->repeats;
    g.W = (size_t)bo->warmup;
    int rc = gpu_setup(cmd, c, bo, info->device, &g);
    if (!rc) {
        cli_log(c, "bench: %zu tokens on %s (%s), %zu repeats", g.T, c->device, info->dev.name, g.R);
        rc = gpu_time(cmd, &g);
    }
    if (!rc)
        rc = gpu_report(cmd, &g, c, info);
    gpu_release(&g);
    return rc;
}

int cmd_bench(int argc, char **argv)
{
    static const struct option opts[] = { CLI_COMMON_OPTIONS,
                                          { "tokens", required_argument, NULL, OPT_TOKENS },
                                          { "repeats", required_argument, NULL, OPT_REPEATS },
                                          { "warmup", required_argument, NULL, OPT_WARMUP },
                                          { "expert-parallel", required_argument, NULL, OPT_EXPERT_PARALLEL },
                                          { 0, 0, 0, 0 } };
    const char *cmd = "bench";
    struct cli_common c;
    struct bench_opts o = { 0, 5, 1, 0 };
    struct moe_backend_info cuda;
    cli_common_init(&c);
    int rc = cli_parse(argc, argv, cmd, opts, &c, on_opt, &o);
    if (rc == -1) {
        fputs(usage, stdout);
        rc = 0;
    } else if (!rc && c.out) {
        rc = cli_error(cmd, 2, "option '--out': bench writes no run directory (its result is stdout)");
    } else if (!rc && !(rc = cli_setup_compute_cuda(cmd, &c, &cuda))) {
        if (cuda.available)
            rc = bench_gpu(cmd, &c, &o, &cuda);
        else
            rc = o.n_proc ? bench_over(cmd, &c, &o) : bench_run(cmd, &c, &o, NULL);
    }
    cli_common_release(&c);
    return rc;
}
