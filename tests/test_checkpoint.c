// test_checkpoint.c: stopping a training run at a chosen step and continuing it
// from its checkpoint gives the same metrics rows and the same final weights,
// bit for bit, as the run never stopped (train.h, checkpoint.c). The CLI test
// tests/cli/test_resume.sh does the same with real signals at random moments;
// here the stop is raised from the hooks, so every kind of position is hit on
// purpose: the first step, mid-epoch, the last step of an epoch, right after an
// evaluation, just before and after a split=batch row.
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "io/safetensors.h"
#include "testutil.h"
#include "train/train.h"

// A sparse model with state in every corner: AdamW moments, noisy routing
// (draws keyed by the step), bias balancing (a state tensor), capacity drops,
// split=batch rows every 5 steps, shuffled batches. 200 rows / 16 = 13 steps per epoch.
static const char *const MOE_CFG =
    "{\"data\": {\"source\": \"synthetic\", \"synthetic\": {\"kind\": \"classes\", \"n_train\": 200,"
    " \"n_test\": 64, \"n_in\": 6, \"n_regions\": 4}},"
    " \"model\": {\"type\": \"mlp-moe\", \"n_embd\": 8, \"n_layer\": 2, \"n_ff\": 8, \"n_expert\": 4,"
    " \"n_expert_used\": 2},"
    " \"moe\": {\"router\": \"noisy-topk\", \"aux_loss\": \"shazeer\", \"capacity_factor\": 1.0},"
    " \"optim\": {\"type\": \"adamw\", \"lr\": 0.01, \"batch_size\": 16},"
    " \"train\": {\"seed\": 5, \"epochs\": 3, \"log_every\": 5}}";
// The 1991 mixture with SGD momentum (one moment buffer, no routing statistics).
static const char *const MIX_CFG =
    "{\"data\": {\"source\": \"synthetic\", \"synthetic\": {\"n_train\": 120, \"n_test\": 40}},"
    " \"model\": {\"type\": \"mixture\", \"n_expert\": 3, \"expert\": \"linear\"},"
    " \"loss\": {\"type\": \"nll\"}, \"optim\": {\"type\": \"sgd\", \"lr\": 0.05, \"momentum\": 0.9,"
    " \"batch_size\": 32}, \"train\": {\"seed\": 2, \"epochs\": 4, \"eval_every\": 2}}";

// What a run produced: its metrics rows as text, and its final weights.
struct outcome {
    char *rows;
    size_t len, cap;
    size_t ckpt_len;   // rows text length at the last checkpoint
    float *w;
    size_t numel;
    int rc;
    struct moe_err err;
};

struct ctx {
    struct outcome *o;
    struct moe_model *m;
    const char *path;
    uint64_t stop_at_step;   // raise stop when a checkpoint hook sees this step (0: never)
    int stop_at_eval;        // raise stop at the Nth test row (0: never)
    int evals;
    volatile sig_atomic_t stop;
    int checkpoints;
};

static int on_row(void *p, const struct moe_eval_row *r, struct moe_err *err)
{
    (void)err;
    struct ctx *c = p;
    char line[512];
    int n = snprintf(line, sizeof line, "%llu,%llu,%s,%.9g,%.9g,%.9g,%.9g,%.9g,%.9g,%.9g\n",
                     (unsigned long long)r->step, (unsigned long long)r->epoch, r->split, r->loss, r->mse,
                     r->accuracy, r->aux_loss, r->load_cv, r->dropped_fraction, r->router_entropy);
    struct outcome *o = c->o;
    if (o->len + (size_t)n + 1 > o->cap) {
        o->cap = 2 * (o->len + (size_t)n + 1);
        o->rows = realloc(o->rows, o->cap);
        ck_assert_ptr_nonnull(o->rows);
    }
    memcpy(o->rows + o->len, line, (size_t)n + 1);
    o->len += (size_t)n;
    if (strcmp(r->split, "test") == 0 && ++c->evals == c->stop_at_eval)
        c->stop = 1;
    return 0;
}

static int on_checkpoint(void *p, const struct moe_train_ckpt *ck, struct moe_err *err)
{
    struct ctx *c = p;
    c->checkpoints++;
    c->o->ckpt_len = c->o->len;
    if (c->stop_at_step && ck->pos.steps == c->stop_at_step)
        c->stop = 1;
    return moe_train_checkpoint_write(c->path, c->m, ck, NULL, 0, NULL, 0, err);
}

// Train cfg (+ overrides); resume from c->path when `resume` is set; every step is a checkpoint.
static void run(const char *json, const char *const *ovs, size_t n_ovs, struct ctx *c, int resume)
{
    const char *all[8];
    size_t n = 0;
    for (size_t i = 0; i < n_ovs; i++)
        all[n++] = ovs[i];
    all[n++] = "train.checkpoint_every=1";
    struct moe_config cfg;
    struct moe_err err;
    ck_assert_msg(moe_config_parse(&cfg, moe_run_schema(), moe_run_schema_len(), json, "test", all, n, &err) == 0,
                  "%s", err.msg);
    struct moe_data data;
    ck_assert_msg(moe_data_load(&data, &cfg, &err) == 0, "%s", err.msg);
    size_t max_batch = data.train.n > data.test.n ? data.train.n : data.test.n;
    struct moe_model m;
    ck_assert_msg(moe_model_create(&m, &cfg, NULL, data.train.task, data.train.n_in, data.train.n_out, max_batch,
                                   &err) == 0, "%s", err.msg);
    moe_model_init_weights(&m, (uint64_t)moe_cfg_int(&cfg, "train.seed"));
    ck_assert_msg(moe_model_fit(&m, &data.train, &err) == 0, "%s", err.msg);
    struct moe_st_file f = { 0 };
    if (resume) {
        ck_assert_msg(moe_safetensors_open(c->path, &f, &err) == 0, "%s", err.msg);
        ck_assert_msg(moe_model_load(&m, &f, 1, &err) == 0, "%s", err.msg);
    }
    c->m = &m;
    struct moe_train_hooks h = { .row = on_row, .ctx = c, .checkpoint = on_checkpoint, .stop = &c->stop,
                                 .resume = resume ? &f : NULL };
    struct moe_train_result res;
    c->o->rc = moe_train_ex(&m, &data, &cfg, &h, &res, &c->o->err);
    c->o->numel = m.params.numel;
    free(c->o->w);
    c->o->w = malloc(m.params.numel * sizeof(float));
    ck_assert_ptr_nonnull(c->o->w);
    memcpy(c->o->w, m.params.data, m.params.numel * sizeof(float));
    moe_safetensors_close(&f);
    moe_model_release(&m);
    moe_data_release(&data);
    moe_config_release(&cfg);
}

static void outcome_free(struct outcome *o)
{
    free(o->rows);
    free(o->w);
    memset(o, 0, sizeof *o);
}

// Stop where asked, resume, and compare with the uninterrupted run.
static void stop_and_resume(const char *json, const char *const *ovs, size_t n_ovs, uint64_t stop_step,
                            int stop_eval, const char *what)
{
    char path[64];
    snprintf(path, sizeof path, "/tmp/moe-test-ckpt-%ld.safetensors", (long)getpid());
    struct outcome ref = { 0 }, cut = { 0 };
    struct ctx c0 = { .o = &ref, .path = path };
    run(json, ovs, n_ovs, &c0, 0);
    ck_assert_msg(ref.rc == 0, "%s: reference: %s", what, ref.err.msg);

    struct ctx c1 = { .o = &cut, .path = path, .stop_at_step = stop_step, .stop_at_eval = stop_eval };
    run(json, ovs, n_ovs, &c1, 0);
    ck_assert_msg(cut.rc == MOE_EINTR, "%s: expected MOE_EINTR, got %d (%s)", what, cut.rc, cut.err.msg);
    // What the stopped run reported up to its last checkpoint is a prefix of the reference.
    cut.len = cut.ckpt_len;
    ck_assert_msg(cut.len < ref.len && memcmp(cut.rows, ref.rows, cut.len) == 0, "%s: rows before the stop differ",
                  what);
    cut.rows[cut.len] = '\0';

    struct ctx c2 = { .o = &cut, .path = path };
    run(json, ovs, n_ovs, &c2, 1);
    ck_assert_msg(cut.rc == 0, "%s: resume: %s", what, cut.err.msg);
    ck_assert_msg(cut.len == ref.len && memcmp(cut.rows, ref.rows, ref.len) == 0,
                  "%s: metrics rows differ after resume:\n--- resumed\n%s\n--- reference\n%s", what, cut.rows,
                  ref.rows);
    ck_assert_uint_eq(cut.numel, ref.numel);
    ck_assert_msg(memcmp(cut.w, ref.w, ref.numel * sizeof(float)) == 0, "%s: final weights differ", what);
    remove(path);
    outcome_free(&ref);
    outcome_free(&cut);
}

// 13 steps per epoch: 1 = first step, 4 and 5 around a batch row (log_every 5),
// 12 = mid-epoch, 13 = last step of epoch 1 (the stop lands on step 14), 26 = end of epoch 2.
START_TEST(test_resume_moe_steps)
{
    const uint64_t at[] = { 1, 4, 5, 12, 13, 26, 38 };
    for (size_t i = 0; i < sizeof at / sizeof *at; i++) {
        char what[64];
        snprintf(what, sizeof what, "mlp-moe, stop after step %llu", (unsigned long long)at[i]);
        stop_and_resume(MOE_CFG, NULL, 0, at[i], 0, what);
    }
}
END_TEST

// Right after an evaluation (the checkpoint at the epoch boundary).
START_TEST(test_resume_moe_eval)
{
    for (int e = 1; e <= 3; e++) {
        char what[64];
        snprintf(what, sizeof what, "mlp-moe, stop after evaluation %d", e);
        stop_and_resume(MOE_CFG, NULL, 0, 0, e, what);
    }
}
END_TEST

START_TEST(test_resume_bias_balance)
{
    const char *ovs[] = { "moe.router=\"softmax\"", "moe.bias_balance=true", "moe.aux_loss=\"none\"" };
    stop_and_resume(MOE_CFG, ovs, 3, 7, 0, "bias balancing, stop after step 7");
    stop_and_resume(MOE_CFG, ovs, 3, 20, 0, "bias balancing, stop after step 20");
}
END_TEST

START_TEST(test_resume_mixture_sgd)
{
    stop_and_resume(MIX_CFG, NULL, 0, 2, 0, "mixture, sgd, stop after step 2");
    stop_and_resume(MIX_CFG, NULL, 0, 4, 0, "mixture, sgd, stop after step 4 (end of epoch 1)");
    stop_and_resume(MIX_CFG, NULL, 0, 0, 2, "mixture, sgd, stop after evaluation 2");
}
END_TEST

// A learning-rate schedule and gradient accumulation resume exactly too: the
// rate is a function of the step, and checkpoints fall between optimizer
// steps only. 200 rows / (16 x 3) = 5 steps per epoch, the last of 8 rows.
START_TEST(test_resume_schedule_accumulate)
{
    const char *ovs[] = { "optim.schedule=\"cosine\"", "optim.warmup_steps=3", "optim.min_lr=0.001",
                          "train.accumulate=3" };
    const uint64_t at[] = { 1, 2, 4, 5, 9 };
    for (size_t i = 0; i < sizeof at / sizeof *at; i++) {
        char what[80];
        snprintf(what, sizeof what, "cosine, accumulate 3, stop after step %llu", (unsigned long long)at[i]);
        stop_and_resume(MOE_CFG, ovs, 4, at[i], 0, what);
    }
}
END_TEST

// A finished run extended (moe train --resume DIR --set train.epochs=N): its
// last checkpoint, written after the last epoch's steps and before that
// epoch's evaluation, continued with more epochs gives the rows and weights of
// a run that had N epochs from the start. MIX_CFG evaluates every 2 epochs:
// its 3-epoch run writes rows at epoch 3 that the 5-epoch run does not.
static void extend(const char *json, const char *from, const char *to, const char *const *extra, size_t n_extra,
                   const char *what)
{
    char path[64];
    snprintf(path, sizeof path, "/tmp/moe-test-ckpt-ext-%ld.safetensors", (long)getpid());
    struct outcome ref = { 0 }, cut = { 0 };
    const char *ovs_to[4] = { to }, *ovs_from[4] = { from };
    size_t n_ovs = 1;
    for (size_t i = 0; i < n_extra && n_ovs < 4; i++, n_ovs++)
        ovs_to[n_ovs] = ovs_from[n_ovs] = extra[i];
    struct ctx c0 = { .o = &ref, .path = path };
    run(json, ovs_to, n_ovs, &c0, 0);
    ck_assert_msg(ref.rc == 0, "%s: reference: %s", what, ref.err.msg);
    struct ctx c1 = { .o = &cut, .path = path };
    run(json, ovs_from, n_ovs, &c1, 0);
    ck_assert_msg(cut.rc == 0, "%s: short run: %s", what, cut.err.msg);
    ck_assert_msg(cut.ckpt_len < cut.len, "%s: the last checkpoint comes before the last evaluation's rows", what);
    cut.len = cut.ckpt_len;
    cut.rows[cut.len] = '\0';
    struct ctx c2 = { .o = &cut, .path = path };
    run(json, ovs_to, n_ovs, &c2, 1);
    ck_assert_msg(cut.rc == 0, "%s: extension: %s", what, cut.err.msg);
    ck_assert_msg(cut.len == ref.len && memcmp(cut.rows, ref.rows, ref.len) == 0,
                  "%s: metrics rows differ:\n--- extended\n%s\n--- reference\n%s", what, cut.rows, ref.rows);
    ck_assert_msg(memcmp(cut.w, ref.w, ref.numel * sizeof(float)) == 0, "%s: final weights differ", what);
    remove(path);
    outcome_free(&ref);
    outcome_free(&cut);
}

START_TEST(test_extend_finished)
{
    extend(MOE_CFG, "train.epochs=2", "train.epochs=4", NULL, 0, "mlp-moe, 2 -> 4 epochs");
    extend(MIX_CFG, "train.epochs=3", "train.epochs=5", NULL, 0, "mixture, eval_every 2, 3 -> 5 epochs");
    // schedules that do not depend on the run's length, with accumulation
    const char *inv[] = { "optim.schedule=\"inv_sqrt\"", "optim.warmup_steps=4", "train.accumulate=2" };
    extend(MOE_CFG, "train.epochs=1", "train.epochs=3", inv, 3, "mlp-moe, inv_sqrt, accumulate 2, 1 -> 3 epochs");
    const char *cos[] = { "optim.schedule=\"cosine\"", "optim.decay_steps=30" };
    extend(MOE_CFG, "train.epochs=2", "train.epochs=3", cos, 2, "mlp-moe, cosine over 30 steps, 2 -> 3 epochs");
}
END_TEST

// The checkpoint of a run of json stopped after step 3, at /tmp/moe-test-ckpt-TAG-PID.safetensors (path).
static void stopped_checkpoint(char *path, size_t len, const char *tag, const char *json, struct outcome *o)
{
    snprintf(path, len, "/tmp/moe-test-ckpt-%s-%ld.safetensors", tag, (long)getpid());
    struct ctx c = { .o = o, .path = path, .stop_at_step = 3 };
    run(json, NULL, 0, &c, 0);
    ck_assert_int_eq(o->rc, MOE_EINTR);
}

// A checkpoint that is not one, or whose statistics do not fit the model, is refused.
START_TEST(test_resume_rejects_foreign)
{
    char path[64];
    struct outcome o = { 0 };
    stopped_checkpoint(path, sizeof path, "b", MOE_CFG, &o);
    // Resuming the sparse model's checkpoint into the mixture: the weights do not match.
    struct moe_config cfg;
    struct moe_err err;
    ck_assert(moe_config_parse(&cfg, moe_run_schema(), moe_run_schema_len(), MIX_CFG, "test", NULL, 0, &err) == 0);
    struct moe_data data;
    ck_assert(moe_data_load(&data, &cfg, &err) == 0);
    struct moe_model m;
    ck_assert(moe_model_create(&m, &cfg, NULL, data.train.task, data.train.n_in, data.train.n_out, 120, &err) == 0);
    struct moe_st_file f = { 0 };
    ck_assert(moe_safetensors_open(path, &f, &err) == 0);
    ck_assert_int_ne(moe_model_load(&m, &f, 1, &err), 0);
    struct moe_train_pos pos;
    ck_assert_int_eq(moe_train_pos_read(&f, &pos, &err), 0);
    ck_assert_uint_eq(pos.steps, 4);
    // The optimizer and statistics of the mixture do not fit the sparse model's file.
    struct moe_train_hooks h = { .resume = &f };
    struct moe_train_result res;
    int rc = moe_train_ex(&m, &data, &cfg, &h, &res, &err);
    ck_assert_int_eq(rc, MOE_ESHAPE);
    moe_safetensors_close(&f);
    moe_model_release(&m);
    moe_data_release(&data);
    moe_config_release(&cfg);
    outcome_free(&o);
    remove(path);
}
END_TEST

// A resume checkpoint whose optimizer moments hold a NaN is refused, naming the tensor and element.
// Rewrite the checkpoint at path through the writer, with element k of tensor
// `name` set to v: the file's checksums then match its (bad) contents.
static void rewrite_with(const char *path, const char *name, size_t k, float v)
{
    struct moe_st_file f = { 0 };
    struct moe_err err;
    ck_assert_msg(moe_safetensors_open(path, &f, &err) == 0, "%s", err.msg);
    struct moe_st_ref *refs = calloc(f.n, sizeof *refs);
    struct moe_st_meta *meta = calloc(f.n_meta, sizeof *meta);
    float *copy = NULL;
    size_t n_meta = 0;
    ck_assert(refs && meta);
    for (size_t i = 0; i < f.n; i++) {
        const struct moe_st_entry *e = &f.e[i];
        refs[i] = (struct moe_st_ref){ .name = e->name, .dtype = e->dtype, .ndim = e->ndim, .data = e->data };
        memcpy(refs[i].shape, e->shape, sizeof e->shape);
        if (strcmp(e->name, name) == 0) {
            ck_assert(e->dtype == MOE_F32 && k < e->numel);
            copy = malloc(e->numel * sizeof *copy);
            ck_assert_ptr_nonnull(copy);
            memcpy(copy, e->data, e->numel * sizeof *copy);
            copy[k] = v;
            refs[i].data = copy;
        }
    }
    ck_assert_ptr_nonnull(copy);
    for (size_t i = 0; i < f.n_meta; i++)
        if (strcmp(f.meta_key[i], MOE_ST_CRC_KEY) != 0)
            meta[n_meta++] = (struct moe_st_meta){ f.meta_key[i], f.meta_val[i] };
    ck_assert_msg(moe_safetensors_write(path, refs, f.n, meta, n_meta, &err) == 0, "%s", err.msg);
    moe_safetensors_close(&f);
    free(copy);
    free(meta);
    free(refs);
}

START_TEST(test_resume_rejects_nonfinite_moments)
{
    char path[64];
    struct outcome o = { 0 };
    stopped_checkpoint(path, sizeof path, "n", MIX_CFG, &o);
    // a NaN written over element 2 of optim.m in place: the checksum catches it
    struct moe_st_file f = { 0 };
    struct moe_err err;
    ck_assert(moe_safetensors_open(path, &f, &err) == 0);
    long at = -1;
    for (size_t i = 0; i < f.n; i++)
        if (strcmp(f.e[i].name, "optim.m") == 0)
            at = (long)((const uint8_t *)f.e[i].data - f.buf) + 2 * (long)sizeof(float);
    moe_safetensors_close(&f);
    ck_assert_int_ge(at, 0);
    FILE *fp = fopen(path, "r+b");
    ck_assert_ptr_nonnull(fp);
    const float nan = NAN;
    ck_assert_int_eq(fseek(fp, at, SEEK_SET), 0);
    ck_assert_uint_eq(fwrite(&nan, sizeof nan, 1, fp), 1);
    fclose(fp);
    ck_assert_int_eq(moe_safetensors_open(path, &f, &err), MOE_EFORMAT);
    ck_assert_msg(strstr(err.msg, "tensor 'optim.m' fails its CRC-32 check"), "%s", err.msg);
    outcome_free(&o);
    // the same NaN in a file whose checksums agree: the finiteness check names it
    remove(path);
    stopped_checkpoint(path, sizeof path, "n", MIX_CFG, &o);
    rewrite_with(path, "optim.m", 2, NAN);
    struct ctx c2 = { .o = &o, .path = path };
    run(MIX_CFG, NULL, 0, &c2, 1);
    ck_assert_int_eq(o.rc, MOE_EFORMAT);
    ck_assert_msg(strstr(o.err.msg, "tensor 'optim.m' element 2 is NaN, not a finite number"), "%s", o.err.msg);
    outcome_free(&o);
    remove(path);
}
END_TEST

int main(void)
{
    if (moe_test_init_blas(2))
        return 1;
    Suite *s = suite_create("checkpoint");
    TCase *tc = tcase_create("checkpoint");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_resume_moe_steps);
    tcase_add_test(tc, test_resume_moe_eval);
    tcase_add_test(tc, test_resume_bias_balance);
    tcase_add_test(tc, test_resume_mixture_sgd);
    tcase_add_test(tc, test_resume_schedule_accumulate);
    tcase_add_test(tc, test_extend_finished);
    tcase_add_test(tc, test_resume_rejects_foreign);
    tcase_add_test(tc, test_resume_rejects_nonfinite_moments);
    suite_add_tcase(s, tc);
    return moe_test_run(s);
}
