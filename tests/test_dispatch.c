// test_dispatch.c: capacity, the dispatch plan and the expert layer
// (moe/dispatch.h, moe/experts.h).
//   - moe_capacity on hand values;
//   - moe_dispatch_plan against its naive twin moe_dispatch_kept_ref on
//     hundreds of random cases, plus the layout invariants of the plan, plus
//     hand examples for both drop policies;
//   - moe_experts_forward against the naive moe_experts_forward_ref;
//   - moe_experts_forward and _backward on 1 and 2 threads: the same bytes;
//   - moe_ffn_backward and moe_experts_backward against central finite
//     differences, with the method and tolerance of test_grad.c (see there):
//     numeric = (L(w+) - L(w-)) / (w+ - w-) with the stored float steps,
//     |analytic - numeric| <= 2e-3 * max(1, |numeric|), L = sum out * R for a
//     fixed random R, and every case asserts its gradients are not all tiny.
// Run with MOE_GRAD_VERBOSE=1 (and CK_FORK=no) to print the worst errors seen.
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/params.h"
#include "core/rng.h"
#include "core/status.h"
#include "moe/dispatch.h"
#include "moe/experts.h"
#include "gradcheck.h"
#include "testutil.h"

#define H_KERNEL 1e-3f
#define REF_TOL 1e-4

static double worst_ref;  // largest fast-vs-naive error, relative to the largest output

// ---------------------------------------------------------------- names and capacity

START_TEST(test_names)
{
    for (int a = 0; a < 3; a++)
        ck_assert_int_eq(moe_ffn_act_from_name(moe_ffn_act_name((enum moe_ffn_act)a)), a);
    ck_assert_str_eq(moe_ffn_act_name(MOE_FFN_RELU), "relu");
    ck_assert_str_eq(moe_ffn_act_name(MOE_FFN_GELU), "gelu");
    ck_assert_str_eq(moe_ffn_act_name(MOE_FFN_SWIGLU), "swiglu");
    ck_assert_int_eq(moe_ffn_act_from_name("silu"), -1);
    ck_assert_int_eq(moe_drop_policy_from_name("order"), MOE_DROP_ORDER);
    ck_assert_int_eq(moe_drop_policy_from_name("probability"), MOE_DROP_PROB);
    ck_assert_str_eq(moe_drop_policy_name(MOE_DROP_ORDER), "order");
    ck_assert_str_eq(moe_drop_policy_name(MOE_DROP_PROB), "probability");
    ck_assert_int_eq(moe_drop_policy_from_name("prob"), -1);
}
END_TEST

START_TEST(test_capacity)
{
    // 1.1 * 100 / 10 is 11.000000000000002 in double: the capacity is 11, not 12
    ck_assert_uint_eq(moe_capacity(1.1, 100, 1, 10), 11);
    ck_assert_uint_eq(moe_capacity(1.25, 64, 1, 8), 10);
    ck_assert_uint_eq(moe_capacity(1.0, 64, 1, 8), 8);
    ck_assert_uint_eq(moe_capacity(1.0, 65, 1, 8), 9); // 8.125 rounds up
    ck_assert_uint_eq(moe_capacity(1.01, 100, 1, 10), 11); // 10.1 rounds up: the tolerance is tiny
    // k multiplies in (GShard): 2 slots double the room
    ck_assert_uint_eq(moe_capacity(1.25, 64, 2, 8), 20);
    ck_assert_uint_eq(moe_capacity(1.0, 10, 2, 4), 5);
    ck_assert_uint_eq(moe_capacity(1.0, 10, 3, 4), 8); // 7.5
    ck_assert_uint_eq(moe_capacity(0.3, 100, 3, 9), 10);  // 0.3 * 300 / 9 = 10 (0.3 is not exact)
    // dropless: capacity_factor <= 0 -> T
    ck_assert_uint_eq(moe_capacity(0.0, 37, 2, 8), 37);
    ck_assert_uint_eq(moe_capacity(-1.0, 5, 1, 64), 5);
    // at least 1
    ck_assert_uint_eq(moe_capacity(0.01, 4, 1, 64), 1);
    ck_assert_uint_eq(moe_capacity(1.0, 0, 1, 8), 1);
    ck_assert_uint_eq(moe_capacity(0.0, 0, 1, 8), 1);
}
END_TEST

// ---------------------------------------------------------------- the plan

// Everything a plan promises, checked against the naive keep mask.
static void check_plan(const struct moe_dispatch *d, const uint8_t *kept, size_t n_dropped_ref,
                       const int32_t *idx, size_t T, size_t S, size_t E, size_t cap, const char *label)
{
    ck_assert_uint_eq(d->T, T);
    ck_assert_uint_eq(d->S, S);
    ck_assert_uint_eq(d->E, E);
    ck_assert_uint_eq(d->cap, cap);
    ck_assert_msg(d->n_dropped == n_dropped_ref, "%s: n_dropped %zu, naive %zu", label, d->n_dropped,
                  n_dropped_ref);
    ck_assert_uint_eq(d->offset[0], 0);
    ck_assert_uint_eq(d->offset[E], d->n_rows);
    size_t n_kept = 0, sum_dropped = 0;
    for (size_t i = 0; i < T * S; i++)
        n_kept += kept[i];
    ck_assert_msg(d->n_rows == n_kept, "%s: %zu rows, naive keeps %zu", label, d->n_rows, n_kept);
    for (size_t e = 0; e < E; e++) {
        ck_assert_uint_le(d->offset[e], d->offset[e + 1]);
        size_t routed = 0, kept_e = 0;
        for (size_t i = 0; i < T * S; i++) {
            routed += idx[i] == (int32_t)e;
            kept_e += idx[i] == (int32_t)e && kept[i];
        }
        ck_assert_msg(d->routed[e] == routed, "%s: routed[%zu] = %zu, want %zu", label, e, d->routed[e], routed);
        ck_assert_uint_eq(d->offset[e + 1] - d->offset[e], kept_e);
        ck_assert_uint_eq(d->dropped[e], routed - kept_e);
        ck_assert_uint_eq(kept_e, routed < cap ? routed : cap); // an expert keeps min(wanted, cap)
        sum_dropped += d->dropped[e];
        // the block: rows of expert e, strictly increasing in (token, slot), consistent with slot_row
        for (size_t r = d->offset[e]; r < d->offset[e + 1]; r++) {
            int32_t t = d->row_tok[r], s = d->row_slot[r];
            ck_assert(t >= 0 && (size_t)t < T && s >= 0 && (size_t)s < S);
            ck_assert_int_eq(idx[(size_t)t * S + (size_t)s], (int32_t)e);
            ck_assert_int_eq(d->slot_row[(size_t)t * S + (size_t)s], (int32_t)r);
            if (r > d->offset[e]) {
                int32_t tp = d->row_tok[r - 1], sp = d->row_slot[r - 1];
                ck_assert_msg(tp < t || (tp == t && sp < s), "%s: block %zu not sorted at row %zu", label, e, r);
            }
        }
    }
    ck_assert_uint_eq(sum_dropped, d->n_dropped);
    // every slot: a row exactly when the naive rule keeps it, and that row points back at it
    for (size_t t = 0; t < T; t++) {
        for (size_t s = 0; s < S; s++) {
            int32_t r = d->slot_row[t * S + s];
            ck_assert_msg((r >= 0) == (kept[t * S + s] != 0), "%s: slot (%zu, %zu) row %d, naive kept %d", label,
                          t, s, r, kept[t * S + s]);
            if (r >= 0) {
                ck_assert_uint_lt((size_t)r, d->n_rows);
                ck_assert_int_eq(d->row_tok[r], (int32_t)t);
                ck_assert_int_eq(d->row_slot[r], (int32_t)s);
            }
        }
    }
}

// Plan, naive twin, and every check, for one case.
static void plan_and_check(struct moe_dispatch *d, const int32_t *idx, const float *prio, size_t T, size_t cap,
                           enum moe_drop_policy policy, uint8_t *kept, const char *label)
{
    moe_dispatch_plan(d, idx, prio, T, cap, policy);
    size_t nd = moe_dispatch_kept_ref(kept, idx, prio, T, d->S, d->E, cap, policy);
    check_plan(d, kept, nd, idx, T, d->S, d->E, cap, label);
}

// Hand example, drop in token order, T = 4, S = 2, E = 2, cap = 2:
//   token:   0       1       2       3
//   idx:   (0, 1)  (1, 0)  (0, 1)  (0, -1)
// Slot 0 first: expert 0 gets tokens 0, 2 (full; token 3's first choice is
// dropped), expert 1 gets token 1. Slot 1: expert 1 takes token 0's second
// choice (its 2nd row) and drops token 2's; expert 0 is full, so token 1's
// second choice is dropped although token 1 comes before token 2: first
// choices are placed before second choices (GShard).
// Blocks by (token, slot): expert 0 = [(0,0), (2,0)], expert 1 = [(0,1), (1,0)].
START_TEST(test_plan_hand_order)
{
    const int32_t idx[8] = { 0, 1, 1, 0, 0, 1, 0, -1 };
    const float prio[8] = { 0.1f, 0.9f, 0.1f, 0.9f, 0.1f, 0.9f, 0.9f, 0.0f }; // ignored by ORDER
    struct moe_dispatch d;
    struct moe_err err;
    ck_assert_int_eq(moe_dispatch_alloc(&d, 4, 2, 2, &err), 0);
    moe_dispatch_plan(&d, idx, prio, 4, 2, MOE_DROP_ORDER);
    ck_assert_uint_eq(d.n_rows, 4);
    ck_assert_uint_eq(d.offset[0], 0);
    ck_assert_uint_eq(d.offset[1], 2);
    ck_assert_uint_eq(d.offset[2], 4);
    const int32_t row_tok[4] = { 0, 2, 0, 1 }, row_slot[4] = { 0, 0, 1, 0 };
    for (int r = 0; r < 4; r++) {
        ck_assert_int_eq(d.row_tok[r], row_tok[r]);
        ck_assert_int_eq(d.row_slot[r], row_slot[r]);
    }
    const int32_t slot_row[8] = { 0, 2, 3, -1, 1, -1, -1, -1 };
    for (int i = 0; i < 8; i++)
        ck_assert_int_eq(d.slot_row[i], slot_row[i]);
    ck_assert_uint_eq(d.routed[0], 4);
    ck_assert_uint_eq(d.routed[1], 3);
    ck_assert_uint_eq(d.dropped[0], 2);
    ck_assert_uint_eq(d.dropped[1], 1);
    ck_assert_uint_eq(d.n_dropped, 3);
    uint8_t kept[8];
    ck_assert_uint_eq(moe_dispatch_kept_ref(kept, idx, prio, 4, 2, 2, 2, MOE_DROP_ORDER), 3);
    for (int i = 0; i < 8; i++)
        ck_assert_int_eq(kept[i], slot_row[i] >= 0);
    // the same idx with NULL prio: ORDER never reads it
    moe_dispatch_plan(&d, idx, NULL, 4, 2, MOE_DROP_ORDER);
    for (int i = 0; i < 8; i++)
        ck_assert_int_eq(d.slot_row[i], slot_row[i]);
    // dropless: every used slot kept, blocks in (token, slot) order
    moe_dispatch_plan(&d, idx, prio, 4, moe_capacity(0.0, 4, 2, 2), MOE_DROP_ORDER);
    ck_assert_uint_eq(d.n_dropped, 0);
    ck_assert_uint_eq(d.n_rows, 7);
    ck_assert_uint_eq(d.offset[1], 4);
    const int32_t tok_dl[7] = { 0, 1, 2, 3, 0, 1, 2 }, slot_dl[7] = { 0, 1, 0, 0, 1, 0, 1 };
    for (int r = 0; r < 7; r++) {
        ck_assert_int_eq(d.row_tok[r], tok_dl[r]);
        ck_assert_int_eq(d.row_slot[r], slot_dl[r]);
    }
    ck_assert_int_eq(d.slot_row[7], -1);
    moe_dispatch_release(&d);
    moe_dispatch_release(&d); // released twice: harmless
}
END_TEST

// The plan's slot_row is want (n slots); kept (when given) marks exactly the kept ones.
static void expect_rows(const struct moe_dispatch *d, const int32_t *want, const uint8_t *kept, int n)
{
    for (int i = 0; i < n; i++) {
        ck_assert_int_eq(d->slot_row[i], want[i]);
        if (kept)
            ck_assert_int_eq(kept[i], want[i] >= 0);
    }
}

// Hand examples, drop by probability (batch prioritized routing).
START_TEST(test_plan_hand_prob)
{
    struct moe_dispatch d;
    struct moe_err err;
    // The idx of test_plan_hand_order, cap = 2, with priorities:
    //   token:   0            1            2            3
    //   idx:   (0, 1)       (1, 0)       (0, 1)       (0, -1)
    //   prio:  (0.5, 0.3)   (0.6, 0.2)   (0.4, 0.4)   (0.9, 0)
    // Slot 0, expert 0: 0.9 (t3), 0.5 (t0) kept, 0.4 (t2) dropped; expert 1: t1.
    // Slot 1, expert 1: t2 (0.4) before t0 (0.3): t2 kept, t0 dropped; expert 0 full: t1 dropped.
    const int32_t idx[8] = { 0, 1, 1, 0, 0, 1, 0, -1 };
    const float prio[8] = { 0.5f, 0.3f, 0.6f, 0.2f, 0.4f, 0.4f, 0.9f, 0.0f };
    ck_assert_int_eq(moe_dispatch_alloc(&d, 4, 2, 2, &err), 0);
    moe_dispatch_plan(&d, idx, prio, 4, 2, MOE_DROP_PROB);
    const int32_t slot_row[8] = { 0, -1, 2, -1, -1, 3, 1, -1 };
    for (int i = 0; i < 8; i++)
        ck_assert_int_eq(d.slot_row[i], slot_row[i]);
    const int32_t row_tok[4] = { 0, 3, 1, 2 }, row_slot[4] = { 0, 0, 0, 1 };
    for (int r = 0; r < 4; r++) {
        ck_assert_int_eq(d.row_tok[r], row_tok[r]);
        ck_assert_int_eq(d.row_slot[r], row_slot[r]);
    }
    ck_assert_uint_eq(d.n_dropped, 3);
    uint8_t kept[8];
    ck_assert_uint_eq(moe_dispatch_kept_ref(kept, idx, prio, 4, 2, 2, 2, MOE_DROP_PROB), 3);
    for (int i = 0; i < 8; i++)
        ck_assert_int_eq(kept[i], slot_row[i] >= 0);
    moe_dispatch_release(&d);

    // Slot-major even by probability: token 0's second choice (0.45) to expert 0
    // loses to token 1's first choice (0.1), cap = 1.
    const int32_t idx2[4] = { 1, 0, 0, 1 };
    const float prio2[4] = { 0.5f, 0.45f, 0.1f, 0.05f };
    ck_assert_int_eq(moe_dispatch_alloc(&d, 2, 2, 2, &err), 0);
    moe_dispatch_plan(&d, idx2, prio2, 2, 1, MOE_DROP_PROB);
    ck_assert_int_eq(d.slot_row[0], 1);  // t0 -> expert 1, row 1
    ck_assert_int_eq(d.slot_row[1], -1); // t0's second choice dropped
    ck_assert_int_eq(d.slot_row[2], 0);  // t1 -> expert 0, row 0
    ck_assert_int_eq(d.slot_row[3], -1);
    moe_dispatch_release(&d);

    // Ties go to the lower token; a higher priority beats a lower token. T = 5, S = 1, E = 1, cap = 2.
    const int32_t idx3[5] = { 0, 0, 0, 0, 0 };
    const float tie[5] = { 0.5f, 0.7f, 0.5f, 0.7f, 0.7f };
    ck_assert_int_eq(moe_dispatch_alloc(&d, 5, 1, 1, &err), 0);
    moe_dispatch_plan(&d, idx3, tie, 5, 2, MOE_DROP_PROB);
    const int32_t want[5] = { -1, 0, -1, 1, -1 }; // tokens 1 and 3 of the three 0.7s
    expect_rows(&d, want, NULL, 5);
    // all equal: the first two tokens, as in ORDER
    const float flat[5] = { 0.25f, 0.25f, 0.25f, 0.25f, 0.25f };
    moe_dispatch_plan(&d, idx3, flat, 5, 2, MOE_DROP_PROB);
    const int32_t want_flat[5] = { 0, 1, -1, -1, -1 };
    expect_rows(&d, want_flat, NULL, 5);
    // NaN priorities (a router that overflowed) count as -infinity, ties by
    // token: the order stays total, so the plan is still a plan (no assertion,
    // no token kept twice); the trainer reports the divergence.
    const float nanp[5] = { NAN, 0.1f, NAN, 0.2f, 0.05f };
    moe_dispatch_plan(&d, idx3, nanp, 5, 2, MOE_DROP_PROB); // keep order t3 t1 t4 t0 t2
    const int32_t want_nan2[5] = { -1, 0, -1, 1, -1 };
    expect_rows(&d, want_nan2, NULL, 5);
    moe_dispatch_plan(&d, idx3, nanp, 5, 4, MOE_DROP_PROB);
    const int32_t want_nan4[5] = { 0, 1, -1, 2, 3 };
    ck_assert_uint_eq(d.n_dropped, 1);
    uint8_t kept5[5];
    ck_assert_uint_eq(moe_dispatch_kept_ref(kept5, idx3, nanp, 5, 1, 1, 4, MOE_DROP_PROB), 1);
    expect_rows(&d, want_nan4, kept5, 5);
    // T = 0: an empty plan
    moe_dispatch_plan(&d, idx3, flat, 0, 2, MOE_DROP_PROB);
    ck_assert_uint_eq(d.n_rows, 0);
    ck_assert_uint_eq(d.n_dropped, 0);
    ck_assert_uint_eq(d.offset[1], 0);
    ck_assert_uint_eq(d.routed[0], 0);
    moe_dispatch_release(&d);
}
END_TEST

// Random router output: T tokens x S slots over E experts. distinct: a token
// never picks an expert twice (as every router does); otherwise duplicates are
// allowed (the plan must cope). p_unused: chance a slot is -1. ties: priorities
// from 4 levels, so equal priorities are common.
static void random_route(int32_t *idx, float *prio, size_t T, size_t S, size_t E, int distinct, float p_unused,
                         int ties, uint32_t stream)
{
    struct moe_rng r = moe_rng_make(77, MOE_RNG_DATA, stream);
    uint64_t k = 0;
    for (size_t t = 0; t < T; t++) {
        for (size_t s = 0; s < S; s++) {
            int32_t e = -1;
            if (!distinct) {
                e = (int32_t)moe_rng_below(&r, k++, (uint32_t)E);
            } else if (s < E) {
                for (;;) { // rejection: E <= 8, so this ends quickly
                    e = (int32_t)moe_rng_below(&r, k++, (uint32_t)E);
                    int used = 0;
                    for (size_t s2 = 0; s2 < s; s2++)
                        used |= idx[t * S + s2] == e;
                    if (!used)
                        break;
                }
            }
            float u = moe_rng_uniform(&r, k++);
            float p = moe_rng_uniform(&r, k++);
            idx[t * S + s] = u < p_unused ? -1 : e;
            prio[t * S + s] = ties ? (float)moe_rng_below(&r, k++, 4) / 4.0f : p;
        }
    }
}

enum { PT_MAX = 64, PS_MAX = 3 };

START_TEST(test_plan_random)
{
    static const size_t Ss[3] = { 1, 2, 3 }, Es[4] = { 1, 2, 4, 8 };
    int32_t idx[PT_MAX * PS_MAX];
    float prio[PT_MAX * PS_MAX];
    uint8_t kept_o[PT_MAX * PS_MAX], kept_p[PT_MAX * PS_MAX];
    size_t n_cases = 0, n_with_drops = 0, n_policies_differ = 0, n_dropless = 0;
    struct moe_rng r = moe_rng_make(78, MOE_RNG_DATA, 0);
    for (uint32_t c = 0; c < 600; c++) {
        size_t T = 1 + moe_rng_below(&r, 8 * c, PT_MAX);
        size_t S = Ss[moe_rng_below(&r, 8 * c + 1, 3)], E = Es[moe_rng_below(&r, 8 * c + 2, 4)];
        int distinct = moe_rng_below(&r, 8 * c + 3, 4) != 0;
        float p_unused = (float)moe_rng_below(&r, 8 * c + 4, 3) * 0.15f;
        int ties = (int)moe_rng_below(&r, 8 * c + 5, 2);
        random_route(idx, prio, T, S, E, distinct, p_unused, ties, 1000 + c);
        size_t cap;
        switch (c % 4) {
        case 0: cap = 1; break;
        case 1: cap = 1 + moe_rng_below(&r, 8 * c + 6, (uint32_t)T); break;
        case 2: cap = moe_capacity(0.5 + 1.5 * moe_rng_uniform(&r, 8 * c + 7), T, S, E); break;
        default: cap = moe_capacity(0.0, T, S, E); break; // dropless
        }
        char label[128];
        snprintf(label, sizeof label, "case %u (T %zu S %zu E %zu cap %zu distinct %d ties %d)", c, T, S, E, cap,
                 distinct, ties);
        struct moe_dispatch d;
        struct moe_err err;
        // sized for more tokens than used, so T < T_max is exercised; both policies reuse one plan
        ck_assert_int_eq(moe_dispatch_alloc(&d, PT_MAX, S, E, &err), 0);
        plan_and_check(&d, idx, prio, T, cap, MOE_DROP_PROB, kept_p, label);
        plan_and_check(&d, idx, prio, T, cap, MOE_DROP_ORDER, kept_o, label);
        if (c % 4 == 3 && distinct) {
            ck_assert_msg(d.n_dropped == 0, "%s: dropless plan dropped %zu", label, d.n_dropped);
            n_dropless++;
        }
        n_with_drops += d.n_dropped > 0;
        n_policies_differ += memcmp(kept_o, kept_p, T * S) != 0;
        n_cases++;
        moe_dispatch_release(&d);
    }
    // the random cases really cover drops and a difference between the policies
    ck_assert_uint_eq(n_cases, 600);
    ck_assert_uint_gt(n_with_drops, 100);
    ck_assert_uint_gt(n_policies_differ, 50);
    ck_assert_uint_gt(n_dropless, 50);
}
END_TEST

START_TEST(test_alloc)
{
    struct moe_dispatch d;
    struct moe_err err;
    ck_assert_int_eq(moe_dispatch_alloc(&d, 8, 0, 4, &err), MOE_EINVAL);
    ck_assert_int_eq(moe_dispatch_alloc(&d, 8, 2, 0, &err), MOE_EINVAL);
    moe_dispatch_release(&d); // after a failed alloc: harmless
    ck_assert_int_eq(moe_dispatch_alloc(&d, (size_t)1 << 31, 2, 4, &err), MOE_EINVAL);
    struct moe_experts_buf b;
    ck_assert_int_eq(moe_experts_buf_alloc(&b, 10, 4, 6, 0, &err), 0);
    ck_assert_ptr_null(b.b);
    ck_assert_ptr_null(b.db);
    ck_assert_ptr_nonnull(b.dh);
    moe_experts_buf_release(&b);
    ck_assert_int_eq(moe_experts_buf_alloc(&b, 10, 4, 6, 1, &err), 0);
    ck_assert_ptr_nonnull(b.b);
    ck_assert_ptr_nonnull(b.db);
    // the buffers do not overlap: write each fully and read every one back
    float *bufs[10] = { b.xd, b.yd, b.dyd, b.dxd, b.a, b.h, b.da, b.dh, b.b, b.db };
    size_t len[10] = { 40, 40, 40, 40, 60, 60, 60, 60, 60, 60 };
    for (int k = 0; k < 10; k++)
        for (size_t i = 0; i < len[k]; i++)
            bufs[k][i] = (float)k;
    for (int k = 0; k < 10; k++)
        for (size_t i = 0; i < len[k]; i++)
            ck_assert_float_eq(bufs[k][i], (float)k);
    moe_experts_buf_release(&b);
    moe_experts_buf_release(&b);
}
END_TEST

// ---------------------------------------------------------------- experts: fast vs naive

// Relative error of the fast layer against the naive one: max |fast - ref| over
// all outputs, divided by the largest contribution of the experts, max |ref - out0|
// (both start from the same nonzero out0; not per element: an output near zero
// from cancellation would make a per-element ratio meaningless).
// Bound: each output is at most S gated terms of y = h . W2^T (F products) with
// h = act(x . W1^T) (D products). The fast path accumulates in float (BLIS),
// the naive one in double, so the difference is the float rounding of the fast
// path, at most about (D + F) * u * sum|terms| with u = 2^-24 = 6e-8; here
// D + F = 40 and sum|terms| is a few times max|out|, a bound of ~1e-5 (random
// rounding gives ~1e-6 in practice). 1e-4 leaves a margin of 10; a wrong row,
// expert, gate, or a dropped slot that was kept gives errors of order 1.
enum { XT = 37, XS = 2, XE = 4, XD = 16, XF = 24, XE8 = 8, XT8 = 5, XS1 = 1 };

static double fast_vs_ref(size_t T, size_t S, size_t E, enum moe_ffn_act act, enum moe_drop_policy policy,
                          double cf, float p_unused, int ties, uint32_t stream, size_t *ret_dropped,
                          size_t *ret_unused)
{
    const size_t D = XD, F = XF;
    int32_t *idx = malloc(T * S * sizeof *idx);
    float *prio = malloc(T * S * sizeof *prio), *gate = malloc(T * S * sizeof *gate);
    float *x = malloc(T * D * sizeof *x), *base = malloc(T * D * sizeof *base);
    float *of = malloc(T * D * sizeof *of), *orf = malloc(T * D * sizeof *orf);
    float *w1 = malloc(E * F * D * sizeof *w1), *w3 = malloc(E * F * D * sizeof *w3);
    float *w2 = malloc(E * D * F * sizeof *w2), *scratch = malloc((3 * F + D) * sizeof *scratch);
    random_route(idx, prio, T, S, E, 1, p_unused, ties, stream);
    fill_u(gate, T * S, stream + 1, 0.05f, 1.0f);
    fill_u(x, T * D, stream + 2, -1.0f, 1.0f);
    fill_u(base, T * D, stream + 3, -0.5f, 0.5f);
    float sd = 1.0f / sqrtf((float)D), sf = 1.0f / sqrtf((float)F);
    fill_u(w1, E * F * D, stream + 4, -sd, sd);
    fill_u(w3, E * F * D, stream + 5, -sd, sd);
    fill_u(w2, E * D * F, stream + 6, -sf, sf);
    size_t cap = moe_capacity(cf, T, S, E);

    struct moe_dispatch d;
    struct moe_experts_buf buf;
    struct moe_err err;
    ck_assert_int_eq(moe_dispatch_alloc(&d, T, S, E, &err), 0);
    ck_assert_int_eq(moe_experts_buf_alloc(&buf, T * S, D, F, act == MOE_FFN_SWIGLU, &err), 0);
    moe_dispatch_plan(&d, idx, prio, T, cap, policy);
    memcpy(of, base, T * D * sizeof *of); // both add into a nonzero out
    memcpy(orf, base, T * D * sizeof *orf);
    moe_experts_forward(of, x, gate, &d, w1, act == MOE_FFN_SWIGLU ? w3 : NULL, w2, &buf, act);
    moe_experts_forward_ref(orf, x, idx, gate, prio, T, S, E, cap, policy, w1, w3, w2, D, F, act, scratch);
    double diff = 0.0, scale = 0.0;
    for (size_t i = 0; i < T * D; i++) {
        diff = moe_test_worst(diff, fabs((double)of[i] - orf[i]));
        scale = fmax(scale, fabs((double)orf[i] - base[i])); // what the experts added
    }
    ck_assert_double_gt(scale, 0.01); // the experts really added something
    // tokens with no kept slot are left exactly as they were
    for (size_t t = 0; t < T; t++) {
        int any = 0;
        for (size_t s = 0; s < S; s++)
            any |= d.slot_row[t * S + s] >= 0;
        if (!any)
            for (size_t i = 0; i < D; i++)
                ck_assert_float_eq(of[t * D + i], base[t * D + i]);
    }
    size_t unused = 0;
    for (size_t i = 0; i < T * S; i++)
        unused += idx[i] < 0;
    *ret_dropped = d.n_dropped;
    *ret_unused = unused;
    moe_experts_buf_release(&buf);
    moe_dispatch_release(&d);
    free(idx), free(prio), free(gate), free(x), free(base), free(of), free(orf);
    free(w1), free(w3), free(w2), free(scratch);
    return diff / scale;
}

START_TEST(test_experts_forward_vs_ref)
{
    uint32_t stream = 3000;
    size_t n_overflow = 0;
    for (int a = 0; a < 3; a++) {
        for (int pol = 0; pol < 2; pol++) {
            // cf: 0 dropless, 0.6 overflows; layouts: (T 37, S 2, E 4) and (T 5, S 1, E 8: empty blocks)
            const double cfs[3] = { 0.0, 0.6, 1.0 };
            for (int k = 0; k < 3; k++) {
                for (int v = 0; v < 4; v++) {
                    const int small = v & 1, ties = v >> 1; // ties: priorities on 4 levels
                    size_t T = small ? XT8 : XT, S = small ? XS1 : XS, E = small ? XE8 : XE, dropped, unused;
                    double rel = fast_vs_ref(T, S, E, (enum moe_ffn_act)a, (enum moe_drop_policy)pol, cfs[k],
                                             small ? 0.2f : 0.15f, ties, stream, &dropped, &unused);
                    stream += 10;
                    worst_ref = fmax(worst_ref, rel);
                    ck_assert_msg(rel <= REF_TOL, "%s/%s cf %.1f T %zu ties %d: fast vs naive rel err %.3g > %.0e",
                                  moe_ffn_act_name((enum moe_ffn_act)a),
                                  moe_drop_policy_name((enum moe_drop_policy)pol), cfs[k], T, ties, rel, REF_TOL);
                    if (k == 0)
                        ck_assert_uint_eq(dropped, 0);
                    if (k == 1 && !small) {
                        ck_assert_uint_gt(dropped, 0);
                        n_overflow++;
                    }
                    if (!small)
                        ck_assert_uint_gt(unused, 0);
                }
            }
        }
    }
    ck_assert_uint_eq(n_overflow, 12);
}
END_TEST

// ---------------------------------------------------------------- ffn: finite differences

enum { FN = 5, FD = 4, FF = 6 };

struct ffn_ctx {
    enum moe_ffn_act act;
    float x[FN * FD], w1[FF * FD], w3[FF * FD], w2[FD * FF], r[FN * FD];
    float y[FN * FD], a[FN * FF], b[FN * FF], h[FN * FF];
};

static double ffn_loss(void *p)
{
    struct ffn_ctx *c = p;
    int sw = c->act == MOE_FFN_SWIGLU;
    moe_ffn_forward(c->y, c->a, sw ? c->b : NULL, c->h, c->x, c->w1, sw ? c->w3 : NULL, c->w2, FN, FD, FF, c->act);
    double s = 0.0;
    for (size_t i = 0; i < FN * FD; i++)
        s += (double)c->y[i] * c->r[i];
    return s;
}

// Relu: finite differences must not straddle the kink. With |x|, |w| <= 1 a
// step of h = 1e-3 moves a pre-activation by at most 1e-3, so the inputs are
// redrawn (new stream) until every pre-activation has |a| >= 1e-2.
static double min_abs(const float *x, size_t n)
{
    double m = INFINITY;
    for (size_t i = 0; i < n; i++)
        m = fabs(x[i]) < m ? fabs(x[i]) : m;
    return m;
}

START_TEST(test_ffn_grad)
{
    for (int ai = 0; ai < 3; ai++) {
        struct ffn_ctx c;
        c.act = (enum moe_ffn_act)ai;
        const int sw = c.act == MOE_FFN_SWIGLU;
        for (uint32_t st = 100;; st += 10) {
            fill_u(c.x, FN * FD, st, -1, 1);
            fill_u(c.w1, FF * FD, st + 1, -1, 1);
            fill_u(c.w3, FF * FD, st + 2, -1, 1);
            fill_u(c.w2, FD * FF, st + 3, -1, 1);
            fill_u(c.r, FN * FD, st + 4, -1, 1);
            ffn_loss(&c);
            if (c.act != MOE_FFN_RELU || min_abs(c.a, FN * FF) >= 1e-2)
                break;
            ck_assert_uint_lt(st, 10000);
        }
        // forward against plain loops
        for (size_t n = 0; n < FN; n++) {
            for (size_t o = 0; o < FD; o++) {
                double y = 0.0;
                for (size_t f = 0; f < FF; f++) {
                    double a = 0.0, b = 0.0;
                    for (size_t i = 0; i < FD; i++) {
                        a += (double)c.w1[f * FD + i] * c.x[n * FD + i];
                        b += (double)c.w3[f * FD + i] * c.x[n * FD + i];
                    }
                    double hv;
                    if (c.act == MOE_FFN_RELU)
                        hv = a > 0 ? a : 0;
                    else if (c.act == MOE_FFN_GELU) // tanh form, sqrt(2/pi) = 0.79788...
                        hv = 0.5 * a * (1 + tanh(0.7978845608028654 * (a + 0.044715 * a * a * a)));
                    else
                        hv = a / (1 + exp(-a)) * b;
                    y += c.w2[o * FF + f] * hv;
                }
                ck_assert_double_eq_tol(c.y[n * FD + o], y, 1e-5);
            }
        }
        // backward adds into nonzero gradients
        float dx[FN * FD], dw1[FF * FD], dw3[FF * FD], dw2[FD * FF], dh[FN * FF], da[FN * FF], db[FN * FF];
        for (size_t i = 0; i < FN * FD; i++)
            dx[i] = 0.25f;
        for (size_t i = 0; i < FF * FD; i++)
            dw1[i] = dw3[i] = dw2[i] = 0.25f;
        moe_ffn_backward(dx, dw1, sw ? dw3 : NULL, dw2, dh, da, sw ? db : NULL, c.r, c.x, c.a, sw ? c.b : NULL, c.h,
                         c.w1, sw ? c.w3 : NULL, c.w2, FN, FD, FF, c.act);
        for (size_t i = 0; i < FN * FD; i++)
            dx[i] -= 0.25f;
        for (size_t i = 0; i < FF * FD; i++)
            dw1[i] -= 0.25f, dw3[i] -= 0.25f, dw2[i] -= 0.25f;
        char what[32];
        const char *an = moe_ffn_act_name(c.act);
        snprintf(what, sizeof what, "ffn %s dx", an);
        for (size_t i = 0; i < FN * FD; i++)
            check_grad(dx[i], numeric_grad(&c.x[i], H_KERNEL, ffn_loss, &c), what, i);
        snprintf(what, sizeof what, "ffn %s dw1", an);
        for (size_t i = 0; i < FF * FD; i++)
            check_grad(dw1[i], numeric_grad(&c.w1[i], H_KERNEL, ffn_loss, &c), what, i);
        snprintf(what, sizeof what, "ffn %s dw2", an);
        for (size_t i = 0; i < FD * FF; i++)
            check_grad(dw2[i], numeric_grad(&c.w2[i], H_KERNEL, ffn_loss, &c), what, i);
        ck_assert_double_gt(max_abs(dx, FN * FD), 0.1);
        ck_assert_double_gt(max_abs(dw1, FF * FD), 0.1);
        ck_assert_double_gt(max_abs(dw2, FD * FF), 0.1);
        if (sw) {
            snprintf(what, sizeof what, "ffn %s dw3", an);
            for (size_t i = 0; i < FF * FD; i++)
                check_grad(dw3[i], numeric_grad(&c.w3[i], H_KERNEL, ffn_loss, &c), what, i);
            ck_assert_double_gt(max_abs(dw3, FF * FD), 0.1);
        } else {
            for (size_t i = 0; i < FF * FD; i++) // not touched
                ck_assert_float_eq(dw3[i], 0.0f);
        }
        // dx = NULL: the weight gradients are the same
        ffn_loss(&c);
        float dw1b[FF * FD], dw3b[FF * FD], dw2b[FD * FF];
        memset(dw1b, 0, sizeof dw1b);
        memset(dw3b, 0, sizeof dw3b);
        memset(dw2b, 0, sizeof dw2b);
        moe_ffn_backward(NULL, dw1b, sw ? dw3b : NULL, dw2b, dh, da, sw ? db : NULL, c.r, c.x, c.a, sw ? c.b : NULL,
                         c.h, c.w1, sw ? c.w3 : NULL, c.w2, FN, FD, FF, c.act);
        for (size_t i = 0; i < FF * FD; i++) {
            ck_assert_float_eq_tol(dw1b[i], dw1[i], 1e-6f);
            ck_assert_float_eq_tol(dw3b[i], dw3[i], 1e-6f);
            ck_assert_float_eq_tol(dw2b[i], dw2[i], 1e-6f);
        }
    }
}
END_TEST

// ---------------------------------------------------------------- experts: finite differences

enum { GT = 7, GS = 2, GE = 3, GD = 4, GF = 5 };

struct exp_ctx {
    enum moe_ffn_act act;
    struct moe_dispatch *plan;
    struct moe_experts_buf *buf;
    float x[GT * GD], gate[GT * GS], r[GT * GD], out[GT * GD];
    float w1[GE * GF * GD], w3[GE * GF * GD], w2[GE * GD * GF];
};

// L = sum out * R, out = moe_experts_forward from zero, on the plan held fixed.
static double exp_loss(void *p)
{
    struct exp_ctx *c = p;
    memset(c->out, 0, sizeof c->out);
    moe_experts_forward(c->out, c->x, c->gate, c->plan, c->w1, c->act == MOE_FFN_SWIGLU ? c->w3 : NULL, c->w2,
                        c->buf, c->act);
    double s = 0.0;
    for (size_t i = 0; i < GT * GD; i++)
        s += (double)c->out[i] * c->r[i];
    return s;
}

START_TEST(test_experts_grad)
{
    struct moe_err err;
    struct moe_dispatch d;
    struct moe_experts_buf buf;
    ck_assert_int_eq(moe_dispatch_alloc(&d, GT, GS, GE, &err), 0);
    ck_assert_int_eq(moe_experts_buf_alloc(&buf, GT * GS, GD, GF, 1, &err), 0);
    for (int ai = 0; ai < 3; ai++) {
        for (int pol = 0; pol < 2; pol++) {
            struct exp_ctx c;
            c.act = (enum moe_ffn_act)ai;
            c.plan = &d;
            c.buf = &buf;
            const int sw = c.act == MOE_FFN_SWIGLU;
            int32_t idx[GT * GS];
            float prio[GT * GS];
            random_route(idx, prio, GT, GS, GE, 1, 0.0f, pol, 500 + (uint32_t)(ai * 2 + pol));
            idx[1 * GS + 1] = -1; // an unused slot
            // cap = ceil(0.6 * 2 * 7 / 3) = 3, and 13 used slots over 3 experts means one is wanted >= 5 times: drops
            size_t cap = moe_capacity(0.6, GT, GS, GE);
            ck_assert_uint_eq(cap, 3);
            moe_dispatch_plan(&d, idx, prio, GT, cap, (enum moe_drop_policy)pol);
            ck_assert_uint_gt(d.n_dropped, 0);
            for (uint32_t st = 600;; st += 10) {
                fill_u(c.x, GT * GD, st, -1, 1);
                fill_u(c.gate, GT * GS, st + 1, 0.1f, 1);
                fill_u(c.r, GT * GD, st + 2, -1, 1);
                fill_u(c.w1, GE * GF * GD, st + 3, -1, 1);
                fill_u(c.w3, GE * GF * GD, st + 4, -1, 1);
                fill_u(c.w2, GE * GD * GF, st + 5, -1, 1);
                exp_loss(&c);
                // relu: keep every pre-activation of a kept row away from the kink (see test_ffn_grad)
                if (c.act != MOE_FFN_RELU || min_abs(buf.a, d.n_rows * GF) >= 1e-2)
                    break;
                ck_assert_uint_lt(st, 100000);
            }
            // analytic, into nonzero buffers (backward adds)
            float dx[GT * GD], dgate[GT * GS], dw1[GE * GF * GD], dw3[GE * GF * GD], dw2[GE * GD * GF];
            for (size_t i = 0; i < GT * GD; i++)
                dx[i] = 0.5f;
            for (size_t i = 0; i < GT * GS; i++)
                dgate[i] = 0.5f;
            for (size_t i = 0; i < GE * GF * GD; i++)
                dw1[i] = dw3[i] = dw2[i] = 0.5f;
            moe_experts_backward(dx, dgate, dw1, sw ? dw3 : NULL, dw2, c.r, c.x, c.gate, &d, c.w1, sw ? c.w3 : NULL,
                                 c.w2, &buf, c.act, 1.0f);
            for (size_t i = 0; i < GT * GS; i++) // no gradient for dropped or unused slots
                if (d.slot_row[i] < 0)
                    ck_assert_float_eq(dgate[i], 0.5f);
            for (size_t i = 0; i < GT * GD; i++)
                dx[i] -= 0.5f;
            for (size_t i = 0; i < GT * GS; i++)
                dgate[i] -= 0.5f;
            for (size_t i = 0; i < GE * GF * GD; i++)
                dw1[i] -= 0.5f, dw3[i] -= 0.5f, dw2[i] -= 0.5f;
            // the same backward without dx and dgate gives the same weight gradients
            float dw1b[GE * GF * GD], dw3b[GE * GF * GD], dw2b[GE * GD * GF];
            memset(dw1b, 0, sizeof dw1b);
            memset(dw3b, 0, sizeof dw3b);
            memset(dw2b, 0, sizeof dw2b);
            moe_experts_backward(NULL, NULL, dw1b, sw ? dw3b : NULL, dw2b, c.r, c.x, c.gate, &d, c.w1,
                                 sw ? c.w3 : NULL, c.w2, &buf, c.act, 1.0f);
            for (size_t i = 0; i < GE * GF * GD; i++) {
                ck_assert_float_eq_tol(dw1b[i], dw1[i], 1e-6f);
                ck_assert_float_eq_tol(dw3b[i], dw3[i], 1e-6f);
                ck_assert_float_eq_tol(dw2b[i], dw2[i], 1e-6f);
            }
            // written (beta 0) over NaN: the old contents are not read, and the
            // values equal those added into zeros
            float dw1w[GE * GF * GD], dw3w[GE * GF * GD], dw2w[GE * GD * GF];
            for (size_t i = 0; i < GE * GF * GD; i++)
                dw1w[i] = dw3w[i] = dw2w[i] = NAN;
            moe_experts_backward(NULL, NULL, dw1w, sw ? dw3w : NULL, dw2w, c.r, c.x, c.gate, &d, c.w1,
                                 sw ? c.w3 : NULL, c.w2, &buf, c.act, 0.0f);
            for (size_t i = 0; i < GE * GF * GD; i++) {
                ck_assert_float_eq(dw1w[i], dw1b[i]);
                if (sw)
                    ck_assert_float_eq(dw3w[i], dw3b[i]);
                ck_assert_float_eq(dw2w[i], dw2b[i]);
            }

            char what[48], tag[24];
            snprintf(tag, sizeof tag, "%s/%s", moe_ffn_act_name(c.act),
                     moe_drop_policy_name((enum moe_drop_policy)pol));
            snprintf(what, sizeof what, "experts %s dx", tag);
            for (size_t i = 0; i < GT * GD; i++)
                check_grad(dx[i], numeric_grad(&c.x[i], H_KERNEL, exp_loss, &c), what, i);
            snprintf(what, sizeof what, "experts %s dgate", tag);
            for (size_t i = 0; i < GT * GS; i++)
                check_grad(dgate[i], numeric_grad(&c.gate[i], H_KERNEL, exp_loss, &c), what, i);
            snprintf(what, sizeof what, "experts %s dw1", tag);
            for (size_t i = 0; i < GE * GF * GD; i++)
                check_grad(dw1[i], numeric_grad(&c.w1[i], H_KERNEL, exp_loss, &c), what, i);
            snprintf(what, sizeof what, "experts %s dw2", tag);
            for (size_t i = 0; i < GE * GD * GF; i++)
                check_grad(dw2[i], numeric_grad(&c.w2[i], H_KERNEL, exp_loss, &c), what, i);
            ck_assert_double_gt(max_abs(dx, GT * GD), 0.1);
            ck_assert_double_gt(max_abs(dgate, GT * GS), 0.1);
            ck_assert_double_gt(max_abs(dw1, GE * GF * GD), 0.1);
            ck_assert_double_gt(max_abs(dw2, GE * GD * GF), 0.1);
            if (sw) {
                snprintf(what, sizeof what, "experts %s dw3", tag);
                for (size_t i = 0; i < GE * GF * GD; i++)
                    check_grad(dw3[i], numeric_grad(&c.w3[i], H_KERNEL, exp_loss, &c), what, i);
                ck_assert_double_gt(max_abs(dw3, GE * GF * GD), 0.1);
            }
            // every expert gets some gradient (each one has kept rows here)
            for (size_t e = 0; e < GE; e++) {
                ck_assert_uint_gt(d.offset[e + 1] - d.offset[e], 0);
                ck_assert_double_gt(max_abs(dw2 + e * GD * GF, GD * GF), 1e-2);
            }
        }
    }
    moe_experts_buf_release(&buf);
    moe_dispatch_release(&d);
}
END_TEST

// ---------------------------------------------------------------- experts: thread counts

// One forward and backward of a layer of experts big enough that every loop goes
// parallel (the gather, the combine and its backward, the activations, the
// expert GEMMs); into caller-owned outputs.
struct thr_out {
    float *out, *dx, *dgate, *dw1, *dw3, *dw2;
};

enum { TT = 300, TS = 2, TE = 7, TD = 64, TF = 128 };

static void thr_run(enum moe_ffn_act act, int skew, struct thr_out *o)
{
    const int sw = act == MOE_FFN_SWIGLU;
    int32_t *idx = malloc(TT * TS * sizeof *idx);
    float *prio = malloc(TT * TS * sizeof *prio), *gate = malloc(TT * TS * sizeof *gate);
    float *x = malloc(TT * TD * sizeof *x), *dout = malloc(TT * TD * sizeof *dout);
    float *w1 = malloc(TE * TF * TD * sizeof *w1), *w3 = malloc(TE * TF * TD * sizeof *w3);
    float *w2 = malloc(TE * TD * TF * sizeof *w2);
    random_route(idx, prio, TT, TS, TE, 1, 0.1f, 0, 7000);
    for (size_t i = 0; i < TT * TS; i++) // expert 3 gets nothing: an empty block among busy ones
        if (idx[i] == 3)
            idx[i] = -1;
    if (skew) // expert 0 takes about half the tokens: a block too big for one thread (auto: every thread in its GEMMs)
        for (size_t t = 0; t < TT; t += 2)
            if (idx[t * TS + 1] != 0)
                idx[t * TS] = 0;
    fill_u(gate, TT * TS, 7001, 0.05f, 1.0f);
    fill_u(x, TT * TD, 7002, -1.0f, 1.0f);
    fill_u(dout, TT * TD, 7003, -1.0f, 1.0f);
    fill_u(w1, TE * TF * TD, 7004, -0.125f, 0.125f);
    fill_u(w3, TE * TF * TD, 7005, -0.125f, 0.125f);
    fill_u(w2, TE * TD * TF, 7006, -0.09f, 0.09f);
    struct moe_dispatch d;
    struct moe_experts_buf buf;
    struct moe_err err;
    ck_assert_int_eq(moe_dispatch_alloc(&d, TT, TS, TE, &err), 0);
    ck_assert_int_eq(moe_experts_buf_alloc(&buf, TT * TS, TD, TF, sw, &err), 0);
    moe_dispatch_plan(&d, idx, prio, TT, moe_capacity(skew ? 4.0 : 1.0, TT, TS, TE), MOE_DROP_ORDER);
    if (skew)
        ck_assert_uint_gt((d.offset[1] - d.offset[0]) * 4, d.n_rows); // more than 1/(2 threads) of the rows
    ck_assert_uint_eq(d.offset[4] - d.offset[3], 0);
    ck_assert_uint_ge(d.n_rows * TF, 1u << 15); // the activations' parallel threshold
    memset(o->out, 0, TT * TD * sizeof(float));
    memset(o->dx, 0, TT * TD * sizeof(float));
    memset(o->dgate, 0, TT * TS * sizeof(float));
    // the weight gradients written (beta 0) over NaN: a missed block stays NaN, and
    // the empty expert 3 must come out zero
    for (size_t i = 0; i < TE * TF * TD; i++)
        o->dw1[i] = o->dw3[i] = o->dw2[i] = NAN;
    moe_experts_forward(o->out, x, gate, &d, w1, sw ? w3 : NULL, w2, &buf, act);
    moe_experts_backward(o->dx, o->dgate, o->dw1, sw ? o->dw3 : NULL, o->dw2, dout, x, gate, &d, w1, sw ? w3 : NULL,
                         w2, &buf, act, 0.0f);
    for (size_t i = 0; i < TE * TF * TD; i++) {
        ck_assert(isfinite(o->dw1[i]) && isfinite(o->dw2[i]));
        ck_assert(!sw || isfinite(o->dw3[i]));
    }
    for (size_t i = 3 * TF * TD; i < 4 * TF * TD; i++) {
        ck_assert_float_eq(o->dw1[i], 0.0f);
        ck_assert_float_eq(o->dw2[i], 0.0f);
        if (sw)
            ck_assert_float_eq(o->dw3[i], 0.0f);
    }
    if (!sw)
        memset(o->dw3, 0, TE * TF * TD * sizeof(float)); // not computed
    moe_experts_buf_release(&buf);
    moe_dispatch_release(&d);
    free(idx), free(prio), free(gate), free(x), free(dout), free(w1), free(w3), free(w2);
}

static void thr_alloc(struct thr_out *o)
{
    o->out = malloc(TT * TD * sizeof(float));
    o->dx = malloc(TT * TD * sizeof(float));
    o->dgate = malloc(TT * TS * sizeof(float));
    o->dw1 = malloc(TE * TF * TD * sizeof(float));
    o->dw3 = malloc(TE * TF * TD * sizeof(float));
    o->dw2 = malloc(TE * TD * TF * sizeof(float));
}

static void thr_free(struct thr_out *o) { free(o->out), free(o->dx), free(o->dgate), free(o->dw1), free(o->dw3), free(o->dw2); }

// One thread and two give the same bytes, with two threads splitting each
// expert's GEMMs and with two threads taking whole experts (what auto picks for
// these 6 busy experts of about 100 rows each); and with expert 0 taking about
// half the rows, which auto runs with both threads in its GEMMs before handing
// out the others.
START_TEST(test_experts_threads_identical)
{
    struct moe_err err;
    static const enum moe_experts_par modes[] = { MOE_EXPERTS_PAR_AUTO, MOE_EXPERTS_PAR_GEMM,
                                                  MOE_EXPERTS_PAR_EXPERTS };
    for (int a = 0; a < 6; a++) {
        int skew = a >= 3;
        for (size_t m = 0; m < sizeof modes / sizeof *modes; m++) {
            struct thr_out o1, o2;
            thr_alloc(&o1);
            thr_alloc(&o2);
            ck_assert_int_eq(moe_blas_init(1, &err), 0);
            thr_run((enum moe_ffn_act)(a % 3), skew, &o1);
            ck_assert_int_eq(moe_blas_init(2, &err), 0);
            moe_experts_set_parallel(modes[m]);
            thr_run((enum moe_ffn_act)(a % 3), skew, &o2);
            moe_experts_set_parallel(MOE_EXPERTS_PAR_AUTO);
            ck_assert_int_eq(moe_blas_init(1, &err), 0);
            ck_assert_double_gt(max_abs(o1.out, TT * TD), 0.01);
            ck_assert_double_gt(max_abs(o1.dw1, TE * TF * TD), 0.01);
            ck_assert_mem_eq(o1.out, o2.out, TT * TD * sizeof(float));
            ck_assert_mem_eq(o1.dx, o2.dx, TT * TD * sizeof(float));
            ck_assert_mem_eq(o1.dgate, o2.dgate, TT * TS * sizeof(float));
            ck_assert_mem_eq(o1.dw1, o2.dw1, TE * TF * TD * sizeof(float));
            ck_assert_mem_eq(o1.dw3, o2.dw3, TE * TF * TD * sizeof(float));
            ck_assert_mem_eq(o1.dw2, o2.dw2, TE * TD * TF * sizeof(float));
            thr_free(&o1);
            thr_free(&o2);
        }
    }
}
END_TEST

int main(void)
{
    if (moe_test_init_blas(1))
        return 1;
    Suite *s = suite_create("dispatch");
    TCase *tc = tcase_create("dispatch");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_names);
    tcase_add_test(tc, test_capacity);
    tcase_add_test(tc, test_plan_hand_order);
    tcase_add_test(tc, test_plan_hand_prob);
    tcase_add_test(tc, test_plan_random);
    tcase_add_test(tc, test_alloc);
    tcase_add_test(tc, test_experts_forward_vs_ref);
    tcase_add_test(tc, test_ffn_grad);
    tcase_add_test(tc, test_experts_grad);
    tcase_add_test(tc, test_experts_threads_identical);
    suite_add_tcase(s, tc);
    int rc = moe_test_run(s);
    if (getenv("MOE_GRAD_VERBOSE")) // only meaningful when the tests ran in this process (CK_FORK=no)
        printf("worst FD |a - n| / max(1, |n|) = %.3g (tolerance %.1g); worst fast-vs-naive = %.3g (tolerance %.0e)\n",
               grad_worst, GRAD_TOL, worst_ref, REF_TOL);
    return rc;
}
