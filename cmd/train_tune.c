// train_tune.c (cmd): the tuning set-up of a training run: which tensors and
// expert slices train (train.trainable, train.freeze; `moe train --trainable`,
// `--freeze`), the LoRA adapters of `moe lora` (lora.*), their share of the
// parameters in summary.tuning (also `moe lora --dry-run`'s), and
// adapters.safetensors. Not here: the selection and the adapters themselves
// (train/tune.h), their memory (train/train.h MOE_RUN_LORA), the training.
#include <stdlib.h>
#include <string.h>

#include "train_run.h"

// lora.rank and lora.targets against the command: adapters only with moe lora,
// and there a rank and a target.
int tune_check(const char *cmd, const struct moe_run_cfg *rcfg, int lora_mode)
{
    size_t rank = rcfg->lora.rank;
    if (!lora_mode && rank > 0)
        return cli_error(cmd, 2, "config key 'lora.rank' is %zu: adapters are trained by 'moe lora --base CKPT', not 'moe train'", rank);
    if (lora_mode && (rank == 0 || !rcfg->lora.n_targets))
        return cli_error(cmd, 2, rank == 0 ? "config key 'lora.rank' is 0: give the adapters' rank with --rank R (R >= 1)"
                                           : "config key 'lora.targets' is empty: name the adapted matrices with --targets GLOB[,GLOB...]");
    return 0;
}

// What the run trains: fills *ret_sel (frozen = NULL: everything) and, for
// moe lora, *lora (rcfg passed tune_check).
int tune_setup(const char *cmd, const struct moe_run_cfg *rcfg, struct moe_model *m, int lora_mode,
               struct moe_tune_sel *ret_sel, struct moe_lora *lora)
{
    struct moe_err err = { 0 };
    const struct moe_train_cfg *tc = &rcfg->train;
    if (!lora_mode) {
        if (tc->n_trainable || tc->n_freeze) {
            if (moe_tune_select_ex(ret_sel, &m->params, tc->trainable, tc->n_trainable, tc->freeze, tc->n_freeze,
                                   MOE_TUNE_WHAT_TRAINABLE, MOE_TUNE_WHAT_FREEZE, &err))
                return cli_fail(cmd, &err);
        }
        return 0;
    }
    // the layout the memory estimate counted (train.h MOE_RUN_LORA), now allocated
    if (moe_lora_setup(ret_sel, lora, &m->params, &rcfg->lora, tc->trainable, tc->n_trainable, tc->freeze,
                       tc->n_freeze, &err))
        return cli_fail(cmd, &err);
    if (moe_lora_alloc(lora, &m->params, &err)) {
        moe_tune_sel_release(ret_sel);
        return cli_fail(cmd, &err);
    }
    moe_lora_init(lora, tc->seed);
    return 0;
}

// --dry-run of moe lora: summary.tuning as the run will write it, from the
// tuning laid out over the registry the model will have (nothing allocated).
int tune_dry(const char *cmd, const struct moe_run_cfg *rcfg, enum moe_task task, size_t n_in, size_t n_out,
             cJSON *s)
{
    const struct moe_train_cfg *tc = &rcfg->train;
    struct moe_err err = { 0 };
    struct moe_params reg;
    struct moe_tune_sel sel = { 0 };
    struct moe_lora l = { 0 };
    moe_params_init(&reg);
    int rc = moe_model_params_hp(&rcfg->model, task, n_in, n_out, &reg, &err) ||
             moe_lora_setup(&sel, &l, &reg, &rcfg->lora, tc->trainable, tc->n_trainable, tc->freeze, tc->n_freeze,
                            &err);
    if (rc)
        rc = cli_fail(cmd, &err);
    else
        tune_summary(s, &reg, &sel, &l);
    moe_lora_release(&l);
    moe_tune_sel_release(&sel);
    moe_params_release(&reg);
    return rc;
}

// The trainable parameters of a tuning run (unfrozen tensors, trained expert
// slices and adapters) and their share of all parameters (base and adapters);
// trained_experts lists the experts trained of each tensor trained in part.
void tune_summary(cJSON *s, const struct moe_params *p, const struct moe_tune_sel *sel, const struct moe_lora *l)
{
    const uint8_t *frozen = sel->frozen;
    size_t base = moe_params_count(p), adapter = l ? moe_lora_count(l) : 0, n_frozen = 0;
    size_t trained = adapter + moe_tune_sel_count(sel, p);
    for (size_t i = 0; i < p->n; i++)
        n_frozen += frozen[i];
    cJSON *t = cJSON_AddObjectToObject(s, "tuning");
    cJSON_AddNumberToObject(t, "base_parameters", (double)base);
    cJSON_AddNumberToObject(t, "adapter_parameters", (double)adapter);
    cJSON_AddNumberToObject(t, "trainable_parameters", (double)trained);
    cJSON_AddNumberToObject(t, "trainable_fraction", (double)trained / (double)(base + adapter));
    cJSON_AddNumberToObject(t, "frozen_tensors", (double)n_frozen);
    cJSON *tr = cJSON_AddArrayToObject(t, "trained_tensors");
    for (size_t i = 0; i < p->n; i++)
        if (!frozen[i])
            cJSON_AddItemToArray(tr, cJSON_CreateString(p->t[i].name));
    cJSON *te = cJSON_AddArrayToObject(t, "trained_experts");
    for (size_t i = 0; i < p->n; i++) {
        if (frozen[i] || !sel->frozen_experts[i])
            continue;
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "tensor", p->t[i].name);
        cJSON *ex = cJSON_AddArrayToObject(o, "experts");
        for (size_t e = 0; e < p->t[i].shape[0]; e++)
            if (!sel->frozen_experts[i][e])
                cJSON_AddItemToArray(ex, cJSON_CreateNumber((double)e));
        cJSON_AddItemToArray(te, o);
    }
    if (!l)
        return;
    cJSON_AddNumberToObject(t, "rank", (double)l->rank);
    cJSON_AddNumberToObject(t, "alpha", l->alpha);
    cJSON *a = cJSON_AddArrayToObject(t, "adapted_tensors");
    for (size_t k = 0; k < l->n; k++)
        cJSON_AddItemToArray(a, cJSON_CreateString(p->t[l->t[k].base].name));
}

// adapters.safetensors: the adapter tensors, the base tensors the run trained in
// full (routers) or in part (expert slices; written whole), and the model file's
// metadata (config with lora.*).
int tune_write_adapters(const char *path, const struct moe_model *m, const uint8_t *frozen,
                        const struct moe_lora *l, const struct moe_st_meta *meta, size_t n_meta,
                        struct moe_err *err)
{
    struct moe_st_ref *refs = calloc(m->params.n ? m->params.n : 1, sizeof *refs);
    if (!refs)
        return moe_error(err, MOE_ENOMEM, "out of memory");
    size_t n = 0;
    for (size_t i = 0; i < m->params.n; i++) {
        const struct moe_tensor *t = &m->params.t[i];
        if (frozen[i])
            continue;
        refs[n] = (struct moe_st_ref){ .name = t->name, .dtype = MOE_F32, .ndim = t->ndim, .shape = { 0 }, .data = moe_params_data(&m->params, (int)i) };
        memcpy(refs[n].shape, t->shape, sizeof t->shape);
        n++;
    }
    int rc = moe_safetensors_write_params(path, &l->p, refs, n, meta, n_meta, err);
    free(refs);
    return rc;
}
