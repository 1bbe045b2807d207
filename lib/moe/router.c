// router.c: the routers of sparse MoE layers (see router.h for the convention
// of each): top-K selection, gate values, noise, GShard's random second-expert
// policy, expert choice, their backward passes with the selection held fixed,
// bias balancing, and the hash routing tables.
// Not here: the router's linear layer (the layer computes z and u), capacity
// and dropping (dispatch.c), auxiliary losses (aux_loss.c).
// Only moe_route_alloc allocates; every other function works in the caller's
// buffers (expert choice uses r->idx as scratch before filling it).
//
// T = tokens, E = n_expert, K = n_expert_used, S = slots per token, V = vocabulary (hash keys).
#include "moe/router.h"

#include <assert.h>
#include <math.h>
#include <string.h>

#include "core/params.h"
#include "nn/nn.h"

// One row per router, in enum order (router.h, struct moe_router_info).
static const struct moe_router_info routers[] = {
    [MOE_ROUTER_SOFTMAX] = { .name = "softmax", .gate_weights = 1, .probs = 1, .balancing_loss = 1,
                             .bias_balance = 1, .rng = MOE_RNG_NOISE },
    [MOE_ROUTER_NOISY_TOPK] = { .name = "noisy-topk", .gate_weights = 1, .noise_weights = 1, .zero_init = 1,
                                .probs = 1, .balancing_loss = 1, .rng = MOE_RNG_NOISE },
    [MOE_ROUTER_SWITCH] = { .name = "switch", .gate_weights = 1, .probs = 1, .balancing_loss = 1,
                            .bias_balance = 1, .fixed_k = 1,
                            .k_rule = "is top-1 (top-k with the raw probabilities as gates is router 'deepseek')",
                            .rng = MOE_RNG_NOISE },
    [MOE_ROUTER_GSHARD] = { .name = "gshard", .gate_weights = 1, .probs = 1, .balancing_loss = 1, .fixed_k = 2,
                            .k_rule = "is top-2", .rng = MOE_RNG_DISPATCH },
    [MOE_ROUTER_HASH] = { .name = "hash", .token_table = 1, .fixed_k = 1, .k_rule = "sends each token to 1 expert",
                          .rng = MOE_RNG_NOISE },
    [MOE_ROUTER_EXPERT_CHOICE] = { .name = "expert-choice", .gate_weights = 1, .probs = 1, .quota = 1,
                                   .rng = MOE_RNG_NOISE },
    [MOE_ROUTER_DEEPSEEK] = { .name = "deepseek", .gate_weights = 1, .probs = 1, .balancing_loss = 1,
                              .bias_balance = 1, .rng = MOE_RNG_NOISE },
};
#define N_ROUTERS (sizeof routers / sizeof routers[0])

int moe_router_from_name(const char *name)
{
    for (size_t i = 0; i < N_ROUTERS; i++)
        if (strcmp(name, routers[i].name) == 0)
            return (int)i;
    return -1;
}

const char *moe_router_name(enum moe_router_type t) { return routers[t].name; }

int moe_ec_eval_from_name(const char *name)
{
    static const char *const names[] = { "full", "prefix", "position", "topk" };
    for (size_t i = 0; i < sizeof names / sizeof *names; i++)
        if (strcmp(name, names[i]) == 0)
            return (int)i;
    return -1;
}

size_t moe_router_count(void) { return N_ROUTERS; }

const struct moe_router_info *moe_router_info(enum moe_router_type t)
{
    assert((size_t)t < N_ROUTERS);
    return &routers[t];
}

// HASH, SWITCH and GSHARD fix their K (1, 1 and 2, router.h); a K set in the
// config for them is ignored rather than trusted.
size_t moe_router_slots(const struct moe_router_cfg *c)
{
    const struct moe_router_info *ri = moe_router_info(c->type);
    return ri->quota ? c->E : ri->fixed_k ? ri->fixed_k : c->K;
}

// Tokens per expert for expert choice: C = min(T, ceil(ec_factor * T / E)).
// The product is formed in double and shrunk by a relative 1e-12 before the
// ceiling, so that a quotient that is an integer in exact arithmetic but lands
// just above it in floating point (1.1 * 100 / 10 = 11.000000000000002) gives
// that integer (11), not the next one.
size_t moe_router_quota(const struct moe_router_cfg *c, size_t T)
{
    if (!moe_router_info(c->type)->quota)
        return 0;
    double x = c->ec_factor * (double)T / (double)c->E;
    double q = ceil(x * (1.0 - 1e-12));
    if (!(q > 0.0))
        return 0;
    return q >= (double)T ? T : (size_t)q;
}

size_t moe_router_rows(const struct moe_router_cfg *c, size_t T)
{
    size_t rows;
    if (__builtin_mul_overflow(T, moe_router_slots(c), &rows))
        return SIZE_MAX;
    if (moe_router_info(c->type)->quota && c->ec_eval == MOE_EC_EVAL_FULL) {
        size_t q = moe_router_quota(c, T) * c->E; // quota <= T and S = E: no overflow once T * S fits
        if (q < rows)
            rows = q;
    }
    return rows;
}

double moe_router_experts_per_token(const struct moe_router_cfg *c)
{
    const struct moe_router_info *ri = moe_router_info(c->type);
    double used = ri->quota ? c->ec_factor : ri->fixed_k ? (double)ri->fixed_k : (double)c->K;
    return used > (double)c->E ? (double)c->E : used;
}

// ---------------------------------------------------------------- buffers

int moe_route_declare(struct moe_route *r, struct moe_plan *p, const char *prefix, struct moe_dim T,
                      struct moe_dim E, struct moe_dim S, int noisy)
{
    r->E = E.v;
    r->S = S.v;
    // z, p, lse and the selection are read again by the backward pass
    float **te[] = { &r->z, &r->p, &r->u, &r->eps, &r->h };
    const char *ten[] = { "z", "p", "u", "eps", "h" };
    for (int i = 0; i < (noisy ? 5 : 2); i++)
        moe_plan_buf(p, te[i], MOE_ROLE_ACT, MOE_DT_F32, MOE_DIMS(T, E), "%s.route.%s", prefix, ten[i]);
    moe_plan_buf(p, &r->lse, MOE_ROLE_ACT, MOE_DT_F32, MOE_DIMS(T), "%s.route.lse", prefix);
    moe_plan_buf(p, &r->sel, MOE_ROLE_ACT, MOE_DT_I32, MOE_DIMS(T, S), "%s.route.sel", prefix);
    moe_plan_buf(p, &r->idx, MOE_ROLE_ACT, MOE_DT_I32, MOE_DIMS(T, S), "%s.route.idx", prefix);
    moe_plan_buf(p, &r->gate, MOE_ROLE_ACT, MOE_DT_F32, MOE_DIMS(T, S), "%s.route.gate", prefix);
    return moe_plan_buf(p, &r->prio, MOE_ROLE_ACT, MOE_DT_F32, MOE_DIMS(T, S), "%s.route.prio", prefix);
}

struct route_args {
    struct moe_route *r;
    size_t T, E, S;
    int noisy;
};

static int route_declare(void *arg, struct moe_plan *p)
{
    struct route_args *a = arg;
    return moe_route_declare(a->r, p, "route", (struct moe_dim){ a->T, "tokens" },
                             (struct moe_dim){ a->E, "experts" }, (struct moe_dim){ a->S, "slots" }, a->noisy);
}

int moe_route_alloc(struct moe_route *r, size_t T_max, size_t E, size_t S, int noisy, struct moe_err *err)
{
    memset(r, 0, sizeof *r);
    struct route_args a = { r, T_max, E, S, noisy };
    return moe_plan_standalone(&r->own, route_declare, &a, err);
}

void moe_route_release(struct moe_route *r)
{
    if (!r)
        return;
    moe_plan_free(r->own);
    memset(r, 0, sizeof *r);
}

// ---------------------------------------------------------------- helpers

static inline double softplus(double u) { return u > 20.0 ? u : log1p(exp(u)); }
static inline double sigmoid(double u) { return 1.0 / (1.0 + exp(-u)); }

static inline float sel_key(const float *v, const float *bias, size_t e) { return bias ? v[e] + bias[e] : v[e]; }

// Top-K of key(e) = v[e] (+ bias[e]) into sel[0..K), largest first, ties to the
// lower index. Insertion into the (sorted) output row itself: O(E) when the
// row is unordered, O(E*K) at worst, no scratch. Since e increases, a candidate
// equal to an entry already kept is worse than it (strict > below).
static void topk(int32_t *sel, const float *v, const float *bias, size_t E, size_t K)
{
    size_t n = 0;
    for (size_t e = 0; e < E; e++) {
        float k = sel_key(v, bias, e);
        if (n == K && !(k > sel_key(v, bias, (size_t)sel[K - 1])))
            continue;
        size_t j = n < K ? n++ : K - 1;
        while (j > 0 && k > sel_key(v, bias, (size_t)sel[j - 1])) {
            sel[j] = sel[j - 1];
            j--;
        }
        sel[j] = (int32_t)e;
    }
}

// Softmax over the selected logits v[sel[0..K)]: max and normaliser, in double.
static void sel_softmax_norm(const float *v, const int32_t *sel, size_t K, double *ret_m, double *ret_sum)
{
    double m = v[sel[0]];
    for (size_t k = 1; k < K; k++)
        m = v[sel[k]] > m ? v[sel[k]] : m;
    double s = 0.0;
    for (size_t k = 0; k < K; k++)
        s += exp(v[sel[k]] - m);
    *ret_m = m;
    *ret_sum = s;
}

// Is token a a better pick than token b for expert column p[., e]?  Larger p,
// ties to the lower token index.
static inline int ec_better(const float *p, size_t E, size_t e, int32_t a, int32_t b)
{
    float pa = p[(size_t)a * E + e], pb = p[(size_t)b * E + e];
    return pa > pb || (pa == pb && a < b);
}

// Min-heap (worst kept token at the root) of n token indices.
static void ec_sift_down(int32_t *heap, size_t n, size_t i, const float *p, size_t E, size_t e)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, w = i;
        if (l < n && ec_better(p, E, e, heap[w], heap[l]))
            w = l;
        if (r < n && ec_better(p, E, e, heap[w], heap[r]))
            w = r;
        if (w == i)
            return;
        int32_t tmp = heap[i];
        heap[i] = heap[w];
        heap[w] = tmp;
        i = w;
    }
}

static void ec_sift_up(int32_t *heap, size_t i, const float *p, size_t E, size_t e)
{
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!ec_better(p, E, e, heap[parent], heap[i]))
            return;
        int32_t tmp = heap[i];
        heap[i] = heap[parent];
        heap[parent] = tmp;
        i = parent;
    }
}

// reference: Zhou et al. 2022, "Mixture-of-Experts with Expert Choice Routing".
// Each expert keeps its C best tokens in a bounded heap (O(T log C) per expert),
// laid out in the first C entries of r->idx, which is filled properly afterwards.
static void route_expert_choice(struct moe_route *r, const struct moe_router_cfg *c, size_t T)
{
    size_t E = r->E;
    size_t C = moe_router_quota(c, T);
    int32_t *heap = r->idx;
    for (size_t i = 0; i < T * E; i++)
        r->sel[i] = -1;
    for (size_t e = 0; e < E && C > 0; e++) {
        size_t n = 0;
        for (size_t t = 0; t < T; t++) {
            if (n < C) {
                heap[n] = (int32_t)t;
                ec_sift_up(heap, n++, r->p, E, e);
            } else if (ec_better(r->p, E, e, (int32_t)t, heap[0])) {
                heap[0] = (int32_t)t;
                ec_sift_down(heap, n, 0, r->p, E, e);
            }
        }
        for (size_t i = 0; i < n; i++)
            r->sel[(size_t)heap[i] * E + e] = (int32_t)e;
    }
    for (size_t i = 0; i < T * E; i++) {
        int on = r->sel[i] >= 0;
        r->idx[i] = r->sel[i];
        r->gate[i] = on ? r->p[i] : 0.0f;
        r->prio[i] = on ? r->p[i] : 0.0f;
    }
}

// Causal-safe expert choice in evaluation (router.h, ec_eval PREFIX and
// POSITION). Sequences of L tokens, B = T / L of them. For each expert e and
// position s, the candidates are the tokens at positions lo(s) .. s of every
// sequence (lo = 0: PREFIX, lo = s: POSITION); e keeps its
// min(n, ceil(ec_factor n / E)) best of the n candidates in a heap (r->idx as
// scratch) and takes those of them at position s. A token at position s is
// kept iff it is the heap's worst or better than it. Cost per expert: PREFIX
// O(B L^2 log C), POSITION O(B L log C).
static void route_expert_choice_causal(struct moe_route *r, const struct moe_router_cfg *c, size_t T)
{
    size_t E = r->E, L = c->seq > 1 ? c->seq : 1;
    assert(T % L == 0);
    size_t B = T / L;
    int32_t *heap = r->idx;
    for (size_t i = 0; i < T * E; i++)
        r->sel[i] = -1;
    for (size_t e = 0; e < E; e++)
        for (size_t s = 0; s < L; s++) {
            size_t lo = c->ec_eval == MOE_EC_EVAL_PREFIX ? 0 : s;
            size_t C = moe_router_quota(c, B * (s - lo + 1)), n = 0;
            if (C == 0)
                continue;
            for (size_t w = 0; w < B; w++)
                for (size_t q = lo; q <= s; q++) {
                    int32_t t = (int32_t)(w * L + q);
                    if (n < C) {
                        heap[n] = t;
                        ec_sift_up(heap, n++, r->p, E, e);
                    } else if (ec_better(r->p, E, e, t, heap[0])) {
                        heap[0] = t;
                        ec_sift_down(heap, n, 0, r->p, E, e);
                    }
                }
            for (size_t w = 0; w < B; w++) {
                int32_t t = (int32_t)(w * L + s);
                if (t == heap[0] || ec_better(r->p, E, e, t, heap[0]))
                    r->sel[(size_t)t * E + e] = (int32_t)e;
            }
        }
    for (size_t i = 0; i < T * E; i++) {
        int on = r->sel[i] >= 0;
        r->idx[i] = r->sel[i];
        r->gate[i] = on ? r->p[i] : 0.0f;
        r->prio[i] = on ? r->p[i] : 0.0f;
    }
}

// Token choice on expert choice's probabilities (ec_eval TOPK): the k = round(ec_factor)
// (1 .. E) experts of largest p per token, gate p; slots k .. E - 1 unused.
static void route_expert_choice_topk(struct moe_route *r, const struct moe_router_cfg *c, size_t T)
{
    size_t E = r->E;
    double kf = floor(c->ec_factor + 0.5);
    size_t K = kf < 1.0 ? 1 : kf > (double)E ? E : (size_t)kf;
    for (size_t t = 0; t < T; t++) {
        int32_t *sel = r->sel + t * E, *idx = r->idx + t * E;
        float *gate = r->gate + t * E, *prio = r->prio + t * E;
        const float *pt = r->p + t * E;
        topk(sel, pt, NULL, E, K);
        for (size_t k = 0; k < E; k++) {
            if (k >= K)
                sel[k] = -1;
            idx[k] = sel[k];
            gate[k] = k < K ? pt[sel[k]] : 0.0f;
            prio[k] = gate[k];
        }
    }
}

// ---------------------------------------------------------------- forward

void moe_router_forward(struct moe_route *r, const struct moe_router_cfg *c, const float *bias,
                        const int32_t *hash_expert, int train, const struct moe_rng *rng, uint64_t rng_base,
                        size_t T)
{
    size_t E = c->E, S = moe_router_slots(c);
    assert(r->E == E && r->S == S && S >= 1 && S <= E);
    r->T = T;
    const float *sel_bias = (c->bias_balance && moe_router_info(c->type)->bias_balance) ? bias : NULL;

    // reference: Roller et al. 2021, "Hash Layers For Large Sparse Models".
    // z is not read (the layer may not compute it); p and lse are zeroed.
    if (c->type == MOE_ROUTER_HASH) {
        assert(hash_expert);
        memset(r->p, 0, T * E * sizeof *r->p);
        memset(r->lse, 0, T * sizeof *r->lse);
        for (size_t t = 0; t < T; t++) {
            assert(hash_expert[t] >= 0 && (size_t)hash_expert[t] < E);
            r->sel[t] = r->idx[t] = hash_expert[t];
            r->gate[t] = 1.0f;
            r->prio[t] = 1.0f;
        }
        return;
    }

    moe_softmax_forward(r->p, r->lse, r->z, T, E);

    if (c->type == MOE_ROUTER_EXPERT_CHOICE) {
        if (train || c->ec_eval == MOE_EC_EVAL_FULL)
            route_expert_choice(r, c, T);
        else if (c->ec_eval == MOE_EC_EVAL_TOPK)
            route_expert_choice_topk(r, c, T);
        else
            route_expert_choice_causal(r, c, T);
        return;
    }

    // reference: Shazeer et al. 2017, "Outrageously Large Neural Networks: The
    // Sparsely-Gated Mixture-of-Experts Layer" (noisy top-k gating).
    if (c->type == MOE_ROUTER_NOISY_TOPK) {
        assert(r->u && r->eps && r->h);
        if (train) {
            assert(rng);
            for (size_t t = 0; t < T; t++)
                for (size_t e = 0; e < E; e++) {
                    size_t i = t * E + e;
                    r->eps[i] = moe_rng_normal(rng, rng_base + i);
                    r->h[i] = (float)(r->z[i] + r->eps[i] * softplus(r->u[i]));
                }
        } else {
            memset(r->eps, 0, T * E * sizeof *r->eps);
            memcpy(r->h, r->z, T * E * sizeof *r->h);
        }
    }

    for (size_t t = 0; t < T; t++) {
        const float *zt = r->z + t * E, *pt = r->p + t * E;
        int32_t *sel = r->sel + t * S, *idx = r->idx + t * S;
        float *gate = r->gate + t * S, *prio = r->prio + t * S;
        switch (c->type) {
        case MOE_ROUTER_SOFTMAX:
        case MOE_ROUTER_GSHARD:
        case MOE_ROUTER_NOISY_TOPK: {
            // reference (SOFTMAX): Jiang et al. 2024, "Mixtral of Experts" (softmax over
            // the top-K logits); K = E is the dense gate of Jacobs et al. 1991.
            // reference (GSHARD): Lepikhin et al. 2020, "GShard: Scaling Giant Models
            // with Conditional Computation and Automatic Sharding" (top-2 gating).
            const float *v = c->type == MOE_ROUTER_NOISY_TOPK ? r->h + t * E : zt;
            topk(sel, c->type == MOE_ROUTER_NOISY_TOPK ? v : pt, sel_bias, E, S);
            double m, sum;
            sel_softmax_norm(v, sel, S, &m, &sum);
            for (size_t k = 0; k < S; k++) {
                idx[k] = sel[k];
                gate[k] = (float)(exp(v[sel[k]] - m) / sum);
                prio[k] = pt[sel[k]];
            }
            // 2 * g2 > U with the renormalised g2 (GShard Algorithm 2); the
            // skipped slot keeps sel (the backward needs it) and g1 is unchanged.
            if (c->type == MOE_ROUTER_GSHARD && c->second == MOE_SECOND_RANDOM && train) {
                assert(rng);
                float U = moe_rng_uniform(rng, rng_base + t);
                if (!(2.0f * gate[1] > U)) {
                    idx[1] = -1;
                    gate[1] = 0.0f;
                }
            }
            break;
        }
        case MOE_ROUTER_SWITCH:
        case MOE_ROUTER_DEEPSEEK:
            // reference (SWITCH, S = 1): Fedus, Zoph & Shazeer 2021, "Switch
            // Transformers" (gate = raw p).
            // reference (DEEPSEEK): Dai et al. 2024, "DeepSeekMoE: Towards Ultimate
            // Expert Specialization in Mixture-of-Experts Language Models" (g_{i,t} =
            // s_{i,t} for the top-K s_{i,t} = softmax_i(u_t^T e_i), else 0).
            topk(sel, pt, sel_bias, E, S);
            for (size_t k = 0; k < S; k++) {
                idx[k] = sel[k];
                gate[k] = pt[sel[k]];
                prio[k] = pt[sel[k]];
            }
            break;
        default:
            assert(0 && "unreachable router type");
        }
    }
}

// ---------------------------------------------------------------- backward

void moe_router_backward(float *dz, float *du, const float *dgate, const struct moe_route *r,
                         const struct moe_router_cfg *c)
{
    size_t T = r->T, E = r->E, S = r->S;
    assert(S == moe_router_slots(c));
    if (c->type == MOE_ROUTER_HASH)
        return;
    int noisy = c->type == MOE_ROUTER_NOISY_TOPK;
    assert(!noisy || du);
    for (size_t t = 0; t < T; t++) {
        const int32_t *sel = r->sel + t * S, *idx = r->idx + t * S;
        const float *dg = dgate + t * S, *pt = r->p + t * E;
        float *dzt = dz + t * E;
        if (c->type == MOE_ROUTER_SWITCH || c->type == MOE_ROUTER_DEEPSEEK || c->type == MOE_ROUTER_EXPERT_CHOICE) {
            // gate_s = p_e: dz_j += sum_s dg_s p_e (delta(e, j) - p_j)
            //                    = [j chosen] dg_j' p_j - p_j * sum_s dg_s p_e
            double a = 0.0;
            for (size_t s = 0; s < S; s++) {
                if (idx[s] < 0)
                    continue;
                double w = (double)dg[s] * pt[idx[s]];
                dzt[idx[s]] += (float)w;
                a += w;
            }
            for (size_t j = 0; j < E; j++)
                dzt[j] -= (float)(a * pt[j]);
            continue;
        }
        // Softmax over the selected logits v (z, or h for noisy top-k). A slot
        // GShard skipped has gate 0 whatever z is, so only dispatched slots
        // carry dgate; its expert still enters every g through the normaliser.
        const float *v = noisy ? r->h + t * E : r->z + t * E;
        double m, sum;
        sel_softmax_norm(v, sel, S, &m, &sum);
        double a = 0.0;
        for (size_t k = 0; k < S; k++)
            if (idx[k] >= 0)
                a += (double)dg[k] * (exp(v[sel[k]] - m) / sum);
        for (size_t k = 0; k < S; k++) {
            size_t j = (size_t)sel[k];
            double g = exp(v[j] - m) / sum;
            double dv = g * ((idx[k] >= 0 ? (double)dg[k] : 0.0) - a);
            dzt[j] += (float)dv;
            if (noisy) {
                size_t i = t * E + j;
                du[i] += (float)(dv * r->eps[i] * sigmoid(r->u[i]));
            }
        }
    }
}

// ---------------------------------------------------------------- bias balancing

// reference: Wang et al. 2024, "Auxiliary-Loss-Free Load Balancing Strategy for
// Mixture-of-Experts" (DeepSeek-V3). Loads are counted for a block of experts at
// a time in a stack array, so nothing is allocated and any E works. The sign
// is taken in integers: sign(total / E - load_e) = sign(total - E * load_e),
// so a balanced expert gets exactly 0.
#define BIAS_BLOCK 256

void moe_router_bias_update(float *bias, const struct moe_route *r, double rate)
{
    size_t E = r->E, n = r->T * r->S;
    size_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += r->sel[i] >= 0;
    size_t load[BIAS_BLOCK];
    for (size_t e0 = 0; e0 < E; e0 += BIAS_BLOCK) {
        size_t nb = E - e0 < BIAS_BLOCK ? E - e0 : BIAS_BLOCK;
        memset(load, 0, sizeof load);
        for (size_t i = 0; i < n; i++) {
            int32_t e = r->sel[i];
            if (e >= 0 && (size_t)e >= e0 && (size_t)e < e0 + nb)
                load[(size_t)e - e0]++;
        }
        for (size_t b = 0; b < nb; b++) {
            size_t scaled = E * load[b];
            if (total > scaled)
                bias[e0 + b] += (float)rate;
            else if (total < scaled)
                bias[e0 + b] -= (float)rate;
        }
    }
}

// ---------------------------------------------------------------- hash tables

void moe_hash_table_random(int32_t *table, size_t V, size_t E, uint64_t seed)
{
    assert(E > 0 && E <= UINT32_MAX);
    struct moe_rng rng = moe_rng_make(seed, MOE_RNG_INIT, moe_hash32("hash_table"));
    for (size_t v = 0; v < V; v++)
        table[v] = (int32_t)moe_rng_below(&rng, v, (uint32_t)E);
}

// Key a comes before key b: larger frequency, ties to the lower key.
static inline int key_before(const uint64_t *freq, int32_t a, int32_t b)
{
    return freq[a] > freq[b] || (freq[a] == freq[b] && a < b);
}

// Heapsort sift-down for a heap whose root is the LAST key in order, so the
// array ends sorted first-to-last.
static void key_sift_down(int32_t *a, size_t n, size_t i, const uint64_t *freq)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, w = i;
        if (l < n && key_before(freq, a[w], a[l]))
            w = l;
        if (r < n && key_before(freq, a[w], a[r]))
            w = r;
        if (w == i)
            return;
        int32_t tmp = a[i];
        a[i] = a[w];
        a[w] = tmp;
        i = w;
    }
}

struct expert_load {
    uint64_t load;
    uint32_t e;
};

static inline int load_less(struct expert_load a, struct expert_load b)
{
    return a.load < b.load || (a.load == b.load && a.e < b.e);
}

static void load_sift_down(struct expert_load *h, size_t n, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, w = i;
        if (l < n && load_less(h[l], h[w]))
            w = l;
        if (r < n && load_less(h[r], h[w]))
            w = r;
        if (w == i)
            return;
        struct expert_load tmp = h[i];
        h[i] = h[w];
        h[w] = tmp;
        i = w;
    }
}

// The greedy of Roller et al. 2021 (longest-processing-time-first scheduling).
// Without allocating: (1) heapsort the keys into table (table[rank] = key);
// (2) walk the ranks, popping the least-loaded expert from a min-heap on the
// stack, and store key * E + expert in table[rank]; (3) move every entry to
// position key by following permutation cycles and keep only the expert.
// Limits (asserted): E <= HASH_MAX_E, V * E <= 2^31 (moe_layer_plan_declare
// refuses a config past it).
#define HASH_MAX_E 1024

void moe_hash_table_balanced(int32_t *table, const uint64_t *freq, size_t V, size_t E)
{
    assert(E > 0 && E <= HASH_MAX_E);
    assert((uint64_t)V * E <= (uint64_t)INT32_MAX + 1);
    if (V == 0)
        return;
    for (size_t v = 0; v < V; v++)
        table[v] = (int32_t)v;
    for (size_t i = V / 2; i-- > 0;)
        key_sift_down(table, V, i, freq);
    for (size_t n = V - 1; n > 0; n--) {
        int32_t tmp = table[0];
        table[0] = table[n];
        table[n] = tmp;
        key_sift_down(table, n, 0, freq);
    }

    struct expert_load heap[HASH_MAX_E];
    for (size_t e = 0; e < E; e++) // loads all 0 in index order: already a heap
        heap[e] = (struct expert_load){ 0, (uint32_t)e };
    // Keys never seen (frequency 0) come last, in increasing key order; given to
    // the least-loaded expert they would all land on one, so they are dealt
    // round-robin instead: the k-th unseen key goes to expert k mod E.
    uint32_t unseen = 0;
    for (size_t rank = 0; rank < V; rank++) {
        int32_t key = table[rank];
        uint32_t e;
        if (freq[key] == 0) {
            e = unseen++ % (uint32_t)E;
        } else {
            e = heap[0].e;
            heap[0].load += freq[key];
            load_sift_down(heap, E, 0);
        }
        table[rank] = (int32_t)((uint32_t)key * (uint32_t)E + e);
    }

    for (size_t i = 0; i < V; i++) {
        for (;;) {
            size_t target = (uint32_t)table[i] / (uint32_t)E;
            if (target == i)
                break;
            int32_t tmp = table[target];
            table[target] = table[i];
            table[i] = tmp;
        }
    }
    for (size_t v = 0; v < V; v++)
        table[v] = (int32_t)((uint32_t)table[v] % (uint32_t)E);
}

uint32_t moe_hash_key_row(const float *x, size_t D, size_t V)
{
    assert(V > 0);
    uint32_t h = 2166136261u;
    for (size_t d = 0; d < D; d++) {
        uint32_t bits;
        memcpy(&bits, &x[d], sizeof bits);
        for (int b = 0; b < 4; b++) { // little-endian byte order, whatever the host
            h ^= (bits >> (8 * b)) & 0xffu;
            h *= 16777619u;
        }
    }
    return (uint32_t)(h % V);
}
