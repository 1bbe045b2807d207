// test_text.c: unit tests for the text-corpus layer (lib/io/vocab.c and lib/io/corpus.c):
// byte classes, byte and word tokenisation, word vocabularies and their file
// format, corpus loading (directories of languages, validation cut, limits,
// errors), and the training / evaluation window choices.
// Every fixture is written at run time under a mkdtemp directory.
// Not a test of the language model or of the CLI.
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <check.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/corpus.h"
#include "io/vocab.h"
#include "testutil.h"

static char g_dir[64];

// ---- fixtures ----

static const char *fixture(const char *name)
{
    static char path[4][256];
    static int k;
    k = (k + 1) & 3;
    snprintf(path[k], sizeof path[k], "%s/%s", g_dir, name);
    return path[k];
}

static void write_bytes(const char *path, const void *buf, size_t len)
{
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    if (len)
        ck_assert_uint_eq(fwrite(buf, 1, len, f), len);
    ck_assert_int_eq(fclose(f), 0);
}

static void write_str(const char *path, const char *s) { write_bytes(path, s, strlen(s)); }

static void make_dir(const char *path) { ck_assert_int_eq(mkdir(path, 0755), 0); }

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void assert_contains(const char *msg, const char *frag)
{
    ck_assert_msg(strstr(msg, frag) != NULL, "message '%s' lacks '%s'", msg, frag);
}

// Concatenate the bytes of tokens [a, b) of ids into out (capacity cap); return the length.
static size_t detokenize(const struct moe_vocab *v, const int32_t *ids, size_t a, size_t b, char *out, size_t cap)
{
    size_t n = 0;
    for (size_t i = a; i < b; i++) {
        ck_assert_int_ge(ids[i], 0);
        ck_assert_uint_lt((size_t)ids[i], v->n);
        ck_assert_uint_le(n + v->len[ids[i]], cap);
        memcpy(out + n, v->tok[ids[i]], v->len[ids[i]]);
        n += v->len[ids[i]];
    }
    return n;
}

// ---- byte classes and tokenisation ----

START_TEST(test_byte_class)
{
    ck_assert_int_eq(moe_byte_class('a'), MOE_CLASS_LETTER);
    ck_assert_int_eq(moe_byte_class('Z'), MOE_CLASS_LETTER);
    ck_assert_int_eq(moe_byte_class('0'), MOE_CLASS_DIGIT);
    ck_assert_int_eq(moe_byte_class('9'), MOE_CLASS_DIGIT);
    const char *spaces = " \t\n\v\f\r";
    for (const char *p = spaces; *p; p++)
        ck_assert_int_eq(moe_byte_class((uint8_t)*p), MOE_CLASS_SPACE);
    const char *punct = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";
    for (const char *p = punct; *p; p++)
        ck_assert_int_eq(moe_byte_class((uint8_t)*p), MOE_CLASS_PUNCT);
    ck_assert_int_eq(moe_byte_class(0), MOE_CLASS_OTHER);
    ck_assert_int_eq(moe_byte_class(0x1b), MOE_CLASS_OTHER);
    ck_assert_int_eq(moe_byte_class(0x7f), MOE_CLASS_OTHER);
    ck_assert_int_eq(moe_byte_class(0x80), MOE_CLASS_OTHER);
    ck_assert_int_eq(moe_byte_class(0xff), MOE_CLASS_OTHER);
    // Every byte in exactly the class its description gives.
    int count[MOE_N_BYTE_CLASS] = { 0 };
    for (int b = 0; b < 256; b++)
        count[moe_byte_class((uint8_t)b)]++;
    ck_assert_int_eq(count[MOE_CLASS_LETTER], 52);
    ck_assert_int_eq(count[MOE_CLASS_DIGIT], 10);
    ck_assert_int_eq(count[MOE_CLASS_SPACE], 6);
    ck_assert_int_eq(count[MOE_CLASS_PUNCT], 32);
    ck_assert_int_eq(count[MOE_CLASS_OTHER], 256 - 100);
    ck_assert_str_eq(moe_byte_class_name(MOE_CLASS_LETTER), "letter");
    ck_assert_str_eq(moe_byte_class_name(MOE_CLASS_DIGIT), "digit");
    ck_assert_str_eq(moe_byte_class_name(MOE_CLASS_SPACE), "space");
    ck_assert_str_eq(moe_byte_class_name(MOE_CLASS_PUNCT), "punct");
    ck_assert_str_eq(moe_byte_class_name(MOE_CLASS_OTHER), "other");
    ck_assert_ptr_null(moe_byte_class_name(5));
    ck_assert_str_eq(moe_tok_kind_name(MOE_TOK_BYTES), "bytes");
    ck_assert_str_eq(moe_tok_kind_name(MOE_TOK_WORDS), "words");
}
END_TEST

START_TEST(test_bytes_round_trip)
{
    struct moe_vocab v;
    struct moe_err err = { 0 };
    ck_assert_int_eq(moe_vocab_bytes(&v, &err), 0);
    ck_assert_int_eq(v.kind, MOE_TOK_BYTES);
    ck_assert_uint_eq(v.n, 256);
    uint8_t text[512];
    for (size_t i = 0; i < sizeof text; i++)
        text[i] = (uint8_t)(i * 37 + 11);
    int32_t ids[512];
    uint64_t off[512];
    ck_assert_uint_eq(moe_tokenize(&v, text, sizeof text, ids, off), sizeof text);
    for (size_t i = 0; i < sizeof text; i++) {
        ck_assert_int_eq(ids[i], text[i]);
        ck_assert_uint_eq(off[i], i);
    }
    char back[512];
    ck_assert_uint_eq(detokenize(&v, ids, 0, sizeof text, back, sizeof back), sizeof text);
    ck_assert_mem_eq(back, text, sizeof text);
    for (int b = 0; b < 256; b++) {
        uint8_t c = (uint8_t)b;
        ck_assert_int_eq(moe_vocab_lookup(&v, &c, 1), b);
        ck_assert_uint_eq(v.len[b], 1);
        ck_assert_int_eq((uint8_t)v.tok[b][0], b);
    }
    ck_assert_int_eq(moe_vocab_lookup(&v, (const uint8_t *)"ab", 2), -1);
    // off may be NULL.
    ck_assert_uint_eq(moe_tokenize(&v, text, 5, ids, NULL), 5);
    moe_vocab_release(&v);
    ck_assert_ptr_null(v.tok);
    moe_vocab_release(&v);
    moe_vocab_release(NULL);
}
END_TEST

START_TEST(test_word_tokenize)
{
    // Latin, Cyrillic, CJK with digits inside, punctuation, tab, CRLF, a control byte and invalid UTF-8.
    static const char text[] = "Hello, мир! Привет-мир 東京は2024年。\tx_y\r\n\x01" "caf\xc3\xa9 \xff\xfe!!";
    size_t len = sizeof text - 1;
    const uint8_t *texts[1] = { (const uint8_t *)text };
    struct moe_vocab v;
    struct moe_err err = { 0 };
    ck_assert_int_eq(moe_vocab_build_words(&v, texts, &len, 1, 1000, &err), 0);
    ck_assert_int_eq(v.kind, MOE_TOK_WORDS);
    ck_assert_str_eq(v.tok[MOE_VOCAB_UNK], "<unk>");
    int32_t ids[128];
    uint64_t off[128];
    size_t n = moe_tokenize(&v, (const uint8_t *)text, len, ids, off);
    static const char *const want[] = { "Hello", ",", " ", "мир", "!", " ", "Привет", "-", "мир", " ",
                                        "東京は2024年。", "\t", "x", "_", "y", "\r", "\n", "\x01", "caf\xc3\xa9", " ",
                                        "\xff\xfe", "!", "!" };
    size_t n_want = sizeof want / sizeof want[0];
    ck_assert_uint_eq(n, n_want);
    for (size_t i = 0; i < n; i++) {
        size_t wl = strlen(want[i]);
        size_t end = i + 1 < n ? off[i + 1] : len;
        ck_assert_uint_eq(end - off[i], wl);
        ck_assert_mem_eq(text + off[i], want[i], wl);
        ck_assert_int_ne(ids[i], MOE_VOCAB_UNK);
        ck_assert_uint_eq(v.len[ids[i]], wl);
        ck_assert_mem_eq(v.tok[ids[i]], want[i], wl);
    }
    ck_assert_int_eq(ids[3], ids[8]); // "мир" twice, same id
    int32_t mir = ids[3];
    ck_assert_int_eq(ids[4], ids[21]); // "!"
    // The off spans reproduce the source exactly.
    char back[256];
    ck_assert_uint_eq(detokenize(&v, ids, 0, n, back, sizeof back), len);
    ck_assert_mem_eq(back, text, len);
    // Words the vocabulary lacks become <unk> with their span intact.
    static const char other[] = "Hello Мир, hello!";
    size_t m = moe_tokenize(&v, (const uint8_t *)other, sizeof other - 1, ids, off);
    ck_assert_uint_eq(m, 7);
    ck_assert_int_ne(ids[0], MOE_VOCAB_UNK);
    ck_assert_int_eq(ids[2], MOE_VOCAB_UNK); // "Мир": case is kept
    ck_assert_uint_eq(off[3] - off[2], strlen("Мир"));
    ck_assert_int_eq(ids[5], MOE_VOCAB_UNK); // "hello"
    ck_assert_uint_eq(off[6] - off[5], 5);
    ck_assert_int_eq(moe_vocab_lookup(&v, (const uint8_t *)"мир", strlen("мир")), mir);
    ck_assert_int_eq(moe_vocab_lookup(&v, (const uint8_t *)"nope", 4), MOE_VOCAB_UNK);
    ck_assert_int_eq(moe_vocab_lookup(&v, (const uint8_t *)"", 0), MOE_VOCAB_UNK);
    ck_assert_int_eq(moe_word_byte('a') && moe_word_byte('7') && moe_word_byte(0x80) && !moe_word_byte('_'), 1);
    moe_vocab_release(&v);
}
END_TEST

// ---- vocabularies ----

START_TEST(test_vocab_order)
{
    // Counts: " " 9, "b" 3, "c" 3, "a" 2, "abc" 1, "ab" 1, "." 1; ties by bytes, a prefix first.
    static const char t1[] = "b a b c c ";
    static const char t2[] = "c a b abc ab.";
    const uint8_t *texts[2] = { (const uint8_t *)t1, (const uint8_t *)t2 };
    size_t lens[2] = { sizeof t1 - 1, sizeof t2 - 1 };
    static const char *const order[] = { "<unk>", " ", "b", "c", "a", ".", "ab", "abc" };
    struct moe_vocab v;
    struct moe_err err = { 0 };
    ck_assert_int_eq(moe_vocab_build_words(&v, texts, lens, 2, 100, &err), 0);
    ck_assert_uint_eq(v.n, 8); // every word, less than the cap
    for (size_t i = 0; i < v.n; i++) {
        ck_assert_str_eq(v.tok[i], order[i]);
        ck_assert_uint_eq(v.len[i], strlen(order[i]));
        if (i)
            ck_assert_int_eq(moe_vocab_lookup(&v, (const uint8_t *)order[i], strlen(order[i])), (int32_t)i);
    }
    moe_vocab_release(&v);
    // The cap counts <unk>.
    ck_assert_int_eq(moe_vocab_build_words(&v, texts, lens, 2, 3, &err), 0);
    ck_assert_uint_eq(v.n, 3);
    ck_assert_str_eq(v.tok[1], " ");
    ck_assert_str_eq(v.tok[2], "b");
    ck_assert_int_eq(moe_vocab_lookup(&v, (const uint8_t *)"c", 1), MOE_VOCAB_UNK);
    moe_vocab_release(&v);
    ck_assert_int_eq(moe_vocab_build_words(&v, texts, lens, 2, 2, &err), 0);
    ck_assert_uint_eq(v.n, 2);
    moe_vocab_release(&v);
    ck_assert_int_eq(moe_vocab_build_words(&v, texts, lens, 2, 1, &err), MOE_EINVAL);
    ck_assert_int_eq(err.code, MOE_EINVAL);
    assert_contains(err.msg, "at least 2");
    ck_assert_ptr_null(v.tok);
    // No text at all: just <unk>.
    ck_assert_int_eq(moe_vocab_build_words(&v, NULL, NULL, 0, 10, &err), 0);
    ck_assert_uint_eq(v.n, 1);
    moe_vocab_release(&v);
}
END_TEST

// A vocabulary file with every awkward byte; it is already in canonical form.
static const char k_awkward[] = "moe-vocab 1 words 9\n"
                                "<unk>\n"
                                "\\n\n"
                                "\\\\\n"
                                "\\t\n"
                                "\\x7f\n"
                                "a\xff" "b\n"
                                "<unk>\n"
                                "w\\x01\\r\\x1f\n"
                                "мир\n";

START_TEST(test_vocab_serialize_round_trip)
{
    struct moe_vocab v, w;
    struct moe_err err = { 0 };
    ck_assert_int_eq(moe_vocab_parse(&v, k_awkward, sizeof k_awkward - 1, "awkward", &err), 0);
    ck_assert_uint_eq(v.n, 9);
    static const char *const tok[] = { "<unk>", "\n", "\\", "\t", "\x7f", "a\xff" "b", "<unk>", "w\x01\r\x1f", "мир" };
    for (size_t i = 0; i < 9; i++) {
        ck_assert_uint_eq(v.len[i], strlen(tok[i]));
        ck_assert_mem_eq(v.tok[i], tok[i], v.len[i]);
        if (i)
            ck_assert_int_eq(moe_vocab_lookup(&v, (const uint8_t *)tok[i], strlen(tok[i])), (int32_t)i);
    }
    // "<unk>" is a real word (id 6); the placeholder at 0 is not looked up.
    ck_assert_int_eq(moe_vocab_lookup(&v, (const uint8_t *)"<unk>", 5), 6);
    char *buf;
    size_t len;
    ck_assert_int_eq(moe_vocab_serialize(&v, &buf, &len, &err), 0);
    ck_assert_uint_eq(len, sizeof k_awkward - 1);
    ck_assert_mem_eq(buf, k_awkward, len);
    free(buf);
    // Through a file, and a copy.
    const char *path = fixture("awkward.vocab");
    ck_assert_int_eq(moe_vocab_write(&v, path, &err), 0);
    ck_assert_int_eq(moe_vocab_read(&w, path, &err), 0);
    ck_assert_uint_eq(w.n, v.n);
    for (size_t i = 1; i < v.n; i++) {
        ck_assert_uint_eq(w.len[i], v.len[i]);
        ck_assert_mem_eq(w.tok[i], v.tok[i], v.len[i]);
    }
    moe_vocab_release(&w);
    ck_assert_int_eq(moe_vocab_copy(&w, &v, &err), 0);
    ck_assert_uint_eq(w.n, v.n);
    ck_assert_ptr_ne(w.tok[8], v.tok[8]);
    ck_assert_int_eq(moe_vocab_lookup(&w, (const uint8_t *)"мир", strlen("мир")), 8);
    moe_vocab_release(&w);
    moe_vocab_release(&v);
    // A non-canonical escape (\x0a for a newline) parses, and serialises canonically.
    static const char nc[] = "moe-vocab 1 words 3\n<unk>\n\\x0a\n\\x41b\n";
    ck_assert_int_eq(moe_vocab_parse(&v, nc, sizeof nc - 1, "nc", &err), 0);
    ck_assert_str_eq(v.tok[1], "\n");
    ck_assert_str_eq(v.tok[2], "Ab");
    ck_assert_int_eq(moe_vocab_serialize(&v, &buf, &len, &err), 0);
    ck_assert_str_eq(buf, "moe-vocab 1 words 3\n<unk>\n\\n\nAb\n");
    free(buf);
    // id 0 is the unknown word and nothing else
    moe_vocab_release(&v);
    static const char no_unk[] = "moe-vocab 1 words 3\nanything\na\nb\n";
    ck_assert_int_eq(moe_vocab_parse(&v, no_unk, sizeof no_unk - 1, "no_unk", &err), MOE_EFORMAT);
    ck_assert_str_eq(err.msg, "vocabulary 'no_unk' line 2: id 0 must be the unknown word <unk>, got 'anything'");
    moe_vocab_release(&v);
    // Bytes vocabulary: header only.
    ck_assert_int_eq(moe_vocab_bytes(&v, &err), 0);
    ck_assert_int_eq(moe_vocab_serialize(&v, &buf, &len, &err), 0);
    ck_assert_str_eq(buf, "moe-vocab 1 bytes 256\n");
    ck_assert_int_eq(moe_vocab_parse(&w, buf, len, "b", &err), 0);
    ck_assert_int_eq(w.kind, MOE_TOK_BYTES);
    ck_assert_uint_eq(w.n, 256);
    free(buf);
    moe_vocab_release(&w);
    moe_vocab_release(&v);
    // A built vocabulary round-trips through a file.
    static const char t[] = "one two\ttwo three\\three three\x7f";
    const uint8_t *texts[1] = { (const uint8_t *)t };
    size_t tl = sizeof t - 1;
    ck_assert_int_eq(moe_vocab_build_words(&v, texts, &tl, 1, 50, &err), 0);
    ck_assert_int_eq(moe_vocab_write(&v, path, &err), 0);
    ck_assert_int_eq(moe_vocab_read(&w, path, &err), 0);
    ck_assert_uint_eq(w.n, v.n);
    for (size_t i = 1; i < v.n; i++)
        ck_assert_mem_eq(w.tok[i], v.tok[i], v.len[i]);
    moe_vocab_release(&w);
    moe_vocab_release(&v);
}
END_TEST

struct parse_case {
    const char *text;
    size_t len; // 0 = strlen
    const char *frag1, *frag2;
};

START_TEST(test_vocab_parse_errors)
{
    static const struct parse_case cases[] = {
        { "", 0, "line 1: bad header", NULL },
        { "moe-vocab 1 words 2", 0, "line 1: bad header", NULL },
        { "moe-vocab 2 words 2\n<unk>\na\n", 0, "line 1: bad header", NULL },
        { "moe-vocab 1 bytes 255\n", 0, "line 1: bad header", NULL },
        { "moe-vocab 1 words 02\n<unk>\na\n", 0, "line 1: bad header", NULL },
        { "moe-vocab 1 words 0\n", 0, "line 1: bad header", NULL },
        { "moe-vocab 1 words -1\n<unk>\n", 0, "line 1: bad header", NULL },
        { "moe-vocab 1 words 99999999999999999999999\n", 0, "line 1: bad header", NULL },
        { "moe-vocab 1 words 2\r\n<unk>\r\na\r\n", 0, "line 1: bad header", NULL },
        { "moe-vocab 1 words 4\n<unk>\na\nb\n", 0, "line 5: wrong count", "header says 4 tokens" },
        { "moe-vocab 1 words 3\n", 0, "line 2: wrong count", NULL },
        { "moe-vocab 1 words 3\n<unk>\na\\qb\nc\n", 0, "line 3: bad escape", "column 2" },
        { "moe-vocab 1 words 3\n<unk>\na\nb\\x4\n", 0, "line 4: bad escape", NULL },
        { "moe-vocab 1 words 3\n<unk>\na\nb\\xAB\n", 0, "line 4: bad escape", NULL },
        { "moe-vocab 1 words 2\n<unk>\nab\\\n", 0, "line 3: bad escape", NULL },
        { "moe-vocab 1 words 3\n<unk>\n\nb\n", 0, "line 3: empty token", NULL },
        { "moe-vocab 1 words 4\n<unk>\na\nb\na\n", 0, "line 5: duplicate token 'a' (also on line 3)", NULL },
        { "moe-vocab 1 words 3\n<unk>\n\\n\n\\x0a\n", 0, "line 4: duplicate token '\\x0a' (also on line 3)", NULL },
        { "moe-vocab 1 words 2\n<unk>\na\nb\n", 0, "line 4: trailing data", NULL },
        { "moe-vocab 1 words 2\n<unk>\na\nb", 0, "line 4: trailing data", NULL },
        { "moe-vocab 1 bytes 256\na\n", 0, "line 2: trailing data", NULL },
        { "moe-vocab 1 words 3\n<unk>\na\0b\nc\n", 32, "line 3: NUL byte", "offset 27" },
        { "moe-vocab 1 words 2\n<unk>\na\tb\n", 0, "line 3: raw control byte 0x09", NULL },
        { "moe-vocab 1 words 2\n<unk>\nab\r\n", 0, "line 3: raw control byte 0x0d", NULL },
        { "moe-vocab 1 words 2\n<unk>\nab", 0, "line 3: no line end", NULL },
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        const struct parse_case *c = &cases[k];
        struct moe_vocab v;
        struct moe_err err = { 0 };
        size_t len = c->len ? c->len : strlen(c->text);
        int rc = moe_vocab_parse(&v, c->text, len, "test.vocab", &err);
        ck_assert_msg(rc == MOE_EFORMAT, "case %zu: status %d", k, rc);
        ck_assert_int_eq(err.code, MOE_EFORMAT);
        ck_assert_msg(strncmp(err.msg, "vocabulary 'test.vocab' ", 24) == 0, "case %zu: '%s'", k, err.msg);
        assert_contains(err.msg, c->frag1);
        if (c->frag2)
            assert_contains(err.msg, c->frag2);
        ck_assert_ptr_null(v.tok);
        ck_assert_uint_eq(v.n, 0);
    }
    // A missing file.
    struct moe_vocab v;
    struct moe_err err = { 0 };
    ck_assert_int_eq(moe_vocab_read(&v, fixture("no-such.vocab"), &err), MOE_EIO);
    assert_contains(err.msg, "no-such.vocab");
    // The file name is the `what` of a read.
    const char *path = fixture("bad.vocab");
    write_str(path, "moe-vocab 1 words 2\n<unk>\n\n");
    ck_assert_int_eq(moe_vocab_read(&v, path, &err), MOE_EFORMAT);
    char want[400];
    snprintf(want, sizeof want, "vocabulary '%s' line 3: empty token", path);
    ck_assert_str_eq(err.msg, want);
}
END_TEST

// ---- corpora ----

static const char k_eng[] = "the cat saw the dog. the dog saw a zebra";
static const char k_rus[] = "абвгд"; // 10 bytes of 2-byte characters
static const char k_jpn[] = "東京大阪"; // 12 bytes of 3-byte characters

// A directory with three languages, a hidden file and a subdirectory.
static const char *make_corpus_dir(const char *name)
{
    const char *dir = fixture(name);
    static char keep[256];
    snprintf(keep, sizeof keep, "%s", dir);
    make_dir(keep);
    char p[300];
    snprintf(p, sizeof p, "%s/rus.txt", keep);
    write_str(p, k_rus);
    snprintf(p, sizeof p, "%s/eng.txt", keep);
    write_str(p, k_eng);
    snprintf(p, sizeof p, "%s/jpn", keep); // no extension
    write_str(p, k_jpn);
    snprintf(p, sizeof p, "%s/.hidden.txt", keep);
    write_str(p, "hidden\0binary");
    snprintf(p, sizeof p, "%s/sub", keep);
    make_dir(p);
    snprintf(p, sizeof p, "%s/sub/deu.txt", keep);
    write_str(p, "nicht gelesen");
    return keep;
}

// Invariants of one split: offsets monotone, segments contiguous per language, classes.
static void check_split(const struct moe_text *t, const struct moe_corpus *c)
{
    ck_assert_uint_eq(t->n_seg, c->n_lang);
    ck_assert_uint_eq(t->off[0], 0);
    size_t at = 0;
    for (size_t s = 0; s < t->n_seg; s++) {
        ck_assert_uint_eq(t->seg[s].begin, at);
        ck_assert_uint_ge(t->seg[s].end, t->seg[s].begin);
        ck_assert_int_eq(t->seg[s].lang, (int32_t)s);
        at = t->seg[s].end;
    }
    ck_assert_uint_eq(at, t->n_tok);
    for (size_t i = 0; i < t->n_tok; i++) {
        ck_assert_uint_gt(t->off[i + 1], t->off[i]);
        ck_assert_uint_lt(t->cls[i], MOE_N_BYTE_CLASS);
        ck_assert_int_ge(t->tok[i], 0);
        ck_assert_uint_lt((size_t)t->tok[i], c->vocab.n);
    }
}

// Bytes of segment s of a split.
static size_t seg_bytes(const struct moe_text *t, size_t s)
{
    return (size_t)(t->off[t->seg[s].end] - t->off[t->seg[s].begin]);
}

START_TEST(test_corpus_bytes_dir)
{
    const char *dir = make_corpus_dir("corpus-bytes");
    struct moe_corpus_spec spec = { .path = dir, .tokens = MOE_TOK_BYTES, .valid_fraction = 0.35 };
    struct moe_corpus c;
    struct moe_err err = { 0 };
    ck_assert_int_eq(moe_corpus_load(&spec, &c, &err), 0);
    ck_assert_uint_eq(c.n_lang, 3);
    ck_assert_str_eq(c.lang[0], "eng");
    ck_assert_str_eq(c.lang[1], "jpn");
    ck_assert_str_eq(c.lang[2], "rus");
    ck_assert_uint_eq(c.vocab.n, 256);
    check_split(&c.train, &c);
    check_split(&c.valid, &c);
    const char *src[3] = { k_eng, k_jpn, k_rus };
    // eng: 40 bytes, 14 valid; jpn: 12 bytes, floor(4.2) = 4 valid -> cut 8 inside 大, back to 6;
    // rus: 10 bytes, floor(3.5) = 3 valid -> cut 7 inside г, back to 6.
    size_t want_train[3] = { 26, 6, 6 };
    size_t at_t = 0, at_v = 0;
    for (size_t s = 0; s < 3; s++) {
        size_t n = strlen(src[s]);
        ck_assert_uint_eq(seg_bytes(&c.train, s), want_train[s]);
        ck_assert_uint_eq(seg_bytes(&c.valid, s), n - want_train[s]);
        for (size_t i = 0; i < want_train[s]; i++)
            ck_assert_int_eq(c.train.tok[at_t + i], (uint8_t)src[s][i]);
        for (size_t i = 0; i < n - want_train[s]; i++)
            ck_assert_int_eq(c.valid.tok[at_v + i], (uint8_t)src[s][want_train[s] + i]);
        at_t += want_train[s];
        at_v += n - want_train[s];
    }
    ck_assert_uint_eq(c.train.n_tok, at_t);
    ck_assert_uint_eq(c.valid.n_tok, at_v);
    ck_assert_uint_eq(c.train.off[c.train.n_tok], at_t);
    ck_assert_uint_eq(c.valid.off[c.valid.n_tok], at_v);
    ck_assert_int_eq(c.train.cls[0], MOE_CLASS_LETTER);
    ck_assert_int_eq(c.train.cls[3], MOE_CLASS_SPACE);
    ck_assert_int_eq(c.train.cls[26], MOE_CLASS_OTHER); // 東
    // The valid split starts on a character: 大 and г.
    ck_assert_int_eq(c.valid.tok[c.valid.seg[1].begin], 0xe5);
    ck_assert_int_eq(c.valid.tok[c.valid.seg[2].begin], 0xd0); // г = d0 b3
    ck_assert_int_eq(c.valid.tok[c.valid.seg[2].begin + 1], 0xb3);
    ck_assert_uint_eq(moe_text_seg_of(&c.train, 0), 0);
    ck_assert_uint_eq(moe_text_seg_of(&c.train, 26), 1);
    ck_assert_uint_eq(moe_text_seg_of(&c.train, 37), 2);
    moe_corpus_release(&c);
    ck_assert_ptr_null(c.lang);
    moe_corpus_release(&c);

    // max_bytes: the first 7 bytes of each file (it may cut a character); no validation part.
    spec.valid_fraction = 0;
    spec.max_bytes = 7;
    ck_assert_int_eq(moe_corpus_load(&spec, &c, &err), 0);
    check_split(&c.train, &c);
    check_split(&c.valid, &c);
    ck_assert_uint_eq(c.train.n_tok, 21);
    ck_assert_uint_eq(c.valid.n_tok, 0);
    ck_assert_uint_eq(c.valid.off[0], 0);
    for (size_t s = 0; s < 3; s++) {
        ck_assert_uint_eq(seg_bytes(&c.train, s), 7);
        ck_assert_uint_eq(c.valid.seg[s].begin, 0);
        ck_assert_uint_eq(c.valid.seg[s].end, 0);
    }
    moe_corpus_release(&c);

    // A single file: one language named after it.
    char path[300];
    snprintf(path, sizeof path, "%s/eng.txt", dir);
    struct moe_corpus_spec one = { .path = path, .tokens = MOE_TOK_BYTES, .valid_fraction = 0.5 };
    ck_assert_int_eq(moe_corpus_load(&one, &c, &err), 0);
    ck_assert_uint_eq(c.n_lang, 1);
    ck_assert_str_eq(c.lang[0], "eng");
    ck_assert_uint_eq(c.train.n_tok, 20);
    ck_assert_uint_eq(c.valid.n_tok, 20);
    moe_corpus_release(&c);
}
END_TEST

START_TEST(test_corpus_words_dir)
{
    const char *dir = make_corpus_dir("corpus-words");
    // eng: 40 bytes, floor(0.3 * 40) = 12 valid: "the cat saw the dog. the dog" | " saw a zebra"
    struct moe_corpus_spec spec = { .path = dir, .tokens = MOE_TOK_WORDS, .vocab_size = 100, .valid_fraction = 0.3 };
    struct moe_corpus c;
    struct moe_err err = { 0 };
    ck_assert_int_eq(moe_corpus_load(&spec, &c, &err), 0);
    check_split(&c.train, &c);
    check_split(&c.valid, &c);
    ck_assert_int_eq(c.vocab.kind, MOE_TOK_WORDS);
    // Built from the training parts only: "zebra" (validation) is unknown.
    ck_assert_int_eq(moe_vocab_lookup(&c.vocab, (const uint8_t *)"zebra", 5), MOE_VOCAB_UNK);
    ck_assert_int_ne(moe_vocab_lookup(&c.vocab, (const uint8_t *)"dog", 3), MOE_VOCAB_UNK);
    // Most frequent first: " " (6 in eng's training part), then "the" (3).
    ck_assert_str_eq(c.vocab.tok[1], " ");
    ck_assert_str_eq(c.vocab.tok[2], "the");
    // The validation tokens cover their bytes, <unk> spans included.
    size_t vb = c.valid.seg[0].begin, ve = c.valid.seg[0].end;
    const char *want_valid = k_eng + strlen(k_eng) - seg_bytes(&c.valid, 0);
    ck_assert_str_eq(want_valid, " saw a zebra");
    size_t n_unk = 0;
    for (size_t i = vb; i < ve; i++) {
        size_t a = (size_t)(c.valid.off[i] - c.valid.off[vb]), b = (size_t)(c.valid.off[i + 1] - c.valid.off[vb]);
        if (c.valid.tok[i] == MOE_VOCAB_UNK) { // "a" and "zebra" are not in the training part
            n_unk++;
            ck_assert(memcmp(want_valid + a, "zebra", b - a) == 0 || memcmp(want_valid + a, "a", b - a) == 0);
            ck_assert_uint_eq(b - a, n_unk == 1 ? 1 : 5);
        } else {
            ck_assert_uint_eq(c.vocab.len[c.valid.tok[i]], b - a);
            ck_assert_mem_eq(c.vocab.tok[c.valid.tok[i]], want_valid + a, b - a);
        }
    }
    ck_assert_uint_eq(n_unk, 2);
    // Training text reproduces exactly (no unknown word in it).
    char back[128];
    size_t n = detokenize(&c.vocab, c.train.tok, c.train.seg[0].begin, c.train.seg[0].end, back, sizeof back);
    ck_assert_uint_eq(n, 28);
    ck_assert_mem_eq(back, k_eng, n);
    // jpn and rus are one word per split.
    ck_assert_uint_eq(c.train.seg[1].end - c.train.seg[1].begin, 1);
    ck_assert_uint_eq(c.valid.seg[2].end - c.valid.seg[2].begin, 1);
    ck_assert_int_eq(c.valid.tok[c.valid.seg[2].begin], MOE_VOCAB_UNK);
    ck_assert_int_eq(c.train.cls[c.train.seg[1].begin], MOE_CLASS_OTHER);

    // A given vocabulary is copied and used as it is.
    struct moe_vocab v;
    ck_assert_int_eq(moe_vocab_copy(&v, &c.vocab, &err), 0);
    moe_corpus_release(&c);
    spec.vocab = &v;
    spec.vocab_size = 0; // ignored with a vocabulary
    spec.valid_fraction = 0;
    ck_assert_int_eq(moe_corpus_load(&spec, &c, &err), 0);
    ck_assert_uint_eq(c.vocab.n, v.n);
    ck_assert_ptr_ne(c.vocab.tok, v.tok);
    ck_assert_int_eq(c.train.tok[c.train.seg[0].end - 1], MOE_VOCAB_UNK); // "zebra" now in training
    moe_corpus_release(&c);
    // Its kind must match.
    spec.tokens = MOE_TOK_BYTES;
    ck_assert_int_eq(moe_corpus_load(&spec, &c, &err), MOE_EINVAL);
    assert_contains(err.msg, dir);
    assert_contains(err.msg, "kind 'words'");
    ck_assert_ptr_null(c.lang);
    moe_vocab_release(&v);
}
END_TEST

START_TEST(test_corpus_cut_edges)
{
    // A cut that would move back to 0 moves forward instead: every file keeps a training byte.
    const char *path = fixture("one-char.txt");
    write_str(path, "\xe6\x9d\xb1x"); // 東x: 4 bytes, 0.6 -> 2 valid -> cut 2 inside 東 -> 3
    struct moe_corpus_spec spec = { .path = path, .tokens = MOE_TOK_BYTES, .valid_fraction = 0.6 };
    struct moe_corpus c;
    struct moe_err err = { 0 };
    ck_assert_int_eq(moe_corpus_load(&spec, &c, &err), 0);
    ck_assert_uint_eq(c.train.n_tok, 3);
    ck_assert_uint_eq(c.valid.n_tok, 1);
    ck_assert_str_eq(c.lang[0], "one-char");
    moe_corpus_release(&c);
    // A one-byte file with a large fraction: all training.
    write_str(path, "x");
    spec.valid_fraction = 0.99;
    ck_assert_int_eq(moe_corpus_load(&spec, &c, &err), 0);
    ck_assert_uint_eq(c.train.n_tok, 1);
    ck_assert_uint_eq(c.valid.n_tok, 0);
    moe_corpus_release(&c);
}
END_TEST

START_TEST(test_corpus_errors)
{
    struct moe_corpus c;
    struct moe_err err = { 0 };
    struct moe_corpus_spec spec = { .tokens = MOE_TOK_BYTES };
    // Missing path.
    spec.path = fixture("no-such-corpus");
    ck_assert_int_eq(moe_corpus_load(&spec, &c, &err), MOE_EIO);
    ck_assert_int_eq(err.code, MOE_EIO);
    assert_contains(err.msg, "no-such-corpus");
    ck_assert_ptr_null(c.lang);
    // Not a file or directory.
    spec.path = "/dev/null";
    ck_assert_int_eq(moe_corpus_load(&spec, &c, &err), MOE_EIO);
    assert_contains(err.msg, "'/dev/null' is not a file or directory");
    // A directory with no text file (only a hidden file and a subdirectory).
    const char *dir = fixture("empty-corpus");
    char keep[256], p[300];
    snprintf(keep, sizeof keep, "%s", dir);
    make_dir(keep);
    snprintf(p, sizeof p, "%s/.x", keep);
    write_str(p, "hidden");
    snprintf(p, sizeof p, "%s/sub", keep);
    make_dir(p);
    spec.path = keep;
    ck_assert_int_eq(moe_corpus_load(&spec, &c, &err), MOE_EIO);
    assert_contains(err.msg, keep);
    assert_contains(err.msg, "no text file");
    // An empty file (in a directory: the message names the file).
    snprintf(p, sizeof p, "%s/empty.txt", keep);
    write_str(p, "");
    ck_assert_int_eq(moe_corpus_load(&spec, &c, &err), MOE_EFORMAT);
    assert_contains(err.msg, p);
    assert_contains(err.msg, "is empty");
    // A NUL byte.
    write_bytes(p, "abc\0def", 7);
    ck_assert_int_eq(moe_corpus_load(&spec, &c, &err), MOE_EFORMAT);
    assert_contains(err.msg, p);
    assert_contains(err.msg, "NUL byte at offset 3");
    ck_assert_ptr_null(c.train.tok);
    // ... even with max_bytes past it, not before it.
    spec.max_bytes = 3;
    ck_assert_int_eq(moe_corpus_load(&spec, &c, &err), 0);
    ck_assert_uint_eq(c.train.n_tok, 3);
    moe_corpus_release(&c);
    spec.max_bytes = 0;
    // Two files of one language: a layout fault of the data (exit 1), like an empty file.
    write_str(p, "abc");
    snprintf(p, sizeof p, "%s/empty.md", keep);
    write_str(p, "abc");
    ck_assert_int_eq(moe_corpus_load(&spec, &c, &err), MOE_EFORMAT);
    assert_contains(err.msg, "both language 'empty'");
    remove(p);
    // A read error: /proc/self/mem is a regular file that fails to read at offset 0.
    spec.path = "/proc/self/mem";
    ck_assert_int_eq(moe_corpus_load(&spec, &c, &err), MOE_EIO);
    assert_contains(err.msg, "cannot read text '/proc/self/mem'");
    // A file larger than 1 GiB (sparse): refused before reading unless max_bytes is below the limit.
    snprintf(p, sizeof p, "%s/huge.txt", g_dir);
    int fd = open(p, O_CREAT | O_WRONLY | O_TRUNC, 0644);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(ftruncate(fd, ((off_t)1 << 30) + 1), 0);
    ck_assert_int_eq(pwrite(fd, "ab", 2, 0), 2);
    close(fd);
    spec.path = p;
    ck_assert_int_eq(moe_corpus_load(&spec, &c, &err), MOE_EFORMAT);
    assert_contains(err.msg, p);
    assert_contains(err.msg, "1 GiB");
    spec.max_bytes = 2;
    ck_assert_int_eq(moe_corpus_load(&spec, &c, &err), 0);
    ck_assert_uint_eq(c.train.n_tok, 2);
    moe_corpus_release(&c);
    spec.max_bytes = 0;
    remove(p);
    // Bad spec values.
    spec.path = keep;
    spec.valid_fraction = 1;
    ck_assert_int_eq(moe_corpus_load(&spec, &c, &err), MOE_EINVAL);
    assert_contains(err.msg, "valid_fraction");
    spec.valid_fraction = 0;
    spec.tokens = MOE_TOK_WORDS;
    spec.vocab_size = 1;
    ck_assert_int_eq(moe_corpus_load(&spec, &c, &err), MOE_EINVAL);
    assert_contains(err.msg, "vocabulary size 1");
    // A bytes vocabulary for a words corpus.
    struct moe_vocab v;
    ck_assert_int_eq(moe_vocab_bytes(&v, &err), 0);
    spec.vocab = &v;
    ck_assert_int_eq(moe_corpus_load(&spec, &c, &err), MOE_EINVAL);
    assert_contains(err.msg, "kind 'bytes'");
    assert_contains(err.msg, keep);
    moe_vocab_release(&v);
}
END_TEST

// ---- windows ----

// A hand-made split with segments of the given lengths.
static struct moe_text make_text(const size_t *lens, size_t n_seg, struct moe_text_seg *seg)
{
    struct moe_text t = { 0 };
    size_t at = 0;
    for (size_t s = 0; s < n_seg; s++) {
        seg[s].begin = at;
        seg[s].end = at + lens[s];
        seg[s].lang = (int32_t)s;
        at += lens[s];
    }
    t.n_tok = at;
    t.n_seg = n_seg;
    t.seg = seg;
    return t;
}

START_TEST(test_random_start)
{
    static const size_t lens[] = { 10, 3, 25, 0, 7, 4 };
    enum { NS = sizeof lens / sizeof lens[0] };
    struct moe_text_seg seg[NS];
    struct moe_text t = make_text(lens, NS, seg);
    const size_t C = 4;
    ck_assert_uint_eq(moe_text_n_starts(&t, C), 6 + 0 + 21 + 0 + 3 + 0);
    ck_assert_uint_eq(moe_text_n_starts(&t, 100), 0);
    ck_assert_uint_eq(moe_text_n_starts(&t, 0), t.n_tok);
    enum { DRAWS = 30000 };
    int seen[64] = { 0 };
    uint64_t per_seg[NS] = { 0 };
    for (uint64_t i = 0; i < DRAWS; i++) {
        size_t s = 99;
        size_t st = moe_text_random_start(&t, C, 1234, 7, i, &s);
        ck_assert_uint_lt(s, NS);
        ck_assert_uint_ge(st, seg[s].begin);
        ck_assert_uint_le(st + C + 1, seg[s].end);
        ck_assert_uint_eq(moe_text_seg_of(&t, st), s);
        size_t s2;
        ck_assert_uint_eq(moe_text_random_start(&t, C, 1234, 7, i, &s2), st); // a pure function
        ck_assert_uint_eq(s2, s);
        seen[st]++;
        per_seg[s]++;
    }
    // Every valid start is reached, and nothing else.
    size_t n_seen = 0;
    for (size_t s = 0; s < NS; s++)
        for (size_t k = seg[s].begin; k < seg[s].end; k++) {
            int valid = k + C + 1 <= seg[s].end;
            ck_assert_int_eq(seen[k] > 0, valid);
            n_seen += valid;
        }
    ck_assert_uint_eq(n_seen, 30);
    // Roughly uniform over segments weighted by their starts: chi-square with 2
    // degrees of freedom; 40 has probability about 2e-9 (the seed is fixed anyway).
    double chi2 = 0;
    for (size_t s = 0; s < NS; s++) {
        size_t m = seg[s].end - seg[s].begin > C ? seg[s].end - seg[s].begin - C : 0;
        if (!m) {
            ck_assert_uint_eq(per_seg[s], 0);
            continue;
        }
        double e = (double)DRAWS * (double)m / 30.0;
        chi2 += ((double)per_seg[s] - e) * ((double)per_seg[s] - e) / e;
    }
    ck_assert_double_lt(chi2, 40.0);
    // ... and over single starts (29 degrees of freedom; 100 has probability about 1e-9).
    double chi2s = 0;
    for (size_t k = 0; k < 64; k++)
        if (seen[k]) {
            double e = DRAWS / 30.0;
            chi2s += (seen[k] - e) * (seen[k] - e) / e;
        }
    ck_assert_double_lt(chi2s, 100.0);
    // Other epochs and seeds give other windows.
    int same_epoch = 0, same_seed = 0;
    for (uint64_t i = 0; i < 200; i++) {
        size_t a = moe_text_random_start(&t, C, 1234, 7, i, NULL);
        same_epoch += a == moe_text_random_start(&t, C, 1234, 8, i, NULL);
        same_seed += a == moe_text_random_start(&t, C, 1235, 7, i, NULL);
    }
    ck_assert_int_lt(same_epoch, 30); // about 200/30 expected by chance
    ck_assert_int_lt(same_seed, 30);
    // A single valid start.
    static const size_t one[] = { 5 };
    struct moe_text_seg seg1[1];
    struct moe_text t1 = make_text(one, 1, seg1);
    for (uint64_t i = 0; i < 20; i++)
        ck_assert_uint_eq(moe_text_random_start(&t1, 4, 1, 1, i, NULL), 0);
}
END_TEST

START_TEST(test_fixed_windows)
{
    static const size_t lens[] = { 10, 3, 25, 0 };
    struct moe_text_seg seg[4];
    struct moe_text t = make_text(lens, 4, seg);
    struct moe_err err = { 0 };
    size_t *st, n;
    // seg 0: starts 0, 4 (8 + 5 > 10); seg 1: none; seg 2 (begin 13): (25 - 1) / 4 = 6 windows.
    static const size_t all[] = { 0, 4, 13, 17, 21, 25, 29, 33 };
    ck_assert_int_eq(moe_text_fixed_windows(&t, 4, 0, &st, &n, &err), 0);
    ck_assert_uint_eq(n, 8);
    for (size_t k = 0; k < n; k++) {
        ck_assert_uint_eq(st[k], all[k]);
        size_t s = moe_text_seg_of(&t, st[k]);
        ck_assert_uint_le(st[k] + 5, seg[s].end);
    }
    free(st);
    for (size_t max = 8; max <= 100; max += 92) { // max >= total: all of them
        ck_assert_int_eq(moe_text_fixed_windows(&t, 4, max, &st, &n, &err), 0);
        ck_assert_uint_eq(n, 8);
        ck_assert_mem_eq(st, all, sizeof all);
        free(st);
    }
    // Evenly spaced: numbers floor(k * 8 / 3) = 0, 2, 5.
    ck_assert_int_eq(moe_text_fixed_windows(&t, 4, 3, &st, &n, &err), 0);
    ck_assert_uint_eq(n, 3);
    ck_assert_uint_eq(st[0], 0);
    ck_assert_uint_eq(st[1], 13);
    ck_assert_uint_eq(st[2], 25);
    free(st);
    ck_assert_int_eq(moe_text_fixed_windows(&t, 4, 1, &st, &n, &err), 0);
    ck_assert_uint_eq(n, 1);
    ck_assert_uint_eq(st[0], 0);
    free(st);
    // C = 1: every token but the last of each segment.
    ck_assert_int_eq(moe_text_fixed_windows(&t, 1, 0, &st, &n, &err), 0);
    ck_assert_uint_eq(n, 9 + 2 + 24);
    free(st);
    // No window fits.
    ck_assert_int_eq(moe_text_fixed_windows(&t, 40, 0, &st, &n, &err), 0);
    ck_assert_uint_eq(n, 0);
    ck_assert_ptr_null(st);
    ck_assert_int_eq(moe_text_fixed_windows(&t, 0, 0, &st, &n, &err), MOE_EINVAL);
    assert_contains(err.msg, "context length 0");
    // Exactly C + 1 tokens: one window.
    static const size_t five[] = { 5 };
    struct moe_text_seg seg5[1];
    struct moe_text t5 = make_text(five, 1, seg5);
    ck_assert_int_eq(moe_text_fixed_windows(&t5, 4, 0, &st, &n, &err), 0);
    ck_assert_uint_eq(n, 1);
    free(st);
}
END_TEST

START_TEST(test_seg_of_and_count)
{
    static const size_t lens[] = { 0, 2, 0, 0, 3, 0 };
    struct moe_text_seg seg[6];
    struct moe_text t = make_text(lens, 6, seg);
    ck_assert_uint_eq(moe_text_seg_of(&t, 0), 1);
    ck_assert_uint_eq(moe_text_seg_of(&t, 1), 1);
    ck_assert_uint_eq(moe_text_seg_of(&t, 2), 4);
    ck_assert_uint_eq(moe_text_seg_of(&t, 4), 4);
    int32_t tok[5] = { 3, 1, 3, 0, 3 };
    t.tok = tok;
    uint64_t freq[5] = { 9, 9, 9, 9, 9 };
    moe_text_count(&t, 5, freq);
    ck_assert_uint_eq(freq[0], 1);
    ck_assert_uint_eq(freq[1], 1);
    ck_assert_uint_eq(freq[2], 0);
    ck_assert_uint_eq(freq[3], 3);
    ck_assert_uint_eq(freq[4], 0);
    // A loaded corpus: frequencies sum to the tokens, and match the build order.
    const char *path = fixture("count.txt");
    write_str(path, "a b a c a b\n");
    struct moe_corpus_spec spec = { .path = path, .tokens = MOE_TOK_WORDS, .vocab_size = 10 };
    struct moe_corpus c;
    struct moe_err err = { 0 };
    ck_assert_int_eq(moe_corpus_load(&spec, &c, &err), 0);
    uint64_t f[10];
    ck_assert_uint_le(c.vocab.n, 10);
    moe_text_count(&c.train, c.vocab.n, f);
    ck_assert_uint_eq(f[0], 0);
    ck_assert_uint_eq(f[1], 5); // " "
    ck_assert_uint_eq(f[2], 3); // "a"
    ck_assert_uint_eq(f[3], 2); // "b"
    uint64_t sum = 0;
    for (size_t i = 0; i < c.vocab.n; i++)
        sum += f[i];
    ck_assert_uint_eq(sum, c.train.n_tok);
    moe_corpus_release(&c);
}
END_TEST

static Suite *text_suite(void)
{
    Suite *s = suite_create("text");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_byte_class);
    tcase_add_test(tc, test_bytes_round_trip);
    tcase_add_test(tc, test_word_tokenize);
    tcase_add_test(tc, test_vocab_order);
    tcase_add_test(tc, test_vocab_serialize_round_trip);
    tcase_add_test(tc, test_vocab_parse_errors);
    tcase_add_test(tc, test_corpus_bytes_dir);
    tcase_add_test(tc, test_corpus_words_dir);
    tcase_add_test(tc, test_corpus_cut_edges);
    tcase_add_test(tc, test_corpus_errors);
    tcase_add_test(tc, test_random_start);
    tcase_add_test(tc, test_fixed_windows);
    tcase_add_test(tc, test_seg_of_and_count);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    snprintf(g_dir, sizeof g_dir, "/tmp/moe-text-XXXXXX");
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        return 1;
    }
    int rc = moe_test_run(text_suite());
    nftw(g_dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return rc;
}
