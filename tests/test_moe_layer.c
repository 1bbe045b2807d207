// test_moe_layer.c: the assembled sparse layer (moe/moe_layer.c) and the
// mlp-moe model against central finite differences, for every router, with
// capacity drops, shared experts, the auxiliary losses and the z-loss in the
// objective; plus checkpoint round trips of routing state (a reloaded hash
// table routes identically, bias-balancing offsets survive) and a training
// smoke test per router.
//
// Method as tests/test_grad.c: float everywhere, the objective summed in
// double, central differences with the step actually stored, tolerance
// |a - n| <= 2e-3 * max(1, |n|). Routing is discrete: a perturbation that
// changes any routing decision (selection, dispatch or drop) makes the
// objective non-differentiable there, so such elements are skipped and
// counted, and each case asserts that almost all elements were checked.
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/params.h"
#include "core/rng.h"
#include "io/config.h"
#include "io/safetensors.h"
#include "model/model.h"
#include "moe/moe_layer.h"
#include "train/train.h"
#include "gradcheck.h"
#include "testutil.h"

// One step for the layer and the model: 3e-3 balances the two error terms.
// Measured on these cases: at 1e-2 the model's truncation error reaches 6e-3
// (a few elements; 1.8e-3 at 5e-3, <= 3.3e-4 at 3e-3, shrinking like h^2, so the
// analytic gradient is the limit); at 3e-4 float roundoff of the O(10)
// objective dominates and exceeds the tolerance.
#define H_STEP 3e-3f

static int verbose;

enum { T = 12, D = 6, F = 5 };

struct layer_case {
    const char *name;
    enum moe_router_type router;
    size_t E, K, shared;
    enum moe_ffn_act act;
    double cf;               // training capacity factor (0 = dropless)
    enum moe_drop_policy drop;
    double jitter;
    enum moe_aux_type aux;
    double aux_weight, w_imp, w_load, z_weight;
    enum moe_second_policy second;
    double ec;
};

static const struct layer_case cases[] = {
    { "softmax-top2-drops", MOE_ROUTER_SOFTMAX, 4, 2, 0, MOE_FFN_RELU, 0.75, MOE_DROP_ORDER, 0, MOE_AUX_SWITCH, 0.3, 0, 0, 0.05, 0, 0 },
    { "softmax-dense-gelu", MOE_ROUTER_SOFTMAX, 4, 4, 0, MOE_FFN_GELU, 0, MOE_DROP_ORDER, 0, MOE_AUX_TOPK_ALL, 0.3, 0, 0, 0.05, 0, 0 },
    { "noisy-topk-shazeer", MOE_ROUTER_NOISY_TOPK, 4, 2, 0, MOE_FFN_GELU, 0, MOE_DROP_ORDER, 0, MOE_AUX_SHAZEER, 0, 0.5, 0.5, 0.05, 0, 0 },
    { "switch-jitter-prob", MOE_ROUTER_SWITCH, 4, 1, 0, MOE_FFN_RELU, 1.0, MOE_DROP_PROB, 0.1, MOE_AUX_SWITCH, 0.3, 0, 0, 0.05, 0, 0 },
    { "deepseek-top2-jitter-prob", MOE_ROUTER_DEEPSEEK, 4, 2, 0, MOE_FFN_RELU, 1.0, MOE_DROP_PROB, 0.1, MOE_AUX_SWITCH, 0.3, 0, 0, 0.05, 0, 0 },
    { "deepseek-top3-shared", MOE_ROUTER_DEEPSEEK, 5, 3, 1, MOE_FFN_SWIGLU, 0.75, MOE_DROP_ORDER, 0, MOE_AUX_TOPK_ALL, 0.3, 0, 0, 0.05, 0, 0 },
    { "gshard-random", MOE_ROUTER_GSHARD, 4, 2, 0, MOE_FFN_SWIGLU, 1.0, MOE_DROP_ORDER, 0, MOE_AUX_GSHARD, 0.3, 0, 0, 0.05, MOE_SECOND_RANDOM, 0 },
    { "hash-shared", MOE_ROUTER_HASH, 4, 1, 1, MOE_FFN_RELU, 1.0, MOE_DROP_ORDER, 0, MOE_AUX_NONE, 0, 0, 0, 0, 0, 0 },
    { "expert-choice", MOE_ROUTER_EXPERT_CHOICE, 4, 1, 0, MOE_FFN_GELU, 0, MOE_DROP_ORDER, 0, MOE_AUX_NONE, 0, 0, 0, 0.05, 0, 1.5 },
    { "softmax-shared-swiglu", MOE_ROUTER_SOFTMAX, 3, 2, 2, MOE_FFN_SWIGLU, 1.0, MOE_DROP_PROB, 0, MOE_AUX_SHAZEER, 0, 0.5, 0, 0.05, 0, 0 },
};

struct lctx {
    struct moe_params p;
    struct moe_layer l;
    float x[T * D], r[T * D], out[T * D], dx[T * D];
    uint32_t keys[T];
    int32_t idx0[T * 4];     // routing decisions of the reference forward (slot -> kept row or -1)
    int32_t sel0[T * 4];
    size_t S;
};

static double lobj(struct lctx *c)
{
    memset(c->out, 0, sizeof c->out);
    double aux = moe_layer_forward(&c->l, &c->p, c->out, c->x, T, c->keys, 1, 99, 3, NULL, NULL);
    double s = aux;
    for (size_t i = 0; i < T * D; i++)
        s += (double)c->out[i] * c->r[i];
    return s;
}

// 1 when the last forward routed exactly like the reference one.
static int same_routing(const struct lctx *c)
{
    for (size_t i = 0; i < T * c->S; i++) {
        int kept = c->l.plan.slot_row[i] >= 0;
        if (c->l.route.sel[i] != c->sel0[i] || kept != (c->idx0[i] >= 0) ||
            (kept && c->l.route.idx[i] != c->idx0[i]))
            return 0;
    }
    return 1;
}

// Central difference at *w; returns 0 (and leaves *num) when routing changed.
static int num_grad(struct lctx *c, float *w, double *num)
{
    float w0 = *w, wp = w0 + H_STEP, wm = w0 - H_STEP;
    *w = wp;
    double lp = lobj(c);
    int ok = same_routing(c);
    *w = wm;
    double lm = lobj(c);
    ok &= same_routing(c);
    *w = w0;
    *num = (lp - lm) / ((double)wp - (double)wm);
    return ok;
}

static void check(double a, double n, const char *what, size_t i, const char *cname)
{
    double rel = fabs(a - n) / (fabs(n) > 1.0 ? fabs(n) : 1.0);
    if (rel > grad_worst)
        grad_worst = rel;
    ck_assert_msg(rel <= GRAD_TOL, "%s: %s[%zu]: analytic %.7g vs numeric %.7g (rel %.3g)", cname, what, i, a, n, rel);
}

START_TEST(test_layer_grad)
{
    const struct layer_case *k = &cases[_i];
    struct lctx *c = calloc(1, sizeof *c);
    struct moe_err err;
    struct moe_layer_cfg lc = { 0 };
    lc.router.type = k->router;
    lc.router.E = k->E;
    lc.router.K = k->K;
    lc.router.second = k->second;
    lc.router.ec_factor = k->ec;
    lc.D = D;
    lc.F = F;
    lc.n_shared = k->shared;
    lc.act = k->act;
    lc.capacity_factor = k->cf;
    lc.eval_capacity_factor = 0;
    lc.drop = k->drop;
    lc.jitter = k->jitter;
    lc.aux = k->aux;
    lc.aux_weight = k->aux_weight;
    lc.w_importance = k->w_imp;
    lc.w_load = k->w_load;
    lc.z_weight = k->z_weight;
    lc.hash_vocab = 16;
    lc.router_init_scale = 1.0;
    lc.index = 2;
    moe_params_init(&c->p);
    ck_assert_int_eq(moe_layer_declare(&c->l, &lc, "layers.2.moe", &c->p, &err), 0);
    ck_assert_int_eq(moe_params_alloc(&c->p, &err), 0);
    ck_assert_int_eq(moe_layer_alloc(&c->l, T, &err), 0);
    moe_layer_init(&c->l, &c->p, 5, 1.0f);
    c->S = c->l.S;
    ck_assert_uint_le(c->S, 4);
    // Larger random weights than the init, so routing is decisive and gates are far from uniform.
    fill_u(c->p.data, c->p.numel, 11, -1.0f, 1.0f);
    fill_u(c->x, T * D, 12, -1.5f, 1.5f);
    fill_u(c->r, T * D, 13, -1.0f, 1.0f);
    for (size_t t = 0; t < T; t++)
        c->keys[t] = (uint32_t)(t * 7 % 16);

    // reference forward and the analytic gradients
    lobj(c);
    memcpy(c->sel0, c->l.route.sel, T * c->S * sizeof(int32_t));
    for (size_t i = 0; i < T * c->S; i++)
        c->idx0[i] = c->l.plan.slot_row[i] >= 0 ? c->l.route.idx[i] : -1;
    if (k->cf > 0 && k->cf < 1) // the case meant to overflow capacity does
        ck_assert_msg(c->l.plan.n_dropped > 0, "%s: nothing dropped", k->name);
    if (k->router == MOE_ROUTER_GSHARD && k->second == MOE_SECOND_RANDOM) { // some second slots skipped
        size_t skipped2 = 0;
        for (size_t t = 0; t < T; t++)
            skipped2 += c->l.route.idx[t * 2 + 1] < 0;
        ck_assert_msg(skipped2 > 0 && skipped2 < T, "%s: %zu second slots skipped", k->name, skipped2);
    }
    // NaN first: a gradient the backward is trusted to write whole (the experts',
    // moe_params_mark_grad_set) and leaves in part would fail the checks below
    for (size_t i = 0; i < c->p.numel; i++)
        c->p.grad[i] = NAN;
    moe_params_zero_grad(&c->p);
    memset(c->dx, 0, sizeof c->dx);
    moe_layer_backward(&c->l, &c->p, c->dx, c->r, c->x);
    float *grad = malloc(c->p.numel * sizeof(float)), dx[T * D];
    memcpy(grad, c->p.grad, c->p.numel * sizeof(float));
    memcpy(dx, c->dx, sizeof dx);

    size_t checked = 0, skipped = 0;
    double biggest = 0.0;
    for (size_t ti = 0; ti < c->p.n; ti++) {
        const struct moe_tensor *t = &c->p.t[ti];
        for (size_t j = 0; j < t->numel; j++) {
            double num;
            if (!num_grad(c, c->p.data + t->offset + j, &num)) {
                skipped++;
                continue;
            }
            check(grad[t->offset + j], num, t->name, j, k->name);
            biggest = fmax(biggest, fabs(num));
            checked++;
        }
    }
    for (size_t j = 0; j < T * D; j++) {
        double num;
        if (!num_grad(c, &c->x[j], &num)) {
            skipped++;
            continue;
        }
        check(dx[j], num, "x", j, k->name);
        checked++;
    }
    if (verbose)
        fprintf(stderr, "%s: %zu checked, %zu skipped, worst so far %.3g\n", k->name, checked, skipped, grad_worst);
    ck_assert_msg(skipped * 20 <= checked, "%s: %zu of %zu elements changed the routing", k->name, skipped,
                  checked + skipped);
    ck_assert_msg(biggest > 0.05, "%s: gradients too small to test (max %g)", k->name, biggest);
    // the router weight's gradient is checked and non-zero (routers with a gate)
    int ir = moe_params_find(&c->p, "layers.2.moe.router.weight");
    if (k->router != MOE_ROUTER_HASH) {
        ck_assert_int_ge(ir, 0);
        double g = 0.0;
        for (size_t j = 0; j < c->p.t[ir].numel; j++)
            g = fmax(g, fabs(grad[c->p.t[ir].offset + j]));
        ck_assert_msg(g > 1e-3, "%s: router gradient is zero", k->name);
    } else {
        ck_assert_int_lt(ir, 0);
    }
    free(grad);
    moe_layer_release(&c->l);
    moe_params_release(&c->p);
    free(c);
}
END_TEST

// Capacity: with a tight factor some assignments are dropped, the output of a
// token whose every slot was dropped is exactly 0, and dropless drops nothing.
START_TEST(test_layer_capacity)
{
    struct moe_err err;
    struct moe_params p;
    struct moe_layer l;
    struct moe_layer_cfg lc = { 0 };
    lc.router.type = MOE_ROUTER_SWITCH;
    lc.router.E = 4;
    lc.router.K = 1;
    lc.D = D;
    lc.F = F;
    lc.act = MOE_FFN_RELU;
    lc.capacity_factor = 0.5;
    lc.eval_capacity_factor = 0;
    lc.router_init_scale = 1.0;
    moe_params_init(&p);
    ck_assert_int_eq(moe_layer_declare(&l, &lc, "m", &p, &err), 0);
    ck_assert_int_eq(moe_params_alloc(&p, &err), 0);
    ck_assert_int_eq(moe_layer_alloc(&l, T, &err), 0);
    moe_layer_init(&l, &p, 1, 1.0f);
    fill_u(p.data, p.numel, 21, -1.0f, 1.0f);
    float x[T * D], out[T * D];
    fill_u(x, T * D, 22, -1, 1);
    memset(out, 0, sizeof out);
    moe_layer_forward(&l, &p, out, x, T, NULL, 1, 1, 0, NULL, NULL);
    size_t cap = moe_capacity(0.5, T, 1, 4); // ceil(0.5 * 12 / 4) = 2
    ck_assert_uint_eq(cap, 2);
    ck_assert_uint_eq(l.plan.n_rows + l.plan.n_dropped, T);
    ck_assert_uint_ge(l.plan.n_dropped, T - 4 * cap);
    for (size_t t = 0; t < T; t++)
        if (l.plan.slot_row[t] < 0)
            for (size_t d = 0; d < D; d++)
                ck_assert_float_eq(out[t * D + d], 0.0f);
    memset(out, 0, sizeof out);
    moe_layer_forward(&l, &p, out, x, T, NULL, 0, 1, 0, NULL, NULL); // evaluation: dropless
    ck_assert_uint_eq(l.plan.n_dropped, 0);
    moe_layer_release(&l);
    moe_params_release(&p);
}
END_TEST

// ---------------------------------------------------------------- the model

static struct moe_config load_cfg(const char *json)
{
    struct moe_config cfg;
    struct moe_err err;
    int rc = moe_config_parse(&cfg, moe_run_schema(), moe_run_schema_len(), json, "test", NULL, 0, &err);
    ck_assert_msg(rc == 0, "%s", err.msg);
    return cfg;
}

struct mctx {
    struct moe_model m;
    struct moe_batch b;
};

static double mobj(struct mctx *c, unsigned *routing_sig)
{
    struct moe_stats st;
    struct moe_err err;
    ck_assert_int_eq(moe_stats_init(&st, 0, 0, &err), 0);
    ck_assert_int_eq(moe_model_run(&c->m, &c->b, 1, &st, &err), 0);
    double s = st.loss / (double)c->b.n;
    unsigned sig = 0; // unsigned: the hash wraps modulo 2^32 (signed overflow is undefined)
    for (size_t i = 0; i < c->m.n_moe_layers; i++) {
        struct moe_layer *l = c->m.ops->moe_layer_at(&c->m, i);
        s += l->loss;
        for (size_t j = 0; j < l->T * l->S; j++)
            sig = sig * 31u + (unsigned)l->route.sel[j] * 7u + (l->plan.slot_row[j] >= 0);
    }
    *routing_sig = sig;
    moe_stats_release(&st);
    return s;
}

static const char *const model_cfgs[] = {
    // dense block then sparse block, layernorm, noisy top-k with Shazeer's losses
    "{\"data\":{\"source\":\"synthetic\",\"synthetic\":{\"kind\":\"classes\",\"n_in\":3,\"n_regions\":3}},"
    "\"model\":{\"type\":\"mlp-moe\",\"n_embd\":5,\"n_layer\":2,\"moe_every\":2,\"n_ff\":4,\"n_expert\":4,"
    "\"n_expert_used\":2,\"ffn_activation\":\"gelu\"},\"loss\":{\"type\":\"ce\"},"
    "\"moe\":{\"router\":\"noisy-topk\",\"aux_loss\":\"shazeer\",\"w_importance\":0.3,\"w_load\":0.3,\"z_weight\":0.01,\"capacity_factor\":0}}",
    // two sparse blocks, rmsnorm, swiglu, shared expert, switch with drops and z-loss, regression
    "{\"data\":{\"source\":\"synthetic\",\"synthetic\":{\"kind\":\"regions\",\"n_in\":3,\"n_out\":2}},"
    "\"model\":{\"type\":\"mlp-moe\",\"n_embd\":5,\"n_layer\":2,\"n_ff\":4,\"n_expert\":3,\"n_expert_used\":1,"
    "\"n_expert_shared\":1,\"ffn_activation\":\"swiglu\",\"norm\":\"rmsnorm\"},\"loss\":{\"type\":\"mse\"},"
    "\"moe\":{\"router\":\"switch\",\"aux_weight\":0.2,\"z_weight\":0.01,\"capacity_factor\":1.0}}",
    // dropout (fixed mask: the batch's step) on the residual branches and every FFN's hidden units:
    // a dense block, then a sparse one with a shared expert, gelu
    "{\"data\":{\"source\":\"synthetic\",\"synthetic\":{\"kind\":\"classes\",\"n_in\":3,\"n_regions\":3}},"
    "\"model\":{\"type\":\"mlp-moe\",\"n_embd\":5,\"n_layer\":2,\"moe_every\":2,\"n_ff\":6,\"n_expert\":3,"
    "\"n_expert_used\":2,\"n_expert_shared\":1,\"ffn_activation\":\"gelu\",\"dropout\":{\"residual\":0.3,\"ffn\":0.3}},"
    "\"loss\":{\"type\":\"ce\"},\"moe\":{\"router\":\"softmax\",\"aux_loss\":\"switch\",\"aux_weight\":0.1,\"capacity_factor\":0}}",
    // the same with swiglu and rmsnorm, regression, FFN dropout only
    "{\"data\":{\"source\":\"synthetic\",\"synthetic\":{\"kind\":\"regions\",\"n_in\":3,\"n_out\":2}},"
    "\"model\":{\"type\":\"mlp-moe\",\"n_embd\":5,\"n_layer\":2,\"moe_every\":2,\"n_ff\":6,\"n_expert\":3,"
    "\"n_expert_used\":1,\"ffn_activation\":\"swiglu\",\"norm\":\"rmsnorm\",\"dropout\":{\"ffn\":0.5}},"
    "\"loss\":{\"type\":\"mse\"},\"moe\":{\"router\":\"switch\",\"aux_weight\":0.1,\"capacity_factor\":0}}",
};

START_TEST(test_model_grad)
{
    struct moe_err err;
    struct moe_config cfg = load_cfg(model_cfgs[_i]);
    struct moe_data data;
    ck_assert_msg(moe_data_load(&data, &cfg, &err) == 0, "%s", err.msg);
    struct mctx c;
    const size_t n = 10;
    ck_assert_msg(moe_model_create(&c.m, &cfg, NULL, data.train.task, data.train.n_in, data.train.n_out, n, &err) == 0,
                  "%s", err.msg);
    moe_model_init_weights(&c.m, 3);
    fill_u(c.m.params.data, c.m.params.numel, 31, -0.8f, 0.8f);
    // norm gains near 1 so the blocks are not degenerate
    for (size_t i = 0; i < c.m.params.n; i++)
        if (strstr(c.m.params.t[i].name, "norm.weight"))
            for (size_t j = 0; j < c.m.params.t[i].numel; j++)
                c.m.params.data[c.m.params.t[i].offset + j] += 1.0f;
    memset(&c.b, 0, sizeof c.b);
    c.b.n = n;
    c.b.x = data.train.x;
    c.b.y = data.train.y;
    c.b.label = data.train.label;
    c.b.step = 4;
    unsigned sig0;
    for (size_t i = 0; i < c.m.params.numel; i++) // NaN first: see above
        c.m.params.grad[i] = NAN;
    moe_params_zero_grad(&c.m.params);
    mobj(&c, &sig0);
    float *grad = malloc(c.m.params.numel * sizeof(float));
    memcpy(grad, c.m.params.grad, c.m.params.numel * sizeof(float));
    size_t checked = 0, skipped = 0;
    double biggest = 0;
    for (size_t ti = 0; ti < c.m.params.n; ti++) {
        const struct moe_tensor *t = &c.m.params.t[ti];
        for (size_t j = 0; j < t->numel; j++) {
            float *w = c.m.params.data + t->offset + j;
            float w0 = *w, wp = w0 + H_STEP, wm = w0 - H_STEP;
            unsigned s1, s2;
            *w = wp;
            double lp = mobj(&c, &s1);
            *w = wm;
            double lm = mobj(&c, &s2);
            *w = w0;
            if (s1 != sig0 || s2 != sig0) {
                skipped++;
                continue;
            }
            double num = (lp - lm) / ((double)wp - (double)wm);
            check(grad[t->offset + j], num, t->name, j, "mlp-moe");
            biggest = fmax(biggest, fabs(num));
            checked++;
        }
    }
    if (verbose)
        fprintf(stderr, "model %d: %zu checked, %zu skipped, worst so far %.3g\n", _i, checked, skipped, grad_worst);
    ck_assert_msg(skipped * 20 <= checked, "%zu of %zu elements changed the routing", skipped, checked + skipped);
    ck_assert_msg(biggest > 0.05, "gradients too small to test (max %g)", biggest);
    free(grad);
    moe_model_release(&c.m);
    moe_data_release(&data);
    moe_config_release(&cfg);
}
END_TEST

// Outputs of a model on the test split, evaluation mode.
static void eval_outputs(struct moe_model *m, const struct moe_dataset *d, double *loss, int32_t *first)
{
    struct moe_stats st;
    struct moe_err err;
    ck_assert_int_eq(moe_stats_init(&st, 0, 0, &err), 0);
    struct moe_batch b = { .n = d->n, .x = d->x, .y = d->y, .label = d->label };
    ck_assert_int_eq(moe_model_run(m, &b, 0, &st, &err), 0);
    *loss = st.loss;
    struct moe_layer *l = m->ops->moe_layer_at(m, 0);
    for (size_t t = 0; t < d->n; t++)
        first[t] = l->route.sel[t * l->S];
    moe_stats_release(&st);
}

// Hash routing: the table is saved with the checkpoint, and a model built with
// another seed routes identically once the checkpoint is loaded. The balanced
// table is fitted to the training data and balances it better than chance.
START_TEST(test_hash_checkpoint)
{
    const char *json =
        "{\"data\":{\"source\":\"synthetic\",\"synthetic\":{\"kind\":\"classes\",\"n_in\":4,\"n_regions\":3,\"n_train\":300,\"n_test\":100}},"
        "\"model\":{\"type\":\"mlp-moe\",\"n_embd\":6,\"n_ff\":4,\"n_expert\":4,\"n_expert_used\":1},"
        "\"moe\":{\"router\":\"hash\",\"hash_table\":\"balanced\",\"hash_vocab\":64,\"aux_loss\":\"none\"}}";
    struct moe_err err;
    struct moe_config cfg = load_cfg(json);
    struct moe_data data;
    ck_assert_int_eq(moe_data_load(&data, &cfg, &err), 0);
    struct moe_model a, b;
    size_t nt = data.test.n;
    ck_assert_int_eq(moe_model_create(&a, &cfg, NULL, data.train.task, data.train.n_in, data.train.n_out, nt, &err), 0);
    ck_assert_int_eq(moe_model_create(&b, &cfg, NULL, data.train.task, data.train.n_in, data.train.n_out, nt, &err), 0);
    moe_model_init_weights(&a, 1);
    ck_assert_int_eq(moe_model_fit(&a, &data.train, &err), 0);
    moe_model_init_weights(&b, 2); // another random table and other weights
    const char *path = "test_moe_layer_hash.safetensors";
    ck_assert_msg(moe_model_save(&a, path, NULL, 0, NULL, 0, &err) == 0, "%s", err.msg);
    struct moe_st_file f;
    ck_assert_int_eq(moe_safetensors_open(path, &f, &err), 0);
    const struct moe_st_entry *e = moe_safetensors_find(&f, "layers.0.moe.router.hash_table");
    ck_assert_ptr_nonnull(e);
    ck_assert_int_eq(e->dtype, MOE_I32);
    ck_assert_uint_eq(e->shape[0], 64);
    int32_t *fa = malloc(nt * sizeof *fa), *fb = malloc(nt * sizeof *fb);
    double la, lb;
    eval_outputs(&a, &data.test, &la, fa);
    eval_outputs(&b, &data.test, &lb, fb);
    ck_assert_int_ne(memcmp(fa, fb, nt * sizeof *fa), 0); // different tables route differently
    ck_assert_msg(moe_model_load(&b, &f, 0, &err) == 0, "%s", err.msg);
    eval_outputs(&b, &data.test, &lb, fb);
    ck_assert_int_eq(memcmp(fa, fb, nt * sizeof *fa), 0);
    ck_assert(la == lb);
    moe_safetensors_close(&f);
    remove(path);
    // balanced: per-expert counts over the training rows
    struct moe_layer *l = a.ops->moe_layer_at(&a, 0);
    double cnt[4] = { 0 };
    for (size_t t = 0; t < data.train.n; t++)
        cnt[l->table[moe_hash_key_row(data.train.x + t * data.train.n_in, data.train.n_in, 64)]] += 1;
    double mx = fmax(fmax(cnt[0], cnt[1]), fmax(cnt[2], cnt[3]));
    ck_assert_msg(mx / (data.train.n / 4.0) < 1.1, "balanced table max/mean %g", mx / (data.train.n / 4.0));
    free(fa);
    free(fb);
    moe_model_release(&a);
    moe_model_release(&b);
    moe_data_release(&data);
    moe_config_release(&cfg);
}
END_TEST

// A checkpoint whose hash table is missing or has the wrong dtype is refused with the tensor named.
START_TEST(test_state_errors)
{
    const char *json = "{\"model\":{\"type\":\"mlp-moe\",\"n_embd\":4,\"n_ff\":3,\"n_expert\":2,\"n_expert_used\":1},"
                       "\"moe\":{\"router\":\"hash\",\"hash_vocab\":8}}";
    struct moe_err err;
    struct moe_config cfg = load_cfg(json);
    struct moe_model m;
    ck_assert_int_eq(moe_model_create(&m, &cfg, "mse", MOE_TASK_REGRESSION, 2, 1, 4, &err), 0);
    moe_model_init_weights(&m, 1);
    const char *path = "test_moe_layer_state.safetensors";
    // parameters only: the table is missing
    ck_assert_int_eq(moe_safetensors_write_params(path, &m.params, NULL, 0, NULL, 0, &err), 0);
    struct moe_st_file f;
    ck_assert_int_eq(moe_safetensors_open(path, &f, &err), 0);
    ck_assert_int_eq(moe_model_load(&m, &f, 1, &err), MOE_ESHAPE);
    ck_assert_ptr_nonnull(strstr(err.msg, "layers.0.moe.router.hash_table"));
    moe_safetensors_close(&f);
    // the table as F32
    float tab[8] = { 0 };
    struct moe_st_ref ref = { .name = "layers.0.moe.router.hash_table", .dtype = MOE_F32, .ndim = 1, .shape = { 8 }, .data = tab };
    ck_assert_int_eq(moe_safetensors_write_params(path, &m.params, &ref, 1, NULL, 0, &err), 0);
    ck_assert_int_eq(moe_safetensors_open(path, &f, &err), 0);
    ck_assert_int_eq(moe_model_load(&m, &f, 1, &err), MOE_EFORMAT);
    ck_assert_ptr_nonnull(strstr(err.msg, "expected I32"));
    moe_safetensors_close(&f);
    remove(path);
    moe_model_release(&m);
    moe_config_release(&cfg);
}
END_TEST

// Every router trains: a few epochs on the synthetic classes reach high accuracy,
// and two runs with the same seed give identical weights.
static const char *const routers[] = { "softmax", "noisy-topk", "switch", "gshard", "hash", "expert-choice", "deepseek" };

START_TEST(test_routers_train)
{
    char json[1024];
    const char *r = routers[_i];
    int k = strcmp(r, "gshard") == 0 || strcmp(r, "deepseek") == 0 ? 2 : 1;
    snprintf(json, sizeof json,
             "{\"data\":{\"source\":\"synthetic\",\"synthetic\":{\"kind\":\"classes\",\"n_in\":4,\"n_regions\":4,\"n_train\":400,\"n_test\":200}},"
             "\"model\":{\"type\":\"mlp-moe\",\"n_embd\":16,\"n_ff\":16,\"n_expert\":4,\"n_expert_used\":%d},"
             "\"moe\":{\"router\":\"%s\",\"aux_loss\":\"%s\",\"bias_balance\":%s},"
             "\"optim\":{\"lr\":0.01,\"batch_size\":32},\"train\":{\"epochs\":6,\"eval_every\":6}}",
             k, r, strcmp(r, "noisy-topk") == 0 ? "shazeer" : "switch", strcmp(r, "softmax") == 0 ? "true" : "false");
    struct moe_err err;
    struct moe_config cfg = load_cfg(json);
    struct moe_data data;
    ck_assert_int_eq(moe_data_load(&data, &cfg, &err), 0);
    float *w[2];
    double acc = 0;
    for (int run = 0; run < 2; run++) {
        struct moe_model m;
        ck_assert_int_eq(moe_model_create(&m, &cfg, NULL, data.train.task, data.train.n_in, data.train.n_out, 400, &err), 0);
        moe_model_init_weights(&m, 1);
        ck_assert_int_eq(moe_model_fit(&m, &data.train, &err), 0);
        struct moe_train_result res;
        ck_assert_msg(moe_train(&m, &data, &cfg, NULL, NULL, &res, &err) == 0, "%s: %s", r, err.msg);
        acc = res.final_test.accuracy;
        ck_assert_msg(isfinite(res.final_test.router_entropy) || strcmp(r, "hash") == 0, "%s: no router entropy", r);
        w[run] = malloc(m.params.numel * sizeof(float));
        memcpy(w[run], m.params.data, m.params.numel * sizeof(float));
        if (run == 1)
            ck_assert_int_eq(memcmp(w[0], w[1], m.params.numel * sizeof(float)), 0);
        moe_model_release(&m);
    }
    ck_assert_msg(acc > 0.9, "%s: test accuracy %g after 6 epochs", r, acc);
    free(w[0]);
    free(w[1]);
    moe_data_release(&data);
    moe_config_release(&cfg);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("moe_layer");
    TCase *tc = tcase_create("layer");
    tcase_add_loop_test(tc, test_layer_grad, 0, sizeof cases / sizeof *cases);
    tcase_add_test(tc, test_layer_capacity);
    tcase_add_loop_test(tc, test_model_grad, 0, sizeof model_cfgs / sizeof *model_cfgs);
    tcase_add_test(tc, test_hash_checkpoint);
    tcase_add_test(tc, test_state_errors);
    tcase_add_loop_test(tc, test_routers_train, 0, sizeof routers / sizeof *routers);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    verbose = getenv("MOE_GRAD_VERBOSE") != NULL;
    if (moe_test_init_blas(1))
        return 1;
    int rc = moe_test_run(suite());
    if (verbose)
        fprintf(stderr, "worst relative gradient error: %.3g\n", grad_worst);
    return rc;
}
