// test_data.c: unit tests for the data readers and generators (lib/io/dataset.c,
// idx.c, table.c, synth.c), and for the data.* keys read into their typed
// settings (train/data.c moe_data_cfg_parse). Every fixture is written at run
// time under a mkdtemp directory; the installed Fashion-MNIST copy is used by
// one test that skips when it is absent. Not a test of training or of the CLI.
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <check.h>
#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "core/rng.h"
#include "io/atomic.h"
#include "io/config.h"
#include "io/csv_writer.h"
#include "io/dataset.h"
#include "train/train.h"
#include "testutil.h"

static char g_dir[64];

// ---- fixtures ----

static void fixture_path(char *out, size_t len, const char *name)
{
    snprintf(out, len, "%s/%s", g_dir, name);
}

static void write_bytes(const char *path, const void *buf, size_t len, int gz)
{
    if (gz) {
        gzFile f = gzopen(path, "wb");
        ck_assert_ptr_nonnull(f);
        if (len)
            ck_assert_int_eq(gzwrite(f, buf, (unsigned)len), (int)len);
        ck_assert_int_eq(gzclose(f), Z_OK);
    } else {
        FILE *f = fopen(path, "wb");
        ck_assert_ptr_nonnull(f);
        ck_assert_uint_eq(fwrite(buf, 1, len, f), len);
        ck_assert_int_eq(fclose(f), 0);
    }
}

static const char *write_text(const char *name, const char *text)
{
    static char path[256];
    fixture_path(path, sizeof path, name);
    write_bytes(path, text, strlen(text), 0);
    return path;
}

// An IDX file: magic (0, 0, type, ndim), big-endian dims, then n_data bytes
// (which need not match the dims, to make broken files).
static void write_idx(const char *path, int gz, int type, int ndim, const uint32_t *dims, const uint8_t *data,
                      size_t n_data)
{
    size_t len = 4 + 4 * (size_t)ndim + n_data;
    uint8_t *buf = malloc(len);
    ck_assert_ptr_nonnull(buf);
    buf[0] = 0;
    buf[1] = 0;
    buf[2] = (uint8_t)type;
    buf[3] = (uint8_t)ndim;
    for (int k = 0; k < ndim; k++) {
        buf[4 + 4 * k] = (uint8_t)(dims[k] >> 24);
        buf[5 + 4 * k] = (uint8_t)(dims[k] >> 16);
        buf[6 + 4 * k] = (uint8_t)(dims[k] >> 8);
        buf[7 + 4 * k] = (uint8_t)dims[k];
    }
    if (n_data)
        memcpy(buf + 4 + 4 * ndim, data, n_data);
    write_bytes(path, buf, len, gz);
    free(buf);
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

// ---- IDX ----

static const uint8_t k_pixels[12] = { 0, 255, 1, 2, 3, 4, 5, 6, 7, 8, 9, 128 };

static void check_idx_round_trip(int gz)
{
    char path[256];
    fixture_path(path, sizeof path, gz ? "rt.idx3.gz" : "rt.idx3");
    uint32_t dims[3] = { 3, 2, 2 };
    write_idx(path, gz, 0x08, 3, dims, k_pixels, sizeof k_pixels);
    struct moe_idx m;
    struct moe_err err = { 0 };
    ck_assert_int_eq(moe_idx_read(path, &m, &err), 0);
    ck_assert_int_eq(m.ndim, 3);
    ck_assert_uint_eq(m.dims[0], 3);
    ck_assert_uint_eq(m.dims[1], 2);
    ck_assert_uint_eq(m.dims[2], 2);
    ck_assert_uint_eq(m.count, 12);
    ck_assert_mem_eq(m.data, k_pixels, 12);
    moe_idx_release(&m);
    ck_assert_ptr_null(m.data);
    moe_idx_release(&m); // twice is harmless
}

START_TEST(test_idx_round_trip_raw) { check_idx_round_trip(0); }
END_TEST

START_TEST(test_idx_round_trip_gz) { check_idx_round_trip(1); }
END_TEST

START_TEST(test_idx_truncated)
{
    char path[256];
    uint32_t dims[3] = { 3, 2, 2 };
    struct moe_idx m;
    struct moe_err err = { 0 };
    for (int gz = 0; gz < 2; gz++) {
        fixture_path(path, sizeof path, gz ? "short.idx.gz" : "short.idx");
        write_idx(path, gz, 0x08, 3, dims, k_pixels, 7);
        ck_assert_int_eq(moe_idx_read(path, &m, &err), MOE_EFORMAT);
        ck_assert_int_eq(err.code, MOE_EFORMAT);
        char want[400];
        snprintf(want, sizeof want, "idx '%s': truncated: expected 12 bytes of data, got 7", path);
        ck_assert_str_eq(err.msg, want);
        ck_assert_ptr_null(m.data);
    }
    // Header cut short.
    fixture_path(path, sizeof path, "short-head.idx");
    write_bytes(path, "\0\0\x08\x03\0\0", 6, 0);
    ck_assert_int_eq(moe_idx_read(path, &m, &err), MOE_EFORMAT);
    ck_assert_ptr_nonnull(strstr(err.msg, "truncated"));
    // A gzip stream cut in the middle.
    uint8_t big[4096];
    for (size_t i = 0; i < sizeof big; i++)
        big[i] = (uint8_t)(i * 2654435761u >> 13);
    uint32_t d1[1] = { sizeof big };
    fixture_path(path, sizeof path, "cut.idx.gz");
    write_idx(path, 1, 0x08, 1, d1, big, sizeof big);
    FILE *f = fopen(path, "rb");
    ck_assert_ptr_nonnull(f);
    uint8_t gzbuf[8192];
    size_t gzlen = fread(gzbuf, 1, sizeof gzbuf, f);
    fclose(f);
    ck_assert_uint_gt(gzlen, 100);
    write_bytes(path, gzbuf, gzlen / 2, 0);
    ck_assert_int_eq(moe_idx_read(path, &m, &err), MOE_EFORMAT);
    ck_assert_ptr_nonnull(strstr(err.msg, "truncated"));
}
END_TEST

START_TEST(test_idx_bad_header)
{
    char path[256];
    struct moe_idx m;
    struct moe_err err = { 0 };
    fixture_path(path, sizeof path, "bad.idx");
    // Bad magic.
    write_bytes(path, "PK\x03\x04\0\0\0\0", 8, 0);
    ck_assert_int_eq(moe_idx_read(path, &m, &err), MOE_EFORMAT);
    ck_assert_ptr_nonnull(strstr(err.msg, "magic"));
    ck_assert_ptr_nonnull(strstr(err.msg, path));
    // Unsupported type (0x0D = float).
    uint32_t dims[2] = { 2, 2 };
    write_idx(path, 0, 0x0D, 2, dims, k_pixels, 4);
    ck_assert_int_eq(moe_idx_read(path, &m, &err), MOE_EFORMAT);
    ck_assert_ptr_nonnull(strstr(err.msg, "type 0x0d"));
    // ndim 0 and 5.
    write_idx(path, 0, 0x08, 0, dims, k_pixels, 4);
    ck_assert_int_eq(moe_idx_read(path, &m, &err), MOE_EFORMAT);
    ck_assert_ptr_nonnull(strstr(err.msg, "dimensions"));
    uint32_t dims5[5] = { 1, 1, 1, 1, 1 };
    write_idx(path, 0, 0x08, 5, dims5, k_pixels, 1);
    ck_assert_int_eq(moe_idx_read(path, &m, &err), MOE_EFORMAT);
    // A zero dimension.
    uint32_t dz[2] = { 2, 0 };
    write_idx(path, 0, 0x08, 2, dz, k_pixels, 0);
    ck_assert_int_eq(moe_idx_read(path, &m, &err), MOE_EFORMAT);
    ck_assert_ptr_nonnull(strstr(err.msg, "is 0"));
    // An absurd size (2^32-1 cubed).
    uint32_t huge[3] = { 0xFFFFFFFFu, 0xFFFFFFFFu, 0xFFFFFFFFu };
    write_idx(path, 0, 0x08, 3, huge, k_pixels, 4);
    ck_assert_int_eq(moe_idx_read(path, &m, &err), MOE_EFORMAT);
    ck_assert_ptr_nonnull(strstr(err.msg, "implausible"));
    // Trailing bytes after the data.
    write_idx(path, 0, 0x08, 2, dims, k_pixels, 6);
    ck_assert_int_eq(moe_idx_read(path, &m, &err), MOE_EFORMAT);
    ck_assert_ptr_nonnull(strstr(err.msg, "2 unexpected bytes"));
    ck_assert_ptr_null(m.data);
    // Empty file.
    write_bytes(path, "", 0, 0);
    ck_assert_int_eq(moe_idx_read(path, &m, &err), MOE_EFORMAT);
}
END_TEST

START_TEST(test_idx_missing)
{
    char path[256];
    struct moe_idx m;
    struct moe_err err = { 0 };
    fixture_path(path, sizeof path, "does-not-exist.idx");
    ck_assert_int_eq(moe_idx_read(path, &m, &err), MOE_EIO);
    ck_assert_ptr_nonnull(strstr(err.msg, "does-not-exist.idx"));
    struct moe_dataset d;
    ck_assert_int_eq(moe_dataset_from_idx(path, path, 0, &d, &err), MOE_EIO);
    ck_assert_ptr_null(d.x);
}
END_TEST

START_TEST(test_idx_dataset)
{
    char img[256], lab[256];
    fixture_path(img, sizeof img, "img.idx3.gz");
    fixture_path(lab, sizeof lab, "lab.idx1");
    uint32_t di[3] = { 2, 2, 3 }, dl[1] = { 2 };
    const uint8_t labels[2] = { 7, 3 };
    write_idx(img, 1, 0x08, 3, di, k_pixels, 12);
    write_idx(lab, 0, 0x08, 1, dl, labels, 2);
    struct moe_dataset d;
    struct moe_err err = { 0 };
    ck_assert_int_eq(moe_dataset_from_idx(img, lab, 0, &d, &err), 0);
    ck_assert_int_eq(d.task, MOE_TASK_CLASSIFICATION);
    ck_assert_uint_eq(d.n, 2);
    ck_assert_uint_eq(d.n_in, 6);
    ck_assert_uint_eq(d.n_out, 10);
    ck_assert_ptr_null(d.y);
    ck_assert_ptr_null(d.group);
    for (size_t i = 0; i < 12; i++)
        ck_assert_float_eq(d.x[i], (float)k_pixels[i] / 255.0f);
    ck_assert_float_eq(d.x[1], 1.0f);
    ck_assert_int_eq(d.label[0], 7);
    ck_assert_int_eq(d.label[1], 3);
    ck_assert_str_eq(d.class_names[0], "0");
    ck_assert_str_eq(d.class_names[9], "9");
    moe_dataset_release(&d);

    // limit keeps the first rows.
    ck_assert_int_eq(moe_dataset_from_idx(img, lab, 1, &d, &err), 0);
    ck_assert_uint_eq(d.n, 1);
    ck_assert_int_eq(d.label[0], 7);
    moe_dataset_release(&d);

    // A label above 9 widens n_out.
    const uint8_t wide[2] = { 1, 12 };
    write_idx(lab, 0, 0x08, 1, dl, wide, 2);
    ck_assert_int_eq(moe_dataset_from_idx(img, lab, 0, &d, &err), 0);
    ck_assert_uint_eq(d.n_out, 13);
    ck_assert_str_eq(d.class_names[12], "12");
    moe_dataset_release(&d);

    // Labels passed as images: wrong rank.
    ck_assert_int_eq(moe_dataset_from_idx(lab, lab, 0, &d, &err), MOE_EFORMAT);
    ck_assert_ptr_nonnull(strstr(err.msg, "expected 3"));
}
END_TEST

START_TEST(test_idx_count_mismatch)
{
    char img[256], lab[256];
    fixture_path(img, sizeof img, "img4.idx3");
    fixture_path(lab, sizeof lab, "lab3.idx1");
    uint32_t di[3] = { 4, 1, 3 }, dl[1] = { 3 };
    write_idx(img, 0, 0x08, 3, di, k_pixels, 12);
    write_idx(lab, 0, 0x08, 1, dl, k_pixels, 3);
    struct moe_dataset d;
    struct moe_err err = { 0 };
    ck_assert_int_eq(moe_dataset_from_idx(img, lab, 0, &d, &err), MOE_EFORMAT);
    ck_assert_ptr_nonnull(strstr(err.msg, img));
    ck_assert_ptr_nonnull(strstr(err.msg, lab));
    ck_assert_ptr_nonnull(strstr(err.msg, "4 images"));
    ck_assert_ptr_nonnull(strstr(err.msg, "3 labels"));
    ck_assert_ptr_null(d.x);
}
END_TEST

// data.idx.classes: only the rows with a listed label, in file order, with
// their pixels; the limit counts kept rows; n_out stays the file's.
START_TEST(test_idx_classes)
{
    char img[256], lab[256];
    fixture_path(img, sizeof img, "cls.idx3");
    fixture_path(lab, sizeof lab, "cls.idx1");
    uint32_t di[3] = { 6, 1, 2 }, dl[1] = { 6 };
    const uint8_t labels[6] = { 3, 0, 3, 1, 5, 3 };
    write_idx(img, 0, 0x08, 3, di, k_pixels, 12);
    write_idx(lab, 0, 0x08, 1, dl, labels, 6);
    struct moe_dataset d;
    struct moe_err err = { 0 };
    const int32_t keep[3] = { 5, 3, 3 }; // order and repeats do not matter
    ck_assert_int_eq(moe_dataset_from_idx_ex(img, lab, 0, keep, 3, &d, &err), 0);
    const size_t rows[4] = { 0, 2, 4, 5 };
    ck_assert_uint_eq(d.n, 4);
    ck_assert_uint_eq(d.n_in, 2);
    ck_assert_uint_eq(d.n_out, 10);
    for (size_t k = 0; k < 4; k++) {
        ck_assert_int_eq(d.label[k], labels[rows[k]]);
        for (size_t j = 0; j < 2; j++)
            ck_assert_float_eq(d.x[k * 2 + j], (float)k_pixels[rows[k] * 2 + j] / 255.0f);
    }
    ck_assert_str_eq(d.class_names[9], "9");
    moe_dataset_release(&d);

    // The limit applies after the filter: the first 2 rows labelled 3 or 5.
    ck_assert_int_eq(moe_dataset_from_idx_ex(img, lab, 2, keep, 3, &d, &err), 0);
    ck_assert_uint_eq(d.n, 2);
    ck_assert_float_eq(d.x[2], (float)k_pixels[4] / 255.0f);
    moe_dataset_release(&d);

    // No class listed: every row, as moe_dataset_from_idx.
    ck_assert_int_eq(moe_dataset_from_idx_ex(img, lab, 0, NULL, 0, &d, &err), 0);
    ck_assert_uint_eq(d.n, 6);
    moe_dataset_release(&d);

    // A class no row has: an empty set, for the caller to judge.
    const int32_t absent = 7;
    ck_assert_int_eq(moe_dataset_from_idx_ex(img, lab, 0, &absent, 1, &d, &err), 0);
    ck_assert_uint_eq(d.n, 0);
    ck_assert_uint_eq(d.n_out, 10);
    moe_dataset_release(&d);

    // A class the labels cannot hold.
    const int32_t bad[2] = { 1, 10 };
    ck_assert_int_eq(moe_dataset_from_idx_ex(img, lab, 0, bad, 2, &d, &err), MOE_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.msg, "class 10 is outside [0, 10)"));
    ck_assert_ptr_nonnull(strstr(err.msg, lab));
    ck_assert_ptr_null(d.x);
    const int32_t negative = -1;
    ck_assert_int_eq(moe_dataset_from_idx_ex(img, lab, 0, &negative, 1, &d, &err), MOE_EINVAL);
}
END_TEST

START_TEST(test_idx_fashion_mnist)
{
    const char *img = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz";
    const char *lab = "/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz";
    if (access(img, R_OK) != 0 || access(lab, R_OK) != 0)
        return; // not installed: nothing to check
    struct moe_dataset d;
    struct moe_err err = { 0 };
    ck_assert_msg(moe_dataset_from_idx(img, lab, 0, &d, &err) == 0, "%s", err.msg);
    ck_assert_uint_eq(d.n, 10000);
    ck_assert_uint_eq(d.n_in, 784);
    ck_assert_uint_eq(d.n_out, 10);
    size_t count[10] = { 0 };
    for (size_t i = 0; i < d.n; i++) {
        ck_assert(d.label[i] >= 0 && d.label[i] < 10);
        count[d.label[i]]++;
    }
    for (int c = 0; c < 10; c++)
        ck_assert_uint_eq(count[c], 1000);
    for (size_t i = 0; i < d.n * d.n_in; i++)
        ck_assert(d.x[i] >= 0.0f && d.x[i] <= 1.0f);
    moe_dataset_release(&d);

    // Classes 5-9: their 5000 rows, and still 10 outputs.
    const int32_t upper[5] = { 5, 6, 7, 8, 9 };
    ck_assert_msg(moe_dataset_from_idx_ex(img, lab, 0, upper, 5, &d, &err) == 0, "%s", err.msg);
    ck_assert_uint_eq(d.n, 5000);
    ck_assert_uint_eq(d.n_out, 10);
    for (size_t i = 0; i < d.n; i++)
        ck_assert(d.label[i] >= 5 && d.label[i] < 10);
    moe_dataset_release(&d);
}
END_TEST

// ---- tables ----

// Same columns as the Peterson & Barney (1952) vowel table.
static const char k_pb[] = "Type\tSex\tSpeaker\tVowel\tIPA\tF0\tF1\tF2\tF3\n"
                           "m\tm\t1\tiy\ti\t160\t240\t2280\t2850\n"
                           "m\tm\t1\tih\t\xc9\xaa\t186\t390\t2080\t2650\n"
                           "m\tm\t1\teh\t\xc9\x9b\t203\t460\t1780\t2500\n"
                           "m\tm\t1\taa\t\xc9\x91\t130\t690\t1060\t2380\n"
                           "m\tm\t2\tah\t\xca\x8c\t140\t620\t1200\t2550\n"
                           "m\tm\t2\tiy\ti\t170\t270\t2300\t2900\n"
                           "w\tf\t3\tih\t\xc9\xaa\t230\t430\t2480\t3070\n"
                           "w\tf\t3\taa\t\xc9\x91\t220\t850\t1220\t2810\n"
                           "c\tm\t4\tiy\ti\t260\t300\t3100\t3600\n"
                           "w\tf\t5\tah\t\xca\x8c\t210\t760\t1400\t2800\n";

static const char *const k_formants[] = { "F0", "F1", "F2", "F3" };
static const char *const k_vowel[] = { "Vowel" };
static const char *const k_four[] = { "iy", "ih", "aa", "ah" };

static struct moe_table_spec pb_spec(const char *path)
{
    struct moe_table_spec s = { 0 };
    s.path = path;
    s.features = k_formants;
    s.n_features = 4;
    s.targets = k_vowel;
    s.n_targets = 1;
    s.task = MOE_TASK_CLASSIFICATION;
    return s;
}

START_TEST(test_tsv_classes_where_split)
{
    const char *path = write_text("pb52.tsv", k_pb);
    struct moe_table_spec s = pb_spec(path);
    const char *where[] = { "Type=m|w" };
    s.classes = k_four;
    s.n_classes = 4;
    s.where = where;
    s.n_where = 1;
    s.split_column = "Speaker";
    s.train_range[0] = 1;
    s.train_range[1] = 2;
    s.test_range[0] = 3;
    s.test_range[1] = 3;
    struct moe_dataset tr, te;
    struct moe_err err = { 0 };
    ck_assert_msg(moe_table_read(&s, &tr, &te, &err) == 0, "%s", err.msg);
    // Train: speakers 1-2 minus "eh"; test: speaker 3; "c" and speaker 5 dropped.
    ck_assert_int_eq(tr.task, MOE_TASK_CLASSIFICATION);
    ck_assert_uint_eq(tr.n, 5);
    ck_assert_uint_eq(te.n, 2);
    ck_assert_uint_eq(tr.n_in, 4);
    ck_assert_uint_eq(tr.n_out, 4);
    ck_assert_uint_eq(te.n_out, 4);
    const int32_t want_tr[5] = { 0, 1, 2, 3, 0 }, want_te[2] = { 1, 2 };
    ck_assert_mem_eq(tr.label, want_tr, sizeof want_tr);
    ck_assert_mem_eq(te.label, want_te, sizeof want_te);
    ck_assert_float_eq(tr.x[0], 160.0f);
    ck_assert_float_eq(tr.x[3], 2850.0f);
    ck_assert_float_eq(tr.x[2 * 4 + 1], 690.0f); // third train row is "aa" of speaker 1
    ck_assert_float_eq(te.x[4 + 3], 2810.0f);
    ck_assert_ptr_null(tr.y);
    ck_assert_str_eq(tr.class_names[2], "aa");
    ck_assert_str_eq(te.class_names[3], "ah");
    ck_assert_str_eq(tr.feature_names[0], "F0");
    ck_assert_str_eq(te.feature_names[3], "F3");
    moe_dataset_release(&tr);
    moe_dataset_release(&te);

    // Without a class list: every vowel, sorted, shared by both splits.
    s.classes = NULL;
    s.n_classes = 0;
    s.where = NULL;
    s.n_where = 0;
    s.train_range[1] = 1;
    s.test_range[0] = 4;
    s.test_range[1] = 5;
    ck_assert_msg(moe_table_read(&s, &tr, &te, &err) == 0, "%s", err.msg);
    ck_assert_uint_eq(tr.n, 4);
    ck_assert_uint_eq(te.n, 2);
    ck_assert_uint_eq(tr.n_out, 5);
    const char *sorted[5] = { "aa", "ah", "eh", "ih", "iy" };
    for (int k = 0; k < 5; k++) {
        ck_assert_str_eq(tr.class_names[k], sorted[k]);
        ck_assert_str_eq(te.class_names[k], sorted[k]);
    }
    const int32_t want_tr2[4] = { 4, 3, 2, 0 }, want_te2[2] = { 4, 1 };
    ck_assert_mem_eq(tr.label, want_tr2, sizeof want_tr2);
    ck_assert_mem_eq(te.label, want_te2, sizeof want_te2);
    moe_dataset_release(&tr);
    moe_dataset_release(&te);

    // Overlapping ranges are refused.
    s.test_range[0] = 1;
    ck_assert_int_eq(moe_table_read(&s, &tr, &te, &err), MOE_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.msg, "overlap"));
}
END_TEST

static size_t count_rows(const char *const *where, size_t n_where)
{
    const char *path = write_text("pb-where.tsv", k_pb);
    struct moe_table_spec s = pb_spec(path);
    s.where = where;
    s.n_where = n_where;
    struct moe_dataset tr, te;
    struct moe_err err = { 0 };
    ck_assert_msg(moe_table_read(&s, &tr, &te, &err) == 0, "%s", err.msg);
    ck_assert_uint_eq(te.n, 0);
    size_t n = tr.n;
    moe_dataset_release(&tr);
    moe_dataset_release(&te);
    return n;
}

START_TEST(test_where_filters)
{
    const char *a[] = { "F1<=500", "Sex!=f" };
    ck_assert_uint_eq(count_rows(a, 2), 5);
    const char *b[] = { "F0>200", "F0<250" };
    ck_assert_uint_eq(count_rows(b, 2), 4);
    const char *c[] = { "F0>=210", "F0 < 230" };
    ck_assert_uint_eq(count_rows(c, 2), 2);
    const char *d[] = { "Vowel!=iy|ih|aa" };
    ck_assert_uint_eq(count_rows(d, 1), 3);
    const char *e[] = { "Speaker=3" };
    ck_assert_uint_eq(count_rows(e, 1), 2);
    const char *f[] = { "Vowel==iy" };
    ck_assert_uint_eq(count_rows(f, 1), 3);

    const char *path = write_text("pb-none.tsv", k_pb);
    struct moe_table_spec s = pb_spec(path);
    const char *none[] = { "Type=x" };
    s.where = none;
    s.n_where = 1;
    struct moe_dataset tr, te;
    struct moe_err err = { 0 };
    ck_assert_int_eq(moe_table_read(&s, &tr, &te, &err), MOE_EFORMAT);
    char want[400];
    snprintf(want, sizeof want, "table '%s': no rows left after filters", path);
    ck_assert_str_eq(err.msg, want);
    ck_assert_ptr_null(tr.x);
    ck_assert_ptr_null(te.x);
}
END_TEST

START_TEST(test_bad_filter)
{
    const char *path = write_text("pb-bad.tsv", k_pb);
    struct moe_table_spec s = pb_spec(path);
    struct moe_dataset tr, te;
    struct moe_err err = { 0 };
    const char *bad[] = { "F1", "=a", "F1<=", "F1<abc", "Type=", "Type=a||b", "F1!500", "F1<>3" };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        s.where = &bad[i];
        s.n_where = 1;
        ck_assert_int_eq(moe_table_read(&s, &tr, &te, &err), MOE_EINVAL);
        char want[80];
        snprintf(want, sizeof want, "'%s'", bad[i]);
        ck_assert_msg(strstr(err.msg, want) != NULL, "message '%s' does not name %s", err.msg, want);
    }
    // A filter on a missing column.
    const char *missing[] = { "Age>3" };
    s.where = missing;
    ck_assert_int_eq(moe_table_read(&s, &tr, &te, &err), MOE_EFORMAT);
    ck_assert_ptr_nonnull(strstr(err.msg, "no column 'Age'"));
    // A numeric filter on a text cell names the line.
    const char *text[] = { "Vowel<3" };
    s.where = text;
    ck_assert_int_eq(moe_table_read(&s, &tr, &te, &err), MOE_EFORMAT);
    ck_assert_ptr_nonnull(strstr(err.msg, "line 2: column 'Vowel' is not a number: 'iy'"));
}
END_TEST

START_TEST(test_missing_column)
{
    const char *path = write_text("pb-miss.tsv", k_pb);
    struct moe_table_spec s = pb_spec(path);
    const char *feats[] = { "F1", "F4" };
    s.features = feats;
    s.n_features = 2;
    struct moe_dataset tr, te;
    struct moe_err err = { 0 };
    ck_assert_int_eq(moe_table_read(&s, &tr, &te, &err), MOE_EFORMAT);
    char want[400];
    snprintf(want, sizeof want,
             "table '%s': no column 'F4' (columns: Type, Sex, Speaker, Vowel, IPA, F0, F1, F2, F3)", path);
    ck_assert_str_eq(err.msg, want);
    // Missing target and split columns too.
    s.features = k_formants;
    s.n_features = 4;
    const char *tgt[] = { "vowel" };
    s.targets = tgt;
    ck_assert_int_eq(moe_table_read(&s, &tr, &te, &err), MOE_EFORMAT);
    ck_assert_ptr_nonnull(strstr(err.msg, "no column 'vowel'"));
    s.targets = k_vowel;
    s.split_column = "Subject";
    s.train_range[1] = 1;
    s.test_range[0] = 2;
    s.test_range[1] = 3;
    ck_assert_int_eq(moe_table_read(&s, &tr, &te, &err), MOE_EFORMAT);
    ck_assert_ptr_nonnull(strstr(err.msg, "no column 'Subject'"));
}
END_TEST

START_TEST(test_csv_regression)
{
    const char *path = write_text("reg.csv", "a,b,name,t1,t2\n"
                                             "1,2,x,3,4\n"
                                             " 5 , -6.5e1 ,y,7,8\n"
                                             "\n"
                                             "9,10,z,11,12\n");
    const char *feats[] = { "b", "a" }, *tgts[] = { "t2", "t1" };
    struct moe_table_spec s = { 0 };
    s.path = path;
    s.features = feats;
    s.n_features = 2;
    s.targets = tgts;
    s.n_targets = 2;
    s.task = MOE_TASK_REGRESSION;
    struct moe_dataset tr, te;
    struct moe_err err = { 0 };
    ck_assert_msg(moe_table_read(&s, &tr, &te, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(tr.task, MOE_TASK_REGRESSION);
    ck_assert_uint_eq(tr.n, 3);
    ck_assert_uint_eq(tr.n_in, 2);
    ck_assert_uint_eq(tr.n_out, 2);
    const float want_x[6] = { 2, 1, -65, 5, 10, 9 }, want_y[6] = { 4, 3, 8, 7, 12, 11 };
    ck_assert_mem_eq(tr.x, want_x, sizeof want_x);
    ck_assert_mem_eq(tr.y, want_y, sizeof want_y);
    ck_assert_ptr_null(tr.label);
    ck_assert_ptr_null(tr.class_names);
    ck_assert_str_eq(tr.feature_names[0], "b");
    ck_assert_str_eq(tr.feature_names[1], "a");
    // test_fraction 0: an empty but valid test set.
    ck_assert_uint_eq(te.n, 0);
    ck_assert_uint_eq(te.n_in, 2);
    ck_assert_uint_eq(te.n_out, 2);
    ck_assert_ptr_nonnull(te.x);
    ck_assert_ptr_nonnull(te.y);
    moe_dataset_release(&tr);
    moe_dataset_release(&te);
    moe_dataset_release(&te); // released twice is harmless

    // A non-numeric regression target.
    const char *tgt_name[] = { "name" };
    s.targets = tgt_name;
    s.n_targets = 1;
    ck_assert_int_eq(moe_table_read(&s, &tr, &te, &err), MOE_EFORMAT);
    char want[400];
    snprintf(want, sizeof want, "table '%s' line 2: column 'name' is not a number: 'x'", path);
    ck_assert_str_eq(err.msg, want);
}
END_TEST

START_TEST(test_non_numeric_cell)
{
    const char *path = write_text("nn.csv", "F1,F2,t\n1,2,3\n4,5,6\nabc,8,9\n");
    const char *feats[] = { "F1", "F2" }, *tgts[] = { "t" };
    struct moe_table_spec s = { 0 };
    s.path = path;
    s.features = feats;
    s.n_features = 2;
    s.targets = tgts;
    s.n_targets = 1;
    struct moe_dataset tr, te;
    struct moe_err err = { 0 };
    ck_assert_int_eq(moe_table_read(&s, &tr, &te, &err), MOE_EFORMAT);
    char want[400];
    snprintf(want, sizeof want, "table '%s' line 4: column 'F1' is not a number: 'abc'", path);
    ck_assert_str_eq(err.msg, want);
    ck_assert_ptr_null(tr.x);
    // Partial numbers, empty cells, inf and nan are refused too.
    const char *bad[] = { "F1,F2,t\n1.5x,2,3\n", "F1,F2,t\n,2,3\n", "F1,F2,t\ninf,2,3\n", "F1,F2,t\nnan,2,3\n",
                          "F1,F2,t\n1e999,2,3\n", "F1,F2,t\n1e300,2,3\n" };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        s.path = write_text("nn2.csv", bad[i]);
        ck_assert_int_eq(moe_table_read(&s, &tr, &te, &err), MOE_EFORMAT);
        ck_assert_msg(strstr(err.msg, "line 2: column 'F1'") != NULL, "%s", err.msg);
    }
}
END_TEST

START_TEST(test_ragged_row)
{
    const char *path = write_text("ragged.csv", "a,b,t\n1,2,3\n4,5\n7,8,9\n");
    const char *feats[] = { "a", "b" }, *tgts[] = { "t" };
    struct moe_table_spec s = { 0 };
    s.path = path;
    s.features = feats;
    s.n_features = 2;
    s.targets = tgts;
    s.n_targets = 1;
    struct moe_dataset tr, te;
    struct moe_err err = { 0 };
    ck_assert_int_eq(moe_table_read(&s, &tr, &te, &err), MOE_EFORMAT);
    char want[400];
    snprintf(want, sizeof want, "table '%s' line 3: 2 fields, expected 3", path);
    ck_assert_str_eq(err.msg, want);
    // A trailing delimiter makes an extra (empty) field.
    s.path = write_text("ragged2.csv", "a,b,t\n1,2,3\n\n4,5,6,\n");
    ck_assert_int_eq(moe_table_read(&s, &tr, &te, &err), MOE_EFORMAT);
    ck_assert_ptr_nonnull(strstr(err.msg, "line 4: 4 fields, expected 3"));
}
END_TEST

START_TEST(test_quoted_fields)
{
    const char *text = "name,x,t\n"
                       "\"a,b\",1,2\n"
                       "\"multi\nline \"\"q\"\"\",3,4\n"
                       "\"a,b\",\"5\",6\n";
    const char *path = write_text("quoted.csv", text);
    const char *feats[] = { "x" }, *tgts[] = { "name" };
    struct moe_table_spec s = { 0 };
    s.path = path;
    s.features = feats;
    s.n_features = 1;
    s.targets = tgts;
    s.n_targets = 1;
    s.task = MOE_TASK_CLASSIFICATION;
    struct moe_dataset tr, te;
    struct moe_err err = { 0 };
    ck_assert_msg(moe_table_read(&s, &tr, &te, &err) == 0, "%s", err.msg);
    ck_assert_uint_eq(tr.n, 3);
    ck_assert_uint_eq(tr.n_out, 2);
    ck_assert_str_eq(tr.class_names[0], "a,b");
    ck_assert_str_eq(tr.class_names[1], "multi\nline \"q\"");
    const int32_t want_l[3] = { 0, 1, 0 };
    const float want_x[3] = { 1, 3, 5 };
    ck_assert_mem_eq(tr.label, want_l, sizeof want_l);
    ck_assert_mem_eq(tr.x, want_x, sizeof want_x);
    moe_dataset_release(&tr);
    moe_dataset_release(&te);

    // Line numbers count the newline inside the quoted cell.
    s.path = write_text("quoted2.csv", "name,x,t\n\"a,b\",1,2\n\"multi\nline\",3,4\nz,bad,5\n");
    ck_assert_int_eq(moe_table_read(&s, &tr, &te, &err), MOE_EFORMAT);
    ck_assert_ptr_nonnull(strstr(err.msg, "line 5: column 'x' is not a number: 'bad'"));
    // A stray quote and an unterminated quote are format errors naming the line.
    s.path = write_text("quoted3.csv", "name,x,t\na,1,2\nb\"c,3,4\n");
    ck_assert_int_eq(moe_table_read(&s, &tr, &te, &err), MOE_EFORMAT);
    ck_assert_ptr_nonnull(strstr(err.msg, "line 3"));
    s.path = write_text("quoted4.csv", "name,x,t\na,1,2\n\"b,3,4\n");
    ck_assert_int_eq(moe_table_read(&s, &tr, &te, &err), MOE_EFORMAT);
    ck_assert_ptr_nonnull(strstr(err.msg, "line 3: unterminated"));
}
END_TEST

START_TEST(test_crlf_bom)
{
    const char *path = write_text("crlf.csv", "\xEF\xBB\xBF" "a,b,t\r\n1,2,3\r\n\r\n4,5,6\r\n7,8,9");
    const char *feats[] = { "a", "b" }, *tgts[] = { "t" };
    struct moe_table_spec s = { 0 };
    s.path = path;
    s.features = feats;
    s.n_features = 2;
    s.targets = tgts;
    s.n_targets = 1;
    struct moe_dataset tr, te;
    struct moe_err err = { 0 };
    ck_assert_msg(moe_table_read(&s, &tr, &te, &err) == 0, "%s", err.msg);
    ck_assert_uint_eq(tr.n, 3);
    const float want_x[6] = { 1, 2, 4, 5, 7, 8 }, want_y[3] = { 3, 6, 9 };
    ck_assert_mem_eq(tr.x, want_x, sizeof want_x);
    ck_assert_mem_eq(tr.y, want_y, sizeof want_y);
    moe_dataset_release(&tr);
    moe_dataset_release(&te);
    // CRLF line counting: the bad cell is on physical line 5.
    s.path = write_text("crlf2.csv", "\xEF\xBB\xBF" "a,b,t\r\n1,2,3\r\n\r\n4,5,6\r\n7,x,9\r\n");
    ck_assert_int_eq(moe_table_read(&s, &tr, &te, &err), MOE_EFORMAT);
    ck_assert_msg(strstr(err.msg, "line 5: column 'b' is not a number: 'x'") != NULL, "%s", err.msg);
    // Empty file.
    s.path = write_text("empty.csv", "\r\n\n");
    ck_assert_int_eq(moe_table_read(&s, &tr, &te, &err), MOE_EFORMAT);
    ck_assert_ptr_nonnull(strstr(err.msg, "no header"));
    // Missing file.
    s.path = "/nonexistent/moe/table.csv";
    ck_assert_int_eq(moe_table_read(&s, &tr, &te, &err), MOE_EIO);
}
END_TEST

static void random_split(uint64_t seed, struct moe_dataset *tr, struct moe_dataset *te)
{
    static char text[8192];
    size_t o = (size_t)snprintf(text, sizeof text, "i,t\n");
    for (int i = 0; i < 200; i++)
        o += (size_t)snprintf(text + o, sizeof text - o, "%d,%d\n", i, i % 3);
    const char *path = write_text("split.csv", text);
    const char *feats[] = { "i" }, *tgts[] = { "t" };
    struct moe_table_spec s = { 0 };
    s.path = path;
    s.features = feats;
    s.n_features = 1;
    s.targets = tgts;
    s.n_targets = 1;
    s.test_fraction = 0.3;
    s.seed = seed;
    struct moe_err err = { 0 };
    ck_assert_msg(moe_table_read(&s, tr, te, &err) == 0, "%s", err.msg);
}

START_TEST(test_random_split)
{
    struct moe_dataset tr, te, tr2, te2, tr3, te3;
    random_split(7, &tr, &te);
    random_split(7, &tr2, &te2);
    random_split(8, &tr3, &te3);
    ck_assert_uint_eq(tr.n + te.n, 200);
    ck_assert(te.n > 30 && te.n < 90);
    ck_assert_uint_eq(tr.n, tr2.n);
    ck_assert_mem_eq(tr.x, tr2.x, tr.n * sizeof(float));
    ck_assert_mem_eq(te.x, te2.x, te.n * sizeof(float));
    ck_assert(tr.n != tr3.n || memcmp(tr.x, tr3.x, tr.n * sizeof(float)) != 0);
    // The documented rule, with rows in file order within each split.
    struct moe_rng r = moe_rng_make(7, MOE_RNG_SPLIT, 0);
    size_t a = 0, b = 0;
    for (int i = 0; i < 200; i++) {
        if (moe_rng_uniform(&r, (uint64_t)i) < 0.3) {
            ck_assert_float_eq(te.x[b], (float)i);
            ck_assert_float_eq(te.y[b++], (float)(i % 3));
        } else {
            ck_assert_float_eq(tr.x[a++], (float)i);
        }
    }
    ck_assert_uint_eq(a, tr.n);
    ck_assert_uint_eq(b, te.n);
    moe_dataset_release(&tr);
    moe_dataset_release(&te);
    moe_dataset_release(&tr2);
    moe_dataset_release(&te2);
    moe_dataset_release(&tr3);
    moe_dataset_release(&te3);
}
END_TEST

START_TEST(test_table_bad_spec)
{
    const char *path = write_text("spec.tsv", k_pb);
    struct moe_table_spec s = pb_spec(path);
    struct moe_dataset tr, te;
    struct moe_err err = { 0 };
    s.test_fraction = 1.0;
    ck_assert_int_eq(moe_table_read(&s, &tr, &te, &err), MOE_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.msg, "test_fraction"));
    s.test_fraction = 0;
    const char *two[] = { "Vowel", "IPA" };
    s.targets = two;
    s.n_targets = 2;
    ck_assert_int_eq(moe_table_read(&s, &tr, &te, &err), MOE_EINVAL);
    s.targets = k_vowel;
    s.n_targets = 1;
    const char *dup[] = { "iy", "iy" };
    s.classes = dup;
    s.n_classes = 2;
    ck_assert_int_eq(moe_table_read(&s, &tr, &te, &err), MOE_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.msg, "'iy'"));
    s.classes = NULL;
    s.n_classes = 0;
    s.n_features = 0;
    ck_assert_int_eq(moe_table_read(&s, &tr, &te, &err), MOE_EINVAL);
    // Explicit comma delimiter on a TSV: one column named after the whole header.
    s.n_features = 4;
    s.delimiter = ',';
    ck_assert_int_eq(moe_table_read(&s, &tr, &te, &err), MOE_EFORMAT);
    ck_assert_ptr_nonnull(strstr(err.msg, "no column 'F0'"));
}
END_TEST

// ---- standardisation ----

START_TEST(test_standardize)
{
    struct moe_dataset tr, te;
    struct moe_err err = { 0 };
    ck_assert_int_eq(moe_dataset_alloc(&tr, MOE_TASK_REGRESSION, 5, 3, 1, 0, &err), 0);
    ck_assert_int_eq(moe_dataset_alloc(&te, MOE_TASK_REGRESSION, 1, 3, 1, 0, &err), 0);
    const float x[15] = { 1, 7, 1000, 2, 7, 1001, 3, 7, 1002, 4, 7, 1003, 5, 7, 1004 };
    memcpy(tr.x, x, sizeof x);
    te.x[0] = 3;
    te.x[1] = 9;
    te.x[2] = 1002 + 1.41421356f;
    struct moe_standardize st;
    ck_assert_int_eq(moe_standardize_fit(&st, &tr, &err), 0);
    ck_assert_uint_eq(st.n_in, 3);
    ck_assert_float_eq_tol(st.mean[0], 3.0f, 1e-6f);
    ck_assert_float_eq_tol(st.std[0], sqrtf(2.0f), 1e-6f);
    ck_assert_float_eq(st.std[1], 1.0f); // constant feature
    moe_standardize_apply(&st, &tr);
    moe_standardize_apply(&st, &te);
    for (size_t j = 0; j < 3; j++) {
        double m = 0, v = 0;
        for (size_t i = 0; i < 5; i++)
            m += tr.x[i * 3 + j];
        m /= 5;
        for (size_t i = 0; i < 5; i++)
            v += (tr.x[i * 3 + j] - m) * (tr.x[i * 3 + j] - m);
        v /= 5;
        ck_assert_double_eq_tol(m, 0.0, 1e-6);
        ck_assert_double_eq_tol(v, j == 1 ? 0.0 : 1.0, 1e-5);
    }
    ck_assert_float_eq_tol(te.x[0], 0.0f, 1e-6f);
    ck_assert_float_eq_tol(te.x[1], 2.0f, 1e-6f);
    ck_assert_float_eq_tol(te.x[2], 1.0f, 1e-4f);
    moe_standardize_release(&st);
    moe_standardize_release(&st);
    struct moe_dataset empty;
    ck_assert_int_eq(moe_dataset_alloc(&empty, MOE_TASK_REGRESSION, 0, 3, 1, 0, &err), 0);
    ck_assert_int_eq(moe_standardize_fit(&st, &empty, &err), MOE_EINVAL);
    moe_dataset_release(&empty);
    moe_dataset_release(&tr);
    moe_dataset_release(&te);
}
END_TEST

START_TEST(test_dataset_alloc_release)
{
    struct moe_dataset d;
    memset(&d, 0, sizeof d);
    moe_dataset_release(&d); // zeroed struct
    struct moe_err err = { 0 };
    ck_assert_int_eq(moe_dataset_alloc(&d, MOE_TASK_CLASSIFICATION, 4, 2, 3, 1, &err), 0);
    ck_assert_ptr_nonnull(d.x);
    ck_assert_ptr_null(d.y);
    ck_assert_ptr_nonnull(d.label);
    ck_assert_ptr_nonnull(d.group);
    for (size_t i = 0; i < 8; i++)
        ck_assert_float_eq(d.x[i], 0.0f);
    d.class_names = calloc(3, sizeof *d.class_names);
    d.class_names[1] = strdup("b"); // NULL entries are allowed
    moe_dataset_release(&d);
    ck_assert_ptr_null(d.x);
    ck_assert_uint_eq(d.n, 0);
    ck_assert_int_eq(moe_dataset_alloc(&d, MOE_TASK_REGRESSION, 0, 2, 1, 0, &err), 0);
    ck_assert_ptr_nonnull(d.x);
    ck_assert_ptr_nonnull(d.y);
    moe_dataset_release(&d);
    ck_assert_int_eq(moe_dataset_alloc(&d, MOE_TASK_REGRESSION, 3, 0, 1, 0, &err), MOE_EINVAL);
}
END_TEST

// ---- synthetic ----

static struct moe_synth_spec synth_spec(const char *kind, uint64_t seed)
{
    struct moe_synth_spec s = { 0 };
    s.kind = kind;
    s.n_train = 2000;
    s.n_test = 300;
    s.n_in = 3;
    s.n_out = 2;
    s.n_regions = 4;
    s.noise = 0.1;
    s.spread = 1.0;
    s.seed = seed;
    return s;
}

static int same_set(const struct moe_dataset *a, const struct moe_dataset *b)
{
    if (a->n != b->n || a->n_in != b->n_in || a->n_out != b->n_out || a->task != b->task)
        return 0;
    if (memcmp(a->x, b->x, a->n * a->n_in * sizeof(float)) || memcmp(a->group, b->group, a->n * sizeof(int32_t)))
        return 0;
    if (a->y && memcmp(a->y, b->y, a->n * a->n_out * sizeof(float)))
        return 0;
    if (a->label && memcmp(a->label, b->label, a->n * sizeof(int32_t)))
        return 0;
    return 1;
}

START_TEST(test_synth_deterministic)
{
    const char *kinds[] = { "regions", "classes" };
    for (int k = 0; k < 2; k++) {
        struct moe_synth_spec s = synth_spec(kinds[k], 42);
        if (k == 1)
            s.n_out = 0;
        struct moe_dataset a, at, b, bt, c, ct;
        struct moe_err err = { 0 };
        ck_assert_msg(moe_synth_make(&s, &a, &at, &err) == 0, "%s", err.msg);
        ck_assert_int_eq(moe_synth_make(&s, &b, &bt, &err), 0);
        s.seed = 43;
        ck_assert_int_eq(moe_synth_make(&s, &c, &ct, &err), 0);
        ck_assert(same_set(&a, &b));
        ck_assert(same_set(&at, &bt));
        ck_assert(!same_set(&a, &c));
        ck_assert(!same_set(&at, &ct));
        ck_assert(!same_set(&a, &at));
        moe_dataset_release(&a);
        moe_dataset_release(&at);
        moe_dataset_release(&b);
        moe_dataset_release(&bt);
        moe_dataset_release(&c);
        moe_dataset_release(&ct);
    }
}
END_TEST

START_TEST(test_synth_groups)
{
    struct moe_synth_spec s = synth_spec("regions", 5);
    struct moe_dataset tr, te;
    struct moe_err err = { 0 };
    ck_assert_int_eq(moe_synth_make(&s, &tr, &te, &err), 0);
    ck_assert_int_eq(tr.task, MOE_TASK_REGRESSION);
    ck_assert_uint_eq(tr.n, 2000);
    ck_assert_uint_eq(te.n, 300);
    ck_assert_uint_eq(tr.n_in, 3);
    ck_assert_uint_eq(tr.n_out, 2);
    ck_assert_uint_eq(tr.n_group, 4);
    ck_assert_ptr_null(tr.label);
    size_t seen[4] = { 0 };
    for (size_t i = 0; i < tr.n; i++) {
        ck_assert(tr.group[i] >= 0 && tr.group[i] < 4);
        seen[tr.group[i]]++;
    }
    for (int r = 0; r < 4; r++)
        ck_assert(seen[r] > 350 && seen[r] < 650);
    for (size_t i = 0; i < te.n; i++)
        ck_assert(te.group[i] >= 0 && te.group[i] < 4);
    moe_dataset_release(&tr);
    moe_dataset_release(&te);

    s = synth_spec("classes", 5);
    s.n_out = 1; // ignored for classes: n_out = n_regions
    ck_assert_int_eq(moe_synth_make(&s, &tr, &te, &err), 0);
    ck_assert_int_eq(tr.task, MOE_TASK_CLASSIFICATION);
    ck_assert_uint_eq(tr.n_out, 4);
    ck_assert_ptr_null(tr.y);
    ck_assert_str_eq(tr.class_names[3], "3");
    for (size_t i = 0; i < tr.n; i++)
        ck_assert_int_eq(tr.label[i], tr.group[i]);
    for (size_t i = 0; i < te.n; i++)
        ck_assert(te.label[i] == te.group[i] && te.label[i] < 4);
    moe_dataset_release(&tr);
    moe_dataset_release(&te);
}
END_TEST

START_TEST(test_synth_train_independent_of_test)
{
    struct moe_synth_spec s = synth_spec("regions", 11);
    struct moe_dataset a, at, b, bt;
    struct moe_err err = { 0 };
    ck_assert_int_eq(moe_synth_make(&s, &a, &at, &err), 0);
    s.n_test = 0;
    ck_assert_int_eq(moe_synth_make(&s, &b, &bt, &err), 0);
    ck_assert(same_set(&a, &b));
    ck_assert_uint_eq(bt.n, 0);
    ck_assert_ptr_nonnull(bt.x);
    moe_dataset_release(&b);
    moe_dataset_release(&bt);
    s.n_test = 1000;
    s.n_train = 10;
    ck_assert_int_eq(moe_synth_make(&s, &b, &bt, &err), 0);
    // The first test rows are the same whatever the sizes.
    ck_assert_mem_eq(at.x, bt.x, at.n * at.n_in * sizeof(float));
    ck_assert_mem_eq(a.x, b.x, b.n * b.n_in * sizeof(float));
    moe_dataset_release(&a);
    moe_dataset_release(&at);
    moe_dataset_release(&b);
    moe_dataset_release(&bt);
}
END_TEST

// Least squares y ~ [x, 1] over rows with group g (g < 0: all rows); returns
// the residual RMS over the n_out targets.
static double fit_rms(const struct moe_dataset *d, int g)
{
    enum { P = 4 };
    ck_assert_uint_eq(d->n_in + 1, P);
    double rss = 0;
    size_t cnt = 0;
    for (size_t o = 0; o < d->n_out; o++) {
        double A[P][P + 1] = { { 0 } };
        for (size_t i = 0; i < d->n; i++) {
            if (g >= 0 && d->group[i] != g)
                continue;
            double z[P] = { d->x[i * 3], d->x[i * 3 + 1], d->x[i * 3 + 2], 1.0 };
            for (int a = 0; a < P; a++) {
                for (int b = 0; b < P; b++)
                    A[a][b] += z[a] * z[b];
                A[a][P] += z[a] * d->y[i * d->n_out + o];
            }
        }
        for (int c = 0; c < P; c++) { // Gauss-Jordan, partial pivoting
            int piv = c;
            for (int r = c + 1; r < P; r++)
                if (fabs(A[r][c]) > fabs(A[piv][c]))
                    piv = r;
            for (int k = 0; k <= P; k++) {
                double t = A[c][k];
                A[c][k] = A[piv][k];
                A[piv][k] = t;
            }
            for (int r = 0; r < P; r++) {
                if (r == c)
                    continue;
                double f = A[r][c] / A[c][c];
                for (int k = c; k <= P; k++)
                    A[r][k] -= f * A[c][k];
            }
        }
        for (size_t i = 0; i < d->n; i++) {
            if (g >= 0 && d->group[i] != g)
                continue;
            double pred = A[3][P] / A[3][3];
            for (int a = 0; a < 3; a++)
                pred += A[a][P] / A[a][a] * d->x[i * 3 + a];
            double e = d->y[i * d->n_out + o] - pred;
            rss += e * e;
            cnt++;
        }
    }
    return sqrt(rss / (double)cnt);
}

START_TEST(test_synth_learnable)
{
    struct moe_synth_spec s = synth_spec("regions", 3);
    struct moe_dataset tr, te;
    struct moe_err err = { 0 };
    ck_assert_int_eq(moe_synth_make(&s, &tr, &te, &err), 0);
    // Within a region the targets are linear up to the noise level.
    for (int r = 0; r < 4; r++) {
        double rms = fit_rms(&tr, r);
        ck_assert_msg(rms > 0.07 && rms < 0.13, "region %d: residual %g, noise 0.1", r, rms);
    }
    // One global linear map cannot fit: the regions matter.
    double all = fit_rms(&tr, -1);
    ck_assert_msg(all > 0.5, "global residual %g", all);
    moe_dataset_release(&tr);
    moe_dataset_release(&te);
}
END_TEST

START_TEST(test_synth_bad_spec)
{
    struct moe_dataset tr, te;
    struct moe_err err = { 0 };
    struct moe_synth_spec s = synth_spec("spirals", 1);
    ck_assert_int_eq(moe_synth_make(&s, &tr, &te, &err), MOE_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.msg, "kind 'spirals'"));
    s = synth_spec("regions", 1);
    s.n_in = 0;
    ck_assert_int_eq(moe_synth_make(&s, &tr, &te, &err), MOE_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.msg, "n_in"));
    s = synth_spec("regions", 1);
    s.n_train = 0;
    ck_assert_int_eq(moe_synth_make(&s, &tr, &te, &err), MOE_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.msg, "n_train"));
    s = synth_spec("regions", 1);
    s.n_out = 0;
    ck_assert_int_eq(moe_synth_make(&s, &tr, &te, &err), MOE_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.msg, "n_out"));
    s = synth_spec("regions", 1);
    s.n_regions = 0;
    ck_assert_int_eq(moe_synth_make(&s, &tr, &te, &err), MOE_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.msg, "n_regions"));
    s = synth_spec("regions", 1);
    s.noise = -1;
    ck_assert_int_eq(moe_synth_make(&s, &tr, &te, &err), MOE_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.msg, "noise"));
    s = synth_spec("regions", 1);
    s.spread = NAN;
    ck_assert_int_eq(moe_synth_make(&s, &tr, &te, &err), MOE_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.msg, "spread"));
    ck_assert_ptr_null(tr.x);
}
END_TEST

// ---- the data.* keys, typed (train/data.c) ----

static void run_cfg(struct moe_config *cfg, const char *const *ovs, size_t n)
{
    struct moe_err err = { 0 };
    int rc = moe_config_parse(cfg, moe_run_schema(), moe_run_schema_len(), "{}", "test", ovs, n, &err);
    ck_assert_msg(rc == 0, "config: %s", err.msg);
}

// A config's data.* keys parsed: 0 and *c filled, or the parse's error in err.
static int parse_data(struct moe_data_cfg *c, const char *const *ovs, size_t n, struct moe_config *ret_cfg,
                      struct moe_err *err)
{
    run_cfg(ret_cfg, ovs, n);
    return moe_data_cfg_parse(c, ret_cfg, err);
}

START_TEST(test_data_cfg_sources)
{
    struct moe_config cfg;
    struct moe_data_cfg c;
    struct moe_err err = { 0 };
    // synthetic: kind classes has n_regions classes whatever data.synthetic.n_out says; seed from train.seed
    const char *syn[] = { "data.synthetic.kind=classes", "data.synthetic.n_train=300", "data.synthetic.n_test=0",
                          "data.synthetic.n_in=5", "data.synthetic.n_out=9", "data.synthetic.n_regions=3",
                          "data.synthetic.noise=0.25", "data.synthetic.spread=0.75", "train.seed=42",
                          "data.standardize=true" };
    ck_assert_msg(parse_data(&c, syn, sizeof syn / sizeof *syn, &cfg, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(c.source, MOE_DATA_SYNTHETIC);
    ck_assert_int_eq(c.standardize, 1);
    ck_assert_str_eq(c.synthetic.kind, "classes");
    ck_assert_uint_eq(c.synthetic.n_train, 300);
    ck_assert_uint_eq(c.synthetic.n_test, 0);
    ck_assert_uint_eq(c.synthetic.n_in, 5);
    ck_assert_uint_eq(c.synthetic.n_out, 3);
    ck_assert_uint_eq(c.synthetic.n_regions, 3);
    ck_assert_double_eq(c.synthetic.noise, 0.25);
    ck_assert_double_eq(c.synthetic.spread, 0.75);
    ck_assert_uint_eq(c.synthetic.seed, 42);
    ck_assert_ptr_null(c.table.path); // other sections stay zero
    ck_assert_ptr_null(c.lists);
    // the typed load makes what moe_data_load makes
    struct moe_data a, b;
    ck_assert_msg(moe_data_load_cfg(&a, &c, NULL, &err) == 0, "%s", err.msg);
    ck_assert_msg(moe_data_load(&b, &cfg, &err) == 0, "%s", err.msg);
    ck_assert_uint_eq(a.train.n, 300);
    ck_assert_uint_eq(a.train.n_out, 3);
    ck_assert_int_eq(a.standardized, 1);
    ck_assert_int_eq(memcmp(a.train.x, b.train.x, a.train.n * a.train.n_in * sizeof(float)), 0);
    moe_data_release(&a);
    moe_data_release(&b);
    moe_data_cfg_release(&c);
    moe_config_release(&cfg);

    // idx
    const char *idx[] = { "data.source=idx", "data.idx.train_images=/a/ti", "data.idx.train_labels=/a/tl",
                          "data.idx.test_images=/a/vi", "data.idx.test_labels=/a/vl", "data.idx.limit_train=7",
                          "data.idx.limit_test=3", "data.idx.classes=[4,2,4]" };
    ck_assert_msg(parse_data(&c, idx, sizeof idx / sizeof *idx, &cfg, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(c.source, MOE_DATA_IDX);
    ck_assert_str_eq(c.idx.train_images, "/a/ti");
    ck_assert_str_eq(c.idx.train_labels, "/a/tl");
    ck_assert_str_eq(c.idx.test_images, "/a/vi");
    ck_assert_str_eq(c.idx.test_labels, "/a/vl");
    ck_assert_uint_eq(c.idx.limit_train, 7);
    ck_assert_uint_eq(c.idx.limit_test, 3);
    ck_assert_uint_eq(c.idx.n_classes, 3);
    ck_assert_int_eq(c.idx.classes[0], 4);
    ck_assert_int_eq(c.idx.classes[1], 2);
    ck_assert_int_eq(c.idx.classes[2], 4);
    moe_data_cfg_release(&c);
    moe_config_release(&cfg);

    // table
    const char *tab[] = { "data.source=table", "data.table.path=/a/t.csv", "data.table.delimiter=tab",
                          "data.table.task=regression", "data.table.features=[\"F1\",\"F2\"]",
                          "data.table.targets=[\"y\",\"z\"]", "data.table.where=[\"Sex=m\",\"F1>=2\"]",
                          "data.table.split_column=Speaker", "data.table.train_range=[1,4]",
                          "data.table.test_range=[5,6]", "data.table.test_fraction=0.5", "train.seed=9" };
    ck_assert_msg(parse_data(&c, tab, sizeof tab / sizeof *tab, &cfg, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(c.source, MOE_DATA_TABLE);
    ck_assert_str_eq(c.table.path, "/a/t.csv");
    ck_assert_int_eq(c.table.delimiter, '\t');
    ck_assert_int_eq(c.table.task, MOE_TASK_REGRESSION);
    ck_assert_uint_eq(c.table.n_features, 2);
    ck_assert_str_eq(c.table.features[0], "F1");
    ck_assert_str_eq(c.table.features[1], "F2");
    ck_assert_uint_eq(c.table.n_targets, 2);
    ck_assert_str_eq(c.table.targets[1], "z");
    ck_assert_ptr_null(c.table.classes); // [] = every class
    ck_assert_uint_eq(c.table.n_classes, 0);
    ck_assert_uint_eq(c.table.n_where, 2);
    ck_assert_str_eq(c.table.where[1], "F1>=2");
    ck_assert_str_eq(c.table.split_column, "Speaker");
    ck_assert_double_eq(c.table.train_range[0], 1);
    ck_assert_double_eq(c.table.train_range[1], 4);
    ck_assert_double_eq(c.table.test_range[0], 5);
    ck_assert_double_eq(c.table.test_range[1], 6);
    ck_assert_double_eq(c.table.test_fraction, 0.5);
    ck_assert_uint_eq(c.table.seed, 9);
    moe_data_cfg_release(&c);
    ck_assert_ptr_null(c.lists);
    moe_data_cfg_release(&c); // twice is fine
    moe_config_release(&cfg);

    // text: model.n_ctx copied
    const char *txt[] = { "data.source=text", "data.text.path=/a/corpus", "data.text.tokens=words",
                          "data.text.vocab_size=100", "data.text.vocab=/a/vocab.txt", "data.text.valid_fraction=0.25",
                          "data.text.max_bytes=1000", "data.text.windows_per_epoch=12",
                          "data.text.train_eval_windows=5", "data.text.valid_eval_windows=6", "model.n_ctx=16" };
    ck_assert_msg(parse_data(&c, txt, sizeof txt / sizeof *txt, &cfg, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(c.source, MOE_DATA_TEXT);
    ck_assert_str_eq(c.text.corpus.path, "/a/corpus");
    ck_assert_int_eq(c.text.corpus.tokens, MOE_TOK_WORDS);
    ck_assert_uint_eq(c.text.corpus.vocab_size, 100);
    ck_assert_ptr_null(c.text.corpus.vocab);
    ck_assert_str_eq(c.text.vocab_path, "/a/vocab.txt");
    ck_assert_double_eq(c.text.corpus.valid_fraction, 0.25);
    ck_assert_uint_eq(c.text.corpus.max_bytes, 1000);
    ck_assert_uint_eq(c.text.n_ctx, 16);
    ck_assert_uint_eq(c.text.windows_per_epoch, 12);
    ck_assert_uint_eq(c.text.train_eval_windows, 5);
    ck_assert_uint_eq(c.text.valid_eval_windows, 6);
    moe_data_cfg_release(&c);
    moe_config_release(&cfg);
}
END_TEST

// A rule between keys is reported by the parse, with the message moe_data_load
// gives, and only for the section of data.source.
static void expect_data_cfg_error(const char *const *ovs, size_t n, int code, const char *msg)
{
    struct moe_config cfg;
    struct moe_data_cfg c;
    struct moe_err err = { 0 }, lerr = { 0 };
    memset(&c, 0x5a, sizeof c);
    ck_assert_int_eq(parse_data(&c, ovs, n, &cfg, &err), code);
    ck_assert_str_eq(err.msg, msg);
    ck_assert_ptr_null(c.lists); // zeroed on failure
    ck_assert_int_eq(c.source, 0);
    struct moe_data d;
    ck_assert_int_eq(moe_data_load(&d, &cfg, &lerr), code);
    ck_assert_str_eq(lerr.msg, msg);
    ck_assert_ptr_null(d.train.x);
    moe_config_release(&cfg);
}

// Validation splits. Table (random split) and the same rule for IDX: the last floor(f * n)
// training rows, in the split's order, with the rest left as the training split; deterministic;
// standardisation fitted on the remaining training rows only. Synthetic: n_valid rows of their own
// stream, training and test rows unchanged. A fraction that leaves no validation row is refused.
START_TEST(test_valid_split)
{
    struct moe_dataset tr, te;
    random_split(7, &tr, &te); // the training split without a validation split
    char ov_path[128];
    snprintf(ov_path, sizeof ov_path, "data.table.path=%s/split.csv", g_dir);
    const char *tab[] = { "data.source=table", ov_path, "data.table.features=[\"i\"]", "data.table.targets=[\"t\"]",
                          "data.table.test_fraction=0.3", "train.seed=7", "data.table.valid_fraction=0.25" };
    struct moe_config cfg;
    struct moe_data_cfg c;
    struct moe_err err = { 0 };
    ck_assert_msg(parse_data(&c, tab, sizeof tab / sizeof *tab, &cfg, &err) == 0, "%s", err.msg);
    struct moe_data a, b;
    ck_assert_msg(moe_data_load_cfg(&a, &c, NULL, &err) == 0, "%s", err.msg);
    ck_assert_msg(moe_data_load_cfg(&b, &c, NULL, &err) == 0, "%s", err.msg);
    size_t nv = (size_t)(0.25 * (double)tr.n);
    ck_assert_uint_gt(nv, 0);
    ck_assert_uint_eq(a.valid.n, nv);
    ck_assert_uint_eq(a.train.n, tr.n - nv);
    ck_assert_uint_eq(a.test.n, te.n);
    ck_assert_mem_eq(a.train.x, tr.x, a.train.n * sizeof(float));
    ck_assert_mem_eq(a.valid.x, tr.x + a.train.n, nv * sizeof(float));
    ck_assert_mem_eq(a.test.x, te.x, te.n * sizeof(float));
    ck_assert_mem_eq(b.valid.x, a.valid.x, nv * sizeof(float));
    moe_data_release(&a);
    moe_data_release(&b);
    moe_data_cfg_release(&c);
    moe_config_release(&cfg);
    // standardised: the statistics of the remaining training rows
    const char *tabs[] = { "data.source=table", ov_path, "data.table.features=[\"i\"]", "data.table.targets=[\"t\"]",
                           "data.table.test_fraction=0.3", "train.seed=7", "data.table.valid_fraction=0.25",
                           "data.standardize=true" };
    ck_assert_msg(parse_data(&c, tabs, sizeof tabs / sizeof *tabs, &cfg, &err) == 0, "%s", err.msg);
    ck_assert_msg(moe_data_load_cfg(&a, &c, NULL, &err) == 0, "%s", err.msg);
    double mean = 0;
    for (size_t i = 0; i < tr.n - nv; i++)
        mean += tr.x[i];
    mean /= (double)(tr.n - nv);
    ck_assert_double_eq_tol(a.stats.mean[0], mean, 1e-4);
    ck_assert_double_eq_tol(a.valid.x[0], (tr.x[tr.n - nv] - a.stats.mean[0]) / a.stats.std[0], 1e-5);
    moe_data_release(&a);
    moe_data_cfg_release(&c);
    moe_config_release(&cfg);
    // too small a fraction for the rows: one line naming the key, a config error
    const char *tiny[] = { "data.source=table", ov_path, "data.table.features=[\"i\"]", "data.table.targets=[\"t\"]",
                           "data.table.valid_fraction=0.001" };
    ck_assert_msg(parse_data(&c, tiny, sizeof tiny / sizeof *tiny, &cfg, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(moe_data_load_cfg(&a, &c, NULL, &err), MOE_ECONFIG);
    ck_assert_ptr_nonnull(strstr(err.msg, "key 'data.table.valid_fraction'"));
    ck_assert_ptr_nonnull(strstr(err.msg, "empty validation split"));
    moe_data_cfg_release(&c);
    moe_config_release(&cfg);
    moe_dataset_release(&tr);
    moe_dataset_release(&te);

    // synthetic: training and test rows do not depend on n_valid; validation rows are new rows
    struct moe_synth_spec sp = synth_spec("regions", 11);
    struct moe_dataset s0, t0, s1, t1, v1;
    ck_assert_int_eq(moe_synth_make(&sp, &s0, &t0, &err), 0);
    sp.n_valid = 37;
    ck_assert_int_eq(moe_synth_make_ex(&sp, &s1, &t1, &v1, &err), 0);
    ck_assert_uint_eq(v1.n, 37);
    ck_assert_uint_eq(s1.n, s0.n);
    ck_assert_mem_eq(s1.x, s0.x, s0.n * s0.n_in * sizeof(float));
    ck_assert_mem_eq(t1.y, t0.y, t0.n * t0.n_out * sizeof(float));
    ck_assert(memcmp(v1.x, s0.x, 37 * s0.n_in * sizeof(float)) != 0);
    ck_assert(memcmp(v1.x, t0.x, 37 * t0.n_in * sizeof(float)) != 0);
    ck_assert_ptr_nonnull(v1.group);
    moe_dataset_release(&s0), moe_dataset_release(&t0), moe_dataset_release(&s1), moe_dataset_release(&t1);
    moe_dataset_release(&v1);
}
END_TEST

START_TEST(test_data_cfg_errors)
{
#define TABLE "data.source=table", "data.table.path=/a/t.csv", "data.table.features=[\"F1\"]", "data.table.targets=[\"y\"]"
    const char *one[] = { TABLE, "data.table.split_column=Speaker", "data.table.train_range=[1]",
                          "data.table.test_range=[5,6]" };
    expect_data_cfg_error(one, 7, MOE_ECONFIG,
                          "key 'data.table.train_range' must be [lo, hi] when data.table.split_column is set");
    const char *test_one[] = { TABLE, "data.table.split_column=Speaker", "data.table.train_range=[1,4]" };
    expect_data_cfg_error(test_one, 6, MOE_ECONFIG,
                          "key 'data.table.test_range' must be [lo, hi] when data.table.split_column is set");
    const char *rev[] = { TABLE, "data.table.split_column=Speaker", "data.table.train_range=[4,1]",
                          "data.table.test_range=[5,6]" };
    expect_data_cfg_error(rev, 7, MOE_ECONFIG, "key 'data.table.train_range' is [4, 1]: expected [lo, hi] with lo <= hi");
    const char *no_path[] = { "data.source=table" };
    expect_data_cfg_error(no_path, 1, MOE_ECONFIG, "key 'data.table.path' must be set when data.source is 'table'");
    const char *two[] = { "data.source=table", "data.table.path=/a/t.csv", "data.table.features=[\"F1\"]",
                          "data.table.targets=[\"y\",\"z\"]" };
    expect_data_cfg_error(two, 4, MOE_ECONFIG, "key 'data.table.targets' must name exactly one column");
    const char *filter[] = { TABLE, "data.table.where=[\"F1\"]" };
    struct moe_config cfg;
    struct moe_data_cfg c;
    struct moe_err err = { 0 };
    ck_assert_int_eq(parse_data(&c, filter, 5, &cfg, &err), MOE_ECONFIG);
    ck_assert_msg(strncmp(err.msg, "key 'data.table.where[0]': ", 27) == 0, "%s", err.msg);
    moe_config_release(&cfg);
    const char *text[] = { "data.source=text" };
    expect_data_cfg_error(text, 1, MOE_ECONFIG, "key 'data.text.path' must be set when data.source is 'text'");
    const char *cls[] = { "data.source=idx", "data.idx.classes=[1,2.5]" };
    expect_data_cfg_error(cls, 2, MOE_ECONFIG, "key 'data.idx.classes[1]' must be an integer, got 2.5");
    // another source's section is not looked at
    const char *other[] = { "data.table.split_column=Speaker", "data.table.train_range=[1]", "data.idx.classes=[2.5]" };
    ck_assert_msg(parse_data(&c, other, 3, &cfg, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(c.source, MOE_DATA_SYNTHETIC);
    moe_data_cfg_release(&c);
    moe_config_release(&cfg);
#undef TABLE
}
END_TEST


// ---- the CSV writer (io/csv_writer.h): rows appended as they end, reopen cuts back

static char *slurp(const char *path, size_t *len)
{
    char *buf = NULL;
    struct moe_err err = { 0 };
    ck_assert_int_eq(moe_read_file(path, &buf, len, &err), 0);
    return buf;
}

static const char *const csv_cols[] = { "step", "name", "value" };

static void csv_row(struct moe_csv *c, long long step, const char *name, double v)
{
    struct moe_err err = { 0 };
    moe_csv_int(c, step);
    moe_csv_str(c, name);
    moe_csv_num(c, v);
    ck_assert_int_eq(moe_csv_end_row(c, &err), 0);
}

START_TEST(test_csv_append_live)
{
    char path[128];
    fixture_path(path, sizeof path, "live.csv");
    struct moe_csv c;
    struct moe_err err = { 0 };
    FILE *old = fopen(path, "w"); // a previous table: replaced, never appended to
    fputs("old,stuff\n1,2\n", old);
    fclose(old);
    ck_assert_int_eq(moe_csv_open(&c, path, csv_cols, 3, &err), 0);
    size_t len;
    char *text = slurp(path, &len);
    ck_assert_str_eq(text, "step,name,value\n"); // the header at once
    free(text);
    ck_assert_uint_eq(moe_csv_bytes(&c), 16);
    csv_row(&c, 1, "a,b", 0.5);
    text = slurp(path, &len); // on disk as soon as the row ends, no flush
    ck_assert_str_eq(text, "step,name,value\n1,\"a,b\",0.5\n");
    free(text);
    ck_assert_uint_eq(moe_csv_bytes(&c), len);
    // a row with the wrong number of cells is refused and nothing of it is written
    moe_csv_int(&c, 2);
    ck_assert_int_eq(moe_csv_end_row(&c, &err), MOE_EINVAL);
    csv_row(&c, 2, "x", NAN);
    ck_assert_int_eq(moe_csv_flush(&c, &err), 0);
    ck_assert_int_eq(moe_csv_close(&c, &err), 0);
    text = slurp(path, &len);
    ck_assert_str_eq(text, "step,name,value\n1,\"a,b\",0.5\n2,x,\n");
    free(text);
}
END_TEST

START_TEST(test_csv_reopen_cuts_back)
{
    char path[128];
    fixture_path(path, sizeof path, "resume.csv");
    struct moe_csv c;
    struct moe_err err = { 0 };
    ck_assert_int_eq(moe_csv_open(&c, path, csv_cols, 3, &err), 0);
    csv_row(&c, 1, "a", 1);
    uint64_t keep = moe_csv_bytes(&c); // what a checkpoint records
    csv_row(&c, 2, "b", 2);            // written after the checkpoint
    moe_csv_abort(&c);
    FILE *f = fopen(path, "a"); // and a row torn by a kill
    fputs("3,c,0.12", f);
    fclose(f);
    ck_assert_int_eq(moe_csv_reopen(&c, path, csv_cols, 3, keep, &err), 0);
    csv_row(&c, 2, "b", 2);
    ck_assert_int_eq(moe_csv_close(&c, &err), 0);
    size_t len;
    char *text = slurp(path, &len);
    ck_assert_str_eq(text, "step,name,value\n1,a,1\n2,b,2\n");
    free(text);
    // a length that does not end a row, one beyond the file, another header
    ck_assert_int_eq(moe_csv_reopen(&c, path, csv_cols, 3, keep - 1, &err), MOE_EFORMAT);
    ck_assert_ptr_nonnull(strstr(err.msg, "ending a row"));
    ck_assert_int_eq(moe_csv_reopen(&c, path, csv_cols, 3, len + 1, &err), MOE_EFORMAT);
    static const char *const other[] = { "step", "name", "values" };
    ck_assert_int_eq(moe_csv_reopen(&c, path, other, 3, keep, &err), MOE_EFORMAT);
    ck_assert_ptr_nonnull(strstr(err.msg, "expected header row"));
    text = slurp(path, &len); // refused: the file is as it was
    ck_assert_str_eq(text, "step,name,value\n1,a,1\n2,b,2\n");
    free(text);
    char dir[128];
    fixture_path(dir, sizeof dir, "csvdir");
    mkdir(dir, 0755);
    ck_assert_int_eq(moe_csv_reopen(&c, dir, csv_cols, 3, keep, &err), MOE_EIO);
    ck_assert_ptr_nonnull(strstr(err.msg, "it is a directory, not a regular file"));
}
END_TEST

static Suite *data_suite(void)
{
    Suite *s = suite_create("data");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_idx_round_trip_raw);
    tcase_add_test(tc, test_idx_round_trip_gz);
    tcase_add_test(tc, test_idx_truncated);
    tcase_add_test(tc, test_idx_bad_header);
    tcase_add_test(tc, test_idx_missing);
    tcase_add_test(tc, test_idx_dataset);
    tcase_add_test(tc, test_idx_count_mismatch);
    tcase_add_test(tc, test_idx_classes);
    tcase_add_test(tc, test_idx_fashion_mnist);
    tcase_add_test(tc, test_tsv_classes_where_split);
    tcase_add_test(tc, test_where_filters);
    tcase_add_test(tc, test_bad_filter);
    tcase_add_test(tc, test_missing_column);
    tcase_add_test(tc, test_csv_regression);
    tcase_add_test(tc, test_non_numeric_cell);
    tcase_add_test(tc, test_ragged_row);
    tcase_add_test(tc, test_quoted_fields);
    tcase_add_test(tc, test_crlf_bom);
    tcase_add_test(tc, test_random_split);
    tcase_add_test(tc, test_table_bad_spec);
    tcase_add_test(tc, test_standardize);
    tcase_add_test(tc, test_dataset_alloc_release);
    tcase_add_test(tc, test_synth_deterministic);
    tcase_add_test(tc, test_synth_groups);
    tcase_add_test(tc, test_synth_train_independent_of_test);
    tcase_add_test(tc, test_synth_learnable);
    tcase_add_test(tc, test_synth_bad_spec);
    tcase_add_test(tc, test_data_cfg_sources);
    tcase_add_test(tc, test_data_cfg_errors);
    tcase_add_test(tc, test_csv_append_live);
    tcase_add_test(tc, test_csv_reopen_cuts_back);
    tcase_add_test(tc, test_valid_split);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    snprintf(g_dir, sizeof g_dir, "/tmp/moe-data-XXXXXX");
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        return 1;
    }
    int rc = moe_test_run(data_suite());
    nftw(g_dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return rc;
}
