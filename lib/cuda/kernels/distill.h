// distill.h: the distillation losses and squared error as host/device
// functions (core/hd.h), in nn/loss.c's order of operations:
//
// - Knowledge distillation (Hinton, Vinyals & Dean 2015, sec. 2;
//   moe_kd_forward_backward): L_t = tau^2 KL(softmax(z_t/tau) || softmax(s_t/tau)),
//   student logits s, teacher logits z; dL/ds = tau (softmax(s_t/tau) - softmax(z_t/tau)).
// - MoEBERT's symmetric KL (Zuo et al. 2022, sec. 3.3; moe_symkl_forward_backward):
//   L_t = KL(p || q) + KL(q || p), p = softmax(z_t), q = softmax(s_t);
//   dL/ds = (q - p) + q (log q - log p - KL(q || p)).
// - Squared error (moe_mse_forward_backward): sum (y - d)^2, dy += scale 2 (y - d).
//
// Threads: one per row for the row's log-sum-exps (of x / tau, in double, the
// row's max first, exponentials added in class order) and its loss; one per
// (row, class) for the gradient, which recomputes log p and log q from the
// row's two lse values by the same double expressions the CPU stores in its
// row buffers, so it has the same bits; one thread for the batch sum, rows in
// order (the CPU's sum). The exponentials and logarithms are double exp/log
// calls on both sides: the host's libm here, the device's own there.
#ifndef MOE_K_DISTILL_H
#define MOE_K_DISTILL_H

#include <math.h>
#include <stddef.h>

#include "core/hd.h"

// log sum_o exp(x_o / tau), the max of x_o / tau taken out first (nn/loss.c log_softmax_row).
static inline MOE_HD double moe_k_lse_tau(const float *x, size_t O, double tau)
{
    double m = x[0] / tau;
    for (size_t o = 1; o < O; o++)
        m = x[o] / tau > m ? x[o] / tau : m;
    double sum = 0.0;
    for (size_t o = 0; o < O; o++)
        sum += exp(x[o] / tau - m);
    return m + log(sum);
}

// log softmax(x / tau)_o from the row's lse.
static inline MOE_HD double moe_k_logsm(float x, double tau, double lse) { return x / tau - lse; }

// KD's row loss tau^2 sum_o p_o (log p_o - log q_o), p the teacher's (z), q the student's (s).
static inline MOE_HD double moe_k_kd_row(const float *s, const float *z, size_t O, double tau, double lse_s,
                                         double lse_z)
{
    double kl = 0.0;
    for (size_t o = 0; o < O; o++) {
        double lp = moe_k_logsm(z[o], tau, lse_z), lq = moe_k_logsm(s[o], tau, lse_s);
        kl += exp(lp) * (lp - lq);
    }
    return tau * tau * kl;
}

// KD's gradient element: dy += scale tau (q_o - p_o).
static inline MOE_HD void moe_k_kd_grad(float *dy, float s, float z, double tau, double lse_s, double lse_z,
                                        float scale)
{
    double lp = moe_k_logsm(z, tau, lse_z), lq = moe_k_logsm(s, tau, lse_s);
    double p = exp(lp);
    *dy += scale * (float)(tau * (exp(lq) - p));
}

// The symmetric KL's two row sums at tau = 1: KL(p || q) into *pq, KL(q || p) into *qp.
static inline MOE_HD void moe_k_symkl_row(double *pq, double *qp, const float *s, const float *z, size_t O,
                                          double lse_s, double lse_z)
{
    double kl_pq = 0.0, kl_qp = 0.0;
    for (size_t o = 0; o < O; o++) {
        double lp = moe_k_logsm(z[o], 1.0, lse_z), lq = moe_k_logsm(s[o], 1.0, lse_s);
        double p = exp(lp), q = exp(lq);
        kl_pq += p * (lp - lq);
        kl_qp += q * (lq - lp);
    }
    *pq = kl_pq;
    *qp = kl_qp;
}

// Its gradient element: dy += scale ((q - p) + q (log q - log p - KL(q || p))).
static inline MOE_HD void moe_k_symkl_grad(float *dy, float s, float z, double lse_s, double lse_z, double kl_qp,
                                           float scale)
{
    double lp = moe_k_logsm(z, 1.0, lse_z), lq = moe_k_logsm(s, 1.0, lse_s);
    double p = exp(lp), q = exp(lq);
    *dy += scale * (float)((q - p) + q * (lq - lp - kl_qp));
}

// Squared error: one element's term of the sum, and its gradient element.
static inline MOE_HD double moe_k_sq_term(float y, float d)
{
    float r = y - d;
    return (double)r * r;
}
static inline MOE_HD void moe_k_mse_grad(float *dy, float y, float d, float scale)
{
    float r = y - d;
    *dy += scale * 2.0f * r;
}

#endif
