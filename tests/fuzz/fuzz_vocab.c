// fuzz_vocab.c: libFuzzer harness for the vocabulary file parser
// (lib/io/vocab.c): moe_vocab_parse on the input, and for an accepted
// vocabulary the writer, the parser again, the copy and the lookup.
// Input: the vocabulary file bytes. Corpus: tests/fuzz/corpus/vocab/.
// Checks beyond the sanitizers: failures carry a one-line message and a
// matching code and return no vocabulary; an accepted vocabulary has 256
// one-byte tokens (bytes) or <unk> then non-empty tokens (words); it serialises
// to text that parses back to the same tokens, and serialising that again gives
// identical bytes; lookup of every token returns its id; a copy looks up alike;
// moe_vocab_read of the same bytes as a file agrees with moe_vocab_parse.
// fuzz-max-len: 4096
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "io/vocab.h"

static void check_vocab(const struct moe_vocab *v)
{
    if (v->kind == MOE_TOK_BYTES) {
        FUZZ_CHECK(v->n == 256, "bytes vocabulary of %zu tokens", v->n);
        for (size_t b = 0; b < 256; b++) {
            FUZZ_CHECK(v->len[b] == 1 && (uint8_t)v->tok[b][0] == b, "byte token %zu", b);
            FUZZ_CHECK(moe_vocab_lookup(v, (const uint8_t *)v->tok[b], 1) == (int32_t)b, "lookup of byte %zu", b);
        }
        return;
    }
    FUZZ_CHECK(v->kind == MOE_TOK_WORDS, "kind %d", (int)v->kind);
    FUZZ_CHECK(v->n >= 1 && v->tok && v->len, "words vocabulary of %zu tokens", v->n);
    FUZZ_CHECK(v->len[0] == 5 && memcmp(v->tok[0], "<unk>", 5) == 0, "tok[0] is not the <unk> placeholder");
    for (size_t i = 1; i < v->n; i++) {
        FUZZ_CHECK(v->len[i] > 0, "token %zu is empty", i);
        FUZZ_CHECK(v->tok[i][v->len[i]] == '\0', "token %zu is not NUL-terminated", i);
        int32_t id = moe_vocab_lookup(v, (const uint8_t *)v->tok[i], v->len[i]);
        FUZZ_CHECK(id == (int32_t)i, "lookup of token %zu gave %d", i, (int)id);
    }
}

static void check_same(const struct moe_vocab *a, const struct moe_vocab *b)
{
    FUZZ_CHECK(a->kind == b->kind && a->n == b->n, "kind/size changed: %d/%zu vs %d/%zu", (int)a->kind, a->n,
               (int)b->kind, b->n);
    for (size_t i = a->kind == MOE_TOK_WORDS; i < a->n; i++)
        FUZZ_CHECK(a->len[i] == b->len[i] && memcmp(a->tok[i], b->tok[i], a->len[i]) == 0, "token %zu changed", i);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct moe_err err = { 0 };
    struct moe_vocab v;
    int rc = moe_vocab_parse(&v, (const char *)data, size, "fuzz.vocab", &err);
    // The same bytes through a file must give the same answer.
    struct moe_vocab r;
    struct moe_err rerr = { 0 };
    int rrc = moe_vocab_read(&r, fuzz_file(0, data, size), &rerr);
    FUZZ_CHECK(rrc == rc, "read gave %d, parse %d", rrc, rc);
    if (rc) {
        fuzz_check_err(rc, &err);
        fuzz_check_err(rrc, &rerr);
        FUZZ_CHECK(!v.tok && !v.len && v.n == 0 && !r.tok && r.n == 0, "failed parse returned a vocabulary");
        return 0;
    }
    check_vocab(&v);
    check_same(&v, &r);
    moe_vocab_release(&r);

    char *s1, *s2;
    size_t n1, n2;
    rc = moe_vocab_serialize(&v, &s1, &n1, &err);
    FUZZ_CHECK(rc == 0, "serialize failed: %s", err.msg);
    FUZZ_CHECK(n1 > 0 && s1[n1 - 1] == '\n' && s1[n1] == '\0', "serialised text does not end in a newline");
    struct moe_vocab w;
    rc = moe_vocab_parse(&w, s1, n1, "fuzz.vocab (serialised)", &err);
    FUZZ_CHECK(rc == 0, "serialised vocabulary does not parse: %s", err.msg);
    check_same(&v, &w);
    rc = moe_vocab_serialize(&w, &s2, &n2, &err);
    FUZZ_CHECK(rc == 0, "second serialize failed: %s", err.msg);
    FUZZ_CHECK(n1 == n2 && memcmp(s1, s2, n1) == 0, "serialising twice gave different bytes");
    free(s1);
    free(s2);
    moe_vocab_release(&w);

    struct moe_vocab c;
    rc = moe_vocab_copy(&c, &v, &err);
    FUZZ_CHECK(rc == 0, "copy failed: %s", err.msg);
    check_same(&v, &c);
    check_vocab(&c);
    moe_vocab_release(&c);

    // Tokenising the input itself with the vocabulary: ids in range.
    int32_t *ids = malloc((size ? size : 1) * sizeof *ids);
    uint64_t *off = malloc((size ? size : 1) * sizeof *off);
    if (!ids || !off)
        abort();
    size_t n = moe_tokenize(&v, data, size, ids, off);
    FUZZ_CHECK(n <= size, "%zu tokens from %zu bytes", n, size);
    for (size_t i = 0; i < n; i++) {
        FUZZ_CHECK(ids[i] >= 0 && (size_t)ids[i] < v.n, "id %d of %zu", (int)ids[i], v.n);
        FUZZ_CHECK(i == 0 ? off[i] == 0 : off[i] > off[i - 1], "offsets not increasing at %zu", i);
    }
    free(ids);
    free(off);
    moe_vocab_release(&v);
    return 0;
}
