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
#include "nn/nn.h"

#define LAYER_STRIDE ((uint64_t)1 << 40) // random-draw index offset between layers

static int add(struct moe_params *p, const struct moe_layer *l, const char *name, int ndim, const size_t *shape,
               struct moe_err *err)
{
    char full[MOE_NAME_MAX];
    snprintf(full, sizeof full, "%s.%s", l->prefix, name);
    return moe_params_add(p, full, ndim, shape, err);
}

int moe_layer_declare(struct moe_layer *l, const struct moe_layer_cfg *c, const char *prefix,
                      struct moe_params *p, struct moe_err *err)
{
    memset(l, 0, sizeof *l);
    l->c = *c;
    snprintf(l->prefix, sizeof l->prefix, "%s", prefix);
    l->i_router = l->i_noise = l->i_w1 = l->i_w3 = l->i_w2 = l->i_sw1 = l->i_sw3 = l->i_sw2 = -1;
    l->S = moe_router_slots(&c->router);
    size_t E = c->router.E, D = c->D, F = c->F, Sh = c->n_shared;
    int swiglu = c->act == MOE_FFN_SWIGLU;
    const struct moe_router_info *ri = moe_router_info(c->router.type);
#define ADD(idx, name, ...)                                          \
    if ((idx = add(p, l, name, MOE_SHAPE(__VA_ARGS__), err)) < 0) \
        return idx
    if (ri->gate_weights)
        ADD(l->i_router, "router.weight", E, D);
    if (ri->noise_weights)
        ADD(l->i_noise, "router.noise_weight", E, D);
    ADD(l->i_w1, "experts.w1", E, F, D);
    if (swiglu)
        ADD(l->i_w3, "experts.w3", E, F, D);
    ADD(l->i_w2, "experts.w2", E, D, F);
    if (Sh) {
        ADD(l->i_sw1, "shared.w1", Sh, F, D);
        if (swiglu)
            ADD(l->i_sw3, "shared.w3", Sh, F, D);
        ADD(l->i_sw2, "shared.w2", Sh, D, F);
    }
#undef ADD
    snprintf(l->bias_name, sizeof l->bias_name, "%s.router.bias", prefix);
    snprintf(l->table_name, sizeof l->table_name, "%s.router.hash_table", prefix);
    return 0;
}

int moe_layer_alloc(struct moe_layer *l, size_t T_max, struct moe_err *err)
{
    const struct moe_layer_cfg *c = &l->c;
    size_t E = c->router.E, D = c->D, S = l->S, Sh = c->n_shared;
    int swiglu = c->act == MOE_FFN_SWIGLU;
    const struct moe_router_info *ri = moe_router_info(c->router.type);
    l->T_max = T_max;
    l->N_max = moe_router_rows(&c->router, T_max); // rows of all expert blocks together
    int rc = moe_route_alloc(&l->route, T_max, E, S, ri->noise_weights, err);
    if (rc || (rc = moe_dispatch_alloc(&l->plan, T_max, S, E, err)) ||
        (rc = moe_experts_buf_alloc(&l->buf, l->N_max, D, c->F, swiglu, err)))
        return rc;
    if (Sh) {
        if ((rc = moe_dispatch_alloc(&l->splan, T_max, Sh, Sh, err)) ||
            (rc = moe_experts_buf_alloc(&l->sbuf, T_max * Sh, D, c->F, swiglu, err)))
            return rc;
        l->s_idx = malloc(T_max * Sh * sizeof *l->s_idx);
        l->s_gate = malloc(T_max * Sh * sizeof *l->s_gate);
        if (!l->s_idx || !l->s_gate)
            return moe_error(err, MOE_ENOMEM, "out of memory for shared experts");
        for (size_t i = 0; i < T_max * Sh; i++) {
            l->s_idx[i] = (int32_t)(i % Sh);
            l->s_gate[i] = 1.0f;
        }
    }
    l->xr = moe_alloc(T_max * D, sizeof(float));
    l->jit = moe_alloc(T_max * D, sizeof(float));
    l->dxr = moe_alloc(T_max * D, sizeof(float));
    l->hash_expert = moe_alloc(T_max, sizeof(int32_t));
    l->dgate = moe_alloc(T_max * S, sizeof(float));
    l->dz = moe_alloc(T_max * E, sizeof(float));
    l->du = moe_alloc(T_max * E, sizeof(float));
    if (!l->xr || !l->jit || !l->dxr || !l->hash_expert || !l->dgate || !l->dz || !l->du)
        return moe_error(err, MOE_ENOMEM, "out of memory for MoE layer scratch (batch %zu)", T_max);
    if (c->router.bias_balance && !(l->bias = moe_alloc(E, sizeof(float))))
        return moe_error(err, MOE_ENOMEM, "out of memory");
    if (ri->token_table && !(l->table = moe_alloc(c->hash_vocab, sizeof(int32_t))))
        return moe_error(err, MOE_ENOMEM, "out of memory for a hash table of %zu keys", c->hash_vocab);
    return 0;
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
    moe_route_release(&l->route);
    moe_dispatch_release(&l->plan);
    moe_dispatch_release(&l->splan);
    moe_experts_buf_release(&l->buf);
    moe_experts_buf_release(&l->sbuf);
    free(l->s_idx);
    free(l->s_gate);
    void *bufs[] = { l->xr, l->jit, l->dxr, l->hash_expert, l->dgate, l->dz, l->du, l->bias, l->table };
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++)
        moe_free(bufs[i]);
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
    moe_experts_forward(out, x, r->gate, &l->plan, wt(p, l->i_w1), wt(p, l->i_w3), wt(p, l->i_w2), &l->buf, c->act);
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
    moe_experts_backward(dx, l->dgate, gr(p, l->i_w1), gr(p, l->i_w3), gr(p, l->i_w2), dout, x, r->gate, &l->plan,
                         wt(p, l->i_w1), wt(p, l->i_w3), wt(p, l->i_w2), &l->buf, c->act);
    if (c->n_shared)
        moe_experts_backward(dx, NULL, gr(p, l->i_sw1), gr(p, l->i_sw3), gr(p, l->i_sw2), dout, x, l->s_gate,
                             &l->splan, wt(p, l->i_sw1), wt(p, l->i_sw3), wt(p, l->i_sw2), &l->sbuf, c->act);
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
