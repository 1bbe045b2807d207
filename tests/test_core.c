// test_core.c: status codes, Philox known answers, distributions, the GEMM
// wrapper and the packed GEMM against their naive twin, the parameter registry, the buffer plan
// (sums, one block per role, bindings, overflow messages), atomic files.
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/gemm.h"
#include "core/params.h"
#include "core/plan.h"
#include "core/rng.h"
#include "core/status.h"
#include "io/atomic.h"
#include "testutil.h"

START_TEST(test_philox_known_answers)
{
    // Known-answer vectors of Philox4x32-10 published with Random123 (kat_vectors).
    struct { uint32_t ctr[4], key[2], out[4]; } kat[] = {
        { { 0, 0, 0, 0 }, { 0, 0 }, { 0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8 } },
        { { ~0u, ~0u, ~0u, ~0u }, { ~0u, ~0u }, { 0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd } },
        { { 0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344 }, { 0xa4093822, 0x299f31d0 },
          { 0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1 } },
    };
    for (size_t i = 0; i < 3; i++) {
        uint32_t out[4];
        moe_philox4x32_10(kat[i].ctr, kat[i].key, out);
        for (int j = 0; j < 4; j++)
            ck_assert_uint_eq(out[j], kat[i].out[j]);
    }
}
END_TEST

START_TEST(test_rng_pure_and_distinct)
{
    struct moe_rng a = moe_rng_make(42, MOE_RNG_INIT, 7), b = moe_rng_make(42, MOE_RNG_NOISE, 7);
    // pure function of (seed, purpose, stream, index): order of draws does not matter
    float x9 = moe_rng_uniform(&a, 9), x3 = moe_rng_uniform(&a, 3);
    ck_assert_float_eq(moe_rng_uniform(&a, 3), x3);
    ck_assert_float_eq(moe_rng_uniform(&a, 9), x9);
    ck_assert_float_ne(moe_rng_uniform(&b, 3), x3);
    // uniform in (0, 1), normal with mean ~0 and variance ~1 (n = 200000: 5-sigma bounds)
    const size_t n = 200000;
    double su = 0, sn = 0, sn2 = 0;
    for (size_t i = 0; i < n; i++) {
        float u = moe_rng_uniform(&a, i), g = moe_rng_normal(&a, i);
        ck_assert(u > 0.0f && u < 1.0f);
        su += u;
        sn += g;
        sn2 += (double)g * g;
    }
    ck_assert_double_lt(fabs(su / n - 0.5), 5 * sqrt(1.0 / 12 / n));
    ck_assert_double_lt(fabs(sn / n), 5 * sqrt(1.0 / n));
    ck_assert_double_lt(fabs(sn2 / n - 1.0), 5 * sqrt(2.0 / n));
}
END_TEST

START_TEST(test_rng_permutation)
{
    uint32_t perm[1000];
    int seen[1000] = { 0 };
    struct moe_rng r = moe_rng_make(3, MOE_RNG_SHUFFLE, 1);
    moe_rng_permutation(&r, perm, 1000);
    size_t fixed = 0;
    for (size_t i = 0; i < 1000; i++) {
        ck_assert_uint_lt(perm[i], 1000);
        ck_assert_int_eq(seen[perm[i]]++, 0);
        fixed += perm[i] == i;
    }
    ck_assert_uint_lt(fixed, 10); // a shuffled permutation has ~1 fixed point
}
END_TEST

static void fill(float *x, size_t n, uint32_t stream)
{
    struct moe_rng r = moe_rng_make(11, MOE_RNG_DATA, stream);
    moe_rng_fill_uniform(&r, x, n, -1.0f, 1.0f);
}

// One case of the GEMM tests: the dimensions of shape sh with transposes ta, tb,
// leading dimensions padded past them, and the stored rows of A and B.
struct gemm_case {
    size_t M, N, K, lda, ldb, ldc, ra, rb;
};

static struct gemm_case gemm_case(const size_t sh[3], int ta, int tb)
{
    struct gemm_case g = { .M = sh[0], .N = sh[1], .K = sh[2] };
    g.lda = (ta ? g.M : g.K) + 3, g.ldb = (tb ? g.K : g.N) + 1, g.ldc = g.N + 2;
    g.ra = ta ? g.K : g.M, g.rb = tb ? g.N : g.K;
    return g;
}

START_TEST(test_gemm_matches_reference)
{
    // Every transpose combination, odd sizes, padded leading dimensions, beta 0 and 1.
    size_t shapes[][3] = { { 1, 1, 1 }, { 3, 5, 7 }, { 17, 9, 33 }, { 64, 48, 80 }, { 5, 130, 2 } };
    for (size_t s = 0; s < 5; s++)
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++)
                for (int bi = 0; bi < 2; bi++) {
                    const struct gemm_case g = gemm_case(shapes[s], ta, tb);
                    const size_t M = g.M, N = g.N, K = g.K, lda = g.lda, ldb = g.ldb, ldc = g.ldc, ra = g.ra, rb = g.rb;
                    float *A = calloc(ra * lda, 4), *B = calloc(rb * ldb, 4);
                    float *C1 = calloc(M * ldc, 4), *C2 = calloc(M * ldc, 4);
                    fill(A, ra * lda, 1);
                    fill(B, rb * ldb, 2);
                    fill(C1, M * ldc, 3);
                    memcpy(C2, C1, M * ldc * 4);
                    float beta = bi ? 1.0f : 0.0f;
                    moe_gemm(ta, tb, M, N, K, 0.5f, A, lda, B, ldb, beta, C1, ldc);
                    moe_gemm_ref(ta, tb, M, N, K, 0.5f, A, lda, B, ldb, beta, C2, ldc);
                    for (size_t i = 0; i < M; i++)
                        for (size_t j = 0; j < N; j++)
                            // tolerance: float accumulation of K terms of size <= 1
                            ck_assert_float_eq_tol(C1[i * ldc + j], C2[i * ldc + j], 1e-5f * (float)(K + 1));
                    // padding columns untouched
                    for (size_t i = 0; i < M; i++)
                        ck_assert_float_eq(C1[i * ldc + N], C2[i * ldc + N]);
                    free(A), free(B), free(C1), free(C2);
                }
}
END_TEST

// The packed GEMM (core/gemm_pack.c) against the naive twin, over shapes that
// cross every block size of the sub-configurations in use (KC 256..480, MC
// 144..480, NC 3072..4080; MR 6 or 32, NR 12 or 16) and leave partial micro-tiles:
// all transposes, beta 0 over NaN (overwritten) and 1, padded leading
// dimensions untouched; and 1, 2 and 3 threads giving the same bits.
START_TEST(test_gemm_packed)
{
    if (!moe_gemm_packed_ready())
        return; // the sub-configuration's packing sizes differ from MR/NR: moe_gemm uses bli_sgemm
    size_t shapes[][3] = { { 1, 1, 1 }, { 33, 13, 385 }, { 130, 70, 1000 }, { 500, 17, 64 },
                           { 7, 4100, 9 }, { 4100, 5, 11 }, { 97, 3, 517 } };
    const size_t ns = sizeof shapes / sizeof shapes[0];
    for (size_t s = 0; s < ns; s++)
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++)
                for (int bi = 0; bi < 2; bi++) {
                    const struct gemm_case g = gemm_case(shapes[s], ta, tb);
                    const size_t M = g.M, N = g.N, K = g.K, lda = g.lda, ldb = g.ldb, ldc = g.ldc, ra = g.ra, rb = g.rb;
                    float *A = calloc(ra * lda, 4), *B = calloc(rb * ldb, 4), *C0 = calloc(M * ldc, 4);
                    float *C[4];
                    fill(A, ra * lda, 1);
                    fill(B, rb * ldb, 2);
                    fill(C0, M * ldc, 3);
                    const float beta = bi ? 1.0f : 0.0f;
                    if (!bi) // beta 0 must overwrite, not scale, what was there
                        for (size_t i = 0; i < M; i++)
                            for (size_t j = 0; j < N; j++)
                                C0[i * ldc + j] = NAN;
                    for (int v = 0; v < 4; v++) {
                        C[v] = malloc(M * ldc * 4);
                        memcpy(C[v], C0, M * ldc * 4);
                    }
                    moe_gemm_ref(ta, tb, M, N, K, 0.5f, A, lda, B, ldb, beta, C[0], ldc);
                    for (int th = 1; th <= 3; th++)
                        ck_assert_int_eq(moe_gemm_packed(ta, tb, M, N, K, 0.5f, A, lda, B, ldb, beta, C[th], ldc, th), 0);
                    for (size_t i = 0; i < M; i++) {
                        for (size_t j = 0; j < N; j++)
                            ck_assert_float_eq_tol(C[1][i * ldc + j], C[0][i * ldc + j], 1e-5f * (float)(K + 1));
                        for (size_t j = N; j < ldc; j++)
                            ck_assert(memcmp(&C[1][i * ldc + j], &C0[i * ldc + j], 4) == 0);
                    }
                    ck_assert(memcmp(C[1], C[2], M * ldc * 4) == 0);
                    ck_assert(memcmp(C[1], C[3], M * ldc * 4) == 0);
                    free(A), free(B), free(C0);
                    for (int v = 0; v < 4; v++)
                        free(C[v]);
                }
    // nothing to do for an empty product
    float c = 1.0f;
    ck_assert_int_eq(moe_gemm_packed(0, 0, 1, 1, 0, 1.0f, &c, 1, &c, 1, 0.0f, &c, 1, 1), -1);
    ck_assert_float_eq(c, 1.0f);
}
END_TEST

// moe_gemm sends big products through the packed path and small ones to
// bli_sgemm by shape alone, so called from inside a caller's parallel loop (one
// thread each) it gives the same bits as on every thread.
START_TEST(test_gemm_threads_same_bits)
{
    const size_t M = 128, N = 1024, K = 256; // one expert's x . W1^T at E = 64, T = 4096, k = 2
    float *A = malloc(M * K * 4), *B = malloc(N * K * 4), *C1 = malloc(M * N * 4), *C2 = malloc(M * N * 4);
    fill(A, M * K, 4);
    fill(B, N * K, 5);
    moe_gemm(0, 1, M, N, K, 1.0f, A, K, B, K, 0.0f, C1, N);
    #pragma omp parallel num_threads(2)
    {
        #pragma omp single
        moe_gemm(0, 1, M, N, K, 1.0f, A, K, B, K, 0.0f, C2, N);
    }
    ck_assert(memcmp(C1, C2, M * N * 4) == 0);
    free(A), free(B), free(C1), free(C2);
}
END_TEST

START_TEST(test_blas_info)
{
    const struct moe_blas_info *b = moe_blas_get_info();
    ck_assert_str_ne(b->arch, "");
    ck_assert_int_ge(b->threads, 1);
    // Unless the user forced it, this machine must not end up on BLIS's slow generic kernels.
    if (!getenv("BLIS_ARCH_TYPE") && __builtin_cpu_supports("avx2"))
        ck_assert_str_ne(b->arch, "generic");
}
END_TEST

START_TEST(test_params_registry)
{
    struct moe_params p;
    struct moe_err err;
    moe_params_init(&p);
    ck_assert_int_eq(moe_params_add(&p, "a", MOE_SHAPE(3, 5), &err), 0);
    ck_assert_int_eq(moe_params_add(&p, "b", MOE_SHAPE(7), &err), 1);
    ck_assert_int_eq(moe_params_add(&p, "a", MOE_SHAPE(2), &err), MOE_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.msg, "declared twice"));
    ck_assert_int_eq(moe_params_add(&p, "z", MOE_SHAPE(4, 0), &err), MOE_EINVAL);
    ck_assert_int_eq(moe_params_alloc(&p, &err), 0);
    ck_assert_int_eq(moe_params_find(&p, "b"), 1);
    ck_assert_int_eq(moe_params_find(&p, "nope"), -1);
    ck_assert_uint_eq(p.t[1].offset % 16, 0);
    ck_assert_uint_ge(p.t[1].offset, 15);
    moe_params_data(&p, 1)[6] = 1.0f;
    moe_params_grad(&p, 0)[14] = 2.0f;
    moe_params_zero_grad(&p);
    ck_assert_float_eq(moe_params_grad(&p, 0)[14], 0.0f);
    // a tensor whose backward writes its gradient whole is left alone, the rest cleared
    moe_params_mark_grad_set(&p, 0);
    for (size_t i = 0; i < p.numel; i++)
        p.grad[i] = 3.0f;
    moe_params_zero_grad(&p);
    for (size_t i = 0; i < p.numel; i++)
        ck_assert_float_eq(p.grad[i], i < 15 ? 3.0f : 0.0f);
    p.t[0].grad_set = 0;
    moe_params_mark_grad_set(&p, 1);
    for (size_t i = 0; i < p.numel; i++)
        p.grad[i] = 3.0f;
    moe_params_zero_grad(&p);
    for (size_t i = 0; i < p.numel; i++)
        ck_assert_float_eq(p.grad[i], i >= p.t[1].offset && i < p.t[1].offset + 7 ? 3.0f : 0.0f);
    ck_assert_int_eq(moe_params_add(&p, "late", MOE_SHAPE(1), &err), MOE_EINVAL);
    char buf[64];
    moe_shape_str(p.t[0].ndim, p.t[0].shape, buf, sizeof buf);
    ck_assert_str_eq(buf, "[3, 5]");
    moe_params_release(&p);
    moe_params_release(&p); // idempotent
}
END_TEST

// The plan: parameters laid out as the registry lays them out, buffers rounded
// to 64 bytes and carved from one block per role, the largest entry named,
// overflow refused with the keys, and only the first failure kept.
START_TEST(test_plan)
{
    struct moe_err err = { 0 };
    struct moe_plan pl;
    moe_plan_init(&pl, &err);
    int iw = -1, ib = -1;
    float *x = NULL, *y = NULL;
    int32_t *idx = NULL;
    double *acc = NULL;
    struct moe_dim dA = { 3, "a.key" }, dB = { 5, "b.key" }, dT = { 7, "rows" };
    ck_assert_int_eq(moe_plan_param(&pl, &iw, MOE_DIMS(dA, dB), "w.%d", 1), 0);
    ck_assert_int_eq(moe_plan_param(&pl, &ib, MOE_DIMS(dA), "b"), 0);
    ck_assert_int_eq(moe_plan_buf(&pl, &x, MOE_ROLE_ACT, MOE_DT_F32, MOE_DIMS(dT, dB), "x"), 0); // 140 -> 192
    ck_assert_int_eq(moe_plan_buf(&pl, &idx, MOE_ROLE_SCRATCH, MOE_DT_I32, MOE_DIMS(dT), "idx"), 0); // 28 -> 64
    ck_assert_int_eq(moe_plan_buf(&pl, &y, MOE_ROLE_ACT, MOE_DT_F32, MOE_DIMS({ 0, "none" }), "empty"), 0); // 64
    ck_assert_int_eq(moe_plan_buf(&pl, &acc, MOE_ROLE_STATE, MOE_DT_F64, MOE_DIMS(dA, dB), "acc"), 0); // 120 -> 128
    moe_plan_macs(&pl, 2.5);
    ck_assert_uint_eq(pl.count, 18);
    ck_assert_uint_eq(pl.numel, 16 + 3);
    ck_assert_uint_eq(pl.bytes[MOE_ROLE_ACT], 192 + 64);
    ck_assert_uint_eq(pl.bytes[MOE_ROLE_SCRATCH], 64);
    ck_assert_uint_eq(pl.bytes[MOE_ROLE_STATE], 128);
    ck_assert_uint_eq(moe_plan_buffer_bytes(&pl), 192 + 64 + 64 + 128);
    ck_assert_double_eq(pl.macs, 2.5);
    ck_assert_str_eq(pl.largest, "buffer 'x' (rows x b.key = 7 x 5)");
    struct moe_params p;
    moe_params_init(&p);
    ck_assert_int_eq(moe_plan_alloc(&pl, &p), 0);
    ck_assert_int_eq(iw, 0);
    ck_assert_int_eq(ib, 1);
    ck_assert_uint_eq(p.numel, pl.numel);
    ck_assert_uint_eq(moe_params_count(&p), pl.count);
    ck_assert_str_eq(p.t[0].name, "w.1");
    ck_assert_ptr_nonnull(x);
    ck_assert_ptr_nonnull(y);
    ck_assert_ptr_nonnull(idx);
    ck_assert_ptr_nonnull(acc);
    ck_assert_uint_eq((uintptr_t)x % 64, 0);
    ck_assert_uint_eq((uintptr_t)y % 64, 0);
    ck_assert_uint_eq((uintptr_t)acc % 64, 0);
    ck_assert(y >= x + 35 || x >= y + 16); // distinct buffers
    for (int i = 0; i < 35; i++)
        ck_assert_float_eq(x[i], 0.0f); // zero-filled
    for (int i = 0; i < 15; i++)
        acc[i] = 1.0;
    moe_plan_release(&pl);
    moe_params_release(&p);

    // a product past size_t names its keys; later declarations do nothing
    moe_plan_init(&pl, &err);
    struct moe_dim big = { (size_t)1 << 40, "model.big" };
    ck_assert_int_eq(moe_plan_buf(&pl, &x, MOE_ROLE_ACT, MOE_DT_F32, MOE_DIMS(big, big), "huge"), MOE_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.msg, "model.big x model.big = 1099511627776 x 1099511627776 x 4 bytes"));
    ck_assert_ptr_nonnull(strstr(err.msg, "overflows size_t"));
    ck_assert_int_eq(moe_plan_fail(&pl, MOE_ENOMEM, "second"), MOE_EINVAL);
    ck_assert_int_eq(moe_plan_param(&pl, &iw, MOE_DIMS(dA), "late"), MOE_EINVAL);
    ck_assert_uint_eq(pl.n, 0);
    moe_params_init(&p);
    ck_assert_int_eq(moe_plan_alloc(&pl, &p), MOE_EINVAL);
    ck_assert_ptr_null(p.data);
    moe_plan_release(&pl);
    moe_params_release(&p);
}
END_TEST

START_TEST(test_atomic_and_status)
{
    char dir[] = "/tmp/moe-core-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char path[256];
    snprintf(path, sizeof path, "%s/f.txt", dir);
    struct moe_err err;
    ck_assert_int_eq(moe_atomic_write(path, "hello", 5, &err), 0);
    char *buf;
    size_t len;
    ck_assert_int_eq(moe_read_file(path, &buf, &len, &err), 0);
    ck_assert_uint_eq(len, 5);
    ck_assert_str_eq(buf, "hello");
    free(buf);
    // an aborted write leaves the old file and no temporary behind
    struct moe_atomic_file a;
    ck_assert_int_eq(moe_atomic_open(&a, path, &err), 0);
    fputs("torn", a.f);
    moe_atomic_abort(&a);
    ck_assert_int_eq(access(a.tmp, F_OK), -1);
    ck_assert_int_eq(moe_read_file(path, &buf, &len, &err), 0);
    ck_assert_str_eq(buf, "hello");
    free(buf);
    remove(path);
    ck_assert_int_eq(moe_read_file(path, &buf, &len, &err), MOE_EIO);
    ck_assert_ptr_nonnull(strstr(err.msg, "f.txt"));
    rmdir(dir);
    ck_assert_int_eq(moe_status_exit_code(MOE_ECONFIG), 2);
    ck_assert_int_eq(moe_status_exit_code(MOE_EINVAL), 2);
    ck_assert_int_eq(moe_status_exit_code(MOE_ESHAPE), 2);
    ck_assert_int_eq(moe_status_exit_code(MOE_EIO), 1);
    ck_assert_int_eq(moe_status_exit_code(MOE_EFORMAT), 1);
    ck_assert_int_eq(moe_status_exit_code(MOE_ENUMERIC), 1);
}
END_TEST

int main(void)
{
    if (moe_test_init_blas(2))
        return 1;
    Suite *s = suite_create("core");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_philox_known_answers);
    tcase_add_test(tc, test_rng_pure_and_distinct);
    tcase_add_test(tc, test_rng_permutation);
    tcase_add_test(tc, test_gemm_matches_reference);
    tcase_add_test(tc, test_gemm_packed);
    tcase_add_test(tc, test_gemm_threads_same_bits);
    tcase_add_test(tc, test_blas_info);
    tcase_add_test(tc, test_params_registry);
    tcase_add_test(tc, test_plan);
    tcase_add_test(tc, test_atomic_and_status);
    suite_add_tcase(s, tc);
    return moe_test_run(s);
}
