// prune.h: structured pruning of MoE models (issue 21): dropping whole
// experts of a sparse layer, and masking FFN neurons (hidden units) of the
// experts and dense FFNs by an importance score. Nothing here reads files or
// prints; the command (cmd/cmd_compress.c) measures the scores on data and
// writes the smaller checkpoint.
//
// Expert pruning keeps the experts of highest score in each sparse layer, in
// their order, and drops the rest with their router rows; the scores are the
// caller's: tokens routed to the expert (usage), the sum of its gate weights
// (importance, Shazeer et al. 2017's Importance(X)), or random.
//
// A neuron j of an FFN is row j of w1 (and of w3, and element j of b1), and
// column j of w2: with those zero the unit contributes nothing to the output,
// whatever the activation. Its scores:
//   l1:     sum of |w| over those weights
//   l2:     sqrt of the sum of w^2 over them
//   taylor: |sum of w * g| over them, g the loss's gradient on data: the
//           first-order estimate of the loss change when the unit is removed
//           (Molchanov et al., "Importance Estimation for Neural Network
//           Pruning", CVPR 2019, eq. 4 summed over the unit's weights)
// Selection drops the fraction's lowest-scoring units, each FFN on its own
// (per layer) or all FFNs ranked together (global); ties go by position (the
// later unit is dropped first), so the result is a function of the scores.
#ifndef MOE_PRUNE_H
#define MOE_PRUNE_H

#include <stddef.h>
#include <stdint.h>

#include "core/params.h"
#include "core/status.h"
#include "io/safetensors.h"

// drop[i] = 1 for the n_drop entries of lowest score (ties: the higher index
// first), else 0. MOE_EINVAL when n_drop > n or a score is NaN.
int moe_prune_select(const double *score, size_t n, size_t n_drop, uint8_t *drop, struct moe_err *err);

// n uniform scores in [0, 1) from (seed, stream): random pruning's scores, a
// function of the seed and the stream (e.g. the layer) only.
void moe_prune_random_scores(double *score, size_t n, uint64_t seed, uint32_t stream);

// dst = the rows of src (n_rows rows of `row` floats) whose drop is 0, in order.
void moe_prune_gather_rows(float *dst, const float *src, size_t n_rows, size_t row, const uint8_t *drop);

// One FFN of a registry: tensors NAME.w1 (F, D) or (M, F, D), NAME.w2 (D, F)
// or (M, D, F), optional NAME.w3 (w1's shape) and NAME.b1 ((F) or (M, F));
// M = 1 for a 2-d FFN. Units: M x F neurons, unit u = m F + j. The registry
// must hold every expert (not one process's share under expert parallelism).
enum { MOE_FFN_W1 = 0, MOE_FFN_W3, MOE_FFN_W2, MOE_FFN_B1, MOE_FFN_N };
struct moe_ffn {
    char name[MOE_NAME_MAX];
    int t[MOE_FFN_N]; // tensor indices in the registry, -1 when absent (w1 and w2 never are)
    size_t M, F, D;
};

// The FFNs of p, in registry order of their w1: up to max into ret; returns
// how many there are. A NAME.w1 without a matching NAME.w2 is not an FFN.
size_t moe_ffn_find(const struct moe_params *p, struct moe_ffn *ret, size_t max);

enum moe_neuron_score { MOE_NEURON_L1 = 0, MOE_NEURON_L2, MOE_NEURON_TAYLOR };

// score[u] (M F of them) for f's units from p's weights (and grad, in p's
// layout, for taylor; NULL otherwise).
void moe_ffn_scores(const struct moe_params *p, const struct moe_ffn *f, enum moe_neuron_score kind,
                    const float *grad, double *score);

// Zero the weights of f's units whose mask is 1 (M F entries).
void moe_ffn_apply_mask(struct moe_params *p, const struct moe_ffn *f, const uint8_t *mask);

// Elements of tensor i that are exactly zero (+0.0 or -0.0).
size_t moe_params_zeros(const struct moe_params *p, int i);

// ---- the masks of a model's FFNs ----
// One mask per FFN of a registry (moe_ffn_find's order), M F flags, 1 = the
// unit is pruned. In a checkpoint each is tensor NAME.pruned (U8; (M, F), or
// (F) for a 2-d FFN); a file without them has nothing pruned. moe compress
// writes them, and train keeps them: a pruned unit's weights stay zero.
#define MOE_PRUNED_SUFFIX ".pruned"
struct moe_ffn_masks {
    size_t n;                               // FFNs
    struct moe_ffn *ffn;                    // (n)
    uint8_t **mask;                         // (n) M F flags each
    char (*name)[MOE_NAME_MAX + 8];         // (n) the tensors' names, NAME.pruned
    size_t units;                           // all units, sum of M F
};
// The FFNs of p with nothing pruned (n = 0 for a model without FFNs).
int moe_ffn_masks_init(struct moe_ffn_masks *k, const struct moe_params *p, struct moe_err *err);
// The masks a file holds (its NAME.pruned tensors; an FFN without one keeps
// its mask), k from p's FFNs. MOE_EFORMAT naming the file and the tensor for
// one of another dtype or shape, or with a value other than 0 and 1; the
// masks are then as they were.
int moe_ffn_masks_read(struct moe_ffn_masks *k, const struct moe_st_file *f, const struct moe_params *p,
                       struct moe_err *err);
// The masks as tensors to write, one per FFN, into refs (k->n of them, all
// FFNs, pruned or not, so that a reader sees the whole state); returns k->n.
size_t moe_ffn_masks_refs(const struct moe_ffn_masks *k, const struct moe_params *p, struct moe_st_ref *refs);
// Units pruned: in FFN i (i < n), or over all FFNs (i = n).
size_t moe_ffn_masks_pruned(const struct moe_ffn_masks *k, size_t i);
// Zero the weights of every pruned unit.
void moe_ffn_masks_apply(const struct moe_ffn_masks *k, struct moe_params *p);
// dead[at] = 1 for every registry element (p->data[at]) of a pruned unit, 0 for the rest (p->numel flags).
void moe_ffn_masks_dead(const struct moe_ffn_masks *k, const struct moe_params *p, uint8_t *dead);
// Prune more units, so that each FFN (per layer) or all of them together
// (global) have floor(fraction x units) pruned, or as many as already are when
// that is more: the live units of lowest score (moe_ffn_scores of kind, grad
// for taylor) go first; the pruned ones stay pruned. Then zeroes the new
// units' weights. MOE_EINVAL for a fraction outside [0, 1).
int moe_ffn_masks_grow(struct moe_ffn_masks *k, struct moe_params *p, enum moe_neuron_score kind,
                       const float *grad, double fraction, int global, struct moe_err *err);
void moe_ffn_masks_release(struct moe_ffn_masks *k);

// The gradual pruning schedule of Zhu & Gupta ("To prune, or not to prune",
// 2017, eq. 1), in optimizer steps: from step `start` the sparsity rises to
// `final` over n steps,
//     s_t = final (1 - (1 - (t - start) / n)^3)    for start <= t <= start + n,
// with a prune after steps t = start + every, start + 2 every, ... and after
// t = start + n. Returns 1 and *ret = s_t when a prune follows step t (t
// counts the steps taken), else 0.
int moe_prune_schedule(double final, uint64_t start, uint64_t n, uint64_t every, uint64_t t, double *ret);

#endif
