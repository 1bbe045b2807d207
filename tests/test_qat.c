// test_qat.c: quantization-aware training (lib/compress/qat.c) and the fake
// quantization under it (lib/compress/quant.c: moe_quant_fake, moe_quant_select):
//   - moe_quant_fake is, bit for bit, moe_quant_int8 followed by
//     moe_dequant_int8 (w' = scale (q - zero), quant.h), for symmetric and
//     asymmetric, per channel and per tensor, on 2-d and 3-d tensors whose
//     rows span very different ranges; out may be w (in place); a 1-d or 4-d
//     tensor and a NaN weight are MOE_EINVAL;
//   - moe_qat_init selects the tensors moe_quant_select does (no glob: every
//     2-d and 3-d tensor; globs: the matrices they name), counts them and
//     their floats; a glob that names nothing, or only 1-d tensors, is
//     MOE_EINVAL naming it; enter puts moe_quant_fake's values into exactly
//     the targets (every other float keeps its bits), leave puts back every
//     byte; enter twice is one enter (the master copy is not overwritten by
//     w_q), leave without enter (or twice) does nothing; a NaN weight makes
//     enter MOE_EINVAL naming the tensor, the registry as before and the
//     state not entered;
//   - the straight-through estimator (Bengio, Leonard & Courville 2013; Jacob
//     et al. 2018, sec. 3): the gradient of a pass run while entered is
//     dL/dw_q, the derivative of the loss at the quantized weights, checked
//     element by element by central differences at w_q (perturbing w_q
//     itself, no requantization) on mlp-moe (dense swiglu block, sparse block
//     with a shared expert: input, dense FFN, router, experts, shared expert,
//     head) and on the transformer language model (attention, dense FFN,
//     router, experts, shared, embeddings, head), symmetric per channel and
//     asymmetric per tensor; the float model's gradient dL/dw at w differs
//     from the differences by more than the tolerance for some elements, so
//     the comparison tells the two apart (see check_ste);
//   - why the estimator is needed: away from rounding boundaries (|w / scale|
//     at least 0.1 from a half-integer, w not an extreme of its group) the
//     fake-quantized forward is flat in w: w_i +- 1e-3 scale gives the same
//     w_q and the same loss, bit for bit, so the true derivative of the
//     quantized forward with respect to w is 0 there, while the STE gradient
//     at those elements is nonzero for most of them; a step of one scale
//     toward 0 moves w_q by one grid step at that element only (see
//     check_flat);
//   - with FFN units pruned (moe_ffn_masks_grow), enter keeps every pruned
//     weight exactly +0.0 under every scheme and granularity (0 is on the
//     grid: symmetric q = 0, asymmetric q = zero).
#include <check.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "compress/prune.h"
#include "compress/qat.h"
#include "compress/quant.h"
#include "core/params.h"
#include "core/rng.h"
#include "io/config.h"
#include "model/model.h"
#include "moe/moe_layer.h"
#include "testutil.h"
#define TM_SEED 20240612 // this file's data
#include "compress_models.h"
#include "train/train.h"

static const char *const SCHEME[3] = { "none", "sym", "asym" };
static const char *const GRAN[2] = { "tensor", "channel" };

// ---------------------------------------------------------------- moe_quant_fake

// w: rows of U(-1, 1) scaled by 10^(r mod 4 - 2) (per channel and per tensor
// then differ), a few exact zeros, one row all positive (asymmetric: the range
// widened to 0).
static void fill_rows(float *w, size_t rows, size_t len, uint32_t stream)
{
    fill_uniform(w, rows * len, stream, -1.0f, 1.0f);
    for (size_t r = 0; r < rows; r++)
        for (size_t j = 0; j < len; j++) {
            float *v = &w[r * len + j];
            *v *= (float)pow(10.0, (double)(r % 4) - 2.0);
            if (r == 1)
                *v = fabsf(*v) + 0.25f;
            if ((r * len + j) % 11 == 5)
                *v = 0.0f;
        }
}

static void check_fake(int ndim, const size_t *shape, struct moe_quant_spec spec, uint32_t stream)
{
    size_t numel = 1;
    for (int d = 0; d < ndim; d++)
        numel *= shape[d];
    size_t len = shape[ndim - 1], groups, glen;
    struct moe_err err = { 0 };
    ck_assert_int_eq(moe_quant_groups(ndim, shape, spec.gran, &groups, &glen, &err), 0);
    float *w = malloc(numel * sizeof *w), *w0 = malloc(numel * sizeof *w0), *out = malloc(numel * sizeof *out),
          *ref = malloc(numel * sizeof *ref), *other = malloc(numel * sizeof *other);
    int8_t *q = malloc(numel);
    float *scale = malloc(groups * sizeof *scale);
    int32_t *zero = malloc(groups * sizeof *zero);
    ck_assert(w && w0 && out && ref && other && q && scale && zero);
    fill_rows(w, numel / len, len, stream);
    memcpy(w0, w, numel * sizeof *w);

    // the reference: quantize, then dequantize (zero NULL for symmetric: every zero point 0)
    ck_assert_int_eq(moe_quant_int8(w, groups, glen, spec.scheme, q, scale, zero, &err), 0);
    moe_dequant_int8(ref, q, scale, spec.scheme == MOE_QUANT_ASYM ? zero : NULL, glen, 0, numel);

    const char *what_s = SCHEME[spec.scheme], *what_g = GRAN[spec.gran];
    for (size_t j = 0; j < numel; j++)
        out[j] = NAN;
    int rc = moe_quant_fake(out, w, ndim, shape, spec, &err);
    ck_assert_msg(rc == 0, "%dd %s %s: %s", ndim, what_s, what_g, err.msg);
    ck_assert_mem_eq(w, w0, numel * sizeof *w); // the input untouched
    for (size_t j = 0; j < numel; j++)
        ck_assert_msg(memcmp(&out[j], &ref[j], sizeof(float)) == 0, "%dd %s %s: element %zu: %.9g, want %.9g", ndim,
                      what_s, what_g, j, (double)out[j], (double)ref[j]);
    // in place: the same bits
    ck_assert_int_eq(moe_quant_fake(w, w, ndim, shape, spec, &err), 0);
    ck_assert_mem_eq(w, ref, numel * sizeof *w);
    // fake quantization is idempotent: w_q is on its own grid (the scales of w_q are those of w
    // up to the rounding of max |w_q| = max |w| (symmetric: exactly 127 scale), so compare loosely)
    ck_assert_int_eq(moe_quant_fake(other, ref, ndim, shape, spec, &err), 0);
    for (size_t j = 0; j < numel; j++)
        ck_assert(fabsf(other[j] - ref[j]) <= 1e-6f * fabsf(ref[j]) + FLT_MIN);
    // the other granularity gives other values (the rows' ranges differ): gran is honoured
    struct moe_quant_spec o = { spec.scheme, spec.gran == MOE_QUANT_PER_TENSOR ? MOE_QUANT_PER_CHANNEL
                                                                              : MOE_QUANT_PER_TENSOR };
    ck_assert_int_eq(moe_quant_fake(other, w0, ndim, shape, o, &err), 0);
    ck_assert(memcmp(other, ref, numel * sizeof *ref) != 0);
    free(w), free(w0), free(out), free(ref), free(other), free(q), free(scale), free(zero);
}

START_TEST(test_fake)
{
    const size_t s2[2] = { 9, 13 }, s3[3] = { 3, 5, 7 }, s2b[2] = { 4, 64 };
    uint32_t stream = 1;
    for (int scheme = MOE_QUANT_SYM; scheme <= MOE_QUANT_ASYM; scheme++)
        for (int gran = MOE_QUANT_PER_TENSOR; gran <= MOE_QUANT_PER_CHANNEL; gran++) {
            struct moe_quant_spec spec = { (enum moe_quant_scheme)scheme, (enum moe_quant_gran)gran };
            check_fake(2, s2, spec, stream++);
            check_fake(3, s3, spec, stream++);
            check_fake(2, s2b, spec, stream++);
        }

    // other ranks, and weights that do not quantize: MOE_EINVAL
    struct moe_err err = { 0 };
    float w[24] = { 0 }, out[24];
    const size_t s1[1] = { 24 }, s4[4] = { 1, 2, 3, 4 }, s23[2] = { 2, 12 };
    struct moe_quant_spec sym = { MOE_QUANT_SYM, MOE_QUANT_PER_CHANNEL };
    ck_assert_int_eq(moe_quant_fake(out, w, 1, s1, sym, &err), MOE_EINVAL);
    ck_assert_int_eq(moe_quant_fake(out, w, 4, s4, sym, &err), MOE_EINVAL);
    w[3] = NAN;
    ck_assert_int_eq(moe_quant_fake(out, w, 2, s23, sym, &err), MOE_EINVAL);
    ck_assert_msg(strstr(err.msg, "nan"), "%s", err.msg);
    w[3] = -INFINITY;
    struct moe_quant_spec asym = { MOE_QUANT_ASYM, MOE_QUANT_PER_TENSOR };
    ck_assert_int_eq(moe_quant_fake(out, w, 2, s23, asym, &err), MOE_EINVAL);
    // all zero: scale 1, every w' 0
    w[3] = 0.0f;
    ck_assert_int_eq(moe_quant_fake(out, w, 2, s23, sym, &err), 0);
    ck_assert_mem_eq(out, w, sizeof w);
}
END_TEST

// ---------------------------------------------------------------- models

// The models: compress_models.h (test_prune.c's MLP_MOE and TRANSFORMER).

struct fd_ctx {
    struct moe_model m;
    struct moe_batch b;
    float x[N * I];
    int32_t label[N];
    int32_t tok[B * (C + 1)];
};

static void class_batch(struct fd_ctx *c)
{
    fill_uniform(c->x, N * I, 31, -1.0f, 1.0f);
    for (size_t t = 0; t < N; t++)
        c->label[t] = (int32_t)((t * 2 + 1) % O);
    memset(&c->b, 0, sizeof c->b);
    c->b.n = N;
    c->b.x = c->x;
    c->b.label = c->label;
}

static void lm_batch(struct fd_ctx *c)
{
    struct moe_rng r = moe_rng_make(5, MOE_RNG_DATA, 32);
    for (size_t i = 0; i < B * (C + 1); i++)
        c->tok[i] = (int32_t)moe_rng_below(&r, i, V);
    memset(&c->b, 0, sizeof c->b);
    c->b.n = B;
    c->b.tok = c->tok;
}

// compress_models.h's routed_loss on the context's model and batch.
static double fd_loss(struct fd_ctx *c, unsigned *sig) { return routed_loss(&c->m, &c->b, sig); }

// A training pass (with_grad) at the registry's weights: the gradient into
// grad (p->numel floats), the batch-mean loss returned.
static double grad_pass(struct fd_ctx *c, float *grad)
{
    struct moe_params *p = &c->m.params;
    struct moe_stats st;
    struct moe_err err;
    ck_assert_int_eq(moe_stats_init(&st, c->m.n_expert, 0, &err), 0);
    moe_params_zero_grad(p);
    int rc = moe_model_run(&c->m, &c->b, 1, &st, &err);
    ck_assert_msg(rc == 0, "run: %s", err.msg);
    double l = st.loss / (double)st.n;
    moe_stats_release(&st);
    memcpy(grad, p->grad, p->numel * sizeof *grad);
    return l;
}

// w_q by hand: every target of q (tensor by tensor, moe_quant_fake of w) into wq,
// the rest copied.
static void fake_by_hand(const struct moe_params *p, const struct moe_qat *q, const float *w, float *wq)
{
    struct moe_err err = { 0 };
    memcpy(wq, w, p->numel * sizeof *wq);
    for (size_t i = 0; i < p->n; i++)
        if (q->target[i]) {
            const struct moe_tensor *t = &p->t[i];
            int rc = moe_quant_fake(wq + t->offset, w + t->offset, t->ndim, t->shape, q->spec, &err);
            ck_assert_msg(rc == 0, "%s: %s", t->name, err.msg);
        }
}

// ---------------------------------------------------------------- select, enter, leave

// q from (p, spec, globs): the targets of moe_quant_select, their count and
// floats; then enter, enter again, leave, leave again on p's weights.
static void check_enter_leave(struct moe_params *p, struct moe_quant_spec spec, const char *const *globs,
                              size_t n_globs, size_t want_count)
{
    struct moe_err err = { 0 };
    uint8_t *sel = malloc(p->n);
    float *w = malloc(p->numel * sizeof *w), *wq = malloc(p->numel * sizeof *wq);
    ck_assert(sel && w && wq);
    ck_assert_int_eq(moe_quant_select(p, globs, n_globs, sel, &err), 0);
    struct moe_qat q;
    int rc = moe_qat_init(&q, p, spec, globs, n_globs, &err);
    ck_assert_msg(rc == 0, "init: %s", err.msg);
    ck_assert_uint_eq(q.n, p->n);
    ck_assert_mem_eq(q.target, sel, p->n);
    ck_assert_int_eq(q.entered, 0);
    ck_assert_int_eq(q.spec.scheme, spec.scheme);
    ck_assert_int_eq(q.spec.gran, spec.gran);
    size_t count = 0, floats = 0;
    for (size_t i = 0; i < p->n; i++)
        if (sel[i]) {
            ck_assert(p->t[i].ndim == 2 || p->t[i].ndim == 3);
            count++;
            floats += p->t[i].numel;
        }
    ck_assert_uint_eq(moe_qat_count(&q), count);
    ck_assert_uint_eq(count, want_count);
    ck_assert_uint_eq(q.n_master, floats);

    memcpy(w, p->data, p->numel * sizeof *w);
    fake_by_hand(p, &q, w, wq);
    // leave before enter: nothing
    moe_qat_leave(&q, p);
    ck_assert_mem_eq(p->data, w, p->numel * sizeof *w);
    // enter: exactly the targets hold w_q, the rest its bits
    ck_assert_int_eq(moe_qat_enter(&q, p, &err), 0);
    ck_assert_int_eq(q.entered, 1);
    size_t moved = 0;
    for (size_t i = 0; i < p->n; i++) {
        const struct moe_tensor *t = &p->t[i];
        ck_assert_msg(memcmp(p->data + t->offset, wq + t->offset, t->numel * sizeof(float)) == 0, "%s %s %s: %s",
                      SCHEME[spec.scheme], GRAN[spec.gran], sel[i] ? "target" : "other", t->name);
        if (!sel[i])
            ck_assert_mem_eq(p->data + t->offset, w + t->offset, t->numel * sizeof(float));
        else
            moved += memcmp(p->data + t->offset, w + t->offset, t->numel * sizeof(float)) != 0;
    }
    ck_assert_uint_eq(moved, count); // random weights: quantization moves each target
    // enter again: nothing (the master copy still holds w, not w_q)
    ck_assert_int_eq(moe_qat_enter(&q, p, &err), 0);
    ck_assert_mem_eq(p->data, wq, p->numel * sizeof *wq);
    // leave: every byte back; leave again: nothing, even after the registry moved on
    moe_qat_leave(&q, p);
    ck_assert_int_eq(q.entered, 0);
    ck_assert_mem_eq(p->data, w, p->numel * sizeof *w);
    p->data[0] += 1.0f;
    float moved_w = p->data[0];
    moe_qat_leave(&q, p);
    ck_assert(p->data[0] == moved_w);
    p->data[0] = w[0];
    // and a second round from the same object
    ck_assert_int_eq(moe_qat_enter(&q, p, &err), 0);
    ck_assert_mem_eq(p->data, wq, p->numel * sizeof *wq);
    moe_qat_leave(&q, p);
    ck_assert_mem_eq(p->data, w, p->numel * sizeof *w);
    moe_qat_release(&q);
    moe_qat_release(&q); // twice: nothing
    free(sel), free(w), free(wq);
}

START_TEST(test_qat_enter_leave)
{
    struct moe_model m;
    make_model(&m, MLP_MOE, MOE_TASK_CLASSIFICATION, I, O, N);
    randomize_model(&m, 71);
    struct moe_params *p = &m.params;
    struct moe_err err = { 0 };

    // no glob: every 2-d and 3-d tensor (input, dense w1 w3 w2, router, experts w1 w3 w2,
    // shared w1 w3 w2, head: 12)
    size_t matrices = 0;
    for (size_t i = 0; i < p->n; i++)
        matrices += p->t[i].ndim == 2 || p->t[i].ndim == 3;
    ck_assert_uint_eq(matrices, 12);
    check_enter_leave(p, (struct moe_quant_spec){ MOE_QUANT_SYM, MOE_QUANT_PER_CHANNEL }, NULL, 0, 12);
    // globs: the experts and the head; every w2 and the router (a glob that also names 1-d
    // tensors selects its matrices only: "layers.1.*" holds norms)
    const char *const g1[2] = { "layers.*.moe.experts.*", "head.weight" };
    check_enter_leave(p, (struct moe_quant_spec){ MOE_QUANT_ASYM, MOE_QUANT_PER_TENSOR }, g1, 2, 4);
    const char *const g2[2] = { "*.w2", "*router*" };
    check_enter_leave(p, (struct moe_quant_spec){ MOE_QUANT_ASYM, MOE_QUANT_PER_CHANNEL }, g2, 2, 4);
    const char *const g3[2] = { "layers.1.*", "head.*" }; // head.bias is 1-d: left out
    check_enter_leave(p, (struct moe_quant_spec){ MOE_QUANT_SYM, MOE_QUANT_PER_TENSOR }, g3, 2, 8);
    uint8_t sel[32];
    ck_assert_uint_le(p->n, sizeof sel);
    ck_assert_int_eq(moe_quant_select(p, g1, 2, sel, &err), 0);
    for (size_t i = 0; i < p->n; i++)
        ck_assert_int_eq(sel[i], strncmp(p->t[i].name, "layers.1.moe.experts.", 21) == 0 ||
                                     strcmp(p->t[i].name, "head.weight") == 0);

    // globs naming nothing, or no matrix: MOE_EINVAL naming the glob; q left released
    const char *const bad1[2] = { "head.weight", "layers.*.nothing*" };
    const char *const bad2[2] = { "*.bias", "input.weight" };
    const char *const *bads[2] = { bad1, bad2 };
    const char *const bad_names[2] = { "'layers.*.nothing*'", "'*.bias'" };
    for (int b = 0; b < 2; b++) {
        struct moe_qat q;
        memset(&q, 0x5a, sizeof q);
        err.msg[0] = 0;
        struct moe_quant_spec sym = { MOE_QUANT_SYM, MOE_QUANT_PER_CHANNEL };
        ck_assert_int_eq(moe_qat_init(&q, p, sym, bads[b], 2, &err), MOE_EINVAL);
        ck_assert_msg(strstr(err.msg, bad_names[b]), "message '%s' does not name %s", err.msg, bad_names[b]);
        ck_assert_ptr_null(q.target);
        ck_assert_ptr_null(q.master);
        moe_qat_release(&q);
    }

    // a weight that does not quantize: enter fails naming its tensor (the last target, so that
    // the targets before it were faked already), the registry as before, not entered
    struct moe_qat q;
    struct moe_quant_spec sym = { MOE_QUANT_SYM, MOE_QUANT_PER_CHANNEL };
    ck_assert_int_eq(moe_qat_init(&q, p, sym, NULL, 0, &err), 0);
    int head = moe_params_find(p, "head.weight");
    ck_assert_int_ge(head, 0);
    float keep = moe_params_data(p, head)[5];
    moe_params_data(p, head)[5] = NAN;
    float *w = malloc(p->numel * sizeof *w);
    ck_assert_ptr_nonnull(w);
    memcpy(w, p->data, p->numel * sizeof *w);
    err.msg[0] = 0;
    ck_assert_int_eq(moe_qat_enter(&q, p, &err), MOE_EINVAL);
    ck_assert_msg(strstr(err.msg, "'head.weight'"), "message '%s' does not name the tensor", err.msg);
    ck_assert_int_eq(q.entered, 0);
    ck_assert_mem_eq(p->data, w, p->numel * sizeof *w); // NaN included: bytes
    moe_qat_leave(&q, p);
    ck_assert_mem_eq(p->data, w, p->numel * sizeof *w);
    moe_params_data(p, head)[5] = keep;
    memcpy(w, p->data, p->numel * sizeof *w);
    ck_assert_int_eq(moe_qat_enter(&q, p, &err), 0);
    moe_qat_leave(&q, p);
    ck_assert_mem_eq(p->data, w, p->numel * sizeof *w);
    moe_qat_release(&q);
    free(w);
    moe_model_release(&m);
}
END_TEST

// ---------------------------------------------------------------- the straight-through estimator

// dL/dw_q[at] by a central difference of step h: registry element at (holding
// w_q) set to w_q +- h, the loss of each evaluated; the steps taken are the
// floats' (w_q +- h rounded), so the quotient uses them. 0 in *ok when a
// routing choice flipped (L is not smooth across), else unchanged. The
// element is restored.
static double dcoord(struct fd_ctx *c, size_t at, double h, unsigned sig0, int *ok)
{
    float *w = c->m.params.data, w0 = w[at];
    unsigned sp, sm;
    float wp = (float)(w0 + h), wm = (float)(w0 - h);
    w[at] = wp;
    double lp = fd_loss(c, &sp);
    w[at] = wm;
    double lm = fd_loss(c, &sm);
    w[at] = w0;
    *ok = *ok && sp == sig0 && sm == sig0;
    return (lp - lm) / ((double)wp - (double)wm);
}

// The claim: run while entered, the backward pass gives g_ste = dL/dw_q, the
// loss's derivative at the quantized weights w_q (the estimator then hands it
// to w as if d w_q / d w were 1). Checked on SAMPLE elements of every target:
// the registry set to w_q (moe_quant_fake by hand), element i moved by +-h
// with no requantization, central differences D(h), h = 1e-2 and 2h,
// combined by Richardson, (4 D(h) - D(2h)) / 3, which cancels the h^2 L''' / 6
// term. Left: the loss's float roundoff, ~1e-7 absolute per evaluation (losses
// ~1, sums of float terms), i.e. ~1e-5 absolute in D(1e-2) and ~2e-5 after
// Richardson (weights 5/3), and the gradient's own float error, ~1e-6
// relative. The tolerance, 1e-4 absolute + 1e-3 relative, is ~5 times that
// (observed worst error: 0.25 of it, the transformer; MOE_QAT_VERBOSE=1
// prints it); an error of the size of the
// gradients (~1e-2 .. 1e-1: a wrong tensor, a gradient at w instead of w_q,
// a missing term) is far above it. The float model's gradient dL/dw (at w,
// not w_q) must fail the same tolerance for some elements: the check can
// tell dL/dw_q from dL/dw (it fails at most of them, observed 70-85%, by up
// to 80 times the tolerance; at least half required). A coordinate whose perturbation flips a routing
// choice (the loss jumps there; a router row, or the input projection, with
// a token near a tie) is tried again with h / 4, and skipped when that flips
// too: at most 1 in 10.
#define H_FD 1e-2
#define SAMPLE 6

static void check_ste(struct fd_ctx *c, struct moe_quant_spec spec, const char *what)
{
    struct moe_params *p = &c->m.params;
    struct moe_err err = { 0 };
    struct moe_qat q;
    ck_assert_int_eq(moe_qat_init(&q, p, spec, NULL, 0, &err), 0);
    float *w = malloc(p->numel * sizeof *w), *wq = malloc(p->numel * sizeof *wq);
    float *g_ste = malloc(p->numel * sizeof *g_ste), *g_float = malloc(p->numel * sizeof *g_float);
    ck_assert(w && wq && g_ste && g_float);
    memcpy(w, p->data, p->numel * sizeof *w);
    fake_by_hand(p, &q, w, wq);

    double l_float = grad_pass(c, g_float); // the float model's gradient, for contrast
    ck_assert_int_eq(moe_qat_enter(&q, p, &err), 0);
    ck_assert_mem_eq(p->data, wq, p->numel * sizeof *wq);
    double l_ste = grad_pass(c, g_ste);
    moe_qat_leave(&q, p);
    ck_assert_mem_eq(p->data, w, p->numel * sizeof *w);
    ck_assert(l_ste != l_float); // quantization moved the loss

    // the registry at w_q (no requantization from here on)
    memcpy(p->data, wq, p->numel * sizeof *wq);
    unsigned sig0;
    double l0 = fd_loss(c, &sig0);
    ck_assert_double_eq_tol(l0, l_ste, 1e-12 * fabs(l0)); // with_grad does not change the loss

    struct moe_rng r = moe_rng_make(7, MOE_RNG_DATA, 77);
    size_t checked = 0, skipped = 0, retried = 0, told_apart = 0, tensors = 0;
    double worst = 0.0, worst_float = 0.0;
    for (size_t i = 0; i < p->n; i++) {
        if (!q.target[i])
            continue;
        const struct moe_tensor *t = &p->t[i];
        tensors++;
        size_t here = 0;
        for (size_t k = 0; k < SAMPLE; k++) {
            size_t at = t->offset + moe_rng_below(&r, i * SAMPLE + k, (uint32_t)t->numel);
            // h = 1e-2; when that flips a routing choice, h / 4 (the roundoff term, and with it the
            // tolerance's absolute part, 4 times larger)
            int ok = 0;
            double h = H_FD, d1 = 0.0, d2 = 0.0;
            for (int tries = 0; !ok && tries < 2; tries++, h /= 4) {
                ok = 1;
                d1 = dcoord(c, at, h, sig0, &ok);
                d2 = dcoord(c, at, 2 * h, sig0, &ok);
            }
            if (!ok) {
                if (getenv("MOE_QAT_VERBOSE"))
                    printf("  skipped %s[%zu]\n", t->name, at - t->offset);
                skipped++;
                continue;
            }
            h *= 4; // the step used
            retried += h < H_FD;
            double num = (4.0 * d1 - d2) / 3.0, tol = 1e-4 * (H_FD / h) + 1e-3 * fabs(num);
            double e = fabs(num - g_ste[at]), e_float = fabs(num - g_float[at]);
            worst = fmax(worst, e / tol);
            worst_float = fmax(worst_float, e_float / tol);
            ck_assert_msg(e <= tol, "%s (%s %s) %s[%zu]: g_ste %.9g, dL/dw_q by differences %.9g (h %g, error %.3g)",
                          what, SCHEME[spec.scheme], GRAN[spec.gran], t->name, at - t->offset, (double)g_ste[at], num,
                          h, e);
            told_apart += e_float > tol;
            checked++;
            here++;
        }
        ck_assert_msg(here > 0, "%s: no element of %s checked", what, t->name);
    }
    if (getenv("MOE_QAT_VERBOSE"))
        printf("%s (%s %s): %zu tensors, %zu elements checked (%zu with h / 4), %zu skipped, worst error %.3g of the "
               "tolerance; dL/dw at w: %zu beyond it, worst %.3g\n",
               what, SCHEME[spec.scheme], GRAN[spec.gran], tensors, checked, retried, skipped, worst, told_apart,
               worst_float);
    ck_assert_msg(skipped * 10 <= checked, "%s: %zu checked, %zu skipped", what, checked, skipped);
    ck_assert_msg(told_apart * 2 >= checked, "%s: dL/dw at w passes the check at %zu of %zu: w and w_q not told apart",
                  what, checked - told_apart, checked);
    unsigned s;
    ck_assert(fd_loss(c, &s) == l0 && s == sig0); // every element restored
    memcpy(p->data, w, p->numel * sizeof *w);
    moe_qat_release(&q);
    free(w), free(wq), free(g_ste), free(g_float);
}

START_TEST(test_ste_fd)
{
    struct fd_ctx *c = calloc(1, sizeof *c);
    ck_assert_ptr_nonnull(c);
    make_model(&c->m, MLP_MOE, MOE_TASK_CLASSIFICATION, I, O, N);
    randomize_model(&c->m, 81);
    class_batch(c);
    check_ste(c, (struct moe_quant_spec){ MOE_QUANT_SYM, MOE_QUANT_PER_CHANNEL }, "mlp-moe");
    check_ste(c, (struct moe_quant_spec){ MOE_QUANT_ASYM, MOE_QUANT_PER_TENSOR }, "mlp-moe");
    moe_model_release(&c->m);

    make_model(&c->m, TRANSFORMER, MOE_TASK_LM, 1, V, B);
    randomize_model(&c->m, 82);
    lm_batch(c);
    check_ste(c, (struct moe_quant_spec){ MOE_QUANT_SYM, MOE_QUANT_PER_CHANNEL }, "transformer");
    check_ste(c, (struct moe_quant_spec){ MOE_QUANT_ASYM, MOE_QUANT_PER_TENSOR }, "transformer");
    moe_model_release(&c->m);
    free(c);
}
END_TEST

// Why the estimator: the fake-quantized forward, as a function of the float
// weights w, is a step function. For an element w_i whose w_i / scale lies at
// least 0.1 from a rounding boundary (a half-integer; asymmetric: the zero
// point is an integer, so the same boundaries) and that is not an extreme of
// its group (symmetric: max |w|; asymmetric: min or max, which set lo and hi),
// w_i +- 1e-3 scale leaves the group's scale (and zero point) alone and
// w_i / scale on the same side of its boundary: enter gives the same w_q, bit
// for bit, and so the same loss, bit for bit. The true derivative of the
// quantized forward with respect to w_i is 0 there; training on it would
// never move w. The STE gradient g_ste = dL/dw_q at those elements is nonzero
// for most of them (zero only where no signal flows, e.g. an expert no row
// was routed to). A step of one scale toward 0 (staying inside the group's
// range) crosses a boundary: w_q moves at element i alone, by one grid step.
static void check_flat(struct fd_ctx *c, struct moe_quant_spec spec, const char *what)
{
    struct moe_params *p = &c->m.params;
    struct moe_err err = { 0 };
    struct moe_qat q;
    ck_assert_int_eq(moe_qat_init(&q, p, spec, NULL, 0, &err), 0);
    float *w = malloc(p->numel * sizeof *w), *wq = malloc(p->numel * sizeof *wq), *g = malloc(p->numel * sizeof *g);
    ck_assert(w && wq && g);
    memcpy(w, p->data, p->numel * sizeof *w);
    ck_assert_int_eq(moe_qat_enter(&q, p, &err), 0);
    memcpy(wq, p->data, p->numel * sizeof *wq);
    unsigned sig0, s;
    double l_q = fd_loss(c, &sig0);
    grad_pass(c, g);
    moe_qat_leave(&q, p);

    int asym = spec.scheme == MOE_QUANT_ASYM;
    size_t checked = 0, nonzero = 0, stepped = 0, loss_moved = 0;
    for (size_t i = 0; i < p->n; i++) {
        if (!q.target[i])
            continue;
        const struct moe_tensor *t = &p->t[i];
        size_t groups, len;
        ck_assert_int_eq(moe_quant_groups(t->ndim, t->shape, spec.gran, &groups, &len, &err), 0);
        int8_t *q8 = malloc(t->numel);
        float *scale = malloc(groups * sizeof *scale);
        int32_t *zero = malloc(groups * sizeof *zero);
        ck_assert(q8 && scale && zero);
        const float *wt = w + t->offset;
        ck_assert_int_eq(moe_quant_int8(wt, groups, len, spec.scheme, q8, scale, zero, &err), 0);
        size_t here = 0;
        for (size_t j = 0; j < t->numel && here < 8; j += 3) {
            size_t gi = j / len, at = t->offset + j;
            double lo = 0.0, hi = 0.0, amax = 0.0;
            for (size_t e = gi * len; e < (gi + 1) * len; e++) {
                lo = fmin(lo, wt[e]);
                hi = fmax(hi, wt[e]);
                amax = fmax(amax, fabs(wt[e]));
            }
            double sc = scale[gi], h = 1e-3 * sc, v = wt[j] / sc;
            if (fabs(v - floor(v) - 0.5) < 0.1)
                continue; // near a rounding boundary
            if (asym ? !(wt[j] - 2 * h > lo && wt[j] + 2 * h < hi) : !(fabs(wt[j]) + 2 * h < amax))
                continue; // an extreme (or next to one): it sets the scale
            for (int sgn = -1; sgn <= 1; sgn += 2) {
                p->data[at] = (float)(wt[j] + sgn * h);
                ck_assert(p->data[at] != wt[j]);
                ck_assert_int_eq(moe_qat_enter(&q, p, &err), 0);
                ck_assert_msg(memcmp(p->data, wq, p->numel * sizeof *wq) == 0, "%s (%s %s) %s[%zu] %+g: w_q moved",
                              what, SCHEME[spec.scheme], GRAN[spec.gran], t->name, j, sgn * h);
                double l = fd_loss(c, &s);
                ck_assert_msg(memcmp(&l, &l_q, sizeof l) == 0, "%s %s[%zu]: loss %.17g, at w %.17g", what, t->name, j,
                              l, l_q);
                moe_qat_leave(&q, p);
                ck_assert(p->data[at] == (float)(wt[j] + sgn * h)); // the float weight kept its move
            }
            nonzero += g[at] != 0.0f;
            // one scale toward 0: across a boundary, inside [lo, hi] (and below max |w|)
            p->data[at] = (float)(wt[j] - copysign(sc, wt[j]));
            ck_assert_int_eq(moe_qat_enter(&q, p, &err), 0);
            for (size_t e = 0; e < p->numel; e++)
                if (e != at)
                    ck_assert_msg(memcmp(&p->data[e], &wq[e], sizeof(float)) == 0,
                                  "%s %s[%zu] stepped: float %zu moved", what, t->name, j, e);
            double jump = fabs((double)p->data[at] - (double)wq[at]);
            // two float products scale (q - zero), |q - zero| <= 255: each within half an ulp of
            // 255 scale, ~1.5e-5 scale
            ck_assert_msg(fabs(jump - sc) <= 1e-4 * sc, "%s %s[%zu]: w_q moved by %.9g, scale %.9g", what, t->name, j,
                          jump, sc);
            stepped++;
            loss_moved += fd_loss(c, &s) != l_q;
            moe_qat_leave(&q, p);
            p->data[at] = wt[j];
            here++;
            checked++;
        }
        ck_assert_msg(here > 0, "%s: no element of %s away from the boundaries", what, t->name);
        free(q8), free(scale), free(zero);
    }
    ck_assert_mem_eq(p->data, w, p->numel * sizeof *w);
    if (getenv("MOE_QAT_VERBOSE"))
        printf("%s (%s %s): %zu elements flat, STE gradient nonzero at %zu; one step: the loss moved at %zu of %zu\n",
               what, SCHEME[spec.scheme], GRAN[spec.gran], checked, nonzero, loss_moved, stepped);
    ck_assert_uint_ge(checked, 40);
    ck_assert_msg(nonzero * 4 >= checked * 3, "%s: the STE gradient is nonzero at %zu of %zu", what, nonzero, checked);
    ck_assert_msg(loss_moved * 4 >= stepped * 3, "%s: a step moved the loss at %zu of %zu", what, loss_moved, stepped);
    moe_qat_release(&q);
    free(w), free(wq), free(g);
}

START_TEST(test_ste_flat)
{
    struct fd_ctx *c = calloc(1, sizeof *c);
    ck_assert_ptr_nonnull(c);
    make_model(&c->m, MLP_MOE, MOE_TASK_CLASSIFICATION, I, O, N);
    randomize_model(&c->m, 91);
    class_batch(c);
    check_flat(c, (struct moe_quant_spec){ MOE_QUANT_SYM, MOE_QUANT_PER_CHANNEL }, "mlp-moe");
    check_flat(c, (struct moe_quant_spec){ MOE_QUANT_ASYM, MOE_QUANT_PER_TENSOR }, "mlp-moe");
    moe_model_release(&c->m);
    free(c);
}
END_TEST

// ---------------------------------------------------------------- pruned units

START_TEST(test_qat_pruned)
{
    struct moe_model m;
    struct moe_err err = { 0 };
    make_model(&m, MLP_MOE, MOE_TASK_CLASSIFICATION, I, O, N);
    randomize_model(&m, 95);
    struct moe_params *p = &m.params;
    struct moe_ffn_masks k;
    ck_assert_int_eq(moe_ffn_masks_init(&k, p, &err), 0);
    ck_assert_int_eq(moe_ffn_masks_grow(&k, p, MOE_NEURON_L1, NULL, 0.4, 0, &err), 0);
    ck_assert_uint_eq(moe_ffn_masks_pruned(&k, k.n), 10);
    uint8_t *dead = malloc(p->numel);
    float *w = malloc(p->numel * sizeof *w);
    ck_assert(dead && w);
    moe_ffn_masks_dead(&k, p, dead);
    memcpy(w, p->data, p->numel * sizeof *w);
    size_t n_dead = 0;
    for (size_t at = 0; at < p->numel; at++)
        if (dead[at]) {
            ck_assert(p->data[at] == 0.0f);
            n_dead++;
        }
    ck_assert_uint_gt(n_dead, 0);

    for (int scheme = MOE_QUANT_SYM; scheme <= MOE_QUANT_ASYM; scheme++)
        for (int gran = MOE_QUANT_PER_TENSOR; gran <= MOE_QUANT_PER_CHANNEL; gran++) {
            struct moe_quant_spec spec = { (enum moe_quant_scheme)scheme, (enum moe_quant_gran)gran };
            struct moe_qat q;
            ck_assert_int_eq(moe_qat_init(&q, p, spec, NULL, 0, &err), 0);
            ck_assert_int_eq(moe_qat_enter(&q, p, &err), 0);
            size_t live_nonzero = 0, live = 0;
            for (size_t at = 0; at < p->numel; at++) {
                if (dead[at]) {
                    ck_assert_msg(p->data[at] == 0.0f && !signbit(p->data[at]), "%s %s: pruned float %zu is %g",
                                  SCHEME[scheme], GRAN[gran], at, (double)p->data[at]);
                } else {
                    live++;
                    live_nonzero += p->data[at] != 0.0f;
                }
            }
            ck_assert_uint_ge(live_nonzero * 10, live * 9); // the rest is not zeroed wholesale
            moe_qat_leave(&q, p);
            ck_assert_mem_eq(p->data, w, p->numel * sizeof *w);
            moe_qat_release(&q);
        }
    free(dead), free(w);
    moe_ffn_masks_release(&k);
    moe_model_release(&m);
}
END_TEST

static Suite *qat_suite(void)
{
    Suite *s = suite_create("qat");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_fake);
    tcase_add_test(tc, test_qat_enter_leave);
    tcase_add_test(tc, test_ste_fd);
    tcase_add_test(tc, test_ste_flat);
    tcase_add_test(tc, test_qat_pruned);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    if (moe_test_init_blas(1))
        return 1;
    return moe_test_run(qat_suite());
}
