// test_train.c: optimisers against hand computations, and the training loop
// end to end on the built-in synthetic data: loss goes down, the stopping
// criterion, reproducibility (same config, other thread counts), divergence
// reporting, the order of evaluation rows, and the 1991 experiment's shape
// (experts specialise on the true regions).
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/gemm.h"
#include "core/params.h"
#include "core/rng.h"
#include "core/status.h"
#include "io/config.h"
#include "model/model.h"
#include "train/train.h"
#include "testutil.h"

#define MAIN_THREADS 2

static void fill_u(float *x, size_t n, uint32_t stream, float lo, float hi)
{
    struct moe_rng r = moe_rng_make(77, MOE_RNG_DATA, stream);
    moe_rng_fill_uniform(&r, x, n, lo, hi);
}

static void parse(struct moe_config *cfg, const char *json, const char *const *ovs, size_t n_ovs)
{
    struct moe_err err;
    int rc = moe_config_parse(cfg, moe_run_schema(), moe_run_schema_len(), json, "test", ovs, n_ovs, &err);
    ck_assert_msg(rc == 0, "config: %s", err.msg);
}

// |a - b| <= tol * max(1, |b|)
#define ASSERT_REL(a, b, tol, ...)                                                                            \
    do {                                                                                                      \
        double a_ = (a), b_ = (b);                                                                            \
        ck_assert_msg(fabs(a_ - b_) <= (tol) * fmax(1.0, fabs(b_)), __VA_ARGS__);                             \
    } while (0)

// ---------------------------------------------------------------- optimisers

enum { NW = 37 };

// The optimiser of a test config (optim.* keys).
static int optim_init(struct moe_optim *o, const struct moe_config *cfg, size_t n, struct moe_err *err)
{
    struct moe_optim_cfg oc;
    moe_optim_cfg_parse(&oc, cfg);
    return moe_optim_init(o, &oc, n, err);
}

START_TEST(test_optim_gd)
{
    struct moe_config cfg;
    parse(&cfg, "{\"optim\": {\"type\": \"gd\", \"lr\": 0.25}}", NULL, 0);
    struct moe_optim o;
    struct moe_err err;
    ck_assert_int_eq(optim_init(&o, &cfg, NW, &err), 0);
    ck_assert_int_eq(o.type, MOE_OPTIM_GD);
    float w[NW], g[NW], g0[NW], expect[NW];
    fill_u(w, NW, 1, -1, 1);
    for (int step = 0; step < 2; step++) {
        fill_u(g, NW, 2 + step, -1, 1);
        memcpy(g0, g, sizeof g);
        double sq = 0.0;
        for (size_t i = 0; i < NW; i++) {
            // lr = 1/4 is a power of two: lr * g is exact, so w - lr * g rounds once
            // whichever way it is evaluated, and the update must be bit-exact.
            expect[i] = w[i] - 0.25f * g[i];
            sq += (double)g[i] * g[i];
        }
        double norm = moe_optim_step(&o, w, g);
        ck_assert_double_eq_tol(norm, sqrt(sq), 1e-12 * sqrt(sq));
        ck_assert_mem_eq(w, expect, sizeof w);
        ck_assert_mem_eq(g, g0, sizeof g); // no clipping: gradient untouched
    }
    ck_assert_uint_eq(o.t, 2);
    moe_optim_release(&o);
    moe_config_release(&cfg);
}
END_TEST

START_TEST(test_optim_sgd_momentum)
{
    // Heavy ball: m = mu m + g; w -= lr (m + wd w). Two steps by hand in double,
    // without and with (decoupled) weight decay. Tolerance 1e-6 relative.
    const double lr = 0.1, mu = 0.9;
    const double wds[2] = { 0.0, 0.05 };
    for (int k = 0; k < 2; k++) {
        char json[200];
        snprintf(json, sizeof json,
                 "{\"optim\": {\"type\": \"sgd\", \"lr\": %g, \"momentum\": %g, \"weight_decay\": %g}}", lr, mu,
                 wds[k]);
        struct moe_config cfg;
        parse(&cfg, json, NULL, 0);
        struct moe_optim o;
        struct moe_err err;
        ck_assert_int_eq(optim_init(&o, &cfg, NW, &err), 0);
        ck_assert_int_eq(o.type, MOE_OPTIM_SGD);
        float w[NW], g1[NW], g2[NW];
        double wd[NW], m[NW];
        fill_u(w, NW, 10, -1, 1);
        fill_u(g1, NW, 11, -1, 1);
        fill_u(g2, NW, 12, -1, 1);
        for (size_t i = 0; i < NW; i++) {
            wd[i] = w[i];
            m[i] = g1[i];                            // step 1: m = 0 * mu + g1
            wd[i] -= lr * (m[i] + wds[k] * wd[i]);
            m[i] = mu * m[i] + g2[i];                // step 2
            wd[i] -= lr * (m[i] + wds[k] * wd[i]);
        }
        moe_optim_step(&o, w, g1);
        moe_optim_step(&o, w, g2);
        for (size_t i = 0; i < NW; i++) {
            ASSERT_REL(w[i], wd[i], 1e-6, "sgd wd=%g w[%zu] = %.9g, hand %.9g", wds[k], i, w[i], wd[i]);
            ASSERT_REL(o.m[i], m[i], 1e-6, "sgd momentum[%zu] = %.9g, hand %.9g", i, o.m[i], m[i]);
        }
        moe_optim_release(&o);
        moe_config_release(&cfg);
    }
}
END_TEST

START_TEST(test_optim_adamw)
{
    // AdamW (Loshchilov & Hutter 2019, in the PyTorch parametrisation: the decay is
    // scaled by lr and applied to the weights before the step):
    //   m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
    //   mhat = m / (1 - b1^t);  vhat = v / (1 - b2^t)
    //   w -= lr (mhat / (sqrt(vhat) + eps) + wd w)
    // Two steps in double; tolerance 1e-6 relative (float state: a few ulp of the
    // O(1) normalised step times lr; the decay term lr * wd * w = 1e-2 w is far larger
    // than the tolerance, so a wrong decay convention fails).
    const double lr = 0.1, b1 = 0.9, b2 = 0.999, eps = 1e-8, wdec = 0.1;
    struct moe_config cfg;
    char json[256];
    snprintf(json, sizeof json,
             "{\"optim\": {\"type\": \"adamw\", \"lr\": %g, \"beta1\": %g, \"beta2\": %g, \"eps\": %g,"
             " \"weight_decay\": %g}}",
             lr, b1, b2, eps, wdec);
    parse(&cfg, json, NULL, 0);
    struct moe_optim o;
    struct moe_err err;
    ck_assert_int_eq(optim_init(&o, &cfg, NW, &err), 0);
    ck_assert_int_eq(o.type, MOE_OPTIM_ADAMW);
    float w[NW], g[2][NW];
    double wh[NW], m[NW], v[NW];
    fill_u(w, NW, 20, -2, 2);
    fill_u(g[0], NW, 21, -1, 1);
    fill_u(g[1], NW, 22, -1, 1);
    for (size_t i = 0; i < NW; i++) {
        wh[i] = w[i];
        m[i] = v[i] = 0.0;
    }
    for (int t = 1; t <= 2; t++) {
        for (size_t i = 0; i < NW; i++) {
            double gi = g[t - 1][i];
            m[i] = b1 * m[i] + (1 - b1) * gi;
            v[i] = b2 * v[i] + (1 - b2) * gi * gi;
            double mhat = m[i] / (1 - pow(b1, t)), vhat = v[i] / (1 - pow(b2, t));
            wh[i] -= lr * (mhat / (sqrt(vhat) + eps) + wdec * wh[i]);
        }
        moe_optim_step(&o, w, g[t - 1]);
        ck_assert_uint_eq(o.t, (uint64_t)t);
        for (size_t i = 0; i < NW; i++) {
            ASSERT_REL(w[i], wh[i], 1e-6, "adamw step %d w[%zu] = %.9g, hand %.9g", t, i, w[i], wh[i]);
            ASSERT_REL(o.m[i], m[i], 1e-6, "adamw step %d m[%zu]", t, i);
            ASSERT_REL(o.v[i], v[i], 1e-6, "adamw step %d v[%zu]", t, i);
        }
    }
    moe_optim_release(&o);
    moe_config_release(&cfg);
}
END_TEST

START_TEST(test_optim_clip)
{
    struct moe_err err;
    // gd with lr 1 so the step is the (clipped) gradient itself
    for (int big = 0; big < 2; big++) {
        struct moe_config cfg;
        parse(&cfg, big ? "{\"optim\": {\"type\": \"gd\", \"lr\": 1, \"clip\": 100}}"
                        : "{\"optim\": {\"type\": \"gd\", \"lr\": 1, \"clip\": 1.5}}",
              NULL, 0);
        struct moe_optim o;
        ck_assert_int_eq(optim_init(&o, &cfg, NW, &err), 0);
        float w[NW], w0[NW], g[NW], g0[NW];
        fill_u(w, NW, 30, -1, 1);
        fill_u(g, NW, 31, -2, 2);
        memcpy(w0, w, sizeof w);
        memcpy(g0, g, sizeof g);
        double sq = 0.0;
        for (size_t i = 0; i < NW; i++)
            sq += (double)g[i] * g[i];
        double pre = sqrt(sq);
        ck_assert_double_gt(pre, 1.5); // the clip really applies in the small case
        ck_assert_double_lt(pre, 100.0);
        double ret = moe_optim_step(&o, w, g);
        ck_assert_double_eq_tol(ret, pre, 1e-12 * pre); // the norm before clipping
        double sq2 = 0.0;
        for (size_t i = 0; i < NW; i++) {
            sq2 += (double)g[i] * g[i];
            double expect_g = big ? g0[i] : g0[i] * 1.5 / pre; // same direction, norm clip
            ck_assert_double_eq_tol(g[i], expect_g, 1e-6);
            ck_assert_double_eq_tol(w0[i] - w[i], g[i], 1e-6); // the step used the clipped gradient
        }
        ck_assert_double_eq_tol(sqrt(sq2), big ? pre : 1.5, 1e-5);
        moe_optim_release(&o);
        moe_config_release(&cfg);
    }
    // adamw reports the pre-clip norm too
    struct moe_config cfg;
    parse(&cfg, "{\"optim\": {\"type\": \"adamw\", \"clip\": 0.5}}", NULL, 0);
    struct moe_optim o;
    ck_assert_int_eq(optim_init(&o, &cfg, 2, &err), 0);
    float w[2] = { 0, 0 }, g[2] = { 3, 4 };
    ck_assert_double_eq(moe_optim_step(&o, w, g), 5.0);
    ck_assert_double_eq_tol(g[0], 0.3, 1e-7);
    ck_assert_double_eq_tol(g[1], 0.4, 1e-7);
    moe_optim_release(&o);
    moe_config_release(&cfg);
}
END_TEST

// ---------------------------------------------------------------- learning-rate schedules

// The schedule of a test config (optim.* keys).
static struct moe_optim_cfg sched_cfg(const char *json)
{
    struct moe_config cfg;
    parse(&cfg, json, NULL, 0);
    struct moe_optim_cfg oc;
    moe_optim_cfg_parse(&oc, &cfg);
    moe_config_release(&cfg);
    return oc;
}

// moe_lr_at against the formulas of optim.c at step 0, the end of warmup, mid-decay, the end and the floor.
START_TEST(test_lr_schedule_values)
{
    // constant without warmup: exactly optim.lr at every step (today's runs)
    struct moe_optim_cfg c = sched_cfg("{\"optim\": {\"lr\": 0.0123}}");
    ck_assert_int_eq(c.schedule, MOE_SCHED_CONSTANT);
    ck_assert_int_eq(moe_lr_schedule_uses_length(&c), 0);
    for (uint64_t s = 0; s < 1000; s += 37)
        ck_assert(moe_lr_at(&c, 100, s) == 0.0123);
    // constant with warmup: lr (s + 1)/W, then lr
    c = sched_cfg("{\"optim\": {\"lr\": 0.1, \"warmup_steps\": 4}}");
    ck_assert_double_eq_tol(moe_lr_at(&c, 100, 0), 0.025, 1e-15);
    ck_assert_double_eq_tol(moe_lr_at(&c, 100, 3), 0.1, 1e-15);
    ck_assert(moe_lr_at(&c, 100, 4) == 0.1);
    ck_assert(moe_lr_at(&c, 100, 99) == 0.1);

    // cosine, W = 10, floor 0.01, decay over the run's 110 steps
    c = sched_cfg("{\"optim\": {\"lr\": 0.1, \"min_lr\": 0.01, \"warmup_steps\": 10, \"schedule\": \"cosine\"}}");
    ck_assert_int_eq(c.schedule, MOE_SCHED_COSINE);
    ck_assert_int_eq(moe_lr_schedule_uses_length(&c), 1);
    ck_assert_double_eq_tol(moe_lr_at(&c, 110, 0), 0.01, 1e-15);       // step 0: lr / W
    ck_assert_double_eq_tol(moe_lr_at(&c, 110, 4), 0.05, 1e-15);
    ck_assert_double_eq_tol(moe_lr_at(&c, 110, 9), 0.1, 1e-15);        // last warmup step: the peak
    ck_assert_double_eq_tol(moe_lr_at(&c, 110, 10), 0.1, 1e-15);       // p = 0
    ck_assert_double_eq_tol(moe_lr_at(&c, 110, 60), 0.055, 1e-15);     // p = 1/2: halfway between
    ck_assert_double_eq_tol(moe_lr_at(&c, 110, 35), 0.01 + 0.09 * 0.5 * (1 + cos(M_PI / 4)), 1e-15);
    ck_assert_double_eq_tol(moe_lr_at(&c, 110, 109), 0.01 + 0.09 * 0.5 * (1 + cos(M_PI * 0.99)), 1e-15); // last step
    ck_assert_double_gt(moe_lr_at(&c, 110, 109), 0.01);
    ck_assert(moe_lr_at(&c, 110, 110) == 0.01); // from D on: the floor
    ck_assert(moe_lr_at(&c, 110, 5000) == 0.01);
    for (uint64_t s = 10; s < 110; s++) // non-increasing after warmup
        ck_assert_double_le(moe_lr_at(&c, 110, s + 1), moe_lr_at(&c, 110, s));
    // the run's length does not matter once decay_steps is set
    c.decay_steps = 60;
    ck_assert_int_eq(moe_lr_schedule_uses_length(&c), 0);
    ck_assert_double_eq_tol(moe_lr_at(&c, 7, 35), 0.055, 1e-15);
    ck_assert(moe_lr_at(&c, 1000000, 35) == moe_lr_at(&c, 7, 35));
    ck_assert(moe_lr_at(&c, 7, 60) == 0.01);
    // a run no longer than its warmup: warmup, then the floor
    c.decay_steps = 0;
    ck_assert_double_eq_tol(moe_lr_at(&c, 8, 7), 0.08, 1e-15);
    ck_assert(moe_lr_at(&c, 8, 10) == 0.01);

    // linear to the floor
    c = sched_cfg("{\"optim\": {\"lr\": 0.2, \"min_lr\": 0.02, \"schedule\": \"linear\"}}");
    ck_assert(moe_lr_at(&c, 100, 0) == 0.2); // no warmup: p = 0
    ck_assert_double_eq_tol(moe_lr_at(&c, 100, 50), 0.11, 1e-15);
    ck_assert_double_eq_tol(moe_lr_at(&c, 100, 99), 0.2 - 0.18 * 0.99, 1e-15);
    ck_assert_double_eq_tol(moe_lr_at(&c, 100, 100), 0.02, 1e-15);
    ck_assert_double_eq_tol(moe_lr_at(&c, 100, 300), 0.02, 1e-15);

    // inverse square root (Vaswani et al. 2017, peak-normalised): lr sqrt(W / (s + 1)), floored
    c = sched_cfg("{\"optim\": {\"lr\": 0.1, \"min_lr\": 0.01, \"warmup_steps\": 10, \"schedule\": \"inv_sqrt\"}}");
    ck_assert_int_eq(moe_lr_schedule_uses_length(&c), 0);
    ck_assert_double_eq_tol(moe_lr_at(&c, 5, 0), 0.01, 1e-15);
    ck_assert_double_eq_tol(moe_lr_at(&c, 5, 9), 0.1, 1e-15);
    ck_assert_double_eq_tol(moe_lr_at(&c, 5, 39), 0.05, 1e-15);   // sqrt(10/40)
    ck_assert_double_eq_tol(moe_lr_at(&c, 5, 999), 0.01, 1e-15);  // sqrt(10/1000) = 0.1: at the floor
    ck_assert(moe_lr_at(&c, 5, 99999) == 0.01);                    // below it: floored
}
END_TEST

// The rules between keys: min_lr <= lr, inv_sqrt needs warmup, decay_steps above warmup,
// accumulation only with mini-batches.
START_TEST(test_lr_schedule_rules)
{
    static const struct { const char *json; const char *frag; } bad[] = {
        { "{\"optim\": {\"lr\": 0.01, \"min_lr\": 0.02, \"schedule\": \"cosine\"}}", "'optim.min_lr' (0.02) must not exceed optim.lr (0.01)" },
        { "{\"optim\": {\"schedule\": \"inv_sqrt\"}}", "'inv_sqrt' needs optim.warmup_steps >= 1" },
        { "{\"optim\": {\"schedule\": \"linear\", \"warmup_steps\": 10, \"decay_steps\": 10}}", "'optim.decay_steps' (10) must exceed optim.warmup_steps (10)" },
        { "{\"optim\": {\"type\": \"gd\"}, \"train\": {\"accumulate\": 2}}", "'train.accumulate' (2) needs mini-batches: optim.type 'gd'" },
        { "{\"optim\": {\"batch_size\": 0}, \"train\": {\"accumulate\": 4}}", "optim.batch_size 0" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        struct moe_config cfg;
        parse(&cfg, bad[i].json, NULL, 0);
        struct moe_run_cfg rc;
        struct moe_err err;
        ck_assert_int_eq(moe_run_cfg_parse(&rc, &cfg, &err), MOE_ECONFIG);
        ck_assert_msg(strstr(err.msg, bad[i].frag), "%s: %s", bad[i].json, err.msg);
        moe_config_release(&cfg);
    }
    static const char *const good[] = {
        "{\"optim\": {\"lr\": 0.01, \"min_lr\": 0.01, \"schedule\": \"cosine\"}}",
        "{\"optim\": {\"schedule\": \"inv_sqrt\", \"warmup_steps\": 1}}",
        "{\"optim\": {\"schedule\": \"constant\", \"warmup_steps\": 100}}",
        "{\"optim\": {\"schedule\": \"linear\", \"warmup_steps\": 10, \"decay_steps\": 11}}",
        "{\"optim\": {\"type\": \"sgd\", \"batch_size\": 8}, \"train\": {\"accumulate\": 1000000}}",
        "{\"optim\": {\"type\": \"gd\"}, \"train\": {\"accumulate\": 1}}",
    };
    for (size_t i = 0; i < sizeof good / sizeof *good; i++) {
        struct moe_config cfg;
        parse(&cfg, good[i], NULL, 0);
        struct moe_run_cfg rc;
        struct moe_err err;
        ck_assert_msg(moe_run_cfg_parse(&rc, &cfg, &err) == 0, "%s: %s", good[i], err.msg);
        moe_run_cfg_release(&rc);
        moe_config_release(&cfg);
    }
}
END_TEST

// ---------------------------------------------------------------- the training loop

struct run {
    int rc;
    struct moe_err err;
    struct moe_train_result res;
    struct moe_eval_row *rows; // every train/test row the callback received, in order (gate_mean cleared)
    size_t n_rows, cap;
    uint64_t batch_steps[256]; // step of each split=batch row (training-mode means), in order
    size_t batch_n[256];       // rows each of them averaged
    size_t n_batch;
    float *params;             // trained parameters (copy)
    size_t numel;
    size_t n_train, n_test;
};

static int record(void *ctx, const struct moe_eval_row *row, struct moe_err *err)
{
    (void)err;
    struct run *r = ctx;
    if (strcmp(row->split, "batch") == 0) {
        if (r->n_batch < 256) {
            r->batch_steps[r->n_batch] = row->step;
            r->batch_n[r->n_batch] = row->n;
        }
        r->n_batch++;
        ck_assert(isfinite(row->loss));
        return 0;
    }
    if (r->n_rows == r->cap) {
        r->cap = r->cap ? 2 * r->cap : 64;
        r->rows = realloc(r->rows, r->cap * sizeof *r->rows);
        ck_assert_ptr_nonnull(r->rows);
    }
    if (row->gate_mean) { // the gate means are a distribution over experts
        double s = 0.0;
        for (size_t e = 0; e < row->n_expert; e++)
            s += row->gate_mean[e];
        ck_assert_double_eq_tol(s, 1.0, 1e-5);
    }
    r->rows[r->n_rows] = *row;
    r->rows[r->n_rows].gate_mean = NULL;
    r->n_rows++;
    return 0;
}

static void run_free(struct run *r)
{
    free(r->rows);
    free(r->params);
    memset(r, 0, sizeof *r);
}

// What the step hook saw (test_train_step_hook).
struct step_acc {
    uint64_t calls, rows, last_epoch, spe, epochs;
    double loss_sum, loss_n;
    double epoch1_sum, epoch1_n; // the steps of epoch 1
    int bad;                     // a call whose step was not calls + 1, or epoch went back
};
static void on_step(void *ctx, const struct moe_train_step_info *s)
{
    struct step_acc *a = ctx;
    a->calls++;
    a->bad |= s->step != a->calls || s->epoch < a->last_epoch || s->epoch < 1 || s->tokens_per_row != 0;
    a->last_epoch = s->epoch;
    a->spe = s->steps_per_epoch;
    a->epochs = s->epochs;
    a->rows += s->rows;
    a->loss_sum += s->loss_sum;
    a->loss_n += s->loss_n;
    if (s->epoch == 1) {
        a->epoch1_sum += s->loss_sum;
        a->epoch1_n += s->loss_n;
    }
}
static struct step_acc *g_steps; // set: run_train passes on_step as the step hook

// Parse json + overrides, load the data, build and initialise the model (seed =
// train.seed), train it with the recording callback (and g_steps's step hook). Failures of moe_train are
// returned in r->rc / r->err; anything before it must succeed.
static void run_train(const char *json, const char *const *ovs, size_t n_ovs, struct run *r)
{
    memset(r, 0, sizeof *r);
    struct moe_config cfg;
    parse(&cfg, json, ovs, n_ovs);
    struct moe_data data;
    struct moe_err err;
    int rc = moe_data_load(&data, &cfg, &err);
    ck_assert_msg(rc == 0, "data: %s", err.msg);
    r->n_train = data.train.n;
    r->n_test = data.test.n;
    size_t max_batch = data.train.n > data.test.n ? data.train.n : data.test.n;
    struct moe_model m;
    rc = moe_model_create(&m, &cfg, NULL, data.train.task, data.train.n_in, data.train.n_out, max_batch, &err);
    ck_assert_msg(rc == 0, "model: %s", err.msg);
    moe_model_init_weights(&m, (uint64_t)moe_cfg_int(&cfg, "train.seed"));
    if (g_steps) {
        struct moe_train_hooks h = { .row = record, .ctx = r, .step = on_step, .step_ctx = g_steps };
        r->rc = moe_train_ex(&m, &data, &cfg, &h, &r->res, &r->err);
    } else {
        r->rc = moe_train(&m, &data, &cfg, record, r, &r->res, &r->err);
    }
    r->numel = m.params.numel;
    r->params = malloc(r->numel * sizeof *r->params);
    ck_assert_ptr_nonnull(r->params);
    memcpy(r->params, m.params.data, r->numel * sizeof *r->params);
    moe_model_release(&m);
    moe_data_release(&data);
    moe_config_release(&cfg);
}

// A small mixture of linear experts on 4 "regions" (2 inputs, 2 outputs).
static const char *const MIX =
    "{\"data\": {\"source\": \"synthetic\", \"synthetic\": {\"kind\": \"regions\", \"n_train\": 1000,"
    " \"n_test\": 500, \"n_in\": 2, \"n_out\": 2, \"n_regions\": 4, \"noise\": 0.1, \"spread\": 0.5}},"
    " \"model\": {\"type\": \"mixture\", \"n_expert\": 4, \"expert\": \"linear\"},"
    " \"loss\": {\"type\": \"nll\"},"
    " \"optim\": {\"type\": \"adamw\", \"lr\": 0.05, \"batch_size\": 64},"
    " \"train\": {\"seed\": 1, \"epochs\": 10}}";

static const struct moe_eval_row *find_row(const struct run *r, uint64_t epoch, const char *split)
{
    for (size_t i = 0; i < r->n_rows; i++)
        if (r->rows[i].epoch == epoch && strcmp(r->rows[i].split, split) == 0)
            return &r->rows[i];
    return NULL;
}

START_TEST(test_train_reduces_loss)
{
    struct run r;
    run_train(MIX, NULL, 0, &r);
    ck_assert_msg(r.rc == 0, "train: %s", r.err.msg);
    const struct moe_eval_row *first = find_row(&r, 0, "train"), *last = find_row(&r, 10, "train");
    ck_assert_ptr_nonnull(first);
    ck_assert_ptr_nonnull(last);
    ck_assert(isfinite(first->loss) && first->loss > 0.0);
    ck_assert_msg(r.res.final_train.loss < first->loss / 2, "final train loss %g vs initial %g",
                  r.res.final_train.loss, first->loss);
    ck_assert_double_eq(r.res.final_train.loss, last->loss);
    ck_assert_double_lt(r.res.final_train.mse, first->mse / 2);
    ck_assert_double_lt(r.res.final_test.loss, find_row(&r, 0, "test")->loss / 2);
    ck_assert_uint_eq(r.res.epochs, 10);
    ck_assert_int_eq(r.res.criterion_epoch, -1);
    run_free(&r);
}
END_TEST

// The step hook: called once per step, in order, with the run's shape and
// the steps' losses; training with it is bit-identical to training without.
START_TEST(test_train_step_hook)
{
    struct run ref, r;
    run_train(MIX, NULL, 0, &ref);
    ck_assert_msg(ref.rc == 0, "train: %s", ref.err.msg);
    struct step_acc a = { 0 };
    g_steps = &a;
    run_train(MIX, NULL, 0, &r);
    g_steps = NULL;
    ck_assert_msg(r.rc == 0, "train: %s", r.err.msg);
    ck_assert_int_eq(a.bad, 0);
    ck_assert_uint_eq(a.calls, r.res.steps);
    ck_assert_uint_eq(a.spe, 16); // 1000 rows in batches of 64
    ck_assert_uint_eq(a.epochs, 10);
    ck_assert_uint_eq(a.calls, a.spe * a.epochs);
    ck_assert_uint_eq(a.last_epoch, 10);
    ck_assert_uint_eq(a.rows, 10 * 1000);
    ck_assert_double_eq(a.loss_n, 10 * 1000);
    // epoch 1's steps are the first batch row's (train.log_every 0: one per evaluation)
    ck_assert_uint_ge(r.n_batch, 1);
    ck_assert_uint_eq(r.batch_steps[0], 16);
    ck_assert_double_eq(a.epoch1_n, 1000);
    ck_assert_uint_eq(r.batch_n[0], 1000);
    ck_assert(isfinite(a.loss_sum));
    ck_assert_uint_eq(r.numel, ref.numel);
    ck_assert_msg(memcmp(r.params, ref.params, r.numel * sizeof *r.params) == 0, "the step hook changed the weights");
    ck_assert_uint_eq(r.n_rows, ref.n_rows);
    for (size_t i = 0; i < r.n_rows; i++)
        ck_assert_msg(r.rows[i].loss == ref.rows[i].loss, "row %zu: loss %.17g vs %.17g", i, r.rows[i].loss,
                      ref.rows[i].loss);
    run_free(&ref);
    run_free(&r);
}
END_TEST

// What the step hook saw of the learning rate (test_train_accumulate).
struct lr_log {
    double lr[512];
    uint64_t n, spe;
    size_t rows;
};
static void on_step_lr(void *ctx, const struct moe_train_step_info *s)
{
    struct lr_log *l = ctx;
    if (l->n < 512)
        l->lr[l->n] = s->lr;
    l->n++;
    l->spe = s->steps_per_epoch;
    l->rows += s->rows;
}

// Train json + ovs with the step hook logging learning rates; r as run_train.
static void run_train_lr(const char *json, const char *const *ovs, size_t n_ovs, struct run *r, struct lr_log *l)
{
    memset(r, 0, sizeof *r);
    memset(l, 0, sizeof *l);
    struct moe_config cfg;
    parse(&cfg, json, ovs, n_ovs);
    struct moe_data data;
    struct moe_err err;
    ck_assert_msg(moe_data_load(&data, &cfg, &err) == 0, "data: %s", err.msg);
    size_t max_batch = data.train.n > data.test.n ? data.train.n : data.test.n;
    struct moe_model m;
    ck_assert_msg(moe_model_create(&m, &cfg, NULL, data.train.task, data.train.n_in, data.train.n_out, max_batch,
                                   &err) == 0, "model: %s", err.msg);
    moe_model_init_weights(&m, (uint64_t)moe_cfg_int(&cfg, "train.seed"));
    struct moe_train_hooks h = { .row = record, .ctx = r, .step = on_step_lr, .step_ctx = l };
    r->rc = moe_train_ex(&m, &data, &cfg, &h, &r->res, &r->err);
    r->numel = m.params.numel;
    r->params = malloc(r->numel * sizeof *r->params);
    ck_assert_ptr_nonnull(r->params);
    memcpy(r->params, m.params.data, r->numel * sizeof *r->params);
    moe_model_release(&m);
    moe_data_release(&data);
    moe_config_release(&cfg);
}

// A small classifier on 1000 synthetic rows, for gradient accumulation.
static const char *const ACC_MLP =
    "{\"data\": {\"source\": \"synthetic\", \"synthetic\": {\"kind\": \"classes\", \"n_train\": 1000,"
    " \"n_test\": 200, \"n_in\": 6, \"n_regions\": 4}},"
    " \"model\": {\"type\": \"mlp\", \"n_hidden\": 16, \"activation\": \"tanh\"}, \"loss\": {\"type\": \"ce\"},"
    " \"train\": {\"seed\": 3, \"epochs\": 2}}";
static const char *const ACC_MOE =
    "{\"data\": {\"source\": \"synthetic\", \"synthetic\": {\"kind\": \"classes\", \"n_train\": 1000,"
    " \"n_test\": 200, \"n_in\": 6, \"n_regions\": 4}},"
    " \"model\": {\"type\": \"mlp-moe\", \"n_embd\": 8, \"n_layer\": 2, \"n_ff\": 8, \"n_expert\": 4,"
    " \"n_expert_used\": 2},"
    " \"moe\": {\"router\": \"softmax\", \"aux_loss\": \"none\", \"capacity_factor\": 0},"
    " \"train\": {\"seed\": 3, \"epochs\": 2}}";

// Gradient accumulation: batch B x N with accumulate 1 and batch B with
// accumulate N take the same steps on the same rows, and end with the same
// weights up to float rounding (the gradients are the same mean, summed in
// another order): |a - b| <= 1e-6 max(1, |b|) over every weight after 28 to
// 32 steps (measured: at most 1.8e-7, a few float ulps). Where that
// must hold: objectives that are means over rows (mlp; mlp-moe without a
// balancing loss, dropless, a router without noise). N = 4 divides the
// batches of an epoch but the last; N = 3 with B = 24 ends each epoch with a
// micro-batch of 16 rows (1000 = 13 x 72 + 64). The learning rate the steps
// report is moe_lr_at's, from the same schedule in both runs.
START_TEST(test_train_accumulate)
{
    static const struct {
        const char *json, *optim, *what;
        double tol;
    } cases[] = {
        { ACC_MLP, "optim.type=\"sgd\"", "mlp, sgd", 1e-6 },
        { ACC_MLP, "optim.type=\"adamw\"", "mlp, adamw", 1e-6 },
        { ACC_MOE, "optim.type=\"adamw\"", "mlp-moe dropless, no aux loss, adamw", 1e-6 },
    };
    static const struct { const char *big, *small, *accum; } shapes[] = {
        { "optim.batch_size=64", "optim.batch_size=16", "train.accumulate=4" },
        { "optim.batch_size=72", "optim.batch_size=24", "train.accumulate=3" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        for (size_t j = 0; j < sizeof shapes / sizeof *shapes; j++) {
            const char *sched[] = { "optim.schedule=\"cosine\"", "optim.warmup_steps=5", "optim.min_lr=0.001",
                                    "optim.lr=0.01" };
            const char *a_ovs[] = { cases[i].optim, shapes[j].big, sched[0], sched[1], sched[2], sched[3] };
            const char *b_ovs[] = { cases[i].optim, shapes[j].small, shapes[j].accum, sched[0], sched[1], sched[2],
                                    sched[3] };
            struct run a, b;
            struct lr_log la, lb;
            run_train_lr(cases[i].json, a_ovs, 6, &a, &la);
            run_train_lr(cases[i].json, b_ovs, 7, &b, &lb);
            ck_assert_msg(a.rc == 0 && b.rc == 0, "%s: %s / %s", cases[i].what, a.err.msg, b.err.msg);
            uint64_t spe = j == 0 ? 16 : 14;
            ck_assert_uint_eq(a.res.steps, 2 * spe);
            ck_assert_uint_eq(b.res.steps, 2 * spe);
            ck_assert_uint_eq(b.res.steps_per_epoch, spe);
            ck_assert_uint_eq(b.res.run_steps, 2 * spe);
            ck_assert_uint_eq(lb.spe, spe);
            ck_assert_uint_eq(lb.n, 2 * spe);
            ck_assert_uint_eq(lb.rows, 2000);
            ck_assert_uint_eq(a.n_batch, b.n_batch);
            for (size_t k = 0; k < a.n_batch && k < 256; k++) { // one batch row per epoch, at the same step
                ck_assert_uint_eq(a.batch_steps[k], b.batch_steps[k]);
                ck_assert_uint_eq(a.batch_n[k], b.batch_n[k]);
            }
            for (uint64_t k = 0; k < lb.n; k++) {
                ck_assert(la.lr[k] == lb.lr[k]);
                struct moe_optim_cfg oc = { .lr = 0.01, .min_lr = 0.001, .warmup_steps = 5,
                                            .schedule = MOE_SCHED_COSINE };
                ck_assert(lb.lr[k] == moe_lr_at(&oc, 2 * spe, k));
            }
            ck_assert_double_eq(b.res.lr_last, lb.lr[lb.n - 1]);
            ck_assert_uint_eq(a.numel, b.numel);
            double worst = 0.0;
            size_t at = 0;
            for (size_t k = 0; k < a.numel; k++) {
                double d = fabs((double)a.params[k] - b.params[k]) / fmax(1.0, fabs((double)a.params[k]));
                if (isnan(d) || d > worst) {
                    worst = d, at = k;
                    if (isnan(d))
                        break; // a NaN is the worst there is
                }
            }
            ck_assert_msg(worst <= cases[i].tol, "%s, %s x %s: weight %zu differs by %g (tolerance %g)",
                          cases[i].what, shapes[j].small, shapes[j].accum, at, worst, cases[i].tol);
            // the evaluations agree as closely
            ck_assert_uint_eq(a.n_rows, b.n_rows);
            for (size_t k = 0; k < a.n_rows; k++)
                ASSERT_REL(a.rows[k].loss, b.rows[k].loss, 1e-4, "%s: row %zu loss %g vs %g", cases[i].what, k,
                           a.rows[k].loss, b.rows[k].loss);
            run_free(&a);
            run_free(&b);
        }
    }
}
END_TEST

START_TEST(test_train_criterion)
{
    // Reference run without a criterion, every epoch logged.
    const char *ref_ovs[] = { "train.epochs=20", "train.eval_every=1" };
    struct run ref;
    run_train(MIX, ref_ovs, 2, &ref);
    ck_assert_msg(ref.rc == 0, "train: %s", ref.err.msg);
    ck_assert_int_eq(ref.res.criterion_epoch, -1);
    ck_assert_uint_eq(ref.res.epochs, 20);
    // Threshold: the training loss reached at epoch 6; the expected stop is the first
    // epoch >= 1 whose training loss is at or below it (computed, not assumed).
    double v = find_row(&ref, 6, "train")->loss;
    int64_t expect = -1;
    for (uint64_t e = 1; e <= 20 && expect < 0; e++)
        if (find_row(&ref, e, "train")->loss <= v)
            expect = (int64_t)e;
    ck_assert_int_ge(expect, 2); // so that "the epoch before did not" means something
    ck_assert_int_le(expect, 6);

    // Same run with the criterion on, logging only every 4th epoch: the criterion
    // epoch is logged anyway and training stops there.
    char ov_val[64];
    snprintf(ov_val, sizeof ov_val, "train.criterion_value=%.17g", v);
    const char *ovs[] = { "train.epochs=20", "train.eval_every=4", "train.criterion=\"loss\"", ov_val };
    struct run r;
    run_train(MIX, ovs, 4, &r);
    ck_assert_msg(r.rc == 0, "train: %s", r.err.msg);
    ck_assert_int_eq(r.res.criterion_epoch, expect);
    ck_assert_uint_eq(r.res.epochs, (uint64_t)expect);
    ck_assert_uint_ge(r.n_rows, 2);
    const struct moe_eval_row *tr = &r.rows[r.n_rows - 2], *te = &r.rows[r.n_rows - 1];
    ck_assert_uint_eq(tr->epoch, (uint64_t)expect);
    ck_assert_str_eq(tr->split, "train");
    ck_assert_uint_eq(te->epoch, (uint64_t)expect);
    ck_assert_str_eq(te->split, "test");
    ck_assert_double_le(tr->loss, v);                                   // the logged row meets it
    ck_assert_double_eq(tr->loss, find_row(&ref, expect, "train")->loss); // same trajectory
    ck_assert_double_gt(find_row(&ref, expect - 1, "train")->loss, v);  // the epoch before did not
    ck_assert_double_eq(r.res.final_train.loss, tr->loss);
    ck_assert_uint_eq(r.res.final_train.epoch, (uint64_t)expect);
    // rows before the stop: only the eval_every schedule (epoch 0, 4, ...)
    for (size_t i = 0; i + 2 < r.n_rows; i++)
        ck_assert_uint_eq(r.rows[i].epoch % 4, 0);
    run_free(&r);

    // A criterion that is never met (the nll is >= 0): runs every epoch, reports -1.
    const char *never[] = { "train.epochs=3", "train.criterion=\"loss\"", "train.criterion_value=-1" };
    run_train(MIX, never, 3, &r);
    ck_assert_int_eq(r.rc, 0);
    ck_assert_int_eq(r.res.criterion_epoch, -1);
    ck_assert_uint_eq(r.res.epochs, 3);
    run_free(&r);
    // accuracy criterion on classes: the first epoch meeting it, with a row that meets it
    const char *cls[] = { "data.synthetic.kind=\"classes\"", "loss.type=\"nll-cat\"", "train.criterion=\"accuracy\"",
                          "train.criterion_value=0.9", "train.epochs=50" };
    run_train(MIX, cls, 5, &r);
    ck_assert_msg(r.rc == 0, "train: %s", r.err.msg);
    ck_assert_int_ge(r.res.criterion_epoch, 1);
    ck_assert_double_ge(find_row(&r, (uint64_t)r.res.criterion_epoch, "train")->accuracy, 0.9);
    for (size_t i = 0; i < r.n_rows; i++)
        if (r.rows[i].epoch >= 1 && r.rows[i].epoch < (uint64_t)r.res.criterion_epoch &&
            strcmp(r.rows[i].split, "train") == 0)
            ck_assert_double_lt(r.rows[i].accuracy, 0.9);
    run_free(&r);
    run_free(&ref);
}
END_TEST

START_TEST(test_train_reproducible)
{
    struct run a, b;
    run_train(MIX, NULL, 0, &a);
    run_train(MIX, NULL, 0, &b);
    ck_assert_int_eq(a.rc, 0);
    ck_assert_int_eq(b.rc, 0);
    ck_assert_uint_eq(a.numel, b.numel);
    ck_assert_mem_eq(a.params, b.params, a.numel * sizeof(float));
    ck_assert_uint_eq(a.n_rows, b.n_rows);
    for (size_t i = 0; i < a.n_rows; i++) {
        ck_assert_double_eq(a.rows[i].loss, b.rows[i].loss);
        ck_assert_double_eq(a.rows[i].mse, b.rows[i].mse);
    }
    // another seed gives other parameters (the seed is really used)
    const char *ov[] = { "train.seed=2" };
    struct run c;
    run_train(MIX, ov, 1, &c);
    ck_assert_int_eq(c.rc, 0);
    ck_assert_uint_eq(c.numel, a.numel);
    ck_assert(memcmp(a.params, c.params, a.numel * sizeof(float)) != 0);
    run_free(&a);
    run_free(&b);
    run_free(&c);
}
END_TEST

START_TEST(test_train_threads_identical)
{
    // Big enough that the expert GEMMs use every thread (moe_gemm keeps products
    // under 2 * 128^3 flops on one thread): 64 inputs, experts with 128 hidden
    // units, batches of 512 -> 512 x 128 x 64 products.
    const char *ovs[] = { "data.synthetic.n_in=64", "data.synthetic.n_train=2048", "model.n_expert=4",
                          "model.expert=\"mlp\"", "model.n_expert_hidden=128", "optim.batch_size=512",
                          "train.epochs=2" };
    struct moe_err err;
    struct run r1, r2;
    ck_assert_int_eq(moe_blas_init(1, &err), 0);
    ck_assert_int_eq(moe_blas_get_info()->threads, 1);
    run_train(MIX, ovs, 7, &r1);
    ck_assert_int_eq(moe_blas_init(2, &err), 0);
    ck_assert_int_eq(moe_blas_get_info()->threads, 2);
    run_train(MIX, ovs, 7, &r2);
    ck_assert_int_eq(moe_blas_init(MAIN_THREADS, &err), 0);
    ck_assert_int_eq(r1.rc, 0);
    ck_assert_int_eq(r2.rc, 0);
    ck_assert_uint_eq(r1.numel, r2.numel);
    ck_assert_mem_eq(r1.params, r2.params, r1.numel * sizeof(float));
    ck_assert_double_eq(r1.res.final_train.loss, r2.res.final_train.loss);
    ck_assert_double_eq(r1.res.final_test.loss, r2.res.final_test.loss);
    run_free(&r1);
    run_free(&r2);
}
END_TEST

START_TEST(test_train_diverges)
{
    // Full-batch gd with a huge step on noisy regression: the loss overflows.
    const char *ovs[] = { "optim.type=\"gd\"", "optim.lr=1000", "data.synthetic.noise=100", "loss.type=\"cooperative\"",
                          "train.epochs=200" };
    struct run r;
    run_train(MIX, ovs, 5, &r);
    ck_assert_int_eq(r.rc, MOE_ENUMERIC);
    ck_assert_int_eq(r.err.code, MOE_ENUMERIC);
    ck_assert_msg(strstr(r.err.msg, "step") || strstr(r.err.msg, "epoch"), "message: %s", r.err.msg);
    ck_assert_uint_lt(r.res.steps, 200); // failed early, did not run to the end
    run_free(&r);
}
END_TEST

START_TEST(test_train_eval_rows)
{
    // Every epoch: rows epoch 0 train, epoch 0 test, epoch 1 train, ... with the
    // steps taken so far = epoch * ceil(n_train / batch_size).
    const char *ovs[] = { "data.synthetic.n_train=1000", "optim.batch_size=64", "train.epochs=5",
                          "train.eval_every=1" };
    struct run r;
    run_train(MIX, ovs, 4, &r);
    ck_assert_int_eq(r.rc, 0);
    const uint64_t per_epoch = (1000 + 63) / 64; // 16
    ck_assert_uint_eq(r.n_rows, 2 * 6);
    for (size_t i = 0; i < r.n_rows; i++) {
        const struct moe_eval_row *row = &r.rows[i];
        ck_assert_uint_eq(row->epoch, i / 2);
        ck_assert_str_eq(row->split, i % 2 ? "test" : "train");
        ck_assert_uint_eq(row->step, (i / 2) * per_epoch);
        ck_assert_uint_eq(row->n, i % 2 ? r.n_test : r.n_train);
        ck_assert_uint_eq(row->n_expert, 4);
        ck_assert(isfinite(row->loss) && isfinite(row->mse) && isfinite(row->gate_entropy));
        ck_assert(isnan(row->accuracy)); // regression
        ck_assert_double_le(row->gate_entropy, log(4.0) + 1e-6);
    }
    ck_assert_double_eq_tol(r.rows[0].gate_entropy, log(4.0), 1e-6); // the gate starts at equal mixing
    ck_assert_uint_eq(r.res.steps, 5 * per_epoch);
    // train.log_every 0: one batch row before each evaluation after epoch 0, over that epoch's 1000 rows
    ck_assert_uint_eq(r.n_batch, 5);
    for (size_t i = 0; i < r.n_batch; i++) {
        ck_assert_uint_eq(r.batch_steps[i], (i + 1) * per_epoch);
        ck_assert_uint_eq(r.batch_n[i], 1000);
    }
    run_free(&r);

    // train.log_every 5: a batch row every 5 steps, each over 5 batches of 64 rows; eval rows unchanged
    const char *ovs3[] = { "data.synthetic.n_train=1000", "optim.batch_size=64", "train.epochs=2",
                           "train.eval_every=1", "train.log_every=5" };
    run_train(MIX, ovs3, 5, &r);
    ck_assert_int_eq(r.rc, 0);
    ck_assert_uint_eq(r.n_rows, 2 * 3);
    ck_assert_uint_eq(r.n_batch, 2 * per_epoch / 5); // steps 5, 10, ..., 30
    for (size_t i = 0; i < r.n_batch; i++) {
        ck_assert_uint_eq(r.batch_steps[i], 5 * (i + 1));
        ck_assert_uint_le(r.batch_n[i], 5 * 64);
        ck_assert_uint_ge(r.batch_n[i], 4 * 64 + 1000 % 64);
    }
    run_free(&r);

    // eval_every 3 over 7 epochs: epochs 0, 3, 6 and the last, 7. Full-batch gd: 1 step per epoch.
    const char *ovs2[] = { "train.epochs=7", "train.eval_every=3", "optim.type=\"gd\"", "optim.lr=0.1" };
    run_train(MIX, ovs2, 4, &r);
    ck_assert_int_eq(r.rc, 0);
    const uint64_t epochs[] = { 0, 3, 6, 7 };
    ck_assert_uint_eq(r.n_rows, 8);
    for (size_t i = 0; i < r.n_rows; i++) {
        ck_assert_uint_eq(r.rows[i].epoch, epochs[i / 2]);
        ck_assert_str_eq(r.rows[i].split, i % 2 ? "test" : "train");
        ck_assert_uint_eq(r.rows[i].step, epochs[i / 2]);
    }
    ck_assert_uint_eq(r.res.steps, 7);
    run_free(&r);
}
END_TEST

// The 1991 experiment's shape on synthetic data: 4 linear experts trained with the
// nll objective on 4 regions end up dividing the regions among themselves, which
// can be checked against the truth: the mutual information between the top-gate
// expert and the true region (at most log2 4 = 2 bits) exceeds 1 bit, and at least
// two experts are in use. At epoch 0 the gate is zero, so MI is exactly 0.
START_TEST(test_train_experts_specialise)
{
    for (int seed = 1; seed <= 3; seed++) {
        char s[32];
        snprintf(s, sizeof s, "train.seed=%d", seed);
        const char *ovs[] = { s, "train.epochs=30", "train.eval_every=10" };
        struct run r;
        run_train(MIX, ovs, 3, &r);
        ck_assert_msg(r.rc == 0, "seed %d: %s", seed, r.err.msg);
        const struct moe_eval_row *start = find_row(&r, 0, "train"), *end = find_row(&r, 30, "train");
        ck_assert_ptr_nonnull(start);
        ck_assert_ptr_nonnull(end);
        ck_assert_double_eq(start->expert_region_mi, 0.0);
        ck_assert_double_eq(end->expert_region_mi, r.res.final_train.expert_region_mi);
        ck_assert_msg(r.res.final_train.expert_region_mi > 1.0, "seed %d: expert-region MI %g bits", seed,
                      r.res.final_train.expert_region_mi);
        ck_assert_double_le(r.res.final_train.expert_region_mi, 2.0 + 1e-9);
        ck_assert_msg(r.res.final_train.active_experts >= 2, "seed %d: %g active experts", seed,
                      r.res.final_train.active_experts);
        run_free(&r);
    }
}
END_TEST

int main(void)
{
    if (moe_test_init_blas(MAIN_THREADS))
        return 1;
    Suite *s = suite_create("train");
    TCase *tc = tcase_create("train");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_optim_gd);
    tcase_add_test(tc, test_optim_sgd_momentum);
    tcase_add_test(tc, test_optim_adamw);
    tcase_add_test(tc, test_optim_clip);
    tcase_add_test(tc, test_lr_schedule_values);
    tcase_add_test(tc, test_lr_schedule_rules);
    tcase_add_test(tc, test_train_reduces_loss);
    tcase_add_test(tc, test_train_criterion);
    tcase_add_test(tc, test_train_reproducible);
    tcase_add_test(tc, test_train_threads_identical);
    tcase_add_test(tc, test_train_diverges);
    tcase_add_test(tc, test_train_eval_rows);
    tcase_add_test(tc, test_train_step_hook);
    tcase_add_test(tc, test_train_accumulate);
    tcase_add_test(tc, test_train_experts_specialise);
    suite_add_tcase(s, tc);
    return moe_test_run(s);
}
