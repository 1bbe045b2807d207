// fuzz_text.c: libFuzzer harness for the text-corpus reader (lib/io/corpus.c):
// the input cut into up to 3 files written to a scratch directory, then
// moe_corpus_load, the split invariants, and the window functions.
// Input: one option byte, then the text, cut into equal parts (the last takes
// the remainder), one file each. Corpus: tests/fuzz/corpus/text/ (each seed
// starts with its option byte; most seeds are printable).
// Option byte, bit by bit:
//   0    tokens: 0 = bytes, 1 = words
//   1-2  word vocabulary cap: 2, 3, 16, 1000
//   3-4  valid_fraction: 0, 0.25, 0.5, 0.9
//   5-6  layout: 0 = one file given by its path, 1-3 = a directory of 1-3 files
//        (a.txt, b.md, c: languages a, b, c)
//   7    max_bytes 64, and a given vocabulary (bytes; words: built from the
//        first 32 bytes of the text with the cap above) instead of a built one
// Checks beyond the sanitizers: a load fails exactly when a file is empty or
// holds a NUL byte (in the bytes read), with a one-line message and a matching
// code and nothing returned; otherwise the languages are the files', ids lie
// in [0, V), each split has one contiguous segment per file, off is strictly
// increasing and ends at the bytes of the split, each file's training and
// validation parts add up to its bytes with at least one training byte and a
// cut within 3 bytes of the fraction (moved only to a character start),
// classes match the first byte of each token, every token other than <unk>
// reproduces its source bytes and every <unk> covers one word-tokeniser token
// the vocabulary lacks (none in training text when the built vocabulary stayed
// under its cap); token counts sum to the split; random and fixed windows lie
// inside their segments, and the fixed ones number what the segments allow.
// fuzz-max-len: 4096
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fuzz_util.h"
#include "io/corpus.h"
#include "io/vocab.h"

static char g_base[512], g_dir[600], g_one[600];
static const char *const k_names[3] = { "a.txt", "b.md", "c" };
static const char *const k_langs[3] = { "a", "b", "c" };

static void cleanup(void)
{
    char p[700];
    for (int k = 0; k < 3; k++) {
        snprintf(p, sizeof p, "%s/%s", g_dir, k_names[k]);
        unlink(p);
    }
    unlink(g_one);
    rmdir(g_dir);
    rmdir(g_base);
}

static void setup(void)
{
    if (g_base[0])
        return;
    snprintf(g_base, sizeof g_base, "%s/moe-fuzz-text-XXXXXX", fuzz_tmpdir());
    if (!mkdtemp(g_base)) {
        perror("mkdtemp");
        abort();
    }
    snprintf(g_dir, sizeof g_dir, "%s/corpus", g_base);
    snprintf(g_one, sizeof g_one, "%s/one.txt", g_base);
    if (mkdir(g_dir, 0755) != 0) {
        perror("mkdir");
        abort();
    }
    atexit(cleanup);
}

static void put(const char *path, const uint8_t *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f || (n && fwrite(p, 1, n, f) != n) || fclose(f) != 0) {
        perror(path);
        abort();
    }
}

struct part {
    const uint8_t *p;
    size_t n; // bytes the reader uses (after max_bytes)
};

static void check_split(const struct moe_text *t, const struct moe_corpus *c, const struct part *files, size_t n_files,
                        int valid, double vf, int built_under_cap)
{
    FUZZ_CHECK(t->n_seg == n_files && t->seg && t->off, "split %d: %zu segments for %zu files", valid, t->n_seg,
               n_files);
    FUZZ_CHECK(t->off[0] == 0, "off[0] = %llu", (unsigned long long)t->off[0]);
    size_t at = 0;
    for (size_t s = 0; s < n_files; s++) {
        const struct moe_text_seg *g = &t->seg[s];
        FUZZ_CHECK(g->begin == at && g->end >= g->begin && g->end <= t->n_tok, "segment %zu not contiguous", s);
        FUZZ_CHECK(g->lang == (int32_t)s, "segment %zu has language %d", s, (int)g->lang);
        at = g->end;
    }
    FUZZ_CHECK(at == t->n_tok, "segments cover %zu of %zu tokens", at, t->n_tok);
    for (size_t i = 0; i < t->n_tok; i++) {
        FUZZ_CHECK(t->off[i + 1] > t->off[i], "off not increasing at %zu", i);
        FUZZ_CHECK(t->tok[i] >= 0 && (size_t)t->tok[i] < c->vocab.n, "id %d of %zu", (int)t->tok[i], c->vocab.n);
        FUZZ_CHECK(t->cls[i] < MOE_N_BYTE_CLASS, "class %d", t->cls[i]);
    }
    uint64_t total = 0;
    for (size_t s = 0; s < n_files; s++) {
        const struct moe_text_seg *g = &t->seg[s];
        // This file's part: training [0, cut), validation [cut, n); cut from the training split.
        size_t cut = (size_t)(c->train.off[c->train.seg[s].end] - c->train.off[c->train.seg[s].begin]);
        size_t start = valid ? cut : 0, bytes = valid ? files[s].n - cut : cut;
        FUZZ_CHECK(cut >= 1 && cut <= files[s].n, "file %zu: cut %zu of %zu bytes", s, cut, files[s].n);
        FUZZ_CHECK(t->off[g->end] - t->off[g->begin] == bytes, "file %zu split %d: %llu bytes, expected %zu", s, valid,
                   (unsigned long long)(t->off[g->end] - t->off[g->begin]), bytes);
        size_t nv = (size_t)floor(vf * (double)files[s].n), got_v = files[s].n - cut;
        FUZZ_CHECK(got_v + 3 >= nv && got_v <= nv + 3, "file %zu: %zu validation bytes for %zu asked", s, got_v, nv);
        if (got_v != nv && cut < files[s].n)
            FUZZ_CHECK((files[s].p[cut] & 0xC0) != 0x80, "file %zu: cut %zu moved inside a character", s, cut);
        for (size_t i = g->begin; i < g->end; i++) {
            size_t a = start + (size_t)(t->off[i] - t->off[g->begin]);
            size_t len = (size_t)(t->off[i + 1] - t->off[i]);
            const uint8_t *src = files[s].p + a;
            FUZZ_CHECK(a + len <= start + bytes, "token %zu past its part", i);
            FUZZ_CHECK(t->cls[i] == moe_byte_class(src[0]), "token %zu: class %d for byte 0x%02x", i, t->cls[i],
                       src[0]);
            int32_t id = t->tok[i];
            if (c->vocab.kind == MOE_TOK_BYTES) {
                FUZZ_CHECK(len == 1 && id == src[0], "byte token %zu", i);
                continue;
            }
            if (len > 1)
                for (size_t k = 0; k < len; k++)
                    FUZZ_CHECK(moe_word_byte(src[k]), "token %zu: a non-word byte inside a word", i);
            if (id != MOE_VOCAB_UNK) {
                FUZZ_CHECK(c->vocab.len[id] == len && memcmp(c->vocab.tok[id], src, len) == 0,
                           "token %zu: id %d does not spell its source bytes", i, (int)id);
            } else {
                FUZZ_CHECK(moe_vocab_lookup(&c->vocab, src, len) == MOE_VOCAB_UNK, "token %zu: <unk> for a known word",
                           i);
                FUZZ_CHECK(!(built_under_cap && !valid), "token %zu: <unk> in training text of a complete vocabulary",
                           i);
            }
        }
        total += bytes;
    }
    FUZZ_CHECK(t->off[t->n_tok] == total, "off[n_tok] = %llu, split has %llu bytes",
               (unsigned long long)t->off[t->n_tok], (unsigned long long)total);

    uint64_t *freq = calloc(c->vocab.n, sizeof *freq);
    if (!freq)
        abort();
    moe_text_count(t, c->vocab.n, freq);
    uint64_t sum = 0;
    for (size_t k = 0; k < c->vocab.n; k++)
        sum += freq[k];
    FUZZ_CHECK(sum == t->n_tok, "counts sum to %llu of %zu tokens", (unsigned long long)sum, t->n_tok);
    free(freq);
}

static void check_windows(const struct moe_text *t, uint64_t seed)
{
    static const size_t Cs[3] = { 1, 3, 8 };
    for (int k = 0; k < 3; k++) {
        size_t C = Cs[k];
        uint64_t n = moe_text_n_starts(t, C), want = 0, total = 0;
        for (size_t s = 0; s < t->n_seg; s++) {
            size_t len = t->seg[s].end - t->seg[s].begin;
            want += len > C ? len - C : 0;
            total += len >= C + 1 ? (len - 1) / C : 0;
        }
        FUZZ_CHECK(n == want, "n_starts %llu, expected %llu", (unsigned long long)n, (unsigned long long)want);
        for (uint64_t i = 0; n && i < 4; i++) {
            size_t s = SIZE_MAX;
            size_t st = moe_text_random_start(t, C, seed, i, i, &s);
            FUZZ_CHECK(s < t->n_seg && st >= t->seg[s].begin && st + C + 1 <= t->seg[s].end,
                       "random window %zu (C %zu) outside segment %zu", st, C, s);
            FUZZ_CHECK(moe_text_seg_of(t, st) == s, "seg_of(%zu) disagrees", st);
        }
        for (size_t max = 0; max <= 5; max += 5) {
            size_t *start = NULL, m = 0;
            struct moe_err err = { 0 };
            int rc = moe_text_fixed_windows(t, C, max, &start, &m, &err);
            FUZZ_CHECK(rc == 0, "fixed windows failed: %s", err.msg);
            FUZZ_CHECK(m == (max && total > max ? max : total), "%zu fixed windows of %llu (max %zu)", m,
                       (unsigned long long)total, max);
            FUZZ_CHECK((m == 0) == (start == NULL), "fixed windows: %zu with pointer %p", m, (void *)start);
            for (size_t j = 0; j < m; j++) {
                size_t s = moe_text_seg_of(t, start[j]);
                FUZZ_CHECK(s < t->n_seg && start[j] >= t->seg[s].begin && start[j] + C + 1 <= t->seg[s].end,
                           "fixed window %zu outside its segment", start[j]);
                FUZZ_CHECK((start[j] - t->seg[s].begin) % C == 0, "fixed window %zu not on the grid", start[j]);
                FUZZ_CHECK(j == 0 || start[j] > start[j - 1], "fixed windows not increasing");
            }
            free(start);
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    setup();
    unsigned opt = data[0];
    const uint8_t *text = data + 1;
    size_t len = size - 1;
    static const size_t caps[4] = { 2, 3, 16, 1000 };
    static const double fracs[4] = { 0, 0.25, 0.5, 0.9 };
    struct moe_corpus_spec spec = { 0 };
    spec.tokens = opt & 1 ? MOE_TOK_WORDS : MOE_TOK_BYTES;
    spec.vocab_size = caps[(opt >> 1) & 3];
    spec.valid_fraction = fracs[(opt >> 3) & 3];
    unsigned layout = (opt >> 5) & 3;
    size_t n_files = layout ? layout : 1;
    int given = (opt >> 7) & 1;
    spec.max_bytes = given ? 64 : 0;

    // Write the files.
    struct part files[3];
    char path[700];
    size_t m = len / n_files;
    for (size_t k = 0; k < 3; k++) {
        snprintf(path, sizeof path, "%s/%s", g_dir, k_names[k]);
        unlink(path);
    }
    int expect_ok = 1;
    for (size_t k = 0; k < n_files; k++) {
        const uint8_t *p = text + k * m;
        size_t n = k + 1 == n_files ? len - k * m : m;
        if (layout)
            snprintf(path, sizeof path, "%s/%s", g_dir, k_names[k]);
        else
            snprintf(path, sizeof path, "%s", g_one);
        put(path, p, n);
        files[k].p = p;
        files[k].n = spec.max_bytes && n > spec.max_bytes ? spec.max_bytes : n;
        if (files[k].n == 0 || memchr(p, 0, files[k].n))
            expect_ok = 0;
    }
    spec.path = layout ? g_dir : g_one;

    struct moe_vocab given_v = { 0 };
    struct moe_err err = { 0 };
    if (given) {
        int rc;
        if (spec.tokens == MOE_TOK_BYTES) {
            rc = moe_vocab_bytes(&given_v, &err);
        } else {
            size_t gl = len < 32 ? len : 32;
            const uint8_t *texts[1] = { text };
            rc = moe_vocab_build_words(&given_v, texts, &gl, 1, spec.vocab_size, &err);
        }
        FUZZ_CHECK(rc == 0, "building the given vocabulary failed: %s", err.msg);
        spec.vocab = &given_v;
    }

    struct moe_corpus c;
    int rc = moe_corpus_load(&spec, &c, &err);
    if (rc) {
        fuzz_check_err(rc, &err);
        FUZZ_CHECK(!expect_ok, "load failed on good files: %s", err.msg);
        FUZZ_CHECK(!c.lang && c.n_lang == 0 && !c.train.tok && !c.valid.tok && !c.vocab.tok && !c.train.off,
                   "failed load returned data");
        moe_vocab_release(&given_v);
        return 0;
    }
    FUZZ_CHECK(expect_ok, "load accepted an empty file or a NUL byte");
    FUZZ_CHECK(c.n_lang == n_files, "%zu languages for %zu files", c.n_lang, n_files);
    for (size_t k = 0; k < n_files; k++)
        FUZZ_CHECK(strcmp(c.lang[k], layout ? k_langs[k] : "one") == 0, "language %zu is '%s'", k, c.lang[k]);
    FUZZ_CHECK(c.vocab.kind == spec.tokens, "vocabulary kind %d", (int)c.vocab.kind);
    int built_under_cap = 0;
    if (spec.tokens == MOE_TOK_BYTES) {
        FUZZ_CHECK(c.vocab.n == 256, "bytes vocabulary of %zu", c.vocab.n);
    } else if (given) {
        FUZZ_CHECK(c.vocab.n == given_v.n, "given vocabulary of %zu became %zu", given_v.n, c.vocab.n);
        for (size_t i = 1; i < c.vocab.n; i++)
            FUZZ_CHECK(c.vocab.len[i] == given_v.len[i] && memcmp(c.vocab.tok[i], given_v.tok[i], given_v.len[i]) == 0,
                       "given vocabulary token %zu changed", i);
    } else {
        FUZZ_CHECK(c.vocab.n >= 2 && c.vocab.n <= spec.vocab_size, "vocabulary of %zu for cap %zu", c.vocab.n,
                   spec.vocab_size);
        built_under_cap = c.vocab.n < spec.vocab_size;
    }
    check_split(&c.train, &c, files, n_files, 0, spec.valid_fraction, built_under_cap);
    check_split(&c.valid, &c, files, n_files, 1, spec.valid_fraction, built_under_cap);
    check_windows(&c.train, size);
    check_windows(&c.valid, size);
    moe_corpus_release(&c);
    moe_vocab_release(&given_v);
    return 0;
}
