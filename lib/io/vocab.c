// vocab.c: vocabularies and tokenisation for the byte-level and word-level
// language models (see vocab.h).
// Not a subword tokeniser and not a corpus reader (io/corpus.c); nothing here
// trains or prints.
// V = vocabulary size.
//
// Behaviour worth knowing:
// - Word vocabularies count every token of the word tokeniser, punctuation,
//   spaces and newlines included, so those get ids of their own; the caller
//   chooses the texts counted (the corpus reader: the training parts only).
// - Lookups use one open-addressing table over the token bytes (FNV-1a), plus a
//   256-entry table for one-byte tokens (the common case in running text).
// - Every message is one line: control bytes (from file names) become '?'.
#include "io/vocab.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/atomic.h"

#define VOCAB_MAX_N ((size_t)INT32_MAX) // ids are int32_t

static const char k_unk[] = "<unk>";
static const char k_header_bytes[] = "moe-vocab 1 bytes 256";
static const char k_header_words[] = "moe-vocab 1 words ";

int moe_err_one_line(int rc, struct moe_err *err)
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

const char *moe_tok_kind_name(enum moe_tok_kind k)
{
    switch (k) {
    case MOE_TOK_BYTES: return "bytes";
    case MOE_TOK_WORDS: return "words";
    }
    return NULL;
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
    return moe_err_one_line(vocab_parse(ret, buf, len, what ? what : "(buffer)", err), err);
}

int moe_vocab_read(struct moe_vocab *ret, const char *path, struct moe_err *err)
{
    memset(ret, 0, sizeof *ret);
    char *buf;
    size_t len;
    int rc = moe_read_file(path, &buf, &len, err);
    if (rc)
        return moe_err_one_line(rc, err);
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
        return moe_err_one_line(rc, err);
    }
    rc = moe_atomic_write(path, buf, len, err);
    free(buf);
    return moe_err_one_line(rc, err);
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
