// device_check.c: moe_train_check_device (train.h), the CPU's training steps
// against the device's over the same batches (moe train --check-device).
//
// Both sides start from m's weights and fresh optimizer moments. Step s takes
// rows s * bs .. of the training split in their order (wrapping around; a
// text split's rows are its first epoch's random windows for the model's
// seed), the learning rate of step s of a run of run_steps steps
// (moe_lr_at), and the router streams of step s, as the trainer's step s
// would without shuffling. The CPU side is the trainer's step without its
// bookkeeping: gradients from zero, moe_model_run, the global norm over the
// trainer's units, the update. The device side is the trainer's device step
// (cuda/model.h grad, stats, update), its loss the statistics' as the CPU's. After the last step the device's
// weights, gradients and moments are copied out and compared with the CPU's,
// tensor by tensor: the largest absolute difference over the largest
// absolute CPU value (relative to the tensor's scale, so that values near zero
// do not dominate), and the steps' losses and gradient norms relative to the
// CPU's.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cuda/model.h"
#include "cuda/ops.h"
#include "train/train.h"

double moe_params_grad_norm_units(const struct moe_params *p)
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

// max |a - b| / max |b| over n values (a difference where b is all zero:
// the difference itself); NaN when either side holds a non-finite value.
static double rel_diff(const float *a, const float *b, size_t n)
{
    double d = 0.0, m = 0.0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(a[i]) || !isfinite(b[i]))
            return NAN;
        d = fmax(d, fabs((double)a[i] - b[i]));
        m = fmax(m, fabs((double)b[i]));
    }
    return m > 0.0 ? d / m : d;
}

static double rel1(double a, double b)
{
    if (!isfinite(a) || !isfinite(b))
        return NAN;
    return b != 0.0 ? fabs(a - b) / fabs(b) : fabs(a - b);
}

// The largest of x and the result so far, NaN winning (a non-finite value is the worst).
static void worst(struct moe_device_check *c, double x, const char *what, const char *name)
{
    if (isnan(c->max_rel))
        return;
    if (isnan(x) || x > c->max_rel) {
        c->max_rel = x;
        c->max_what = what;
        c->max_name = name;
    }
}

void moe_device_check_release(struct moe_device_check *c)
{
    free(c->t);
    free(c->loss_cpu);
    free(c->loss_dev);
    free(c->gnorm_cpu);
    free(c->gnorm_dev);
    memset(c, 0, sizeof *c);
}

int moe_train_check_device(struct moe_model *m, const struct moe_model_hp *hp, int device,
                           const struct moe_dataset *tr, const struct moe_optim_cfg *oc, size_t bs, uint64_t steps,
                           uint64_t run_steps, struct moe_device_check *ret, struct moe_err *err)
{
    memset(ret, 0, sizeof *ret);
    ret->max_what = ret->max_name = "";
    if (!tr->n)
        return moe_error(err, MOE_EINVAL, "--check-device takes a non-empty training split");
    const int lm = tr->task == MOE_TASK_LM;
    if (bs == 0 || bs > tr->n)
        bs = tr->n;
    struct moe_params *p = &m->params;
    const size_t n = p->numel;
    struct moe_optim oh = { 0 }, od = { 0 }, oo = { 0 };
    struct moe_cuda_model *d = NULL;
    struct moe_lm_batch lb = { 0 };
    float *wd = malloc(n * sizeof *wd), *gd = malloc(n * sizeof *gd);
    ret->steps = steps;
    ret->n = p->n;
    ret->t = calloc(p->n, sizeof *ret->t);
    ret->loss_cpu = calloc(steps, sizeof(double)), ret->loss_dev = calloc(steps, sizeof(double));
    ret->gnorm_cpu = calloc(steps, sizeof(double)), ret->gnorm_dev = calloc(steps, sizeof(double));
    int rc = 0;
    if (!wd || !gd || !ret->t || !ret->loss_cpu || !ret->loss_dev || !ret->gnorm_cpu || !ret->gnorm_dev)
        rc = moe_error(err, MOE_ENOMEM, "out of memory for the device check");
    if (!rc && lm)
        rc = moe_lm_batch_alloc(&lb, bs, tr->n_ctx, err);
    if (!rc && !(rc = moe_cuda_use_device(device, err)) && !(rc = moe_optim_init(&oh, oc, n, err)) &&
        !(rc = moe_optim_init(&od, oc, n, err)) && !(rc = moe_optim_init(&oo, oc, n, err)))
        rc = moe_cuda_model_create(&d, m, hp, &od, bs, err);
    for (uint64_t s = 0; !rc && s < steps; s++) {
        size_t start = (size_t)((s * bs) % tr->n), rows = tr->n - start < bs ? tr->n - start : bs;
        // text: the first epoch's random windows of the model's seed
        struct moe_batch b = lm ? moe_lm_batch_fill(tr, &lb, m->seed, 1, start, rows)
                                : (struct moe_batch){ .n = rows, .x = tr->x + start * tr->n_in,
                                                      .y = tr->y ? tr->y + start * tr->n_out : NULL,
                                                      .label = tr->label ? tr->label + start : NULL,
                                                      .group = tr->group ? tr->group + start : NULL };
        b.step = s;
        double lr = moe_lr_at(oc, run_steps, s), loss, aux;
        od.lr = oh.lr = lr;
        // the device's step as the trainer takes it: the loss from its statistics
        struct moe_stats st;
        if ((rc = moe_stats_init(&st, 0, 0, err)))
            break;
        if ((rc = moe_cuda_model_grad(d, &b, &loss, &aux, &ret->gnorm_dev[s], err)) ||
            (rc = moe_cuda_model_stats(d, &b, &st, err)) ||
            (rc = moe_cuda_model_update(d, &od, ret->gnorm_dev[s], err))) {
            moe_stats_release(&st);
            break;
        }
        ret->loss_dev[s] = st.loss;
        moe_stats_reset(&st);
        moe_params_zero_grad(p);
        rc = moe_model_run(m, &b, 1, &st, err);
        ret->loss_cpu[s] = st.loss;
        moe_stats_release(&st);
        if (rc)
            break;
        ret->gnorm_cpu[s] = moe_params_grad_norm_units(p);
        moe_optim_step_norm(&oh, p->data, p->grad, ret->gnorm_cpu[s]);
    }
    if (!rc) { // the device's state into host copies: a model sharing m's registry with its own buffers
        struct moe_model md = *m;
        md.params.data = wd, md.params.grad = gd;
        oo.t = od.t;
        rc = moe_cuda_model_download(d, &md, &oo, err);
    }
    for (size_t i = 0; !rc && i < p->n; i++) {
        const struct moe_tensor *t = &p->t[i];
        struct moe_device_diff *x = &ret->t[i];
        x->name = t->name;
        x->w = rel_diff(wd + t->offset, p->data + t->offset, t->numel);
        x->g = rel_diff(gd + t->offset, p->grad + t->offset, t->numel);
        x->m = oh.m ? rel_diff(oo.m + t->offset, oh.m + t->offset, t->numel) : NAN;
        x->v = oh.v ? rel_diff(oo.v + t->offset, oh.v + t->offset, t->numel) : NAN;
    }
    if (!rc) {
        ret->max_rel = 0.0;
        for (uint64_t s = 0; s < steps; s++) {
            worst(ret, rel1(ret->loss_dev[s], ret->loss_cpu[s]), "loss", "");
            worst(ret, rel1(ret->gnorm_dev[s], ret->gnorm_cpu[s]), "gradient norm", "");
        }
        for (size_t i = 0; i < p->n; i++) {
            const struct moe_device_diff *x = &ret->t[i];
            worst(ret, x->w, "weights", x->name);
            worst(ret, x->g, "gradients", x->name);
            if (oh.m)
                worst(ret, x->m, "moment m", x->name);
            if (oh.v)
                worst(ret, x->v, "moment v", x->name);
        }
    }
    moe_cuda_model_free(d);
    moe_lm_batch_release(&lb);
    moe_optim_release(&oh), moe_optim_release(&od), moe_optim_release(&oo);
    free(wd), free(gd);
    if (rc)
        moe_device_check_release(ret);
    return rc;
}
