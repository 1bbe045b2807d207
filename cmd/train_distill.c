// train_distill.c (cmd): the distillation set-up of a training run (`moe
// distill`, config keys distill.*): the teacher and baseline checkpoints,
// built from their own configs and checked against the student's data; the
// student started from the teacher (distill.teacher_init) or converted from it
// (distill.moebert: DIR/importance.csv, DIR/moebert.json); summary.distill.
// Not here: the distillation objective (the trainer, train/train.h), the run
// directory's other files (run_output.c).
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "estimate.h"
#include "io/atomic.h"
#include "train/moebert.h"
#include "train_run.h"

// The config of the checkpoint f (opened from path): its metadata's "config",
// parsed into *tc and typed into *trc (the caller releases both, also on an error).
static int peer_config(const char *cmd, const char *path, const struct moe_st_file *f, struct moe_config *tc,
                       struct moe_run_cfg *trc)
{
    struct moe_err err = { 0 };
    const char *text = moe_safetensors_meta(f, "config");
    if (!text)
        return cli_error(cmd, 1, "%s: no 'config' in the checkpoint's metadata (not written by moe train?)", path);
    if (moe_config_parse(tc, moe_run_schema(), moe_run_schema_len(), text, path, NULL, 0, &err) ||
        moe_run_cfg_parse(trc, tc, &err))
        return cli_error(cmd, 1, "%s: the 'config' metadata is not a valid config: %s", path, err.msg);
    return 0;
}

// What the checkpoint's model holds beside the student's run (its parameters,
// gradients, activations and statistics for the student's batches of
// max_batch), into *pe; *ret_bytes: those parts added up with what its file of
// file_bytes adds to the peak (read whole, freed once the model is loaded, before
// the student's optimizer, adapters and trainer allocate), and added to
// est->bytes_total (the run so far).
static int peer_estimate(const char *cmd, const char *key, const char *path, const struct moe_run_cfg *trc,
                         enum moe_task task, size_t n_in, size_t n_out, size_t max_batch, size_t file_bytes,
                         struct moe_model_estimate *pe, size_t *ret_bytes, struct moe_model_estimate *est)
{
    struct moe_err err = { 0 };
    if (moe_run_estimate(trc, NULL, task, n_in, n_out, 0, 0, max_batch, 0, pe, &err)) {
        moe_error_prefix(&err, "%s '%s': ", key, path);
        return cli_fail(cmd, &err);
    }
    const size_t parts[] = { pe->bytes_params, pe->bytes_grads, pe->bytes_activations, pe->bytes_trainer,
                             cli_ckpt_peak_bytes(est, file_bytes, 0) };
    size_t sum = 0;
    for (size_t i = 0; i < sizeof parts / sizeof *parts; i++)
        if (__builtin_add_overflow(sum, parts[i], &sum))
            sum = SIZE_MAX;
    *ret_bytes = sum;
    if (__builtin_add_overflow(est->bytes_total, sum, &est->bytes_total))
        est->bytes_total = SIZE_MAX;
    return 0;
}

// A checkpoint the run compares with (distill.teacher, distill.baseline): the
// model built from its own config and weights. It must read the student's data
// as it was trained to (same inputs, outputs, standardisation, vocabulary and
// languages). *hp (when not NULL): the settings it was built from. No path =
// nothing to do. Before the model is made, its parameters, gradients,
// activations and statistics for the student's batches (and its checkpoint's
// bytes, peer_estimate) are added to *est (the run so far) and the sum is
// checked against the memory there is (cli_check_memory_with, naming the
// checkpoint). The checkpoint is closed once the model has its tensors.
static int peer_setup(const char *cmd, const char *key, const char *path, const struct moe_run_cfg *rcfg,
                      const struct moe_data *data, const struct moe_model *student, struct moe_model *peer,
                      struct moe_model_hp *hp, struct moe_model_estimate *est, int ignore_memory)
{
    if (!path)
        return 0;
    struct moe_err err = { 0 };
    struct moe_st_file file = { 0 }, *f = &file;
    struct moe_config tc = { 0 };
    struct moe_run_cfg trc = { 0 };
    int rc = 0;
    if (moe_safetensors_open(path, f, &err) || moe_data_check_text_checkpoint(data, f, &err)) {
        rc = cli_fail(cmd, &err);
        goto out;
    }
    if ((rc = peer_config(cmd, path, f, &tc, &trc)))
        goto out;
    if (trc.data.standardize != rcfg->data.standardize) {
        rc = cli_error(cmd, 2, "%s '%s' was trained with data.standardize=%s, the student has %s", key, path,
                       trc.data.standardize ? "true" : "false", rcfg->data.standardize ? "true" : "false");
        goto out;
    }
    if (data->train.task == MOE_TASK_REGRESSION) {
        rc = cli_error(cmd, 2, "%s: distillation needs a classification or language-model task (data gives regression)", key);
        goto out;
    }
    if (hp) { // what outlives trc: the sizes and settings, not the strings
        *hp = trc.model;
        hp->loss = hp->loss_baseline = NULL;
    }
    struct moe_model_estimate pe;
    size_t bytes;
    if ((rc = peer_estimate(cmd, key, path, &trc, data->train.task, data->train.n_in, data->train.n_out,
                            student->max_batch, f->size, &pe, &bytes, est)))
        goto out;
    char with[1024];
    snprintf(with, sizeof with, "%s '%s'", key, path);
    if ((rc = cli_check_memory_with(cmd, est, 1, ignore_memory, with)))
        goto out;
    if (moe_model_create_hp(peer, &trc.model, NULL, data->train.task, data->train.n_in, data->train.n_out,
                            student->max_batch, &err)) {
        rc = cli_fail(cmd, &err);
        goto out;
    }
    if (moe_model_load(peer, f, 1, &err)) { // the teacher's (baseline's) fault, said so
        moe_error_prefix(&err, "%s: ", key);
        rc = cli_fail(cmd, &err);
        goto out;
    }
    if (!peer->loss_name || strcmp(peer->loss_name, "ce") != 0 || strcmp(student->loss_name, "ce") != 0)
        rc = cli_error(cmd, 2, "%s: distillation needs cross-entropy models (%s loss '%s', student loss '%s')", key,
                       path, peer->loss_name ? peer->loss_name : "?", student->loss_name ? student->loss_name : "?");
out:
    moe_safetensors_close(f);
    moe_run_cfg_release(&trc);
    moe_config_release(&tc);
    return rc;
}

int distill_peers_estimate(const char *cmd, const struct moe_run_cfg *rcfg, enum moe_task task, size_t n_in,
                           size_t n_out, size_t max_batch, struct moe_model_estimate *est, size_t *ret_device,
                           cJSON *out)
{
    const char *const keys[] = { "distill.teacher", "distill.baseline" };
    const char *const paths[] = { rcfg->distill.teacher, rcfg->distill.baseline };
    *ret_device = 0;
    for (size_t i = 0; i < 2; i++) {
        if (!paths[i])
            continue;
        struct moe_err err = { 0 };
        struct moe_st_file f;
        struct moe_config tc = { 0 };
        struct moe_run_cfg trc = { 0 };
        struct moe_model_estimate pe;
        size_t bytes = 0;
        int rc;
        if (moe_safetensors_open(paths[i], &f, &err))
            return cli_fail(cmd, &err);
        if (!(rc = peer_config(cmd, paths[i], &f, &tc, &trc)))
            rc = peer_estimate(cmd, keys[i], paths[i], &trc, task, n_in, n_out, max_batch, f.size, &pe, &bytes, est);
        moe_safetensors_close(&f);
        if (!rc) {
            // the teacher runs on the device beside the student, evaluation only: its weights and activations
            if (i == 0 && __builtin_add_overflow(pe.bytes_params, pe.bytes_activations, ret_device))
                *ret_device = SIZE_MAX;
            cJSON *o = cJSON_AddObjectToObject(out, keys[i] + strlen("distill."));
            if (!o || !cJSON_AddStringToObject(o, "path", paths[i]) ||
                !cJSON_AddStringToObject(o, "model", moe_model_kind(trc.model.type)->name) ||
                !cJSON_AddNumberToObject(o, "parameters", (double)pe.parameters) ||
                !cJSON_AddNumberToObject(o, "memory_bytes", (double)bytes))
                rc = cli_error(cmd, 1, "out of memory");
        }
        moe_run_cfg_release(&trc);
        moe_config_release(&tc);
        if (rc)
            return rc;
    }
    return 0;
}

// distill.teacher_init: every student tensor with a namesake of the same shape
// in the teacher (the non-expert weights when an MoE teaches a dense model)
// starts from the teacher's values. Returns the tensors copied as a JSON array,
// or NULL (out of memory).
static cJSON *init_from_teacher(struct moe_model *m, const struct moe_model *teacher)
{
    cJSON *names = cJSON_CreateArray();
    uint8_t *copied = calloc(m->params.n ? m->params.n : 1, 1);
    if (!names || !copied) {
        cJSON_Delete(names);
        free(copied);
        return NULL;
    }
    moe_params_copy_matching(&m->params, &teacher->params, copied);
    for (size_t i = 0; i < m->params.n; i++)
        if (copied[i])
            cJSON_AddItemToArray(names, cJSON_CreateString(m->params.t[i].name));
    free(copied);
    return names;
}

int distill_setup(const char *cmd, struct distill *d, const struct moe_run_cfg *rcfg, const struct moe_data *data,
                  struct moe_model *student, int resume, const struct moe_model_estimate *est, int ignore_memory)
{
    int rc;
    struct moe_model_estimate run = *est; // the student's run, then each model beside it
    d->c = rcfg->distill;
    d->moebert = d->c.moebert;
    if ((rc = peer_setup(cmd, "distill.teacher", d->c.teacher, rcfg, data, student, &d->teacher, &d->teacher_hp,
                         &run, ignore_memory)) ||
        (rc = peer_setup(cmd, "distill.baseline", d->c.baseline, rcfg, data, student, &d->baseline, NULL, &run,
                         ignore_memory)))
        return rc;
    if (d->baseline.ops && !d->teacher.ops)
        return cli_error(cmd, 2, "config key 'distill.baseline' needs distill.teacher (--teacher)");
    if (!d->c.teacher_init || resume)
        return 0;
    if (!d->teacher.ops)
        return cli_error(cmd, 2, "config key 'distill.teacher_init' needs distill.teacher (--teacher)");
    if (!(d->copied = init_from_teacher(student, &d->teacher)))
        return cli_error(cmd, 1, "out of memory");
    return 0;
}

void distill_release(struct distill *d)
{
    if (d->teacher.ops)
        moe_model_release(&d->teacher);
    if (d->baseline.ops)
        moe_model_release(&d->baseline);
    cJSON_Delete(d->copied);
}

// Evaluate m on the test split (distill.teacher, .baseline, MoEBERT's converted student).
static int eval_test(struct moe_model *m, const struct moe_data *data, const struct moe_run_cfg *rcfg,
                     struct moe_eval_row *r, struct moe_err *err)
{
    struct moe_stats st;
    memset(&st, 0, sizeof st);
    int rc = moe_train_stats_init(&st, m, &data->test, err) ||
             moe_evaluate(m, &data->test, "test", rcfg->train.max_batch_eval,
                          rcfg->train.active_threshold, &st, r, err);
    moe_stats_release(&st);
    return rc;
}

static const char *const importance_cols[] = { "layer", "neuron", "importance", "rank", "role", "expert" };

int distill_check_tags(const char *cmd, const struct cli_tags *tags)
{
    return cli_tags_check_cols(tags, cmd, "importance.csv", importance_cols, 6);
}

// DIR/importance.csv: every teacher neuron's importance, rank and role (then the tags).
static int importance_csv(const struct moe_moebert *mb, const char *dir, const struct cli_tags *tags,
                          struct moe_err *err)
{
    struct moe_csv csv;
    memset(&csv, 0, sizeof csv);
    char *path = cli_path(dir, "importance.csv", err);
    int rc = path ? cli_csv_open(&csv, path, importance_cols, 6, tags, err) : MOE_ENOMEM;
    for (size_t k = 0; !rc && k < mb->n; k++) {
        const struct moe_moebert_layer *ly = &mb->layer[k];
        for (size_t j = 0; !rc && j < mb->Fd; j++) {
            int32_t e = ly->expert[j];
            moe_csv_int(&csv, (long long)ly->block);
            moe_csv_int(&csv, (long long)j);
            moe_csv_num(&csv, ly->importance[j]);
            moe_csv_int(&csv, (long long)ly->rank[j]);
            moe_csv_str(&csv, e == MOE_MOEBERT_SHARED ? "shared" : e == MOE_MOEBERT_DROPPED ? "dropped" : "routed");
            moe_csv_int(&csv, e >= 0 ? (long long)e : -1);
            rc = cli_csv_end_row(&csv, tags, err);
        }
    }
    if (!rc)
        rc = moe_csv_close(&csv, err);
    moe_csv_abort(&csv);
    free(path);
    return rc;
}

// DIR/moebert.json's account of the conversion (without the evaluations).
static cJSON *moebert_json(const struct moe_moebert *mb, const struct moe_distill_cfg *dc, size_t copied)
{
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "split", dc->split);
    cJSON_AddNumberToObject(j, "shared_neurons", (double)mb->s);
    cJSON_AddNumberToObject(j, "experts", (double)mb->E);
    cJSON_AddNumberToObject(j, "expert_neurons", (double)mb->F);
    cJSON_AddNumberToObject(j, "teacher_neurons", (double)mb->Fd);
    cJSON_AddNumberToObject(j, "weight", dc->weight);
    cJSON_AddNumberToObject(j, "tensors_copied", (double)copied);
    cJSON *ls = cJSON_AddArrayToObject(j, "layers");
    for (size_t k = 0; k < mb->n; k++) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "layer", (double)mb->layer[k].block);
        cJSON_AddNumberToObject(o, "dropped_neurons", (double)mb->layer[k].dropped);
        cJSON_AddItemToArray(ls, o);
    }
    return j;
}

// distill.moebert: the dense teacher's FFNs become the student's experts
// (train/moebert.h): neuron importance over the training split into
// DIR/importance.csv, the split, the copy, and the student's quality right after
// conversion; what it did goes to DIR/moebert.json, which the summary repeats
// (also for a resumed run).
int distill_moebert(const char *cmd, const struct cli_common *c, struct distill *d, const struct moe_run_cfg *rcfg,
                    struct moe_model *m, const struct moe_data *data, size_t bs, const char *dir)
{
    if (!d->moebert)
        return 0;
    if (!d->teacher.ops)
        return cli_error(cmd, 2, "config key 'distill.moebert' needs distill.teacher (--teacher)");
    struct moe_model *teacher = &d->teacher;
    struct moe_err err = { 0 };
    struct moe_moebert mb;
    uint64_t seed = rcfg->train.seed;
    int rc = moe_moebert_plan(&mb, m, teacher, d->c.shared, d->c.split_random, &err);
    if (!rc) {
        cli_log(c, "moe %s: moebert: neuron importance over %zu training %s, %zu blocks into %zu experts", cmd,
                data->train.n, data->train.task == MOE_TASK_LM ? "windows" : "rows", mb.n, mb.E);
        rc = moe_moebert_importance(&mb, teacher, &data->train, bs, seed, &err);
    }
    if (rc) {
        moe_moebert_release(&mb);
        return cli_fail(cmd, &err);
    }
    moe_moebert_split(&mb, seed);
    size_t copied = moe_moebert_convert(&mb, m, teacher);
    rc = importance_csv(&mb, dir, &c->tags, &err);
    cJSON *j = moebert_json(&mb, &d->c, copied);
    moe_moebert_release(&mb);
    // the test split, for the teacher and for the student as converted (before any training)
    struct moe_eval_row rt, rs;
    if (!rc)
        rc = eval_test(teacher, data, rcfg, &rt, &err) || eval_test(m, data, rcfg, &rs, &err);
    if (!rc) {
        cJSON_AddItemToObject(j, "teacher_test", run_output_eval_json(&rt));
        cJSON_AddItemToObject(j, "converted_test", run_output_eval_json(&rs));
        char *path = cli_path(dir, "moebert.json", &err);
        rc = path ? cli_write_json(path, j, &err) : MOE_ENOMEM;
        free(path);
    }
    cJSON_Delete(j);
    return rc ? cli_fail(cmd, &err) : 0;
}

// distill.baseline: the checkpoint, and the test-split quality of teacher,
// baseline and student, with the fraction of the teacher-baseline gap the
// student recovers: (student - baseline) / (teacher - baseline).
static int gap_json(const char *cmd, cJSON *d, struct distill *ds, const struct moe_run_cfg *rcfg,
                    const struct moe_data *data, const struct moe_eval_row *student)
{
    struct moe_eval_row rt, rb;
    struct moe_err err = { 0 };
    cJSON_AddStringToObject(d, "baseline", ds->c.baseline);
    if (eval_test(&ds->teacher, data, rcfg, &rt, &err) || eval_test(&ds->baseline, data, rcfg, &rb, &err))
        return cli_fail(cmd, &err);
    int lm = data->test.task == MOE_TASK_LM;
    const char *metric = lm ? "bits_per_byte" : "accuracy";
    double vt = lm ? rt.bits_per_byte : rt.accuracy, vb = lm ? rb.bits_per_byte : rb.accuracy;
    double vs = lm ? student->bits_per_byte : student->accuracy;
    cJSON *g = cJSON_AddObjectToObject(d, "gap");
    cJSON_AddStringToObject(g, "metric", metric);
    cJSON_AddStringToObject(g, "split", "test");
    cJSON_AddNumberToObject(g, "teacher", vt);
    cJSON_AddNumberToObject(g, "baseline", vb);
    cJSON_AddNumberToObject(g, "student", vs);
    // A fraction of the gap means something only when there is a gap: the teacher
    // better than the baseline (higher accuracy; lower bits per byte and loss).
    // Otherwise it is null, with the reason beside it.
    char why[160];
    if (lm ? vt < vb : vt > vb) {
        cJSON_AddNumberToObject(g, "fraction_recovered", (vs - vb) / (vt - vb));
    } else {
        cJSON_AddNullToObject(g, "fraction_recovered");
        snprintf(why, sizeof why, "the teacher (%s %.6g) does not beat the baseline (%.6g)", metric, vt, vb);
        cJSON_AddStringToObject(g, "fraction_recovered_reason", why);
    }
    cJSON_AddNumberToObject(g, "teacher_loss", rt.loss);
    cJSON_AddNumberToObject(g, "baseline_loss", rb.loss);
    cJSON_AddNumberToObject(g, "student_loss", student->loss);
    if (rt.loss < rb.loss) {
        cJSON_AddNumberToObject(g, "fraction_recovered_loss", (student->loss - rb.loss) / (rt.loss - rb.loss));
    } else {
        cJSON_AddNullToObject(g, "fraction_recovered_loss");
        snprintf(why, sizeof why, "the teacher (loss %.6g) does not beat the baseline (%.6g)", rt.loss, rb.loss);
        cJSON_AddStringToObject(g, "fraction_recovered_loss_reason", why);
    }
    return 0;
}

// summary.distill: the teacher and the settings; with distill.baseline the gap
// (gap_json); with distill.moebert what DIR/moebert.json says.
int distill_summary(const char *cmd, cJSON *s, struct distill *ds, const struct moe_run_cfg *rcfg,
                    const struct moe_data *data, const struct moe_eval_row *student, const char *dir)
{
    if (!ds->teacher.ops)
        return 0;
    cJSON *d = cJSON_AddObjectToObject(s, "distill");
    cJSON_AddStringToObject(d, "teacher", ds->c.teacher);
    cJSON_AddStringToObject(d, "teacher_model", ds->teacher.ops->type);
    cJSON_AddNumberToObject(d, "teacher_parameters", (double)moe_params_count(&ds->teacher.params));
    cJSON_AddStringToObject(d, "mode", ds->moebert ? "moebert" : ds->c.teacher_init ? "sparse-to-dense" : "kd");
    if (!ds->moebert) { // MoEBERT's objective has its own weight (distill.moebert.weight in the summary)
        cJSON_AddNumberToObject(d, "alpha", ds->c.alpha);
        cJSON_AddNumberToObject(d, "temperature", ds->c.temperature);
    }
    if (ds->copied)
        cJSON_AddItemToObject(d, "initialised_from_teacher", ds->copied);
    ds->copied = NULL; // owned by the summary now
    int rc;
    if (ds->baseline.ops && (rc = gap_json(cmd, d, ds, rcfg, data, student)))
        return rc;
    if (!ds->moebert)
        return 0;
    struct moe_err err = { 0 };
    char *path = cli_path(dir, "moebert.json", &err), *text = NULL;
    if (!path)
        return cli_fail(cmd, &err);
    cJSON *mj = !moe_read_file(path, &text, NULL, NULL) ? cJSON_Parse(text) : NULL;
    free(text);
    free(path);
    if (mj)
        cJSON_AddItemToObject(d, "moebert", mj);
    return 0;
}
