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

int moe_evaluate(struct moe_model *m, const struct moe_dataset *d, const char *split, size_t chunk,
                 double active_threshold, struct moe_stats *s, struct moe_eval_row *ret, struct moe_err *err)
{
    moe_stats_reset(s);
    if (chunk > m->max_batch)
        chunk = m->max_batch;
    for (size_t start = 0; start < d->n; start += chunk) {
        size_t n = d->n - start < chunk ? d->n - start : chunk;
        struct moe_batch b = slice(d, start, n);
        int rc = moe_model_run(m, &b, 0, s, err);
        if (rc)
            return rc;
    }
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
    r->accuracy = task == MOE_TASK_CLASSIFICATION ? (double)s->correct / n : NAN;
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
                       moe_route_acc_label_mi(a) };
        for (size_t i = 0; i < nf; i++)
            *f[i] += v[i] / (double)s->n_route;
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

int moe_train(struct moe_model *m, const struct moe_data *data, const struct moe_config *cfg, moe_eval_cb cb,
              void *ctx, struct moe_train_result *ret, struct moe_err *err)
{
    memset(ret, 0, sizeof *ret);
    ret->criterion_epoch = -1;
    const struct moe_dataset *tr = &data->train, *te = &data->test;
    uint64_t seed = (uint64_t)moe_cfg_int(cfg, "train.seed");
    uint64_t epochs = (uint64_t)moe_cfg_int(cfg, "train.epochs");
    uint64_t eval_every = (uint64_t)moe_cfg_int(cfg, "train.eval_every");
    int shuffle = moe_cfg_bool(cfg, "train.shuffle");
    const char *crit = moe_cfg_str(cfg, "train.criterion");
    double crit_value = moe_cfg_num(cfg, "train.criterion_value");
    int use_crit = strcmp(crit, "none") != 0;
    double thr = moe_cfg_num(cfg, "train.active_threshold");
    size_t chunk = (size_t)moe_cfg_int(cfg, "train.max_batch_eval");

    struct moe_optim opt;
    int rc = moe_optim_init(&opt, cfg, m->params.numel, err);
    if (rc)
        return rc;
    size_t bs = (size_t)moe_cfg_int(cfg, "optim.batch_size");
    if (opt.type == MOE_OPTIM_GD || bs == 0 || bs > tr->n)
        bs = tr->n;
    if (bs > m->max_batch)
        bs = m->max_batch;

    struct moe_stats st, sb; // evaluation, and training steps since the last batch row
    struct moe_dataset batch;
    memset(&batch, 0, sizeof batch);
    memset(&sb, 0, sizeof sb);
    uint64_t log_every = (uint64_t)moe_cfg_int(cfg, "train.log_every");
    size_t n_label = tr->task == MOE_TASK_CLASSIFICATION ? tr->n_out : tr->n_group;
    uint32_t *perm = NULL;
    double *gm_train = NULL, *gm_test = NULL;
    if ((rc = moe_stats_init(&st, m->n_expert, tr->n_group, err)) ||
        (rc = moe_stats_init_routing(&st, m, n_label, err)) ||
        (rc = moe_stats_init(&sb, m->n_expert, tr->n_group, err)) ||
        (rc = moe_stats_init_routing(&sb, m, n_label, err)))
        goto out;
    perm = malloc((tr->n ? tr->n : 1) * sizeof *perm);
    gm_train = calloc(m->n_expert + 1, sizeof *gm_train);
    gm_test = calloc(m->n_expert + 1, sizeof *gm_test);
    if (!perm || !gm_train || !gm_test) {
        rc = moe_error(err, MOE_ENOMEM, "out of memory");
        goto out;
    }
    int shuffled = shuffle && bs < tr->n;
    if (shuffled) {
        rc = moe_dataset_alloc(&batch, tr->task, bs, tr->n_in, tr->n_out, tr->group != NULL, err);
        if (rc)
            goto out;
    }

    double t0 = now_seconds(), train_time = 0.0;
    uint64_t rows_seen = 0;
    struct moe_eval_row rtr, rte;
    for (uint64_t epoch = 0;; epoch++) {
        if (epoch > 0) {
            double ts = now_seconds();
            if (shuffled) {
                struct moe_rng r = moe_rng_make(seed, MOE_RNG_SHUFFLE, (uint32_t)epoch);
                moe_rng_permutation(&r, perm, tr->n);
            }
            for (size_t start = 0; start < tr->n; start += bs) {
                size_t n = tr->n - start < bs ? tr->n - start : bs;
                struct moe_batch b;
                if (shuffled) {
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
                b.step = ret->steps;
                double before = sb.loss;
                rc = moe_model_run(m, &b, 1, &sb, err);
                if (rc)
                    goto out;
                ret->steps++;
                double step_loss = sb.loss - before;
                if (!isfinite(step_loss)) {
                    rc = moe_error(err, MOE_ENUMERIC, "step %llu (epoch %llu): training loss is %s",
                                   (unsigned long long)ret->steps, (unsigned long long)epoch,
                                   isnan(step_loss) ? "nan" : "inf");
                    goto out;
                }
                double gnorm = moe_optim_step(&opt, m->params.data, m->params.grad);
                if (!isfinite(gnorm)) {
                    rc = moe_error(err, MOE_ENUMERIC, "step %llu (epoch %llu): gradient is not finite at training loss %g (diverged; try a smaller optim.lr)",
                                   (unsigned long long)ret->steps, (unsigned long long)epoch, step_loss / (double)n);
                    goto out;
                }
                rows_seen += n;
                if (log_every && ret->steps % log_every == 0 && (rc = batch_row(&sb, tr->task, thr, ret->steps, epoch, cb, ctx, err)))
                    goto out;
            }
            train_time += now_seconds() - ts;
            ret->epochs = epoch;
        }
        int last = epoch == epochs;
        int log_due = epoch % eval_every == 0 || last;
        if (!log_due && !use_crit)
            continue;
        rc = moe_evaluate(m, tr, "train", chunk, thr, &st, &rtr, err);
        if (rc)
            goto out;
        rtr.step = ret->steps;
        rtr.epoch = epoch;
        fill_gate_mean(&rtr, &st, gm_train);
        if (!isfinite(rtr.loss)) {
            rc = moe_error(err, MOE_ENUMERIC, "epoch %llu: training loss is not finite (diverged; try a smaller optim.lr)",
                           (unsigned long long)epoch);
            goto out;
        }
        int met = use_crit && epoch > 0 && ret->criterion_epoch < 0 && criterion_met(crit, crit_value, &rtr);
        if (met) {
            ret->criterion_epoch = (int64_t)epoch;
            last = 1;
        }
        if (log_due || met) {
            if (!log_every && (rc = batch_row(&sb, tr->task, thr, ret->steps, epoch, cb, ctx, err)))
                goto out;
            rc = moe_evaluate(m, te, "test", chunk, thr, &st, &rte, err);
            if (rc)
                goto out;
            rte.step = ret->steps;
            rte.epoch = epoch;
            fill_gate_mean(&rte, &st, gm_test);
            if (cb && ((rc = cb(ctx, &rtr, err)) || (rc = cb(ctx, &rte, err))))
                goto out;
        }
        if (last) {
            ret->final_train = rtr;
            ret->final_test = rte;
            ret->final_train.gate_mean = ret->final_test.gate_mean = NULL;
            for (size_t e = 0; e < m->n_expert && e < 64; e++)
                ret->final_gate_mean[e] = gm_train[e];
            break;
        }
    }
    ret->wall_seconds = now_seconds() - t0;
    ret->rows_per_second = train_time > 0 ? (double)rows_seen / train_time : 0.0;
out:
    moe_optim_release(&opt);
    moe_stats_release(&st);
    moe_stats_release(&sb);
    moe_dataset_release(&batch);
    free(perm);
    free(gm_train);
    free(gm_test);
    return rc;
}
