// model_config.c: the model.* and loss.* configuration keys (defaults, ranges,
// docs) and their reading, with the moe.* keys of models with sparse layers,
// into the typed struct moe_model_hp; the rules between keys are checked here.
// Not here: validation of single values (kind, range, choices: io/config.c,
// from this table), and what a model builds from the struct (one file each).
#include "model/model.h"

#include <string.h>

#include "io/config.h"

const struct moe_cfg_key moe_model_keys[] = {
    // model
    { "model.type", MOE_CFG_STR, "\"mixture\"", 1, 0, MOE_MODEL_CHOICES, "mixture: 1991 dense mixture of experts; mlp: back-propagation baseline; mlp-moe: residual blocks with sparse MoE layers (moe.*); transformer: decoder-only language model over text data, MoE FFN in every moe_every-th block" },
    { "model.n_expert", MOE_CFG_INT, "4", 1, 1024, NULL, "experts in a mixture or in each sparse layer (E)" },
    { "model.n_expert_used", MOE_CFG_INT, "2", 1, 1024, NULL, "mlp-moe, transformer: experts per token K (top-k: softmax, noisy-topk and deepseek take any K <= n_expert; switch and hash need 1, gshard 2; expert-choice ignores it)" },
    { "model.n_expert_shared", MOE_CFG_INT, "0", 0, 64, NULL, "mlp-moe, transformer: always-on shared experts per sparse layer, each of width n_ff (DeepSeekMoE)" },
    { "model.n_embd", MOE_CFG_INT, "64", 1, 1 << 16, NULL, "mlp-moe, transformer: width D of the residual stream" },
    { "model.n_layer", MOE_CFG_INT, "1", 1, 256, NULL, "mlp-moe, transformer: residual blocks" },
    { "model.n_ff", MOE_CFG_INT, "128", 1, 1 << 20, NULL, "mlp-moe, transformer: hidden width F of each expert" },
    { "model.n_ff_dense", MOE_CFG_INT, "0", 0, 1 << 22, NULL, "mlp-moe, transformer: hidden width of dense FFN blocks (0 = n_expert_used * n_ff, the active width of a sparse block)" },
    { "model.moe_every", MOE_CFG_INT, "1", 1, 256, NULL, "mlp-moe, transformer: block l is sparse iff l % moe_every == moe_every - 1 (1 = every block; n_layer < moe_every = a dense model)" },
    { "model.n_ctx", MOE_CFG_INT, "64", 1, 1 << 16, NULL, "transformer: tokens per window (context length); learned positions" },
    { "model.n_head", MOE_CFG_INT, "4", 1, 1024, NULL, "transformer: attention heads (must divide n_embd)" },
    { "model.tie_embeddings", MOE_CFG_BOOL, "false", 1, 0, NULL, "transformer: the output head reuses tok_emb.weight" },
    { "model.ffn_activation", MOE_CFG_STR, "\"relu\"", 1, 0, "relu|gelu|swiglu", "mlp-moe, transformer: FFN nonlinearity of experts and dense blocks (swiglu adds a third matrix w3)" },
    { "model.norm", MOE_CFG_STR, "\"layernorm\"", 1, 0, "layernorm|rmsnorm", "mlp-moe, transformer: pre-norm of each block and the final norm" },
    { "model.expert", MOE_CFG_STR, "\"linear\"", 1, 0, "linear|mlp", "expert network: linear map, or one hidden layer" },
    { "model.n_expert_hidden", MOE_CFG_INT, "8", 1, 1 << 20, NULL, "hidden units per expert when model.expert = mlp" },
    { "model.n_hidden", MOE_CFG_INT, "8", 1, 1 << 20, NULL, "hidden units of the mlp baseline" },
    { "model.activation", MOE_CFG_STR, "\"tanh\"", 1, 0, "tanh|relu|sigmoid", "hidden-unit nonlinearity" },
    { "model.predict", MOE_CFG_STR, "\"mean\"", 1, 0, "mean|gate-max", "mixture output: gate-weighted mean of experts, or the expert with the largest gate" },
    { "model.init_scale", MOE_CFG_NUM, "1", 0, 100, NULL, "weights start U(-s, s), s = init_scale / sqrt(fan_in); biases and the gate start at 0" },
    { "model.dropout.attention", MOE_CFG_NUM, "0", 0, 0.95, NULL, "transformer: dropout probability of the attention probabilities at training time (inverted dropout; 0 = off)" },
    { "model.dropout.residual", MOE_CFG_NUM, "0", 0, 0.95, NULL, "mlp-moe, transformer: dropout probability of each sub-layer's output (attention, FFN or MoE) before it is added to the residual stream, at training time" },
    { "model.dropout.ffn", MOE_CFG_NUM, "0", 0, 0.95, NULL, "mlp-moe, transformer: dropout probability of the hidden activation of every expert (routed and shared) and dense FFN, at training time" },
    { "loss.type", MOE_CFG_STR, "\"auto\"", 1, 0, "auto|cooperative|competitive|nll|nll-cat|mse|ce", "objective: the 1991 mixture losses (mixture) or mse / ce (mlp, mlp-moe); auto = nll or nll-cat for a mixture, mse or ce otherwise, by task" },
    { "loss.baseline", MOE_CFG_STR, "\"mse\"", 1, 0, "mse|ce", "objective of the mlp system in compare-loss" },
};
const size_t moe_model_keys_len = sizeof moe_model_keys / sizeof moe_model_keys[0];

int moe_model_hp_parse(struct moe_model_hp *hp, const struct moe_config *cfg, struct moe_err *err)
{
    memset(hp, 0, sizeof *hp);
    const char *type = moe_cfg_str(cfg, "model.type");
    int t = moe_model_type_from_name(type);
    if (t < 0)
        return moe_error(err, MOE_ECONFIG, "key 'model.type': unknown model '%s'", type);
    hp->type = (enum moe_model_type)t;
    hp->loss = moe_cfg_str(cfg, "loss.type");
    hp->loss_baseline = moe_cfg_str(cfg, "loss.baseline");
    hp->n_expert = (size_t)moe_cfg_int(cfg, "model.n_expert");
    hp->n_expert_used = (size_t)moe_cfg_int(cfg, "model.n_expert_used");
    hp->n_expert_shared = (size_t)moe_cfg_int(cfg, "model.n_expert_shared");
    hp->n_embd = (size_t)moe_cfg_int(cfg, "model.n_embd");
    hp->n_layer = (size_t)moe_cfg_int(cfg, "model.n_layer");
    hp->n_ff = (size_t)moe_cfg_int(cfg, "model.n_ff");
    hp->moe_every = (size_t)moe_cfg_int(cfg, "model.moe_every");
    hp->n_ctx = (size_t)moe_cfg_int(cfg, "model.n_ctx");
    hp->n_head = (size_t)moe_cfg_int(cfg, "model.n_head");
    // K <= 1024 and n_ff <= 2^20 (the schema's ranges): the product fits
    hp->n_ff_dense = (size_t)moe_cfg_int(cfg, "model.n_ff_dense");
    hp->n_ff_dense_auto = hp->n_ff_dense == 0;
    if (hp->n_ff_dense_auto)
        hp->n_ff_dense = hp->n_expert_used * hp->n_ff;
    hp->tie_embeddings = moe_cfg_bool(cfg, "model.tie_embeddings");
    hp->rms = strcmp(moe_cfg_str(cfg, "model.norm"), "rmsnorm") == 0;
    hp->ffn_act = (enum moe_ffn_act)moe_ffn_act_from_name(moe_cfg_str(cfg, "model.ffn_activation"));
    if (strcmp(moe_cfg_str(cfg, "model.expert"), "mlp") == 0)
        hp->n_expert_hidden = (size_t)moe_cfg_int(cfg, "model.n_expert_hidden");
    hp->n_hidden = (size_t)moe_cfg_int(cfg, "model.n_hidden");
    hp->act = (enum moe_act)moe_act_from_name(moe_cfg_str(cfg, "model.activation"));
    hp->gate_max = strcmp(moe_cfg_str(cfg, "model.predict"), "gate-max") == 0;
    hp->init_scale = moe_cfg_num(cfg, "model.init_scale");
    hp->dropout.attention = moe_cfg_num(cfg, "model.dropout.attention");
    hp->dropout.residual = moe_cfg_num(cfg, "model.dropout.residual");
    hp->dropout.ffn = moe_cfg_num(cfg, "model.dropout.ffn");
    const struct moe_model_kind *kind = moe_model_kind(hp->type);
    const char *drop_keys[3] = { "model.dropout.attention", "model.dropout.residual", "model.dropout.ffn" };
    const double drop_p[3] = { hp->dropout.attention, hp->dropout.residual, hp->dropout.ffn };
    for (int i = 0; i < 3; i++) // only the models with the sites take dropout
        if (drop_p[i] > 0.0 && (!kind->sparse || (i == 0 && !kind->text)))
            return moe_error(err, MOE_ECONFIG, "key '%s': model '%s' has no %s dropout (%s)", drop_keys[i], type,
                             i == 0 ? "attention" : i == 1 ? "residual" : "FFN",
                             i == 0 ? "transformer only" : "mlp-moe and transformer only");
    if (!kind->sparse)
        return 0;
    int rc = moe_layer_cfg_parse(&hp->moe, cfg, hp->n_expert, hp->n_expert_used, hp->n_expert_shared, hp->n_embd,
                                 hp->n_ff, hp->ffn_act, err);
    hp->moe.ffn_dropout = hp->dropout.ffn;
    return rc;
}
