// test_cuda_ops.c: the CUDA launches of lib/cuda/ops.cu against the CPU
// library, on a GPU: the router (every router the kernels cover, training and
// evaluation; expert choice in every ec_eval mode, and hash routing), the
// capacity plan with both drop policies, gather and combine, the balancing and
// z losses, Shazeer's importance and load losses, the embedding forward and backward, LayerNorm and RMSNorm forward
// and backward, cross-entropy, the ReLU/GELU/SiLU activations, and the
// GD/SGD/AdamW update, causal self-attention forward and backward (with
// probability dropout too), dropout, the linear bias, the gradient norm's sum of
// squares, the distillation losses (KD, symmetric KL) and squared error, and
// blas.h's GEMM and grouped GEMM.
// Routing decisions must be identical wherever no two scores are within a
// tolerance of a tie (exact ties between identical logit rows included: the
// index decides on both sides); hash routing, the capacity plan and the
// embedding (the same float adds in the same order) are identical; so are the
// combine and its gate gradient, the balancing and z-loss gradients, the norms
// and the optimizers: only additions, multiplications, divisions and square
// roots, all correctly rounded on both sides, and nvcc is told not to fuse
// (--fmad=false). Values through the device's expf, exp, log or tanhf (the
// softmax, cross-entropy, GELU, SiLU) agree within the stated tolerances.
// Every comparison notes on stdout how many floats differ at all. Exit 77
// (meson: skipped) where no GPU is usable.
// Built with -DMOE_TEST_CUDA_HOST and tests/cuda_host.c (test_cuda_ops_host),
// the same tests run on the CUDA ops' host emulation, without the probe.
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef MOE_TEST_CUDA_HOST
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
#endif

#include "core/gemm.h"
#include "core/params.h"
#include "core/rng.h"
#include "cuda/blas.h"
#include "cuda/kernels/attention.h"
#include "cuda/kernels/loss.h"
#include "cuda/kernels/optim.h"
#include "cuda/ops.h"
#include "cuda_test.h"
#include "moe/aux_loss.h"
#include "moe/dispatch.h"
#include "moe/experts.h"
#include "moe/router.h"
#include "nn/nn.h"
#include "train/train.h"

static void fill(float *x, size_t n, uint32_t stream, float lo, float hi)
{
    struct moe_rng r = moe_rng_make(7, MOE_RNG_DATA, stream);
    moe_rng_fill_uniform(&r, x, n, lo, hi);
}

static double rel(float a, float b) { return fabs((double)a - b) / (fabs((double)b) > 1e-30 ? fabs((double)b) : 1e-30); }

// How many of n floats differ in any bit, and the largest relative
// difference, as a note on stdout (what the device run measured).
static void note(const float *a, const float *b, size_t n, const char *what)
{
    size_t diff = 0, at = 0;
    double worst = 0.0;
    for (size_t i = 0; i < n; i++) {
        diff += memcmp(a + i, b + i, sizeof *a) != 0;
        double d = fabs((double)a[i] - b[i]) / fmax(fabs((double)b[i]), 1e-30);
        if (d > worst)
            worst = d, at = i;
    }
    printf("# %-34s %8zu of %8zu differ; largest relative difference %.3g (%.9g vs %.9g)\n", what, diff, n, worst,
           n ? a[at] : 0.0, n ? b[at] : 0.0);
}

// |a - b| / scale; 0 where a == b (equal infinities too) or both are NaN,
// infinite where only one is NaN (fmax drops a NaN: without this a kernel's
// NaN against a finite reference would pass).
static double diff_over(double a, double b, double scale)
{
    if (isnan(a) || isnan(b))
        return isnan(a) && isnan(b) ? 0.0 : INFINITY;
    return a == b ? 0.0 : fabs(a - b) / scale;
}

static void close_floats(const float *a, const float *b, size_t n, double tol, const char *what)
{
    double worst = 0.0;
    for (size_t i = 0; i < n; i++)
        worst = fmax(worst, diff_over(a[i], b[i], fmax(fabs((double)b[i]), 1e-6)));
    note(a, b, n, what);
    EXPECT(worst <= tol, "%s: largest relative difference %.3g > %.3g", what, worst, tol);
}

// Values made of terms that can cancel (GELU's 0.5 x + 0.5 x tanh, SiLU's
// backward 1 + x (1 - s), the cross-entropy gradient added to what was there):
// each side's last-bit error of a term stays in the result however small the
// result is, so the error is measured against the terms' magnitude m:
// |a - b| <= tol (|b| + m).
static void close_terms(const float *a, const float *b, const float *m, size_t n, double tol, const char *what)
{
    double worst = 0.0;
    for (size_t i = 0; i < n; i++)
        worst = fmax(worst, diff_over(a[i], b[i], fmax(fabs((double)b[i]) + fabs((double)m[i]), 1e-30)));
    note(a, b, n, what);
    EXPECT(worst <= tol, "%s: largest difference %.3g of the terms' magnitude > %.3g", what, worst, tol);
}

// Whether token t's selection could flip on a near-tie: two of its keys within tol.
static int near_tie(const float *key, size_t E, double tol)
{
    for (size_t a = 0; a < E; a++)
        for (size_t b = a + 1; b < E; b++)
            if (rel(key[a], key[b]) < tol)
                return 1;
    return 0;
}

static void test_route(void)
{
    static const struct {
        enum moe_router_type type;
        size_t E, K;
        int train;
    } cases[] = {
        { MOE_ROUTER_SOFTMAX, 8, 2, 1 },  { MOE_ROUTER_SWITCH, 64, 1, 1 },     { MOE_ROUTER_DEEPSEEK, 64, 6, 1 },
        { MOE_ROUTER_GSHARD, 8, 2, 1 },   { MOE_ROUTER_NOISY_TOPK, 16, 4, 1 }, { MOE_ROUTER_NOISY_TOPK, 16, 4, 0 },
    };
    const size_t T = 4099;
    struct moe_err err;
    for (size_t ci = 0; ci < sizeof cases / sizeof *cases; ci++) {
        struct moe_router_cfg c = { cases[ci].type, cases[ci].E, cases[ci].K, MOE_SECOND_RANDOM, 0.0, 0, MOE_EC_EVAL_FULL, 0 };
        size_t E = c.E, S = moe_router_slots(&c), TE = T * E, TS = T * S;
        int noisy = c.type == MOE_ROUTER_NOISY_TOPK, train = cases[ci].train;
        struct moe_route r;
        if (moe_route_alloc(&r, T, E, S, noisy, &err))
            die(&err);
        fill(r.z, TE, (uint32_t)ci, -3.0f, 3.0f);
        if (noisy)
            fill(r.u, TE, 50 + (uint32_t)ci, -3.0f, 3.0f);
        struct moe_rng rng = moe_rng_make(11, MOE_RNG_NOISE, 3);
        uint64_t base = (uint64_t)1 << 40;
        moe_router_forward(&r, &c, NULL, NULL, train, &rng, base, T);
        struct moe_cuda_route a = { (int)T, (int)E, (int)S, c.type == MOE_ROUTER_SWITCH || c.type == MOE_ROUTER_DEEPSEEK,
                                    noisy, c.type == MOE_ROUTER_GSHARD, train, rng.seed, rng.purpose, rng.stream,
                                    base };
        float *dz = dev(r.z, TE * 4), *du = noisy ? dev(r.u, TE * 4) : NULL;
        float *dp = dev(NULL, TE * 4), *dl = dev(NULL, T * 4), *dh = dev(NULL, TE * 4), *de = dev(NULL, TE * 4);
        int32_t *dsel = dev(NULL, TS * 4), *didx = dev(NULL, TS * 4);
        float *dg = dev(NULL, TS * 4), *dpr = dev(NULL, TS * 4);
        EXPECT(moe_cuda_route_forward(&a, dp, dl, dh, de, dsel, didx, dg, dpr, dz, du, NULL, &err) == 0, "%s",
               err.msg);
        float *p = malloc(TE * 4), *gate = malloc(TS * 4), *h = malloc(TE * 4);
        int32_t *sel = malloc(TS * 4), *idx = malloc(TS * 4);
        host(p, dp, TE * 4), host(gate, dg, TS * 4), host(sel, dsel, TS * 4), host(idx, didx, TS * 4);
        close_floats(p, r.p, TE, 1e-5, "route p");
        if (noisy) {
            host(h, dh, TE * 4);
            close_floats(h, r.h, TE, 1e-5, "route h");
        }
        size_t compared = 0;
        for (size_t t = 0; t < T; t++) {
            if (near_tie((noisy ? r.h : r.p) + t * E, E, 1e-4))
                continue;
            compared++;
            for (size_t k = 0; k < S; k++) {
                EXPECT(sel[t * S + k] == r.sel[t * S + k] && idx[t * S + k] == r.idx[t * S + k],
                       "router %zu token %zu slot %zu: device %d/%d, host %d/%d", ci, t, k, sel[t * S + k],
                       idx[t * S + k], r.sel[t * S + k], r.idx[t * S + k]);
                EXPECT(fabs((double)gate[t * S + k] - r.gate[t * S + k]) <= 1e-5, "gate %zu/%zu", t, k);
            }
        }
        EXPECT(compared > T / 2, "router %zu: only %zu of %zu tokens away from ties", ci, compared, T);
        // the backward, from the device's own forward
        float *dgr = malloc(TS * 4), *dzc = calloc(TE, 4), *duc = calloc(TE, 4), *dzg = malloc(TE * 4);
        fill(dgr, TS, 60 + (uint32_t)ci, -1.0f, 1.0f);
        float *ddgr = dev(dgr, TS * 4), *ddz = dev(dzc, TE * 4), *ddu = dev(duc, TE * 4); // zeros
        moe_router_backward(dzc, noisy ? duc : NULL, dgr, &r, &c);
        EXPECT(moe_cuda_route_backward(&a, ddz, ddu, ddgr, dsel, didx, dp, dz, dh, de, du, &err) == 0, "%s", err.msg);
        host(dzg, ddz, TE * 4);
        size_t bad = 0;
        for (size_t t = 0; t < T; t++) // tokens whose selection matched
            if (memcmp(sel + t * S, r.sel + t * S, S * 4) == 0 && memcmp(idx + t * S, r.idx + t * S, S * 4) == 0)
                for (size_t e = 0; e < E; e++)
                    bad += fabs((double)dzg[t * E + e] - dzc[t * E + e]) > 1e-5 * fmax(1.0, fabs(dzc[t * E + e]));
        EXPECT(bad == 0, "router %zu backward: %zu values differ", ci, bad);
        moe_cuda_free(ddgr), moe_cuda_free(ddz), moe_cuda_free(ddu);
        free(dgr), free(dzc), free(duc), free(dzg);
        void *bufs[] = { dz, du, dp, dl, dh, de, dsel, didx, dg, dpr };
        for (size_t i = 0; i < 10; i++)
            moe_cuda_free(bufs[i]);
        free(p), free(gate), free(h), free(sel), free(idx);
        moe_route_release(&r);
    }
}

static void same_ints(const int32_t *a, const int32_t *b, size_t n, const char *what)
{
    size_t bad = 0;
    for (size_t i = 0; i < n; i++)
        bad += a[i] != b[i];
    EXPECT(bad == 0, "%s: %zu of %zu differ", what, bad, n);
}

// Whether expert e's decision on token t could flip on a near tie: e keeps t
// iff fewer than C of the candidates w L + q (w < B, lo <= q <= hi) beat it
// (larger p, ties to the lower token). A candidate within tol of p[t, e] may
// beat t on the device or not, unless its logits are t's own: then its p is
// the same there too, and the index decides on both sides.
static int ec_near_tie(const float *p, const float *z, size_t E, size_t e, size_t t, size_t B, size_t L, size_t lo,
                       size_t hi, size_t C, double tol)
{
    size_t beat = 0, unsure = 0;
    float pt = p[t * E + e];
    for (size_t w = 0; w < B; w++)
        for (size_t q = lo; q <= hi; q++) {
            size_t u = w * L + q;
            float pu = p[u * E + e];
            if (u == t)
                continue;
            if (rel(pu, pt) >= tol)
                beat += pu > pt;
            else if (memcmp(z + u * E, z + t * E, E * sizeof(float)) == 0)
                beat += u < t;
            else
                unsure++;
        }
    return beat < C && beat + unsure >= C;
}

// Expert choice, every ec_eval mode (training passes full), against
// moe_router_forward / moe_router_backward. Every third token repeats an
// earlier token's logits: exact ties in every column, decided by the index.
static void test_route_ec(void)
{
    static const struct {
        size_t T, E;
        double f;
        int train;
        enum moe_ec_eval eval;
        size_t seq;
    } cases[] = {
        { 2053, 16, 1.0, 1, MOE_EC_EVAL_FULL, 0 },     { 1031, 64, 0.5, 1, MOE_EC_EVAL_FULL, 0 },
        { 2048, 8, 1.25, 0, MOE_EC_EVAL_FULL, 64 },    { 2048, 16, 2.0, 0, MOE_EC_EVAL_PREFIX, 64 },
        { 2053, 6, 1.5, 0, MOE_EC_EVAL_PREFIX, 0 },    { 2048, 16, 2.0, 0, MOE_EC_EVAL_POSITION, 32 },
        { 2040, 10, 1.0, 0, MOE_EC_EVAL_POSITION, 24 }, { 2053, 16, 2.0, 0, MOE_EC_EVAL_TOPK, 0 },
        { 2053, 8, 0.2, 0, MOE_EC_EVAL_TOPK, 0 },      { 2053, 4, 9.0, 0, MOE_EC_EVAL_TOPK, 0 },
    };
    struct moe_err err;
    for (size_t ci = 0; ci < sizeof cases / sizeof *cases; ci++) {
        size_t T = cases[ci].T, E = cases[ci].E, TE = T * E;
        int train = cases[ci].train;
        struct moe_router_cfg c = { MOE_ROUTER_EXPERT_CHOICE, E, 1, MOE_SECOND_RANDOM, cases[ci].f, 0,
                                    cases[ci].eval, cases[ci].seq };
        enum moe_ec_eval mode = train ? MOE_EC_EVAL_FULL : c.ec_eval;
        struct moe_route r;
        if (moe_route_alloc(&r, T, E, E, 0, &err))
            die(&err);
        fill(r.z, TE, 100 + (uint32_t)ci, -3.0f, 3.0f);
        for (size_t t = 0; t < T; t++)
            if (t % 3 == 2)
                memcpy(r.z + t * E, r.z + (t / 2) * E, E * sizeof(float));
        moe_router_forward(&r, &c, NULL, NULL, train, NULL, 0, T);
        struct moe_cuda_route_ec a = { (int)T, (int)E, c.ec_factor, (int)mode, (int)c.seq };
        float *dz = dev(r.z, TE * 4), *dp = dev(NULL, TE * 4), *dl = dev(NULL, T * 4);
        int32_t *dsel = dev(NULL, TE * 4), *didx = dev(NULL, TE * 4);
        float *dg = dev(NULL, TE * 4), *dpr = dev(NULL, TE * 4);
        EXPECT(moe_cuda_route_ec_forward(&a, dp, dl, dsel, didx, dg, dpr, dz, &err) == 0, "%s", err.msg);
        float *p = malloc(TE * 4), *lse = malloc(T * 4), *gate = malloc(TE * 4), *prio = malloc(TE * 4);
        int32_t *sel = malloc(TE * 4), *idx = malloc(TE * 4);
        host(p, dp, TE * 4), host(lse, dl, T * 4), host(gate, dg, TE * 4), host(prio, dpr, TE * 4);
        host(sel, dsel, TE * 4), host(idx, didx, TE * 4);
        close_floats(p, r.p, TE, 1e-5, "expert choice p");
        size_t bad = 0;
        for (size_t t = 0; t < T; t++)
            bad += fabs((double)lse[t] - r.lse[t]) > 1e-5 * fmax(1.0, fabs(r.lse[t]));
        EXPECT(bad == 0, "expert choice %zu lse: %zu values differ", ci, bad);
        // the pairs (or for topk the tokens) whose decision no near tie could flip
        size_t compared = 0, L = mode == MOE_EC_EVAL_FULL ? T : c.seq > 1 ? c.seq : 1, B = T / L;
        for (size_t t = 0; t < T; t++) {
            if (mode == MOE_EC_EVAL_TOPK && near_tie(r.p + t * E, E, 1e-4))
                continue;
            for (size_t e = 0; e < E; e++) {
                size_t i = t * E + e, s = t % L, lo = mode == MOE_EC_EVAL_POSITION ? s : 0;
                size_t hi = mode == MOE_EC_EVAL_FULL ? L - 1 : s;
                if (mode != MOE_EC_EVAL_TOPK &&
                    ec_near_tie(r.p, r.z, E, e, t, B, L, lo, hi, moe_router_quota(&c, B * (hi - lo + 1)), 1e-4))
                    continue;
                compared++;
                EXPECT(sel[i] == r.sel[i] && idx[i] == r.idx[i],
                       "expert choice %zu token %zu slot %zu: device %d/%d, host %d/%d", ci, t, e, sel[i], idx[i],
                       r.sel[i], r.idx[i]);
                EXPECT(fabs((double)gate[i] - r.gate[i]) <= 1e-5 && fabs((double)prio[i] - r.prio[i]) <= 1e-5,
                       "gate/prio %zu/%zu", t, e);
            }
        }
        EXPECT(compared > TE / 2, "expert choice %zu: only %zu of %zu slots away from ties", ci, compared, TE);
        if (mode == MOE_EC_EVAL_FULL) // every expert takes exactly its quota, ties or not
            for (size_t e = 0; e < E; e++) {
                size_t n = 0;
                for (size_t t = 0; t < T; t++)
                    n += sel[t * E + e] >= 0;
                EXPECT(n == moe_router_quota(&c, T), "expert choice %zu expert %zu: %zu tokens, quota %zu", ci, e, n,
                       moe_router_quota(&c, T));
            }
        // the backward, from the device's own forward
        float *dgr = malloc(TE * 4), *dzc = calloc(TE, 4), *dzg = malloc(TE * 4);
        fill(dgr, TE, 110 + (uint32_t)ci, -1.0f, 1.0f);
        float *ddgr = dev(dgr, TE * 4), *ddz = dev(dzc, TE * 4); // zeros
        moe_router_backward(dzc, NULL, dgr, &r, &c);
        EXPECT(moe_cuda_route_ec_backward((int)T, (int)E, ddz, ddgr, dsel, didx, dp, &err) == 0, "%s", err.msg);
        host(dzg, ddz, TE * 4);
        bad = 0;
        for (size_t t = 0; t < T; t++) // tokens whose selection matched
            if (memcmp(sel + t * E, r.sel + t * E, E * 4) == 0 && memcmp(idx + t * E, r.idx + t * E, E * 4) == 0)
                for (size_t e = 0; e < E; e++)
                    bad += fabs((double)dzg[t * E + e] - dzc[t * E + e]) > 1e-5 * fmax(1.0, fabs(dzc[t * E + e]));
        EXPECT(bad == 0, "expert choice %zu backward: %zu values differ", ci, bad);
        moe_cuda_free(ddgr), moe_cuda_free(ddz);
        free(dgr), free(dzc), free(dzg);
        void *bufs[] = { dz, dp, dl, dsel, didx, dg, dpr };
        for (size_t i = 0; i < 7; i++)
            moe_cuda_free(bufs[i]);
        free(p), free(lse), free(gate), free(prio), free(sel), free(idx);
        moe_route_release(&r);
    }
}

// Expert choice in training over equal scores: zero logits give every token p
// = 1/E exactly on both sides (exp(0) = 1, one correctly rounded division), so
// only the token index decides, and the radix selection must run all its
// passes down to the exact key: the device's choice is the CPU's, no near tie
// excused.
static void test_route_ec_ties(void)
{
    static const size_t Ts[] = { 3001, 4096 }, Es[] = { 6, 8 };
    static const double fs[] = { 1.0, 0.37 };
    struct moe_err err;
    for (size_t ci = 0; ci < 2; ci++) {
        size_t T = Ts[ci], E = Es[ci], TE = T * E;
        struct moe_router_cfg c = { MOE_ROUTER_EXPERT_CHOICE, E, 1, MOE_SECOND_RANDOM, fs[ci], 0, MOE_EC_EVAL_FULL, 0 };
        struct moe_route r;
        if (moe_route_alloc(&r, T, E, E, 0, &err))
            die(&err);
        memset(r.z, 0, TE * 4);
        moe_router_forward(&r, &c, NULL, NULL, 1, NULL, 0, T);
        struct moe_cuda_route_ec a = { (int)T, (int)E, c.ec_factor, 0, 0 };
        float *dz = dev(r.z, TE * 4), *dp = dev(NULL, TE * 4), *dl = dev(NULL, T * 4);
        float *dg = dev(NULL, TE * 4), *dpr = dev(NULL, TE * 4);
        int32_t *dsel = dev(NULL, TE * 4), *didx = dev(NULL, TE * 4);
        EXPECT(moe_cuda_route_ec_forward(&a, dp, dl, dsel, didx, dg, dpr, dz, &err) == 0, "%s", err.msg);
        int32_t *sel = malloc(TE * 4);
        host(sel, dsel, TE * 4);
        size_t bad = 0;
        for (size_t i = 0; i < TE; i++)
            bad += sel[i] != r.sel[i];
        EXPECT(bad == 0, "expert choice over equal scores, T %zu E %zu: %zu slots differ from the CPU's", T, E, bad);
        void *bufs[] = { dz, dp, dl, dsel, didx, dg, dpr };
        for (size_t i = 0; i < 7; i++)
            moe_cuda_free(bufs[i]);
        free(sel);
        moe_route_release(&r);
    }
}

// Hash routing: exact (no arithmetic), p and lse zeroed over what was there;
// an expert outside 0 .. E - 1 (which the CPU asserts against) is dropped.
static void test_route_hash(void)
{
    static const size_t Es[] = { 1, 4, 64 };
    const size_t T = 4099;
    struct moe_err err;
    for (size_t ei = 0; ei < 3; ei++) {
        size_t E = Es[ei], TE = T * E;
        struct moe_router_cfg c = { MOE_ROUTER_HASH, E, 1, MOE_SECOND_RANDOM, 0.0, 0, MOE_EC_EVAL_FULL, 0 };
        struct moe_route r;
        if (moe_route_alloc(&r, T, E, moe_router_slots(&c), 0, &err))
            die(&err);
        int32_t *hx = malloc(T * 4), *sel = malloc(T * 4), *idx = malloc(T * 4);
        float *p = malloc(TE * 4), *lse = malloc(T * 4), *gate = malloc(T * 4), *prio = malloc(T * 4);
        for (size_t t = 0; t < T; t++)
            hx[t] = (int32_t)((t * 7 + ei) % E);
        fill(p, TE, 120 + (uint32_t)ei, -1.0f, 1.0f), fill(lse, T, 130 + (uint32_t)ei, -1.0f, 1.0f);
        moe_router_forward(&r, &c, NULL, hx, 1, NULL, 0, T);
        float *dp = dev(p, TE * 4), *dl = dev(lse, T * 4), *dg = dev(NULL, T * 4), *dpr = dev(NULL, T * 4);
        int32_t *dhx = dev(hx, T * 4), *dsel = dev(NULL, T * 4), *didx = dev(NULL, T * 4);
        EXPECT(moe_cuda_route_hash_forward((int)T, (int)E, dp, dl, dsel, didx, dg, dpr, dhx, &err) == 0, "%s",
               err.msg);
        host(p, dp, TE * 4), host(lse, dl, T * 4), host(gate, dg, T * 4), host(prio, dpr, T * 4);
        host(sel, dsel, T * 4), host(idx, didx, T * 4);
        EXPECT(memcmp(p, r.p, TE * 4) == 0 && memcmp(lse, r.lse, T * 4) == 0, "hash %zu: p or lse not zeroed", E);
        same_ints(sel, r.sel, T, "hash sel");
        same_ints(idx, r.idx, T, "hash idx");
        EXPECT(memcmp(gate, r.gate, T * 4) == 0 && memcmp(prio, r.prio, T * 4) == 0, "hash %zu: gate or prio", E);
        hx[0] = -1, hx[T / 2] = (int32_t)E, hx[T - 1] = (int32_t)E + 1000;
        EXPECT(moe_cuda_to_device(dhx, hx, T * 4, &err) == 0, "%s", err.msg);
        EXPECT(moe_cuda_route_hash_forward((int)T, (int)E, dp, dl, dsel, didx, dg, dpr, dhx, &err) == 0, "%s",
               err.msg);
        host(gate, dg, T * 4), host(prio, dpr, T * 4), host(sel, dsel, T * 4), host(idx, didx, T * 4);
        size_t bad = 0;
        for (size_t t = 0; t < T; t++) {
            int ok = hx[t] >= 0 && hx[t] < (int32_t)E;
            bad += sel[t] != (ok ? hx[t] : -1) || idx[t] != sel[t] || gate[t] != (ok ? 1.0f : 0.0f) ||
                   prio[t] != gate[t];
        }
        EXPECT(bad == 0, "hash %zu, experts out of range: %zu tokens wrong", E, bad);
        void *bufs[] = { dp, dl, dg, dpr, dhx, dsel, didx };
        for (size_t i = 0; i < 7; i++)
            moe_cuda_free(bufs[i]);
        free(hx), free(sel), free(idx), free(p), free(lse), free(gate), free(prio);
        moe_route_release(&r);
    }
}

// Bias balancing's update: integer counts and one float addition per
// expert, so exact; E past a block of threads, dropped slots, repeated steps.
static void test_bias_update(void)
{
    static const size_t Es[] = { 1, 8, 130 };
    const size_t T = 4099, S = 2;
    struct moe_err err;
    for (size_t ei = 0; ei < 3; ei++) {
        size_t E = Es[ei];
        struct moe_route r;
        if (moe_route_alloc(&r, T, E, S, 0, &err))
            die(&err);
        r.T = T;
        float *b = malloc(E * 4), *b2 = malloc(E * 4);
        fill(b, E, 140 + (uint32_t)ei, -0.5f, 0.5f);
        float *db = dev(b, E * 4);
        int32_t *dsel = dev(NULL, T * S * 4);
        for (int round = 0; round < 3; round++) {
            for (size_t i = 0; i < T * S; i++)
                r.sel[i] = i % 13 == (size_t)round ? -1 : (int32_t)((i * i + (size_t)round) % E % (1 + i % E));
            moe_router_bias_update(b, &r, 0.003);
            EXPECT(moe_cuda_to_device(dsel, r.sel, T * S * 4, &err) == 0 &&
                       moe_cuda_bias_update(db, dsel, T * S, E, 0.003, &err) == 0, "%s", err.msg);
        }
        host(b2, db, E * 4);
        EXPECT(memcmp(b, b2, E * 4) == 0, "bias update, E %zu: the biases differ from the CPU's", E);
        moe_cuda_free(db), moe_cuda_free(dsel);
        free(b), free(b2);
        moe_route_release(&r);
    }
}

// T tokens of width D: (20000, 96) for the plan at scale, (317, 300) for the
// combine backward's column chunks (two full, one partial) and a short last
// tile of rows.
static void test_dispatch(size_t T, size_t D)
{
    const size_t S = 2, E = 64, TS = T * S;
    struct moe_err err;
    int32_t *idx = malloc(TS * 4);
    float *prio = malloc(TS * 4);
    struct moe_rng r = moe_rng_make(5, MOE_RNG_DATA, 77);
    for (size_t i = 0; i < TS; i++) {
        idx[i] = (int32_t)((moe_rng_below(&r, i / S, (uint32_t)E) + i % S) % E);
        if (i % S && moe_rng_below(&r, TS + i, 5) == 0)
            idx[i] = -1;
        prio[i] = (float)moe_rng_below(&r, 2 * TS + i, 50) / 64.0f; // ties
        if (moe_rng_below(&r, 3 * TS + i, 97) == 0) // a router that overflowed: NaN as -inf, then by token
            prio[i] = NAN;
    }
    float *x = malloc(T * D * 4), *gate = malloc(TS * 4), *yd = malloc(TS * D * 4), *out = malloc(T * D * 4);
    fill(x, T * D, 80, -1.0f, 1.0f), fill(gate, TS, 81, 0.0f, 1.0f), fill(yd, TS * D, 82, -1.0f, 1.0f);
    int32_t *didx = dev(idx, TS * 4);
    float *dprio = dev(prio, TS * 4), *dx = dev(x, T * D * 4), *dgate = dev(gate, TS * 4), *dyd = dev(yd, TS * D * 4);
    float *dxd = dev(NULL, TS * D * 4), *dout = dev(NULL, T * D * 4);
    struct moe_cuda_plan p = { dev(NULL, TS * 4), dev(NULL, TS * 4), dev(NULL, TS * 4), dev(NULL, (E + 1) * 8),
                               dev(NULL, E * 8), dev(NULL, E * 8), dev(NULL, TS), dev(NULL, E * 8),
                               dev(NULL, MOE_CUDA_PLAN_CNT(T, S, E) * 8) };
    for (int prob = 0; prob <= 1; prob++) {
        size_t cap = moe_capacity(prob ? 0.8 : 1.1, T, S, E);
        struct moe_dispatch d;
        if (moe_dispatch_alloc(&d, T, S, E, &err))
            die(&err);
        moe_dispatch_plan(&d, idx, prio, T, cap, prob ? MOE_DROP_PROB : MOE_DROP_ORDER);
        EXPECT(moe_cuda_dispatch_plan(&p, didx, dprio, T, S, E, cap, prob, &err) == 0, "%s", err.msg);
        size_t offset[65], routed[64], dropped[64];
        int32_t *row_tok = malloc(TS * 4), *slot_row = malloc(TS * 4);
        host(offset, p.offset, (E + 1) * 8), host(routed, p.routed, E * 8), host(dropped, p.dropped, E * 8);
        host(row_tok, p.row_tok, TS * 4), host(slot_row, p.slot_row, TS * 4);
        EXPECT(offset[E] == d.n_rows, "plan rows %zu vs %zu", offset[E], d.n_rows);
        for (size_t e = 0; e < E; e++)
            EXPECT(offset[e + 1] == d.offset[e + 1] && routed[e] == d.routed[e] && dropped[e] == d.dropped[e],
                   "policy %d expert %zu: counts differ", prob, e);
        same_ints(row_tok, d.row_tok, d.n_rows, "row_tok");
        same_ints(slot_row, d.slot_row, TS, "slot_row");
        // gather, and combine over given expert outputs
        float *xd = malloc(TS * D * 4), *out2 = malloc(T * D * 4);
        EXPECT(moe_cuda_gather(dxd, dx, &p, E, TS, D, &err) == 0, "%s", err.msg);
        host(xd, dxd, d.n_rows * D * 4);
        for (size_t row = 0; row < d.n_rows; row++)
            EXPECT(memcmp(xd + row * D, x + (size_t)d.row_tok[row] * D, D * 4) == 0, "gathered row %zu", row);
        memset(out, 0, T * D * 4);
        moe_cuda_to_device(dout, out, T * D * 4, &err);
        for (size_t t = 0; t < T; t++)
            for (size_t s = 0; s < S; s++)
                if (d.slot_row[t * S + s] >= 0)
                    for (size_t c = 0; c < D; c++)
                        out[t * D + c] += gate[t * S + s] * yd[(size_t)d.slot_row[t * S + s] * D + c];
        EXPECT(moe_cuda_combine(dout, dyd, dgate, p.slot_row, T, S, D, &err) == 0, "%s", err.msg);
        host(out2, dout, T * D * 4);
        close_floats(out2, out, T * D, 0.0, "combine");
        // the combine's backward
        float *go = malloc(T * D * 4), *dgate_c = calloc(TS, 4), *dgate_g = malloc(TS * 4);
        fill(go, T * D, 83, -1.0f, 1.0f);
        for (size_t row = 0; row < d.n_rows; row++) {
            size_t t = (size_t)d.row_tok[row], ts = t * S + (size_t)d.row_slot[row];
            double acc = 0.0;
            for (size_t c = 0; c < D; c++)
                acc += (double)go[t * D + c] * yd[row * D + c];
            dgate_c[ts] += (float)acc;
        }
        float *dgo = dev(go, T * D * 4), *ddg = dev(dgate_c, TS * 4), *ddyd = dev(NULL, TS * D * 4);
        memset(dgate_g, 0, TS * 4);
        moe_cuda_to_device(ddg, dgate_g, TS * 4, &err);
        EXPECT(moe_cuda_combine_backward(ddyd, ddg, dgo, dyd, dgate, &p, E, TS, S, D, &err) == 0, "%s", err.msg);
        host(dgate_g, ddg, TS * 4);
        close_floats(dgate_g, dgate_c, TS, 0.0, "gate gradient");
        float *dyd_c = malloc(TS * D * 4), *dyd_g = malloc(TS * D * 4);
        for (size_t row = 0; row < d.n_rows; row++) {
            size_t t = (size_t)d.row_tok[row], ts = t * S + (size_t)d.row_slot[row];
            for (size_t c = 0; c < D; c++)
                dyd_c[row * D + c] = gate[ts] * go[t * D + c];
        }
        host(dyd_g, ddyd, d.n_rows * D * 4);
        close_floats(dyd_g, dyd_c, d.n_rows * D, 0.0, "row output gradient");
        free(dyd_c), free(dyd_g);
        moe_cuda_free(dgo), moe_cuda_free(ddg), moe_cuda_free(ddyd);
        free(go), free(dgate_c), free(dgate_g);
        moe_dispatch_release(&d);
        free(row_tok), free(slot_row), free(xd), free(out2);
    }
    void *bufs[] = { didx, dprio, dx, dgate, dyd, dxd, dout, p.row_tok, p.row_slot, p.slot_row, p.offset, p.routed,
                     p.dropped, p.kept, p.n_kept, p.cnt };
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++)
        moe_cuda_free(bufs[i]);
    free(idx), free(prio), free(x), free(gate), free(yd), free(out);
}

static void test_aux(void)
{
    const size_t T = 30011, E = 64, S = 2;
    const float coef = 0.01f;
    struct moe_err err;
    struct moe_router_cfg c = { MOE_ROUTER_SOFTMAX, E, S, MOE_SECOND_RANDOM, 0.0, 0, MOE_EC_EVAL_FULL, 0 };
    struct moe_route r;
    if (moe_route_alloc(&r, T, E, S, 0, &err))
        die(&err);
    fill(r.z, T * E, 90, -4.0f, 4.0f);
    moe_router_forward(&r, &c, NULL, NULL, 1, NULL, 0, T);
    float *dz = calloc(T * E, 4), *dz2 = malloc(T * E * 4);
    int32_t *dsel = dev(r.sel, T * S * 4);
    float *dp = dev(r.p, T * E * 4), *dlse = dev(r.lse, T * 4), *ddz = dev(dz, T * E * 4);
    double *df = dev(NULL, E * 8), *dP = dev(NULL, E * 8), *dv = dev(NULL, 8);
    double v1 = moe_aux_switch(dz, &r, coef) / (double)E, v2 = 0.0;
    EXPECT(moe_cuda_aux_fp(&v2, ddz, dsel, dp, T, E, S, 1, (double)coef * (double)E, df, dP, dv, &err) == 0, "%s",
           err.msg);
    EXPECT(fabs(v1 - v2) <= 1e-12 * fabs(v1), "switch f.P: %.17g vs %.17g", v2, v1);
    double z1 = moe_aux_z(dz, &r, coef), z2 = 0.0;
    EXPECT(moe_cuda_aux_z(&z2, ddz, dlse, dp, T, E, coef, dv, &err) == 0, "%s", err.msg);
    EXPECT(fabs(z1 - z2) <= 1e-12 * fabs(z1), "z-loss: %.17g vs %.17g", z2, z1);
    host(dz2, ddz, T * E * 4);
    close_floats(dz2, dz, T * E, 0.0, "balancing + z gradient");
    void *bufs[] = { dsel, dp, dlse, ddz, df, dP, dv };
    for (size_t i = 0; i < 7; i++)
        moe_cuda_free(bufs[i]);
    free(dz), free(dz2);
    moe_route_release(&r);
}

// Shazeer's importance and smooth load losses on noisy top-4 routes (training:
// noise drawn): the importance's sums are float gates added in double in token
// order, the same bits; the load goes through the device's erfc, exp and log1p
// in double, so its value agrees within 1e-12 relative and its float gradients
// within 1e-5 of the largest one (a last-bit difference in a double term can
// flip a float's last bit, and terms cancel in the thresholds' sums).
static void test_aux_shazeer(void)
{
    const size_t T = 20011, E = 32, K = 4;
    const float wi = 0.1f, wl = 0.1f;
    struct moe_err err;
    struct moe_router_cfg c = { MOE_ROUTER_NOISY_TOPK, E, K, MOE_SECOND_RANDOM, 0.0, 0, MOE_EC_EVAL_FULL, 0 };
    const size_t S = moe_router_slots(&c);
    struct moe_route r;
    if (moe_route_alloc(&r, T, E, S, 1, &err))
        die(&err);
    fill(r.z, T * E, 95, -3.0f, 3.0f), fill(r.u, T * E, 96, -3.0f, 25.0f);
    struct moe_rng rng = moe_rng_make(31, MOE_RNG_NOISE, 2);
    moe_router_forward(&r, &c, NULL, NULL, 1, &rng, 0, T);
    float *dg = calloc(T * S, 4), *dg2 = malloc(T * S * 4), *dz = calloc(T * E, 4), *dz2 = malloc(T * E * 4);
    float *du = calloc(T * E, 4), *du2 = malloc(T * E * 4), *m = malloc(T * E * 4);
    int32_t *didx = dev(r.idx, T * S * 4), *dsel = dev(r.sel, T * S * 4);
    float *dgate = dev(r.gate, T * S * 4), *ddg = dev(dg, T * S * 4), *dzv = dev(r.z, T * E * 4);
    float *duv = dev(r.u, T * E * 4), *dh = dev(r.h, T * E * 4), *deps = dev(r.eps, T * E * 4);
    float *ddz = dev(dz, T * E * 4), *ddu = dev(du, T * E * 4);
    double *dx = dev(NULL, E * 8), *dgr = dev(NULL, E * 8), *dv = dev(NULL, 8);
    double v1 = moe_aux_importance(dg, &r, wi), v2 = 0.0;
    EXPECT(moe_cuda_aux_importance(&v2, ddg, didx, dgate, T, E, S, wi, dx, dgr, dv, &err) == 0, "%s", err.msg);
    EXPECT(v1 == v2, "importance: %.17g vs %.17g", v2, v1);
    host(dg2, ddg, T * S * 4);
    close_floats(dg2, dg, T * S, 0.0, "importance gradient");
    v1 = moe_aux_load(dz, du, &r, K, wl);
    EXPECT(moe_cuda_aux_load(&v2, ddz, ddu, dzv, duv, dh, deps, dsel, T, E, S, K, wl, dx, dgr, dv, &err) == 0, "%s",
           err.msg);
    EXPECT(fabs(v1 - v2) <= 1e-12 * fabs(v1), "load: %.17g vs %.17g", v2, v1);
    host(dz2, ddz, T * E * 4), host(du2, ddu, T * E * 4);
    double mz = 0.0, mu = 0.0;
    for (size_t i = 0; i < T * E; i++)
        mz = fmax(mz, fabs(dz[i])), mu = fmax(mu, fabs(du[i]));
    for (size_t i = 0; i < T * E; i++)
        m[i] = (float)mz;
    close_terms(dz2, dz, m, T * E, 1e-5, "load gradient (logits)");
    for (size_t i = 0; i < T * E; i++)
        m[i] = (float)mu;
    close_terms(du2, du, m, T * E, 1e-5, "load gradient (noise logits)");
    void *bufs[] = { didx, dsel, dgate, ddg, dzv, duv, dh, deps, ddz, ddu, dx, dgr, dv };
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++)
        moe_cuda_free(bufs[i]);
    free(dg), free(dg2), free(dz), free(dz2), free(du), free(du2), free(m);
    moe_route_release(&r);
}

static void test_embed(void)
{
    const size_t B = 64, C = 128, ld = C + 1, D = 64, V = 300, n = B * C;
    struct moe_err err;
    int32_t *tok = malloc(B * ld * 4);
    struct moe_rng r = moe_rng_make(3, MOE_RNG_DATA, 700);
    for (size_t i = 0; i < B * ld; i++)
        tok[i] = (int32_t)moe_rng_below(&r, i, 40); // few ids: long runs of the same row
    float *wte = malloc(V * D * 4), *wpe = malloc(C * D * 4), *out = malloc(n * D * 4), *out2 = malloc(n * D * 4);
    float *dout = malloc(n * D * 4), *dte = calloc(V * D, 4), *dpe = calloc(C * D, 4), *dte2 = malloc(V * D * 4),
          *dpe2 = malloc(C * D * 4);
    fill(wte, V * D, 701, -1.0f, 1.0f), fill(wpe, C * D, 702, -1.0f, 1.0f), fill(dout, n * D, 703, -1.0f, 1.0f);
    int32_t *dtok = dev(tok, B * ld * 4);
    float *dwte = dev(wte, V * D * 4), *dwpe = dev(wpe, C * D * 4), *dout_d = dev(NULL, n * D * 4);
    float *dg = dev(dout, n * D * 4), *ddte = dev(dte, V * D * 4), *ddpe = dev(dpe, C * D * 4);
    int32_t *s1 = dev(NULL, n * 4), *s2 = dev(NULL, n * 4), *s3 = dev(NULL, n * 4), *s4 = dev(NULL, n * 4);
    moe_embedding_forward(out, tok, ld, wte, wpe, B, C, D);
    moe_embedding_backward(dte, dpe, dout, tok, ld, B, C, D);
    EXPECT(moe_cuda_embed_forward(dout_d, dtok, ld, dwte, dwpe, B, C, D, &err) == 0, "%s", err.msg);
    size_t sort_bytes = 0;
    EXPECT(moe_cuda_embed_sort_bytes(n, &sort_bytes, &err) == 0, "%s", err.msg);
    void *sort = dev(NULL, sort_bytes);
    // a scratch smaller than the sort's is refused, before anything is written
    EXPECT(sort_bytes == 0 || (moe_cuda_embed_backward(ddte, ddpe, dg, dtok, ld, B, C, D, V, s1, s2, s3, s4, sort,
                                                       sort_bytes - 1, &err) == MOE_EINVAL &&
                               strstr(err.msg, "scratch")),
           "a small sort scratch: %s", err.msg);
    EXPECT(moe_cuda_embed_backward(ddte, ddpe, dg, dtok, ld, B, C, D, V, s1, s2, s3, s4, sort, sort_bytes, &err) == 0,
           "%s", err.msg);
    host(out2, dout_d, n * D * 4), host(dte2, ddte, V * D * 4), host(dpe2, ddpe, C * D * 4);
    EXPECT(memcmp(out, out2, n * D * 4) == 0, "embedding forward differs");
    EXPECT(memcmp(dte, dte2, V * D * 4) == 0, "token embedding gradient differs");
    EXPECT(memcmp(dpe, dpe2, C * D * 4) == 0, "position embedding gradient differs");
    void *bufs[] = { dtok, dwte, dwpe, dout_d, dg, ddte, ddpe, s1, s2, s3, s4, sort };
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++)
        moe_cuda_free(bufs[i]);
    free(tok), free(wte), free(wpe), free(out), free(out2), free(dout), free(dte), free(dpe), free(dte2), free(dpe2);
}

// Language-aware routing's rows and their gradient against model/transformer.c's
// loops (radd[t] = lang_emb[language of t's window]; lang_emb's gradient
// += each token's in token order): the same copies and float adds, so the same
// bits; with languages given and without (language 0 throughout).
static void test_lang_rows(void)
{
    const size_t B = 37, C = 24, D = 40, G = 3, T = B * C;
    struct moe_err err;
    int32_t lang[37];
    struct moe_rng r = moe_rng_make(3, MOE_RNG_DATA, 710);
    for (size_t w = 0; w < B; w++)
        lang[w] = (int32_t)moe_rng_below(&r, w, G);
    float *le = malloc(G * D * 4), *dr = malloc(T * D * 4), *want = malloc(T * D * 4), *got = malloc(T * D * 4);
    float *gw = malloc(G * D * 4), *gg = malloc(G * D * 4);
    fill(le, G * D, 711, -1.0f, 1.0f), fill(dr, T * D, 712, -1.0f, 1.0f), fill(gw, G * D, 713, -1.0f, 1.0f);
    int32_t *dlang = dev(lang, B * 4);
    float *dle = dev(le, G * D * 4), *ddr = dev(dr, T * D * 4), *drad = dev(NULL, T * D * 4);
    for (int with = 1; with >= 0; with--) {
        float *dgl = dev(gw, G * D * 4);
        memcpy(gg, gw, G * D * 4);
        for (size_t t = 0; t < T; t++) {
            size_t g = with ? (size_t)lang[t / C] : 0;
            memcpy(want + t * D, le + g * D, D * 4);
            for (size_t d = 0; d < D; d++)
                gg[g * D + d] += dr[t * D + d];
        }
        EXPECT(moe_cuda_lang_rows(drad, dle, with ? dlang : NULL, B, C, D, &err) == 0, "%s", err.msg);
        EXPECT(moe_cuda_lang_grad(dgl, ddr, with ? dlang : NULL, B, C, D, G, &err) == 0, "%s", err.msg);
        host(got, drad, T * D * 4);
        EXPECT(memcmp(got, want, T * D * 4) == 0, "language rows differ (languages %s)", with ? "given" : "absent");
        host(got, dgl, G * D * 4);
        EXPECT(memcmp(got, gg, G * D * 4) == 0, "language embedding gradient differs (languages %s)",
               with ? "given" : "absent");
        moe_cuda_free(dgl);
    }
    void *bufs[] = { dlang, dle, ddr, drad };
    for (size_t i = 0; i < 4; i++)
        moe_cuda_free(bufs[i]);
    free(le), free(dr), free(want), free(got), free(gw), free(gg);
}

static void test_norm(void)
{
    static const size_t widths[] = { 1, 9, 64, 1000 };
    const size_t T = 777;
    struct moe_err err;
    for (size_t wi = 0; wi < 4; wi++) {
        size_t D = widths[wi], n = T * D;
        float *x = malloc(n * 4), *y = malloc(n * 4), *y2 = malloc(n * 4), *g = malloc(D * 4), *b = malloc(D * 4);
        float *m = malloc(T * 4), *r = malloc(T * 4), *m2 = malloc(T * 4), *r2 = malloc(T * 4);
        fill(x, n, 1, -2.0f, 4.0f), fill(g, D, 2, 0.5f, 1.5f), fill(b, D, 3, -0.1f, 0.1f);
        float *dx = dev(x, n * 4), *dy = dev(NULL, n * 4), *dgm = dev(g, D * 4), *db = dev(b, D * 4);
        float *dm = dev(NULL, T * 4), *dr = dev(NULL, T * 4);
        for (int rms = 0; rms <= 1; rms++) {
            if (rms)
                moe_rmsnorm_forward(y, r, x, g, T, D, 1e-5f);
            else
                moe_layernorm_forward(y, m, r, x, g, b, T, D, 1e-5f);
            EXPECT(moe_cuda_norm_forward(dy, dm, dr, dx, dgm, rms ? NULL : db, T, D, 1e-5f, &err) == 0, "%s", err.msg);
            host(y2, dy, n * 4), host(r2, dr, T * 4);
            close_floats(y2, y, n, 0.0, rms ? "rmsnorm y" : "layernorm y");
            // the backward, from the CPU's statistics
            float *gy = malloc(n * 4), *dxc = calloc(n, 4), *dgc = calloc(D, 4), *dbc = calloc(D, 4);
            float *dxh = malloc(n * 4), *dgh = malloc(D * 4), *dbh = malloc(D * 4);
            fill(gy, n, 9, -1.0f, 1.0f);
            if (rms)
                moe_rmsnorm_backward(dxc, dgc, gy, x, r, g, T, D);
            else
                moe_layernorm_backward(dxc, dgc, dbc, gy, x, m, r, g, T, D);
            float *dgy = dev(gy, n * 4), *ddx = dev(NULL, n * 4), *ddg = dev(NULL, D * 4), *ddb = dev(NULL, D * 4);
            float *dmean = dev(m, T * 4), *drstd = dev(r, T * 4);
            memset(dxh, 0, n * 4), memset(dgh, 0, D * 4);
            moe_cuda_to_device(ddx, dxh, n * 4, &err), moe_cuda_to_device(ddg, dgh, D * 4, &err);
            moe_cuda_to_device(ddb, dgh, D * 4, &err);
            EXPECT(moe_cuda_norm_backward(ddx, ddg, rms ? NULL : ddb, dgy, dx, dmean, drstd, dgm, T, D, &err) == 0,
                   "%s", err.msg);
            host(dxh, ddx, n * 4), host(dgh, ddg, D * 4), host(dbh, ddb, D * 4);
            close_floats(dxh, dxc, n, 0.0, "norm dx");
            close_floats(dgh, dgc, D, 0.0, "norm dg");
            if (!rms)
                close_floats(dbh, dbc, D, 0.0, "norm db");
            void *bb[] = { dgy, ddx, ddg, ddb, dmean, drstd };
            for (size_t i = 0; i < 6; i++)
                moe_cuda_free(bb[i]);
            free(gy), free(dxc), free(dgc), free(dbc), free(dxh), free(dgh), free(dbh);
            close_floats(r2, r, T, 0.0, "rstd");
            if (!rms) {
                host(m2, dm, T * 4);
                close_floats(m2, m, T, 0.0, "mean");
            }
        }
        void *bufs[] = { dx, dy, dgm, db, dm, dr };
        for (size_t i = 0; i < 6; i++)
            moe_cuda_free(bufs[i]);
        free(x), free(y), free(y2), free(g), free(b), free(m), free(r), free(m2), free(r2);
    }
}

static void test_optim(void)
{
    const size_t n = 100003;
    static const enum moe_optim_type types[] = { MOE_OPTIM_GD, MOE_OPTIM_SGD, MOE_OPTIM_ADAMW };
    static const enum moe_k_optim_type ktypes[] = { MOE_K_GD, MOE_K_SGD, MOE_K_ADAMW };
    struct moe_err err;
    for (int ti = 0; ti < 3; ti++) {
        struct moe_optim_cfg oc = { .type = types[ti], .lr = 0.01, .momentum = 0.9, .beta1 = 0.9, .beta2 = 0.999,
                                     .eps = 1e-8, .weight_decay = 0.05, .clip = 1.0 };
        struct moe_optim o;
        if (moe_optim_init(&o, &oc, n, &err))
            die(&err);
        float *w = malloc(n * 4), *gr = malloc(n * 4), *w2 = malloc(n * 4);
        fill(w, n, 5, -1.0f, 1.0f);
        float *dw = dev(w, n * 4), *dgr = dev(NULL, n * 4), *dm = dev(NULL, n * 4), *dv = dev(NULL, n * 4);
        float *zero = calloc(n, 4);
        moe_cuda_to_device(dm, zero, n * 4, &err), moe_cuda_to_device(dv, zero, n * 4, &err);
        for (uint32_t step = 1; step <= 5; step++) {
            fill(gr, n, 20 + step, -0.5f, 0.5f);
            moe_cuda_to_device(dgr, gr, n * 4, &err);
            double norm = moe_optim_grad_norm(gr, n);
            moe_optim_step_norm(&o, w, gr, norm);
            float scale = norm > oc.clip ? (float)(oc.clip / norm) : 1.0f;
            struct moe_k_optim k;
            moe_k_optim_setup(&k, ktypes[ti], oc.lr, oc.weight_decay, oc.momentum, oc.beta1, oc.beta2, oc.eps, step,
                              scale);
            EXPECT(moe_cuda_optim_update(&k, dw, dgr, dm, dv, n, &err) == 0, "%s", err.msg);
        }
        host(w2, dw, n * 4);
        close_floats(w2, w, n, 0.0, "optimizer weights after 5 steps");
        void *bufs[] = { dw, dgr, dm, dv };
        for (size_t i = 0; i < 4; i++)
            moe_cuda_free(bufs[i]);
        free(w), free(gr), free(w2), free(zero);
        moe_optim_release(&o);
    }
}

// Cross-entropy rows and the activations: values within the device's expf /
// tanhf differences of SLEEF's; the argmax (no transcendental) identical.
static void test_ce(void)
{
    static const size_t Os[] = { 1, 37, 600 };
    const size_t T = 3000;
    struct moe_err err;
    for (size_t oi = 0; oi < 3; oi++) {
        size_t O = Os[oi], n = T * O;
        float *y = malloc(n * 4), *dy = malloc(n * 4), *dy2 = malloc(n * 4), *l1 = malloc(T * 4), *l2 = malloc(T * 4);
        int32_t *lab = malloc(T * 4), *a1 = malloc(T * 4), *a2 = malloc(T * 4);
        fill(y, n, 20, -8.0f, 8.0f), fill(dy, n, 21, -0.1f, 0.1f);
        for (size_t t = 0; t < T; t++)
            lab[t] = (int32_t)((t * 7919) % O);
        float *dyv = dev(y, n * 4), *ddy = dev(dy, n * 4), *dl = dev(NULL, T * 4);
        int32_t *dlab = dev(lab, T * 4), *da = dev(NULL, T * 4);
        double *part = dev(NULL, MOE_K_CE_BLOCKS * sizeof(double)), *lse = dev(NULL, T * sizeof(double));
        double sum1 = moe_ce_rows(dy, l1, a1, y, lab, T, O, 0.25f), sum2 = 0.0;
        EXPECT(moe_cuda_ce_rows(&sum2, ddy, dl, da, dyv, dlab, T, O, 0.25f, part, lse, &err) == 0, "%s", err.msg);
        host(dy2, ddy, n * 4), host(l2, dl, T * 4), host(a2, da, T * 4);
        EXPECT(fabs(sum2 - sum1) <= 1e-6 * fabs(sum1) + 1e-9, "ce sum %.17g vs %.17g", sum2, sum1);
        close_floats(l2, l1, T, 1e-5, "ce row loss");
        float *m = malloc(n * 4); // the gradient there before, and 0.25 p (p <= 1)
        fill(m, n, 21, -0.1f, 0.1f);
        for (size_t i = 0; i < n; i++)
            m[i] = fabsf(m[i]) + 0.25f;
        close_terms(dy2, dy, m, n, 1e-5, "ce dy");
        free(m);
        same_ints(a2, a1, T, "ce argmax");
        void *b[] = { dyv, ddy, dl, dlab, da, part, lse };
        for (size_t i = 0; i < 7; i++)
            moe_cuda_free(b[i]);
        free(y), free(dy), free(dy2), free(l1), free(l2), free(lab), free(a1), free(a2);
    }
}

static void test_act(void)
{
    const size_t n = 100000;
    struct moe_err err;
    float *x = malloc(n * 4), *g = malloc(n * 4), *y1 = malloc(n * 4), *y2 = malloc(n * 4);
    float *d1 = malloc(n * 4), *d2 = malloc(n * 4), *mx = malloc(n * 4), *mg = malloc(n * 4);
    fill(x, n, 30, -7.0f, 7.0f), fill(g, n, 31, -1.0f, 1.0f);
    float *dx = dev(x, n * 4), *dg = dev(g, n * 4), *dy = dev(NULL, n * 4), *dd = dev(NULL, n * 4);
    static const char *const names[] = { "relu", "gelu", "silu" };
    for (int a = 0; a < 3; a++) {
        if (a == 0) {
            for (size_t i = 0; i < n; i++) {
                y1[i] = x[i] > 0.0f ? x[i] : 0.0f;
                d1[i] = x[i] > 0.0f ? g[i] : 0.0f;
            }
        } else if (a == 1) {
            moe_gelu_forward(y1, x, n);
            moe_gelu_backward(d1, g, x, n);
        } else {
            moe_silu_forward(y1, x, n);
            moe_silu_backward(d1, g, x, n);
        }
        EXPECT(moe_cuda_act_forward((enum moe_cuda_act)a, dy, dx, n, &err) == 0, "%s", err.msg);
        EXPECT(moe_cuda_act_backward((enum moe_cuda_act)a, dd, dg, dx, n, &err) == 0, "%s", err.msg);
        host(y2, dy, n * 4), host(d2, dd, n * 4);
        // relu: exact; gelu, silu: tanhf / expf against SLEEF's (3.5 and 1 ulp), measured
        // against the terms: |x| forward, |dy| (1 + |x|) backward
        if (a == 0) {
            close_floats(y2, y1, n, 0.0, names[a]);
            close_floats(d2, d1, n, 0.0, names[a]);
        } else {
            for (size_t i = 0; i < n; i++) {
                mx[i] = fabsf(x[i]);
                mg[i] = fabsf(g[i]) * (1.0f + fabsf(x[i]));
            }
            close_terms(y2, y1, mx, n, 1e-5, a == 1 ? "gelu" : "silu");
            close_terms(d2, d1, mg, n, 1e-5, a == 1 ? "gelu dx" : "silu dx");
        }
    }
    void *b[] = { dx, dg, dy, dd };
    for (size_t i = 0; i < 4; i++)
        moe_cuda_free(b[i]);
    free(x), free(g), free(y1), free(y2), free(d1), free(d2), free(mx), free(mg);
}

// Causal self-attention. Forward: the device's expf against SLEEF's, so att
// within 1e-5 relative and out within 1e-5 of the terms it sums (sum_s P |v_s|);
// two device runs give the same bits. Backward, from the library's
// probabilities: no transcendental, so the device's dS and dqkv are the kernel
// bodies' bits run on the host (every hs), and the library's for hs <= 64 (its
// tile path, the bodies' order); hs > 64 differs from the library's BLIS order
// within rounding (tests/test_kernels.c checks that bound).
static void attn_backward_host(float *dqkv, float *datt, const float *dout, const float *qkv, const float *att,
                               size_t B, size_t C, size_t D, size_t H)
{
    for (size_t i = 0; i < B * H * C * C; i++)
        moe_k_attn_dp(datt, dout, qkv, C, D, H, i / (C * C), i / C % C, i % C);
    for (size_t r = 0; r < B * H * C; r++)
        moe_k_attn_dsoftmax_row(datt, att, C, r);
    for (size_t i = 0; i < B * C * 3 * D; i++)
        moe_k_attn_dqkv(dqkv, datt, att, dout, qkv, C, D, H, i / (C * 3 * D), i / (3 * D) % C, i % (3 * D));
}

#ifdef MOE_TEST_CUDA_SIM
// The forward by the kernel bodies with libm's expf, the simulator's device
// expf: the device's bits exactly (on a GPU its expf differs from both).
static void attn_forward_host(float *out, float *att, const float *qkv, size_t B, size_t C, size_t D, size_t H)
{
    for (size_t i = 0; i < B * H * C * C; i++)
        moe_k_attn_score(att, qkv, C, D, H, i / (C * C), i / C % C, i % C);
    for (size_t r = 0; r < B * H * C; r++) {
        size_t n = moe_k_attn_shift_row(att, C, r);
        for (size_t u = 0; u < n; u++)
            att[r * C + u] = expf(att[r * C + u]);
        moe_k_attn_normalise_row(att, C, r);
    }
    for (size_t i = 0; i < B * C * D; i++)
        moe_k_attn_out(out, att, qkv, C, D, H, i / (C * D), i / D % C, i % D);
}
#endif

// The magnitude of the terms each output of attention sums: m[b, t, j] =
// sum_{s <= t} P[t, s] |v_s[j]| (att holds P, or P' with dropout).
static void attn_out_terms(float *m, const float *att, const float *qkv, size_t B, size_t C, size_t D, size_t H)
{
    const size_t hs = D / H;
    for (size_t b = 0; b < B; b++)
        for (size_t t = 0; t < C; t++)
            for (size_t j = 0; j < D; j++) {
                double sum = 0.0;
                for (size_t u = 0; u <= t; u++)
                    sum += att[((b * H + j / hs) * C + t) * C + u] * fabs((double)qkv[(b * C + u) * 3 * D + 2 * D + j]);
                m[(b * C + t) * D + j] = (float)sum;
            }
}

static void test_attention(void)
{
    static const struct {
        size_t B, C, D, H;
    } cases[] = {
        { 2, 37, 64, 4 }, { 2, 53, 96, 3 }, { 3, 29, 128, 2 }, { 4, 256, 768, 12 }, // hs 16, 32, 64, 64
        { 2, 1, 64, 2 },  { 2, 37, 160, 2 }, { 1, 200, 256, 2 },                    // C = 1; hs 80, 128
    };
    struct moe_err err;
    for (size_t ci = 0; ci < sizeof cases / sizeof *cases; ci++) {
        const size_t B = cases[ci].B, C = cases[ci].C, D = cases[ci].D, H = cases[ci].H, hs = D / H;
        const size_t nq = B * C * 3 * D, no = B * C * D, na = B * H * C * C;
        float *qkv = malloc(nq * 4), *dout = malloc(no * 4), *d0 = malloc(nq * 4), *out = malloc(no * 4);
        float *att = malloc(na * 4), *out2 = malloc(no * 4), *att2 = malloc(na * 4), *att3 = malloc(na * 4);
        float *m = malloc(no * 4), *dq = malloc(nq * 4), *dq2 = malloc(nq * 4), *dqh = malloc(nq * 4);
        float *datt = malloc(na * 4), *datt2 = malloc(na * 4), *datth = malloc(na * 4);
        fill(qkv, nq, 70 + (uint32_t)ci, -1.0f, 1.0f), fill(dout, no, 80 + (uint32_t)ci, -1.0f, 1.0f);
        fill(d0, nq, 90 + (uint32_t)ci, -0.5f, 0.5f);
        moe_attention_forward(out, att, qkv, B, C, D, H);
        float *dqkv_ = dev(qkv, nq * 4), *dout_ = dev(dout, no * 4), *out_ = dev(NULL, no * 4);
        float *att_ = dev(NULL, na * 4), *datt_ = dev(NULL, na * 4), *dd_ = dev(d0, nq * 4);
        EXPECT(moe_cuda_attention_forward(out_, att_, dqkv_, B, C, D, H, &err) == 0, "%s", err.msg);
        host(out2, out_, no * 4), host(att2, att_, na * 4);
        EXPECT(moe_cuda_attention_forward(out_, att_, dqkv_, B, C, D, H, &err) == 0, "%s", err.msg);
        host(att3, att_, na * 4);
        EXPECT(memcmp(att2, att3, na * 4) == 0, "attention forward: two device runs differ");
        attn_out_terms(m, att, qkv, B, C, D, H);
        printf("# attention B=%zu C=%zu D=%zu H=%zu (hs %zu)\n", B, C, D, H, hs);
        close_floats(att2, att, na, 1e-5, "attention att");
        close_terms(out2, out, m, no, 1e-5, "attention out");
#ifdef MOE_TEST_CUDA_SIM
        {
            float *atth = malloc(na * 4), *outh = malloc(no * 4);
            attn_forward_host(outh, atth, qkv, B, C, D, H);
            close_floats(att2, atth, na, 0.0, "attention att (host bodies, libm expf)");
            close_floats(out2, outh, no, 0.0, "attention out (host bodies, libm expf)");
            free(atth), free(outh);
        }
#endif
        // the backward from the library's probabilities
        memcpy(dq, d0, nq * 4), memcpy(dqh, d0, nq * 4);
        moe_attention_backward(dq, datt, dout, qkv, att, B, C, D, H);
        attn_backward_host(dqh, datth, dout, qkv, att, B, C, D, H);
        moe_cuda_to_device(att_, att, na * 4, &err);
        EXPECT(moe_cuda_attention_backward(dd_, datt_, dout_, dqkv_, att_, B, C, D, H, &err) == 0, "%s", err.msg);
        host(dq2, dd_, nq * 4), host(datt2, datt_, na * 4);
        close_floats(datt2, datth, na, 0.0, "attention dS (host bodies)");
        close_floats(dq2, dqh, nq, 0.0, "attention dqkv (host bodies)");
        if (hs <= 64)
            close_floats(dq2, dq, nq, 0.0, "attention dqkv (library)");
        void *bufs[] = { dqkv_, dout_, out_, att_, datt_, dd_ };
        for (size_t i = 0; i < 6; i++)
            moe_cuda_free(bufs[i]);
        free(qkv), free(dout), free(d0), free(out), free(att), free(out2), free(att2), free(att3), free(m), free(dq);
        free(dq2), free(dqh), free(datt), free(datt2), free(datth);
    }
}

// Dropout: a run, gathered rows, and attention's probabilities. The masks are
// the same Philox words and the scale one multiplication, so the device's
// dropped values are the library's bits; attention's P (attp) and P' (att)
// go through the device's expf, within 1e-5 relative as above, and out within
// 1e-5 of its terms; the backward from the library's P and P' is the host
// bodies' bits.
static void test_dropout(void)
{
    struct moe_err err;
    const size_t n = 100003, N = 300, F = 64, S = 2;
    float *x = malloc(n * 4), *y = malloc(n * 4), *z = malloc(n * 4);
    int32_t row_tok[300], row_slot[300];
    for (size_t r = 0; r < N; r++)
        row_tok[r] = (int32_t)((r * 37) % 211), row_slot[r] = (int32_t)(r % S);
    const float ps[] = { 0.1f, 0.5f, 0.95f };
    for (size_t q = 0; q < 3; q++) {
        const struct moe_dropout d = moe_dropout_make(ps[q], 5, 17 + q, 2, MOE_DROP_RESID_ATTN);
        const struct moe_cuda_drop cd = { d.p, d.seed, d.step, d.site };
        fill(x, n, 400 + (uint32_t)q, -1.0f, 1.0f);
        memcpy(y, x, n * 4);
        moe_dropout_apply(&d, y, n, 3);
        float *x_ = dev(x, n * 4);
        EXPECT(moe_cuda_dropout(x_, n, 3, &cd, &err) == 0, "%s", err.msg);
        host(z, x_, n * 4);
        close_floats(z, y, n, 0.0, "dropout run");
        moe_cuda_to_device(x_, x, N * F * 4, &err);
        memcpy(y, x, N * F * 4);
        moe_dropout_rows(&d, y, N, F, row_tok, row_slot, S);
        int32_t *tok_ = (int32_t *)dev(row_tok, sizeof row_tok), *slot_ = (int32_t *)dev(row_slot, sizeof row_slot);
        EXPECT(moe_cuda_dropout_rows(x_, N, F, tok_, slot_, S, &cd, &err) == 0, "%s", err.msg);
        host(z, x_, N * F * 4);
        close_floats(z, y, N * F, 0.0, "dropout rows");
        moe_cuda_free(x_), moe_cuda_free(tok_), moe_cuda_free(slot_);
    }
    free(x), free(y), free(z);

    const size_t B = 2, C = 53, D = 96, H = 3; // hs = 32: the tile path's order on the CPU
    const size_t nq = B * C * 3 * D, no = B * C * D, na = B * H * C * C;
    float *qkv = malloc(nq * 4), *dout = malloc(no * 4), *d0 = malloc(nq * 4), *out = malloc(no * 4);
    float *att = malloc(na * 4), *attp = malloc(na * 4), *out2 = malloc(no * 4), *att2 = malloc(na * 4);
    float *attp2 = malloc(na * 4), *m = malloc(no * 4), *dq = malloc(nq * 4), *dq2 = malloc(nq * 4);
    float *datt = malloc(na * 4);
    fill(qkv, nq, 410, -1.0f, 1.0f), fill(dout, no, 411, -1.0f, 1.0f), fill(d0, nq, 412, -0.5f, 0.5f);
    const struct moe_dropout d = moe_dropout_make(0.2, 9, 4, 1, MOE_DROP_ATTN);
    const struct moe_cuda_drop cd = { d.p, d.seed, d.step, d.site };
    moe_attention_forward_drop(out, att, attp, qkv, B, C, D, H, &d);
    float *qkv_ = dev(qkv, nq * 4), *dout_ = dev(dout, no * 4), *out_ = dev(NULL, no * 4), *att_ = dev(NULL, na * 4);
    float *attp_ = dev(NULL, na * 4), *datt_ = dev(NULL, na * 4), *dd_ = dev(d0, nq * 4);
    EXPECT(moe_cuda_attention_forward_drop(out_, att_, attp_, qkv_, B, C, D, H, &cd, &err) == 0, "%s", err.msg);
    host(out2, out_, no * 4), host(att2, att_, na * 4), host(attp2, attp_, na * 4);
    for (size_t i = 0; i < na; i++) // above the diagonal the library's attp rows are what its softmax left there
        if (i % C > i / C % C)
            attp2[i] = attp[i];
    size_t mism = 0;
    for (size_t i = 0; i < na; i++)
        mism += (att2[i] == 0.0f) != (att[i] == 0.0f);
    EXPECT(mism == 0, "attention dropout: %zu entries kept on one side only", mism);
    attn_out_terms(m, att, qkv, B, C, D, H);
    close_floats(attp2, attp, na, 1e-5, "attention dropout attp (P)");
    close_floats(att2, att, na, 1e-5, "attention dropout att (P')");
    close_terms(out2, out, m, no, 1e-5, "attention dropout out");
    memcpy(dq, d0, nq * 4);
    moe_attention_backward_drop(dq, datt, dout, qkv, att, attp, B, C, D, H, &d);
    moe_cuda_to_device(att_, att, na * 4, &err), moe_cuda_to_device(attp_, attp, na * 4, &err);
    EXPECT(moe_cuda_attention_backward_drop(dd_, datt_, dout_, qkv_, att_, attp_, B, C, D, H, &cd, &err) == 0, "%s",
           err.msg);
    host(dq2, dd_, nq * 4);
    close_floats(dq2, dq, nq, 0.0, "attention dropout dqkv (library)");
    void *bufs[] = { qkv_, dout_, out_, att_, attp_, datt_, dd_ };
    for (size_t i = 0; i < 7; i++)
        moe_cuda_free(bufs[i]);
    free(qkv), free(dout), free(d0), free(out), free(att), free(attp), free(out2), free(att2), free(attp2), free(m);
    free(dq), free(dq2), free(datt);
}

// The linear layer's bias and the residual add: no rounding but the
// additions' own, in the CPU's order, so the device gives the library's bits
// (the GEMM between them is cuBLAS's and is not part of this test).
static void test_linear_bias(void)
{
    struct moe_err err;
    const size_t T = 1000, O = 77, ldy = 80;
    float *y = malloc(T * ldy * 4), *y2 = malloc(T * ldy * 4), *b = malloc(O * 4), *dy = malloc(T * ldy * 4);
    float *db = malloc(O * 4), *db2 = malloc(O * 4), *x = malloc(T * ldy * 4);
    fill(y, T * ldy, 600, -1.0f, 1.0f), fill(b, O, 601, -1.0f, 1.0f), fill(dy, T * ldy, 602, -1.0f, 1.0f);
    fill(db, O, 603, -1.0f, 1.0f), fill(x, T * ldy, 604, -1.0f, 1.0f);
    float *y_ = dev(y, T * ldy * 4), *b_ = dev(b, O * 4), *dy_ = dev(dy, T * ldy * 4), *db_ = dev(db, O * 4);
    float *x_ = dev(x, T * ldy * 4);
    EXPECT(moe_cuda_bias_rows(y_, ldy, b_, T, O, &err) == 0, "%s", err.msg);
    host(y2, y_, T * ldy * 4);
    for (size_t t = 0; t < T; t++)
        for (size_t o = 0; o < O; o++)
            y[t * ldy + o] = b[o];
    close_floats(y2, y, T * ldy, 0.0, "bias rows");
    for (size_t t = 0; t < T; t++) // nn/linear.c's loop (tests/test_kernels.c checks the body against it)
        for (size_t o = 0; o < O; o++)
            db[o] += dy[t * ldy + o];
    EXPECT(moe_cuda_bias_grad(db_, dy_, ldy, T, O, &err) == 0, "%s", err.msg);
    host(db2, db_, O * 4);
    close_floats(db2, db, O, 0.0, "bias gradient");
    EXPECT(moe_cuda_add(y_, x_, T * ldy, &err) == 0, "%s", err.msg);
    host(y2, y_, T * ldy * 4);
    for (size_t i = 0; i < T * ldy; i++)
        y[i] += x[i];
    close_floats(y2, y, T * ldy, 0.0, "residual add");
    void *bufs[] = { y_, b_, dy_, db_, x_ };
    for (size_t i = 0; i < 5; i++)
        moe_cuda_free(bufs[i]);
    free(y), free(y2), free(b), free(dy), free(db), free(db2), free(x);
}

// The gradient norm's sum of squares: doubles, multiply then add (no FMA on
// either side), in the CPU's blocks and lanes, so the library's bits.
// Gradient accumulation's sum: a multiplication and an addition per value,
// so exact; three micro-batches, and one (k = 0 and last: nothing changes).
static void test_fold(void)
{
    const size_t n = 70001;
    struct moe_err err;
    float *g = malloc(n * 4), *a = malloc(n * 4), *o = malloc(n * 4), *o2 = malloc(n * 4);
    float *da = dev(NULL, n * 4), *dg = dev(NULL, n * 4);
    const float w[3] = { 0.375f, 0.375f, 0.25f };
    for (size_t k = 0; k < 3; k++) {
        fill(g, n, 150 + (uint32_t)k, -2.0f, 2.0f);
        memcpy(o, g, n * 4);
        moe_fold(a, o, o, n, w[k], k, k == 2);
        EXPECT(moe_cuda_to_device(dg, g, n * 4, &err) == 0 && moe_cuda_fold(da, dg, dg, n, w[k], k, k == 2, &err) == 0,
               "%s", err.msg);
    }
    host(o2, dg, n * 4);
    EXPECT(memcmp(o, o2, n * 4) == 0, "fold: the step's gradient differs from moe_fold's");
    EXPECT(moe_cuda_fold(da, dg, dg, n, 0.5f, 0, 1, &err) == 0, "%s", err.msg);
    host(o, dg, n * 4);
    EXPECT(memcmp(o, o2, n * 4) == 0, "fold of a single micro-batch changed the gradient");
    moe_cuda_free(da), moe_cuda_free(dg);
    free(g), free(a), free(o), free(o2);
}

// LoRA's merge: W0 + delta where delta is not zero, else W0 (zeros of both
// signs among both), bit for bit.
static void test_lora_merge(void)
{
    const size_t n = 9001;
    struct moe_err err;
    float *w0 = malloc(n * 4), *dl = malloc(n * 4), *w = malloc(n * 4), *want = malloc(n * 4);
    fill(w0, n, 160, -1.0f, 1.0f);
    fill(dl, n, 161, -0.01f, 0.01f);
    for (size_t i = 0; i < n; i += 5)
        dl[i] = i % 2 ? 0.0f : -0.0f;
    for (size_t i = 0; i < n; i += 13)
        w0[i] = i % 2 ? 0.0f : -0.0f;
    for (size_t i = 0; i < n; i++)
        want[i] = dl[i] != 0.0f ? w0[i] + dl[i] : w0[i];
    float *dw = dev(NULL, n * 4), *dw0 = dev(w0, n * 4), *dd = dev(dl, n * 4);
    EXPECT(moe_cuda_lora_merge(dw, dw0, dd, n, &err) == 0, "%s", err.msg);
    host(w, dw, n * 4);
    EXPECT(memcmp(w, want, n * 4) == 0, "lora merge differs from W0 + delta (delta 0: W0)");
    moe_cuda_free(dw), moe_cuda_free(dw0), moe_cuda_free(dd);
    free(w0), free(dl), free(w), free(want);
}

static void test_sum_sq(void)
{
    struct moe_err err;
    const size_t ns[] = { 1, 257, 10007, 3000001 };
    float *g = malloc(3000001 * 4);
    fill(g, 3000001, 700, -3.0f, 3.0f);
    float *g_ = dev(g, 3000001 * 4);
    double *s_ = dev(NULL, MOE_K_SQ_BLOCKS * MOE_K_SQ_LANES * sizeof(double));
    // each sum added to what the accumulator held (0.25 there), then the four
    // added one after another from +0.0, as the trainer adds its units
    double *acc_ = dev(NULL, sizeof(double)), chain = 0.0, all = -1.0;
    for (size_t q = 0; q < 4; q++) {
        double sq = 0.25, ref = 0.25 + moe_optim_sum_sq(g, ns[q]);
        moe_cuda_to_device(acc_, &sq, sizeof sq, &err);
        EXPECT(moe_cuda_sum_sq(acc_, g_, ns[q], s_, &err) == 0, "%s", err.msg);
        host(&sq, acc_, sizeof sq);
        EXPECT(memcmp(&sq, &ref, sizeof sq) == 0, "sum of squares, n %zu: %.17g vs %.17g", ns[q], sq, ref);
    }
    EXPECT(moe_cuda_memset(acc_, 0, sizeof(double), "acc", &err) == 0, "%s", err.msg);
    for (size_t q = 0; q < 4; q++) {
        chain += moe_optim_sum_sq(g, ns[q]);
        EXPECT(moe_cuda_sum_sq(acc_, g_, ns[q], s_, &err) == 0, "%s", err.msg);
    }
    host(&all, acc_, sizeof all);
    EXPECT(memcmp(&all, &chain, sizeof all) == 0, "four sums of squares added in order: %.17g vs %.17g", all, chain);
    moe_cuda_free(g_), moe_cuda_free(s_), moe_cuda_free(acc_);
    free(g);
}

// The distillation losses and squared error: double exp and log on both
// sides (the device's within an ulp of the host's libm), so the values agree to
// about 1e-15 in double and the gradients in the last float bit at most; the
// squared error has no transcendental function and gives the CPU's bits.
static void test_distill(void)
{
    struct moe_err err;
    static const size_t Os[] = { 2, 37, 300 };
    const size_t T = 2000;
    for (size_t oi = 0; oi < 3; oi++)
        for (int kind = 0; kind < 3; kind++) { // KD at tau 2 and 0.5, the symmetric KL
            size_t O = Os[oi], n = T * O;
            float tau = kind == 0 ? 2.0f : 0.5f, scale = 0.3f;
            float *s = malloc(n * 4), *z = malloc(n * 4), *dy = malloc(n * 4), *dy2 = malloc(n * 4), *m = malloc(n * 4);
            fill(s, n, 800 + (uint32_t)oi, -6.0f, 6.0f), fill(z, n, 810 + (uint32_t)oi, -6.0f, 6.0f);
            fill(dy, n, 820, -0.1f, 0.1f);
            for (size_t i = 0; i < n; i++) // the terms: what was there, and scale tau |q - p| <= scale tau
                m[i] = fabsf(dy[i]) + scale * (kind == 2 ? 1.0f + 2.0f * 12.0f : tau);
            float *s_ = dev(s, n * 4), *z_ = dev(z, n * 4), *dy_ = dev(dy, n * 4);
            double *scr = dev(NULL, MOE_CUDA_DISTILL_SCRATCH(T) * sizeof(double)), sum2 = 0.0;
            double sum1 = kind == 2 ? moe_symkl_forward_backward(dy, s, z, T, O, scale)
                                    : moe_kd_forward_backward(dy, s, z, T, O, tau, scale);
            int rc = kind == 2 ? moe_cuda_symkl(&sum2, dy_, s_, z_, T, O, scale, scr, &err)
                               : moe_cuda_kd(&sum2, dy_, s_, z_, T, O, tau, scale, scr, &err);
            EXPECT(rc == 0, "%s", err.msg);
            host(dy2, dy_, n * 4);
            EXPECT(fabs(sum2 - sum1) <= 1e-12 * fabs(sum1), "%s sum %.17g vs %.17g", kind == 2 ? "symkl" : "kd", sum2,
                   sum1);
            close_terms(dy2, dy, m, n, 1e-6, kind == 2 ? "symkl dy" : "kd dy");
            moe_cuda_free(s_), moe_cuda_free(z_), moe_cuda_free(dy_), moe_cuda_free(scr);
            free(s), free(z), free(dy), free(dy2), free(m);
        }
    const size_t n = 100003;
    float *y = malloc(n * 4), *d = malloc(n * 4), *dy = malloc(n * 4), *dy2 = malloc(n * 4);
    fill(y, n, 830, -2.0f, 2.0f), fill(d, n, 831, -2.0f, 2.0f), fill(dy, n, 832, -0.1f, 0.1f);
    float *y_ = dev(y, n * 4), *d_ = dev(d, n * 4), *dy_ = dev(dy, n * 4);
    double *scr = dev(NULL, sizeof(double)), sum2 = 0.0, sum1 = moe_mse_forward_backward(dy, y, d, 1, n, 0.7f);
    EXPECT(moe_cuda_mse(&sum2, dy_, y_, d_, n, 0.7f, scr, &err) == 0, "%s", err.msg);
    host(dy2, dy_, n * 4);
    EXPECT(memcmp(&sum1, &sum2, sizeof sum1) == 0, "mse sum %.17g vs %.17g", sum2, sum1);
    close_floats(dy2, dy, n, 0.0, "mse dy");
    moe_cuda_free(y_), moe_cuda_free(d_), moe_cuda_free(dy_), moe_cuda_free(scr);
    free(y), free(d), free(dy), free(dy2);
}

// blas.h's GEMM against the CPU library's (core/gemm.h) for each transpose
// pair, beta 0 and 1, with leading dimensions past the width: cuBLAS sums in its
// own order with FMA, so within 1e-5 of the magnitude of the terms (sum |a b|
// plus |beta c|); the host emulation gives moe_gemm's bits.
static void test_gemm(void)
{
    struct moe_err err;
    const size_t M = 67, N = 45, K = 129, ld = 140;
    float *A = malloc(ld * ld * 4), *B = malloc(ld * ld * 4), *C = malloc(M * ld * 4), *C2 = malloc(M * ld * 4);
    float *m = malloc(M * ld * 4), *Aa = malloc(ld * ld * 4), *Ba = malloc(ld * ld * 4);
    fill(A, ld * ld, 900, -1.0f, 1.0f), fill(B, ld * ld, 901, -1.0f, 1.0f);
    for (size_t i = 0; i < ld * ld; i++)
        Aa[i] = fabsf(A[i]), Ba[i] = fabsf(B[i]);
    float *A_ = dev(A, ld * ld * 4), *B_ = dev(B, ld * ld * 4), *C_ = dev(NULL, M * ld * 4);
    for (int q = 0; q < 8; q++) {
        int ta = q & 1, tb = q >> 1 & 1;
        float beta = q >> 2 ? 1.0f : 0.0f;
        fill(C, M * ld, 902 + (uint32_t)q, -1.0f, 1.0f);
        for (size_t i = 0; i < M * ld; i++)
            m[i] = beta * fabsf(C[i]);
        moe_cuda_to_device(C_, C, M * ld * 4, &err);
        moe_gemm(ta, tb, M, N, K, 0.5f, A, ld, B, ld, beta, C, ld);
        moe_gemm(ta, tb, M, N, K, 0.5f, Aa, ld, Ba, ld, 1.0f, m, ld);
        EXPECT(moe_cuda_gemm(ta, tb, M, N, K, 0.5f, A_, ld, B_, ld, beta, C_, ld, "test", &err) == 0, "%s", err.msg);
        host(C2, C_, M * ld * 4);
        char what[64];
        snprintf(what, sizeof what, "gemm ta %d tb %d beta %g", ta, tb, beta);
        close_terms(C2, C, m, M * ld, 1e-5, what);
    }
    // cuBLAS takes int sizes: one past INT_MAX is refused before any cast or
    // operand is looked at, the groups' too (one group: C untouched)
    const size_t big = (size_t)INT_MAX + 1;
    EXPECT(moe_cuda_gemm(0, 0, M, N, K, 1.0f, A_, big, B_, ld, 0.0f, C_, ld, "big", &err) == MOE_EINVAL &&
               strstr(err.msg, "cuBLAS (big): a size over INT_MAX"),
           "a GEMM leading dimension past INT_MAX not refused: %s", err.msg);
    struct moe_cuda_gemm_group huge[2] = { { M, N, K, A_, B_, C_ }, { big, N, K, A_, B_, C_ } };
    host(C, C_, M * ld * 4);
    EXPECT(moe_cuda_gemm_grouped(0, 0, 2, huge, 1.0f, ld, ld, 0.0f, ld, "big", &err) == MOE_EINVAL &&
               strstr(err.msg, "cuBLAS (big): a size over INT_MAX (M 2147483648"),
           "a grouped GEMM size past INT_MAX not refused: %s", err.msg);
    host(C2, C_, M * ld * 4);
    EXPECT(memcmp(C, C2, M * ld * 4) == 0, "gemm: a refused grouped GEMM changed C");
    moe_cuda_free(A_), moe_cuda_free(B_), moe_cuda_free(C_);
    free(A), free(B), free(C), free(C2), free(m), free(Aa), free(Ba);
}

// blas.h's grouped GEMM against one moe_gemm per group, as the device layer
// runs it over expert blocks: the groups' own row counts (the forward's and
// the input gradients' M) or inner dimensions (the weight gradients' K), some
// 0 (skipped, C untouched, as moe_cuda_gemm; K 0 with beta 0 zeroes C), for
// each transpose pair and beta 0 and 1, leading dimensions past the width,
// every group's operands in its own part of one device buffer each. On a GPU
// (cublasGemmGroupedBatchedEx, or its cublasSgemm fallback) within test_gemm's
// tolerance; on the host emulation, a loop over moe_cuda_gemm, moe_gemm's bits.
static void test_gemm_grouped(void)
{
    enum { G = 6 };
    struct moe_err err;
    const size_t n[G] = { 37, 0, 5, 1, 0, 70 }, fix = 67, N = 45, ld = 140, part = ld * ld, all = G * part;
#ifdef MOE_TEST_CUDA_HOST
    const double tol = 0.0;
#else
    const double tol = 1e-5;
#endif
    float *A = malloc(all * 4), *B = malloc(all * 4), *C = malloc(all * 4), *C2 = malloc(all * 4);
    float *m = malloc(all * 4), *Aa = malloc(all * 4), *Ba = malloc(all * 4);
    fill(A, all, 910, -1.0f, 1.0f), fill(B, all, 911, -1.0f, 1.0f);
    for (size_t i = 0; i < all; i++)
        Aa[i] = fabsf(A[i]), Ba[i] = fabsf(B[i]);
    float *A_ = dev(A, all * 4), *B_ = dev(B, all * 4), *C_ = dev(NULL, all * 4);
    for (int q = 0; q < 16; q++) {
        int ta = q & 1, tb = q >> 1 & 1, vary_k = q >> 3 & 1;
        float beta = q >> 2 & 1 ? 1.0f : 0.0f;
        struct moe_cuda_gemm_group g[G];
        fill(C, all, 912 + (uint32_t)q, -1.0f, 1.0f);
        for (size_t i = 0; i < all; i++)
            m[i] = beta * fabsf(C[i]);
        moe_cuda_to_device(C_, C, all * 4, &err);
        for (size_t i = 0; i < G; i++) {
            size_t M = vary_k ? fix : n[i], K = vary_k ? n[i] : fix, o = i * part;
            g[i] = (struct moe_cuda_gemm_group){ M, N, K, A_ + o, B_ + o, C_ + o };
            moe_gemm(ta, tb, M, N, K, 0.5f, A + o, ld, B + o, ld, beta, C + o, ld);
            moe_gemm(ta, tb, M, N, K, 0.5f, Aa + o, ld, Ba + o, ld, 1.0f, m + o, ld);
        }
        EXPECT(moe_cuda_gemm_grouped(ta, tb, G, g, 0.5f, ld, ld, beta, ld, "test", &err) == 0, "%s", err.msg);
        host(C2, C_, all * 4);
        char what[64];
        snprintf(what, sizeof what, "grouped gemm ta %d tb %d beta %g %s", ta, tb, beta, vary_k ? "K" : "M");
        close_terms(C2, C, m, all, tol, what);
    }
    // no group, and only empty ones (M 0; K 0 with beta 1): C as the last case left it
    struct moe_cuda_gemm_group none[2] = { { 0, N, fix, A_, B_, C_ }, { fix, N, 0, A_, B_, C_ } };
    EXPECT(moe_cuda_gemm_grouped(0, 1, 0, none, 1.0f, ld, ld, 0.0f, ld, "test", &err) == 0, "%s", err.msg);
    EXPECT(moe_cuda_gemm_grouped(0, 1, 2, none, 1.0f, ld, ld, 1.0f, ld, "test", &err) == 0, "%s", err.msg);
    host(m, C_, all * 4);
    EXPECT(memcmp(m, C2, all * 4) == 0, "grouped gemm: empty groups changed C");
#if defined(MOE_TEST_CUDA_HOST) || defined(MOE_TEST_CUDA_SIM)
    // Groups that could not run concurrently: a C that meets another group's C
    // (one row shared), or another group's A; empty groups may point anywhere.
    // The emulation refuses them with its own message; so does the simulator's
    // cuBLAS (tests/cuda_sim/cublas.cc) for the grouped call, which cuBLAS would
    // run as a race, and blas.cu names the call that failed.
#ifdef MOE_TEST_CUDA_HOST
    const int refused = MOE_EINVAL, grouped = 1;
    const char *said[2] = { "grouped GEMM (clash): group 0 writes what group 1 writes",
                            "group 0 writes what group 1 reads" };
#else
    const int refused = MOE_EIO, grouped = strcmp(moe_cuda_gemm_grouped_path(), "cublasGemmGroupedBatchedEx") == 0;
    const char *said[2] = { "cublasGemmGroupedBatchedEx (clash)", "cublasGemmGroupedBatchedEx (clash)" };
#endif
    struct moe_cuda_gemm_group clash[3] = { { 4, N, fix, A_, B_, C_ }, { 4, N, fix, A_, B_, C_ + 3 * ld },
                                            { 0, N, fix, A_, B_, C_ } };
    for (int c = 0; c < 2 && grouped; c++) {
        if (c == 1) // group 1 reads group 0's C as its A
            clash[1] = (struct moe_cuda_gemm_group){ 4, N, fix, (const float *)C_ + 2 * ld, B_, C_ + 4 * ld };
        EXPECT(moe_cuda_gemm_grouped(0, 1, 3, clash, 1.0f, ld, ld, 0.0f, ld, "clash", &err) == refused &&
                   strstr(err.msg, said[c]),
               "grouped gemm: overlapping groups (case %d) not refused: %s", c, err.msg);
    }
    clash[1].A = A_;
    EXPECT(moe_cuda_gemm_grouped(0, 1, 3, clash, 1.0f, ld, ld, 0.0f, ld, "clash", &err) == 0, "%s", err.msg);
#endif
    moe_cuda_free(A_), moe_cuda_free(B_), moe_cuda_free(C_);
    free(A), free(B), free(C), free(C2), free(m), free(Aa), free(Ba);
}

#ifdef MOE_TEST_CUDA_HOST
// The emulation's own checks of what a GPU would fault on or corrupt silently
// (tests/cuda_host.c): a copy's device side must lie inside one live device
// allocation and its host side outside all of them; so must a memset's and a
// GEMM's operands. In guard mode (MOE_CUDA_HOST_GUARD=1) host code that reads
// device memory directly is killed by SIGSEGV, with the allocation named.
static void test_emulation_checks(void)
{
    struct moe_err err;
    float h[64] = { 0 }, h2[64];
    float *d = dev(h, sizeof h), *d2 = dev(NULL, sizeof h);
    EXPECT(moe_cuda_to_device(h2, h, sizeof h, &err) == MOE_EINVAL && strstr(err.msg, "is not device memory"),
           "a host destination of a host-to-device copy not refused: %s", err.msg);
    EXPECT(moe_cuda_to_device(d, d2, sizeof h, &err) == MOE_EINVAL &&
               strstr(err.msg, "the source is device memory ('test')"),
           "a device source of a host-to-device copy not refused: %s", err.msg);
    EXPECT(moe_cuda_to_host(d2, d, sizeof h, &err) == MOE_EINVAL && strstr(err.msg, "the destination is device"),
           "a device destination of a device-to-host copy not refused: %s", err.msg);
    EXPECT(moe_cuda_to_host(h2, d + 1, sizeof h, &err) == MOE_EINVAL &&
               strstr(err.msg, "runs 4 bytes past the end of the device allocation 'test' (256 bytes, from offset 4)"),
           "a copy past the end of an allocation not refused: %s", err.msg);
    EXPECT(moe_cuda_copy(d2, h, sizeof h, &err) == MOE_EINVAL && strstr(err.msg, "is not device memory"),
           "a host source of a device-to-device copy not refused: %s", err.msg);
    EXPECT(moe_cuda_memset(d + 60, 0, 5 * sizeof *d, "tail", &err) == MOE_EINVAL && strstr(err.msg, "cudaMemset: tail"),
           "a memset past the end not refused: %s", err.msg);
    // C (8 x 8, ld 8) fits; with ld 9 its last row ends 7 floats past the end
    EXPECT(moe_cuda_gemm(0, 0, 8, 8, 0, 1.0f, d, 8, d, 8, 0.0f, d2, 8, "fits", &err) == 0, "%s", err.msg);
    EXPECT(moe_cuda_gemm(0, 0, 8, 8, 0, 1.0f, d, 8, d, 8, 0.0f, d2, 9, "long", &err) == MOE_EINVAL &&
               strstr(err.msg, "long: C runs 28 bytes past the end"),
           "a GEMM operand past the end not refused: %s", err.msg);
    EXPECT(moe_cuda_gemm(0, 0, 8, 8, 8, 1.0f, h, 8, d, 8, 0.0f, d2, 8, "host A", &err) == MOE_EINVAL &&
               strstr(err.msg, "host A: A (") && strstr(err.msg, "is not device memory"),
           "a host GEMM operand not refused: %s", err.msg);
    EXPECT(moe_cuda_copy(d2, d, sizeof h, &err) == 0, "%s", err.msg);
    host(h2, d2, sizeof h);
    EXPECT(memcmp(h, h2, sizeof h) == 0, "a device-to-device copy changed the bytes");
    // a kernel's device pointer arguments, struct fields included: a host pointer there is an illegal address on a GPU
    EXPECT(moe_cuda_add(h2, d, 64, &err) == MOE_EINVAL && strstr(err.msg, "moe_cuda_add: y (") &&
               strstr(err.msg, "is not device memory"),
           "a host y of moe_cuda_add not refused: %s", err.msg);
    EXPECT(moe_cuda_act_forward(MOE_CUDA_RELU, d2, d + 1, 64, &err) == MOE_EINVAL &&
               strstr(err.msg, "moe_cuda_act_forward: x runs 4 bytes past the end of the device allocation 'test'"),
           "an activation's input past the end not refused: %s", err.msg);
    const size_t offset[2] = { 0, 4 };
    int32_t row_tok[4] = { 0, 1, 2, 3 };
    struct moe_cuda_plan plan = { .row_tok = row_tok, .offset = dev(offset, sizeof offset) };
    EXPECT(moe_cuda_gather(d2, d, &plan, 1, 4, 4, &err) == MOE_EINVAL &&
               strstr(err.msg, "moe_cuda_gather: p->row_tok (") && strstr(err.msg, "is not device memory"),
           "a host plan array of moe_cuda_gather not refused: %s", err.msg);
    plan.row_tok = dev(row_tok, sizeof row_tok);
    EXPECT(moe_cuda_gather(d2, d, &plan, 1, 4, 4, &err) == 0, "%s", err.msg);
    struct moe_k_optim o;
    moe_k_optim_setup(&o, MOE_K_ADAMW, 1e-3, 0.0, 0.0, 0.9, 0.999, 1e-8, 1, 1.0f);
    EXPECT(moe_cuda_optim_update(&o, d, d2, h2, d2, 64, &err) == MOE_EINVAL &&
               strstr(err.msg, "moe_cuda_optim_update: m (") && strstr(err.msg, "is not device memory"),
           "a host moment buffer of moe_cuda_optim_update not refused: %s", err.msg);
    moe_cuda_free(plan.row_tok), moe_cuda_free(plan.offset);
    float *gone = dev(NULL, sizeof h);
    moe_cuda_free(gone);
    EXPECT(moe_cuda_add(gone, d, 64, &err) == MOE_EINVAL && strstr(err.msg, "moe_cuda_add: y ("),
           "a freed y of moe_cuda_add not refused: %s", err.msg);
    const char *g = getenv("MOE_CUDA_HOST_GUARD");
    if (g && strcmp(g, "1") == 0) {
        int fd[2];
        EXPECT(pipe(fd) == 0, "pipe");
        pid_t pid = fork();
        if (pid == 0) {
            dup2(fd[1], 2);
            volatile float x = d2[3]; // host code reading device memory: a GPU faults here, and so must this
            (void)x;
            _exit(0);
        }
        close(fd[1]);
        char buf[4096] = { 0 };
        size_t got = 0;
        for (ssize_t r; got < sizeof buf - 1 && (r = read(fd[0], buf + got, sizeof buf - 1 - got)) > 0;)
            got += (size_t)r;
        close(fd[0]);
        int status = 0;
        waitpid(pid, &status, 0);
        EXPECT(WIFSIGNALED(status) && WTERMSIG(status) == SIGSEGV, "guard mode: a host read of device memory was not "
                                                                    "killed by SIGSEGV (status %d)", status);
        EXPECT(strstr(buf, "host code touched device memory: 'test' (256 bytes) at offset 12") != NULL,
               "guard mode: the fault does not name the allocation: %s", buf);
        printf("# guard mode: a host read of device memory, killed by signal %d\n",
               WIFSIGNALED(status) ? WTERMSIG(status) : 0);
    }
    moe_cuda_free(d), moe_cuda_free(d2);
}
#endif

int main(void)
{
    int rc = cuda_test_begin();
    if (rc)
        return rc;
    test_route();
    test_route_ec();
    test_route_ec_ties();
    test_route_hash();
    test_bias_update();
    test_dispatch(20000, 96);
    test_dispatch(317, 300);
    test_aux();
    test_aux_shazeer();
    test_embed();
    test_lang_rows();
    test_norm();
    test_optim();
    test_ce();
    test_act();
    test_attention();
    test_dropout();
    test_linear_bias();
    test_sum_sq();
    test_fold();
    test_lora_merge();
    test_distill();
    test_gemm();
    test_gemm_grouped();
#ifdef MOE_TEST_CUDA_HOST
    test_emulation_checks();
#endif
    printf("%s: %d failures\n", failures ? "FAIL" : "ok", failures);
    return failures ? 1 : 0;
}
