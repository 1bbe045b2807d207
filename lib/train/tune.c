// tune.c: what a tuning run trains (tensors, expert slices) and LoRA adapters (see tune.h).
#include "train/tune.h"

#include <assert.h>
#include <fnmatch.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/gemm.h"
#include "core/plan.h"

int moe_tune_match(const char *const *globs, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (fnmatch(globs[i], name, 0) == 0)
            return 1;
    return 0;
}
#include "io/config.h"

const struct moe_cfg_key moe_lora_keys[] = {
    // LoRA adapters (moe lora)
    { "lora.rank", MOE_CFG_INT, "0", 0, 65536, NULL, "rank r of the adapters (0 = no adapters; moe lora --rank)" },
    { "lora.alpha", MOE_CFG_NUM, "8", 1e-6, 1e6, NULL, "adapter scale numerator: W = W0 + (alpha / r) B A (moe lora --alpha)" },
    { "lora.targets", MOE_CFG_STR_LIST, "[]", 1, 0, NULL, "globs over tensor names: the matrices that get adapters (moe lora --targets)" },
    { "lora.expert_mode", MOE_CFG_STR, "\"per-expert\"", 1, 0, "per-expert|shared", "expert tensors [E, out, in]: one adapter per expert, or one shared by all" },
    { "lora.freeze_router", MOE_CFG_BOOL, "false", 1, 0, NULL, "keep the routers as they are; otherwise they are trained in full along with the adapters" },
};
const size_t moe_lora_keys_len = sizeof moe_lora_keys / sizeof moe_lora_keys[0];

int moe_lora_cfg_parse(struct moe_lora_cfg *c, const struct moe_config *cfg, struct moe_err *err)
{
    memset(c, 0, sizeof *c);
    c->rank = (size_t)moe_cfg_int(cfg, "lora.rank");
    c->alpha = moe_cfg_num(cfg, "lora.alpha");
    int rc = moe_cfg_str_list(cfg, "lora.targets", &c->targets, &c->n_targets, err);
    if (rc)
        return rc;
    c->expert_shared = strcmp(moe_cfg_str(cfg, "lora.expert_mode"), "shared") == 0;
    c->freeze_router = moe_cfg_bool(cfg, "lora.freeze_router");
    return 0;
}

void moe_lora_cfg_release(struct moe_lora_cfg *c)
{
    if (!c)
        return;
    free(c->targets);
    memset(c, 0, sizeof *c);
}

// Every glob must match some tensor (a typo would otherwise silently train everything).
int moe_tune_check_globs(const struct moe_params *p, const char *const *globs, size_t n, const char *what,
                         struct moe_err *err)
{
    for (size_t g = 0; g < n; g++) {
        int hit = 0;
        for (size_t i = 0; i < p->n && !hit; i++)
            hit = fnmatch(globs[g], p->t[i].name, 0) == 0;
        if (!hit)
            return moe_error(err, MOE_ECONFIG, "%s: pattern '%s' matches no tensor of the model (names are like '%s')",
                             what, globs[g], p->n ? p->t[p->n - 1].name : "?");
    }
    return 0;
}

// A decimal index at *s (digits only, below 2^32): advances *s; -1 if none.
static int parse_index(const char **s, size_t *ret)
{
    size_t v = 0;
    const char *c = *s;
    if (*c < '0' || *c > '9')
        return -1;
    for (; *c >= '0' && *c <= '9'; c++) {
        v = v * 10 + (size_t)(*c - '0');
        if (v > UINT32_MAX)
            return -1;
    }
    *s = c;
    *ret = v;
    return 0;
}

int moe_tune_glob_range(const char *glob, size_t *ret_len, size_t *ret_first, size_t *ret_last)
{
    const char *at = strrchr(glob, '@');
    if (!at) {
        *ret_len = strlen(glob);
        return 0;
    }
    const char *c = at + 1;
    size_t a, b;
    if (parse_index(&c, &a))
        return MOE_ECONFIG;
    b = a;
    if (*c == '-') {
        c++;
        if (parse_index(&c, &b))
            return MOE_ECONFIG;
    }
    if (*c || b < a)
        return MOE_ECONFIG;
    *ret_len = (size_t)(at - glob);
    *ret_first = a;
    *ret_last = b;
    return 1;
}

int moe_tune_is_expert_tensor(const struct moe_tensor *t)
{
    return t->ndim == 3 && (strncmp(t->name, "experts.", 8) == 0 || strstr(t->name, ".experts.") != NULL);
}

int moe_tune_sel_init(struct moe_tune_sel *s, const struct moe_params *p, int frozen, struct moe_err *err)
{
    memset(s, 0, sizeof *s);
    size_t n = p->n ? p->n : 1;
    s->frozen = malloc(n);
    s->frozen_experts = calloc(n, sizeof *s->frozen_experts);
    if (!s->frozen || !s->frozen_experts) {
        moe_tune_sel_release(s);
        return moe_error(err, MOE_ENOMEM, "out of memory");
    }
    s->n = p->n;
    memset(s->frozen, frozen ? 1 : 0, n);
    return 0;
}

// Drop the per-expert mask of tensor i when its flags agree (one state for the whole tensor).
static void sel_settle(struct moe_tune_sel *s, const struct moe_params *p, size_t i)
{
    uint8_t *fe = s->frozen_experts[i];
    if (!fe)
        return;
    size_t E = p->t[i].shape[0], n_frozen = 0;
    for (size_t e = 0; e < E; e++)
        n_frozen += fe[e];
    if (n_frozen != 0 && n_frozen != E) {
        s->frozen[i] = 0;
        return;
    }
    s->frozen[i] = n_frozen == E;
    free(fe);
    s->frozen_experts[i] = NULL;
}

int moe_tune_sel_mark(struct moe_tune_sel *s, const struct moe_params *p, const char *const *globs, size_t n,
                      int frozen, const char *what, struct moe_err *err)
{
    uint8_t f = frozen ? 1 : 0;
    char pat[256];
    for (size_t g = 0; g < n; g++) {
        size_t len = 0, first = 0, last = 0;
        int ranged = moe_tune_glob_range(globs[g], &len, &first, &last);
        assert(what || ranged == 0); // built-in lists are plain globs
        if (ranged < 0)
            return moe_error(err, MOE_ECONFIG, "%s: pattern '%s' has a malformed expert range '%s' (expected PATTERN@A or PATTERN@A-B, 0 <= A <= B)",
                             what, globs[g], strrchr(globs[g], '@'));
        if (len >= sizeof pat)
            return moe_error(err, MOE_ECONFIG, "%s: pattern '%.40s...' is longer than %zu characters",
                             what ? what : "tuning", globs[g], sizeof pat - 1);
        memcpy(pat, globs[g], len);
        pat[len] = '\0';
        int hit = 0;
        for (size_t i = 0; i < p->n; i++) {
            const struct moe_tensor *t = &p->t[i];
            if (fnmatch(pat, t->name, 0) != 0)
                continue;
            hit = 1;
            if (!ranged) {
                free(s->frozen_experts[i]);
                s->frozen_experts[i] = NULL;
                s->frozen[i] = f;
                continue;
            }
            if (!moe_tune_is_expert_tensor(t))
                return moe_error(err, MOE_ECONFIG, "%s: pattern '%s' matches '%s', which is not an expert tensor (an expert range applies only to [E, out, in] tensors named '*.experts.*')",
                                 what, globs[g], t->name);
            size_t E = t->shape[0];
            if (last >= E)
                return moe_error(err, MOE_ECONFIG, "%s: pattern '%s' names expert %zu, but '%s' has %zu experts (0-%zu)",
                                 what, globs[g], last, t->name, E, E - 1);
            if (!s->frozen_experts[i]) {
                if (!(s->frozen_experts[i] = malloc(E)))
                    return moe_error(err, MOE_ENOMEM, "out of memory");
                memset(s->frozen_experts[i], s->frozen[i], E);
            }
            memset(s->frozen_experts[i] + first, f, last - first + 1);
            sel_settle(s, p, i);
        }
        if (!hit && what)
            return moe_error(err, MOE_ECONFIG, "%s: pattern '%s' matches no tensor of the model (names are like '%s')",
                             what, globs[g], p->n ? p->t[p->n - 1].name : "?");
    }
    return 0;
}

int moe_tune_sel_trained(const struct moe_tune_sel *s, size_t i, size_t e)
{
    if (!s->frozen)
        return 1;
    if (s->frozen[i])
        return 0;
    return !s->frozen_experts[i] || !s->frozen_experts[i][e];
}

size_t moe_tune_sel_count(const struct moe_tune_sel *s, const struct moe_params *p)
{
    if (!s->frozen)
        return moe_params_count(p);
    size_t n = 0;
    for (size_t i = 0; i < p->n; i++) {
        if (s->frozen[i])
            continue;
        if (!s->frozen_experts[i]) {
            n += p->t[i].numel;
            continue;
        }
        size_t E = p->t[i].shape[0];
        for (size_t e = 0; e < E; e++)
            n += s->frozen_experts[i][e] ? 0 : p->t[i].numel / E;
    }
    return n;
}

void moe_tune_sel_release(struct moe_tune_sel *s)
{
    if (!s)
        return;
    for (size_t i = 0; s->frozen_experts && i < s->n; i++)
        free(s->frozen_experts[i]);
    free(s->frozen_experts);
    free(s->frozen);
    memset(s, 0, sizeof *s);
}

int moe_tune_select_ex(struct moe_tune_sel *ret, const struct moe_params *p, const char *const *trainable,
                       size_t n_trainable, const char *const *freeze, size_t n_freeze, const char *what_t,
                       const char *what_f, struct moe_err *err)
{
    struct moe_tune_sel s;
    int rc;
    if ((rc = moe_tune_sel_init(&s, p, n_trainable > 0, err)) ||
        (rc = moe_tune_sel_mark(&s, p, trainable, n_trainable, 0, what_t, err)) ||
        (rc = moe_tune_sel_mark(&s, p, freeze, n_freeze, 1, what_f, err)))
        goto fail;
    size_t kept = 0;
    for (size_t i = 0; i < p->n; i++)
        kept += !s.frozen[i];
    if (!kept) {
        rc = moe_error(err, MOE_ECONFIG, "%s / %s leave no tensor of the model trainable", what_t, what_f);
        goto fail;
    }
    *ret = s;
    return 0;
fail:
    moe_tune_sel_release(&s);
    return rc;
}

int moe_tune_select(const struct moe_params *p, const char *const *trainable, size_t n_trainable,
                    const char *const *freeze, size_t n_freeze, const char *what_t, const char *what_f,
                    uint8_t *frozen, struct moe_err *err)
{
    struct moe_tune_sel s;
    int rc = moe_tune_select_ex(&s, p, trainable, n_trainable, freeze, n_freeze, what_t, what_f, err);
    if (rc)
        return rc;
    if (p->n)
        memcpy(frozen, s.frozen, p->n);
    moe_tune_sel_release(&s);
    return 0;
}

int moe_lora_select(struct moe_tune_sel *ret, const struct moe_params *p, int freeze_router,
                    const char *const *trainable, size_t n_trainable, const char *const *freeze, size_t n_freeze,
                    struct moe_err *err)
{
    // the base frozen but for the routers (and the language embeddings that
    // route) and what train.trainable names; train.freeze has the last word
    static const char *const router_globs[] = { "*.router.*", "*.lang_emb" };
    struct moe_tune_sel s;
    int rc;
    if ((rc = moe_tune_sel_init(&s, p, 1, err)) ||
        (!freeze_router && (rc = moe_tune_sel_mark(&s, p, router_globs, 2, 0, NULL, err))) ||
        (rc = moe_tune_sel_mark(&s, p, trainable, n_trainable, 0, MOE_TUNE_WHAT_TRAINABLE, err)) ||
        (rc = moe_tune_sel_mark(&s, p, freeze, n_freeze, 1, MOE_TUNE_WHAT_FREEZE, err))) {
        moe_tune_sel_release(&s);
        return rc;
    }
    *ret = s;
    return 0;
}

int moe_lora_plan(struct moe_lora *l, const struct moe_params *p, const uint8_t *frozen,
                  const char *const *targets, size_t n_targets, size_t rank, double alpha, int shared,
                  struct moe_err *err)
{
    memset(l, 0, sizeof *l);
    moe_params_init(&l->p);
    moe_plan_init(&l->plan, err);
    l->rank = rank;
    l->alpha = alpha;
    l->scale = alpha / (double)rank;
    int rc = moe_tune_check_globs(p, targets, n_targets, "lora.targets", err);
    if (rc)
        return rc;
    if (rank == 0)
        return moe_error(err, MOE_ECONFIG, "lora.rank must be at least 1");
    l->t = calloc(p->n ? p->n : 1, sizeof *l->t);
    if (!l->t)
        return moe_error(err, MOE_ENOMEM, "out of memory");
    size_t biggest = 0;
    for (size_t i = 0; i < p->n; i++) {
        const struct moe_tensor *bt = &p->t[i];
        if (!frozen[i] || (bt->ndim != 2 && bt->ndim != 3) || !moe_tune_match(targets, n_targets, bt->name))
            continue;
        struct moe_lora_target *t = &l->t[l->n];
        t->base = (int)i;
        t->E = bt->ndim == 3 ? bt->shape[0] : 1;
        t->out = bt->shape[bt->ndim - 2];
        t->in = bt->shape[bt->ndim - 1];
        t->shared = shared && t->E > 1;
        size_t na = t->shared || t->E == 1 ? 1 : t->E;
        if (rank > t->out || rank > t->in) {
            rc = moe_error(err, MOE_ECONFIG, "lora.rank %zu exceeds the smaller side of '%s' [%zu, %zu]", rank,
                           bt->name, t->out, t->in);
            goto fail;
        }
        char name[MOE_NAME_MAX + 16];
        snprintf(name, sizeof name, "%s.lora_A", bt->name);
        t->a = na == 1 ? moe_params_add(&l->p, name, MOE_SHAPE(rank, t->in), err)
                       : moe_params_add(&l->p, name, MOE_SHAPE(na, rank, t->in), err);
        snprintf(name, sizeof name, "%s.lora_B", bt->name);
        t->b = t->a < 0 ? t->a
               : na == 1 ? moe_params_add(&l->p, name, MOE_SHAPE(t->out, rank), err)
                         : moe_params_add(&l->p, name, MOE_SHAPE(na, t->out, rank), err);
        if (t->b < 0) {
            rc = t->b;
            goto fail;
        }
        // the frozen base values, (E, out, in) as the tensor
        struct moe_dim dE = { t->E, "experts of the adapted tensor" }, dO = { t->out, "rows of the adapted matrix" },
                       dI = { t->in, "columns of the adapted matrix" };
        if ((rc = moe_plan_buf(&l->plan, &t->w0, MOE_ROLE_STATE, MOE_DT_F32, MOE_DIMS(dE, dO, dI), "%.80s W0",
                               bt->name)))
            goto fail;
        if (t->out * t->in > biggest)
            biggest = t->out * t->in;
        l->n++;
    }
    if (!l->n) {
        rc = moe_error(err, MOE_ECONFIG, "lora.targets: no frozen matrix of the model matches (matrices are 2-d or [E, out, in] tensors)");
        goto fail;
    }
    // s B A of one matrix, before it is added to W0 (moe_lora_apply)
    if ((rc = moe_plan_buf(&l->plan, &l->tmp, MOE_ROLE_SCRATCH, MOE_DT_F32,
                           MOE_DIMS({ biggest, "elements of the largest adapted matrix" }), "LoRA product")))
        goto fail;
    return 0;
fail:
    moe_lora_release(l);
    return rc;
}

int moe_lora_alloc(struct moe_lora *l, const struct moe_params *p, struct moe_err *err)
{
    l->plan.err = err; // the plan keeps the layout's, which may be gone
    int rc = moe_params_alloc(&l->p, err);
    if (!rc)
        rc = moe_plan_alloc(&l->plan, NULL);
    if (rc)
        return rc;
    for (size_t k = 0; k < l->n; k++)
        memcpy(l->t[k].w0, moe_params_data(p, l->t[k].base), p->t[l->t[k].base].numel * sizeof *l->t[k].w0);
    return 0;
}

size_t moe_lora_bytes(const struct moe_lora *l)
{
    // the values and the gradients of l->p as moe_params_alloc has moe_alloc round them
    size_t v = l->p.numel > (SIZE_MAX - 63) / sizeof(float) ? SIZE_MAX - 63 : l->p.numel * sizeof(float), sum;
    v = v ? (v + 63) & ~(size_t)63 : 64;
    if (__builtin_mul_overflow(v, (size_t)2, &sum) ||
        __builtin_add_overflow(sum, moe_plan_buffer_bytes(&l->plan), &sum))
        return SIZE_MAX;
    return sum;
}

int moe_lora_create(struct moe_lora *l, const struct moe_params *p, const uint8_t *frozen,
                    const char *const *targets, size_t n_targets, size_t rank, double alpha, int shared,
                    struct moe_err *err)
{
    int rc = moe_lora_plan(l, p, frozen, targets, n_targets, rank, alpha, shared, err);
    if (!rc && (rc = moe_lora_alloc(l, p, err)))
        moe_lora_release(l);
    return rc;
}

int moe_lora_setup(struct moe_tune_sel *ret_sel, struct moe_lora *ret_l, const struct moe_params *p,
                   const struct moe_lora_cfg *c, const char *const *trainable, size_t n_trainable,
                   const char *const *freeze, size_t n_freeze, struct moe_err *err)
{
    memset(ret_sel, 0, sizeof *ret_sel);
    memset(ret_l, 0, sizeof *ret_l);
    int rc = moe_lora_select(ret_sel, p, c->freeze_router, trainable, n_trainable, freeze, n_freeze, err);
    if (rc)
        return rc;
    if ((rc = moe_lora_plan(ret_l, p, ret_sel->frozen, c->targets, c->n_targets, c->rank, c->alpha,
                            c->expert_shared, err)))
        moe_tune_sel_release(ret_sel);
    return rc;
}

size_t moe_lora_trained(const struct moe_tune_sel *sel, const struct moe_params *p, const struct moe_lora *l)
{
    return moe_tune_sel_count(sel, p) + l->p.numel;
}

void moe_lora_init(struct moe_lora *l, uint64_t seed)
{
    for (size_t k = 0; k < l->n; k++) {
        moe_init_uniform(&l->p, l->t[k].a, seed, 1.0f);
        memset(moe_params_data(&l->p, l->t[k].b), 0, l->p.t[l->t[k].b].numel * sizeof(float));
    }
}

// Adapter e of target t: A (r, in) and B (out, r).
static const float *adapter_a(const struct moe_lora *l, const struct moe_lora_target *t, size_t e, const float *base)
{
    return base + l->p.t[t->a].offset + (t->shared ? 0 : e * l->rank * t->in);
}
static const float *adapter_b(const struct moe_lora *l, const struct moe_lora_target *t, size_t e, const float *base)
{
    return base + l->p.t[t->b].offset + (t->shared ? 0 : e * t->out * l->rank);
}

void moe_lora_apply(const struct moe_lora *l, struct moe_params *p)
{
    float s = (float)l->scale;
    size_t r = l->rank;
    for (size_t k = 0; k < l->n; k++) {
        const struct moe_lora_target *t = &l->t[k];
        size_t mn = t->out * t->in;
        float *w = moe_params_data(p, t->base);
        for (size_t e = 0; e < t->E; e++) {
            // delta = s B A, then W = W0 + delta (one rounding, as merging would do)
            moe_gemm(0, 0, t->out, t->in, r, s, adapter_b(l, t, e, l->p.data), r, adapter_a(l, t, e, l->p.data),
                     t->in, 0.0f, l->tmp, t->in);
            const float *w0 = t->w0 + e * mn;
            float *we = w + e * mn;
            for (size_t i = 0; i < mn; i++)
                we[i] = l->tmp[i] != 0.0f ? w0[i] + l->tmp[i] : w0[i];
        }
    }
}

void moe_lora_unapply(const struct moe_lora *l, struct moe_params *p)
{
    for (size_t k = 0; k < l->n; k++)
        memcpy(moe_params_data(p, l->t[k].base), l->t[k].w0, p->t[l->t[k].base].numel * sizeof(float));
}

void moe_lora_backward(struct moe_lora *l, const struct moe_params *p)
{
    float s = (float)l->scale;
    size_t r = l->rank;
    for (size_t k = 0; k < l->n; k++) {
        const struct moe_lora_target *t = &l->t[k];
        const float *g = moe_params_grad(p, t->base);
        for (size_t e = 0; e < t->E; e++) {
            const float *ge = g + e * t->out * t->in;
            // dB += s G A^T (out, r); dA += s B^T G (r, in); shared adapters sum over e
            float *db = (float *)adapter_b(l, t, e, l->p.grad), *da = (float *)adapter_a(l, t, e, l->p.grad);
            moe_gemm(0, 1, t->out, r, t->in, s, ge, t->in, adapter_a(l, t, e, l->p.data), t->in, 1.0f, db, r);
            moe_gemm(1, 0, r, t->in, t->out, s, adapter_b(l, t, e, l->p.data), r, ge, t->in, 1.0f, da, t->in);
        }
    }
}

size_t moe_lora_count(const struct moe_lora *l) { return moe_params_count(&l->p); }

void moe_lora_release(struct moe_lora *l)
{
    if (!l)
        return;
    free(l->t);
    moe_plan_release(&l->plan); // each W0 and the scratch
    moe_params_release(&l->p);
    memset(l, 0, sizeof *l);
}
