// mixture_loss.h: the 1991 mixture-of-experts objectives over a dense softmax gate.
// T = rows, E = experts, O = outputs (or classes for the categorical NLL).
// Every expert runs on every row; the objective couples gate and experts.
// reference: Jacobs, Jordan, Nowlan & Hinton, "Adaptive mixtures of local
// experts", Neural Computation 3(1), 1991 (eqs. 1.1, 1.2 and the
// log-likelihood of section 2); docs/model.md (mixture) for the gradients.
#ifndef MOE_MIXTURE_LOSS_H
#define MOE_MIXTURE_LOSS_H

#include <stddef.h>
#include <stdint.h>

// Dense mixtures run every expert on every row; configs are capped at this.
#define MOE_MIXTURE_MAX_EXPERTS 1024

enum moe_mix_loss {
    MOE_MIX_COOPERATIVE = 0, // ||d - sum_i p_i o_i||^2
    MOE_MIX_COMPETITIVE = 1, // sum_i p_i ||d - o_i||^2
    MOE_MIX_NLL = 2,         // -log sum_i p_i exp(-1/2 ||d - o_i||^2)
    MOE_MIX_NLL_CAT = 3,     // -log sum_i p_i softmax(o_i)[y]   (class labels)
};

int moe_mix_loss_from_name(const char *name); // -1 when unknown
const char *moe_mix_loss_name(enum moe_mix_loss k);

// Per-row loss summed over rows (the caller divides by its own T).
// z: gate logits (T, E); p: softmax(z) (T, E); o: expert outputs (T, E, O);
// d: targets (T, O) for the squared-error forms; label: (T) for NLL_CAT.
// dz (T, E) and dout (T, E, O) may be NULL; when given they receive += scale * gradient.
// h (T, E), when non-NULL, receives the posterior responsibility of each expert
// (for cooperative and competitive, h = p).
double moe_mixture_loss(enum moe_mix_loss kind, float *dz, float *dout, float *h, const float *z,
                        const float *p, const float *o, const float *d, const int32_t *label, size_t T,
                        size_t E, size_t O, float scale);

#endif
