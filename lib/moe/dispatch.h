// dispatch.h: capacity, dispatch and combine for sparse MoE layers.
// The router gives every token S slots (expert idx, gate, priority). A plan
// decides which (token, slot) pairs each expert keeps within its capacity and
// lays the kept rows out in contiguous per-expert blocks, so each expert is one
// GEMM over its block (experts.h). Not here: routing (router.h), the FFN math.
//
// T = tokens, S = slots per token, E = n_expert, N = dispatched rows (<= T*S).
//
// Capacity (one formula for every router, docs/routing.md):
//     capacity = ceil(capacity_factor * S * T / E), at least 1,
// i.e. k multiplies in (GShard, fairseq). Expert choice is balanced by
// construction and is always planned dropless. capacity_factor <= 0 means dropless (capacity = T, nothing is
// ever dropped, since a token sends at most one slot to an expert).
//
// Which assignments an expert keeps when more than `capacity` want it:
//   MOE_DROP_ORDER (default): slot-major, then token order: every token's slot 0
//     (first choice) comes before any slot 1, and so on (GShard); within a slot,
//     lower token index first (Switch).
//   MOE_DROP_PROB: slot-major, then by decreasing priority (the router
//     probability of that choice), ties to the lower token index (batch
//     prioritized routing, Riquelme et al. 2021).
// An expert keeps the first `capacity` assignments in that order; the rest are
// dropped (their combine weight is lost: the residual carries the token).
// Inside an expert's block, kept rows are ordered by (token, slot).
#ifndef MOE_DISPATCH_H
#define MOE_DISPATCH_H

#include <stddef.h>
#include <stdint.h>

#include "core/plan.h"
#include "core/status.h"

enum moe_drop_policy { MOE_DROP_ORDER = 0, MOE_DROP_PROB = 1 };
// "order", "probability"
int moe_drop_policy_from_name(const char *name); // -1 when unknown
const char *moe_drop_policy_name(enum moe_drop_policy p);

size_t moe_capacity(double capacity_factor, size_t T, size_t S, size_t E);

struct moe_dispatch {
    size_t T, S, E, cap;
    size_t n_rows;      // kept rows, = offset[E]
    size_t *offset;     // (E + 1) first row of each expert's block
    int32_t *row_tok;   // (T*S) token of each kept row
    int32_t *row_slot;  // (T*S) slot of each kept row
    int32_t *slot_row;  // (T*S) kept row of slot (t, s); -1 if idx = -1 or dropped
    size_t *routed;     // (E) assignments that wanted e (idx = e), before capacity
    size_t *dropped;    // (E) of those, dropped for capacity
    size_t n_dropped;   // sum of dropped
    // scratch for the plan (private)
    int32_t *order;     // (T*S)
    float *key;         // (T*S)
    size_t *fill;       // (E)
    struct moe_plan *own; // the buffers of moe_dispatch_alloc; NULL when they belong to a model's plan
};
// Declare the buffers for T.v tokens of S.v slots over E.v experts in p, named
// prefix.*; refuses T * S past 32-bit row indices, naming the keys. Returns p->rc.
int moe_dispatch_declare(struct moe_dispatch *d, struct moe_plan *p, const char *prefix, struct moe_dim T,
                         struct moe_dim S, struct moe_dim E);
// The same buffers allocated on their own (tests, benchmarks); moe_dispatch_release frees them.
int moe_dispatch_alloc(struct moe_dispatch *d, size_t T_max, size_t S, size_t E, struct moe_err *err);
void moe_dispatch_release(struct moe_dispatch *d);

// Build the plan for T tokens: idx, prio (T, S) from the router (idx = -1: no
// dispatch for that slot). Fills every field above.
void moe_dispatch_plan(struct moe_dispatch *d, const int32_t *idx, const float *prio, size_t T, size_t cap,
                       enum moe_drop_policy policy);

// Naive twin for tests: kept[t*S + s] = 1 if slot (t, s) survives capacity, else 0,
// computed straight from the rule above (for each assignment, count the
// assignments to the same expert that come earlier in the order).
// Returns the number dropped.
size_t moe_dispatch_kept_ref(uint8_t *kept, const int32_t *idx, const float *prio, size_t T, size_t S, size_t E,
                             size_t cap, enum moe_drop_policy policy);

#endif
