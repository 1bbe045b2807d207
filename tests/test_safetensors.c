// test_safetensors.c: tests for the safetensors reader and writer
// (lib/io/safetensors.c): round trips, deterministic output, header alignment,
// one test per kind of corruption (each checking the status code and a
// message fragment), registry loading, writer argument checks, and a
// truncation / random-corruption sweep that must never crash.
// The tests work in one directory from mkdtemp("/tmp/moe-st-XXXXXX"), made
// and removed by an unchecked fixture so a failing test leaves nothing behind.
#include <check.h>
#include <dirent.h>
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/params.h"
#include "core/status.h"
#include "io/safetensors.h"
#include "testutil.h"

static char tmpdir[64];

static void setup(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/moe-st-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static void teardown(void)
{
    DIR *d = opendir(tmpdir);
    if (d) {
        struct dirent *de;
        char p[512];
        while ((de = readdir(d))) {
            if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) {
                snprintf(p, sizeof p, "%s/%s", tmpdir, de->d_name);
                unlink(p);
            }
        }
        closedir(d);
    }
    rmdir(tmpdir);
}

// Path of a file in the test directory (a few rotating buffers).
static const char *tpath(const char *name)
{
    static char bufs[4][512];
    static int k;
    char *b = bufs[k++ & 3];
    snprintf(b, 512, "%s/%s", tmpdir, name);
    return b;
}

static void write_bytes(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    if (len)
        ck_assert_uint_eq(fwrite(data, 1, len, f), len);
    ck_assert_int_eq(fclose(f), 0);
}

static unsigned char *read_bytes(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    ck_assert_ptr_nonnull(f);
    ck_assert_int_eq(fseek(f, 0, SEEK_END), 0);
    long n = ftell(f);
    ck_assert_int_ge(n, 0);
    rewind(f);
    unsigned char *b = malloc((size_t)n + 1);
    ck_assert_ptr_nonnull(b);
    ck_assert_uint_eq(fread(b, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *len = (size_t)n;
    return b;
}

static uint64_t le64(const unsigned char *b)
{
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = n << 8 | b[i];
    return n;
}

// A hand-made file: header length, the header text as given (no padding),
// then data_len bytes 0, 1, 2, ...
static void write_raw(const char *path, const char *header, size_t data_len)
{
    size_t hl = strlen(header);
    size_t len = 8 + hl + data_len;
    unsigned char *b = malloc(len);
    ck_assert_ptr_nonnull(b);
    for (int i = 0; i < 8; i++)
        b[i] = (unsigned char)((uint64_t)hl >> (8 * i));
    memcpy(b + 8, header, hl);
    for (size_t i = 0; i < data_len; i++)
        b[8 + hl + i] = (unsigned char)i;
    write_bytes(path, b, len);
    free(b);
}

// Opening must fail with code and a one-line message that starts with the
// checkpoint path and contains fragment; the result must stay zeroed.
static void expect_open_fail(const char *path, int code, const char *fragment)
{
    struct moe_st_file f;
    memset(&f, 0xab, sizeof f);
    struct moe_err err = {0};
    int rc = moe_safetensors_open(path, &f, &err);
    ck_assert_msg(rc == code, "expected %d, got %d (%s)", code, rc, err.msg);
    ck_assert_int_eq(err.code, code);
    ck_assert_msg(strstr(err.msg, fragment), "message '%s' lacks '%s'", err.msg, fragment);
    char prefix[1100];
    snprintf(prefix, sizeof prefix, "checkpoint '%s': ", path);
    ck_assert_msg(strncmp(err.msg, prefix, strlen(prefix)) == 0, "message '%s' does not start with the file", err.msg);
    ck_assert_ptr_null(strchr(err.msg, '\n'));
    size_t ml = strlen(err.msg);
    ck_assert(ml > 0 && err.msg[ml - 1] != '.');
    ck_assert_ptr_null(f.buf);
    ck_assert_ptr_null(f.e);
    ck_assert_uint_eq(f.n, 0);
    ck_assert_uint_eq(f.n_meta, 0);
    moe_safetensors_close(&f); // zeroed struct: a no-op
}

static void expect_raw_fail(const char *header, size_t data_len, const char *fragment)
{
    const char *p = tpath("bad.safetensors");
    write_raw(p, header, data_len);
    expect_open_fail(p, MOE_EFORMAT, fragment);
}

static void open_ok(const char *path, struct moe_st_file *f)
{
    struct moe_err err = {0};
    int rc = moe_safetensors_open(path, f, &err);
    ck_assert_msg(rc == 0, "open failed: %s", err.msg);
}

static void add(struct moe_params *p, const char *name, int ndim, size_t d0, size_t d1, size_t d2)
{
    size_t shape[MOE_MAX_DIMS] = {d0, d1, d2, 0};
    struct moe_err err = {0};
    ck_assert_msg(moe_params_add(p, name, ndim, shape, &err) >= 0, "%s", err.msg);
}

static void alloc(struct moe_params *p)
{
    struct moe_err err = {0};
    ck_assert_msg(moe_params_alloc(p, &err) == 0, "%s", err.msg);
}

// Fill a registry with arbitrary bit patterns (NaN payloads, -0, denormals).
static void fill_bits(struct moe_params *p, uint32_t seed)
{
    uint32_t x = seed;
    for (size_t i = 0; i < p->n; i++) {
        float *d = moe_params_data(p, (int)i);
        for (size_t k = 0; k < p->t[i].numel; k++) {
            x = x * 1664525u + 1013904223u;
            uint32_t u = x;
            if (k == 0)
                u = 0x80000000u; // -0
            else if (k == 1)
                u = 0x7fc01234u; // NaN with payload
            else if (k == 2)
                u = 0x00000001u; // smallest denormal
            memcpy(&d[k], &u, 4);
        }
    }
}

static void make_registry(struct moe_params *p)
{
    moe_params_init(p);
    add(p, "embed.weight", 2, 5, 4, 0);
    add(p, "layers.0.moe.router.weight", 3, 4, 3, 2);
    add(p, "head.bias", 1, 7, 0, 0);
    alloc(p);
}

static const int32_t table[2][3] = {{1, -2, INT32_MIN}, {INT32_MAX, 0, 77}};
static const int64_t counts[2] = {INT64_MIN, 1234567890123LL};
static const double stats[3] = {0.5, -1e300, 3.0e-310};
static const int64_t step_scalar = 42;

static void write_registry(const char *path, const struct moe_params *p, const char *note)
{
    struct moe_st_ref extra[4] = {
        {.name = "hash.table", .dtype = MOE_I32, .ndim = 2, .shape = {2, 3}, .data = table},
        {.name = "counts", .dtype = MOE_I64, .ndim = 1, .shape = {2}, .data = counts},
        {.name = "norm.stats", .dtype = MOE_F64, .ndim = 1, .shape = {3}, .data = stats},
        {.name = "step", .dtype = MOE_I64, .ndim = 0, .data = &step_scalar},
    };
    struct moe_st_meta meta[3] = {
        {"format", "moe"},
        {"step", "42"},
        {"note", note},
    };
    struct moe_err err = {0};
    int rc = moe_safetensors_write_params(path, p, extra, 4, meta, 3, &err);
    ck_assert_msg(rc == 0, "write failed: %s", err.msg);
}

// ---------------------------------------------------------------- round trips

START_TEST(test_roundtrip)
{
    struct moe_params p, q;
    make_registry(&p);
    fill_bits(&p, 7);
    const char *note = "unicode \xc3\xa9 \xe2\x9c\x93, \"quotes\", back\\slash, new\nline";
    const char *path = tpath("model.safetensors");
    write_registry(path, &p, note);

    struct moe_st_file f;
    open_ok(path, &f);
    ck_assert_uint_eq(f.n, 7);
    ck_assert_str_eq(f.path, path);
    const char *order[7] = {"embed.weight", "layers.0.moe.router.weight", "head.bias", "hash.table", "counts",
                            "norm.stats", "step"};
    size_t pos = 0;
    for (size_t i = 0; i < 7; i++) {
        ck_assert_str_eq(f.e[i].name, order[i]);
        ck_assert_uint_eq(f.e[i].begin, pos); // contiguous, in the order given
        pos = f.e[i].end;
    }
    const struct moe_st_entry *e = moe_safetensors_find(&f, "layers.0.moe.router.weight");
    ck_assert_ptr_nonnull(e);
    ck_assert_int_eq(e->dtype, MOE_F32);
    ck_assert_int_eq(e->ndim, 3);
    ck_assert_uint_eq(e->shape[0], 4);
    ck_assert_uint_eq(e->shape[1], 3);
    ck_assert_uint_eq(e->shape[2], 2);
    ck_assert_uint_eq(e->numel, 24);
    ck_assert_uint_eq(e->end - e->begin, 96);
    ck_assert_ptr_null(moe_safetensors_find(&f, "nope"));
    ck_assert_ptr_null(moe_safetensors_find(&f, "__metadata__"));

    e = moe_safetensors_find(&f, "hash.table");
    ck_assert_ptr_nonnull(e);
    ck_assert_int_eq(e->dtype, MOE_I32);
    ck_assert_int_eq(e->ndim, 2);
    ck_assert_uint_eq(e->numel, 6);
    int32_t t2[6];
    memcpy(t2, e->data, sizeof t2);
    ck_assert_int_eq(memcmp(t2, table, sizeof t2), 0);

    e = moe_safetensors_find(&f, "counts");
    ck_assert_int_eq(e->dtype, MOE_I64);
    ck_assert_int_eq(memcmp(e->data, counts, sizeof counts), 0);
    e = moe_safetensors_find(&f, "norm.stats");
    ck_assert_int_eq(e->dtype, MOE_F64);
    ck_assert_int_eq(memcmp(e->data, stats, sizeof stats), 0);
    e = moe_safetensors_find(&f, "step");
    ck_assert_int_eq(e->ndim, 0);
    ck_assert_uint_eq(e->numel, 1);
    ck_assert_int_eq(memcmp(e->data, &step_scalar, 8), 0);

    ck_assert_uint_eq(f.n_meta, 4); // the three given and the checksum table
    ck_assert_ptr_nonnull(moe_safetensors_meta(&f, MOE_ST_CRC_KEY));
    ck_assert_str_eq(moe_safetensors_meta(&f, "format"), "moe");
    ck_assert_str_eq(moe_safetensors_meta(&f, "step"), "42");
    ck_assert_str_eq(moe_safetensors_meta(&f, "note"), note);
    ck_assert_ptr_null(moe_safetensors_meta(&f, "absent"));

    make_registry(&q);
    struct moe_err err = {0};
    ck_assert_int_eq(moe_safetensors_load_params(&f, &q, 0, &err), MOE_ESHAPE); // extras present
    int rc = moe_safetensors_load_params(&f, &q, 1, &err);
    ck_assert_msg(rc == 0, "%s", err.msg);
    for (size_t i = 0; i < p.n; i++)
        ck_assert_int_eq(memcmp(moe_params_data(&p, (int)i), moe_params_data(&q, (int)i), p.t[i].numel * 4), 0);

    moe_safetensors_close(&f);
    ck_assert_ptr_null(f.buf);
    moe_safetensors_close(&f); // twice is fine
    moe_params_release(&p);
    moe_params_release(&q);
}
END_TEST

// Every written file carries the CRC-32 of each tensor (zlib.crc32; the check
// value of "123456789" is cbf43926); a changed byte is caught and the tensor
// named; a malformed table is refused; a file without a table loads.
START_TEST(test_checksums)
{
    const char *path = tpath("crc.safetensors");
    const uint8_t digits[9] = { '1', '2', '3', '4', '5', '6', '7', '8', '9' };
    const float w[3] = { 1.0f, -2.0f, 0.5f };
    struct moe_st_ref refs[2] = {
        { .name = "digits", .dtype = MOE_U8, .ndim = 1, .shape = { 9 }, .data = digits },
        { .name = "w", .dtype = MOE_F32, .ndim = 1, .shape = { 3 }, .data = w },
    };
    struct moe_err err = { 0 };
    ck_assert_int_eq(moe_safetensors_write(path, refs, 2, NULL, 0, &err), 0);
    struct moe_st_file f;
    open_ok(path, &f);
    const char *t = moe_safetensors_meta(&f, MOE_ST_CRC_KEY);
    ck_assert_ptr_nonnull(t);
    const char *want = "{\"digits\":\"cbf43926\",\"w\":\"";
    ck_assert_msg(strncmp(t, want, strlen(want)) == 0, "table %s", t);
    size_t at = (size_t)((const uint8_t *)moe_safetensors_find(&f, "w")->data - f.buf);
    moe_safetensors_close(&f);

    // one bit of w flipped on disk
    size_t len;
    unsigned char *b = read_bytes(path, &len);
    b[at + 5] ^= 0x10;
    write_bytes(path, b, len);
    free(b);
    expect_open_fail(path, MOE_EFORMAT, "tensor 'w' fails its CRC-32 check (stored ");

    // the writer keeps the key for itself
    struct moe_st_meta m = { MOE_ST_CRC_KEY, "{}" };
    ck_assert_int_eq(moe_safetensors_write(path, refs, 2, &m, 1, &err), MOE_EINVAL);
    ck_assert_msg(strstr(err.msg, "is reserved for the checksums"), "%s", err.msg);

    // malformed tables (write_raw's data bytes are 0, 1, 2, ...: CRC-32 of 00 01 02 03 is 8bb98613)
    const char *tensor = "\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]}";
    char h[512];
    snprintf(h, sizeof h, "{\"__metadata__\":{\"tensor_crc32\":\"{\\\"a\\\":\\\"8bb98613\\\"}\"},%s}", tensor);
    write_raw(path, h, 4);
    open_ok(path, &f); // the right checksum, written by hand
    moe_safetensors_close(&f);
    snprintf(h, sizeof h, "{\"__metadata__\":{\"tensor_crc32\":\"[1]\"},%s}", tensor);
    expect_raw_fail(h, 4, "'tensor_crc32' is not a json object");
    snprintf(h, sizeof h, "{\"__metadata__\":{\"tensor_crc32\":\"{\\\"b\\\":\\\"8bb98613\\\"}\"},%s}", tensor);
    expect_raw_fail(h, 4, "names tensor 'b', which the file does not hold");
    snprintf(h, sizeof h, "{\"__metadata__\":{\"tensor_crc32\":\"{\\\"a\\\":\\\"8bb9861\\\"}\"},%s}", tensor);
    expect_raw_fail(h, 4, "the checksum of tensor 'a' is not 8 hex digits");
    snprintf(h, sizeof h, "{\"__metadata__\":{\"tensor_crc32\":\"{\\\"a\\\":\\\"-bb98613\\\"}\"},%s}", tensor);
    expect_raw_fail(h, 4, "the checksum of tensor 'a' is not 8 hex digits");
    snprintf(h, sizeof h, "{\"__metadata__\":{\"tensor_crc32\":\"{}\"},%s}", tensor);
    expect_raw_fail(h, 4, "tensor 'a' has no checksum in __metadata__ 'tensor_crc32'");
    snprintf(h, sizeof h, "{\"__metadata__\":{\"tensor_crc32\":\"{\\\"a\\\":\\\"00000000\\\"}\"},%s}", tensor);
    expect_raw_fail(h, 4, "tensor 'a' fails its CRC-32 check (stored 00000000, computed 8bb98613)");
    // no table at all (another tool's file): loads
    snprintf(h, sizeof h, "{%s}", tensor);
    write_raw(path, h, 4);
    open_ok(path, &f);
    moe_safetensors_close(&f);
}
END_TEST

START_TEST(test_empty_file)
{
    const char *path = tpath("empty.safetensors");
    struct moe_err err = {0};
    ck_assert_int_eq(moe_safetensors_write(path, NULL, 0, NULL, 0, &err), 0);
    size_t len;
    unsigned char *b = read_bytes(path, &len);
    const char *h = "{\"__metadata__\":{\"tensor_crc32\":\"{}\"}}  "; // padded to 40 bytes
    ck_assert_uint_eq(len, 8 + strlen(h));
    ck_assert_uint_eq(le64(b), strlen(h));
    ck_assert_int_eq(memcmp(b + 8, h, strlen(h)), 0);
    free(b);
    struct moe_st_file f;
    open_ok(path, &f);
    ck_assert_uint_eq(f.n, 0);
    ck_assert_uint_eq(f.n_meta, 1);
    ck_assert_ptr_null(moe_safetensors_find(&f, "x"));
    moe_safetensors_close(&f);

    // An empty registry loads from it.
    struct moe_params p;
    moe_params_init(&p);
    ck_assert_int_eq(moe_safetensors_load_params(&f, &p, 0, &err), 0);
}
END_TEST

START_TEST(test_deterministic)
{
    struct moe_params p;
    make_registry(&p);
    fill_bits(&p, 99);
    const char *a = tpath("a.safetensors"), *b = tpath("b.safetensors");
    write_registry(a, &p, "same");
    write_registry(b, &p, "same");
    size_t la, lb;
    unsigned char *ba = read_bytes(a, &la), *bb = read_bytes(b, &lb);
    ck_assert_uint_eq(la, lb);
    ck_assert_int_eq(memcmp(ba, bb, la), 0);
    free(bb);
    // Overwriting a file in place gives the same bytes again.
    write_registry(a, &p, "same");
    bb = read_bytes(a, &lb);
    ck_assert_uint_eq(la, lb);
    ck_assert_int_eq(memcmp(ba, bb, la), 0);
    free(ba);
    free(bb);
    // No temporary file is left behind.
    DIR *d = opendir(tmpdir);
    struct dirent *de;
    while ((de = readdir(d)))
        ck_assert_ptr_null(strstr(de->d_name, ".tmp."));
    closedir(d);
    moe_params_release(&p);
}
END_TEST

START_TEST(test_alignment)
{
    // Vary the header length so every padding amount 0..7 occurs.
    float v[3] = {1.5f, -2.0f, 3.25f};
    for (int n = 0; n < 24; n++) {
        char value[32];
        memset(value, 'x', (size_t)n);
        value[n] = '\0';
        struct moe_st_ref r = {.name = "v", .dtype = MOE_F32, .ndim = 1, .shape = {3}, .data = v};
        struct moe_st_meta m = {"pad", value};
        const char *path = tpath("align.safetensors");
        struct moe_err err = {0};
        ck_assert_int_eq(moe_safetensors_write(path, &r, 1, &m, 1, &err), 0);
        size_t len;
        unsigned char *b = read_bytes(path, &len);
        uint64_t hl = le64(b);
        ck_assert_uint_eq((8 + hl) % 8, 0);
        ck_assert_uint_eq(len, 8 + hl + sizeof v);
        ck_assert_int_eq(b[8], '{');
        size_t close = 8 + hl;
        while (close > 8 && b[close - 1] == ' ')
            close--;
        ck_assert_int_eq(b[close - 1], '}');
        ck_assert_uint_lt(8 + hl - close, 8); // at most 7 bytes of padding
        ck_assert_int_eq(memcmp(b + 8 + hl, v, sizeof v), 0);
        free(b);
        struct moe_st_file f;
        open_ok(path, &f);
        ck_assert_uint_eq(((uintptr_t)f.e[0].data - (uintptr_t)f.buf) % 8, 0);
        ck_assert_str_eq(moe_safetensors_meta(&f, "pad"), value);
        moe_safetensors_close(&f);
    }
}
END_TEST

START_TEST(test_unaligned_data)
{
    // A foreign file need not pad its header: data starts at an odd address.
    char h[128] = "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
    if (strlen(h) % 2 == 0)
        strcat(h, " ");
    ck_assert_uint_eq(strlen(h) % 2, 1);
    const char *path = tpath("odd.safetensors");
    write_raw(path, h, 8);
    struct moe_st_file f;
    open_ok(path, &f);
    struct moe_params p;
    moe_params_init(&p);
    add(&p, "w", 1, 2, 0, 0);
    alloc(&p);
    struct moe_err err = {0};
    ck_assert_int_eq(moe_safetensors_load_params(&f, &p, 0, &err), 0);
    unsigned char expect[8] = {0, 1, 2, 3, 4, 5, 6, 7};
    ck_assert_int_eq(memcmp(moe_params_data(&p, 0), expect, 8), 0);
    moe_safetensors_close(&f);
    moe_params_release(&p);
}
END_TEST

// ---------------------------------------------------------------- corruptions

#define W24 "{\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]}}"

START_TEST(test_valid_raw)
{
    // The hand-made baseline the corruption tests start from is itself valid.
    const char *path = tpath("ok.safetensors");
    write_raw(path, W24, 24);
    struct moe_st_file f;
    open_ok(path, &f);
    ck_assert_uint_eq(f.n, 1);
    moe_safetensors_close(&f);
    // Surrounding whitespace after the object is allowed (writers pad with spaces).
    write_raw(path, W24 "  \n\t ", 24);
    open_ok(path, &f);
    moe_safetensors_close(&f);
    // Zero-size tensors take no bytes and may sit at either end.
    write_raw(path,
              "{\"z0\":{\"dtype\":\"I64\",\"shape\":[0,5],\"data_offsets\":[0,0]},"
              "\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
              "\"z1\":{\"dtype\":\"F64\",\"shape\":[0],\"data_offsets\":[24,24]}}",
              24);
    open_ok(path, &f);
    ck_assert_uint_eq(f.n, 3);
    ck_assert_uint_eq(moe_safetensors_find(&f, "z0")->numel, 0);
    ck_assert_uint_eq(moe_safetensors_find(&f, "z1")->begin, 24);
    moe_safetensors_close(&f);
}
END_TEST

START_TEST(test_missing_file)
{
    expect_open_fail(tpath("does-not-exist.safetensors"), MOE_EIO, "cannot read the file");
}
END_TEST

START_TEST(test_too_short)
{
    const char *p = tpath("short.safetensors");
    write_bytes(p, "\x05\0\0\0\0", 5);
    expect_open_fail(p, MOE_EFORMAT, "file is 5 bytes, too short");
    write_bytes(p, "", 0);
    expect_open_fail(p, MOE_EFORMAT, "file is 0 bytes, too short");
}
END_TEST

START_TEST(test_header_past_end)
{
    const char *p = tpath("long.safetensors");
    unsigned char b[18] = {0xe8, 0x03}; // header length 1000, 10 bytes follow
    memcpy(b + 8, "{}        ", 10);
    write_bytes(p, b, sizeof b);
    expect_open_fail(p, MOE_EFORMAT, "header length 1000 runs past the end of the 18-byte file");
    unsigned char huge[16] = {0, 0, 0, 0, 0, 0, 0, 0x80}; // 2^63
    write_bytes(p, huge, sizeof huge);
    expect_open_fail(p, MOE_EFORMAT, "header length 9223372036854775808 runs past the end");
}
END_TEST

START_TEST(test_truncated_data)
{
    float v[6] = {1, 2, 3, 4, 5, 6};
    struct moe_st_ref r = {.name = "w", .dtype = MOE_F32, .ndim = 2, .shape = {2, 3}, .data = v};
    const char *p = tpath("cut.safetensors");
    struct moe_err err = {0};
    ck_assert_int_eq(moe_safetensors_write(p, &r, 1, NULL, 0, &err), 0);
    size_t len;
    unsigned char *b = read_bytes(p, &len);
    write_bytes(p, b, len - 4);
    expect_open_fail(p, MOE_EFORMAT, "tensor 'w' has data_offsets [0, 24] past the end of the 20-byte data section");
    expect_open_fail(p, MOE_EFORMAT, "truncated");
    free(b);
}
END_TEST

START_TEST(test_not_json)
{
    expect_raw_fail("{\"w\": {\"dtype\": \"F32\", oops", 0, "header is not valid json");
    expect_raw_fail("{\"w\": 1,}", 0, "header is not valid json");
    expect_raw_fail("[1, 2]", 0, "header does not begin with '{'");
    expect_raw_fail("", 0, "header does not begin with '{'");
    expect_raw_fail(W24 "xyz", 24, "unexpected bytes after the json object");
    expect_raw_fail("{\"w\": 5}", 0, "tensor 'w' is not an object");
}
END_TEST

START_TEST(test_bad_bytes)
{
    const char *p = tpath("nul.safetensors");
    char h[] = "{\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]}}";
    size_t hl = strlen(h);
    h[3] = '\0'; // NUL inside the header
    unsigned char b[8 + 64 + 24] = {0};
    b[0] = (unsigned char)hl;
    memcpy(b + 8, h, hl);
    write_bytes(p, b, 8 + hl + 24);
    expect_open_fail(p, MOE_EFORMAT, "nul byte at offset 3");

    expect_raw_fail("{\"w\\u0000x\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]}}", 24, "escaped nul");
    expect_raw_fail("{\"w\xff\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]}}", 24, "not valid utf-8");
    expect_raw_fail("{\"w\xc0\xaf\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]}}", 24, "not valid utf-8");
    expect_raw_fail("{\"w\x01\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]}}", 24, "control byte 0x01");
    // An escaped quote or backslash in a name is fine (and "\\u0000" is not a NUL).
    const char *ok = "{\"a\\\"b\\\\u0000\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]}}";
    write_raw(p, ok, 24);
    struct moe_st_file f;
    open_ok(p, &f);
    ck_assert_str_eq(f.e[0].name, "a\"b\\u0000");
    moe_safetensors_close(&f);
}
END_TEST

// I8 (int8-quantized weights, compress/quant.h): one byte per element, the
// bytes back as written, refused by load_ref as another dtype and by a header
// whose offsets do not give it 1 byte per element.
START_TEST(test_i8)
{
    const char *path = tpath("i8.safetensors");
    const int8_t q[6] = { -128, -1, 0, 1, 126, 127 };
    struct moe_st_ref r = { .name = "q", .dtype = MOE_I8, .ndim = 2, .shape = { 2, 3 }, .data = q };
    struct moe_err err = { 0 };
    ck_assert_msg(moe_safetensors_write(path, &r, 1, NULL, 0, &err) == 0, "%s", err.msg);
    struct moe_st_file f;
    open_ok(path, &f);
    const struct moe_st_entry *e = moe_safetensors_find(&f, "q");
    ck_assert_ptr_nonnull(e);
    ck_assert_int_eq(e->dtype, MOE_I8);
    ck_assert_uint_eq(e->numel, 6);
    ck_assert_uint_eq(e->end - e->begin, 6);
    ck_assert_mem_eq(e->data, q, 6);
    int8_t back[6] = { 0 };
    struct moe_st_ref in = r;
    in.data = back;
    ck_assert_int_eq(moe_safetensors_load_ref(&f, &in, &err), 0);
    ck_assert_mem_eq(back, q, 6);
    in.dtype = MOE_U8;
    ck_assert_int_eq(moe_safetensors_load_ref(&f, &in, &err), MOE_EFORMAT);
    ck_assert_msg(strstr(err.msg, "tensor 'q' has dtype I8, expected U8"), "%s", err.msg);
    moe_safetensors_close(&f);
    expect_raw_fail("{\"w\":{\"dtype\":\"I8\",\"shape\":[2,3],\"data_offsets\":[0,24]}}", 24,
                    "shape [2, 3] I8 needs 6 bytes");
}
END_TEST

START_TEST(test_unknown_dtype)
{
    expect_raw_fail("{\"w\":{\"dtype\":\"BF16\",\"shape\":[2,3],\"data_offsets\":[0,12]}}", 12,
                    "tensor 'w' has unsupported dtype 'BF16'");
    expect_raw_fail("{\"w\":{\"dtype\":\"f32\",\"shape\":[2,3],\"data_offsets\":[0,24]}}", 24, "unsupported dtype 'f32'");
    expect_raw_fail("{\"w\":{\"dtype\":4,\"shape\":[2,3],\"data_offsets\":[0,24]}}", 24, "dtype that is not a string");
}
END_TEST

START_TEST(test_entry_keys)
{
    expect_raw_fail("{\"w\":{\"dtype\":\"F32\",\"shape\":[2,3]}}", 0, "exactly the keys dtype, shape and data_offsets");
    expect_raw_fail("{\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24],\"x\":1}}", 24, "exactly the keys");
    expect_raw_fail("{\"w\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"data_offsets\":[0,24]}}", 24, "exactly the keys");
    expect_raw_fail("{\"w\":{\"Dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]}}", 24, "exactly the keys");
}
END_TEST

START_TEST(test_size_mismatch)
{
    expect_raw_fail("{\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,12]}}", 12,
                    "tensor 'w' has data_offsets [0, 12] but shape [2, 3] F32 needs 24 bytes");
    expect_raw_fail("{\"w\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[0,4]}}", 4, "shape [] I64 needs 8 bytes");
    expect_raw_fail("{\"w\":{\"dtype\":\"F64\",\"shape\":[281474976710656],\"data_offsets\":[0,8]}}", 8,
                    "dimensions must be integers in [0, 2^48)");
    expect_raw_fail("{\"w\":{\"dtype\":\"F64\",\"shape\":[65536,65536,65536,65536],\"data_offsets\":[0,8]}}", 8,
                    "shape [65536, 65536, 65536, 65536] F64 that is too large");
}
END_TEST

START_TEST(test_offsets)
{
    expect_raw_fail("{\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]}}", 12,
                    "tensor 'w' has data_offsets [0, 24] past the end of the 12-byte data section");
    expect_raw_fail("{\"w\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[24,0]}}", 24, "end before they begin");
    expect_raw_fail("{\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0]}}", 24,
                    "data_offsets [0], expected two non-negative integers");
    expect_raw_fail("{\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[-24,0]}}", 24, "expected two non-negative");
    expect_raw_fail("{\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0.5,24]}}", 24, "expected two non-negative");
    expect_raw_fail("{\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":\"0,24\"}}", 24, "expected two non-negative");
    expect_raw_fail("{\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,1e400]}}", 24, "expected two non-negative");
}
END_TEST

START_TEST(test_overlap_and_holes)
{
    expect_raw_fail("{\"a\":{\"dtype\":\"F32\",\"shape\":[6],\"data_offsets\":[0,24]},"
                    "\"b\":{\"dtype\":\"F32\",\"shape\":[6],\"data_offsets\":[16,40]}}",
                    40, "tensors 'a' [0, 24] and 'b' [16, 40] overlap");
    // The same tensor bytes claimed twice.
    expect_raw_fail("{\"a\":{\"dtype\":\"F32\",\"shape\":[6],\"data_offsets\":[0,24]},"
                    "\"b\":{\"dtype\":\"I32\",\"shape\":[6],\"data_offsets\":[0,24]}}",
                    24, "overlap");
    expect_raw_fail("{\"a\":{\"dtype\":\"F32\",\"shape\":[6],\"data_offsets\":[0,24]},"
                    "\"b\":{\"dtype\":\"F32\",\"shape\":[6],\"data_offsets\":[32,56]}}",
                    56, "bytes [24, 32) of the data section belong to no tensor");
    expect_raw_fail(W24, 30, "bytes [24, 30) of the data section belong to no tensor");
    expect_raw_fail("{\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[8,32]}}", 32, "bytes [0, 8)");
}
END_TEST

START_TEST(test_duplicate_name)
{
    expect_raw_fail("{\"w\":{\"dtype\":\"F32\",\"shape\":[6],\"data_offsets\":[0,24]},"
                    "\"w\":{\"dtype\":\"F32\",\"shape\":[6],\"data_offsets\":[24,48]}}",
                    48, "tensor 'w' appears twice in the header");
}
END_TEST

START_TEST(test_bad_shape)
{
    expect_raw_fail("{\"w\":{\"dtype\":\"F32\",\"shape\":[-2,3],\"data_offsets\":[0,24]}}", 24,
                    "tensor 'w' has shape [-2,3]: dimensions must be integers");
    expect_raw_fail("{\"w\":{\"dtype\":\"F32\",\"shape\":[2.5,3],\"data_offsets\":[0,24]}}", 24,
                    "shape [2.5,3]: dimensions must be integers");
    expect_raw_fail("{\"w\":{\"dtype\":\"F32\",\"shape\":[\"2\",3],\"data_offsets\":[0,24]}}", 24,
                    "dimensions must be integers");
    expect_raw_fail("{\"w\":{\"dtype\":\"F32\",\"shape\":[[2],3],\"data_offsets\":[0,24]}}", 24,
                    "dimensions must be integers");
    expect_raw_fail("{\"w\":{\"dtype\":\"F32\",\"shape\":6,\"data_offsets\":[0,24]}}", 24, "shape that is not an array");
    expect_raw_fail("{\"w\":{\"dtype\":\"F32\",\"shape\":[1,1,1,2,3],\"data_offsets\":[0,24]}}", 24,
                    "more than 4 dimensions");
}
END_TEST

START_TEST(test_long_name)
{
    char h[512];
    char name[MOE_NAME_MAX + 1];
    memset(name, 'n', MOE_NAME_MAX);
    name[MOE_NAME_MAX] = '\0';
    snprintf(h, sizeof h, "{\"%s\":{\"dtype\":\"F32\",\"shape\":[6],\"data_offsets\":[0,24]}}", name);
    expect_raw_fail(h, 24, "is too long");
    // MOE_NAME_MAX - 1 bytes is the longest allowed.
    name[MOE_NAME_MAX - 1] = '\0';
    snprintf(h, sizeof h, "{\"%s\":{\"dtype\":\"F32\",\"shape\":[6],\"data_offsets\":[0,24]}}", name);
    write_raw(tpath("ok.safetensors"), h, 24);
    struct moe_st_file f;
    open_ok(tpath("ok.safetensors"), &f);
    ck_assert_str_eq(f.e[0].name, name);
    moe_safetensors_close(&f);
}
END_TEST

START_TEST(test_bad_metadata)
{
    expect_raw_fail("{\"__metadata__\":{\"k\":1}," "\"w\":{\"dtype\":\"F32\",\"shape\":[6],\"data_offsets\":[0,24]}}", 24,
                    "__metadata__ value for 'k' is not a string");
    expect_raw_fail("{\"__metadata__\":{\"k\":{\"x\":\"y\"}}}", 0, "__metadata__ value for 'k' is not a string");
    expect_raw_fail("{\"__metadata__\":{\"k\":null}}", 0, "not a string");
    expect_raw_fail("{\"__metadata__\":[\"k\"]}", 0, "__metadata__ is not an object");
    expect_raw_fail("{\"__metadata__\":{\"k\":\"a\",\"k\":\"b\"}}", 0, "__metadata__ key 'k' appears twice");
    expect_raw_fail("{\"__metadata__\":{},\"__metadata__\":{}}", 0, "__metadata__ appears twice");
    // Metadata alone is a valid (empty) checkpoint.
    const char *p = tpath("meta.safetensors");
    write_raw(p, "{\"__metadata__\":{\"k\":\"v\",\"e\":\"\"}}", 0);
    struct moe_st_file f;
    open_ok(p, &f);
    ck_assert_uint_eq(f.n, 0);
    ck_assert_str_eq(moe_safetensors_meta(&f, "k"), "v");
    ck_assert_str_eq(moe_safetensors_meta(&f, "e"), "");
    moe_safetensors_close(&f);
}
END_TEST

START_TEST(test_hostile_name_in_message)
{
    // A control character decoded from a name cannot reach a message: names are cleaned.
    expect_raw_fail("{\"a\\nb\":{\"dtype\":\"BF16\",\"shape\":[6],\"data_offsets\":[0,12]}}", 12, "tensor 'a?b'");
}
END_TEST

// ---------------------------------------------------------------- load_params

// File: a [2,3] F32, b [4] F32.
static void write_ab(const char *path)
{
    float a[6] = {1, 2, 3, 4, 5, 6}, b[4] = {-1, -2, -3, -4};
    struct moe_st_ref r[2] = {
        {.name = "a", .dtype = MOE_F32, .ndim = 2, .shape = {2, 3}, .data = a},
        {.name = "b", .dtype = MOE_F32, .ndim = 1, .shape = {4}, .data = b},
    };
    struct moe_err err = {0};
    ck_assert_int_eq(moe_safetensors_write(path, r, 2, NULL, 0, &err), 0);
}

static void expect_load_fail(const struct moe_st_file *f, struct moe_params *p, int allow_extra, int code,
                             const char *frag1, const char *frag2)
{
    struct moe_err err = {0};
    int rc = moe_safetensors_load_params(f, p, allow_extra, &err);
    ck_assert_msg(rc == code, "expected %d, got %d (%s)", code, rc, err.msg);
    ck_assert_msg(strstr(err.msg, frag1), "message '%s' lacks '%s'", err.msg, frag1);
    if (frag2)
        ck_assert_msg(strstr(err.msg, frag2), "message '%s' lacks '%s'", err.msg, frag2);
    char prefix[1100];
    snprintf(prefix, sizeof prefix, "checkpoint '%s': ", f->path);
    ck_assert_msg(strncmp(err.msg, prefix, strlen(prefix)) == 0, "message '%s' does not start with the file", err.msg);
    // Nothing was copied.
    for (size_t i = 0; i < p->numel; i++)
        ck_assert(p->data[i] == 0.0f);
}

START_TEST(test_load_missing)
{
    const char *path = tpath("ab.safetensors");
    write_ab(path);
    struct moe_st_file f;
    open_ok(path, &f);
    struct moe_params p;
    moe_params_init(&p);
    add(&p, "a", 2, 2, 3, 0);
    add(&p, "b", 1, 4, 0, 0);
    add(&p, "c", 2, 5, 2, 0);
    alloc(&p);
    expect_load_fail(&f, &p, 1, MOE_ESHAPE, "no tensor 'c' (model expects shape [5, 2])", NULL);
    moe_params_release(&p);
    moe_safetensors_close(&f);
}
END_TEST

START_TEST(test_load_shape_mismatch)
{
    const char *path = tpath("ab.safetensors");
    write_ab(path);
    struct moe_st_file f;
    open_ok(path, &f);
    struct moe_params p;
    moe_params_init(&p);
    add(&p, "b", 1, 4, 0, 0);
    add(&p, "a", 2, 3, 2, 0);
    alloc(&p);
    expect_load_fail(&f, &p, 1, MOE_ESHAPE, "tensor 'a' has shape [2, 3]", "model expects [3, 2]");
    moe_params_release(&p);

    moe_params_init(&p);
    add(&p, "a", 3, 2, 3, 1); // same numel, different rank
    alloc(&p);
    expect_load_fail(&f, &p, 1, MOE_ESHAPE, "[2, 3]", "[2, 3, 1]");
    moe_params_release(&p);
    moe_safetensors_close(&f);
}
END_TEST

START_TEST(test_load_extra)
{
    const char *path = tpath("ab.safetensors");
    write_ab(path);
    struct moe_st_file f;
    open_ok(path, &f);
    struct moe_params p;
    moe_params_init(&p);
    add(&p, "a", 2, 2, 3, 0);
    alloc(&p);
    expect_load_fail(&f, &p, 0, MOE_ESHAPE, "tensor 'b' (shape [4] F32) is not a parameter of the model", NULL);
    struct moe_err err = {0};
    ck_assert_int_eq(moe_safetensors_load_params(&f, &p, 1, &err), 0);
    float want[6] = {1, 2, 3, 4, 5, 6};
    ck_assert_int_eq(memcmp(moe_params_data(&p, 0), want, sizeof want), 0);
    moe_params_release(&p);
    moe_safetensors_close(&f);
}
END_TEST

START_TEST(test_load_dtype)
{
    int32_t a[6] = {0};
    struct moe_st_ref r = {.name = "a", .dtype = MOE_I32, .ndim = 2, .shape = {2, 3}, .data = a};
    const char *path = tpath("i32.safetensors");
    struct moe_err err = {0};
    ck_assert_int_eq(moe_safetensors_write(path, &r, 1, NULL, 0, &err), 0);
    struct moe_st_file f;
    open_ok(path, &f);
    struct moe_params p;
    moe_params_init(&p);
    add(&p, "a", 2, 2, 3, 0);
    alloc(&p);
    expect_load_fail(&f, &p, 0, MOE_EFORMAT, "tensor 'a' has dtype I32, expected F32", NULL);
    moe_params_release(&p);

    moe_params_init(&p);
    add(&p, "a", 2, 2, 3, 0); // not allocated
    ck_assert_int_eq(moe_safetensors_load_params(&f, &p, 0, &err), MOE_EINVAL);
    moe_params_release(&p);
    moe_safetensors_close(&f);
}
END_TEST

// ---------------------------------------------------------------- writer checks

START_TEST(test_write_errors)
{
    float v[2] = {1, 2};
    const char *path = tpath("w.safetensors");
    struct moe_err err = {0};
    struct moe_st_ref dup[2] = {
        {.name = "x", .dtype = MOE_F32, .ndim = 1, .shape = {2}, .data = v},
        {.name = "x", .dtype = MOE_F32, .ndim = 1, .shape = {2}, .data = v},
    };
    ck_assert_int_eq(moe_safetensors_write(path, dup, 2, NULL, 0, &err), MOE_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.msg, "tensor name 'x' is given twice"));
    ck_assert_int_eq(access(path, F_OK), -1); // nothing written

    struct moe_st_ref r = {.name = "x", .dtype = (enum moe_dtype)9, .ndim = 1, .shape = {2}, .data = v};
    ck_assert_int_eq(moe_safetensors_write(path, &r, 1, NULL, 0, &err), MOE_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.msg, "unknown dtype 9"));
    r.dtype = MOE_F32;
    r.ndim = 5;
    ck_assert_int_eq(moe_safetensors_write(path, &r, 1, NULL, 0, &err), MOE_EINVAL);
    r.ndim = 1;
    r.data = NULL;
    ck_assert_int_eq(moe_safetensors_write(path, &r, 1, NULL, 0, &err), MOE_EINVAL);
    r.data = v;
    r.name = "__metadata__";
    ck_assert_int_eq(moe_safetensors_write(path, &r, 1, NULL, 0, &err), MOE_EINVAL);
    char longname[MOE_NAME_MAX + 1];
    memset(longname, 'l', MOE_NAME_MAX);
    longname[MOE_NAME_MAX] = '\0';
    r.name = longname;
    ck_assert_int_eq(moe_safetensors_write(path, &r, 1, NULL, 0, &err), MOE_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.msg, "too long"));
    r.name = "x";
    r.shape[0] = (size_t)1 << 50;
    ck_assert_int_eq(moe_safetensors_write(path, &r, 1, NULL, 0, &err), MOE_EINVAL);
    r.shape[0] = 2;
    struct moe_st_meta m[2] = {{"k", "1"}, {"k", "2"}};
    ck_assert_int_eq(moe_safetensors_write(path, &r, 1, m, 2, &err), MOE_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.msg, "metadata key 'k' is given twice"));
    m[1].key = NULL;
    ck_assert_int_eq(moe_safetensors_write(path, &r, 1, m, 2, &err), MOE_EINVAL);
    ck_assert_int_eq(access(path, F_OK), -1);

    ck_assert_int_eq(moe_safetensors_write(tpath("no/such/dir.safetensors"), &r, 1, NULL, 0, &err), MOE_EIO);

    // Unallocated registry.
    struct moe_params p;
    moe_params_init(&p);
    add(&p, "a", 1, 3, 0, 0);
    ck_assert_int_eq(moe_safetensors_write_params(path, &p, NULL, 0, NULL, 0, &err), MOE_EINVAL);
    // An extra ref that collides with a registry name.
    alloc(&p);
    struct moe_st_ref clash = {.name = "a", .dtype = MOE_I32, .ndim = 1, .shape = {2}, .data = v};
    ck_assert_int_eq(moe_safetensors_write_params(path, &p, &clash, 1, NULL, 0, &err), MOE_EINVAL);
    moe_params_release(&p);

    // Destructors and lookups accept NULL and zeroed structs.
    moe_safetensors_close(NULL);
    struct moe_st_file z;
    memset(&z, 0, sizeof z);
    moe_safetensors_close(&z);
    ck_assert_ptr_null(moe_safetensors_find(&z, "x"));
    ck_assert_ptr_null(moe_safetensors_meta(&z, "x"));
    ck_assert_ptr_null(moe_safetensors_find(NULL, "x"));
}
END_TEST

// ---------------------------------------------------------------- truncation / fuzz

START_TEST(test_truncation_sweep)
{
    int32_t ids[3] = {7, 8, 9};
    float w[4] = {0.5f, 1.5f, 2.5f, 3.5f};
    struct moe_st_ref r[2] = {
        {.name = "w", .dtype = MOE_F32, .ndim = 2, .shape = {2, 2}, .data = w},
        {.name = "ids", .dtype = MOE_I32, .ndim = 1, .shape = {3}, .data = ids},
    };
    struct moe_st_meta m = {"kind", "sweep"};
    const char *full = tpath("full.safetensors"), *cut = tpath("cut.safetensors");
    struct moe_err err = {0};
    ck_assert_int_eq(moe_safetensors_write(full, r, 2, &m, 1, &err), 0);
    size_t len;
    unsigned char *b = read_bytes(full, &len);

    for (size_t n = 0; n <= len; n++) {
        write_bytes(cut, b, n);
        struct moe_st_file f;
        int rc = moe_safetensors_open(cut, &f, &err);
        if (n < len) {
            ck_assert_msg(rc == MOE_EFORMAT, "prefix %zu of %zu: rc %d", n, len, rc);
            ck_assert_ptr_null(f.buf);
        } else {
            ck_assert_msg(rc == 0, "%s", err.msg);
            ck_assert_uint_eq(f.n, 2);
            moe_safetensors_close(&f);
        }
    }
    // One byte too many: trailing bytes belong to no tensor.
    unsigned char *longer = malloc(len + 1);
    memcpy(longer, b, len);
    longer[len] = 0;
    write_bytes(cut, longer, len + 1);
    expect_open_fail(cut, MOE_EFORMAT, "belong to no tensor");
    free(longer);

    // Random corruption of 1-3 bytes: open either succeeds with a consistent
    // result or fails with MOE_EFORMAT; never anything else, never a crash.
    unsigned char *c = malloc(len);
    uint64_t x = 0x9e3779b97f4a7c15ull;
    int n_ok = 0;
    for (int it = 0; it < 1500; it++) {
        memcpy(c, b, len);
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        int k = 1 + (int)((x >> 33) % 3);
        for (int j = 0; j < k; j++) {
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            size_t pos = (size_t)((x >> 33) % len);
            // Mostly the header (where the structure is), sometimes anywhere.
            if (j == 0 && len > 8 + 16)
                pos = (size_t)((x >> 33) % (len - 16));
            c[pos] = (unsigned char)(x >> 13);
        }
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        size_t n = len - (size_t)((x >> 33) % 4 == 0 ? (x >> 40) % len : 0);
        write_bytes(cut, c, n);
        struct moe_st_file f;
        int rc = moe_safetensors_open(cut, &f, &err);
        ck_assert_msg(rc == 0 || rc == MOE_EFORMAT, "iteration %d: rc %d (%s)", it, rc, err.msg);
        if (rc == 0) {
            n_ok++;
            size_t data = f.size - 8 - (size_t)le64(f.buf);
            for (size_t i = 0; i < f.n; i++) {
                ck_assert_uint_le(f.e[i].end, data);
                ck_assert_uint_le(f.e[i].begin, f.e[i].end);
            }
            moe_safetensors_close(&f);
        } else {
            ck_assert_ptr_null(strchr(err.msg, '\n'));
        }
    }
    ck_assert_int_gt(n_ok, 0); // some flips hit only tensor data
    free(c);
    free(b);
}
END_TEST

// ---------------------------------------------------------------- tensors filled while written

START_TEST(test_crc_combine)
{
    unsigned char buf[1000];
    for (size_t i = 0; i < sizeof buf; i++)
        buf[i] = (unsigned char)(i * 7 + 3);
    for (size_t cut = 0; cut <= sizeof buf; cut += 111) {
        uint32_t a = moe_crc32(0, buf, cut), b = moe_crc32(0, buf + cut, sizeof buf - cut);
        ck_assert_uint_eq(moe_crc32_combine(a, b, sizeof buf - cut), moe_crc32(0, buf, sizeof buf));
        ck_assert_uint_eq(moe_crc32(a, buf + cut, sizeof buf - cut), moe_crc32(0, buf, sizeof buf));
    }
}
END_TEST

// A fill serving a float array, counting the bytes asked for; fails at byte fail_at (if set).
struct fill_src {
    const float *v;
    size_t asked, next, fail_at;
    int in_order;
};

static int src_fill(void *ctx, size_t off, void *buf, size_t n, struct moe_err *err)
{
    struct fill_src *s = ctx;
    s->in_order &= off == s->next;
    s->next = off + n;
    s->asked += n;
    memcpy(buf, (const unsigned char *)s->v + off, n);
    if (s->fail_at && off <= s->fail_at && s->fail_at < off + n)
        return moe_error(err, MOE_EDIST, "the parts of '%s' did not arrive", "big");
    return 0;
}

START_TEST(test_fill_refs)
{
    enum { BIG = 7 * 100003 }; // floats: the writer asks for it in several chunks
    float *big = malloc(BIG * sizeof *big);
    ck_assert_ptr_nonnull(big);
    for (size_t i = 0; i < BIG; i++)
        big[i] = (float)i * 0.25f - 3.0f;
    static const float small[5] = { 1, -2, 3, -4, 5 };
    struct moe_st_ref plain[2] = {
        { .name = "big", .dtype = MOE_F32, .ndim = 2, .shape = { 7, BIG / 7 }, .data = big },
        { .name = "small", .dtype = MOE_F32, .ndim = 1, .shape = { 5 }, .data = small },
    };
    struct moe_err err = { 0 };
    ck_assert_msg(moe_safetensors_write(tpath("plain.safetensors"), plain, 2, NULL, 0, &err) == 0, "%s", err.msg);
    // the same tensors, the big one from a fill: the same bytes
    struct fill_src src = { .v = big, .in_order = 1 };
    struct moe_st_ref filled[2] = { plain[0], plain[1] };
    filled[0].data = NULL;
    filled[0].fill = src_fill;
    filled[0].ctx = &src;
    filled[0].crc = moe_crc32(0, big, BIG * sizeof *big);
    ck_assert_msg(moe_safetensors_write(tpath("filled.safetensors"), filled, 2, NULL, 0, &err) == 0, "%s", err.msg);
    ck_assert_uint_eq(src.asked, BIG * sizeof *big);
    ck_assert(src.in_order);
    size_t la, lb;
    unsigned char *a = read_bytes(tpath("plain.safetensors"), &la), *b = read_bytes(tpath("filled.safetensors"), &lb);
    ck_assert_uint_eq(la, lb);
    ck_assert_int_eq(memcmp(a, b, la), 0);
    free(a);
    free(b);
    // a wrong CRC is what the reader catches
    filled[0].crc ^= 1;
    src = (struct fill_src){ .v = big, .in_order = 1 };
    ck_assert_int_eq(moe_safetensors_write(tpath("badcrc.safetensors"), filled, 2, NULL, 0, &err), 0);
    expect_open_fail(tpath("badcrc.safetensors"), MOE_EFORMAT, "big");
    // a fill that fails: its message, no file, and still asked for every byte
    filled[0].crc ^= 1;
    src = (struct fill_src){ .v = big, .in_order = 1, .fail_at = (1u << 20) + 8 };
    ck_assert_int_eq(moe_safetensors_write(tpath("failed.safetensors"), filled, 2, NULL, 0, &err), MOE_EDIST);
    ck_assert_ptr_nonnull(strstr(err.msg, "did not arrive"));
    ck_assert_uint_eq(src.asked, BIG * sizeof *big);
    ck_assert_int_ne(access(tpath("failed.safetensors"), F_OK), 0);
    DIR *d = opendir(tmpdir);
    struct dirent *de;
    while ((de = readdir(d)))
        ck_assert_ptr_null(strstr(de->d_name, ".tmp."));
    closedir(d);
    free(big);
}
END_TEST

// A registry holding part of its expert tensors (expert parallelism,
// core/params.h): initialised, loaded and written as the whole one.
static void expert_registry(struct moe_params *p, int rank, int size)
{
    moe_params_init(p);
    p->shard_rank = rank;
    p->shard_size = size;
    add(p, "embed.weight", 2, 5, 3, 0);
    add(p, "layers.0.moe.experts.w1", 3, 4, 3, 5);
    moe_params_mark_experts(p, 1);
    add(p, "layers.0.moe.router.weight", 2, 4, 5, 0);
    add(p, "layers.0.moe.experts.w2", 3, 4, 5, 3);
    moe_params_mark_experts(p, 3);
    alloc(p);
    for (size_t i = 0; i < p->n; i++)
        moe_init_uniform(p, (int)i, 11, 1.0f);
}

static int whole_from(void *ctx, size_t i, size_t off, float *buf, size_t n, struct moe_err *err)
{
    (void)err;
    const struct moe_params *full = ctx;
    memcpy(buf, moe_params_data(full, (int)i) + off, n * sizeof *buf);
    return 0;
}

START_TEST(test_sharded_registry)
{
    struct moe_params full, part;
    expert_registry(&full, 0, 1);
    const char *path = tpath("whole.safetensors");
    struct moe_err err = { 0 };
    ck_assert_int_eq(moe_safetensors_write_params(path, &full, NULL, 0, NULL, 0, &err), 0);
    size_t lw;
    unsigned char *whole = read_bytes(path, &lw);
    uint32_t crc[4];
    for (size_t i = 0; i < full.n; i++)
        crc[i] = moe_crc32(0, moe_params_data(&full, (int)i), full.t[i].numel * sizeof(float));
    struct moe_st_file f;
    open_ok(path, &f);
    for (int r = 0; r < 2; r++) {
        expert_registry(&part, r, 2);
        ck_assert_uint_eq(part.full_numel, full.numel);
        ck_assert_uint_lt(part.numel, full.numel);
        for (size_t i = 0; i < part.n; i++) {
            const struct moe_tensor *t = &part.t[i];
            size_t first = t->experts ? (size_t)r * 2 * (t->numel / 2) : 0;
            ck_assert_uint_eq(t->numel, t->experts ? full.t[i].numel / 2 : full.t[i].numel);
            ck_assert_uint_eq(t->full_offset, full.t[i].offset);
            // this process's experts are the same draws as the whole tensor's
            ck_assert_int_eq(memcmp(moe_params_data(&part, (int)i), moe_params_data(&full, (int)i) + first,
                                    t->numel * sizeof(float)), 0);
        }
        float *local = calloc(part.numel, sizeof *local);
        moe_params_from_full(&part, full.data, local);
        ck_assert_int_eq(memcmp(local, part.data, part.numel * sizeof *local), 0);
        free(local);
        // the file's tensors, this process's part
        memset(part.data, 0, part.numel * sizeof(float));
        ck_assert_int_eq(moe_safetensors_load_params(&f, &part, 0, &err), 0);
        for (size_t i = 0; i < part.n; i++) {
            size_t first = part.t[i].experts ? (size_t)r * part.t[i].numel : 0;
            ck_assert_int_eq(memcmp(moe_params_data(&part, (int)i), moe_params_data(&full, (int)i) + first,
                                    part.t[i].numel * sizeof(float)), 0);
        }
        // written only with the whole tensors from somewhere, then the same bytes
        const char *out = tpath("part.safetensors");
        ck_assert_int_eq(moe_safetensors_write_params(out, &part, NULL, 0, NULL, 0, &err), MOE_EINVAL);
        ck_assert_ptr_nonnull(strstr(err.msg, "only this process's experts"));
        struct moe_params_whole w = { .fill = whole_from, .ctx = &full, .crc = crc };
        part.whole = &w;
        ck_assert_msg(moe_safetensors_write_params(out, &part, NULL, 0, NULL, 0, &err) == 0, "%s", err.msg);
        size_t lp;
        unsigned char *bytes = read_bytes(out, &lp);
        ck_assert_uint_eq(lp, lw);
        ck_assert_int_eq(memcmp(bytes, whole, lw), 0);
        free(bytes);
        moe_params_release(&part);
    }
    moe_safetensors_close(&f);
    free(whole);
    moe_params_release(&full);
    // experts that cannot be shared out evenly
    moe_params_init(&part);
    part.shard_size = 3;
    add(&part, "experts.w1", 3, 4, 2, 2);
    moe_params_mark_experts(&part, 0);
    ck_assert_int_eq(moe_params_alloc(&part, &err), MOE_ECONFIG);
    ck_assert_ptr_nonnull(strstr(err.msg, "cannot be shared out evenly over 3"));
    moe_params_release(&part);
}
END_TEST

// A sharded registry's write that fails for memory frees what it had: the
// table of whole-tensor fills is allocated beside the ref array, and here the
// ref array cannot be had (n_extra near SIZE_MAX / sizeof ref). The registry is
// only as real as the writer's checks before that allocation need (n, data,
// shard_size, whole); n is large enough that the table (16 bytes a tensor) is
// seen by mallinfo2. Not under a sanitizer's or valgrind's allocator, which
// mallinfo2 does not see (and ASan aborts on the huge calloc).
static size_t heap_in_use(void)
{
    struct mallinfo2 mi = mallinfo2();
    return mi.uordblks + mi.hblkhd;
}

START_TEST(test_write_params_oom)
{
    size_t before = heap_in_use();
    void *volatile probe = malloc(1 << 20);
    int measurable = heap_in_use() >= before + (1 << 20);
    free(probe);
    if (!measurable)
        return;
    float x = 0;
    struct moe_params_whole w = { .fill = whole_from, .ctx = NULL, .crc = NULL };
    struct moe_params p = { .n = 100000, .data = &x, .shard_rank = 0, .shard_size = 2, .whole = &w };
    struct moe_st_ref r = { .name = "x", .dtype = MOE_F32, .ndim = 1, .shape = { 1 }, .data = &x };
    struct moe_err err = { 0 };
    before = heap_in_use();
    int rc = moe_safetensors_write_params(tpath("oom.safetensors"), &p, &r,
                                          SIZE_MAX / sizeof(struct moe_st_ref) - p.n - 1, NULL, 0, &err);
    size_t after = heap_in_use();
    ck_assert_int_eq(rc, MOE_ENOMEM);
    ck_assert_ptr_nonnull(strstr(err.msg, "out of memory"));
    ck_assert_msg(after <= before, "%zu bytes leaked", after - before);
}
END_TEST

static Suite *safetensors_suite(void)
{
    Suite *s = suite_create("safetensors");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 30);
    tcase_add_unchecked_fixture(tc, setup, teardown); // runs in the parent: cleans up even after a failure
    tcase_add_test(tc, test_roundtrip);
    tcase_add_test(tc, test_empty_file);
    tcase_add_test(tc, test_deterministic);
    tcase_add_test(tc, test_alignment);
    tcase_add_test(tc, test_unaligned_data);
    tcase_add_test(tc, test_valid_raw);
    tcase_add_test(tc, test_missing_file);
    tcase_add_test(tc, test_too_short);
    tcase_add_test(tc, test_header_past_end);
    tcase_add_test(tc, test_truncated_data);
    tcase_add_test(tc, test_not_json);
    tcase_add_test(tc, test_bad_bytes);
    tcase_add_test(tc, test_unknown_dtype);
    tcase_add_test(tc, test_i8);
    tcase_add_test(tc, test_entry_keys);
    tcase_add_test(tc, test_size_mismatch);
    tcase_add_test(tc, test_offsets);
    tcase_add_test(tc, test_overlap_and_holes);
    tcase_add_test(tc, test_duplicate_name);
    tcase_add_test(tc, test_bad_shape);
    tcase_add_test(tc, test_long_name);
    tcase_add_test(tc, test_bad_metadata);
    tcase_add_test(tc, test_hostile_name_in_message);
    tcase_add_test(tc, test_load_missing);
    tcase_add_test(tc, test_load_shape_mismatch);
    tcase_add_test(tc, test_load_extra);
    tcase_add_test(tc, test_load_dtype);
    tcase_add_test(tc, test_write_errors);
    tcase_add_test(tc, test_truncation_sweep);
    tcase_add_test(tc, test_checksums);
    tcase_add_test(tc, test_crc_combine);
    tcase_add_test(tc, test_fill_refs);
    tcase_add_test(tc, test_sharded_registry);
    tcase_add_test(tc, test_write_params_oom);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return moe_test_run(safetensors_suite());
}
