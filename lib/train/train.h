// train.h: the run configuration schema, data from config, optimisers and the
// training loop. Every subcommand is a thin driver over these.
#ifndef MOE_TRAIN_H
#define MOE_TRAIN_H

#include <stddef.h>
#include <stdint.h>

#include "core/status.h"
#include "io/config.h"
#include "io/dataset.h"
#include "model/model.h"

extern const struct moe_cfg_key moe_run_schema[];
extern const size_t moe_run_schema_len;

// ---- data named by the data.* keys ----
struct moe_data {
    struct moe_dataset train, test;
    int standardized;
    struct moe_standardize stats;
};
int moe_data_load(struct moe_data *ret, const struct moe_config *cfg, struct moe_err *err);
void moe_data_release(struct moe_data *d);

// ---- optimisers over the flat parameter buffer ----
enum moe_optim_type { MOE_OPTIM_GD = 0, MOE_OPTIM_SGD = 1, MOE_OPTIM_ADAMW = 2 };
struct moe_optim {
    enum moe_optim_type type;
    double lr, momentum, beta1, beta2, eps, weight_decay, clip;
    size_t numel;
    uint64_t t;     // steps taken
    float *m, *v;   // (numel) momentum / Adam moments
};
int moe_optim_init(struct moe_optim *o, const struct moe_config *cfg, size_t numel, struct moe_err *err);
// One update of w from g. Returns the gradient's global L2 norm before clipping.
double moe_optim_step(struct moe_optim *o, float *w, float *g);
void moe_optim_release(struct moe_optim *o);

// ---- the training loop ----
// One evaluation of a split, as written to metrics.csv. NaN = not applicable.
struct moe_eval_row {
    uint64_t step;
    uint64_t epoch;
    const char *split;    // "train" or "test"
    size_t n;             // rows evaluated
    double loss;          // mean objective per row
    double mse;           // mean ||prediction - target||^2 per row
    double accuracy;      // classification only
    double gate_entropy;  // mean H(p) in nats, mixtures only
    double active_experts;// experts with mean proportion above the threshold, mixtures only
    double expert_region_mi; // bits, when the data knows its regions
    const double *gate_mean; // (n_expert) mean mixing proportions, or NULL
    size_t n_expert;
    // Sparse routing, means over the sparse layers (NaN without them):
    double aux_loss;         // unweighted auxiliary loss of the layer's convention (token-weighted batch mean)
    double z_loss;           // router z-loss (token-weighted batch mean)
    double load_cv;          // CV of tokens routed per expert (before capacity)
    double importance_cv;    // CV of summed gate weights per expert
    double load_max_mean;    // max / mean tokens routed per expert
    double dropped_fraction; // assignments dropped for capacity / assignments
    double router_entropy;   // mean H(p_t) in nats
    double expert_label_mi;  // bits, I(first-choice expert; class or region)
    const struct moe_route_acc *route; // (n_route) the per-layer statistics behind them
    size_t n_route;
};
// Fill a row's means from accumulated statistics of n rows (split and step untouched).
void moe_eval_row_fill(struct moe_eval_row *r, const struct moe_stats *s, enum moe_task task, double active_threshold);
typedef int (*moe_eval_cb)(void *ctx, const struct moe_eval_row *row, struct moe_err *err);

struct moe_train_result {
    uint64_t steps;
    uint64_t epochs;          // epochs run
    int64_t criterion_epoch;  // first epoch meeting the criterion, -1 if never (or none set)
    struct moe_eval_row final_train, final_test;
    double final_gate_mean[64]; // first 64 experts' final training mixing proportions
    double wall_seconds;
    double rows_per_second;   // training rows processed per second
};

// Evaluate a whole split in chunks. row->split is set from `split`.
int moe_evaluate(struct moe_model *m, const struct moe_dataset *d, const char *split, size_t chunk,
                 double active_threshold, struct moe_stats *scratch, struct moe_eval_row *ret, struct moe_err *err);

// Train m (weights already initialised or loaded) on data per the config; calls cb
// for each metrics row (may be NULL): split "train" and "test" for evaluations
// (evaluation mode), "batch" for training-mode means over recent steps. Fails with MOE_ENUMERIC on a non-finite loss.
int moe_train(struct moe_model *m, const struct moe_data *data, const struct moe_config *cfg, moe_eval_cb cb,
              void *ctx, struct moe_train_result *ret, struct moe_err *err);

#endif
