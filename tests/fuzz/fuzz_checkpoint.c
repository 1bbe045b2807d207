// fuzz_checkpoint.c: libFuzzer harness for reading a training checkpoint the
// way `moe train --resume DIR` does (cmd/cmd_train.c, lib/train/trainer.c):
// moe_safetensors_open, moe_train_pos_read, moe_train_meta_count
// (train.metrics_bytes, train.experts_bytes, and train.languages_bytes when
// there is a vocabulary), moe_data_vocab_read (tensor vocab.text through
// moe_vocab_parse), moe_config_parse of the "config" metadata against the run
// schema, then for each fixed model: moe_model_load (parameters, hash tables,
// bias-balancing offsets), moe_data_check_text_checkpoint (vocabulary and
// languages against the text data) and moe_train_state_restore (optimizer
// moments and step, batch statistics).
// Input: the checkpoint file. Every step runs even when an earlier one failed
// (each is a reader in its own right: --init and route-stats call some of them
// alone), so a broken config string does not hide the tensor readers.
//
// The models are NOT built from the file's config (the config parser has its
// own harness, and a hostile config could ask for a huge model): at start-up
// the harness builds one fixed tiny set-up per tests/fuzz/checkpoint/*.json
// (data, model, weights, optimizer, batch statistics, as cmd_train builds
// them), from $MOE_FUZZ_ROOT (the repository root; scripts/fuzz.sh sets it,
// default ".": replay from the root). Text configs get data.text.path =
// $MOE_FUZZ_ROOT/tests/fuzz/checkpoint/text. The set-ups:
//   mixture.json         1991 mixture, MLP experts, sgd: gate sums and the
//                        expert x region contingency table in the statistics
//   lm.json              byte-level transformer on text/ (2 languages),
//                        moe.lang_router, softmax top-1, adamw, vocab.text
//   mlp-moe-hash.json    mlp-moe, hash routing (16-entry I32 table), shared
//                        expert, swiglu, rmsnorm, sgd, 3 classes
//   mlp-moe-switch.json  mlp-moe, 2 switch layers with bias balancing
//                        (F32 bias state), adamw, 4 regions
// Every input is tried against every set-up; after each one the set-up's
// weights, state, optimizer and statistics are re-initialised, so no input
// sees what an earlier one loaded (a failed load may leave a half-copied model).
//
// Checks beyond the sanitizers: every failing call returns a negative MOE_E*
// code equal to err.code with a one-line message; an accepted position has
// finished 0 or 1, criterion_epoch >= -1, seconds finite and >= 0; an accepted
// vocabulary is not empty; after moe_model_load succeeds every parameter holds
// the file's bytes, every hash-table entry is in [0, E) and every bias is
// finite; after moe_train_state_restore succeeds, the optimizer step is
// train.optim_t and its moments hold optim.m / optim.v's bytes. With
// MOE_FUZZ_EXPECT_OK=1 set, the input must pass the whole sequence for at least
// one set-up (the committed real checkpoints do: replay them with
//   MOE_FUZZ_EXPECT_OK=1 build-fuzz/fuzz_checkpoint tests/fuzz/corpus/checkpoint/*.safetensors
// ; the regress-* and bad-* seeds must not, and are left out).
//
// Seeds: tests/fuzz/corpus/checkpoint/, real mid-run checkpoints of the four
// configs written by the moe binary plus copies broken in one place each;
// tests/fuzz/checkpoint/gen.sh rewrites them (it runs
//   ./build/cmd/moe train --config tests/fuzz/checkpoint/NAME.json \
//       --out DIR --threads 1 --quiet
// and copies DIR/checkpoint.safetensors, the last one written: mid-epoch 2);
// `bash scripts/fuzz.sh --gen-corpus` calls it when build/cmd/moe exists.
//
// Links the whole library (BLIS, OpenMP): scripts/fuzz.sh builds
// libmoe-fuzz-full.a for harnesses with the line below. BLIS and OpenMP run
// on one thread, set up once in LLVMFuzzerInitialize.
// fuzz-lib: full
// fuzz-max-len: 32768
#include <glob.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "compress/quant.h"
#include "core/gemm.h"
#include "fuzz_util.h"
#include "io/safetensors.h"
#include "moe/moe_layer.h"
#include "train/train.h"

#define MAX_SETUPS 8

struct setup {
    char name[256];
    uint64_t seed;
    struct moe_config cfg;
    struct moe_data data;
    struct moe_model model;
    struct moe_optim opt;
    struct moe_stats stats;
};

static struct setup setups[MAX_SETUPS];
static size_t n_setups;
static int expect_ok;

static void die(const char *what, const struct moe_err *err)
{
    fprintf(stderr, "fuzz_checkpoint: %s: %s\n(run from the repository root, or set MOE_FUZZ_ROOT to it)\n", what,
            err ? err->msg : "");
    exit(1);
}

// cmd_train.c's train_batch: the largest batch the model sees.
static size_t max_batch_of(const struct moe_config *cfg, size_t n_train, size_t n_test)
{
    size_t bs = (size_t)moe_cfg_int(cfg, "optim.batch_size");
    size_t max_batch = bs == 0 || strcmp(moe_cfg_str(cfg, "optim.type"), "gd") == 0 ? n_train : bs;
    if (strcmp(moe_cfg_str(cfg, "data.source"), "text") == 0)
        return max_batch;
    size_t chunk = (size_t)moe_cfg_int(cfg, "train.max_batch_eval");
    size_t biggest = n_train > n_test ? n_train : n_test;
    if (chunk > biggest)
        chunk = biggest;
    return chunk > max_batch ? chunk : max_batch;
}

// Fresh weights and state (as cmd_train before a load), zero moments, empty statistics.
static void reset(struct setup *s)
{
    struct moe_err err = {0};
    moe_model_init_weights(&s->model, s->seed);
    if (moe_model_fit(&s->model, &s->data.train, &err))
        die(s->name, &err);
    size_t n = s->opt.numel;
    if (s->opt.m)
        memset(s->opt.m, 0, n * sizeof *s->opt.m);
    if (s->opt.v)
        memset(s->opt.v, 0, n * sizeof *s->opt.v);
    s->opt.t = 0;
    moe_stats_reset(&s->stats);
}

static void setup_build(struct setup *s, const char *path, const char *root)
{
    struct moe_err err = {0};
    snprintf(s->name, sizeof s->name, "%s", path);
    if (moe_config_load(&s->cfg, moe_run_schema(), moe_run_schema_len(), path, NULL, 0, &err))
        die(path, &err);
    if (strcmp(moe_cfg_str(&s->cfg, "data.source"), "text") == 0) {
        char over[4200];
        snprintf(over, sizeof over, "data.text.path=%s/tests/fuzz/checkpoint/text", root);
        if (moe_config_set(&s->cfg, over, &err))
            die(path, &err);
    }
    if (moe_data_load_ex(&s->data, &s->cfg, NULL, &err))
        die(path, &err);
    size_t max_batch = max_batch_of(&s->cfg, s->data.train.n, s->data.test.n);
    if (moe_model_create(&s->model, &s->cfg, NULL, s->data.train.task, s->data.train.n_in, s->data.train.n_out,
                         max_batch, &err))
        die(path, &err);
    s->seed = (uint64_t)moe_cfg_int(&s->cfg, "train.seed");
    struct moe_optim_cfg oc;
    moe_optim_cfg_parse(&oc, &s->cfg);
    if (moe_optim_init(&s->opt, &oc, s->model.params.numel, &err) ||
        moe_train_stats_init(&s->stats, &s->model, &s->data.train, &err))
        die(path, &err);
    reset(s);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    struct moe_err err = {0};
    // One thread for BLIS and OpenMP: deterministic and cheap; BLIS's and the
    // OpenMP runtime's pools are set up here, once, not inside an input.
    if (moe_blas_init(1, &err))
        die("moe_blas_init", &err);
    const char *root = getenv("MOE_FUZZ_ROOT");
    if (!root || !*root)
        root = ".";
    expect_ok = getenv("MOE_FUZZ_EXPECT_OK") && strcmp(getenv("MOE_FUZZ_EXPECT_OK"), "1") == 0;
    char pattern[4200];
    snprintf(pattern, sizeof pattern, "%s/tests/fuzz/checkpoint/*.json", root);
    glob_t g;
    if (glob(pattern, 0, NULL, &g) != 0 || g.gl_pathc == 0) {
        snprintf(err.msg, sizeof err.msg, "no config matches '%s'", pattern);
        die("set-ups", &err);
    }
    if (g.gl_pathc > MAX_SETUPS) {
        snprintf(err.msg, sizeof err.msg, "%zu configs, at most %d", g.gl_pathc, MAX_SETUPS);
        die("set-ups", &err);
    }
    for (size_t i = 0; i < g.gl_pathc; i++)
        setup_build(&setups[n_setups++], g.gl_pathv[i], root);
    globfree(&g);
    return 0;
}

// An accepted model: its parameters are the file's bytes (a quantized one,
// compress/quant.h: scale * (q - zero) of the file's parts, bit for bit), its
// state is in range.
static void check_model(const struct moe_model *m, const struct moe_st_file *f)
{
    const struct moe_params *p = &m->params;
    for (size_t i = 0; i < p->n; i++) {
        const struct moe_st_entry *e = moe_safetensors_find(f, p->t[i].name);
        FUZZ_CHECK(e && (e->dtype == MOE_F32 || e->dtype == MOE_I8) && e->numel == p->t[i].numel,
                   "loaded '%s' is not in the file", p->t[i].name);
        const float *w = moe_params_data(p, (int)i);
        if (e->dtype == MOE_F32) {
            FUZZ_CHECK(!e->numel || memcmp(w, e->data, e->numel * sizeof(float)) == 0,
                       "parameter '%s' differs from the file", p->t[i].name);
            continue;
        }
        struct moe_quant_spec qs;
        const struct moe_st_entry *sc, *zp;
        FUZZ_CHECK(moe_quant_check(f, e, &qs, &sc, &zp, NULL) == 0, "quantized '%s' loaded with a bad scale",
                   p->t[i].name);
        size_t len = qs.gran == MOE_QUANT_PER_TENSOR ? e->numel : e->shape[e->ndim - 1];
        for (size_t j = 0; j < e->numel; j++) {
            float s, want;
            int32_t z = 0;
            memcpy(&s, (const unsigned char *)sc->data + j / len * sizeof s, sizeof s);
            if (zp)
                memcpy(&z, (const unsigned char *)zp->data + j / len * sizeof z, sizeof z);
            want = moe_dequant_int8_1(((const int8_t *)e->data)[j], s, z);
            FUZZ_CHECK(memcmp(&w[j], &want, sizeof want) == 0, "quantized '%s' element %zu is not scale * (q - zero)",
                       p->t[i].name, j);
        }
    }
    for (size_t i = 0; i < m->n_moe_layers; i++) {
        const struct moe_layer *l = m->moe_layers[i];
        size_t E = l->c.router.E;
        for (size_t v = 0; l->table && v < l->c.hash_vocab; v++)
            FUZZ_CHECK(l->table[v] >= 0 && (size_t)l->table[v] < E, "layer %zu: hash table[%zu] = %d, E = %zu", i, v,
                       (int)l->table[v], E);
        for (size_t e = 0; l->bias && e < E; e++)
            FUZZ_CHECK(isfinite(l->bias[e]), "layer %zu: bias[%zu] = %g", i, e, (double)l->bias[e]);
    }
}

// An accepted restore: the step and the moments are the file's.
static void check_restored(const struct moe_optim *o, const struct moe_st_file *f)
{
    uint64_t t = 0;
    struct moe_err err = {0};
    FUZZ_CHECK(moe_train_meta_count(f, "train.optim_t", &t, &err) == 0 && o->t == t, "optimizer step %llu",
               (unsigned long long)o->t);
    const char *names[] = {"optim.m", "optim.v"};
    const float *bufs[] = {o->m, o->v};
    for (int k = 0; k < 2; k++) {
        if (!bufs[k])
            continue;
        const struct moe_st_entry *e = moe_safetensors_find(f, names[k]);
        FUZZ_CHECK(e && e->dtype == MOE_F32 && e->numel == o->numel &&
                       (!o->numel || memcmp(bufs[k], e->data, o->numel * sizeof(float)) == 0),
                   "restored '%s' differs from the file", names[k]);
    }
}

// The file-only part of a resume (cmd_train before the model exists). Returns 1 when all of it passed.
static int read_file_part(const struct moe_st_file *f)
{
    struct moe_err err = {0};
    int ok = 1, rc;
    struct moe_train_pos pos;
    memset(&pos, 0, sizeof pos);
    if ((rc = moe_train_pos_read(f, &pos, &err))) {
        fuzz_check_err(rc, &err);
        ok = 0;
    } else {
        FUZZ_CHECK(pos.finished == 0 || pos.finished == 1, "finished = %d", pos.finished);
        FUZZ_CHECK(isfinite(pos.train_seconds) && pos.train_seconds >= 0.0, "seconds = %g", pos.train_seconds);
        FUZZ_CHECK(pos.criterion_epoch >= -1, "criterion_epoch = %lld", (long long)pos.criterion_epoch);
    }
    const char *counts[] = {"train.metrics_bytes", "train.experts_bytes", "train.languages_bytes"};
    struct moe_vocab vocab;
    memset(&vocab, 0, sizeof vocab);
    int has_vocab = moe_data_vocab_read(f, &vocab, &err);
    if (has_vocab < 0) {
        fuzz_check_err(has_vocab, &err);
        ok = 0;
    } else {
        FUZZ_CHECK(has_vocab == 0 || has_vocab == 1, "moe_data_vocab_read returned %d", has_vocab);
        FUZZ_CHECK(has_vocab == 0 || vocab.n > 0, "an accepted vocabulary is empty");
    }
    moe_vocab_release(&vocab);
    for (int i = 0; i < (has_vocab > 0 ? 3 : 2); i++) {
        uint64_t n = 0;
        if ((rc = moe_train_meta_count(f, counts[i], &n, &err))) {
            fuzz_check_err(rc, &err);
            ok = 0;
        }
    }
    const char *json = moe_safetensors_meta(f, "config");
    if (!json) {
        ok = 0;
    } else {
        struct moe_config cfg;
        memset(&cfg, 0, sizeof cfg);
        struct moe_err perr = {0};
        if ((rc = moe_config_parse(&cfg, moe_run_schema(), moe_run_schema_len(), json, f->path, NULL, 0, &perr))) {
            fuzz_check_err(rc, &perr);
            ok = 0;
        }
        moe_config_release(&cfg);
    }
    return ok;
}

// The model part against one set-up. Returns 1 when all of it passed.
static int read_model_part(struct setup *s, const struct moe_st_file *f)
{
    struct moe_err err = {0};
    int ok = 1, rc;
    if ((rc = moe_model_load(&s->model, f, 1, &err))) {
        fuzz_check_err(rc, &err);
        ok = 0;
    } else {
        check_model(&s->model, f);
    }
    if ((rc = moe_data_check_text_checkpoint(&s->data, f, &err))) {
        fuzz_check_err(rc, &err);
        ok = 0;
    }
    if ((rc = moe_train_state_restore(f, &s->opt, &s->stats, &err))) {
        fuzz_check_err(rc, &err);
        ok = 0;
    } else {
        check_restored(&s->opt, f);
    }
    if (getenv("MOE_FUZZ_VERBOSE"))
        fprintf(stderr, "fuzz: set-up %s: %s\n", s->name, ok ? "accepted" : "refused");
    reset(s);
    return ok;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct moe_err err = {0};
    struct moe_st_file f;
    int rc = moe_safetensors_open(fuzz_file(0, data, size), &f, &err);
    if (rc) {
        fuzz_check_err(rc, &err);
        FUZZ_CHECK(!expect_ok, "MOE_FUZZ_EXPECT_OK: the file does not open");
        return 0;
    }
    int file_ok = read_file_part(&f);
    size_t accepted = 0;
    for (size_t i = 0; i < n_setups; i++)
        accepted += (size_t)read_model_part(&setups[i], &f);
    FUZZ_CHECK(!expect_ok || (file_ok && accepted > 0), "MOE_FUZZ_EXPECT_OK: %s, %zu set-up(s) accepted the model",
               file_ok ? "the file part passed" : "the file part failed", accepted);
    moe_safetensors_close(&f);
    return 0;
}
