// test_aux.c: the auxiliary losses of aux_loss.h: values at perfect balance and
// at collapse, hand-computed small examples of every loss, switch == gshard,
// and every gradient against central finite differences, plus coefficient
// scaling, accumulation (+=) and NULL gradient pointers.
// The routing state (struct moe_route) is built here by hand, independent of
// router.c: p and lse from z, for noisy top-k h = z + eps * softplus(u), sel
// = the top-K (ties to the lower index), idx = sel, gate = softmax over the
// chosen logits.
//
// Finite differences as in test_grad.c: float inputs, central difference over
// the float values actually stored, step 1e-3, tolerance
// |analytic - numeric| <= 2e-3 * max(1, |numeric|); each case asserts that the
// gradients it checks are not all tiny. The selection (and for the load loss
// the identity of the threshold experts) is held fixed, and the tests assert
// that the perturbations do not change it. MOE_GRAD_VERBOSE=1 prints the worst
// relative error.
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"
#include "moe/aux_loss.h"
#include "moe/router.h"
#include "gradcheck.h"
#include "testutil.h"

#define H_KERNEL 1e-3f

static void fill_n(float *x, size_t n, uint32_t stream, float std)
{
    struct moe_rng r = moe_rng_make(20240611, MOE_RNG_DATA, stream);
    moe_rng_fill_normal(&r, x, n, 0.0f, std);
}

// ---------------------------------------------------------------- hand-built routes

static void route_new(struct moe_route *r, size_t T, size_t E, size_t S, int noisy)
{
    memset(r, 0, sizeof *r);
    r->T = T;
    r->E = E;
    r->S = S;
    r->z = calloc(T * E, sizeof *r->z);
    r->p = calloc(T * E, sizeof *r->p);
    r->lse = calloc(T, sizeof *r->lse);
    r->sel = calloc(T * S, sizeof *r->sel);
    r->idx = calloc(T * S, sizeof *r->idx);
    r->gate = calloc(T * S, sizeof *r->gate);
    r->prio = calloc(T * S, sizeof *r->prio);
    ck_assert(r->z && r->p && r->lse && r->sel && r->idx && r->gate && r->prio);
    if (noisy) {
        r->u = calloc(T * E, sizeof *r->u);
        r->eps = calloc(T * E, sizeof *r->eps);
        r->h = calloc(T * E, sizeof *r->h);
        ck_assert(r->u && r->eps && r->h);
    }
}

static void route_free(struct moe_route *r)
{
    free(r->z);
    free(r->p);
    free(r->lse);
    free(r->u);
    free(r->eps);
    free(r->h);
    free(r->sel);
    free(r->idx);
    free(r->gate);
    free(r->prio);
}

// p = softmax(z), lse = logsumexp(z), per token, in double.
static void route_softmax(struct moe_route *r)
{
    for (size_t t = 0; t < r->T; t++) {
        const float *zt = r->z + t * r->E;
        double m = zt[0];
        for (size_t e = 1; e < r->E; e++)
            m = zt[e] > m ? zt[e] : m;
        double s = 0.0;
        for (size_t e = 0; e < r->E; e++)
            s += exp(zt[e] - m);
        double lse = m + log(s);
        r->lse[t] = (float)lse;
        for (size_t e = 0; e < r->E; e++)
            r->p[t * r->E + e] = (float)exp(zt[e] - lse);
    }
}

static double softplus_d(double x) { return log1p(exp(-fabs(x))) + (x > 0.0 ? x : 0.0); }

// h = z + eps * softplus(u), stored in float as a router would.
static void route_noisy_h(struct moe_route *r)
{
    for (size_t i = 0; i < r->T * r->E; i++)
        r->h[i] = (float)(r->z[i] + r->eps[i] * softplus_d(r->u[i]));
}

// Indices of the n largest of v (largest first, ties to the lower index).
static void top_n(int32_t *out, const float *v, size_t E, size_t n)
{
    for (size_t k = 0; k < n; k++) {
        int32_t best = -1;
        for (size_t e = 0; e < E; e++) {
            int taken = 0;
            for (size_t j = 0; j < k; j++)
                taken |= out[j] == (int32_t)e;
            if (!taken && (best < 0 || v[e] > v[best]))
                best = (int32_t)e;
        }
        out[k] = best;
    }
}

// sel = idx = top-S of src (T, E); gate = softmax over the chosen src; prio = p[sel].
static void route_select(struct moe_route *r, const float *src)
{
    const size_t E = r->E, S = r->S;
    for (size_t t = 0; t < r->T; t++) {
        int32_t *st = r->sel + t * S;
        top_n(st, src + t * E, E, S);
        double m = src[t * E + st[0]], s = 0.0;
        for (size_t k = 0; k < S; k++)
            s += exp(src[t * E + st[k]] - m);
        for (size_t k = 0; k < S; k++) {
            r->idx[t * S + k] = st[k];
            r->gate[t * S + k] = (float)(exp(src[t * E + st[k]] - m) / s);
            r->prio[t * S + k] = r->p[t * E + st[k]];
        }
    }
}

// A random softmax route: z ~ N(0, 1.5^2), top-S of p.
static void route_random(struct moe_route *r, size_t T, size_t E, size_t S, uint32_t stream)
{
    route_new(r, T, E, S, 0);
    fill_n(r->z, T * E, stream, 1.5f);
    route_softmax(r);
    route_select(r, r->z);
}

// ---------------------------------------------------------------- names

START_TEST(test_names)
{
    const char *n[] = { "none", "shazeer", "switch", "gshard", "topk-all" };
    for (int i = 0; i < 5; i++) {
        ck_assert_int_eq(moe_aux_from_name(n[i]), i);
        ck_assert_str_eq(moe_aux_name((enum moe_aux_type)i), n[i]);
    }
    ck_assert_int_eq(moe_aux_from_name("SWITCH"), -1);
    ck_assert_int_eq(moe_aux_from_name("topk"), -1);
    ck_assert_int_eq(moe_aux_from_name(""), -1);
    ck_assert_int_eq(MOE_AUX_SWITCH, moe_aux_from_name("switch"));
    ck_assert_int_eq(MOE_AUX_TOPK_ALL, moe_aux_from_name("topk-all"));
}
END_TEST

// ---------------------------------------------------------------- balance and collapse

START_TEST(test_balanced)
{
    enum { T = 12, E = 4, K = 2 };
    struct moe_route r;
    route_new(&r, T, E, K, 0);
    route_softmax(&r); // z = 0: p uniform
    for (size_t t = 0; t < T; t++) {
        // first choices t % E (T/E tokens each), second (t + 1) % E
        r.sel[t * K] = r.idx[t * K] = (int32_t)(t % E);
        r.sel[t * K + 1] = r.idx[t * K + 1] = (int32_t)((t + 1) % E);
        r.gate[t * K] = 0.7f;
        r.gate[t * K + 1] = 0.3f;
    }
    ck_assert_double_eq_tol(moe_aux_switch(NULL, &r, 1.0f), 1.0, 1e-6);
    ck_assert_double_eq_tol(moe_aux_gshard(NULL, &r, 1.0f), 1.0, 1e-6);
    ck_assert_double_eq_tol(moe_aux_topk_all(NULL, &r, 1.0f), (double)K, 1e-6);
    ck_assert_double_eq_tol(moe_aux_importance(NULL, &r, 1.0f), 0.0, 1e-12);
    ck_assert_double_eq_tol(moe_aux_z(NULL, &r, 1.0f), log(4.0) * log(4.0), 1e-6);
    // at balance the importance gradient vanishes; switch's dz too (uniform p, equal f)
    float dg[T * K], dz[T * E];
    memset(dg, 0, sizeof dg);
    memset(dz, 0, sizeof dz);
    moe_aux_importance(dg, &r, 1.0f);
    moe_aux_switch(dz, &r, 1.0f);
    ck_assert_double_lt(max_abs(dg, T * K), 1e-6);
    ck_assert_double_lt(max_abs(dz, T * E), 1e-6);
    route_free(&r);
}
END_TEST

START_TEST(test_collapsed)
{
    enum { T = 10, E = 5, K = 2 };
    struct moe_route r;
    route_new(&r, T, E, K, 0);
    for (size_t t = 0; t < T; t++) {
        r.p[t * E] = 1.0f; // every token: p = (1, 0, ...), first choice 0, second 1
        r.sel[t * K] = r.idx[t * K] = 0;
        r.sel[t * K + 1] = r.idx[t * K + 1] = 1;
        r.gate[t * K] = 1.0f;
        r.gate[t * K + 1] = 0.0f;
    }
    ck_assert_double_eq_tol(moe_aux_switch(NULL, &r, 1.0f), (double)E, 1e-9);
    ck_assert_double_eq_tol(moe_aux_gshard(NULL, &r, 1.0f), (double)E, 1e-9);
    ck_assert_double_eq_tol(moe_aux_topk_all(NULL, &r, 1.0f), (double)E, 1e-9);
    // Importance = (T, 0, ..., 0): CV^2 = E - 1
    ck_assert_double_eq_tol(moe_aux_importance(NULL, &r, 1.0f), (double)(E - 1), 1e-9);
    // all gates zero: mean 0, CV^2 defined as 0 and no gradient
    for (size_t i = 0; i < T * K; i++)
        r.gate[i] = 0.0f;
    float dg[T * K];
    memset(dg, 0, sizeof dg);
    ck_assert_double_eq(moe_aux_importance(dg, &r, 1.0f), 0.0);
    ck_assert_double_eq(max_abs(dg, T * K), 0.0);
    route_free(&r);
}
END_TEST

// ---------------------------------------------------------------- switch == gshard

START_TEST(test_switch_eq_gshard)
{
    const size_t Es[] = { 2, 3, 5, 8, 16 };
    for (size_t c = 0; c < 5; c++) {
        size_t E = Es[c], T = 7 + 3 * c, K = E > 2 ? 2 : 1;
        struct moe_route r;
        route_random(&r, T, E, K, 100 + (uint32_t)c);
        float *dz1 = calloc(T * E, sizeof *dz1), *dz2 = calloc(T * E, sizeof *dz2);
        double s = moe_aux_switch(dz1, &r, 0.5f);
        double g = moe_aux_gshard(dz2, &r, 0.5f);
        ck_assert_double_eq_tol(s, g, 1e-12 * fabs(s));
        for (size_t i = 0; i < T * E; i++)
            ck_assert_float_eq_tol(dz1[i], dz2[i], 1e-7f);
        // a plain reference: E * sum_e f_e P_e with f from slot 0
        double ref = 0.0;
        for (size_t e = 0; e < E; e++) {
            double f = 0.0, P = 0.0;
            for (size_t t = 0; t < T; t++) {
                f += r.sel[t * K] == (int32_t)e;
                P += r.p[t * E + e];
            }
            ref += (f / T) * (P / T);
        }
        ck_assert_double_eq_tol(s, E * ref, 1e-9);
        ck_assert_double_gt(s, 0.0);
        free(dz1);
        free(dz2);
        route_free(&r);
    }
}
END_TEST

// ---------------------------------------------------------------- hand-computed values

// T = 2, E = 3, S = 2 with p, lse set directly:
//   p0 = (0.5, 0.25, 0.25), sel0 = (0, 1), gates (0.6, 0.4), lse0 = 1
//   p1 = (0.2, 0.6, 0.2),   sel1 = (1, 2), gates (0.7, 0.3), lse1 = -2
// f = (1/2, 1/2, 0), f_all = (1/2, 1, 1/2), P = (0.35, 0.425, 0.225)
// switch = gshard = 3 (0.175 + 0.2125) = 1.1625; topk-all = 3 (0.175 + 0.425 + 0.1125) = 2.1375
// Importance = (0.6, 1.1, 0.3): mean 2/3, var 98/900, CV^2 = 0.245
// z = (1 + 4) / 2 = 2.5
static void hand_route(struct moe_route *r)
{
    route_new(r, 2, 3, 2, 0);
    const float p[] = { 0.5f, 0.25f, 0.25f, 0.2f, 0.6f, 0.2f };
    const int32_t sel[] = { 0, 1, 1, 2 };
    const float gate[] = { 0.6f, 0.4f, 0.7f, 0.3f };
    memcpy(r->p, p, sizeof p);
    memcpy(r->sel, sel, sizeof sel);
    memcpy(r->idx, sel, sizeof sel);
    memcpy(r->gate, gate, sizeof gate);
    r->lse[0] = 1.0f;
    r->lse[1] = -2.0f;
}

START_TEST(test_hand_values)
{
    struct moe_route r;
    hand_route(&r);
    ck_assert_double_eq_tol(moe_aux_switch(NULL, &r, 1.0f), 1.1625, 1e-7);
    ck_assert_double_eq_tol(moe_aux_gshard(NULL, &r, 1.0f), 1.1625, 1e-7);
    ck_assert_double_eq_tol(moe_aux_topk_all(NULL, &r, 1.0f), 2.1375, 1e-7);
    ck_assert_double_eq_tol(moe_aux_importance(NULL, &r, 1.0f), 0.245, 1e-7);
    ck_assert_double_eq_tol(moe_aux_z(NULL, &r, 1.0f), 2.5, 1e-7);

    // switch gradient, coef 1: dp[t, e] = E f_e / T = (0.75, 0.75, 0);
    // token 0: sum p dp = 0.5625 -> dz = (0.09375, 0.046875, -0.140625);
    // token 1: sum p dp = 0.6    -> dz = (0.03, 0.09, -0.12).
    const double want_sw[] = { 0.09375, 0.046875, -0.140625, 0.03, 0.09, -0.12 };
    float dz[6] = { 0 };
    moe_aux_switch(dz, &r, 1.0f);
    for (size_t i = 0; i < 6; i++)
        ck_assert_double_eq_tol(dz[i], want_sw[i], 1e-7);
    // z-loss gradient, coef 1: (2/T) lse_t p[t, :] = lse_t p[t, :]
    const double want_z[] = { 0.5, 0.25, 0.25, -0.4, -1.2, -0.4 };
    memset(dz, 0, sizeof dz);
    moe_aux_z(dz, &r, 1.0f);
    for (size_t i = 0; i < 6; i++)
        ck_assert_double_eq_tol(dz[i], want_z[i], 1e-7);
    // importance gradient: d CV^2/d I_e = 2 (I_e - m)/(E m^2) - 2 var/(E m^3)
    //   m = 2/3, var = 98/900: 2 (I - m) / (E m^2) = 1.5 (I - m) = (-0.1, 0.65, -0.55),
    //   2 var / (E m^3) = 0.245; slots get the value of their expert.
    const double dI[] = { -0.1 - 0.245, 0.65 - 0.245, -0.55 - 0.245 };
    float dg[4] = { 0 };
    moe_aux_importance(dg, &r, 1.0f);
    ck_assert_double_eq_tol(dg[0], dI[0], 1e-6);
    ck_assert_double_eq_tol(dg[1], dI[1], 1e-6);
    ck_assert_double_eq_tol(dg[2], dI[1], 1e-6);
    ck_assert_double_eq_tol(dg[3], dI[2], 1e-6);
    // a skipped slot (idx = -1, gate 0, GShard's random policy) counts for nobody and gets no gradient
    r.idx[3] = -1;
    r.gate[3] = 0.0f;
    dg[3] = 5.0f;
    moe_aux_importance(dg, &r, 1.0f);
    ck_assert_float_eq(dg[3], 5.0f);
    // Importance = (0.6, 1.1, 0): mean 17/30, CV^2 = ((1/30)^2 + (16/30)^2 + (17/30)^2) / 3 / (17/30)^2
    ck_assert_double_eq_tol(moe_aux_importance(NULL, &r, 1.0f), (1.0 + 256.0 + 289.0) / 3.0 / 289.0, 1e-7);
    // an unused slot of sel (-1, expert choice) counts for nobody in f
    r.sel[3] = -1;
    // f_all = (1/2, 1, 0): 3 (0.175 + 0.425) = 1.8
    ck_assert_double_eq_tol(moe_aux_topk_all(NULL, &r, 1.0f), 1.8, 1e-7);
    route_free(&r);
}
END_TEST

// T = 2, E = 3, K = 1.
// token 0: z = (1, 0, -1), u = 0, eps = 0: h = z, sd = log 2, selected 0;
//   P = (Phi(1/log2), Phi(-1/log2), Phi(-2/log2)) (thresholds h1 = 0, h0 = 1, h0 = 1).
// token 1: z = (0.5, -0.5, 0), u = (1, -1, 0), eps = (0, 1, -1):
//   h = (0.5, -0.5 + softplus(-1), -log 2), selected 0, second largest h1;
//   P = (Phi((0.5 - h1)/softplus(1)), Phi(-1/softplus(-1)), Phi(-0.5/log 2)).
// Load = (1.6249338286312403, 0.07525911893637646, 0.23730250794884494),
// CV^2 = 1.1596695760689566 (computed in double with erfc, outside this code).
START_TEST(test_hand_load)
{
    struct moe_route r;
    route_new(&r, 2, 3, 1, 1);
    const float z[] = { 1, 0, -1, 0.5f, -0.5f, 0 };
    const float u[] = { 0, 0, 0, 1, -1, 0 };
    const float eps[] = { 0, 0, 0, 0, 1, -1 };
    memcpy(r.z, z, sizeof z);
    memcpy(r.u, u, sizeof u);
    memcpy(r.eps, eps, sizeof eps);
    route_softmax(&r);
    route_noisy_h(&r);
    route_select(&r, r.h);
    ck_assert_int_eq(r.sel[0], 0);
    ck_assert_int_eq(r.sel[1], 0);
    ck_assert_double_eq_tol(moe_aux_load(NULL, NULL, &r, 1, 1.0f), 1.1596695760689566, 1e-6);
    route_free(&r);
}
END_TEST

// ---------------------------------------------------------------- finite differences wrt z (f . P and z)

typedef double (*zloss_fn)(float *dz, const struct moe_route *r, float coef);

struct zctx {
    struct moe_route r;
    zloss_fn fn;
};

// p and lse recomputed from z; the selection (hence f) held fixed.
static double zctx_loss(void *p)
{
    struct zctx *c = p;
    route_softmax(&c->r);
    return c->fn(NULL, &c->r, 1.0f);
}

static void fd_wrt_z(zloss_fn fn, const char *what, size_t T, size_t E, size_t K, uint32_t stream)
{
    struct zctx c;
    c.fn = fn;
    route_random(&c.r, T, E, K, stream);
    float *dz = calloc(T * E, sizeof *dz);
    fn(dz, &c.r, 1.0f);
    for (size_t i = 0; i < T * E; i++)
        check_grad(dz[i], numeric_grad(&c.r.z[i], H_KERNEL, zctx_loss, &c), what, i);
    ck_assert_msg(max_abs(dz, T * E) > 0.02, "%s: gradients too small to test (%g)", what, max_abs(dz, T * E));
    free(dz);
    route_free(&c.r);
}

START_TEST(test_fd_switch_gshard_topk)
{
    fd_wrt_z(moe_aux_switch, "switch dz", 6, 5, 1, 11);
    fd_wrt_z(moe_aux_switch, "switch dz (K=2)", 5, 4, 2, 12);
    fd_wrt_z(moe_aux_gshard, "gshard dz", 8, 4, 2, 13);
    fd_wrt_z(moe_aux_topk_all, "topk-all dz", 7, 6, 2, 14);
    fd_wrt_z(moe_aux_topk_all, "topk-all dz (K=3)", 5, 5, 3, 15);
}
END_TEST

START_TEST(test_fd_z)
{
    fd_wrt_z(moe_aux_z, "z-loss dz", 6, 5, 1, 21);
    fd_wrt_z(moe_aux_z, "z-loss dz", 3, 8, 2, 22);
}
END_TEST

// ---------------------------------------------------------------- finite differences wrt gate

static double imp_loss(void *p) { return moe_aux_importance(NULL, p, 1.0f); }

START_TEST(test_fd_importance)
{
    enum { T = 7, E = 5, K = 2 };
    struct moe_route r;
    route_random(&r, T, E, K, 31);
    fill_u(r.gate, T * K, 32, 0.05f, 1.0f); // independent gates: any values will do
    r.idx[3] = -1; // one skipped slot
    r.gate[3] = 0.0f;
    float dg[T * K];
    memset(dg, 0, sizeof dg);
    moe_aux_importance(dg, &r, 1.0f);
    for (size_t i = 0; i < T * K; i++)
        check_grad(dg[i], numeric_grad(&r.gate[i], H_KERNEL, imp_loss, &r), "importance dgate", i);
    ck_assert_double_gt(max_abs(dg, T * K), 0.02);
    ck_assert_float_eq(dg[3], 0.0f);
    route_free(&r);
}
END_TEST

// ---------------------------------------------------------------- finite differences of the load loss

enum { LT = 5, LE = 6, LK = 2 };

struct lctx {
    struct moe_route r;
    int32_t order[LT * (LK + 1)]; // top-(K+1) of h per token at the unperturbed point
    int recompute_h;              // 0: h held at its stored values (thresholds frozen)
    int order_changed;
};

static double load_loss(void *p)
{
    struct lctx *c = p;
    if (c->recompute_h) {
        route_noisy_h(&c->r);
        for (size_t t = 0; t < LT; t++) {
            int32_t o[LK + 1];
            top_n(o, c->r.h + t * LE, LE, LK + 1);
            if (memcmp(o, c->order + t * (LK + 1), sizeof o) != 0)
                c->order_changed = 1;
        }
    }
    return moe_aux_load(NULL, NULL, &c->r, LK, 1.0f);
}

START_TEST(test_fd_load)
{
    struct lctx c;
    memset(&c, 0, sizeof c);
    route_new(&c.r, LT, LE, LK, 1);
    fill_n(c.r.z, LT * LE, 41, 1.0f);
    fill_u(c.r.u, LT * LE, 42, -1.0f, 1.0f);
    fill_n(c.r.eps, LT * LE, 43, 1.0f);
    route_softmax(&c.r);
    route_noisy_h(&c.r);
    route_select(&c.r, c.r.h);
    // gaps: the top K+1 of h must stay in order under steps of H_KERNEL in z or u
    // (|dh/du| <= |eps| <= 4 here), so require gaps of at least 0.02 around them.
    for (size_t t = 0; t < LT; t++) {
        int32_t all[LE];
        top_n(all, c.r.h + t * LE, LE, LE);
        memcpy(c.order + t * (LK + 1), all, sizeof(int32_t) * (LK + 1));
        for (size_t k = 0; k < LK + 1; k++)
            ck_assert_msg(c.r.h[t * LE + all[k]] - c.r.h[t * LE + all[k + 1]] > 0.02,
                          "token %zu: h gap %zu too small for the test", t, k);
        ck_assert_int_eq(c.r.sel[t * LK + LK - 1], all[LK - 1]);
    }
    float dz[LT * LE], du[LT * LE];
    memset(dz, 0, sizeof dz);
    memset(du, 0, sizeof du);
    double v = moe_aux_load(dz, du, &c.r, LK, 1.0f);
    ck_assert_double_gt(v, 0.0);
    ck_assert_double_eq(moe_aux_load(NULL, NULL, &c.r, LK, 1.0f), v);

    double thr_effect = 0.0; // largest |full - frozen-threshold| numeric derivative
    c.recompute_h = 1;
    for (size_t i = 0; i < LT * LE; i++) {
        check_grad(dz[i], numeric_grad(&c.r.z[i], H_KERNEL, load_loss, &c), "load dz", i);
        check_grad(du[i], numeric_grad(&c.r.u[i], H_KERNEL, load_loss, &c), "load du", i);
    }
    ck_assert_msg(!c.order_changed, "a perturbation changed the top-K+1 order of h");
    route_noisy_h(&c.r);
    // the threshold experts (ranks K-1 and K of h) get a gradient through thr:
    // with h frozen the numeric derivative wrt their z and u must differ by far
    // more than the tolerance, so omitting that path would fail the check above.
    for (size_t t = 0; t < LT; t++)
        for (size_t k = LK - 1; k <= LK; k++) {
            size_t i = t * LE + (size_t)c.order[t * (LK + 1) + k];
            c.recompute_h = 1;
            double nz = numeric_grad(&c.r.z[i], H_KERNEL, load_loss, &c);
            double nu = numeric_grad(&c.r.u[i], H_KERNEL, load_loss, &c);
            route_noisy_h(&c.r);
            c.recompute_h = 0;
            double fz = numeric_grad(&c.r.z[i], H_KERNEL, load_loss, &c);
            double fu = numeric_grad(&c.r.u[i], H_KERNEL, load_loss, &c);
            thr_effect = fmax(thr_effect, fabs(nz - fz));
            thr_effect = fmax(thr_effect, fabs(nu - fu));
        }
    if (getenv("MOE_GRAD_VERBOSE") && *getenv("MOE_GRAD_VERBOSE") == '1')
        fprintf(stderr, "test_aux: load threshold-path effect %.3g, max |dz| %.3g, max |du| %.3g\n", thr_effect,
                max_abs(dz, LT * LE), max_abs(du, LT * LE));
    ck_assert_msg(thr_effect > 20 * GRAD_TOL, "threshold path not exercised (effect %g)", thr_effect);
    ck_assert_double_gt(max_abs(dz, LT * LE), 0.02);
    ck_assert_double_gt(max_abs(du, LT * LE), 0.02);
    route_free(&c.r);
}
END_TEST

// ---------------------------------------------------------------- coef, accumulation, NULL

START_TEST(test_coef_and_null)
{
    enum { T = 6, E = 5, K = 2 };
    struct moe_route r;
    route_new(&r, T, E, K, 1);
    fill_n(r.z, T * E, 51, 1.0f);
    fill_u(r.u, T * E, 52, -1.0f, 1.0f);
    fill_n(r.eps, T * E, 53, 1.0f);
    route_softmax(&r);
    route_noisy_h(&r);
    route_select(&r, r.h);
    const float coef = 2.5f;
    float base[T * E], dz1[T * E], dz2[T * E], du1[T * E], du2[T * E];
    fill_u(base, T * E, 54, -1.0f, 1.0f); // gradients are added into what is there
    zloss_fn fns[] = { moe_aux_switch, moe_aux_gshard, moe_aux_topk_all, moe_aux_z };
    for (size_t f = 0; f < 4; f++) {
        memcpy(dz1, base, sizeof base);
        memcpy(dz2, base, sizeof base);
        double v1 = fns[f](dz1, &r, 1.0f);
        double v2 = fns[f](dz2, &r, coef);
        ck_assert_double_eq(fns[f](NULL, &r, coef), v1);
        ck_assert_double_eq(v1, v2);
        double big = 0.0;
        for (size_t i = 0; i < T * E; i++) {
            double g1 = (double)dz1[i] - base[i], g2 = (double)dz2[i] - base[i];
            ck_assert_double_eq_tol(g2, coef * g1, 1e-5);
            big = fmax(big, fabs(g1));
        }
        ck_assert_double_gt(big, 0.01);
    }
    // importance
    float gb[T * K], dg1[T * K], dg2[T * K];
    fill_u(gb, T * K, 55, -1.0f, 1.0f);
    memcpy(dg1, gb, sizeof gb);
    memcpy(dg2, gb, sizeof gb);
    double v1 = moe_aux_importance(dg1, &r, 1.0f);
    ck_assert_double_eq(moe_aux_importance(dg2, &r, coef), v1);
    ck_assert_double_eq(moe_aux_importance(NULL, &r, coef), v1);
    double big = 0.0;
    for (size_t i = 0; i < T * K; i++) {
        double g1 = (double)dg1[i] - gb[i], g2 = (double)dg2[i] - gb[i];
        ck_assert_double_eq_tol(g2, coef * g1, 1e-5);
        big = fmax(big, fabs(g1));
    }
    ck_assert_double_gt(big, 0.01);
    // load
    memcpy(dz1, base, sizeof base);
    memcpy(dz2, base, sizeof base);
    memcpy(du1, base, sizeof base);
    memcpy(du2, base, sizeof base);
    v1 = moe_aux_load(dz1, du1, &r, K, 1.0f);
    ck_assert_double_eq(moe_aux_load(dz2, du2, &r, K, coef), v1);
    ck_assert_double_eq(moe_aux_load(NULL, NULL, &r, K, coef), v1);
    big = 0.0;
    for (size_t i = 0; i < T * E; i++) {
        double gz1 = (double)dz1[i] - base[i], gz2 = (double)dz2[i] - base[i];
        double gu1 = (double)du1[i] - base[i], gu2 = (double)du2[i] - base[i];
        ck_assert_double_eq_tol(gz2, coef * gz1, 1e-5);
        ck_assert_double_eq_tol(gu2, coef * gu1, 1e-5);
        big = fmax(big, fmax(fabs(gz1), fabs(gu1)));
    }
    ck_assert_double_gt(big, 0.01);
    // zero coefficient: nothing added
    memcpy(dz1, base, sizeof base);
    moe_aux_switch(dz1, &r, 0.0f);
    ck_assert_int_eq(memcmp(dz1, base, sizeof base), 0);
    route_free(&r);
}
END_TEST

// T = 0: every loss is 0 and adds nothing.
START_TEST(test_empty_batch)
{
    struct moe_route r;
    route_new(&r, 4, 3, 1, 0);
    r.T = 0;
    float dz[12] = { 0 };
    ck_assert_double_eq(moe_aux_switch(dz, &r, 1.0f), 0.0);
    ck_assert_double_eq(moe_aux_gshard(dz, &r, 1.0f), 0.0);
    ck_assert_double_eq(moe_aux_topk_all(dz, &r, 1.0f), 0.0);
    ck_assert_double_eq(moe_aux_z(dz, &r, 1.0f), 0.0);
    ck_assert_double_eq(moe_aux_importance(dz, &r, 1.0f), 0.0);
    ck_assert_double_eq(max_abs(dz, 12), 0.0);
    route_free(&r);
}
END_TEST

static void report_worst(void)
{
    const char *v = getenv("MOE_GRAD_VERBOSE");
    if (v && *v == '1')
        fprintf(stderr, "test_aux: worst relative gradient error %.3g\n", grad_worst);
}

START_TEST(test_report)
{
    report_worst();
    ck_assert_double_le(grad_worst, GRAD_TOL);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("aux");
    TCase *tc = tcase_create("aux");
    tcase_add_test(tc, test_names);
    tcase_add_test(tc, test_balanced);
    tcase_add_test(tc, test_collapsed);
    tcase_add_test(tc, test_switch_eq_gshard);
    tcase_add_test(tc, test_hand_values);
    tcase_add_test(tc, test_hand_load);
    tcase_add_test(tc, test_fd_switch_gshard_topk);
    tcase_add_test(tc, test_fd_z);
    tcase_add_test(tc, test_fd_importance);
    tcase_add_test(tc, test_fd_load);
    tcase_add_test(tc, test_coef_and_null);
    tcase_add_test(tc, test_empty_batch);
    tcase_add_test(tc, test_report);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    if (moe_test_init_blas(1))
        return 1;
    return moe_test_run(suite());
}
