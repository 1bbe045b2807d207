// moe_layer.c: one sparse MoE FFN layer (moe_layer.h): router -> capacity plan
// -> expert GEMMs per block -> combine, plus shared experts and the auxiliary
// losses. The pieces live in router.c, dispatch.c, experts.c, aux_loss.c; this
// file only wires them and owns the buffers.
// T = tokens, D = n_embd, F = n_ff, E = n_expert, S = slots per token.
#include "moe/moe_layer.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/prof.h"
#include "core/rng.h"
#include "dist/ep.h"
#include "nn/nn.h"

#define LAYER_STRIDE ((uint64_t)1 << 40) // random-draw index offset between layers

static void setup(struct moe_layer *l, const struct moe_layer_cfg *c, const char *prefix)
{
    memset(l, 0, sizeof *l);
    l->c = *c;
    snprintf(l->prefix, sizeof l->prefix, "%s", prefix);
    l->i_router = l->i_noise = l->i_w1 = l->i_w3 = l->i_w2 = l->i_sw1 = l->i_sw3 = l->i_sw2 = -1;
    l->S = moe_router_slots(&c->router);
    snprintf(l->bias_name, sizeof l->bias_name, "%s.router.bias", prefix);
    snprintf(l->table_name, sizeof l->table_name, "%s.router.hash_table", prefix);
}

// The tensors (moe_layer.h), and the layer's FLOPs and untouched parameters per token.
static int declare_tensors(struct moe_layer *l, struct moe_plan *p)
{
    const struct moe_layer_cfg *c = &l->c;
    const char *x = l->prefix;
    struct moe_dim dD = { c->D, "model.n_embd" }, dE = { c->router.E, "model.n_expert" }, dF = { c->F, "model.n_ff" },
                   dSh = { c->n_shared, "model.n_expert_shared" };
    int swiglu = c->act == MOE_FFN_SWIGLU;
    const struct moe_router_info *ri = moe_router_info(c->router.type);
    if (ri->gate_weights)
        moe_plan_param(p, &l->i_router, MOE_DIMS(dE, dD), "%s.router.weight", x);
    if (ri->noise_weights)
        moe_plan_param(p, &l->i_noise, MOE_DIMS(dE, dD), "%s.router.noise_weight", x);
    // The experts' gradients, routed and shared, are written whole by every
    // backward (moe_layer_backward, beta 0): moe_params_zero_grad skips them.
    moe_plan_param(p, &l->i_w1, MOE_DIMS(dE, dF, dD), "%s.experts.w1", x);
    moe_plan_mark_experts(p);
    moe_plan_mark_grad_set(p);
    if (swiglu) {
        moe_plan_param(p, &l->i_w3, MOE_DIMS(dE, dF, dD), "%s.experts.w3", x);
        moe_plan_mark_experts(p);
        moe_plan_mark_grad_set(p);
    }
    moe_plan_param(p, &l->i_w2, MOE_DIMS(dE, dD, dF), "%s.experts.w2", x);
    moe_plan_mark_experts(p);
    moe_plan_mark_grad_set(p);
    if (c->n_shared) {
        moe_plan_param(p, &l->i_sw1, MOE_DIMS(dSh, dF, dD), "%s.shared.w1", x);
        moe_plan_mark_grad_set(p);
        if (swiglu) {
            moe_plan_param(p, &l->i_sw3, MOE_DIMS(dSh, dF, dD), "%s.shared.w3", x);
            moe_plan_mark_grad_set(p);
        }
        moe_plan_param(p, &l->i_sw2, MOE_DIMS(dSh, dD, dF), "%s.shared.w2", x);
        moe_plan_mark_grad_set(p);
    }
    // A token passes through the router (and noise) weights over all E experts,
    // `used` routed experts (moe_router_experts_per_token) and the shared ones;
    // the same expressions, in the same order, as cmd/'s routing figures.
    double per_expert = (double)c->F * (double)c->D * (swiglu ? 3.0 : 2.0);
    double E = (double)c->router.E, used = moe_router_experts_per_token(&c->router);
    double router_macs = (ri->gate_weights ? E * (double)c->D : 0.0) + (ri->noise_weights ? E * (double)c->D : 0.0);
    p->inactive += (E - used) * per_expert;
    moe_plan_macs(p, router_macs + used * per_expert + (double)c->n_shared * per_expert);
    return p->rc;
}

// Every buffer for batches of T.v tokens.
static int declare_buffers(struct moe_layer *l, struct moe_plan *p, struct moe_dim dT)
{
    const struct moe_layer_cfg *c = &l->c;
    const char *x = l->prefix;
    const struct moe_router_info *ri = moe_router_info(c->router.type);
    size_t Sh = c->n_shared;
    int swiglu = c->act == MOE_FFN_SWIGLU;
    struct moe_dim dE = { c->router.E, "model.n_expert" }, dD = { c->D, "model.n_embd" },
                   dS = { l->S, ri->quota ? "model.n_expert" : "model.n_expert_used" },
                   dSh = { Sh, "model.n_expert_shared" };
    char sub[MOE_NAME_MAX];
    l->T_max = dT.v;
    snprintf(sub, sizeof sub, "%s.plan", x);
    if (moe_route_declare(&l->route, p, x, dT, dE, dS, ri->noise_weights) ||
        moe_dispatch_declare(&l->plan, p, sub, dT, dS, dE))
        return p->rc;
    // rows the expert buffers hold: T * S, or for expert choice at most E quotas (T * S fits: checked above)
    l->N_max = moe_router_rows(&c->router, dT.v);
    snprintf(sub, sizeof sub, "%s.experts", x);
    moe_experts_buf_declare(&l->buf, p, sub, (struct moe_dim){ l->N_max, "expert rows (batch rows x slots)" }, c->D,
                            c->F, swiglu);
    if (Sh) {
        snprintf(sub, sizeof sub, "%s.shared_plan", x);
        moe_dispatch_declare(&l->splan, p, sub, dT, dSh, dSh);
        size_t n;
        if (moe_plan_product(p, &n, MOE_DIMS(dT, dSh)))
            return p->rc;
        snprintf(sub, sizeof sub, "%s.shared", x);
        moe_experts_buf_declare(&l->sbuf, p, sub, (struct moe_dim){ n, "batch rows x model.n_expert_shared" }, c->D,
                                c->F, swiglu);
        moe_plan_buf(p, &l->s_idx, MOE_ROLE_STATE, MOE_DT_I32, MOE_DIMS(dT, dSh), "%s.shared_idx", x);
        moe_plan_buf(p, &l->s_gate, MOE_ROLE_STATE, MOE_DT_F32, MOE_DIMS(dT, dSh), "%s.shared_gate", x);
    }
    moe_plan_buf(p, &l->xr, MOE_ROLE_ACT, MOE_DT_F32, MOE_DIMS(dT, dD), "%s.router_input", x);
    moe_plan_buf(p, &l->jit, MOE_ROLE_ACT, MOE_DT_F32, MOE_DIMS(dT, dD), "%s.jitter", x);
    moe_plan_buf(p, &l->dxr, MOE_ROLE_SCRATCH, MOE_DT_F32, MOE_DIMS(dT, dD), "%s.router_input_grad", x);
    moe_plan_buf(p, &l->hash_expert, MOE_ROLE_ACT, MOE_DT_I32, MOE_DIMS(dT), "%s.hash_expert", x);
    moe_plan_buf(p, &l->dgate, MOE_ROLE_SCRATCH, MOE_DT_F32, MOE_DIMS(dT, dS), "%s.gate_grad", x);
    moe_plan_buf(p, &l->dz, MOE_ROLE_SCRATCH, MOE_DT_F32, MOE_DIMS(dT, dE), "%s.logit_grad", x);
    moe_plan_buf(p, &l->du, MOE_ROLE_SCRATCH, MOE_DT_F32, MOE_DIMS(dT, dE), "%s.noise_logit_grad", x);
    if (c->router.bias_balance)
        moe_plan_buf(p, &l->bias, MOE_ROLE_STATE, MOE_DT_F32, MOE_DIMS(dE), "%s", l->bias_name);
    if (ri->token_table)
        moe_plan_buf(p, &l->table, MOE_ROLE_STATE, MOE_DT_I32, MOE_DIMS({ c->hash_vocab, "moe.hash_vocab" }), "%s",
                     l->table_name);
    return p->rc;
}

int moe_layer_plan_declare(struct moe_layer *l, const struct moe_layer_cfg *c, const char *prefix, struct moe_dim T,
                           struct moe_plan *p)
{
    setup(l, c, prefix);
    // The balanced table's greedy (moe_hash_table_balanced) packs key x E +
    // expert into 32 bits: past 2^31 it would wrap and never finish.
    if (moe_router_info(c->router.type)->token_table && c->hash_balanced &&
        (uint64_t)c->hash_vocab * c->router.E > (uint64_t)INT32_MAX + 1)
        return moe_plan_fail(p, MOE_ECONFIG,
                             "key 'moe.hash_table': 'balanced' needs table size x model.n_expert <= 2^31, got %zu x %zu "
                             "(the table size is moe.hash_vocab, a transformer's the vocabulary; or use 'random')",
                             c->hash_vocab, c->router.E);
    if (declare_tensors(l, p))
        return p->rc;
    return declare_buffers(l, p, T);
}

void moe_layer_plan_bound(struct moe_layer *l)
{
    size_t n = l->T_max * l->c.n_shared;
    for (size_t i = 0; l->s_idx && i < n; i++) {
        l->s_idx[i] = (int32_t)(i % l->c.n_shared);
        l->s_gate[i] = 1.0f;
    }
}

int moe_layer_declare(struct moe_layer *l, const struct moe_layer_cfg *c, const char *prefix,
                      struct moe_params *p, struct moe_err *err)
{
    setup(l, c, prefix);
    struct moe_plan plan;
    moe_plan_init(&plan, err);
    int rc = declare_tensors(l, &plan);
    if (!rc)
        rc = moe_plan_register(&plan, p);
    moe_plan_release(&plan);
    return rc;
}

struct alloc_args {
    struct moe_layer *l;
    size_t T;
};

static int layer_buffers(void *arg, struct moe_plan *p)
{
    struct alloc_args *a = arg;
    return declare_buffers(a->l, p, (struct moe_dim){ a->T, "tokens" });
}

int moe_layer_alloc(struct moe_layer *l, size_t T_max, struct moe_err *err)
{
    struct alloc_args a = { l, T_max };
    int rc = moe_plan_standalone(&l->own, layer_buffers, &a, err);
    if (!rc)
        moe_layer_plan_bound(l);
    return rc;
}

void moe_layer_init(struct moe_layer *l, struct moe_params *p, uint64_t seed, float init_scale)
{
    const struct moe_layer_cfg *c = &l->c;
    int experts[] = { l->i_w1, l->i_w3, l->i_w2, l->i_sw1, l->i_sw3, l->i_sw2 };
    for (size_t i = 0; i < sizeof experts / sizeof *experts; i++)
        if (experts[i] >= 0)
            moe_init_uniform(p, experts[i], seed, init_scale);
    if (l->i_router >= 0) {
        // Shazeer et al. 2017 start the gate and noise weights at zero; the
        // other routers get small random weights so experts differ from step 0.
        if (moe_router_info(c->router.type)->zero_init || c->router_init_scale == 0.0)
            memset(moe_params_data(p, l->i_router), 0, p->t[l->i_router].numel * sizeof(float));
        else
            moe_init_uniform(p, l->i_router, seed, (float)c->router_init_scale);
    }
    if (l->i_noise >= 0)
        memset(moe_params_data(p, l->i_noise), 0, p->t[l->i_noise].numel * sizeof(float));
    if (l->bias)
        memset(l->bias, 0, c->router.E * sizeof(float));
    if (l->table) // a different table per layer: the seed is mixed with the layer number
        moe_hash_table_random(l->table, c->hash_vocab, c->router.E,
                              seed ^ (0x9E3779B97F4A7C15ull * ((uint64_t)c->index + 1)));
}

void moe_layer_fit_hash(struct moe_layer *l, const uint64_t *freq)
{
    if (l->table && l->c.hash_balanced)
        moe_hash_table_balanced(l->table, freq, l->c.hash_vocab, l->c.router.E);
}

void moe_layer_release(struct moe_layer *l)
{
    if (!l)
        return;
    moe_plan_free(l->own); // buffers of moe_layer_alloc; a model's plan owns them otherwise
    memset(l, 0, sizeof *l);
}

static const float *wt(const struct moe_params *p, int i) { return i >= 0 ? moe_params_data(p, i) : NULL; }
static float *gr(const struct moe_params *p, int i) { return i >= 0 ? moe_params_grad(p, i) : NULL; }

static int has_smooth_load(const struct moe_layer_cfg *c)
{
    return moe_router_info(c->router.type)->noise_weights && c->router.K < c->router.E;
}

// The batch's unweighted auxiliary value of the layer's convention (NaN for
// none) and z-loss, and the weighted sum that joins the objective.
static void aux_forward(struct moe_layer *l)
{
    const struct moe_layer_cfg *c = &l->c;
    const struct moe_route *r = &l->route;
    double v = NAN, weighted = 0.0;
    switch (c->aux) {
    case MOE_AUX_SWITCH:
    case MOE_AUX_GSHARD:
    case MOE_AUX_TOPK_ALL:
        v = c->aux == MOE_AUX_SWITCH ? moe_aux_switch(NULL, r, 0.0f)
            : c->aux == MOE_AUX_GSHARD ? moe_aux_gshard(NULL, r, 0.0f)
                                       : moe_aux_topk_all(NULL, r, 0.0f);
        weighted = c->aux_weight * v;
        break;
    case MOE_AUX_SHAZEER: {
        double imp = moe_aux_importance(NULL, r, 0.0f);
        double load = has_smooth_load(c) ? moe_aux_load(NULL, NULL, r, c->router.K, 0.0f) : 0.0;
        v = imp + load;
        weighted = c->w_importance * imp + c->w_load * load;
        break;
    }
    case MOE_AUX_NONE:
        break;
    }
    l->aux_value = v;
    l->z_value = moe_aux_z(NULL, r, 0.0f);
    l->loss = weighted + c->z_weight * l->z_value;
}

// Gradients of the weighted auxiliary losses: into dz (through p), du (the
// smooth load) and dgate (importance), before the router's own backward.
static void aux_backward(struct moe_layer *l, float *dz, float *du, float *dgate)
{
    const struct moe_layer_cfg *c = &l->c;
    const struct moe_route *r = &l->route;
    switch (c->aux) {
    case MOE_AUX_SWITCH:
        moe_aux_switch(dz, r, (float)c->aux_weight);
        break;
    case MOE_AUX_GSHARD:
        moe_aux_gshard(dz, r, (float)c->aux_weight);
        break;
    case MOE_AUX_TOPK_ALL:
        moe_aux_topk_all(dz, r, (float)c->aux_weight);
        break;
    case MOE_AUX_SHAZEER:
        moe_aux_importance(dgate, r, (float)c->w_importance);
        if (has_smooth_load(c))
            moe_aux_load(dz, du, r, c->router.K, (float)c->w_load);
        break;
    case MOE_AUX_NONE:
        break;
    }
    if (c->z_weight > 0.0)
        moe_aux_z(dz, r, (float)c->z_weight);
}

double moe_layer_forward(struct moe_layer *l, const struct moe_params *p, float *out, const float *x, size_t T,
                         const uint32_t *keys, int train, uint64_t seed, uint64_t step,
                         struct moe_route_acc *acc, const int32_t *label)
{
    const struct moe_layer_cfg *c = &l->c;
    size_t E = c->router.E, D = c->D, S = l->S;
    const struct moe_router_info *ri = moe_router_info(c->router.type);
    struct moe_route *r = &l->route;
    uint64_t base = (uint64_t)c->index * LAYER_STRIDE;
    l->T = T;
    l->train = train;
    const float *rin = x;
    double t0 = moe_prof_begin();
    if (ri->token_table) {
        for (size_t t = 0; t < T; t++)
            l->hash_expert[t] = l->table[keys[t] % c->hash_vocab];
    } else {
        if (train && c->jitter > 0.0) {
            // Switch Transformer input jitter: x * U(1 - eps, 1 + eps), elementwise.
            struct moe_rng jr = moe_rng_make(seed, MOE_RNG_JITTER, (uint32_t)step);
            for (size_t i = 0; i < T * D; i++) {
                l->jit[i] = 1.0f + (float)c->jitter * (2.0f * moe_rng_uniform(&jr, base + i) - 1.0f);
                l->xr[i] = (l->radd ? x[i] + l->radd[i] : x[i]) * l->jit[i];
            }
            rin = l->xr;
        } else if (l->radd) {
            for (size_t i = 0; i < T * D; i++)
                l->xr[i] = x[i] + l->radd[i];
            rin = l->xr;
        }
        moe_linear_forward(r->z, E, rin, D, wt(p, l->i_router), NULL, T, D, E);
        if (ri->noise_weights)
            moe_linear_forward(r->u, E, rin, D, wt(p, l->i_noise), NULL, T, D, E);
    }
    struct moe_rng rng = moe_rng_make(seed, ri->rng, (uint32_t)step);
    moe_router_forward(r, &c->router, l->bias, ri->token_table ? l->hash_expert : NULL, train, &rng, base, T);
    if (train && l->bias)
        moe_router_bias_update(l->bias, r, c->bias_rate);
    moe_prof_end(MOE_PHASE_ROUTER, t0);

    t0 = moe_prof_begin();
    size_t cap = ri->quota ? T : moe_capacity(train ? c->capacity_factor : c->eval_capacity_factor, T, S, E);
    moe_dispatch_plan(&l->plan, r->idx, r->prio, T, cap, c->drop);
    moe_prof_end(MOE_PHASE_DISPATCH, t0);
    const double pd = train ? c->ffn_dropout : 0.0;
    l->buf.drop = moe_dropout_make(pd, seed, step, c->index, MOE_DROP_FFN);
    l->sbuf.drop = moe_dropout_make(pd, seed, step, c->index, MOE_DROP_SHARED);
    if (l->ep && train)
        moe_ep_forward(l->ep, p, out, x, r->gate, &l->plan, &l->buf);
    else if (l->ep)
        moe_ep_eval_forward(l->ep, p, out, x, r->gate, &l->plan, &l->buf);
    else
        moe_experts_forward(out, x, r->gate, &l->plan, wt(p, l->i_w1), wt(p, l->i_w3), wt(p, l->i_w2), &l->buf,
                            c->act);
    if (c->n_shared) {
        t0 = moe_prof_begin();
        moe_dispatch_plan(&l->splan, l->s_idx, l->s_gate, T, T, MOE_DROP_ORDER);
        moe_prof_end(MOE_PHASE_DISPATCH, t0);
        moe_experts_forward(out, x, l->s_gate, &l->splan, wt(p, l->i_sw1), wt(p, l->i_sw3), wt(p, l->i_sw2),
                            &l->sbuf, c->act);
    }
    int probs = ri->probs;
    t0 = moe_prof_begin();
    if (probs) {
        aux_forward(l);
    } else {
        l->aux_value = l->z_value = NAN;
        l->loss = 0.0;
    }
    moe_prof_end(MOE_PHASE_AUX, t0);
    if (acc)
        moe_route_acc_add(acc, r, &l->plan, label, l->aux_value, l->z_value, probs);
    return l->loss;
}

void moe_layer_backward(struct moe_layer *l, const struct moe_params *p, float *dx, const float *dout,
                        const float *x)
{
    const struct moe_layer_cfg *c = &l->c;
    size_t T = l->T, E = c->router.E, D = c->D, S = l->S;
    struct moe_route *r = &l->route;
    memset(l->dgate, 0, T * S * sizeof(float));
    if (l->train && l->ep)
        moe_ep_backward(l->ep, p, dx, l->dgate, dout, r->gate, &l->plan, &l->buf);
    else
        moe_experts_backward(dx, l->dgate, gr(p, l->i_w1), gr(p, l->i_w3), gr(p, l->i_w2), dout, x, r->gate,
                             &l->plan, wt(p, l->i_w1), wt(p, l->i_w3), wt(p, l->i_w2), &l->buf, c->act, 0.0f);
    if (c->n_shared)
        moe_experts_backward(dx, NULL, gr(p, l->i_sw1), gr(p, l->i_sw3), gr(p, l->i_sw2), dout, x, l->s_gate,
                             &l->splan, wt(p, l->i_sw1), wt(p, l->i_sw3), wt(p, l->i_sw2), &l->sbuf, c->act, 0.0f);
    const struct moe_router_info *ri = moe_router_info(c->router.type);
    if (!ri->gate_weights)
        return;
    int noisy = ri->noise_weights;
    double t0 = moe_prof_begin();
    memset(l->dz, 0, T * E * sizeof(float));
    if (noisy)
        memset(l->du, 0, T * E * sizeof(float));
    aux_backward(l, l->dz, noisy ? l->du : NULL, l->dgate);
    moe_prof_end(MOE_PHASE_AUX, t0);
    t0 = moe_prof_begin();
    moe_router_backward(l->dz, noisy ? l->du : NULL, l->dgate, r, &c->router);
    int jittered = l->train && c->jitter > 0.0, own = jittered || l->radd;
    const float *rin = own ? l->xr : x;
    float *dr = own ? l->dxr : dx;
    if (own)
        memset(l->dxr, 0, T * D * sizeof(float));
    moe_linear_backward(dr, D, gr(p, l->i_router), NULL, l->dz, E, rin, D, wt(p, l->i_router), T, D, E);
    if (noisy)
        moe_linear_backward(dr, D, gr(p, l->i_noise), NULL, l->du, E, rin, D, wt(p, l->i_noise), T, D, E);
    if (own)
        for (size_t i = 0; i < T * D; i++) {
            float g = jittered ? l->dxr[i] * l->jit[i] : l->dxr[i];
            dx[i] += g;
            if (l->dradd)
                l->dradd[i] += g;
        }
    moe_prof_end(MOE_PHASE_ROUTER, t0);
}
