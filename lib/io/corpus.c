// corpus.c: text corpora for the byte-level and word-level language models
// (see corpus.h): reading the files, the training / validation cut, token
// streams with byte classes, and the training and evaluation windows.
// Not a vocabulary (io/vocab.c builds, reads and applies those) and not a
// batcher; nothing here trains or prints.
// N = tokens of a split, V = vocabulary size, C = context length.
//
// Behaviour worth knowing:
// - Only the training parts of the files are counted for a word vocabulary.
// - The corpus reader holds every file in memory while it tokenises; the
//   token arrays are sized by the bytes of each split, then shrunk to fit.
// - Every message is one line: control bytes (from file names) become '?'.
#include "io/corpus.h"

#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/rng.h"

#define TEXT_MAX_FILE ((size_t)1 << 30) // bytes of one file the corpus reader accepts
#define TEXT_FIRST_ALLOC ((size_t)1 << 16)

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

static inline int utf8_cont(uint8_t b) { return (b & 0xC0) == 0x80; }

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
    return moe_err_one_line(rc, err);
}
