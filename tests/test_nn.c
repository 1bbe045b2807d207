// test_nn.c: the normalisation layers (LayerNorm, RMSNorm) and the GELU / SiLU
// activations of lib/nn: forward statistics and hand examples, backward against
// central finite differences, accumulation into gradient buffers, dx == NULL.
// Not here: linear, the tanh/relu/sigmoid activations and the losses (test_grad.c).
//
// Finite differences as in test_grad.c: a scalar loss L = sum y * R for a fixed
// random R, computed in double from the float outputs; the numeric derivative is
// (L(w+) - L(w-)) / (w+ - w-) with w+- = (float)(w +- h), h = 1e-3; tolerance
// |analytic - numeric| <= 2e-3 * max(1, |numeric|). Each case also asserts that the
// gradients it checks are not all tiny, so a gradient of zero cannot pass.
// MOE_GRAD_VERBOSE=1 prints the worst relative error of each case.
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"
#include "nn/nn.h"
#include "gradcheck.h"
#include "testutil.h"

#define H_KERNEL 1e-3f


// Uniform [lo, hi) from the counter RNG (purpose DATA, fixed seed, one stream per use).
static void fill_n(float *x, size_t n, uint32_t stream, float mean, float std)
{
    struct moe_rng r = moe_rng_make(20240612, MOE_RNG_DATA, stream);
    moe_rng_fill_normal(&r, x, n, mean, std);
}

static void report_worst(const char *what)
{
    if (getenv("MOE_GRAD_VERBOSE"))
        printf("%s: worst |analytic - numeric| / max(1, |numeric|) = %.3g (tolerance %.1g)\n", what, grad_worst,
               GRAD_TOL);
}

// ---------------------------------------------------------------- forward

enum { FT = 6, FD = 48 };

// Rows with very different offsets and scales, including one far from zero.
static void fill_rows(float *x, uint32_t stream)
{
    for (size_t t = 0; t < FT; t++)
        fill_n(x + t * FD, FD, stream + (uint32_t)t, 10.0f * (float)t - 20.0f, 0.5f + (float)t);
    for (size_t i = 0; i < FD; i++)
        x[(FT - 1) * FD + i] += 1000.0f;
}

START_TEST(test_layernorm_forward_stats)
{
    float x[FT * FD], y[FT * FD], g[FD], b[FD], mean[FT], rstd[FT];
    fill_rows(x, 100);
    for (size_t i = 0; i < FD; i++)
        g[i] = 1.0f, b[i] = 0.0f;
    const float eps = 1e-5f;
    moe_layernorm_forward(y, mean, rstd, x, g, b, FT, FD, eps);
    for (size_t t = 0; t < FT; t++) {
        // the saved statistics against a double two-pass reference
        double m = 0.0, v = 0.0;
        for (size_t i = 0; i < FD; i++)
            m += x[t * FD + i];
        m /= FD;
        for (size_t i = 0; i < FD; i++)
            v += ((double)x[t * FD + i] - m) * ((double)x[t * FD + i] - m);
        v /= FD; // population variance
        ck_assert_double_eq_tol(mean[t], m, 1e-6 * (1.0 + fabs(m)));
        ck_assert_double_eq_tol(rstd[t], 1.0 / sqrt(v + eps), 1e-6 / sqrt(v + eps));
        // the output: mean ~0, population variance ~1 (var / (var + eps) with var >= 0.25)
        double ym = 0.0, yv = 0.0;
        for (size_t i = 0; i < FD; i++)
            ym += y[t * FD + i];
        ym /= FD;
        for (size_t i = 0; i < FD; i++)
            yv += ((double)y[t * FD + i] - ym) * ((double)y[t * FD + i] - ym);
        yv /= FD;
        ck_assert_msg(fabs(ym) < 1e-4, "row %zu: mean %g", t, ym);
        ck_assert_msg(fabs(yv - 1.0) < 1e-4, "row %zu: variance %g", t, yv);
    }
}
END_TEST

// x = (1, 2, 3, 4): mean 2.5, population variance 1.25; eps = 0.75 makes var + eps = 2,
// so xhat = (-1.5, -0.5, 0.5, 1.5) / sqrt(2). A constant row (5, 5, 5, 5) has xhat = 0, y = b,
// rstd = 1 / sqrt(0.75).
START_TEST(test_layernorm_hand)
{
    const float x[8] = { 1, 2, 3, 4, 5, 5, 5, 5 };
    const float g[4] = { 1, 2, 0.5f, -1 }, b[4] = { 0, 1, -1, 0.5f };
    float y[8], mean[2], rstd[2];
    moe_layernorm_forward(y, mean, rstd, x, g, b, 2, 4, 0.75f);
    const double s = 1.0 / sqrt(2.0);
    const double want[8] = { -1.5 * s, 1.0 - 1.0 * s, -1.0 + 0.25 * s, 0.5 - 1.5 * s, 0, 1, -1, 0.5 };
    for (int i = 0; i < 8; i++)
        ck_assert_double_eq_tol(y[i], want[i], 1e-6);
    ck_assert_float_eq(mean[0], 2.5f);
    ck_assert_float_eq(mean[1], 5.0f);
    ck_assert_double_eq_tol(rstd[0], s, 1e-7);
    ck_assert_double_eq_tol(rstd[1], 1.0 / sqrt(0.75), 1e-7);
    // literal values, in case the formula above and the kernel share a mistake
    ck_assert_double_eq_tol(y[0], -1.0606602, 1e-6);
    ck_assert_double_eq_tol(y[1], 0.2928932, 1e-6);
    ck_assert_double_eq_tol(y[2], -0.8232233, 1e-6);
    ck_assert_double_eq_tol(y[3], -0.5606602, 1e-6);
}
END_TEST

// x = (1, -2, 2, 4): mean of squares 25/4, eps = 0 gives rstd = 0.4.
// x = (2, -2, 2, -2): mean of squares 4, eps = 5 gives rstd = 1/3.
START_TEST(test_rmsnorm_hand)
{
    const float g[4] = { 1, 2, -1, 0.5f };
    const float x1[4] = { 1, -2, 2, 4 }, x2[4] = { 2, -2, 2, -2 };
    float y[4], rstd[1];
    moe_rmsnorm_forward(y, rstd, x1, g, 1, 4, 0.0f);
    ck_assert_double_eq_tol(rstd[0], 0.4, 1e-7);
    const double want1[4] = { 0.4, -1.6, -0.8, 0.8 };
    for (int i = 0; i < 4; i++)
        ck_assert_double_eq_tol(y[i], want1[i], 1e-6);
    moe_rmsnorm_forward(y, rstd, x2, g, 1, 4, 5.0f);
    ck_assert_double_eq_tol(rstd[0], 1.0 / 3.0, 1e-7);
    const double want2[4] = { 2.0 / 3, -4.0 / 3, -2.0 / 3, -1.0 / 3 };
    for (int i = 0; i < 4; i++)
        ck_assert_double_eq_tol(y[i], want2[i], 1e-6);
}
END_TEST

START_TEST(test_rmsnorm_forward_stats)
{
    float x[FT * FD], y[FT * FD], g[FD], rstd[FT];
    fill_rows(x, 200);
    for (size_t i = 0; i < FD; i++)
        g[i] = 1.0f;
    const float eps = 1e-6f;
    moe_rmsnorm_forward(y, rstd, x, g, FT, FD, eps);
    for (size_t t = 0; t < FT; t++) {
        double ss = 0.0, yss = 0.0;
        for (size_t i = 0; i < FD; i++) {
            ss += (double)x[t * FD + i] * x[t * FD + i];
            yss += (double)y[t * FD + i] * y[t * FD + i];
        }
        double r = 1.0 / sqrt(ss / FD + eps);
        ck_assert_double_eq_tol(rstd[t], r, 1e-6 * r);
        ck_assert_msg(fabs(yss / FD - 1.0) < 1e-5, "row %zu: mean of squares %g", t, yss / FD);
        // no centring: the sign pattern of x is kept
        for (size_t i = 0; i < FD; i++)
            ck_assert((y[t * FD + i] > 0) == (x[t * FD + i] > 0));
    }
}
END_TEST

// Rows are independent and computed the same way whatever T is: one call over T rows
// equals T calls over one row, bit for bit; parameter gradients are summed in row order.
START_TEST(test_norm_row_independent)
{
    float x[FT * FD], g[FD], b[FD], y[FT * FD], y1[FD], mean[FT], rstd[FT], m1, r1;
    fill_rows(x, 300);
    fill_u(g, FD, 301, -1.5f, 1.5f);
    fill_u(b, FD, 302, -1, 1);
    moe_layernorm_forward(y, mean, rstd, x, g, b, FT, FD, 1e-5f);
    for (size_t t = 0; t < FT; t++) {
        moe_layernorm_forward(y1, &m1, &r1, x + t * FD, g, b, 1, FD, 1e-5f);
        ck_assert_mem_eq(y1, y + t * FD, sizeof y1);
        ck_assert_float_eq(m1, mean[t]);
        ck_assert_float_eq(r1, rstd[t]);
    }
    moe_rmsnorm_forward(y, rstd, x, g, FT, FD, 1e-5f);
    for (size_t t = 0; t < FT; t++) {
        moe_rmsnorm_forward(y1, &r1, x + t * FD, g, 1, FD, 1e-5f);
        ck_assert_mem_eq(y1, y + t * FD, sizeof y1);
        ck_assert_float_eq(r1, rstd[t]);
    }
}
END_TEST

// ---------------------------------------------------------------- norm gradients

enum { NT = 5, ND = 7 };

struct norm_ctx {
    int rms;
    float eps;
    float x[NT * ND], g[ND], b[ND], r[NT * ND];
    float y[NT * ND], mean[NT], rstd[NT];
};

static void norm_forward(struct norm_ctx *c)
{
    if (c->rms)
        moe_rmsnorm_forward(c->y, c->rstd, c->x, c->g, NT, ND, c->eps);
    else
        moe_layernorm_forward(c->y, c->mean, c->rstd, c->x, c->g, c->b, NT, ND, c->eps);
}

static void norm_backward(struct norm_ctx *c, float *dx, float *dg, float *db)
{
    if (c->rms)
        moe_rmsnorm_backward(dx, dg, c->r, c->x, c->rstd, c->g, NT, ND);
    else
        moe_layernorm_backward(dx, dg, db, c->r, c->x, c->mean, c->rstd, c->g, NT, ND);
}

// L = sum_{t,i} y[t, i] r[t, i]
static double norm_loss(void *p)
{
    struct norm_ctx *c = p;
    norm_forward(c);
    double s = 0.0;
    for (size_t i = 0; i < NT * ND; i++)
        s += (double)c->y[i] * c->r[i];
    return s;
}

static void norm_setup(struct norm_ctx *c, int rms)
{
    memset(c, 0, sizeof *c);
    c->rms = rms;
    c->eps = 1e-5f;
    fill_u(c->x, NT * ND, 400, -2, 2);
    for (size_t t = 0; t < NT; t++) // offset rows: LayerNorm must remove the mean
        for (size_t i = 0; i < ND; i++)
            c->x[t * ND + i] += 0.5f * (float)t - 1.0f;
    fill_u(c->g, ND, 401, -1.5f, 1.5f);
    fill_u(c->b, ND, 402, -1, 1);
    fill_u(c->r, NT * ND, 403, -1, 1);
}

static void check_norm_grad(int rms)
{
    struct norm_ctx c;
    norm_setup(&c, rms);
    const char *name = rms ? "rmsnorm" : "layernorm";
    char what[32];
    grad_worst = 0.0;
    norm_forward(&c);
    // gradient buffers start at known nonzero values: backward must ADD
    float dx[NT * ND], dg[ND], db[ND], dx0[NT * ND], dg0[ND], db0[ND];
    fill_u(dx0, NT * ND, 410, -1, 1);
    fill_u(dg0, ND, 411, -1, 1);
    fill_u(db0, ND, 412, -1, 1);
    memcpy(dx, dx0, sizeof dx);
    memcpy(dg, dg0, sizeof dg);
    memcpy(db, db0, sizeof db);
    norm_backward(&c, dx, dg, db);

    float a[NT * ND];
    for (size_t i = 0; i < NT * ND; i++)
        a[i] = dx[i] - dx0[i];
    snprintf(what, sizeof what, "%s dx", name);
    for (size_t i = 0; i < NT * ND; i++)
        check_grad(a[i], numeric_grad(&c.x[i], H_KERNEL, norm_loss, &c), what, i);
    ck_assert_double_gt(max_abs(a, NT * ND), 0.1);
    if (!rms) { // LayerNorm output is shift-invariant in x: each row of dx sums to 0
        for (size_t t = 0; t < NT; t++) {
            double s = 0.0;
            for (size_t i = 0; i < ND; i++)
                s += a[t * ND + i];
            ck_assert_double_eq_tol(s, 0.0, 1e-5);
        }
    }

    for (size_t i = 0; i < ND; i++)
        a[i] = dg[i] - dg0[i];
    snprintf(what, sizeof what, "%s dg", name);
    for (size_t i = 0; i < ND; i++)
        check_grad(a[i], numeric_grad(&c.g[i], H_KERNEL, norm_loss, &c), what, i);
    ck_assert_double_gt(max_abs(a, ND), 0.1);

    if (!rms) {
        for (size_t i = 0; i < ND; i++)
            a[i] = db[i] - db0[i];
        for (size_t i = 0; i < ND; i++)
            check_grad(a[i], numeric_grad(&c.b[i], H_KERNEL, norm_loss, &c), "layernorm db", i);
        ck_assert_double_gt(max_abs(a, ND), 0.1);
    } else { // RMSNorm has no bias: db is not touched
        ck_assert_mem_eq(db, db0, sizeof db);
    }
    report_worst(name);
}

START_TEST(test_layernorm_grad)
{
    check_norm_grad(0);
}
END_TEST

START_TEST(test_rmsnorm_grad)
{
    check_norm_grad(1);
}
END_TEST

// Calling backward twice doubles the gradient; dx == NULL leaves dg and db the same.
START_TEST(test_norm_accumulate)
{
    for (int rms = 0; rms < 2; rms++) {
        struct norm_ctx c;
        norm_setup(&c, rms);
        norm_forward(&c);
        float dx[NT * ND], dg[ND], db[ND];
        memset(dx, 0, sizeof dx);
        memset(dg, 0, sizeof dg);
        memset(db, 0, sizeof db);
        norm_backward(&c, dx, dg, db);
        float dx1[NT * ND], dg1[ND], db1[ND];
        memcpy(dx1, dx, sizeof dx);
        memcpy(dg1, dg, sizeof dg);
        memcpy(db1, db, sizeof db);
        ck_assert_double_gt(max_abs(dx1, NT * ND), 0.1);
        ck_assert_double_gt(max_abs(dg1, ND), 0.1);
        norm_backward(&c, dx, dg, db);
        for (size_t i = 0; i < NT * ND; i++)
            ck_assert_float_eq_tol(dx[i], 2.0f * dx1[i], 1e-6f * (1.0f + fabsf(dx1[i])));
        for (size_t i = 0; i < ND; i++) {
            ck_assert_float_eq_tol(dg[i], 2.0f * dg1[i], 1e-6f * (1.0f + fabsf(dg1[i])));
            ck_assert_float_eq_tol(db[i], 2.0f * db1[i], 1e-6f * (1.0f + fabsf(db1[i])));
        }
        float dg2[ND], db2[ND];
        memset(dg2, 0, sizeof dg2);
        memset(db2, 0, sizeof db2);
        norm_backward(&c, NULL, dg2, db2);
        ck_assert_mem_eq(dg2, dg1, sizeof dg2);
        ck_assert_mem_eq(db2, db1, sizeof db2);
    }
}
END_TEST

// ---------------------------------------------------------------- gelu and silu

enum { NA = 40 };
struct act_ctx {
    int silu;
    float x[NA], r[NA], y[NA];
};

static double act_loss(void *p)
{
    struct act_ctx *c = p;
    if (c->silu)
        moe_silu_forward(c->y, c->x, NA);
    else
        moe_gelu_forward(c->y, c->x, NA);
    double s = 0.0;
    for (size_t i = 0; i < NA; i++)
        s += (double)c->y[i] * c->r[i];
    return s;
}

START_TEST(test_gelu_silu_grad)
{
    for (int silu = 0; silu < 2; silu++) {
        struct act_ctx c;
        c.silu = silu;
        fill_u(c.x, NA, 500, -4, 4);
        fill_u(c.r, NA, 501, -1, 1);
        grad_worst = 0.0;
        float dx[NA], dy[NA];
        for (size_t i = 0; i < NA; i++)
            dx[i] = 0.5f; // backward overwrites
        memcpy(dy, c.r, sizeof dy);
        if (silu)
            moe_silu_backward(dx, dy, c.x, NA);
        else
            moe_gelu_backward(dx, dy, c.x, NA);
        float a[NA];
        memcpy(a, dx, sizeof a);
        const char *what = silu ? "silu dx" : "gelu dx";
        for (size_t i = 0; i < NA; i++)
            check_grad(a[i], numeric_grad(&c.x[i], H_KERNEL, act_loss, &c), what, i);
        ck_assert_double_gt(max_abs(a, NA), 0.1);
        // in place forward gives the same values
        float yi[NA];
        memcpy(yi, c.x, sizeof yi);
        act_loss(&c);
        if (silu)
            moe_silu_forward(yi, yi, NA);
        else
            moe_gelu_forward(yi, yi, NA);
        ck_assert_mem_eq(yi, c.y, sizeof yi);
        report_worst(what);
    }
}
END_TEST

// gelu(1) = 0.5 (1 + tanh(sqrt(2/pi) * 1.044715)) = 0.8411920 (the erf form gives 0.8413447);
// gelu(-3) = -0.0036374; silu(1) = sigmoid(1) = 0.7310586; derivatives at 0 are 1/2 for both.
START_TEST(test_gelu_silu_hand)
{
    const float x[4] = { 1.0f, 0.0f, -3.0f, 3.0f };
    float y[4];
    moe_gelu_forward(y, x, 4);
    ck_assert_double_eq_tol(y[0], 0.841192, 1e-5);
    ck_assert_float_eq(y[1], 0.0f);
    ck_assert_double_eq_tol(y[2], -0.0036374, 2e-6);
    ck_assert_double_eq_tol(y[3], 3.0 - 0.0036374, 1e-5); // gelu(x) - gelu(-x) = x
    moe_silu_forward(y, x, 4);
    ck_assert_double_eq_tol(y[0], 0.7310586, 1e-6);
    ck_assert_float_eq(y[1], 0.0f);
    ck_assert_double_eq_tol(y[2], -3.0 / (1.0 + exp(3.0)), 1e-6);
    float dx[2] = { 0, 0 };
    const float one[2] = { 1, 1 }, zero[1] = { 0 };
    moe_gelu_backward(dx, one, zero, 1);
    moe_silu_backward(dx + 1, one, zero, 1);
    ck_assert_double_eq_tol(dx[0], 0.5, 1e-7);
    ck_assert_double_eq_tol(dx[1], 0.5, 1e-7);
}
END_TEST

// Inverted dropout (nn/dropout.c): kept elements scaled by 1 / (1 - p), the rest 0, about p dropped;
// the mask is moe_dropout_keep's, a pure function of (seed, step, site, element): the same for any
// split of the elements into calls, another at another step, seed or site; rows keyed by (token,
// slot) see the mask of their key wherever they sit; p = 0 or NULL leaves x alone.
START_TEST(test_dropout)
{
    enum { N = 10000 };
    float *x = malloc(N * sizeof *x), *y = malloc(N * sizeof *y);
    ck_assert(x && y);
    fill_u(x, N, 300, -1, 1);
    memcpy(y, x, N * sizeof *x);
    const float p = 0.3f;
    struct moe_dropout d = moe_dropout_make(p, 11, 7, 2, MOE_DROP_FFN);
    ck_assert_uint_eq(d.site, 2 * MOE_DROP_KINDS + MOE_DROP_FFN);
    moe_dropout_apply(&d, y, N, 100);
    size_t dropped = 0;
    for (size_t i = 0; i < N; i++) {
        int keep = moe_dropout_keep(&d, 100 + i);
        ck_assert_float_eq(y[i], keep ? x[i] * (1.0f / (1.0f - p)) : 0.0f);
        dropped += !keep;
    }
    ck_assert_msg(dropped > 2800 && dropped < 3200, "dropped %zu of %d", dropped, N);
    // in two calls split at an odd place: the same values
    float *z = malloc(N * sizeof *z);
    memcpy(z, x, N * sizeof *x);
    moe_dropout_apply(&d, z, 4097, 100);
    moe_dropout_apply(&d, z + 4097, N - 4097, 100 + 4097);
    ck_assert_mem_eq(z, y, N * sizeof *z);
    // other step, seed, site: other masks
    struct moe_dropout o[3] = { d, d, d };
    o[0].step = 8, o[1].seed = 12, o[2].site++;
    for (int k = 0; k < 3; k++) {
        size_t same = 0;
        for (size_t i = 0; i < 1000; i++)
            same += moe_dropout_keep(&o[k], i) == moe_dropout_keep(&d, i);
        ck_assert_msg(same < 700, "variant %d agrees on %zu of 1000", k, same);
    }
    // rows keyed by (token, slot): row r of an expert block is token tok[r], slot slot[r] (S = 2)
    enum { F = 5 };
    const int32_t tok[3] = { 4, 0, 9 }, slot[3] = { 1, 0, 1 };
    memcpy(z, x, 3 * F * sizeof *x);
    moe_dropout_rows(&d, z, 3, F, tok, slot, 2);
    for (size_t r = 0; r < 3; r++)
        for (size_t j = 0; j < F; j++) {
            uint64_t e = ((uint64_t)tok[r] * 2 + (uint64_t)slot[r]) * F + j;
            ck_assert_float_eq(z[r * F + j], moe_dropout_keep(&d, e) ? x[r * F + j] * (1.0f / (1.0f - p)) : 0.0f);
        }
    memcpy(z, x, N * sizeof *x);
    moe_dropout_rows(&d, z, N / F, F, NULL, NULL, 0); // dense rows: key r, so element r * F + j
    moe_dropout_apply(&d, x, N, 0);
    ck_assert_mem_eq(z, x, N * sizeof *z);
    struct moe_dropout off = moe_dropout_make(0.0, 11, 7, 2, MOE_DROP_FFN);
    memcpy(z, x, N * sizeof *x);
    moe_dropout_apply(&off, z, N, 0);
    moe_dropout_apply(NULL, z, N, 0);
    moe_dropout_rows(&off, z, N / F, F, NULL, NULL, 0);
    ck_assert_mem_eq(z, x, N * sizeof *z);
    free(x), free(y), free(z);
}
END_TEST

static Suite *nn_suite(void)
{
    Suite *s = suite_create("nn");
    TCase *tc = tcase_create("nn");
    tcase_add_test(tc, test_layernorm_forward_stats);
    tcase_add_test(tc, test_layernorm_hand);
    tcase_add_test(tc, test_rmsnorm_hand);
    tcase_add_test(tc, test_rmsnorm_forward_stats);
    tcase_add_test(tc, test_norm_row_independent);
    tcase_add_test(tc, test_layernorm_grad);
    tcase_add_test(tc, test_rmsnorm_grad);
    tcase_add_test(tc, test_norm_accumulate);
    tcase_add_test(tc, test_gelu_silu_grad);
    tcase_add_test(tc, test_gelu_silu_hand);
    tcase_add_test(tc, test_dropout);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    if (moe_test_init_blas(1))
        return 1;
    return moe_test_run(nn_suite());
}
