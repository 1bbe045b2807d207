// moebert.h: turning a trained dense model into an MoE, after MoEBERT (Zuo et
// al. 2022, "MoEBERT: from BERT to Mixture-of-Experts via Importance-Guided
// Adaptation", sec. 3.2). The student is a model of the same type, widths and
// depth whose sparse blocks stand where the teacher has dense FFNs.
//   1. Importance: each dense FFN neuron j of the teacher gets
//      I_j = sum over training examples x of |w1_j . dL(x)/dw1_j + w2_j . dL(x)/dw2_j|
//      (experts.h moe_ffn_importance_add; swiglu adds w3).
//   2. Order: neurons by decreasing importance (ties: lower index first), or a
//      seeded random order (the paper's comparison).
//   3. Deal: the first s neurons of the order go to every expert (shared); the
//      rest are dealt round-robin (neuron s + i to expert i mod E) until each
//      expert holds F = n_ff neurons. Neurons left over when all experts are full
//      are dropped (the least important ones, in importance order).
//   4. Convert: expert e of block l gets rows of the teacher's w1 (and w3) and
//      columns of w2 for its neurons, shared ones first, then its own in dealing
//      order; every other student tensor with a namesake of the same shape in the
//      teacher (embeddings, attention, norms, head, dense blocks) is copied.
// Routers are the student's own (hash tables, or a learned router from its
// initialisation). Training afterwards (trainer, moe_batch.kd_sym) adds the
// layer-wise hidden-state MSE and the symmetric KL of the outputs to the task loss.
#ifndef MOE_MOEBERT_H
#define MOE_MOEBERT_H

#include <stddef.h>
#include <stdint.h>

#include "core/status.h"
#include "io/dataset.h"
#include "model/model.h"

enum { MOE_MOEBERT_SHARED = -1, MOE_MOEBERT_DROPPED = -2 };

struct moe_moebert_layer {
    size_t block;          // l: teacher layers.l.ffn -> student layers.l.moe.experts
    double *importance;    // (Fd)
    uint32_t *order;       // (Fd) neurons in dealing order
    int32_t *expert;       // (Fd) the neuron's expert, MOE_MOEBERT_SHARED or MOE_MOEBERT_DROPPED
    uint32_t *rank;        // (Fd) position of each neuron in the order
    int32_t *slots;        // (E, F) the teacher neuron behind each expert neuron
    size_t dropped;
};

struct moe_moebert {
    size_t L, D, Fd, E, F, s; // teacher blocks, width, dense FFN width; experts, their width, shared neurons
    int swiglu, random;
    size_t n;                  // converted blocks
    struct moe_moebert_layer *layer;
    double *table;             // (L, Fd) importance of every teacher block (rows of sparse blocks stay 0)
};

// Match the student's sparse blocks to the teacher's dense FFNs and check that
// s shared neurons plus E experts of F neurons fit in Fd (MOE_ECONFIG / MOE_ESHAPE
// with a one-line message otherwise). random = the random order.
int moe_moebert_plan(struct moe_moebert *mb, const struct moe_model *student, const struct moe_model *teacher,
                     size_t shared, int random, struct moe_err *err);
// Step 1 over one pass of the training split (language models: the windows of
// the first training epoch for `seed`), in batches of at most bs.
int moe_moebert_importance(struct moe_moebert *mb, struct moe_model *teacher, const struct moe_dataset *train,
                           size_t bs, uint64_t seed, struct moe_err *err);
// Steps 2 and 3 (seed: the random order's).
void moe_moebert_split(struct moe_moebert *mb, uint64_t seed);
// Step 4: returns the number of student tensors copied whole from the teacher.
size_t moe_moebert_convert(const struct moe_moebert *mb, struct moe_model *student, const struct moe_model *teacher);
void moe_moebert_release(struct moe_moebert *mb);

#endif
