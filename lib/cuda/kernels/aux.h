// aux.h: the balancing losses of the f.P family (switch, gshard, topk-all) and
// the router z-loss, with their gradients, as host/device functions
// (core/hd.h) in the CPU's order of operations (moe/aux_loss.c):
//   - one thread per expert sums f_e (selections over the first n_slots slots)
//     and P_e (router probabilities) over the tokens in token order;
//   - one thread joins sum_e f_e P_e in expert order; another sums lse_t^2 over
//     the tokens in order (z-loss);
//   - one thread per (token, expert) adds its gradient element, each token's
//     dot product recomputed in expert order.
// No atomics, no reduction whose order depends on the launch: the values equal
// the CPU's. T = tokens, E = experts, S = slots per token.
// reference: Fedus, Zoph & Shazeer 2021 (Switch, eq. 4); Lepikhin et al. 2020
// (GShard); HF transformers' Mixtral loss (topk-all); Zoph et al. 2022 (ST-MoE
// z-loss, eq. 5).
// Not here: Shazeer et al.'s importance and load losses (CV^2, thresholds).
#ifndef MOE_K_AUX_H
#define MOE_K_AUX_H

#include <stddef.h>
#include <stdint.h>

#include "core/hd.h"

// f_e and P_e of expert e: first-slot (n_slots = 1) or all-slot selections per
// token, and mean router probability, both divided by T.
static inline MOE_HD void moe_k_aux_fp_expert(double *f, double *P, const int32_t *sel, const float *p, size_t T,
                                              size_t E, size_t S, size_t n_slots, size_t e)
{
    double fe = 0.0, pe = 0.0;
    for (size_t t = 0; t < T; t++) {
        for (size_t s = 0; s < n_slots; s++)
            if (sel[t * S + s] == (int32_t)e)
                fe += 1.0;
        pe += p[t * E + e];
    }
    *f = fe / (double)T;
    *P = pe / (double)T;
}

// sum_e f_e P_e, in expert order.
static inline MOE_HD double moe_k_aux_fp_sum(const double *f, const double *P, size_t E)
{
    double sum = 0.0;
    for (size_t e = 0; e < E; e++)
        sum += f[e] * P[e];
    return sum;
}

// dz[t, j] += scale/T * d(sum_e f_e P_e)/dz[t, j] through the softmax: p_j (c f_j
// - sum_e p_e c f_e), c = scale / T.
static inline MOE_HD void moe_k_aux_fp_grad(float *dz, const float *p, const double *f, size_t E, double scale,
                                            size_t T, size_t t, size_t j)
{
    const float *pt = p + t * E;
    double c = scale / (double)T, dot = 0.0;
    for (size_t e = 0; e < E; e++)
        dot += pt[e] * c * f[e];
    dz[t * E + j] += (float)(pt[j] * (c * f[j] - dot));
}

// The z-loss: (1/T) sum_t lse_t^2, in token order.
static inline MOE_HD double moe_k_z_loss(const float *lse, size_t T)
{
    double sum = 0.0;
    for (size_t t = 0; t < T; t++)
        sum += (double)lse[t] * lse[t];
    return sum / (double)T;
}

// dz[t, j] += 2 coef / T * lse_t * p[t, j].
static inline MOE_HD void moe_k_z_grad(float *dz, const float *lse, const float *p, size_t E, float coef, size_t T,
                                       size_t t, size_t j)
{
    double c = 2.0 * (double)coef / (double)T;
    dz[t * E + j] += (float)(c * lse[t] * p[t * E + j]);
}

#endif
