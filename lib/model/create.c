// create.c: moe_model_create: the typed hyperparameters read once, the model
// checked and sized before anything is allocated (estimate.c), then the plan
// its table row declares (registry.c) allocated (core/plan.h).
// Not here: the models themselves (one file each) and the helpers they share
// (model.c).
#include <string.h>

#include "model/estimate.h"
#include "model/model.h"

int moe_model_create(struct moe_model *ret, const struct moe_config *cfg, const char *loss, enum moe_task task,
                     size_t n_in, size_t n_out, size_t max_batch, struct moe_err *err)
{
    struct moe_model_hp hp;
    int rc = moe_model_hp_parse(&hp, cfg, err);
    if (rc) {
        memset(ret, 0, sizeof *ret);
        moe_params_init(&ret->params);
        moe_plan_init(&ret->plan, NULL);
        return rc;
    }
    return moe_model_create_hp(ret, &hp, loss, task, n_in, n_out, max_batch, err);
}

int moe_model_create_hp(struct moe_model *ret, const struct moe_model_hp *hp, const char *loss, enum moe_task task,
                        size_t n_in, size_t n_out, size_t max_batch, struct moe_err *err)
{
    return moe_model_create_shard(ret, hp, loss, task, n_in, n_out, max_batch, 0, 1, err);
}

int moe_model_create_shard(struct moe_model *ret, const struct moe_model_hp *hp, const char *loss,
                           enum moe_task task, size_t n_in, size_t n_out, size_t max_batch, int rank, int size,
                           struct moe_err *err)
{
    memset(ret, 0, sizeof *ret);
    moe_params_init(&ret->params);
    ret->params.shard_rank = rank;
    ret->params.shard_size = size > 1 ? size : 1;
    moe_plan_init(&ret->plan, err);
    ret->task = task;
    ret->n_in = n_in;
    ret->n_out = n_out;
    ret->max_batch = max_batch ? max_batch : 1;
    loss = moe_model_loss(hp, loss, task);
    // The rules, then sizes, before any allocation: a product that overflows or
    // a model no machine could hold is a config error, not a crash half-way through.
    // The model alone: its data and training loop are not known here.
    struct moe_model_estimate est;
    int rc = moe_model_check(hp, loss, task, n_in, n_out, err);
    if (!rc)
        rc = moe_model_estimate_hp(hp, NULL, NULL, task, n_in, n_out, 0, 0, ret->max_batch, &est, err);
    if (!rc)
        rc = moe_model_kind(hp->type)->declare(ret, hp, loss, &ret->plan);
    if (!rc)
        rc = moe_plan_alloc(&ret->plan, &ret->params);
    for (size_t i = 0; !rc && i < ret->n_moe_layers; i++)
        moe_layer_plan_bound(ret->moe_layers[i]);
    if (rc)
        moe_model_release(ret);
    return rc;
}
