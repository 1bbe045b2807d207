// optim.c: optimisers as flat loops over the parameter buffer.
// gd: w -= lr g (full batch, fixed step, as in the 1991 simulations).
// sgd: heavy-ball momentum, v = mu v + g; w -= lr v.
// adamw: Loshchilov & Hutter 2019, decoupled weight decay, bias-corrected moments.
// reference: Kingma & Ba 2015 (Adam, Algorithm 1); Loshchilov & Hutter, ICLR 2019.
#include <math.h>
#include <string.h>

#include "core/params.h"
#include "train/train.h"

int moe_optim_init(struct moe_optim *o, const struct moe_config *cfg, size_t numel, struct moe_err *err)
{
    memset(o, 0, sizeof *o);
    const char *type = moe_cfg_str(cfg, "optim.type");
    o->type = strcmp(type, "gd") == 0 ? MOE_OPTIM_GD : strcmp(type, "sgd") == 0 ? MOE_OPTIM_SGD : MOE_OPTIM_ADAMW;
    o->lr = moe_cfg_num(cfg, "optim.lr");
    o->momentum = moe_cfg_num(cfg, "optim.momentum");
    o->beta1 = moe_cfg_num(cfg, "optim.beta1");
    o->beta2 = moe_cfg_num(cfg, "optim.beta2");
    o->eps = moe_cfg_num(cfg, "optim.eps");
    o->weight_decay = moe_cfg_num(cfg, "optim.weight_decay");
    o->clip = moe_cfg_num(cfg, "optim.clip");
    o->numel = numel;
    if (o->type != MOE_OPTIM_GD) {
        o->m = moe_alloc(numel, sizeof(float));
        if (!o->m)
            return moe_error(err, MOE_ENOMEM, "out of memory for optimizer state (%zu floats)", numel);
    }
    if (o->type == MOE_OPTIM_ADAMW) {
        o->v = moe_alloc(numel, sizeof(float));
        if (!o->v) {
            moe_optim_release(o);
            return moe_error(err, MOE_ENOMEM, "out of memory for optimizer state (%zu floats)", numel);
        }
    }
    return 0;
}

double moe_optim_grad_norm(const float *g, size_t n)
{
    double sq = 0.0;
    for (size_t i = 0; i < n; i++)
        sq += (double)g[i] * g[i];
    return sqrt(sq);
}

double moe_optim_step(struct moe_optim *o, float *w, float *g)
{
    double norm = moe_optim_grad_norm(g, o->numel);
    moe_optim_step_norm(o, w, g, norm);
    return norm;
}

void moe_optim_step_norm(struct moe_optim *o, float *w, float *g, double norm)
{
    size_t n = o->numel;
    if (o->clip > 0.0 && norm > o->clip) {
        float s = (float)(o->clip / norm);
        for (size_t i = 0; i < n; i++)
            g[i] *= s;
    }
    o->t++;
    float lr = (float)o->lr, wd = (float)o->weight_decay;
    switch (o->type) {
    case MOE_OPTIM_GD:
        for (size_t i = 0; i < n; i++)
            w[i] -= lr * g[i];
        break;
    case MOE_OPTIM_SGD: {
        float mu = (float)o->momentum;
        for (size_t i = 0; i < n; i++) {
            o->m[i] = mu * o->m[i] + g[i];
            w[i] -= lr * (o->m[i] + wd * w[i]);
        }
        break;
    }
    case MOE_OPTIM_ADAMW: {
        float b1 = (float)o->beta1, b2 = (float)o->beta2, eps = (float)o->eps;
        float ob1 = (float)(1.0 - o->beta1), ob2 = (float)(1.0 - o->beta2);
        float c1 = (float)(1.0 - pow(o->beta1, (double)o->t));
        float c2 = (float)(1.0 - pow(o->beta2, (double)o->t));
        for (size_t i = 0; i < n; i++) {
            o->m[i] = b1 * o->m[i] + ob1 * g[i];
            o->v[i] = b2 * o->v[i] + ob2 * g[i] * g[i];
            float mhat = o->m[i] / c1, vhat = o->v[i] / c2;
            w[i] -= lr * (mhat / (sqrtf(vhat) + eps) + wd * w[i]);
        }
        break;
    }
    }
}

void moe_optim_release(struct moe_optim *o)
{
    if (!o)
        return;
    moe_free(o->m);
    moe_free(o->v);
    o->m = o->v = NULL;
}
