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
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/rng.h"
#include "cuda/model.h"
#include "cuda_test.h"
#include "io/config.h"
#include "io/safetensors.h"
#include "model/estimate.h"
#include "model/model.h"
#include "train/train.h"
#include "train/tune.h"

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

// max |a - b| over max |b|, as a note; exact: every value equal (==).
static void compare(const char *cname, const char *what, const float *a, const float *b, size_t n, double tol)
{
    double d = 0.0, m = 0.0;
    size_t diff = 0, nan = 0; // nan: values NaN on one side only (fmax below would drop them)
    for (size_t i = 0; i < n; i++) {
        diff += !(a[i] == b[i]);
        nan += isnan(a[i]) != isnan(b[i]);
        d = fmax(d, fabs((double)a[i] - b[i]));
        m = fmax(m, fabs((double)b[i]));
    }
    double r = m > 0.0 ? d / m : d;
    printf("# %s %s: %zu of %zu differ, max abs diff %.3g, max rel-to-max %.3g\n", cname, what, diff, n, d, r);
    if (EXACT)
        EXPECT(diff == 0, "%s %s: %zu of %zu values differ (max %.3g)", cname, what, diff, n, d);
    else
        EXPECT(nan == 0 && isfinite(d) && r <= tol, "%s %s: %zu NaN on one side only, max |diff| %.3g = %.3g of max "
               "|cpu| %.3g > %.3g", cname, what, nan, d, r, m, tol);
}

static void same_double(const char *cname, const char *what, double a, double b, double tol)
{
    printf("# %s %s: device %.17g cpu %.17g\n", cname, what, a, b);
    if (EXACT)
        EXPECT(a == b || (isnan(a) && isnan(b)), "%s %s: %.17g vs %.17g", cname, what, a, b);
    else
        // NaN on both sides is agreement: a figure the run does not define (the
        // aux loss of a model without routed layers, say), NAN on both
        EXPECT((isnan(a) && isnan(b)) || fabs(a - b) <= tol * fmax(fabs(b), 1e-12), "%s %s: %.17g vs %.17g", cname,
               what, a, b);
}

// After the steps: the device's weights, gradients and moments (host copies
// through a model sharing m's registry with its own buffers) against the
// CPU's m and o; a language embedding's gradient must not be all zeros (a
// comparison of zeros would prove nothing).
static void compare_final(const char *name, const struct moe_cuda_model *d, const struct moe_model *m,
                          const struct moe_optim *o, const struct moe_optim *od)
{
    struct moe_err err;
    const size_t n = m->params.numel;
    struct moe_model md = *m;
    md.params.data = malloc(n * 4), md.params.grad = malloc(n * 4);
    // its sparse layers: copies whose state (bias balancing's offsets) has buffers of its own
    struct moe_layer *lc = calloc(m->n_moe_layers + 1, sizeof *lc), **lp = calloc(m->n_moe_layers + 1, sizeof *lp);
    for (size_t l = 0; l < m->n_moe_layers; l++) {
        lc[l] = *m->moe_layers[l];
        lc[l].bias = lc[l].bias ? calloc(lc[l].c.router.E, 4) : NULL;
        lp[l] = &lc[l];
    }
    md.moe_layers = lp;
    struct moe_optim oh = *od;
    oh.m = od->m ? malloc(n * 4) : NULL, oh.v = od->v ? malloc(n * 4) : NULL;
    if (moe_cuda_model_download(d, &md, &oh, &err))
        die(&err);
    for (size_t i = 0; i < m->params.n; i++) {
        const struct moe_tensor *t = &m->params.t[i];
        char what[128];
        snprintf(what, sizeof what, "%s weights", t->name);
        compare(name, what, md.params.data + t->offset, m->params.data + t->offset, t->numel, 1e-3);
        snprintf(what, sizeof what, "%s gradient", t->name);
        compare(name, what, md.params.grad + t->offset, m->params.grad + t->offset, t->numel, 1e-4);
        if (strstr(t->name, "lang_emb")) {
            double mx = 0.0;
            for (size_t j = 0; j < t->numel; j++)
                mx = fmax(mx, fabs(md.params.grad[t->offset + j]));
            EXPECT(mx > 0.0, "%s %s: the device's gradient is zero", name, t->name);
        }
    }
    for (size_t l = 0; l < m->n_moe_layers; l++) { // bias balancing's offsets: state, compared exactly
        const struct moe_layer *ml = m->moe_layers[l];
        if (!ml->bias)
            continue;
        const float *b = md.moe_layers[l]->bias;
        size_t diff = 0, moved = 0;
        for (size_t e = 0; e < ml->c.router.E; e++)
            diff += b[e] != ml->bias[e], moved += ml->bias[e] != 0.0f;
        printf("# %s layer %zu bias: %zu of %zu offsets differ; %zu moved from 0\n", name, l, diff,
               ml->c.router.E, moved);
        EXPECT(diff == 0 && moved > 0, "%s layer %zu: bias offsets (%zu differ, %zu moved)", name, l, diff, moved);
    }
    if (o->m)
        compare(name, "optimizer m", oh.m, o->m, n, 1e-3);
    if (o->v)
        compare(name, "optimizer v", oh.v, o->v, n, 1e-3);
    for (size_t l = 0; l < m->n_moe_layers; l++)
        free(lc[l].bias);
    free(lc), free(lp);
    free(md.params.data), free(md.params.grad), free(oh.m), free(oh.v);
}

// A CPU model and its device twin from the same weights, each with its
// optimizer: the config (overrides ovs, NULL-terminated, at most max, over
// the defaults), a model for task with n_in inputs and n_out outputs for
// batches of rows, weights from seed.
struct twin {
    struct moe_config cfg;
    struct moe_model_hp hp;
    struct moe_model m;
    struct moe_optim_cfg oc;
    struct moe_optim o, od;
    struct moe_cuda_model *d;
    enum moe_task task;
    size_t n_in, n_out, rows;
    size_t live0; // device bytes held before the device model was made
};

static void twin_open(struct twin *w, const char *const *ovs, size_t max, enum moe_task task, size_t n_in,
                      size_t n_out, size_t rows, uint64_t seed)
{
    struct moe_err err;
    size_t n_ovs = 0;
    while (n_ovs < max && ovs[n_ovs])
        n_ovs++;
    if (moe_config_parse(&w->cfg, moe_run_schema(), moe_run_schema_len(), "{}", "test", ovs, n_ovs, &err) ||
        moe_model_hp_parse(&w->hp, &w->cfg, &err) ||
        moe_model_create(&w->m, &w->cfg, NULL, task, n_in, n_out, rows, &err))
        die(&err);
    moe_model_init_weights(&w->m, seed);
    moe_optim_cfg_parse(&w->oc, &w->cfg);
    w->task = task, w->n_in = n_in, w->n_out = n_out, w->rows = rows;
    moe_cuda_mem_reset_peak();
    moe_cuda_mem_usage(&w->live0, NULL);
    if (moe_optim_init(&w->o, &w->oc, w->m.params.numel, &err) ||
        moe_optim_init(&w->od, &w->oc, w->m.params.numel, &err) ||
        moe_cuda_model_create(&w->d, &w->m, &w->hp, &w->od, rows, &err))
        die(&err);
}

// The device memory the twin's model took at its most, from its creation to
// now (its steps: tests/cuda_host.c and lib/cuda/ops.cu count every
// moe_cuda_malloc), against what `moe train --dry-run --device cuda` promises
// for the same config (model/estimate.h moe_estimate_device_bytes, less the
// reserve for the CUDA context): the promise must hold. The ratio is printed
// as a note, to see how close the estimate is.
static size_t twin_memory(const char *name, const struct twin *w)
{
    struct moe_err err;
    struct moe_model_estimate est;
    if (moe_model_estimate(&w->cfg, NULL, w->task, w->n_in, w->n_out, 0, 0, w->rows, 1, &est, &err))
        die(&err);
    size_t peak;
    moe_cuda_mem_usage(NULL, &peak);
    const size_t used = peak - w->live0, promised = moe_estimate_device_bytes(&est) - MOE_ESTIMATE_CUDA_RESERVE_BYTES;
    printf("# %s device memory: %zu bytes at most, %zu estimated (%.3f of it)\n", name, used, promised,
           (double)used / (double)promised);
    EXPECT(used <= promised, "%s: the device model took %zu bytes, the estimate says %zu", name, used, promised);
    return used;
}

static void twin_close(struct twin *w)
{
    moe_cuda_model_free(w->d);
    moe_optim_release(&w->o), moe_optim_release(&w->od);
    moe_model_release(&w->m);
    moe_config_release(&w->cfg);
}

// Step s on the CPU side: the trainer's step (train_micro, grad_norm,
// train_update) without its bookkeeping, statistics into st; the layers'
// weighted auxiliary losses and the gradient norm out. Both sides' rate is
// set here (a schedule: the caller sets it each step).
static void twin_cpu_step(struct twin *w, const struct moe_batch *b, size_t s, struct moe_stats *st, double *aux,
                          double *gnorm)
{
    struct moe_err err;
    moe_params_zero_grad(&w->m.params);
    if (moe_model_run(&w->m, b, 1, st, &err))
        die(&err);
    *aux = 0.0;
    for (size_t l = 0; l < w->m.n_moe_layers; l++)
        *aux += w->m.moe_layers[l]->loss;
    *gnorm = moe_params_grad_norm_units(&w->m.params);
    w->o.lr = w->od.lr = w->oc.lr * (1.0 - 0.1 * (double)s);
    moe_optim_step_norm(&w->o, w->m.params.data, w->m.params.grad, *gnorm);
}

static void tf_stats_same(const char *cname, const char *what, const struct moe_stats *a, const struct moe_stats *b)
{
    char w[96];
    snprintf(w, sizeof w, "%s loss", what);
    same_double(cname, w, a->loss, b->loss, 1e-4);
    EXPECT(a->n == b->n && a->bytes == b->bytes, "%s %s: %zu tokens, %g bytes; cpu %zu, %g", cname, what, a->n,
           a->bytes, b->n, b->bytes);
    if (EXACT)
        EXPECT(a->correct == b->correct, "%s %s: %zu correct, cpu %zu", cname, what, a->correct, b->correct);
    for (size_t g = 0; g < b->n_lang; g++) {
        snprintf(w, sizeof w, "%s language %zu loss", what, g);
        same_double(cname, w, a->lang_loss[g], b->lang_loss[g], 1e-4);
        EXPECT(a->lang_tokens[g] == b->lang_tokens[g], "%s %s: language %zu tokens", cname, what, g);
    }
}

// A model for evaluation passes only (moe_cuda_model_create without an
// optimizer: a distillation teacher's, route-stats') of w's CPU weights: its
// evaluation of b gives the CPU's statistics st, a training pass of it is
// refused, and it holds less device memory than the trainable model took
// (used) by more than the gradients and moments it lacks: no gradient buffers,
// not even for a moment while its layers are made, and none of the backward's.
#ifdef MOE_TEST_CUDA_HOST
// The backward's buffers by their names in the create functions' tables
// (lib/cuda/layer.c, model.c, transformer.c), counted as the emulation
// allocates them.
static size_t n_backward_bufs;
static void count_backward(size_t bytes, const char *what)
{
    static const char *const names[] = { "dy", "dh", "dn", "dqkv", "dao" };
    (void)bytes;
    int hit = strstr(what, "gradient") || strstr(what, "backward");
    for (size_t i = 0; i < sizeof names / sizeof *names; i++)
        hit |= strcmp(what, names[i]) == 0;
    if (hit)
        printf("# a backward buffer: %s\n", what);
    n_backward_bufs += hit;
}
#endif

static void eval_only(const char *name, const struct twin *w, const struct moe_batch *b, const struct moe_stats *st,
                      size_t used)
{
    struct moe_err err;
    struct moe_cuda_model *e;
    struct moe_stats se;
    size_t live0, peak;
    moe_cuda_mem_reset_peak();
    moe_cuda_mem_usage(&live0, NULL);
#ifdef MOE_TEST_CUDA_HOST
    n_backward_bufs = 0;
    cuda_host_on_malloc = count_backward;
#endif
    if (moe_cuda_model_create(&e, &w->m, &w->hp, NULL, w->rows, &err) ||
        moe_stats_init(&se, 0, 0, &err) || (w->m.task == MOE_TASK_LM && moe_stats_init_lang(&se, w->n_in, &err)) ||
        moe_cuda_model_eval(e, b, &se, &err))
        die(&err);
    moe_cuda_mem_usage(NULL, &peak);
#ifdef MOE_TEST_CUDA_HOST
    cuda_host_on_malloc = NULL;
    EXPECT(n_backward_bufs == 0, "%s: the evaluation-only model allocated %zu gradient or backward buffers", name,
           n_backward_bufs);
#endif
    tf_stats_same(name, "evaluation-only model", &se, st);
    const size_t lacks = (w->m.params.numel + (w->od.m ? w->od.numel : 0) + (w->od.v ? w->od.numel : 0)) * 4;
    printf("# %s evaluation-only model: %zu bytes at most, the trainable one %zu (%zu of gradients and moments)\n",
           name, peak - live0, used, lacks);
    EXPECT(peak - live0 + lacks < used, "%s: the evaluation-only model took %zu bytes, the trainable one %zu", name,
           peak - live0, used);
    double loss, aux, gnorm;
    EXPECT(moe_cuda_model_grad(e, b, &loss, &aux, &gnorm, &err) == MOE_EINVAL && strstr(err.msg, "evaluation"),
           "%s: a training pass of the evaluation-only model: %s", name, err.msg);
    moe_stats_release(&se);
    moe_cuda_model_free(e);
}

#ifdef MOE_TEST_CUDA_HOST
// A training step's copies between host and device (counted by the
// emulation, tests/cuda_host.c): in, exactly the batch (in_bytes); out, the
// bytes returned (the caller requires them the same for a batch of half the
// rows: metrics and the scalars the step's sums end in, the experts' row
// offsets the grouped GEMMs' shapes need on the host; never weights,
// gradients, moments or activations, which grow with the model or the batch).
static size_t step_copies(const char *name, size_t s, const struct cuda_host_copies *c0, size_t in_bytes)
{
    const struct cuda_host_copies *c = &cuda_host_copies;
    size_t in = c->in_bytes - c0->in_bytes, out = c->out_bytes - c0->out_bytes;
    printf("# %s step %zu copies: %zu bytes in (%zu calls; the batch: %zu), %zu bytes out (%zu calls)\n", name, s, in,
           c->in_calls - c0->in_calls, in_bytes, out, c->out_calls - c0->out_calls);
    EXPECT(in == in_bytes, "%s step %zu: %zu bytes copied to the device, the batch is %zu", name, s, in, in_bytes);
    return out;
}
#endif

struct mcase {
    const char *name;
    int regression;
    const char *ovs[12];
};

static void run_case(const struct mcase *k)
{
    struct moe_err err;
    const size_t I = 12, O = k->regression ? 2 : 5, T = 96, steps = 3;
    enum moe_task task = k->regression ? MOE_TASK_REGRESSION : MOE_TASK_CLASSIFICATION;
    struct twin w;
    twin_open(&w, k->ovs, 12, task, I, O, T, 41);

    float *x = malloc(T * I * 4), *y = malloc(T * O * 4);
    int32_t *label = malloc(T * 4);
    struct moe_stats st;
    if (moe_stats_init(&st, 0, 0, &err))
        die(&err);
#ifdef MOE_TEST_CUDA_HOST
    size_t out_bytes[3] = { 0 };
#endif
    for (size_t s = 0; s < steps; s++) {
        fill(x, T * I, 100 + (uint32_t)s, -2.0f, 2.0f);
        fill(y, T * O, 200 + (uint32_t)s, -1.0f, 1.0f);
        for (size_t t = 0; t < T; t++)
            label[t] = (int32_t)((t * 7 + s) % O);
        const size_t n = s == 1 ? T / 2 : T; // step 1: a short batch (what a step copies must not grow with it)
        struct moe_batch b = { .n = n, .x = x, .y = k->regression ? y : NULL, .label = k->regression ? NULL : label,
                               .step = s };
        double aux, gnorm;
        moe_stats_reset(&st);
        twin_cpu_step(&w, &b, s, &st, &aux, &gnorm);
        // the device
        double dloss, daux, dgnorm;
#ifdef MOE_TEST_CUDA_HOST
        const struct cuda_host_copies c0 = cuda_host_copies;
#endif
        if (moe_cuda_model_step(w.d, &b, &w.od, &dloss, &daux, &dgnorm, &err))
            die(&err);
#ifdef MOE_TEST_CUDA_HOST
        size_t hashed = 0; // hash routing: each token's expert, looked up on the host from its key, per layer
        for (size_t l = 0; l < w.m.n_moe_layers; l++)
            hashed += w.m.moe_layers[l]->c.router.type == MOE_ROUTER_HASH;
        out_bytes[s] = step_copies(k->name, s, &c0, n * I * 4 + (k->regression ? n * O * 4 : n * 4) + hashed * n * 4);
#endif
        char what[64];
        snprintf(what, sizeof what, "step %zu loss", s);
        same_double(k->name, what, dloss, st.loss, 1e-4);
        snprintf(what, sizeof what, "step %zu aux", s);
        same_double(k->name, what, daux, aux, 1e-4);
        snprintf(what, sizeof what, "step %zu gradient norm", s);
        same_double(k->name, what, dgnorm, gnorm, 1e-4);
    }
#ifdef MOE_TEST_CUDA_HOST
    EXPECT(out_bytes[0] == out_bytes[1] && out_bytes[1] == out_bytes[2],
           "%s: the bytes a step copies to the host change with its rows: %zu (%zu rows), %zu (%zu), %zu (%zu)", k->name,
           out_bytes[0], T, out_bytes[1], T / 2, out_bytes[2], T);
#endif
    EXPECT(w.od.t == w.o.t, "%s: %llu steps on the device, %llu on the CPU", k->name, (unsigned long long)w.od.t,
           (unsigned long long)w.o.t);
    const size_t used = twin_memory(k->name, &w);
    compare_final(k->name, w.d, &w.m, &w.o, &w.od);
    struct moe_batch b = { .n = T, .x = x, .y = k->regression ? y : NULL, .label = k->regression ? NULL : label,
                           .step = steps };
    moe_stats_reset(&st);
    if (moe_model_run(&w.m, &b, 0, &st, &err))
        die(&err);
    eval_only(k->name, &w, &b, &st, used);
    moe_stats_release(&st);
    twin_close(&w);
    free(x), free(y), free(label);
}

// The Transformer LM's device step (lib/cuda/transformer.c) against the CPU
// model, as run_case: windows of random tokens in G = 2 languages, several
// steps, each step's statistics (loss, accuracy, per-language sums), the
// auxiliary losses and the gradient norm; then an evaluation pass of the
// trained weights; at the end every weight, gradient and moment.
struct tcase {
    const char *name;
    const char *ovs[16];
};

static void run_tf_case(const struct tcase *k)
{
    struct moe_err err;
    const size_t V = 11, G = 2, B = 8, steps = 3;
    struct twin w;
    twin_open(&w, k->ovs, 16, MOE_TASK_LM, G, V, B, 43);
    const size_t C = w.hp.n_ctx;
    int32_t *tok = malloc(B * (C + 1) * 4), *lang = malloc(B * 4);
    uint8_t *cls = malloc(B * (C + 1));
    uint64_t *bytes = malloc(B * 8);
    float *u = malloc(B * (C + 1) * 4);
    struct moe_stats st, sd;
    if (moe_stats_init(&st, 0, 0, &err) || moe_stats_init_lang(&st, G, &err) || moe_stats_init(&sd, 0, 0, &err) ||
        moe_stats_init_lang(&sd, G, &err))
        die(&err);
#ifdef MOE_TEST_CUDA_HOST
    size_t out_bytes[3] = { 0 };
#endif
    for (size_t s = 0; s <= steps; s++) { // the last round: an evaluation pass
        fill(u, B * (C + 1), 300 + (uint32_t)s, 0.0f, (float)V);
        for (size_t i = 0; i < B * (C + 1); i++) {
            tok[i] = (int32_t)u[i] % (int32_t)V;
            cls[i] = (uint8_t)(tok[i] % 3);
        }
        for (size_t w = 0; w < B; w++) {
            lang[w] = (int32_t)((w + s) % G);
            bytes[w] = C + w % 3;
        }
        struct moe_batch b = { .n = B, .tok = tok, .cls = cls, .lang = lang, .bytes = bytes, .step = s };
        char what[64];
        moe_stats_reset(&st), moe_stats_reset(&sd);
        if (s == steps) {
            if (moe_model_run(&w.m, &b, 0, &st, &err) || moe_cuda_model_eval(w.d, &b, &sd, &err))
                die(&err);
            tf_stats_same(k->name, "evaluation", &sd, &st);
            eval_only(k->name, &w, &b, &st, twin_memory(k->name, &w)); // (every step taken: the peak is in)
            // moe route-stats' device paths: another evaluation capacity factor on both sides, and the
            // device's routing written into the CPU layers' buffers (what --trace reads) against the CPU's own
            w.m.ops->set_eval_capacity(&w.m, 0.5);
            moe_cuda_model_set_eval_capacity(w.d, 0.5);
            moe_stats_reset(&st), moe_stats_reset(&sd);
            if (moe_model_run(&w.m, &b, 0, &st, &err) || moe_cuda_model_eval(w.d, &b, &sd, &err))
                die(&err);
            tf_stats_same(k->name, "evaluation at capacity factor 0.5", &sd, &st);
            size_t n_diff = 0, n_all = 0, n_drop = 0;
            for (size_t l = 0; l < w.m.n_moe_layers; l++) {
                struct moe_layer *ml = w.m.moe_layers[l];
                size_t n = ml->route.T * ml->S;
                int32_t *sel = malloc(n * 4), *row = malloc(n * 4);
                float *gate = malloc(n * 4);
                memcpy(sel, ml->route.sel, n * 4), memcpy(row, ml->plan.slot_row, n * 4);
                memcpy(gate, ml->route.gate, n * 4);
                memset(ml->route.sel, 0x7f, n * 4), memset(ml->plan.slot_row, 0x7f, n * 4);
                if (moe_cuda_model_route_to(w.d, &w.m, &err))
                    die(&err);
                for (size_t i = 0; i < n; i++) {
                    n_diff += sel[i] != ml->route.sel[i] || (row[i] < 0) != (ml->plan.slot_row[i] < 0) ||
                              (EXACT && gate[i] != ml->route.gate[i]);
                    n_drop += sel[i] >= 0 && row[i] < 0;
                }
                n_all += n;
                free(sel), free(row), free(gate);
            }
            printf("# %s route-stats trace: %zu of %zu slots differ (%zu dropped at capacity 0.5)\n", k->name, n_diff,
                   n_all, n_drop);
            EXPECT(n_diff == 0 && n_all > 0, "%s: the device's routing in the host layers: %zu of %zu slots differ",
                   k->name, n_diff, n_all);
            break;
        }
        double aux, gnorm;
        twin_cpu_step(&w, &b, s, &st, &aux, &gnorm);
        double dloss, daux, dgnorm;
#ifdef MOE_TEST_CUDA_HOST
        const struct cuda_host_copies c0 = cuda_host_copies;
        if (moe_cuda_model_grad(w.d, &b, &dloss, &daux, &dgnorm, &err) ||
            moe_cuda_model_update(w.d, &w.od, dgnorm, &err))
            die(&err);
        // in: the windows' tokens and next-token targets (B (C + 1) + B C int32), with a language-aware
        // router the windows' languages (B), with hash routing each token's expert per hash layer (B C)
        size_t hashed = 0, lang = 0;
        for (size_t l = 0; l < w.m.n_moe_layers; l++) {
            hashed += w.m.moe_layers[l]->c.router.type == MOE_ROUTER_HASH;
            lang |= (size_t)(w.m.moe_layers[l]->c.lang_router != 0);
        }
        out_bytes[s] = step_copies(k->name, s, &c0, (B * (C + 1) + B * C + lang * B + hashed * B * C) * 4);
        if (moe_cuda_model_stats(w.d, &b, &sd, &err)) // the step's statistics: per-row losses and predictions out
            die(&err);
#else
        if (moe_cuda_model_grad(w.d, &b, &dloss, &daux, &dgnorm, &err) || moe_cuda_model_stats(w.d, &b, &sd, &err) ||
            moe_cuda_model_update(w.d, &w.od, dgnorm, &err))
            die(&err);
#endif
        snprintf(what, sizeof what, "step %zu", s);
        tf_stats_same(k->name, what, &sd, &st);
        // the loss pass's own sum (fixed blocks of the rows' double values; the
        // statistics add their float roundings per window): within rounding
        double tol = EXACT ? 1e-6 : 1e-4;
        EXPECT(fabs(dloss - st.loss) <= tol * st.loss, "%s step %zu: the pass's summed loss %.17g, cpu %.17g",
               k->name, s, dloss, st.loss);
        snprintf(what, sizeof what, "step %zu aux", s);
        same_double(k->name, what, daux, aux, 1e-4);
        snprintf(what, sizeof what, "step %zu gradient norm", s);
        same_double(k->name, what, dgnorm, gnorm, 1e-4);
    }
#ifdef MOE_TEST_CUDA_HOST
    EXPECT(out_bytes[0] == out_bytes[1] && out_bytes[1] == out_bytes[2],
           "%s: the bytes a step copies to the host change from step to step: %zu, %zu, %zu", k->name, out_bytes[0],
           out_bytes[1], out_bytes[2]);
#endif
    compare_final(k->name, w.d, &w.m, &w.o, &w.od);
    moe_stats_release(&st), moe_stats_release(&sd);
    twin_close(&w);
    free(tok), free(lang), free(cls), free(bytes), free(u);
}

// What the device step refuses, with its one line: hash routing, shared experts.
// What the device model refuses: other model types, with one line naming them.
static void test_refusals(void)
{
    static const char *const mix[] = { "model.type=mixture" };
    static const char *const mlp[] = { "model.type=mlp" };
    const struct {
        const char *const *ovs;
        size_t n;
    } c[] = { { mix, 1 }, { mlp, 1 } };
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
        EXPECT(rc == MOE_EINVAL && d == NULL && strstr(err.msg, "mlp-moe and transformer models only"),
               "refusal %zu: rc %d", i, rc);
        moe_optim_release(&o);
        moe_model_release(&m);
        moe_config_release(&cfg);
    }
}

// ---- the trainer with its steps on the device (train.h hooks->device) ----
// A run's metrics rows (every field the CSV writes that a step can change, as
// 17 digits) and its final weights and moments.
struct outcome {
    char *rows;
    size_t len, cap, ckpt_len;
    float *w, *m, *v;
    size_t numel;
    int64_t selected; // train.select = best_valid_loss: the epoch the run ended with
    int rc;
    struct moe_err err;
};

// A teacher for distillation: the run's config with these overrides, its
// weights drawn from seed 11 (an untrained teacher's logits differ from the
// student's as much as a trained one's), the objective's weight and
// temperature, MoEBERT's form (sym).
struct kd_spec {
    const char *const *ovs;
    size_t n;
    float alpha, tau;
    int sym;
};

// Fine-tuning only part of the model, as `moe train --trainable/--freeze`
// and `moe lora` set it up (cmd/train_tune.c): globs of train.trainable and
// train.freeze (expert ranges allowed); with rank > 0, LoRA adapters of that
// rank on the targets, the base frozen but for the routers.
struct tune_spec {
    const char *const *trainable, *const *freeze, *const *targets;
    size_t n_trainable, n_freeze, n_targets, rank;
    double alpha;
    int shared;
};

struct tctx {
    struct outcome *o;
    const struct kd_spec *kd;     // distil from this teacher (NULL: no distillation)
    const struct tune_spec *tune; // train part of the model (NULL: all of it)
    struct moe_model *m;
    const char *path;
    uint64_t stop_at_step; // raise stop at this step's checkpoint (0: never)
    volatile sig_atomic_t stop;
};

static int on_row(void *p, const struct moe_eval_row *r, struct moe_err *err)
{
    (void)err;
    struct outcome *o = ((struct tctx *)p)->o;
    char line[1024];
    int n = snprintf(line, sizeof line, "%llu,%llu,%s,%zu,%.17g,%.17g,%.17g,%.17g,%.17g,%.17g,%.17g,%.17g,%.17g,%.17g,"
                     "%.17g,%.17g,%.17g\n",
                     (unsigned long long)r->step, (unsigned long long)r->epoch, r->split, r->n, r->loss, r->mse,
                     r->accuracy, r->aux_loss, r->z_loss, r->load_cv, r->importance_cv, r->load_max_mean,
                     r->dropped_fraction, r->router_entropy, r->expert_label_mi, r->gate_entropy, r->active_experts);
    if (o->len + (size_t)n + 1 > o->cap) {
        o->cap = 2 * (o->len + (size_t)n + 1);
        if (!(o->rows = realloc(o->rows, o->cap)))
            abort();
    }
    memcpy(o->rows + o->len, line, (size_t)n + 1);
    o->len += (size_t)n;
    return 0;
}

static int on_checkpoint(void *p, const struct moe_train_ckpt *ck, struct moe_err *err)
{
    struct tctx *c = p;
    c->o->ckpt_len = c->o->len;
    if (c->stop_at_step && ck->pos.steps == c->stop_at_step)
        c->stop = 1;
    return c->path ? moe_train_checkpoint_write(c->path, c->m, ck, NULL, 0, NULL, 0, err) : 0;
}

static float *copy_of(const float *x, size_t n)
{
    if (!x)
        return NULL;
    float *y = malloc(n * sizeof *y);
    if (!y)
        abort();
    memcpy(y, x, n * sizeof *y);
    return y;
}

// Train json + ovs on the device (device) or the CPU; resume from c->path
// when resume is set; checkpoints to c->path (when set) after every step.
// moe eval --device cuda's evaluation (moe_evaluate_on with an evaluation-only
// device model) of m's weights on split d against the CPU's (moe_evaluate),
// in chunks of 37 rows (a part chunk at the end): every figure of the row.
static void eval_on_device(const char *what, struct moe_model *m, const struct moe_model_hp *hp,
                           const struct moe_dataset *d)
{
    struct moe_err err;
    struct moe_stats sc, sd;
    struct moe_eval_row rc, rd;
    struct moe_cuda_model *dev;
    const size_t chunk = 37;
    if (moe_train_stats_init(&sc, m, d, &err) || moe_train_stats_init(&sd, m, d, &err) ||
        moe_cuda_model_create(&dev, m, hp, NULL, chunk, &err) ||
        moe_evaluate(m, d, "test", chunk, 0.01, &sc, &rc, &err) ||
        moe_evaluate_on(m, dev, d, "test", chunk, 0.01, &sd, &rd, &err))
        die(&err);
    EXPECT(rc.n == rd.n && rc.n > chunk, "%s: %zu rows evaluated on the device, %zu on the CPU", what, rd.n, rc.n);
    // the first four are smooth in the weights; the rest count argmaxes and routing decisions, which a GPU's
    // rounding may flip at a near tie: compared on the emulation only
    const double cpu[] = { rc.loss, rc.aux_loss, rc.z_loss, rc.router_entropy, rc.accuracy, rc.load_cv, rc.dropped_fraction },
                 gpu[] = { rd.loss, rd.aux_loss, rd.z_loss, rd.router_entropy, rd.accuracy, rd.load_cv, rd.dropped_fraction };
    static const char *const names[] = { "loss", "aux", "z", "router entropy", "accuracy", "load cv", "dropped" };
    for (size_t i = 0; i < (EXACT ? sizeof cpu / sizeof *cpu : 4); i++) {
        char w[96];
        snprintf(w, sizeof w, "evaluation on the device: %s", names[i]);
        same_double(what, w, gpu[i], cpu[i], 1e-4);
    }
    moe_cuda_model_free(dev);
    moe_stats_release(&sc), moe_stats_release(&sd);
}

static void train_run(const char *json, const char *const *ovs, size_t n_ovs, int device, struct tctx *c,
                      int resume)
{
    struct moe_err err;
    struct moe_config cfg;
    if (moe_config_parse(&cfg, moe_run_schema(), moe_run_schema_len(), json, "test", ovs, n_ovs, &err))
        die(&err);
    struct moe_data data;
    struct moe_model_hp hp;
    struct moe_model m;
    if (moe_data_load(&data, &cfg, &err) || moe_model_hp_parse(&hp, &cfg, &err))
        die(&err);
    size_t max_batch = data.train.n > data.test.n ? data.train.n : data.test.n;
    if (moe_model_create(&m, &cfg, NULL, data.train.task, data.train.n_in, data.train.n_out, max_batch, &err))
        die(&err);
    moe_model_init_weights(&m, (uint64_t)moe_cfg_int(&cfg, "train.seed"));
    struct moe_st_file f = { 0 };
    if (resume && (moe_safetensors_open(c->path, &f, &err) || moe_model_load(&m, &f, 1, &err)))
        die(&err);
    c->m = &m;
    struct moe_train_device dv = { .id = 0, .hp = &hp };
    struct moe_tune_sel sel = { 0 };
    struct moe_lora lora = { 0 };
    const struct tune_spec *tu = c->tune;
    if (tu && !tu->rank &&
        moe_tune_select_ex(&sel, &m.params, (const char **)tu->trainable, tu->n_trainable, (const char **)tu->freeze,
                           tu->n_freeze, "train.trainable", "train.freeze", &err))
        die(&err);
    if (tu && tu->rank) {
        static const char *const router_globs[] = { "*.router.*", "*.lang_emb" };
        if (moe_tune_sel_init(&sel, &m.params, 1, &err) ||
            moe_tune_sel_mark(&sel, &m.params, router_globs, 2, 0, NULL, &err) ||
            moe_tune_sel_mark(&sel, &m.params, tu->trainable, tu->n_trainable, 0, "train.trainable", &err) ||
            moe_lora_create(&lora, &m.params, sel.frozen, tu->targets, tu->n_targets, tu->rank, tu->alpha, tu->shared,
                            &err))
            die(&err);
        moe_lora_init(&lora, 7);
    }
    struct moe_config tcfg;
    struct moe_model_hp thp;
    struct moe_model teacher = { 0 };
    struct moe_distill kd = { 0 };
    if (c->kd) {
        const char *tovs[24];
        size_t tn = 0;
        for (size_t i = 0; i < n_ovs; i++)
            tovs[tn++] = ovs[i];
        for (size_t i = 0; i < c->kd->n; i++)
            tovs[tn++] = c->kd->ovs[i];
        if (moe_config_parse(&tcfg, moe_run_schema(), moe_run_schema_len(), json, "teacher", tovs, tn, &err) ||
            moe_model_hp_parse(&thp, &tcfg, &err) ||
            moe_model_create(&teacher, &tcfg, NULL, data.train.task, data.train.n_in, data.train.n_out, max_batch,
                             &err))
            die(&err);
        moe_model_init_weights(&teacher, 11);
        kd = (struct moe_distill){ .teacher = &teacher, .alpha = c->kd->alpha, .tau = c->kd->tau, .sym = c->kd->sym,
                                   .teacher_hp = &thp };
    }
    struct moe_train_hooks h = { .row = on_row, .ctx = c, .checkpoint = on_checkpoint, .stop = &c->stop,
                                 .resume = resume ? &f : NULL, .device = device ? &dv : NULL, .frozen = sel.frozen,
                                 .frozen_experts = sel.frozen_experts, .lora = tu && tu->rank ? &lora : NULL,
                                 .distill = c->kd ? &kd : NULL };
    struct moe_train_result res;
    c->o->rc = moe_train_ex(&m, &data, &cfg, &h, &res, &c->o->err);
    if (!device && !resume && !tu && !c->kd && !c->o->rc) // the trained weights evaluated as moe eval --device cuda does
        eval_on_device(hp.type == MOE_MODEL_TRANSFORMER ? "transformer" : "mlp-moe", &m, &hp, &data.test);
    c->o->numel = m.params.numel;
    c->o->selected = res.selected_epoch;
    free(c->o->w);
    c->o->w = copy_of(m.params.data, m.params.numel);
    if (tu && tu->rank) { // the adapters, after the weights
        size_t n = m.params.numel + lora.p.numel;
        float *w = realloc(c->o->w, n * sizeof *w);
        if (!w)
            abort();
        memcpy(w + m.params.numel, lora.p.data, lora.p.numel * sizeof *w);
        c->o->w = w;
        c->o->numel = n;
        moe_lora_release(&lora);
    }
    moe_tune_sel_release(&sel);
    if (c->kd) {
        moe_model_release(&teacher);
        moe_config_release(&tcfg);
    }
    moe_safetensors_close(&f);
    moe_model_release(&m);
    moe_data_release(&data);
    moe_config_release(&cfg);
}

static void outcome_free(struct outcome *o)
{
    free(o->rows), free(o->w), free(o->m), free(o->v);
    memset(o, 0, sizeof *o);
}

// The rows and weights of b against those of a (the CPU's): on the host
// emulation the same bytes; on a GPU the same rows with losses within 1e-3.
static void same_run(const char *what, const struct outcome *dv, const struct outcome *cpu)
{
    EXPECT(dv->rc == 0 && cpu->rc == 0, "%s: rc %d (%s), cpu rc %d (%s)", what, dv->rc, dv->err.msg, cpu->rc,
           cpu->err.msg);
    if (dv->rc || cpu->rc)
        return;
    int same = dv->len == cpu->len && memcmp(dv->rows, cpu->rows, cpu->len) == 0;
    printf("# %s: %zu bytes of metrics rows, %s; selected epoch %lld\n", what, cpu->len,
           same ? "identical" : "different", (long long)cpu->selected);
    EXPECT(dv->selected == cpu->selected, "%s: selected epoch %lld, cpu %lld", what, (long long)dv->selected,
           (long long)cpu->selected);
    if (EXACT)
        EXPECT(same, "%s: metrics rows differ:\n--- device\n%s--- cpu\n%s", what, dv->rows, cpu->rows);
    compare(what, "final weights", dv->w, cpu->w, cpu->numel, 1e-3);
}

static const char *const TRAIN_CFG =
    "{\"data\": {\"source\": \"synthetic\", \"synthetic\": {\"kind\": \"classes\", \"n_train\": 200,"
    " \"n_test\": 64, \"n_valid\": 40, \"n_in\": 6, \"n_regions\": 4}},"
    " \"model\": {\"type\": \"mlp-moe\", \"n_embd\": 8, \"n_layer\": 2, \"n_ff\": 8, \"n_expert\": 4,"
    " \"n_expert_used\": 2},"
    " \"moe\": {\"router\": \"noisy-topk\", \"aux_loss\": \"switch\", \"capacity_factor\": 1.0, \"z_weight\": 0.001},"
    " \"optim\": {\"type\": \"adamw\", \"lr\": 0.01, \"batch_size\": 16, \"schedule\": \"cosine\", \"warmup_steps\": 3},"
    " \"train\": {\"seed\": 5, \"epochs\": 3, \"log_every\": 5}}";

// A run of json with ovs stopped at step `at` on one side (dev1: the device)
// and resumed from its checkpoint at path on the other (dev2), against ref,
// the uninterrupted run.
static void stop_resume(const char *json, const char *const *ovs, size_t n, const char *path, uint64_t at, int dev1,
                        int dev2, const struct outcome *ref, const char *what)
{
    struct outcome o = { 0 };
    struct tctx c1 = { .o = &o, .path = path, .stop_at_step = at };
    train_run(json, ovs, n, dev1, &c1, 0);
    EXPECT(o.rc == MOE_EINTR, "%s: expected a stop, got rc %d (%s)", what, o.rc, o.err.msg);
    o.len = o.ckpt_len;
    o.rows[o.len] = '\0';
    struct tctx c2 = { .o = &o, .path = path };
    train_run(json, ovs, n, dev2, &c2, 1);
    same_run(what, &o, ref);
    outcome_free(&o);
}

// A run on the device against the same run on the CPU; a regression run
// with another router; then stops and resumes across the two: a CPU run
// stopped at a step and resumed on the device, and the other way round, each
// against the CPU's uninterrupted run.
static void test_trainer(void)
{
    static const char *const none[] = { "train.shuffle=true" };
    static const char *const reg[] = { "data.synthetic.kind=regions", "model.type=mlp-moe", "moe.router=switch",
                                       "model.n_expert_used=1", "model.norm=rmsnorm",
                                       "model.ffn_activation=swiglu", "optim.type=sgd", "optim.momentum=0.9",
                                       "optim.lr=0.05", "optim.clip=0.5" };
    static const char *const dense[] = { "model.n_layer=3", "model.moe_every=3", "moe.router=softmax" };
    static const char *const best[] = { "train.select=best_valid_loss", "train.epochs=4", "optim.lr=0.2" };
    // gradient accumulation: steps of 3 micro-batches of 24 rows, each with its own router streams; the
    // epoch's last step (200 = 2 x 72 + 56) has 24, 24 and 8 rows, weighted by their shares
    static const char *const acc[] = { "train.accumulate=3", "optim.batch_size=24", "moe.jitter=0.01",
                                       "moe.z_weight=0.001" };
    static const char *const hash[] = { "moe.router=hash", "model.n_expert_used=1", "moe.hash_table=balanced",
                                        "moe.hash_vocab=64", "model.n_expert_shared=1" };
    const struct {
        const char *name;
        const char *const *ovs;
        size_t n;
    } runs[] = { { "trainer noisy-topk classes", none, 1 },         { "trainer switch regression", reg, 10 },
                 { "trainer best validation epoch", best, 3 },      { "trainer dense, dense, sparse", dense, 3 },
                 { "trainer hash (balanced table), shared", hash, 5 },
                 { "trainer gradient accumulation, 3 micro-batches", acc, 4 } };
    for (size_t i = 0; i < sizeof runs / sizeof *runs; i++) {
        struct outcome a = { 0 }, b = { 0 };
        struct tctx ca = { .o = &a }, cb = { .o = &b };
        train_run(TRAIN_CFG, runs[i].ovs, runs[i].n, 0, &ca, 0);
        train_run(TRAIN_CFG, runs[i].ovs, runs[i].n, 1, &cb, 0);
        same_run(runs[i].name, &b, &a);
        if (i == 2) // the run ends on an earlier epoch's parameters: the restore and its evaluations
            EXPECT(a.selected > 0 && a.selected < 4, "%s: selected epoch %lld, not before the last", runs[i].name,
                   (long long)a.selected);
        outcome_free(&a), outcome_free(&b);
    }
    // distillation: knowledge distillation from a wider MoE teacher with
    // another router (its passes on the device beside the student's), and
    // MoEBERT's objective from a dense teacher of the same width and depth
    // (symmetric KL and the block outputs' distance), with accumulation
    static const char *const wide[] = { "model.n_embd=12", "model.n_expert=6", "moe.router=switch",
                                        "model.n_expert_used=1" };
    static const char *const dense_t[] = { "model.moe_every=9", "model.n_ff_dense=16" };
    static const struct kd_spec kds[] = { { wide, 4, 0.7f, 2.0f, 0 }, { dense_t, 2, 5.0f, 1.0f, 1 } };
    static const char *const kd_acc[] = { "train.accumulate=2", "optim.batch_size=24" };
    for (size_t i = 0; i < 2; i++) {
        struct outcome a = { 0 }, b = { 0 };
        struct tctx ca = { .o = &a, .kd = &kds[i] }, cb = { .o = &b, .kd = &kds[i] };
        train_run(TRAIN_CFG, i ? kd_acc : NULL, i ? 2 : 0, 0, &ca, 0);
        train_run(TRAIN_CFG, i ? kd_acc : NULL, i ? 2 : 0, 1, &cb, 0);
        same_run(i ? "trainer MoEBERT distillation from a dense teacher, accumulation"
                   : "trainer distillation from a wider switch teacher, alpha 0.7, tau 2", &b, &a);
        outcome_free(&a), outcome_free(&b);
    }
    char path[64];
    snprintf(path, sizeof path, "/tmp/moe-test-cuda-ckpt-%ld.safetensors", (long)getpid());
    static const char *const every[] = { "train.checkpoint_every=1" };
    struct outcome ref = { 0 };
    struct tctx cr = { .o = &ref };
    train_run(TRAIN_CFG, every, 1, 0, &cr, 0);
    const struct {
        uint64_t at;
        int first, second; // devices of the stopped run and of the resumed one
    } cut[] = { { 7, 0, 1 }, { 13, 1, 0 }, { 20, 1, 1 } };
    for (size_t i = 0; i < 3; i++) {
        char what[96];
        snprintf(what, sizeof what, "stop at step %llu on the %s, resume on the %s", (unsigned long long)cut[i].at,
                 cut[i].first ? "device" : "cpu", cut[i].second ? "device" : "cpu");
        stop_resume(TRAIN_CFG, every, 1, path, cut[i].at, cut[i].first, cut[i].second, &ref, what);
    }
    // bias balancing's offsets are state the checkpoint keeps: a run stopped on
    // the device and resumed on the device, against the CPU's uninterrupted run
    {
        static const char *const bias[] = { "train.checkpoint_every=1", "moe.router=deepseek",
                                            "model.n_expert_used=2", "moe.bias_balance=true", "moe.aux_loss=none",
                                            "moe.bias_rate=0.01" };
        struct outcome r2 = { 0 };
        struct tctx c0 = { .o = &r2 };
        train_run(TRAIN_CFG, bias, 6, 0, &c0, 0);
        stop_resume(TRAIN_CFG, bias, 6, path, 11, 1, 1, &r2,
                    "bias balancing: stop at step 11 on the device, resume on the device");
        outcome_free(&r2);
    }
#ifdef MOE_TEST_CUDA_HOST
    // Faults (the emulation's, tests/cuda_host.c): a full device while the
    // device model is created is one error naming the buffer; a kernel that
    // fails at step 9's update stops the run with the call named, the last
    // checkpoint (step 8's) stays as it was, and the CPU resumes from it to the
    // uninterrupted run's rows and weights.
    {
        struct outcome o = { 0 };
        struct tctx c1 = { .o = &o, .path = path };
        cuda_host_fail_malloc = 3;
        train_run(TRAIN_CFG, every, 1, 1, &c1, 0);
        cuda_host_fail_malloc = 0;
        printf("# device full: rc %d: %s\n", o.rc, o.err.msg);
        EXPECT(o.rc == MOE_ENOMEM && strstr(o.err.msg, "CUDA: cudaMalloc of ") &&
                   strstr(o.err.msg, " for optimizer moments (m) failed: out of memory"),
               "device full: rc %d: %s", o.rc, o.err.msg);
        outcome_free(&o);
        remove(path);
        cuda_host_fail_optim = 9;
        train_run(TRAIN_CFG, every, 1, 1, &c1, 0);
        EXPECT(cuda_host_sticky, "kernel fault: the emulation should hold the fault from step 9 on");
        cuda_host_fail_optim = 0;
        cuda_host_sticky = 0; // a new process, as far as the device goes
        printf("# kernel fault at step 9: rc %d: %s\n", o.rc, o.err.msg);
        EXPECT(o.rc == MOE_EIO && strstr(o.err.msg, "CUDA: optim_kernel failed: an illegal memory access"),
               "kernel fault: rc %d: %s", o.rc, o.err.msg);
        struct moe_st_file f;
        struct moe_train_pos pos = { 0 };
        struct moe_err err;
        int ok = moe_safetensors_open(path, &f, &err) == 0;
        EXPECT(ok && moe_train_pos_read(&f, &pos, &err) == 0 && pos.steps == 8,
               "kernel fault: the last checkpoint should be step 8's, got step %llu (%s)",
               (unsigned long long)pos.steps, ok ? "" : err.msg);
        if (ok)
            moe_safetensors_close(&f);
        o.len = o.ckpt_len;
        o.rows[o.len] = '\0';
        struct tctx c2 = { .o = &o, .path = path };
        train_run(TRAIN_CFG, every, 1, 0, &c2, 1);
        same_run("kernel fault at step 9 on the device, resumed on the cpu", &o, &ref);
        outcome_free(&o);
    }
#endif
    remove(path);
    outcome_free(&ref);
    // partial fine-tuning and LoRA: the optimizer's segments and the norm's
    // units on the device as the trainer forms them (frozen tensors, expert
    // ranges, adapters per expert and shared; a shared adapter's gradient sums
    // over the experts), with accumulation in one of them
    static const char *const tr1[] = { "layers.1.*" }, *const fr1[] = { "layers.1.moe.experts.*@1-2" };
    static const char *const tg_all[] = { "*.experts.w1", "*.experts.w2", "head.weight" };
    static const char *const tg_w1[] = { "*.experts.w1", "input.weight" };
    static const char *const tr2[] = { "norm.*" };
    static const struct tune_spec tunes[] = {
        { tr1, fr1, NULL, 1, 1, 0, 0, 0.0, 0 },
        { NULL, NULL, tg_all, 0, 0, 3, 2, 4.0, 0 },
        { tr2, NULL, tg_w1, 1, 0, 2, 3, 3.0, 1 },
    };
    static const char *const tune_acc[] = { "train.accumulate=2", "optim.batch_size=24" };
    for (size_t i = 0; i < 3; i++) {
        struct outcome a = { 0 }, b = { 0 };
        struct tctx ca = { .o = &a, .tune = &tunes[i] }, cb = { .o = &b, .tune = &tunes[i] };
        train_run(TRAIN_CFG, i == 2 ? tune_acc : NULL, i == 2 ? 2 : 0, 0, &ca, 0);
        train_run(TRAIN_CFG, i == 2 ? tune_acc : NULL, i == 2 ? 2 : 0, 1, &cb, 0);
        same_run(i == 0   ? "trainer partial fine-tuning: block 1 but its experts 1-2"
                 : i == 1 ? "trainer LoRA r 2 per expert on the experts' w1, w2 and the head"
                          : "trainer LoRA r 3 shared on w1 and the input, norms trained, accumulation",
                 &b, &a);
        outcome_free(&a), outcome_free(&b);
    }
}

// moe_train_check_device (moe train --check-device) on a config's model and
// data (TRAIN_CFG's; a transformer's in test_trainer_lm): on the host
// emulation every difference is zero; on a GPU the largest is within 1e-3
// (the model test's tolerances) and finite.
static void check_device_on(const char *what, const char *json, const char *const *ovs, size_t n_ovs)
{
    struct moe_err err;
    struct moe_config cfg;
    if (moe_config_parse(&cfg, moe_run_schema(), moe_run_schema_len(), json, "test", ovs, n_ovs, &err))
        die(&err);
    struct moe_data data;
    struct moe_model_hp hp;
    struct moe_model m;
    if (moe_data_load(&data, &cfg, &err) || moe_model_hp_parse(&hp, &cfg, &err) ||
        moe_model_create(&m, &cfg, NULL, data.train.task, data.train.n_in, data.train.n_out, 64, &err))
        die(&err);
    moe_model_init_weights(&m, 5);
    struct moe_optim_cfg oc;
    moe_optim_cfg_parse(&oc, &cfg);
    struct moe_device_check c;
    if (moe_train_check_device(&m, &hp, 0, &data.train, &oc, 16, 15, 30, &c, &err))
        die(&err);
    printf("# check-device %s: %llu steps, %zu tensors, largest relative difference %.3g (%s %s)\n", what,
           (unsigned long long)c.steps, c.n, c.max_rel, c.max_what, c.max_name);
    EXPECT(c.steps == 15 && c.n == m.params.n, "check-device %s: %llu steps, %zu tensors", what,
           (unsigned long long)c.steps, c.n);
    EXPECT(c.loss_cpu[14] > 0.0 && c.gnorm_cpu[14] > 0.0, "check-device %s: the CPU steps ran", what);
    if (EXACT)
        EXPECT(c.max_rel == 0.0, "check-device %s on the emulation: %.3g (%s %s)", what, c.max_rel, c.max_what,
               c.max_name);
    else
        EXPECT(c.max_rel <= 1e-3, "check-device %s: %.3g (%s %s)", what, c.max_rel, c.max_what, c.max_name);
    moe_device_check_release(&c);
    moe_model_release(&m);
    moe_data_release(&data);
    moe_config_release(&cfg);
}

// The Transformer LM through the trainer: a byte-level run on a small text
// in two languages (a folder of two files) on the device against the same run
// on the CPU, with a best-validation selection, and again with
// language-aware GShard routing under jitter and every dropout; then a run stopped on the
// device at step 5 and resumed on the CPU, against the uninterrupted one.
static void write_text(const char *path, const char *const *words, size_t n_words, uint32_t stream, size_t n)
{
    FILE *f = fopen(path, "w");
    if (!f)
        abort();
    struct moe_rng r = moe_rng_make(29, MOE_RNG_DATA, stream);
    for (size_t i = 0; i < n; i++)
        fprintf(f, "%s%s", words[(size_t)(moe_rng_uniform(&r, i) * (float)n_words) % n_words],
                i % 11 == 10 ? ".\n" : " ");
    fclose(f);
}

static void test_trainer_lm(void)
{
    char dir[64], path[96], json[1024], ckpt[96];
    snprintf(dir, sizeof dir, "/tmp/moe-test-cuda-text-%ld", (long)getpid());
    if (mkdir(dir, 0700) && errno != EEXIST)
        abort();
    static const char *const en[] = { "the", "of", "and", "to", "in", "is", "that", "it", "was", "for" };
    static const char *const de[] = { "der", "die", "und", "in", "den", "von", "zu", "das", "mit", "sich" };
    snprintf(path, sizeof path, "%s/en.txt", dir);
    write_text(path, en, 10, 1, 700);
    snprintf(path, sizeof path, "%s/de.txt", dir);
    write_text(path, de, 10, 2, 700);
    snprintf(json, sizeof json,
             "{\"data\": {\"source\": \"text\", \"text\": {\"path\": \"%s\", \"valid_fraction\": 0.15,"
             " \"windows_per_epoch\": 96, \"train_eval_windows\": 24}},"
             " \"model\": {\"type\": \"transformer\", \"n_ctx\": 12, \"n_embd\": 16, \"n_head\": 2,"
             " \"n_layer\": 2, \"n_ff\": 16, \"moe_every\": 2, \"n_expert\": 4, \"n_expert_used\": 1},"
             " \"moe\": {\"router\": \"switch\", \"capacity_factor\": 1.0, \"z_weight\": 0.001},"
             " \"optim\": {\"type\": \"adamw\", \"lr\": 0.01, \"batch_size\": 16, \"clip\": 1.0},"
             " \"train\": {\"seed\": 3, \"epochs\": 3, \"log_every\": 2, \"select\": \"best_valid_loss\"}}",
             dir);
    static const char *const lang[] = { "moe.lang_router=true", "moe.router=gshard", "model.n_expert_used=2",
                                        "moe.jitter=0.02", "model.norm=rmsnorm", "model.dropout.attention=0.1",
                                        "model.dropout.residual=0.1", "model.dropout.ffn=0.1" };
    for (int i = 0; i < 2; i++) {
        struct outcome a = { 0 }, b = { 0 };
        struct tctx ca = { .o = &a }, cb = { .o = &b };
        train_run(json, i ? lang : NULL, i ? 8 : 0, 0, &ca, 0);
        train_run(json, i ? lang : NULL, i ? 8 : 0, 1, &cb, 0);
        same_run(i ? "trainer transformer, language-aware gshard routing with jitter and dropout" :
                     "trainer transformer bytes, two languages", &b, &a);
        outcome_free(&a), outcome_free(&b);
    }
    // distillation of the LM: from a hash-routed teacher with more experts
    // (alpha 0.5, tau 3), and MoEBERT's objective from a dense teacher
    {
        static const char *const ht[] = { "moe.router=hash", "model.n_expert=8", "model.n_expert_used=1",
                                          "model.n_embd=24", "model.n_head=3" };
        static const char *const dt[] = { "model.moe_every=9", "model.n_ff_dense=32" };
        static const struct kd_spec kds[] = { { ht, 5, 0.5f, 3.0f, 0 }, { dt, 2, 2.0f, 1.0f, 1 } };
        for (size_t i = 0; i < 2; i++) {
            struct outcome a = { 0 }, b = { 0 };
            struct tctx ca = { .o = &a, .kd = &kds[i] }, cb = { .o = &b, .kd = &kds[i] };
            train_run(json, NULL, 0, 0, &ca, 0);
            train_run(json, NULL, 0, 1, &cb, 0);
            same_run(i ? "trainer transformer, MoEBERT distillation from a dense teacher"
                       : "trainer transformer, distillation from a hash-routed teacher", &b, &a);
            outcome_free(&a), outcome_free(&b);
        }
    }
    snprintf(ckpt, sizeof ckpt, "%s.safetensors", dir); // beside the corpus folder, not in it
    static const char *const every[] = { "train.checkpoint_every=1" };
    struct outcome ref = { 0 };
    struct tctx cr = { .o = &ref };
    train_run(json, every, 1, 0, &cr, 0);
    stop_resume(json, every, 1, ckpt, 5, 1, 0, &ref, "transformer stopped at step 5 on the device, resumed on the cpu");
    outcome_free(&ref);
    remove(ckpt);
    check_device_on("transformer", json, lang, 8);
    snprintf(path, sizeof path, "%s/en.txt", dir);
    remove(path);
    snprintf(path, sizeof path, "%s/de.txt", dir);
    remove(path);
    rmdir(dir);
}

static void test_check_device(void)
{
    static const char *const ovs[] = { "moe.router=gshard", "optim.clip=0.5" };
    check_device_on("mlp-moe", TRAIN_CFG, ovs, 2);
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
        { "dense-swiglu-sparse-dense-adamw", 0,
          { "model.type=mlp-moe", "moe.router=gshard", "model.n_expert=4", "model.n_embd=16", "model.n_ff=24",
            "model.n_layer=3", "model.moe_every=2", "model.ffn_activation=swiglu", "optim.type=adamw",
            "optim.clip=0.1", NULL } },
        { "dense-gelu-regression-sgd", 1,
          { "model.type=mlp-moe", "moe.router=switch", "model.n_expert_used=1", "model.n_expert=4",
            "model.n_embd=8", "model.n_ff=16", "model.n_layer=4", "model.moe_every=2", "model.ffn_activation=gelu",
            "optim.type=sgd", "optim.momentum=0.9", NULL } },
        { "dropout-swiglu-dense-sparse-adamw", 0,
          { "model.type=mlp-moe", "moe.router=gshard", "model.n_expert=4", "model.n_embd=16", "model.n_ff=24",
            "model.n_layer=2", "model.moe_every=2", "model.ffn_activation=swiglu", "model.dropout.residual=0.2",
            "model.dropout.ffn=0.3", "optim.type=adamw", NULL } },
        { "dropout-ffn-only-switch-sgd", 0,
          { "model.type=mlp-moe", "moe.router=switch", "model.n_expert_used=1", "model.n_expert=4",
            "model.n_embd=8", "model.n_ff=16", "model.n_layer=2", "model.dropout.ffn=0.25", "optim.type=sgd", NULL } },
        { "hash-shared-swiglu-adamw", 0,
          { "model.type=mlp-moe", "moe.router=hash", "model.n_expert_used=1", "model.n_expert=4",
            "model.n_expert_shared=1", "moe.hash_vocab=13", "model.n_embd=16", "model.n_ff=16", "model.n_layer=2",
            "model.ffn_activation=swiglu", "optim.type=adamw", NULL } },
        { "expert-choice-zloss-sgd-regression", 1,
          { "model.type=mlp-moe", "moe.router=expert-choice", "model.n_expert=4", "moe.ec_factor=1.5",
            "model.n_embd=16", "model.n_ff=16", "model.n_layer=2", "moe.z_weight=0.001", "optim.type=sgd",
            "optim.momentum=0.9", NULL } },
        { "softmax-bias-balance-shared2-dropout-adamw", 0,
          { "model.type=mlp-moe", "moe.router=softmax", "model.n_expert=6", "moe.bias_balance=true",
            "moe.aux_loss=none", "model.n_expert_shared=2", "model.dropout.ffn=0.2", "model.n_embd=16",
            "model.n_ff=16", "model.n_layer=2", "optim.type=adamw", NULL } },
        { "noisy-shazeer-gelu-adamw", 0,
          { "model.type=mlp-moe", "moe.router=noisy-topk", "model.n_expert=6", "moe.aux_loss=shazeer",
            "model.n_embd=16", "model.n_ff=16", "model.n_layer=2", "model.ffn_activation=gelu", "optim.type=adamw",
            "optim.lr=0.003", NULL } },
        { "noisy-relu-adamw", 0,
          { "model.type=mlp-moe", "moe.router=noisy-topk", "model.n_expert=4", "model.n_embd=8", "model.n_ff=16",
            "model.n_layer=2", "moe.aux_loss=switch", "optim.type=adamw", "optim.lr=0.003", NULL } },
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
        run_case(&cases[i]);
    static const struct tcase tcases[] = {
        { "transformer-dropout-attention-residual-ffn-adamw",
          { "model.type=transformer", "model.n_ctx=6", "model.n_embd=16", "model.n_head=2", "model.n_layer=2",
            "model.n_ff=16", "model.moe_every=2", "model.n_expert=4", "moe.router=gshard",
            "model.ffn_activation=swiglu", "model.dropout.attention=0.2", "model.dropout.residual=0.1",
            "model.dropout.ffn=0.3", "moe.lang_router=true", "optim.type=adamw", NULL } },
        { "transformer-switch-layernorm-tied-adamw",
          { "model.type=transformer", "model.n_ctx=6", "model.n_embd=16", "model.n_head=2", "model.n_layer=2",
            "model.n_ff=16", "model.moe_every=2", "model.n_expert=4", "model.n_expert_used=1", "moe.router=switch",
            "moe.capacity_factor=1.0", "model.tie_embeddings=true", "optim.type=adamw", "optim.clip=0.5", NULL } },
        { "transformer-gshard-swiglu-rmsnorm-untied-langrouter-sgd",
          { "model.type=transformer", "model.n_ctx=5", "model.n_embd=12", "model.n_head=3", "model.n_layer=3",
            "model.n_ff=8", "model.n_expert=4", "moe.router=gshard", "model.norm=rmsnorm",
            "model.ffn_activation=swiglu", "moe.z_weight=0.001", "moe.lang_router=true", "optim.type=sgd",
            "optim.momentum=0.9", NULL } },
        { "transformer-softmax-gelu-dense-jitter-langrouter-gd",
          { "model.type=transformer", "model.n_ctx=4", "model.n_embd=8", "model.n_head=1", "model.n_layer=2",
            "model.n_ff=8", "model.moe_every=2", "model.n_expert=3", "moe.router=softmax",
            "model.ffn_activation=gelu", "moe.jitter=0.01", "moe.lang_router=true", "optim.type=gd", "optim.lr=0.1",
            NULL } },
    };
    static const struct tcase tcases2[] = {
        { "transformer-hash-shared-adamw",
          { "model.type=transformer", "model.n_ctx=6", "model.n_embd=16", "model.n_head=2", "model.n_layer=2",
            "model.n_ff=16", "model.n_expert=4", "moe.router=hash", "model.n_expert_used=1",
            "model.n_expert_shared=1", "optim.type=adamw", NULL } },
        { "transformer-expert-choice-prefix-eval-sgd",
          { "model.type=transformer", "model.n_ctx=6", "model.n_embd=16", "model.n_head=2", "model.n_layer=2",
            "model.n_ff=16", "model.n_expert=4", "moe.router=expert-choice", "moe.ec_factor=2",
            "moe.ec_eval=prefix", "moe.z_weight=0.001", "optim.type=sgd", "optim.momentum=0.9", NULL } },
        { "transformer-deepseek-bias-balance-langrouter-adamw",
          { "model.type=transformer", "model.n_ctx=5", "model.n_embd=12", "model.n_head=3", "model.n_layer=2",
            "model.n_ff=8", "model.n_expert=6", "model.n_expert_used=2", "moe.router=deepseek",
            "moe.bias_balance=true", "moe.aux_loss=none", "moe.lang_router=true", "optim.type=adamw", NULL } },
    };
    for (size_t i = 0; i < sizeof tcases2 / sizeof *tcases2; i++)
        run_tf_case(&tcases2[i]);
    for (size_t i = 0; i < sizeof tcases / sizeof *tcases; i++)
        run_tf_case(&tcases[i]);
    test_refusals();
    test_trainer();
    test_trainer_lm();
    test_check_device();
    printf("%s: %d failures\n", failures ? "FAIL" : "ok", failures);
    return failures ? 1 : 0;
}
