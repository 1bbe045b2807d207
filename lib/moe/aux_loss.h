// aux_loss.h: the auxiliary losses of sparse routing, each convention named
// as it appears in the code bases that use it (docs/routing.md), plus the
// router z-loss. Each function returns the unweighted value for the batch and,
// when its gradient pointers are non-NULL, adds coef * dL/d(...) into them.
// Gradients flow through the soft quantities only: f (fraction routed) is a
// count and carries no gradient; the selection is held fixed.
// Not here: the routers themselves (router.h).
//
// T = tokens in the batch, E = n_expert, S = slots per token (struct moe_route).
// p = softmax(z) (the clean router probabilities), P_e = (1/T) sum_t p[t, e].
// f_e = (1/T) * #{t : sel[t, 0] = e} (first choice, before capacity),
// f^all_e = (1/T) * #{(t, s) : sel[t, s] = e} (every slot, before capacity).
//
// | name      | value                                  | balanced value |
// |-----------|----------------------------------------|----------------|
// | switch    | E * sum_e f_e P_e (Fedus et al. 2021)  | 1              |
// | gshard    | E^2 * mean_e (f_e P_e) (lingvo, fairseq top2gating) | 1 |
// | topk-all  | E * sum_e f^all_e P_e (HF Mixtral)     | K              |
// | importance| CV(Importance)^2, Importance_e = sum_t sum_s [idx=e] gate[t,s] | 0 |
// | load      | CV(Load)^2, Load_e = sum_t Phi((z[t,e] - thr[t,e]) / softplus(u[t,e])) | 0 |
// | z         | (1/T) sum_t lse_t^2 (Zoph et al. 2022, ST-MoE) | - |
// CV uses the population variance: CV^2 = var / mean^2 (0 when mean = 0).
// "switch" and "gshard" are the same number (E^2 * mean = E * sum); both names
// exist so a run records the convention its user asked for.
// "shazeer" (Shazeer et al. 2017) = w_importance * importance + w_load * load.
#ifndef MOE_AUX_LOSS_H
#define MOE_AUX_LOSS_H

#include <stddef.h>

#include "moe/router.h"

enum moe_aux_type { MOE_AUX_NONE = 0, MOE_AUX_SHAZEER = 1, MOE_AUX_SWITCH = 2, MOE_AUX_GSHARD = 3,
                    MOE_AUX_TOPK_ALL = 4 };
// "none", "shazeer", "switch", "gshard", "topk-all"
int moe_aux_from_name(const char *name); // -1 when unknown
const char *moe_aux_name(enum moe_aux_type t);

// switch / gshard / topk-all: gradient through P only:
//   d/dp[t, e] = coef * E * f_e / T (f^all for topk-all), then into dz via the
//   softmax Jacobian: dz[t, j] += p_j (dp_j - sum_e p_e dp_e). dz may be NULL.
double moe_aux_switch(float *dz, const struct moe_route *r, float coef);
double moe_aux_gshard(float *dz, const struct moe_route *r, float coef);
double moe_aux_topk_all(float *dz, const struct moe_route *r, float coef);

// Shazeer importance: CV^2 of Importance (gates of dispatched slots, r->idx and
// r->gate). Gradient into dgate (T, S) (may be NULL):
//   d CV^2 / d I_e = 2 (I_e - mean) / (E mean^2) - 2 var / (E mean^3).
double moe_aux_importance(float *dgate, const struct moe_route *r, float coef);

// Shazeer smooth load (NOISY_TOPK, K < E): P(t, e) = Phi((z[t,e] - thr[t,e]) / sd[t,e]),
// sd = softplus(u[t, e]), thr[t, e] = the K-th largest of h[t, :] excluding e:
// the (K+1)-th largest of h[t, :] if h[t, e] is among the top K (i.e. e is
// selected), else the K-th largest (tensor2tensor's _prob_in_top_k). Gradient
// into dz and du (T, E) (both NULL or both set), including the path through
// thr: thr is h[t, j*] for some j*, so d thr / d z[t, j*] = 1 and
// d thr / d u[t, j*] = eps[t, j*] * sigmoid(u[t, j*]).
double moe_aux_load(float *dz, float *du, const struct moe_route *r, size_t K, float coef);

// ST-MoE router z-loss: (1/T) sum_t lse_t^2; dz[t, j] += coef * (2/T) lse_t p[t, j].
double moe_aux_z(float *dz, const struct moe_route *r, float coef);

#endif
