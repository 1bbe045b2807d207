// text.c: vocabularies, tokenisation and text corpora for the byte-level and
// word-level language models (see text.h).
// Not a subword tokeniser and not a batcher; nothing here trains or prints.
// N = tokens of a split, V = vocabulary size, C = context length.
//
// Behaviour worth knowing:
// - Word vocabularies count every token of the word tokeniser, punctuation,
//   spaces and newlines included, so those get ids of their own; only the
//   training parts of the files are counted.
// - Lookups use one open-addressing table over the token bytes (FNV-1a), plus a
//   256-entry table for one-byte tokens (the common case in running text).
// - The corpus reader holds every file in memory while it tokenises; the
//   token arrays are sized by the bytes of each split, then shrunk to fit.
// - Every message is one line: control bytes (from file names) become '?'.
#include "io/text.h"

#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/rng.h"
#include "io/atomic.h"

#define TEXT_MAX_FILE ((size_t)1 << 30) // bytes of one file the corpus reader accepts
#define TEXT_FIRST_ALLOC ((size_t)1 << 16)
#define VOCAB_MAX_N ((size_t)INT32_MAX) // ids are int32_t

static const char k_unk[] = "<unk>";
static const char k_header_bytes[] = "moe-vocab 1 bytes 256";
static const char k_header_words[] = "moe-vocab 1 words ";

// Messages are printed by the CLI as one line; file names may hold anything.
static int one_line(int rc, struct moe_err *err)
{
    if (rc && err)
        for (char *p = err->msg; *p; p++)
            if ((unsigned char)*p < 0x20 || *p == 0x7F)
                *p = '?';
    return rc;
}

static inline uint64_t hash_bytes(const uint8_t *s, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull; // FNV-1a 64
    for (size_t i = 0; i < n; i++) {
        h ^= s[i];
        h *= 0x100000001b3ull;
    }
    return h ^ (h >> 32); // the low bits index the table
}

int moe_word_byte(uint8_t b)
{
    return (b >= '0' && b <= '9') || ((b | 0x20) >= 'a' && (b | 0x20) <= 'z') || b >= 0x80;
}

// End of the word-tokeniser token that starts at s[i] (i < n).
static inline size_t word_end(const uint8_t *s, size_t n, size_t i)
{
    if (!moe_word_byte(s[i]))
        return i + 1;
    while (++i < n && moe_word_byte(s[i]))
        ;
    return i;
}

static inline int utf8_cont(uint8_t b) { return (b & 0xC0) == 0x80; }

const char *moe_tok_kind_name(enum moe_tok_kind k)
{
    switch (k) {
    case MOE_TOK_BYTES: return "bytes";
    case MOE_TOK_WORDS: return "words";
    }
    return NULL;
}

// ---- byte classes ----

int moe_byte_class(uint8_t b)
{
    if ((b | 0x20) >= 'a' && (b | 0x20) <= 'z')
        return MOE_CLASS_LETTER;
    if (b >= '0' && b <= '9')
        return MOE_CLASS_DIGIT;
    if (b == ' ' || (b >= '\t' && b <= '\r'))
        return MOE_CLASS_SPACE;
    if (b > ' ' && b < 0x7F)
        return MOE_CLASS_PUNCT; // every printable ASCII byte left over
    return MOE_CLASS_OTHER;
}

const char *moe_byte_class_name(int c)
{
    static const char *const names[MOE_N_BYTE_CLASS] = { "letter", "digit", "space", "punct", "other" };
    return c >= 0 && c < MOE_N_BYTE_CLASS ? names[c] : NULL;
}

// ---- vocabularies ----

void moe_vocab_release(struct moe_vocab *v)
{
    if (!v)
        return;
    free(v->tok);
    free(v->len);
    free(v->store_);
    free(v->hash_);
    memset(v, 0, sizeof *v);
}

// Arrays for n tokens and store_len bytes of token text; zeroed lookup.
static int vocab_alloc(struct moe_vocab *v, enum moe_tok_kind kind, size_t n, size_t store_len)
{
    memset(v, 0, sizeof *v);
    v->kind = kind;
    v->n = n;
    v->tok = calloc(n, sizeof *v->tok);
    v->len = calloc(n, sizeof *v->len);
    v->store_ = malloc(store_len ? store_len : 1);
    if (!v->tok || !v->len || !v->store_) {
        moe_vocab_release(v);
        return -1;
    }
    return 0;
}

// Build the lookup of a vocabulary whose tok/len are filled. Returns 0, -1 when
// out of memory, or 1 when token *dup repeats token *dup_of (both >= 1).
static int vocab_index(struct moe_vocab *v, size_t *dup, size_t *dup_of)
{
    if (v->kind == MOE_TOK_BYTES) {
        for (int b = 0; b < 256; b++)
            v->byte_id_[b] = b;
        return 0;
    }
    memset(v->byte_id_, 0, sizeof v->byte_id_); // MOE_VOCAB_UNK
    size_t cap = 16;
    while (cap < 2 * v->n)
        cap *= 2; // n <= INT32_MAX, so no overflow
    v->hash_ = calloc(cap, sizeof *v->hash_);
    if (!v->hash_)
        return -1;
    v->n_hash_ = cap;
    for (size_t id = 1; id < v->n; id++) {
        const uint8_t *s = (const uint8_t *)v->tok[id];
        size_t len = v->len[id];
        size_t j = (size_t)hash_bytes(s, len) & (cap - 1);
        for (;; j = (j + 1) & (cap - 1)) {
            int32_t o = v->hash_[j];
            if (!o) {
                v->hash_[j] = (int32_t)id;
                break;
            }
            if (v->len[o] == len && memcmp(v->tok[o], s, len) == 0) {
                *dup = id;
                *dup_of = (size_t)o;
                return 1;
            }
        }
        if (len == 1)
            v->byte_id_[s[0]] = (int32_t)id;
    }
    return 0;
}

int32_t moe_vocab_lookup(const struct moe_vocab *v, const uint8_t *s, size_t len)
{
    if (v->kind == MOE_TOK_BYTES)
        return len == 1 ? s[0] : -1;
    if (len == 1)
        return v->byte_id_[s[0]];
    if (!v->n_hash_ || len == 0)
        return MOE_VOCAB_UNK;
    size_t mask = v->n_hash_ - 1;
    for (size_t j = (size_t)hash_bytes(s, len) & mask;; j = (j + 1) & mask) {
        int32_t o = v->hash_[j];
        if (!o)
            return MOE_VOCAB_UNK;
        if (v->len[o] == len && memcmp(v->tok[o], s, len) == 0)
            return o;
    }
}

int moe_vocab_bytes(struct moe_vocab *ret, struct moe_err *err)
{
    if (vocab_alloc(ret, MOE_TOK_BYTES, 256, 512))
        return moe_error(err, MOE_ENOMEM, "out of memory for the bytes vocabulary");
    for (size_t b = 0; b < 256; b++) {
        ret->store_[2 * b] = (char)b;
        ret->store_[2 * b + 1] = '\0';
        ret->tok[b] = ret->store_ + 2 * b;
        ret->len[b] = 1;
    }
    size_t dup, dup_of;
    vocab_index(ret, &dup, &dup_of);
    return 0;
}

// A word vocabulary of n tokens: <unk>, then word i (i >= 1) from tok_of(ctx, i).
// Copies the bytes; store_len = total bytes of words 1..n-1 (without NULs).
static int vocab_words_from(struct moe_vocab *ret, size_t n, size_t store_len,
                            void (*tok_of)(const void *ctx, size_t i, const uint8_t **s, size_t *len),
                            const void *ctx, size_t *dup, size_t *dup_of)
{
    if (store_len > SIZE_MAX - sizeof k_unk - n)
        return -1;
    if (vocab_alloc(ret, MOE_TOK_WORDS, n, store_len + n + sizeof k_unk))
        return -1;
    char *p = ret->store_;
    memcpy(p, k_unk, sizeof k_unk);
    ret->tok[0] = p;
    ret->len[0] = sizeof k_unk - 1;
    p += sizeof k_unk;
    for (size_t i = 1; i < n; i++) {
        const uint8_t *s;
        size_t len;
        tok_of(ctx, i, &s, &len);
        memcpy(p, s, len);
        p[len] = '\0';
        ret->tok[i] = p;
        ret->len[i] = len;
        p += len + 1;
    }
    int rc = vocab_index(ret, dup, dup_of);
    if (rc)
        moe_vocab_release(ret);
    return rc;
}

static void tok_of_vocab(const void *ctx, size_t i, const uint8_t **s, size_t *len)
{
    const struct moe_vocab *v = ctx;
    *s = (const uint8_t *)v->tok[i];
    *len = v->len[i];
}

int moe_vocab_copy(struct moe_vocab *ret, const struct moe_vocab *v, struct moe_err *err)
{
    memset(ret, 0, sizeof *ret);
    if (v->kind == MOE_TOK_BYTES)
        return moe_vocab_bytes(ret, err);
    if (v->kind != MOE_TOK_WORDS || v->n < 1 || v->n > VOCAB_MAX_N)
        return moe_error(err, MOE_EINVAL, "bad vocabulary: kind %d with %zu tokens", (int)v->kind, v->n);
    size_t total = 0;
    for (size_t i = 1; i < v->n; i++) {
        if (v->len[i] == 0)
            return moe_error(err, MOE_EINVAL, "bad vocabulary: token %zu is empty", i);
        if (v->len[i] > SIZE_MAX - total)
            return moe_error(err, MOE_ENOMEM, "vocabulary too large");
        total += v->len[i];
    }
    size_t dup = 0, dup_of = 0;
    int rc = vocab_words_from(ret, v->n, total, tok_of_vocab, v, &dup, &dup_of);
    if (rc == 1)
        return moe_error(err, MOE_EINVAL, "bad vocabulary: token %zu repeats token %zu", dup, dup_of);
    if (rc)
        return moe_error(err, MOE_ENOMEM, "out of memory copying a vocabulary of %zu tokens", v->n);
    return 0;
}

// ---- building a word vocabulary: counts in an open-addressing table ----

struct wcount {
    const uint8_t *p; // NULL = empty slot
    size_t len;
    uint64_t count;
    uint64_t h;
};

struct wtable {
    struct wcount *e;
    size_t cap, n; // cap a power of two
};

static int wtable_grow(struct wtable *t)
{
    size_t cap = t->cap ? 2 * t->cap : 1024;
    if (cap > SIZE_MAX / sizeof *t->e)
        return -1;
    struct wcount *e = calloc(cap, sizeof *e);
    if (!e)
        return -1;
    for (size_t i = 0; i < t->cap; i++) {
        if (!t->e[i].p)
            continue;
        size_t j = (size_t)t->e[i].h & (cap - 1);
        while (e[j].p)
            j = (j + 1) & (cap - 1);
        e[j] = t->e[i];
    }
    free(t->e);
    t->e = e;
    t->cap = cap;
    return 0;
}

static int wtable_add(struct wtable *t, const uint8_t *s, size_t len)
{
    if (2 * (t->n + 1) > t->cap && wtable_grow(t))
        return -1;
    uint64_t h = hash_bytes(s, len);
    size_t mask = t->cap - 1;
    for (size_t j = (size_t)h & mask;; j = (j + 1) & mask) {
        struct wcount *w = &t->e[j];
        if (!w->p) {
            w->p = s;
            w->len = len;
            w->count = 1;
            w->h = h;
            t->n++;
            return 0;
        }
        if (w->h == h && w->len == len && memcmp(w->p, s, len) == 0) {
            w->count++;
            return 0;
        }
    }
}

// Count descending, then bytes (memcmp order, a prefix first).
static int cmp_wcount(const void *a, const void *b)
{
    const struct wcount *x = a, *y = b;
    if (x->count != y->count)
        return x->count > y->count ? -1 : 1;
    int c = memcmp(x->p, y->p, x->len < y->len ? x->len : y->len);
    if (c)
        return c;
    return x->len < y->len ? -1 : x->len > y->len;
}

static void tok_of_wcount(const void *ctx, size_t i, const uint8_t **s, size_t *len)
{
    const struct wcount *w = (const struct wcount *)ctx + (i - 1);
    *s = w->p;
    *len = w->len;
}

int moe_vocab_build_words(struct moe_vocab *ret, const uint8_t *const *texts, const size_t *lens, size_t n_texts,
                          size_t cap, struct moe_err *err)
{
    memset(ret, 0, sizeof *ret);
    if (cap < 2)
        return moe_error(err, MOE_EINVAL, "vocabulary size %zu: expected at least 2 (<unk> and one word)", cap);
    struct wtable t = { 0 };
    for (size_t f = 0; f < n_texts; f++) {
        const uint8_t *s = texts[f];
        for (size_t i = 0, n = lens[f]; i < n;) {
            size_t e = word_end(s, n, i);
            if (wtable_add(&t, s + i, e - i)) {
                free(t.e);
                return moe_error(err, MOE_ENOMEM, "out of memory counting words");
            }
            i = e;
        }
    }
    // Compact the occupied slots to the front, sort, keep the first cap - 1.
    size_t m = 0;
    for (size_t i = 0; i < t.cap; i++)
        if (t.e[i].p)
            t.e[m++] = t.e[i];
    if (m)
        qsort(t.e, m, sizeof *t.e, cmp_wcount);
    size_t keep = m < cap - 1 ? m : cap - 1;
    if (keep + 1 > VOCAB_MAX_N) {
        free(t.e);
        return moe_error(err, MOE_EINVAL, "vocabulary of %zu words: more than %zu ids", keep, VOCAB_MAX_N - 1);
    }
    size_t total = 0;
    for (size_t i = 0; i < keep; i++)
        total += t.e[i].len; // <= the bytes of the texts
    size_t dup, dup_of;
    int rc = vocab_words_from(ret, keep + 1, total, tok_of_wcount, t.e, &dup, &dup_of);
    free(t.e);
    if (rc) // words are distinct by construction, so only out of memory
        return moe_error(err, MOE_ENOMEM, "out of memory for a vocabulary of %zu words", keep);
    return 0;
}

// ---- the vocabulary file ----

static size_t escaped_len(const char *s, size_t n)
{
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        m += c == '\\' || c == '\n' || c == '\t' || c == '\r' ? 2 : c < 0x20 || c == 0x7F ? 4 : 1;
    }
    return m;
}

static char *escape_to(char *p, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        switch (c) {
        case '\\': *p++ = '\\'; *p++ = '\\'; break;
        case '\n': *p++ = '\\'; *p++ = 'n'; break;
        case '\t': *p++ = '\\'; *p++ = 't'; break;
        case '\r': *p++ = '\\'; *p++ = 'r'; break;
        default:
            if (c < 0x20 || c == 0x7F) {
                *p++ = '\\';
                *p++ = 'x';
                *p++ = hex[c >> 4];
                *p++ = hex[c & 15];
            } else {
                *p++ = (char)c;
            }
        }
    }
    return p;
}

int moe_vocab_serialize(const struct moe_vocab *v, char **ret_buf, size_t *ret_len, struct moe_err *err)
{
    char head[64];
    int hn;
    if (v->kind == MOE_TOK_BYTES) {
        if (v->n != 256)
            return moe_error(err, MOE_EINVAL, "bad bytes vocabulary: %zu tokens, expected 256", v->n);
        hn = snprintf(head, sizeof head, "%s\n", k_header_bytes);
    } else if (v->kind == MOE_TOK_WORDS && v->n >= 1 && v->n <= VOCAB_MAX_N) {
        hn = snprintf(head, sizeof head, "%s%zu\n", k_header_words, v->n);
    } else {
        return moe_error(err, MOE_EINVAL, "bad vocabulary: kind %d with %zu tokens", (int)v->kind, v->n);
    }
    size_t total = (size_t)hn;
    if (v->kind == MOE_TOK_WORDS) {
        total += sizeof k_unk; // "<unk>\n"
        for (size_t i = 1; i < v->n; i++) {
            if (v->len[i] == 0)
                return moe_error(err, MOE_EINVAL, "bad vocabulary: token %zu is empty", i);
            size_t e = escaped_len(v->tok[i], v->len[i]);
            if (e >= SIZE_MAX - total)
                return moe_error(err, MOE_ENOMEM, "vocabulary too large to serialise");
            total += e + 1;
        }
    }
    char *buf = malloc(total + 1);
    if (!buf)
        return moe_error(err, MOE_ENOMEM, "out of memory serialising a vocabulary of %zu tokens", v->n);
    char *p = buf;
    memcpy(p, head, (size_t)hn);
    p += hn;
    if (v->kind == MOE_TOK_WORDS) {
        memcpy(p, k_unk, sizeof k_unk - 1);
        p += sizeof k_unk - 1;
        *p++ = '\n';
        for (size_t i = 1; i < v->n; i++) {
            p = escape_to(p, v->tok[i], v->len[i]);
            *p++ = '\n';
        }
    }
    assert((size_t)(p - buf) == total);
    *p = '\0';
    *ret_buf = buf;
    *ret_len = total;
    return 0;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

struct parsed_line {
    const char *s; // escaped text (no "\n")
    size_t n;
};

static void tok_of_decoded(const void *ctx, size_t i, const uint8_t **s, size_t *len)
{
    const struct parsed_line *d = (const struct parsed_line *)ctx + i;
    *s = (const uint8_t *)d->s;
    *len = d->n;
}

static int vocab_parse(struct moe_vocab *ret, const char *buf, size_t len, const char *what, struct moe_err *err)
{
    const char *end = buf + len;
    const char *nul = memchr(buf, '\0', len);
    if (nul) {
        size_t line = 1;
        for (const char *p = buf; p < nul; p++)
            line += *p == '\n';
        return moe_error(err, MOE_EFORMAT, "vocabulary '%s' line %zu: NUL byte at offset %zu (not a text file)",
                         what, line, (size_t)(nul - buf));
    }
    static const char expect[] = "expected 'moe-vocab 1 bytes 256' or 'moe-vocab 1 words N'";
    const char *eol = memchr(buf, '\n', len);
    if (!eol)
        return moe_error(err, MOE_EFORMAT, "vocabulary '%s' line 1: bad header (no line end); %s", what, expect);
    size_t hlen = (size_t)(eol - buf);
    const char *rest = eol + 1;
    if (hlen == sizeof k_header_bytes - 1 && memcmp(buf, k_header_bytes, hlen) == 0) {
        if (rest != end)
            return moe_error(err, MOE_EFORMAT, "vocabulary '%s' line 2: trailing data after a bytes header", what);
        return moe_vocab_bytes(ret, err);
    }
    size_t pl = sizeof k_header_words - 1;
    if (hlen <= pl || memcmp(buf, k_header_words, pl) != 0)
        return moe_error(err, MOE_EFORMAT, "vocabulary '%s' line 1: bad header; %s", what, expect);
    size_t n = 0;
    for (const char *p = buf + pl; p < eol; p++) {
        if (*p < '0' || *p > '9' || (p == buf + pl && *p == '0'))
            return moe_error(err, MOE_EFORMAT, "vocabulary '%s' line 1: bad header (N must be a positive integer); %s",
                             what, expect);
        n = n * 10 + (size_t)(*p - '0');
        if (n > VOCAB_MAX_N)
            return moe_error(err, MOE_EFORMAT, "vocabulary '%s' line 1: bad header (more than %zu tokens)", what,
                             VOCAB_MAX_N);
    }
    // Count the token lines before allocating anything for them.
    size_t lines = 0;
    const char *p = rest;
    while (p < end) {
        const char *e = memchr(p, '\n', (size_t)(end - p));
        if (!e) {
            if (lines < n)
                return moe_error(err, MOE_EFORMAT, "vocabulary '%s' line %zu: no line end at the end of the file",
                                 what, lines + 2);
            break;
        }
        if (lines == n)
            break;
        lines++;
        p = e + 1;
    }
    if (lines < n)
        return moe_error(err, MOE_EFORMAT, "vocabulary '%s' line %zu: wrong count: the header says %zu tokens, "
                         "the file has %zu token lines", what, lines + 2, n, lines);
    if (p != end)
        return moe_error(err, MOE_EFORMAT, "vocabulary '%s' line %zu: trailing data after the %zu tokens the header "
                         "announces", what, n + 2, n);
    // Decode in place into a scratch copy (escapes only shrink), one line at a time.
    char *scratch = malloc((size_t)(end - rest) + 1);
    struct parsed_line *dec = calloc(n, sizeof *dec);
    int rc = 0;
    if (!scratch || !dec) {
        rc = moe_error(err, MOE_ENOMEM, "vocabulary '%s': out of memory for %zu tokens", what, n);
        goto out;
    }
    char *q = scratch;
    size_t total = 0;
    p = rest;
    for (size_t i = 0; i < n; i++) {
        const char *e = memchr(p, '\n', (size_t)(end - p));
        size_t line = i + 2;
        dec[i].s = q;
        if (i == 0) { // the unknown word: always written, and required, as <unk>
            if ((size_t)(e - p) != sizeof k_unk - 1 || memcmp(p, k_unk, sizeof k_unk - 1) != 0) {
                rc = moe_error(err, MOE_EFORMAT, "vocabulary '%s' line 2: id 0 must be the unknown word <unk>, "
                               "got '%.*s'", what, (int)((size_t)(e - p) < 40 ? (size_t)(e - p) : 40), p);
                goto out;
            }
            p = e + 1;
            continue;
        }
        for (const char *c = p; c < e; c++) {
            unsigned char b = (unsigned char)*c;
            if (b < 0x20 || b == 0x7F) {
                rc = moe_error(err, MOE_EFORMAT, "vocabulary '%s' line %zu: raw control byte 0x%02x (bytes below "
                               "0x20 and 0x7f are written escaped, e.g. \\x%02x)", what, line, b, b);
                goto out;
            }
            if (b != '\\') {
                *q++ = (char)b;
                continue;
            }
            char x = c + 1 < e ? c[1] : '\0';
            int h1, h2;
            if (x == '\\' || x == 'n' || x == 't' || x == 'r') {
                *q++ = x == '\\' ? '\\' : x == 'n' ? '\n' : x == 't' ? '\t' : '\r';
                c++;
            } else if (x == 'x' && c + 3 < e && (h1 = hexval(c[2])) >= 0 && (h2 = hexval(c[3])) >= 0) {
                *q++ = (char)(h1 << 4 | h2);
                c += 3;
            } else {
                rc = moe_error(err, MOE_EFORMAT, "vocabulary '%s' line %zu: bad escape at column %zu (expected "
                               "\\\\, \\n, \\t, \\r or \\x and two lowercase hex digits)", what, line,
                               (size_t)(c - p) + 1);
                goto out;
            }
        }
        dec[i].n = (size_t)(q - dec[i].s);
        if (dec[i].n == 0) {
            rc = moe_error(err, MOE_EFORMAT, "vocabulary '%s' line %zu: empty token", what, line);
            goto out;
        }
        total += dec[i].n;
        p = e + 1;
    }
    size_t dup = 0, dup_of = 0;
    int r = vocab_words_from(ret, n, total, tok_of_decoded, dec, &dup, &dup_of);
    if (r == 1) {
        // Quote the line as written (no control bytes: checked above).
        const char *s = rest;
        for (size_t i = 0; i < dup; i++)
            s = (const char *)memchr(s, '\n', (size_t)(end - s)) + 1;
        size_t sl = (size_t)((const char *)memchr(s, '\n', (size_t)(end - s)) - s);
        rc = moe_error(err, MOE_EFORMAT, "vocabulary '%s' line %zu: duplicate token '%.*s' (also on line %zu)", what,
                       dup + 2, (int)(sl < 60 ? sl : 60), s, dup_of + 2);
    } else if (r) {
        rc = moe_error(err, MOE_ENOMEM, "vocabulary '%s': out of memory for %zu tokens", what, n);
    }
out:
    free(scratch);
    free(dec);
    return rc;
}

int moe_vocab_parse(struct moe_vocab *ret, const char *buf, size_t len, const char *what, struct moe_err *err)
{
    memset(ret, 0, sizeof *ret);
    return one_line(vocab_parse(ret, buf, len, what ? what : "(buffer)", err), err);
}

int moe_vocab_read(struct moe_vocab *ret, const char *path, struct moe_err *err)
{
    memset(ret, 0, sizeof *ret);
    char *buf;
    size_t len;
    int rc = moe_read_file(path, &buf, &len, err);
    if (rc)
        return one_line(rc, err);
    rc = moe_vocab_parse(ret, buf, len, path, err);
    free(buf);
    return rc;
}

int moe_vocab_write(const struct moe_vocab *v, const char *path, struct moe_err *err)
{
    char *buf;
    size_t len;
    int rc = moe_vocab_serialize(v, &buf, &len, err);
    if (rc) {
        moe_error_prefix(err, "vocabulary '%s': ", path);
        return one_line(rc, err);
    }
    rc = moe_atomic_write(path, buf, len, err);
    free(buf);
    return one_line(rc, err);
}

// ---- tokenisation ----

size_t moe_tokenize(const struct moe_vocab *v, const uint8_t *text, size_t len, int32_t *ids, uint64_t *off)
{
    if (v->kind == MOE_TOK_BYTES) {
        for (size_t i = 0; i < len; i++) {
            ids[i] = text[i];
            if (off)
                off[i] = i;
        }
        return len;
    }
    size_t n = 0;
    for (size_t i = 0; i < len;) {
        size_t e = word_end(text, len, i);
        ids[n] = e - i == 1 ? v->byte_id_[text[i]] : moe_vocab_lookup(v, text + i, e - i);
        if (off)
            off[n] = i;
        n++;
        i = e;
    }
    return n;
}

// ---- splits ----

void moe_text_release(struct moe_text *t)
{
    if (!t)
        return;
    free(t->tok);
    free(t->cls);
    free(t->off);
    free(t->seg);
    memset(t, 0, sizeof *t);
}

void moe_text_count(const struct moe_text *t, size_t V, uint64_t *freq)
{
    memset(freq, 0, V * sizeof *freq);
    for (size_t i = 0; i < t->n_tok; i++)
        if (t->tok[i] >= 0 && (size_t)t->tok[i] < V)
            freq[t->tok[i]]++;
}

uint64_t moe_text_n_starts(const struct moe_text *t, size_t C)
{
    uint64_t n = 0;
    for (size_t s = 0; s < t->n_seg; s++) {
        size_t len = t->seg[s].end - t->seg[s].begin;
        if (len > C)
            n += len - C;
    }
    return n;
}

size_t moe_text_random_start(const struct moe_text *t, size_t C, uint64_t seed, uint64_t epoch, uint64_t i,
                             size_t *ret_seg)
{
    uint64_t n = moe_text_n_starts(t, C);
    assert(n > 0);
    struct moe_rng r = moe_rng_make(seed, MOE_RNG_WINDOW, (uint32_t)epoch);
    uint32_t w[4];
    moe_rng_block(&r, i, w);
    uint64_t x = (uint64_t)w[0] | (uint64_t)w[1] << 32;
    // Multiply-shift: bias below n / 2^64 per value.
    __extension__ typedef unsigned __int128 u128;
    uint64_t k = (uint64_t)(((u128)x * n) >> 64);
    for (size_t s = 0; s < t->n_seg; s++) {
        size_t len = t->seg[s].end - t->seg[s].begin;
        uint64_t m = len > C ? len - C : 0;
        if (k < m) {
            if (ret_seg)
                *ret_seg = s;
            return t->seg[s].begin + (size_t)k;
        }
        k -= m;
    }
    assert(0 && "moe_text_random_start: no valid start");
    return 0;
}

static size_t seg_windows(const struct moe_text_seg *s, size_t C)
{
    size_t len = s->end - s->begin;
    return len >= C + 1 ? (len - 1) / C : 0;
}

int moe_text_fixed_windows(const struct moe_text *t, size_t C, size_t max, size_t **ret_start, size_t *ret_n,
                           struct moe_err *err)
{
    *ret_start = NULL;
    *ret_n = 0;
    if (C == 0 || C == SIZE_MAX)
        return moe_error(err, MOE_EINVAL, "evaluation windows: context length %zu, expected at least 1", C);
    size_t total = 0;
    for (size_t s = 0; s < t->n_seg; s++)
        total += seg_windows(&t->seg[s], C); // <= n_tok
    size_t keep = max && total > max ? max : total;
    if (keep == 0)
        return 0;
    size_t *start = malloc(keep * sizeof *start); // keep <= n_tok: no overflow
    if (!start)
        return moe_error(err, MOE_ENOMEM, "out of memory for %zu evaluation windows", keep);
    __extension__ typedef unsigned __int128 u128;
    size_t s = 0, base = 0; // windows before segment s
    for (size_t k = 0; k < keep; k++) {
        size_t g = keep == total ? k : (size_t)((u128)k * total / max);
        while (g >= base + seg_windows(&t->seg[s], C)) {
            base += seg_windows(&t->seg[s], C);
            s++;
        }
        start[k] = t->seg[s].begin + (g - base) * C;
    }
    *ret_start = start;
    *ret_n = keep;
    return 0;
}

size_t moe_text_seg_of(const struct moe_text *t, size_t i)
{
    size_t lo = 0, hi = t->n_seg;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (t->seg[mid].end <= i)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

// ---- the corpus ----

struct tfile {
    char *path;  // owned
    char *lang;  // owned
    uint8_t *buf;
    size_t len;
    size_t cut;  // bytes [0, cut) train, [cut, len) validation
};

static void tfiles_free(struct tfile *f, size_t n)
{
    for (size_t i = 0; f && i < n; i++) {
        free(f[i].path);
        free(f[i].lang);
        free(f[i].buf);
    }
    free(f);
}

static int cmp_tfile(const void *a, const void *b)
{
    const struct tfile *x = a, *y = b;
    int c = strcmp(x->lang, y->lang);
    return c ? c : strcmp(x->path, y->path);
}

// The language: a file name less its last extension (a leading dot is not one).
static char *lang_of(const char *path)
{
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    const char *dot = strrchr(base, '.');
    size_t n = dot && dot != base ? (size_t)(dot - base) : strlen(base);
    return strndup(base, n);
}

// Read up to the file limit (or max_bytes) into *ret_buf.
static int read_text(const char *path, size_t max_bytes, uint8_t **ret_buf, size_t *ret_len, struct moe_err *err)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return moe_error(err, MOE_EIO, "cannot open text '%s': %s", path, strerror(errno));
    size_t want = max_bytes && max_bytes <= TEXT_MAX_FILE ? max_bytes : TEXT_MAX_FILE + 1;
    struct stat st;
    size_t cap = TEXT_FIRST_ALLOC;
    if (fstat(fileno(f), &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0) {
        if ((uint64_t)st.st_size > TEXT_MAX_FILE && want > TEXT_MAX_FILE) {
            fclose(f);
            return moe_error(err, MOE_EFORMAT, "text '%s': %llu bytes, larger than the limit of 1 GiB (set a "
                             "maximum number of bytes to read)", path, (unsigned long long)st.st_size);
        }
        cap = (uint64_t)st.st_size < want ? (size_t)st.st_size : want;
    }
    if (cap > want)
        cap = want;
    uint8_t *buf = malloc(cap);
    size_t len = 0;
    int rc = 0;
    if (!buf) {
        fclose(f);
        return moe_error(err, MOE_ENOMEM, "text '%s': out of memory for %zu bytes", path, cap);
    }
    errno = 0;
    for (;;) {
        if (len == cap) {
            if (len >= want)
                break;
            int c = fgetc(f); // at the expected size: look for more before growing
            if (c == EOF)
                break;
            size_t ncap = cap > want / 2 ? want : 2 * cap;
            uint8_t *nb = realloc(buf, ncap);
            if (!nb) {
                rc = moe_error(err, MOE_ENOMEM, "text '%s': out of memory for %zu bytes", path, ncap);
                break;
            }
            buf = nb;
            cap = ncap;
            buf[len++] = (uint8_t)c;
            continue;
        }
        size_t got = fread(buf + len, 1, cap - len, f);
        len += got;
        if (got == 0)
            break;
    }
    int saved = errno;
    if (!rc && ferror(f))
        rc = moe_error(err, MOE_EIO, "cannot read text '%s': %s", path, strerror(saved ? saved : EIO));
    fclose(f);
    if (!rc && len > TEXT_MAX_FILE)
        rc = moe_error(err, MOE_EFORMAT, "text '%s': larger than the limit of 1 GiB (set a maximum number of bytes "
                       "to read)", path);
    if (!rc && len == 0)
        rc = moe_error(err, MOE_EFORMAT, "text '%s' is empty", path);
    const uint8_t *nul = rc ? NULL : memchr(buf, 0, len);
    if (nul)
        rc = moe_error(err, MOE_EFORMAT, "text '%s': NUL byte at offset %zu (a binary file?)", path,
                       (size_t)(nul - buf));
    if (rc) {
        free(buf);
        return rc;
    }
    *ret_buf = buf;
    *ret_len = len;
    return 0;
}

// The files of a corpus path: the file itself, or the regular files of a directory.
static int list_files(const char *path, struct tfile **ret, size_t *ret_n, struct moe_err *err)
{
    struct stat st;
    if (stat(path, &st) != 0)
        return moe_error(err, MOE_EIO, "cannot open text corpus '%s': %s", path, strerror(errno));
    struct tfile *f = NULL;
    size_t n = 0, cap = 0;
    int rc = 0;
    if (S_ISREG(st.st_mode)) {
        f = calloc(1, sizeof *f);
        if (!f || !(f->path = strdup(path)) || !(f->lang = lang_of(path))) {
            tfiles_free(f, 1);
            return moe_error(err, MOE_ENOMEM, "out of memory");
        }
        *ret = f;
        *ret_n = 1;
        return 0;
    }
    if (!S_ISDIR(st.st_mode))
        return moe_error(err, MOE_EIO, "text corpus '%s' is not a file or directory", path);
    DIR *d = opendir(path);
    if (!d)
        return moe_error(err, MOE_EIO, "cannot open directory '%s': %s", path, strerror(errno));
    for (;;) {
        errno = 0;
        struct dirent *de = readdir(d);
        if (!de) {
            if (errno)
                rc = moe_error(err, MOE_EIO, "cannot read directory '%s': %s", path, strerror(errno));
            break;
        }
        if (de->d_name[0] == '.')
            continue;
        size_t pl = strlen(path), nl = strlen(de->d_name);
        char *full = malloc(pl + nl + 2);
        if (!full) {
            rc = moe_error(err, MOE_ENOMEM, "out of memory");
            break;
        }
        memcpy(full, path, pl);
        size_t k = pl;
        if (!pl || path[pl - 1] != '/')
            full[k++] = '/';
        memcpy(full + k, de->d_name, nl + 1);
        struct stat fs;
        if (stat(full, &fs) != 0 || !S_ISREG(fs.st_mode)) { // subdirectories, broken links, devices
            free(full);
            continue;
        }
        if (n == cap) {
            size_t ncap = cap ? 2 * cap : 16;
            struct tfile *nf = ncap <= SIZE_MAX / sizeof *nf ? realloc(f, ncap * sizeof *nf) : NULL;
            if (!nf) {
                free(full);
                rc = moe_error(err, MOE_ENOMEM, "out of memory");
                break;
            }
            f = nf;
            cap = ncap;
        }
        memset(&f[n], 0, sizeof f[n]);
        f[n].path = full;
        f[n].lang = lang_of(de->d_name);
        n++;
        if (!f[n - 1].lang) {
            rc = moe_error(err, MOE_ENOMEM, "out of memory");
            break;
        }
    }
    closedir(d);
    if (!rc && n == 0)
        rc = moe_error(err, MOE_EIO, "text corpus '%s': the directory holds no text file (regular files whose name "
                       "does not start with '.')", path);
    if (!rc && n > (size_t)INT32_MAX)
        rc = moe_error(err, MOE_EFORMAT, "text corpus '%s': %zu files, too many languages", path, n);
    if (!rc) {
        qsort(f, n, sizeof *f, cmp_tfile);
        for (size_t i = 1; i < n; i++)
            if (strcmp(f[i - 1].lang, f[i].lang) == 0) {
                rc = moe_error(err, MOE_EFORMAT, "text corpus '%s': files '%s' and '%s' are both language '%s'",
                               path, f[i - 1].path, f[i].path, f[i].lang);
                break;
            }
    }
    if (rc) {
        tfiles_free(f, n);
        return rc;
    }
    *ret = f;
    *ret_n = n;
    return 0;
}

// Where training ends in a file of n bytes: the last fraction vf is validation,
// the cut moved back to the start of a UTF-8 character (at most 3 bytes; not in
// invalid UTF-8), or forward when that would leave no training byte.
static size_t valid_cut(const uint8_t *s, size_t n, double vf)
{
    double nv = floor(vf * (double)n);
    size_t cut = nv >= (double)n ? 1 : n - (size_t)nv;
    if (cut >= n || !utf8_cont(s[cut]))
        return cut;
    size_t c = cut;
    for (int k = 0; k < 3 && c > 0 && utf8_cont(s[c]); k++)
        c--;
    if (utf8_cont(s[c]))
        return cut;
    if (c > 0)
        return c;
    c = cut;
    for (int k = 0; k < 3 && c < n && utf8_cont(s[c]); k++)
        c++;
    return c < n && utf8_cont(s[c]) ? cut : c;
}

// Tokenise part `part` (0 train, 1 validation) of every file into t.
static int tokenize_split(struct moe_text *t, const struct moe_vocab *v, const struct tfile *f, size_t n_files,
                          int part, const char *path, struct moe_err *err)
{
    memset(t, 0, sizeof *t);
    size_t bytes = 0;
    for (size_t i = 0; i < n_files; i++) {
        size_t b = part ? f[i].len - f[i].cut : f[i].cut;
        if (b > SIZE_MAX / 16 - 1 - bytes)
            return moe_error(err, MOE_ENOMEM, "text corpus '%s': too many bytes", path);
        bytes += b;
    }
    t->seg = calloc(n_files, sizeof *t->seg);
    t->off = malloc((bytes + 1) * sizeof *t->off);
    if (bytes) {
        t->tok = malloc(bytes * sizeof *t->tok);
        t->cls = malloc(bytes);
    }
    if (!t->seg || !t->off || (bytes && (!t->tok || !t->cls))) {
        moe_text_release(t);
        return moe_error(err, MOE_ENOMEM, "text corpus '%s': out of memory for %zu tokens", path, bytes);
    }
    t->n_seg = n_files;
    size_t n = 0;
    uint64_t base = 0;
    for (size_t i = 0; i < n_files; i++) {
        const uint8_t *s = f[i].buf + (part ? f[i].cut : 0);
        size_t len = part ? f[i].len - f[i].cut : f[i].cut;
        size_t m = len ? moe_tokenize(v, s, len, t->tok + n, t->off + n) : 0; // t->tok may be NULL
        for (size_t j = n; j < n + m; j++) {
            t->cls[j] = (uint8_t)moe_byte_class(s[t->off[j]]);
            t->off[j] += base;
        }
        t->seg[i].begin = n;
        t->seg[i].end = n + m;
        t->seg[i].lang = (int32_t)i;
        n += m;
        base += len;
    }
    t->off[n] = base;
    t->n_tok = n;
    if (n < bytes) { // shrinking cannot fail in practice; keep the larger block if it does
        int32_t *tok = realloc(t->tok, n ? n * sizeof *t->tok : 1);
        if (tok)
            t->tok = tok;
        uint8_t *cls = realloc(t->cls, n ? n : 1);
        if (cls)
            t->cls = cls;
        uint64_t *off = realloc(t->off, (n + 1) * sizeof *t->off);
        if (off)
            t->off = off;
    }
    return 0;
}

void moe_corpus_release(struct moe_corpus *c)
{
    if (!c)
        return;
    moe_vocab_release(&c->vocab);
    moe_text_release(&c->train);
    moe_text_release(&c->valid);
    for (size_t i = 0; c->lang && i < c->n_lang; i++)
        free(c->lang[i]);
    free(c->lang);
    memset(c, 0, sizeof *c);
}

static int corpus_load(const struct moe_corpus_spec *spec, struct moe_corpus *ret, struct moe_err *err)
{
    if (!spec->path)
        return moe_error(err, MOE_EINVAL, "text corpus: no path given");
    const char *path = spec->path;
    const char *kind = moe_tok_kind_name(spec->tokens);
    if (!kind)
        return moe_error(err, MOE_EINVAL, "text corpus '%s': unknown token kind %d", path, (int)spec->tokens);
    if (!(spec->valid_fraction >= 0 && spec->valid_fraction < 1))
        return moe_error(err, MOE_EINVAL, "text corpus '%s': valid_fraction %g, expected a number in [0, 1)", path,
                         spec->valid_fraction);
    if (spec->vocab && spec->vocab->kind != spec->tokens)
        return moe_error(err, MOE_EINVAL, "text corpus '%s': the vocabulary is of kind '%s', the corpus asks for '%s'",
                         path, moe_tok_kind_name(spec->vocab->kind) ? moe_tok_kind_name(spec->vocab->kind) : "?",
                         kind);
    if (spec->tokens == MOE_TOK_WORDS && !spec->vocab && spec->vocab_size < 2)
        return moe_error(err, MOE_EINVAL, "text corpus '%s': vocabulary size %zu, expected at least 2 (<unk> and one "
                         "word)", path, spec->vocab_size);
    struct tfile *f = NULL;
    size_t n = 0;
    int rc = list_files(path, &f, &n, err);
    if (rc)
        return rc;
    const uint8_t **texts = NULL;
    size_t *lens = NULL;
    for (size_t i = 0; i < n; i++) {
        rc = read_text(f[i].path, spec->max_bytes, &f[i].buf, &f[i].len, err);
        if (rc)
            goto out;
        f[i].cut = valid_cut(f[i].buf, f[i].len, spec->valid_fraction);
    }
    if (spec->vocab) {
        rc = moe_vocab_copy(&ret->vocab, spec->vocab, err);
    } else if (spec->tokens == MOE_TOK_BYTES) {
        rc = moe_vocab_bytes(&ret->vocab, err);
    } else {
        texts = malloc(n * sizeof *texts);
        lens = malloc(n * sizeof *lens);
        if (!texts || !lens) {
            rc = moe_error(err, MOE_ENOMEM, "out of memory");
            goto out;
        }
        for (size_t i = 0; i < n; i++) {
            texts[i] = f[i].buf;
            lens[i] = f[i].cut;
        }
        rc = moe_vocab_build_words(&ret->vocab, texts, lens, n, spec->vocab_size, err);
    }
    if (rc) {
        moe_error_prefix(err, "text corpus '%s': ", path);
        goto out;
    }
    rc = tokenize_split(&ret->train, &ret->vocab, f, n, 0, path, err);
    if (!rc)
        rc = tokenize_split(&ret->valid, &ret->vocab, f, n, 1, path, err);
    if (rc)
        goto out;
    ret->lang = calloc(n, sizeof *ret->lang);
    if (!ret->lang) {
        rc = moe_error(err, MOE_ENOMEM, "out of memory");
        goto out;
    }
    ret->n_lang = n;
    for (size_t i = 0; i < n; i++) { // hand the names over
        ret->lang[i] = f[i].lang;
        f[i].lang = NULL;
    }
out:
    free(texts);
    free(lens);
    tfiles_free(f, n);
    return rc;
}

int moe_corpus_load(const struct moe_corpus_spec *spec, struct moe_corpus *ret, struct moe_err *err)
{
    memset(ret, 0, sizeof *ret);
    int rc = corpus_load(spec, ret, err);
    if (rc)
        moe_corpus_release(ret);
    return one_line(rc, err);
}
