// test_grad.c: every backward pass of the library against central finite
// differences: the nn kernels (linear, activations, mse, ce), the four 1991
// mixture losses wrt gate logits and expert outputs (plus their closed forms on
// a hand example), and whole models through moe_model_run(with_grad = 1).
//
// Method. Everything runs in float, as the library does; a scalar loss L is
// computed in double from the float outputs. For an input element w, with the
// step h, the numeric derivative is
//     (L(w + h) - L(w - h)) / (w+ - w-)
// where w+ = (float)(w + h) and w- = (float)(w - h) are the values actually
// stored (so the float rounding of the step itself is not an error source).
// Steps: H_KERNEL = 1e-3 for the kernels and losses (their losses are exact
// sums of float products, so the roundoff term eps_f * |L| / h ~ 1e-4 is small),
// H_MODEL = 1e-2 for whole models (a loss through several float layers has
// roundoff ~ 1e-7 * |L| per evaluation; divided by 2h = 2e-2 it is ~ 1e-5 |L|,
// while the truncation error h^2/6 * |L'''| is ~ 2e-5 |L'''|).
// Tolerance: |analytic - numeric| <= GRAD_TOL * max(1, |numeric|), GRAD_TOL = 2e-3.
// The observed worst cases are ~10x below that (run with MOE_GRAD_VERBOSE=1 to
// print them); a wrong factor, sign, stride or missing term gives errors of
// order the gradient itself, i.e. >> 2e-3 for the O(0.1 .. 1) gradients here
// (each case also asserts that the gradients it checks are not all tiny).
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/gemm.h"
#include "core/params.h"
#include "core/rng.h"
#include "core/status.h"
#include "io/config.h"
#include "model/model.h"
#include "moe/mixture_loss.h"
#include "nn/nn.h"
#include "train/train.h"
#include "gradcheck.h"
#include "testutil.h"

#define H_KERNEL 1e-3f
#define H_MODEL 1e-2f

static int verbose;

static void fill_n(float *x, size_t n, uint32_t stream)
{
    struct moe_rng r = moe_rng_make(20240611, MOE_RNG_DATA, stream);
    moe_rng_fill_normal(&r, x, n, 0.0f, 1.0f);
}

// ---------------------------------------------------------------- linear

enum { LT = 7, LI = 5, LO = 4, LDX = LI + 3, LDY = LO + 2, LDDX = LI + 1, LDDY = LO + 3 };

struct lin_ctx {
    float x[LT * LDX], w[LO * LI], b[LO], r[LT * LO];
    float y[LT * LDY];
};

// L = sum_{t,o} y[t, o] r[t, o] with y = x W^T + b written at stride LDY.
static double lin_loss(void *p)
{
    struct lin_ctx *c = p;
    moe_linear_forward(c->y, LDY, c->x, LDX, c->w, c->b, LT, LI, LO);
    double s = 0.0;
    for (size_t t = 0; t < LT; t++)
        for (size_t o = 0; o < LO; o++)
            s += (double)c->y[t * LDY + o] * c->r[t * LO + o];
    return s;
}

START_TEST(test_linear_grad)
{
    struct lin_ctx c;
    fill_u(c.x, LT * LDX, 1, -1, 1);
    fill_u(c.w, LO * LI, 2, -1, 1);
    fill_u(c.b, LO, 3, -1, 1);
    fill_u(c.r, LT * LO, 4, -1, 1);
    // forward: every row against a plain double loop; padding columns of y untouched
    for (size_t i = 0; i < LT * LDY; i++)
        c.y[i] = 1234.5f;
    moe_linear_forward(c.y, LDY, c.x, LDX, c.w, c.b, LT, LI, LO);
    for (size_t t = 0; t < LT; t++) {
        for (size_t o = 0; o < LO; o++) {
            double ref = c.b[o];
            for (size_t i = 0; i < LI; i++)
                ref += (double)c.x[t * LDX + i] * c.w[o * LI + i];
            ck_assert_double_eq_tol(c.y[t * LDY + o], ref, 1e-5);
        }
        for (size_t o = LO; o < LDY; o++)
            ck_assert_float_eq(c.y[t * LDY + o], 1234.5f);
    }
    // no bias: y is overwritten (beta = 0), not accumulated
    float y2[LT * LDY];
    for (size_t i = 0; i < LT * LDY; i++)
        y2[i] = 99.0f;
    moe_linear_forward(y2, LDY, c.x, LDX, c.w, NULL, LT, LI, LO);
    for (size_t t = 0; t < LT; t++)
        for (size_t o = 0; o < LO; o++)
            ck_assert_double_eq_tol(y2[t * LDY + o], c.y[t * LDY + o] - c.b[o], 1e-5);

    // backward: dy = r laid out at stride LDDY; dx at stride LDDX. The gradient
    // buffers start at known nonzero values: backward must ADD.
    float dy[LT * LDDY], dx[LT * LDDX], dw[LO * LI], db[LO];
    for (size_t i = 0; i < LT * LDDY; i++)
        dy[i] = 777.0f; // padding: must not be read
    for (size_t t = 0; t < LT; t++)
        for (size_t o = 0; o < LO; o++)
            dy[t * LDDY + o] = c.r[t * LO + o];
    float dx0[LT * LDDX], dw0[LO * LI], db0[LO];
    fill_u(dx0, LT * LDDX, 5, -1, 1);
    fill_u(dw0, LO * LI, 6, -1, 1);
    fill_u(db0, LO, 7, -1, 1);
    memcpy(dx, dx0, sizeof dx);
    memcpy(dw, dw0, sizeof dw);
    memcpy(db, db0, sizeof db);
    moe_linear_backward(dx, LDDX, dw, db, dy, LDDY, c.x, LDX, c.w, LT, LI, LO);
    double biggest = 0.0;
    for (size_t t = 0; t < LT; t++) {
        for (size_t i = 0; i < LI; i++) {
            double a = dx[t * LDDX + i] - dx0[t * LDDX + i];
            check_grad(a, numeric_grad(&c.x[t * LDX + i], H_KERNEL, lin_loss, &c), "linear dx", t * LI + i);
            biggest = fmax(biggest, fabs(a));
        }
        for (size_t i = LI; i < LDDX; i++) // padding of dx untouched
            ck_assert_float_eq(dx[t * LDDX + i], dx0[t * LDDX + i]);
    }
    for (size_t i = 0; i < LO * LI; i++)
        check_grad(dw[i] - dw0[i], numeric_grad(&c.w[i], H_KERNEL, lin_loss, &c), "linear dW", i);
    for (size_t o = 0; o < LO; o++)
        check_grad(db[o] - db0[o], numeric_grad(&c.b[o], H_KERNEL, lin_loss, &c), "linear db", o);
    ck_assert_double_gt(biggest, 0.1);
    // dx and db may be NULL: dW alone is the same
    float dw2[LO * LI];
    memset(dw2, 0, sizeof dw2);
    moe_linear_backward(NULL, 0, dw2, NULL, dy, LDDY, c.x, LDX, c.w, LT, LI, LO);
    for (size_t i = 0; i < LO * LI; i++)
        ck_assert_double_eq_tol(dw2[i], dw[i] - dw0[i], 1e-5);
}
END_TEST

// ---------------------------------------------------------------- activations

enum { NA = 40 };
struct act_ctx {
    enum moe_act a;
    float x[NA], r[NA], y[NA];
};

static double act_loss(void *p)
{
    struct act_ctx *c = p;
    moe_act_forward(c->a, c->y, c->x, NA);
    double s = 0.0;
    for (size_t i = 0; i < NA; i++)
        s += (double)c->y[i] * c->r[i];
    return s;
}

START_TEST(test_activation_grad)
{
    enum moe_act acts[] = { MOE_ACT_TANH, MOE_ACT_RELU, MOE_ACT_SIGMOID, MOE_ACT_IDENTITY };
    for (size_t k = 0; k < 4; k++) {
        struct act_ctx c;
        c.a = acts[k];
        fill_u(c.x, NA, 10, -3, 3);
        fill_u(c.r, NA, 11, -1, 1);
        // relu: keep |x| >= 0.1 >> h, away from the kink
        for (size_t i = 0; i < NA; i++)
            if (fabsf(c.x[i]) < 0.1f)
                c.x[i] = c.x[i] < 0 ? -0.1f - c.x[i] : 0.1f + c.x[i];
        ck_assert_int_eq(moe_act_from_name(moe_act_name(c.a)), (int)c.a);
        moe_act_forward(c.a, c.y, c.x, NA);
        // in place gives the same values
        float yi[NA];
        memcpy(yi, c.x, sizeof yi);
        moe_act_forward(c.a, yi, yi, NA);
        ck_assert_mem_eq(yi, c.y, sizeof yi);
        float dx[NA];
        for (size_t i = 0; i < NA; i++)
            dx[i] = 0.5f; // backward adds
        moe_act_backward(c.a, dx, c.r, c.y, NA);
        char what[32];
        snprintf(what, sizeof what, "act %s dx", moe_act_name(c.a));
        for (size_t i = 0; i < NA; i++)
            check_grad(dx[i] - 0.5f, numeric_grad(&c.x[i], H_KERNEL, act_loss, &c), what, i);
        ck_assert_double_gt(max_abs(c.r, NA), 0.1);
    }
    ck_assert_int_eq(moe_act_from_name("swish"), -1);
}
END_TEST

// ---------------------------------------------------------------- mse and ce

enum { ST = 6, SO = 4 };
struct loss_ctx {
    float y[ST * SO], d[ST * SO];
    int32_t label[ST];
    float scale;
    int ce;
};

static double sl_loss(void *p)
{
    struct loss_ctx *c = p;
    double s = c->ce ? moe_ce_forward_backward(NULL, c->y, c->label, ST, SO, c->scale)
                     : moe_mse_forward_backward(NULL, c->y, c->d, ST, SO, c->scale);
    return c->scale * s;
}

START_TEST(test_mse_ce_grad)
{
    for (int ce = 0; ce < 2; ce++) {
        struct loss_ctx c;
        c.ce = ce;
        c.scale = 1.0f / ST;
        fill_u(c.y, ST * SO, 20, -2, 2);
        fill_u(c.d, ST * SO, 21, -2, 2);
        struct moe_rng r = moe_rng_make(5, MOE_RNG_DATA, 22);
        for (size_t t = 0; t < ST; t++)
            c.label[t] = (int32_t)moe_rng_below(&r, t, SO);
        float dy[ST * SO];
        for (size_t i = 0; i < ST * SO; i++)
            dy[i] = -0.25f; // backward adds
        double sum = ce ? moe_ce_forward_backward(dy, c.y, c.label, ST, SO, c.scale)
                        : moe_mse_forward_backward(dy, c.y, c.d, ST, SO, c.scale);
        // the returned value is the plain sum over rows, whatever the scale
        double ref = 0.0;
        for (size_t t = 0; t < ST; t++) {
            if (ce) {
                double z = 0.0;
                for (size_t o = 0; o < SO; o++)
                    z += exp((double)c.y[t * SO + o]);
                ref += log(z) - c.y[t * SO + c.label[t]];
            } else {
                for (size_t o = 0; o < SO; o++)
                    ref += ((double)c.y[t * SO + o] - c.d[t * SO + o]) * ((double)c.y[t * SO + o] - c.d[t * SO + o]);
            }
        }
        ck_assert_double_eq_tol(sum, ref, 1e-6 * fabs(ref)); // mse forms the residual in float
        for (size_t i = 0; i < ST * SO; i++)
            check_grad(dy[i] + 0.25f, numeric_grad(&c.y[i], H_KERNEL, sl_loss, &c), ce ? "ce dy" : "mse dy", i);
    }
}
END_TEST

// ---------------------------------------------------------------- mixture losses

enum { MT = 4, ME = 3, MO = 3 };
struct mix_ctx {
    enum moe_mix_loss kind;
    float z[MT * ME], p[MT * ME], o[MT * ME * MO], d[MT * MO];
    int32_t label[MT];
};

// L(z, o) with p = softmax(z) recomputed from the (perturbed) logits.
static double mix_loss(void *p)
{
    struct mix_ctx *c = p;
    moe_softmax_forward(c->p, NULL, c->z, MT, ME);
    return moe_mixture_loss(c->kind, NULL, NULL, NULL, c->z, c->p, c->o, c->d, c->label, MT, ME, MO, 1.0f);
}

START_TEST(test_mixture_loss_grad)
{
    for (int k = 0; k < 4; k++) {
        struct mix_ctx c;
        c.kind = (enum moe_mix_loss)k;
        fill_u(c.z, MT * ME, 30, -1.5f, 1.5f);
        fill_u(c.o, MT * ME * MO, 31, -1.5f, 1.5f);
        fill_u(c.d, MT * MO, 32, -1.5f, 1.5f);
        struct moe_rng r = moe_rng_make(5, MOE_RNG_DATA, 33);
        for (size_t t = 0; t < MT; t++)
            c.label[t] = (int32_t)moe_rng_below(&r, t, MO);
        const float *d = c.kind == MOE_MIX_NLL_CAT ? NULL : c.d;
        const int32_t *lab = c.kind == MOE_MIX_NLL_CAT ? c.label : NULL;
        moe_softmax_forward(c.p, NULL, c.z, MT, ME);
        float dz[MT * ME], dout[MT * ME * MO], h[MT * ME];
        for (size_t i = 0; i < MT * ME; i++)
            dz[i] = 0.125f; // both gradients are accumulated into
        for (size_t i = 0; i < MT * ME * MO; i++)
            dout[i] = -0.375f;
        double l1 = moe_mixture_loss(c.kind, dz, dout, h, c.z, c.p, c.o, d, lab, MT, ME, MO, 1.0f);
        // without gradient buffers: the same value
        double l0 = moe_mixture_loss(c.kind, NULL, NULL, NULL, c.z, c.p, c.o, d, lab, MT, ME, MO, 1.0f);
        ck_assert_double_eq(l0, l1);
        // scale multiplies the gradient only
        float dz2[MT * ME], dout2[MT * ME * MO];
        memset(dz2, 0, sizeof dz2);
        memset(dout2, 0, sizeof dout2);
        double l2 = moe_mixture_loss(c.kind, dz2, dout2, NULL, c.z, c.p, c.o, d, lab, MT, ME, MO, 0.5f);
        ck_assert_double_eq(l2, l1);
        for (size_t i = 0; i < MT * ME; i++)
            ck_assert_float_eq_tol(dz2[i], 0.5f * (dz[i] - 0.125f), 1e-6f);
        for (size_t i = 0; i < MT * ME * MO; i++)
            ck_assert_float_eq_tol(dout2[i], 0.5f * (dout[i] + 0.375f), 1e-6f);
        // posterior: a distribution per row; equals p for the squared-error forms
        for (size_t t = 0; t < MT; t++) {
            double s = 0.0;
            for (size_t e = 0; e < ME; e++) {
                ck_assert_float_ge(h[t * ME + e], 0.0f);
                s += h[t * ME + e];
                if (c.kind == MOE_MIX_COOPERATIVE || c.kind == MOE_MIX_COMPETITIVE)
                    ck_assert_float_eq(h[t * ME + e], c.p[t * ME + e]);
            }
            ck_assert_double_eq_tol(s, 1.0, 1e-6);
        }
        char what[48];
        snprintf(what, sizeof what, "%s dz", moe_mix_loss_name(c.kind));
        for (size_t i = 0; i < MT * ME; i++)
            check_grad(dz[i] - 0.125f, numeric_grad(&c.z[i], H_KERNEL, mix_loss, &c), what, i);
        snprintf(what, sizeof what, "%s do", moe_mix_loss_name(c.kind));
        for (size_t i = 0; i < MT * ME * MO; i++)
            check_grad(dout[i] + 0.375f, numeric_grad(&c.o[i], H_KERNEL, mix_loss, &c), what, i);
        for (size_t i = 0; i < MT * ME; i++)
            dz[i] -= 0.125f;
        for (size_t i = 0; i < MT * ME * MO; i++)
            dout[i] += 0.375f;
        ck_assert_double_gt(max_abs(dz, MT * ME), 0.05);
        ck_assert_double_gt(max_abs(dout, MT * ME * MO), 0.05);
        ck_assert_str_eq(moe_mix_loss_name(c.kind), moe_mix_loss_name((enum moe_mix_loss)moe_mix_loss_from_name(
                                                        moe_mix_loss_name(c.kind))));
    }
    ck_assert_int_eq(moe_mix_loss_from_name("mse"), -1);
}
END_TEST

// Closed forms on a hand example: E = 2 experts, O = 2 outputs, one row.
//   o_1 = (1, 2), o_2 = (3, -1), d = (0, 1), label 0.
//   e_1 = ||d - o_1||^2 = 1 + 1 = 2,  e_2 = 9 + 4 = 13.
// Equal gates (z = 0, p = 1/2):
//   cooperative = ||d - (o_1 + o_2)/2||^2 = ||(0,1) - (2, 0.5)||^2 = 4.25
//   competitive = (e_1 + e_2)/2 = 7.5
//   nll = -log((exp(-1) + exp(-6.5))/2),  h_i = exp(-e_i/2) / sum_j exp(-e_j/2)
//   nll-cat = -log((q_1 + q_2)/2), q_i = softmax(o_i)[0], h_i = q_i / (q_1 + q_2)
// Unequal gates p = (3/4, 1/4) (z = (log 3, 0)): the same with p-weighted means.
START_TEST(test_mixture_loss_closed_forms)
{
    const float o[4] = { 1, 2, 3, -1 }, d[2] = { 0, 1 };
    const int32_t label[1] = { 0 };
    const double e1 = 2.0, e2 = 13.0;
    const double q1 = 1.0 / (1.0 + exp(1.0)), q2 = 1.0 / (1.0 + exp(-4.0));
    for (int unequal = 0; unequal < 2; unequal++) {
        float z[2] = { unequal ? logf(3.0f) : 0.0f, 0.0f }, p[2], h[2];
        moe_softmax_forward(p, NULL, z, 1, 2);
        double p1 = unequal ? 0.75 : 0.5, p2 = 1.0 - p1;
        ck_assert_double_eq_tol(p[0], p1, 1e-7);
        if (!unequal) // 1/2 is exact: the closed forms must then match to double rounding of float data
            ck_assert_float_eq(p[0], 0.5f);
        double tol = unequal ? 1e-6 : 1e-12;
        double ob0 = p1 * 1 + p2 * 3, ob1 = p1 * 2 + p2 * -1;
        double coop = (0 - ob0) * (0 - ob0) + (1 - ob1) * (1 - ob1);
        if (!unequal)
            ck_assert_double_eq(coop, 4.25);
        double l = moe_mixture_loss(MOE_MIX_COOPERATIVE, NULL, NULL, h, z, p, o, d, NULL, 1, 2, 2, 1.0f);
        ck_assert_double_eq_tol(l, coop, tol * coop);
        ck_assert_float_eq(h[0], p[0]);
        ck_assert_float_eq(h[1], p[1]);

        double comp = p1 * e1 + p2 * e2;
        if (!unequal)
            ck_assert_double_eq(comp, 7.5);
        l = moe_mixture_loss(MOE_MIX_COMPETITIVE, NULL, NULL, h, z, p, o, d, NULL, 1, 2, 2, 1.0f);
        ck_assert_double_eq_tol(l, comp, tol * comp);
        ck_assert_float_eq(h[0], p[0]);
        ck_assert_float_eq(h[1], p[1]);

        double s = p1 * exp(-0.5 * e1) + p2 * exp(-0.5 * e2);
        l = moe_mixture_loss(MOE_MIX_NLL, NULL, NULL, h, z, p, o, d, NULL, 1, 2, 2, 1.0f);
        ck_assert_double_eq_tol(l, -log(s), 1e-6 * -log(s));
        ck_assert_double_eq_tol(h[0], p1 * exp(-0.5 * e1) / s, 1e-6);
        ck_assert_double_eq_tol(h[1], p2 * exp(-0.5 * e2) / s, 1e-6);

        double sc = p1 * q1 + p2 * q2;
        l = moe_mixture_loss(MOE_MIX_NLL_CAT, NULL, NULL, h, z, p, o, NULL, label, 1, 2, 2, 1.0f);
        ck_assert_double_eq_tol(l, -log(sc), 1e-6 * -log(sc));
        ck_assert_double_eq_tol(h[0], p1 * q1 / sc, 1e-6);
        ck_assert_double_eq_tol(h[1], p2 * q2 / sc, 1e-6);
    }
    // Equal gates, closed-form gradients (those of mixture_loss.c), O = 2, one row, p = 1/2:
    //   competitive dL/dz_j = p_j (e_j - ebar) = (-2.75, 2.75); dL/do_i = -2 p_i (d - o_i)
    //   cooperative dL/do_i = -2 p_i (d - obar) = -(d - obar) = (2, -0.5) for both experts
    //   nll dL/dz_j = p_j - h_j
    float z[2] = { 0, 0 }, p[2] = { 0.5f, 0.5f }, dz[2] = { 0, 0 }, dout[4] = { 0, 0, 0, 0 }, h[2];
    moe_mixture_loss(MOE_MIX_COMPETITIVE, dz, dout, NULL, z, p, o, d, NULL, 1, 2, 2, 1.0f);
    ck_assert_float_eq(dz[0], -2.75f);
    ck_assert_float_eq(dz[1], 2.75f);
    const float comp_do[4] = { 1, 1, 3, -2 }; // -(d - o_i)
    for (int i = 0; i < 4; i++)
        ck_assert_float_eq(dout[i], comp_do[i]);
    memset(dz, 0, sizeof dz);
    memset(dout, 0, sizeof dout);
    moe_mixture_loss(MOE_MIX_COOPERATIVE, dz, dout, NULL, z, p, o, d, NULL, 1, 2, 2, 1.0f);
    const float coop_do[4] = { 2, -0.5f, 2, -0.5f };
    for (int i = 0; i < 4; i++)
        ck_assert_float_eq(dout[i], coop_do[i]);
    // dL/dz_j = -2 p_j (d - obar).(o_j - obar): (d - obar) = (-2, 0.5), o_1 - obar = (-1, 1.5)
    //   -> -(2 + 0.75) = -2.75 for j = 1 and +2.75 for j = 2
    ck_assert_float_eq(dz[0], -2.75f);
    ck_assert_float_eq(dz[1], 2.75f);
    memset(dz, 0, sizeof dz);
    moe_mixture_loss(MOE_MIX_NLL, dz, NULL, h, z, p, o, d, NULL, 1, 2, 2, 1.0f);
    ck_assert_float_eq_tol(dz[0], 0.5f - h[0], 1e-7f);
    ck_assert_float_eq_tol(dz[1], 0.5f - h[1], 1e-7f);
}
END_TEST

// ---------------------------------------------------------------- whole models

enum { GD = 3, GO = 2, GE = 3, GT = 5 };

struct model_ctx {
    struct moe_model m;
    struct moe_batch b;
    struct moe_batch_kd kd; // b.kd points here when a teacher is set
    struct moe_stats st;
};

// Distillation (check_model with kd_teacher set): the batch carries teacher
// logits, and the objective is (1 - alpha) CE + alpha tau^2 KL, recomputed here
// from the logits the model hands out.
static const float *kd_teacher;
enum { KD_MAX_ROWS = 64 };

// The batch-mean loss the model's gradient is of: stats.loss / T from a forward
// pass, or with a teacher the distillation objective.
static double model_loss(void *p)
{
    struct model_ctx *c = p;
    struct moe_err err;
    moe_stats_reset(&c->st);
    float logits[KD_MAX_ROWS * 8];
    struct moe_batch b = c->b;
    struct moe_batch_kd kd = c->kd;
    if (kd.teacher) {
        kd.logits_out = logits;
        b.kd = &kd;
    }
    int rc = moe_model_run(&c->m, &b, 0, &c->st, &err);
    ck_assert_msg(rc == 0, "run: %s", err.msg);
    if (!kd.teacher)
        return c->st.loss / (double)c->b.n;
    size_t T = b.n, O = c->m.n_out;
    double ce = moe_ce_forward_backward(NULL, logits, b.label, T, O, 1.0f);
    ck_assert_double_eq_tol(ce, c->st.loss, 1e-9 * fabs(ce)); // statistics keep the plain cross-entropy
    double l_kd = moe_kd_forward_backward(NULL, logits, kd.teacher, T, O, kd.tau, 1.0f);
    return ((1.0 - kd.alpha) * ce + kd.alpha * l_kd) / (double)T;
}

static void randomize(struct moe_params *p, const char *name, uint32_t stream)
{
    int i = moe_params_find(p, name);
    if (i < 0)
        return;
    fill_u(moe_params_data(p, i), p->t[i].numel, stream, -1.0f, 1.0f);
}

static void check_model(const char *json, enum moe_task task, const char *label)
{
    struct moe_config cfg;
    struct moe_err err;
    int rc = moe_config_parse(&cfg, moe_run_schema(), moe_run_schema_len(), json, "test", NULL, 0, &err);
    ck_assert_msg(rc == 0, "%s: config: %s", label, err.msg);
    struct model_ctx c;
    rc = moe_model_create(&c.m, &cfg, NULL, task, GD, GO, GT, &err);
    ck_assert_msg(rc == 0, "%s: create: %s", label, err.msg);
    ck_assert_int_eq(moe_stats_init(&c.st, c.m.n_expert, 0, &err), 0);
    moe_model_init_weights(&c.m, 7);
    // Away from the symmetric start: random gate (zero at init) and biases (zero at init).
    const char *names[] = { "gate.weight", "gate.bias", "experts.bias", "experts.b1", "experts.b2",
                            "hidden.bias", "output.bias" };
    for (size_t i = 0; i < sizeof names / sizeof *names; i++)
        randomize(&c.m.params, names[i], 40 + (uint32_t)i);
    if (c.m.n_expert) { // the gate really is away from equal mixing
        int gw = moe_params_find(&c.m.params, "gate.weight");
        ck_assert_int_ge(gw, 0);
        ck_assert_double_gt(max_abs(moe_params_data(&c.m.params, gw), c.m.params.t[gw].numel), 0.3);
    }

    float x[GT * GD], y[GT * GO];
    int32_t lab[GT];
    fill_n(x, GT * GD, 50);
    fill_n(y, GT * GO, 51);
    struct moe_rng r = moe_rng_make(9, MOE_RNG_DATA, 52);
    for (size_t t = 0; t < GT; t++)
        lab[t] = (int32_t)moe_rng_below(&r, t, GO);
    lab[0] = 0, lab[1] = 1; // both classes present
    memset(&c.b, 0, sizeof c.b);
    c.b.n = GT;
    c.b.x = x;
    if (task == MOE_TASK_CLASSIFICATION)
        c.b.label = lab;
    else
        c.b.y = y;
    memset(&c.kd, 0, sizeof c.kd);
    if (kd_teacher) {
        ck_assert_uint_le(GT * GO, KD_MAX_ROWS * 8);
        c.kd.teacher = kd_teacher;
        c.kd.alpha = 0.3f;
        c.kd.tau = 2.0f;
        c.b.kd = &c.kd;
    }

    // analytic: gradient of the batch-mean loss, accumulated into a zeroed grad
    // (NaN first: a gradient the backward is trusted to write whole, the
    // experts', and leaves in part would fail the checks below)
    for (size_t i = 0; i < c.m.params.numel; i++)
        c.m.params.grad[i] = NAN;
    moe_params_zero_grad(&c.m.params);
    moe_stats_reset(&c.st);
    rc = moe_model_run(&c.m, &c.b, 1, &c.st, &err);
    ck_assert_msg(rc == 0, "%s: run: %s", label, err.msg);
    double loss_grad_run = c.st.loss / GT;
    ck_assert(isfinite(loss_grad_run));
    if (!kd_teacher)
        ck_assert_double_eq(loss_grad_run, model_loss(&c)); // with_grad does not change the value
    size_t numel = c.m.params.numel;
    float *g = malloc(numel * sizeof *g);
    memcpy(g, c.m.params.grad, numel * sizeof *g);

    for (size_t ti = 0; ti < c.m.params.n; ti++) {
        const struct moe_tensor *t = &c.m.params.t[ti];
        char what[160];
        snprintf(what, sizeof what, "%s: %s", label, t->name);
        double biggest = 0.0;
        for (size_t i = 0; i < t->numel; i++) {
            float *w = c.m.params.data + t->offset + i;
            double a = g[t->offset + i];
            check_grad(a, numeric_grad(w, H_MODEL, model_loss, &c), what, i);
            biggest = fmax(biggest, fabs(a));
        }
        // every tensor is really exercised
        ck_assert_msg(biggest > 1e-3, "%s: gradient is ~0 everywhere (max %g)", what, biggest);
    }
    // a second backward adds to the same buffer: grad doubles
    moe_stats_reset(&c.st);
    ck_assert_int_eq(moe_model_run(&c.m, &c.b, 1, &c.st, &err), 0);
    for (size_t i = 0; i < numel; i++)
        ck_assert_float_eq_tol(c.m.params.grad[i], 2.0f * g[i], 1e-6f * (1.0f + fabsf(g[i])));
    free(g);
    moe_stats_release(&c.st);
    moe_model_release(&c.m);
    moe_config_release(&cfg);
}

START_TEST(test_model_grad_mixture_linear)
{
    const char *losses[] = { "cooperative", "competitive", "nll", "nll-cat" };
    for (int k = 0; k < 4; k++)
        for (int task = 0; task < 2; task++) {
            if (k == 3 && task == MOE_TASK_REGRESSION)
                continue; // nll-cat needs labels
            char json[256], label[96];
            snprintf(json, sizeof json,
                     "{\"model\": {\"type\": \"mixture\", \"n_expert\": %d, \"expert\": \"linear\"},"
                     " \"loss\": {\"type\": \"%s\"}}",
                     GE, losses[k]);
            snprintf(label, sizeof label, "mixture/linear/%s/%s", losses[k], task ? "classes" : "regression");
            check_model(json, (enum moe_task)task, label);
        }
}
END_TEST

START_TEST(test_model_grad_mixture_mlp)
{
    const char *losses[] = { "cooperative", "competitive", "nll", "nll-cat" };
    for (int k = 0; k < 4; k++)
        for (int task = 0; task < 2; task++) {
            if (k == 3 && task == MOE_TASK_REGRESSION)
                continue;
            char json[320], label[96];
            snprintf(json, sizeof json,
                     "{\"model\": {\"type\": \"mixture\", \"n_expert\": %d, \"expert\": \"mlp\","
                     " \"n_expert_hidden\": 4, \"activation\": \"tanh\"}, \"loss\": {\"type\": \"%s\"}}",
                     GE, losses[k]);
            snprintf(label, sizeof label, "mixture/mlp/%s/%s", losses[k], task ? "classes" : "regression");
            check_model(json, (enum moe_task)task, label);
        }
    // the sigmoid hidden layer too (relu is left out: finite differences straddle its kink)
    check_model("{\"model\": {\"type\": \"mixture\", \"n_expert\": 3, \"expert\": \"mlp\", \"n_expert_hidden\": 4,"
                " \"activation\": \"sigmoid\"}, \"loss\": {\"type\": \"nll\"}}",
                MOE_TASK_REGRESSION, "mixture/mlp-sigmoid/nll/regression");
}
END_TEST

START_TEST(test_model_grad_mlp)
{
    check_model("{\"model\": {\"type\": \"mlp\", \"n_hidden\": 4, \"activation\": \"tanh\"}, \"loss\": {\"type\": \"mse\"}}",
                MOE_TASK_REGRESSION, "mlp/mse/regression");
    check_model("{\"model\": {\"type\": \"mlp\", \"n_hidden\": 4, \"activation\": \"tanh\"}, \"loss\": {\"type\": \"mse\"}}",
                MOE_TASK_CLASSIFICATION, "mlp/mse/classes");
    check_model("{\"model\": {\"type\": \"mlp\", \"n_hidden\": 4, \"activation\": \"tanh\"}, \"loss\": {\"type\": \"ce\"}}",
                MOE_TASK_CLASSIFICATION, "mlp/ce/classes");
    check_model("{\"model\": {\"type\": \"mlp\", \"n_hidden\": 4, \"activation\": \"sigmoid\"}, \"loss\": {\"type\": \"ce\"}}",
                MOE_TASK_CLASSIFICATION, "mlp-sigmoid/ce/classes");
}
END_TEST

// Distillation through a whole model: the gradient of (1 - alpha) CE + alpha tau^2
// KL(teacher || student) for an mlp and an mlp-moe student.
START_TEST(test_model_grad_distill)
{
    float teacher[GT * GO];
    fill_n(teacher, GT * GO, 77);
    kd_teacher = teacher;
    check_model("{\"model\": {\"type\": \"mlp\", \"n_hidden\": 4, \"activation\": \"tanh\"}, \"loss\": {\"type\": \"ce\"}}",
                MOE_TASK_CLASSIFICATION, "mlp/ce+kd/classes");
    kd_teacher = NULL;
}
END_TEST

// The distillation term alone: value against a direct double evaluation, zero
// (value and gradient) when student = teacher, gradient by finite differences.
struct kd_ctx {
    float s[ST * SO], z[ST * SO];
    float tau;
};

static double kd_loss(void *p)
{
    struct kd_ctx *c = p;
    return moe_kd_forward_backward(NULL, c->s, c->z, ST, SO, c->tau, 1.0f) / ST;
}

START_TEST(test_kd_grad)
{
    const float taus[] = { 1.0f, 2.0f, 5.0f };
    for (size_t k = 0; k < 3; k++) {
        struct kd_ctx c;
        c.tau = taus[k];
        fill_u(c.s, ST * SO, 30, -3, 3);
        fill_u(c.z, ST * SO, 31, -3, 3);
        float dy[ST * SO];
        for (size_t i = 0; i < ST * SO; i++)
            dy[i] = 0.5f; // backward adds
        double sum = moe_kd_forward_backward(dy, c.s, c.z, ST, SO, c.tau, 1.0f / ST);
        double ref = 0.0;
        for (size_t t = 0; t < ST; t++) {
            double zs = 0.0, zz = 0.0;
            for (size_t o = 0; o < SO; o++) {
                zs += exp(c.s[t * SO + o] / (double)c.tau);
                zz += exp(c.z[t * SO + o] / (double)c.tau);
            }
            for (size_t o = 0; o < SO; o++) {
                double p = exp(c.z[t * SO + o] / (double)c.tau) / zz, q = exp(c.s[t * SO + o] / (double)c.tau) / zs;
                ref += (double)c.tau * c.tau * p * log(p / q);
            }
        }
        ck_assert_double_gt(ref, 1e-3);
        ck_assert_double_eq_tol(sum, ref, 1e-9 * ref);
        for (size_t i = 0; i < ST * SO; i++)
            check_grad(dy[i] - 0.5f, numeric_grad(&c.s[i], H_KERNEL, kd_loss, &c), "kd ds", i);
        // student = teacher: zero loss and zero gradient
        float g[ST * SO] = { 0 };
        ck_assert_double_eq_tol(moe_kd_forward_backward(g, c.z, c.z, ST, SO, c.tau, 1.0f), 0.0, 1e-12);
        for (size_t i = 0; i < ST * SO; i++)
            ck_assert_float_eq_tol(g[i], 0.0f, 1e-7f);
    }
}
END_TEST

int main(void)
{
    if (moe_test_init_blas(2))
        return 1;
    verbose = getenv("MOE_GRAD_VERBOSE") != NULL;
    Suite *s = suite_create("grad");
    TCase *tc = tcase_create("grad");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_linear_grad);
    tcase_add_test(tc, test_activation_grad);
    tcase_add_test(tc, test_mse_ce_grad);
    tcase_add_test(tc, test_mixture_loss_grad);
    tcase_add_test(tc, test_mixture_loss_closed_forms);
    tcase_add_test(tc, test_model_grad_mixture_linear);
    tcase_add_test(tc, test_model_grad_mixture_mlp);
    tcase_add_test(tc, test_model_grad_mlp);
    tcase_add_test(tc, test_kd_grad);
    tcase_add_test(tc, test_model_grad_distill);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    if (verbose) // grad_worst is only seen here when the tests run in this process
        srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    if (verbose)
        printf("worst |analytic - numeric| / max(1, |numeric|) = %.3g (tolerance %.1g)\n", grad_worst, GRAD_TOL);
    return failed ? 1 : 0;
}
