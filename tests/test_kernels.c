// test_kernels.c: the GPU kernels' per-thread work (lib/cuda/kernels/*.h, host/
// device functions) run on the CPU over the same index space a launch covers,
// against the CPU library they follow operation by operation. Compiled by the
// same compiler with the same flags, they must agree to the bit: this checks
// the kernels' logic (indexing, lanes, ties, random counters) on every CI run,
// GPU or not. What differs on a device (its expf, log and FMA contraction) is
// for the GPU parity tests.
//   - Philox words, uniforms and normals against core/rng.c;
//   - routing (softmax, noisy logits, top-K with ties, gates, GShard's random
//     second expert, bias balancing; expert choice in every ec_eval mode with
//     ties forced, and hash routing) and its backward against moe/router.c for
//     every router these kernels cover;
//   - LayerNorm and RMSNorm forward and backward by (row, lane) and by column
//     against nn/norm.c;
//   - GD, SGD and AdamW updates, clipped or not, against train/optim.c;
//   - the switch / gshard / topk-all balancing losses and the z-loss, values
//     and gradients, against moe/aux_loss.c;
//   - the token + position embedding, forward and backward (tokens sorted
//     stably by id), against nn/embedding.c;
//   - the capacity plan (keep order by priority, keep, offsets, rows) for both
//     drop policies, and the gather and combine around the experts (and the
//     combine's backward), against
//     moe/dispatch.c and moe/experts.c;
//   - softmax cross-entropy (row losses, argmax, gradient, the blocked batch
//     sum) and the ReLU, GELU and SiLU activations, forward and backward,
//     against nn/loss.c and nn/activation.c, given the CPU's exponentials and
//     tanh (the one part a device computes its own way);
//   - causal self-attention, forward and backward, against nn/attention.c (bit
//     for bit on its tile path, hs <= 64, given SLEEF's exponentials; within a
//     stated tolerance on its GEMM path) and against a double-precision twin,
//     and its gradient against central differences; with attention-probability
//     dropout, bit for bit on the tile path;
//   - inverted dropout over runs and over gathered rows against nn/dropout.c;
//   - the linear layer's bias, forward and gradient, against nn/linear.c;
//   - the gradient norm's sum of squares against train/optim.c;
//   - the device layer's jitter, SwiGLU product and backward, and the
//     experts' gradient scatter against moe/moe_layer.c's formula and
//     moe/experts.c;
//   - knowledge distillation, MoEBERT's symmetric KL and squared error,
//     values and gradients, against nn/loss.c.
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/gemm.h"
#include "core/params.h"
#include "core/rng.h"
#include "core/vmath.h"
#include "cuda/kernels/attention.h"
#include "cuda/kernels/aux.h"
#include "cuda/kernels/dispatch.h"
#include "cuda/kernels/distill.h"
#include "cuda/kernels/dropout.h"
#include "cuda/kernels/embed.h"
#include "cuda/kernels/experts.h"
#include "cuda/kernels/linear.h"
#include "cuda/kernels/loss.h"
#include "cuda/kernels/norm.h"
#include "cuda/kernels/optim.h"
#include "cuda/kernels/route.h"
#include "cuda/ops.h"
#include "moe/aux_loss.h"
#include "moe/dispatch.h"
#include "moe/experts.h"
#include "moe/router.h"
#include "nn/nn.h"
#include "train/train.h"
#include "gradcheck.h"
#include "testutil.h"

static void fill(float *x, size_t n, uint32_t stream, float lo, float hi)
{
    struct moe_rng r = moe_rng_make(99, MOE_RNG_DATA, stream);
    moe_rng_fill_uniform(&r, x, n, lo, hi);
}

START_TEST(test_philox)
{
    struct moe_rng r = moe_rng_make(0x123456789abcdefull, MOE_RNG_NOISE, 77);
    for (uint64_t i = 0; i < 4096; i += 7) {
        uint64_t idx = i * 0x10001ull + ((uint64_t)5 << 40);
        uint32_t w[4];
        moe_philox_words(r.seed, r.purpose, r.stream, idx >> 2, w);
        ck_assert_uint_eq(w[idx & 3], moe_rng_u32(&r, idx));
        ck_assert(moe_philox_u01(w[idx & 3]) == moe_rng_uniform(&r, idx));
        moe_philox_words(r.seed, r.purpose, r.stream, idx, w);
        float a = moe_philox_normal(w[0], w[1]), b = moe_rng_normal(&r, idx);
        ck_assert(memcmp(&a, &b, sizeof a) == 0);
    }
}
END_TEST

// The router's forward for T tokens by the kernels, one token at a time (one
// thread each on a GPU), into r2's buffers.
static void route_by_kernels(struct moe_route *r2, const struct moe_router_cfg *c, const float *bias, int train,
                             const struct moe_rng *rng, uint64_t base, size_t T)
{
    int E = (int)c->E, S = (int)moe_router_slots(c);
    int noisy = c->type == MOE_ROUTER_NOISY_TOPK, raw = c->type == MOE_ROUTER_SWITCH || c->type == MOE_ROUTER_DEEPSEEK;
    const float *sel_bias = c->bias_balance && moe_router_info(c->type)->bias_balance ? bias : NULL;
    for (size_t t = 0; t < T; t++) {
        size_t o = t * (size_t)E, os = t * (size_t)S;
        moe_k_softmax_row(r2->p + o, r2->lse + t, r2->z + o, E);
        const float *v = r2->z + o;
        if (noisy) {
            if (train) {
                moe_k_noisy_row(r2->h + o, r2->eps + o, r2->z + o, r2->u + o, E, rng->seed, rng->purpose, rng->stream,
                                base + o);
            } else {
                memset(r2->eps + o, 0, (size_t)E * sizeof(float));
                memcpy(r2->h + o, r2->z + o, (size_t)E * sizeof(float));
            }
            v = r2->h + o;
        }
        moe_k_topk_row(r2->sel + os, noisy ? v : r2->p + o, sel_bias, E, S);
        moe_k_gates_row(r2->idx + os, r2->gate + os, r2->prio + os, r2->sel + os, v, r2->p + o, S,
                        raw ? MOE_K_GATE_RAW : MOE_K_GATE_RENORM);
        if (c->type == MOE_ROUTER_GSHARD && c->second == MOE_SECOND_RANDOM && train)
            moe_k_gshard_second(r2->idx + os, r2->gate + os, rng->seed, rng->purpose, rng->stream, base + t);
    }
}

static void same_floats(const float *a, const float *b, size_t n, const char *what)
{
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(memcmp(a + i, b + i, sizeof *a) == 0, "%s[%zu]: %.9g vs %.9g", what, i, a[i], b[i]);
}

static void same_ints(const int32_t *a, const int32_t *b, size_t n, const char *what)
{
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(a[i] == b[i], "%s[%zu]: %d vs %d", what, i, a[i], b[i]);
}

// Two routes' p, lse (T tokens, E experts) and sel, idx, gate, prio (T, S), bit for bit.
static void same_route(const struct moe_route *a, const struct moe_route *b, size_t T, size_t E, size_t S)
{
    same_floats(a->p, b->p, T * E, "p");
    same_floats(a->lse, b->lse, T, "lse");
    same_ints(a->sel, b->sel, T * S, "sel");
    same_ints(a->idx, b->idx, T * S, "idx");
    same_floats(a->gate, b->gate, T * S, "gate");
    same_floats(a->prio, b->prio, T * S, "prio");
}

START_TEST(test_route)
{
    static const struct {
        enum moe_router_type type;
        size_t E, K;
        int bias, train;
    } cases[] = {
        { MOE_ROUTER_SOFTMAX, 8, 2, 0, 1 },  { MOE_ROUTER_SOFTMAX, 8, 3, 1, 1 },   { MOE_ROUTER_SOFTMAX, 64, 8, 0, 0 },
        { MOE_ROUTER_SWITCH, 8, 1, 0, 1 },   { MOE_ROUTER_SWITCH, 16, 1, 1, 0 },   { MOE_ROUTER_DEEPSEEK, 8, 2, 0, 1 },
        { MOE_ROUTER_DEEPSEEK, 64, 6, 1, 1 }, { MOE_ROUTER_GSHARD, 8, 2, 0, 1 },   { MOE_ROUTER_GSHARD, 8, 2, 0, 0 },
        { MOE_ROUTER_NOISY_TOPK, 8, 2, 0, 1 }, { MOE_ROUTER_NOISY_TOPK, 32, 4, 0, 0 },
    };
    const size_t T = 53;
    struct moe_err err;
    for (size_t ci = 0; ci < sizeof cases / sizeof *cases; ci++) {
        struct moe_router_cfg c = { cases[ci].type, cases[ci].E, cases[ci].K, MOE_SECOND_RANDOM, 0.0, cases[ci].bias, MOE_EC_EVAL_FULL, 0 };
        size_t E = c.E, S = moe_router_slots(&c);
        int noisy = c.type == MOE_ROUTER_NOISY_TOPK, train = cases[ci].train;
        struct moe_route r1, r2;
        ck_assert_int_eq(moe_route_alloc(&r1, T, E, S, noisy, &err), 0);
        ck_assert_int_eq(moe_route_alloc(&r2, T, E, S, noisy, &err), 0);
        // logits on a coarse grid, so that many tokens have exact ties
        fill(r1.z, T * E, (uint32_t)ci, -2.0f, 2.0f);
        for (size_t i = 0; i < T * E; i++)
            r1.z[i] = i % 3 == 0 ? roundf(r1.z[i] * 2.0f) / 2.0f : r1.z[i];
        if (noisy)
            fill(r1.u, T * E, 100 + (uint32_t)ci, -3.0f, 25.0f); // both sides of softplus's cut at 20
        memcpy(r2.z, r1.z, T * E * sizeof(float));
        if (noisy)
            memcpy(r2.u, r1.u, T * E * sizeof(float));
        float bias[64];
        fill(bias, E, 200, -0.05f, 0.05f);
        struct moe_rng rng = moe_rng_make(4242, MOE_RNG_NOISE, 9);
        uint64_t base = (uint64_t)3 << 40;
        moe_router_forward(&r1, &c, bias, NULL, train, &rng, base, T);
        route_by_kernels(&r2, &c, bias, train, &rng, base, T);
        same_route(&r1, &r2, T, E, S);
        if (noisy) {
            same_floats(r1.eps, r2.eps, T * E, "eps");
            same_floats(r1.h, r2.h, T * E, "h");
        }
        // the backward from a gate gradient, one token per thread
        float *dg = malloc(T * S * 4), *dz1 = calloc(T * E, 4), *dz2 = calloc(T * E, 4);
        float *du1 = noisy ? calloc(T * E, 4) : NULL, *du2 = noisy ? calloc(T * E, 4) : NULL;
        fill(dg, T * S, 150 + (uint32_t)ci, -1.0f, 1.0f);
        moe_router_backward(dz1, du1, dg, &r1, &c);
        int raw = c.type == MOE_ROUTER_SWITCH || c.type == MOE_ROUTER_DEEPSEEK;
        for (size_t t = 0; t < T; t++)
            moe_k_route_backward_row(dz2 + t * E, noisy ? du2 + t * E : NULL, dg + t * S, r2.sel + t * S,
                                     r2.idx + t * S, r2.p + t * E, (noisy ? r2.h : r2.z) + t * E,
                                     noisy ? r2.eps + t * E : NULL, noisy ? r2.u + t * E : NULL, (int)E, (int)S,
                                     raw ? MOE_K_GATE_RAW : MOE_K_GATE_RENORM);
        same_floats(dz1, dz2, T * E, "router dz");
        if (noisy)
            same_floats(du1, du2, T * E, "router du");
        free(dg), free(dz1), free(dz2), free(du1), free(du2);
        if (c.type == MOE_ROUTER_GSHARD && train) { // the random policy skipped some second slots
            size_t skipped = 0;
            for (size_t t = 0; t < T; t++)
                skipped += r1.idx[t * 2 + 1] < 0;
            ck_assert_uint_gt(skipped, 0);
        }
        moe_route_release(&r1);
        moe_route_release(&r2);
    }
}
END_TEST

// Expert choice by the kernels: the per-token softmax, then one (t, e) pair
// per thread (FULL, PREFIX, POSITION) or one token per thread (TOPK); with
// threads > 0, FULL by radix selection instead, each expert's block of that
// many threads emulated in turn (the GPU's training path).
static void route_ec_by_kernels(struct moe_route *r2, const struct moe_router_cfg *c, int train, size_t T,
                                int threads)
{
    int E = (int)c->E;
    for (size_t t = 0; t < T; t++)
        moe_k_softmax_row(r2->p + t * E, r2->lse + t, r2->z + t * E, E);
    enum moe_k_ec mode = train ? MOE_K_EC_FULL : (enum moe_k_ec)c->ec_eval;
    if (mode == MOE_K_EC_TOPK) {
        for (size_t t = 0; t < T; t++)
            moe_k_ec_topk_row(r2->sel + t * E, r2->idx + t * E, r2->gate + t * E, r2->prio + t * E, r2->p + t * E, E,
                              c->ec_factor);
        return;
    }
    if (mode == MOE_K_EC_FULL && threads > 0) {
        uint32_t *cnt = malloc((size_t)threads * MOE_K_SELECT_BINS * sizeof *cnt);
        ck_assert_ptr_nonnull(cnt);
        for (int e = 0; e < E; e++)
            moe_k_ec_select_column(r2->sel, r2->idx, r2->gate, r2->prio, cnt, r2->p, (int64_t)T, E, e, c->ec_factor,
                                   threads);
        free(cnt);
        return;
    }
    for (size_t t = 0; t < T; t++)
        for (int e = 0; e < E; e++)
            moe_k_ec_slot(r2->sel, r2->idx, r2->gate, r2->prio, r2->p, (int64_t)T, E, (int64_t)t, e, c->ec_factor,
                          mode, (int64_t)c->seq);
}

// The quota against moe_router_quota, including products that land just above
// an integer in floating point (1.1 * 100 / 10).
START_TEST(test_route_ec_quota)
{
    static const double f[] = { 0.0, 0.1, 0.5, 1.0, 1.1, 1.25, 2.0, 2.5, 3.7, 8.0, 1000.0 };
    for (size_t i = 0; i < sizeof f / sizeof *f; i++)
        for (size_t E = 1; E <= 16; E++)
            for (size_t T = 0; T <= 130; T++) {
                struct moe_router_cfg c = { MOE_ROUTER_EXPERT_CHOICE, E, 1, MOE_SECOND_RANDOM, f[i], 0, MOE_EC_EVAL_FULL, 0 };
                ck_assert_int_eq(moe_k_ec_quota(f[i], (int64_t)T, (int64_t)E), (int64_t)moe_router_quota(&c, T));
            }
}
END_TEST

// Expert choice's forward (every ec_eval mode) and backward against
// moe/router.c, to the bit, with ties forced: duplicated logit rows (identical
// p in a column, so the lower token index must win) and a coarse grid.
START_TEST(test_route_ec)
{
    static const struct {
        size_t T, E;
        double f;
        int train;
        enum moe_ec_eval eval;
        size_t seq;
    } cases[] = {
        { 53, 8, 1.0, 1, MOE_EC_EVAL_FULL, 0 },     { 53, 8, 2.0, 1, MOE_EC_EVAL_FULL, 0 },
        { 100, 10, 1.1, 1, MOE_EC_EVAL_FULL, 0 },   { 64, 16, 0.5, 1, MOE_EC_EVAL_FULL, 0 },
        { 7, 4, 3.7, 1, MOE_EC_EVAL_FULL, 0 },      { 9, 3, 100.0, 1, MOE_EC_EVAL_FULL, 0 }, // C = T
        { 1, 4, 1.0, 1, MOE_EC_EVAL_FULL, 0 },      { 40, 1, 0.5, 1, MOE_EC_EVAL_FULL, 0 },
        { 48, 8, 2.0, 1, MOE_EC_EVAL_PREFIX, 8 },   // training ignores ec_eval
        { 48, 8, 1.0, 0, MOE_EC_EVAL_FULL, 8 },     { 48, 8, 2.0, 0, MOE_EC_EVAL_PREFIX, 8 },
        { 60, 6, 1.5, 0, MOE_EC_EVAL_PREFIX, 12 },  { 48, 8, 2.0, 0, MOE_EC_EVAL_POSITION, 8 },
        { 60, 6, 1.0, 0, MOE_EC_EVAL_POSITION, 5 }, { 30, 4, 1.0, 0, MOE_EC_EVAL_PREFIX, 0 },
        { 53, 8, 2.0, 0, MOE_EC_EVAL_TOPK, 0 },     { 53, 8, 0.2, 0, MOE_EC_EVAL_TOPK, 0 },
        { 20, 4, 9.0, 0, MOE_EC_EVAL_TOPK, 0 },
    };
    struct moe_err err;
    size_t boundary_ties = 0;
    for (size_t ci = 0; ci < sizeof cases / sizeof *cases; ci++) {
        size_t T = cases[ci].T, E = cases[ci].E;
        struct moe_router_cfg c = { MOE_ROUTER_EXPERT_CHOICE, E, 1, MOE_SECOND_RANDOM, cases[ci].f, 0,
                                    cases[ci].eval, cases[ci].seq };
        size_t S = moe_router_slots(&c);
        ck_assert_uint_eq(S, E);
        struct moe_route r1, r2;
        ck_assert_int_eq(moe_route_alloc(&r1, T, E, S, 0, &err), 0);
        ck_assert_int_eq(moe_route_alloc(&r2, T, E, S, 0, &err), 0);
        fill(r1.z, T * E, 300 + (uint32_t)ci, -2.0f, 2.0f);
        for (size_t i = 0; i < T * E; i++)
            r1.z[i] = i % 3 == 0 ? roundf(r1.z[i] * 2.0f) / 2.0f : r1.z[i];
        for (size_t t = 0; t < T; t++) // every third token repeats an earlier one: equal p in every column
            if (t % 3 == 2)
                memcpy(r1.z + t * E, r1.z + (t / 2) * E, E * sizeof(float));
        memcpy(r2.z, r1.z, T * E * sizeof(float));
        int train = cases[ci].train;
        moe_router_forward(&r1, &c, NULL, NULL, train, NULL, 0, T);
        // the pair rank, then (FULL) radix selection by blocks of 1, 5 and 256 threads
        static const int threads[] = { 0, 1, 5, 256 };
        int full = train || c.ec_eval == MOE_EC_EVAL_FULL;
        for (size_t v = 0; v < (full ? 4u : 1u); v++) {
            for (size_t i = 0; i < T * S; i++)
                r2.sel[i] = r2.idx[i] = 7, r2.gate[i] = r2.prio[i] = -9.0f; // every slot must be written
            route_ec_by_kernels(&r2, &c, train, T, threads[v]);
            same_route(&r1, &r2, T, E, S);
        }
        if (train || c.ec_eval == MOE_EC_EVAL_FULL) {
            // each expert keeps exactly C; count kept/dropped pairs of equal p (the tie rule decided them)
            size_t C = moe_router_quota(&c, T);
            for (size_t e = 0; e < E; e++) {
                size_t n = 0;
                for (size_t t = 0; t < T; t++) {
                    n += r1.sel[t * E + e] >= 0;
                    for (size_t t2 = 0; t2 < T; t2++)
                        boundary_ties += r1.sel[t * E + e] >= 0 && r1.sel[t2 * E + e] < 0 &&
                                         r1.p[t * E + e] == r1.p[t2 * E + e];
                }
                ck_assert_uint_eq(n, C);
            }
        }
        // the backward: gradients through the kept pairs' probabilities, raw gates with K = E
        float *dg = malloc(T * S * 4), *dz1 = calloc(T * E, 4), *dz2 = calloc(T * E, 4);
        fill(dg, T * S, 350 + (uint32_t)ci, -1.0f, 1.0f);
        moe_router_backward(dz1, NULL, dg, &r1, &c);
        for (size_t t = 0; t < T; t++)
            moe_k_route_backward_row(dz2 + t * E, NULL, dg + t * S, r2.sel + t * S, r2.idx + t * S, r2.p + t * E,
                                     r2.z + t * E, NULL, NULL, (int)E, (int)S, MOE_K_GATE_RAW);
        same_floats(dz1, dz2, T * E, "ec router dz");
        free(dg), free(dz1), free(dz2);
        moe_route_release(&r1);
        moe_route_release(&r2);
    }
    ck_assert_uint_gt(boundary_ties, 0); // the cases do exercise the tie rule
}
END_TEST

// Expert choice's radix selection against the pair rank (its naive twin) and
// the CPU router, on columns built to stress it: every p equal (the index
// decides all), p underflowing to 0 and saturating to 1 in many tokens, a
// coarse grid of few distinct values, and quotas from 1 to T - 1.
START_TEST(test_route_ec_select)
{
    static const struct {
        size_t T, E;
        double f;
        int kind; // 0 zeros, 1 extremes, 2 grid, 3 uniform
    } cases[] = {
        { 257, 4, 1.0, 0 }, { 300, 8, 0.03, 0 }, { 300, 3, 2.9, 0 }, { 513, 6, 1.0, 1 },
        { 200, 5, 4.99, 1 }, { 1000, 16, 1.0, 2 }, { 999, 7, 0.007, 2 }, { 2, 2, 1.0, 3 },
        { 3, 2, 1.0, 2 }, { 4099, 4, 1.3, 3 },
    };
    struct moe_err err;
    for (size_t ci = 0; ci < sizeof cases / sizeof *cases; ci++) {
        size_t T = cases[ci].T, E = cases[ci].E;
        struct moe_router_cfg c = { MOE_ROUTER_EXPERT_CHOICE, E, 1, MOE_SECOND_RANDOM, cases[ci].f, 0,
                                    MOE_EC_EVAL_FULL, 0 };
        struct moe_route r1, r2, r3;
        ck_assert_int_eq(moe_route_alloc(&r1, T, E, E, 0, &err), 0);
        ck_assert_int_eq(moe_route_alloc(&r2, T, E, E, 0, &err), 0);
        ck_assert_int_eq(moe_route_alloc(&r3, T, E, E, 0, &err), 0);
        fill(r1.z, T * E, 360 + (uint32_t)ci, -1.0f, 1.0f);
        for (size_t i = 0; i < T * E; i++) {
            float u = r1.z[i];
            r1.z[i] = cases[ci].kind == 0   ? 0.0f
                      : cases[ci].kind == 1 ? (u < -0.3f ? -120.0f : u > 0.3f ? 120.0f : 0.0f)
                      : cases[ci].kind == 2 ? roundf(u * 2.0f)
                                            : u;
        }
        memcpy(r2.z, r1.z, T * E * sizeof(float));
        memcpy(r3.z, r1.z, T * E * sizeof(float));
        moe_router_forward(&r1, &c, NULL, NULL, 1, NULL, 0, T);
        route_ec_by_kernels(&r2, &c, 1, T, 0);
        route_ec_by_kernels(&r3, &c, 1, T, 256);
        same_ints(r2.sel, r3.sel, T * E, "ec select vs rank sel");
        same_floats(r2.gate, r3.gate, T * E, "ec select vs rank gate");
        same_ints(r1.sel, r3.sel, T * E, "ec select vs router sel");
        same_floats(r1.prio, r3.prio, T * E, "ec select vs router prio");
        size_t zeros = 0;
        for (size_t i = 0; i < T * E; i++)
            zeros += r1.p[i] == 0.0f;
        if (cases[ci].kind == 1)
            ck_assert_uint_gt(zeros, T); // the underflow case does hold p = 0 ties
        moe_route_release(&r1);
        moe_route_release(&r2);
        moe_route_release(&r3);
    }
}
END_TEST

// The key's order is moe_k_ec_better's: over a column with -0, +0, denormals,
// equal values and both signs (p is never negative from a softmax, but the key
// must not depend on that), every pair compares alike.
START_TEST(test_route_ec_key)
{
    static const float v[] = { 0.0f, -0.0f, 1e-45f, 1e-38f, 0.25f, 0.25f, 1.0f, -1e-45f, -0.5f, -0.5f, 3.0e38f, -3.0e38f };
    const int64_t T = (int64_t)(sizeof v / sizeof *v);
    for (int64_t a = 0; a < T; a++)
        for (int64_t b = 0; b < T; b++)
            if (a != b)
                ck_assert_int_eq(moe_k_ec_key(v, 1, 0, a) > moe_k_ec_key(v, 1, 0, b), moe_k_ec_better(v, 1, 0, a, b));
}
END_TEST

// Hash routing: the route from the table's experts, against moe/router.c (p
// and lse zeroed over whatever was there).
START_TEST(test_route_hash)
{
    static const size_t Ts[] = { 1, 17, 53 }, Es[] = { 1, 4, 64 };
    struct moe_err err;
    for (size_t ti = 0; ti < 3; ti++)
        for (size_t ei = 0; ei < 3; ei++) {
            size_t T = Ts[ti], E = Es[ei];
            struct moe_router_cfg c = { MOE_ROUTER_HASH, E, 3, MOE_SECOND_RANDOM, 0.0, 0, MOE_EC_EVAL_FULL, 0 };
            size_t S = moe_router_slots(&c);
            ck_assert_uint_eq(S, 1);
            struct moe_route r1, r2;
            ck_assert_int_eq(moe_route_alloc(&r1, T, E, S, 0, &err), 0);
            ck_assert_int_eq(moe_route_alloc(&r2, T, E, S, 0, &err), 0);
            fill(r1.p, T * E, 400, -1.0f, 1.0f);
            fill(r2.p, T * E, 401, -1.0f, 1.0f);
            fill(r1.lse, T, 402, -1.0f, 1.0f);
            fill(r2.lse, T, 403, -1.0f, 1.0f);
            int32_t *hx = malloc(T * sizeof *hx);
            for (size_t t = 0; t < T; t++)
                hx[t] = (int32_t)((t * 7 + ti + ei) % E);
            moe_router_forward(&r1, &c, NULL, hx, 1, NULL, 0, T);
            for (size_t t = 0; t < T; t++)
                moe_k_hash_row(r2.p + t * E, r2.lse + t, r2.sel + t, r2.idx + t, r2.gate + t, r2.prio + t, hx[t],
                               (int)E);
            same_floats(r1.p, r2.p, T * E, "hash p");
            same_floats(r1.lse, r2.lse, T, "hash lse");
            same_ints(r1.sel, r2.sel, T, "hash sel");
            same_ints(r1.idx, r2.idx, T, "hash idx");
            same_floats(r1.gate, r2.gate, T, "hash gate");
            same_floats(r1.prio, r2.prio, T, "hash prio");
            free(hx);
            moe_route_release(&r1);
            moe_route_release(&r2);
        }
    int32_t sel, idx; // an expert outside the table's range is dropped, not indexed
    float p[4], lse, gate, prio;
    moe_k_hash_row(p, &lse, &sel, &idx, &gate, &prio, 4, 4);
    ck_assert_int_eq(sel, -1);
    ck_assert_int_eq(idx, -1);
    ck_assert(gate == 0.0f && prio == 0.0f);
}
END_TEST

// Bias balancing's update (DeepSeek-V3): one thread per expert against
// moe/router.c moe_router_bias_update, over routes with dropped (-1) slots,
// balanced experts (no move), experts of no load, and E past the CPU's
// blocks of experts; several updates in a row from the same biases.
START_TEST(test_bias_update)
{
    static const size_t Es[] = { 1, 3, 8, 130 }, Ss[] = { 1, 2, 4 };
    struct moe_err err;
    size_t moved = 0, still = 0;
    for (size_t ei = 0; ei < 4; ei++)
        for (size_t si = 0; si < 3; si++) {
            size_t E = Es[ei], S = Ss[si] < E ? Ss[si] : E, T = 37;
            struct moe_route r;
            ck_assert_int_eq(moe_route_alloc(&r, T, E, S, 0, &err), 0);
            r.T = T; // the forward's batch (moe_router_forward sets it)
            float *b1 = malloc(E * 4), *b2 = malloc(E * 4);
            fill(b1, E, 410 + (uint32_t)ei, -0.5f, 0.5f);
            memcpy(b2, b1, E * 4);
            for (int round = 0; round < 3; round++) {
                for (size_t i = 0; i < T * S; i++) // skewed: low experts more often; some slots dropped
                    r.sel[i] = (i * 7 + (size_t)round) % 11 == 0 ? -1 : (int32_t)((i * i + (size_t)round) % E % (1 + i % E));
                if (round == 2 && E == 8 && S == 1) // exactly balanced except one swap: equal shares do not move
                    for (size_t i = 0; i < T * S; i++)
                        r.sel[i] = i < 32 ? (int32_t)(i % 8) : -1;
                float *before = malloc(E * 4);
                memcpy(before, b1, E * 4);
                moe_router_bias_update(b1, &r, 0.001);
                for (size_t e = 0; e < E; e++)
                    moe_k_bias_update(b2, r.sel, (int64_t)(T * S), (int)E, (int)e, 0.001);
                same_floats(b1, b2, E, "bias update");
                for (size_t e = 0; e < E; e++) {
                    moved += b1[e] != before[e];
                    still += b1[e] == before[e];
                }
                free(before);
            }
            free(b1), free(b2);
            moe_route_release(&r);
        }
    ck_assert_uint_gt(moved, 0);
    ck_assert_uint_gt(still, 0); // a balanced expert (or E = 1) keeps its bias
}
END_TEST

START_TEST(test_norm)
{
    static const size_t widths[] = { 1, 7, 8, 9, 64, 257 };
    const size_t T = 11;
    const float eps = 1e-5f;
    for (size_t wi = 0; wi < sizeof widths / sizeof *widths; wi++) {
        size_t D = widths[wi], n = T * D;
        float *x = malloc(n * sizeof *x), *y1 = malloc(n * sizeof *y1), *y2 = malloc(n * sizeof *y2);
        float *g = malloc(D * sizeof *g), *b = malloc(D * sizeof *b);
        float m1[11], r1[11], m2[11], r2[11];
        fill(x, n, (uint32_t)wi, -3.0f, 5.0f); // an offset mean: the two-pass variance matters
        for (size_t i = 0; i < n; i++) // magnitudes 2^-12 .. 2^12: no sum in double is exact, so order shows
            x[i] = ldexpf(x[i], (int)(i * 7919 % 25) - 12);
        fill(g, D, 50, 0.5f, 1.5f);
        fill(b, D, 51, -0.2f, 0.2f);
        for (int rms = 0; rms <= 1; rms++) {
            if (rms)
                moe_rmsnorm_forward(y1, r1, x, g, T, D, eps);
            else
                moe_layernorm_forward(y1, m1, r1, x, g, b, T, D, eps);
            for (size_t t = 0; t < T; t++) { // (row, lane) threads, then the join, then one thread per element
                const float *xt = x + t * D;
                double lanes[MOE_K_LANES];
                double mean = 0.0;
                if (!rms) {
                    for (int k = 0; k < MOE_K_LANES; k++)
                        lanes[k] = moe_k_lane_sum(xt, D, k);
                    mean = moe_k_layernorm_mean(moe_k_lanes_join(lanes), D);
                }
                for (int k = 0; k < MOE_K_LANES; k++)
                    lanes[k] = moe_k_lane_sq_dev(xt, mean, D, k);
                double ss = moe_k_lanes_join(lanes);
                m2[t] = (float)mean;
                r2[t] = rms ? moe_k_rmsnorm_rstd(ss, D, eps) : moe_k_layernorm_rstd(ss, D, eps);
                for (size_t i = 0; i < D; i++)
                    y2[t * D + i] = rms ? moe_k_rmsnorm_elem(xt[i], r2[t], g[i])
                                        : moe_k_layernorm_elem(xt[i], m2[t], r2[t], g[i], b[i]);
            }
            same_floats(y1, y2, n, rms ? "rmsnorm y" : "layernorm y");
            same_floats(r1, r2, T, "rstd");
            if (!rms)
                same_floats(m1, m2, T, "mean");
        }
        free(x), free(y1), free(y2), free(g), free(b);
    }
}
END_TEST

START_TEST(test_norm_backward)
{
    static const size_t widths[] = { 1, 9, 64, 257 };
    const size_t T = 11;
    for (size_t wi = 0; wi < sizeof widths / sizeof *widths; wi++) {
        size_t D = widths[wi], n = T * D;
        float *x = malloc(n * 4), *y = malloc(n * 4), *dy = malloc(n * 4), *g = malloc(D * 4), *b = malloc(D * 4);
        float *dx1 = malloc(n * 4), *dx2 = malloc(n * 4), *dg1 = malloc(D * 4), *dg2 = malloc(D * 4);
        float *db1 = malloc(D * 4), *db2 = malloc(D * 4), mean[11], rstd[11];
        fill(x, n, 800 + (uint32_t)wi, -3.0f, 5.0f), fill(dy, n, 810, -1.0f, 1.0f);
        for (size_t i = 0; i < n; i++)
            x[i] = ldexpf(x[i], (int)(i * 7919 % 25) - 12);
        fill(g, D, 820, 0.5f, 1.5f), fill(b, D, 821, -0.2f, 0.2f);
        for (int rms = 0; rms <= 1; rms++) {
            fill(dx1, n, 830, -0.1f, 0.1f), fill(dg1, D, 831, -0.1f, 0.1f), fill(db1, D, 832, -0.1f, 0.1f);
            memcpy(dx2, dx1, n * 4), memcpy(dg2, dg1, D * 4), memcpy(db2, db1, D * 4);
            if (rms) {
                moe_rmsnorm_forward(y, rstd, x, g, T, D, 1e-5f);
                moe_rmsnorm_backward(dx1, dg1, dy, x, rstd, g, T, D);
            } else {
                moe_layernorm_forward(y, mean, rstd, x, g, b, T, D, 1e-5f);
                moe_layernorm_backward(dx1, dg1, db1, dy, x, mean, rstd, g, T, D);
            }
            for (size_t col = 0; col < D; col++) // one thread per column
                moe_k_norm_param_col(dg2, rms ? NULL : db2, dy, x, mean, rstd, T, D, col);
            for (size_t t = 0; t < T; t++) { // (row, lane) threads, the join, one thread per element
                double a1[MOE_K_LANES], a2[MOE_K_LANES];
                float m = rms ? 0.0f : mean[t];
                for (int k = 0; k < MOE_K_LANES; k++)
                    moe_k_norm_grad_lane(&a1[k], &a2[k], x + t * D, dy + t * D, g, m, rstd[t], D, k);
                float a = (float)(moe_k_lanes_join(a1) / (double)D), c = (float)(moe_k_lanes_join(a2) / (double)D);
                for (size_t i = 0; i < D; i++) {
                    size_t j = t * D + i;
                    dx2[j] = rms ? moe_k_rmsnorm_dx(dx2[j], x[j], dy[j], g[i], rstd[t], c)
                                 : moe_k_layernorm_dx(dx2[j], x[j], dy[j], g[i], m, rstd[t], a, c);
                }
            }
            same_floats(dx1, dx2, n, rms ? "rmsnorm dx" : "layernorm dx");
            same_floats(dg1, dg2, D, "dg");
            if (!rms)
                same_floats(db1, db2, D, "db");
        }
        free(x), free(y), free(dy), free(g), free(b), free(dx1), free(dx2), free(dg1), free(dg2), free(db1), free(db2);
    }
}
END_TEST

START_TEST(test_optim)
{
    const size_t n = 1000;
    static const enum moe_optim_type types[] = { MOE_OPTIM_GD, MOE_OPTIM_SGD, MOE_OPTIM_ADAMW };
    static const enum moe_k_optim_type ktypes[] = { MOE_K_GD, MOE_K_SGD, MOE_K_ADAMW };
    for (int ti = 0; ti < 3; ti++) {
        for (int clip = 0; clip <= 1; clip++) {
            struct moe_optim_cfg oc = { .type = types[ti], .lr = 0.01, .momentum = 0.9, .beta1 = 0.9, .beta2 = 0.999,
                                         .eps = 1e-8, .weight_decay = 0.05, .clip = clip ? 0.5 : 0.0 };
            struct moe_optim o;
            struct moe_err err;
            ck_assert_int_eq(moe_optim_init(&o, &oc, n, &err), 0);
            float *w1 = malloc(n * sizeof *w1), *g1 = malloc(n * sizeof *g1), *w2 = malloc(n * sizeof *w2);
            float *g2 = malloc(n * sizeof *g2), *m2 = calloc(n, sizeof *m2), *v2 = calloc(n, sizeof *v2);
            fill(w1, n, 1, -1.0f, 1.0f);
            memcpy(w2, w1, n * sizeof *w1);
            for (uint32_t step = 1; step <= 3; step++) {
                fill(g1, n, 10 + step, -0.3f, 0.3f);
                memcpy(g2, g1, n * sizeof *g1);
                double norm = moe_optim_grad_norm(g1, n);
                moe_optim_step_norm(&o, w1, g1, norm);
                float scale = oc.clip > 0.0 && norm > oc.clip ? (float)(oc.clip / norm) : 1.0f;
                struct moe_k_optim k;
                moe_k_optim_setup(&k, ktypes[ti], oc.lr, oc.weight_decay, oc.momentum, oc.beta1, oc.beta2, oc.eps,
                                  step, scale);
                for (size_t i = 0; i < n; i++) // one thread per element
                    moe_k_optim_elem(&k, i, w2, g2, m2, v2);
                same_floats(w1, w2, n, "w");
                same_floats(g1, g2, n, "g");
                if (o.m)
                    same_floats(o.m, m2, n, "m");
                if (o.v)
                    same_floats(o.v, v2, n, "v");
            }
            moe_optim_release(&o);
            free(w1), free(g1), free(w2), free(g2), free(m2), free(v2);
        }
    }
}
END_TEST

START_TEST(test_aux)
{
    const size_t T = 301, E = 16, S = 3;
    const float coef = 0.37f;
    struct moe_err err;
    struct moe_router_cfg c = { MOE_ROUTER_SOFTMAX, E, S, MOE_SECOND_RANDOM, 0.0, 0, MOE_EC_EVAL_FULL, 0 };
    struct moe_route r;
    ck_assert_int_eq(moe_route_alloc(&r, T, E, S, 0, &err), 0);
    fill(r.z, T * E, 500, -4.0f, 4.0f);
    moe_router_forward(&r, &c, NULL, NULL, 1, NULL, 0, T);
    float *dz1 = calloc(T * E, sizeof *dz1), *dz2 = calloc(T * E, sizeof *dz2);
    double f[16], P[16];
    for (int all = 0; all <= 1; all++) { // switch (first choices), topk-all (every slot)
        double v1 = all ? moe_aux_topk_all(dz1, &r, coef) : moe_aux_switch(dz1, &r, coef);
        for (size_t e = 0; e < E; e++) // one thread per expert
            moe_k_aux_fp_expert(&f[e], &P[e], r.sel, r.p, T, E, S, all ? S : 1, e);
        double v2 = (double)E * moe_k_aux_fp_sum(f, P, E);
        ck_assert_msg(v1 == v2, "%s: %.17g vs %.17g", all ? "topk-all" : "switch", v1, v2);
        // the GPU's form (a block per expert): the hits an integer count, P_e
        // an in-order sum of tiles of terms; the same bits for any tile size
        static const size_t tiles[] = { 1, 7, 64, 1000 };
        for (size_t ti = 0; ti < 4; ti++)
            for (size_t e = 0; e < E; e++) {
                unsigned long long hits = 0;
                double pe = 0.0, v[1000];
                for (size_t t = T; t-- > 0;) // any order
                    hits += moe_k_aux_fp_hits(r.sel, S, all ? S : 1, t, e);
                for (size_t t0 = 0; t0 < T; t0 += tiles[ti]) {
                    size_t n = T - t0 < tiles[ti] ? T - t0 : tiles[ti];
                    for (size_t i = 0; i < n; i++)
                        v[i] = moe_k_aux_fp_term(r.p, E, t0 + i, e);
                    moe_k_sum_tile(&pe, v, n);
                }
                ck_assert_msg((double)hits / (double)T == f[e] && pe / (double)T == P[e], "tiles of %zu, expert %zu",
                              tiles[ti], e);
            }
        for (size_t t = 0; t < T; t++) // one thread per (token, expert)
            for (size_t j = 0; j < E; j++)
                moe_k_aux_fp_grad(dz2, r.p, f, E, (double)coef * (double)E, T, t, j);
        same_floats(dz1, dz2, T * E, "balancing-loss gradient");
    }
    double z1 = moe_aux_z(dz1, &r, coef), z2 = moe_k_z_loss(r.lse, T);
    ck_assert_msg(z1 == z2, "z: %.17g vs %.17g", z1, z2);
    for (size_t tile = 1; tile <= 300; tile += 37) {
        double sum = 0.0;
        double v[300];
        for (size_t t0 = 0; t0 < T; t0 += tile) {
            const size_t n = T - t0 < tile ? T - t0 : tile;
            for (size_t i = 0; i < n; i++)
                v[i] = moe_k_z_term(r.lse, t0 + i);
            moe_k_sum_tile(&sum, v, n);
        }
        ck_assert_msg(sum / (double)T == z1, "z in tiles of %zu", tile);
    }
    for (size_t t = 0; t < T; t++)
        for (size_t j = 0; j < E; j++)
            moe_k_z_grad(dz2, r.lse, r.p, E, coef, T, t, j);
    same_floats(dz1, dz2, T * E, "z-loss gradient");
    free(dz1), free(dz2);
    moe_route_release(&r);
}
END_TEST

// Shazeer et al.'s importance and load losses: noisy top-K routes in training
// (noise drawn) and evaluation, logits on a coarse grid (ties in h when there is
// no noise), the values and every gradient bit for bit.
START_TEST(test_aux_shazeer)
{
    static const struct {
        size_t E, K;
        int train; // evaluation: no noise, h = z, so the grid's ties reach the thresholds' tie rules
    } cases[] = { { 8, 2, 1 }, { 32, 4, 1 }, { 4, 1, 1 }, { 16, 15, 1 }, { 8, 2, 0 }, { 32, 4, 0 }, { 16, 15, 0 } };
    const size_t T = 211;
    const float wi = 0.43f, wl = 0.29f;
    struct moe_err err;
    for (size_t ci = 0; ci < sizeof cases / sizeof *cases; ci++) {
        const size_t E = cases[ci].E, K = cases[ci].K;
        struct moe_router_cfg c = { MOE_ROUTER_NOISY_TOPK, E, K, MOE_SECOND_RANDOM, 0.0, 0, MOE_EC_EVAL_FULL, 0 };
        const size_t S = moe_router_slots(&c);
        struct moe_route r;
        ck_assert_int_eq(moe_route_alloc(&r, T, E, S, 1, &err), 0);
        fill(r.z, T * E, 600 + (uint32_t)ci, -2.0f, 2.0f);
        for (size_t i = 0; i < T * E; i++)
            r.z[i] = i % 4 == 0 ? roundf(r.z[i] * 2.0f) / 2.0f : r.z[i];
        fill(r.u, T * E, 610 + (uint32_t)ci, -3.0f, 25.0f);
        struct moe_rng rng = moe_rng_make(77, MOE_RNG_NOISE, 5);
        moe_router_forward(&r, &c, NULL, NULL, cases[ci].train, &rng, (uint64_t)1 << 40, T);
        float *dg1 = calloc(T * S, sizeof *dg1), *dg2 = calloc(T * S, sizeof *dg2);
        float *dz1 = calloc(T * E, sizeof *dz1), *dz2 = calloc(T * E, sizeof *dz2);
        float *du1 = calloc(T * E, sizeof *du1), *du2 = calloc(T * E, sizeof *du2);
        double x[32], g[32];
        // importance: one thread per expert, one for CV^2, one per (token, slot)
        double v1 = moe_aux_importance(dg1, &r, wi);
        for (size_t e = 0; e < E; e++)
            x[e] = moe_k_importance_expert(r.idx, r.gate, T, S, e);
        double v2 = moe_k_cv2(g, x, E);
        ck_assert_msg(v1 == v2, "importance E=%zu: %.17g vs %.17g", E, v1, v2);
        for (size_t i = 0; i < T * S; i++)
            moe_k_importance_grad(dg2, r.idx, g, wi, i);
        same_floats(dg1, dg2, T * S, "importance gradient");
        // load: one thread per expert, one for CV^2, one per token
        v1 = moe_aux_load(dz1, du1, &r, K, wl);
        for (size_t e = 0; e < E; e++)
            x[e] = moe_k_load_expert(r.z, r.u, r.h, r.sel, T, E, S, K, e);
        v2 = moe_k_cv2(g, x, E);
        ck_assert_msg(v1 == v2, "load E=%zu K=%zu: %.17g vs %.17g", E, K, v1, v2);
        for (size_t t = 0; t < T; t++)
            moe_k_load_grad(dz2, du2, r.z, r.u, r.h, r.eps, r.sel, g, wl, E, S, K, t);
        same_floats(dz1, dz2, T * E, "load gradient (logits)");
        same_floats(du1, du2, T * E, "load gradient (noise logits)");
        free(dg1), free(dg2), free(dz1), free(dz2), free(du1), free(du2);
        moe_route_release(&r);
    }
}
END_TEST

START_TEST(test_embed)
{
    const size_t B = 7, C = 13, ld = C + 1, D = 24, V = 11, n = B * C;
    int32_t *tok = malloc(B * ld * 4), *order = malloc(n * 4);
    size_t start[12] = { 0 };
    float *wte = malloc(V * D * 4), *wpe = malloc(C * D * 4), *o1 = malloc(n * D * 4), *o2 = malloc(n * D * 4);
    float *dout = malloc(n * D * 4), *dte1 = malloc(V * D * 4), *dte2 = malloc(V * D * 4), *dpe1 = malloc(C * D * 4),
          *dpe2 = malloc(C * D * 4);
    struct moe_rng r = moe_rng_make(3, MOE_RNG_DATA, 600);
    for (size_t i = 0; i < B * ld; i++)
        tok[i] = (int32_t)moe_rng_below(&r, i, (uint32_t)V - 1); // id V - 1 never occurs
    fill(wte, V * D, 601, -1.0f, 1.0f), fill(wpe, C * D, 602, -1.0f, 1.0f), fill(dout, n * D, 603, -1.0f, 1.0f);
    fill(dte1, V * D, 604, -0.1f, 0.1f), fill(dpe1, C * D, 605, -0.1f, 0.1f);
    memcpy(dte2, dte1, V * D * 4), memcpy(dpe2, dpe1, C * D * 4);
    moe_embedding_forward(o1, tok, ld, wte, wpe, B, C, D);
    moe_embedding_backward(dte1, dpe1, dout, tok, ld, B, C, D);
    for (size_t row = 0; row < n; row++)
        for (size_t i = 0; i < D; i++)
            moe_k_embed_forward(o2, tok, ld, wte, wpe, C, D, row, i);
    same_floats(o1, o2, n * D, "embedding");
    // a stable counting sort of the rows by token id (a radix sort on the device)
    for (size_t row = 0; row < n; row++)
        start[tok[(row / C) * ld + row % C] + 1]++;
    for (size_t v = 0; v < V; v++)
        start[v + 1] += start[v];
    size_t fillp[11];
    memcpy(fillp, start, V * sizeof *fillp);
    for (size_t row = 0; row < n; row++)
        order[fillp[tok[(row / C) * ld + row % C]]++] = (int32_t)row;
    int32_t sorted[91]; // the ids in sorted order: each id's rows begin at its lower bound
    for (size_t k = 0; k < n; k++)
        sorted[k] = tok[((size_t)order[k] / C) * ld + (size_t)order[k] % C];
    for (size_t v = 0; v <= V; v++)
        ck_assert_uint_eq(moe_k_lower_bound(sorted, n, (int32_t)v), v < V ? start[v] : n);
    for (size_t v = 0; v < V; v++)
        for (size_t i = 0; i < D; i++)
            moe_k_embed_backward_tok(dte2, dout, order, start[v], start[v + 1], D, v, i);
    for (size_t c = 0; c < C; c++)
        for (size_t i = 0; i < D; i++)
            moe_k_embed_backward_pos(dpe2, dout, B, C, D, c, i);
    same_floats(dte1, dte2, V * D, "token embedding gradient");
    same_floats(dpe1, dpe2, C * D, "position embedding gradient");
    free(tok), free(order), free(wte), free(wpe), free(o1), free(o2), free(dout), free(dte1), free(dte2);
    free(dpe1), free(dpe2);
}
END_TEST

// The capacity plan from the chunked bodies, as the launches run them with
// chunks of ch positions: kept (cleared here), routed and kept counts, offsets,
// rows; returns the rows kept.
static size_t chunked_plan(const int32_t *idx, const int32_t *order, size_t T, size_t S, size_t E, size_t cap,
                           size_t ch, uint8_t *kept, size_t *routed, size_t *n_kept, size_t *offset, int32_t *row_tok,
                           int32_t *row_slot, int32_t *slot_row)
{
    size_t TS = T * S, nc = (TS + ch - 1) / ch;
    size_t *cnt = malloc((nc ? nc : 1) * E * sizeof *cnt);
    memset(kept, 0, TS);
    for (size_t i = 0; i < TS; i++)
        slot_row[i] = -1;
    for (size_t c = 0; c < nc; c++) // one thread per chunk, then one per expert, then per chunk
        moe_k_chunk_count(cnt + c * E, idx, order, NULL, T, S, E, ch, c, 0);
    for (size_t e = 0; e < E; e++) {
        routed[e] = moe_k_chunk_scan(cnt, nc, E, e, 0);
        n_kept[e] = routed[e] < cap ? routed[e] : cap;
    }
    for (size_t c = 0; c < nc; c++)
        moe_k_chunk_keep(cnt + c * E, kept, idx, order, T, S, cap, ch, c);
    size_t n_rows = moe_k_dispatch_offsets(offset, n_kept, E); // one thread
    for (size_t c = 0; c < nc; c++)
        moe_k_chunk_count(cnt + c * E, idx, NULL, kept, T, S, E, ch, c, 1);
    for (size_t e = 0; e < E; e++)
        moe_k_chunk_scan(cnt, nc, E, e, offset[e]);
    for (size_t c = 0; c < nc; c++)
        moe_k_chunk_rows(cnt + c * E, idx, kept, T, S, ch, c, row_tok, row_slot, slot_row);
    free(cnt);
    return n_rows;
}

START_TEST(test_dispatch)
{
    static const struct {
        size_t T, S, E;
        double cf;
        enum moe_drop_policy policy;
        int nan; // some priorities NaN (a router that overflowed): the order stays total
    } cases[] = {
        { 97, 2, 8, 1.0, MOE_DROP_ORDER, 0 }, { 97, 2, 8, 0.6, MOE_DROP_PROB, 0 }, { 64, 1, 4, 0.5, MOE_DROP_PROB, 0 },
        { 50, 3, 16, 1.25, MOE_DROP_ORDER, 0 }, { 50, 3, 16, 0.0, MOE_DROP_PROB, 0 }, { 33, 8, 8, 0.3, MOE_DROP_ORDER, 0 },
        { 97, 2, 8, 0.6, MOE_DROP_PROB, 1 }, { 997, 2, 4, 0.7, MOE_DROP_PROB, 1 }, { 1500, 4, 16, 0.9, MOE_DROP_PROB, 0 },
        { 300, 1, 3, 0.2, MOE_DROP_PROB, 0 },
    };
    const size_t D = 12, F = 8;
    struct moe_err err;
    for (size_t ci = 0; ci < sizeof cases / sizeof *cases; ci++) {
        size_t T = cases[ci].T, S = cases[ci].S, E = cases[ci].E, TS = T * S;
        size_t cap = cases[ci].cf > 0 ? moe_capacity(cases[ci].cf, T, S, E) : TS; // 0: dropless
        int32_t *idx = malloc(TS * 4);
        float *prio = malloc(TS * 4);
        struct moe_rng r = moe_rng_make(5, MOE_RNG_DATA, 300 + (uint32_t)ci);
        for (size_t i = 0; i < TS; i++) { // distinct experts within a token; some skipped slots; tied priorities
            size_t t = i / S, s = i % S;
            idx[i] = (int32_t)((moe_rng_below(&r, t, (uint32_t)E) + s) % E);
            if (s > 0 && moe_rng_below(&r, TS + i, 5) == 0)
                idx[i] = -1;
            prio[i] = (float)moe_rng_below(&r, 2 * TS + i, 7) / 8.0f;
            if (cases[ci].nan && moe_rng_below(&r, 3 * TS + i, 4) == 0)
                prio[i] = NAN;
        }
        struct moe_dispatch d;
        ck_assert_int_eq(moe_dispatch_alloc(&d, T, S, E, &err), 0);
        moe_dispatch_plan(&d, idx, prio, T, cap, cases[ci].policy);

        // the kernels' plan
        int32_t *order = NULL;
        if (cases[ci].policy == MOE_DROP_PROB) {
            order = malloc(TS * 4);
            for (size_t i = 0; i < TS; i++)
                order[i] = -1;
            for (size_t s = 0; s < S; s++) // one thread per (slot, token)
                for (size_t t = 0; t < T; t++) {
                    size_t at = moe_k_prob_place(prio, T, S, s, t);
                    ck_assert_uint_lt(at, T);
                    ck_assert_int_eq(order[s * T + at], -1); // a permutation: no place taken twice
                    order[s * T + at] = (int32_t)t;
                }
        }
        uint8_t *kept = calloc(TS, 1);
        size_t routed[16], dropped[16], n_kept[16], offset[17];
        int32_t *row_tok = malloc(TS * 4), *row_slot = malloc(TS * 4), *slot_row = malloc(TS * 4);
        size_t n_rows = chunked_plan(idx, order, T, S, E, cap, MOE_CUDA_PLAN_CHUNK, kept, routed, n_kept, offset,
                                     row_tok, row_slot, slot_row);
        for (size_t e = 0; e < E; e++)
            dropped[e] = routed[e] - n_kept[e];

        // by priority, the device's keep pass: a block per (slot, expert) selecting what still fits, the
        // blocks' threads (1, 7, 256) emulated in turn; the same kept flags and counts as the places above
        if (cases[ci].policy == MOE_DROP_PROB) {
            static const size_t threads[] = { 1, 7, 256 };
            uint32_t *bins = malloc(256 * MOE_K_SELECT_BINS * sizeof *bins);
            for (size_t k = 0; k < sizeof threads / sizeof *threads; k++) {
                uint8_t *kept3 = calloc(TS, 1);
                size_t r3[16], nk3[16], dr3[16];
                for (size_t b = S * E; b-- > 0;) // blocks in any order
                    moe_k_prob_block(kept3, r3, nk3, dr3, bins, idx, prio, T, S, cap, b / E, (int32_t)(b % E),
                                     threads[k]);
                ck_assert_mem_eq(kept3, kept, TS);
                for (size_t e = 0; e < E; e++) {
                    ck_assert_uint_eq(r3[e], d.routed[e]);
                    ck_assert_uint_eq(dr3[e], d.dropped[e]);
                    ck_assert_uint_eq(nk3[e], r3[e] - dr3[e]);
                }
                free(kept3);
            }
            free(bins);
        }

        // the same plan whatever the chunk size (from 1 to past T S)
        static const size_t chs[] = { 1, 7, 64, 1000 };
        for (size_t k = 0; k < sizeof chs / sizeof *chs; k++) {
            size_t r2[16], nk2[16], off2[17];
            uint8_t *kept2 = calloc(TS, 1);
            int32_t *rt2 = malloc(TS * 4), *rs2 = malloc(TS * 4), *sr2 = malloc(TS * 4);
            ck_assert_uint_eq(chunked_plan(idx, order, T, S, E, cap, chs[k], kept2, r2, nk2, off2, rt2, rs2, sr2),
                              d.n_rows);
            for (size_t e = 0; e < E; e++) {
                ck_assert_uint_eq(r2[e], d.routed[e]);
                ck_assert_uint_eq(r2[e] - nk2[e], d.dropped[e]);
            }
            ck_assert_mem_eq(kept2, kept, TS);
            same_ints(rt2, d.row_tok, d.n_rows, "chunked row_tok");
            same_ints(rs2, d.row_slot, d.n_rows, "chunked row_slot");
            same_ints(sr2, d.slot_row, TS, "chunked slot_row");
            free(kept2), free(rt2), free(rs2), free(sr2);
        }

        ck_assert_uint_eq(n_rows, d.n_rows);
        size_t n_dropped = 0;
        for (size_t e = 0; e < E; e++) {
            ck_assert_uint_eq(routed[e], d.routed[e]);
            ck_assert_uint_eq(dropped[e], d.dropped[e]);
            ck_assert_uint_eq(offset[e + 1], d.offset[e + 1]);
            n_dropped += dropped[e];
        }
        ck_assert_uint_eq(n_dropped, d.n_dropped);
        if (cases[ci].cf > 0 && cases[ci].cf < 1)
            ck_assert_uint_gt(n_dropped, 0); // the case meant to overflow capacity does
        same_ints(row_tok, d.row_tok, n_rows, "row_tok");
        same_ints(row_slot, d.row_slot, n_rows, "row_slot");
        same_ints(slot_row, d.slot_row, TS, "slot_row");

        // gather and combine around the experts
        float *x = malloc(T * D * 4), *gate = malloc(TS * 4), *out1 = malloc(T * D * 4), *out2 = malloc(T * D * 4);
        float *w1 = malloc(E * F * D * 4), *w2 = malloc(E * D * F * 4), *xd = malloc((TS + 1) * D * 4);
        fill(x, T * D, 400, -1.0f, 1.0f), fill(gate, TS, 401, 0.0f, 1.0f), fill(out1, T * D, 402, -1.0f, 1.0f);
        fill(w1, E * F * D, 403, -0.5f, 0.5f), fill(w2, E * D * F, 404, -0.5f, 0.5f);
        memcpy(out2, out1, T * D * 4);
        struct moe_experts_buf buf;
        ck_assert_int_eq(moe_experts_buf_alloc(&buf, TS, D, F, 0, &err), 0);
        moe_experts_forward(out1, x, gate, &d, w1, NULL, w2, &buf, MOE_FFN_RELU);
        for (size_t row = 0; row < n_rows; row++) // one thread per (row, column)
            for (size_t c = 0; c < D; c++)
                moe_k_gather(xd, x, row_tok, D, row, c);
        same_floats(xd, buf.xd, n_rows * D, "gathered rows");
        for (size_t t = 0; t < T; t++) // one thread per (token, column), over the experts' outputs
            for (size_t c = 0; c < D; c++)
                moe_k_combine(out2, buf.yd, gate, slot_row, S, D, t, c);
        same_floats(out2, out1, T * D, "combined output");
        // its backward: the rows' output gradients and the gates' gradients
        float *dout = malloc(T * D * 4), *dgate1 = calloc(TS, 4), *dgate2 = calloc(TS, 4);
        float *dw1 = calloc(E * F * D, 4), *dw2 = calloc(E * D * F, 4), *dyd = malloc((TS + 1) * D * 4);
        fill(dout, T * D, 405, -1.0f, 1.0f);
        float *yd = malloc((TS + 1) * D * 4);
        memcpy(yd, buf.yd, n_rows * D * 4); // the backward may reuse the forward's buffers
        moe_experts_backward(NULL, dgate1, dw1, NULL, dw2, dout, x, gate, &d, w1, NULL, w2, &buf, MOE_FFN_RELU, 1.0f);
        for (size_t row = 0; row < n_rows; row++) // one thread per row
            moe_k_combine_backward(dyd, dgate2, dout, yd, gate, row_tok, row_slot, S, D, row);
        same_floats(dgate1, dgate2, TS, "gate gradient");
        same_floats(dyd, buf.dyd, n_rows * D, "row output gradient");
        // the GPU's tiled form: one thread per (row, column) of a column chunk
        // (moe_k_combine_backward_elem), one per row adding the chunk's products
        // in column order; the same bits for any chunk width
        static const size_t widths[] = { 1, 5, MOE_K_CB_COLS };
        double *prod = malloc(D * sizeof *prod);
        for (size_t wi = 0; wi < 3; wi++) {
            memset(dgate2, 0, TS * 4);
            memset(dyd, 0xff, (TS + 1) * D * 4);
            for (size_t row = 0; row < n_rows; row++) {
                const size_t t = (size_t)row_tok[row], ts = t * S + (size_t)row_slot[row];
                double acc = 0.0;
                for (size_t c0 = 0; c0 < D; c0 += widths[wi]) {
                    const size_t w = D - c0 < widths[wi] ? D - c0 : widths[wi];
                    for (size_t c = 0; c < w; c++)
                        prod[c] = moe_k_combine_backward_elem(dyd, dout, yd, gate[ts], t, D, row, c0 + c);
                    moe_k_sum_tile(&acc, prod, w);
                }
                dgate2[ts] += (float)acc;
            }
            same_floats(dgate1, dgate2, TS, "gate gradient, column chunks");
            same_floats(dyd, buf.dyd, n_rows * D, "row output gradient, column chunks");
        }
        free(prod);
        free(dout), free(dgate1), free(dgate2), free(dw1), free(dw2), free(dyd), free(yd);

        moe_experts_buf_release(&buf);
        moe_dispatch_release(&d);
        free(idx), free(prio), free(order), free(kept), free(row_tok), free(row_slot), free(slot_row);
        free(x), free(gate), free(out1), free(out2), free(w1), free(w2), free(xd);
    }
}
END_TEST

START_TEST(test_ce)
{
    static const size_t Os[] = { 1, 37, 600 }; // 600: more classes than the CPU's exp chunk
    const size_t T = 300;                      // more rows than blocks, and a short last block
    for (size_t oi = 0; oi < sizeof Os / sizeof *Os; oi++) {
        const size_t O = Os[oi];
        float *y = malloc(T * O * sizeof *y), *dy1 = malloc(T * O * sizeof *dy1), *dy2 = malloc(T * O * sizeof *dy2);
        float *loss1 = malloc(T * sizeof *loss1), *loss2 = malloc(T * sizeof *loss2);
        int32_t *am1 = malloc(T * sizeof *am1), *am2 = malloc(T * sizeof *am2), *label = malloc(T * sizeof *label);
        fill(y, T * O, 40 + (uint32_t)oi, -8.0f, 8.0f);
        for (size_t t = 0; t < T; t += 7) // ties for the argmax: the first wins
            y[t * O + O / 2] = y[t * O];
        fill(dy1, T * O, 50 + (uint32_t)oi, -0.1f, 0.1f);
        memcpy(dy2, dy1, T * O * sizeof *dy1);
        for (size_t t = 0; t < T; t++)
            label[t] = (int32_t)((t * 7919) % O);
        const float scale = 0.37f;
        double sum1 = moe_ce_rows(dy1, loss1, am1, y, label, T, O, scale);
        double part[MOE_K_CE_BLOCKS];
        for (size_t b = 0; b < MOE_K_CE_BLOCKS; b++) { // one thread per block, rows in order
            size_t lo, hi;
            moe_k_ce_block(T, b, &lo, &hi);
            double block = 0.0;
            for (size_t t = lo; t < hi; t++) { // the row's thread
                const float *yt = y + t * O;
                float m = moe_k_ce_max(yt, O, &am2[t]);
                double s = 0.0;
                for (size_t o = 0; o < O; o++)
                    s += moe_expf1(moe_k_ce_shift(yt[o], m));
                double lse = moe_k_ce_lse(m, s), l = moe_k_ce_loss(lse, yt, label[t]);
                loss2[t] = (float)l;
                block += l;
                for (size_t o = 0; o < O; o++)
                    moe_k_ce_grad_elem(&dy2[t * O + o], moe_expf1(moe_k_ce_grad_arg(yt[o], lse)), scale);
                moe_k_ce_grad_label(&dy2[t * O + (size_t)label[t]], scale);
            }
            part[b] = block;
        }
        double sum2 = 0.0; // one thread, blocks in order
        for (size_t b = 0; b < MOE_K_CE_BLOCKS; b++)
            sum2 += part[b];
        ck_assert_msg(memcmp(&sum1, &sum2, sizeof sum1) == 0, "O=%zu sum %.17g vs %.17g", O, sum1, sum2);
        same_floats(loss1, loss2, T, "row_loss");
        same_floats(dy1, dy2, T * O, "dy");
        ck_assert_mem_eq(am1, am2, T * sizeof *am1);
        free(y), free(dy1), free(dy2), free(loss1), free(loss2), free(am1), free(am2), free(label);
    }
}
END_TEST

// The distillation losses: a thread per row (both lse values and the row's
// loss), a thread per (row, class) for the gradient, one thread for the sum.
// The bodies call the same double exp and log as nn/loss.c, so every bit
// agrees. O = 129 and 300 take the CPU's heap buffers (more than 128 classes).
START_TEST(test_distill)
{
    static const size_t Os[] = { 1, 2, 37, 129, 300 };
    static const float taus[] = { 1.0f, 2.0f, 0.5f };
    const size_t T = 61;
    for (size_t oi = 0; oi < sizeof Os / sizeof *Os; oi++)
        for (int kind = 0; kind < 4; kind++) { // KD at three temperatures, then the symmetric KL
            const size_t O = Os[oi], n = T * O;
            int sym = kind == 3;
            double tau = sym ? 1.0 : taus[kind];
            float *s = malloc(n * 4), *z = malloc(n * 4), *dy1 = malloc(n * 4), *dy2 = malloc(n * 4);
            double *ls = malloc(T * 8), *lz = malloc(T * 8), *row = malloc(T * 8), *qp = malloc(T * 8);
            fill(s, n, 70 + (uint32_t)oi, -6.0f, 6.0f), fill(z, n, 80 + (uint32_t)oi, -6.0f, 6.0f);
            for (size_t t = 0; t < T; t += 5) // a row where student and teacher agree: KL 0, gradient 0
                memcpy(s + t * O, z + t * O, O * 4);
            fill(dy1, n, 90 + (uint32_t)oi, -0.1f, 0.1f);
            memcpy(dy2, dy1, n * 4);
            const float scale = 0.3f;
            double sum1 = sym ? moe_symkl_forward_backward(dy1, s, z, T, O, scale)
                              : moe_kd_forward_backward(dy1, s, z, T, O, (float)tau, scale);
            for (size_t t = 0; t < T; t++) { // the row kernel
                ls[t] = moe_k_lse_tau(s + t * O, O, tau), lz[t] = moe_k_lse_tau(z + t * O, O, tau);
                if (sym) {
                    double pq;
                    moe_k_symkl_row(&pq, &qp[t], s + t * O, z + t * O, O, ls[t], lz[t]);
                    row[t] = pq + qp[t];
                } else {
                    row[t] = moe_k_kd_row(s + t * O, z + t * O, O, tau, ls[t], lz[t]);
                }
            }
            for (size_t j = 0; j < n; j++) { // the gradient kernel
                size_t t = j / O;
                if (sym)
                    moe_k_symkl_grad(&dy2[j], s[j], z[j], ls[t], lz[t], qp[t], scale);
                else
                    moe_k_kd_grad(&dy2[j], s[j], z[j], tau, ls[t], lz[t], scale);
            }
            double sum2 = 0.0; // the one-thread sum
            for (size_t t = 0; t < T; t++)
                sum2 += row[t];
            ck_assert_msg(memcmp(&sum1, &sum2, 8) == 0, "O=%zu kind %d: sum %.17g vs %.17g", O, kind, sum1, sum2);
            ck_assert_msg(O == 1 ? sum1 == 0.0 : sum1 > 0.0 && isfinite(sum1), "O=%zu kind %d: sum %g", O, kind, sum1);
            same_floats(dy1, dy2, n, sym ? "symkl dy" : "kd dy");
            free(s), free(z), free(dy1), free(dy2), free(ls), free(lz), free(row), free(qp);
        }
    // squared error: the gradient element by element, the sum in element order
    const size_t n = 4099;
    float *y = malloc(n * 4), *d = malloc(n * 4), *dy1 = malloc(n * 4), *dy2 = malloc(n * 4);
    fill(y, n, 95, -2.0f, 2.0f), fill(d, n, 96, -2.0f, 2.0f), fill(dy1, n, 97, -0.1f, 0.1f);
    memcpy(dy2, dy1, n * 4);
    double sum1 = moe_mse_forward_backward(dy1, y, d, 1, n, 0.7f), sum2 = 0.0;
    for (size_t i = 0; i < n; i++) {
        moe_k_mse_grad(&dy2[i], y[i], d[i], 0.7f);
        sum2 += moe_k_sq_term(y[i], d[i]);
    }
    ck_assert_msg(memcmp(&sum1, &sum2, 8) == 0, "mse sum %.17g vs %.17g", sum1, sum2);
    same_floats(dy1, dy2, n, "mse dy");
    free(y), free(d), free(dy1), free(dy2);
}
END_TEST

// The device layer's small steps: Switch jitter against moe_layer.c's draws
// (moe_rng_uniform at base + i), the SwiGLU product and backward against
// experts.c's loops (through moe_ffn_forward_drop / backward being GEMM-bound,
// the loops themselves are restated), and the scatter against
// moe_experts_scatter on a plan with dropped slots.
START_TEST(test_layer_steps)
{
    const size_t n = 3001;
    const uint64_t seed = 17, step = 5, base = 3 * ((uint64_t)1 << 40) + 7; // a third layer's draws, odd start
    float *x = malloc(n * 4), *xr1 = malloc(n * 4), *xr2 = malloc(n * 4), *j1 = malloc(n * 4), *j2 = malloc(n * 4);
    fill(x, n, 60, -2.0f, 2.0f);
    struct moe_rng jr = moe_rng_make(seed, MOE_RNG_JITTER, (uint32_t)step);
    for (size_t i = 0; i < n; i++) { // moe_layer.c's loop
        j1[i] = 1.0f + (float)0.01 * (2.0f * moe_rng_uniform(&jr, base + i) - 1.0f);
        xr1[i] = x[i] * j1[i];
    }
    for (size_t i = 0; i < n; i++)
        moe_k_jitter(xr2, j2, x, (float)0.01, seed, MOE_RNG_JITTER, (uint32_t)step, base, i);
    same_floats(j1, j2, n, "jitter factors");
    same_floats(xr1, xr2, n, "jittered input");
    float *dxr = malloc(n * 4), *dx1 = malloc(n * 4), *dx2 = malloc(n * 4);
    fill(dxr, n, 61, -1.0f, 1.0f), fill(dx1, n, 62, -1.0f, 1.0f);
    memcpy(dx2, dx1, n * 4);
    for (size_t i = 0; i < n; i++) { // moe_layer_backward's loop
        float g = dxr[i] * j1[i];
        dx1[i] += g;
    }
    for (size_t i = 0; i < n; i++)
        moe_k_jitter_back(dx2, dxr, j2, i);
    same_floats(dx1, dx2, n, "jitter backward");

    // scatter: T tokens of S slots, some dropped (-1), rows in any order
    const size_t T = 97, S = 3, D = 19;
    struct moe_dispatch plan = { .T = T, .S = S };
    int32_t *slot_row = malloc(T * S * sizeof *slot_row);
    size_t rows = 0;
    for (size_t i = 0; i < T * S; i++)
        slot_row[i] = (i * 7) % 5 == 0 ? -1 : (int32_t)rows++;
    for (size_t i = 0; i < T * S; i++) // reverse the rows' order: the kept row of a slot is not its rank
        if (slot_row[i] >= 0)
            slot_row[i] = (int32_t)(rows - 1) - slot_row[i];
    plan.slot_row = slot_row;
    struct moe_experts_buf buf = { .D = D };
    buf.dxd = malloc(rows * D * 4);
    fill(buf.dxd, rows * D, 63, -1.0f, 1.0f);
    float *sx1 = malloc(T * D * 4), *sx2 = malloc(T * D * 4);
    fill(sx1, T * D, 64, -1.0f, 1.0f);
    memcpy(sx2, sx1, T * D * 4);
    moe_experts_scatter(sx1, &plan, &buf);
    for (size_t t = 0; t < T; t++)
        for (size_t c = 0; c < D; c++)
            moe_k_scatter(sx2, buf.dxd, slot_row, S, D, t, c);
    same_floats(sx1, sx2, T * D, "scatter");

    // SwiGLU: h = silu(a) b; backward db = silu(a) dh, dh = dh b
    float *h1 = malloc(n * 4), *h2 = malloc(n * 4), *b = malloc(n * 4), *dh1 = malloc(n * 4), *dh2 = malloc(n * 4);
    float *db1 = malloc(n * 4), *db2 = malloc(n * 4);
    fill(h1, n, 65, -3.0f, 3.0f), fill(b, n, 66, -3.0f, 3.0f), fill(dh1, n, 67, -1.0f, 1.0f);
    memcpy(h2, h1, n * 4), memcpy(dh2, dh1, n * 4), memcpy(db1, h1, n * 4), memcpy(db2, h1, n * 4);
    for (size_t i = 0; i < n; i++) {
        h1[i] *= b[i];
        db1[i] *= dh1[i];
        dh1[i] *= b[i];
    }
    for (size_t i = 0; i < n; i++) {
        moe_k_mul(h2, b, i);
        moe_k_swiglu_back(db2, dh2, b, i);
    }
    same_floats(h1, h2, n, "swiglu product");
    same_floats(db1, db2, n, "swiglu db");
    same_floats(dh1, dh2, n, "swiglu dh");
    free(x), free(xr1), free(xr2), free(j1), free(j2), free(dxr), free(dx1), free(dx2), free(slot_row);
    free(buf.dxd), free(sx1), free(sx2), free(h1), free(h2), free(b), free(dh1), free(dh2), free(db1), free(db2);
}
END_TEST

START_TEST(test_activations)
{
    const size_t n = 5000; // several of the CPU's chunks of 512 values
    float *x = malloc(n * sizeof *x), *dy = malloc(n * sizeof *dy), *y1 = malloc(n * sizeof *y1);
    float *y2 = malloc(n * sizeof *y2), *d1 = malloc(n * sizeof *d1), *d2 = malloc(n * sizeof *d2);
    fill(x, n, 60, -7.0f, 7.0f);
    x[0] = 0.0f, x[1] = -0.0f, x[2] = 30.0f, x[3] = -30.0f;
    fill(dy, n, 61, -1.0f, 1.0f);

    moe_gelu_forward(y1, x, n);
    moe_gelu_backward(d1, dy, x, n);
    for (size_t i = 0; i < n; i++) { // one thread per value
        float th = moe_tanhf1(moe_k_gelu_inner(x[i]));
        y2[i] = moe_k_gelu(x[i], th);
        d2[i] = moe_k_gelu_dx(dy[i], x[i], th);
    }
    same_floats(y1, y2, n, "gelu");
    same_floats(d1, d2, n, "gelu dx");

    moe_silu_forward(y1, x, n);
    moe_silu_backward(d1, dy, x, n);
    for (size_t i = 0; i < n; i++) {
        float e = moe_expf1(-x[i]);
        y2[i] = moe_k_silu(x[i], e);
        d2[i] = moe_k_silu_dx(dy[i], x[i], e);
    }
    same_floats(y1, y2, n, "silu");
    same_floats(d1, d2, n, "silu dx");

    // ReLU as the experts compute it (moe/experts.c: h = max(a, 0), da = a > 0 ? dh : 0),
    // and nn/activation.c's (from the output y; the same mask).
    moe_act_forward(MOE_ACT_RELU, y1, x, n);
    memset(d1, 0, n * sizeof *d1);
    moe_act_backward(MOE_ACT_RELU, d1, dy, y1, n);
    for (size_t i = 0; i < n; i++) {
        y2[i] = moe_k_relu(x[i]);
        d2[i] = moe_k_relu_dx(dy[i], x[i]);
    }
    same_floats(y1, y2, n, "relu");
    same_floats(d1, d2, n, "relu dx");
    free(x), free(dy), free(y1), free(y2), free(d1), free(d2);
}
END_TEST

// ---------------------------------------------------------------- attention

// The forward by the kernel bodies over the index spaces of its three launches
// (each walked backwards: no body may read what another of its launch writes):
// every (bh, t, s) score, every row with SLEEF's exponentials (moe_vexpf, as
// nn/attention.c takes them), every (b, t, column) of out.
static void attn_forward_by_kernels(float *out, float *att, const float *qkv, size_t B, size_t C, size_t D, size_t H)
{
    for (size_t i = B * H * C * C; i-- > 0;)
        moe_k_attn_score(att, qkv, C, D, H, i / (C * C), i / C % C, i % C);
    for (size_t r = B * H * C; r-- > 0;) {
        size_t n = moe_k_attn_shift_row(att, C, r);
        moe_vexpf(att + r * C, att + r * C, n);
        moe_k_attn_normalise_row(att, C, r);
    }
    for (size_t i = B * C * D; i-- > 0;)
        moe_k_attn_out(out, att, qkv, C, D, H, i / (C * D), i / D % C, i % D);
}

// The backward the same way: every (bh, t, s) of dP, every row's dS, every
// element of dqkv (added to).
static void attn_backward_by_kernels(float *dqkv, float *datt, const float *dout, const float *qkv, const float *att,
                                     size_t B, size_t C, size_t D, size_t H)
{
    for (size_t i = B * H * C * C; i-- > 0;)
        moe_k_attn_dp(datt, dout, qkv, C, D, H, i / (C * C), i / C % C, i % C);
    for (size_t r = B * H * C; r-- > 0;)
        moe_k_attn_dsoftmax_row(datt, att, C, r);
    for (size_t i = B * C * 3 * D; i-- > 0;)
        moe_k_attn_dqkv(dqkv, datt, att, dout, qkv, C, D, H, i / (C * 3 * D), i / (3 * D) % C, i % (3 * D));
}

// A double-precision twin written from the definitions (Vaswani et al. 2017;
// kernels/attention.h), independent of both the library and the kernels:
// P (B, H, C, C), out (B, C, D), and dqkv (B, C, 3D) := d0 + the gradient
// from dout. With them the size of the terms each value sums: mo = sum_s P |v_s|
// for out; for dqkv, with |dP|[t, s] = sum_i |do_t,i| |v_s,i| and |dS| = P (|dP|
// + sum_s' P |dP|), md = sum |dS| |k| / sqrt(hs) (dq), sum |dS| |q| / sqrt(hs)
// (dk), sum P |do| (dv).
static void attn_twin(double *P, double *out, double *mo, double *dqkv, double *md, const float *qkv,
                      const float *dout, const float *d0, size_t B, size_t C, size_t D, size_t H)
{
    const size_t hs = D / H, ld = 3 * D;
    const double sc = 1.0 / sqrt((double)hs);
    double *dS = malloc(C * C * sizeof *dS), *aS = malloc(C * C * sizeof *aS);
    ck_assert(dS && aS);
    for (size_t i = 0; i < B * C * ld; i++)
        dqkv[i] = d0[i], md[i] = 0.0;
    for (size_t b = 0; b < B; b++)
        for (size_t h = 0; h < H; h++) {
            const float *q = qkv + b * C * ld + h * hs, *k = q + D, *v = q + 2 * D, *g = dout + b * C * D + h * hs;
            double *p = P + (b * H + h) * C * C, *dq = dqkv + b * C * ld + h * hs, *dk = dq + D, *dv = dq + 2 * D;
            double *mq = md + b * C * ld + h * hs, *mk = mq + D, *mv = mq + 2 * D;
            for (size_t t = 0; t < C; t++) {
                double mx = -INFINITY, sum = 0.0, pdp = 0.0, pdpa = 0.0;
                for (size_t s = 0; s < C; s++) {
                    double x = 0.0;
                    for (size_t i = 0; s <= t && i < hs; i++)
                        x += (double)q[t * ld + i] * k[s * ld + i];
                    p[t * C + s] = x * sc;
                    if (s <= t)
                        mx = fmax(mx, x * sc);
                }
                for (size_t s = 0; s < C; s++) {
                    p[t * C + s] = s <= t ? exp(p[t * C + s] - mx) : 0.0;
                    sum += p[t * C + s];
                }
                for (size_t s = 0; s < C; s++)
                    p[t * C + s] /= sum;
                for (size_t i = 0; i < hs; i++) {
                    double o = 0.0, m = 0.0;
                    for (size_t s = 0; s <= t; s++) {
                        o += p[t * C + s] * v[s * ld + i];
                        m += p[t * C + s] * fabs((double)v[s * ld + i]);
                    }
                    out[(b * C + t) * D + h * hs + i] = o;
                    mo[(b * C + t) * D + h * hs + i] = m;
                }
                for (size_t s = 0; s <= t; s++) {
                    double x = 0.0, a = 0.0;
                    for (size_t i = 0; i < hs; i++) {
                        x += (double)g[t * D + i] * v[s * ld + i];
                        a += fabs((double)g[t * D + i] * v[s * ld + i]);
                    }
                    dS[t * C + s] = x;
                    aS[t * C + s] = a;
                    pdp += p[t * C + s] * x;
                    pdpa += p[t * C + s] * a;
                }
                for (size_t s = 0; s <= t; s++) {
                    dS[t * C + s] = p[t * C + s] * (dS[t * C + s] - pdp);
                    aS[t * C + s] = p[t * C + s] * (aS[t * C + s] + pdpa);
                }
            }
            for (size_t t = 0; t < C; t++)
                for (size_t s = 0; s <= t; s++)
                    for (size_t i = 0; i < hs; i++) {
                        dq[t * ld + i] += dS[t * C + s] * k[s * ld + i] * sc;
                        dk[s * ld + i] += dS[t * C + s] * q[t * ld + i] * sc;
                        dv[s * ld + i] += p[t * C + s] * g[t * D + i];
                        mq[t * ld + i] += aS[t * C + s] * fabs((double)k[s * ld + i]) * sc;
                        mk[s * ld + i] += aS[t * C + s] * fabs((double)q[t * ld + i]) * sc;
                        mv[s * ld + i] += p[t * C + s] * fabs((double)g[t * D + i]);
                    }
        }
    free(dS), free(aS);
}

// |a - b| <= tol * m for n values: the worst ratio |a - b| / m, and a failure naming the first that exceeds it.
static double attn_close(const float *a, const double *b, const double *m, size_t n, double tol, const char *what,
                         size_t hs, size_t C)
{
    double worst = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        worst = fmax(worst, d / m[i]);
        ck_assert_msg(d <= tol * m[i], "hs=%zu C=%zu %s[%zu]: %.9g vs %.9g (terms %.3g, tolerance %.0e)", hs, C, what,
                      i, a[i], b[i], m[i], tol);
    }
    return worst;
}

// Kernels against the library (nn/attention.c) and the double twin, for one shape.
// Inputs uniform in [-amp, amp] (dout in [-1, 1]); dqkv starts at the same
// random values on every side (the backward adds).
// hs <= 64 (the library's tile path): att, out, dS and dqkv bit for bit.
// hs > 64 (its BLIS GEMM path, another order): within ATTN_TOL of the terms.
// Against the twin, every hs: within ATTN_TOL of the terms' size: att
// relative to max(P, 1e-2), out to mo, dqkv to md + |dqkv| (the last add into
// the starting value).
// ATTN_TOL: float sums of up to hs + C terms carry at most about (hs + C) u
// (u = 6e-8) of the terms' size, 1.1e-5 at hs = 128, C = 61, and a random
// walk in practice (MOE_GRAD_VERBOSE=1 prints the worst ratios: below 1e-6);
// the probabilities carry about |S - max| u relative. A wrong mask, scale,
// index or term is an error of order 1e-2 .. 1 of the terms.
#define ATTN_TOL 2e-5
static void check_attention(size_t B, size_t C, size_t D, size_t H, float amp, uint32_t stream)
{
    const size_t hs = D / H, nqkv = B * C * 3 * D, nout = B * C * D, natt = B * H * C * C;
    float *qkv = malloc(nqkv * 4), *dout = malloc(nout * 4), *d0 = malloc(nqkv * 4);
    float *out1 = malloc(nout * 4), *out2 = malloc(nout * 4), *att1 = malloc(natt * 4), *att2 = malloc(natt * 4);
    float *datt1 = malloc(natt * 4), *datt2 = malloc(natt * 4), *dq1 = malloc(nqkv * 4), *dq2 = malloc(nqkv * 4);
    double *P = malloc(natt * 8), *out = malloc(nout * 8), *mo = malloc(nout * 8), *dq = malloc(nqkv * 8);
    double *md = malloc(nqkv * 8), *pm = malloc(natt * 8), *outc = malloc(nout * 8), *dqc = malloc(nqkv * 8);
    double *attc = malloc(natt * 8), *pmc = malloc(natt * 8);
    ck_assert(qkv && dout && d0 && out1 && out2 && att1 && att2 && datt1 && datt2 && dq1 && dq2 && P && out && mo &&
              dq && md && pm && outc && dqc && attc && pmc);
    fill(qkv, nqkv, stream, -amp, amp);
    fill(dout, nout, stream + 1, -1.0f, 1.0f);
    fill(d0, nqkv, stream + 2, -0.5f, 0.5f);
    for (size_t i = 0; i < natt; i++) // every entry must be written, the masked ones included
        att1[i] = att2[i] = NAN;
    for (size_t i = 0; i < nout; i++)
        out1[i] = out2[i] = NAN;

    moe_attention_forward(out1, att1, qkv, B, C, D, H);
    attn_forward_by_kernels(out2, att2, qkv, B, C, D, H);
    // the backward of both from the library's probabilities, into the same starting dqkv
    memcpy(dq1, d0, nqkv * 4), memcpy(dq2, d0, nqkv * 4);
    for (size_t i = 0; i < natt; i++)
        datt1[i] = datt2[i] = NAN;
    moe_attention_backward(dq1, datt1, dout, qkv, att1, B, C, D, H);
    attn_backward_by_kernels(dq2, datt2, dout, qkv, att1, B, C, D, H);
    for (size_t i = 0; i < natt; i++) // above the diagonal: P exactly 0; dS 0 on the kernels' side
        ck_assert_msg(i % C <= i / C % C || (att2[i] == 0.0f && !signbit(att2[i]) && datt2[i] == 0.0f),
                      "masked entry %zu: att %g datt %g", i, att2[i], datt2[i]);

    if (hs <= 64) {
        same_floats(att1, att2, natt, "att");
        same_floats(out1, out2, nout, "out");
        for (size_t i = 0; i < natt; i++) // dS on and below the diagonal (the library's scratch above it)
            if (i % C <= i / C % C)
                ck_assert_msg(memcmp(datt1 + i, datt2 + i, 4) == 0, "dS[%zu]: %.9g vs %.9g", i, datt1[i], datt2[i]);
        same_floats(dq1, dq2, nqkv, "dqkv");
    }

    attn_twin(P, out, mo, dq, md, qkv, dout, d0, B, C, D, H);
    for (size_t i = 0; i < natt; i++)
        pm[i] = fmax(P[i], 1e-2), attc[i] = att1[i], pmc[i] = fmax(fabs((double)att1[i]), 1e-2);
    for (size_t i = 0; i < nqkv; i++)
        md[i] += fabs(dq[i]), dqc[i] = dq1[i];
    for (size_t i = 0; i < nout; i++)
        outc[i] = out1[i];
    double w[3];
    w[0] = attn_close(att2, P, pm, natt, ATTN_TOL, "att (twin)", hs, C);
    w[1] = attn_close(out2, out, mo, nout, ATTN_TOL, "out (twin)", hs, C);
    w[2] = attn_close(dq2, dq, md, nqkv, ATTN_TOL, "dqkv (twin)", hs, C);
    if (getenv("MOE_GRAD_VERBOSE"))
        printf("attention B=%zu C=%zu D=%zu H=%zu (hs %zu) vs twin: worst att %.3g out %.3g dqkv %.3g\n", B, C, D, H,
               hs, w[0], w[1], w[2]);
    if (hs > 64) { // the library's GEMM path: the same bounds, its values for the twin's
        w[0] = attn_close(att2, attc, pmc, natt, ATTN_TOL, "att (library)", hs, C);
        w[1] = attn_close(out2, outc, mo, nout, ATTN_TOL, "out (library)", hs, C);
        w[2] = attn_close(dq2, dqc, md, nqkv, ATTN_TOL, "dqkv (library)", hs, C);
        if (getenv("MOE_GRAD_VERBOSE"))
            printf("attention B=%zu C=%zu D=%zu H=%zu (hs %zu) vs library: worst att %.3g out %.3g dqkv %.3g\n", B,
                   C, D, H, hs, w[0], w[1], w[2]);
    }
    free(qkv), free(dout), free(d0), free(out1), free(out2), free(att1), free(att2), free(datt1), free(datt2);
    free(dq1), free(dq2), free(P), free(out), free(mo), free(dq), free(md), free(pm), free(outc), free(dqc);
    free(attc), free(pmc);
}

// The tiled score and dP kernel (cuda/ops.cu attn_pairs_kernel) on the host:
// tiles of MOE_K_ATTN_TILE x MOE_K_ATTN_TILE (bh, t, s), rows staged
// MOE_K_ATTN_CHUNK dimensions at a time (rows past C staged as 0), each
// element's sum continued chunk by chunk with moe_k_attn_dot_chunk.
static void attn_pairs_host(float *out, const float *a, size_t lda, const float *b, size_t ldb, size_t B, size_t C,
                            size_t H, size_t hs, float alpha)
{
    enum { T = MOE_K_ATTN_TILE, W = MOE_K_ATTN_CHUNK };
    static float as[T][W + 1], bs[T][W + 1];
    const size_t nt = (C + T - 1) / T;
    for (size_t tile = 0; tile < B * H * nt * nt; tile++) {
        const size_t bh = tile / (nt * nt), t0 = tile / nt % nt * T, s0 = tile % nt * T;
        const size_t bb = bh / H, col = bh % H * hs;
        float acc[T][T] = { { 0.0f } };
        if (s0 <= t0 + T - 1)
            for (size_t i0 = 0; i0 < hs; i0 += W) {
                const size_t w = hs - i0 < W ? hs - i0 : W;
                for (size_t r = 0; r < T; r++)
                    for (size_t c = 0; c < w; c++) {
                        as[r][c] = t0 + r < C ? a[(bb * C + t0 + r) * lda + col + i0 + c] : 0.0f;
                        bs[r][c] = s0 + r < C ? b[(bb * C + s0 + r) * ldb + col + i0 + c] : 0.0f;
                    }
                for (size_t y = 0; y < T; y++)
                    for (size_t x = 0; x < T; x++)
                        acc[y][x] = moe_k_attn_dot_chunk(acc[y][x], as[y], bs[x], w);
            }
        for (size_t y = 0; y < T; y++)
            for (size_t x = 0; x < T; x++)
                if (t0 + y < C && s0 + x < C)
                    out[(bh * C + t0 + y) * C + s0 + x] = s0 + x > t0 + y ? 0.0f : alpha * acc[y][x];
    }
}

// nn/attention.c's lane sum written out here, interleaved as the library
// adds it: the 8 lanes over the full groups, ((0+1)+(2+3))+((4+5)+(6+7)),
// then the tail in order.
static float lane_sum_ref(const float *x, const float *y, size_t n)
{
    float a[8] = { 0 };
    size_t s = 0;
    for (; s + 8 <= n; s += 8)
        for (size_t j = 0; j < 8; j++)
            a[j] += y ? x[s + j] * y[s + j] : x[s + j];
    float sum = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
    for (; s < n; s++)
        sum += y ? x[s] * y[s] : x[s];
    return sum;
}

// A row's sum split among the 8 lanes of the rows' launch (cuda/ops.cu
// attn_softmax_kernel, attn_dsoftmax_kernel: each lane's part, then the tree
// and the tail; moe_k_attn_lane_sum on one thread) gives the library's
// interleaved sum's bits, with and without y, for every row length from 1 to
// 70 (full groups, tails, rows shorter than the lanes); the lanes' maxima give
// the row's maximum.
START_TEST(test_attention_row_lanes)
{
    float x[70], y[70];
    fill(x, 70, 51, -3.0f, 3.0f);
    fill(y, 70, 52, -1.0f, 1.0f);
    for (size_t n = 1; n <= 70; n++)
        for (int with_y = 0; with_y < 2; with_y++) {
            const float *yy = with_y ? y : NULL;
            float a[MOE_K_ATTN_LANES], m = -INFINITY, want_m = x[0];
            for (size_t j = 0; j < MOE_K_ATTN_LANES; j++) {
                a[j] = moe_k_attn_lane_part(x, yy, n, j);
                float lm = moe_k_attn_lane_max(x, n, j);
                m = lm > m ? lm : m;
            }
            for (size_t s = 1; s < n; s++)
                want_m = x[s] > want_m ? x[s] : want_m;
            float got = moe_k_attn_lanes_finish(a, x, yy, n), one = moe_k_attn_lane_sum(x, yy, n);
            float want = lane_sum_ref(x, yy, n);
            ck_assert_msg(memcmp(&got, &want, sizeof got) == 0, "n %zu, y %d: %.9g vs %.9g", n, with_y, got, want);
            ck_assert_msg(memcmp(&one, &want, sizeof one) == 0, "n %zu, y %d: one thread %.9g vs %.9g", n, with_y,
                          one, want);
            ck_assert_msg(m == want_m, "n %zu: max %.9g vs %.9g", n, m, want_m);
        }
}
END_TEST

// The tiled kernel's order of operations gives the per-element bodies' bits:
// scores (q against k) and dP (dout against v), == everywhere (zeros above the
// diagonal included), for head sizes below, at and above one chunk and C not a
// multiple of the tile.
START_TEST(test_attention_tiles)
{
    static const size_t cases[][4] = { { 2, 37, 64, 4 }, { 1, 70, 160, 2 }, { 1, 33, 256, 2 }, { 2, 1, 8, 2 } };
    for (size_t ci = 0; ci < sizeof cases / sizeof *cases; ci++) {
        const size_t B = cases[ci][0], C = cases[ci][1], D = cases[ci][2], H = cases[ci][3], hs = D / H;
        const size_t na = B * H * C * C;
        float *qkv = malloc(B * C * 3 * D * sizeof *qkv), *dout = malloc(B * C * D * sizeof *dout);
        float *want = malloc(na * sizeof *want), *got = malloc(na * sizeof *got);
        ck_assert(qkv && dout && want && got);
        fill(qkv, B * C * 3 * D, 31 + (uint32_t)ci, -1.0f, 1.0f);
        fill(dout, B * C * D, 41 + (uint32_t)ci, -1.0f, 1.0f);
        for (size_t i = 0; i < na; i++)
            moe_k_attn_score(want, qkv, C, D, H, i / (C * C), i / C % C, i % C);
        memset(got, 0xff, na * sizeof *got);
        attn_pairs_host(got, qkv, 3 * D, qkv + D, 3 * D, B, C, H, hs, moe_k_attn_scale(hs));
        ck_assert_msg(memcmp(got, want, na * sizeof *got) == 0, "scores, case %zu (hs %zu)", ci, hs);
        for (size_t i = 0; i < na; i++)
            moe_k_attn_dp(want, dout, qkv, C, D, H, i / (C * C), i / C % C, i % C);
        memset(got, 0xff, na * sizeof *got);
        attn_pairs_host(got, dout, D, qkv + 2 * D, 3 * D, B, C, H, hs, 1.0f);
        ck_assert_msg(memcmp(got, want, na * sizeof *got) == 0, "dP, case %zu (hs %zu)", ci, hs);
        free(qkv), free(dout), free(want), free(got);
    }
}
END_TEST

START_TEST(test_attention)
{
    // C (positions) off every tile of the library (4 rows, 16 keys, 8 lanes), B > 1, several heads
    check_attention(2, 37, 64, 4, 1.0f, 200);  // hs = 16
    check_attention(2, 53, 96, 3, 1.0f, 201);  // hs = 32, odd H
    check_attention(3, 29, 128, 2, 1.0f, 202); // hs = 64, the tile path's largest
    check_attention(2, 45, 40, 2, 1.0f, 203);  // hs = 20 (16 + 4 columns in the library)
    check_attention(1, 70, 48, 2, 3.0f, 204);  // hs = 24, peaked rows longer than 64
    check_attention(2, 1, 64, 2, 1.0f, 205);   // C = 1: P = 1 exactly, dS = 0
    check_attention(2, 6, 8, 2, 1.0f, 206);    // hs = 4, rows shorter than the lanes
    check_attention(2, 37, 160, 2, 1.0f, 207); // hs = 80: the library's GEMM path
    check_attention(1, 61, 256, 2, 1.0f, 208); // hs = 128
}
END_TEST

// Attention with probability dropout: the forward by the kernel bodies with
// the dropout launch between the softmax and out, the backward with the mask
// launch between dP' and dS (which reads attp), against
// moe_attention_forward_drop / backward_drop, bit for bit (hs <= 64).
static void check_attention_drop(size_t B, size_t C, size_t D, size_t H, float p, uint64_t step, size_t layer,
                                 uint32_t stream)
{
    const size_t nqkv = B * C * 3 * D, nout = B * C * D, natt = B * H * C * C;
    float *qkv = malloc(nqkv * 4), *dout = malloc(nout * 4), *out1 = malloc(nout * 4), *out2 = malloc(nout * 4);
    float *att1 = malloc(natt * 4), *att2 = malloc(natt * 4), *ap1 = malloc(natt * 4), *ap2 = malloc(natt * 4);
    float *datt1 = malloc(natt * 4), *datt2 = malloc(natt * 4), *dq1 = malloc(nqkv * 4), *dq2 = malloc(nqkv * 4);
    ck_assert(qkv && dout && out1 && out2 && att1 && att2 && ap1 && ap2 && datt1 && datt2 && dq1 && dq2);
    fill(qkv, nqkv, stream, -1.0f, 1.0f);
    fill(dout, nout, stream + 1, -1.0f, 1.0f);
    fill(dq1, nqkv, stream + 2, -0.5f, 0.5f);
    memcpy(dq2, dq1, nqkv * 4);
    for (size_t i = 0; i < natt; i++)
        att1[i] = att2[i] = ap1[i] = ap2[i] = datt1[i] = datt2[i] = NAN;
    const struct moe_dropout drop = moe_dropout_make(p, 42, step, layer, MOE_DROP_ATTN);
    const struct moe_k_drop kd = moe_k_drop_make(drop.p, drop.seed, drop.step, drop.site);

    moe_attention_forward_drop(out1, att1, ap1, qkv, B, C, D, H, &drop);
    for (size_t i = natt; i-- > 0;)
        moe_k_attn_score(att2, qkv, C, D, H, i / (C * C), i / C % C, i % C);
    for (size_t r = B * H * C; r-- > 0;) {
        size_t n = moe_k_attn_shift_row(att2, C, r);
        moe_vexpf(att2 + r * C, att2 + r * C, n);
        moe_k_attn_normalise_row(att2, C, r);
    }
    for (size_t i = natt; i-- > 0;)
        moe_k_attn_drop(att2, ap2, &kd, C, i);
    for (size_t i = nout; i-- > 0;)
        moe_k_attn_out(out2, att2, qkv, C, D, H, i / (C * D), i / D % C, i % D);
    // the library's attp holds P on and below the diagonal (above it, its rows as the softmax left them)
    for (size_t i = 0; i < natt; i++)
        if (i % C <= i / C % C)
            ck_assert_msg(memcmp(ap1 + i, ap2 + i, 4) == 0, "attp[%zu]: %.9g vs %.9g", i, ap1[i], ap2[i]);
    same_floats(att1, att2, natt, "att (dropped)");
    same_floats(out1, out2, nout, "out (dropout)");
    size_t kept = 0, below = 0;
    for (size_t i = 0; i < natt; i++)
        if (i % C <= i / C % C)
            below++, kept += att2[i] != 0.0f;

    moe_attention_backward_drop(dq1, datt1, dout, qkv, att1, ap1, B, C, D, H, &drop);
    for (size_t i = natt; i-- > 0;)
        moe_k_attn_dp(datt2, dout, qkv, C, D, H, i / (C * C), i / C % C, i % C);
    for (size_t i = natt; i-- > 0;)
        moe_k_attn_drop_grad(datt2, &kd, C, i);
    for (size_t r = B * H * C; r-- > 0;)
        moe_k_attn_dsoftmax_row(datt2, ap2, C, r);
    for (size_t i = nqkv; i-- > 0;)
        moe_k_attn_dqkv(dq2, datt2, att2, dout, qkv, C, D, H, i / (C * 3 * D), i / (3 * D) % C, i % (3 * D));
    for (size_t i = 0; i < natt; i++)
        if (i % C <= i / C % C)
            ck_assert_msg(memcmp(datt1 + i, datt2 + i, 4) == 0, "dS[%zu]: %.9g vs %.9g", i, datt1[i], datt2[i]);
    same_floats(dq1, dq2, nqkv, "dqkv (dropout)");
    // the mask did something: about 1 - p of the entries kept (P > 0 everywhere on and below the diagonal)
    ck_assert_msg(kept > 0 && kept < below, "dropout p %g kept %zu of %zu", (double)p, kept, below);
    free(qkv), free(dout), free(out1), free(out2), free(att1), free(att2), free(ap1), free(ap2);
    free(datt1), free(datt2), free(dq1), free(dq2);
}

START_TEST(test_attention_dropout)
{
    ck_assert_int_eq(MOE_K_DROP_SITE_SHIFT, MOE_DROP_SITE_SHIFT);
    check_attention_drop(2, 37, 64, 4, 0.1f, 3, 0, 300);  // hs = 16
    check_attention_drop(2, 29, 96, 3, 0.5f, 7, 2, 301);  // hs = 32, odd H, another layer's site
    check_attention_drop(1, 21, 128, 2, 0.9f, 1, 1, 302); // hs = 64, most entries dropped
}
END_TEST

// Inverted dropout by one thread per element against nn/dropout.c: a run of n
// values from mask element `first` (moe_dropout_apply, which draws in chunks),
// and an expert's gathered rows keyed by (token, slot) (moe_dropout_rows).
START_TEST(test_dropout)
{
    const size_t n = 10007, N = 37, F = 24, S = 2;
    float *a = malloc(n * 4), *b = malloc(n * 4);
    ck_assert(a && b);
    const float ps[] = { 0.0f, 0.1f, 0.5f, 0.99f };
    for (size_t q = 0; q < sizeof ps / sizeof *ps; q++) {
        const struct moe_dropout d = moe_dropout_make(ps[q], 7, 123 + q, 3, MOE_DROP_RESID_FFN);
        const struct moe_k_drop kd = moe_k_drop_make(d.p, d.seed, d.step, d.site);
        fill(a, n, 310 + (uint32_t)q, -2.0f, 2.0f);
        memcpy(b, a, n * 4);
        moe_dropout_apply(&d, a, n, 5);
        if (moe_dropout_on(&d)) // p = 0 is "off": the library leaves x alone, as a launch must not be made
            for (size_t j = n; j-- > 0;)
                moe_k_dropout(b, &kd, 5, j);
        same_floats(a, b, n, "dropout run");
        for (size_t j = 0; j < 64; j++)
            ck_assert_int_eq(moe_k_drop_keep(&kd, 5 + j), moe_dropout_keep(&d, 5 + j));
    }
    // the boundary, which random words almost never hit: a word equal to the threshold keeps (nn/dropout.c: >=)
    {
        struct moe_k_drop kd = moe_k_drop_make(0.5f, 7, 9, 2);
        uint32_t w[4];
        moe_philox_words(7, MOE_RNG_DROPOUT, 9, ((uint64_t)2 << MOE_K_DROP_SITE_SHIFT) >> 2, w);
        kd.threshold = w[0];
        ck_assert(moe_k_drop_keep(&kd, 0));
        kd.threshold = w[0] + 1;
        ck_assert(!moe_k_drop_keep(&kd, 0) || w[0] == UINT32_MAX);
    }
    // rows: row r holds token row_tok[r], slot row_slot[r]; mask elements (tok S + slot) F + column
    int32_t row_tok[37], row_slot[37];
    for (size_t r = 0; r < N; r++)
        row_tok[r] = (int32_t)((r * 7) % 19), row_slot[r] = (int32_t)(r % S);
    const struct moe_dropout d = moe_dropout_make(0.3, 11, 5, 1, MOE_DROP_FFN);
    const struct moe_k_drop kd = moe_k_drop_make(d.p, d.seed, d.step, d.site);
    fill(a, N * F, 320, -1.0f, 1.0f);
    memcpy(b, a, N * F * 4);
    moe_dropout_rows(&d, a, N, F, row_tok, row_slot, S);
    for (size_t i = N * F; i-- > 0;) {
        size_t r = i / F;
        moe_k_dropout(b + r * F, &kd, ((uint64_t)row_tok[r] * S + (uint64_t)row_slot[r]) * F, i % F);
    }
    same_floats(a, b, N * F, "dropout rows");
    free(a), free(b);
}
END_TEST

// The linear layer's bias around its GEMM: rows set to b by one thread per
// value, then the same GEMM with beta = 1, against moe_linear_forward; the bias
// gradient by one thread per column against moe_linear_backward's, both added
// to a nonzero start; and the residual add.
START_TEST(test_linear_bias)
{
    const size_t T = 37, I = 13, O = 29, ldy = O + 3, lddy = O + 5;
    float *x = malloc(T * I * 4), *w = malloc(O * I * 4), *b = malloc(O * 4), *y1 = malloc(T * ldy * 4);
    float *y2 = malloc(T * ldy * 4), *dy = malloc(T * lddy * 4), *dw = calloc(O * I, 4), *db1 = malloc(O * 4);
    float *db2 = malloc(O * 4);
    ck_assert(x && w && b && y1 && y2 && dy && dw && db1 && db2);
    fill(x, T * I, 500, -1.0f, 1.0f), fill(w, O * I, 501, -1.0f, 1.0f), fill(b, O, 502, -1.0f, 1.0f);
    fill(dy, T * lddy, 503, -1.0f, 1.0f), fill(db1, O, 504, -1.0f, 1.0f);
    memcpy(db2, db1, O * 4);
    for (size_t i = 0; i < T * ldy; i++)
        y1[i] = y2[i] = 7.0f; // the padding columns must stay
    moe_linear_forward(y1, ldy, x, I, w, b, T, I, O);
    for (size_t i = T * O; i-- > 0;)
        moe_k_bias_rows(y2, ldy, b, i / O, i % O);
    moe_gemm(0, 1, T, O, I, 1.0f, x, I, w, I, 1.0f, y2, ldy);
    same_floats(y1, y2, T * ldy, "linear forward with bias");
    moe_linear_backward(NULL, 0, dw, db1, dy, lddy, x, I, w, T, I, O);
    for (size_t o = O; o-- > 0;)
        moe_k_bias_grad(db2, dy, lddy, T, o);
    same_floats(db1, db2, O, "bias gradient");
    for (size_t i = 0; i < T * I; i++) // residual: y += x
        y1[i] = w[i % (O * I)] + x[i];
    for (size_t i = 0; i < T * I; i++)
        y2[i] = w[i % (O * I)];
    for (size_t i = T * I; i-- > 0;)
        moe_k_add(y2, x, i);
    same_floats(y1, y2, T * I, "residual add");
    free(x), free(w), free(b), free(y1), free(y2), free(dy), free(dw), free(db1), free(db2);
}
END_TEST

// The gradient norm's sum of squares by the three launches' bodies against
// moe_optim_sum_sq, bit for bit, for sizes below, at and past the block count,
// with short and empty last blocks, and past the CPU's threading threshold.
// Gradient accumulation's sum against core/params.h moe_fold: three and
// four micro-batches of uneven weights, bit for bit.
START_TEST(test_fold)
{
    const size_t n = 1031;
    float *g = malloc(n * 4), *a1 = malloc(n * 4), *a2 = malloc(n * 4), *o1 = malloc(n * 4), *o2 = malloc(n * 4);
    for (size_t M = 3; M <= 4; M++) {
        for (size_t k = 0; k < M; k++) {
            float w = (float)((double)(k + 2) / (double)(M * (M + 3) / 2 + M));
            int last = k + 1 == M;
            fill(g, n, 500 + (uint32_t)(M * 10 + k), -3.0f, 3.0f);
            memcpy(o1, g, n * 4), memcpy(o2, g, n * 4);
            moe_fold(a1, o1, o1, n, w, k, last);
            for (size_t i = 0; i < n; i++)
                moe_k_fold(a2, o2, o2, i, w, k, last);
            same_floats(a1, a2, n, "fold accumulator");
            if (last)
                same_floats(o1, o2, n, "fold output");
        }
    }
    free(g), free(a1), free(a2), free(o1), free(o2);
}
END_TEST

// LoRA's merge against train/tune.c's rule (moe_lora_apply: W0 + delta where
// delta is not zero, else W0's bits): zeros of either sign in both, bit for bit.
START_TEST(test_lora_merge)
{
    const size_t n = 515;
    float *w0 = malloc(n * 4), *dl = malloc(n * 4), *w = malloc(n * 4), *want = malloc(n * 4);
    fill(w0, n, 610, -1.0f, 1.0f);
    fill(dl, n, 611, -0.01f, 0.01f);
    for (size_t i = 0; i < n; i += 7)
        dl[i] = i % 2 ? 0.0f : -0.0f;
    for (size_t i = 0; i < n; i += 11)
        w0[i] = i % 2 ? 0.0f : -0.0f;
    for (size_t i = 0; i < n; i++) {
        want[i] = dl[i] != 0.0f ? w0[i] + dl[i] : w0[i];
        moe_k_lora_merge(w, w0, dl, i);
    }
    same_floats(w, want, n, "lora merge");
    ck_assert_msg(signbit(w[0]) && !signbit(w0[0] + 0.0f), "-0.0 + 0.0: the base weight's sign should stay");
    free(w0), free(dl), free(w), free(want);
}
END_TEST

START_TEST(test_sum_sq)
{
    ck_assert_int_eq(MOE_K_SQ_BLOCKS * MOE_K_SQ_LANES, 2048);
    const size_t ns[] = { 0, 1, 7, 9, 255, 256, 257, 2047, 10007, 70001 };
    float *g = malloc(70001 * 4);
    double lanes[MOE_K_SQ_BLOCKS * MOE_K_SQ_LANES], part[MOE_K_SQ_BLOCKS], sq;
    ck_assert(g);
    fill(g, 70001, 700, -3.0f, 3.0f);
    for (size_t q = 0; q < sizeof ns / sizeof *ns; q++) {
        const size_t n = ns[q];
        for (size_t i = MOE_K_SQ_BLOCKS * MOE_K_SQ_LANES; i-- > 0;)
            moe_k_sumsq_lane(lanes, g, n, i / MOE_K_SQ_LANES, i % MOE_K_SQ_LANES);
        for (size_t b = MOE_K_SQ_BLOCKS; b-- > 0;)
            moe_k_sumsq_block(part, lanes, b);
        sq = 0.0; // the total is added to what the accumulator holds
        moe_k_sumsq_total(&sq, part);
        double ref = moe_optim_sum_sq(g, n);
        ck_assert_msg(memcmp(&sq, &ref, sizeof sq) == 0, "n %zu: %.17g vs %.17g", n, sq, ref);
    }
    free(g);
}
END_TEST

// Central differences of L = sum out W (W fixed, random) through the kernels'
// forward against the kernels' backward, every element of qkv (gradcheck.h:
// step 1e-3, tolerance 2e-3 of max(1, |numeric|)); one shape on each side of
// hs = 64.
struct attn_fd {
    float *qkv, *out, *att, *w;
    size_t B, C, D, H;
};

static double attn_fd_loss(void *ctx)
{
    struct attn_fd *f = ctx;
    attn_forward_by_kernels(f->out, f->att, f->qkv, f->B, f->C, f->D, f->H);
    double L = 0.0;
    for (size_t i = 0; i < f->B * f->C * f->D; i++)
        L += (double)f->out[i] * f->w[i];
    return L;
}

static void check_attention_fd(size_t B, size_t C, size_t D, size_t H, uint32_t stream)
{
    const size_t nqkv = B * C * 3 * D, nout = B * C * D, natt = B * H * C * C;
    struct attn_fd f = { malloc(nqkv * 4), malloc(nout * 4), malloc(natt * 4), malloc(nout * 4), B, C, D, H };
    float *g = calloc(nqkv, 4), *datt = malloc(natt * 4);
    ck_assert(f.qkv && f.out && f.att && f.w && g && datt);
    fill(f.qkv, nqkv, stream, -1.0f, 1.0f);
    fill(f.w, nout, stream + 1, -1.0f, 1.0f);
    attn_fd_loss(&f);
    attn_backward_by_kernels(g, datt, f.w, f.qkv, f.att, B, C, D, H);
    double biggest = 0.0;
    for (size_t i = 0; i < nqkv; i++) {
        double num = numeric_grad(&f.qkv[i], 1e-3f, attn_fd_loss, &f);
        biggest = fmax(biggest, fabs(num));
        check_grad(g[i], num, "attention dqkv", i);
    }
    ck_assert_msg(biggest > 0.05, "gradients all tiny (%g)", biggest);
    free(f.qkv), free(f.out), free(f.att), free(f.w), free(g), free(datt);
}

START_TEST(test_attention_fd)
{
    check_attention_fd(2, 5, 8, 2, 210);   // hs = 4
    check_attention_fd(1, 4, 144, 2, 211); // hs = 72
}
END_TEST

int main(void)
{
    if (moe_test_init_blas(1))
        return 1;
    Suite *s = suite_create("kernels");
    TCase *tc = tcase_create("kernels");
    tcase_add_test(tc, test_philox);
    tcase_add_test(tc, test_route);
    tcase_add_test(tc, test_route_ec_quota);
    tcase_add_test(tc, test_route_ec);
    tcase_add_test(tc, test_route_ec_select);
    tcase_add_test(tc, test_route_ec_key);
    tcase_add_test(tc, test_route_hash);
    tcase_add_test(tc, test_bias_update);
    tcase_add_test(tc, test_norm);
    tcase_add_test(tc, test_norm_backward);
    tcase_add_test(tc, test_optim);
    tcase_add_test(tc, test_dispatch);
    tcase_add_test(tc, test_aux);
    tcase_add_test(tc, test_aux_shazeer);
    tcase_add_test(tc, test_embed);
    tcase_add_test(tc, test_ce);
    tcase_add_test(tc, test_distill);
    tcase_add_test(tc, test_layer_steps);
    tcase_add_test(tc, test_activations);
    tcase_add_test(tc, test_attention);
    tcase_add_test(tc, test_attention_tiles);
    tcase_add_test(tc, test_attention_row_lanes);
    tcase_add_test(tc, test_attention_dropout);
    tcase_add_test(tc, test_dropout);
    tcase_add_test(tc, test_linear_bias);
    tcase_add_test(tc, test_sum_sq);
    tcase_add_test(tc, test_fold);
    tcase_add_test(tc, test_lora_merge);
    tcase_add_test(tc, test_attention_fd);
    suite_add_tcase(s, tc);
    return moe_test_run(s);
}
