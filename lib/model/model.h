// model.h: models assembled from nn + moe blocks behind one small interface.
// A model owns its parameter registry and its scratch; `run` does the forward
// pass over a batch, accumulates evaluation statistics, and (with_grad) the
// backward pass, adding gradients of the batch-mean loss into params.grad.
// T = rows in a batch, D = n_in, O = n_out (targets or classes), E = n_expert.
#ifndef MOE_MODEL_H
#define MOE_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "core/params.h"
#include "core/status.h"
#include "io/dataset.h"

struct moe_config;

struct moe_batch {
    size_t n;
    const float *x;        // (n, D)
    const float *y;        // (n, O) regression targets, or NULL
    const int32_t *label;  // (n) class ids, or NULL
    const int32_t *group;  // (n) ground-truth region ids, or NULL
};

// Sums over rows; the trainer turns them into means.
struct moe_stats {
    size_t n;
    double loss;           // sum of per-row objective
    double sq_err;         // sum of ||prediction - target||^2 (one-hot targets for classes)
    size_t correct;        // rows whose argmax prediction is the label
    size_t n_expert;       // 0 for models without a gate
    double gate_entropy;   // sum over rows of H(p_t) in nats
    double *gate_sum;      // (E) sum over rows of p_t
    size_t n_group;
    uint64_t *contingency; // (E, G) rows whose largest gate is e and whose group is g
};
int moe_stats_init(struct moe_stats *s, size_t n_expert, size_t n_group, struct moe_err *err);
void moe_stats_reset(struct moe_stats *s);
void moe_stats_release(struct moe_stats *s);
// Add rows' predictions (T, O) against targets (T, O) (one-hot for classes) and labels (or NULL).
void moe_stats_add_predictions(struct moe_stats *s, const float *pred, const float *target, const int32_t *label,
                               size_t T, size_t O);
// Add rows' gate probabilities p (T, E) and ground-truth groups (or NULL).
void moe_stats_add_gates(struct moe_stats *s, const float *p, const int32_t *group, size_t T);
// Mutual information (bits) between top-gate expert and group, from the contingency table.
double moe_stats_expert_region_mi(const struct moe_stats *s);
// Experts whose mean gate probability exceeds threshold.
size_t moe_stats_active_experts(const struct moe_stats *s, double threshold);

struct moe_model;

struct moe_model_ops {
    const char *type;
    int (*run)(struct moe_model *m, const struct moe_batch *b, int with_grad, struct moe_stats *stats,
               struct moe_err *err);
    void (*init_weights)(struct moe_model *m, uint64_t seed);
    void (*release)(struct moe_model *m);
};

struct moe_model {
    const struct moe_model_ops *ops;
    struct moe_params params;
    enum moe_task task;
    size_t n_in, n_out, n_expert; // n_expert = 0 for dense models
    size_t max_batch;             // largest batch `run` accepts
    const char *loss_name;        // the objective in use
    void *impl;
};

// Build the model named by config key model.type for a task with n_in features
// and n_out targets/classes; `loss` overrides loss.type when non-NULL (compare-loss
// runs the baseline with loss.baseline). Weights are not initialised.
int moe_model_create(struct moe_model *ret, const struct moe_config *cfg, const char *loss, enum moe_task task,
                     size_t n_in, size_t n_out, size_t max_batch, struct moe_err *err);
static inline int moe_model_run(struct moe_model *m, const struct moe_batch *b, int with_grad,
                                struct moe_stats *stats, struct moe_err *err)
{
    return m->ops->run(m, b, with_grad, stats, err);
}
static inline void moe_model_init_weights(struct moe_model *m, uint64_t seed) { m->ops->init_weights(m, seed); }
void moe_model_release(struct moe_model *m);
// Start of every `run`: check the batch size, and point *ret_target at what the
// squared-error losses compare against: the regression targets, or one-hot rows
// (T, O) built into `onehot` from the class labels.
int moe_model_batch_targets(const struct moe_model *m, const struct moe_batch *b, float *onehot,
                            const float **ret_target, struct moe_err *err);

// Shared init: every weight tensor U(-s, s) with s = scale / sqrt(fan_in) (fan_in
// = last dimension), drawn from the counter-based RNG with stream = hash(name),
// so a tensor's initial values depend only on the seed and its name.
void moe_init_uniform(struct moe_params *p, int idx, uint64_t seed, float scale);

// Model constructors (one file each).
int moe_mixture_create(struct moe_model *m, const struct moe_config *cfg, const char *loss, struct moe_err *err);
int moe_mlp_create(struct moe_model *m, const struct moe_config *cfg, const char *loss, struct moe_err *err);

#endif
