// aux.h: the balancing losses of the f.P family (switch, gshard, topk-all) and
// the router z-loss, with their gradients, as host/device functions
// (core/hd.h) in the CPU's order of operations (moe/aux_loss.c):
//   - one thread per expert sums f_e (selections over the first n_slots slots)
//     and P_e (router probabilities) over the tokens in token order (on a GPU,
//     a block per expert: f_e an integer count, P_e an in-order block sum);
//   - one thread joins sum_e f_e P_e in expert order; another sums lse_t^2 over
//     the tokens in order (z-loss; on a GPU, one block's in-order sum);
//   - one thread per (token, expert) adds its gradient element, each token's
//     dot product recomputed in expert order.
// No atomics, no reduction whose order depends on the launch: the values equal
// the CPU's. T = tokens, E = experts, S = slots per token.
// reference: Fedus, Zoph & Shazeer 2021 (Switch, eq. 4); Lepikhin et al. 2020
// (GShard); HF transformers' Mixtral loss (topk-all); Zoph et al. 2022 (ST-MoE
// z-loss, eq. 5).
// Shazeer et al. 2017's importance and load losses (appendix A: CV^2 of the
// summed gates and of the smooth load estimate) follow the same pattern: one
// thread per expert sums over the tokens in order, one thread forms CV^2 and
// its gradient per expert (cv_squared), then one thread per (token, slot)
// (importance) or per token (load: its thresholds, then its experts in order)
// adds the gradients. The load's Phi, phi, softplus and sigmoid are the CPU's
// double expressions (erfc, exp, log1p): the same bits on the host, the
// device's double functions' last bits on a GPU.
#ifndef MOE_K_AUX_H
#define MOE_K_AUX_H

#include <math.h>
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

// The same sums for a GPU block per expert (lib/cuda/ops.cu): f_e as an
// integer count of hits (moe_k_aux_fp_hits: how many of token t's first n_slots
// selections are e), added by the block's threads in any order and converted
// once: the CPU's repeated += 1.0 is exact below 2^53, so the same double. P_e
// as an in-order block sum (moe_k_sum_tile) of the terms moe_k_aux_fp_term:
// the serial sum's additions, so its bits. The caller divides both by T.
static inline MOE_HD unsigned moe_k_aux_fp_hits(const int32_t *sel, size_t S, size_t n_slots, size_t t, size_t e)
{
    unsigned h = 0;
    for (size_t s = 0; s < n_slots; s++)
        h += sel[t * S + s] == (int32_t)e;
    return h;
}

static inline MOE_HD double moe_k_aux_fp_term(const float *p, size_t E, size_t t, size_t e)
{
    return (double)p[t * E + e];
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

// Its term for an in-order block sum (moe_k_sum_tile): lse_t^2 in double (the
// product of two floats is exact there, so a contracted multiply-add gives the
// same bits); the caller divides by T.
static inline MOE_HD double moe_k_z_term(const float *lse, size_t t)
{
    return (double)lse[t] * lse[t];
}

// dz[t, j] += 2 coef / T * lse_t * p[t, j].
static inline MOE_HD void moe_k_z_grad(float *dz, const float *lse, const float *p, size_t E, float coef, size_t T,
                                       size_t t, size_t j)
{
    double c = 2.0 * (double)coef / (double)T;
    dz[t * E + j] += (float)(c * lse[t] * p[t * E + j]);
}

// ---- Shazeer et al. 2017, appendix A

// CV^2 = var / mean^2 of x (E values; population variance; 0 when the mean
// is 0); g (may be NULL) = d CV^2 / d x (moe/aux_loss.c cv_squared).
static inline MOE_HD double moe_k_cv2(double *g, const double *x, size_t E)
{
    double mean = 0.0;
    for (size_t e = 0; e < E; e++)
        mean += x[e];
    mean /= (double)E;
    double var = 0.0;
    for (size_t e = 0; e < E; e++)
        var += (x[e] - mean) * (x[e] - mean);
    var /= (double)E;
    if (mean == 0.0) {
        for (size_t e = 0; g && e < E; e++)
            g[e] = 0.0;
        return 0.0;
    }
    if (g) {
        double m2 = mean * mean;
        for (size_t e = 0; e < E; e++)
            g[e] = 2.0 * (x[e] - mean) / ((double)E * m2) - 2.0 * var / ((double)E * m2 * mean);
    }
    return var / (mean * mean);
}

// Importance_e = sum over tokens, then slots, of the gates routed to e. Slot
// i's (i = t S + s) term: its gate where it routes to e, else 0; their sum in
// slot order has the bits of the CPU's sum of the matching gates alone
// (adding +0.0 leaves a sum that starts at +0.0 as it is).
static inline MOE_HD double moe_k_importance_term(const int32_t *idx, const float *gate, size_t i, size_t e)
{
    return idx[i] == (int32_t)e ? (double)gate[i] : 0.0;
}

static inline MOE_HD double moe_k_importance_expert(const int32_t *idx, const float *gate, size_t T, size_t S, size_t e)
{
    double imp = 0.0;
    for (size_t i = 0; i < T * S; i++)
        imp += moe_k_importance_term(idx, gate, i, e);
    return imp;
}

// In-order sums in tiles, for a GPU block (lib/cuda/ops.cu block_sum_in_order):
// the block's threads stage MOE_K_AUX_TERMS terms (moe_k_aux_fp_term,
// moe_k_z_term, moe_k_importance_term, moe_k_load_term) in shared memory, and
// one thread adds them on to the sum in order (moe_k_sum_tile) while the others
// stage the next tile: the serial sum's additions, so its bits, with the terms'
// work (the load's thresholds and erfc) spread over the block.
#define MOE_K_AUX_TERMS 1024

static inline MOE_HD void moe_k_sum_tile(double *sum, const double *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        *sum += v[i];
}

// dgate[i] += coef g[idx[i]] for slot i = t S + s (an unused slot: nothing).
static inline MOE_HD void moe_k_importance_grad(float *dgate, const int32_t *idx, const double *g, float coef, size_t i)
{
    int32_t e = idx[i];
    if (e >= 0)
        dgate[i] += (float)((double)coef * g[e]);
}

// Whether expert e is among token t's first K selections.
static inline MOE_HD int moe_k_load_selected(const int32_t *sel, size_t S, size_t K, size_t t, size_t e)
{
    for (size_t s = 0; s < K; s++)
        if (sel[t * S + s] == (int32_t)e)
            return 1;
    return 0;
}

// Token t's thresholds (moe/aux_loss.c load_thresholds): j_in, the selected
// expert with the smallest noisy logit h (ties to the later slot), the threshold
// of every unselected expert; j_out, the unselected one with the largest h
// (ties to the lower index), the threshold of every selected expert.
static inline MOE_HD void moe_k_load_thresholds(size_t *j_in, size_t *j_out, const int32_t *sel, const float *h,
                                                size_t E, size_t S, size_t K, size_t t)
{
    const float *ht = h + t * E;
    size_t in = 0;
    for (size_t s = 0; s < K; s++) {
        size_t e = (size_t)sel[t * S + s];
        if (s == 0 || ht[e] <= ht[in])
            in = e;
    }
    size_t out = E;
    for (size_t e = 0; e < E; e++)
        if (!moe_k_load_selected(sel, S, K, t, e) && (out == E || ht[e] > ht[out]))
            out = e;
    *j_in = in;
    *j_out = out;
}

static inline MOE_HD double moe_k_softplus(double x) { return log1p(exp(-fabs(x))) + (x > 0.0 ? x : 0.0); }

static inline MOE_HD double moe_k_sigmoid(double x)
{
    if (x >= 0.0)
        return 1.0 / (1.0 + exp(-x));
    double ex = exp(x);
    return ex / (1.0 + ex);
}

// Load_e = sum over tokens of Phi((z_e - threshold) / softplus(u_e)).
// Token t's term of expert e's load: the chance that e stays among t's first K
// when only e's own noise is drawn again.
static inline MOE_HD double moe_k_load_term(const float *z, const float *u, const float *h, const int32_t *sel,
                                            size_t E, size_t S, size_t K, size_t t, size_t e)
{
    size_t j_in, j_out;
    moe_k_load_thresholds(&j_in, &j_out, sel, h, E, S, K, t);
    size_t i = t * E + e;
    double thr = h[t * E + (moe_k_load_selected(sel, S, K, t, e) ? j_out : j_in)];
    double sd = moe_k_softplus(u[i]);
    return 0.5 * erfc(-(((double)z[i] - thr) / sd) / sqrt(2.0));
}

static inline MOE_HD double moe_k_load_expert(const float *z, const float *u, const float *h, const int32_t *sel,
                                              size_t T, size_t E, size_t S, size_t K, size_t e)
{
    double load = 0.0;
    for (size_t t = 0; t < T; t++)
        load += moe_k_load_term(z, u, h, sel, E, S, K, t, e);
    return load;
}

// Token t's load-loss gradients (the second pass of moe_aux_load): dz, du (T, E) +=.
static inline MOE_HD void moe_k_load_grad(float *dz, float *du, const float *z, const float *u, const float *h,
                                          const float *eps, const int32_t *sel, const double *g, float coef, size_t E,
                                          size_t S, size_t K, size_t t)
{
    size_t j_in, j_out;
    moe_k_load_thresholds(&j_in, &j_out, sel, h, E, S, K, t);
    double dthr_in = 0.0, dthr_out = 0.0;
    for (size_t e = 0; e < E; e++) {
        size_t i = t * E + e;
        int selected = moe_k_load_selected(sel, S, K, t, e);
        double thr = h[t * E + (selected ? j_out : j_in)];
        double sd = moe_k_softplus(u[i]);
        double a = ((double)z[i] - thr) / sd;
        double dP = (double)coef * g[e];
        double q = dP * (0.39894228040143267794 * exp(-0.5 * a * a)) / sd;
        dz[i] += (float)q;
        du[i] += (float)(-q * a * moe_k_sigmoid(u[i]));
        if (selected)
            dthr_out -= q;
        else
            dthr_in -= q;
    }
    size_t i_in = t * E + j_in, i_out = t * E + j_out;
    dz[i_in] += (float)dthr_in;
    du[i_in] += (float)(dthr_in * eps[i_in] * moe_k_sigmoid(u[i_in]));
    dz[i_out] += (float)dthr_out;
    du[i_out] += (float)(dthr_out * eps[i_out] * moe_k_sigmoid(u[i_out]));
}

#endif
