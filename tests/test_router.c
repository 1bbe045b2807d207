// test_router.c: the routers of router.h: backward passes against central
// finite differences, the conventions of each router against independent
// reference computations, noise and GShard's random policy, expert-choice
// quotas, bias balancing and the hash tables.
//
// Finite differences follow tests/test_grad.c: everything runs in float, the
// scalar loss L = sum_{t,s} w[t,s] gate[t,s] (w random, fixed, so dgate = w) is
// summed in double, the numeric derivative is (L(x+) - L(x-)) / (x+ - x-) with
// x+- = (float)(x +- h), h = 1e-3, and |analytic - numeric| <= 2e-3 * max(1, |numeric|).
// The forward is re-run with the same rng, so the noise and GShard's uniforms
// are the same at x+ and x-; logits have gaps so that the selection does not
// change, and each check asserts that it did not (and that the gradients it
// checks are not all tiny). Run with MOE_GRAD_VERBOSE=1 to print the worst error.
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"
#include "moe/router.h"
#include "gradcheck.h"
#include "testutil.h"

#define H_FD 1e-3f

static void fill_n(float *x, size_t n, uint32_t stream, float std)
{
    struct moe_rng r = moe_rng_make(20240611, MOE_RNG_DATA, stream);
    moe_rng_fill_normal(&r, x, n, 0.0f, std);
}

// Logits with gaps: row t is gap * (a random permutation of 0..E-1) plus a
// jitter in [0, gap/4), so no two logits of a row are closer than 3/4 gap.
static void fill_gapped(float *z, size_t T, size_t E, float gap, uint32_t stream)
{
    uint32_t perm[1024];
    ck_assert_uint_le(E, 1024);
    float jit[1024];
    for (size_t t = 0; t < T; t++) {
        struct moe_rng r = moe_rng_make(777, MOE_RNG_DATA, stream * 1000u + (uint32_t)t);
        moe_rng_permutation(&r, perm, E);
        fill_u(jit, E, stream * 1000u + 500u + (uint32_t)t, 0.0f, gap / 4);
        for (size_t e = 0; e < E; e++)
            z[t * E + e] = gap * (float)perm[e] - gap * (float)E / 2 + jit[e];
    }
}

static struct moe_router_cfg cfg_make(enum moe_router_type type, size_t E, size_t K)
{
    struct moe_router_cfg c = { type, E, K, MOE_SECOND_ALL, 1.0, 0, MOE_EC_EVAL_FULL, 0 };
    return c;
}

static void route_alloc(struct moe_route *r, const struct moe_router_cfg *c, size_t T)
{
    struct moe_err err;
    int rc = moe_route_alloc(r, T, c->E, moe_router_slots(c), c->type == MOE_ROUTER_NOISY_TOPK, &err);
    ck_assert_msg(rc == 0, "moe_route_alloc: %s", err.msg);
}

// Independent top-K: selection sort on (key desc, index asc); key = v (+ bias).
static void ref_topk(int32_t *sel, const float *v, const float *bias, size_t E, size_t K)
{
    for (size_t k = 0; k < K; k++) {
        int best = -1;
        float bk = 0.0f;
        for (size_t e = 0; e < E; e++) {
            int taken = 0;
            for (size_t j = 0; j < k; j++)
                taken |= sel[j] == (int32_t)e;
            if (taken)
                continue;
            float key = bias ? v[e] + bias[e] : v[e];
            if (best < 0 || key > bk) {
                best = (int)e;
                bk = key;
            }
        }
        sel[k] = best;
    }
}

// Softmax of one row in double.
static void ref_softmax(double *p, double *lse, const float *z, size_t E)
{
    double m = z[0];
    for (size_t e = 1; e < E; e++)
        m = z[e] > m ? z[e] : m;
    double s = 0.0;
    for (size_t e = 0; e < E; e++)
        s += exp(z[e] - m);
    for (size_t e = 0; e < E; e++)
        p[e] = exp(z[e] - m) / s;
    if (lse)
        *lse = m + log(s);
}

// ---------------------------------------------------------------- finite differences

struct fd_ctx {
    struct moe_router_cfg c;
    struct moe_route r;
    const float *bias;
    int train;
    struct moe_rng rng;
    uint64_t base;
    size_t T, S;
    float w[4096];
    int32_t sel0[4096], idx0[4096];
    int changed; // the selection (sel or idx) moved under a perturbation
};

static double fd_loss(void *p)
{
    struct fd_ctx *f = p;
    moe_router_forward(&f->r, &f->c, f->bias, NULL, f->train, &f->rng, f->base, f->T);
    size_t n = f->T * f->S;
    if (memcmp(f->r.sel, f->sel0, n * sizeof(int32_t)) || memcmp(f->r.idx, f->idx0, n * sizeof(int32_t)))
        f->changed = 1;
    double L = 0.0;
    for (size_t i = 0; i < n; i++)
        L += (double)f->w[i] * f->r.gate[i];
    return L;
}

// Check dz (and du) of moe_router_backward for cfg on T tokens with gapped
// logits. Returns the number of slots GShard skipped (idx = -1, sel >= 0).
static size_t check_router_grad(struct moe_router_cfg c, size_t T, float gap, int train, uint32_t stream,
                                const char *what)
{
    static struct fd_ctx f; // large: keep it off the stack
    memset(&f, 0, sizeof f);
    f.c = c;
    f.T = T;
    f.S = moe_router_slots(&c);
    f.train = train;
    f.rng = moe_rng_make(99, MOE_RNG_NOISE, 3);
    f.base = 1000;
    size_t E = c.E, n = T * f.S;
    ck_assert_uint_le(n, 4096);
    route_alloc(&f.r, &c, T);
    fill_gapped(f.r.z, T, E, gap, stream);
    int noisy = c.type == MOE_ROUTER_NOISY_TOPK;
    if (noisy)
        fill_u(f.r.u, T * E, stream + 1, -1.0f, 1.0f);
    fill_u(f.w, n, stream + 2, -1.0f, 1.0f);

    moe_router_forward(&f.r, &f.c, NULL, NULL, train, &f.rng, f.base, T);
    memcpy(f.sel0, f.r.sel, n * sizeof(int32_t));
    memcpy(f.idx0, f.r.idx, n * sizeof(int32_t));
    size_t skipped = 0;
    for (size_t i = 0; i < n; i++) {
        ck_assert_int_ge(f.r.sel[i], c.type == MOE_ROUTER_EXPERT_CHOICE ? -1 : 0);
        if (f.r.idx[i] < 0 && f.r.sel[i] >= 0)
            skipped++;
    }

    float *dz = malloc(T * E * sizeof *dz), *du = malloc(T * E * sizeof *du);
    ck_assert_ptr_nonnull(dz);
    ck_assert_ptr_nonnull(du);
    for (size_t i = 0; i < T * E; i++) {
        dz[i] = 0.5f; // backward adds
        du[i] = -0.25f;
    }
    moe_router_backward(dz, noisy ? du : NULL, f.w, &f.r, &f.c);
    char name[96];
    double biggest = 0.0;
    for (size_t i = 0; i < T * E; i++) {
        double a = (double)dz[i] - 0.5;
        snprintf(name, sizeof name, "%s dz", what);
        check_grad(a, numeric_grad(&f.r.z[i], H_FD, fd_loss, &f), name, i);
        biggest = fmax(biggest, fabs(a));
        if (noisy) {
            double b = (double)du[i] + 0.25;
            snprintf(name, sizeof name, "%s du", what);
            check_grad(b, numeric_grad(&f.r.u[i], H_FD, fd_loss, &f), name, i);
        }
    }
    ck_assert_msg(!f.changed, "%s: the selection changed under a perturbation", what);
    ck_assert_msg(biggest > 0.05, "%s: gradients all tiny (max %g)", what, biggest);
    if (noisy) {
        double bu = 0.0;
        for (size_t i = 0; i < T * E; i++)
            bu = fmax(bu, fabs((double)du[i] + 0.25));
        ck_assert_msg(bu > 0.05, "%s: du all tiny (max %g)", what, bu);
    }
    free(dz);
    free(du);
    moe_route_release(&f.r);
    return skipped;
}

START_TEST(test_grad_softmax)
{
    check_router_grad(cfg_make(MOE_ROUTER_SOFTMAX, 6, 2), 7, 0.5f, 1, 10, "softmax K=2");
    check_router_grad(cfg_make(MOE_ROUTER_SOFTMAX, 5, 5), 6, 0.5f, 1, 20, "softmax K=E");
    check_router_grad(cfg_make(MOE_ROUTER_SOFTMAX, 8, 3), 5, 0.4f, 0, 30, "softmax K=3");
}
END_TEST

START_TEST(test_grad_noisy)
{
    check_router_grad(cfg_make(MOE_ROUTER_NOISY_TOPK, 6, 2), 7, 1.0f, 1, 40, "noisy-topk K=2 train");
    check_router_grad(cfg_make(MOE_ROUTER_NOISY_TOPK, 5, 3), 6, 1.0f, 1, 50, "noisy-topk K=3 train");
}
END_TEST

START_TEST(test_grad_switch)
{
    check_router_grad(cfg_make(MOE_ROUTER_SWITCH, 5, 1), 8, 0.5f, 1, 60, "switch K=1");
}
END_TEST

START_TEST(test_grad_deepseek)
{
    check_router_grad(cfg_make(MOE_ROUTER_DEEPSEEK, 5, 1), 8, 0.5f, 1, 60, "deepseek K=1");
    check_router_grad(cfg_make(MOE_ROUTER_DEEPSEEK, 6, 2), 7, 0.5f, 1, 70, "deepseek K=2");
    check_router_grad(cfg_make(MOE_ROUTER_DEEPSEEK, 8, 3), 5, 0.4f, 0, 75, "deepseek K=3");
}
END_TEST

START_TEST(test_grad_gshard)
{
    struct moe_router_cfg c = cfg_make(MOE_ROUTER_GSHARD, 5, 2);
    ck_assert_uint_eq(check_router_grad(c, 8, 0.6f, 1, 80, "gshard all"), 0);
    c.second = MOE_SECOND_RANDOM;
    size_t skipped = check_router_grad(c, 16, 1.0f, 1, 90, "gshard random");
    ck_assert_msg(skipped >= 1 && skipped < 16, "gshard random: %zu of 16 second slots skipped", skipped);
}
END_TEST

START_TEST(test_grad_expert_choice)
{
    struct moe_router_cfg c = cfg_make(MOE_ROUTER_EXPERT_CHOICE, 4, 0);
    check_router_grad(c, 8, 0.5f, 1, 100, "expert-choice f=1");
    c.ec_factor = 1.5;
    check_router_grad(c, 6, 0.5f, 1, 110, "expert-choice f=1.5");
}
END_TEST

// ---------------------------------------------------------------- conventions

START_TEST(test_names_slots_alloc)
{
    const char *n[] = { "softmax", "noisy-topk", "switch", "gshard", "hash", "expert-choice", "deepseek" };
    for (int i = 0; i < 7; i++) {
        ck_assert_int_eq(moe_router_from_name(n[i]), i);
        ck_assert_str_eq(moe_router_name((enum moe_router_type)i), n[i]);
    }
    ck_assert_int_eq(moe_router_from_name("topk"), -1);
    ck_assert_int_eq(moe_router_from_name(""), -1);
    ck_assert_int_eq(moe_router_from_name("Softmax"), -1);

    struct moe_router_cfg c = cfg_make(MOE_ROUTER_SOFTMAX, 8, 3);
    ck_assert_uint_eq(moe_router_slots(&c), 3);
    c.type = MOE_ROUTER_EXPERT_CHOICE;
    ck_assert_uint_eq(moe_router_slots(&c), 8);
    c.type = MOE_ROUTER_HASH;
    ck_assert_uint_eq(moe_router_slots(&c), 1); // K = 1 for hash whatever the config says
    c.type = MOE_ROUTER_GSHARD;
    ck_assert_uint_eq(moe_router_slots(&c), 2);

    struct moe_route r;
    struct moe_err err;
    ck_assert_int_eq(moe_route_alloc(&r, 10, 8, 3, 0, &err), 0);
    ck_assert_uint_eq(r.E, 8);
    ck_assert_uint_eq(r.S, 3);
    ck_assert_ptr_null(r.u);
    ck_assert_ptr_null(r.eps);
    ck_assert_ptr_null(r.h);
    ck_assert_ptr_nonnull(r.z);
    ck_assert_ptr_nonnull(r.prio);
    moe_route_release(&r);
    ck_assert_ptr_null(r.z);
    moe_route_release(&r); // twice is harmless
    ck_assert_int_eq(moe_route_alloc(&r, 10, 8, 3, 1, &err), 0);
    ck_assert_ptr_nonnull(r.u);
    ck_assert_ptr_nonnull(r.eps);
    ck_assert_ptr_nonnull(r.h);
    moe_route_release(&r);
    ck_assert_int_ne(moe_route_alloc(&r, SIZE_MAX / 2, 8, 3, 0, &err), 0);
    ck_assert_ptr_null(r.z);
}
END_TEST

// SOFTMAX: selection = top-K of p (ties lower index), gate = renormalised
// top-K of a softmax computed here in double; p, lse, prio as documented.
static void check_softmax_vs_ref(size_t T, size_t E, size_t K, int quantise, uint32_t stream)
{
    struct moe_router_cfg c = cfg_make(MOE_ROUTER_SOFTMAX, E, K);
    struct moe_route r;
    route_alloc(&r, &c, T);
    fill_n(r.z, T * E, stream, 2.0f);
    if (quantise) // many exact ties
        for (size_t i = 0; i < T * E; i++)
            r.z[i] = roundf(r.z[i]);
    moe_router_forward(&r, &c, NULL, NULL, 1, NULL, 0, T);
    ck_assert_uint_eq(r.T, T);
    double *p = malloc(E * sizeof *p);
    int32_t *sel = malloc(K * sizeof *sel);
    for (size_t t = 0; t < T; t++) {
        double lse;
        ref_softmax(p, &lse, r.z + t * E, E);
        ck_assert_double_eq_tol(r.lse[t], lse, 1e-5 * fmax(1.0, fabs(lse)));
        for (size_t e = 0; e < E; e++)
            ck_assert_double_eq_tol(r.p[t * E + e], p[e], 1e-6);
        ref_topk(sel, r.p + t * E, NULL, E, K);
        double s = 0.0;
        for (size_t k = 0; k < K; k++)
            s += p[sel[k]];
        for (size_t k = 0; k < K; k++) {
            ck_assert_int_eq(r.sel[t * K + k], sel[k]);
            ck_assert_int_eq(r.idx[t * K + k], sel[k]);
            ck_assert_double_eq_tol(r.gate[t * K + k], p[sel[k]] / s, 1e-6);
            ck_assert_float_eq(r.prio[t * K + k], r.p[t * E + sel[k]]);
        }
    }
    free(p);
    free(sel);
    moe_route_release(&r);
}

START_TEST(test_softmax_matches_reference)
{
    check_softmax_vs_ref(50, 7, 1, 0, 200);
    check_softmax_vs_ref(50, 7, 2, 0, 201);
    check_softmax_vs_ref(50, 7, 3, 1, 202);
    check_softmax_vs_ref(50, 7, 7, 0, 203);
    check_softmax_vs_ref(40, 300, 8, 1, 204);
    check_softmax_vs_ref(20, 64, 64, 1, 205);
}
END_TEST

// Switch (K = 1) and DeepSeekMoE (any K): the gate of a chosen expert is its
// raw probability, not renormalised over the chosen; at K = 1 the two agree.
START_TEST(test_raw_gate_is_p)
{
    size_t T = 60, E = 9;
    const struct { enum moe_router_type type; size_t K; } cases[] = {
        { MOE_ROUTER_SWITCH, 1 }, { MOE_ROUTER_DEEPSEEK, 1 }, { MOE_ROUTER_DEEPSEEK, 3 }
    };
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        size_t K = cases[ci].K;
        struct moe_router_cfg c = cfg_make(cases[ci].type, E, K);
        struct moe_route r;
        route_alloc(&r, &c, T);
        ck_assert_uint_eq(r.S, K);
        fill_n(r.z, T * E, 210 + (uint32_t)K, 1.5f);
        moe_router_forward(&r, &c, NULL, NULL, 1, NULL, 0, T);
        int32_t sel[3];
        double renorm_differs = 0.0;
        for (size_t t = 0; t < T; t++) {
            ref_topk(sel, r.p + t * E, NULL, E, K);
            double s = 0.0;
            for (size_t k = 0; k < K; k++)
                s += r.p[t * E + sel[k]];
            for (size_t k = 0; k < K; k++) {
                ck_assert_int_eq(r.sel[t * K + k], sel[k]);
                ck_assert_int_eq(r.idx[t * K + k], sel[k]);
                ck_assert_float_eq(r.gate[t * K + k], r.p[t * E + sel[k]]);
                ck_assert_float_eq(r.prio[t * K + k], r.p[t * E + sel[k]]);
                renorm_differs = fmax(renorm_differs, fabs(r.p[t * E + sel[k]] / s - r.gate[t * K + k]));
            }
        }
        ck_assert_double_gt(renorm_differs, 0.1); // the raw p, visibly not renormalised
        moe_route_release(&r);
    }
}
END_TEST

// Switch is top-1 whatever the config's K (the layer config refuses K != 1):
// one slot, one expert per token.
START_TEST(test_switch_is_top1)
{
    struct moe_router_cfg c = cfg_make(MOE_ROUTER_SWITCH, 8, 3);
    ck_assert_uint_eq(moe_router_info(MOE_ROUTER_SWITCH)->fixed_k, 1);
    ck_assert_uint_eq(moe_router_slots(&c), 1);
    ck_assert_double_eq(moe_router_experts_per_token(&c), 1.0);
    ck_assert_uint_eq(moe_router_info(MOE_ROUTER_DEEPSEEK)->fixed_k, 0);
    c.type = MOE_ROUTER_DEEPSEEK;
    ck_assert_uint_eq(moe_router_slots(&c), 3);
}
END_TEST

static void check_ec(size_t T, size_t E, double f, size_t C, uint32_t stream)
{
    struct moe_router_cfg c = cfg_make(MOE_ROUTER_EXPERT_CHOICE, E, 0);
    c.ec_factor = f;
    struct moe_route r;
    route_alloc(&r, &c, T);
    ck_assert_uint_eq(r.S, E);
    fill_n(r.z, T * E, stream, 1.0f);
    if (stream % 2) // ties across tokens
        for (size_t i = 0; i < T * E; i++)
            r.z[i] = roundf(r.z[i] * 2.0f) / 2.0f;
    moe_router_forward(&r, &c, NULL, NULL, 1, NULL, 0, T);
    for (size_t e = 0; e < E; e++) {
        size_t n = 0;
        for (size_t t = 0; t < T; t++) {
            size_t i = t * E + e;
            int32_t s = r.sel[i];
            ck_assert_msg(s == -1 || s == (int32_t)e, "expert-choice slot %zu of token %zu holds %d", e, t, s);
            ck_assert_int_eq(r.idx[i], s);
            ck_assert_float_eq(r.gate[i], s >= 0 ? r.p[i] : 0.0f);
            ck_assert_float_eq(r.prio[i], s >= 0 ? r.p[i] : 0.0f);
            n += s >= 0;
            if (s < 0)
                continue;
            // every taken token beats every token left out (larger p, ties to the lower token)
            for (size_t u = 0; u < T; u++)
                if (r.sel[u * E + e] < 0) {
                    float a = r.p[i], b = r.p[u * E + e];
                    ck_assert_msg(a > b || (a == b && t < u), "expert %zu took token %zu over %zu", e, t, u);
                }
        }
        ck_assert_msg(n == C, "T=%zu E=%zu f=%g: expert %zu took %zu tokens, quota %zu", T, E, f, e, n, C);
    }
    moe_route_release(&r);
}

START_TEST(test_expert_choice_quota)
{
    // the quotient is 11.000000000000002 in double: the quota must still be 11
    ck_assert_double_eq(ceil(1.1 * (double)100 / (double)10), 12.0);
    check_ec(100, 10, 1.1, 11, 300);
    check_ec(10, 4, 1.0, 3, 301);  // ceil(2.5)
    check_ec(16, 4, 1.0, 4, 302);
    check_ec(8, 4, 100.0, 8, 303); // clamped to T
    check_ec(7, 3, 2.0, 5, 304);   // ceil(4.67)
    check_ec(5, 8, 1.0, 1, 305);   // ceil(0.625)
    check_ec(12, 6, 0.5, 1, 306);
    check_ec(6, 3, 3.0, 6, 307);   // exactly T
}
END_TEST

// The router table: names in enum order agree with the config's choices, and
// the sizes the layers above take from it (slots, quota, buffer rows, experts
// per token) follow each router's convention.
START_TEST(test_router_table)
{
    char joined[256] = "";
    ck_assert_uint_eq(moe_router_count(), 7);
    for (size_t t = 0; t < moe_router_count(); t++) {
        const struct moe_router_info *ri = moe_router_info((enum moe_router_type)t);
        ck_assert_str_eq(ri->name, moe_router_name((enum moe_router_type)t));
        if (t)
            strcat(joined, "|");
        strcat(joined, ri->name);
        ck_assert_msg(!ri->fixed_k == !ri->k_rule, "%s: fixed_k and its message go together", ri->name);
        ck_assert_msg(ri->gate_weights || !ri->probs, "%s: probabilities need gate weights", ri->name);
    }
    ck_assert_str_eq(joined, MOE_ROUTER_CHOICES);

    // expert choice: quota C = min(T, ceil(f T / E)), rows E C, f experts per token
    struct moe_router_cfg c = cfg_make(MOE_ROUTER_EXPERT_CHOICE, 10, 2);
    c.ec_factor = 1.1;
    ck_assert_uint_eq(moe_router_quota(&c, 100), 11); // not 12: the quotient is 11.000000000000002
    ck_assert_uint_eq(moe_router_rows(&c, 100), 110);
    ck_assert_double_eq(moe_router_experts_per_token(&c), 1.1);
    c.ec_factor = 100.0;
    ck_assert_uint_eq(moe_router_quota(&c, 8), 8); // clamped to T
    ck_assert_uint_eq(moe_router_rows(&c, 8), 80);
    ck_assert_double_eq(moe_router_experts_per_token(&c), 10.0); // at most E
    // token choice: no quota, rows T K (fixed K for switch, hash and gshard)
    c = cfg_make(MOE_ROUTER_DEEPSEEK, 8, 3);
    ck_assert_uint_eq(moe_router_quota(&c, 100), 0);
    ck_assert_uint_eq(moe_router_rows(&c, 100), 300);
    ck_assert_double_eq(moe_router_experts_per_token(&c), 3.0);
    c.type = MOE_ROUTER_SWITCH;
    ck_assert_uint_eq(moe_router_rows(&c, 100), 100);
    ck_assert_double_eq(moe_router_experts_per_token(&c), 1.0);
    c.type = MOE_ROUTER_HASH;
    ck_assert_uint_eq(moe_router_rows(&c, 100), 100);
    ck_assert_double_eq(moe_router_experts_per_token(&c), 1.0);
    c.type = MOE_ROUTER_GSHARD;
    ck_assert_uint_eq(moe_router_rows(&c, 100), 200);
    ck_assert_uint_eq(moe_router_rows(&c, SIZE_MAX / 2 + 1), SIZE_MAX); // T * S overflows
    ck_assert(!moe_router_info(MOE_ROUTER_HASH)->gate_weights && moe_router_info(MOE_ROUTER_HASH)->token_table);
    ck_assert(moe_router_info(MOE_ROUTER_NOISY_TOPK)->noise_weights && moe_router_info(MOE_ROUTER_NOISY_TOPK)->zero_init);
    ck_assert(!moe_router_info(MOE_ROUTER_EXPERT_CHOICE)->balancing_loss);
}
END_TEST

START_TEST(test_noise_train_only)
{
    size_t T = 10, E = 6, K = 2;
    struct moe_router_cfg c = cfg_make(MOE_ROUTER_NOISY_TOPK, E, K);
    struct moe_route r;
    route_alloc(&r, &c, T);
    fill_n(r.z, T * E, 400, 1.0f);
    fill_u(r.u, T * E, 401, -1.0f, 1.0f);
    struct moe_rng rng = moe_rng_make(5, MOE_RNG_NOISE, 7);
    uint64_t base = 12345;

    // evaluation: no noise at all
    for (size_t i = 0; i < T * E; i++)
        r.eps[i] = r.h[i] = 42.0f;
    moe_router_forward(&r, &c, NULL, NULL, 0, &rng, base, T);
    for (size_t i = 0; i < T * E; i++) {
        ck_assert_float_eq(r.eps[i], 0.0f);
        ck_assert_float_eq(r.h[i], r.z[i]);
    }
    float p_eval[60];
    memcpy(p_eval, r.p, sizeof p_eval);
    int32_t sel[6];
    for (size_t t = 0; t < T; t++) {
        ref_topk(sel, r.z + t * E, NULL, E, K);
        for (size_t k = 0; k < K; k++)
            ck_assert_int_eq(r.sel[t * K + k], sel[k]);
    }

    // training: eps[t, e] = normal(rng, base + t*E + e), h = z + eps softplus(u)
    moe_router_forward(&r, &c, NULL, NULL, 1, &rng, base, T);
    size_t moved = 0, sel_differs = 0;
    for (size_t t = 0; t < T; t++) {
        for (size_t e = 0; e < E; e++) {
            size_t i = t * E + e;
            ck_assert_float_eq(r.eps[i], moe_rng_normal(&rng, base + i));
            double hv = r.z[i] + r.eps[i] * log1p(exp((double)r.u[i]));
            ck_assert_double_eq_tol(r.h[i], hv, 1e-6);
            moved += fabsf(r.h[i] - r.z[i]) > 1e-3f;
            ck_assert_float_eq(r.p[i], p_eval[i]); // p stays the clean softmax
        }
        ref_topk(sel, r.h + t * E, NULL, E, K);
        int32_t clean[6];
        ref_topk(clean, r.z + t * E, NULL, E, K);
        double m = fmax(r.h[t * E + sel[0]], r.h[t * E + sel[1]]);
        double s = exp(r.h[t * E + sel[0]] - m) + exp(r.h[t * E + sel[1]] - m);
        for (size_t k = 0; k < K; k++) {
            ck_assert_int_eq(r.sel[t * K + k], sel[k]);
            ck_assert_double_eq_tol(r.gate[t * K + k], exp(r.h[t * E + sel[k]] - m) / s, 1e-6);
            ck_assert_float_eq(r.prio[t * K + k], r.p[t * E + sel[k]]);
            sel_differs += sel[k] != clean[k];
        }
    }
    ck_assert_uint_gt(moved, T * E * 3 / 4);
    ck_assert_uint_gt(sel_differs, 0); // the noise changes some choices
    moe_route_release(&r);
}
END_TEST

START_TEST(test_determinism)
{
    size_t T = 20, E = 8, K = 2;
    struct moe_router_cfg c = cfg_make(MOE_ROUTER_NOISY_TOPK, E, K);
    struct moe_route a, b;
    route_alloc(&a, &c, T);
    route_alloc(&b, &c, T);
    fill_n(a.z, T * E, 410, 1.0f);
    fill_u(a.u, T * E, 411, -1.0f, 1.0f);
    memcpy(b.z, a.z, T * E * sizeof(float));
    memcpy(b.u, a.u, T * E * sizeof(float));
    struct moe_rng r1 = moe_rng_make(5, MOE_RNG_NOISE, 7), r2 = moe_rng_make(5, MOE_RNG_NOISE, 8);
    moe_router_forward(&a, &c, NULL, NULL, 1, &r1, 0, T);
    moe_router_forward(&b, &c, NULL, NULL, 1, &r1, 0, T);
    ck_assert_mem_eq(a.eps, b.eps, T * E * sizeof(float));
    ck_assert_mem_eq(a.h, b.h, T * E * sizeof(float));
    ck_assert_mem_eq(a.sel, b.sel, T * K * sizeof(int32_t));
    ck_assert_mem_eq(a.gate, b.gate, T * K * sizeof(float));
    // another stream (step), or another base (layer): other noise
    for (int pass = 0; pass < 2; pass++) {
        moe_router_forward(&b, &c, NULL, NULL, 1, pass ? &r1 : &r2, pass ? 1000 : 0, T);
        size_t diff = 0;
        for (size_t i = 0; i < T * E; i++)
            diff += a.eps[i] != b.eps[i];
        ck_assert_uint_gt(diff, T * E * 9 / 10);
    }

    // GShard's random policy: same rng, same decisions; another stream, others
    struct moe_router_cfg g = cfg_make(MOE_ROUTER_GSHARD, E, 2);
    g.second = MOE_SECOND_RANDOM;
    struct moe_route x, y;
    size_t TG = 400;
    route_alloc(&x, &g, TG);
    route_alloc(&y, &g, TG);
    fill_n(x.z, TG * E, 412, 1.0f);
    memcpy(y.z, x.z, TG * E * sizeof(float));
    moe_router_forward(&x, &g, NULL, NULL, 1, &r1, 0, TG);
    moe_router_forward(&y, &g, NULL, NULL, 1, &r1, 0, TG);
    ck_assert_mem_eq(x.idx, y.idx, TG * 2 * sizeof(int32_t));
    moe_router_forward(&y, &g, NULL, NULL, 1, &r2, 0, TG);
    ck_assert_int_ne(memcmp(x.idx, y.idx, TG * 2 * sizeof(int32_t)), 0);
    moe_route_release(&a);
    moe_route_release(&b);
    moe_route_release(&x);
    moe_route_release(&y);
}
END_TEST

// Every token has the same logits; returns the fraction of second slots dispatched.
static double gshard_fraction(const float *row, size_t E, size_t T, int train, double *ret_g2)
{
    struct moe_router_cfg c = cfg_make(MOE_ROUTER_GSHARD, E, 2), all = c;
    c.second = MOE_SECOND_RANDOM;
    struct moe_route r, ra;
    route_alloc(&r, &c, T);
    route_alloc(&ra, &all, T);
    for (size_t t = 0; t < T; t++) {
        memcpy(r.z + t * E, row, E * sizeof(float));
        memcpy(ra.z + t * E, row, E * sizeof(float));
    }
    struct moe_rng rng = moe_rng_make(11, MOE_RNG_DISPATCH, 4);
    uint64_t base = 777;
    moe_router_forward(&r, &c, NULL, NULL, train, &rng, base, T);
    moe_router_forward(&ra, &all, NULL, NULL, train, &rng, base, T);
    // the reference gates: g = top-2 of p renormalised, computed here
    double p[16];
    ref_softmax(p, NULL, row, E);
    int32_t sel[2];
    ref_topk(sel, ra.p, NULL, E, 2);
    double g1 = p[sel[0]] / (p[sel[0]] + p[sel[1]]), g2 = p[sel[1]] / (p[sel[0]] + p[sel[1]]);
    size_t sent = 0;
    for (size_t t = 0; t < T; t++) {
        ck_assert_int_eq(ra.idx[2 * t], sel[0]);
        ck_assert_int_eq(ra.idx[2 * t + 1], sel[1]);
        ck_assert_double_eq_tol(ra.gate[2 * t], g1, 1e-6);
        ck_assert_double_eq_tol(ra.gate[2 * t + 1], g2, 1e-6);
        // random policy: sel kept, g1 kept, slot 2 on iff 2 g2 > U_t (training)
        ck_assert_int_eq(r.sel[2 * t], sel[0]);
        ck_assert_int_eq(r.sel[2 * t + 1], sel[1]);
        ck_assert_int_eq(r.idx[2 * t], sel[0]);
        ck_assert_float_eq(r.gate[2 * t], ra.gate[2 * t]);
        int on = r.idx[2 * t + 1] >= 0;
        if (train)
            ck_assert_int_eq(on, 2.0f * ra.gate[2 * t + 1] > moe_rng_uniform(&rng, base + t));
        if (on) {
            ck_assert_int_eq(r.idx[2 * t + 1], sel[1]);
            ck_assert_float_eq(r.gate[2 * t + 1], ra.gate[2 * t + 1]);
        } else {
            ck_assert_float_eq(r.gate[2 * t + 1], 0.0f);
        }
        sent += on;
    }
    moe_route_release(&r);
    moe_route_release(&ra);
    *ret_g2 = g2;
    return (double)sent / (double)T;
}

START_TEST(test_gshard_random_policy)
{
    size_t T = 20000;
    const float rows[3][4] = { { 1.0f, 0.2f, -0.5f, -1.0f },  // g2 = 0.31
                               { -1.0f, 3.0f, 0.0f, -2.0f },  // g2 = 0.047
                               { 0.5f, -0.3f, 0.5f, 0.1f } }; // tie: g2 = 0.5, always sent
    for (int i = 0; i < 3; i++) {
        double g2;
        double frac = gshard_fraction(rows[i], 4, T, 1, &g2);
        double want = fmin(1.0, 2.0 * g2);
        double sd = sqrt(want * (1.0 - want) / (double)T);
        ck_assert_msg(fabs(frac - want) <= 5.0 * sd + 1e-9, "row %d: %.4f of second slots sent, expected %.4f", i,
                      frac, want);
        if (i < 2)
            ck_assert_double_lt(frac, 0.99); // the policy does skip
        ck_assert_double_eq(gshard_fraction(rows[i], 4, 500, 0, &g2), 1.0); // evaluation sends all
    }
}
END_TEST

START_TEST(test_ties)
{
    struct moe_route r;
    struct moe_router_cfg c;
    const float row[5] = { 1.0f, 3.0f, 3.0f, 2.0f, 3.0f };
    const int32_t want2[2] = { 1, 2 }, want3[3] = { 1, 2, 4 };
    enum moe_router_type types[4] = { MOE_ROUTER_SOFTMAX, MOE_ROUTER_SWITCH, MOE_ROUTER_DEEPSEEK,
                                      MOE_ROUTER_NOISY_TOPK };
    for (int ti = 0; ti < 4; ti++)
        for (size_t K = 1; K <= 3; K++) {
            if (moe_router_info(types[ti])->fixed_k && K != moe_router_info(types[ti])->fixed_k)
                continue; // switch: top-1 only
            c = cfg_make(types[ti], 5, K);
            route_alloc(&r, &c, 2);
            memcpy(r.z, row, sizeof row);
            for (size_t e = 0; e < 5; e++)
                r.z[5 + e] = 0.25f; // all equal
            if (r.u)
                memset(r.u, 0, 10 * sizeof(float));
            moe_router_forward(&r, &c, NULL, NULL, 0, NULL, 0, 2);
            for (size_t k = 0; k < K; k++) {
                ck_assert_int_eq(r.sel[k], K == 3 ? want3[k] : want2[k]);
                ck_assert_int_eq(r.sel[K + k], (int32_t)k);
            }
            moe_route_release(&r);
        }
    c = cfg_make(MOE_ROUTER_GSHARD, 5, 2);
    route_alloc(&r, &c, 1);
    memcpy(r.z, row, sizeof row);
    moe_router_forward(&r, &c, NULL, NULL, 0, NULL, 0, 1);
    ck_assert_int_eq(r.sel[0], 1);
    ck_assert_int_eq(r.sel[1], 2);
    moe_route_release(&r);
    // expert choice: identical tokens, each expert takes the lowest token indices
    c = cfg_make(MOE_ROUTER_EXPERT_CHOICE, 3, 0);
    route_alloc(&r, &c, 6);
    for (size_t t = 0; t < 6; t++)
        memcpy(r.z + t * 3, row, 3 * sizeof(float));
    moe_router_forward(&r, &c, NULL, NULL, 1, NULL, 0, 6);
    for (size_t t = 0; t < 6; t++)
        for (size_t e = 0; e < 3; e++)
            ck_assert_int_eq(r.sel[t * 3 + e], t < 2 ? (int32_t)e : -1);
    moe_route_release(&r);
}
END_TEST

START_TEST(test_hash_route)
{
    size_t T = 7, E = 5;
    struct moe_router_cfg c = cfg_make(MOE_ROUTER_HASH, E, 3); // K is 1 for hash whatever the config says
    struct moe_route r;
    route_alloc(&r, &c, T);
    ck_assert_uint_eq(r.S, 1);
    for (size_t i = 0; i < T * E; i++)
        r.z[i] = NAN; // the layer need not compute z: it must not be read
    const int32_t hx[7] = { 3, 0, 4, 4, 1, 2, 0 };
    moe_router_forward(&r, &c, NULL, hx, 1, NULL, 0, T);
    for (size_t t = 0; t < T; t++) {
        ck_assert_int_eq(r.sel[t], hx[t]);
        ck_assert_int_eq(r.idx[t], hx[t]);
        ck_assert_float_eq(r.gate[t], 1.0f);
        ck_assert_float_eq(r.prio[t], 1.0f);
    }
    float dz[35], dg[7];
    for (size_t i = 0; i < 35; i++)
        dz[i] = 0.5f;
    for (size_t t = 0; t < T; t++)
        dg[t] = 1.0f + (float)t;
    moe_router_backward(dz, NULL, dg, &r, &c);
    for (size_t i = 0; i < 35; i++)
        ck_assert_float_eq(dz[i], 0.5f);
    moe_route_release(&r);
}
END_TEST

// ---------------------------------------------------------------- hash tables

START_TEST(test_hash_table_random)
{
    enum { V = 10000, E = 8 };
    static int32_t a[V], b[V], other[V];
    moe_hash_table_random(a, V, E, 42);
    moe_hash_table_random(b, V, E, 42);
    moe_hash_table_random(other, V, E, 43);
    ck_assert_mem_eq(a, b, sizeof a);
    struct moe_rng rng = moe_rng_make(42, MOE_RNG_INIT, moe_hash32("hash_table"));
    size_t count[E] = { 0 }, diff = 0;
    for (size_t v = 0; v < V; v++) {
        ck_assert_int_ge(a[v], 0);
        ck_assert_int_lt(a[v], E);
        ck_assert_int_eq(a[v], (int32_t)moe_rng_below(&rng, v, E)); // the documented draw
        count[a[v]]++;
        diff += a[v] != other[v];
    }
    ck_assert_uint_gt(diff, V * 3 / 4); // ~7/8 differ
    // uniform: V/E = 1250 per expert, sd = sqrt(V (1/E)(1 - 1/E)) = 33
    for (size_t e = 0; e < E; e++)
        ck_assert_msg(labs((long)count[e] - V / E) < 170, "expert %zu has %zu keys", e, count[e]);
}
END_TEST

START_TEST(test_hash_table_balanced)
{
    // hand example: order 1(9) 3(9) 5(7) 0(5) 6(3) 2(2) 4(1) 7(0) 8(0); loads after each:
    // [9,0,0] [9,9,0] [9,9,7] [9,9,12] [12,9,12] [12,11,12] [12,12,12]; the unseen keys
    // 7, 8 are dealt round-robin: 7 -> 0, 8 -> 1
    const uint64_t freq[9] = { 5, 9, 2, 9, 1, 7, 3, 0, 0 };
    const int32_t want[9] = { 2, 0, 1, 1, 1, 2, 0, 0, 1 };
    int32_t table[9];
    moe_hash_table_balanced(table, freq, 9, 3);
    ck_assert_mem_eq(table, want, sizeof want);
    // E = 1: everything to expert 0
    moe_hash_table_balanced(table, freq, 9, 1);
    for (size_t v = 0; v < 9; v++)
        ck_assert_int_eq(table[v], 0);

    // a few seen keys and many unseen ones: the unseen spread evenly (counts differ by at most 1),
    // where the least-loaded rule would put them all on one expert
    {
        enum { VU = 103, EU = 4 };
        uint64_t fu[VU] = { 0 };
        fu[10] = 50, fu[20] = 30, fu[30] = 20; // 100 unseen keys: 25 per expert
        int32_t tu[VU];
        size_t count[EU] = { 0 };
        moe_hash_table_balanced(tu, fu, VU, EU);
        ck_assert_int_eq(tu[10], 0);
        ck_assert_int_eq(tu[20], 1);
        ck_assert_int_eq(tu[30], 2);
        for (size_t v = 0, k = 0; v < VU; v++)
            if (!fu[v]) {
                ck_assert_int_eq(tu[v], (int32_t)(k++ % EU));
                count[tu[v]]++;
            }
        for (size_t e = 0; e < EU; e++)
            ck_assert_msg(count[e] == 25, "expert %zu holds %zu unseen keys", e, count[e]);
    }

    // Zipf-like frequencies on shuffled keys: nearly perfect balance, where a random table is not
    enum { V = 5000, E = 8 };
    static uint64_t zf[V];
    static int32_t bal[V], rnd[V];
    uint32_t perm[V];
    struct moe_rng r = moe_rng_make(3, MOE_RNG_DATA, 500);
    moe_rng_permutation(&r, perm, V);
    for (size_t v = 0; v < V; v++)
        zf[perm[v]] = (uint64_t)(1e6 / (double)(v + 1));
    moe_hash_table_balanced(bal, zf, V, E);
    moe_hash_table_random(rnd, V, E, 7);
    double lb[E] = { 0 }, lr[E] = { 0 }, total = 0.0;
    for (size_t v = 0; v < V; v++) {
        ck_assert_int_ge(bal[v], 0);
        ck_assert_int_lt(bal[v], E);
        lb[bal[v]] += (double)zf[v];
        lr[rnd[v]] += (double)zf[v];
        total += (double)zf[v];
    }
    double mb = 0.0, mr = 0.0;
    for (size_t e = 0; e < E; e++) {
        mb = fmax(mb, lb[e]);
        mr = fmax(mr, lr[e]);
    }
    double mean = total / E;
    ck_assert_msg(mb / mean < 1.01, "balanced max/mean load %.4f", mb / mean);
    ck_assert_msg(mr / mean > 1.1, "random max/mean load %.4f (the example is too easy)", mr / mean);
}
END_TEST

static uint32_t fnv1a(const uint8_t *b, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 16777619u;
    }
    return h;
}

START_TEST(test_hash_key_row)
{
    size_t V = 1000003;
    ck_assert_uint_eq(moe_hash_key_row(NULL, 0, V), 2166136261u % V);
    // 1.0f and -2.5f are 0x3f800000 and 0xc0200000, bytes little-endian
    const float x[2] = { 1.0f, -2.5f };
    const uint8_t bytes[8] = { 0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x20, 0xc0 };
    ck_assert_uint_eq(moe_hash_key_row(x, 2, V), fnv1a(bytes, 8) % V);
    ck_assert_uint_eq(moe_hash_key_row(x, 2, 7), fnv1a(bytes, 8) % 7);

    enum { N = 50, D = 6 };
    float rows[N * D];
    fill_n(rows, N * D, 600, 1.0f);
    uint32_t k[N];
    for (size_t i = 0; i < N; i++) {
        k[i] = moe_hash_key_row(rows + i * D, D, V);
        ck_assert_uint_lt(k[i], V);
        float copy[D];
        memcpy(copy, rows + i * D, sizeof copy);
        ck_assert_uint_eq(moe_hash_key_row(copy, D, V), k[i]);
        for (size_t j = 0; j < i; j++)
            ck_assert_uint_ne(k[i], k[j]);
    }
    // one value changed: another key
    float y[D];
    memcpy(y, rows, sizeof y);
    y[D - 1] = nextafterf(y[D - 1], 10.0f);
    ck_assert_uint_ne(moe_hash_key_row(y, D, V), k[0]);
}
END_TEST

// ---------------------------------------------------------------- bias balancing

START_TEST(test_bias_update)
{
    struct moe_route r;
    struct moe_err err;
    ck_assert_int_eq(moe_route_alloc(&r, 4, 4, 2, 0, &err), 0);
    r.T = 4;
    // loads 3, 1, 2, 2: mean 2 -> signs -, +, 0 (tie), 0 (tie)
    const int32_t sel[8] = { 0, 1, 0, 2, 0, 3, 2, 3 };
    memcpy(r.sel, sel, sizeof sel);
    float bias[4] = { 0.1f, -0.2f, 0.3f, 0.0f };
    moe_router_bias_update(bias, &r, 0.01);
    ck_assert_float_eq(bias[0], 0.1f - 0.01f);
    ck_assert_float_eq(bias[1], -0.2f + 0.01f);
    ck_assert_float_eq(bias[2], 0.3f);
    ck_assert_float_eq(bias[3], 0.0f);
    moe_route_release(&r);

    // unused slots (-1) do not count: loads 2, 1, 0, mean 1 -> -, 0, +
    ck_assert_int_eq(moe_route_alloc(&r, 2, 3, 3, 0, &err), 0);
    r.T = 2;
    const int32_t sel2[6] = { 0, -1, -1, 0, 1, -1 };
    memcpy(r.sel, sel2, sizeof sel2);
    float b2[3] = { 0.0f, 0.0f, 0.0f };
    moe_router_bias_update(b2, &r, 0.5);
    ck_assert_float_eq(b2[0], -0.5f);
    ck_assert_float_eq(b2[1], 0.0f);
    ck_assert_float_eq(b2[2], 0.5f);
    moe_route_release(&r);

    // many experts (beyond one counting block): expert e gets e % 3 slots
    size_t E = 600;
    ck_assert_int_eq(moe_route_alloc(&r, 600, E, 1, 0, &err), 0);
    size_t t = 0;
    for (size_t e = 0; e < E; e++)
        for (size_t j = 0; j < e % 3; j++)
            r.sel[t++] = (int32_t)e;
    r.T = t; // mean load 1
    static float b3[600];
    memset(b3, 0, sizeof b3);
    moe_router_bias_update(b3, &r, 1.0);
    for (size_t e = 0; e < E; e++)
        ck_assert_float_eq(b3[e], e % 3 == 0 ? 1.0f : e % 3 == 1 ? 0.0f : -1.0f);
    moe_route_release(&r);
}
END_TEST

START_TEST(test_bias_selection)
{
    // p = softmax(2, 1.5, 0, -1) = (.558, .338, .0755, .0278); bias lifts expert 2 to .5755
    const float row[4] = { 2.0f, 1.5f, 0.0f, -1.0f };
    const float bias[4] = { 0.0f, 0.0f, 0.5f, 0.0f };
    double p[4];
    ref_softmax(p, NULL, row, 4);
    struct moe_route r;
    for (int balance = 0; balance < 2; balance++) {
        // SOFTMAX K=2: selection on p + bias (2 then 0), gate softmax over z of the chosen
        struct moe_router_cfg c = cfg_make(MOE_ROUTER_SOFTMAX, 4, 2);
        c.bias_balance = balance;
        route_alloc(&r, &c, 1);
        memcpy(r.z, row, sizeof row);
        moe_router_forward(&r, &c, bias, NULL, 1, NULL, 0, 1);
        if (balance) {
            ck_assert_int_eq(r.sel[0], 2);
            ck_assert_int_eq(r.sel[1], 0);
            ck_assert_double_eq_tol(r.gate[0], p[2] / (p[2] + p[0]), 1e-6);
            ck_assert_double_eq_tol(r.gate[1], p[0] / (p[2] + p[0]), 1e-6);
            ck_assert_float_eq(r.prio[0], r.p[2]);
        } else { // bias ignored without bias_balance
            ck_assert_int_eq(r.sel[0], 0);
            ck_assert_int_eq(r.sel[1], 1);
        }
        moe_router_forward(&r, &c, NULL, NULL, 1, NULL, 0, 1); // bias_balance with no bias: plain
        ck_assert_int_eq(r.sel[0], 0);
        ck_assert_int_eq(r.sel[1], 1);
        moe_route_release(&r);

        // SWITCH K=1: selection on p + bias, gate the raw p
        c = cfg_make(MOE_ROUTER_SWITCH, 4, 1);
        c.bias_balance = balance;
        route_alloc(&r, &c, 1);
        memcpy(r.z, row, sizeof row);
        moe_router_forward(&r, &c, bias, NULL, 1, NULL, 0, 1);
        ck_assert_int_eq(r.sel[0], balance ? 2 : 0);
        ck_assert_float_eq(r.gate[0], r.p[balance ? 2 : 0]);
        ck_assert_double_eq_tol(r.gate[0], p[balance ? 2 : 0], 1e-6);
        moe_route_release(&r);

        // DEEPSEEK K=2: selection on p + bias (2 then 0), gates the raw p
        c = cfg_make(MOE_ROUTER_DEEPSEEK, 4, 2);
        c.bias_balance = balance;
        route_alloc(&r, &c, 1);
        memcpy(r.z, row, sizeof row);
        moe_router_forward(&r, &c, bias, NULL, 1, NULL, 0, 1);
        ck_assert_int_eq(r.sel[0], balance ? 2 : 0);
        ck_assert_int_eq(r.sel[1], balance ? 0 : 1);
        for (size_t k = 0; k < 2; k++) {
            ck_assert_float_eq(r.gate[k], r.p[r.sel[k]]);
            ck_assert_double_eq_tol(r.gate[k], p[r.sel[k]], 1e-6);
        }
        moe_route_release(&r);
    }
    // routers without bias balancing ignore the bias
    struct moe_router_cfg g = cfg_make(MOE_ROUTER_GSHARD, 4, 2);
    g.bias_balance = 1;
    route_alloc(&r, &g, 1);
    memcpy(r.z, row, sizeof row);
    moe_router_forward(&r, &g, bias, NULL, 1, NULL, 0, 1);
    ck_assert_int_eq(r.sel[0], 0);
    ck_assert_int_eq(r.sel[1], 1);
    moe_route_release(&r);
}
END_TEST

int main(void)
{
    if (moe_test_init_blas(1))
        return 1;
    int verbose = getenv("MOE_GRAD_VERBOSE") != NULL;
    Suite *s = suite_create("router");
    TCase *tc = tcase_create("router");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_grad_softmax);
    tcase_add_test(tc, test_grad_noisy);
    tcase_add_test(tc, test_grad_switch);
    tcase_add_test(tc, test_grad_deepseek);
    tcase_add_test(tc, test_grad_gshard);
    tcase_add_test(tc, test_grad_expert_choice);
    tcase_add_test(tc, test_names_slots_alloc);
    tcase_add_test(tc, test_softmax_matches_reference);
    tcase_add_test(tc, test_raw_gate_is_p);
    tcase_add_test(tc, test_switch_is_top1);
    tcase_add_test(tc, test_expert_choice_quota);
    tcase_add_test(tc, test_router_table);
    tcase_add_test(tc, test_noise_train_only);
    tcase_add_test(tc, test_determinism);
    tcase_add_test(tc, test_gshard_random_policy);
    tcase_add_test(tc, test_ties);
    tcase_add_test(tc, test_hash_route);
    tcase_add_test(tc, test_hash_table_random);
    tcase_add_test(tc, test_hash_table_balanced);
    tcase_add_test(tc, test_hash_key_row);
    tcase_add_test(tc, test_bias_update);
    tcase_add_test(tc, test_bias_selection);
    suite_add_tcase(s, tc);
    int failed = moe_test_run(s);
    if (verbose) // grad_worst is only seen here when the tests run in this process (CK_FORK=no)
        printf("worst |analytic - numeric| / max(1, |numeric|) = %.3g (tolerance %.1g)\n", grad_worst, GRAD_TOL);
    return failed;
}
