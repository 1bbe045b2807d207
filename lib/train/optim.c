// optim.c: optimisers as flat loops over the parameter buffer.
// gd: w -= lr g (full batch, fixed step, as in the 1991 simulations).
// sgd: heavy-ball momentum, v = mu v + g; w -= lr v.
// adamw: Loshchilov & Hutter 2019, decoupled weight decay, bias-corrected moments.
// A step may cover several segments of weights (partial fine-tuning, adapters):
// their moments lie one after another in m and v, and clipping uses the norm over all.
// reference: Kingma & Ba 2015 (Adam, Algorithm 1); Loshchilov & Hutter, ICLR 2019.
// The learning rate of each step comes from a schedule (moe_lr_at), a pure
// function of the step index: see the formulas there.
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
    // learning-rate schedule (moe_lr_at; step s = optimizer steps taken before this one)
    { "optim.schedule", MOE_CFG_STR, "\"constant\"", 1, 0, "constant|cosine|linear|inv_sqrt", "learning rate per step s (after optim.warmup_steps W): constant lr; cosine min_lr + (lr - min_lr)(1 + cos(pi p))/2 and linear lr - (lr - min_lr) p, p = (s - W)/(D - W) capped at 1, D = optim.decay_steps; inv_sqrt max(min_lr, lr sqrt(W/(s + 1))), needs W >= 1" },
    { "optim.warmup_steps", MOE_CFG_INT, "0", 0, 1e12, NULL, "linear warmup: step s < W uses lr (s + 1)/W (every schedule)" },
    { "optim.min_lr", MOE_CFG_NUM, "0", 0, 1e3, NULL, "the floor cosine, linear and inv_sqrt decay to (at most optim.lr)" },
    { "optim.decay_steps", MOE_CFG_INT, "0", 0, 1e12, NULL, "cosine, linear: the step D where the decay reaches min_lr, counted from step 0 (warmup included; above W); 0 = the run's length, train.epochs x optimizer steps per epoch" },
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
    const char *sched = moe_cfg_str(cfg, "optim.schedule");
    c->schedule = MOE_SCHED_CONSTANT;
    for (int i = 0; i < MOE_N_SCHED; i++)
        if (strcmp(sched, moe_lr_schedule_name((enum moe_lr_schedule)i)) == 0)
            c->schedule = (enum moe_lr_schedule)i;
    c->warmup_steps = (uint64_t)moe_cfg_int(cfg, "optim.warmup_steps");
    c->min_lr = moe_cfg_num(cfg, "optim.min_lr");
    c->decay_steps = (uint64_t)moe_cfg_int(cfg, "optim.decay_steps");
}

const char *moe_lr_schedule_name(enum moe_lr_schedule s)
{
    static const char *const names[MOE_N_SCHED] = { "constant", "cosine", "linear", "inv_sqrt" };
    return (unsigned)s < MOE_N_SCHED ? names[s] : "?";
}

int moe_optim_cfg_check(const struct moe_optim_cfg *c, struct moe_err *err)
{
    if (c->min_lr > c->lr)
        return moe_error(err, MOE_ECONFIG, "key 'optim.min_lr' (%g) must not exceed optim.lr (%g): it is the floor the schedule decays to",
                         c->min_lr, c->lr);
    if (c->schedule == MOE_SCHED_INV_SQRT && c->warmup_steps == 0)
        return moe_error(err, MOE_ECONFIG, "optim.schedule 'inv_sqrt' needs optim.warmup_steps >= 1 (its decay is lr sqrt(warmup_steps/(step + 1)))");
    if ((c->schedule == MOE_SCHED_COSINE || c->schedule == MOE_SCHED_LINEAR) && c->decay_steps &&
        c->decay_steps <= c->warmup_steps)
        return moe_error(err, MOE_ECONFIG, "key 'optim.decay_steps' (%llu) must exceed optim.warmup_steps (%llu): the decay runs between them",
                         (unsigned long long)c->decay_steps, (unsigned long long)c->warmup_steps);
    return 0;
}

int moe_lr_schedule_uses_length(const struct moe_optim_cfg *c)
{
    return (c->schedule == MOE_SCHED_COSINE || c->schedule == MOE_SCHED_LINEAR) && c->decay_steps == 0;
}

// The learning rate of step s (0-based: the optimizer steps taken before it),
// with peak lr, floor min_lr, W = warmup_steps, D = decay_steps or else the
// run's length run_steps:
//   s < W (warmup, every schedule):  lr (s + 1) / W       (linear from lr/W up to lr)
//   constant:                        lr
//   cosine (Loshchilov & Hutter 2017, SGDR, one cycle without restarts):
//                                    min_lr + (lr - min_lr) (1 + cos(pi p)) / 2
//   linear:                          lr - (lr - min_lr) p
//     with p = (s - W) / (D - W), capped at 1 (D <= W: p = 1), so the step
//     after warmup uses lr and steps from D on use min_lr;
//   inv_sqrt (Vaswani et al. 2017, sec. 5.3, peak-normalised; fairseq's
//   inverse_sqrt):                   max(min_lr, lr sqrt(W / (s + 1)))
// With W = 0 and the constant schedule this is exactly lr: a run without a
// schedule is byte-identical to one from before schedules existed.
double moe_lr_at(const struct moe_optim_cfg *c, uint64_t run_steps, uint64_t s)
{
    double lr = c->lr, lo = c->min_lr;
    uint64_t W = c->warmup_steps;
    if (s < W)
        return lr * ((double)(s + 1) / (double)W);
    uint64_t D = c->decay_steps ? c->decay_steps : run_steps;
    double p = D > W ? (double)(s - W) / (double)(D - W) : 1.0;
    if (p > 1.0)
        p = 1.0;
    switch (c->schedule) {
    case MOE_SCHED_COSINE: return lo + (lr - lo) * 0.5 * (1.0 + cos(M_PI * p));
    case MOE_SCHED_LINEAR: return lr - (lr - lo) * p;
    case MOE_SCHED_INV_SQRT: {
        double v = lr * sqrt((double)W / (double)(s + 1));
        return v > lo ? v : lo;
    }
    default: return lr;
    }
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
double moe_optim_sum_sq(const float *g, size_t n)
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

double moe_optim_grad_norm(const float *g, size_t n) { return sqrt(moe_optim_sum_sq(g, n)); }

double moe_optim_grad_norm_segs(const struct moe_optim_seg *s, size_t n_seg)
{
    double sq = 0.0;
    for (size_t k = 0; k < n_seg; k++)
        sq += moe_optim_sum_sq(s[k].g, s[k].n);
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

size_t moe_train_segments(const struct moe_params *p, const uint8_t *frozen, uint8_t *const *fe,
                          const struct moe_train_layout *b, struct moe_optim_seg *s)
{
    if (!frozen && !b->lw) {
        if (s)
            s[0] = (struct moe_optim_seg){ b->w, b->g, p->numel };
        return 1;
    }
    size_t n = 0;
    struct moe_optim_seg cur = { 0 }; // the run being formed (segment n - 1)
    for (size_t i = 0; i < p->n; i++) {
        if (frozen && frozen[i])
            continue;
        const uint8_t *fi = fe ? fe[i] : NULL;
        size_t E = fi ? p->t[i].shape[0] : 1, slice = p->t[i].numel / E;
        for (size_t e = 0; e < E; e++) {
            if (fi && fi[e])
                continue;
            float *w = b->w + p->t[i].offset + e * slice, *g = b->g + p->t[i].offset + e * slice;
            if (n && cur.w + cur.n == w && cur.g + cur.n == g) {
                cur.n += slice;
                continue;
            }
            if (n && s)
                s[n - 1] = cur;
            cur = (struct moe_optim_seg){ w, g, slice };
            n++;
        }
    }
    if (n && s)
        s[n - 1] = cur;
    if (b->lw) {
        if (s)
            s[n] = (struct moe_optim_seg){ b->lw, b->lg, b->ln };
        n++;
    }
    return n;
}

size_t moe_train_norm_units(const struct moe_params *p, const uint8_t *frozen, uint8_t *const *fe,
                            const struct moe_train_layout *b, struct moe_optim_seg *u)
{
    size_t n = 0;
    for (size_t i = 0; i < p->n; i++) {
        const struct moe_tensor *t = &p->t[i];
        if (frozen && frozen[i])
            continue;
        const uint8_t *fi = fe ? fe[i] : NULL;
        size_t E = t->experts || fi ? t->shape[0] : 1, slice = t->numel / E;
        for (size_t e = 0; e < E; e++) {
            if (fi && fi[e])
                continue;
            if (u)
                u[n] = (struct moe_optim_seg){ NULL, b->g + t->offset + e * slice, slice };
            n++;
        }
    }
    if (b->lw) {
        if (u)
            u[n] = (struct moe_optim_seg){ NULL, b->lg, b->ln };
        n++;
    }
    return n;
}

void moe_optim_release(struct moe_optim *o)
{
    if (!o)
        return;
    moe_plan_free(o->own);
    o->own = NULL;
    o->m = o->v = NULL;
}
