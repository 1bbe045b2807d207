// optim.c: optimisers as flat loops over the parameter buffer.
// gd: w -= lr g (full batch, fixed step, as in the 1991 simulations).
// sgd: heavy-ball momentum, v = mu v + g; w -= lr v.
// adamw: Loshchilov & Hutter 2019, decoupled weight decay, bias-corrected moments.
// A step may cover several segments of weights (partial fine-tuning, adapters):
// their moments lie one after another in m and v, and clipping uses the norm over all.
// reference: Kingma & Ba 2015 (Adam, Algorithm 1); Loshchilov & Hutter, ICLR 2019.
#include <math.h>
#include <string.h>

#include "core/params.h"
#include "train/train.h"

#define PAR_MIN (1u << 16) // values before a loop goes parallel
#define BIG 1e9

const struct moe_cfg_key moe_optim_keys[] = {
    // optimiser
    { "optim.type", MOE_CFG_STR, "\"adamw\"", 1, 0, "gd|sgd|adamw", "gd: full-batch gradient descent; sgd: mini-batch with momentum; adamw" },
    { "optim.lr", MOE_CFG_NUM, "0.01", 0, 1e3, NULL, "step size" },
    { "optim.momentum", MOE_CFG_NUM, "0.9", 0, 0.999999, NULL, "sgd momentum (heavy ball)" },
    { "optim.beta1", MOE_CFG_NUM, "0.9", 0, 0.999999, NULL, "adamw first-moment decay" },
    { "optim.beta2", MOE_CFG_NUM, "0.999", 0, 0.999999, NULL, "adamw second-moment decay" },
    { "optim.eps", MOE_CFG_NUM, "1e-8", 1e-30, 1, NULL, "adamw denominator floor" },
    { "optim.weight_decay", MOE_CFG_NUM, "0", 0, 10, NULL, "decoupled weight decay (sgd and adamw)" },
    { "optim.batch_size", MOE_CFG_INT, "64", 0, BIG, NULL, "rows per step for sgd/adamw (0 = full batch; gd is always full batch)" },
    { "optim.clip", MOE_CFG_NUM, "0", 0, 1e9, NULL, "clip the global gradient norm to this (0 = off)" },
};
const size_t moe_optim_keys_len = sizeof moe_optim_keys / sizeof moe_optim_keys[0];

void moe_optim_cfg_parse(struct moe_optim_cfg *c, const struct moe_config *cfg)
{
    memset(c, 0, sizeof *c);
    const char *type = moe_cfg_str(cfg, "optim.type");
    c->type = strcmp(type, "gd") == 0 ? MOE_OPTIM_GD : strcmp(type, "sgd") == 0 ? MOE_OPTIM_SGD : MOE_OPTIM_ADAMW;
    c->lr = moe_cfg_num(cfg, "optim.lr");
    c->momentum = moe_cfg_num(cfg, "optim.momentum");
    c->beta1 = moe_cfg_num(cfg, "optim.beta1");
    c->beta2 = moe_cfg_num(cfg, "optim.beta2");
    c->eps = moe_cfg_num(cfg, "optim.eps");
    c->weight_decay = moe_cfg_num(cfg, "optim.weight_decay");
    c->clip = moe_cfg_num(cfg, "optim.clip");
    c->batch_size = (size_t)moe_cfg_int(cfg, "optim.batch_size");
}

int moe_optim_declare(struct moe_optim *o, const struct moe_optim_cfg *c, size_t numel, struct moe_plan *p)
{
    memset(o, 0, sizeof *o);
    o->type = c->type;
    o->lr = c->lr;
    o->momentum = c->momentum;
    o->beta1 = c->beta1;
    o->beta2 = c->beta2;
    o->eps = c->eps;
    o->weight_decay = c->weight_decay;
    o->clip = c->clip;
    o->numel = numel;
    struct moe_dim d = { numel, "parameter floats" };
    if (o->type != MOE_OPTIM_GD)
        moe_plan_buf(p, &o->m, MOE_ROLE_OPTIM, MOE_DT_F32, MOE_DIMS(d), "optim.m");
    if (o->type == MOE_OPTIM_ADAMW)
        moe_plan_buf(p, &o->v, MOE_ROLE_OPTIM, MOE_DT_F32, MOE_DIMS(d), "optim.v");
    return p->rc;
}

struct optim_args {
    struct moe_optim *o;
    const struct moe_optim_cfg *c;
    size_t numel;
};

static int optim_declare(void *arg, struct moe_plan *p)
{
    struct optim_args *a = arg;
    return moe_optim_declare(a->o, a->c, a->numel, p);
}

int moe_optim_init(struct moe_optim *o, const struct moe_optim_cfg *c, size_t numel, struct moe_err *err)
{
    memset(o, 0, sizeof *o);
    struct optim_args a = { o, c, numel };
    struct moe_plan *own;
    int rc = moe_plan_standalone(&own, optim_declare, &a, err);
    o->own = own;
    return rc;
}

// Sum of g[i]^2 in double over NB fixed blocks of the n values (the blocks
// depend on n only), each summed in LANES interleaved partial sums joined in a
// fixed tree (one running sum would be a chain of dependent adds, 4 cycles each),
// then the blocks in order: the same value for any thread count.
#define NB 256
#define LANES 8
static double sum_sq(const float *g, size_t n)
{
    double part[NB];
    size_t bs = (n + NB - 1) / NB;
    #pragma omp parallel for schedule(static) if (n >= (1u << 16))
    for (size_t b = 0; b < NB; b++) {
        size_t lo = b * bs < n ? b * bs : n, hi = lo + bs < n ? lo + bs : n;
        double acc[LANES] = { 0 };
        size_t i = lo;
        for (; i + LANES <= hi; i += LANES)
            for (size_t k = 0; k < LANES; k++)
                acc[k] += (double)g[i + k] * g[i + k];
        for (; i < hi; i++)
            acc[(i - lo) % LANES] += (double)g[i] * g[i];
        part[b] = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    }
    double sq = 0.0;
    for (size_t b = 0; b < NB; b++)
        sq += part[b];
    return sq;
}

double moe_optim_grad_norm(const float *g, size_t n) { return sqrt(sum_sq(g, n)); }

double moe_optim_grad_norm_segs(const struct moe_optim_seg *s, size_t n_seg)
{
    double sq = 0.0;
    for (size_t k = 0; k < n_seg; k++)
        sq += sum_sq(s[k].g, s[k].n);
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
    struct moe_optim_seg s = { w, g, o->numel };
    moe_optim_step_segs(o, &s, 1, norm);
}

// The update of n weights whose moments start at m, v (NULL when unused).
static void update(const struct moe_optim *o, float *w, float *g, float *m, float *v, size_t n, float clip_scale)
{
    // every loop below is elementwise: OpenMP's split cannot change a value
    if (clip_scale != 1.0f && o->type != MOE_OPTIM_ADAMW) { // adamw clips in its own pass
        #pragma omp parallel for schedule(static) if (n >= PAR_MIN)
        for (size_t i = 0; i < n; i++)
            g[i] *= clip_scale;
    }
    float lr = (float)o->lr, wd = (float)o->weight_decay;
    switch (o->type) {
    case MOE_OPTIM_GD:
        #pragma omp parallel for schedule(static) if (n >= PAR_MIN)
        for (size_t i = 0; i < n; i++)
            w[i] -= lr * g[i];
        break;
    case MOE_OPTIM_SGD: {
        float mu = (float)o->momentum;
        #pragma omp parallel for schedule(static) if (n >= PAR_MIN)
        for (size_t i = 0; i < n; i++) {
            m[i] = mu * m[i] + g[i];
            w[i] -= lr * (m[i] + wd * w[i]);
        }
        break;
    }
    case MOE_OPTIM_ADAMW: {
        float b1 = (float)o->beta1, b2 = (float)o->beta2, eps = (float)o->eps;
        float ob1 = (float)(1.0 - o->beta1), ob2 = (float)(1.0 - o->beta2);
        float c1 = (float)(1.0 - pow(o->beta1, (double)o->t));
        float c2 = (float)(1.0 - pow(o->beta2, (double)o->t));
        // the clipped gradient is written back too (the caller may read it), in
        // the same pass as the update: one sweep over the buffers instead of two
        const int clip = clip_scale != 1.0f;
        #pragma omp parallel for schedule(static) if (n >= PAR_MIN)
        for (size_t i = 0; i < n; i++) {
            float gi = g[i];
            if (clip)
                g[i] = gi *= clip_scale;
            m[i] = b1 * m[i] + ob1 * gi;
            v[i] = b2 * v[i] + ob2 * gi * gi;
            float mhat = m[i] / c1, vhat = v[i] / c2;
            w[i] -= lr * (mhat / (sqrtf(vhat) + eps) + wd * w[i]);
        }
        break;
    }
    }
}

void moe_optim_step_segs(struct moe_optim *o, const struct moe_optim_seg *s, size_t n_seg, double norm)
{
    float clip_scale = o->clip > 0.0 && norm > o->clip ? (float)(o->clip / norm) : 1.0f;
    o->t++;
    size_t off = 0; // the segments' moments lie one after another
    for (size_t k = 0; k < n_seg; k++) {
        update(o, s[k].w, s[k].g, o->m ? o->m + off : NULL, o->v ? o->v + off : NULL, s[k].n, clip_scale);
        off += s[k].n;
    }
}

void moe_optim_release(struct moe_optim *o)
{
    if (!o)
        return;
    moe_plan_free(o->own);
    o->own = NULL;
    o->m = o->v = NULL;
}
