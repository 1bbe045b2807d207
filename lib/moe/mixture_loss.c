// mixture_loss.c: cooperative, competitive and mixture negative log-likelihood
// losses of Jacobs et al. 1991, with their gradients (see mixture_loss.h).
// T = rows, E = experts, O = outputs. Accumulation in double, per row, so the
// result does not depend on threads.
#include "moe/mixture_loss.h"

#include <math.h>
#include <string.h>

static const char *const names[] = { "cooperative", "competitive", "nll", "nll-cat" };

int moe_mix_loss_from_name(const char *name)
{
    for (int i = 0; i < 4; i++)
        if (strcmp(name, names[i]) == 0)
            return i;
    return -1;
}

const char *moe_mix_loss_name(enum moe_mix_loss k) { return names[k]; }

// log sum_i exp(a_i)
static double logsumexp(const double *a, size_t n)
{
    double m = a[0];
    for (size_t i = 1; i < n; i++)
        m = a[i] > m ? a[i] : m;
    double s = 0.0;
    for (size_t i = 0; i < n; i++)
        s += exp(a[i] - m);
    return m + log(s);
}

#define MIX_MAX_E MOE_MIXTURE_MAX_EXPERTS

double moe_mixture_loss(enum moe_mix_loss kind, float *dz, float *dout, float *h, const float *z,
                        const float *p, const float *o, const float *d, const int32_t *label, size_t T,
                        size_t E, size_t O, float scale)
{
    double total = 0.0;
    double a[MIX_MAX_E], e_sq[MIX_MAX_E];
    for (size_t t = 0; t < T; t++) {
        const float *zt = z + t * E, *pt = p + t * E, *ot = o + t * E * O;
        const float *dt = d ? d + t * O : NULL;
        float *dzt = dz ? dz + t * E : NULL;
        float *dot = dout ? dout + t * E * O : NULL;
        float *ht = h ? h + t * E : NULL;
        switch (kind) {
        case MOE_MIX_COOPERATIVE: {
            // o_bar = sum_i p_i o_i; L = ||d - o_bar||^2
            double loss = 0.0;
            for (size_t k = 0; k < O; k++) {
                double ob = 0.0;
                for (size_t i = 0; i < E; i++)
                    ob += (double)pt[i] * ot[i * O + k];
                double res = dt[k] - ob; // d - o_bar
                loss += res * res;
                for (size_t i = 0; i < E; i++) {
                    if (dot)
                        dot[i * O + k] += scale * (float)(-2.0 * pt[i] * res);
                    // dL/dz_j = -2 p_j (d - o_bar).(o_j - o_bar), accumulated per output k
                    if (dzt)
                        dzt[i] += scale * (float)(-2.0 * pt[i] * res * (ot[i * O + k] - ob));
                }
            }
            if (ht)
                memcpy(ht, pt, E * sizeof *ht);
            total += loss;
            break;
        }
        case MOE_MIX_COMPETITIVE: {
            // L = sum_i p_i e_i with e_i = ||d - o_i||^2; dL/dz_j = p_j (e_j - e_bar)
            double ebar = 0.0;
            for (size_t i = 0; i < E; i++) {
                double s = 0.0;
                for (size_t k = 0; k < O; k++) {
                    double res = dt[k] - ot[i * O + k];
                    s += res * res;
                    if (dot)
                        dot[i * O + k] += scale * (float)(-2.0 * pt[i] * res);
                }
                e_sq[i] = s;
                ebar += pt[i] * s;
            }
            if (dzt)
                for (size_t i = 0; i < E; i++)
                    dzt[i] += scale * (float)(pt[i] * (e_sq[i] - ebar));
            if (ht)
                memcpy(ht, pt, E * sizeof *ht);
            total += ebar;
            break;
        }
        case MOE_MIX_NLL:
        case MOE_MIX_NLL_CAT: {
            // L = LSE(z) - LSE(a), a_i = z_i + log(likelihood under expert i):
            //   Gaussian: log lik_i = -1/2 ||d - o_i||^2;  categorical: log softmax(o_i)[y].
            // The posterior h = softmax(a); dL/dz_j = p_j - h_j.
            double zz[MIX_MAX_E] = { 0 }; // (zeroed only to quiet -O3's may-be-uninitialized: E >= 1)
            for (size_t i = 0; i < E; i++) {
                zz[i] = zt[i];
                double ll;
                if (kind == MOE_MIX_NLL) {
                    double s = 0.0;
                    for (size_t k = 0; k < O; k++) {
                        double res = dt[k] - ot[i * O + k];
                        s += res * res;
                    }
                    ll = -0.5 * s;
                } else {
                    double m = ot[i * O];
                    for (size_t k = 1; k < O; k++)
                        m = ot[i * O + k] > m ? ot[i * O + k] : m;
                    double s = 0.0;
                    for (size_t k = 0; k < O; k++)
                        s += exp(ot[i * O + k] - m);
                    e_sq[i] = m + log(s); // LSE of expert i's logits, reused below
                    ll = ot[i * O + label[t]] - e_sq[i];
                }
                a[i] = zt[i] + ll;
            }
            double lse_a = logsumexp(a, E);
            total += logsumexp(zz, E) - lse_a;
            for (size_t i = 0; i < E; i++) {
                double hi = exp(a[i] - lse_a);
                if (ht)
                    ht[i] = (float)hi;
                if (dzt)
                    dzt[i] += scale * (float)(pt[i] - hi);
                if (!dot)
                    continue;
                if (kind == MOE_MIX_NLL) {
                    // dL/do_i = -h_i (d - o_i)
                    for (size_t k = 0; k < O; k++)
                        dot[i * O + k] += scale * (float)(-hi * (dt[k] - ot[i * O + k]));
                } else {
                    // dL/do_{i,c} = h_i (softmax(o_i)_c - [c = y])
                    for (size_t k = 0; k < O; k++) {
                        double q = exp(ot[i * O + k] - e_sq[i]);
                        dot[i * O + k] += scale * (float)(hi * (q - (k == (size_t)label[t] ? 1.0 : 0.0)));
                    }
                }
            }
            break;
        }
        }
    }
    return total;
}
