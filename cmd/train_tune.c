// train_tune.c (cmd): the tuning set-up of a training run: which tensors and
// expert slices train (train.trainable, train.freeze; `moe train --trainable`,
// `--freeze`), the LoRA adapters of `moe lora` (lora.*), their share of the
// parameters in summary.tuning, and adapters.safetensors. Not here: the
// selection and the adapters themselves (train/tune.h), the training.
#include <stdlib.h>
#include <string.h>

#include "train_run.h"

// What the run trains (train.trainable / train.freeze, and for moe lora the
// adapters of lora.*): fills *ret_sel (frozen = NULL: everything) and, with adapters, *lora.
int tune_setup(const char *cmd, const struct moe_run_cfg *rcfg, struct moe_model *m, int lora_mode,
               struct moe_tune_sel *ret_sel, struct moe_lora *lora)
{
    static const char *const what_t = "train.trainable (--trainable)", *const what_f = "train.freeze (--freeze)";
    struct moe_err err = { 0 };
    struct moe_tune_sel sel = { 0 };
    const struct moe_train_cfg tc = rcfg->train;
    const struct moe_lora_cfg lc = rcfg->lora;
    const char **tr = tc.trainable, **fr = tc.freeze, **tg = lc.targets;
    size_t n_t = tc.n_trainable, n_f = tc.n_freeze, n_g = lc.n_targets, rank = lc.rank;
    int rc = 0;
    if (!lora_mode) {
        if (rank > 0) {
            rc = cli_error(cmd, 2, "config key 'lora.rank' is %zu: adapters are trained by 'moe lora --base CKPT', not 'moe train'", rank);
            goto out;
        }
        if (n_t || n_f) {
            if (moe_tune_select_ex(&sel, &m->params, tr, n_t, fr, n_f, what_t, what_f, &err)) {
                rc = cli_fail(cmd, &err);
                goto out;
            }
            *ret_sel = sel;
            memset(&sel, 0, sizeof sel);
        }
        goto out;
    }
    if (rank == 0 || !n_g) {
        rc = cli_error(cmd, 2, rank == 0 ? "config key 'lora.rank' is 0: give the adapters' rank with --rank R (R >= 1)"
                                         : "config key 'lora.targets' is empty: name the adapted matrices with --targets GLOB[,GLOB...]");
        goto out;
    }
    // The base is frozen but for the routers (unless lora.freeze_router) and what
    // train.trainable names (tensors or expert slices); train.freeze has the last word.
    int train_router = !lc.freeze_router;
    static const char *const router_globs[] = { "*.router.*", "*.lang_emb" };
    if (moe_tune_sel_init(&sel, &m->params, 1, &err) ||
        (train_router && moe_tune_sel_mark(&sel, &m->params, router_globs, 2, 0, NULL, &err)) ||
        moe_tune_sel_mark(&sel, &m->params, tr, n_t, 0, what_t, &err) ||
        moe_tune_sel_mark(&sel, &m->params, fr, n_f, 1, what_f, &err)) {
        rc = cli_fail(cmd, &err);
        goto out;
    }
    if (moe_lora_create(lora, &m->params, sel.frozen, tg, n_g, rank, lc.alpha, lc.expert_shared, &err)) {
        rc = cli_fail(cmd, &err);
        goto out;
    }
    moe_lora_init(lora, tc.seed);
    *ret_sel = sel;
    memset(&sel, 0, sizeof sel);
out:
    moe_tune_sel_release(&sel);
    return rc;
}

// The trainable parameters of a tuning run (unfrozen tensors, trained expert
// slices and adapters) and their share of all parameters (base and adapters);
// trained_experts lists the experts trained of each tensor trained in part.
void tune_summary(cJSON *s, const struct moe_model *m, const struct moe_tune_sel *sel, const struct moe_lora *l)
{
    const uint8_t *frozen = sel->frozen;
    size_t base = moe_params_count(&m->params), adapter = l ? moe_lora_count(l) : 0, n_frozen = 0;
    size_t trained = adapter + moe_tune_sel_count(sel, &m->params);
    for (size_t i = 0; i < m->params.n; i++)
        n_frozen += frozen[i];
    cJSON *t = cJSON_AddObjectToObject(s, "tuning");
    cJSON_AddNumberToObject(t, "base_parameters", (double)base);
    cJSON_AddNumberToObject(t, "adapter_parameters", (double)adapter);
    cJSON_AddNumberToObject(t, "trainable_parameters", (double)trained);
    cJSON_AddNumberToObject(t, "trainable_fraction", (double)trained / (double)(base + adapter));
    cJSON_AddNumberToObject(t, "frozen_tensors", (double)n_frozen);
    cJSON *tr = cJSON_AddArrayToObject(t, "trained_tensors");
    for (size_t i = 0; i < m->params.n; i++)
        if (!frozen[i])
            cJSON_AddItemToArray(tr, cJSON_CreateString(m->params.t[i].name));
    cJSON *te = cJSON_AddArrayToObject(t, "trained_experts");
    for (size_t i = 0; i < m->params.n; i++) {
        if (frozen[i] || !sel->frozen_experts[i])
            continue;
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "tensor", m->params.t[i].name);
        cJSON *ex = cJSON_AddArrayToObject(o, "experts");
        for (size_t e = 0; e < m->params.t[i].shape[0]; e++)
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
        cJSON_AddItemToArray(a, cJSON_CreateString(m->params.t[l->t[k].base].name));
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
