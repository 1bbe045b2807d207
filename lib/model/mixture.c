// mixture.c: the 1991 adaptive mixture of local experts. A softmax gate on the
// input weighs E experts (linear, or one hidden layer); every expert runs on
// every row; the objective is one of the 1991 losses (moe/mixture_loss.h).
// Not a sparse MoE layer: nothing is dispatched or dropped here.
// reference: Jacobs, Jordan, Nowlan & Hinton, Neural Computation 3(1), 1991.
// T = rows, D = n_in, O = n_out, E = n_expert, H = n_expert_hidden.
//
// Tensors (docs/checkpoint.md):
//   gate.weight (E, D), gate.bias (E)              zero at init: equal mixing
//   linear experts:  experts.weight (E, O, D), experts.bias (E, O)
//   hidden experts:  experts.w1 (E, H, D), experts.b1 (E, H), experts.w2 (E, O, H), experts.b2 (E, O)
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/params.h"
#include "model/model.h"
#include "moe/mixture_loss.h"
#include "nn/nn.h"

struct mixture {
    size_t D, O, E, H; // H = 0 for linear experts
    enum moe_act act;
    enum moe_mix_loss loss;
    int gate_max;      // predict with the top-gate expert instead of the blend
    float init_scale;
    int i_gw, i_gb, i_w1, i_b1, i_w2, i_b2; // i_w1/i_b1 unused (-1) for linear experts
    // scratch, sized for max_batch rows
    float *z, *p, *post;   // (T, E)
    float *o;              // (T, E, O)
    float *hid;            // (E, T, H)
    float *dz;             // (T, E)
    float *dout;           // (T, E, O)
    float *dhid, *dpre;    // (T, H)
    float *target;         // (T, O) one-hot targets for classes under squared-error losses
    float *pred;           // (T, O)
};

static void mixture_release(struct moe_model *m)
{
    free(m->impl); // the buffers belong to the model's plan
    m->impl = NULL;
}

static void mixture_init_weights(struct moe_model *m, uint64_t seed)
{
    struct mixture *mx = m->impl;
    struct moe_params *p = &m->params;
    // Gate at zero: every expert starts with mixing proportion 1/E (the paper's start).
    memset(moe_params_data(p, mx->i_gw), 0, p->t[mx->i_gw].numel * sizeof(float));
    memset(moe_params_data(p, mx->i_gb), 0, p->t[mx->i_gb].numel * sizeof(float));
    if (mx->H)
        moe_init_uniform(p, mx->i_w1, seed, mx->init_scale);
    moe_init_uniform(p, mx->i_w2, seed, mx->init_scale);
    if (mx->H)
        memset(moe_params_data(p, mx->i_b1), 0, p->t[mx->i_b1].numel * sizeof(float));
    memset(moe_params_data(p, mx->i_b2), 0, p->t[mx->i_b2].numel * sizeof(float));
}

static void prediction(const struct mixture *mx, float *pred, size_t T)
{
    size_t E = mx->E, O = mx->O;
    for (size_t t = 0; t < T; t++) {
        const float *pt = mx->p + t * E, *ot = mx->o + t * E * O;
        float *yt = pred + t * O;
        memset(yt, 0, O * sizeof *yt);
        size_t best = 0;
        for (size_t e = 1; e < E; e++)
            if (pt[e] > pt[best])
                best = e;
        for (size_t e = 0; e < E; e++) {
            if (mx->gate_max && e != best)
                continue;
            float w = mx->gate_max ? 1.0f : pt[e];
            if (mx->loss == MOE_MIX_NLL_CAT) {
                // experts output class logits: blend their class probabilities
                float mmax = ot[e * O];
                for (size_t k = 1; k < O; k++)
                    mmax = ot[e * O + k] > mmax ? ot[e * O + k] : mmax;
                double s = 0.0;
                for (size_t k = 0; k < O; k++)
                    s += expf(ot[e * O + k] - mmax);
                for (size_t k = 0; k < O; k++)
                    yt[k] += w * (float)(expf(ot[e * O + k] - mmax) / s);
            } else {
                for (size_t k = 0; k < O; k++)
                    yt[k] += w * ot[e * O + k];
            }
        }
    }
}

static int mixture_run(struct moe_model *m, const struct moe_batch *b, int with_grad, struct moe_stats *stats,
                       struct moe_err *err)
{
    struct mixture *mx = m->impl;
    struct moe_params *p = &m->params;
    size_t T = b->n, D = mx->D, O = mx->O, E = mx->E, H = mx->H;
    const float *target;
    int rc = moe_model_batch_targets(m, b, mx->target, &target, err);
    if (rc || T == 0)
        return rc;

    // forward: gate
    moe_linear_forward(mx->z, E, b->x, D, moe_params_data(p, mx->i_gw), moe_params_data(p, mx->i_gb), T, D, E);
    moe_softmax_forward(mx->p, NULL, mx->z, T, E);
    // forward: experts, one GEMM per expert writing its column block of o (T, E, O)
    for (size_t e = 0; e < E; e++) {
        const float *w2 = moe_params_data(p, mx->i_w2) + e * O * (H ? H : D);
        const float *b2 = moe_params_data(p, mx->i_b2) + e * O;
        if (H) {
            float *hid = mx->hid + e * T * H;
            moe_linear_forward(hid, H, b->x, D, moe_params_data(p, mx->i_w1) + e * H * D,
                               moe_params_data(p, mx->i_b1) + e * H, T, D, H);
            moe_act_forward(mx->act, hid, hid, T * H);
            moe_linear_forward(mx->o + e * O, E * O, hid, H, w2, b2, T, H, O);
        } else {
            moe_linear_forward(mx->o + e * O, E * O, b->x, D, w2, b2, T, D, O);
        }
    }
    if (with_grad) {
        memset(mx->dz, 0, T * E * sizeof(float));
        memset(mx->dout, 0, T * E * O * sizeof(float));
    }
    double loss = moe_mixture_loss(mx->loss, with_grad ? mx->dz : NULL, with_grad ? mx->dout : NULL, mx->post, mx->z,
                                   mx->p, mx->o, target, b->label, T, E, O, 1.0f / (float)T);
    if (stats) {
        prediction(mx, mx->pred, T);
        moe_stats_add_predictions(stats, mx->pred, target, m->task == MOE_TASK_CLASSIFICATION ? b->label : NULL, T, O);
        moe_stats_add_gates(stats, mx->p, b->group, T);
        stats->loss += loss;
    }
    if (!with_grad)
        return 0;

    // backward: gate, then each expert (gradients of the batch-mean loss)
    moe_linear_backward(NULL, 0, moe_params_grad(p, mx->i_gw), moe_params_grad(p, mx->i_gb), mx->dz, E, b->x, D,
                        moe_params_data(p, mx->i_gw), T, D, E);
    for (size_t e = 0; e < E; e++) {
        float *dw2 = moe_params_grad(p, mx->i_w2) + e * O * (H ? H : D);
        float *db2 = moe_params_grad(p, mx->i_b2) + e * O;
        const float *w2 = moe_params_data(p, mx->i_w2) + e * O * (H ? H : D);
        if (H) {
            float *hid = mx->hid + e * T * H;
            memset(mx->dhid, 0, T * H * sizeof(float));
            memset(mx->dpre, 0, T * H * sizeof(float));
            moe_linear_backward(mx->dhid, H, dw2, db2, mx->dout + e * O, E * O, hid, H, w2, T, H, O);
            moe_act_backward(mx->act, mx->dpre, mx->dhid, hid, T * H);
            moe_linear_backward(NULL, 0, moe_params_grad(p, mx->i_w1) + e * H * D,
                                moe_params_grad(p, mx->i_b1) + e * H, mx->dpre, H, b->x, D,
                                moe_params_data(p, mx->i_w1) + e * H * D, T, D, H);
        } else {
            moe_linear_backward(NULL, 0, dw2, db2, mx->dout + e * O, E * O, b->x, D, w2, T, D, O);
        }
    }
    return 0;
}

static const struct moe_model_ops mixture_ops = {
    .type = "mixture",
    .run = mixture_run,
    .init_weights = mixture_init_weights,
    .release = mixture_release,
};

int moe_mixture_check(const struct moe_model_hp *hp, const char *loss, enum moe_task task, size_t n_in, size_t n_out,
                      struct moe_err *err)
{
    (void)n_in, (void)n_out;
    int kind = moe_mix_loss_from_name(loss);
    if (kind < 0)
        return moe_error(err, MOE_ECONFIG,
                         "key 'loss.type': model 'mixture' takes cooperative, competitive, nll or nll-cat, got '%s'",
                         loss);
    if (kind == MOE_MIX_NLL_CAT && task != MOE_TASK_CLASSIFICATION)
        return moe_error(err, MOE_ECONFIG, "key 'loss.type': 'nll-cat' needs class labels, but the data is regression");
    if (hp->n_expert > MOE_MIXTURE_MAX_EXPERTS)
        return moe_error(err, MOE_ECONFIG, "key 'model.n_expert': a dense mixture allows at most %d experts, got %zu",
                         MOE_MIXTURE_MAX_EXPERTS, hp->n_expert);
    return 0;
}

int moe_mixture_declare(struct moe_model *m, const struct moe_model_hp *hp, const char *loss, struct moe_plan *pl)
{
    int kind = moe_mix_loss_from_name(loss); // moe_mixture_check accepted it
    struct mixture *mx = calloc(1, sizeof *mx);
    if (!mx)
        return moe_plan_fail(pl, MOE_ENOMEM, "out of memory");
    m->impl = mx;
    m->ops = &mixture_ops;
    m->loss_name = moe_mix_loss_name((enum moe_mix_loss)kind);
    mx->loss = (enum moe_mix_loss)kind;
    mx->D = m->n_in;
    mx->O = m->n_out;
    mx->E = hp->n_expert;
    mx->H = hp->n_expert_hidden;
    mx->act = hp->act;
    mx->gate_max = hp->gate_max;
    mx->init_scale = (float)hp->init_scale;
    m->n_expert = mx->E;

    size_t D = mx->D, O = mx->O, E = mx->E, H = mx->H;
    const char *kh = "model.n_expert_hidden";
    struct moe_dim dE = { E, "model.n_expert" }, dD = { D, MOE_KEY_FEATURES }, dO = { O, MOE_KEY_OUTPUTS },
                   dH = { H, kh }, dH1 = { H ? H : 1, kh }, dT = { m->max_batch, MOE_KEY_BATCH };
    moe_plan_param(pl, &mx->i_gw, MOE_DIMS(dE, dD), "gate.weight");
    moe_plan_param(pl, &mx->i_gb, MOE_DIMS(dE), "gate.bias");
    mx->i_w1 = mx->i_b1 = -1;
    if (H) {
        moe_plan_param(pl, &mx->i_w1, MOE_DIMS(dE, dH, dD), "experts.w1");
        moe_plan_param(pl, &mx->i_b1, MOE_DIMS(dE, dH), "experts.b1");
        moe_plan_param(pl, &mx->i_w2, MOE_DIMS(dE, dO, dH), "experts.w2");
        moe_plan_param(pl, &mx->i_b2, MOE_DIMS(dE, dO), "experts.b2");
    } else {
        moe_plan_param(pl, &mx->i_w2, MOE_DIMS(dE, dO, dD), "experts.weight");
        moe_plan_param(pl, &mx->i_b2, MOE_DIMS(dE, dO), "experts.bias");
    }
    moe_plan_buf(pl, &mx->z, MOE_ROLE_ACT, MOE_DT_F32, MOE_DIMS(dT, dE), "z");
    moe_plan_buf(pl, &mx->p, MOE_ROLE_ACT, MOE_DT_F32, MOE_DIMS(dT, dE), "p");
    moe_plan_buf(pl, &mx->post, MOE_ROLE_ACT, MOE_DT_F32, MOE_DIMS(dT, dE), "post");
    moe_plan_buf(pl, &mx->dz, MOE_ROLE_SCRATCH, MOE_DT_F32, MOE_DIMS(dT, dE), "dz");
    moe_plan_buf(pl, &mx->o, MOE_ROLE_ACT, MOE_DT_F32, MOE_DIMS(dT, dE, dO), "o");
    moe_plan_buf(pl, &mx->dout, MOE_ROLE_SCRATCH, MOE_DT_F32, MOE_DIMS(dT, dE, dO), "dout");
    moe_plan_buf(pl, &mx->hid, MOE_ROLE_ACT, MOE_DT_F32, MOE_DIMS(dE, dT, dH1), "hid");
    moe_plan_buf(pl, &mx->dhid, MOE_ROLE_SCRATCH, MOE_DT_F32, MOE_DIMS(dT, dH1), "dhid");
    moe_plan_buf(pl, &mx->dpre, MOE_ROLE_SCRATCH, MOE_DT_F32, MOE_DIMS(dT, dH1), "dpre");
    moe_plan_buf(pl, &mx->target, MOE_ROLE_SCRATCH, MOE_DT_F32, MOE_DIMS(dT, dO), "target");
    moe_plan_buf(pl, &mx->pred, MOE_ROLE_SCRATCH, MOE_DT_F32, MOE_DIMS(dT, dO), "pred");
    // the gate and every expert, for every row
    moe_plan_macs(pl, (double)E * (double)D +
                          (H ? (double)E * ((double)H * D + (double)O * H) : (double)E * O * D));
    return pl->rc;
}
