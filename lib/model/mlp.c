// mlp.c: the back-propagation baseline of the 1991 comparison: one hidden layer
// of H units, a linear output, squared error (one-hot targets for classes) or
// softmax cross-entropy. Not an MoE: no gate, no experts.
// T = rows, D = n_in, H = n_hidden, O = n_out.
//
// Tensors (docs/checkpoint.md):
//   hidden.weight (H, D), hidden.bias (H), output.weight (O, H), output.bias (O)
#include <stdlib.h>
#include <string.h>

#include "model/model.h"
#include "nn/nn.h"

struct mlp {
    size_t D, H, O;
    enum moe_act act;
    int ce;            // softmax cross-entropy (else squared error)
    float init_scale;
    int i_w1, i_b1, i_w2, i_b2;
    float *hid, *y;    // (T, H), (T, O)
    float *dhid, *dpre, *dy; // (T, H), (T, H), (T, O)
    float *target;     // (T, O)
    float *pred;       // (T, O)
};

static void mlp_release(struct moe_model *m)
{
    free(m->impl); // the buffers belong to the model's plan
    m->impl = NULL;
}

static void mlp_init_weights(struct moe_model *m, uint64_t seed)
{
    struct mlp *n = m->impl;
    moe_init_uniform(&m->params, n->i_w1, seed, n->init_scale);
    moe_init_uniform(&m->params, n->i_w2, seed, n->init_scale);
    memset(moe_params_data(&m->params, n->i_b1), 0, n->H * sizeof(float));
    memset(moe_params_data(&m->params, n->i_b2), 0, n->O * sizeof(float));
}

static int mlp_run(struct moe_model *m, const struct moe_batch *b, int with_grad, struct moe_stats *stats,
                   struct moe_err *err)
{
    struct mlp *n = m->impl;
    struct moe_params *p = &m->params;
    size_t T = b->n, D = n->D, H = n->H, O = n->O;
    const float *target;
    int rc = moe_model_batch_targets(m, b, n->target, &target, err);
    if (rc || T == 0)
        return rc;
    moe_linear_forward(n->hid, H, b->x, D, moe_params_data(p, n->i_w1), moe_params_data(p, n->i_b1), T, D, H);
    moe_act_forward(n->act, n->hid, n->hid, T * H);
    moe_linear_forward(n->y, O, n->hid, H, moe_params_data(p, n->i_w2), moe_params_data(p, n->i_b2), T, H, O);
    moe_model_head_loss(m, n->ce, n->y, with_grad ? n->dy : NULL, n->pred, target, b, stats);
    if (!with_grad)
        return 0;
    memset(n->dhid, 0, T * H * sizeof(float));
    memset(n->dpre, 0, T * H * sizeof(float));
    moe_linear_backward(n->dhid, H, moe_params_grad(p, n->i_w2), moe_params_grad(p, n->i_b2), n->dy, O, n->hid, H,
                        moe_params_data(p, n->i_w2), T, H, O);
    moe_act_backward(n->act, n->dpre, n->dhid, n->hid, T * H);
    moe_linear_backward(NULL, 0, moe_params_grad(p, n->i_w1), moe_params_grad(p, n->i_b1), n->dpre, H, b->x, D,
                        moe_params_data(p, n->i_w1), T, D, H);
    return 0;
}

static const struct moe_model_ops mlp_ops = {
    .type = "mlp",
    .run = mlp_run,
    .init_weights = mlp_init_weights,
    .release = mlp_release,
};

int moe_mlp_check(const struct moe_model_hp *hp, const char *loss, enum moe_task task, size_t n_in, size_t n_out,
                  struct moe_err *err)
{
    (void)hp, (void)n_in, (void)n_out;
    return moe_model_head_loss_check("mlp", loss, task, err);
}

int moe_mlp_declare(struct moe_model *m, const struct moe_model_hp *hp, const char *loss, struct moe_plan *pl)
{
    struct mlp *n = calloc(1, sizeof *n);
    if (!n)
        return moe_plan_fail(pl, MOE_ENOMEM, "out of memory");
    m->impl = n;
    m->ops = &mlp_ops;
    n->ce = strcmp(loss, "ce") == 0; // moe_mlp_check accepted it
    m->loss_name = n->ce ? "ce" : "mse";
    n->D = m->n_in;
    n->O = m->n_out;
    n->H = hp->n_hidden;
    n->act = hp->act;
    n->init_scale = (float)hp->init_scale;
    size_t D = n->D, H = n->H, O = n->O;
    struct moe_dim dD = { D, MOE_KEY_FEATURES }, dO = { O, MOE_KEY_OUTPUTS }, dH = { H, "model.n_hidden" },
                   dT = { m->max_batch, MOE_KEY_BATCH };
    moe_plan_param(pl, &n->i_w1, MOE_DIMS(dH, dD), "hidden.weight");
    moe_plan_param(pl, &n->i_b1, MOE_DIMS(dH), "hidden.bias");
    moe_plan_param(pl, &n->i_w2, MOE_DIMS(dO, dH), "output.weight");
    moe_plan_param(pl, &n->i_b2, MOE_DIMS(dO), "output.bias");
    moe_plan_buf(pl, &n->hid, MOE_ROLE_ACT, MOE_DT_F32, MOE_DIMS(dT, dH), "hid");
    moe_plan_buf(pl, &n->dhid, MOE_ROLE_SCRATCH, MOE_DT_F32, MOE_DIMS(dT, dH), "dhid");
    moe_plan_buf(pl, &n->dpre, MOE_ROLE_SCRATCH, MOE_DT_F32, MOE_DIMS(dT, dH), "dpre");
    moe_plan_buf(pl, &n->y, MOE_ROLE_ACT, MOE_DT_F32, MOE_DIMS(dT, dO), "y");
    moe_plan_buf(pl, &n->dy, MOE_ROLE_SCRATCH, MOE_DT_F32, MOE_DIMS(dT, dO), "dy");
    moe_plan_buf(pl, &n->target, MOE_ROLE_SCRATCH, MOE_DT_F32, MOE_DIMS(dT, dO), "target");
    moe_plan_buf(pl, &n->pred, MOE_ROLE_SCRATCH, MOE_DT_F32, MOE_DIMS(dT, dO), "pred");
    moe_plan_macs(pl, (double)H * D + (double)O * H);
    return pl->rc;
}
