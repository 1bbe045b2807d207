// test_tune.c: partial fine-tuning and LoRA adapters (train/tune.h).
//   - step 0 is the base model bit for bit: with B = 0 the materialised weights,
//     the evaluation statistics, the routing and the gradients are identical
//     (mlp-moe and Transformer, per-expert and shared adapters);
//   - the merged weights W0 + s B A applied to x agree with the unmerged
//     evaluation W0 x + s B (A x) in double within 1e-6 of the terms' magnitude,
//     and moe_lora_unapply gives W0 back bit for bit;
//   - adapter gradients (dB = s G A^T, dA = s B^T G; shared adapters summed
//     over experts) against central differences of the model's batch-mean loss
//     (gradcheck.h), for mlp-moe per-expert and shared, and a Transformer with
//     attention, dense FFN, expert and head adapters;
//   - moe_lora_apply / moe_lora_backward against plain loops;
//   - moe_tune_select and moe_lora_create: globs, errors;
//   - optimizer segments: one segment is moe_optim_step_norm, two segments are
//     one flat step, bit for bit;
//   - moe_train_ex with hooks.frozen and hooks.lora: frozen tensors are
//     byte-identical after training (AdamW with weight decay), trained ones move.
//   - expert ranges (GLOB@A-B): moe_tune_glob_range on good and malformed
//     ranges; moe_tune_select_ex slice by slice (overrides, whole-tensor
//     collapse, counts), its errors (malformed range, expert beyond E-1, range
//     on a non-expert or shared-expert tensor) naming key, glob and tensor; a
//     tensor trained in part gets no LoRA adapter;
//   - moe_train_ex with hooks.frozen_experts: with "...experts.*@0-1" on 4
//     experts slices 0-1 move, 2-3 are byte-identical, the optimizer's moments
//     cover the trained slices only; clipping takes the norm over the trained
//     slices only (two gd steps by hand, bit for bit).
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/gemm.h"
#include "core/params.h"
#include "core/rng.h"
#include "gradcheck.h"
#include "io/config.h"
#include "model/model.h"
#include "moe/moe_layer.h"
#include "testutil.h"
#include "train/train.h"
#include "train/tune.h"

#define H_STEP 3e-3f

// mlp-moe batches: T rows of NI features, NC classes. LM batches: NB windows of
// NCTX + 1 tokens over NV ids.
enum { T = 12, NI = 5, NC = 3, NB = 3, NCTX = 5, NV = 11 };

static struct moe_config load_cfg(const char *json)
{
    struct moe_config cfg;
    struct moe_err err;
    int rc = moe_config_parse(&cfg, moe_run_schema(), moe_run_schema_len(), json, "test", NULL, 0, &err);
    ck_assert_msg(rc == 0, "%s", err.msg);
    return cfg;
}

// Routing is smooth in these configs only while no selection changes: no noise,
// no jitter, no capacity drops, no bias balancing.
// mlp-moe: block 0 dense (layers.0.ffn.*), block 1 sparse, softmax top-2 of 3, gelu.
static const char *const MLP_CFG =
    "{\"model\":{\"type\":\"mlp-moe\",\"n_embd\":6,\"n_layer\":2,\"moe_every\":2,\"n_ff\":4,\"n_expert\":3,"
    "\"n_expert_used\":2,\"ffn_activation\":\"gelu\"},"
    "\"moe\":{\"router\":\"softmax\",\"capacity_factor\":0,\"eval_capacity_factor\":0,\"aux_weight\":0.1}}";
// A two-expert-layer mlp-moe (both blocks sparse), switch routing, relu: for step 0.
static const char *const MLP2_CFG =
    "{\"model\":{\"type\":\"mlp-moe\",\"n_embd\":8,\"n_layer\":2,\"n_ff\":6,\"n_expert\":4,\"n_expert_used\":1},"
    "\"moe\":{\"router\":\"switch\",\"capacity_factor\":1,\"eval_capacity_factor\":1}}";
// Transformer: block 0 dense, block 1 switch over 3 experts, gelu, layernorm, separate head.
static const char *const LM_CFG =
    "{\"model\":{\"type\":\"transformer\",\"n_ctx\":5,\"n_embd\":8,\"n_head\":2,\"n_layer\":2,\"moe_every\":2,"
    "\"n_ff\":4,\"n_expert\":3,\"n_expert_used\":1,\"ffn_activation\":\"gelu\"},"
    "\"moe\":{\"router\":\"switch\",\"capacity_factor\":0,\"eval_capacity_factor\":0,\"aux_weight\":0.2,"
    "\"z_weight\":0.01}}";
// Transformer with swiglu, rmsnorm, tied embeddings, every block sparse (top-2 of 4).
static const char *const LM2_CFG =
    "{\"model\":{\"type\":\"transformer\",\"n_ctx\":5,\"n_embd\":8,\"n_head\":2,\"n_layer\":2,\"n_ff\":4,"
    "\"n_expert\":4,\"n_expert_used\":2,\"ffn_activation\":\"swiglu\",\"norm\":\"rmsnorm\",\"tie_embeddings\":true},"
    "\"moe\":{\"router\":\"softmax\",\"capacity_factor\":1}}";

struct mctx {
    struct moe_config cfg;
    struct moe_model m;
    struct moe_batch b;
    int lm;
    float x[T * NI];
    int32_t label[T];
    int32_t tok[NB * (NCTX + 1)];
    uint64_t bytes[NB];
};

// A model of json (lm: a Transformer over NV tokens) with weights moved away
// from the symmetric start, and one batch.
static struct mctx *open_model(const char *json, int lm)
{
    struct mctx *c = calloc(1, sizeof *c);
    ck_assert_ptr_nonnull(c);
    struct moe_err err;
    c->cfg = load_cfg(json);
    c->lm = lm;
    int rc = lm ? moe_model_create(&c->m, &c->cfg, NULL, MOE_TASK_LM, 1, NV, NB, &err)
                : moe_model_create(&c->m, &c->cfg, NULL, MOE_TASK_CLASSIFICATION, NI, NC, T, &err);
    ck_assert_msg(rc == 0, "create: %s", err.msg);
    moe_model_init_weights(&c->m, 3);
    fill_u(c->m.params.data, c->m.params.numel, 31, -0.6f, 0.6f);
    for (size_t i = 0; i < c->m.params.n; i++)
        if (strstr(c->m.params.t[i].name, "norm.weight"))
            for (size_t j = 0; j < c->m.params.t[i].numel; j++)
                c->m.params.data[c->m.params.t[i].offset + j] += 1.0f;
    struct moe_rng r = moe_rng_make(5, MOE_RNG_DATA, 77);
    if (lm) {
        for (size_t i = 0; i < NB * (NCTX + 1); i++)
            c->tok[i] = (int32_t)moe_rng_below(&r, i, NV);
        for (size_t w = 0; w < NB; w++)
            c->bytes[w] = NCTX;
        c->b.n = NB;
        c->b.tok = c->tok;
        c->b.bytes = c->bytes;
    } else {
        fill_u(c->x, T * NI, 41, -1.5f, 1.5f);
        for (size_t t = 0; t < T; t++)
            c->label[t] = (int32_t)moe_rng_below(&r, t, NC);
        c->b.n = T;
        c->b.x = c->x;
        c->b.label = c->label;
    }
    c->b.step = 3;
    return c;
}

static void close_model(struct mctx *c)
{
    moe_model_release(&c->m);
    moe_config_release(&c->cfg);
    free(c);
}

// The objective the gradient is of: mean loss plus the sparse layers' weighted
// auxiliary losses; sig: a signature of the routing, so that a finite
// difference that changes a selection can be skipped.
static double objective(struct mctx *c, int with_grad, unsigned *sig)
{
    struct moe_stats st;
    struct moe_err err;
    ck_assert_int_eq(moe_stats_init(&st, 0, 0, &err), 0);
    int rc = moe_model_run(&c->m, &c->b, with_grad, &st, &err);
    ck_assert_msg(rc == 0, "run: %s", err.msg);
    double f = st.loss / (double)st.n;
    unsigned s = 0;
    for (size_t i = 0; i < c->m.n_moe_layers; i++) {
        struct moe_layer *l = c->m.ops->moe_layer_at(&c->m, i);
        f += l->loss;
        for (size_t j = 0; j < l->T * l->S; j++)
            s = s * 31u + (unsigned)l->route.sel[j] * 7u + (l->plan.slot_row[j] >= 0);
    }
    if (sig)
        *sig = s;
    moe_stats_release(&st);
    return f;
}

// Everything an evaluation pass reports, for bit-for-bit comparisons.
struct snap {
    double loss, sq_err, bytes, layer[8][3];
    size_t n, correct;
    uint64_t sig; // (no padding: memcmp compares every field)
};

static struct snap snap_eval(struct mctx *c, int with_grad)
{
    struct snap s;
    memset(&s, 0, sizeof s);
    struct moe_stats st;
    struct moe_err err;
    ck_assert_int_eq(moe_stats_init(&st, 0, 0, &err), 0);
    ck_assert_msg(moe_model_run(&c->m, &c->b, with_grad, &st, &err) == 0, "run: %s", err.msg);
    s.loss = st.loss;
    s.sq_err = st.sq_err;
    s.bytes = st.bytes;
    s.n = st.n;
    s.correct = st.correct;
    ck_assert_uint_le(c->m.n_moe_layers, 8);
    for (size_t i = 0; i < c->m.n_moe_layers; i++) {
        struct moe_layer *l = c->m.ops->moe_layer_at(&c->m, i);
        s.layer[i][0] = l->loss;
        s.layer[i][1] = l->aux_value;
        s.layer[i][2] = l->z_value;
        for (size_t j = 0; j < l->T * l->S; j++)
            s.sig = s.sig * 31u + (unsigned)l->route.sel[j] * 7u + (l->plan.slot_row[j] >= 0);
    }
    moe_stats_release(&st);
    return s;
}

// Targets as a glob list; frozen = all ones (every tensor may get an adapter).
static void lora_open(struct moe_lora *l, const struct moe_model *m, const char *const *targets, size_t n,
                      size_t rank, double alpha, int shared)
{
    uint8_t *frozen = malloc(m->params.n);
    ck_assert_ptr_nonnull(frozen);
    memset(frozen, 1, m->params.n);
    struct moe_err err;
    int rc = moe_lora_create(l, &m->params, frozen, targets, n, rank, alpha, shared, &err);
    ck_assert_msg(rc == 0, "moe_lora_create: %s", err.msg);
    free(frozen);
}

// B (and optionally A) of every target random, so that B A != 0.
static void lora_randomize(struct moe_lora *l, uint32_t stream, int also_a)
{
    for (size_t k = 0; k < l->n; k++) {
        const struct moe_tensor *tb = &l->p.t[l->t[k].b], *ta = &l->p.t[l->t[k].a];
        fill_u(l->p.data + tb->offset, tb->numel, stream + 2 * (uint32_t)k, -0.5f, 0.5f);
        if (also_a)
            fill_u(l->p.data + ta->offset, ta->numel, stream + 2 * (uint32_t)k + 1, -0.5f, 0.5f);
    }
}

// ------------------------------------------------------------------ step 0

static const char *const T_MLP[] = { "*.experts.*", "head.weight" };
static const char *const T_LM[] = { "*.experts.*", "*.attn.*", "head.weight", "layers.0.ffn.*" };
static const char *const T_LM2[] = { "*.experts.*", "*.attn.wqkv", "tok_emb.weight" };

struct s0case {
    const char *cfg;
    int lm, shared;
    const char *const *targets;
    size_t n_targets, n_adapted;
};
static const struct s0case s0cases[] = {
    { MLP2_CFG, 0, 0, T_MLP, 2, 5 },
    { MLP2_CFG, 0, 1, T_MLP, 2, 5 },
    { LM_CFG, 1, 0, T_LM, 4, 9 },
    { LM_CFG, 1, 1, T_LM, 4, 9 },
    { LM2_CFG, 1, 0, T_LM2, 3, 9 },
    { LM2_CFG, 1, 1, T_LM2, 3, 9 },
};

START_TEST(test_step0_is_base)
{
    const struct s0case *sc = &s0cases[_i];
    struct mctx *c = open_model(sc->cfg, sc->lm);
    struct moe_model *m = &c->m;
    size_t bytes = m->params.numel * sizeof(float);
    float *w_before = malloc(bytes), *g_before = malloc(bytes);
    ck_assert_ptr_nonnull(w_before);
    ck_assert_ptr_nonnull(g_before);
    memcpy(w_before, m->params.data, bytes);
    struct snap ev0 = snap_eval(c, 0);
    moe_params_zero_grad(&m->params);
    struct snap tr0 = snap_eval(c, 1);
    memcpy(g_before, m->params.grad, bytes);

    struct moe_lora l;
    lora_open(&l, m, sc->targets, sc->n_targets, 2, 4.0, sc->shared);
    ck_assert_uint_eq(l.n, sc->n_adapted);
    ck_assert_double_eq(l.scale, 2.0);
    moe_lora_init(&l, 9);
    // A Kaiming-uniform within 1/sqrt(in) and not zero, B exactly zero; shapes per tune.h
    for (size_t k = 0; k < l.n; k++) {
        const struct moe_lora_target *t = &l.t[k];
        const struct moe_tensor *ta = &l.p.t[t->a], *tb = &l.p.t[t->b];
        int per_expert = t->E > 1 && !sc->shared;
        ck_assert_int_eq(ta->ndim, per_expert ? 3 : 2);
        ck_assert_int_eq(tb->ndim, per_expert ? 3 : 2);
        ck_assert_uint_eq(ta->numel, (per_expert ? t->E : 1) * 2 * t->in);
        ck_assert_uint_eq(tb->numel, (per_expert ? t->E : 1) * t->out * 2);
        ck_assert_uint_eq(ta->shape[ta->ndim - 1], t->in);
        ck_assert_uint_eq(tb->shape[tb->ndim - 2], t->out);
        double bound = 1.0 / sqrt((double)t->in), big = max_abs(l.p.data + ta->offset, ta->numel);
        ck_assert_msg(big <= bound && big > 0.3 * bound, "%s: max |A| %g, bound %g", ta->name, big, bound);
        ck_assert_double_eq(max_abs(l.p.data + tb->offset, tb->numel), 0.0);
        char want[160];
        snprintf(want, sizeof want, "%s.lora_A", m->params.t[t->base].name);
        ck_assert_str_eq(ta->name, want);
        snprintf(want, sizeof want, "%s.lora_B", m->params.t[t->base].name);
        ck_assert_str_eq(tb->name, want);
    }
    moe_lora_apply(&l, &m->params);
    ck_assert_msg(memcmp(m->params.data, w_before, bytes) == 0, "case %d: B = 0 changed the weights", _i);
    struct snap ev1 = snap_eval(c, 0);
    ck_assert_msg(memcmp(&ev0, &ev1, sizeof ev0) == 0,
                  "case %d: evaluation differs at step 0: loss %.17g vs %.17g, layer loss %.17g vs %.17g", _i,
                  ev0.loss, ev1.loss, ev0.layer[0][0], ev1.layer[0][0]);
    moe_params_zero_grad(&m->params);
    struct snap tr1 = snap_eval(c, 1);
    ck_assert_msg(memcmp(&tr0, &tr1, sizeof tr0) == 0, "case %d: training pass differs at step 0", _i);
    ck_assert_msg(memcmp(m->params.grad, g_before, bytes) == 0, "case %d: gradients differ at step 0", _i);
    // the same seed draws the same A; another seed other values
    float *a0 = malloc(l.p.numel * sizeof(float));
    memcpy(a0, l.p.data, l.p.numel * sizeof(float));
    moe_lora_init(&l, 9);
    ck_assert_mem_eq(a0, l.p.data, l.p.numel * sizeof(float));
    moe_lora_init(&l, 10);
    ck_assert(memcmp(a0, l.p.data, l.p.numel * sizeof(float)) != 0);
    free(a0);
    moe_lora_release(&l);
    free(w_before);
    free(g_before);
    close_model(c);
}
END_TEST

// ------------------------------------------------------- merged vs unmerged

static double merged_worst;

START_TEST(test_merged_vs_unmerged)
{
    const struct s0case *sc = &s0cases[_i];
    struct mctx *c = open_model(sc->cfg, sc->lm);
    struct moe_model *m = &c->m;
    size_t bytes = m->params.numel * sizeof(float);
    float *w0 = malloc(bytes);
    ck_assert_ptr_nonnull(w0);
    memcpy(w0, m->params.data, bytes);
    struct moe_lora l;
    lora_open(&l, m, sc->targets, sc->n_targets, 3, 1.5, sc->shared);
    moe_lora_init(&l, 4);
    lora_randomize(&l, 500, 0);
    moe_lora_apply(&l, &m->params);
    ck_assert_msg(memcmp(m->params.data, w0, bytes) != 0, "B A != 0 left the weights unchanged");
    double s = l.scale;
    ck_assert_double_eq(s, 0.5);
    size_t r = l.rank;
    for (size_t k = 0; k < l.n; k++) {
        const struct moe_lora_target *t = &l.t[k];
        const struct moe_tensor *bt = &m->params.t[t->base];
        double *x = malloc(t->in * sizeof *x), *ax = malloc(r * sizeof *ax), *axa = malloc(r * sizeof *axa);
        float *xf = malloc(t->in * sizeof *xf);
        ck_assert_ptr_nonnull(x);
        ck_assert_ptr_nonnull(xf);
        for (size_t e = 0; e < t->E; e++) {
            fill_u(xf, t->in, 900 + 10 * (uint32_t)k + (uint32_t)e, -1.0f, 1.0f);
            for (size_t j = 0; j < t->in; j++)
                x[j] = xf[j];
            size_t ae = t->shared ? 0 : e;
            const float *A = l.p.data + l.p.t[t->a].offset + ae * r * t->in;
            const float *B = l.p.data + l.p.t[t->b].offset + ae * t->out * r;
            const float *W = m->params.data + bt->offset + e * t->out * t->in;
            const float *W0 = w0 + bt->offset + e * t->out * t->in;
            for (size_t q = 0; q < r; q++) {
                ax[q] = axa[q] = 0.0;
                for (size_t j = 0; j < t->in; j++) {
                    ax[q] += (double)A[q * t->in + j] * x[j];
                    axa[q] += fabs((double)A[q * t->in + j] * x[j]);
                }
            }
            for (size_t i = 0; i < t->out; i++) {
                double merged = 0.0, unmerged = 0.0, mag = 0.0;
                for (size_t j = 0; j < t->in; j++) {
                    merged += (double)W[i * t->in + j] * x[j];
                    unmerged += (double)W0[i * t->in + j] * x[j];
                    mag += fabs((double)W0[i * t->in + j] * x[j]);
                }
                for (size_t q = 0; q < r; q++) {
                    unmerged += s * B[i * r + q] * ax[q];
                    mag += s * fabs((double)B[i * r + q]) * axa[q];
                }
                double rel = fabs(merged - unmerged) / mag;
                merged_worst = fmax(merged_worst, rel);
                ck_assert_msg(rel <= 1e-6, "case %d, %s expert %zu row %zu: merged %.9g, unmerged %.9g (rel %.3g)",
                              _i, bt->name, e, i, merged, unmerged, rel);
            }
        }
        free(x);
        free(xf);
        free(ax);
        free(axa);
    }
    // applying again gives the same bits (W is rebuilt from W0, not accumulated)
    float *w1 = malloc(bytes);
    memcpy(w1, m->params.data, bytes);
    moe_lora_apply(&l, &m->params);
    ck_assert_msg(memcmp(w1, m->params.data, bytes) == 0, "a second moe_lora_apply changed the weights");
    moe_lora_unapply(&l, &m->params);
    ck_assert_msg(memcmp(w0, m->params.data, bytes) == 0, "moe_lora_unapply did not restore W0 bit for bit");
    if (getenv("MOE_GRAD_VERBOSE"))
        fprintf(stderr, "merged vs unmerged case %d: worst rel %.3g\n", _i, merged_worst);
    free(w1);
    free(w0);
    moe_lora_release(&l);
    close_model(c);
}
END_TEST

// ------------------------------------------------- adapter gradients by FD

struct fdcase {
    const char *cfg;
    int lm, shared;
    const char *const *targets;
    size_t n_targets;
};
static const char *const FD_MLP[] = { "*.experts.*", "layers.0.ffn.w1", "head.weight" };
static const char *const FD_LM[] = { "*.attn.*", "*.experts.*", "layers.0.ffn.w2", "head.weight" };
static const struct fdcase fdcases[] = {
    { MLP_CFG, 0, 0, FD_MLP, 3 },
    { MLP_CFG, 0, 1, FD_MLP, 3 },
    { LM_CFG, 1, 0, FD_LM, 4 },
    { LM_CFG, 1, 1, FD_LM, 4 },
};

static double lora_objective(struct mctx *c, struct moe_lora *l, unsigned *sig)
{
    moe_lora_apply(l, &c->m.params);
    return objective(c, 1, sig);
}

struct lora_fd {
    struct mctx *c;
    struct moe_lora *l;
};
static double lora_fd_objective(void *p, unsigned *sig)
{
    struct lora_fd *fd = p;
    return lora_objective(fd->c, fd->l, sig);
}

START_TEST(test_adapter_grad)
{
    const struct fdcase *fc = &fdcases[_i];
    struct mctx *c = open_model(fc->cfg, fc->lm);
    struct moe_lora l;
    lora_open(&l, &c->m, fc->targets, fc->n_targets, 2, 3.0, fc->shared); // s = 1.5
    moe_lora_init(&l, 7);
    lora_randomize(&l, 600, 0); // A Kaiming, B random: both gradients non-trivial
    unsigned sig0;
    moe_params_zero_grad(&c->m.params);
    moe_params_zero_grad(&l.p);
    lora_objective(c, &l, &sig0);
    moe_lora_backward(&l, &c->m.params);
    float *grad = malloc(l.p.numel * sizeof *grad);
    ck_assert_ptr_nonnull(grad);
    memcpy(grad, l.p.grad, l.p.numel * sizeof *grad);
    grad_worst = 0.0;
    struct fd_tally all = { 0 };
    double tensor_worst = 0.0;
    struct lora_fd fd = { c, &l };
    for (size_t ti = 0; ti < l.p.n; ti++) {
        const struct moe_tensor *t = &l.p.t[ti];
        struct fd_tally one = { 0 };
        char what[160];
        snprintf(what, sizeof what, "case %d: %s", _i, t->name);
        check_grad_routed(l.p.data + t->offset, grad + t->offset, t->numel, H_STEP, lora_fd_objective, &fd, sig0,
                          what, &one);
        all.checked += one.checked;
        all.skipped += one.skipped;
        ck_assert_msg(one.biggest > 1e-4, "case %d: adapter '%s' has no gradient (max %g)", _i, t->name, one.biggest);
        // the gradients here are small (|g| << 1, where check_grad's tolerance is
        // absolute): the whole tensor must also agree in relative terms
        double rel = sqrt(one.diff2 / one.num2);
        tensor_worst = fmax(tensor_worst, rel);
        ck_assert_msg(rel <= 1e-2, "case %d: adapter '%s': |analytic - numeric| / |numeric| = %.3g > 1e-2", _i,
                      t->name, rel);
    }
    size_t checked = all.checked, skipped = all.skipped;
    ck_assert_msg(skipped * 20 <= checked, "case %d: %zu of %zu elements changed the routing", _i, skipped,
                  checked + skipped);
    if (getenv("MOE_GRAD_VERBOSE"))
        fprintf(stderr, "adapter grad case %d: %zu checked, %zu skipped, worst rel %.3g, worst tensor rel %.3g\n", _i,
                checked, skipped, grad_worst, tensor_worst);
    free(grad);
    moe_lora_release(&l);
    close_model(c);
}
END_TEST

// ------------------------------------------------ against plain loops

START_TEST(test_apply_backward_naive)
{
    int shared = _i;
    enum { E = 3, O3 = 5, I3 = 7, O2 = 6, I2 = 4, R = 3 };
    struct moe_params p;
    struct moe_err err;
    moe_params_init(&p);
    ck_assert_int_ge(moe_params_add(&p, "blk.experts.w", MOE_SHAPE(E, O3, I3), &err), 0);
    ck_assert_int_ge(moe_params_add(&p, "blk.norm.weight", MOE_SHAPE(O2), &err), 0);
    ck_assert_int_ge(moe_params_add(&p, "blk.proj.weight", MOE_SHAPE(O2, I2), &err), 0);
    ck_assert_int_ge(moe_params_add(&p, "blk.trained.weight", MOE_SHAPE(O2, I2), &err), 0);
    ck_assert_int_eq(moe_params_alloc(&p, &err), 0);
    fill_u(p.data, p.numel, 70, -1.0f, 1.0f);
    uint8_t frozen[4] = { 1, 1, 1, 0 }; // the last one is trained itself: no adapter
    const char *const all[] = { "*" };
    struct moe_lora l;
    ck_assert_msg(moe_lora_create(&l, &p, frozen, all, 1, R, 2.5, shared, &err) == 0, "%s", err.msg);
    ck_assert_uint_eq(l.n, 2); // the 1-d tensor and the trained matrix are skipped
    ck_assert_int_eq(l.t[0].base, 0);
    ck_assert_int_eq(l.t[1].base, 2);
    ck_assert_uint_eq(l.t[0].E, E);
    ck_assert_uint_eq(l.t[1].E, 1);
    ck_assert_int_eq(l.t[0].shared, shared);
    ck_assert_uint_eq(moe_lora_count(&l), (shared ? 1 : E) * R * (O3 + I3) + R * (O2 + I2));
    lora_randomize(&l, 80, 1);
    float *w0 = malloc(p.numel * sizeof *w0);
    memcpy(w0, p.data, p.numel * sizeof *w0);
    moe_lora_apply(&l, &p);
    double s = l.scale;
    // W = W0 + s B A, elementwise in double
    for (size_t k = 0; k < l.n; k++) {
        const struct moe_lora_target *t = &l.t[k];
        for (size_t e = 0; e < t->E; e++) {
            size_t ae = t->shared ? 0 : e;
            const float *A = l.p.data + l.p.t[t->a].offset + ae * R * t->in;
            const float *B = l.p.data + l.p.t[t->b].offset + ae * t->out * R;
            size_t off = p.t[t->base].offset + e * t->out * t->in;
            for (size_t i = 0; i < t->out; i++)
                for (size_t j = 0; j < t->in; j++) {
                    double d = 0.0, mag = 0.0;
                    for (size_t q = 0; q < R; q++) {
                        d += (double)B[i * R + q] * A[q * t->in + j];
                        mag += fabs((double)B[i * R + q] * A[q * t->in + j]);
                    }
                    double want = w0[off + i * t->in + j] + s * d;
                    double got = p.data[off + i * t->in + j];
                    ck_assert_msg(fabs(got - want) <= 1e-6 * (fabs(w0[off + i * t->in + j]) + s * mag),
                                  "apply %s[%zu][%zu][%zu]: %.9g, loops %.9g", p.t[t->base].name, e, i, j, got,
                                  want);
                }
        }
    }
    // untouched: the 1-d tensor and the trained matrix
    ck_assert_mem_eq(p.data + p.t[1].offset, w0 + p.t[1].offset, p.t[1].numel * sizeof(float));
    ck_assert_mem_eq(p.data + p.t[3].offset, w0 + p.t[3].offset, p.t[3].numel * sizeof(float));
    // backward: dB = s G A^T, dA = s B^T G per matrix, summed over experts when shared;
    // added into l.p.grad (a second call doubles it)
    fill_u(p.grad, p.numel, 90, -1.0f, 1.0f);
    moe_params_zero_grad(&l.p);
    moe_lora_backward(&l, &p);
    double *da = calloc(l.p.numel, sizeof *da), *db = calloc(l.p.numel, sizeof *db);
    double *mag_a = calloc(l.p.numel, sizeof *mag_a), *mag_b = calloc(l.p.numel, sizeof *mag_b);
    for (size_t k = 0; k < l.n; k++) {
        const struct moe_lora_target *t = &l.t[k];
        for (size_t e = 0; e < t->E; e++) {
            size_t ae = t->shared ? 0 : e;
            size_t oa = l.p.t[t->a].offset + ae * R * t->in, ob = l.p.t[t->b].offset + ae * t->out * R;
            const float *A = l.p.data + oa, *B = l.p.data + ob;
            const float *G = p.grad + p.t[t->base].offset + e * t->out * t->in;
            for (size_t i = 0; i < t->out; i++)
                for (size_t q = 0; q < R; q++)
                    for (size_t j = 0; j < t->in; j++) {
                        double gij = G[i * t->in + j];
                        db[ob + i * R + q] += s * gij * A[q * t->in + j];
                        mag_b[ob + i * R + q] += fabs(s * gij * A[q * t->in + j]);
                        da[oa + q * t->in + j] += s * B[i * R + q] * gij;
                        mag_a[oa + q * t->in + j] += fabs(s * B[i * R + q] * gij);
                    }
        }
    }
    for (int pass = 1; pass <= 2; pass++) {
        for (size_t k = 0; k < l.n; k++) {
            const struct moe_lora_target *t = &l.t[k];
            const struct moe_tensor *ta = &l.p.t[t->a], *tb = &l.p.t[t->b];
            for (size_t i = 0; i < ta->numel; i++) {
                size_t o = ta->offset + i;
                ck_assert_msg(fabs(l.p.grad[o] - pass * da[o]) <= 1e-5 * pass * mag_a[o] + 1e-12,
                              "pass %d: d%s[%zu] = %.9g, loops %.9g", pass, ta->name, i, l.p.grad[o], pass * da[o]);
            }
            for (size_t i = 0; i < tb->numel; i++) {
                size_t o = tb->offset + i;
                ck_assert_msg(fabs(l.p.grad[o] - pass * db[o]) <= 1e-5 * pass * mag_b[o] + 1e-12,
                              "pass %d: d%s[%zu] = %.9g, loops %.9g", pass, tb->name, i, l.p.grad[o], pass * db[o]);
            }
        }
        moe_lora_backward(&l, &p);
    }
    moe_lora_unapply(&l, &p);
    ck_assert_mem_eq(p.data, w0, p.numel * sizeof(float));
    free(da);
    free(db);
    free(mag_a);
    free(mag_b);
    free(w0);
    moe_lora_release(&l);
    moe_lora_release(&l); // released twice: harmless
    moe_params_release(&p);
}
END_TEST

// ----------------------------------------------------- selection by globs

static int find(const struct moe_params *p, const char *name)
{
    int i = moe_params_find(p, name);
    ck_assert_msg(i >= 0, "no tensor '%s'", name);
    return i;
}

START_TEST(test_select)
{
    struct mctx *c = open_model(MLP2_CFG, 0);
    const struct moe_params *p = &c->m.params;
    size_t n = p->n;
    uint8_t *fz = malloc(n);
    struct moe_err err;
    // moe_tune_match: any glob; '*' crosses dots
    const char *const g2[] = { "head.*", "*.w2" };
    ck_assert(moe_tune_match(g2, 2, "head.bias"));
    ck_assert(moe_tune_match(g2, 2, "layers.1.moe.experts.w2"));
    ck_assert(!moe_tune_match(g2, 2, "layers.1.moe.experts.w1"));
    ck_assert(!moe_tune_match(g2, 0, "head.bias"));
    const char *const across[] = { "layers*bias" };
    ck_assert(moe_tune_match(across, 1, "layers.0.norm.bias"));

    // trainable: only the MoE layers
    const char *const moe_only[] = { "layers.*.moe.*" };
    memset(fz, 7, n);
    ck_assert_int_eq(moe_tune_select(p, moe_only, 1, NULL, 0, "t", "f", fz, &err), 0);
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(fz[i] == !strstr(p->t[i].name, ".moe."), "%s: frozen %d", p->t[i].name, fz[i]);
    // freeze overrides trainable
    const char *const routers[] = { "*.router.*" };
    ck_assert_int_eq(moe_tune_select(p, moe_only, 1, routers, 1, "t", "f", fz, &err), 0);
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(fz[i] == (!strstr(p->t[i].name, ".moe.") || strstr(p->t[i].name, ".router.")), "%s: frozen %d",
                      p->t[i].name, fz[i]);
    // no trainable list: everything but the frozen
    const char *const head_in[] = { "head.*", "input.weight" };
    ck_assert_int_eq(moe_tune_select(p, NULL, 0, head_in, 2, "t", "f", fz, &err), 0);
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(fz[i] == (strncmp(p->t[i].name, "head.", 5) == 0 || strcmp(p->t[i].name, "input.weight") == 0),
                      "%s: frozen %d", p->t[i].name, fz[i]);
    ck_assert_int_eq(fz[find(p, "input.bias")], 0);
    // nothing at all: all trainable
    ck_assert_int_eq(moe_tune_select(p, NULL, 0, NULL, 0, "t", "f", fz, &err), 0);
    for (size_t i = 0; i < n; i++)
        ck_assert_int_eq(fz[i], 0);
    // a glob that matches nothing names itself and the key
    const char *const typo[] = { "*.router.*", "layers.*.mo.*" };
    ck_assert_int_eq(moe_tune_select(p, typo, 2, NULL, 0, "train.trainable", "train.freeze", fz, &err), MOE_ECONFIG);
    ck_assert_ptr_nonnull(strstr(err.msg, "'layers.*.mo.*'"));
    ck_assert_ptr_nonnull(strstr(err.msg, "train.trainable"));
    ck_assert_int_eq(moe_tune_select(p, NULL, 0, typo + 1, 1, "train.trainable", "train.freeze", fz, &err), MOE_ECONFIG);
    ck_assert_ptr_nonnull(strstr(err.msg, "'layers.*.mo.*'"));
    ck_assert_ptr_nonnull(strstr(err.msg, "train.freeze"));
    ck_assert_int_eq(moe_tune_check_globs(p, typo, 1, "x", &err), 0);
    ck_assert_int_eq(moe_tune_check_globs(p, typo, 2, "x", &err), MOE_ECONFIG);
    // nothing trainable
    const char *const star[] = { "*" };
    ck_assert_int_eq(moe_tune_select(p, routers, 1, star, 1, "train.trainable", "train.freeze", fz, &err), MOE_ECONFIG);
    ck_assert_ptr_nonnull(strstr(err.msg, "train.trainable"));
    ck_assert_ptr_nonnull(strstr(err.msg, "train.freeze"));
    ck_assert_ptr_nonnull(strstr(err.msg, "no tensor"));
    free(fz);
    close_model(c);
}
END_TEST

START_TEST(test_lora_create_errors)
{
    struct mctx *c = open_model(MLP2_CFG, 0); // D = 8, F = 6, E = 4, O = 3
    const struct moe_params *p = &c->m.params;
    uint8_t *fz = malloc(p->n);
    memset(fz, 1, p->n);
    struct moe_err err;
    struct moe_lora l;
    const char *const experts[] = { "*.experts.*" }, *const head[] = { "head.weight" },
                      *const norms[] = { "*norm*", "*.bias" }, *const typo[] = { "*.expert.*" },
                      *const routers[] = { "*.router.*" };
    // rank above the smaller side: experts [4, 6, 8] take 6, not 7
    ck_assert_int_eq(moe_lora_create(&l, p, fz, experts, 1, 6, 8, 0, &err), 0);
    ck_assert_uint_eq(l.n, 4);
    moe_lora_release(&l);
    ck_assert_int_eq(moe_lora_create(&l, p, fz, experts, 1, 7, 8, 0, &err), MOE_ECONFIG);
    ck_assert_ptr_nonnull(strstr(err.msg, "experts.w"));
    ck_assert_ptr_nonnull(strstr(err.msg, "lora.rank 7"));
    ck_assert_ptr_null(l.t);
    ck_assert_int_eq(moe_lora_create(&l, p, fz, head, 1, 4, 8, 1, &err), MOE_ECONFIG); // head [3, 8]
    ck_assert_ptr_nonnull(strstr(err.msg, "'head.weight' [3, 8]"));
    // rank 0
    ck_assert_int_eq(moe_lora_create(&l, p, fz, experts, 1, 0, 8, 0, &err), MOE_ECONFIG);
    ck_assert_ptr_nonnull(strstr(err.msg, "lora.rank"));
    // a glob that matches nothing
    ck_assert_int_eq(moe_lora_create(&l, p, fz, typo, 1, 2, 8, 0, &err), MOE_ECONFIG);
    ck_assert_ptr_nonnull(strstr(err.msg, "'*.expert.*'"));
    ck_assert_ptr_nonnull(strstr(err.msg, "lora.targets"));
    // only 1-d tensors: nothing to adapt
    ck_assert_int_eq(moe_lora_create(&l, p, fz, norms, 2, 2, 8, 0, &err), MOE_ECONFIG);
    ck_assert_ptr_nonnull(strstr(err.msg, "lora.targets"));
    // matrices that are trained in full (not frozen) get no adapter
    for (size_t i = 0; i < p->n; i++)
        fz[i] = !strstr(p->t[i].name, ".router.");
    ck_assert_int_eq(moe_lora_create(&l, p, fz, routers, 1, 2, 8, 0, &err), MOE_ECONFIG);
    const char *const both[] = { "*.router.*", "*.experts.w1" };
    ck_assert_int_eq(moe_lora_create(&l, p, fz, both, 2, 2, 8, 0, &err), 0);
    ck_assert_uint_eq(l.n, 2);
    for (size_t k = 0; k < l.n; k++)
        ck_assert_ptr_nonnull(strstr(p->t[l.t[k].base].name, "experts.w1"));
    moe_lora_release(&l);
    free(fz);
    close_model(c);
}
END_TEST

// ------------------------------------------------------------ expert ranges

START_TEST(test_glob_range)
{
    size_t len = 0, a = 0, b = 0;
    ck_assert_int_eq(moe_tune_glob_range("layers.*.moe.experts.*", &len, &a, &b), 0);
    ck_assert_uint_eq(len, strlen("layers.*.moe.experts.*"));
    ck_assert_int_eq(moe_tune_glob_range("*.experts.*@3", &len, &a, &b), 1);
    ck_assert_uint_eq(len, strlen("*.experts.*"));
    ck_assert_uint_eq(a, 3);
    ck_assert_uint_eq(b, 3);
    ck_assert_int_eq(moe_tune_glob_range("layers.*.moe.experts.*@0-1", &len, &a, &b), 1);
    ck_assert_uint_eq(len, strlen("layers.*.moe.experts.*"));
    ck_assert_uint_eq(a, 0);
    ck_assert_uint_eq(b, 1);
    ck_assert_int_eq(moe_tune_glob_range("x@12-12", &len, &a, &b), 1);
    ck_assert_uint_eq(a, 12);
    ck_assert_uint_eq(b, 12);
    ck_assert_int_eq(moe_tune_glob_range("a@b@2", &len, &a, &b), 1); // the last '@' starts the range
    ck_assert_uint_eq(len, 3);
    static const char *const bad[] = { "x@", "x@x", "x@2-1", "x@-1", "x@1-", "x@1-2-3", "x@ 1", "x@1 ", "x@+1",
                                       "x@0x1", "x@1,2", "x@99999999999", "@" };
    for (size_t k = 0; k < sizeof bad / sizeof *bad; k++)
        ck_assert_msg(moe_tune_glob_range(bad[k], &len, &a, &b) == MOE_ECONFIG, "'%s' parsed", bad[k]);
    // expert tensors: 3-d with a name component "experts"
    struct moe_tensor t = { .name = "layers.1.moe.experts.w1", .ndim = 3, .shape = { 4, 6, 8 } };
    ck_assert(moe_tune_is_expert_tensor(&t));
    strcpy(t.name, "experts.w1"); // the 1991 mixture's
    ck_assert(moe_tune_is_expert_tensor(&t));
    strcpy(t.name, "layers.1.moe.shared.w1");
    ck_assert(!moe_tune_is_expert_tensor(&t));
    strcpy(t.name, "layers.1.moe.myexperts.w1");
    ck_assert(!moe_tune_is_expert_tensor(&t));
    strcpy(t.name, "experts.b1");
    t.ndim = 2;
    ck_assert(!moe_tune_is_expert_tensor(&t));
}
END_TEST

// sel's per-expert flags of tensor `name` are want ("0011": 1 = frozen), or
// NULL: the tensor has no per-expert mask and frozen[] is want_frozen.
static void check_mask(const struct moe_tune_sel *sel, const struct moe_params *p, const char *name,
                       const char *want, int want_frozen)
{
    int i = find(p, name);
    if (!want) {
        ck_assert_msg(sel->frozen_experts[i] == NULL, "%s has a per-expert mask", name);
        ck_assert_msg(sel->frozen[i] == want_frozen, "%s: frozen %d, want %d", name, sel->frozen[i], want_frozen);
        return;
    }
    ck_assert_msg(sel->frozen[i] == 0, "%s is frozen whole", name);
    ck_assert_msg(sel->frozen_experts[i] != NULL, "%s has no per-expert mask", name);
    ck_assert_uint_eq(strlen(want), p->t[i].shape[0]);
    for (size_t e = 0; want[e]; e++) {
        ck_assert_msg(sel->frozen_experts[i][e] == (uint8_t)(want[e] - '0'), "%s[%zu]: frozen %d, want %c", name, e,
                      sel->frozen_experts[i][e], want[e]);
        ck_assert_int_eq(moe_tune_sel_trained(sel, (size_t)i, e), want[e] == '0');
    }
}

static const char *const W_T = "train.trainable (--trainable)", *const W_F = "train.freeze (--freeze)";

START_TEST(test_select_experts)
{
    struct mctx *c = open_model(MLP2_CFG, 0); // both blocks sparse, E = 4, F = 6, D = 8
    const struct moe_params *p = &c->m.params;
    struct moe_tune_sel sel;
    struct moe_err err;
    const size_t slice = 6 * 8;
    static const char *const ex[] = { "layers.0.moe.experts.w1", "layers.0.moe.experts.w2", "layers.1.moe.experts.w1",
                                      "layers.1.moe.experts.w2" };
    // experts 0-1 of every expert tensor, nothing else
    const char *const t01[] = { "layers.*.moe.experts.*@0-1" };
    ck_assert_msg(moe_tune_select_ex(&sel, p, t01, 1, NULL, 0, W_T, W_F, &err) == 0, "%s", err.msg);
    ck_assert_uint_eq(sel.n, p->n);
    for (size_t k = 0; k < 4; k++)
        check_mask(&sel, p, ex[k], "0011", 0);
    for (size_t i = 0; i < p->n; i++)
        if (!strstr(p->t[i].name, ".experts."))
            check_mask(&sel, p, p->t[i].name, NULL, 1);
    ck_assert_uint_eq(moe_tune_sel_count(&sel, p), 4 * 2 * slice);
    moe_tune_sel_release(&sel);
    ck_assert_ptr_null(sel.frozen);
    // a later glob overrides an earlier one slice by slice; freeze has the last word
    const char *const t02[] = { "*.experts.*@0-2", "head.*" }, *const f1[] = { "layers.0.moe.experts.w1@1" };
    ck_assert_msg(moe_tune_select_ex(&sel, p, t02, 2, f1, 1, W_T, W_F, &err) == 0, "%s", err.msg);
    check_mask(&sel, p, ex[0], "0101", 0);
    check_mask(&sel, p, ex[1], "0001", 0);
    check_mask(&sel, p, "head.weight", NULL, 0);
    check_mask(&sel, p, "input.weight", NULL, 1);
    ck_assert_uint_eq(moe_tune_sel_count(&sel, p), (2 + 3 * 3) * slice + p->t[find(p, "head.weight")].numel +
                                                       p->t[find(p, "head.bias")].numel);
    moe_tune_sel_release(&sel);
    // ranges that cover every expert give the whole tensor (no mask), trained or frozen
    const char *const halves[] = { "*.experts.*@0-1", "*.experts.*@2-3", "head.*" },
                      *const fw2[] = { "*.experts.w2@0", "*.experts.w2@1-3" };
    ck_assert_msg(moe_tune_select_ex(&sel, p, halves, 3, fw2, 2, W_T, W_F, &err) == 0, "%s", err.msg);
    check_mask(&sel, p, ex[0], NULL, 0);
    check_mask(&sel, p, ex[2], NULL, 0);
    check_mask(&sel, p, ex[1], NULL, 1);
    check_mask(&sel, p, ex[3], NULL, 1);
    moe_tune_sel_release(&sel);
    // no trainable list: everything but the frozen slices; a plain freeze glob
    // takes a whole tensor back from a ranged one
    const char *const f3[] = { "*.experts.*@3", "layers.1.moe.experts.w2@0", "layers.0.moe.experts.w2" };
    ck_assert_msg(moe_tune_select_ex(&sel, p, NULL, 0, f3, 3, W_T, W_F, &err) == 0, "%s", err.msg);
    check_mask(&sel, p, ex[0], "0001", 0);
    check_mask(&sel, p, ex[1], NULL, 1);
    check_mask(&sel, p, ex[2], "0001", 0);
    check_mask(&sel, p, ex[3], "1001", 0);
    check_mask(&sel, p, "layers.0.moe.router.weight", NULL, 0);
    ck_assert_uint_eq(moe_tune_sel_count(&sel, p), moe_params_count(p) - (1 + 4 + 1 + 2) * slice);
    moe_tune_sel_release(&sel);
    // moe_tune_select: a tensor trained in part is trained
    uint8_t *fz = malloc(p->n);
    ck_assert_int_eq(moe_tune_select(p, t01, 1, NULL, 0, W_T, W_F, fz, &err), 0);
    for (size_t i = 0; i < p->n; i++)
        ck_assert_msg(fz[i] == !strstr(p->t[i].name, ".experts."), "%s: frozen %d", p->t[i].name, fz[i]);
    // building by hand: moe_tune_sel_init + moe_tune_sel_mark (what = NULL: may match nothing)
    const char *const none[] = { "*.nothing.*" };
    ck_assert_int_eq(moe_tune_sel_init(&sel, p, 1, &err), 0);
    ck_assert_int_eq(moe_tune_sel_mark(&sel, p, none, 1, 0, NULL, &err), 0);
    ck_assert_uint_eq(moe_tune_sel_count(&sel, p), 0);
    ck_assert_int_eq(moe_tune_sel_mark(&sel, p, none, 1, 0, "x", &err), MOE_ECONFIG);
    ck_assert_int_eq(moe_tune_sel_mark(&sel, p, t01, 1, 0, "x", &err), 0);
    check_mask(&sel, p, ex[2], "0011", 0);
    // LoRA: a tensor trained in part gets no adapter
    const char *const all_ex[] = { "*.experts.*" }, *const t_w1[] = { "layers.1.moe.experts.w1@2" };
    moe_tune_sel_release(&sel);
    ck_assert_int_eq(moe_tune_sel_init(&sel, p, 1, &err), 0);
    ck_assert_int_eq(moe_tune_sel_mark(&sel, p, t_w1, 1, 0, "t", &err), 0);
    check_mask(&sel, p, ex[2], "1101", 0);
    struct moe_lora l;
    ck_assert_msg(moe_lora_create(&l, p, sel.frozen, all_ex, 1, 2, 8, 0, &err) == 0, "%s", err.msg);
    ck_assert_uint_eq(l.n, 3);
    for (size_t k = 0; k < l.n; k++)
        ck_assert_str_ne(p->t[l.t[k].base].name, ex[2]);
    moe_lora_release(&l);
    moe_tune_sel_release(&sel);
    moe_tune_sel_release(&sel); // twice is harmless
    ck_assert_uint_eq(moe_tune_sel_count(&sel, p), moe_params_count(p)); // no selection: everything
    free(fz);
    close_model(c);
}
END_TEST

struct sel_err {
    const char *t, *f;      // one trainable / freeze glob (NULL: none)
    const char *frag[3];    // fragments of the message
};
static const struct sel_err sel_errs[] = {
    { "*.experts.*@", NULL, { "train.trainable (--trainable)", "'*.experts.*@'", "malformed expert range '@'" } },
    { "*.experts.*@x", NULL, { "train.trainable (--trainable)", "'*.experts.*@x'", "malformed expert range '@x'" } },
    { NULL, "*.experts.*@2-1", { "train.freeze (--freeze)", "'*.experts.*@2-1'", "malformed expert range '@2-1'" } },
    { NULL, "*.experts.*@-1", { "train.freeze (--freeze)", "'*.experts.*@-1'", "malformed" } },
    { "*.experts.*@4", NULL, { "train.trainable (--trainable)", "'layers.0.moe.experts.w1' has 4 experts (0-3)", "expert 4" } },
    { NULL, "layers.1.*.w2@2-7", { "train.freeze (--freeze)", "'layers.1.*.w2@2-7'", "'layers.1.moe.experts.w2' has 4 experts" } },
    { "head.*@0", NULL, { "train.trainable (--trainable)", "'head.*@0' matches 'head.weight'", "not an expert tensor" } },
    { "layers.0.moe.*@1", NULL, { "'layers.0.moe.*@1'", "'layers.0.moe.router.weight'", "not an expert tensor" } },
    { NULL, "*@0", { "train.freeze (--freeze)", "'*@0' matches 'input.weight'", "not an expert tensor" } },
    { "*.expert.*@0", NULL, { "train.trainable (--trainable)", "'*.expert.*@0'", "matches no tensor" } },
    { "*.experts.*@0-3", "*.experts.*@0-3", { "train.trainable (--trainable) / train.freeze (--freeze)", "no tensor", "trainable" } },
};

START_TEST(test_select_experts_errors)
{
    const struct sel_err *x = &sel_errs[_i];
    struct mctx *c = open_model(MLP2_CFG, 0);
    const struct moe_params *p = &c->m.params;
    struct moe_tune_sel sel = { 0 };
    struct moe_err err = { 0 };
    int rc = moe_tune_select_ex(&sel, p, &x->t, x->t != NULL, &x->f, x->f != NULL, W_T, W_F, &err);
    ck_assert_msg(rc == MOE_ECONFIG, "case %d: rc %d", _i, rc);
    ck_assert_ptr_null(sel.frozen);
    ck_assert_ptr_null(strchr(err.msg, '\n'));
    for (size_t k = 0; k < 3 && x->frag[k]; k++)
        ck_assert_msg(strstr(err.msg, x->frag[k]), "case %d: message '%s' lacks '%s'", _i, err.msg, x->frag[k]);
    close_model(c);
}
END_TEST

// Shared experts are not expert tensors: a range on them is an error.
START_TEST(test_select_shared_experts)
{
    static const char *const json =
        "{\"model\":{\"type\":\"transformer\",\"n_ctx\":5,\"n_embd\":8,\"n_head\":2,\"n_layer\":2,\"n_ff\":4,"
        "\"n_expert\":4,\"n_expert_used\":2,\"n_expert_shared\":1,\"ffn_activation\":\"swiglu\"},"
        "\"moe\":{\"router\":\"softmax\"}}";
    struct mctx *c = open_model(json, 1);
    const struct moe_params *p = &c->m.params;
    ck_assert_int_ge(moe_params_find(p, "layers.0.moe.shared.w1"), 0);
    struct moe_tune_sel sel;
    struct moe_err err;
    const char *const sh[] = { "*.moe.shared.*@0" }, *const ex[] = { "*.experts.w3@1-3" };
    ck_assert_int_eq(moe_tune_select_ex(&sel, p, sh, 1, NULL, 0, W_T, W_F, &err), MOE_ECONFIG);
    ck_assert_ptr_nonnull(strstr(err.msg, "'layers.0.moe.shared.w1'"));
    ck_assert_ptr_nonnull(strstr(err.msg, "not an expert tensor"));
    ck_assert_msg(moe_tune_select_ex(&sel, p, ex, 1, NULL, 0, W_T, W_F, &err) == 0, "%s", err.msg);
    check_mask(&sel, p, "layers.1.moe.experts.w3", "1000", 0);
    moe_tune_sel_release(&sel);
    close_model(c);
}
END_TEST

// ------------------------------------------------------- optimizer segments

enum { NW = 37, N1 = 16 };

// The optimiser of a test config (optim.* keys).
static int optim_init(struct moe_optim *o, const struct moe_config *cfg, size_t n, struct moe_err *err)
{
    struct moe_optim_cfg oc;
    moe_optim_cfg_parse(&oc, cfg);
    return moe_optim_init(o, &oc, n, err);
}

static const char *const optim_cfgs[] = {
    "{\"optim\": {\"type\": \"gd\", \"lr\": 0.3}}",
    "{\"optim\": {\"type\": \"sgd\", \"lr\": 0.1, \"momentum\": 0.9, \"weight_decay\": 0.05}}",
    "{\"optim\": {\"type\": \"adamw\", \"lr\": 0.1, \"weight_decay\": 0.1}}",
    "{\"optim\": {\"type\": \"adamw\", \"lr\": 0.05, \"weight_decay\": 0.1, \"clip\": 0.7}}",
    "{\"optim\": {\"type\": \"sgd\", \"lr\": 0.1, \"momentum\": 0.5, \"clip\": 0.9}}",
};

START_TEST(test_optim_segments)
{
    struct moe_config cfg = load_cfg(optim_cfgs[_i]);
    struct moe_err err;
    struct moe_optim flat, one, two;
    ck_assert_int_eq(optim_init(&flat, &cfg, NW, &err), 0);
    ck_assert_int_eq(optim_init(&one, &cfg, NW, &err), 0);
    ck_assert_int_eq(optim_init(&two, &cfg, NW, &err), 0);
    float wf[NW], gf[NW], w1[NW], g1[NW], wa[N1], ga[N1], wb[NW - N1], gb[NW - N1];
    fill_u(wf, NW, 200, -1, 1);
    memcpy(w1, wf, sizeof wf);
    memcpy(wa, wf, sizeof wa);
    memcpy(wb, wf + N1, sizeof wb);
    int clipped = 0;
    for (int step = 0; step < 3; step++) {
        fill_u(gf, NW, 201 + (uint32_t)step, -0.5f, 0.5f);
        memcpy(g1, gf, sizeof gf);
        memcpy(ga, gf, sizeof ga);
        memcpy(gb, gf + N1, sizeof gb);
        double norm = moe_optim_grad_norm(gf, NW);
        clipped |= flat.clip > 0 && norm > flat.clip;
        moe_optim_step_norm(&flat, wf, gf, norm);
        struct moe_optim_seg s1 = { w1, g1, NW };
        double n1 = moe_optim_grad_norm_segs(&s1, 1);
        ck_assert_double_eq(n1, norm);
        moe_optim_step_segs(&one, &s1, 1, n1);
        struct moe_optim_seg s2[2] = { { wa, ga, N1 }, { wb, gb, NW - N1 } };
        double n2 = moe_optim_grad_norm_segs(s2, 2);
        ck_assert_double_eq(n2, norm);
        moe_optim_step_segs(&two, s2, 2, n2);
        ck_assert_mem_eq(w1, wf, sizeof wf);
        ck_assert_mem_eq(g1, gf, sizeof gf); // clipped the same way
        ck_assert_mem_eq(wa, wf, sizeof wa);
        ck_assert_mem_eq(wb, wf + N1, sizeof wb);
        ck_assert_mem_eq(ga, gf, sizeof ga);
        ck_assert_mem_eq(gb, gf + N1, sizeof gb);
        ck_assert_uint_eq(one.t, flat.t);
        ck_assert_uint_eq(two.t, flat.t);
        if (flat.m) {
            ck_assert_mem_eq(one.m, flat.m, NW * sizeof(float));
            ck_assert_mem_eq(two.m, flat.m, NW * sizeof(float));
        }
        if (flat.v) {
            ck_assert_mem_eq(one.v, flat.v, NW * sizeof(float));
            ck_assert_mem_eq(two.v, flat.v, NW * sizeof(float));
        }
    }
    ck_assert_int_eq(clipped, flat.clip > 0); // the clipping cases really clip
    moe_optim_release(&flat);
    moe_optim_release(&one);
    moe_optim_release(&two);
    moe_config_release(&cfg);
}
END_TEST

// ---------------------------------------------- training with hooks

// A tiny mlp-moe on the built-in classes; AdamW with weight decay, so a frozen
// tensor the optimizer touched would move even with a zero gradient.
static const char *const TRAIN_CFG =
    "{\"data\": {\"source\": \"synthetic\", \"synthetic\": {\"kind\": \"classes\", \"n_train\": 96,"
    " \"n_test\": 32, \"n_in\": 6, \"n_regions\": 4}},"
    " \"model\": {\"type\": \"mlp-moe\", \"n_embd\": 8, \"n_layer\": 2, \"moe_every\": 2, \"n_ff\": 8,"
    " \"n_expert\": 4, \"n_expert_used\": 2},"
    " \"moe\": {\"router\": \"softmax\"},"
    " \"optim\": {\"type\": \"adamw\", \"lr\": 0.01, \"weight_decay\": 0.1, \"batch_size\": 16},"
    " \"train\": {\"seed\": 4, \"epochs\": 2}}";

struct rows {
    double first_train, first_test;
    int n;
};

static int first_rows(void *ctx, const struct moe_eval_row *row, struct moe_err *err)
{
    (void)err;
    struct rows *r = ctx;
    if (row->step == 0 && strcmp(row->split, "train") == 0)
        r->first_train = row->loss;
    if (row->step == 0 && strcmp(row->split, "test") == 0)
        r->first_test = row->loss;
    r->n++;
    return 0;
}

struct trun {
    struct moe_config cfg;
    struct moe_data data;
    struct moe_model m;
    float *w0;
};

static void trun_open(struct trun *t)
{
    struct moe_err err;
    t->cfg = load_cfg(TRAIN_CFG);
    ck_assert_msg(moe_data_load(&t->data, &t->cfg, &err) == 0, "%s", err.msg);
    size_t mb = t->data.train.n > t->data.test.n ? t->data.train.n : t->data.test.n;
    ck_assert_msg(moe_model_create(&t->m, &t->cfg, NULL, t->data.train.task, t->data.train.n_in, t->data.train.n_out,
                                   mb, &err) == 0, "%s", err.msg);
    moe_model_init_weights(&t->m, 4);
    t->w0 = malloc(t->m.params.numel * sizeof(float));
    memcpy(t->w0, t->m.params.data, t->m.params.numel * sizeof(float));
}

static void trun_close(struct trun *t)
{
    free(t->w0);
    moe_model_release(&t->m);
    moe_data_release(&t->data);
    moe_config_release(&t->cfg);
}

static int tensor_same(const struct trun *t, size_t i)
{
    const struct moe_tensor *x = &t->m.params.t[i];
    return memcmp(t->m.params.data + x->offset, t->w0 + x->offset, x->numel * sizeof(float)) == 0;
}

START_TEST(test_train_frozen)
{
    struct trun t;
    trun_open(&t);
    struct moe_params *p = &t.m.params;
    uint8_t *fz = malloc(p->n);
    struct moe_err err;
    const char *const fr[] = { "input.*", "layers.1.moe.experts.w1", "head.bias", "*.norm.*" };
    ck_assert_int_eq(moe_tune_select(p, NULL, 0, fr, 4, "t", "f", fz, &err), 0);
    struct rows r = { 0 };
    struct moe_train_hooks h = { .row = first_rows, .ctx = &r, .frozen = fz };
    struct moe_train_result res;
    int rc = moe_train_ex(&t.m, &t.data, &t.cfg, &h, &res, &err);
    ck_assert_msg(rc == 0, "train: %s", err.msg);
    ck_assert_uint_gt(res.steps, 0);
    size_t n_frozen = 0;
    for (size_t i = 0; i < p->n; i++) {
        if (fz[i]) {
            n_frozen++;
            ck_assert_msg(tensor_same(&t, i), "frozen tensor '%s' changed", p->t[i].name);
        } else {
            ck_assert_msg(!tensor_same(&t, i), "trained tensor '%s' did not change", p->t[i].name);
        }
    }
    ck_assert_uint_ge(n_frozen, 6);
    free(fz);
    trun_close(&t);
}
END_TEST

START_TEST(test_train_lora)
{
    int shared = _i;
    // the reference: the same model's first evaluation rows, trained plainly
    struct trun ref;
    trun_open(&ref);
    struct rows r0 = { 0 };
    struct moe_train_hooks h0 = { .row = first_rows, .ctx = &r0 };
    struct moe_train_result res;
    struct moe_err err;
    ck_assert_int_eq(moe_train_ex(&ref.m, &ref.data, &ref.cfg, &h0, &res, &err), 0);
    trun_close(&ref);

    struct trun t;
    trun_open(&t);
    struct moe_params *p = &t.m.params;
    // as moe lora does: all frozen but the routers, adapters on the experts and the head
    uint8_t *fz = malloc(p->n);
    for (size_t i = 0; i < p->n; i++)
        fz[i] = !strstr(p->t[i].name, ".router.");
    const char *const tg[] = { "*.experts.*", "head.weight", "layers.0.ffn.w1" };
    struct moe_lora l;
    ck_assert_msg(moe_lora_create(&l, p, fz, tg, 3, 2, 8, shared, &err) == 0, "%s", err.msg);
    ck_assert_uint_eq(l.n, 4);
    moe_lora_init(&l, 4);
    float *a0 = malloc(l.p.numel * sizeof(float));
    memcpy(a0, l.p.data, l.p.numel * sizeof(float));
    struct rows r = { 0 };
    struct moe_train_hooks h = { .row = first_rows, .ctx = &r, .frozen = fz, .lora = &l };
    int rc = moe_train_ex(&t.m, &t.data, &t.cfg, &h, &res, &err);
    ck_assert_msg(rc == 0, "train: %s", err.msg);
    // step 0 is the base model's evaluation, bit for bit
    ck_assert_int_gt(r.n, 0);
    ck_assert_msg(r.first_train == r0.first_train && r.first_test == r0.first_test,
                  "step-0 rows differ from the base: train %.17g vs %.17g, test %.17g vs %.17g", r.first_train,
                  r0.first_train, r.first_test, r0.first_test);
    // adapters moved (B away from 0, A away from its start)
    for (size_t k = 0; k < l.n; k++) {
        const struct moe_tensor *ta = &l.p.t[l.t[k].a], *tb = &l.p.t[l.t[k].b];
        ck_assert_msg(memcmp(l.p.data + ta->offset, a0 + ta->offset, ta->numel * sizeof(float)) != 0,
                      "%s did not change", ta->name);
        ck_assert_msg(max_abs(l.p.data + tb->offset, tb->numel) > 0.0, "%s is still zero", tb->name);
    }
    // the slots hold W0 + s B A as of the last step
    float *w = malloc(p->numel * sizeof(float));
    memcpy(w, p->data, p->numel * sizeof(float));
    moe_lora_apply(&l, p);
    ck_assert_mem_eq(w, p->data, p->numel * sizeof(float));
    int is_adapted[64] = { 0 };
    ck_assert_uint_le(p->n, 64);
    for (size_t k = 0; k < l.n; k++)
        is_adapted[l.t[k].base] = 1;
    for (size_t i = 0; i < p->n; i++) {
        if (is_adapted[i])
            ck_assert_msg(!tensor_same(&t, i), "adapted tensor '%s' equals W0 after training", p->t[i].name);
        else if (fz[i])
            ck_assert_msg(tensor_same(&t, i), "frozen tensor '%s' changed", p->t[i].name);
        else
            ck_assert_msg(!tensor_same(&t, i), "router '%s' did not change", p->t[i].name);
    }
    // unapply: the adapted slots are W0 again, bit for bit
    moe_lora_unapply(&l, p);
    for (size_t i = 0; i < p->n; i++)
        if (fz[i])
            ck_assert_msg(tensor_same(&t, i), "tensor '%s' is not W0 after unapply", p->t[i].name);
    free(w);
    free(a0);
    free(fz);
    moe_lora_release(&l);
    trun_close(&t);
}
END_TEST

// The trainer's LoRA step is plain gradient descent on the adapters with fresh
// gradients each step: three full-batch gd steps by hand (zero the gradients,
// apply, forward and backward, moe_lora_backward, A, B -= lr g) agree with
// moe_train_ex (everything else frozen).
static const char *const GD_CFG =
    "{\"data\": {\"source\": \"synthetic\", \"synthetic\": {\"kind\": \"classes\", \"n_train\": 64,"
    " \"n_test\": 16, \"n_in\": 6, \"n_regions\": 4}},"
    " \"model\": {\"type\": \"mlp-moe\", \"n_embd\": 8, \"n_layer\": 1, \"n_ff\": 8, \"n_expert\": 4,"
    " \"n_expert_used\": 2},"
    " \"moe\": {\"router\": \"softmax\", \"capacity_factor\": 0},"
    " \"optim\": {\"type\": \"gd\", \"lr\": 0.5},"
    " \"train\": {\"seed\": 4, \"epochs\": 3}}";

START_TEST(test_train_lora_by_hand)
{
    struct moe_err err;
    struct moe_config cfg = load_cfg(GD_CFG);
    struct moe_data data;
    ck_assert_msg(moe_data_load(&data, &cfg, &err) == 0, "%s", err.msg);
    size_t mb = data.train.n > data.test.n ? data.train.n : data.test.n;
    struct moe_model m[2];
    struct moe_lora l[2];
    const char *const tg[] = { "*.experts.*", "head.weight" };
    uint8_t fz[64];
    for (int k = 0; k < 2; k++) {
        ck_assert_msg(moe_model_create(&m[k], &cfg, NULL, data.train.task, data.train.n_in, data.train.n_out, mb,
                                       &err) == 0, "%s", err.msg);
        moe_model_init_weights(&m[k], 4);
        ck_assert_uint_le(m[k].params.n, sizeof fz);
        memset(fz, 1, m[k].params.n);
        ck_assert_msg(moe_lora_create(&l[k], &m[k].params, fz, tg, 2, 2, 8, _i, &err) == 0, "%s", err.msg);
        moe_lora_init(&l[k], 4);
    }
    struct moe_train_hooks h = { .frozen = fz, .lora = &l[0] };
    struct moe_train_result res;
    ck_assert_msg(moe_train_ex(&m[0], &data, &cfg, &h, &res, &err) == 0, "%s", err.msg);
    ck_assert_uint_eq(res.steps, 3);
    float lr = (float)moe_cfg_num(&cfg, "optim.lr");
    for (uint64_t step = 0; step < 3; step++) {
        moe_params_zero_grad(&m[1].params);
        moe_params_zero_grad(&l[1].p);
        moe_lora_apply(&l[1], &m[1].params);
        struct moe_batch b = { .n = data.train.n, .x = data.train.x, .label = data.train.label,
                               .group = data.train.group, .step = step };
        ck_assert_msg(moe_model_run(&m[1], &b, 1, NULL, &err) == 0, "%s", err.msg);
        moe_lora_backward(&l[1], &m[1].params);
        for (size_t i = 0; i < l[1].p.numel; i++)
            l[1].p.data[i] -= lr * l[1].p.grad[i];
    }
    moe_lora_apply(&l[1], &m[1].params);
    for (size_t i = 0; i < l[0].p.numel; i++)
        ck_assert_msg(fabs(l[0].p.data[i] - l[1].p.data[i]) <= 1e-6 * fmax(1.0, fabs(l[1].p.data[i])),
                      "adapter value %zu: trainer %.9g, by hand %.9g", i, l[0].p.data[i], l[1].p.data[i]);
    for (size_t i = 0; i < m[0].params.numel; i++)
        ck_assert_msg(fabs(m[0].params.data[i] - m[1].params.data[i]) <= 1e-6 * fmax(1.0, fabs(m[1].params.data[i])),
                      "model weight %zu: trainer %.9g, by hand %.9g", i, m[0].params.data[i], m[1].params.data[i]);
    for (int k = 0; k < 2; k++) {
        moe_lora_release(&l[k]);
        moe_model_release(&m[k]);
    }
    moe_data_release(&data);
    moe_config_release(&cfg);
}
END_TEST

// Expert slices: with train.trainable "layers.*.moe.experts.*@0-1" on a
// 4-expert model, slices 0-1 of every expert tensor move and slices 2-3 (and
// every other tensor) stay byte-identical (AdamW with weight decay, so a slice
// the optimizer touched would move); the optimizer holds moments for the
// trained slices only.
static size_t ck_numel;

static int note_numel(void *ctx, const struct moe_train_ckpt *ck, struct moe_err *err)
{
    (void)ctx;
    (void)err;
    ck_numel = ck->opt->numel;
    return 0;
}

START_TEST(test_train_expert_slices)
{
    struct trun t;
    trun_open(&t);
    struct moe_params *p = &t.m.params;
    struct moe_err err;
    struct moe_tune_sel sel;
    const char *const tr[] = { "layers.*.moe.experts.*@0-1" };
    ck_assert_msg(moe_tune_select_ex(&sel, p, tr, 1, NULL, 0, W_T, W_F, &err) == 0, "%s", err.msg);
    struct rows r = { 0 };
    struct moe_train_hooks h = { .row = first_rows, .ctx = &r, .checkpoint = note_numel, .frozen = sel.frozen,
                                 .frozen_experts = sel.frozen_experts };
    struct moe_train_result res;
    ck_numel = 0;
    int rc = moe_train_ex(&t.m, &t.data, &t.cfg, &h, &res, &err);
    ck_assert_msg(rc == 0, "train: %s", err.msg);
    ck_assert_uint_gt(res.steps, 0);
    size_t n_expert_tensors = 0;
    for (size_t i = 0; i < p->n; i++) {
        const struct moe_tensor *x = &p->t[i];
        if (!strstr(x->name, ".experts.")) {
            ck_assert_msg(tensor_same(&t, i), "tensor '%s' changed", x->name);
            continue;
        }
        n_expert_tensors++;
        ck_assert_uint_eq(x->shape[0], 4);
        size_t slice = x->numel / 4;
        for (size_t e = 0; e < 4; e++) {
            int same = memcmp(p->data + x->offset + e * slice, t.w0 + x->offset + e * slice, slice * sizeof(float)) == 0;
            if (e < 2)
                ck_assert_msg(!same, "trained slice '%s'[%zu] did not change", x->name, e);
            else
                ck_assert_msg(same, "frozen slice '%s'[%zu] changed", x->name, e);
        }
    }
    ck_assert_uint_eq(n_expert_tensors, 2);
    ck_assert_uint_eq(ck_numel, moe_tune_sel_count(&sel, p));
    ck_assert_uint_eq(ck_numel, 2 * 2 * 8 * 8);
    moe_tune_sel_release(&sel);
    trun_close(&t);
}
END_TEST

// Gradient-norm clipping sees only the trained slices: two full-batch gd steps
// with optim.clip (small enough to clip) by hand, the norm taken over experts
// 1 and 3 of experts.w2 only, agree with moe_train_ex.
START_TEST(test_train_expert_slices_clip)
{
    struct moe_err err;
    struct moe_config cfg = load_cfg("{\"data\": {\"source\": \"synthetic\", \"synthetic\": {\"kind\": \"classes\","
                                     " \"n_train\": 64, \"n_test\": 16, \"n_in\": 6, \"n_regions\": 4}},"
                                     " \"model\": {\"type\": \"mlp-moe\", \"n_embd\": 8, \"n_layer\": 1, \"n_ff\": 8,"
                                     " \"n_expert\": 4, \"n_expert_used\": 2},"
                                     " \"moe\": {\"router\": \"softmax\", \"capacity_factor\": 0},"
                                     " \"optim\": {\"type\": \"gd\", \"lr\": 0.5, \"clip\": 0.01},"
                                     " \"train\": {\"seed\": 4, \"epochs\": 2}}");
    struct moe_data data;
    ck_assert_msg(moe_data_load(&data, &cfg, &err) == 0, "%s", err.msg);
    size_t mb = data.train.n > data.test.n ? data.train.n : data.test.n;
    struct moe_model m[2];
    for (int k = 0; k < 2; k++) {
        ck_assert_msg(moe_model_create(&m[k], &cfg, NULL, data.train.task, data.train.n_in, data.train.n_out, mb,
                                       &err) == 0, "%s", err.msg);
        moe_model_init_weights(&m[k], 4);
    }
    struct moe_params *p = &m[1].params;
    const char *const tr[] = { "*.experts.w2@1", "*.experts.w2@3" };
    struct moe_tune_sel sel;
    ck_assert_msg(moe_tune_select_ex(&sel, &m[0].params, tr, 2, NULL, 0, W_T, W_F, &err) == 0, "%s", err.msg);
    float *w0 = malloc(p->numel * sizeof(float));
    memcpy(w0, p->data, p->numel * sizeof(float));
    struct moe_train_hooks h = { .frozen = sel.frozen, .frozen_experts = sel.frozen_experts };
    struct moe_train_result res;
    ck_assert_msg(moe_train_ex(&m[0], &data, &cfg, &h, &res, &err) == 0, "%s", err.msg);
    ck_assert_uint_eq(res.steps, 2);
    int w2 = find(p, "layers.0.moe.experts.w2");
    size_t slice = p->t[w2].numel / 4;
    float *w = moe_params_data(p, w2), *g = moe_params_grad(p, w2);
    float lr = (float)moe_cfg_num(&cfg, "optim.lr");
    int clipped = 0;
    for (uint64_t step = 0; step < 2; step++) {
        moe_params_zero_grad(p);
        struct moe_batch b = { .n = data.train.n, .x = data.train.x, .label = data.train.label,
                               .group = data.train.group, .step = step };
        ck_assert_msg(moe_model_run(&m[1], &b, 1, NULL, &err) == 0, "%s", err.msg);
        double sq = 0.0;
        for (size_t e = 1; e < 4; e += 2)
            for (size_t i = 0; i < slice; i++)
                sq += (double)g[e * slice + i] * g[e * slice + i];
        double norm = sqrt(sq);
        float scale = norm > 0.01 ? (float)(0.01 / norm) : 1.0f;
        clipped |= scale != 1.0f;
        for (size_t e = 1; e < 4; e += 2)
            for (size_t i = 0; i < slice; i++)
                w[e * slice + i] -= lr * (g[e * slice + i] * scale);
    }
    ck_assert(clipped);
    ck_assert_mem_eq(m[0].params.data, p->data, p->numel * sizeof(float));
    for (size_t e = 0; e < 4; e++) {
        int same = memcmp(w + e * slice, w0 + p->t[w2].offset + e * slice, slice * sizeof(float)) == 0;
        ck_assert_msg(same == (e % 2 == 0), "experts.w2[%zu]: %s", e, same ? "unchanged" : "changed");
    }
    free(w0);
    moe_tune_sel_release(&sel);
    for (int k = 0; k < 2; k++)
        moe_model_release(&m[k]);
    moe_data_release(&data);
    moe_config_release(&cfg);
}
END_TEST

int main(void)
{
    if (moe_test_init_blas(1))
        return 1;
    Suite *s = suite_create("tune");
    TCase *tc = tcase_create("tune");
    tcase_set_timeout(tc, 300);
    int n0 = (int)(sizeof s0cases / sizeof *s0cases);
    tcase_add_loop_test(tc, test_step0_is_base, 0, n0);
    tcase_add_loop_test(tc, test_merged_vs_unmerged, 0, n0);
    tcase_add_loop_test(tc, test_adapter_grad, 0, (int)(sizeof fdcases / sizeof *fdcases));
    tcase_add_loop_test(tc, test_apply_backward_naive, 0, 2);
    tcase_add_test(tc, test_select);
    tcase_add_test(tc, test_lora_create_errors);
    tcase_add_test(tc, test_glob_range);
    tcase_add_test(tc, test_select_experts);
    tcase_add_loop_test(tc, test_select_experts_errors, 0, (int)(sizeof sel_errs / sizeof *sel_errs));
    tcase_add_test(tc, test_select_shared_experts);
    tcase_add_loop_test(tc, test_optim_segments, 0, (int)(sizeof optim_cfgs / sizeof *optim_cfgs));
    tcase_add_test(tc, test_train_frozen);
    tcase_add_test(tc, test_train_expert_slices);
    tcase_add_test(tc, test_train_expert_slices_clip);
    tcase_add_loop_test(tc, test_train_lora, 0, 2);
    tcase_add_loop_test(tc, test_train_lora_by_hand, 0, 2);
    suite_add_tcase(s, tc);
    return moe_test_run(s);
}
