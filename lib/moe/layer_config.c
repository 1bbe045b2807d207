// layer_config.c: the moe.* configuration keys (defaults, ranges, docs) and
// their reading into the typed struct moe_layer_cfg, with the rules that tie
// the keys to the router (router.h's table): K for switch, gshard and hash, bias
// balancing, the losses a router takes, the smooth load estimator.
// Not here: the model.* sizes the layer also needs (the model passes them), and
// validation of single values (kind, range, choices: io/config.c, from this table).
#include "moe/moe_layer.h"

#include <stdio.h>
#include <string.h>

#include "io/config.h"

const struct moe_cfg_key moe_layer_keys[] = {
    { "moe.router", MOE_CFG_STR, "\"softmax\"", 1, 0, MOE_ROUTER_CHOICES, "softmax: top-k, gate renormalised over the chosen (Mixtral; k = E is dense); noisy-topk: Shazeer 2017; switch: top-1, its raw probability as gate (Fedus 2021); gshard: top-2 renormalised with a second-expert policy; hash: fixed table; expert-choice: each expert takes its top tokens; deepseek: top-k, the raw probabilities as gates, not renormalised (DeepSeekMoE)" },
    { "moe.second_policy", MOE_CFG_STR, "\"random\"", 1, 0, "random|all", "gshard: dispatch the second expert only if 2*g2 > U(0,1) in training (random), or always (all)" },
    { "moe.capacity_factor", MOE_CFG_NUM, "1.25", 0, 1e6, NULL, "training capacity per expert = ceil(capacity_factor * k * T / E) tokens of a batch of T (0 = dropless)" },
    { "moe.eval_capacity_factor", MOE_CFG_NUM, "2", 0, 1e6, NULL, "the same in evaluation (0 = dropless)" },
    { "moe.drop_policy", MOE_CFG_STR, "\"order\"", 1, 0, "order|probability", "who is dropped when an expert is over capacity: later tokens (order), or those with the lowest router probability (probability); first choices always before second" },
    { "moe.jitter", MOE_CFG_NUM, "0", 0, 1, NULL, "multiply the router input by U(1-eps, 1+eps) in training (Switch uses 0.01)" },
    { "moe.ec_factor", MOE_CFG_NUM, "2", 1e-6, 1e6, NULL, "expert-choice: each expert takes ceil(ec_factor * T / E) tokens (the mean experts per token)" },
    { "moe.ec_eval", MOE_CFG_STR, "\"full\"", 1, 0, MOE_EC_EVAL_CHOICES, "expert-choice, evaluation passes: full: each expert picks over the whole pass, as in training (in a causal LM a token's route then depends on later tokens of its window); prefix: a token at position s is routed by each expert's pick over the tokens at positions <= s of the pass's windows; position: over the tokens at position s only; topk: token choice, the round(ec_factor) experts of largest probability (docs/routing.md); other routers ignore it" },
    { "moe.bias_balance", MOE_CFG_BOOL, "false", 1, 0, NULL, "softmax/switch/deepseek: select on p + b with b updated b += bias_rate * sign(mean load - load) after each step (DeepSeek-V3, no auxiliary loss needed)" },
    { "moe.bias_rate", MOE_CFG_NUM, "0.001", 0, 1e3, NULL, "bias-balancing update rate gamma" },
    { "moe.hash_table", MOE_CFG_STR, "\"random\"", 1, 0, "random|balanced", "hash: table from the seed, or greedy by key frequency over the training data (balanced: table size x model.n_expert <= 2^31)" },
    { "moe.hash_vocab", MOE_CFG_INT, "4096", 1, 1 << 24, NULL, "hash, mlp-moe: table size; rows without token ids are keyed by a hash of their input values mod this (transformer: keys are token ids and the table covers the vocabulary)" },
    { "moe.aux_loss", MOE_CFG_STR, "\"switch\"", 1, 0, "none|shazeer|switch|gshard|topk-all", "balancing loss convention (docs/routing.md); hash and expert-choice take none" },
    { "moe.aux_weight", MOE_CFG_NUM, "0.01", 0, 1e6, NULL, "coefficient of the switch / gshard / topk-all loss (alpha)" },
    { "moe.w_importance", MOE_CFG_NUM, "0.1", 0, 1e6, NULL, "shazeer: weight of CV(importance)^2" },
    { "moe.w_load", MOE_CFG_NUM, "0.1", 0, 1e6, NULL, "shazeer: weight of CV(smooth load)^2 (needs noisy-topk)" },
    { "moe.z_weight", MOE_CFG_NUM, "0", 0, 1e6, NULL, "router z-loss coefficient (ST-MoE uses 0.001)" },
    { "moe.lang_router", MOE_CFG_BOOL, "false", 1, 0, NULL, "transformer: language-aware routing, a learned embedding of the window's language (layers.L.moe.lang_emb, starts at 0) added to the router input" },
    { "moe.router_init_scale", MOE_CFG_NUM, "0.1", 0, 100, NULL, "router weights start U(-s, s), s = router_init_scale / sqrt(n_embd) (noisy-topk always starts at 0)" },
};
const size_t moe_layer_keys_len = sizeof moe_layer_keys / sizeof moe_layer_keys[0];

// The routers that support bias balancing, as "'a', 'b' or 'c'".
static void bias_routers(char *buf, size_t len)
{
    size_t n = 0, at = 0, total = 0;
    for (size_t t = 0; t < moe_router_count(); t++)
        total += moe_router_info((enum moe_router_type)t)->bias_balance;
    buf[0] = '\0';
    for (size_t t = 0; t < moe_router_count(); t++) {
        const struct moe_router_info *ri = moe_router_info((enum moe_router_type)t);
        if (!ri->bias_balance)
            continue;
        const char *sep = n == 0 ? "" : n + 1 == total ? " or " : ", ";
        int w = snprintf(buf + at, len - at, "%s'%s'", sep, ri->name);
        if (w < 0 || (size_t)w >= len - at)
            return; // cut short: the message stays readable
        at += (size_t)w;
        n++;
    }
}

int moe_layer_cfg_parse(struct moe_layer_cfg *c, const struct moe_config *cfg, size_t E, size_t K, size_t n_shared,
                        size_t D, size_t F, enum moe_ffn_act act, struct moe_err *err)
{
    memset(c, 0, sizeof *c);
    const char *rname = moe_cfg_str(cfg, "moe.router");
    int rt = moe_router_from_name(rname);
    if (rt < 0)
        return moe_error(err, MOE_ECONFIG, "key 'moe.router': unknown router '%s'", rname);
    c->router.type = (enum moe_router_type)rt;
    c->router.E = E;
    c->router.K = K;
    c->router.second = strcmp(moe_cfg_str(cfg, "moe.second_policy"), "random") == 0 ? MOE_SECOND_RANDOM
                                                                                   : MOE_SECOND_ALL;
    c->router.ec_factor = moe_cfg_num(cfg, "moe.ec_factor");
    c->router.bias_balance = moe_cfg_bool(cfg, "moe.bias_balance");
    c->router.ec_eval = (enum moe_ec_eval)moe_ec_eval_from_name(moe_cfg_str(cfg, "moe.ec_eval"));
    c->router.seq = 0; // the transformer sets its n_ctx
    c->D = D;
    c->F = F;
    c->n_shared = n_shared;
    c->act = act;
    c->capacity_factor = moe_cfg_num(cfg, "moe.capacity_factor");
    c->eval_capacity_factor = moe_cfg_num(cfg, "moe.eval_capacity_factor");
    c->drop = (enum moe_drop_policy)moe_drop_policy_from_name(moe_cfg_str(cfg, "moe.drop_policy"));
    c->jitter = moe_cfg_num(cfg, "moe.jitter");
    c->aux = (enum moe_aux_type)moe_aux_from_name(moe_cfg_str(cfg, "moe.aux_loss"));
    c->aux_weight = moe_cfg_num(cfg, "moe.aux_weight");
    c->w_importance = moe_cfg_num(cfg, "moe.w_importance");
    c->w_load = moe_cfg_num(cfg, "moe.w_load");
    c->z_weight = moe_cfg_num(cfg, "moe.z_weight");
    c->bias_rate = moe_cfg_num(cfg, "moe.bias_rate");
    c->hash_vocab = (size_t)moe_cfg_int(cfg, "moe.hash_vocab");
    c->hash_balanced = strcmp(moe_cfg_str(cfg, "moe.hash_table"), "balanced") == 0;
    c->lang_router = moe_cfg_bool(cfg, "moe.lang_router");
    c->router_init_scale = moe_cfg_num(cfg, "moe.router_init_scale");

    if (K > E)
        return moe_error(err, MOE_ECONFIG, "key 'model.n_expert_used': %zu experts per token but only %zu experts",
                         K, E);
    const struct moe_router_info *ri = moe_router_info(c->router.type);
    if (ri->fixed_k && K != ri->fixed_k)
        return moe_error(err, MOE_ECONFIG, "key 'model.n_expert_used': router '%s' %s, got %zu", rname, ri->k_rule, K);
    if (c->router.bias_balance && !ri->bias_balance) {
        char names[128];
        bias_routers(names, sizeof names);
        return moe_error(err, MOE_ECONFIG, "key 'moe.bias_balance': needs router %s, got '%s'", names, rname);
    }
    // Hash routing has no router probabilities, and expert choice is balanced
    // by construction: neither takes a balancing loss.
    if (!ri->balancing_loss)
        c->aux = MOE_AUX_NONE;
    if (!ri->probs)
        c->z_weight = 0.0;
    if (c->aux == MOE_AUX_SHAZEER && c->w_load > 0.0) {
        if (!ri->noise_weights)
            return moe_error(err, MOE_ECONFIG, "key 'moe.w_load': the smooth load estimator needs router 'noisy-topk', got '%s' (set moe.w_load = 0 to use the importance loss alone)", rname);
        if (K >= E)
            return moe_error(err, MOE_ECONFIG, "key 'moe.w_load': the smooth load estimator needs n_expert_used < n_expert");
    }
    return 0;
}
