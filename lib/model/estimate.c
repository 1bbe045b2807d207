// estimate.c: resource estimate of a run (see estimate.h). The model's share is
// the plan its declare makes (core/plan.h), the one its constructor allocates,
// summed; the optimizer's the plan of moe_optim_declare. The training loop's
// statistics and batches and the data readers' buffers are counted here, each
// product and sum checked with __builtin_*_overflow. Works on typed settings
// only: no config key is read here (train/ parses them).
// T = rows in a batch, I = n_in, D = width (n_embd, or n_in for the mixture
// and the mlp), O = n_out, E = n_expert, K = n_expert_used, S = slots per token,
// F = n_ff, Fd = dense FFN width, Sh = shared experts, H = hidden units,
// L = n_layer, V = hash_vocab, G = groups or labels counted by the statistics.
#include "model/estimate.h"

#include <assert.h>
#include <dirent.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

#include "backend/backend.h"
#include "core/gemm.h"
#include "core/sysmem.h"
#include "dist/dist.h"
#include "io/corpus.h"
#include "io/vocab.h"
#include "model/model.h"

#define DIMS MOE_DIMS

// What the batch dimension is made of (cmd/: the training batch or the evaluation chunk).
#define KEY_T MOE_KEY_BATCH
#define KEY_I MOE_KEY_FEATURES
#define KEY_O MOE_KEY_OUTPUTS

// The estimate's state: the model's plan, which keeps the first failure and
// the largest entry, and goes on counting the buffers outside the model.
struct est {
    struct moe_plan *p;
    size_t numel;        // floats of the parameter buffer, with each tensor's 16-float alignment
};

static size_t round_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

static void add(struct est *e, size_t *acc, size_t v, const char *what)
{
    if (!e->p->rc && __builtin_add_overflow(*acc, v, acc))
        moe_plan_fail(e->p, MOE_EINVAL, "the %s of this config overflows size_t", what);
}

// A buffer of prod(d) elements of `size` bytes, as moe_alloc rounds it (64-byte
// multiple, at least 64), added to *acc.
static void buffer(struct est *e, size_t *acc, const char *name, size_t size, int n, const struct moe_dim *d)
{
    size_t bytes;
    if (moe_plan_size(e->p, &bytes, size, n, d))
        return;
    if (bytes > SIZE_MAX - 63) {
        moe_plan_fail(e->p, MOE_EINVAL, "buffer '%s' overflows size_t", name);
        return;
    }
    bytes = bytes ? round_up(bytes, 64) : 64;
    add(e, acc, bytes, "memory estimate");
    if (!e->p->rc)
        moe_plan_note_largest(e->p, bytes, "buffer", name, n, d);
}
// One more float per parameter (the parameter, gradient and moment buffers,
// which are not reported as "the largest buffer": their tensors are).
static void flat(struct est *e, size_t *acc)
{
    if (e->p->rc)
        return;
    if (e->numel > (SIZE_MAX - 63) / sizeof(float)) {
        moe_plan_fail(e->p, MOE_EINVAL, "the parameter buffer of this config overflows size_t");
        return;
    }
    add(e, acc, e->numel ? round_up(e->numel * sizeof(float), 64) : 64, "memory estimate");
}
#define BUF(e, acc, name, size, ...) buffer(e, acc, name, size, DIMS(__VA_ARGS__))

// ---------------------------------------------------------------- models

struct shape {
    enum moe_task task;
    size_t I, O, T;
    size_t n_expert;     // of the dense statistics (the mixture's gate), else 0
    size_t n_group;      // groups of the data (synthetic regions), for statistics
    // sparse layers, for statistics
    size_t n_sparse, E, S;
};

// Evaluation and routing statistics (model.c moe_stats_init*, moe/route_stats.c), one set.
static void est_stats(struct est *e, const struct shape *s, size_t *acc)
{
    struct moe_dim dE = { s->n_expert, "model.n_expert" }, dG = { s->n_group, "data.synthetic.n_regions" };
    if (s->n_expert) {
        BUF(e, acc, "stats.gate_sum", sizeof(double), dE);
        if (s->n_group)
            BUF(e, acc, "stats.contingency", sizeof(uint64_t), dE, dG);
    }
    if (s->task == MOE_TASK_LM) {
        BUF(e, acc, "stats.lang_loss", sizeof(double), { s->n_group, "languages" });
        BUF(e, acc, "stats.lang_tokens", sizeof(uint64_t), { s->n_group, "languages" });
        BUF(e, acc, "stats.lang_bytes", sizeof(double), { s->n_group, "languages" });
    }
    if (!s->n_sparse)
        return;
    size_t one = 0, n_label = s->task == MOE_TASK_LM ? 5 * s->n_group
                              : s->task == MOE_TASK_CLASSIFICATION ? s->O : s->n_group;
    struct moe_dim rE = { s->E, "model.n_expert" };
    const char *pe[] = { "routed", "dropped", "gate_sum", "prob_sum" };
    for (int i = 0; i < 4; i++)
        BUF(e, &one, pe[i], sizeof(double), rE);
    if (s->S >= 2)
        BUF(e, &one, "route statistics co-selection", sizeof(uint64_t), rE, rE);
    if (n_label)
        BUF(e, &one, "route statistics labels", sizeof(uint64_t), rE, { n_label, KEY_O });
    size_t all;
    if (moe_plan_product(e->p, &all, DIMS({ one, "bytes per sparse layer" }, { s->n_sparse, "sparse layers" })) == 0)
        add(e, acc, all, "memory estimate");
}

// A split as moe_dataset_alloc sizes it: name.x, name.y or name.label, name.group.
static void est_split(struct est *e, size_t *acc, const char *split, const char *rows_key, const struct shape *s,
                      size_t rows, int group)
{
    char name[64];
    struct moe_dim dR = { rows, rows_key }, dI = { s->I, KEY_I }, dO = { s->O, KEY_O };
    snprintf(name, sizeof name, "%s.x", split);
    BUF(e, acc, name, sizeof(float), dR, dI);
    if (s->task == MOE_TASK_REGRESSION) {
        snprintf(name, sizeof name, "%s.y", split);
        BUF(e, acc, name, sizeof(float), dR, dO);
    } else {
        snprintf(name, sizeof name, "%s.label", split);
        BUF(e, acc, name, 4, dR);
    }
    if (group) {
        snprintf(name, sizeof name, "%s.group", split);
        BUF(e, acc, name, 4, dR);
    }
}

// The synthetic generator's temporaries (io/synth.c), freed once the data is
// made but part of the peak while making it: centres (R, D) and, for
// regression, maps (R, O, D) and biases (R, O), in double.
static void est_synth_temporaries(struct est *e, const struct moe_synth_spec *sp, size_t *acc, size_t I, size_t O)
{
    int classes = strcmp(sp->kind, "classes") == 0;
    struct moe_dim dR = { sp->n_regions, "data.synthetic.n_regions" },
               dI = { I, "data.synthetic.n_in" }, dO = { O, "data.synthetic.n_out" };
    BUF(e, acc, "synthetic centres", sizeof(double), dR, dI);
    if (!classes) {
        BUF(e, acc, "synthetic maps", sizeof(double), dR, dO, dI);
        BUF(e, acc, "synthetic biases", sizeof(double), dR, dO);
    }
}

// ---------------------------------------------------------------- data files
// What the data readers hold, from the files the config names, without reading
// them whole: sizes (stat), IDX headers, and for word tokens one streaming pass
// that counts tokens. A file that cannot be read counts 0 (the reader itself
// reports it). These figures follow io/corpus.c, io/vocab.c, io/idx.c and io/table.c.

// The corpus of data.text.path as io/corpus.c reads it: per file, the bytes used
// (max_bytes), the training/validation cut, the tokens of each part, and the
// training windows of C + 1 tokens at steps of C (moe_text_fixed_windows).
struct text_files {
    size_t files, bytes;
    size_t tok[2];          // tokens of the training and validation splits
    size_t train_windows;   // every non-overlapping training window
};

// Word tokens in bytes [0, cut) and [cut, n) of a file: a run of word bytes is
// one token, every other byte is one (moe_tokenize of the word kind).
static void count_word_tokens(const char *path, size_t n, size_t cut, size_t tok[2])
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return;
    unsigned char buf[1 << 14];
    size_t pos = 0;
    int in_word = 0;
    while (pos < n) {
        size_t got = fread(buf, 1, n - pos < sizeof buf ? n - pos : sizeof buf, f);
        if (got == 0)
            break;
        for (size_t i = 0; i < got; i++, pos++) {
            int w = moe_word_byte(buf[i]);
            if (pos == cut)
                in_word = 0;
            tok[pos >= cut] += !(w && in_word);
            in_word = w;
        }
    }
    fclose(f);
}

static void text_file(struct text_files *t, const char *path, off_t size, const struct moe_corpus_spec *sp, size_t C)
{
    size_t n = (size_t)size, max = sp->max_bytes;
    if (max && max < n)
        n = max;
    if (n == 0)
        return;
    double nv = floor(sp->valid_fraction * (double)n);
    size_t cut = nv >= (double)n ? 1 : n - (size_t)nv, tok[2] = { 0, 0 };
    if (sp->tokens == MOE_TOK_WORDS) {
        count_word_tokens(path, n, cut, tok);
    } else {
        tok[0] = cut;
        tok[1] = n - cut;
    }
    t->files++;
    t->bytes += n;
    t->tok[0] += tok[0];
    t->tok[1] += tok[1];
    t->train_windows += tok[0] >= 1 && C ? (tok[0] - 1) / C : 0;
}

// The files of data.text.path as io/corpus.c lists them: the file itself, or the
// regular files of a directory whose name does not start with '.'.
static void text_files_of(struct text_files *t, const struct moe_corpus_spec *sp, size_t C)
{
    memset(t, 0, sizeof *t);
    const char *path = sp->path;
    struct stat st;
    if (!path || stat(path, &st) != 0)
        return;
    if (S_ISREG(st.st_mode)) {
        text_file(t, path, st.st_size, sp, C);
        return;
    }
    DIR *d = S_ISDIR(st.st_mode) ? opendir(path) : NULL;
    if (!d)
        return;
    for (struct dirent *de; (de = readdir(d));) {
        char full[4096];
        if (de->d_name[0] == '.' ||
            snprintf(full, sizeof full, "%s%s%s", path, path[0] && path[strlen(path) - 1] == '/' ? "" : "/",
                     de->d_name) >= (int)sizeof full)
            continue;
        if (stat(full, &st) == 0 && S_ISREG(st.st_mode))
            text_file(t, full, st.st_size, sp, C);
    }
    closedir(d);
}

// The corpus as held (moe_corpus_load, moe_text_fixed_windows) into *data: per
// split the token ids (4), byte classes (1) and cumulative byte offsets (8) of
// each token, and the segments; the vocabulary of V tokens (pointers, lengths,
// the token bytes, at 8 a word, and the lookup table); the evaluation windows'
// starts (8 bytes each): n_valid_windows (the loaded split's rows) and the
// training split's data.text.train_eval_windows. *extra: what the reader holds
// besides while loading: every file's bytes, and the word counts of a vocabulary
// being built (32 bytes a slot, at least 2 slots a word, and half as much again
// while the table grows), beyond the streams that are not yet allocated then.
static void est_text(struct est *e, const struct moe_data_cfg *c, size_t C, size_t V, size_t n_valid_windows,
                     size_t *data, size_t *extra)
{
    struct text_files t;
    text_files_of(&t, &c->text.corpus, C);
    const char *kt[2] = { "training tokens (data.text.path)", "validation tokens (data.text.path)" };
    const char *names[2][3] = { { "corpus train.tok", "corpus train.cls", "corpus train.off" },
                                { "corpus valid.tok", "corpus valid.cls", "corpus valid.off" } };
    size_t streams = 0;
    for (int s = 0; s < 2; s++) {
        struct moe_dim dn = { t.tok[s], kt[s] }, dn1 = { t.tok[s] + 1, kt[s] };
        BUF(e, &streams, names[s][0], 4, dn);
        BUF(e, &streams, names[s][1], 1, dn);
        BUF(e, &streams, names[s][2], 8, dn1);
        BUF(e, &streams, s ? "corpus valid.seg" : "corpus train.seg", 3 * sizeof(size_t), { t.files, "text files" });
    }
    int words = c->text.corpus.tokens == MOE_TOK_WORDS;
    size_t vocab = 0, slots = 16;
    struct moe_dim dV = { V, "vocabulary" };
    BUF(e, &vocab, "vocabulary tokens", 2 * sizeof(size_t), dV);
    BUF(e, &vocab, "vocabulary bytes", words ? 8 : 2, dV);
    while (words && slots < 2 * V)
        slots *= 2;
    if (words)
        BUF(e, &vocab, "vocabulary lookup", 4, { slots, "2 x vocabulary, to a power of two" });
    size_t max = c->text.train_eval_windows;
    size_t win_train = max && max < t.train_windows ? max : t.train_windows;
    BUF(e, &vocab, "training evaluation windows", sizeof(size_t), { win_train, "data.text.train_eval_windows" });
    BUF(e, &vocab, "validation evaluation windows", sizeof(size_t), { n_valid_windows, "validation windows" });
    add(e, data, streams, "memory estimate");
    add(e, data, vocab, "memory estimate");
    // while loading: the files, and the word counts before the streams exist
    size_t counts = 0;
    if (words && !c->text.vocab_path) {
        size_t cap = 1024;
        while (cap < 2 * V)
            cap *= 2;
        BUF(e, &counts, "word counts", 48, { cap, "2 x distinct words, to a power of two" });
    }
    BUF(e, extra, "text files", 1, { t.bytes, "bytes of data.text.path" });
    if (counts > streams + vocab)
        add(e, extra, counts - streams - vocab, "memory estimate");
}

// The bytes io/idx.c holds for an IDX file: the product of the dimensions in its
// header, read through zlib as the reader does (raw or gzip); 0 if unreadable.
static size_t idx_data_bytes(const char *path)
{
    gzFile f = path ? gzopen(path, "rb") : NULL;
    if (!f)
        return 0;
    unsigned char h[4 + 4 * 4];
    size_t count = 0;
    if (gzread(f, h, 4) == 4 && h[0] == 0 && h[1] == 0 && h[3] >= 1 && h[3] <= 4 &&
        gzread(f, h + 4, 4u * h[3]) == (int)(4 * h[3])) {
        count = 1;
        for (int k = 0; k < h[3]; k++) {
            const unsigned char *b = h + 4 + 4 * k;
            size_t dim = (size_t)b[0] << 24 | (size_t)b[1] << 16 | (size_t)b[2] << 8 | b[3];
            if (__builtin_mul_overflow(count, dim, &count) || count > ((size_t)1 << 34)) {
                count = 0; // the reader refuses it
                break;
            }
        }
    }
    gzclose(f);
    return count;
}

// zlib's buffers for one IDX file (gzbuffer 128 KiB: input and output, doubled)
// and its inflate state and window.
#define IDX_ZLIB_BYTES ((size_t)576 << 10)

// io/idx.c reads a split's images and labels whole, then makes the split (held
// in bytes_data) and frees them: the training files while the test split does
// not exist yet, the test files besides both splits.
static void est_idx(struct est *e, const struct moe_data_cfg *c, size_t test_split, size_t *extra)
{
    const char *files[2][2] = { { "data.idx.train_images", "data.idx.train_labels" },
                                { "data.idx.test_images", "data.idx.test_labels" } };
    const char *paths[2][2] = { { c->idx.train_images, c->idx.train_labels },
                                { c->idx.test_images, c->idx.test_labels } };
    size_t held[2] = { 0, 0 };
    for (int s = 0; s < 2; s++) {
        for (int k = 0; k < 2; k++) {
            size_t n = idx_data_bytes(paths[s][k]);
            if (n)
                BUF(e, &held[s], files[s][k], 1, { n, "bytes of the IDX data (its header's dimensions)" });
        }
        if (held[s])
            add(e, &held[s], IDX_ZLIB_BYTES, "memory estimate");
    }
    size_t first = held[0] > test_split ? held[0] - test_split : 0;
    *extra = first > held[1] ? first : held[1];
}

// io/table.c: the whole file, and the kept rows as parsed (features, targets or
// labels with their text, the split flag) while the splits are made.
static void est_table(struct est *e, const struct moe_data_cfg *c, const struct shape *s, size_t rows,
                      size_t *extra)
{
    struct stat st;
    const char *path = c->table.path;
    if (path && stat(path, &st) == 0 && S_ISREG(st.st_mode))
        BUF(e, extra, "table file", 1, { (size_t)st.st_size, "bytes of data.table.path" });
    struct moe_dim dR = { rows, "table rows" };
    BUF(e, extra, "parsed features", sizeof(float), dR, { s->I, KEY_I });
    if (s->task == MOE_TASK_REGRESSION)
        BUF(e, extra, "parsed targets", sizeof(float), dR, { s->O, KEY_O });
    else
        BUF(e, extra, "parsed labels", 4 + sizeof(char *) + 32, dR); // id, pointer, the label's text
    BUF(e, extra, "parsed split flags", 1, dR);
}

// The model's plan (core/plan.h): the same declaration its constructor
// allocates, for batches of s->T rows; the shape of its statistics from the
// model it set up (then released: nothing was allocated).
static int est_model(const struct moe_model_hp *hp, struct shape *s, struct moe_plan *plan)
{
    struct moe_model m;
    memset(&m, 0, sizeof m);
    m.task = s->task;
    m.n_in = s->I;
    m.n_out = s->O;
    m.max_batch = s->T;
    int rc = moe_model_kind(hp->type)->declare(&m, hp, moe_model_loss(hp, NULL, s->task), plan);
    s->n_expert = m.n_expert;
    s->n_sparse = m.n_moe_layers;
    s->E = m.n_route_expert;
    s->S = m.n_route_slots;
    if (s->task == MOE_TASK_LM)
        s->n_group = s->I; // languages
    if (m.ops && m.ops->release)
        m.ops->release(&m);
    return rc;
}

// The parameters of the declared plan into the empty registry params, as
// moe_plan_register does but binding no index (the model the plan was
// declared for is gone: est_model).
static int plan_params(struct moe_plan *plan, struct moe_params *params)
{
    for (size_t i = 0; i < plan->n; i++)
        plan->e[i].index = NULL;
    return moe_plan_register(plan, params);
}

int moe_model_params_hp(const struct moe_model_hp *hp, enum moe_task task, size_t n_in, size_t n_out,
                        struct moe_params *params, struct moe_err *err)
{
    struct moe_plan plan;
    moe_plan_init(&plan, err);
    struct shape s = { .task = task, .I = n_in, .O = n_out, .T = 1 };
    int rc = est_model(hp, &s, &plan);
    if (!rc)
        rc = plan_params(&plan, params);
    moe_plan_release(&plan);
    return rc;
}

// moe_model_estimate_hp with the model's plan (declared here, never allocated).
static int estimate(struct moe_plan *plan, const struct moe_model_hp *hp, const struct moe_data_cfg *data,
                    const struct moe_estimate_loop *loop, enum moe_task task, size_t n_in, size_t n_out,
                    size_t n_train_rows, size_t n_test_rows, size_t max_batch, struct moe_model_estimate *ret,
                    struct moe_err *err)
{
    struct est e = { .p = plan };
    struct moe_model_estimate r;
    memset(&r, 0, sizeof r);
    int synthetic = data && data->source == MOE_DATA_SYNTHETIC;
    int loaded = data && (n_train_rows || n_test_rows); // the data's bytes are counted
    struct shape s = { .task = task, .I = n_in, .O = n_out, .T = max_batch ? max_batch : 1,
                       .n_group = synthetic ? data->synthetic.n_regions : 0 };
    int rc = est_model(hp, &s, plan);
    if (rc)
        return rc;
    r.parameters = plan->count;
    // dense models: no inactive parameters
    r.active_parameters = (double)plan->count - plan->inactive;
    r.flops_forward_per_token = 2.0 * plan->macs;
    r.flops_per_token = 3.0 * r.flops_forward_per_token;
    r.bytes_activations = moe_plan_buffer_bytes(plan);
    // tokens of the largest batch: rows, or windows of model.n_ctx tokens
    const size_t tokens = s.T * (task == MOE_TASK_LM && hp->n_ctx ? hp->n_ctx : 1);
    r.bytes_device_extra = tokens > (SIZE_MAX - MOE_ESTIMATE_CUDA_FIXED_BYTES) / MOE_ESTIMATE_CUDA_TOKEN_BYTES
                               ? SIZE_MAX
                               : MOE_ESTIMATE_CUDA_FIXED_BYTES + tokens * MOE_ESTIMATE_CUDA_TOKEN_BYTES;
    e.numel = plan->numel;
    flat(&e, &r.bytes_params);
    flat(&e, &r.bytes_grads);
    size_t trained = e.numel; // the floats the optimizer updates
    if (loop && loop->tuning) {
        struct moe_params reg;
        moe_params_init(&reg);
        rc = plan_params(plan, &reg);
        if (!rc)
            rc = loop->tuning(loop->tuning_arg, &reg, &trained, &r.bytes_adapters, err);
        moe_params_release(&reg);
        if (rc)
            return rc;
    }

    // the training loop (train/trainer.c, optim.c) or one set of statistics
    est_stats(&e, &s, &r.bytes_trainer);
    if (loop) {
        if (loop->declare_optimizer) {
            struct moe_plan op;
            moe_plan_init(&op, err);
            if ((rc = loop->declare_optimizer(loop->optimizer, trained, &op)))
                moe_plan_fail(plan, rc, "%s", err ? err->msg : "optimizer");
            r.bytes_optimizer = op.bytes[MOE_ROLE_OPTIM];
            moe_plan_release(&op);
        }
        est_stats(&e, &s, &r.bytes_trainer); // evaluation (train and test) and batch statistics
        est_stats(&e, &s, &r.bytes_trainer);
        BUF(&e, &r.bytes_trainer, "row permutation", 4, { n_train_rows ? n_train_rows : 1, "training rows" });
        if (loop->select_best) // the parameters of the best validation evaluation (the model's state aside)
            BUF(&e, &r.bytes_trainer, "selected parameters", sizeof(float), { e.numel, "parameters" });
        BUF(&e, &r.bytes_trainer, "gate means", sizeof(double), { s.n_expert + 1, "model.n_expert + 1" });
        BUF(&e, &r.bytes_trainer, "gate means", sizeof(double), { s.n_expert + 1, "model.n_expert + 1" });
        size_t bs = loop->batch_size;
        if (bs == 0 || bs > n_train_rows) // full batch
            bs = n_train_rows;
        if (bs > s.T)
            bs = s.T;
        if (task == MOE_TASK_LM) { // trainer.c lm_buf: windows of n_ctx + 1 tokens, classes, languages, bytes
            struct moe_dim dB = { bs ? bs : 1, "optim.batch_size" }, dC1 = { hp->n_ctx + 1, "model.n_ctx + 1" };
            BUF(&e, &r.bytes_trainer, "batch tokens", 4, dB, dC1);
            BUF(&e, &r.bytes_trainer, "batch classes", 1, dB, dC1);
            BUF(&e, &r.bytes_trainer, "batch languages", 4, dB);
            BUF(&e, &r.bytes_trainer, "batch bytes", 8, dB);
        } else if (loop->shuffle && bs < n_train_rows) {
            est_split(&e, &r.bytes_trainer, "batch", "optim.batch_size", &s, bs, synthetic);
        }
    }
    // The data (loaded: rows known), and what its reader holds besides while loading.
    size_t loading = 0; // the readers' temporaries at the loading peak, beyond bytes_data
    if (task == MOE_TASK_LM) {
        if (loaded)
            est_text(&e, data, hp->n_ctx, n_out, n_test_rows, &r.bytes_data, &loading);
    } else if (loaded) {
        size_t train = 0, test = 0;
        if (n_train_rows)
            est_split(&e, &train, "train", "training rows", &s, n_train_rows, synthetic);
        if (n_test_rows)
            est_split(&e, &test, "test", "test rows", &s, n_test_rows, synthetic);
        add(&e, &r.bytes_data, train, "memory estimate");
        add(&e, &r.bytes_data, test, "memory estimate");
        if (synthetic)
            est_synth_temporaries(&e, &data->synthetic, &r.bytes_data, n_in, n_out);
        if (data->standardize)
            BUF(&e, &r.bytes_data, "standardisation statistics", sizeof(float), { 2 * n_in, "2 x " KEY_I });
        size_t rows;
        if (data->source == MOE_DATA_IDX)
            est_idx(&e, data, test, &loading);
        else if (data->source == MOE_DATA_TABLE && !__builtin_add_overflow(n_train_rows, n_test_rows, &rows))
            est_table(&e, data, &s, rows, &loading);
    }
    // The peak is the larger of loading and training: the temporaries count as
    // far as the buffers allocated after them do not cover them.
    size_t after = 0;
    size_t later[] = { r.bytes_params, r.bytes_grads, r.bytes_optimizer, r.bytes_adapters, r.bytes_activations,
                       r.bytes_trainer };
    for (size_t i = 0; i < sizeof later / sizeof *later; i++)
        add(&e, &after, later[i], "memory estimate");
    r.bytes_readers = loading > after ? loading - after : 0;
    const struct moe_blas_info *blas = moe_blas_get_info();
    size_t threads = blas && blas->threads > 1 ? (size_t)blas->threads : 1;
    struct moe_dist_info mpi;
    moe_dist_probe(&mpi);
    r.bytes_process = MOE_ESTIMATE_PROCESS_BYTES + threads * MOE_ESTIMATE_THREAD_BYTES +
                      (mpi.built ? MOE_ESTIMATE_MPI_BYTES : 0) + (moe_backend_built("cuda") ? MOE_ESTIMATE_CUDA_BYTES : 0);

    size_t parts[] = { r.bytes_params, r.bytes_grads, r.bytes_optimizer, r.bytes_adapters, r.bytes_activations,
                       r.bytes_trainer, r.bytes_data, r.bytes_readers, r.bytes_process };
    for (size_t i = 0; i < sizeof parts / sizeof *parts; i++)
        add(&e, &r.bytes_total, parts[i], "memory estimate");
    if (plan->rc)
        return plan->rc;
    r.largest_bytes = plan->largest_bytes;
    snprintf(r.largest, sizeof r.largest, "%s", plan->largest);
    if (r.bytes_total > MOE_ESTIMATE_MAX_BYTES) {
        char need[32], lim[32], big[32];
        moe_bytes_str(need, sizeof need, (double)r.bytes_total);
        moe_bytes_str(lim, sizeof lim, (double)MOE_ESTIMATE_MAX_BYTES);
        moe_bytes_str(big, sizeof big, (double)r.largest_bytes);
        return moe_error(err, MOE_EINVAL,
                         "this config needs about %s, more than any machine has (limit %s); the largest is %s at %s",
                         need, lim, r.largest, big);
    }
    *ret = r;
    return 0;
}

int moe_model_estimate_hp(const struct moe_model_hp *hp, const struct moe_data_cfg *data,
                          const struct moe_estimate_loop *loop, enum moe_task task, size_t n_in, size_t n_out,
                          size_t n_train_rows, size_t n_test_rows, size_t max_batch, struct moe_model_estimate *ret,
                          struct moe_err *err)
{
    assert(n_in > 0 && n_out > 0); // moe_model_check
    struct moe_plan plan;
    moe_plan_init(&plan, err);
    int rc = estimate(&plan, hp, data, loop, task, n_in, n_out, n_train_rows, n_test_rows, max_batch, ret, err);
    moe_plan_release(&plan);
    return rc;
}

int moe_data_shape_cfg(const struct moe_data_cfg *c, enum moe_task *ret_task, size_t *ret_n_in, size_t *ret_n_out,
                       size_t *ret_n_train, size_t *ret_n_test, struct moe_err *err)
{
    if (c->source != MOE_DATA_SYNTHETIC)
        return 0;
    const struct moe_synth_spec *sp = &c->synthetic;
    int classes = strcmp(sp->kind, "classes") == 0;
    struct shape s = { .task = classes ? MOE_TASK_CLASSIFICATION : MOE_TASK_REGRESSION, .I = sp->n_in, .O = sp->n_out };
    size_t n_train = sp->n_train, n_test = sp->n_test;
    struct moe_plan plan; // keeps the first failure and the largest buffer; nothing is declared in it
    moe_plan_init(&plan, err);
    struct est e = { .p = &plan };
    size_t bytes = 0;
    est_split(&e, &bytes, "train", "data.synthetic.n_train", &s, n_train, 1);
    if (n_test)
        est_split(&e, &bytes, "test", "data.synthetic.n_test", &s, n_test, 1);
    est_synth_temporaries(&e, sp, &bytes, s.I, s.O);
    if (plan.rc)
        return plan.rc;
    if (bytes > MOE_ESTIMATE_MAX_BYTES) {
        char need[32], lim[32];
        moe_bytes_str(need, sizeof need, (double)bytes);
        moe_bytes_str(lim, sizeof lim, (double)MOE_ESTIMATE_MAX_BYTES);
        return moe_error(err, MOE_EINVAL,
                         "the synthetic data (data.synthetic.*) needs about %s, more than any machine has (limit %s); "
                         "the largest is %s",
                         need, lim, plan.largest);
    }
    *ret_task = s.task;
    *ret_n_in = s.I;
    *ret_n_out = s.O;
    *ret_n_train = n_train;
    *ret_n_test = n_test;
    return 1;
}

size_t moe_estimate_device_bytes(const struct moe_model_estimate *e)
{
    const size_t parts[] = { e->bytes_params,       e->bytes_grads,        e->bytes_optimizer,
                             e->bytes_adapters,     e->bytes_activations,  e->bytes_device_extra,
                             MOE_ESTIMATE_CUDA_RESERVE_BYTES };
    size_t sum = 0;
    for (size_t i = 0; i < sizeof parts / sizeof *parts; i++)
        if (__builtin_add_overflow(sum, parts[i], &sum))
            return SIZE_MAX;
    return sum;
}
