// safetensors.c: checkpoint reader and writer in the safetensors format (see
// safetensors.h): an 8-byte little-endian header length N, N bytes of JSON
// header, then the data section holding raw little-endian tensor bytes.
// What it is: a strict implementation for the six dtypes the toolkit uses
// (F32, I32, I64, F64, U8 for raw bytes such as a vocabulary, and I8 for
// int8-quantized weights, compress/quant.h). The reader validates every byte of the header (UTF-8,
// JSON, keys, dtypes, shapes, offsets, overlaps, holes, duplicates) before any
// tensor data is handed out; the writer is deterministic (same inputs, same
// bytes) and atomic (temporary name, fsync, rename).
// What it is not: a memory-mapped or streaming loader (the whole file is read
// into memory), a converter (BF16, F16, BOOL and the other safetensors
// dtypes are rejected with a message naming them), or a general tensor library.
// Nothing here prints or exits.
// Not thread-safe while parsing: cJSON records its last parse error in a global.
// reference: safetensors format specification, README.md of
// https://github.com/huggingface/safetensors ("Format" section)
#include "io/safetensors.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <zlib.h>

#include "io/atomic.h"

// Tensor bytes are written and read as they lie in memory, which matches the
// format only on a little-endian host.
#if defined(__BYTE_ORDER__) && defined(__ORDER_LITTLE_ENDIAN__)
_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "safetensors.c assumes a little-endian host");
#endif

// Same limit as the reference implementation: a larger header is corrupt or hostile.
#define ST_HEADER_MAX 100000000u
// Dimensions must be below 2^48 and offsets at most 2^53, so both are exact in
// the double that cJSON stores for a JSON number.
#define ST_DIM_LIMIT 281474976710656.0
#define ST_OFFSET_LIMIT 9007199254740992.0

static const struct {
    const char *name;
    size_t size;
} dtypes[] = {
    [MOE_F32] = {"F32", 4},
    [MOE_I32] = {"I32", 4},
    [MOE_I64] = {"I64", 8},
    [MOE_F64] = {"F64", 8},
    [MOE_U8] = {"U8", 1},
    [MOE_I8] = {"I8", 1},
};
#define N_DTYPES (sizeof dtypes / sizeof dtypes[0])

static int dtype_valid(enum moe_dtype d) { return (unsigned)d < N_DTYPES; }

// ---------------------------------------------------------------- helpers

int moe_safetensors_fail(struct moe_err *err, int code, const char *path, const char *fmt, ...)
{
    char msg[MOE_ERR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return moe_error(err, code, "checkpoint '%s': %s", path, msg);
}

// A name from a possibly hostile file, made fit for a one-line message.
static const char *safe_str(const char *s, char *buf, size_t len) { return moe_msg_str(s, buf, len); }
#define SAFE_LEN 72

// Length of the valid UTF-8 sequence at s (n bytes available, s[0] >= 0x80),
// or 0 when it is malformed, overlong, a surrogate or above U+10FFFF.
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    size_t k;
    uint32_t cp, min;
    if (c >= 0xc2 && c <= 0xdf) {
        k = 2, cp = c & 0x1fu, min = 0x80;
    } else if (c >= 0xe0 && c <= 0xef) {
        k = 3, cp = c & 0x0fu, min = 0x800;
    } else if (c >= 0xf0 && c <= 0xf4) {
        k = 4, cp = c & 0x07u, min = 0x10000;
    } else {
        return 0;
    }
    if (n < k)
        return 0;
    for (size_t j = 1; j < k; j++) {
        if ((s[j] & 0xc0) != 0x80)
            return 0;
        cp = cp << 6 | (s[j] & 0x3fu);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return k;
}

static int utf8_valid(const char *str)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t n = strlen(str);
    for (size_t i = 0; i < n;) {
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        size_t k = utf8_seq(s + i, n - i);
        if (!k)
            return 0;
        i += k;
    }
    return 1;
}

// Byte size of a tensor, or -1 on overflow or a dimension >= 2^48.
static int tensor_bytes(int ndim, const size_t *shape, size_t elem, size_t *ret_numel, size_t *ret_bytes)
{
    size_t numel = 1;
    for (int d = 0; d < ndim; d++) {
        if ((double)shape[d] >= ST_DIM_LIMIT)
            return -1;
        if (shape[d] && numel > SIZE_MAX / shape[d])
            return -1;
        numel *= shape[d];
    }
    if (numel > SIZE_MAX / elem)
        return -1;
    *ret_numel = numel;
    *ret_bytes = numel * elem;
    return 0;
}

static int cmp_str_ptr(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

// Sort names (an array of n pointers) and return the index of a name that
// occurs twice, or -1.
static long first_duplicate(const char **names, size_t n)
{
    if (n < 2)
        return -1;
    qsort(names, n, sizeof *names, cmp_str_ptr);
    for (size_t i = 1; i < n; i++)
        if (strcmp(names[i - 1], names[i]) == 0)
            return (long)i;
    return -1;
}

// ---------------------------------------------------------------- writing

static cJSON *raw_uint(uint64_t v)
{
    // Raw text, not cJSON numbers: cJSON prints doubles with %g, which would
    // turn large offsets into exponent notation.
    char s[24];
    snprintf(s, sizeof s, "%" PRIu64, v);
    return cJSON_CreateRaw(s);
}

static int add_uint(cJSON *arr, uint64_t v)
{
    cJSON *r = raw_uint(v);
    if (!r)
        return -1;
    if (!cJSON_AddItemToArray(arr, r)) {
        cJSON_Delete(r);
        return -1;
    }
    return 0;
}

// CRC-32 of n bytes (zlib's crc32: ISO-HDLC / IEEE 802.3, reflected
// polynomial 0xEDB88320, initial value and final xor 0xFFFFFFFF), the checksum
// Python's zlib.crc32 and binascii.crc32 compute. Fed in pieces of at most
// 1 GiB, so that any size_t length is covered.
uint32_t moe_crc32(uint32_t crc, const void *data, size_t n)
{
    const unsigned char *p = data;
    uLong c = crc;
    while (n) {
        uInt k = n > (1u << 30) ? (1u << 30) : (uInt)n;
        c = crc32(c, p, k);
        p += k;
        n -= k;
    }
    return (uint32_t)c;
}

uint32_t moe_crc32_combine(uint32_t crc_a, uint32_t crc_b, size_t len_b)
{
    return (uint32_t)crc32_combine(crc_a, crc_b, (z_off_t)len_b);
}

enum { FILL_CHUNK = 1 << 20 }; // bytes a fill produces at a time

static uint32_t crc32_bytes(const void *data, size_t n) { return moe_crc32(0, data, n); }

// The value of the MOE_ST_CRC_KEY metadata entry: a compact JSON object
// mapping each tensor's name to the CRC-32 of its bytes, 8 lowercase hex digits.
static char *crc_table(const struct moe_st_ref *refs, const size_t *sizes, size_t n_refs)
{
    cJSON *o = cJSON_CreateObject();
    if (!o)
        return NULL;
    for (size_t i = 0; i < n_refs; i++) {
        char hex[9];
        uint32_t c = refs[i].fill ? refs[i].crc : sizes[i] ? crc32_bytes(refs[i].data, sizes[i]) : crc32_bytes("", 0);
        snprintf(hex, sizeof hex, "%08" PRIx32, c);
        if (!cJSON_AddStringToObject(o, refs[i].name, hex)) {
            cJSON_Delete(o);
            return NULL;
        }
    }
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return s;
}

// Build the compact JSON header; sizes[i] is the byte size of refs[i]. The
// metadata gets the checksum table (crcs) as its last entry.
static char *build_header(const struct moe_st_ref *refs, const size_t *sizes, size_t n_refs,
                          const struct moe_st_meta *meta, size_t n_meta, const char *crcs)
{
    cJSON *root = cJSON_CreateObject();
    if (!root)
        return NULL;
    cJSON *m = cJSON_AddObjectToObject(root, "__metadata__");
    if (!m)
        goto fail;
    for (size_t i = 0; i < n_meta; i++)
        if (!cJSON_AddStringToObject(m, meta[i].key, meta[i].value))
            goto fail;
    if (!cJSON_AddStringToObject(m, MOE_ST_CRC_KEY, crcs))
        goto fail;
    uint64_t off = 0;
    for (size_t i = 0; i < n_refs; i++) {
        cJSON *o = cJSON_AddObjectToObject(root, refs[i].name);
        if (!o || !cJSON_AddStringToObject(o, "dtype", dtypes[refs[i].dtype].name))
            goto fail;
        cJSON *shape = cJSON_AddArrayToObject(o, "shape");
        if (!shape)
            goto fail;
        for (int d = 0; d < refs[i].ndim; d++)
            if (add_uint(shape, refs[i].shape[d]))
                goto fail;
        cJSON *offs = cJSON_AddArrayToObject(o, "data_offsets");
        if (!offs || add_uint(offs, off) || add_uint(offs, off + sizes[i]))
            goto fail;
        off += sizes[i];
    }
    char *s = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return s;
fail:
    cJSON_Delete(root);
    return NULL;
}

int moe_safetensors_write(const char *path, const struct moe_st_ref *refs, size_t n_refs,
                          const struct moe_st_meta *meta, size_t n_meta, struct moe_err *err)
{
    if (!path)
        return moe_error(err, MOE_EINVAL, "checkpoint: no path given");
    if ((n_refs && !refs) || (n_meta && !meta))
        return moe_safetensors_fail(err, MOE_EINVAL, path, "null tensor or metadata array");

    char nb[SAFE_LEN];
    size_t n_alloc = (n_refs > n_meta ? n_refs : n_meta) + 1;
    size_t *sizes = calloc(n_refs + 1, sizeof *sizes);
    const char **names = calloc(n_alloc, sizeof *names);
    char *header = NULL, *crcs = NULL;
    int rc = 0;
    if (!sizes || !names) {
        rc = moe_safetensors_fail(err, MOE_ENOMEM, path, "out of memory");
        goto out;
    }

    // Validate everything so the file we write is one our reader accepts.
    double total = 0;
    for (size_t i = 0; i < n_refs; i++) {
        const struct moe_st_ref *r = &refs[i];
        if (!r->name) {
            rc = moe_safetensors_fail(err, MOE_EINVAL, path, "tensor %zu has no name", i);
            goto out;
        }
        safe_str(r->name, nb, sizeof nb);
        if (strlen(r->name) >= MOE_NAME_MAX) {
            rc = moe_safetensors_fail(err, MOE_EINVAL, path, "tensor name '%s' is too long (at most %d bytes)", nb,
                         MOE_NAME_MAX - 1);
            goto out;
        }
        if (!utf8_valid(r->name)) {
            rc = moe_safetensors_fail(err, MOE_EINVAL, path, "tensor name '%s' is not valid utf-8", nb);
            goto out;
        }
        if (strcmp(r->name, "__metadata__") == 0) {
            rc = moe_safetensors_fail(err, MOE_EINVAL, path, "'__metadata__' is reserved and cannot name a tensor");
            goto out;
        }
        if (!dtype_valid(r->dtype)) {
            rc = moe_safetensors_fail(err, MOE_EINVAL, path, "tensor '%s' has unknown dtype %d", nb, (int)r->dtype);
            goto out;
        }
        if (r->ndim < 0 || r->ndim > MOE_MAX_DIMS) {
            rc = moe_safetensors_fail(err, MOE_EINVAL, path, "tensor '%s' has %d dimensions (0 to %d supported)", nb,
                         r->ndim, MOE_MAX_DIMS);
            goto out;
        }
        size_t numel;
        if (tensor_bytes(r->ndim, r->shape, dtypes[r->dtype].size, &numel, &sizes[i])) {
            char sb[128];
            moe_shape_str(r->ndim, r->shape, sb, sizeof sb);
            rc = moe_safetensors_fail(err, MOE_EINVAL, path, "tensor '%s' shape %s is too large", nb, sb);
            goto out;
        }
        if (sizes[i] && !r->data && !r->fill) {
            rc = moe_safetensors_fail(err, MOE_EINVAL, path, "tensor '%s' has no data", nb);
            goto out;
        }
        total += (double)sizes[i];
        if (total > ST_OFFSET_LIMIT) {
            rc = moe_safetensors_fail(err, MOE_EINVAL, path, "tensors total more than 2^53 bytes");
            goto out;
        }
        names[i] = r->name;
    }
    long dup = first_duplicate(names, n_refs);
    if (dup >= 0) {
        rc = moe_safetensors_fail(err, MOE_EINVAL, path, "tensor name '%s' is given twice",
                     safe_str(names[dup], nb, sizeof nb));
        goto out;
    }
    for (size_t i = 0; i < n_meta; i++) {
        if (!meta[i].key || !meta[i].value) {
            rc = moe_safetensors_fail(err, MOE_EINVAL, path, "metadata entry %zu has a null key or value", i);
            goto out;
        }
        if (!utf8_valid(meta[i].key) || !utf8_valid(meta[i].value)) {
            rc = moe_safetensors_fail(err, MOE_EINVAL, path, "metadata entry '%s' is not valid utf-8",
                         safe_str(meta[i].key, nb, sizeof nb));
            goto out;
        }
        if (strcmp(meta[i].key, MOE_ST_CRC_KEY) == 0) {
            rc = moe_safetensors_fail(err, MOE_EINVAL, path, "metadata key '" MOE_ST_CRC_KEY "' is reserved for the checksums");
            goto out;
        }
        names[i] = meta[i].key;
    }
    dup = first_duplicate(names, n_meta);
    if (dup >= 0) {
        rc = moe_safetensors_fail(err, MOE_EINVAL, path, "metadata key '%s' is given twice",
                     safe_str(names[dup], nb, sizeof nb));
        goto out;
    }

    crcs = crc_table(refs, sizes, n_refs);
    header = crcs ? build_header(refs, sizes, n_refs, meta, n_meta, crcs) : NULL;
    if (!header) {
        rc = moe_safetensors_fail(err, MOE_ENOMEM, path, "out of memory building the header");
        goto out;
    }
    size_t hlen = strlen(header);
    size_t padded = (hlen + 7) & ~(size_t)7; // 8 + padded is a multiple of 8
    if (padded > ST_HEADER_MAX) {
        rc = moe_safetensors_fail(err, MOE_EINVAL, path, "header of %zu bytes exceeds the %u-byte limit", padded,
                     ST_HEADER_MAX);
        goto out;
    }

    struct moe_atomic_file a;
    unsigned char *chunk = NULL;
    rc = moe_atomic_open(&a, path, err);
    if (rc)
        goto out;
    unsigned char len8[8];
    for (int b = 0; b < 8; b++)
        len8[b] = (unsigned char)((uint64_t)padded >> (8 * b));
    int bad = fwrite(len8, 1, 8, a.f) != 8 || fwrite(header, 1, hlen, a.f) != hlen;
    for (size_t i = hlen; i < padded && !bad; i++)
        bad = fputc(' ', a.f) == EOF;
    int filled = 0; // a fill's failure, whose message is kept
    for (size_t i = 0; i < n_refs; i++) {
        if (!refs[i].fill) {
            if (sizes[i] && !bad)
                bad = fwrite(refs[i].data, 1, sizes[i], a.f) != sizes[i];
            continue;
        }
        if (!chunk && !(chunk = malloc(FILL_CHUNK))) {
            rc = moe_safetensors_fail(err, MOE_ENOMEM, path, "out of memory");
            filled = bad = 1;
        }
        for (size_t off = 0; chunk && off < sizes[i]; off += FILL_CHUNK) { // every byte, even after a failure
            size_t k = sizes[i] - off < FILL_CHUNK ? sizes[i] - off : FILL_CHUNK;
            int f = refs[i].fill(refs[i].ctx, off, chunk, k, filled ? NULL : err);
            if (f && !filled)
                rc = f, filled = bad = 1;
            if (!bad)
                bad = fwrite(chunk, 1, k, a.f) != k;
        }
    }
    free(chunk);
    if (filled) {
        moe_atomic_abort(&a);
        goto out;
    }
    if (bad) {
        int saved = errno;
        moe_atomic_abort(&a);
        rc = moe_safetensors_fail(err, MOE_EIO, path, "cannot write: %s", strerror(saved ? saved : EIO));
        goto out;
    }
    rc = moe_atomic_commit(&a, err);
out:
    cJSON_free(header);
    cJSON_free(crcs);
    free(names);
    free(sizes);
    return rc;
}

// A marked tensor of a sharded registry, written whole (core/params.h: moe_params_whole).
struct whole_tensor {
    const struct moe_params_whole *w;
    size_t i;
};

static int whole_fill(void *ctx, size_t off, void *buf, size_t n, struct moe_err *err)
{
    const struct whole_tensor *x = ctx;
    return x->w->fill(x->w->ctx, x->i, off / sizeof(float), buf, n / sizeof(float), err);
}

int moe_safetensors_write_params(const char *path, const struct moe_params *p,
                                 const struct moe_st_ref *extra, size_t n_extra,
                                 const struct moe_st_meta *meta, size_t n_meta, struct moe_err *err)
{
    if (!path)
        return moe_error(err, MOE_EINVAL, "checkpoint: no path given");
    if (!p)
        return moe_safetensors_fail(err, MOE_EINVAL, path, "no parameter registry given");
    if (p->n && !p->data)
        return moe_safetensors_fail(err, MOE_EINVAL, path, "parameter registry is not allocated");
    if (moe_params_sharded(p) && !p->whole) // a file holds whole tensors
        return moe_safetensors_fail(err, MOE_EINVAL, path, "the parameter registry holds only this process's experts");
    if (n_extra && !extra)
        return moe_safetensors_fail(err, MOE_EINVAL, path, "null extra tensor array");
    size_t total = p->n + n_extra;
    if (total < p->n || total >= SIZE_MAX / sizeof(struct moe_st_ref))
        return moe_safetensors_fail(err, MOE_ENOMEM, path, "too many tensors");
    struct moe_st_ref *refs = calloc(total + 1, sizeof *refs);
    struct whole_tensor *wt = moe_params_sharded(p) ? calloc(p->n + 1, sizeof *wt) : NULL;
    if (!refs || (moe_params_sharded(p) && !wt)) {
        free(refs);
        free(wt);
        return moe_safetensors_fail(err, MOE_ENOMEM, path, "out of memory");
    }
    for (size_t i = 0; i < p->n; i++) {
        const struct moe_tensor *t = &p->t[i];
        refs[i].name = t->name;
        refs[i].dtype = MOE_F32;
        refs[i].ndim = t->ndim;
        memcpy(refs[i].shape, t->shape, sizeof refs[i].shape);
        if (wt && t->experts) { // the whole tensor, from the caller's fill
            wt[i] = (struct whole_tensor){ p->whole, i };
            refs[i].fill = whole_fill;
            refs[i].ctx = &wt[i];
            refs[i].crc = p->whole->crc[i];
        } else {
            refs[i].data = moe_params_data(p, (int)i);
        }
    }
    for (size_t i = 0; i < n_extra; i++)
        refs[p->n + i] = extra[i];
    int rc = moe_safetensors_write(path, refs, total, meta, n_meta, err);
    free(refs);
    free(wt);
    return rc;
}

// ---------------------------------------------------------------- reading

// Byte-level checks JSON parsing does not make: the header begins with '{',
// is valid UTF-8, has no NUL or control bytes (inside strings none at all,
// outside only tab, newline and carriage return), and no "\u0000" escape
// (which would cut a name short once decoded into a C string).
static int scan_header(const unsigned char *h, size_t n, const char *path, struct moe_err *err)
{
    if (n == 0 || h[0] != '{')
        return moe_safetensors_fail(err, MOE_EFORMAT, path, "header does not begin with '{'");
    int in_str = 0;
    for (size_t i = 0; i < n;) {
        unsigned char c = h[i];
        if (c == 0)
            return moe_safetensors_fail(err, MOE_EFORMAT, path, "header contains a nul byte at offset %zu", i);
        if (c < 0x20) {
            if (in_str || (c != '\t' && c != '\n' && c != '\r'))
                return moe_safetensors_fail(err, MOE_EFORMAT, path, "header contains control byte 0x%02x at offset %zu", c,
                               i);
            i++;
            continue;
        }
        if (c >= 0x80) {
            size_t k = utf8_seq(h + i, n - i);
            if (!k)
                return moe_safetensors_fail(err, MOE_EFORMAT, path, "header is not valid utf-8 at offset %zu", i);
            i += k;
            continue;
        }
        if (in_str && c == '\\' && i + 1 < n && h[i + 1] < 0x80) {
            if (h[i + 1] == 'u' && n - i >= 6 && memcmp(h + i + 2, "0000", 4) == 0)
                return moe_safetensors_fail(err, MOE_EFORMAT, path, "header contains an escaped nul (\\u0000) at offset %zu",
                               i);
            i += 2; // skip the escaped character, which may be a quote
            continue;
        }
        if (c == '"')
            in_str = !in_str;
        i++;
    }
    return 0;
}

// A JSON number that is an integer in [0, limit), or -1.
static int json_uint(const cJSON *v, double limit, size_t *ret)
{
    if (!cJSON_IsNumber(v))
        return -1;
    double d = v->valuedouble;
    if (!(d >= 0 && d < limit) || d > (double)SIZE_MAX) // also rejects NaN
        return -1;
    uint64_t u = (uint64_t)d;
    if ((double)u != d)
        return -1;
    *ret = (size_t)u;
    return 0;
}

// Compact JSON text of v, cut and made one line, for messages.
static const char *json_snippet(const cJSON *v, char *buf, size_t len)
{
    char *s = cJSON_PrintUnformatted(v);
    safe_str(s ? s : "?", buf, len);
    cJSON_free(s);
    return buf;
}

static int parse_metadata(struct moe_st_file *f, const cJSON *m, const char *path, struct moe_err *err)
{
    char nb[SAFE_LEN];
    if (!cJSON_IsObject(m))
        return moe_safetensors_fail(err, MOE_EFORMAT, path, "__metadata__ is not an object");
    size_t n = 0;
    for (const cJSON *c = m->child; c; c = c->next)
        n++;
    f->meta_key = calloc(n + 1, sizeof *f->meta_key);
    f->meta_val = calloc(n + 1, sizeof *f->meta_val);
    if (!f->meta_key || !f->meta_val)
        return moe_safetensors_fail(err, MOE_ENOMEM, path, "out of memory");
    for (const cJSON *c = m->child; c; c = c->next) {
        if (!c->string)
            return moe_safetensors_fail(err, MOE_EFORMAT, path, "__metadata__ has an entry without a key");
        if (!cJSON_IsString(c) || !c->valuestring)
            return moe_safetensors_fail(err, MOE_EFORMAT, path, "__metadata__ value for '%s' is not a string",
                           safe_str(c->string, nb, sizeof nb));
        size_t i = f->n_meta;
        f->meta_key[i] = strdup(c->string);
        f->meta_val[i] = strdup(c->valuestring);
        f->n_meta++; // count it now so close() frees a half-made pair
        if (!f->meta_key[i] || !f->meta_val[i])
            return moe_safetensors_fail(err, MOE_ENOMEM, path, "out of memory");
    }
    const char **keys = calloc(n + 1, sizeof *keys);
    if (!keys)
        return moe_safetensors_fail(err, MOE_ENOMEM, path, "out of memory");
    for (size_t i = 0; i < n; i++)
        keys[i] = f->meta_key[i];
    long dup = first_duplicate(keys, n);
    int rc = 0;
    if (dup >= 0)
        rc = moe_safetensors_fail(err, MOE_EFORMAT, path, "__metadata__ key '%s' appears twice",
                     safe_str(keys[dup], nb, sizeof nb));
    free(keys);
    return rc;
}

// Parse one tensor entry; data_size is the size of the data section.
static int parse_entry(struct moe_st_entry *e, const cJSON *c, size_t data_size, const char *path,
                       struct moe_err *err)
{
    char nb[SAFE_LEN], jb[SAFE_LEN];
    safe_str(c->string, nb, sizeof nb);
    if (strlen(c->string) >= MOE_NAME_MAX)
        return moe_safetensors_fail(err, MOE_EFORMAT, path, "tensor name '%s' is too long (at most %d bytes)", nb,
                       MOE_NAME_MAX - 1);
    snprintf(e->name, sizeof e->name, "%s", c->string);
    if (!cJSON_IsObject(c))
        return moe_safetensors_fail(err, MOE_EFORMAT, path, "tensor '%s' is not an object", nb);
    size_t n_keys = 0;
    for (const cJSON *k = c->child; k; k = k->next)
        n_keys++;
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(c, "dtype");
    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(c, "shape");
    const cJSON *of = cJSON_GetObjectItemCaseSensitive(c, "data_offsets");
    // Three keys, each of the three names found: exactly those keys, once each.
    if (n_keys != 3 || !dt || !sh || !of)
        return moe_safetensors_fail(err, MOE_EFORMAT, path,
                       "tensor '%s' must have exactly the keys dtype, shape and data_offsets", nb);

    if (!cJSON_IsString(dt) || !dt->valuestring)
        return moe_safetensors_fail(err, MOE_EFORMAT, path, "tensor '%s' has a dtype that is not a string", nb);
    size_t t;
    for (t = 0; t < N_DTYPES; t++)
        if (strcmp(dt->valuestring, dtypes[t].name) == 0)
            break;
    if (t == N_DTYPES)
        return moe_safetensors_fail(err, MOE_EFORMAT, path, "tensor '%s' has unsupported dtype '%s' (expected F32, I32, I64, F64, U8 or I8)",
                       nb, safe_str(dt->valuestring, jb, sizeof jb));
    e->dtype = (enum moe_dtype)t;

    if (!cJSON_IsArray(sh))
        return moe_safetensors_fail(err, MOE_EFORMAT, path, "tensor '%s' has a shape that is not an array", nb);
    int nd = 0;
    for (const cJSON *d = sh->child; d; d = d->next) {
        if (nd == MOE_MAX_DIMS)
            return moe_safetensors_fail(err, MOE_EFORMAT, path, "tensor '%s' has shape %s with more than %d dimensions", nb,
                           json_snippet(sh, jb, sizeof jb), MOE_MAX_DIMS);
        if (json_uint(d, ST_DIM_LIMIT, &e->shape[nd]))
            return moe_safetensors_fail(err, MOE_EFORMAT, path,
                           "tensor '%s' has shape %s: dimensions must be integers in [0, 2^48)", nb,
                           json_snippet(sh, jb, sizeof jb));
        nd++;
    }
    e->ndim = nd;

    if (!cJSON_IsArray(of) || cJSON_GetArraySize(of) != 2 || json_uint(of->child, ST_OFFSET_LIMIT, &e->begin) ||
        json_uint(of->child->next, ST_OFFSET_LIMIT, &e->end))
        return moe_safetensors_fail(err, MOE_EFORMAT, path,
                       "tensor '%s' has data_offsets %s, expected two non-negative integers", nb,
                       json_snippet(of, jb, sizeof jb));
    if (e->begin > e->end)
        return moe_safetensors_fail(err, MOE_EFORMAT, path, "tensor '%s' has data_offsets [%zu, %zu] that end before they begin",
                       nb, e->begin, e->end);
    if (e->end > data_size)
        return moe_safetensors_fail(err, MOE_EFORMAT, path,
                       "tensor '%s' has data_offsets [%zu, %zu] past the end of the %zu-byte data section "
                       "(file truncated?)",
                       nb, e->begin, e->end, data_size);

    char sb[128];
    moe_shape_str(e->ndim, e->shape, sb, sizeof sb);
    size_t bytes;
    if (tensor_bytes(e->ndim, e->shape, dtypes[t].size, &e->numel, &bytes))
        return moe_safetensors_fail(err, MOE_EFORMAT, path, "tensor '%s' has shape %s %s that is too large", nb, sb,
                       dtypes[t].name);
    if (bytes != e->end - e->begin)
        return moe_safetensors_fail(err, MOE_EFORMAT, path, "tensor '%s' has data_offsets [%zu, %zu] but shape %s %s needs %zu bytes",
                       nb, e->begin, e->end, sb, dtypes[t].name, bytes);
    return 0;
}

static int cmp_entry_ptr(const void *a, const void *b)
{
    const struct moe_st_entry *x = *(const struct moe_st_entry *const *)a;
    const struct moe_st_entry *y = *(const struct moe_st_entry *const *)b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end)
        return x->end < y->end ? -1 : 1;
    return strcmp(x->name, y->name); // total order: qsort output is deterministic
}

// Names unique; tensors tile the data section exactly: no overlaps and, as the
// format requires (it rules out polyglot files), no holes and no trailing bytes.
static int check_layout(struct moe_st_file *f, size_t data_size, const char *path, struct moe_err *err)
{
    char nb[SAFE_LEN], nb2[SAFE_LEN];
    const char **names = calloc(f->n + 1, sizeof *names);
    struct moe_st_entry **order = calloc(f->n + 1, sizeof *order);
    int rc = 0;
    if (!names || !order) {
        rc = moe_safetensors_fail(err, MOE_ENOMEM, path, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < f->n; i++) {
        names[i] = f->e[i].name;
        order[i] = &f->e[i];
    }
    long dup = first_duplicate(names, f->n);
    if (dup >= 0) {
        rc = moe_safetensors_fail(err, MOE_EFORMAT, path, "tensor '%s' appears twice in the header",
                     safe_str(names[dup], nb, sizeof nb));
        goto out;
    }
    if (f->n > 1)
        qsort(order, f->n, sizeof *order, cmp_entry_ptr);
    size_t pos = 0;
    const struct moe_st_entry *prev = NULL;
    for (size_t i = 0; i < f->n; i++) {
        const struct moe_st_entry *e = order[i];
        if (e->begin < pos) {
            rc = moe_safetensors_fail(err, MOE_EFORMAT, path, "tensors '%s' [%zu, %zu] and '%s' [%zu, %zu] overlap",
                         safe_str(prev->name, nb, sizeof nb), prev->begin, prev->end,
                         safe_str(e->name, nb2, sizeof nb2), e->begin, e->end);
            goto out;
        }
        if (e->begin > pos) {
            rc = moe_safetensors_fail(err, MOE_EFORMAT, path, "bytes [%zu, %zu) of the data section belong to no tensor", pos,
                         e->begin);
            goto out;
        }
        pos = e->end;
        prev = e;
    }
    if (pos != data_size)
        rc = moe_safetensors_fail(err, MOE_EFORMAT, path, "bytes [%zu, %zu) of the data section belong to no tensor", pos,
                     data_size);
out:
    free(names);
    free(order);
    return rc;
}

static int parse_file(struct moe_st_file *f, const char *path, struct moe_err *err)
{
    if (f->size < 8)
        return moe_safetensors_fail(err, MOE_EFORMAT, path, "file is %zu bytes, too short for the 8-byte header length", f->size);
    uint64_t n = 0;
    for (int b = 7; b >= 0; b--)
        n = n << 8 | f->buf[b];
    if (n > f->size - 8)
        return moe_safetensors_fail(err, MOE_EFORMAT, path, "header length %" PRIu64 " runs past the end of the %zu-byte file", n,
                       f->size);
    if (n > ST_HEADER_MAX)
        return moe_safetensors_fail(err, MOE_EFORMAT, path, "header length %" PRIu64 " exceeds the %u-byte limit", n,
                       ST_HEADER_MAX);
    const unsigned char *h = f->buf + 8;
    size_t hlen = (size_t)n, data_size = f->size - 8 - hlen;
    int rc = scan_header(h, hlen, path, err);
    if (rc)
        return rc;

    // Parse a NUL-terminated copy: cJSON is given the length, but the copy makes
    // sure nothing can read past the header into the data section or the heap.
    char *copy = malloc(hlen + 1);
    if (!copy)
        return moe_safetensors_fail(err, MOE_ENOMEM, path, "out of memory");
    memcpy(copy, h, hlen);
    copy[hlen] = '\0';
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(copy, hlen, &end, 0);
    if (!root) {
        rc = moe_safetensors_fail(err, MOE_EFORMAT, path, "header is not valid json (error near byte %zu)",
                     end ? (size_t)(end - copy) : (size_t)0);
        goto out;
    }
    for (size_t i = (size_t)(end - copy); i < hlen; i++) {
        if (copy[i] != ' ' && copy[i] != '\t' && copy[i] != '\n' && copy[i] != '\r') {
            rc = moe_safetensors_fail(err, MOE_EFORMAT, path, "header has unexpected bytes after the json object at offset %zu",
                         i);
            goto out;
        }
    }
    if (!cJSON_IsObject(root)) {
        rc = moe_safetensors_fail(err, MOE_EFORMAT, path, "header is not a json object");
        goto out;
    }

    size_t n_tensors = 0, n_metadata = 0;
    for (const cJSON *c = root->child; c; c = c->next) {
        if (!c->string) {
            rc = moe_safetensors_fail(err, MOE_EFORMAT, path, "header has an entry without a name");
            goto out;
        }
        if (strcmp(c->string, "__metadata__") == 0)
            n_metadata++;
        else
            n_tensors++;
    }
    if (n_metadata > 1) {
        rc = moe_safetensors_fail(err, MOE_EFORMAT, path, "__metadata__ appears twice in the header");
        goto out;
    }
    f->e = calloc(n_tensors + 1, sizeof *f->e);
    if (!f->e) {
        rc = moe_safetensors_fail(err, MOE_ENOMEM, path, "out of memory");
        goto out;
    }
    for (const cJSON *c = root->child; c; c = c->next) {
        if (strcmp(c->string, "__metadata__") == 0)
            rc = parse_metadata(f, c, path, err);
        else
            rc = parse_entry(&f->e[f->n++], c, data_size, path, err);
        if (rc)
            goto out;
    }
    rc = check_layout(f, data_size, path, err);
    if (rc)
        goto out;
    // The data may be unaligned for its dtype (the header length and offsets
    // come from the file); readers copy it out with memcpy.
    for (size_t i = 0; i < f->n; i++)
        f->e[i].data = f->buf + 8 + hlen + f->e[i].begin;
out:
    cJSON_Delete(root);
    free(copy);
    return rc;
}

// Check every tensor against the checksum table, when the file has one (files
// written by other tools need not): the table must be a JSON object naming
// exactly the file's tensors, each with 8 hex digits; a tensor whose bytes do
// not give its CRC-32 is named.
static int verify_crcs(const struct moe_st_file *f, const char *path, struct moe_err *err)
{
    const char *text = moe_safetensors_meta(f, MOE_ST_CRC_KEY);
    if (!text)
        return 0;
    char nb[SAFE_LEN];
    int rc = 0;
    cJSON *o = cJSON_Parse(text);
    size_t listed = 0;
    if (!cJSON_IsObject(o)) {
        rc = moe_safetensors_fail(err, MOE_EFORMAT, path, "__metadata__ '" MOE_ST_CRC_KEY "' is not a json object");
        goto out;
    }
    for (const cJSON *c = o->child; c; c = c->next, listed++) {
        const struct moe_st_entry *e = c->string ? moe_safetensors_find(f, c->string) : NULL;
        if (!e) {
            rc = moe_safetensors_fail(err, MOE_EFORMAT, path, "__metadata__ '" MOE_ST_CRC_KEY "' names tensor '%s', which the file does not hold",
                         safe_str(c->string ? c->string : "", nb, sizeof nb));
            goto out;
        }
        const char *v = cJSON_IsString(c) ? c->valuestring : NULL;
        char *endp = NULL;
        unsigned long want = v && strlen(v) == 8 && strspn(v, "0123456789abcdefABCDEF") == 8 ? strtoul(v, &endp, 16) : 0;
        if (!endp || *endp) {
            rc = moe_safetensors_fail(err, MOE_EFORMAT, path, "__metadata__ '" MOE_ST_CRC_KEY "': the checksum of tensor '%s' is not 8 hex digits",
                         safe_str(e->name, nb, sizeof nb));
            goto out;
        }
        uint32_t got = crc32_bytes(e->data, e->end - e->begin);
        if (got != (uint32_t)want) {
            rc = moe_safetensors_fail(err, MOE_EFORMAT, path, "tensor '%s' fails its CRC-32 check (stored %08lx, computed %08" PRIx32 "): the file is damaged, or was changed by a tool that kept the metadata",
                         safe_str(e->name, nb, sizeof nb), want, got);
            goto out;
        }
    }
    if (listed != f->n) { // names are unique on both sides, so a count short means a tensor left out
        for (size_t i = 0; i < f->n; i++)
            if (!cJSON_GetObjectItemCaseSensitive(o, f->e[i].name)) {
                rc = moe_safetensors_fail(err, MOE_EFORMAT, path, "tensor '%s' has no checksum in __metadata__ '" MOE_ST_CRC_KEY "'",
                             safe_str(f->e[i].name, nb, sizeof nb));
                goto out;
            }
        rc = moe_safetensors_fail(err, MOE_EFORMAT, path, "__metadata__ '" MOE_ST_CRC_KEY "' lists a tensor twice");
    }
out:
    cJSON_Delete(o);
    return rc;
}

int moe_safetensors_open(const char *path, struct moe_st_file *ret, struct moe_err *err)
{
    if (!ret)
        return moe_error(err, MOE_EINVAL, "checkpoint: no result given");
    memset(ret, 0, sizeof *ret);
    if (!path)
        return moe_error(err, MOE_EINVAL, "checkpoint: no path given");

    struct moe_st_file f;
    memset(&f, 0, sizeof f);
    snprintf(f.path, sizeof f.path, "%s", path); // kept for messages; a longer path is cut
    char *buf = NULL;
    size_t size = 0;
    // The reason alone, so the message can start with the checkpoint like every other.
    char why[256];
    int rc = moe_read_file_why(path, &buf, &size, why, sizeof why, NULL);
    if (rc == MOE_ENOMEM)
        return moe_safetensors_fail(err, rc, path, "out of memory reading the file");
    if (rc)
        return moe_safetensors_fail(err, rc, path, "cannot read the file: %s", why);
    f.buf = (uint8_t *)buf;
    f.size = size;
    rc = parse_file(&f, path, err);
    if (!rc)
        rc = verify_crcs(&f, path, err);
    if (rc) {
        moe_safetensors_close(&f);
        return rc;
    }
    *ret = f;
    return 0;
}

const struct moe_st_entry *moe_safetensors_find(const struct moe_st_file *f, const char *name)
{
    if (!f || !name)
        return NULL;
    for (size_t i = 0; i < f->n; i++)
        if (strcmp(f->e[i].name, name) == 0)
            return &f->e[i];
    return NULL;
}

const char *moe_safetensors_meta(const struct moe_st_file *f, const char *key)
{
    if (!f || !key)
        return NULL;
    for (size_t i = 0; i < f->n_meta; i++)
        if (f->meta_key[i] && strcmp(f->meta_key[i], key) == 0)
            return f->meta_val[i];
    return NULL;
}

void moe_safetensors_close(struct moe_st_file *f)
{
    if (!f)
        return;
    for (size_t i = 0; i < f->n_meta; i++) {
        if (f->meta_key)
            free(f->meta_key[i]);
        if (f->meta_val)
            free(f->meta_val[i]);
    }
    free(f->meta_key);
    free(f->meta_val);
    free(f->e);
    free(f->buf);
    memset(f, 0, sizeof *f);
}

// ---------------------------------------------------------------- registry

int moe_safetensors_load_params(const struct moe_st_file *f, struct moe_params *p, int allow_extra,
                                struct moe_err *err)
{
    return moe_safetensors_load_params_dec(f, p, allow_extra, NULL, err);
}

int moe_safetensors_load_params_dec(const struct moe_st_file *f, struct moe_params *p, int allow_extra,
                                    const struct moe_st_decoder *dec, struct moe_err *err)
{
    if (!f || !p)
        return moe_error(err, MOE_EINVAL, "checkpoint: no file or parameter registry given");
    const char *path = f->path;
    if (p->n && !p->data)
        return moe_safetensors_fail(err, MOE_EINVAL, path, "parameter registry is not allocated");
    char nb[SAFE_LEN], s1[128], s2[128];
    // Check everything first, so a failure leaves the registry untouched.
    for (size_t i = 0; i < p->n; i++) {
        const struct moe_tensor *t = &p->t[i];
        const struct moe_st_entry *e = moe_safetensors_find(f, t->name);
        moe_shape_str(t->ndim, t->shape, s1, sizeof s1);
        safe_str(t->name, nb, sizeof nb);
        if (!e)
            return moe_safetensors_fail(err, MOE_ESHAPE, path, "no tensor '%s' (model expects shape %s)", nb, s1);
        int coded = dec && e->dtype == dec->dtype;
        if (e->dtype != MOE_F32 && !coded) {
            if (dec)
                return moe_safetensors_fail(err, MOE_EFORMAT, path, "tensor '%s' has dtype %s, expected F32 (or %s, %s)", nb,
                               dtypes[e->dtype].name, dtypes[dec->dtype].name, dec->what);
            return moe_safetensors_fail(err, MOE_EFORMAT, path, "tensor '%s' has dtype %s, expected F32", nb,
                           dtypes[e->dtype].name);
        }
        int same = e->ndim == t->ndim;
        for (int d = 0; same && d < t->ndim; d++)
            same = e->shape[d] == t->shape[d];
        if (!same) {
            moe_shape_str(e->ndim, e->shape, s2, sizeof s2);
            return moe_safetensors_fail(err, MOE_ESHAPE, path, "tensor '%s' has shape %s but the model expects %s", nb, s2, s1);
        }
        int rc;
        if (coded && (rc = dec->check(f, e, err)))
            return rc;
    }
    if (!allow_extra) {
        for (size_t i = 0; i < f->n; i++) {
            const struct moe_st_entry *e = &f->e[i];
            if (moe_params_find(p, e->name) < 0 && !(dec && dec->is_part(f, p, e->name))) {
                moe_shape_str(e->ndim, e->shape, s2, sizeof s2);
                return moe_safetensors_fail(err, MOE_ESHAPE, path, "tensor '%s' (shape %s %s) is not a parameter of the model",
                               safe_str(e->name, nb, sizeof nb), s2, dtypes[e->dtype].name);
            }
        }
    }
    for (size_t i = 0; i < p->n; i++) {
        const struct moe_st_entry *e = moe_safetensors_find(f, p->t[i].name);
        // memcpy, not a float load: e->data may be unaligned. A sharded tensor
        // (expert parallelism) takes its experts lo .. only.
        const struct moe_tensor *t = &p->t[i];
        size_t first = t->lo * (moe_tensor_full_numel(t) / t->shape[0]);
        int rc;
        if (!t->numel)
            continue;
        if (e->dtype != MOE_F32) {
            if ((rc = dec->load(f, e, moe_params_data(p, (int)i), first, t->numel, err)))
                return rc;
            continue;
        }
        memcpy(moe_params_data(p, (int)i), (const unsigned char *)e->data + first * sizeof(float),
               t->numel * sizeof(float));
    }
    return 0;
}

int moe_safetensors_load_ref(const struct moe_st_file *f, const struct moe_st_ref *ref, struct moe_err *err)
{
    const char *path = f->path;
    char nb[SAFE_LEN], s1[128], s2[128];
    const struct moe_st_entry *e = moe_safetensors_find(f, ref->name);
    moe_shape_str(ref->ndim, ref->shape, s1, sizeof s1);
    safe_str(ref->name, nb, sizeof nb);
    if (!e)
        return moe_safetensors_fail(err, MOE_ESHAPE, path, "no tensor '%s' (model expects %s %s)", nb, dtypes[ref->dtype].name, s1);
    if (e->dtype != ref->dtype)
        return moe_safetensors_fail(err, MOE_EFORMAT, path, "tensor '%s' has dtype %s, expected %s", nb, dtypes[e->dtype].name,
                       dtypes[ref->dtype].name);
    int same = e->ndim == ref->ndim;
    for (int d = 0; same && d < ref->ndim; d++)
        same = e->shape[d] == ref->shape[d];
    if (!same) {
        moe_shape_str(e->ndim, e->shape, s2, sizeof s2);
        return moe_safetensors_fail(err, MOE_ESHAPE, path, "tensor '%s' has shape %s but the model expects %s", nb, s2, s1);
    }
    if (e->end > e->begin)
        memcpy((void *)ref->data, e->data, e->end - e->begin);
    return 0;
}
