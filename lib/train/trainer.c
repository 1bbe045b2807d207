// trainer.c: the training loop and split evaluation.
// A step: gather a batch -> model forward/backward (gradients of the batch
// mean) -> optimizer over the flat buffer. After each epoch the training split
// is evaluated when a metrics row or the stopping criterion needs it.
// Everything here is serial or thread-count independent, so a run's metrics
// and weights are byte-identical for any --threads.
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/gemm.h"
#include "core/rng.h"
#include "moe/route_stats.h"
#include "train/train.h"

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static struct moe_batch slice(const struct moe_dataset *d, size_t start, size_t n)
{
    struct moe_batch b = {
        .n = n,
        .x = d->x + start * d->n_in,
        .y = d->y ? d->y + start * d->n_out : NULL,
        .label = d->label ? d->label + start : NULL,
        .group = d->group ? d->group + start : NULL,
    };
    return b;
}

int moe_lm_batch_alloc(struct moe_lm_batch *b, size_t n, size_t C, struct moe_err *err)
{
    b->tok = malloc(n * (C + 1) * sizeof *b->tok);
    b->cls = malloc(n * (C + 1) * sizeof *b->cls);
    b->lang = malloc(n * sizeof *b->lang);
    b->bytes = malloc(n * sizeof *b->bytes);
    if (!b->tok || !b->cls || !b->lang || !b->bytes)
        return moe_error(err, MOE_ENOMEM, "out of memory for a batch of %zu windows", n);
    return 0;
}

void moe_lm_batch_release(struct moe_lm_batch *b)
{
    free(b->tok);
    free(b->cls);
    free(b->lang);
    free(b->bytes);
    memset(b, 0, sizeof *b);
}

struct moe_batch moe_lm_batch_fill(const struct moe_dataset *d, struct moe_lm_batch *lb, uint64_t seed,
                                   uint64_t epoch, size_t first, size_t n)
{
    const struct moe_text *t = d->text;
    size_t C = d->n_ctx;
    for (size_t i = 0; i < n; i++) {
        size_t seg, start;
        if (epoch > 0) {
            start = moe_text_random_start(t, C, seed, epoch, first + i, &seg);
        } else {
            start = d->win[first + i];
            seg = moe_text_seg_of(t, start);
        }
        memcpy(lb->tok + i * (C + 1), t->tok + start, (C + 1) * sizeof *lb->tok);
        memcpy(lb->cls + i * (C + 1), t->cls + start, (C + 1) * sizeof *lb->cls);
        lb->lang[i] = t->seg[seg].lang;
        lb->bytes[i] = t->off[start + C + 1] - t->off[start + 1];
    }
    struct moe_batch b = { .n = n, .tok = lb->tok, .cls = lb->cls, .lang = lb->lang, .bytes = lb->bytes };
    return b;
}

int moe_evaluate(struct moe_model *m, const struct moe_dataset *d, const char *split, size_t chunk,
                 double active_threshold, struct moe_stats *s, struct moe_eval_row *ret, struct moe_err *err)
{
    moe_stats_reset(s);
    if (chunk > m->max_batch)
        chunk = m->max_batch;
    int lm = d->task == MOE_TASK_LM;
    size_t rows = lm ? d->n_win : d->n;
    struct moe_lm_batch lb = { 0 };
    int rc = lm ? moe_lm_batch_alloc(&lb, chunk, d->n_ctx, err) : 0;
    for (size_t start = 0; !rc && start < rows; start += chunk) {
        size_t n = rows - start < chunk ? rows - start : chunk;
        struct moe_batch b = lm ? moe_lm_batch_fill(d, &lb, 0, 0, start, n) : slice(d, start, n);
        moe_threads_adapt();
        rc = moe_model_run(m, &b, 0, s, err);
    }
    moe_lm_batch_release(&lb);
    if (rc)
        return rc;
    memset(ret, 0, sizeof *ret);
    ret->split = split;
    moe_eval_row_fill(ret, s, d->task, active_threshold);
    return 0;
}

void moe_eval_row_fill(struct moe_eval_row *r, const struct moe_stats *s, enum moe_task task, double active_threshold)
{
    r->n = s->n;
    double n = s->n ? (double)s->n : NAN;
    r->loss = s->loss / n;
    r->mse = s->sq_err / n;
    r->accuracy = task != MOE_TASK_REGRESSION ? (double)s->correct / n : NAN;
    if (task == MOE_TASK_LM)
        r->mse = NAN;
    r->bits_per_byte = task == MOE_TASK_LM && s->bytes > 0 ? s->loss / (M_LN2 * s->bytes) : NAN;
    r->lang_loss = s->lang_loss;
    r->lang_tokens = s->lang_tokens;
    r->lang_bytes = s->lang_bytes;
    r->n_lang = s->n_lang;
    r->expert_lang_mi = NAN;
    r->gate_entropy = s->n_expert ? s->gate_entropy / n : NAN;
    r->active_experts = s->n_expert ? (double)moe_stats_active_experts(s, active_threshold) : NAN;
    r->expert_region_mi = s->n_expert && s->contingency ? moe_stats_expert_region_mi(s) : NAN;
    r->n_expert = s->n_expert;
    r->route = s->route;
    r->n_route = s->n_route;
    double *f[] = { &r->aux_loss, &r->z_loss, &r->load_cv, &r->importance_cv, &r->load_max_mean,
                    &r->dropped_fraction, &r->router_entropy, &r->expert_label_mi };
    size_t nf = sizeof f / sizeof *f;
    for (size_t i = 0; i < nf; i++)
        *f[i] = s->n_route ? 0.0 : NAN;
    for (size_t l = 0; l < s->n_route; l++) {
        const struct moe_route_acc *a = &s->route[l];
        double tok = a->tokens ? (double)a->tokens : NAN;
        double v[] = { a->weight > 0 ? a->aux / a->weight : NAN, a->weight > 0 ? a->z / a->weight : NAN,
                       moe_cv(a->routed, a->E), moe_cv(a->gate_sum, a->E), moe_max_mean(a->routed, a->E),
                       moe_route_acc_dropped_fraction(a), a->has_probs ? a->entropy / tok : NAN,
                       a->G2 ? moe_route_acc_label_mi_part(a, 0) : moe_route_acc_label_mi(a) };
        for (size_t i = 0; i < nf; i++)
            *f[i] += v[i] / (double)s->n_route;
        if (a->G2 > 1)
            r->expert_lang_mi = (l ? r->expert_lang_mi : 0.0) + moe_route_acc_label_mi_part(a, 1) / (double)s->n_route;
    }
}

static int criterion_met(const char *metric, double value, const struct moe_eval_row *r)
{
    if (strcmp(metric, "loss") == 0)
        return r->loss <= value;
    if (strcmp(metric, "mse") == 0)
        return r->mse <= value;
    if (strcmp(metric, "accuracy") == 0)
        return r->accuracy >= value;
    return 0;
}

// Gate means for a row: a per-run buffer of E doubles.
static void fill_gate_mean(struct moe_eval_row *r, const struct moe_stats *s, double *buf)
{
    if (!s->n_expert || !s->n)
        return;
    for (size_t e = 0; e < s->n_expert; e++)
        buf[e] = s->gate_sum[e] / (double)s->n;
    r->gate_mean = buf;
}

// A split=batch row from the training steps accumulated in sb, which is then reset.
static int batch_row(struct moe_stats *sb, enum moe_task task, double thr, uint64_t step, uint64_t epoch,
                     moe_eval_cb cb, void *ctx, struct moe_err *err)
{
    if (!sb->n)
        return 0;
    struct moe_eval_row r;
    memset(&r, 0, sizeof r);
    moe_eval_row_fill(&r, sb, task, thr);
    r.split = "batch";
    r.step = step;
    r.epoch = epoch;
    int rc = cb ? cb(ctx, &r, err) : 0;
    moe_stats_reset(sb);
    return rc;
}

// Name the first tensor of the registry whose values in buf (data or grad) are not finite.
static const char *first_nonfinite(const struct moe_params *p, const float *buf, const char **ret_kind)
{
    for (size_t t = 0; t < p->n; t++) {
        const float *v = buf + p->t[t].offset;
        for (size_t i = 0; i < p->t[t].numel; i++)
            if (!isfinite(v[i])) {
                *ret_kind = isnan(v[i]) ? "nan" : "inf";
                return p->t[t].name;
            }
    }
    return NULL;
}

// The largest |w| over all weights, and the tensor holding it (all finite).
static double largest_weight(const struct moe_params *p, const char **ret_name)
{
    double big = -1.0;
    *ret_name = p->n ? p->t[0].name : "?";
    for (size_t t = 0; t < p->n; t++) {
        const float *v = p->data + p->t[t].offset;
        for (size_t i = 0; i < p->t[t].numel; i++)
            if (fabs(v[i]) > big) {
                big = fabs(v[i]);
                *ret_name = p->t[t].name;
            }
    }
    return big;
}

int moe_train_stats_init(struct moe_stats *s, const struct moe_model *m, const struct moe_dataset *d,
                         struct moe_err *err)
{
    int lm = d->task == MOE_TASK_LM;
    size_t n_label = lm ? MOE_N_BYTE_CLASS * d->n_group : d->task == MOE_TASK_CLASSIFICATION ? d->n_out : d->n_group;
    int rc;
    if ((rc = moe_stats_init(s, m->n_expert, lm ? 0 : d->n_group, err)) ||
        (rc = moe_stats_init_routing(s, m, n_label, err)) ||
        (lm && (rc = moe_stats_init_lang(s, d->n_group, err))))
        return rc;
    for (size_t i = 0; lm && i < s->n_route; i++)
        s->route[i].G2 = d->n_group;
    return 0;
}

int moe_train(struct moe_model *m, const struct moe_data *data, const struct moe_config *cfg, moe_eval_cb cb,
              void *ctx, struct moe_train_result *ret, struct moe_err *err)
{
    struct moe_train_hooks h = { .row = cb, .ctx = ctx };
    return moe_train_ex(m, data, cfg, &h, ret, err);
}

int moe_train_ex(struct moe_model *m, const struct moe_data *data, const struct moe_config *cfg,
                 const struct moe_train_hooks *hooks, struct moe_train_result *ret, struct moe_err *err)
{
    memset(ret, 0, sizeof *ret);
    ret->criterion_epoch = -1;
    const struct moe_dataset *tr = &data->train, *te = &data->test;
    moe_eval_cb cb = hooks->row;
    void *ctx = hooks->ctx;
    uint64_t seed = (uint64_t)moe_cfg_int(cfg, "train.seed");
    uint64_t epochs = (uint64_t)moe_cfg_int(cfg, "train.epochs");
    uint64_t eval_every = (uint64_t)moe_cfg_int(cfg, "train.eval_every");
    uint64_t ckpt_every = (uint64_t)moe_cfg_int(cfg, "train.checkpoint_every");
    int shuffle = moe_cfg_bool(cfg, "train.shuffle");
    const char *crit = moe_cfg_str(cfg, "train.criterion");
    double crit_value = moe_cfg_num(cfg, "train.criterion_value");
    int use_crit = strcmp(crit, "none") != 0;
    double thr = moe_cfg_num(cfg, "train.active_threshold");
    size_t chunk = (size_t)moe_cfg_int(cfg, "train.max_batch_eval");

    double t0 = now_seconds();
    // What the optimizer updates: the whole flat buffer, or the unfrozen tensors
    // (of a tensor trained in part, each run of trained expert slices) and the
    // adapters, one segment each. Segments that touch are merged: the moments
    // lie one after another either way, so this changes no result.
    struct moe_lora *lora = hooks->lora;
    uint8_t *const *fe = hooks->frozen ? hooks->frozen_experts : NULL;
    size_t n_seg = 0, numel = 0, max_seg = m->params.n + 1;
    for (size_t i = 0; fe && i < m->params.n; i++)
        max_seg += fe[i] && !hooks->frozen[i] ? m->params.t[i].shape[0] : 0;
    struct moe_optim_seg *segs = malloc(max_seg * sizeof *segs);
    if (!segs)
        return moe_error(err, MOE_ENOMEM, "out of memory");
    if (!hooks->frozen && !lora) {
        segs[n_seg++] = (struct moe_optim_seg){ m->params.data, m->params.grad, m->params.numel };
    } else {
        for (size_t i = 0; i < m->params.n; i++) {
            if (hooks->frozen && hooks->frozen[i])
                continue;
            size_t E = fe && fe[i] ? m->params.t[i].shape[0] : 1, slice = m->params.t[i].numel / E;
            float *w = moe_params_data(&m->params, (int)i), *g = moe_params_grad(&m->params, (int)i);
            for (size_t e = 0; e < E; e++) {
                if (fe && fe[i] && fe[i][e])
                    continue;
                if (n_seg && segs[n_seg - 1].w + segs[n_seg - 1].n == w + e * slice &&
                    segs[n_seg - 1].g + segs[n_seg - 1].n == g + e * slice)
                    segs[n_seg - 1].n += slice;
                else
                    segs[n_seg++] = (struct moe_optim_seg){ w + e * slice, g + e * slice, slice };
            }
        }
        if (lora) {
            segs[n_seg++] = (struct moe_optim_seg){ lora->p.data, lora->p.grad, lora->p.numel };
            moe_lora_apply(lora, &m->params);
        }
    }
    for (size_t k = 0; k < n_seg; k++)
        numel += segs[k].n;
    struct moe_optim opt;
    int rc = moe_optim_init(&opt, cfg, numel, err);
    if (rc) {
        free(segs);
        return rc;
    }
    size_t bs = (size_t)moe_cfg_int(cfg, "optim.batch_size");
    if (opt.type == MOE_OPTIM_GD || bs == 0 || bs > tr->n)
        bs = tr->n;
    if (bs > m->max_batch)
        bs = m->max_batch;
    if (tr->task == MOE_TASK_LM && chunk > bs)
        chunk = bs; // evaluation windows per pass: at most a training batch (memory grows with n_ctx)

    // evaluation of the training and the test split (each row keeps pointers into its
    // own statistics until it is written), and training steps since the last batch row
    struct moe_stats st, ste, sb;
    struct moe_dataset batch;
    memset(&batch, 0, sizeof batch);
    memset(&st, 0, sizeof st);
    memset(&ste, 0, sizeof ste);
    memset(&sb, 0, sizeof sb);
    uint64_t log_every = (uint64_t)moe_cfg_int(cfg, "train.log_every");
    int lm = tr->task == MOE_TASK_LM;
    uint32_t *perm = NULL;
    float *teacher_logits = NULL, *teacher_hidden = NULL;
    double *gm_train = NULL, *gm_test = NULL;
    struct moe_lm_batch lb = { 0 };
    if ((rc = moe_train_stats_init(&st, m, tr, err)) || (rc = moe_train_stats_init(&ste, m, tr, err)) ||
        (rc = moe_train_stats_init(&sb, m, tr, err)))
        goto out;
    perm = malloc((tr->n ? tr->n : 1) * sizeof *perm);
    gm_train = calloc(m->n_expert + 1, sizeof *gm_train);
    gm_test = calloc(m->n_expert + 1, sizeof *gm_test);
    if (!perm || !gm_train || !gm_test) {
        rc = moe_error(err, MOE_ENOMEM, "out of memory");
        goto out;
    }
    int shuffled = shuffle && bs < tr->n && !lm;
    if (lm && (rc = moe_lm_batch_alloc(&lb, bs, tr->n_ctx, err)))
        goto out;
    struct moe_model *teacher = hooks->teacher;
    if (teacher) {
        size_t rows = bs * (lm ? tr->n_ctx : 1);
        if (teacher->n_out != m->n_out || teacher->n_in != m->n_in || teacher->task != m->task || bs > teacher->max_batch) {
            rc = moe_error(err, MOE_ESHAPE, "the teacher (%zu inputs, %zu outputs, batches up to %zu) does not match the student (%zu inputs, %zu outputs, batches of %zu)",
                           teacher->n_in, teacher->n_out, teacher->max_batch, m->n_in, m->n_out, bs);
            goto out;
        }
        if (!(teacher_logits = malloc(rows * m->n_out * sizeof *teacher_logits))) {
            rc = moe_error(err, MOE_ENOMEM, "out of memory for the teacher's logits (%zu x %zu)", rows, m->n_out);
            goto out;
        }
        if (hooks->kd_sym) {
            if (!m->hidden_per_row || teacher->hidden_per_row != m->hidden_per_row) {
                rc = moe_error(err, MOE_ESHAPE, "MoEBERT distillation needs teacher and student with block outputs of one shape (%zu and %zu floats per row)",
                               teacher->hidden_per_row, m->hidden_per_row);
                goto out;
            }
            if (!(teacher_hidden = malloc(bs * m->hidden_per_row * sizeof *teacher_hidden))) {
                rc = moe_error(err, MOE_ENOMEM, "out of memory for the teacher's hidden states (%zu x %zu)", bs,
                               m->hidden_per_row);
                goto out;
            }
        }
    }
    if (shuffled) {
        rc = moe_dataset_alloc(&batch, tr->task, bs, tr->n_in, tr->n_out, tr->group != NULL, err);
        if (rc)
            goto out;
    }

    struct moe_train_ckpt ck = { .pos = { .criterion_epoch = -1 }, .opt = &opt, .batch_stats = &sb };
    struct moe_train_pos *pos = &ck.pos;
    if (hooks->resume) {
        if ((rc = moe_train_pos_read(hooks->resume, pos, err)) ||
            (rc = moe_train_state_restore(hooks->resume, &opt, &sb, err)))
            goto out;
        if (pos->finished) {
            rc = moe_error(err, MOE_EINVAL, "'%s': the run is already complete (step %llu)", hooks->resume->path,
                           (unsigned long long)pos->steps);
            goto out;
        }
    }
    // Hand the state to the checkpoint hook; a raised stop flag ends the run after it.
    #define CHECKPOINT()                                                                   \
        do {                                                                               \
            if (hooks->checkpoint && (rc = hooks->checkpoint(ctx, &ck, err)))              \
                goto out;                                                                  \
        } while (0)
    #define STOP_IF_ASKED()                                                                \
        do {                                                                               \
            if (hooks->stop && *hooks->stop) {                                             \
                CHECKPOINT();                                                              \
                rc = moe_error(err, MOE_EINTR, "stopped at step %llu (epoch %llu)",        \
                               (unsigned long long)pos->steps, (unsigned long long)pos->epoch); \
                goto out;                                                                  \
            }                                                                              \
        } while (0)

    struct moe_eval_row rtr, rte;
    memset(&rtr, 0, sizeof rtr);
    memset(&rte, 0, sizeof rte);
    for (;;) {
        uint64_t epoch = pos->epoch;
        if (epoch > 0 && pos->next_row < tr->n) {
            double ts = now_seconds();
            if (shuffled) {
                struct moe_rng r = moe_rng_make(seed, MOE_RNG_SHUFFLE, (uint32_t)epoch);
                moe_rng_permutation(&r, perm, tr->n);
            }
            for (size_t start = pos->next_row; start < tr->n; start += bs) {
                size_t n = tr->n - start < bs ? tr->n - start : bs;
                moe_threads_adapt(); // runs sharing cores: threads for the cores left idle
                struct moe_batch b;
                if (lm) {
                    b = moe_lm_batch_fill(tr, &lb, seed, epoch, start, n);
                } else if (shuffled) {
                    for (size_t i = 0; i < n; i++) {
                        size_t src = perm[start + i];
                        memcpy(batch.x + i * tr->n_in, tr->x + src * tr->n_in, tr->n_in * sizeof(float));
                        if (tr->y)
                            memcpy(batch.y + i * tr->n_out, tr->y + src * tr->n_out, tr->n_out * sizeof(float));
                        if (tr->label)
                            batch.label[i] = tr->label[src];
                        if (tr->group)
                            batch.group[i] = tr->group[src];
                    }
                    b = slice(&batch, 0, n);
                } else {
                    b = slice(tr, start, n);
                }
                moe_params_zero_grad(&m->params);
                if (lora)
                    moe_params_zero_grad(&lora->p);
                b.step = pos->steps;
                if (teacher) {
                    b.logits_out = teacher_logits;
                    b.hidden_out = teacher_hidden;
                    if ((rc = moe_model_run(teacher, &b, 0, NULL, err)))
                        goto out;
                    b.logits_out = b.hidden_out = NULL;
                    b.teacher = teacher_logits;
                    b.teacher_hidden = teacher_hidden;
                    b.kd_sym = hooks->kd_sym;
                    b.kd_alpha = hooks->kd_alpha;
                    b.kd_tau = hooks->kd_tau;
                }
                double before = sb.loss;
                rc = moe_model_run(m, &b, 1, &sb, err);
                if (rc)
                    goto out;
                if (lora)
                    moe_lora_backward(lora, &m->params);
                uint64_t step = pos->steps + 1;
                double step_loss = sb.loss - before;
                const char *kind = "nan", *bad;
                if (!isfinite(step_loss)) {
                    const char *big_name = NULL;
                    double big = largest_weight(&m->params, &big_name);
                    bad = first_nonfinite(&m->params, m->params.data, &kind);
                    rc = bad ? moe_error(err, MOE_ENUMERIC, "step %llu (epoch %llu): training loss is %s; first non-finite tensor: '%s' (weights, %s)",
                                         (unsigned long long)step, (unsigned long long)epoch,
                                         isnan(step_loss) ? "nan" : "inf", bad, kind)
                             : moe_error(err, MOE_ENUMERIC, "step %llu (epoch %llu): training loss is %s with finite weights; the forward pass overflowed (largest |w| = %g, in '%s'; try a smaller optim.lr)",
                                         (unsigned long long)step, (unsigned long long)epoch,
                                         isnan(step_loss) ? "nan" : "inf", big, big_name);
                    goto out;
                }
                double gnorm = moe_optim_grad_norm_segs(segs, n_seg);
                if (!isfinite(gnorm)) {
                    bad = first_nonfinite(&m->params, m->params.grad, &kind);
                    if (!bad && lora)
                        bad = first_nonfinite(&lora->p, lora->p.grad, &kind);
                    rc = moe_error(err, MOE_ENUMERIC, "step %llu (epoch %llu): gradient of '%s' is not finite (%s) at training loss %g (diverged; try a smaller optim.lr)",
                                   (unsigned long long)step, (unsigned long long)epoch, bad ? bad : "?", kind,
                                   step_loss / (double)n);
                    goto out;
                }
                moe_optim_step_segs(&opt, segs, n_seg, gnorm);
                if (lora)
                    moe_lora_apply(lora, &m->params);
                pos->steps = step;
                pos->rows_seen += n;
                pos->next_row = start + n;
                if (log_every && pos->steps % log_every == 0 &&
                    (rc = batch_row(&sb, tr->task, thr, pos->steps, epoch, cb, ctx, err)))
                    goto out;
                if (hooks->stop && *hooks->stop) {
                    pos->train_seconds += now_seconds() - ts;
                    STOP_IF_ASKED();
                }
                if (ckpt_every && pos->steps % ckpt_every == 0 && pos->next_row < tr->n) {
                    double tn = now_seconds();
                    pos->train_seconds += tn - ts;
                    ts = tn;
                    CHECKPOINT();
                }
            }
            pos->train_seconds += now_seconds() - ts;
            pos->next_row = tr->n;
        }
        ret->epochs = epoch;
        int last = epoch == epochs;
        int log_due = epoch % eval_every == 0 || last;
        if (log_due || use_crit) {
            rc = moe_evaluate(m, tr, "train", chunk, thr, &st, &rtr, err);
            if (rc)
                goto out;
            rtr.step = pos->steps;
            rtr.epoch = epoch;
            fill_gate_mean(&rtr, &st, gm_train);
            if (!isfinite(rtr.loss)) {
                const char *kind = "nan", *bad = first_nonfinite(&m->params, m->params.data, &kind);
                rc = moe_error(err, MOE_ENUMERIC, "epoch %llu (step %llu): evaluated training loss is not finite; first non-finite tensor: '%s' (weights, %s)",
                               (unsigned long long)epoch, (unsigned long long)pos->steps, bad ? bad : "none", kind);
                goto out;
            }
            int met = use_crit && epoch > 0 && pos->criterion_epoch < 0 && criterion_met(crit, crit_value, &rtr);
            if (met) {
                pos->criterion_epoch = (int64_t)epoch;
                last = 1;
            }
            if (log_due || met) {
                if (!log_every && (rc = batch_row(&sb, tr->task, thr, pos->steps, epoch, cb, ctx, err)))
                    goto out;
                rc = moe_evaluate(m, te, "test", chunk, thr, &ste, &rte, err);
                if (rc)
                    goto out;
                rte.step = pos->steps;
                rte.epoch = epoch;
                fill_gate_mean(&rte, &ste, gm_test);
                if (cb && ((rc = cb(ctx, &rtr, err)) || (rc = cb(ctx, &rte, err))))
                    goto out;
            }
        }
        if (last) {
            ret->final_train = rtr;
            ret->final_test = rte;
            // the rows' pointers into the statistics do not outlive this call
            struct moe_eval_row *fin[] = { &ret->final_train, &ret->final_test };
            for (int i = 0; i < 2; i++) {
                fin[i]->gate_mean = NULL;
                fin[i]->route = NULL;
                fin[i]->n_route = 0;
                fin[i]->lang_loss = fin[i]->lang_bytes = NULL;
                fin[i]->lang_tokens = NULL;
                fin[i]->n_lang = 0;
            }
            for (size_t e = 0; e < m->n_expert && e < 64; e++)
                ret->final_gate_mean[e] = gm_train[e];
            // No checkpoint here: the caller writes the model and the summary, whose
            // presence marks the run complete; until then the last checkpoint stands.
            pos->finished = 1;
            break;
        }
        // The epoch is done: the next one starts at its first row.
        pos->epoch++;
        pos->next_row = 0;
        STOP_IF_ASKED();
        CHECKPOINT();
    }
    #undef STOP_IF_ASKED
    #undef CHECKPOINT
    ret->wall_seconds = now_seconds() - t0;
    ret->rows_per_second = pos->train_seconds > 0 ? (double)pos->rows_seen / pos->train_seconds : 0.0;
    ret->tokens_per_second = lm ? ret->rows_per_second * (double)tr->n_ctx : NAN;
out:
    ret->steps = ck.pos.steps;
    ret->criterion_epoch = ck.pos.criterion_epoch;
    if (rc)
        ret->wall_seconds = now_seconds() - t0;
    moe_optim_release(&opt);
    free(segs);
    moe_stats_release(&st);
    moe_stats_release(&ste);
    moe_stats_release(&sb);
    moe_dataset_release(&batch);
    moe_lm_batch_release(&lb);
    free(perm);
    free(teacher_logits);
    free(teacher_hidden);
    free(gm_train);
    free(gm_test);
    return rc;
}
