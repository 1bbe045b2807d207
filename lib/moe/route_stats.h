// route_stats.h: what a sparse layer's routers did, accumulated over batches:
// per-expert counts (before capacity), drops, importance, mean router
// probability, entropy, co-selection and the expert-label contingency table.
// Filled by moe_layer_forward when given an accumulator; read by the trainer
// (metrics.csv, experts.csv) and by `moe route-stats`. Not here: the routing.
// E = n_expert, S = slots per token, G = label classes.
#ifndef MOE_ROUTE_STATS_H
#define MOE_ROUTE_STATS_H

#include <stddef.h>
#include <stdint.h>

#include "core/status.h"
#include "moe/dispatch.h"
#include "moe/router.h"

struct moe_route_acc {
    size_t E, S, G;
    uint64_t tokens;      // tokens routed
    double weight;        // sum over batches of T (for token-weighted batch means)
    int has_probs;        // 0 for hash routing (no router probabilities)
    double *routed;       // (E) assignments that wanted e (before capacity)
    double *dropped;      // (E) of those, dropped for capacity
    double *gate_sum;     // (E) importance: sum of gate weights of dispatched slots
    double *prob_sum;     // (E) sum over tokens of p[t, e]
    double entropy;       // sum over tokens of H(p_t), nats
    double top1;          // sum over tokens of max_e p[t, e]
    double lse;           // sum over tokens of logsumexp z_t
    double aux;           // sum over batches of T * (unweighted auxiliary value of the batch)
    double z;             // sum over batches of T * (z-loss value of the batch)
    uint64_t *cosel;      // (E, E) tokens whose dispatched slots include both a and b (a != b), S >= 2 only
    uint64_t *label;      // (E, G) tokens whose first choice is e and whose label is g, G > 0 only
    size_t G2;            // 0, or labels are pairs g = g1 * G2 + g2 (language models: byte class, language)
};
int moe_route_acc_init(struct moe_route_acc *a, size_t E, size_t S, size_t G, struct moe_err *err);
void moe_route_acc_reset(struct moe_route_acc *a);
void moe_route_acc_release(struct moe_route_acc *a);

// Add one batch: the route and plan of T tokens, their labels (T) or NULL, and
// the batch's unweighted auxiliary and z-loss values.
void moe_route_acc_add(struct moe_route_acc *a, const struct moe_route *r, const struct moe_dispatch *plan,
                       const int32_t *label, double aux, double z, int has_probs);

// Derived figures (NaN when not applicable).
double moe_cv(const double *v, size_t n);            // population std / mean
double moe_max_mean(const double *v, size_t n);      // max / mean
double moe_route_acc_dropped_fraction(const struct moe_route_acc *a);
size_t moe_route_acc_dead(const struct moe_route_acc *a); // experts that received no assignment
double moe_route_acc_label_mi(const struct moe_route_acc *a); // bits, I(first-choice expert; label)
// For pair labels (G2 > 0): I(expert; g1) (part 0) or I(expert; g2) (part 1), bits; NaN otherwise.
double moe_route_acc_label_mi_part(const struct moe_route_acc *a, int part);
// The contingency table (A, B) marginalised to (A, B / B2) (part 0) or (A, B2) (part 1) into ret (caller-sized).
void moe_contingency_part(const uint64_t *ct, size_t A, size_t B, size_t B2, int part, uint64_t *ret);
// Chance level of moe_mi_bits for a table with ct's margins: the mean MI, over
// reps tables whose column labels were randomly permuted across the row counts
// (seeded, counter-based), i.e. routing that keeps each expert's load but ignores the label.
double moe_mi_bits_null(const uint64_t *ct, size_t A, size_t B, uint64_t seed, int reps);
// Mutual information in bits of a contingency table ct (A, B) of counts; NaN when empty.
double moe_mi_bits(const uint64_t *ct, size_t A, size_t B);

#endif
