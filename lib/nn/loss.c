// loss.c: MSE, softmax cross-entropy and the row softmax they share with gates.
// T = rows, O = outputs or classes, E = softmax width.
#include <math.h>
#include <stdlib.h>

#include "core/vmath.h"
#include "nn/nn.h"

double moe_mse_forward_backward(float *dy, const float *y, const float *d, size_t T, size_t O, float scale)
{
    double sum = 0.0;
    for (size_t t = 0; t < T; t++)
        for (size_t o = 0; o < O; o++) {
            float r = y[t * O + o] - d[t * O + o];
            sum += (double)r * r;
            if (dy)
                dy[t * O + o] += scale * 2.0f * r;
        }
    return sum;
}

void moe_softmax_forward(float *p, float *lse, const float *z, size_t T, size_t E)
{
    for (size_t t = 0; t < T; t++) {
        const float *zt = z + t * E;
        float *pt = p + t * E;
        float m = zt[0];
        for (size_t e = 1; e < E; e++)
            m = zt[e] > m ? zt[e] : m;
        double s = 0.0;
        for (size_t e = 0; e < E; e++) {
            pt[e] = expf(zt[e] - m);
            s += pt[e];
        }
        float inv = (float)(1.0 / s);
        for (size_t e = 0; e < E; e++)
            pt[e] *= inv;
        if (lse)
            lse[t] = m + (float)log(s);
    }
}

// Softmax cross-entropy, row by row. Exponentials go through the vector exp
// (core/vmath.h) CHUNK classes at a time on a stack buffer; each row's sum is in
// double in class order. Rows are independent, so OpenMP splits them; the batch
// sum is over NB fixed blocks of rows (blocks depend on T only), each in row
// order, then the blocks in order: the same value for any thread count.
#define CHUNK 512
#define NB 256
#define PAR_MIN (1u << 14) // logits (T x O) before the rows go parallel

double moe_ce_rows(float *dy, float *row_loss, int32_t *row_argmax, const float *y, const int32_t *label, size_t T,
                   size_t O, float scale)
{
    double part[NB];
    size_t bs = (T + NB - 1) / NB;
    #pragma omp parallel for schedule(static) if (T * O >= PAR_MIN)
    for (size_t b = 0; b < NB; b++) {
        size_t lo = b * bs < T ? b * bs : T, hi = lo + bs < T ? lo + bs : T;
        double block = 0.0;
        float buf[CHUNK];
        for (size_t t = lo; t < hi; t++) {
            const float *yt = y + t * O;
            float m = yt[0];
            size_t am = 0;
            for (size_t o = 1; o < O; o++)
                if (yt[o] > m) {
                    m = yt[o];
                    am = o;
                }
            double s = 0.0;
            for (size_t c = 0; c < O; c += CHUNK) {
                size_t n = O - c < CHUNK ? O - c : CHUNK;
                for (size_t o = 0; o < n; o++)
                    buf[o] = yt[c + o] - m;
                moe_vexpf(buf, buf, n);
                for (size_t o = 0; o < n; o++)
                    s += buf[o];
            }
            double lse = (double)m + log(s);
            double loss = lse - (double)yt[label[t]];
            block += loss;
            if (row_loss)
                row_loss[t] = (float)loss;
            if (row_argmax)
                row_argmax[t] = (int32_t)am;
            if (!dy)
                continue;
            // dL/dy = softmax(y) - onehot(label), the probabilities from y - lse
            float *dyt = dy + t * O;
            for (size_t c = 0; c < O; c += CHUNK) {
                size_t n = O - c < CHUNK ? O - c : CHUNK;
                for (size_t o = 0; o < n; o++)
                    buf[o] = (float)((double)yt[c + o] - lse);
                moe_vexpf(buf, buf, n);
                for (size_t o = 0; o < n; o++)
                    dyt[c + o] += scale * buf[o];
            }
            dyt[label[t]] -= scale;
        }
        part[b] = block;
    }
    double sum = 0.0;
    for (size_t b = 0; b < NB; b++)
        sum += part[b];
    return sum;
}

double moe_ce_forward_backward(float *dy, const float *y, const int32_t *label, size_t T, size_t O, float scale)
{
    return moe_ce_rows(dy, NULL, NULL, y, label, T, O, scale);
}

// log-softmax of one row of x/tau into out (double), the row's max subtracted first.
static void log_softmax_row(double *out, const float *x, size_t O, double tau)
{
    double m = x[0] / tau;
    for (size_t o = 1; o < O; o++)
        m = x[o] / tau > m ? x[o] / tau : m;
    double sum = 0.0;
    for (size_t o = 0; o < O; o++)
        sum += exp(x[o] / tau - m);
    double lse = m + log(sum);
    for (size_t o = 0; o < O; o++)
        out[o] = x[o] / tau - lse;
}

double moe_kd_forward_backward(float *dy, const float *s, const float *z, size_t T, size_t O, float tau,
                               float scale)
{
    double sum = 0.0, tt = (double)tau;
    double lp_buf[256], *lp = O <= 128 ? lp_buf : malloc(2 * O * sizeof *lp), *lq = lp + O;
    if (!lp)
        return NAN; // out of memory shows up as a non-finite loss, which stops the run
    for (size_t t = 0; t < T; t++) {
        log_softmax_row(lp, z + t * O, O, tt); // teacher
        log_softmax_row(lq, s + t * O, O, tt); // student
        double kl = 0.0;
        for (size_t o = 0; o < O; o++) {
            double p = exp(lp[o]);
            kl += p * (lp[o] - lq[o]);
            if (dy)
                dy[t * O + o] += scale * (float)(tt * (exp(lq[o]) - p));
        }
        sum += tt * tt * kl;
    }
    if (lp != lp_buf)
        free(lp);
    return sum;
}

double moe_symkl_forward_backward(float *dy, const float *s, const float *z, size_t T, size_t O, float scale)
{
    double sum = 0.0;
    double lp_buf[256], *lp = O <= 128 ? lp_buf : malloc(2 * O * sizeof *lp), *lq = lp + O;
    if (!lp)
        return NAN; // out of memory shows up as a non-finite loss, which stops the run
    for (size_t t = 0; t < T; t++) {
        log_softmax_row(lp, z + t * O, O, 1.0); // teacher
        log_softmax_row(lq, s + t * O, O, 1.0); // student
        double kl_pq = 0.0, kl_qp = 0.0;
        for (size_t o = 0; o < O; o++) {
            double p = exp(lp[o]), q = exp(lq[o]);
            kl_pq += p * (lp[o] - lq[o]);
            kl_qp += q * (lq[o] - lp[o]);
        }
        sum += kl_pq + kl_qp;
        if (dy)
            for (size_t o = 0; o < O; o++) {
                double p = exp(lp[o]), q = exp(lq[o]);
                dy[t * O + o] += scale * (float)((q - p) + q * (lq[o] - lp[o] - kl_qp));
            }
    }
    if (lp != lp_buf)
        free(lp);
    return sum;
}
