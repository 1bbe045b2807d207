// test_prune.c: structured pruning (lib/compress/prune.c):
//   - moe_prune_select drops exactly the n_drop lowest scores, ties by position
//     (the higher index first), on hand cases (ties, -0.0 = +0.0, infinities),
//     n_drop = 0 and = n, n = 0, and against the rank definition on random
//     scores with many ties; n_drop > n and a NaN score are MOE_EINVAL with a
//     message naming the numbers;
//   - moe_prune_random_scores: the same (seed, stream) gives the same numbers,
//     another seed or stream others, all in [0, 1), mean ~1/2; a shorter draw
//     is the start of a longer one;
//   - moe_prune_gather_rows on a small array by hand (nothing written past
//     the kept rows);
//   - moe_ffn_find on real registries: mlp-moe (dense + sparse, swiglu: w3),
//     transformer (dense FFN, sparse experts, shared experts), the 1991 mixture
//     (experts.w1/b1/w2, w2's rows the outputs, not n_embd); and on a hand
//     registry: a w1 without w2, a w2 of another width, a w3 or b1 of the wrong
//     shape (dropped), 1-d and 4-d tensors named .w1, and max smaller than the
//     count;
//   - moe_ffn_scores l1, l2 and taylor (with an arbitrary grad) against a plain
//     loop over the unit's weights (rows of w1, w3, elements of b1, columns of
//     w2), for an FFN with w3, experts with w3, and the mixture's with b1;
//   - moe_ffn_apply_mask zeroes exactly the masked units' weights (every other
//     float keeps its bits; moe_params_zeros sees them), and the masked model
//     computes what a model of width F - k does whose weights are the wide
//     one's with those rows and columns removed: mlp-moe (swiglu, dense +
//     experts + shared), transformer (gelu, dense + experts + shared), mixture
//     (tanh, b1); loss and outputs to a relative 1e-5 (see test_mask_narrow);
//   - the taylor score is |dL/dalpha| at alpha = 1, L the batch-mean loss with
//     the unit's weights scaled by alpha, by central differences with
//     Richardson extrapolation, for every unit (mlp-moe with a dense swiglu
//     block before a sparse one with a shared expert, routing checked
//     unchanged; the mixture with b1), and sum w g has dL/dalpha's sign;
//   - moe_params_zeros counts +0.0 and -0.0 (not denormals, not NaN), in
//     tensor i only;
//   - moe_prune_schedule (Zhu & Gupta 2017, eq. 1: s_t = final (1 - (1 -
//     (t - start) / n)^3)): no prune for t <= start, t > start + n, or t - start
//     not a multiple of every (but t = start + n, which gives exactly final);
//     the values by hand (exact binary fractions) and against the formula;
//     nondecreasing over the prunes; every > n prunes at the end only; a
//     final sparsity <= 0 never prunes;
//   - the masks of a model (mlp-moe: dense, experts, shared): init finds
//     moe_ffn_find's FFNs, names NAME.pruned, units = sum of M F, nothing
//     pruned, no weight touched; grow per FFN prunes floor(fraction U) in each
//     (literal counts), the live units of lowest score (moe_ffn_scores and
//     moe_prune_select with the pruned ranked first; and, for l1, no pruned
//     unit above a live one by score), zeroes their weights and no other
//     float's bits change; a larger fraction keeps every pruned unit pruned
//     even when its weights were set large again; a smaller one (per FFN or
//     global) prunes nothing and un-prunes nothing; global ranks all units
//     together (floor(fraction units) in all); l2 and taylor (an arbitrary
//     gradient) by the same rule; fractions 1, 1.5, -0.1 and NaN are
//     MOE_EINVAL with nothing changed; moe_ffn_masks_dead flags exactly the
//     floats moe_ffn_masks_apply zeroes (found on a copy of nonzero
//     weights); a model without FFNs has no masks;
//   - masks in a file: moe_ffn_masks_refs gives one U8 tensor per FFN ((F) for
//     a 2-d FFN, (M, F) else), and moe_ffn_masks_read of a file of them alone,
//     or after the model's tensors, gives the same flags; a file without them
//     leaves the masks as they are, one with some sets those only; F32 or I8
//     flags, a transposed shape, a wrong count and values 2 and 255 are
//     MOE_EFORMAT with one line naming the tensor.
#include <check.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "compress/prune.h"
#include "core/params.h"
#include "core/rng.h"
#include "io/config.h"
#include "model/model.h"
#include "moe/moe_layer.h"
#include "testutil.h"
#include "compress_models.h"
#include "train/train.h"

// ---------------------------------------------------------------- selection

static void expect_drop(const double *score, size_t n, size_t n_drop, const uint8_t *want, const char *what)
{
    uint8_t drop[64];
    struct moe_err err = { 0 };
    ck_assert_uint_le(n, sizeof drop);
    memset(drop, 7, sizeof drop); // every entry must be written, and nothing past n
    int rc = moe_prune_select(score, n, n_drop, drop, &err);
    ck_assert_msg(rc == 0, "%s: %s", what, err.msg);
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(drop[i] == want[i], "%s, n_drop %zu: drop[%zu] = %d, want %d", what, n_drop, i, drop[i],
                      want[i]);
    for (size_t i = n; i < sizeof drop; i++)
        ck_assert_int_eq(drop[i], 7);
}

START_TEST(test_select_hand)
{
    const double s1[5] = { 3, 1, 2, 0.5, 5 };
    expect_drop(s1, 5, 2, (const uint8_t[]){ 0, 1, 0, 1, 0 }, "distinct");
    expect_drop(s1, 5, 3, (const uint8_t[]){ 0, 1, 1, 1, 0 }, "distinct");
    expect_drop(s1, 5, 0, (const uint8_t[]){ 0, 0, 0, 0, 0 }, "distinct");
    expect_drop(s1, 5, 5, (const uint8_t[]){ 1, 1, 1, 1, 1 }, "distinct");

    // ties: the later unit goes first
    const double s2[4] = { 1, 1, 1, 0 };
    expect_drop(s2, 4, 1, (const uint8_t[]){ 0, 0, 0, 1 }, "{1,1,1,0}");
    expect_drop(s2, 4, 2, (const uint8_t[]){ 0, 0, 1, 1 }, "{1,1,1,0}");
    expect_drop(s2, 4, 3, (const uint8_t[]){ 0, 1, 1, 1 }, "{1,1,1,0}");
    expect_drop(s2, 4, 4, (const uint8_t[]){ 1, 1, 1, 1 }, "{1,1,1,0}");
    const double s3[4] = { 2, 1, 1, 2 };
    expect_drop(s3, 4, 1, (const uint8_t[]){ 0, 0, 1, 0 }, "{2,1,1,2}");
    expect_drop(s3, 4, 3, (const uint8_t[]){ 0, 1, 1, 1 }, "{2,1,1,2}");
    const double s4[3] = { 0.0, -0.0, 0.0 }; // -0.0 == +0.0: a tie
    expect_drop(s4, 3, 1, (const uint8_t[]){ 0, 0, 1 }, "signed zeros");
    expect_drop(s4, 3, 2, (const uint8_t[]){ 0, 1, 1 }, "signed zeros");
    const double s5[4] = { INFINITY, -INFINITY, 0, -INFINITY };
    expect_drop(s5, 4, 1, (const uint8_t[]){ 0, 0, 0, 1 }, "infinities");
    expect_drop(s5, 4, 3, (const uint8_t[]){ 0, 1, 1, 1 }, "infinities");
    expect_drop(s5, 4, 2, (const uint8_t[]){ 0, 1, 0, 1 }, "infinities");
    expect_drop(NULL, 0, 0, NULL, "empty");

    struct moe_err err = { 0 };
    uint8_t drop[4];
    ck_assert_int_eq(moe_prune_select(s2, 4, 5, drop, &err), MOE_EINVAL);
    ck_assert_msg(strstr(err.msg, "5") && strstr(err.msg, "4"), "message '%s' lacks the numbers", err.msg);
    err.msg[0] = 0;
    ck_assert_int_eq(moe_prune_select(NULL, 0, 1, drop, &err), MOE_EINVAL);
    ck_assert_msg(err.msg[0], "no message");
    const double nan_s[4] = { 1, 2, NAN, 0 };
    err.msg[0] = 0;
    for (size_t k = 0; k <= 4; k++) { // whatever the count, a NaN is refused
        ck_assert_int_eq(moe_prune_select(nan_s, 4, k, drop, &err), MOE_EINVAL);
        ck_assert_msg(strstr(err.msg, "2") && strstr(err.msg, "NaN"), "message '%s'", err.msg);
    }
}
END_TEST

// drop[i] = 1 iff fewer than n_drop entries come before i in the order
// (increasing score, then decreasing index): i's rank is below n_drop.
START_TEST(test_select_rank)
{
    enum { NS = 37 };
    double s[NS];
    struct moe_rng r = moe_rng_make(5, MOE_RNG_DATA, 90);
    for (size_t i = 0; i < NS; i++)
        s[i] = (double)moe_rng_below(&r, i, 4) - 1.5; // many ties
    s[7] = -0.0, s[8] = 0.0;
    for (size_t n_drop = 0; n_drop <= NS; n_drop++) {
        uint8_t drop[NS], want[NS];
        struct moe_err err;
        ck_assert_int_eq(moe_prune_select(s, NS, n_drop, drop, &err), 0);
        size_t count = 0;
        for (size_t i = 0; i < NS; i++) {
            size_t before = 0;
            for (size_t j = 0; j < NS; j++)
                before += s[j] < s[i] || (s[j] == s[i] && j > i);
            want[i] = before < n_drop;
            count += drop[i];
            ck_assert_msg(drop[i] == want[i], "n_drop %zu: drop[%zu] = %d, want %d", n_drop, i, drop[i], want[i]);
        }
        ck_assert_uint_eq(count, n_drop);
    }
}
END_TEST

// ---------------------------------------------------------------- random scores, gather

START_TEST(test_random_scores)
{
    enum { NR = 1000 };
    static double a[NR], b[NR], c[NR], d[NR];
    moe_prune_random_scores(a, NR, 42, 3);
    moe_prune_random_scores(b, NR, 42, 3);
    moe_prune_random_scores(c, NR, 43, 3);
    moe_prune_random_scores(d, NR, 42, 4);
    ck_assert_mem_eq(a, b, sizeof a);
    size_t same_seed = 0, same_stream = 0;
    double mean = 0.0;
    for (size_t i = 0; i < NR; i++) {
        ck_assert_msg(a[i] >= 0.0 && a[i] < 1.0, "score %zu = %.17g", i, a[i]);
        ck_assert(c[i] >= 0.0 && c[i] < 1.0 && d[i] >= 0.0 && d[i] < 1.0);
        same_seed += a[i] == c[i];
        same_stream += a[i] == d[i];
        mean += a[i] / NR;
    }
    ck_assert_msg(same_seed < 5 && same_stream < 5, "%zu, %zu equal", same_seed, same_stream);
    ck_assert_double_gt(mean, 0.45); // roughly uniform, not constant
    ck_assert_double_lt(mean, 0.55);
    // a shorter draw is the start of a longer one: a score is a function of (seed, stream, index)
    double e[10];
    moe_prune_random_scores(e, 10, 42, 3);
    ck_assert_mem_eq(e, a, sizeof e);
}
END_TEST

START_TEST(test_gather_rows)
{
    float src[5 * 3];
    for (size_t i = 0; i < 15; i++)
        src[i] = (float)(10 * (i / 3) + i % 3); // row r: 10 r, 10 r + 1, 10 r + 2
    float dst[16];
    for (size_t i = 0; i < 16; i++)
        dst[i] = -1.0f;
    moe_prune_gather_rows(dst, src, 5, 3, (const uint8_t[]){ 0, 1, 0, 1, 1 });
    const float want[6] = { 0, 1, 2, 20, 21, 22 };
    ck_assert_mem_eq(dst, want, sizeof want);
    for (size_t i = 6; i < 16; i++)
        ck_assert(dst[i] == -1.0f);
    moe_prune_gather_rows(dst, src, 5, 3, (const uint8_t[]){ 1, 0, 0, 0, 0 });
    ck_assert_mem_eq(dst, src + 3, 12 * sizeof *dst);
    ck_assert(dst[12] == -1.0f);
    moe_prune_gather_rows(dst, src, 5, 3, (const uint8_t[]){ 0, 0, 0, 0, 0 });
    ck_assert_mem_eq(dst, src, sizeof src);
    for (size_t i = 0; i < 16; i++)
        dst[i] = -1.0f;
    moe_prune_gather_rows(dst, src, 5, 3, (const uint8_t[]){ 1, 1, 1, 1, 1 });
    for (size_t i = 0; i < 16; i++)
        ck_assert(dst[i] == -1.0f);
    moe_prune_gather_rows(dst, src, 5, 1, (const uint8_t[]){ 1, 0, 1, 1, 0 }); // rows of one float
    ck_assert(dst[0] == src[1] && dst[1] == src[4] && dst[2] == -1.0f);
}
END_TEST

// ---------------------------------------------------------------- models

static void expect_ffn(const struct moe_params *p, const struct moe_ffn *f, const char *name, size_t M, size_t F,
                       size_t D, int w3, int b1)
{
    char buf[MOE_NAME_MAX + 8];
    ck_assert_str_eq(f->name, name);
    ck_assert_uint_eq(f->M, M);
    ck_assert_uint_eq(f->F, F);
    ck_assert_uint_eq(f->D, D);
    snprintf(buf, sizeof buf, "%s.w1", name);
    ck_assert_int_eq(f->t[MOE_FFN_W1], moe_params_find(p, buf));
    snprintf(buf, sizeof buf, "%s.w2", name);
    ck_assert_int_eq(f->t[MOE_FFN_W2], moe_params_find(p, buf));
    ck_assert_int_ge(f->t[MOE_FFN_W2], 0);
    snprintf(buf, sizeof buf, "%s.w3", name);
    ck_assert_int_eq(f->t[MOE_FFN_W3], w3 ? moe_params_find(p, buf) : -1);
    if (w3)
        ck_assert_int_ge(f->t[MOE_FFN_W3], 0);
    snprintf(buf, sizeof buf, "%s.b1", name);
    ck_assert_int_eq(f->t[MOE_FFN_B1], b1 ? moe_params_find(p, buf) : -1);
    if (b1)
        ck_assert_int_ge(f->t[MOE_FFN_B1], 0);
}

// The models: compress_models.h (MLP_MOE, TRANSFORMER, MIXTURE).

START_TEST(test_find_models)
{
    struct moe_model m;
    struct moe_ffn f[8];
    size_t n;

    // mlp-moe, plain (no dense width set: n_ff_dense = n_expert_used x n_ff), swiglu
    make_model(&m,
               "{\"model\":{\"type\":\"mlp-moe\",\"n_embd\":4,\"n_layer\":4,\"moe_every\":2,\"n_expert\":3,"
               "\"n_expert_used\":2,\"n_ff\":5,\"ffn_activation\":\"swiglu\"},\"loss\":{\"type\":\"ce\"}}",
               MOE_TASK_CLASSIFICATION, I, O, N);
    n = moe_ffn_find(&m.params, f, 8);
    ck_assert_uint_eq(n, 4); // dense, sparse, dense, sparse, in registry order
    expect_ffn(&m.params, &f[0], "layers.0.ffn", 1, 10, 4, 1, 0);
    expect_ffn(&m.params, &f[1], "layers.1.moe.experts", 3, 5, 4, 1, 0);
    expect_ffn(&m.params, &f[2], "layers.2.ffn", 1, 10, 4, 1, 0);
    expect_ffn(&m.params, &f[3], "layers.3.moe.experts", 3, 5, 4, 1, 0);
    for (size_t k = 1; k < n; k++)
        ck_assert_int_gt(f[k].t[MOE_FFN_W1], f[k - 1].t[MOE_FFN_W1]);
    moe_model_release(&m);

    // mlp-moe with a shared expert
    make_model(&m, MLP_MOE, MOE_TASK_CLASSIFICATION, I, O, N);
    n = moe_ffn_find(&m.params, f, 8);
    ck_assert_uint_eq(n, 3);
    expect_ffn(&m.params, &f[0], "layers.0.ffn", 1, 6, 4, 1, 0);
    expect_ffn(&m.params, &f[1], "layers.1.moe.experts", 3, 5, 4, 1, 0);
    expect_ffn(&m.params, &f[2], "layers.1.moe.shared", 1, 5, 4, 1, 0);
    moe_model_release(&m);

    // transformer, gelu: no w3; two shared experts
    make_model(&m,
               "{\"model\":{\"type\":\"transformer\",\"n_ctx\":4,\"n_embd\":4,\"n_head\":2,\"n_layer\":2,"
               "\"moe_every\":2,\"n_ff\":3,\"n_ff_dense\":6,\"n_expert\":2,\"n_expert_used\":1,"
               "\"n_expert_shared\":2,\"ffn_activation\":\"gelu\"}}",
               MOE_TASK_LM, 1, V, B);
    n = moe_ffn_find(&m.params, f, 8);
    ck_assert_uint_eq(n, 3);
    expect_ffn(&m.params, &f[0], "layers.0.ffn", 1, 6, 4, 0, 0);
    expect_ffn(&m.params, &f[1], "layers.1.moe.experts", 2, 3, 4, 0, 0);
    expect_ffn(&m.params, &f[2], "layers.1.moe.shared", 2, 3, 4, 0, 0);
    moe_model_release(&m);

    // a dense transformer (n_layer < moe_every), swiglu
    make_model(&m,
               "{\"model\":{\"type\":\"transformer\",\"n_ctx\":4,\"n_embd\":4,\"n_head\":2,\"n_layer\":2,"
               "\"moe_every\":3,\"n_ff_dense\":5,\"ffn_activation\":\"swiglu\"}}",
               MOE_TASK_LM, 1, V, B);
    n = moe_ffn_find(&m.params, f, 8);
    ck_assert_uint_eq(n, 2);
    expect_ffn(&m.params, &f[0], "layers.0.ffn", 1, 5, 4, 1, 0);
    expect_ffn(&m.params, &f[1], "layers.1.ffn", 1, 5, 4, 1, 0);
    moe_model_release(&m);

    // the 1991 mixture: experts.w1 (E, H, D), experts.b1 (E, H), experts.w2 (E, O, H) with O != D
    make_model(&m, MIXTURE, MOE_TASK_REGRESSION, MI, MO + 3, N);
    n = moe_ffn_find(&m.params, f, 8);
    ck_assert_uint_eq(n, 1);
    expect_ffn(&m.params, &f[0], "experts", 3, 4, MI, 0, 1);
    moe_model_release(&m);

    // linear experts, and the plain mlp: no FFN by these names
    make_model(&m, "{\"model\":{\"type\":\"mixture\",\"n_expert\":3,\"expert\":\"linear\"}}", MOE_TASK_REGRESSION,
               MI, MO, N);
    ck_assert_uint_eq(moe_ffn_find(&m.params, f, 8), 0);
    moe_model_release(&m);
    make_model(&m, "{\"model\":{\"type\":\"mlp\",\"n_hidden\":4},\"loss\":{\"type\":\"mse\"}}", MOE_TASK_REGRESSION, MI,
               MO, N);
    ck_assert_uint_eq(moe_ffn_find(&m.params, f, 8), 0);
    moe_model_release(&m);
}
END_TEST

// A hand registry with decoys: only a.*, c.* and e.* are FFNs; b.w3 and c.b1
// have the wrong shape and are left out; max < count writes max entries.
START_TEST(test_find_hand)
{
    struct moe_params p;
    struct moe_err err;
    moe_params_init(&p);
    ck_assert_int_ge(moe_params_add(&p, "a.w2", MOE_SHAPE(7, 4), &err), 0); // w2 before w1: order is w1's
    ck_assert_int_ge(moe_params_add(&p, "lone.w1", MOE_SHAPE(4, 3), &err), 0); // no w2
    ck_assert_int_ge(moe_params_add(&p, "a.w1", MOE_SHAPE(4, 3), &err), 0);
    ck_assert_int_ge(moe_params_add(&p, "a.w3", MOE_SHAPE(4, 3), &err), 0);
    ck_assert_int_ge(moe_params_add(&p, "a.b1", MOE_SHAPE(4), &err), 0);
    ck_assert_int_ge(moe_params_add(&p, "b.w1", MOE_SHAPE(4, 3), &err), 0);
    ck_assert_int_ge(moe_params_add(&p, "b.w2", MOE_SHAPE(3, 5), &err), 0); // width 5, not 4
    ck_assert_int_ge(moe_params_add(&p, "c.w1", MOE_SHAPE(2, 4, 3), &err), 0);
    ck_assert_int_ge(moe_params_add(&p, "c.w2", MOE_SHAPE(2, 3, 4), &err), 0);
    ck_assert_int_ge(moe_params_add(&p, "c.w3", MOE_SHAPE(2, 4, 3), &err), 0);
    ck_assert_int_ge(moe_params_add(&p, "c.b1", MOE_SHAPE(2, 3), &err), 0); // (M, 3): not (M, F)
    ck_assert_int_ge(moe_params_add(&p, "d.w1", MOE_SHAPE(2, 4, 3), &err), 0);
    ck_assert_int_ge(moe_params_add(&p, "d.w2", MOE_SHAPE(3, 3, 4), &err), 0); // M 3, not 2
    ck_assert_int_ge(moe_params_add(&p, "e.w1", MOE_SHAPE(6, 2), &err), 0);
    ck_assert_int_ge(moe_params_add(&p, "e.w2", MOE_SHAPE(2, 6), &err), 0);
    ck_assert_int_ge(moe_params_add(&p, "e.w3", MOE_SHAPE(6, 3), &err), 0); // not w1's shape
    ck_assert_int_ge(moe_params_add(&p, "e.b1", MOE_SHAPE(1, 6), &err), 0); // 2-d for a 2-d FFN
    ck_assert_int_ge(moe_params_add(&p, "g.w1", MOE_SHAPE(4), &err), 0); // 1-d
    ck_assert_int_ge(moe_params_add(&p, "g.w2", MOE_SHAPE(4), &err), 0);
    ck_assert_int_ge(moe_params_add(&p, "h.w1", MOE_SHAPE(1, 2, 4, 3), &err), 0); // 4-d
    ck_assert_int_ge(moe_params_add(&p, "h.w2", MOE_SHAPE(1, 2, 3, 4), &err), 0);
    ck_assert_int_ge(moe_params_add(&p, "i.w2", MOE_SHAPE(3, 4), &err), 0); // no w1
    ck_assert_int_ge(moe_params_add(&p, "xw1", MOE_SHAPE(4, 3), &err), 0); // not ".w1"
    ck_assert_int_ge(moe_params_add(&p, "x", MOE_SHAPE(3, 4), &err), 0);
    ck_assert_int_eq(moe_params_alloc(&p, &err), 0);

    struct moe_ffn f[4];
    memset(f, 0xab, sizeof f);
    ck_assert_uint_eq(moe_ffn_find(&p, f, 4), 3);
    ck_assert_str_eq(f[0].name, "a");
    ck_assert_int_eq(f[0].t[MOE_FFN_W1], moe_params_find(&p, "a.w1"));
    ck_assert_int_eq(f[0].t[MOE_FFN_W2], moe_params_find(&p, "a.w2"));
    ck_assert_int_eq(f[0].t[MOE_FFN_W3], moe_params_find(&p, "a.w3"));
    ck_assert_int_eq(f[0].t[MOE_FFN_B1], moe_params_find(&p, "a.b1"));
    ck_assert(f[0].M == 1 && f[0].F == 4 && f[0].D == 3);
    ck_assert_str_eq(f[1].name, "c");
    ck_assert_int_eq(f[1].t[MOE_FFN_W3], moe_params_find(&p, "c.w3"));
    ck_assert_int_eq(f[1].t[MOE_FFN_B1], -1);
    ck_assert(f[1].M == 2 && f[1].F == 4 && f[1].D == 3);
    ck_assert_str_eq(f[2].name, "e");
    ck_assert_int_eq(f[2].t[MOE_FFN_W3], -1);
    ck_assert_int_eq(f[2].t[MOE_FFN_B1], -1);
    ck_assert(f[2].M == 1 && f[2].F == 6 && f[2].D == 2);
    // f[3] untouched
    unsigned char pat[sizeof f[3]];
    memset(pat, 0xab, sizeof pat);
    ck_assert_mem_eq(&f[3], pat, sizeof pat);

    // max < count: the count all the same, the first max written, the rest untouched
    memset(f, 0xab, sizeof f);
    ck_assert_uint_eq(moe_ffn_find(&p, f, 2), 3);
    ck_assert_str_eq(f[0].name, "a");
    ck_assert_str_eq(f[1].name, "c");
    ck_assert_mem_eq(&f[2], pat, sizeof pat);
    ck_assert_uint_eq(moe_ffn_find(&p, NULL, 0), 3);
    moe_params_release(&p);
}
END_TEST

// ---------------------------------------------------------------- scores by hand

// The offsets (into data and grad) of unit (m, j)'s weights in the FFN's
// tensor k, written out per tensor: w1, w3: row j of expert m; w2: column j of
// expert m; b1: element j of expert m. Returns how many there are.
static size_t unit_weights(const struct moe_params *p, const struct moe_ffn *f, int k, size_t m, size_t j, size_t *at)
{
    if (f->t[k] < 0)
        return 0;
    const struct moe_tensor *t = &p->t[f->t[k]];
    size_t n = 0;
    if (k == MOE_FFN_W1 || k == MOE_FFN_W3) { // (M,) F, D
        for (size_t d = 0; d < f->D; d++)
            at[n++] = t->offset + (m * f->F + j) * f->D + d;
    } else if (k == MOE_FFN_W2) { // (M,) D', F
        size_t rows = t->shape[t->ndim - 2];
        for (size_t d = 0; d < rows; d++)
            at[n++] = t->offset + (m * rows + d) * f->F + j;
    } else { // (M,) F
        at[n++] = t->offset + m * f->F + j;
    }
    return n;
}

// All of unit u's weights (offsets into data); returns the count.
static size_t unit_all(const struct moe_params *p, const struct moe_ffn *f, size_t u, size_t *at)
{
    size_t n = 0, m = u / f->F, j = u % f->F;
    for (int k = 0; k < MOE_FFN_N; k++)
        n += unit_weights(p, f, k, m, j, at + n);
    return n;
}

enum { MAX_UNIT_W = 256 };

static void check_scores_by_hand(const struct moe_params *p, const struct moe_ffn *f, const float *grad)
{
    size_t U = f->M * f->F;
    double *l1 = malloc(U * sizeof *l1), *l2 = malloc(U * sizeof *l2), *ty = malloc(U * sizeof *ty);
    ck_assert(l1 && l2 && ty);
    moe_ffn_scores(p, f, MOE_NEURON_L1, NULL, l1);
    moe_ffn_scores(p, f, MOE_NEURON_L2, NULL, l2);
    moe_ffn_scores(p, f, MOE_NEURON_TAYLOR, grad, ty);
    for (size_t u = 0; u < U; u++) {
        size_t at[MAX_UNIT_W];
        size_t n = unit_all(p, f, u, at);
        double a = 0.0, s = 0.0, t = 0.0;
        for (size_t i = 0; i < n; i++) {
            double w = p->data[at[i]];
            a += fabs(w);
            s += w * w;
            t += w * (double)grad[at[i]];
        }
        ck_assert_msg(fabs(l1[u] - a) <= 1e-12 * a, "%s unit %zu: l1 %.17g, by hand %.17g", f->name, u, l1[u], a);
        ck_assert_msg(fabs(l2[u] - sqrt(s)) <= 1e-12 * sqrt(s), "%s unit %zu: l2 %.17g, by hand %.17g", f->name, u,
                      l2[u], sqrt(s));
        ck_assert_msg(fabs(ty[u] - fabs(t)) <= 1e-12 * (fabs(t) + a), "%s unit %zu: taylor %.17g, by hand %.17g",
                      f->name, u, ty[u], fabs(t));
        ck_assert(l1[u] > 0.0 && ty[u] >= 0.0);
    }
    free(l1), free(l2), free(ty);
}

START_TEST(test_scores_by_hand)
{
    struct moe_model m;
    struct moe_ffn f[8];
    // mlp-moe swiglu: the dense FFN (w3), the experts (M 3, w3), the shared expert
    make_model(&m, MLP_MOE, MOE_TASK_CLASSIFICATION, I, O, N);
    randomize_model(&m, 11);
    float *grad = malloc(m.params.numel * sizeof *grad);
    ck_assert_ptr_nonnull(grad);
    fill_uniform(grad, m.params.numel, 12, -2.0f, 2.0f); // any layout-matching buffer
    size_t n = moe_ffn_find(&m.params, f, 8);
    ck_assert_uint_eq(n, 3);
    for (size_t k = 0; k < n; k++)
        check_scores_by_hand(&m.params, &f[k], grad);
    free(grad);
    moe_model_release(&m);

    // mixture: b1 (and w2's rows the outputs)
    make_model(&m, MIXTURE, MOE_TASK_REGRESSION, MI, MO + 3, N);
    randomize_model(&m, 13);
    grad = malloc(m.params.numel * sizeof *grad);
    ck_assert_ptr_nonnull(grad);
    fill_uniform(grad, m.params.numel, 14, -2.0f, 2.0f);
    ck_assert_uint_eq(moe_ffn_find(&m.params, f, 8), 1);
    check_scores_by_hand(&m.params, &f[0], grad);
    free(grad);
    moe_model_release(&m);

    // a tiny hand case: w1 (2, 2) = [[1, -2], [3, 0]], b1 = [0.5, -1], w2 (3, 2) = [[1, 0], [-1, 2], [0, 4]]
    struct moe_params p;
    struct moe_err err;
    moe_params_init(&p);
    ck_assert_int_ge(moe_params_add(&p, "f.w1", MOE_SHAPE(2, 2), &err), 0);
    ck_assert_int_ge(moe_params_add(&p, "f.b1", MOE_SHAPE(2), &err), 0);
    ck_assert_int_ge(moe_params_add(&p, "f.w2", MOE_SHAPE(3, 2), &err), 0);
    ck_assert_int_eq(moe_params_alloc(&p, &err), 0);
    const float w1[4] = { 1, -2, 3, 0 }, b1[2] = { 0.5f, -1 }, w2[6] = { 1, 0, -1, 2, 0, 4 };
    memcpy(moe_params_data(&p, 0), w1, sizeof w1);
    memcpy(moe_params_data(&p, 1), b1, sizeof b1);
    memcpy(moe_params_data(&p, 2), w2, sizeof w2);
    for (size_t i = 0; i < p.numel; i++)
        p.grad[i] = 1.0f;
    ck_assert_uint_eq(moe_ffn_find(&p, f, 8), 1);
    double s[2];
    moe_ffn_scores(&p, &f[0], MOE_NEURON_L1, NULL, s);
    ck_assert(s[0] == 1 + 2 + 0.5 + 1 + 1 + 0 && s[1] == 3 + 0 + 1 + 0 + 2 + 4);
    moe_ffn_scores(&p, &f[0], MOE_NEURON_L2, NULL, s);
    ck_assert(s[0] == sqrt(1 + 4 + 0.25 + 1 + 1) && s[1] == sqrt(9 + 1 + 4 + 16));
    moe_ffn_scores(&p, &f[0], MOE_NEURON_TAYLOR, p.grad, s); // |sum w|
    ck_assert(s[0] == fabs(1 - 2 + 0.5 + 1 - 1) && s[1] == 3 - 1 + 2 + 4);
    moe_params_release(&p);
}
END_TEST

// ---------------------------------------------------------------- masks

// Units to mask: k per expert (the same count, various positions), so that a
// model of width F - k holds the rest.
static void choose_mask(const struct moe_ffn *f, size_t k, uint32_t salt, uint8_t *mask)
{
    memset(mask, 0, f->M * f->F);
    for (size_t m = 0; m < f->M; m++) {
        double sc[64];
        uint8_t drop[64];
        struct moe_err err;
        ck_assert_uint_le(f->F, 64);
        moe_prune_random_scores(sc, f->F, 17, salt * 16 + m);
        ck_assert_int_eq(moe_prune_select(sc, f->F, k, drop, &err), 0);
        memcpy(mask + m * f->F, drop, f->F);
    }
}

// Apply mask to every FFN of wide; check that exactly the masked units'
// weights became zero and that no other float changed (bit for bit).
static void mask_model(struct moe_params *p, const struct moe_ffn *f, size_t n, uint8_t *const *mask)
{
    float *before = malloc(p->numel * sizeof *before);
    uint8_t *hit = calloc(p->numel, 1);
    ck_assert(before && hit);
    memcpy(before, p->data, p->numel * sizeof *before);
    size_t n_masked = 0;
    for (size_t k = 0; k < n; k++) {
        for (size_t u = 0; u < f[k].M * f[k].F; u++) {
            if (!mask[k][u])
                continue;
            size_t at[MAX_UNIT_W], c = unit_all(p, &f[k], u, at);
            for (size_t i = 0; i < c; i++) {
                ck_assert_msg(!hit[at[i]], "float %zu in two units", at[i]);
                hit[at[i]] = 1;
                ck_assert_msg(before[at[i]] != 0.0f, "a masked weight is already 0"); // random weights: never
            }
            n_masked += c;
        }
        moe_ffn_apply_mask(p, &f[k], mask[k]);
    }
    ck_assert_uint_gt(n_masked, 0);
    for (size_t i = 0; i < p->numel; i++) {
        if (hit[i])
            ck_assert_msg(p->data[i] == 0.0f, "masked float %zu is %g", i, (double)p->data[i]);
        else
            ck_assert_msg(memcmp(&p->data[i], &before[i], sizeof(float)) == 0, "float %zu changed: %g -> %g", i,
                          (double)before[i], (double)p->data[i]);
    }
    // moe_params_zeros sees the zeros: for each FFN tensor, rows/cols/elements of masked units
    for (size_t k = 0; k < n; k++)
        for (int kk = 0; kk < MOE_FFN_N; kk++) {
            int ti = f[k].t[kk];
            if (ti < 0)
                continue;
            size_t want = 0;
            for (size_t j = 0; j < p->t[ti].numel; j++)
                want += hit[p->t[ti].offset + j];
            ck_assert_uint_eq(moe_params_zeros(p, ti), want);
        }
    free(before);
    free(hit);
}

// The narrow model's FFN k from the wide one's, without the masked units.
static void gather_narrow(struct moe_params *np, const struct moe_ffn *nf, const struct moe_params *wp,
                          const struct moe_ffn *wf, const uint8_t *mask)
{
    ck_assert_uint_eq(nf->M, wf->M);
    ck_assert_uint_eq(nf->D, wf->D);
    for (int k = 0; k < MOE_FFN_N; k++) {
        ck_assert_int_eq(nf->t[k] < 0, wf->t[k] < 0);
        if (wf->t[k] < 0)
            continue;
        const struct moe_tensor *wt = &wp->t[wf->t[k]], *nt = &np->t[nf->t[k]];
        const float *src = wp->data + wt->offset;
        float *dst = np->data + nt->offset;
        for (size_t m = 0; m < wf->M; m++) {
            const uint8_t *mk = mask + m * wf->F;
            if (k == MOE_FFN_W2) { // columns: row by row
                size_t rows = wt->shape[wt->ndim - 2];
                ck_assert_uint_eq(nt->shape[nt->ndim - 2], rows);
                for (size_t d = 0; d < rows; d++) {
                    size_t c = 0;
                    for (size_t j = 0; j < wf->F; j++)
                        if (!mk[j])
                            dst[(m * rows + d) * nf->F + c++] = src[(m * rows + d) * wf->F + j];
                    ck_assert_uint_eq(c, nf->F);
                }
            } else {
                size_t row = k == MOE_FFN_B1 ? 1 : wf->D;
                moe_prune_gather_rows(dst + m * nf->F * row, src + m * wf->F * row, wf->F, row, mk);
            }
        }
    }
}

struct run_out {
    double loss;
    size_t n;
    float *y; // outputs (logits or predictions), or NULL
};

// One evaluation pass (with_grad 0) over b: the loss sum and, when the model
// hands them out, its output rows.
static void eval_model(struct moe_model *m, const struct moe_batch *b0, size_t n_y, struct run_out *o)
{
    struct moe_stats st;
    struct moe_err err;
    ck_assert_int_eq(moe_stats_init(&st, m->n_expert, 0, &err), 0);
    struct moe_batch b = *b0;
    struct moe_batch_kd kd = { 0 };
    if (n_y) {
        kd.logits_out = o->y;
        b.kd = &kd;
    }
    int rc = moe_model_run(m, &b, 0, &st, &err);
    ck_assert_msg(rc == 0, "run: %s", err.msg);
    o->loss = st.loss;
    o->n = st.n;
    moe_stats_release(&st);
}

// The wide model (weights random) with k units of every FFN masked against the
// narrow model (every FFN F - k wide) holding the rest: the same loss and
// outputs. The two compute the same sums but for the exact zero terms of the
// masked units; the GEMMs (BLIS) block and order their K = F vs F - k sums
// differently, so the float results may differ in the last bits: relative
// 1e-5 (~100 float ulps) is far below the effect of a wrong mask (checked:
// the unmasked wide model differs by > 1e-3).
static void check_mask_narrow(const char *wide_json, const char *narrow_json, enum moe_task task, size_t n_in,
                              size_t n_out, const struct moe_batch *b, size_t n_y, size_t k, const char *what)
{
    struct moe_model w, nw;
    make_model(&w, wide_json, task, n_in, n_out, b->n);
    make_model(&nw, narrow_json, task, n_in, n_out, b->n);
    randomize_model(&w, 21);
    moe_model_init_weights(&nw, 99); // every float overwritten below
    struct moe_ffn wf[8], nf[8];
    size_t n = moe_ffn_find(&w.params, wf, 8);
    ck_assert_uint_ge(n, 1);
    ck_assert_uint_eq(moe_ffn_find(&nw.params, nf, 8), n);

    float *y_full = n_y ? malloc(n_y * sizeof(float)) : NULL, *y_mask = n_y ? malloc(n_y * sizeof(float)) : NULL,
          *y_narrow = n_y ? malloc(n_y * sizeof(float)) : NULL;
    for (size_t i = 0; i < n_y; i++) // a model that did not hand its outputs out fails the comparison
        y_full[i] = y_mask[i] = y_narrow[i] = NAN;
    struct run_out full = { .y = y_full }, masked = { .y = y_mask }, narrow = { .y = y_narrow };
    eval_model(&w, b, n_y, &full);

    uint8_t *mask[8];
    for (size_t j = 0; j < n; j++) {
        ck_assert_str_eq(nf[j].name, wf[j].name);
        ck_assert_uint_eq(nf[j].F + k, wf[j].F);
        mask[j] = malloc(wf[j].M * wf[j].F);
        ck_assert_ptr_nonnull(mask[j]);
        choose_mask(&wf[j], k, (uint32_t)j, mask[j]);
    }

    // the narrow weights, from the wide ones before masking (so that a mask
    // that zeroes a kept unit's weight shows): every other tensor the same
    // name and shape, copied; the FFNs gathered
    uint8_t *copied = calloc(nw.params.n, 1);
    ck_assert_ptr_nonnull(copied);
    size_t n_copied = moe_params_copy_matching(&nw.params, &w.params, copied);
    ck_assert_uint_gt(n_copied, 0);
    for (size_t j = 0; j < n; j++) {
        gather_narrow(&nw.params, &nf[j], &w.params, &wf[j], mask[j]);
        for (int t = 0; t < MOE_FFN_N; t++)
            if (nf[j].t[t] >= 0) {
                ck_assert_msg(!copied[nf[j].t[t]], "%s: %s copied as is", what, nw.params.t[nf[j].t[t]].name);
                copied[nf[j].t[t]] = 1;
            }
    }
    for (size_t i = 0; i < nw.params.n; i++)
        ck_assert_msg(copied[i], "%s: narrow tensor %s not set", what, nw.params.t[i].name);
    ck_assert_uint_eq(nw.params.n, w.params.n);

    mask_model(&w.params, wf, n, mask);
    eval_model(&w, b, n_y, &masked);
    eval_model(&nw, b, n_y, &narrow);
    ck_assert_uint_eq(masked.n, narrow.n);
    ck_assert(isfinite(masked.loss) && isfinite(full.loss));
    double rel = fabs(masked.loss - narrow.loss) / fabs(narrow.loss);
    ck_assert_msg(rel <= 1e-5, "%s: masked loss %.9g, narrow %.9g (rel %.3g)", what, masked.loss, narrow.loss, rel);
    ck_assert_msg(fabs(full.loss - narrow.loss) > 1e-3 * fabs(narrow.loss), "%s: the mask changed nothing (%.9g)", what,
                  full.loss);
    if (n_y) {
        double moved = 0.0;
        for (size_t i = 0; i < n_y; i++) {
            ck_assert_msg(fabs(y_mask[i] - y_narrow[i]) <= 1e-5 * (1.0 + fabs(y_narrow[i])),
                          "%s: output %zu: masked %.9g, narrow %.9g", what, i, (double)y_mask[i], (double)y_narrow[i]);
            moved = fmax(moved, fabs(y_full[i] - y_narrow[i]));
        }
        ck_assert_double_gt(moved, 1e-3);
    }
    if (getenv("MOE_PRUNE_VERBOSE"))
        printf("%s: masked %.17g narrow %.17g rel %.3g\n", what, masked.loss, narrow.loss, rel);
    for (size_t j = 0; j < n; j++)
        free(mask[j]);
    free(copied);
    free(y_full), free(y_mask), free(y_narrow);
    moe_model_release(&w);
    moe_model_release(&nw);
}

static void class_batch(struct moe_batch *b, float *x, int32_t *label)
{
    fill_uniform(x, N * I, 31, -1.0f, 1.0f);
    for (size_t t = 0; t < N; t++)
        label[t] = (int32_t)((t * 2 + 1) % O);
    memset(b, 0, sizeof *b);
    b->n = N;
    b->x = x;
    b->label = label;
}

static void lm_batch(struct moe_batch *b, int32_t *tok)
{
    struct moe_rng r = moe_rng_make(5, MOE_RNG_DATA, 32);
    for (size_t i = 0; i < B * (C + 1); i++)
        tok[i] = (int32_t)moe_rng_below(&r, i, V);
    memset(b, 0, sizeof *b);
    b->n = B;
    b->tok = tok;
}

START_TEST(test_mask_narrow)
{
    float x[N * I];
    int32_t label[N], tok[B * (C + 1)];
    struct moe_batch b;

    // mlp-moe, swiglu: dense 6 -> 4, experts and shared 5 -> 3
    class_batch(&b, x, label);
    static const char *const mlp_narrow =
        "{\"model\":{\"type\":\"mlp-moe\",\"n_embd\":4,\"n_layer\":2,\"moe_every\":2,\"n_expert\":3,\"n_expert_used\":2,"
        "\"n_expert_shared\":1,\"n_ff\":3,\"n_ff_dense\":4,\"ffn_activation\":\"swiglu\"},"
        "\"moe\":{\"router\":\"softmax\",\"capacity_factor\":0,\"eval_capacity_factor\":0,\"aux_loss\":\"none\"},"
        "\"loss\":{\"type\":\"ce\"}}";
    check_mask_narrow(MLP_MOE, mlp_narrow, MOE_TASK_CLASSIFICATION, I, O, &b, N * O, 2, "mlp-moe");

    // transformer, gelu: dense 6 -> 5, experts and shared 3 -> 2
    lm_batch(&b, tok);
    static const char *const tf_narrow =
        "{\"model\":{\"type\":\"transformer\",\"n_ctx\":4,\"n_embd\":4,\"n_head\":2,\"n_layer\":2,\"moe_every\":2,"
        "\"n_ff\":2,\"n_ff_dense\":5,\"n_expert\":2,\"n_expert_used\":1,\"n_expert_shared\":1,\"ffn_activation\":\"gelu\"},"
        "\"moe\":{\"router\":\"switch\",\"capacity_factor\":0,\"eval_capacity_factor\":0,\"aux_loss\":\"none\"}}";
    check_mask_narrow(TRANSFORMER, tf_narrow, MOE_TASK_LM, 1, V, &b, B * C * V, 1, "transformer");

    // mixture (tanh, b1): 4 -> 2 hidden units per expert; the loss only
    float mx[N * MI], my[N * MO];
    fill_uniform(mx, N * MI, 33, -1.0f, 1.0f);
    fill_uniform(my, N * MO, 34, -1.0f, 1.0f);
    memset(&b, 0, sizeof b);
    b.n = N;
    b.x = mx;
    b.y = my;
    static const char *const mix_narrow =
        "{\"model\":{\"type\":\"mixture\",\"n_expert\":3,\"expert\":\"mlp\",\"n_expert_hidden\":2,\"activation\":\"tanh\"},"
        "\"loss\":{\"type\":\"nll\"}}";
    check_mask_narrow(MIXTURE, mix_narrow, MOE_TASK_REGRESSION, MI, MO, &b, 0, 2, "mixture");
}
END_TEST

// ---------------------------------------------------------------- taylor by finite differences

struct fd_ctx {
    struct moe_model m;
    struct moe_batch b;
};

// compress_models.h's routed_loss on the context's model and batch.
static double fd_loss(struct fd_ctx *c, unsigned *sig) { return routed_loss(&c->m, &c->b, sig); }

// dL/dalpha at alpha = 1 by a central difference of step h, the weights at[]
// (values w0) scaled by 1 +- h; 0 in *ok when a routing choice flipped (L is
// not smooth across), else 1. The weights are restored.
static double dalpha(struct fd_ctx *c, const size_t *at, const float *w0, size_t nw, double h, unsigned sig0, int *ok)
{
    float *w = c->m.params.data;
    unsigned sp, sm;
    for (size_t i = 0; i < nw; i++)
        w[at[i]] = (float)(w0[i] * (1.0 + h));
    double lp = fd_loss(c, &sp);
    for (size_t i = 0; i < nw; i++)
        w[at[i]] = (float)(w0[i] * (1.0 - h));
    double lm = fd_loss(c, &sm);
    for (size_t i = 0; i < nw; i++)
        w[at[i]] = w0[i];
    *ok = *ok && sp == sig0 && sm == sig0;
    return (lp - lm) / (2.0 * h);
}

// For every unit of every FFN of c's model: |sum over its weights of w g|
// (moe_ffn_scores' taylor) against |dL/dalpha| at alpha = 1, L the batch-mean
// loss with the unit's weights scaled by alpha. Numerically: central
// differences D(h), h = 1e-2 and 2h, combined by Richardson, (4 D(h) - D(2h)) / 3,
// which removes the h^2 |L'''| / 6 truncation term (~1e-5 here for swiglu
// units, whose output is cubic in alpha: a plain D(1e-2) is off by up to 5e-4
// relative). What is left is the float roundoff of the loss, ~2e-8 absolute
// per evaluation, ~2e-6 absolute in the derivative: the tolerance is 2e-3 of
// max(|numeric|, 10% of the FFN's largest score) (observed worst 4e-4). A
// wrong row, column, or a missing tensor gives errors of the order of the
// score itself.
#define H_ALPHA 1e-2

static void check_taylor(struct fd_ctx *c, const char *what, size_t min_checked)
{
    struct moe_params *p = &c->m.params;
    struct moe_err err;
    struct moe_stats st;
    ck_assert_int_eq(moe_stats_init(&st, c->m.n_expert, 0, &err), 0);
    moe_params_zero_grad(p);
    ck_assert_int_eq(moe_model_run(&c->m, &c->b, 1, &st, &err), 0);
    double l_grad = st.loss / (double)st.n;
    moe_stats_release(&st);
    float *grad = malloc(p->numel * sizeof *grad);
    ck_assert_ptr_nonnull(grad);
    memcpy(grad, p->grad, p->numel * sizeof *grad);
    unsigned sig0;
    double l0 = fd_loss(c, &sig0);
    ck_assert_double_eq_tol(l0, l_grad, 1e-12 * fabs(l0)); // with_grad does not change the loss

    struct moe_ffn f[8];
    size_t n = moe_ffn_find(p, f, 8), checked = 0, skipped = 0;
    ck_assert_uint_ge(n, 1);
    double worst = 0.0;
    for (size_t k = 0; k < n; k++) {
        size_t U = f[k].M * f[k].F;
        double *score = malloc(U * sizeof *score);
        ck_assert_ptr_nonnull(score);
        moe_ffn_scores(p, &f[k], MOE_NEURON_TAYLOR, grad, score);
        double top = 0.0;
        for (size_t u = 0; u < U; u++)
            top = fmax(top, score[u]);
        ck_assert_msg(top > 1e-3, "%s %s: every taylor score ~0 (%g)", what, f[k].name, top);
        for (size_t u = 0; u < U; u++) {
            size_t at[MAX_UNIT_W], nw = unit_all(p, &f[k], u, at);
            float w0[MAX_UNIT_W];
            double wg = 0.0;
            for (size_t i = 0; i < nw; i++) {
                w0[i] = p->data[at[i]];
                wg += (double)w0[i] * grad[at[i]];
            }
            ck_assert_double_eq_tol(score[u], fabs(wg), 1e-12 * (fabs(wg) + 1e-30));
            int ok = 1;
            double d1 = dalpha(c, at, w0, nw, H_ALPHA, sig0, &ok), d2 = dalpha(c, at, w0, nw, 2 * H_ALPHA, sig0, &ok);
            if (!ok) {
                skipped++;
                continue;
            }
            double num = (4.0 * d1 - d2) / 3.0;
            double scale = fmax(fabs(num), 0.1 * top), rel = fabs(fabs(num) - score[u]) / scale;
            worst = fmax(worst, rel);
            ck_assert_msg(rel <= 2e-3, "%s %s unit %zu: taylor %.9g, |dL/dalpha| %.9g (rel %.3g)", what, f[k].name, u,
                          score[u], fabs(num), rel);
            ck_assert_msg(fabs(wg - num) <= 2e-3 * scale, "%s %s unit %zu: sum w g %.9g, dL/dalpha %.9g (sign)", what,
                          f[k].name, u, wg, num);
            checked++;
        }
        free(score);
    }
    if (getenv("MOE_PRUNE_VERBOSE"))
        printf("%s: %zu units checked, %zu skipped, worst rel %.3g\n", what, checked, skipped, worst);
    ck_assert_msg(checked >= min_checked && skipped * 10 <= checked, "%s: %zu checked, %zu skipped", what, checked,
                  skipped);
    unsigned s;
    ck_assert(fd_loss(c, &s) == l0 && s == sig0); // weights restored
    free(grad);
}

START_TEST(test_taylor_fd)
{
    struct fd_ctx *c = calloc(1, sizeof *c);
    ck_assert_ptr_nonnull(c);
    float x[N * I];
    int32_t label[N];
    // mlp-moe: a dense swiglu FFN before a sparse block (experts, shared expert): the
    // experts come last, so their scaling moves no router; the dense block's may (checked)
    make_model(&c->m, MLP_MOE, MOE_TASK_CLASSIFICATION, I, O, N);
    randomize_model(&c->m, 41);
    class_batch(&c->b, x, label);
    check_taylor(c, "mlp-moe", 6 + 3 * 5 + 5 - 3);
    moe_model_release(&c->m);

    // the mixture (tanh experts with b1): smooth, a dense gate
    float mx[N * MI], my[N * MO];
    make_model(&c->m, MIXTURE, MOE_TASK_REGRESSION, MI, MO, N);
    randomize_model(&c->m, 42);
    fill_uniform(mx, N * MI, 43, -1.0f, 1.0f);
    fill_uniform(my, N * MO, 44, -1.0f, 1.0f);
    memset(&c->b, 0, sizeof c->b);
    c->b.n = N;
    c->b.x = mx;
    c->b.y = my;
    check_taylor(c, "mixture", 3 * 4);
    moe_model_release(&c->m);
    free(c);
}
END_TEST

// ---------------------------------------------------------------- zeros

START_TEST(test_zeros)
{
    struct moe_params p;
    struct moe_err err;
    moe_params_init(&p);
    ck_assert_int_ge(moe_params_add(&p, "a", MOE_SHAPE(2, 4), &err), 0);
    ck_assert_int_ge(moe_params_add(&p, "b", MOE_SHAPE(3), &err), 0);
    ck_assert_int_ge(moe_params_add(&p, "c", MOE_SHAPE(5), &err), 0);
    ck_assert_int_eq(moe_params_alloc(&p, &err), 0);
    const float a[8] = { 0.0f, -0.0f, 1.0f, -1e-45f, FLT_MIN, 0.0f, NAN, -0.0f }; // 4 zeros; a denormal is not one
    const float b[3] = { 1.0f, 2.0f, 3.0f };
    const float cc[5] = { 0.0f, 0.0f, 0.0f, 0.0f, 0.0f };
    memcpy(moe_params_data(&p, 0), a, sizeof a);
    memcpy(moe_params_data(&p, 1), b, sizeof b);
    memcpy(moe_params_data(&p, 2), cc, sizeof cc);
    ck_assert(signbit(moe_params_data(&p, 0)[1]));
    ck_assert_uint_eq(moe_params_zeros(&p, 0), 4);
    ck_assert_uint_eq(moe_params_zeros(&p, 1), 0);
    ck_assert_uint_eq(moe_params_zeros(&p, 2), 5);
    moe_params_data(&p, 1)[2] = -0.0f;
    ck_assert_uint_eq(moe_params_zeros(&p, 1), 1);
    moe_params_release(&p);
}
END_TEST

// ---------------------------------------------------------------- the pruning schedule

// Zhu & Gupta 2017, eq. 1: s_t = final (1 - (1 - (t - start) / n)^3) for
// start < t <= start + n, a prune after t = start + every, start + 2 every, ...
// and after t = start + n; never else.
static double zhu_gupta(double final, uint64_t start, uint64_t n, uint64_t t)
{
    double f = 1.0 - (double)(t - start) / (double)n;
    return final * (1.0 - f * f * f);
}

START_TEST(test_schedule)
{
    // final 0.5 from step 10 over 20 steps, every 5: after steps 15, 20, 25, 30 only
    for (uint64_t t = 0; t <= 60; t++) {
        int want = t > 10 && t <= 30 && (t - 10) % 5 == 0;
        double s = -1.0;
        int got = moe_prune_schedule(0.5, 10, 20, 5, t, &s);
        ck_assert_msg(got == want, "t %llu: %d, want %d", (unsigned long long)t, got, want);
    }
    // by hand: d / n = 1/4, 1/2, 3/4, 1, so s = 0.5 (1 - 27/64), 0.5 (1 - 1/8), 0.5 (1 - 1/64),
    // 0.5: every one exact in binary
    const uint64_t ts[4] = { 15, 20, 25, 30 };
    const double want[4] = { 0.2890625, 0.4375, 0.4921875, 0.5 };
    for (int k = 0; k < 4; k++) {
        double s = -1.0;
        ck_assert_int_eq(moe_prune_schedule(0.5, 10, 20, 5, ts[k], &s), 1);
        ck_assert_msg(s == want[k], "t %llu: %.17g, want %.17g", (unsigned long long)ts[k], s, want[k]);
    }

    // n (22) not a multiple of every (5): after 15, 20, 25, 30, and 32 (the end, exactly final), not 35
    double prev = 0.0;
    size_t prunes = 0;
    for (uint64_t t = 0; t <= 50; t++) {
        double s = -1.0;
        int got = moe_prune_schedule(0.8, 10, 22, 5, t, &s);
        int w = t > 10 && t <= 32 && ((t - 10) % 5 == 0 || t == 32);
        ck_assert_msg(got == w, "t %llu: %d, want %d", (unsigned long long)t, got, w);
        if (!got)
            continue;
        ck_assert_double_eq_tol(s, zhu_gupta(0.8, 10, 22, t), 1e-15);
        ck_assert_double_ge(s, prev);
        prev = s;
        prunes++;
    }
    ck_assert_uint_eq(prunes, 5);
    ck_assert(prev == 0.8); // the last prune: exactly final (1 - 0^3 = 1)

    // every step (every 1), from step 0, n 50: a prune after each of steps 1 .. 50, s rising to
    // final; never at t = start (s = 0: nothing to prune), never after the end
    prev = 0.0;
    prunes = 0;
    for (uint64_t t = 0; t <= 80; t++) {
        double s = -1.0;
        int got = moe_prune_schedule(0.9, 0, 50, 1, t, &s);
        ck_assert_int_eq(got, t >= 1 && t <= 50);
        if (!got)
            continue;
        ck_assert_double_eq_tol(s, zhu_gupta(0.9, 0, 50, t), 1e-15);
        ck_assert_msg(s >= prev && s > 0.0 && s <= 0.9, "t %llu: %.17g after %.17g", (unsigned long long)t, s, prev);
        prev = s;
        prunes++;
    }
    ck_assert_uint_eq(prunes, 50);
    ck_assert(prev == 0.9);
    // every > n: the end only
    for (uint64_t t = 0; t <= 20; t++) {
        double s = -1.0;
        ck_assert_int_eq(moe_prune_schedule(0.3, 2, 7, 10, t, &s), t == 9);
        if (t == 9)
            ck_assert(s == 0.3);
    }
    // a final sparsity <= 0 never prunes
    const double finals[3] = { 0.0, -0.0, -0.25 };
    for (int k = 0; k < 3; k++)
        for (uint64_t t = 0; t <= 40; t++) {
            double s = -1.0;
            ck_assert_int_eq(moe_prune_schedule(finals[k], 10, 20, 5, t, &s), 0);
        }
}
END_TEST

// ---------------------------------------------------------------- masks of a model

// flags[at] = 1 (p->numel flags) for every weight of a unit that mask marks
// (mask: k's units, FFN after FFN), by unit_all: the layout written out.
static void unit_flags(const struct moe_params *p, const struct moe_ffn_masks *k, const uint8_t *mask, uint8_t *flags)
{
    memset(flags, 0, p->numel);
    for (size_t i = 0, base = 0; i < k->n; base += k->ffn[i].M * k->ffn[i].F, i++)
        for (size_t u = 0; u < k->ffn[i].M * k->ffn[i].F; u++) {
            if (!mask[base + u])
                continue;
            size_t at[MAX_UNIT_W], c = unit_all(p, &k->ffn[i], u, at);
            for (size_t j = 0; j < c; j++)
                flags[at[j]] = 1;
        }
}

// k's masks, FFN after FFN, into one array of k->units flags.
static void masks_flat(const struct moe_ffn_masks *k, uint8_t *flat)
{
    for (size_t i = 0, base = 0; i < k->n; base += k->ffn[i].M * k->ffn[i].F, i++)
        memcpy(flat + base, k->mask[i], k->ffn[i].M * k->ffn[i].F);
}

// What moe_ffn_masks_grow must reach, from its definition: the pruned units
// stay (score -inf, so that they rank first whatever their weights), the live
// ones of lowest score (moe_ffn_scores) fill each FFN (or all of them) up to
// floor(fraction x units), or nothing new when that many are pruned already.
static void grow_by_hand(const struct moe_params *p, const struct moe_ffn_masks *k, enum moe_neuron_score kind,
                         const float *grad, double fraction, int global, uint8_t *want)
{
    double *s = malloc(k->units * sizeof *s);
    ck_assert_ptr_nonnull(s);
    size_t have_all = 0;
    for (size_t i = 0, base = 0; i < k->n; base += k->ffn[i].M * k->ffn[i].F, i++) {
        moe_ffn_scores(p, &k->ffn[i], kind, grad, s + base);
        for (size_t u = 0; u < k->ffn[i].M * k->ffn[i].F; u++)
            if (k->mask[i][u])
                s[base + u] = -INFINITY, have_all++;
    }
    struct moe_err err;
    if (global) {
        size_t n = (size_t)floor(fraction * (double)k->units);
        ck_assert_int_eq(moe_prune_select(s, k->units, n > have_all ? n : have_all, want, &err), 0);
    } else {
        for (size_t i = 0, base = 0; i < k->n; base += k->ffn[i].M * k->ffn[i].F, i++) {
            size_t U = k->ffn[i].M * k->ffn[i].F, n = (size_t)floor(fraction * (double)U), have = 0;
            for (size_t u = 0; u < U; u++)
                have += k->mask[i][u];
            ck_assert_int_eq(moe_prune_select(s + base, U, n > have ? n : have, want + base, &err), 0);
        }
    }
    free(s);
}

// Grow k by (kind, fraction, global) and check: the masks are grow_by_hand's;
// every weight of a newly pruned unit is 0; every weight of a live unit, and
// every float outside the FFNs, keeps its bits. Returns the units pruned now.
static size_t grow_and_check(struct moe_ffn_masks *k, struct moe_params *p, enum moe_neuron_score kind,
                             const float *grad, double fraction, int global)
{
    uint8_t *want = malloc(k->units), *old = malloc(k->units), *now = malloc(k->units);
    uint8_t *dead_old = malloc(p->numel), *dead_new = malloc(p->numel);
    float *before = malloc(p->numel * sizeof *before);
    ck_assert(want && old && now && dead_old && dead_new && before);
    memcpy(before, p->data, p->numel * sizeof *before);
    masks_flat(k, old);
    grow_by_hand(p, k, kind, grad, fraction, global, want);
    struct moe_err err = { 0 };
    int rc = moe_ffn_masks_grow(k, p, kind, grad, fraction, global, &err);
    ck_assert_msg(rc == 0, "grow %g: %s", fraction, err.msg);
    masks_flat(k, now);
    for (size_t u = 0; u < k->units; u++) {
        ck_assert_msg(now[u] == want[u], "grow %g (%s): unit %zu is %d, want %d", fraction,
                      global ? "global" : "per FFN", u, now[u], want[u]);
        ck_assert_msg(now[u] >= old[u], "grow %g: unit %zu un-pruned", fraction, u);
    }
    unit_flags(p, k, old, dead_old);
    unit_flags(p, k, now, dead_new);
    for (size_t at = 0; at < p->numel; at++) {
        if (dead_new[at] && !dead_old[at])
            ck_assert_msg(p->data[at] == 0.0f, "float %zu of a newly pruned unit is %g", at, (double)p->data[at]);
        else if (!dead_new[at])
            ck_assert_msg(memcmp(&p->data[at], &before[at], sizeof(float)) == 0, "float %zu changed: %g -> %g", at,
                          (double)before[at], (double)p->data[at]);
    }
    size_t n = moe_ffn_masks_pruned(k, k->n), sum = 0;
    for (size_t i = 0; i < k->n; i++)
        sum += moe_ffn_masks_pruned(k, i);
    ck_assert_uint_eq(sum, n);
    free(want), free(old), free(now), free(dead_old), free(dead_new), free(before);
    return n;
}

START_TEST(test_masks_grow)
{
    struct moe_model m;
    struct moe_err err = { 0 };
    make_model(&m, MLP_MOE, MOE_TASK_CLASSIFICATION, I, O, N);
    randomize_model(&m, 51);
    struct moe_params *p = &m.params;
    for (size_t at = 0; at < p->numel; at++) // U(-0.6, 0.6): no weight 0, so a zeroed one shows
        ck_assert(p->data[at] != 0.0f);
    float *w0 = malloc(p->numel * sizeof *w0);
    ck_assert_ptr_nonnull(w0);
    memcpy(w0, p->data, p->numel * sizeof *w0);

    // init: the FFNs of moe_ffn_find, nothing pruned
    struct moe_ffn f[8];
    size_t nf = moe_ffn_find(p, f, 8);
    ck_assert_uint_eq(nf, 3);
    struct moe_ffn_masks k;
    ck_assert_int_eq(moe_ffn_masks_init(&k, p, &err), 0);
    ck_assert_uint_eq(k.n, nf);
    static const char *const mask_names[3] = { "layers.0.ffn.pruned", "layers.1.moe.experts.pruned",
                                               "layers.1.moe.shared.pruned" };
    size_t units = 0;
    for (size_t i = 0; i < nf; i++) {
        ck_assert_mem_eq(&k.ffn[i], &f[i], sizeof f[i]);
        ck_assert_str_eq(k.name[i], mask_names[i]); // NAME.pruned
        for (size_t u = 0; u < f[i].M * f[i].F; u++)
            ck_assert_int_eq(k.mask[i][u], 0);
        ck_assert_uint_eq(moe_ffn_masks_pruned(&k, i), 0);
        units += f[i].M * f[i].F;
    }
    ck_assert_uint_eq(units, 6 + 3 * 5 + 5);
    ck_assert_uint_eq(k.units, units);
    ck_assert_uint_eq(moe_ffn_masks_pruned(&k, k.n), 0);
    ck_assert_mem_eq(p->data, w0, p->numel * sizeof *w0); // init touches no weight

    // per FFN, l1, 0.4: floor(0.4 x 6) = 2, floor(0.4 x 15) = 6, floor(0.4 x 5) = 2
    ck_assert_uint_eq(grow_and_check(&k, p, MOE_NEURON_L1, NULL, 0.4, 0), 10);
    const size_t want04[3] = { 2, 6, 2 };
    for (size_t i = 0; i < 3; i++)
        ck_assert_uint_eq(moe_ffn_masks_pruned(&k, i), want04[i]);
    // the definition, without moe_prune_select: no pruned unit had a larger l1 score (on the
    // weights before) than a live one of its FFN
    struct moe_params p0 = *p;
    p0.data = w0;
    for (size_t i = 0; i < 3; i++) {
        double s[16];
        moe_ffn_scores(&p0, &f[i], MOE_NEURON_L1, NULL, s);
        for (size_t a = 0; a < f[i].M * f[i].F; a++)
            for (size_t b = 0; b < f[i].M * f[i].F; b++)
                if (k.mask[i][a] && !k.mask[i][b])
                    ck_assert_msg(s[a] <= s[b], "%s: pruned unit %zu (l1 %g) above live %zu (%g)", f[i].name, a, s[a],
                                  b, s[b]);
    }

    // moe_ffn_masks_dead flags exactly what moe_ffn_masks_apply zeroes: the weights before (none
    // of them 0) masked on a copy, the changed floats found
    uint8_t *dead = malloc(p->numel);
    float *copy = malloc(p->numel * sizeof *copy);
    ck_assert(dead && copy);
    moe_ffn_masks_dead(&k, p, dead);
    memcpy(copy, w0, p->numel * sizeof *copy);
    struct moe_params pc = *p;
    pc.data = copy;
    moe_ffn_masks_apply(&k, &pc);
    size_t n_dead = 0, n_unit_w = 0;
    for (size_t at = 0; at < p->numel; at++) {
        int changed = memcmp(&copy[at], &w0[at], sizeof(float)) != 0;
        ck_assert_msg(dead[at] == changed, "float %zu: dead %d, changed by apply %d", at, dead[at], changed);
        if (changed)
            ck_assert(copy[at] == 0.0f);
        n_dead += dead[at];
    }
    for (size_t i = 0; i < 3; i++)
        for (size_t u = 0; u < f[i].M * f[i].F; u++) {
            size_t at[MAX_UNIT_W];
            n_unit_w += k.mask[i][u] ? unit_all(p, &f[i], u, at) : 0;
        }
    ck_assert_uint_eq(n_dead, n_unit_w);
    ck_assert_mem_eq(copy, p->data, p->numel * sizeof *copy); // apply on w0 = what grow left

    // a larger fraction: the pruned stay pruned even when their weights come back (here: set
    // large, so that by score they would be the last to go); the live of lowest l1 join them,
    // up to floor(0.7 U) = 4, 10, 3
    for (size_t at = 0; at < p->numel; at++)
        if (dead[at])
            p->data[at] = 5.0f;
    ck_assert_uint_eq(grow_and_check(&k, p, MOE_NEURON_L1, NULL, 0.7, 0), 17);
    const size_t want07[3] = { 4, 10, 3 };
    for (size_t i = 0; i < 3; i++)
        ck_assert_uint_eq(moe_ffn_masks_pruned(&k, i), want07[i]);
    moe_ffn_masks_apply(&k, p);

    // a smaller fraction prunes nothing new and un-prunes nothing; the weights keep their bits
    uint8_t flat[32], flat2[32];
    ck_assert_uint_le(k.units, sizeof flat);
    masks_flat(&k, flat);
    memcpy(copy, p->data, p->numel * sizeof *copy);
    ck_assert_uint_eq(grow_and_check(&k, p, MOE_NEURON_L1, NULL, 0.2, 0), 17);
    ck_assert_uint_eq(grow_and_check(&k, p, MOE_NEURON_L1, NULL, 0.0, 1), 17);
    masks_flat(&k, flat2);
    ck_assert_mem_eq(flat, flat2, k.units);
    ck_assert_mem_eq(copy, p->data, p->numel * sizeof *copy);

    // fractions outside [0, 1): MOE_EINVAL, the masks and weights untouched
    const double bad[4] = { 1.0, -0.1, NAN, 1.5 };
    for (int b = 0; b < 4; b++) {
        err.msg[0] = 0;
        ck_assert_int_eq(moe_ffn_masks_grow(&k, p, MOE_NEURON_L1, NULL, bad[b], b % 2, &err), MOE_EINVAL);
        ck_assert_msg(strstr(err.msg, "fraction"), "message '%s'", err.msg);
        masks_flat(&k, flat2);
        ck_assert_mem_eq(flat, flat2, k.units);
        ck_assert_mem_eq(copy, p->data, p->numel * sizeof *copy);
    }
    moe_ffn_masks_release(&k);

    // global: all 26 units ranked together, floor(0.3 x 26) = 7, then floor(0.55 x 26) = 14
    memcpy(p->data, w0, p->numel * sizeof *w0);
    ck_assert_int_eq(moe_ffn_masks_init(&k, p, &err), 0);
    ck_assert_uint_eq(grow_and_check(&k, p, MOE_NEURON_L1, NULL, 0.3, 1), 7);
    ck_assert_uint_eq(grow_and_check(&k, p, MOE_NEURON_L1, NULL, 0.55, 1), 14);
    // then per FFN at a smaller fraction: each FFN keeps what it has (floor(0.3 U) or more)
    ck_assert_uint_ge(grow_and_check(&k, p, MOE_NEURON_L1, NULL, 0.3, 0), 14);
    moe_ffn_masks_release(&k);

    // l2 and taylor (an arbitrary gradient): the same rule by their scores
    memcpy(p->data, w0, p->numel * sizeof *w0);
    float *grad = malloc(p->numel * sizeof *grad);
    ck_assert_ptr_nonnull(grad);
    fill_uniform(grad, p->numel, 52, -1.0f, 1.0f);
    ck_assert_int_eq(moe_ffn_masks_init(&k, p, &err), 0);
    ck_assert_uint_eq(grow_and_check(&k, p, MOE_NEURON_TAYLOR, grad, 0.5, 0), 3 + 7 + 2);
    ck_assert_uint_eq(grow_and_check(&k, p, MOE_NEURON_L2, NULL, 0.9, 1), 23);
    moe_ffn_masks_release(&k);
    moe_ffn_masks_release(&k); // released twice: nothing
    free(grad);
    free(dead), free(copy), free(w0);
    moe_model_release(&m);

    // a model without FFNs: no masks, and growing them prunes nothing
    make_model(&m, "{\"model\":{\"type\":\"mixture\",\"n_expert\":3,\"expert\":\"linear\"}}", MOE_TASK_REGRESSION, MI,
               MO, N);
    ck_assert_int_eq(moe_ffn_masks_init(&k, &m.params, &err), 0);
    ck_assert_uint_eq(k.n, 0);
    ck_assert_uint_eq(k.units, 0);
    ck_assert_int_eq(moe_ffn_masks_grow(&k, &m.params, MOE_NEURON_L1, NULL, 0.5, 0, &err), 0);
    ck_assert_int_eq(moe_ffn_masks_grow(&k, &m.params, MOE_NEURON_L1, NULL, 0.5, 1, &err), 0);
    ck_assert_uint_eq(moe_ffn_masks_pruned(&k, 0), 0);
    ck_assert_uint_eq(moe_ffn_masks_refs(&k, &m.params, NULL), 0);
    moe_ffn_masks_release(&k);
    moe_model_release(&m);
}
END_TEST

// ---------------------------------------------------------------- masks in a file

static char mask_dir[64];

static const char *mask_path(const char *name)
{
    static char buf[128];
    snprintf(buf, sizeof buf, "%s/%s", mask_dir, name);
    return buf;
}

// A file of refs (and, params non-NULL, every registry tensor before them).
static void write_masks(const char *name, const struct moe_params *params, const struct moe_st_ref *refs, size_t n)
{
    struct moe_err err = { 0 };
    int rc = params ? moe_safetensors_write_params(mask_path(name), params, refs, n, NULL, 0, &err)
                    : moe_safetensors_write(mask_path(name), refs, n, NULL, 0, &err);
    ck_assert_msg(rc == 0, "write %s: %s", name, err.msg);
}

// Read the file into k (the FFNs of read_params): rc, and the message naming
// the file and the tensor and holding frag.
static const struct moe_params *read_params;
static void expect_read(struct moe_ffn_masks *k, const char *name, int code, const char *tensor, const char *frag)
{
    struct moe_st_file f;
    struct moe_err err = { 0 };
    ck_assert_msg(moe_safetensors_open(mask_path(name), &f, &err) == 0, "%s", err.msg);
    int rc = moe_ffn_masks_read(k, &f, read_params, &err);
    ck_assert_msg(rc == code, "%s: read gave %d (%s), want %d", name, rc, err.msg, code);
    if (code) {
        char q[MOE_NAME_MAX + 16];
        snprintf(q, sizeof q, "'%s'", tensor);
        ck_assert_msg(strstr(err.msg, q), "message '%s' does not name %s", err.msg, q);
        ck_assert_msg(strstr(err.msg, name), "message '%s' does not name the file %s", err.msg, name);
        ck_assert_msg(strstr(err.msg, frag), "message '%s' lacks '%s'", err.msg, frag);
        ck_assert_ptr_null(strchr(err.msg, '\n'));
    }
    moe_safetensors_close(&f);
}

START_TEST(test_masks_file)
{
    snprintf(mask_dir, sizeof mask_dir, "/tmp/moe-prune-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(mask_dir));
    struct moe_model m;
    struct moe_err err = { 0 };
    make_model(&m, MLP_MOE, MOE_TASK_CLASSIFICATION, I, O, N);
    randomize_model(&m, 61);
    struct moe_params *p = &m.params;
    read_params = p;
    struct moe_ffn_masks k, r;
    ck_assert_int_eq(moe_ffn_masks_init(&k, p, &err), 0);
    ck_assert_int_eq(moe_ffn_masks_grow(&k, p, MOE_NEURON_L1, NULL, 0.5, 1, &err), 0);
    ck_assert_uint_eq(moe_ffn_masks_pruned(&k, k.n), 13);

    // the refs: one per FFN, U8, (F) for the 2-d dense FFN, (M, F) for the experts and the
    // shared expert (a 3-d tensor of one)
    struct moe_st_ref refs[4];
    ck_assert_uint_eq(moe_ffn_masks_refs(&k, p, refs), 3);
    const char *names[3] = { "layers.0.ffn.pruned", "layers.1.moe.experts.pruned", "layers.1.moe.shared.pruned" };
    const int ndims[3] = { 1, 2, 2 };
    const size_t shapes[3][2] = { { 6, 0 }, { 3, 5 }, { 1, 5 } };
    for (size_t i = 0; i < 3; i++) {
        ck_assert_str_eq(refs[i].name, names[i]);
        ck_assert_int_eq(refs[i].dtype, MOE_U8);
        ck_assert_int_eq(refs[i].ndim, ndims[i]);
        for (int d = 0; d < ndims[i]; d++)
            ck_assert_uint_eq(refs[i].shape[d], shapes[i][d]);
        ck_assert_ptr_eq(refs[i].data, k.mask[i]);
        ck_assert_ptr_null(refs[i].fill);
    }

    // round trip, alone and after the model's tensors (a checkpoint): the same flags
    write_masks("masks.safetensors", NULL, refs, 3);
    write_masks("model.safetensors", p, refs, 3);
    const char *files[2] = { "masks.safetensors", "model.safetensors" };
    for (int fi = 0; fi < 2; fi++) {
        ck_assert_int_eq(moe_ffn_masks_init(&r, p, &err), 0);
        expect_read(&r, files[fi], 0, NULL, NULL);
        for (size_t i = 0; i < 3; i++)
            ck_assert_mem_eq(r.mask[i], k.mask[i], k.ffn[i].M * k.ffn[i].F);
        ck_assert_uint_eq(moe_ffn_masks_pruned(&r, r.n), 13);
        moe_ffn_masks_release(&r);
    }

    // a file without mask tensors (the model only) leaves the masks as they are; one with some
    // of them sets those only
    write_masks("plain.safetensors", p, NULL, 0);
    ck_assert_int_eq(moe_ffn_masks_init(&r, p, &err), 0);
    uint8_t pre[3][16];
    for (size_t i = 0; i < 3; i++)
        for (size_t u = 0; u < r.ffn[i].M * r.ffn[i].F; u++)
            pre[i][u] = r.mask[i][u] = (uint8_t)((u + i) % 3 == 0);
    expect_read(&r, "plain.safetensors", 0, NULL, NULL);
    for (size_t i = 0; i < 3; i++)
        ck_assert_mem_eq(r.mask[i], pre[i], r.ffn[i].M * r.ffn[i].F);
    write_masks("one.safetensors", NULL, &refs[1], 1);
    expect_read(&r, "one.safetensors", 0, NULL, NULL);
    ck_assert_mem_eq(r.mask[0], pre[0], 6);
    ck_assert_mem_eq(r.mask[1], k.mask[1], 15);
    ck_assert_mem_eq(r.mask[2], pre[2], 5);

    // bad tensors: MOE_EFORMAT naming the tensor
    float f32[15] = { 0 };
    uint8_t u8[16] = { 0 };
    struct moe_st_ref bad = { .name = "layers.1.moe.experts.pruned", .dtype = MOE_F32, .ndim = 2, .shape = { 3, 5 },
                              .data = f32 };
    write_masks("f32.safetensors", NULL, &bad, 1);
    expect_read(&r, "f32.safetensors", MOE_EFORMAT, bad.name, "U8");
    bad = (struct moe_st_ref){ .name = "layers.1.moe.experts.pruned", .dtype = MOE_U8, .ndim = 2, .shape = { 5, 3 },
                               .data = u8 }; // the right count, transposed
    write_masks("shape.safetensors", NULL, &bad, 1);
    expect_read(&r, "shape.safetensors", MOE_EFORMAT, bad.name, "of shape (3, 5)");
    bad = (struct moe_st_ref){ .name = "layers.0.ffn.pruned", .dtype = MOE_U8, .ndim = 1, .shape = { 7 }, .data = u8 };
    write_masks("count.safetensors", NULL, &bad, 1);
    expect_read(&r, "count.safetensors", MOE_EFORMAT, bad.name, "of shape (6)");
    bad.shape[0] = 6;
    bad.dtype = MOE_I8;
    write_masks("i8.safetensors", NULL, &bad, 1);
    expect_read(&r, "i8.safetensors", MOE_EFORMAT, bad.name, "U8");
    bad = (struct moe_st_ref){ .name = "layers.1.moe.shared.pruned", .dtype = MOE_U8, .ndim = 2, .shape = { 1, 5 },
                               .data = u8 };
    u8[3] = 2;
    write_masks("two.safetensors", NULL, &bad, 1);
    expect_read(&r, "two.safetensors", MOE_EFORMAT, bad.name, "element 3 is 2");
    u8[3] = 255;
    write_masks("ff.safetensors", NULL, &bad, 1);
    expect_read(&r, "ff.safetensors", MOE_EFORMAT, bad.name, "element 3 is 255");
    // the FFN of a refused tensor keeps its mask
    ck_assert_mem_eq(r.mask[2], pre[2], 5);
    // a good mask beside a bad one: refused as a whole, no mask changes
    uint8_t ones[6] = { 1, 1, 1, 1, 1, 1 };
    struct moe_st_ref pair[2] = { { .name = "layers.0.ffn.pruned", .dtype = MOE_U8, .ndim = 1, .shape = { 6 }, .data = ones },
                                  bad };
    write_masks("pair.safetensors", NULL, pair, 2);
    expect_read(&r, "pair.safetensors", MOE_EFORMAT, bad.name, "element 3 is 255");
    ck_assert_mem_eq(r.mask[0], pre[0], 6);
    ck_assert_mem_eq(r.mask[1], k.mask[1], 15);
    ck_assert_mem_eq(r.mask[2], pre[2], 5);
    moe_ffn_masks_release(&r);
    moe_ffn_masks_release(&k);
    moe_model_release(&m);

    const char *all[] = { "masks", "model", "plain", "one", "f32", "shape", "count", "i8", "two", "ff", "pair" };
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) {
        char n[64];
        snprintf(n, sizeof n, "%s.safetensors", all[i]);
        ck_assert_int_eq(unlink(mask_path(n)), 0);
    }
    ck_assert_int_eq(rmdir(mask_dir), 0);
}
END_TEST

static Suite *prune_suite(void)
{
    Suite *s = suite_create("prune");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_select_hand);
    tcase_add_test(tc, test_select_rank);
    tcase_add_test(tc, test_random_scores);
    tcase_add_test(tc, test_gather_rows);
    tcase_add_test(tc, test_find_models);
    tcase_add_test(tc, test_find_hand);
    tcase_add_test(tc, test_scores_by_hand);
    tcase_add_test(tc, test_mask_narrow);
    tcase_add_test(tc, test_taylor_fd);
    tcase_add_test(tc, test_zeros);
    tcase_add_test(tc, test_schedule);
    tcase_add_test(tc, test_masks_grow);
    tcase_add_test(tc, test_masks_file);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    if (moe_test_init_blas(1))
        return 1;
    return moe_test_run(prune_suite());
}
