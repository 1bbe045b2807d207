// aux_loss.c: the auxiliary load-balancing losses and the router z-loss, with
// their gradients (see aux_loss.h for the conventions). Not the routers.
// T = tokens, E = n_expert, S = slots per token, K = n_expert_used.
// Every sum is in double and runs in a fixed order (tokens, then experts or
// slots), so the values do not depend on threads. No allocation: per-expert
// temporaries live on the stack (E <= AUX_MAX_E).
#include "moe/aux_loss.h"

#include <assert.h>
#include <math.h>
#include <string.h>

#define AUX_MAX_E 1024

static const char *const names[] = { "none", "shazeer", "switch", "gshard", "topk-all" };
#define N_NAMES (sizeof names / sizeof names[0])

int moe_aux_from_name(const char *name)
{
    for (size_t i = 0; i < N_NAMES; i++)
        if (strcmp(name, names[i]) == 0)
            return (int)i;
    return -1;
}

const char *moe_aux_name(enum moe_aux_type t)
{
    assert((size_t)t < N_NAMES);
    return names[t];
}

// ---------------------------------------------------------------- f . P losses

// s = sum_e f_e P_e with f counted over slots 0..n_slots-1 of sel (n_slots = 1:
// first choice; S: every slot). When dz is set, adds scale * d s / dz, i.e.
// dp[t, e] = scale * f_e / T pushed through the softmax Jacobian of p[t, :].
static double f_dot_p(float *dz, const struct moe_route *r, size_t n_slots, double scale)
{
    const size_t T = r->T, E = r->E, S = r->S;
    assert(E <= AUX_MAX_E && n_slots <= S);
    if (T == 0)
        return 0.0;
    double f[AUX_MAX_E], P[AUX_MAX_E];
    for (size_t e = 0; e < E; e++)
        f[e] = P[e] = 0.0;
    for (size_t t = 0; t < T; t++) {
        for (size_t s = 0; s < n_slots; s++) {
            int32_t e = r->sel[t * S + s];
            if (e >= 0) // unused slot (expert choice) counts for nobody
                f[e] += 1.0;
        }
        for (size_t e = 0; e < E; e++)
            P[e] += r->p[t * E + e];
    }
    double sum = 0.0;
    for (size_t e = 0; e < E; e++) {
        f[e] /= (double)T;
        P[e] /= (double)T;
        sum += f[e] * P[e];
    }
    if (dz) {
        // dp[t, e] = scale * f_e / T is the same for every token.
        double dp_scale = scale / (double)T;
        for (size_t t = 0; t < T; t++) {
            const float *pt = r->p + t * E;
            double dot = 0.0; // sum_e p_e dp_e
            for (size_t e = 0; e < E; e++)
                dot += pt[e] * dp_scale * f[e];
            for (size_t j = 0; j < E; j++)
                dz[t * E + j] += (float)(pt[j] * (dp_scale * f[j] - dot));
        }
    }
    return sum;
}

// reference: Fedus, Zoph & Shazeer 2021 (Switch Transformer), eq. 4:
// loss = alpha * N * sum_i f_i P_i, f from the argmax (first choice).
double moe_aux_switch(float *dz, const struct moe_route *r, float coef)
{
    const double E = (double)r->E;
    return E * f_dot_p(dz, r, 1, (double)coef * E);
}

// reference: Lepikhin et al. 2020 (GShard); fairseq top2gating:
// l_aux = mean_e(me * ce) * E * E, me = mean gate prob, ce = first-choice fraction.
double moe_aux_gshard(float *dz, const struct moe_route *r, float coef)
{
    const double E = (double)r->E;
    if (r->E == 0)
        return 0.0;
    double mean = f_dot_p(dz, r, 1, (double)coef * E) / E;
    return E * E * mean;
}

// reference: HF transformers load_balancing_loss_func (Mixtral):
// E * sum_{k, e} tokens_per_expert[k, e] * router_prob_per_expert[e], i.e. f over all K slots.
double moe_aux_topk_all(float *dz, const struct moe_route *r, float coef)
{
    const double E = (double)r->E;
    return E * f_dot_p(dz, r, r->S, (double)coef * E);
}

// ---------------------------------------------------------------- Shazeer CV^2 losses

// CV^2 = var / mean^2 of x (population variance; 0 when mean = 0). When g is
// set, writes g[e] = d CV^2 / d x_e = 2 (x_e - mean) / (E mean^2) - 2 var / (E mean^3).
static double cv_squared(double *g, const double *x, size_t E)
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
        if (g)
            for (size_t e = 0; e < E; e++)
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

// reference: Shazeer et al. 2017, appendix A: Importance(X) = sum_x G(x),
// L_importance = w_importance * CV(Importance(X))^2.
double moe_aux_importance(float *dgate, const struct moe_route *r, float coef)
{
    const size_t T = r->T, E = r->E, S = r->S;
    assert(E >= 1 && E <= AUX_MAX_E);
    double imp[AUX_MAX_E], g[AUX_MAX_E];
    for (size_t e = 0; e < E; e++)
        imp[e] = 0.0;
    for (size_t t = 0; t < T; t++)
        for (size_t s = 0; s < S; s++) {
            int32_t e = r->idx[t * S + s];
            if (e >= 0)
                imp[e] += r->gate[t * S + s];
        }
    double cv2 = cv_squared(dgate ? g : NULL, imp, E);
    if (dgate)
        for (size_t t = 0; t < T; t++)
            for (size_t s = 0; s < S; s++) {
                int32_t e = r->idx[t * S + s];
                if (e >= 0)
                    dgate[t * S + s] += (float)((double)coef * g[e]);
            }
    return cv2;
}

static double softplus(double x) { return log1p(exp(-fabs(x))) + (x > 0.0 ? x : 0.0); }

static double sigmoid(double x)
{
    if (x >= 0.0)
        return 1.0 / (1.0 + exp(-x));
    double ex = exp(x);
    return ex / (1.0 + ex);
}

static double norm_cdf(double x) { return 0.5 * erfc(-x / sqrt(2.0)); }

// 1 / sqrt(2 pi)
#define INV_SQRT_2PI 0.39894228040143267794

static double norm_pdf(double x) { return INV_SQRT_2PI * exp(-0.5 * x * x); }

// The two thresholds of token t: j_in is the K-th largest of h[t, :] (the
// selected expert with the smallest h: slots are ordered by rank, so it is
// the last slot among equal values), the threshold of every unselected
// expert; j_out is the (K+1)-th largest (the unselected expert with the
// largest h, ties to the lower index), the threshold of every selected expert.
// sel_mark[e] is set to 1 for the selected experts, 0 otherwise.
static void load_thresholds(size_t *ret_in, size_t *ret_out, unsigned char *sel_mark, const struct moe_route *r,
                            size_t t, size_t K)
{
    const size_t E = r->E, S = r->S;
    const float *ht = r->h + t * E;
    memset(sel_mark, 0, E);
    size_t j_in = 0;
    for (size_t s = 0; s < K; s++) {
        int32_t e = r->sel[t * S + s];
        assert(e >= 0 && (size_t)e < E);
        sel_mark[e] = 1;
        if (s == 0 || ht[e] <= ht[j_in])
            j_in = (size_t)e;
    }
    size_t j_out = E;
    for (size_t e = 0; e < E; e++)
        if (!sel_mark[e] && (j_out == E || ht[e] > ht[j_out]))
            j_out = e;
    *ret_in = j_in;
    *ret_out = j_out;
}

// reference: Shazeer et al. 2017, appendix A (smooth load estimator,
// tensor2tensor _prob_in_top_k): P(x, i) = Phi((x.W_g)_i - kth_excluding(H(x), k, i)) / Softplus((x.W_noise)_i)),
// Load(X)_i = sum_x P(x, i), L_load = w_load * CV(Load(X))^2.
double moe_aux_load(float *dz, float *du, const struct moe_route *r, size_t K, float coef)
{
    const size_t T = r->T, E = r->E;
    assert(K >= 1 && K < E && K <= r->S && E <= AUX_MAX_E);
    assert((dz == NULL) == (du == NULL));
    double load[AUX_MAX_E], g[AUX_MAX_E];
    unsigned char sel_mark[AUX_MAX_E];
    for (size_t e = 0; e < E; e++)
        load[e] = 0.0;
    for (size_t t = 0; t < T; t++) {
        size_t j_in, j_out;
        load_thresholds(&j_in, &j_out, sel_mark, r, t, K);
        for (size_t e = 0; e < E; e++) {
            size_t i = t * E + e;
            double thr = r->h[t * E + (sel_mark[e] ? j_out : j_in)];
            double sd = softplus(r->u[i]);
            load[e] += norm_cdf(((double)r->z[i] - thr) / sd);
        }
    }
    double cv2 = cv_squared(dz ? g : NULL, load, E);
    if (!dz)
        return cv2;
    // Second pass: dL/dP(t, e) = coef * g[e]; with a = (z_e - thr) / sd:
    //   dP/dz_e = phi(a) / sd, dP/dthr = -phi(a) / sd, dP/du_e = -phi(a) a / sd * sigmoid(u_e),
    // and thr = h[t, j*] = z[t, j*] + eps[t, j*] softplus(u[t, j*]).
    for (size_t t = 0; t < T; t++) {
        size_t j_in, j_out;
        load_thresholds(&j_in, &j_out, sel_mark, r, t, K);
        double dthr_in = 0.0, dthr_out = 0.0;
        for (size_t e = 0; e < E; e++) {
            size_t i = t * E + e;
            double thr = r->h[t * E + (sel_mark[e] ? j_out : j_in)];
            double sd = softplus(r->u[i]);
            double a = ((double)r->z[i] - thr) / sd;
            double dP = (double)coef * g[e];
            double q = dP * norm_pdf(a) / sd;
            dz[i] += (float)q;
            du[i] += (float)(-q * a * sigmoid(r->u[i]));
            if (sel_mark[e])
                dthr_out -= q;
            else
                dthr_in -= q;
        }
        size_t i_in = t * E + j_in, i_out = t * E + j_out;
        dz[i_in] += (float)dthr_in;
        du[i_in] += (float)(dthr_in * r->eps[i_in] * sigmoid(r->u[i_in]));
        dz[i_out] += (float)dthr_out;
        du[i_out] += (float)(dthr_out * r->eps[i_out] * sigmoid(r->u[i_out]));
    }
    return cv2;
}

// ---------------------------------------------------------------- z-loss

// reference: Zoph et al. 2022 (ST-MoE), eq. 5: L_z = (1/B) sum_i (log sum_j exp(x_ij))^2.
double moe_aux_z(float *dz, const struct moe_route *r, float coef)
{
    const size_t T = r->T, E = r->E;
    if (T == 0)
        return 0.0;
    double sum = 0.0;
    for (size_t t = 0; t < T; t++)
        sum += (double)r->lse[t] * r->lse[t];
    if (dz) {
        double c = 2.0 * (double)coef / (double)T;
        for (size_t t = 0; t < T; t++)
            for (size_t j = 0; j < E; j++)
                dz[t * E + j] += (float)(c * r->lse[t] * r->p[t * E + j]);
    }
    return sum / (double)T;
}
