// test_moebert.c: MoEBERT (train/moebert.h, Zuo et al. 2022) piece by piece:
//   - the symmetric KL of the outputs: value against a direct evaluation, zero at
//     student = teacher, gradient by finite differences;
//   - the whole student's gradient of CE + w (symmetric KL + block-output MSE),
//     objective recomputed here from the outputs, by central differences
//     (mlp-moe with switch blocks, transformer with a hash block);
//   - neuron importance, fast path (activations) against its naive twin (each
//     example alone, sum_j |w . dL/dw| over the neuron's weights), for relu,
//     swiglu and a transformer (an example = a window), and independent of how
//     the training split is cut into batches;
//   - the split: order, shared neurons in every expert, round-robin, dropped
//     neurons; the random order is a permutation fixed by the seed;
//   - the conversion: with no shared or dropped neurons the experts' outputs sum
//     to the dense FFN's, and the other tensors are the teacher's bytes;
//   - plans that cannot work are refused with their reason.
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gradcheck.h"
#include "io/config.h"
#include "model/model.h"
#include "moe/experts.h"
#include "moe/moe_layer.h"
#include "nn/nn.h"
#include "testutil.h"
#include "train/moebert.h"
#include "train/train.h"

#define H_STEP 3e-3f

static struct moe_config load_cfg(const char *json)
{
    struct moe_config cfg;
    struct moe_err err;
    int rc = moe_config_parse(&cfg, moe_run_schema(), moe_run_schema_len(), json, "test", NULL, 0, &err);
    ck_assert_msg(rc == 0, "%s", err.msg);
    return cfg;
}

// A model of the config, weights from seed then moved away from the symmetric start.
static void build(struct moe_model *m, const char *json, enum moe_task task, size_t n_in, size_t n_out, size_t T,
                  uint32_t stream)
{
    struct moe_config cfg = load_cfg(json);
    struct moe_err err;
    int rc = moe_model_create(m, &cfg, NULL, task, n_in, n_out, T, &err);
    ck_assert_msg(rc == 0, "create: %s", err.msg);
    moe_model_init_weights(m, 3);
    fill_u(m->params.data, m->params.numel, stream, -0.6f, 0.6f);
    for (size_t i = 0; i < m->params.n; i++)
        if (strstr(m->params.t[i].name, "norm.weight"))
            for (size_t j = 0; j < m->params.t[i].numel; j++)
                m->params.data[m->params.t[i].offset + j] += 1.0f;
    moe_config_release(&cfg);
}

// ---------------------------------------------------------------- symmetric KL

enum { ST = 4, SO = 5 };

struct skl_ctx {
    float s[ST * SO], z[ST * SO];
};

static double skl_loss(void *p)
{
    struct skl_ctx *c = p;
    return moe_symkl_forward_backward(NULL, c->s, c->z, ST, SO, 1.0f) / ST;
}

START_TEST(test_symkl)
{
    struct skl_ctx c;
    fill_u(c.s, ST * SO, 40, -3, 3);
    fill_u(c.z, ST * SO, 41, -3, 3);
    float dy[ST * SO];
    for (size_t i = 0; i < ST * SO; i++)
        dy[i] = 0.25f; // backward adds
    double sum = moe_symkl_forward_backward(dy, c.s, c.z, ST, SO, 1.0f / ST);
    double ref = 0.0;
    for (size_t t = 0; t < ST; t++) {
        double zs = 0.0, zz = 0.0;
        for (size_t o = 0; o < SO; o++) {
            zs += exp(c.s[t * SO + o]);
            zz += exp(c.z[t * SO + o]);
        }
        for (size_t o = 0; o < SO; o++) {
            double p = exp(c.z[t * SO + o]) / zz, q = exp(c.s[t * SO + o]) / zs;
            ref += p * log(p / q) + q * log(q / p);
        }
    }
    ck_assert_double_gt(ref, 1e-2);
    ck_assert_double_eq_tol(sum, ref, 1e-9 * ref);
    for (size_t i = 0; i < ST * SO; i++)
        check_grad(dy[i] - 0.25f, numeric_grad(&c.s[i], 1e-2f, skl_loss, &c), "symkl ds", i);
    float g[ST * SO] = { 0 };
    ck_assert_double_eq_tol(moe_symkl_forward_backward(g, c.z, c.z, ST, SO, 1.0f), 0.0, 1e-12);
    for (size_t i = 0; i < ST * SO; i++)
        ck_assert_float_eq_tol(g[i], 0.0f, 1e-7f);
}
END_TEST

// ---------------------------------------------------------------- whole-model gradient

// mlp-moe: N rows of I inputs, O classes; transformer: B windows of C + 1 tokens over V ids.
enum { N = 6, I = 5, O = 3, B = 2, C = 4, V = 7 };

struct kd_ctx {
    struct moe_model m;
    struct moe_batch b;
    struct moe_batch_kd kd; // b.kd points here
    size_t rows, width;   // output rows (tokens) and their width
    float *x, *logits, *hidden, *t_logits, *t_hidden;
    int32_t label[N], tok[B * (C + 1)];
    float w;
    size_t L;
};

// The objective the model's gradient must be of, from its outputs: mean CE
// (the statistics) + aux losses + w (symmetric KL + sum over blocks of the MSE).
static double kd_objective(void *p, unsigned *sig_out)
{
    struct kd_ctx *c = p;
    struct moe_stats st;
    struct moe_err err;
    ck_assert_int_eq(moe_stats_init(&st, 0, 0, &err), 0);
    int rc = moe_model_run(&c->m, &c->b, 1, &st, &err);
    ck_assert_msg(rc == 0, "run: %s", err.msg);
    double f = st.loss / (double)st.n;
    moe_stats_release(&st);
    f += c->w * moe_symkl_forward_backward(NULL, c->logits, c->t_logits, c->rows, c->width, 1.0f) / (double)c->rows;
    // per block, the mean over rows x D of the squared distance: sum over all / (rows * D)
    size_t nh = c->b.n * c->m.hidden_per_row, per_block = nh / c->L;
    double sq = 0.0;
    for (size_t i = 0; i < nh; i++)
        sq += ((double)c->hidden[i] - c->t_hidden[i]) * ((double)c->hidden[i] - c->t_hidden[i]);
    f += c->w * sq / (double)per_block;
    unsigned sig = 0;
    for (size_t i = 0; i < c->m.n_moe_layers; i++) {
        struct moe_layer *l = c->m.ops->moe_layer_at(&c->m, i);
        f += l->loss;
        for (size_t j = 0; j < l->T * l->S; j++)
            sig = sig * 31u + (unsigned)l->route.sel[j] * 7u + (l->plan.slot_row[j] >= 0);
    }
    *sig_out = sig;
    return f;
}

static const char *const kd_cfgs[2] = {
    // mlp-moe: a dense block then a switch block, gelu
    "{\"model\":{\"type\":\"mlp-moe\",\"n_embd\":4,\"n_layer\":2,\"moe_every\":2,\"n_expert\":2,\"n_expert_used\":1,"
    "\"n_ff\":3,\"ffn_activation\":\"gelu\"},\"moe\":{\"router\":\"switch\",\"capacity_factor\":0},\"loss\":{\"type\":\"ce\"}}",
    // transformer: a dense block then a hash block, swiglu
    "{\"model\":{\"type\":\"transformer\",\"n_ctx\":4,\"n_embd\":4,\"n_head\":2,\"n_layer\":2,\"moe_every\":2,\"n_ff\":3,"
    "\"n_expert\":2,\"n_expert_used\":1,\"ffn_activation\":\"swiglu\"},\"moe\":{\"router\":\"hash\",\"capacity_factor\":0}}",
};

static void fill_tokens(int32_t *tok, size_t n, uint32_t stream)
{
    struct moe_rng r = moe_rng_make(5, MOE_RNG_DATA, stream);
    for (size_t i = 0; i < n; i++)
        tok[i] = (int32_t)moe_rng_below(&r, i, V);
}

START_TEST(test_grad_moebert)
{
    int lm = _i == 1;
    struct kd_ctx *c = calloc(1, sizeof *c);
    ck_assert_ptr_nonnull(c);
    build(&c->m, kd_cfgs[_i], lm ? MOE_TASK_LM : MOE_TASK_CLASSIFICATION, lm ? 1 : I, lm ? V : O, lm ? B : N, 50);
    size_t n = lm ? B : N;
    c->rows = lm ? B * C : N;
    c->width = lm ? V : O;
    c->L = 2;
    c->w = 0.7f;
    ck_assert_uint_eq(c->m.hidden_per_row, lm ? C * 2 * 4 : 2 * 4);
    size_t nh = n * c->m.hidden_per_row;
    c->x = malloc(N * I * sizeof(float));
    c->logits = malloc(c->rows * c->width * sizeof(float));
    c->t_logits = malloc(c->rows * c->width * sizeof(float));
    c->hidden = malloc(nh * sizeof(float));
    c->t_hidden = malloc(nh * sizeof(float));
    fill_u(c->x, N * I, 51, -1, 1);
    fill_u(c->t_logits, c->rows * c->width, 52, -2, 2);
    fill_u(c->t_hidden, nh, 53, -1, 1);
    memset(&c->b, 0, sizeof c->b);
    c->b.n = n;
    if (lm) {
        fill_tokens(c->tok, B * (C + 1), 54);
        c->b.tok = c->tok;
    } else {
        for (size_t t = 0; t < N; t++)
            c->label[t] = (int32_t)(t % O);
        c->b.x = c->x;
        c->b.label = c->label;
    }
    c->b.step = 2;
    c->kd = (struct moe_batch_kd){ .teacher = c->t_logits, .teacher_hidden = c->t_hidden, .sym = 1, .alpha = c->w,
                                   .logits_out = c->logits, .hidden_out = c->hidden };
    c->b.kd = &c->kd;
    unsigned sig0;
    moe_params_zero_grad(&c->m.params);
    kd_objective(c, &sig0);
    size_t numel = c->m.params.numel;
    float *grad = malloc(numel * sizeof *grad);
    memcpy(grad, c->m.params.grad, numel * sizeof *grad);
    struct fd_tally all = { 0 };
    for (size_t ti = 0; ti < c->m.params.n; ti++) {
        const struct moe_tensor *t = &c->m.params.t[ti];
        char what[160];
        snprintf(what, sizeof what, "%s: %s", lm ? "transformer" : "mlp-moe", t->name);
        check_grad_routed(c->m.params.data + t->offset, grad + t->offset, t->numel, H_STEP, kd_objective, c, sig0,
                          what, &all);
    }
    ck_assert_msg(all.checked > 100 && all.skipped * 20 <= all.checked, "%zu checked, %zu skipped", all.checked,
                  all.skipped);
    // the distillation terms matter: without them the gradient differs
    float *plain = malloc(numel * sizeof *plain);
    struct moe_batch_kd kd0 = c->kd;
    c->kd.teacher_hidden = NULL;
    moe_params_zero_grad(&c->m.params);
    struct moe_err err;
    ck_assert_int_eq(moe_model_run(&c->m, &c->b, 1, NULL, &err), 0);
    memcpy(plain, c->m.params.grad, numel * sizeof *plain);
    double diff = 0.0;
    for (size_t i = 0; i < numel; i++)
        diff = fmax(diff, fabs(plain[i] - grad[i]));
    ck_assert_double_gt(diff, 1e-3);
    c->kd = kd0;
    free(plain);
    free(grad);
    free(c->x);
    free(c->logits);
    free(c->t_logits);
    free(c->hidden);
    free(c->t_hidden);
    moe_model_release(&c->m);
    free(c);
}
END_TEST

// ---------------------------------------------------------------- importance

static const char *const dense_cfgs[3] = {
    "{\"model\":{\"type\":\"mlp-moe\",\"n_embd\":4,\"n_layer\":2,\"moe_every\":9,\"n_ff_dense\":6,"
    "\"ffn_activation\":\"relu\"},\"loss\":{\"type\":\"ce\"}}",
    "{\"model\":{\"type\":\"mlp-moe\",\"n_embd\":4,\"n_layer\":2,\"moe_every\":9,\"n_ff_dense\":6,"
    "\"ffn_activation\":\"swiglu\",\"norm\":\"rmsnorm\"},\"loss\":{\"type\":\"ce\"}}",
    "{\"model\":{\"type\":\"transformer\",\"n_ctx\":4,\"n_embd\":4,\"n_head\":2,\"n_layer\":2,\"moe_every\":9,"
    "\"n_ff_dense\":6,\"ffn_activation\":\"gelu\"}}",
};

// The naive twin: each example alone, I_j += |sum over neuron j's weights of w dL/dw|.
static void naive_importance(struct moe_model *m, const struct moe_batch *all, int lm, double *imp, size_t L,
                             size_t Fd)
{
    struct moe_err err;
    char name[64];
    for (size_t e = 0; e < all->n; e++) {
        struct moe_batch b = *all;
        b.n = 1;
        if (lm)
            b.tok = all->tok + e * (C + 1);
        else {
            b.x = all->x + e * I;
            b.label = all->label + e;
        }
        moe_params_zero_grad(&m->params);
        ck_assert_int_eq(moe_model_run(m, &b, 1, NULL, &err), 0);
        for (size_t l = 0; l < L; l++) {
            snprintf(name, sizeof name, "layers.%zu.ffn.w1", l);
            int i1 = moe_params_find(&m->params, name);
            snprintf(name, sizeof name, "layers.%zu.ffn.w3", l);
            int i3 = moe_params_find(&m->params, name);
            snprintf(name, sizeof name, "layers.%zu.ffn.w2", l);
            int i2 = moe_params_find(&m->params, name);
            ck_assert_int_ge(i1, 0);
            const float *w1 = moe_params_data(&m->params, i1), *g1 = moe_params_grad(&m->params, i1);
            const float *w2 = moe_params_data(&m->params, i2), *g2 = moe_params_grad(&m->params, i2);
            size_t D = m->params.t[i1].shape[1];
            for (size_t j = 0; j < Fd; j++) {
                double s = 0.0;
                for (size_t d = 0; d < D; d++) {
                    s += (double)w1[j * D + d] * g1[j * D + d] + (double)w2[d * Fd + j] * g2[d * Fd + j];
                    if (i3 >= 0)
                        s += (double)moe_params_data(&m->params, i3)[j * D + d] * moe_params_grad(&m->params, i3)[j * D + d];
                }
                imp[l * Fd + j] += fabs(s);
            }
        }
    }
}

START_TEST(test_importance_naive)
{
    int lm = _i == 2;
    enum { L = 2, Fd = 6 };
    struct moe_model m;
    build(&m, dense_cfgs[_i], lm ? MOE_TASK_LM : MOE_TASK_CLASSIFICATION, lm ? 1 : I, lm ? V : O, lm ? B : N,
          60 + (uint32_t)_i);
    float x[N * I];
    int32_t label[N], tok[B * (C + 1)];
    fill_u(x, N * I, 61, -1, 1);
    fill_tokens(tok, B * (C + 1), 62);
    for (size_t t = 0; t < N; t++)
        label[t] = (int32_t)((t * 2) % O);
    struct moe_batch b;
    memset(&b, 0, sizeof b);
    b.n = lm ? B : N;
    if (lm)
        b.tok = tok;
    else {
        b.x = x;
        b.label = label;
    }
    double fast[L * Fd] = { 0 }, naive[L * Fd] = { 0 };
    struct moe_err err;
    struct moe_batch_kd kd = { .ffn_importance = fast };
    b.kd = &kd;
    ck_assert_int_eq(moe_model_run(&m, &b, 1, NULL, &err), 0);
    b.kd = NULL;
    naive_importance(&m, &b, lm, naive, L, Fd);
    double big = 0.0;
    for (size_t k = 0; k < L * Fd; k++)
        big = fmax(big, naive[k]);
    ck_assert_double_gt(big, 1e-3);
    for (size_t k = 0; k < L * Fd; k++)
        ck_assert_msg(fabs(fast[k] - naive[k]) <= 1e-4 * big + 1e-6 * fabs(naive[k]),
                      "config %d: neuron %zu: fast %.9g vs naive %.9g", _i, k, fast[k], naive[k]);
    moe_model_release(&m);
}
END_TEST

// ---------------------------------------------------------------- split and conversion

static const char *const teacher_cfg =
    "{\"model\":{\"type\":\"mlp-moe\",\"n_embd\":4,\"n_layer\":2,\"moe_every\":9,\"n_ff_dense\":8,"
    "\"ffn_activation\":\"relu\"},\"loss\":{\"type\":\"ce\"}}";
// block 0 dense (copied whole), block 1 two experts of 4 (its n_ff_dense 8 is the teacher's)
static const char *const student_fmt =
    "{\"model\":{\"type\":\"mlp-moe\",\"n_embd\":%d,\"n_layer\":2,\"moe_every\":%d,\"n_ff_dense\":8,\"n_expert\":2,"
    "\"n_expert_used\":1,\"n_ff\":%d,\"ffn_activation\":\"relu\"},\"moe\":{\"router\":\"switch\"},\"loss\":{\"type\":\"ce\"}}";

static void student(struct moe_model *m, int D, int every, int F)
{
    char json[512];
    snprintf(json, sizeof json, student_fmt, D, every, F);
    build(m, json, MOE_TASK_CLASSIFICATION, I, O, 16, 71);
}

START_TEST(test_split_and_convert)
{
    struct moe_model t, s;
    build(&t, teacher_cfg, MOE_TASK_CLASSIFICATION, I, O, 16, 70);
    student(&s, 4, 2, 4);
    struct moe_moebert mb;
    struct moe_err err;
    ck_assert_int_eq(moe_moebert_plan(&mb, &s, &t, 0, 0, &err), 0);
    ck_assert_uint_eq(mb.n, 1);
    ck_assert_uint_eq(mb.layer[0].block, 1);
    ck_assert_uint_eq(mb.E, 2);
    ck_assert_uint_eq(mb.F, 4);
    ck_assert_uint_eq(mb.Fd, 8);
    const double imp[8] = { 3, 7, 1, 6, 0, 5, 2, 4 };
    memcpy(mb.layer[0].importance, imp, sizeof imp);
    moe_moebert_split(&mb, 1);
    // order 1 3 5 7 0 6 2 4; dealt alternately: expert 0 gets 1 5 0 2, expert 1 gets 3 7 6 4
    const uint32_t order[8] = { 1, 3, 5, 7, 0, 6, 2, 4 };
    const int32_t slots[8] = { 1, 5, 0, 2, 3, 7, 6, 4 };
    for (size_t i = 0; i < 8; i++) {
        ck_assert_uint_eq(mb.layer[0].order[i], order[i]);
        ck_assert_int_eq(mb.layer[0].slots[i], slots[i]);
        ck_assert_uint_eq(mb.layer[0].rank[order[i]], i);
        ck_assert_int_eq(mb.layer[0].expert[order[i]], (int32_t)(i % 2));
    }
    ck_assert_uint_eq(mb.layer[0].dropped, 0);

    // conversion: router untouched, block 0 and the rest the teacher's bytes,
    // and the two experts' outputs sum to the teacher's dense FFN of block 1
    int ir = moe_params_find(&s.params, "layers.1.moe.router.weight");
    ck_assert_int_ge(ir, 0);
    size_t nr = s.params.t[ir].numel;
    float router[8];
    ck_assert_uint_le(nr, 8);
    memcpy(router, moe_params_data(&s.params, ir), nr * sizeof(float));
    size_t copied = moe_moebert_convert(&mb, &s, &t);
    ck_assert_uint_eq(copied, 2 /* input */ + 2 * 2 /* block norms */ + 2 /* block 0 ffn */ + 2 /* final norm */ + 2 /* head */);
    ck_assert_mem_eq(moe_params_data(&s.params, ir), router, nr * sizeof(float));
    const char *same[] = { "input.weight", "layers.0.ffn.w1", "layers.0.ffn.w2", "layers.1.norm.weight", "head.weight" };
    for (size_t k = 0; k < 5; k++) {
        int a = moe_params_find(&s.params, same[k]), b2 = moe_params_find(&t.params, same[k]);
        ck_assert_int_ge(a, 0);
        ck_assert_mem_eq(moe_params_data(&s.params, a), moe_params_data(&t.params, b2),
                         t.params.t[b2].numel * sizeof(float));
    }
    enum { R = 3, D = 4 };
    float x[R * D], yd[R * D], ye[R * D], ysum[R * D] = { 0 }, a[R * 8], h[R * 8];
    fill_u(x, R * D, 72, -1, 1);
    moe_ffn_forward(yd, a, NULL, h, x, moe_params_data(&t.params, moe_params_find(&t.params, "layers.1.ffn.w1")), NULL,
                    moe_params_data(&t.params, moe_params_find(&t.params, "layers.1.ffn.w2")), R, D, 8, MOE_FFN_RELU);
    const float *e1 = moe_params_data(&s.params, moe_params_find(&s.params, "layers.1.moe.experts.w1"));
    const float *e2 = moe_params_data(&s.params, moe_params_find(&s.params, "layers.1.moe.experts.w2"));
    for (size_t e = 0; e < 2; e++) {
        moe_ffn_forward(ye, a, NULL, h, x, e1 + e * 4 * D, NULL, e2 + e * D * 4, R, D, 4, MOE_FFN_RELU);
        for (size_t i = 0; i < R * D; i++)
            ysum[i] += ye[i];
    }
    for (size_t i = 0; i < R * D; i++)
        ck_assert_float_eq_tol(ysum[i], yd[i], 1e-5f);
    moe_moebert_release(&mb);

    // two shared neurons: in both experts first; 4 dealt; the 2 least important dropped
    ck_assert_int_eq(moe_moebert_plan(&mb, &s, &t, 2, 0, &err), 0);
    memcpy(mb.layer[0].importance, imp, sizeof imp);
    moe_moebert_split(&mb, 1);
    const int32_t slots2[8] = { 1, 3, 5, 0, 1, 3, 7, 6 };
    for (size_t i = 0; i < 8; i++)
        ck_assert_int_eq(mb.layer[0].slots[i], slots2[i]);
    ck_assert_int_eq(mb.layer[0].expert[1], MOE_MOEBERT_SHARED);
    ck_assert_int_eq(mb.layer[0].expert[2], MOE_MOEBERT_DROPPED);
    ck_assert_int_eq(mb.layer[0].expert[4], MOE_MOEBERT_DROPPED);
    ck_assert_uint_eq(mb.layer[0].dropped, 2);
    moe_moebert_release(&mb);

    // the random order: a permutation, the same for the same seed, another for another
    uint32_t first[8];
    ck_assert_int_eq(moe_moebert_plan(&mb, &s, &t, 0, 1, &err), 0);
    moe_moebert_split(&mb, 7);
    memcpy(first, mb.layer[0].order, sizeof first);
    unsigned seen = 0;
    for (size_t i = 0; i < 8; i++)
        seen |= 1u << first[i];
    ck_assert_uint_eq(seen, 0xff);
    moe_moebert_split(&mb, 7);
    ck_assert_mem_eq(mb.layer[0].order, first, sizeof first);
    moe_moebert_split(&mb, 8);
    ck_assert_int_ne(memcmp(mb.layer[0].order, first, sizeof first), 0);
    moe_moebert_release(&mb);
    moe_model_release(&s);
    moe_model_release(&t);
}
END_TEST

// Importance over a training split does not depend on the batch size.
START_TEST(test_importance_batches)
{
    struct moe_model t, s;
    build(&t, teacher_cfg, MOE_TASK_CLASSIFICATION, I, O, 16, 70);
    student(&s, 4, 1, 4);
    struct moe_dataset d;
    struct moe_err err;
    ck_assert_int_eq(moe_dataset_alloc(&d, MOE_TASK_CLASSIFICATION, 10, I, O, 0, &err), 0);
    fill_u(d.x, 10 * I, 73, -1, 1);
    for (size_t i = 0; i < 10; i++)
        d.label[i] = (int32_t)(i % O);
    struct moe_moebert a, b;
    ck_assert_int_eq(moe_moebert_plan(&a, &s, &t, 0, 0, &err), 0);
    ck_assert_int_eq(moe_moebert_plan(&b, &s, &t, 0, 0, &err), 0);
    ck_assert_uint_eq(a.n, 2);
    ck_assert_int_eq(moe_moebert_importance(&a, &t, &d, 3, 1, &err), 0);
    ck_assert_int_eq(moe_moebert_importance(&b, &t, &d, 10, 1, &err), 0);
    size_t live = 0; // relu neurons that fire on some row (a dead one has importance 0)
    for (size_t k = 0; k < 2 * 8; k++) {
        live += a.table[k] > 0.0;
        ck_assert_double_le(fabs(a.table[k] - b.table[k]), 1e-5 * b.table[k] + 1e-12);
    }
    ck_assert_uint_ge(live, 8);
    moe_moebert_release(&a);
    moe_moebert_release(&b);
    moe_dataset_release(&d);
    moe_model_release(&s);
    moe_model_release(&t);
}
END_TEST

// Plans that cannot work, refused with their reason.
START_TEST(test_plan_errors)
{
    struct moe_model t, s;
    struct moe_moebert mb;
    struct moe_err err;
    build(&t, teacher_cfg, MOE_TASK_CLASSIFICATION, I, O, 16, 70);
    student(&s, 4, 2, 4);
    ck_assert_int_eq(moe_moebert_plan(&mb, &s, &t, 5, 0, &err), MOE_ECONFIG); // 5 shared > n_ff 4
    ck_assert_ptr_nonnull(strstr(err.msg, "need"));
    moe_moebert_release(&mb);
    moe_model_release(&s);
    student(&s, 4, 2, 5); // 2 experts of 5 > 8 neurons
    ck_assert_int_eq(moe_moebert_plan(&mb, &s, &t, 0, 0, &err), MOE_ECONFIG);
    ck_assert_ptr_nonnull(strstr(err.msg, "need 10 of the teacher's 8"));
    moe_moebert_release(&mb);
    moe_model_release(&s);
    student(&s, 4, 9, 4); // no sparse block
    ck_assert_int_eq(moe_moebert_plan(&mb, &s, &t, 0, 0, &err), MOE_ECONFIG);
    ck_assert_ptr_nonnull(strstr(err.msg, "no sparse block"));
    moe_moebert_release(&mb);
    moe_model_release(&s);
    student(&s, 6, 2, 4); // another width
    ck_assert_int_eq(moe_moebert_plan(&mb, &s, &t, 0, 0, &err), MOE_ESHAPE);
    ck_assert_ptr_nonnull(strstr(err.msg, "same type, depth and width"));
    moe_moebert_release(&mb);
    moe_model_release(&s);
    // a sparse teacher block where the student is sparse too
    struct moe_model t2;
    student(&t2, 4, 1, 4);
    student(&s, 4, 1, 4);
    ck_assert_int_eq(moe_moebert_plan(&mb, &s, &t2, 0, 0, &err), MOE_ESHAPE);
    ck_assert_ptr_nonnull(strstr(err.msg, "not a dense FFN"));
    moe_moebert_release(&mb);
    moe_model_release(&s);
    moe_model_release(&t2);
    moe_model_release(&t);
}
END_TEST

int main(void)
{
    if (moe_test_init_blas(2))
        return 1;
    Suite *s = suite_create("moebert");
    TCase *tc = tcase_create("moebert");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_symkl);
    tcase_add_loop_test(tc, test_grad_moebert, 0, 2);
    tcase_add_loop_test(tc, test_importance_naive, 0, 3);
    tcase_add_test(tc, test_split_and_convert);
    tcase_add_test(tc, test_importance_batches);
    tcase_add_test(tc, test_plan_errors);
    suite_add_tcase(s, tc);
    return moe_test_run(s);
}
