// dispatch.c: capacity, the dispatch plan (which (token, slot) assignments each
// expert keeps, and where its rows go) and its naive twin (see dispatch.h).
// Not here: routing (router.c), the expert FFNs and the combine (experts.c).
//
// T = tokens, S = slots per token, E = n_expert, N = kept rows (<= T*S).
//
// The plan is two passes over the T*S slots plus, for MOE_DROP_PROB, one sort
// of each slot's tokens: O(T*S log T). Pass 1 walks the assignments in the
// keep order and fills each expert up to `cap`; pass 2 walks (token, slot) in
// token-major order and hands out rows, so every expert block comes out sorted
// by (token, slot) without a sort. Everything is a pure function of (idx,
// prio, T, cap, policy): no threads, no allocation outside moe_dispatch_alloc.
#include "moe/dispatch.h"

#include <assert.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "core/params.h"

static const char *const policy_names[] = { "order", "probability" };

int moe_drop_policy_from_name(const char *name)
{
    for (int i = 0; i < 2; i++)
        if (strcmp(name, policy_names[i]) == 0)
            return i;
    return -1;
}

const char *moe_drop_policy_name(enum moe_drop_policy p) { return policy_names[p]; }

// reference: Lepikhin et al. 2020, "GShard" (capacity per expert, k multiplies
// in); Fedus, Zoph & Shazeer 2021, "Switch Transformer" (capacity factor).
size_t moe_capacity(double capacity_factor, size_t T, size_t S, size_t E)
{
    assert(E > 0);
    if (capacity_factor <= 0.0) // dropless: a token sends at most one slot to an expert
        return T > 0 ? T : 1;
    // The product is formed in double, so a factor that is not a binary fraction
    // lands a few ulps above an integer it means exactly: 1.1 * 100 / 10 is
    // 11.000000000000002, whose ceil would be 12. Shrinking by a relative 1e-12
    // (far above double rounding, far below 1 / (S*T) for any real batch)
    // rounds those back down and changes nothing else.
    double x = capacity_factor * (double)S * (double)T / (double)E;
    double c = ceil(x * (1.0 - 1e-12));
    if (c < 1.0)
        return 1;
    if (c >= (double)SIZE_MAX)
        return SIZE_MAX;
    return (size_t)c;
}

int moe_dispatch_declare(struct moe_dispatch *d, struct moe_plan *p, const char *prefix, struct moe_dim T,
                         struct moe_dim S, struct moe_dim E)
{
    d->S = S.v;
    d->E = E.v;
    // rows are int32 indices: T * S must stay below 2^31
    size_t n;
    if (moe_plan_product(p, &n, MOE_DIMS(T, S)))
        return p->rc;
    if (n > (size_t)INT32_MAX)
        return moe_plan_fail(p, MOE_EINVAL,
                             "%s x %s = %zu x %zu dispatch rows per batch, more than the %d that 32-bit row indices hold",
                             T.key, S.key, T.v, S.v, INT32_MAX);
    int shared = E.key && strcmp(E.key, "model.n_expert_shared") == 0;
    struct moe_dim E1 = { E.v + 1, shared ? "model.n_expert_shared + 1" : "model.n_expert + 1" };
    // the plan is read again by the backward pass; order, key, fill only while building it
    moe_plan_buf(p, &d->offset, MOE_ROLE_ACT, MOE_DT_SIZE, MOE_DIMS(E1), "%s.offset", prefix);
    int32_t **rows[] = { &d->row_tok, &d->row_slot, &d->slot_row };
    const char *rn[] = { "row_tok", "row_slot", "slot_row" };
    for (int i = 0; i < 3; i++)
        moe_plan_buf(p, rows[i], MOE_ROLE_ACT, MOE_DT_I32, MOE_DIMS(T, S), "%s.%s", prefix, rn[i]);
    moe_plan_buf(p, &d->order, MOE_ROLE_SCRATCH, MOE_DT_I32, MOE_DIMS(T, S), "%s.order", prefix);
    moe_plan_buf(p, &d->key, MOE_ROLE_SCRATCH, MOE_DT_F32, MOE_DIMS(T, S), "%s.key", prefix);
    moe_plan_buf(p, &d->routed, MOE_ROLE_ACT, MOE_DT_SIZE, MOE_DIMS(E), "%s.routed", prefix);
    moe_plan_buf(p, &d->dropped, MOE_ROLE_ACT, MOE_DT_SIZE, MOE_DIMS(E), "%s.dropped", prefix);
    return moe_plan_buf(p, &d->fill, MOE_ROLE_SCRATCH, MOE_DT_SIZE, MOE_DIMS(E), "%s.fill", prefix);
}

struct dispatch_args {
    struct moe_dispatch *d;
    size_t T, S, E;
};

static int dispatch_declare(void *arg, struct moe_plan *p)
{
    struct dispatch_args *a = arg;
    return moe_dispatch_declare(a->d, p, "plan", (struct moe_dim){ a->T, "tokens" },
                                (struct moe_dim){ a->S, "slots" }, (struct moe_dim){ a->E, "experts" });
}

int moe_dispatch_alloc(struct moe_dispatch *d, size_t T_max, size_t S, size_t E, struct moe_err *err)
{
    memset(d, 0, sizeof *d);
    if (S == 0 || E == 0)
        return moe_error(err, MOE_EINVAL, "dispatch needs at least one slot and one expert (S = %zu, E = %zu)", S, E);
    struct dispatch_args a = { d, T_max, S, E };
    return moe_plan_standalone(&d->own, dispatch_declare, &a, err);
}

void moe_dispatch_release(struct moe_dispatch *d)
{
    if (!d)
        return;
    moe_plan_free(d->own);
    memset(d, 0, sizeof *d);
}

// A priority as the keep order compares it: a NaN (a router that overflowed)
// counts as -infinity, so the order stays total and the trainer, not the
// plan, reports the divergence. The device's keep order
// (cuda/kernels/dispatch.h, moe_k_prob_before and moe_k_prob_key) is the same.
static float prob_key(float p) { return isnan(p) ? -INFINITY : p; }

// MOE_DROP_PROB order within one slot: token a comes before token b when its
// key (prob_key) is higher, ties to the lower token. A total order (tokens differ).
static int prob_before(const float *key, int32_t a, int32_t b)
{
    return key[a] > key[b] || (key[a] == key[b] && a < b);
}

static void sift_down(int32_t *v, size_t root, size_t n, const float *key)
{
    for (;;) {
        size_t c = 2 * root + 1;
        if (c >= n)
            return;
        // max-heap on "comes later", so the sorted array runs earliest first
        if (c + 1 < n && prob_before(key, v[c], v[c + 1]))
            c++;
        if (!prob_before(key, v[root], v[c]))
            return;
        int32_t tmp = v[root];
        v[root] = v[c];
        v[c] = tmp;
        root = c;
    }
}

// Heapsort: in place (the plan may not allocate) and O(n log n); stability is
// not needed because prob_before is a total order.
static void sort_prob(int32_t *v, size_t n, const float *key)
{
    for (size_t i = n / 2; i-- > 0;)
        sift_down(v, i, n, key);
    for (size_t end = n; end-- > 1;) {
        int32_t tmp = v[0];
        v[0] = v[end];
        v[end] = tmp;
        sift_down(v, 0, end, key);
    }
}

// One assignment in keep order: expert e keeps it while it has room.
// slot_row is used as a kept mark here (0 kept, -1 not); pass 2 writes rows.
static void offer(struct moe_dispatch *d, const int32_t *idx, size_t t, size_t s, size_t cap)
{
    size_t i = t * d->S + s;
    int32_t e = idx[i];
    assert(e < (int32_t)d->E);
    d->routed[e]++;
    if (d->fill[e] < cap) {
        d->fill[e]++;
        d->slot_row[i] = 0;
    } else {
        d->dropped[e]++;
    }
}

// reference: Lepikhin et al. 2020, "GShard" (first choices placed before
// second choices); Riquelme et al. 2021, "Scaling vision with sparse mixture
// of experts" (batch prioritized routing: within a slot, by router probability).
void moe_dispatch_plan(struct moe_dispatch *d, const int32_t *idx, const float *prio, size_t T, size_t cap,
                       enum moe_drop_policy policy)
{
    const size_t S = d->S, E = d->E;
    assert(policy == MOE_DROP_ORDER || prio);
    d->T = T;
    d->cap = cap;
    d->n_dropped = 0;
    memset(d->routed, 0, E * sizeof *d->routed);
    memset(d->dropped, 0, E * sizeof *d->dropped);
    memset(d->fill, 0, E * sizeof *d->fill);
    for (size_t i = 0; i < T * S; i++)
        d->slot_row[i] = -1;

    // pass 1: keep the first `cap` assignments of each expert, slot-major
    for (size_t s = 0; s < S; s++) {
        if (policy == MOE_DROP_ORDER) {
            for (size_t t = 0; t < T; t++)
                if (idx[t * S + s] >= 0)
                    offer(d, idx, t, s, cap);
            continue;
        }
        size_t m = 0;
        for (size_t t = 0; t < T; t++) {
            d->key[t] = prob_key(prio[t * S + s]);
            if (idx[t * S + s] >= 0)
                d->order[m++] = (int32_t)t;
        }
        sort_prob(d->order, m, d->key);
        for (size_t j = 0; j < m; j++)
            offer(d, idx, (size_t)d->order[j], s, cap);
    }

    // pass 2: per-expert blocks; fill[e] now counts e's kept rows, reuse it as the cursor
    d->offset[0] = 0;
    for (size_t e = 0; e < E; e++) {
        d->offset[e + 1] = d->offset[e] + d->fill[e];
        d->fill[e] = d->offset[e];
        d->n_dropped += d->dropped[e];
    }
    d->n_rows = d->offset[E];
    for (size_t t = 0; t < T; t++) {
        for (size_t s = 0; s < S; s++) {
            size_t i = t * S + s;
            if (d->slot_row[i] < 0)
                continue;
            size_t r = d->fill[idx[i]]++;
            d->row_tok[r] = (int32_t)t;
            d->row_slot[r] = (int32_t)s;
            d->slot_row[i] = (int32_t)r;
        }
    }
}

size_t moe_dispatch_kept_ref(uint8_t *kept, const int32_t *idx, const float *prio, size_t T, size_t S, size_t E,
                             size_t cap, enum moe_drop_policy policy)
{
    (void)E;
    size_t n_dropped = 0;
    for (size_t t = 0; t < T; t++) {
        for (size_t s = 0; s < S; s++) {
            size_t i = t * S + s;
            kept[i] = 0;
            if (idx[i] < 0)
                continue;
            // assignments to the same expert that come earlier in the keep order
            size_t earlier = 0;
            for (size_t t2 = 0; t2 < T; t2++) {
                for (size_t s2 = 0; s2 < S; s2++) {
                    size_t j = t2 * S + s2;
                    if (idx[j] != idx[i] || j == i)
                        continue;
                    int before;
                    if (s2 != s)
                        before = s2 < s;
                    else if (policy == MOE_DROP_ORDER)
                        before = t2 < t;
                    else
                        before = prob_key(prio[j]) > prob_key(prio[i]) ||
                                 (prob_key(prio[j]) == prob_key(prio[i]) && t2 < t);
                    earlier += (size_t)before;
                }
            }
            if (earlier < cap)
                kept[i] = 1;
            else
                n_dropped++;
        }
    }
    return n_dropped;
}
