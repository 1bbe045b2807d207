// test_cuda_model.c: the device mlp-moe training step (lib/cuda/model.c)
// against the CPU model: the same weights, the same batches, several steps of
// forward, backward, gradient norm and optimizer update on each side, then the
// summed loss, the layers' weighted auxiliary losses, the gradient norm of
// every step and, at the end, every weight, gradient and optimizer moment
// compared. Settings: classification (cross-entropy) and regression (squared
// error); LayerNorm and RMSNorm; Switch top-1 with capacity drops and jitter,
// GShard top-2 with its random second expert, noisy top-2, softmax top-2 with
// the z-loss; ReLU, GELU and SwiGLU experts; AdamW with clipping, SGD with
// momentum, GD; two and three blocks.
//
// On a GPU (exit 77 where none is usable): cuBLAS sums in its own order and
// the device's expf differs from SLEEF's in the last bits, so values agree
// within a tolerance: 1e-4 of each tensor's largest value after the steps
// (weights move by lr-sized steps from the same start: AdamW's normalised
// update amplifies last-bit differences of small gradients up to the
// learning rate itself, so the weights use 1e-3 of their largest value), the
// losses within 1e-4 relative. Routing may flip where two router scores tie
// within the device's rounding: such a flip shows as a large difference,
// and the inputs are drawn so that none is near.
// Built with -DMOE_TEST_CUDA_HOST, lib/cuda/model.c, lib/cuda/layer.c and
// tests/cuda_host.c (test_cuda_model_host), the device step runs on the host
// emulation, whose GEMM, exp and tanh are the CPU library's: there every
// value must be the CPU's, bit for bit (zeros of either sign equal).
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"
#include "cuda/model.h"
#include "cuda_test.h"
#include "io/config.h"
#include "model/model.h"
#include "train/train.h"

#ifdef MOE_TEST_CUDA_HOST
#define EXACT 1
#else
#define EXACT 0
#endif

static void fill(float *x, size_t n, uint32_t stream, float lo, float hi)
{
    struct moe_rng r = moe_rng_make(23, MOE_RNG_DATA, stream);
    moe_rng_fill_uniform(&r, x, n, lo, hi);
}

// The trainer's global gradient norm (train/trainer.c grad_norm, one process,
// nothing frozen): each tensor, or each routed expert of an expert tensor, in
// registry order.
static double cpu_grad_norm(const struct moe_params *p)
{
    double sq = 0.0;
    for (size_t i = 0; i < p->n; i++) {
        const struct moe_tensor *t = &p->t[i];
        size_t units = t->experts ? t->shape[0] : 1, slice = t->numel / units;
        for (size_t e = 0; e < units; e++)
            sq += moe_optim_sum_sq(p->grad + t->offset + e * slice, slice);
    }
    return sqrt(sq);
}

// max |a - b| over max |b|, as a note; exact: every value equal (==).
static void compare(const char *cname, const char *what, const float *a, const float *b, size_t n, double tol)
{
    double d = 0.0, m = 0.0;
    size_t diff = 0;
    for (size_t i = 0; i < n; i++) {
        diff += !(a[i] == b[i]);
        d = fmax(d, fabs((double)a[i] - b[i]));
        m = fmax(m, fabs((double)b[i]));
    }
    double r = m > 0.0 ? d / m : d;
    printf("# %s %s: %zu of %zu differ, max abs diff %.3g, max rel-to-max %.3g\n", cname, what, diff, n, d, r);
    if (EXACT)
        EXPECT(diff == 0, "%s %s: %zu of %zu values differ (max %.3g)", cname, what, diff, n, d);
    else
        EXPECT(isfinite(d) && r <= tol, "%s %s: max |diff| %.3g = %.3g of max |cpu| %.3g > %.3g", cname, what, d, r,
               m, tol);
}

static void same_double(const char *cname, const char *what, double a, double b, double tol)
{
    printf("# %s %s: device %.17g cpu %.17g\n", cname, what, a, b);
    if (EXACT)
        EXPECT(a == b || (isnan(a) && isnan(b)), "%s %s: %.17g vs %.17g", cname, what, a, b);
    else
        EXPECT(fabs(a - b) <= tol * fmax(fabs(b), 1e-12), "%s %s: %.17g vs %.17g", cname, what, a, b);
}

struct mcase {
    const char *name;
    int regression;
    const char *ovs[12];
};

static void run_case(const struct mcase *k)
{
    struct moe_err err;
    struct moe_config cfg;
    size_t n_ovs = 0;
    while (n_ovs < 12 && k->ovs[n_ovs])
        n_ovs++;
    if (moe_config_parse(&cfg, moe_run_schema(), moe_run_schema_len(), "{}", "test", k->ovs, n_ovs, &err))
        die(&err);
    const size_t I = 12, O = k->regression ? 2 : 5, T = 96, steps = 3;
    enum moe_task task = k->regression ? MOE_TASK_REGRESSION : MOE_TASK_CLASSIFICATION;
    struct moe_model_hp hp;
    struct moe_model m;
    if (moe_model_hp_parse(&hp, &cfg, &err) || moe_model_create(&m, &cfg, NULL, task, I, O, T, &err))
        die(&err);
    moe_model_init_weights(&m, 41);
    struct moe_optim_cfg oc;
    moe_optim_cfg_parse(&oc, &cfg);
    struct moe_optim o, od;
    if (moe_optim_init(&o, &oc, m.params.numel, &err) || moe_optim_init(&od, &oc, m.params.numel, &err))
        die(&err);
    struct moe_cuda_model *d;
    if (moe_cuda_model_create(&d, &m, &hp, &od, T, &err))
        die(&err);

    float *x = malloc(T * I * 4), *y = malloc(T * O * 4);
    int32_t *label = malloc(T * 4);
    struct moe_stats st;
    if (moe_stats_init(&st, 0, 0, &err))
        die(&err);
    for (size_t s = 0; s < steps; s++) {
        fill(x, T * I, 100 + (uint32_t)s, -2.0f, 2.0f);
        fill(y, T * O, 200 + (uint32_t)s, -1.0f, 1.0f);
        for (size_t t = 0; t < T; t++)
            label[t] = (int32_t)((t * 7 + s) % O);
        struct moe_batch b = { .n = T, .x = x, .y = k->regression ? y : NULL, .label = k->regression ? NULL : label,
                               .step = s };
        // the CPU: the trainer's step (train_micro, grad_norm, train_update) without its bookkeeping
        moe_params_zero_grad(&m.params);
        moe_stats_reset(&st);
        if (moe_model_run(&m, &b, 1, &st, &err))
            die(&err);
        double aux = 0.0;
        for (size_t l = 0; l < m.n_moe_layers; l++)
            aux += m.moe_layers[l]->loss;
        double gnorm = cpu_grad_norm(&m.params);
        o.lr = od.lr = oc.lr * (1.0 - 0.1 * (double)s); // a schedule: the caller sets the rate each step
        moe_optim_step_norm(&o, m.params.data, m.params.grad, gnorm);
        // the device
        double dloss, daux, dgnorm;
        if (moe_cuda_model_step(d, &b, &od, &dloss, &daux, &dgnorm, &err))
            die(&err);
        char what[64];
        snprintf(what, sizeof what, "step %zu loss", s);
        same_double(k->name, what, dloss, st.loss, 1e-4);
        snprintf(what, sizeof what, "step %zu aux", s);
        same_double(k->name, what, daux, aux, 1e-4);
        snprintf(what, sizeof what, "step %zu gradient norm", s);
        same_double(k->name, what, dgnorm, gnorm, 1e-4);
    }
    EXPECT(od.t == o.t, "%s: %llu steps on the device, %llu on the CPU", k->name, (unsigned long long)od.t,
           (unsigned long long)o.t);
    // the device's weights, gradients and moments to host copies
    const size_t n = m.params.numel;
    struct moe_model md = m; // the same registry with its own buffers
    md.params.data = malloc(n * 4), md.params.grad = malloc(n * 4);
    struct moe_optim oh = od;
    oh.m = od.m ? malloc(n * 4) : NULL, oh.v = od.v ? malloc(n * 4) : NULL;
    if (moe_cuda_model_download(d, &md, &oh, &err))
        die(&err);
    for (size_t i = 0; i < m.params.n; i++) {
        const struct moe_tensor *t = &m.params.t[i];
        char what[128];
        snprintf(what, sizeof what, "%s weights", t->name);
        compare(k->name, what, md.params.data + t->offset, m.params.data + t->offset, t->numel, 1e-3);
        snprintf(what, sizeof what, "%s gradient", t->name);
        compare(k->name, what, md.params.grad + t->offset, m.params.grad + t->offset, t->numel, 1e-4);
    }
    if (o.m)
        compare(k->name, "optimizer m", oh.m, o.m, n, 1e-3);
    if (o.v)
        compare(k->name, "optimizer v", oh.v, o.v, n, 1e-3);
    free(md.params.data), free(md.params.grad), free(oh.m), free(oh.v);
    moe_cuda_model_free(d);
    moe_stats_release(&st);
    moe_optim_release(&o), moe_optim_release(&od);
    moe_model_release(&m);
    moe_config_release(&cfg);
    free(x), free(y), free(label);
}

// What the device step refuses, with its one line: dense blocks, dropout.
static void test_refusals(void)
{
    static const char *const dense[] = { "model.type=mlp-moe", "model.n_layer=2", "model.moe_every=2" };
    static const char *const drop[] = { "model.type=mlp-moe", "model.dropout.residual=0.1" };
    const struct {
        const char *const *ovs;
        size_t n;
        const char *want;
    } c[] = { { dense, 3, "dense FFN blocks (model.moe_every > 1) are not on the device yet" },
              { drop, 2, "dropout (model.dropout.*) is not on the device yet" } };
    for (size_t i = 0; i < 2; i++) {
        struct moe_err err;
        struct moe_config cfg;
        struct moe_model_hp hp;
        struct moe_model m;
        struct moe_optim_cfg oc;
        struct moe_optim o;
        if (moe_config_parse(&cfg, moe_run_schema(), moe_run_schema_len(), "{}", "test", c[i].ovs, c[i].n, &err) ||
            moe_model_hp_parse(&hp, &cfg, &err) ||
            moe_model_create(&m, &cfg, NULL, MOE_TASK_CLASSIFICATION, 4, 3, 8, &err))
            die(&err);
        moe_optim_cfg_parse(&oc, &cfg);
        if (moe_optim_init(&o, &oc, m.params.numel, &err))
            die(&err);
        struct moe_cuda_model *d = NULL;
        int rc = moe_cuda_model_create(&d, &m, &hp, &o, 8, &err);
        printf("# refusal %zu: rc %d: %s\n", i, rc, rc ? err.msg : "");
        EXPECT(rc == MOE_EINVAL && d == NULL && strstr(err.msg, c[i].want), "refusal %zu: rc %d", i, rc);
        moe_optim_release(&o);
        moe_model_release(&m);
        moe_config_release(&cfg);
    }
}

int main(void)
{
    int rc = cuda_test_begin();
    if (rc)
        return rc;
    static const struct mcase cases[] = {
        { "switch-relu-layernorm-adamw", 0,
          { "model.type=mlp-moe", "moe.router=switch", "model.n_expert_used=1", "model.n_expert=4",
            "model.n_embd=16", "model.n_ff=32", "model.n_layer=2", "moe.capacity_factor=1.0", "moe.jitter=0.01",
            "optim.type=adamw", "optim.clip=0.05", NULL } },
        { "gshard-swiglu-rmsnorm-sgd-regression", 1,
          { "model.type=mlp-moe", "moe.router=gshard", "model.n_expert=4", "model.n_embd=16", "model.n_ff=24",
            "model.n_layer=2", "model.norm=rmsnorm", "model.ffn_activation=swiglu", "optim.type=sgd",
            "optim.momentum=0.9", "optim.lr=0.05", NULL } },
        { "softmax-gelu-zloss-gd", 0,
          { "model.type=mlp-moe", "moe.router=softmax", "model.n_expert=6", "model.n_embd=16", "model.n_ff=16",
            "model.n_layer=3", "model.ffn_activation=gelu", "moe.z_weight=0.001", "optim.type=gd", "optim.lr=0.1",
            NULL } },
        { "noisy-relu-adamw", 0,
          { "model.type=mlp-moe", "moe.router=noisy-topk", "model.n_expert=4", "model.n_embd=8", "model.n_ff=16",
            "model.n_layer=2", "moe.aux_loss=switch", "optim.type=adamw", "optim.lr=0.003", NULL } },
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
        run_case(&cases[i]);
    test_refusals();
    printf("%s: %d failures\n", failures ? "FAIL" : "ok", failures);
    return failures ? 1 : 0;
}
