// registry.c: the model table (one row per model type: name, whether it has
// sparse layers or reads text, check, declare), the objective by model and
// task, and the checks every model shares.
// Not here: the models themselves (one file each) and the helpers they share
// (model.c).
#include "model/model.h"

#include <string.h>


static const struct moe_model_kind kinds[] = {
    [MOE_MODEL_MIXTURE] = { "mixture", 0, 0, moe_mixture_check, moe_mixture_declare },
    [MOE_MODEL_MLP] = { "mlp", 0, 0, moe_mlp_check, moe_mlp_declare },
    [MOE_MODEL_MLP_MOE] = { "mlp-moe", 1, 0, moe_mlp_moe_check, moe_mlp_moe_declare },
    [MOE_MODEL_TRANSFORMER] = { "transformer", 1, 1, moe_transformer_check, moe_transformer_declare },
};
#define N_KINDS (sizeof kinds / sizeof kinds[0])

const struct moe_model_kind *moe_model_kind(enum moe_model_type t) { return (size_t)t < N_KINDS ? &kinds[t] : NULL; }

int moe_model_type_from_name(const char *name)
{
    for (size_t i = 0; i < N_KINDS; i++)
        if (strcmp(name, kinds[i].name) == 0)
            return (int)i;
    return -1;
}

const char *moe_model_loss(const struct moe_model_hp *hp, const char *loss, enum moe_task task)
{
    if (!loss)
        loss = hp->loss;
    if (strcmp(loss, "auto") != 0)
        return loss;
    int cls = task == MOE_TASK_CLASSIFICATION, lm = task == MOE_TASK_LM;
    return hp->type == MOE_MODEL_MIXTURE ? (cls ? "nll-cat" : "nll") : (cls || lm ? "ce" : "mse");
}

int moe_model_check(const struct moe_model_hp *hp, const char *loss, enum moe_task task, size_t n_in, size_t n_out,
                    struct moe_err *err)
{
    if (n_in == 0)
        return moe_error(err, MOE_ESHAPE, "the data has no features (n_in = 0)");
    if (n_out == 0)
        return moe_error(err, MOE_ESHAPE, "the data has no %s (n_out = 0)",
                         task == MOE_TASK_CLASSIFICATION ? "classes" : "targets");
    const struct moe_model_kind *kind = moe_model_kind(hp->type);
    int lm = task == MOE_TASK_LM;
    if (lm != kind->text)
        return lm ? moe_error(err, MOE_ECONFIG, "key 'model.type': text data (data.source 'text') needs model 'transformer', got '%s'", kind->name)
                  : moe_error(err, MOE_ECONFIG, "key 'model.type': model '%s' reads text (data.source 'text'), not examples with features", kind->name);
    return kind->check(hp, loss, task, n_in, n_out, err);
}
