// test_quant.c: int8 quantization (lib/compress/quant.c): the round-trip
// bound |w - w'| <= scale / 2 for every element, both schemes, both
// granularities, 2-d and 3-d; q in range; 0.0 exact in the asymmetric scheme;
// all-zero and tiny groups; round half to even; a model saved with some
// tensors quantized loads exactly scale * (q - zero) for those and the same
// bits for the rest; files with a bad or missing scale or zero point are
// refused with one line naming the tensor, the registry untouched.
#include <check.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "compress/quant.h"
#include "core/rng.h"
#include "io/safetensors.h"
#include "testutil.h"
#include "train/train.h"

static char tmpdir[64];

static void setup(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/moe-quant-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static void teardown(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    ck_assert_int_eq(system(cmd), 0);
}

static const char *tpath(const char *name)
{
    static char buf[256];
    snprintf(buf, sizeof buf, "%s/%s", tmpdir, name);
    return buf;
}

// Deterministic weights with rows of very different ranges: row r spans
// about 10^(r mod 5 - 2), one row all zero, one row constant and positive
// (asymmetric: the range widened to 0), and some exact zeros.
static void fill(float *w, size_t rows, size_t len, uint64_t seed)
{
    uint64_t s = seed * 0x9e3779b97f4a7c15ull + 1;
    for (size_t r = 0; r < rows; r++) {
        double mag = pow(10.0, (double)(r % 5) - 2.0);
        for (size_t j = 0; j < len; j++) {
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            double u = (double)(s >> 11) / 9007199254740992.0; // [0, 1)
            float v = (float)(mag * (2.0 * u - 1.0));
            if (r == 1)
                v = 0.0f;
            else if (r == 2)
                v = 0.75f;
            else if (j % 7 == 3)
                v = 0.0f;
            else if (r % 4 == 3)
                v = fabsf(v) + 0.5f * (float)mag; // all positive
            w[r * len + j] = v;
        }
    }
}

static void check_roundtrip(int ndim, const size_t *shape, enum moe_quant_scheme scheme, enum moe_quant_gran gran)
{
    size_t numel = 1;
    for (int d = 0; d < ndim; d++)
        numel *= shape[d];
    size_t len = shape[ndim - 1], rows = numel / len;
    float *w = malloc(numel * sizeof *w), *back = malloc(numel * sizeof *back);
    int8_t *q = malloc(numel);
    size_t n_groups, glen;
    struct moe_err err = { 0 };
    ck_assert_int_eq(moe_quant_groups(ndim, shape, gran, &n_groups, &glen, &err), 0);
    ck_assert_uint_eq(n_groups, gran == MOE_QUANT_PER_TENSOR ? 1 : rows);
    ck_assert_uint_eq(n_groups * glen, numel);
    float *scale = malloc(n_groups * sizeof *scale);
    int32_t *zero = malloc(n_groups * sizeof *zero);
    ck_assert(w && back && q && scale && zero);
    fill(w, rows, len, (uint64_t)(ndim * 10 + scheme * 3 + gran));
    ck_assert_msg(moe_quant_int8(w, n_groups, glen, scheme, q, scale, zero, &err) == 0, "%s", err.msg);
    int asym = scheme == MOE_QUANT_ASYM;
    moe_dequant_int8(back, q, scale, asym ? zero : NULL, glen, 0, numel);
    for (size_t g = 0; g < n_groups; g++) {
        ck_assert(isfinite(scale[g]) && scale[g] >= FLT_MIN);
        ck_assert_int_ge(zero[g], asym ? -128 : 0);
        ck_assert_int_le(zero[g], asym ? 127 : 0);
    }
    for (size_t j = 0; j < numel; j++) {
        size_t g = j / glen;
        ck_assert_int_ge(q[j], asym ? -128 : -127);
        ck_assert_int_le(q[j], 127);
        // the definition, bit for bit
        float want = scale[g] * (float)((int32_t)q[j] - (asym ? zero[g] : 0));
        ck_assert_mem_eq(&back[j], &want, sizeof want);
        double bound = scale[g] * (0.5 + 1e-5) + 2.0 * FLT_EPSILON * fabs((double)w[j]);
        ck_assert_msg(fabs((double)w[j] - (double)back[j]) <= bound,
                      "ndim %d scheme %d gran %d element %zu: w %.9g, back %.9g, scale %.9g", ndim, (int)scheme,
                      (int)gran, j, (double)w[j], (double)back[j], (double)scale[g]);
        if (w[j] == 0.0f) // 0.0 is exact in both schemes
            ck_assert(back[j] == 0.0f);
    }
    if (gran == MOE_QUANT_PER_CHANNEL) { // the all-zero row: scale 1, q 0
        ck_assert(scale[1] == 1.0f);
        ck_assert_int_eq(zero[1], 0);
        for (size_t j = 0; j < len; j++)
            ck_assert_int_eq(q[len + j], 0);
        if (asym) // the constant row 0.75: range [0, 0.75], zero at the bottom
            ck_assert_int_eq(zero[2], -128);
    }
    free(w), free(back), free(q), free(scale), free(zero);
}

START_TEST(test_roundtrip)
{
    const size_t s2[2] = { 9, 13 }, s3[3] = { 3, 5, 11 };
    for (int scheme = MOE_QUANT_SYM; scheme <= MOE_QUANT_ASYM; scheme++)
        for (int gran = MOE_QUANT_PER_TENSOR; gran <= MOE_QUANT_PER_CHANNEL; gran++) {
            check_roundtrip(2, s2, (enum moe_quant_scheme)scheme, (enum moe_quant_gran)gran);
            check_roundtrip(3, s3, (enum moe_quant_scheme)scheme, (enum moe_quant_gran)gran);
        }
}
END_TEST

// Halfway cases go to the even integer; an all-zero tensor gets scale 1; a
// tiny one scale FLT_MIN; NaN, infinity and huge weights are refused.
START_TEST(test_edges)
{
    struct moe_err err = { 0 };
    const float w[6] = { 127.0f, 2.5f, 3.5f, -2.5f, -0.5f, 0.5f }; // symmetric scale 1
    int8_t q[6];
    float s;
    int32_t z;
    ck_assert_int_eq(moe_quant_int8(w, 1, 6, MOE_QUANT_SYM, q, &s, &z, &err), 0);
    ck_assert(s == 1.0f);
    const int8_t want[6] = { 127, 2, 4, -2, 0, 0 };
    ck_assert_mem_eq(q, want, 6);

    const float zeros[4] = { 0 };
    ck_assert_int_eq(moe_quant_int8(zeros, 1, 4, MOE_QUANT_ASYM, q, &s, &z, &err), 0);
    ck_assert(s == 1.0f);
    ck_assert_int_eq(z, 0);
    ck_assert_int_eq(q[0] | q[1] | q[2] | q[3], 0);

    const float tiny[2] = { 1e-44f, -3e-45f };
    for (int scheme = MOE_QUANT_SYM; scheme <= MOE_QUANT_ASYM; scheme++) {
        ck_assert_int_eq(moe_quant_int8(tiny, 1, 2, (enum moe_quant_scheme)scheme, q, &s, &z, &err), 0);
        ck_assert(s == FLT_MIN);
        for (int j = 0; j < 2; j++)
            ck_assert(fabsf(tiny[j] - moe_dequant_int8_1(q[j], s, z)) <= s / 2);
    }

    float bad[3] = { 1.0f, NAN, 2.0f };
    ck_assert_int_eq(moe_quant_int8(bad, 1, 3, MOE_QUANT_SYM, q, &s, &z, &err), MOE_EINVAL);
    ck_assert_msg(strstr(err.msg, "element 1 is nan"), "%s", err.msg);
    bad[1] = INFINITY;
    ck_assert_int_eq(moe_quant_int8(bad, 3, 1, MOE_QUANT_ASYM, q, &s, &z, &err), MOE_EINVAL);
    bad[1] = FLT_MAX;
    ck_assert_int_eq(moe_quant_int8(bad, 1, 3, MOE_QUANT_SYM, q, &s, &z, &err), MOE_EINVAL);
    bad[1] = MOE_QUANT_W_MAX; // the largest allowed: every dequantized value finite
    ck_assert_int_eq(moe_quant_int8(bad, 1, 3, MOE_QUANT_ASYM, q, &s, &z, &err), 0);
    ck_assert(s <= MOE_QUANT_SCALE_MAX);
    ck_assert(isfinite(moe_dequant_int8_1(-128, s, 127)));

    size_t g, len, shape[3] = { 4, 5, 6 };
    ck_assert_int_eq(moe_quant_groups(1, shape, MOE_QUANT_PER_TENSOR, &g, &len, &err), MOE_EINVAL);
    ck_assert_int_eq(moe_quant_groups(4, shape, MOE_QUANT_PER_TENSOR, &g, &len, &err), MOE_EINVAL);
    ck_assert_int_eq(moe_quant_groups(3, shape, MOE_QUANT_PER_CHANNEL, &g, &len, &err), 0);
    ck_assert_uint_eq(g, 20);
    ck_assert_uint_eq(len, 6);
}
END_TEST

// ---------------------------------------------------------------- a model

static const char *const CFG =
    "{\"data\": {\"source\": \"synthetic\", \"synthetic\": {\"kind\": \"classes\", \"n_train\": 64,"
    " \"n_test\": 16, \"n_in\": 6, \"n_regions\": 4}},"
    " \"model\": {\"type\": \"mlp-moe\", \"n_embd\": 8, \"n_layer\": 2, \"n_ff\": 12, \"n_expert\": 4,"
    " \"n_expert_used\": 2}}";

static void make_model(struct moe_model *m, uint64_t seed)
{
    struct moe_config cfg;
    struct moe_err err;
    ck_assert_msg(moe_config_parse(&cfg, moe_run_schema(), moe_run_schema_len(), CFG, "test", NULL, 0, &err) == 0,
                  "%s", err.msg);
    ck_assert_msg(moe_model_create(m, &cfg, NULL, MOE_TASK_CLASSIFICATION, 6, 4, 16, &err) == 0, "%s", err.msg);
    moe_model_init_weights(m, seed);
    moe_config_release(&cfg);
}

START_TEST(test_model_save_load)
{
    struct moe_model a, b;
    make_model(&a, 3);
    make_model(&b, 4);
    const struct moe_params *p = &a.params;
    struct moe_quant_spec *spec = calloc(p->n, sizeof *spec);
    ck_assert_ptr_nonnull(spec);
    // every 2-d and 3-d tensor, schemes and granularities in turn; some left F32
    size_t n_q = 0, n_3d = 0;
    for (size_t i = 0; i < p->n; i++) {
        if ((p->t[i].ndim != 2 && p->t[i].ndim != 3) || i % 5 == 4)
            continue;
        spec[i] = (struct moe_quant_spec){ n_q % 2 ? MOE_QUANT_ASYM : MOE_QUANT_SYM,
                                           (n_q / 2) % 2 ? MOE_QUANT_PER_CHANNEL : MOE_QUANT_PER_TENSOR };
        n_q++;
        n_3d += p->t[i].ndim == 3;
    }
    ck_assert_uint_ge(n_q, 4);
    ck_assert_uint_ge(n_3d, 1);
    const char *path = tpath("q.safetensors");
    struct moe_err err = { 0 };
    ck_assert_msg(moe_model_save_quant(&a, path, spec, NULL, 0, NULL, 0, &err) == 0, "%s", err.msg);

    struct moe_st_file f;
    ck_assert_msg(moe_safetensors_open(path, &f, &err) == 0, "%s", err.msg);
    ck_assert_msg(moe_model_load(&b, &f, 0, &err) == 0, "%s", err.msg); // strict: the parts are no extras
    for (size_t i = 0; i < p->n; i++) {
        const struct moe_tensor *t = &p->t[i];
        const float *wa = moe_params_data(&a.params, (int)i), *wb = moe_params_data(&b.params, (int)i);
        const struct moe_st_entry *e = moe_safetensors_find(&f, t->name);
        if (spec[i].scheme == MOE_QUANT_NONE) {
            ck_assert_int_eq(e->dtype, MOE_F32);
            ck_assert_mem_eq(wa, wb, t->numel * sizeof *wa);
            continue;
        }
        ck_assert_int_eq(e->dtype, MOE_I8);
        struct moe_quant_spec got;
        const struct moe_st_entry *sc, *zp;
        ck_assert_msg(moe_quant_check(&f, e, &got, &sc, &zp, &err) == 0, "%s", err.msg);
        ck_assert_int_eq(got.scheme, spec[i].scheme);
        ck_assert_int_eq(got.gran, spec[i].gran);
        ck_assert_int_eq(sc->ndim, spec[i].gran == MOE_QUANT_PER_TENSOR ? 0 : t->ndim - 1);
        size_t len = spec[i].gran == MOE_QUANT_PER_TENSOR ? t->numel : t->shape[t->ndim - 1];
        for (size_t j = 0; j < t->numel; j++) {
            size_t g = j / len;
            float s;
            int32_t z = 0;
            memcpy(&s, (const char *)sc->data + 4 * g, 4);
            if (zp)
                memcpy(&z, (const char *)zp->data + 4 * g, 4);
            float want = s * (float)((int32_t)((const int8_t *)e->data)[j] - z);
            ck_assert_msg(memcmp(&wb[j], &want, 4) == 0, "%s[%zu]: %.9g, want %.9g", t->name, j, (double)wb[j],
                          (double)want);
            ck_assert(fabsf(wa[j] - wb[j]) <= s * 0.50001f + 2 * FLT_EPSILON * fabsf(wa[j]));
        }
    }
    moe_safetensors_close(&f);

    // spec NULL, or all NONE: moe_model_save's file, byte for byte
    const char *plain = tpath("plain.safetensors"), *none = tpath("none.safetensors");
    ck_assert_int_eq(moe_model_save(&a, plain, NULL, 0, NULL, 0, &err), 0);
    memset(spec, 0, p->n * sizeof *spec);
    ck_assert_int_eq(moe_model_save_quant(&a, none, spec, NULL, 0, NULL, 0, &err), 0);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "cmp -s '%s' '%s'", plain, none);
    ck_assert_int_eq(system(cmd), 0);

    // a 1-d tensor cannot be quantized; the message names it
    for (size_t i = 0; i < p->n; i++)
        if (p->t[i].ndim == 1) {
            spec[i].scheme = MOE_QUANT_SYM;
            ck_assert_int_eq(moe_model_save_quant(&a, none, spec, NULL, 0, NULL, 0, &err), MOE_EINVAL);
            char frag[128];
            snprintf(frag, sizeof frag, "tensor '%s': only 2-d", p->t[i].name);
            ck_assert_msg(strstr(err.msg, frag), "%s", err.msg);
            break;
        }
    free(spec);
    moe_model_release(&a);
    moe_model_release(&b);
}
END_TEST

// ---------------------------------------------------------------- bad files

// A file holding w (2, 3) as I8 with the given scale and zero parts; loading
// it into a registry w [2, 3] must fail with MOE_EFORMAT (or code), a message
// that names w and contains fragment, and leave the registry as it was.
static void expect_bad(const struct moe_st_ref *parts, size_t n_parts, int code, const char *fragment)
{
    static const int8_t q[6] = { -3, -2, -1, 0, 1, 2 };
    struct moe_st_ref refs[4] = { { .name = "w", .dtype = MOE_I8, .ndim = 2, .shape = { 2, 3 }, .data = q } };
    for (size_t i = 0; i < n_parts; i++)
        refs[1 + i] = parts[i];
    const char *path = tpath("bad.safetensors");
    struct moe_err err = { 0 };
    ck_assert_msg(moe_safetensors_write(path, refs, 1 + n_parts, NULL, 0, &err) == 0, "%s", err.msg);
    struct moe_st_file f;
    ck_assert_msg(moe_safetensors_open(path, &f, &err) == 0, "%s", err.msg);
    struct moe_params p;
    moe_params_init(&p);
    size_t shape[MOE_MAX_DIMS] = { 2, 3 };
    ck_assert_int_ge(moe_params_add(&p, "w", 2, shape, &err), 0);
    ck_assert_int_eq(moe_params_alloc(&p, &err), 0);
    for (size_t j = 0; j < 6; j++)
        p.data[j] = -7.0f;
    int rc = moe_quant_load_params(&f, &p, 0, &err);
    ck_assert_msg(rc == code, "expected %d, got %d (%s)", code, rc, err.msg);
    ck_assert_msg(strstr(err.msg, "tensor 'w"), "message '%s' does not name the tensor", err.msg);
    ck_assert_msg(strstr(err.msg, fragment), "message '%s' lacks '%s'", err.msg, fragment);
    ck_assert_ptr_null(strchr(err.msg, '\n'));
    for (size_t j = 0; j < 6; j++)
        ck_assert(p.data[j] == -7.0f);
    moe_params_release(&p);
    moe_safetensors_close(&f);
}

START_TEST(test_bad_files)
{
    float s1 = 0.5f, s2[2] = { 0.5f, 0.25f }, s3[3] = { 1, 1, 1 };
    int32_t z1 = 0, z2[2] = { 3, -4 };
    struct moe_st_ref scale = { .name = "w.q_scale", .dtype = MOE_F32, .ndim = 0, .data = &s1 };
    struct moe_st_ref scale2 = { .name = "w.q_scale", .dtype = MOE_F32, .ndim = 1, .shape = { 2 }, .data = s2 };
    struct moe_st_ref zero = { .name = "w.q_zero", .dtype = MOE_I32, .ndim = 0, .data = &z1 };
    struct moe_st_ref zero2 = { .name = "w.q_zero", .dtype = MOE_I32, .ndim = 1, .shape = { 2 }, .data = z2 };

    expect_bad(NULL, 0, MOE_EFORMAT, "is quantized (I8) but the file has no 'w.q_scale'");
    const float bad_scales[4] = { 0.0f, -1.0f, NAN, INFINITY };
    for (int k = 0; k < 4; k++) {
        s1 = bad_scales[k];
        expect_bad(&scale, 1, MOE_EFORMAT, "scale 0 is");
        expect_bad(&scale, 1, MOE_EFORMAT, "scales must be finite, positive");
    }
    s1 = FLT_MAX; // finite, but 255 x it is not
    expect_bad(&scale, 1, MOE_EFORMAT, "at most");
    s1 = 0.5f;
    s2[1] = -0.25f; // per channel: the second row's
    expect_bad(&scale2, 1, MOE_EFORMAT, "scale 1 is -0.25");
    s2[1] = 0.25f;
    struct moe_st_ref wrong = { .name = "w.q_scale", .dtype = MOE_F32, .ndim = 1, .shape = { 3 }, .data = s3 };
    expect_bad(&wrong, 1, MOE_EFORMAT, "scales have shape [3], expected [] (per tensor) or [2] (per output channel)");
    wrong.ndim = 2, wrong.shape[0] = 1, wrong.shape[1] = 3;
    expect_bad(&wrong, 1, MOE_EFORMAT, "scales have shape [1, 3]");
    struct moe_st_ref f64 = { .name = "w.q_scale", .dtype = MOE_F64, .ndim = 0, .data = &(double){ 1.0 } };
    expect_bad(&f64, 1, MOE_EFORMAT, "are not F32");

    struct moe_st_ref parts[2] = { scale, zero };
    for (int k = 0; k < 2; k++) {
        z1 = k ? -129 : 128;
        expect_bad(parts, 2, MOE_EFORMAT, k ? "zero point 0 is -129, outside the int8 range" : "zero point 0 is 128");
    }
    z1 = 0;
    parts[0] = scale2, parts[1] = zero2;
    z2[1] = 1000;
    expect_bad(parts, 2, MOE_EFORMAT, "zero point 1 is 1000");
    z2[1] = -4;
    parts[1] = zero; // scale per channel, zero per tensor
    expect_bad(parts, 2, MOE_EFORMAT, "zero points have shape [], its scales [2]");
    int8_t z8 = 0;
    parts[0] = scale;
    parts[1] = (struct moe_st_ref){ .name = "w.q_zero", .dtype = MOE_I8, .ndim = 0, .data = &z8 };
    expect_bad(parts, 2, MOE_EFORMAT, "are not I32");

    // and the good ones load: w = scale * (q - zero)
    const char *path = tpath("good.safetensors");
    static const int8_t q[6] = { -3, -2, -1, 0, 1, 2 };
    struct moe_st_ref good[3] = { { .name = "w", .dtype = MOE_I8, .ndim = 2, .shape = { 2, 3 }, .data = q }, scale2,
                                  zero2 };
    struct moe_err err = { 0 };
    ck_assert_int_eq(moe_safetensors_write(path, good, 3, NULL, 0, &err), 0);
    struct moe_st_file f;
    ck_assert_int_eq(moe_safetensors_open(path, &f, &err), 0);
    struct moe_params p;
    moe_params_init(&p);
    size_t shape[MOE_MAX_DIMS] = { 2, 3 };
    ck_assert_int_ge(moe_params_add(&p, "w", 2, shape, &err), 0);
    ck_assert_int_eq(moe_params_alloc(&p, &err), 0);
    ck_assert_msg(moe_quant_load_params(&f, &p, 0, &err) == 0, "%s", err.msg);
    const float want[6] = { 0.5f * -6, 0.5f * -5, 0.5f * -4, 0.25f * 4, 0.25f * 5, 0.25f * 6 };
    ck_assert_mem_eq(p.data, want, sizeof want);
    moe_params_release(&p);
    moe_safetensors_close(&f);
}
END_TEST

static Suite *quant_suite(void)
{
    Suite *s = suite_create("quant");
    TCase *tc = tcase_create("core");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_roundtrip);
    tcase_add_test(tc, test_edges);
    tcase_add_test(tc, test_model_save_load);
    tcase_add_test(tc, test_bad_files);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    if (moe_test_init_blas(1))
        return 1;
    return moe_test_run(quant_suite());
}
