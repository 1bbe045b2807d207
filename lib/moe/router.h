// router.h: the routers (gates) of sparse MoE layers. A router turns router
// logits z = x.Wg^T into, for every token, S slots of (expert, gate weight),
// and keeps what the auxiliary losses and routing statistics need (p, lse,
// noise). The layer owns the router input and weights: it computes z (and the
// noise logits u for noisy top-k) with a linear layer, calls
// moe_router_forward, and later turns dz, du back into weight gradients.
// Not here: capacity and dropping (dispatch.h), auxiliary losses (aux_loss.h).
//
// T = tokens, E = n_expert (routed experts), K = n_expert_used, S = slots per
// token (K, or E for expert choice).
//
// Conventions, one per router (docs/routing.md):
//   SOFTMAX      top-K of p = softmax(z); gate = softmax over the K chosen logits,
//                i.e. the renormalised top-K of p (Mixtral). K = E is the dense
//                softmax gate. With bias balancing, selection is top-K of p + bias.
//   NOISY_TOPK   Shazeer et al. 2017: h = z + eps * softplus(u), eps ~ N(0,1) in
//                training only (h = z in evaluation); top-K of h; gate = softmax
//                over the K chosen h.
//   SWITCH       Fedus et al. 2021, K = 1: the expert of largest p; gate = its raw
//                probability p (not renormalised). Input jitter is the layer's
//                job (it multiplies the router input). Bias balancing as for
//                SOFTMAX.
//   GSHARD       Lepikhin et al. 2020, K = 2: top-2 of p, gates g1, g2
//                renormalised by g1 + g2. The second expert is dispatched always
//                (policy ALL) or only if 2 * g2 > U(0,1) (policy RANDOM, training
//                only; evaluation dispatches both). A skipped second slot has
//                idx = -1 and gate 0, and g1 keeps its renormalised value.
//   HASH         Roller et al. 2021: expert = table[key], gate 1, K = 1, no
//                gradient. The layer computes the expert per token (hash_expert).
//   EXPERT_CHOICE Zhou et al. 2022: p = softmax(z) over experts per token; each
//                expert takes its C = min(T, ceil(ec_factor * T / E)) tokens of
//                largest p[t, e] (ties to the lower token index); S = E slots,
//                slot e of token t is expert e if e took t, else -1; gate =
//                p[t, e]. Every expert gets exactly C tokens.
//                In evaluation, ec_eval may replace the whole-batch selection by
//                one that never looks at later positions of a sequence (tokens
//                t = w * seq + s, w the sequence, s the position; seq = 0 or 1:
//                every token is its own sequence):
//                  FULL      the training rule over the whole pass (leaks the
//                            future in a causal LM);
//                  PREFIX    token (w, s) is taken by expert e iff it is among
//                            e's min(n, ceil(ec_factor n / E)) best tokens of the
//                            n = B (s + 1) tokens at positions <= s of all B
//                            sequences (the selection an autoregressive decoder
//                            running the batch in step could make at step s);
//                  POSITION  the same over the B tokens at position s only
//                            (Zhou et al.'s grouping of one sequence's tokens
//                            into separate groups);
//                  TOPK      token choice on the same p: top-k, k = ec_factor
//                            rounded (at least 1, at most E), gate p[t, e], no
//                            capacity. Slots by rank, the unused ones -1.
//                Ties as above (larger p, then the lower token index).
//   DEEPSEEK     Dai et al. 2024 (DeepSeekMoE): top-K of p, any K <= E; gate =
//                the raw probability p of each chosen expert, not renormalised
//                (a token's gates sum to at most 1). At K = 1
//                it is SWITCH. Bias balancing as for SOFTMAX.
//   Top-K selection everywhere: largest first, ties to the lower expert index.
//   Slots are ordered by rank: slot 0 holds the first choice.
#ifndef MOE_ROUTER_H
#define MOE_ROUTER_H

#include <stddef.h>
#include <stdint.h>

#include "core/rng.h"
#include "core/plan.h"
#include "core/status.h"

enum moe_router_type {
    MOE_ROUTER_SOFTMAX = 0,
    MOE_ROUTER_NOISY_TOPK = 1,
    MOE_ROUTER_SWITCH = 2,
    MOE_ROUTER_GSHARD = 3,
    MOE_ROUTER_HASH = 4,
    MOE_ROUTER_EXPERT_CHOICE = 5,
    MOE_ROUTER_DEEPSEEK = 6,
};
// Expert choice in evaluation (moe.ec_eval; EXPERT_CHOICE above).
enum moe_ec_eval { MOE_EC_EVAL_FULL = 0, MOE_EC_EVAL_PREFIX = 1, MOE_EC_EVAL_POSITION = 2, MOE_EC_EVAL_TOPK = 3 };
#define MOE_EC_EVAL_CHOICES "full|prefix|position|topk"
int moe_ec_eval_from_name(const char *name); // -1 when unknown

// The config's names, in enum order (the moe.router key's choices).
#define MOE_ROUTER_CHOICES "softmax|noisy-topk|switch|gshard|hash|expert-choice|deepseek"
int moe_router_from_name(const char *name); // -1 when unknown
const char *moe_router_name(enum moe_router_type t);

// What the layers above need to know of a router, one row per router in
// router.c. Model constructors, the memory estimate and the CLI ask this table
// instead of testing router types, so that a new router is its code, one row
// here and its docs and tests.
struct moe_router_info {
    const char *name;
    int gate_weights;     // a learned gate router.weight (E, D); hash has none
    int noise_weights;    // router.noise_weight (E, D) and the noise buffers u, eps, h (noisy top-k)
    int zero_init;        // the gate weights start at zero (Shazeer et al. 2017), not small random values
    int probs;            // router probabilities p exist, so the z-loss and routing entropy apply
    int balancing_loss;   // takes a balancing auxiliary loss (moe.aux_loss); moe.aux_loss is ignored otherwise
    int bias_balance;     // supports DeepSeek-V3 bias balancing (moe.bias_balance)
    int quota;            // experts choose tokens: S = E slots, each expert takes moe_router_quota tokens,
                          // and the capacity factor does not apply
    int token_table;      // routes by a table of token keys (moe.hash_vocab entries) fitted to the data
    size_t fixed_k;       // the experts per token the router requires (0: any K <= E)
    const char *k_rule;   // what the router says of K, for the message when K != fixed_k
    enum moe_rng_purpose rng; // the purpose of the router's random draws (noise, GShard's second expert)
};
const struct moe_router_info *moe_router_info(enum moe_router_type t);
size_t moe_router_count(void); // rows of the table: the types are 0 .. count - 1

enum moe_second_policy { MOE_SECOND_ALL = 0, MOE_SECOND_RANDOM = 1 };

struct moe_router_cfg {
    enum moe_router_type type;
    size_t E;                      // routed experts
    size_t K;                      // experts per token (ignored by EXPERT_CHOICE; 1 for HASH and SWITCH; 2 for GSHARD)
    enum moe_second_policy second; // GSHARD only
    double ec_factor;              // EXPERT_CHOICE only: tokens per expert = ceil(ec_factor * T / E)
    int bias_balance;              // SOFTMAX, SWITCH, DEEPSEEK: select on p + bias (DeepSeek-V3)
    enum moe_ec_eval ec_eval;      // EXPERT_CHOICE only: the selection in evaluation (FULL: as in training)
    size_t seq;                    // tokens per sequence, consecutive (transformer: n_ctx); 0 = independent tokens
};

// Slots per token: E for EXPERT_CHOICE, the fixed K of HASH, SWITCH and GSHARD, else K.
size_t moe_router_slots(const struct moe_router_cfg *c);
// Expert choice's tokens per expert for a batch of T tokens:
// C = min(T, ceil(ec_factor * T / E)) (0 for the other routers).
size_t moe_router_quota(const struct moe_router_cfg *c, size_t T);
// Rows the expert buffers must hold for a batch of up to T tokens: T * S, or
// for expert choice at most E quotas (never more than T * E; T * E when
// ec_eval is not FULL: a causal-safe evaluation may give an expert more rows
// than its training quota). SIZE_MAX when T * S overflows size_t.
size_t moe_router_rows(const struct moe_router_cfg *c, size_t T);
// Experts a token runs through on average: K, 1 for HASH and SWITCH, ec_factor for
// EXPERT_CHOICE; at most E. The active-parameter and FLOP counts use it.
double moe_router_experts_per_token(const struct moe_router_cfg *c);

// Per-batch routing state, sized for up to T_max tokens (moe_route_alloc).
struct moe_route {
    size_t T, E, S;  // tokens in the current batch, experts, slots per token
    float *z;        // (T, E) clean router logits (filled by the layer)
    float *p;        // (T, E) softmax(z)
    float *lse;      // (T) logsumexp_e z[t, e]
    float *u;        // (T, E) noise logits x.Wnoise^T (filled by the layer), NOISY_TOPK only, else NULL
    float *eps;      // (T, E) the N(0,1) draws (0 in evaluation), NOISY_TOPK only
    float *h;        // (T, E) noisy logits z + eps * softplus(u), NOISY_TOPK only
    int32_t *sel;    // (T, S) selected expert per slot, -1 = slot unused (expert choice)
    int32_t *idx;    // (T, S) expert to dispatch to: sel, or -1 where GShard's random policy skipped it
    float *gate;     // (T, S) combine weight of the slot (0 where idx = -1)
    float *prio;     // (T, S) priority for dropping by probability: p[t, sel] (1 for HASH)
    struct moe_plan *own; // the buffers of moe_route_alloc; NULL when they belong to a model's plan
};
// Declare the buffers for T.v tokens of E.v experts and S.v slots (u, eps, h
// only when noisy) in p, named prefix.route.*; the dimensions carry the keys
// that set them. Returns p->rc.
int moe_route_declare(struct moe_route *r, struct moe_plan *p, const char *prefix, struct moe_dim T,
                      struct moe_dim E, struct moe_dim S, int noisy);
// The same buffers allocated on their own (tests, benchmarks); moe_route_release frees them.
int moe_route_alloc(struct moe_route *r, size_t T_max, size_t E, size_t S, int noisy, struct moe_err *err);
void moe_route_release(struct moe_route *r);

// Route T tokens. The caller has filled r->z (and r->u for NOISY_TOPK).
// bias (E) or NULL: selection offsets (used only with c->bias_balance).
// hash_expert (T): the expert of each token, HASH only (else NULL).
// train: noise and GShard's random policy are on only in training; expert
// choice's ec_eval applies only when train is 0.
// rng, rng_base: NOISY_TOPK draws eps[t, e] = normal(rng, rng_base + t*E + e);
// GSHARD RANDOM draws U for token t = uniform(rng, rng_base + t). The layer
// picks rng (seed, purpose, stream = step) and rng_base (distinct per layer).
void moe_router_forward(struct moe_route *r, const struct moe_router_cfg *c, const float *bias,
                        const int32_t *hash_expert, int train, const struct moe_rng *rng, uint64_t rng_base,
                        size_t T);

// Backward with the selection held fixed: given dgate (T, S) = dL/dgate,
// add dL/dz into dz (T, E) and, for NOISY_TOPK, dL/du into du (T, E) (du may be
// NULL otherwise). HASH adds nothing.
//   SOFTMAX, GSHARD: gate = softmax over the selected logits (for GSHARD over
//     both selected experts even when the second was skipped), so
//     dz[j] += sum_k dgate[k] g[k] (delta(sel k, j) - g_j) for j selected.
//   NOISY_TOPK: the same over h, then dz += dh, du += dh * eps * sigmoid(u).
//   SWITCH, DEEPSEEK, EXPERT_CHOICE: gate = p[t, e], dz[j] += sum_s dgate[s] p_e (delta(e, j) - p_j).
void moe_router_backward(float *dz, float *du, const float *dgate, const struct moe_route *r,
                         const struct moe_router_cfg *c);

// DeepSeek-V3 auxiliary-loss-free balancing: with load_e the number of slots
// selecting e in this batch (r->sel) and mean_load = sum_e load_e / E,
// bias[e] += rate * sign(mean_load - load_e) (sign(0) = 0).
void moe_router_bias_update(float *bias, const struct moe_route *r, double rate);

// ---- hash routing tables (Roller et al. 2021) ----
// Random table: table[v] = below(rng(seed, MOE_RNG_INIT, stream = hash("hash_table")), v, E).
void moe_hash_table_random(int32_t *table, size_t V, size_t E, uint64_t seed);
// Balanced table (greedy): keys in order of decreasing freq (ties to the lower
// key), each assigned to the expert with the least total frequency so far
// (ties to the lower expert index). Keys with freq 0 (never seen) are dealt
// round-robin in increasing key order: the k-th goes to expert k mod E.
void moe_hash_table_balanced(int32_t *table, const uint64_t *freq, size_t V, size_t E);
// Key of an input row that has no token id: FNV-1a over the row's float bytes
// (D values, little-endian as stored), reduced mod V. Depends only on the
// values, so the same example always gets the same key.
uint32_t moe_hash_key_row(const float *x, size_t D, size_t V);

#endif
