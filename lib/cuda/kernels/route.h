// route.h: the router's per-token work as host/device functions (core/hd.h):
// softmax over the experts, noisy logits, top-K selection and gates. A GPU
// launch runs one token per thread; tests/test_kernels.c runs the same
// functions over every token and compares with the CPU router
// (moe/router.c moe_router_forward), which they follow operation by operation.
// E = experts, K = slots per token.
// The backward (moe_router_backward) is per token too.
// Expert choice runs after the per-token softmax: in training (full) a block
// per expert finds its C-th best token by radix selection and keeps those at
// least as good; the causal evaluation modes (prefix, position) run one
// thread per (token, expert) pair, whose rank among the expert's candidates
// decides it (full's naive twin); topk one thread per token. Nothing sorts;
// the backward is the raw-gate one with K = E. Hash
// routing writes one token's route from its table entry; it has no backward.
// Not here: which router uses which gate (the launch wrapper maps the router
// table onto enum moe_k_gate), and the hash table lookup itself (the layer's).
#ifndef MOE_K_ROUTE_H
#define MOE_K_ROUTE_H

#include <math.h>
#include <stdint.h>

#include "core/hd.h"
#include "core/philox.h"
#include "cuda/kernels/select.h"

// How a router turns its selection into gates.
enum moe_k_gate {
    MOE_K_GATE_RENORM = 0, // softmax over the selected logits (softmax, gshard, noisy-topk)
    MOE_K_GATE_RAW = 1,    // the selected experts' own probabilities (switch, deepseek)
};

// p = softmax(z) over E experts and lse = logsumexp(z): max in float, the
// normaliser summed in double in expert order (nn/loss.c moe_softmax_forward).
static inline MOE_HD void moe_k_softmax_row(float *MOE_RESTRICT p, float *lse, const float *MOE_RESTRICT z, int E)
{
    float m = z[0];
    for (int e = 1; e < E; e++)
        m = z[e] > m ? z[e] : m;
    double s = 0.0;
    for (int e = 0; e < E; e++) {
        p[e] = expf(z[e] - m);
        s += p[e];
    }
    float inv = (float)(1.0 / s);
    for (int e = 0; e < E; e++)
        p[e] *= inv;
    if (lse)
        *lse = m + (float)log(s);
}

// Shazeer et al. 2017's noisy logits h = z + eps * softplus(u), eps standard
// normal from the counters (seed, purpose, stream, base + e): the draws
// core/rng.h moe_rng_normal makes for index base + e. softplus(u) = u above 20.
static inline MOE_HD void moe_k_noisy_row(float *h, float *eps, const float *z, const float *u, int E, uint64_t seed,
                                          uint32_t purpose, uint32_t stream, uint64_t base)
{
    for (int e = 0; e < E; e++) {
        uint32_t w[4];
        moe_philox_words(seed, purpose, stream, base + (uint64_t)e, w);
        eps[e] = moe_philox_normal(w[0], w[1]);
        double sp = u[e] > 20.0 ? (double)u[e] : log1p(exp((double)u[e]));
        h[e] = (float)(z[e] + eps[e] * sp);
    }
}

static inline MOE_HD float moe_k_sel_key(const float *v, const float *bias, int e)
{
    return bias ? v[e] + bias[e] : v[e];
}

// The K largest of key(e) = v[e] (+ bias[e]) into sel[0..K), largest first,
// ties to the lower index (insertion into the sorted output).
static inline MOE_HD void moe_k_topk_row(int32_t *sel, const float *v, const float *bias, int E, int K)
{
    int n = 0;
    for (int e = 0; e < E; e++) {
        float k = moe_k_sel_key(v, bias, e);
        if (n == K && !(k > moe_k_sel_key(v, bias, sel[K - 1])))
            continue;
        int j = n < K ? n++ : K - 1;
        while (j > 0 && k > moe_k_sel_key(v, bias, sel[j - 1])) {
            sel[j] = sel[j - 1];
            j--;
        }
        sel[j] = e;
    }
}

// Max and normaliser (double) of the softmax over the selected logits v[sel[0..K)].
static inline MOE_HD void moe_k_sel_softmax_norm(const float *v, const int32_t *sel, int K, double *ret_m,
                                                 double *ret_sum)
{
    double m = v[sel[0]];
    for (int k = 1; k < K; k++)
        m = v[sel[k]] > m ? v[sel[k]] : m;
    double s = 0.0;
    for (int k = 0; k < K; k++)
        s += exp(v[sel[k]] - m);
    *ret_m = m;
    *ret_sum = s;
}

// The gates of one token's K selected slots: idx = sel, prio = p[sel], and the
// gate by kind (v: the logits the selection softmax runs over: z, or h for
// noisy-topk).
static inline MOE_HD void moe_k_gates_row(int32_t *idx, float *gate, float *prio, const int32_t *sel, const float *v,
                                          const float *p, int K, enum moe_k_gate kind)
{
    if (kind == MOE_K_GATE_RAW) {
        for (int k = 0; k < K; k++) {
            idx[k] = sel[k];
            gate[k] = p[sel[k]];
            prio[k] = p[sel[k]];
        }
        return;
    }
    double m, s;
    moe_k_sel_softmax_norm(v, sel, K, &m, &s);
    for (int k = 0; k < K; k++) {
        idx[k] = sel[k];
        gate[k] = (float)(exp(v[sel[k]] - m) / s);
        prio[k] = p[sel[k]];
    }
}

// GShard's random second expert (Lepikhin et al. 2020, Algorithm 2): the second
// slot is kept when 2 g2 > U, U uniform from the counters (seed, purpose,
// stream, index): core/rng.h moe_rng_uniform's draw for that index.
static inline MOE_HD void moe_k_gshard_second(int32_t *idx, float *gate, uint64_t seed, uint32_t purpose,
                                              uint32_t stream, uint64_t index)
{
    uint32_t w[4];
    moe_philox_words(seed, purpose, stream, index >> 2, w);
    float U = moe_philox_u01(w[index & 3]);
    if (!(2.0f * gate[1] > U)) {
        idx[1] = -1;
        gate[1] = 0.0f;
    }
}

// One token's router backward from the gates' gradient dg (K): dz (E) +=,
// and for noisy-topk du (E) += through h = z + eps softplus(u) (v = h; else
// v = z). Raw gates (gate = p): dz_j += [j chosen] dg p_j - p_j sum_s dg_s p_s.
// Renormalised gates: through the softmax over the selected logits; a slot
// GShard skipped (idx = -1) carries no gradient but stays in the normaliser.
static inline MOE_HD void moe_k_route_backward_row(float *dz, float *du, const float *dg, const int32_t *sel,
                                                   const int32_t *idx, const float *p, const float *v,
                                                   const float *eps, const float *u, int E, int K,
                                                   enum moe_k_gate kind)
{
    if (kind == MOE_K_GATE_RAW) {
        double a = 0.0;
        for (int s = 0; s < K; s++) {
            if (idx[s] < 0)
                continue;
            double w = (double)dg[s] * p[idx[s]];
            dz[idx[s]] += (float)w;
            a += w;
        }
        for (int j = 0; j < E; j++)
            dz[j] -= (float)(a * p[j]);
        return;
    }
    double m, sum;
    moe_k_sel_softmax_norm(v, sel, K, &m, &sum);
    double a = 0.0;
    for (int k = 0; k < K; k++)
        if (idx[k] >= 0)
            a += (double)dg[k] * (exp(v[sel[k]] - m) / sum);
    for (int k = 0; k < K; k++) {
        int j = sel[k];
        double g = exp(v[j] - m) / sum;
        double dv = g * ((idx[k] >= 0 ? (double)dg[k] : 0.0) - a);
        dz[j] += (float)dv;
        if (du)
            du[j] += (float)(dv * eps[j] * (1.0 / (1.0 + exp(-(double)u[j]))));
    }
}

// ---------------------------------------------------------------- expert choice
// reference: Zhou et al. 2022, "Mixture-of-Experts with Expert Choice Routing":
// each expert e takes the C tokens of largest p[t, e]. moe/router.c keeps them
// in a bounded heap per expert; here the thread of (t, e) counts the candidate
// tokens that beat t under the CPU's strict total order (ec_better: larger p,
// ties to the lower token index) and t is kept iff that rank is < C. The C
// best of a strict total order are the same set either way, so the two agree
// to the bit. Slots: S = E, slot e of token t is expert e: sel = idx = e, gate
// = prio = p[t, e] when kept, else sel = idx = -1 and gate = prio = 0.

// The ec_eval modes, in moe/router.h enum moe_ec_eval's order.
enum moe_k_ec { MOE_K_EC_FULL = 0, MOE_K_EC_PREFIX = 1, MOE_K_EC_POSITION = 2, MOE_K_EC_TOPK = 3 };

// Tokens per expert for n candidates: C = min(n, ceil(ec_factor n / E)), the
// product in double shrunk by a relative 1e-12 before the ceiling
// (moe/router.c moe_router_quota, operation by operation).
static inline MOE_HD int64_t moe_k_ec_quota(double ec_factor, int64_t n, int64_t E)
{
    double x = ec_factor * (double)n / (double)E;
    double q = ceil(x * (1.0 - 1e-12));
    if (!(q > 0.0))
        return 0;
    return q >= (double)n ? n : (int64_t)q;
}

// Does token a beat token b for expert e (p is (T, E))? Larger p, ties to the
// lower token index (moe/router.c ec_better).
static inline MOE_HD int moe_k_ec_better(const float *p, int E, int e, int64_t a, int64_t b)
{
    float pa = p[a * E + e], pb = p[b * E + e];
    return pa > pb || (pa == pb && a < b);
}

// How many of the candidates w L + q (0 <= w < B, lo <= q <= hi) beat token t
// for expert e. Full expert choice: B = 1, L = T, lo = 0, hi = T - 1.
static inline MOE_HD int64_t moe_k_ec_rank(const float *p, int E, int e, int64_t t, int64_t B, int64_t L,
                                           int64_t lo, int64_t hi)
{
    int64_t n = 0;
    for (int64_t w = 0; w < B; w++)
        for (int64_t q = lo; q <= hi; q++)
            n += moe_k_ec_better(p, E, e, w * L + q, t);
    return n;
}

// Is token t kept by expert e? FULL (training, and evaluation as in
// training): rank among all T tokens < moe_k_ec_quota(T). PREFIX / POSITION
// (moe/router.c route_expert_choice_causal): sequences of L = max(seq, 1)
// consecutive tokens, B = T / L of them; t at position s of its sequence
// competes with the positions lo .. s of every sequence (lo = 0: PREFIX, lo =
// s: POSITION) for a quota of the B (s - lo + 1) candidates. Tokens past B L
// (T not a multiple of L, which the CPU asserts against) are never kept.
static inline MOE_HD int moe_k_ec_kept(const float *p, int64_t T, int E, int64_t t, int e, double ec_factor,
                                       enum moe_k_ec mode, int64_t seq)
{
    if (mode == MOE_K_EC_FULL)
        return moe_k_ec_rank(p, E, e, t, 1, T, 0, T - 1) < moe_k_ec_quota(ec_factor, T, E);
    int64_t L = seq > 1 ? seq : 1, B = T / L;
    if (t >= B * L)
        return 0;
    int64_t s = t % L, lo = mode == MOE_K_EC_PREFIX ? 0 : s;
    return moe_k_ec_rank(p, E, e, t, B, L, lo, s) < moe_k_ec_quota(ec_factor, B * (s - lo + 1), E);
}

// The thread of pair (t, e) (modes FULL, PREFIX, POSITION): its slot t E + e
// of sel, idx, gate, prio (T, E), from p (T, E) (moe_k_softmax_row per token).
static inline MOE_HD void moe_k_ec_slot(int32_t *sel, int32_t *idx, float *gate, float *prio, const float *p,
                                        int64_t T, int E, int64_t t, int e, double ec_factor, enum moe_k_ec mode,
                                        int64_t seq)
{
    int64_t i = t * E + e;
    int on = moe_k_ec_kept(p, T, E, t, e, ec_factor, mode, seq);
    sel[i] = idx[i] = on ? e : -1;
    gate[i] = on ? p[i] : 0.0f;
    prio[i] = on ? p[i] : 0.0f;
}

// ---------------------------------------------------------------- expert choice by selection (FULL)
// The pair rank above costs O(T) per pair, O(T^2 E) a layer: 3.4e10
// comparisons at T = 65536, E = 8 (beside the layer's 6.6e12 GEMM flops
// forward and backward at D = 1024, F = 4096), growing with T^2. Training's
// FULL mode instead finds, per expert, the C-th best token's key by radix
// selection (Knuth, TAOCP vol. 3, 5.2.5, most significant digit first) and
// keeps the tokens whose key is at least that: O(T) per expert for each of at
// most 16 passes. A block per expert: each thread counts a stride of the tokens into
// its own 16 bins, the block adds the bins (integers: any order, the same
// sums), one thread picks the digit. No float is summed and nothing is sorted,
// so the decision is the rank rule's, bit for bit (moe_k_ec_slot stays as the
// naive twin the tests hold this to, and as the causal evaluation modes' path).

// Token t's key for expert e: one token beats another (moe_k_ec_better) iff
// its key is larger (select.h: p's order, then the lower index). A NaN p (a
// run with non-finite logits, which stops on its loss) orders above every
// number here; the rank rule keeps NaN tokens too, but beyond C.
static inline MOE_HD uint64_t moe_k_ec_key(const float *p, int E, int e, int64_t t)
{
    return moe_k_select_key(moe_k_f32_order(p[t * E + e]), t);
}

// One thread's pass: zero cnt[d * cs] (d < 16), then for tokens first,
// first + stride, ... < T whose key agrees with prefix above bit shift + 4,
// count digit (key >> shift) & 15.
static inline MOE_HD void moe_k_ec_count(uint32_t *cnt, int cs, const float *p, int64_t T, int E, int e,
                                         uint64_t prefix, int shift, int64_t first, int64_t stride)
{
    for (int d = 0; d < MOE_K_SELECT_BINS; d++)
        cnt[d * cs] = 0;
    for (int64_t t = first; t < T; t += stride) {
        uint64_t k = moe_k_ec_key(p, E, e, t);
        if (moe_k_select_agrees(k, prefix, shift))
            cnt[((k >> shift) & 15u) * cs]++;
    }
}

// Is selection needed? 0 < C < T; otherwise no key (C = 0) or every key
// (threshold 0) is kept without a pass.
static inline MOE_HD int moe_k_ec_selects(int64_t C, int64_t T) { return C > 0 && C < T; }

// Tokens first, first + stride, ... of expert e's column: kept iff C > 0 and
// the key is at least thr (the C-th best key, or 0 when C >= T); slots as in
// moe_k_ec_slot.
static inline MOE_HD void moe_k_ec_mark(int32_t *sel, int32_t *idx, float *gate, float *prio, const float *p,
                                        int64_t T, int E, int e, int64_t C, uint64_t thr, int64_t first,
                                        int64_t stride)
{
    for (int64_t t = first; t < T; t += stride) {
        int64_t i = t * E + e;
        int on = C > 0 && moe_k_ec_key(p, E, e, t) >= thr;
        sel[i] = idx[i] = on ? e : -1;
        gate[i] = on ? p[i] : 0.0f;
        prio[i] = on ? p[i] : 0.0f;
    }
}

// Expert e's column by one thread (threads = 1) or the block of `threads`
// emulated in turn, cnt holding threads x 16 bins (bin d of thread k at
// d * threads + k, as the kernel's shared array): the whole FULL-mode column.
static inline MOE_HD void moe_k_ec_select_column(int32_t *sel, int32_t *idx, float *gate, float *prio, uint32_t *cnt,
                                                 const float *p, int64_t T, int E, int e, double ec_factor,
                                                 int threads)
{
    int64_t C = moe_k_ec_quota(ec_factor, T, E), need = C;
    uint64_t thr = 0;
    int done = 0;
    if (moe_k_ec_selects(C, T))
        for (int shift = 64 - 4; shift >= 0 && !done; shift -= 4) {
            uint64_t tot[MOE_K_SELECT_BINS];
            for (int k = 0; k < threads; k++)
                moe_k_ec_count(cnt + k, threads, p, T, E, e, thr, shift, k, threads);
            moe_k_select_tot(tot, cnt, (size_t)threads);
            done = moe_k_select_pick(&thr, &need, tot, shift);
        }
    for (int k = 0; k < threads; k++)
        moe_k_ec_mark(sel, idx, gate, prio, p, T, E, e, C, thr, k, threads);
}

// ec_eval TOPK (moe/router.c route_expert_choice_topk), one token per thread:
// token choice over its own p with k = round(ec_factor) clamped to 1 .. E
// (ties to the lower expert), gate = prio = p; slots k .. E - 1 get -1 and 0.
static inline MOE_HD void moe_k_ec_topk_row(int32_t *sel, int32_t *idx, float *gate, float *prio, const float *p,
                                            int E, double ec_factor)
{
    double kf = floor(ec_factor + 0.5);
    int K = kf < 1.0 ? 1 : kf > (double)E ? E : (int)kf;
    moe_k_topk_row(sel, p, NULL, E, K);
    for (int k = 0; k < E; k++) {
        if (k >= K)
            sel[k] = -1;
        idx[k] = sel[k];
        gate[k] = k < K ? p[sel[k]] : 0.0f;
        prio[k] = gate[k];
    }
}

// ---------------------------------------------------------------- hash routing
// reference: Roller et al. 2021, "Hash Layers For Large Sparse Models": token t
// goes to expert = table[key of t] (looked up by the layer) with gate 1; one
// slot. As moe/router.c: p (E) and lse are 0 (z is not read), sel = idx =
// expert, gate = prio = 1. An expert outside 0 .. E - 1 (the CPU asserts)
// is written as sel = idx = -1, gate = prio = 0: dropped, never an index past
// the experts on a device. No backward: nothing upstream of the table.
static inline MOE_HD void moe_k_hash_row(float *p, float *lse, int32_t *sel, int32_t *idx, float *gate, float *prio,
                                         int32_t expert, int E)
{
    for (int e = 0; e < E; e++)
        p[e] = 0.0f;
    *lse = 0.0f;
    int ok = expert >= 0 && expert < E;
    *sel = *idx = ok ? expert : -1;
    *gate = *prio = ok ? 1.0f : 0.0f;
}

// ---------------------------------------------------------------- bias balancing
// reference: Wang et al. 2024, "Auxiliary-Loss-Free Load Balancing Strategy
// for Mixture-of-Experts" (DeepSeek-V3's update): after a training batch's
// routing, expert e's selection offset moves by rate against its load: up when
// it took fewer than its share of the batch's assignments, down when more.
// Per expert (moe/router.c moe_router_bias_update): counts over the n = T S
// slots of sel (-1: none), integers, so any split and any order give the same
// counts (a GPU block per expert: each thread counts the slots first, first +
// stride, ..., the block adds the counts); then E load < total (as size_t
// products) adds (float)rate, > subtracts.
static inline MOE_HD void moe_k_bias_count(uint64_t *total, uint64_t *load, const int32_t *sel, int64_t n, int e,
                                           int64_t first, int64_t stride)
{
    for (int64_t i = first; i < n; i += stride) {
        *total += sel[i] >= 0;
        *load += sel[i] == e;
    }
}

static inline MOE_HD void moe_k_bias_apply(float *bias, int E, int e, uint64_t total, uint64_t load, double rate)
{
    uint64_t scaled = (uint64_t)E * load;
    if (total > scaled)
        bias[e] += (float)rate;
    else if (total < scaled)
        bias[e] -= (float)rate;
}

// Both for expert e, by one thread.
static inline MOE_HD void moe_k_bias_update(float *bias, const int32_t *sel, int64_t n, int E, int e, double rate)
{
    uint64_t total = 0, load = 0;
    moe_k_bias_count(&total, &load, sel, n, e, 0, 1);
    moe_k_bias_apply(bias, E, e, total, load, rate);
}

#endif
