// route_stats.c: accumulation of routing statistics over batches (route_stats.h).
// Sums are in double, added batch by batch and token by token in order, so
// they do not depend on the thread count.
#include "moe/route_stats.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"

int moe_route_acc_init(struct moe_route_acc *a, size_t E, size_t S, size_t G, struct moe_err *err)
{
    memset(a, 0, sizeof *a);
    a->E = E;
    a->S = S;
    a->G = G;
    a->routed = calloc(E, sizeof *a->routed);
    a->dropped = calloc(E, sizeof *a->dropped);
    a->gate_sum = calloc(E, sizeof *a->gate_sum);
    a->prob_sum = calloc(E, sizeof *a->prob_sum);
    if (S >= 2)
        a->cosel = calloc(E * E, sizeof *a->cosel);
    if (G)
        a->label = calloc(E * G, sizeof *a->label);
    if (!a->routed || !a->dropped || !a->gate_sum || !a->prob_sum || (S >= 2 && !a->cosel) || (G && !a->label)) {
        moe_route_acc_release(a);
        return moe_error(err, MOE_ENOMEM, "out of memory for routing statistics (%zu experts)", E);
    }
    a->has_probs = 1;
    return 0;
}

void moe_route_acc_reset(struct moe_route_acc *a)
{
    size_t E = a->E;
    a->tokens = 0;
    a->weight = a->entropy = a->top1 = a->lse = a->aux = a->z = 0.0;
    memset(a->routed, 0, E * sizeof *a->routed);
    memset(a->dropped, 0, E * sizeof *a->dropped);
    memset(a->gate_sum, 0, E * sizeof *a->gate_sum);
    memset(a->prob_sum, 0, E * sizeof *a->prob_sum);
    if (a->cosel)
        memset(a->cosel, 0, E * E * sizeof *a->cosel);
    if (a->label)
        memset(a->label, 0, E * a->G * sizeof *a->label);
}

void moe_route_acc_release(struct moe_route_acc *a)
{
    if (!a)
        return;
    free(a->routed);
    free(a->dropped);
    free(a->gate_sum);
    free(a->prob_sum);
    free(a->cosel);
    free(a->label);
    memset(a, 0, sizeof *a);
}

void moe_route_acc_add(struct moe_route_acc *a, const struct moe_route *r, const struct moe_dispatch *plan,
                       const int32_t *label, double aux, double z, int has_probs)
{
    size_t T = r->T, E = r->E, S = r->S;
    a->has_probs = has_probs;
    a->tokens += T;
    a->weight += (double)T;
    a->aux += (double)T * aux;
    a->z += (double)T * z;
    for (size_t e = 0; e < E; e++) {
        a->routed[e] += (double)plan->routed[e];
        a->dropped[e] += (double)plan->dropped[e];
    }
    for (size_t t = 0; t < T; t++) {
        const int32_t *idx = r->idx + t * S, *sel = r->sel + t * S;
        const float *g = r->gate + t * S, *pr = r->prio + t * S;
        int32_t first = -1;
        float best = -1.0f;
        for (size_t s = 0; s < S; s++) {
            if (idx[s] >= 0)
                a->gate_sum[idx[s]] += g[s];
            if (sel[s] >= 0 && pr[s] > best) {
                best = pr[s];
                first = sel[s];
            }
        }
        if (a->label && label && first >= 0 && label[t] >= 0 && (size_t)label[t] < a->G)
            a->label[(size_t)first * a->G + (size_t)label[t]]++;
        if (a->cosel)
            for (size_t s = 0; s < S; s++)
                for (size_t q = 0; q < S; q++)
                    if (s != q && idx[s] >= 0 && idx[q] >= 0)
                        a->cosel[(size_t)idx[s] * E + (size_t)idx[q]]++;
        if (!has_probs)
            continue;
        const float *p = r->p + t * E;
        double h = 0.0, top = 0.0;
        for (size_t e = 0; e < E; e++) {
            double v = p[e];
            a->prob_sum[e] += v;
            if (v > 0.0)
                h -= v * log(v);
            if (v > top)
                top = v;
        }
        a->entropy += h;
        a->top1 += top;
        a->lse += r->lse[t];
    }
}

double moe_cv(const double *v, size_t n)
{
    if (n == 0)
        return NAN;
    double mean = 0.0, var = 0.0;
    for (size_t i = 0; i < n; i++)
        mean += v[i];
    mean /= (double)n;
    if (mean == 0.0)
        return NAN;
    for (size_t i = 0; i < n; i++)
        var += (v[i] - mean) * (v[i] - mean);
    return sqrt(var / (double)n) / mean;
}

double moe_max_mean(const double *v, size_t n)
{
    if (n == 0)
        return NAN;
    double mean = 0.0, mx = v[0];
    for (size_t i = 0; i < n; i++) {
        mean += v[i];
        if (v[i] > mx)
            mx = v[i];
    }
    mean /= (double)n;
    return mean > 0.0 ? mx / mean : NAN;
}

double moe_route_acc_dropped_fraction(const struct moe_route_acc *a)
{
    double routed = 0.0, dropped = 0.0;
    for (size_t e = 0; e < a->E; e++) {
        routed += a->routed[e];
        dropped += a->dropped[e];
    }
    return routed > 0.0 ? dropped / routed : NAN;
}

size_t moe_route_acc_dead(const struct moe_route_acc *a)
{
    size_t k = 0;
    for (size_t e = 0; e < a->E; e++)
        k += a->routed[e] == 0.0;
    return k;
}

double moe_mi_bits(const uint64_t *ct, size_t A, size_t B)
{
    // I(a; b) = sum_{a,b} p(a,b) log2(p(a,b) / (p(a) p(b)))
    double n = 0.0, mi = 0.0;
    double *pa = calloc(A ? A : 1, sizeof *pa), *pb = calloc(B ? B : 1, sizeof *pb);
    if (!pa || !pb) {
        free(pa);
        free(pb);
        return NAN;
    }
    for (size_t i = 0; i < A; i++)
        for (size_t j = 0; j < B; j++) {
            double c = (double)ct[i * B + j];
            pa[i] += c;
            pb[j] += c;
            n += c;
        }
    for (size_t i = 0; i < A && n > 0; i++)
        for (size_t j = 0; j < B; j++) {
            double c = (double)ct[i * B + j];
            if (c > 0)
                mi += c / n * log2(c * n / (pa[i] * pb[j]));
        }
    free(pa);
    free(pb);
    return n > 0 ? mi : NAN;
}

double moe_route_acc_label_mi(const struct moe_route_acc *a)
{
    return a->label ? moe_mi_bits(a->label, a->E, a->G) : NAN;
}

void moe_contingency_part(const uint64_t *ct, size_t A, size_t B, size_t B2, int part, uint64_t *ret)
{
    size_t B1 = B / B2, W = part == 0 ? B1 : B2;
    memset(ret, 0, A * W * sizeof *ret);
    for (size_t i = 0; i < A; i++)
        for (size_t j = 0; j < B; j++)
            ret[i * W + (part == 0 ? j / B2 : j % B2)] += ct[i * B + j];
}

double moe_route_acc_label_mi_part(const struct moe_route_acc *a, int part)
{
    if (!a->label || !a->G2 || a->G % a->G2)
        return NAN;
    size_t W = part == 0 ? a->G / a->G2 : a->G2;
    uint64_t *t = malloc(a->E * W * sizeof *t);
    if (!t)
        return NAN;
    moe_contingency_part(a->label, a->E, a->G, a->G2, part, t);
    double mi = moe_mi_bits(t, a->E, W);
    free(t);
    return mi;
}

// The permutation null of a contingency table: N tokens keep their labels and
// the experts keep their counts; which token goes to which expert is a seeded
// random permutation (Fisher-Yates with counter-based draws, core/rng.h).
double moe_mi_bits_null(const uint64_t *ct, size_t A, size_t B, uint64_t seed, int reps)
{
    uint64_t n = 0;
    for (size_t i = 0; i < A * B; i++)
        n += ct[i];
    if (n == 0 || n > UINT32_MAX || reps < 1)
        return NAN;
    uint32_t *lab = malloc((size_t)n * sizeof *lab), *perm = malloc((size_t)n * sizeof *perm);
    uint64_t *rows = calloc(A, sizeof *rows), *t = malloc(A * B * sizeof *t);
    double sum = NAN;
    if (!lab || !perm || !rows || !t)
        goto out;
    size_t k = 0;
    for (size_t j = 0; j < B; j++)
        for (size_t i = 0; i < A; i++)
            for (uint64_t c = 0; c < ct[i * B + j]; c++)
                lab[k++] = (uint32_t)j;
    for (size_t i = 0; i < A; i++)
        for (size_t j = 0; j < B; j++)
            rows[i] += ct[i * B + j];
    sum = 0.0;
    for (int r = 0; r < reps; r++) {
        struct moe_rng g = moe_rng_make(seed, MOE_RNG_SHUFFLE, 0x4e554c4cu + (uint32_t)r);
        moe_rng_permutation(&g, perm, (size_t)n);
        memset(t, 0, A * B * sizeof *t);
        size_t pos = 0;
        for (size_t i = 0; i < A; i++)
            for (uint64_t c = 0; c < rows[i]; c++)
                t[i * B + lab[perm[pos++]]]++;
        sum += moe_mi_bits(t, A, B);
    }
    sum /= reps;
out:
    free(lab);
    free(perm);
    free(rows);
    free(t);
    return sum;
}
