// route.h: the router's per-token work as host/device functions (core/hd.h):
// softmax over the experts, noisy logits, top-K selection and gates. A GPU
// launch runs one token per thread; tests/test_kernels.c runs the same
// functions over every token and compares with the CPU router
// (moe/router.c moe_router_forward), which they follow operation by operation.
// E = experts, K = slots per token.
// The backward (moe_router_backward) is per token too.
// Not here: expert choice and hash routing's forward (whole-batch and table
// work), and which router uses which gate (the launch wrapper maps the router
// table onto enum moe_k_gate).
#ifndef MOE_K_ROUTE_H
#define MOE_K_ROUTE_H

#include <math.h>
#include <stdint.h>

#include "core/hd.h"
#include "core/philox.h"

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

#endif
