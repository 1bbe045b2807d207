// gradcheck.h: the finite-difference check every gradient test shares.
// Method (tests/test_grad.c explains the step sizes): central differences in
// float with the step actually stored, (L(w+) - L(w-)) / (w+ - w-), and the
// tolerance |analytic - numeric| <= GRAD_TOL * max(1, |numeric|).
#ifndef MOE_GRADCHECK_H
#define MOE_GRADCHECK_H

#include <check.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "core/rng.h"

#define GRAD_TOL 2e-3

// Largest |a - n| / max(1, |n|) seen by check_grad in this program (a test may reset it).
static double grad_worst;

// Compare one analytic derivative with its numeric twin; `what`/`i` name it on failure.
static inline void check_grad(double analytic, double numeric, const char *what, size_t i)
{
    double scale = fabs(numeric) > 1.0 ? fabs(numeric) : 1.0;
    double rel = fabs(analytic - numeric) / scale;
    if (rel > grad_worst)
        grad_worst = rel;
    ck_assert_msg(rel <= GRAD_TOL, "%s[%zu]: analytic %.7g vs numeric %.7g (rel err %.3g > %.1g)", what, i,
                  analytic, numeric, rel, GRAD_TOL);
}

// Central difference of f wrt *w, restoring *w. f is evaluated on the current buffers.
typedef double (*loss_fn)(void *ctx);
static inline double numeric_grad(float *w, float h, loss_fn f, void *ctx)
{
    float w0 = *w;
    float wp = w0 + h, wm = w0 - h;
    *w = wp;
    double lp = f(ctx);
    *w = wm;
    double lm = f(ctx);
    *w = w0;
    return (lp - lm) / ((double)wp - (double)wm);
}

// Central differences over one tensor of a model with discrete routing: f also
// reports a signature of its routing decisions, and an element whose w+ or w-
// changes it (a choice flipped, so L is not smooth there) is skipped. Each
// other element is checked against g with check_grad; the tally adds up what
// was checked and skipped, the largest |numeric|, and the squared differences
// and numeric norms (for a whole-tensor relative error).
typedef double (*routed_loss_fn)(void *ctx, unsigned *sig);
struct fd_tally {
    size_t checked, skipped;
    double biggest, diff2, num2;
};
static inline void check_grad_routed(float *w, const float *g, size_t n, float h, routed_loss_fn f, void *ctx,
                                     unsigned sig0, const char *what, struct fd_tally *t)
{
    for (size_t j = 0; j < n; j++) {
        float w0 = w[j], wp = w0 + h, wm = w0 - h;
        unsigned s1, s2;
        w[j] = wp;
        double lp = f(ctx, &s1);
        w[j] = wm;
        double lm = f(ctx, &s2);
        w[j] = w0;
        if (s1 != sig0 || s2 != sig0) {
            t->skipped++;
            continue;
        }
        double num = (lp - lm) / ((double)wp - (double)wm);
        check_grad(g[j], num, what, j);
        t->biggest = fmax(t->biggest, fabs(num));
        t->diff2 += (g[j] - num) * (g[j] - num);
        t->num2 += num * num;
        t->checked++;
    }
}

static inline double max_abs(const float *x, size_t n)
{
    double m = 0.0;
    for (size_t i = 0; i < n; i++)
        m = fabs(x[i]) > m ? fabs(x[i]) : m;
    return m;
}

// Test data from the counter RNG (purpose DATA, seed 20240611, one stream per use).
static inline void fill_u(float *x, size_t n, uint32_t stream, float lo, float hi)
{
    struct moe_rng r = moe_rng_make(20240611, MOE_RNG_DATA, stream);
    moe_rng_fill_uniform(&r, x, n, lo, hi);
}

#endif
