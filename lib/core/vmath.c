// vmath.c: SLEEF wrappers with a one-time choice of instruction set (see vmath.h).
// reference: Shibata & Petrogalli 2020, "SLEEF: A Portable Vectorized Library of
// C Standard Mathematical Functions" (IEEE TPDS 31(6)); the deterministic
// ("finz"/"cinz") variants of SLEEF 3.4+.
#include "core/vmath.h"

#include <immintrin.h>
#include <sleef.h>
#include <string.h>

// sleef.h declares its AVX2 functions only when this file is compiled with
// -mavx2; it is not (the SSE2 path must run anywhere), so declare the two here.
__attribute__((target("avx2,fma"))) __m256 Sleef_finz_expf8_u10avx2(__m256 x);
__attribute__((target("avx2,fma"))) __m256 Sleef_finz_tanhf8_u35avx2(__m256 x);

// 1 when the AVX2+FMA path runs; decided once, on first use.
static int use_avx2(void)
{
    static int v = -1;
    if (v < 0) {
        __builtin_cpu_init();
        v = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    }
    return v;
}

const char *moe_vmath_isa(void) { return use_avx2() ? "avx2-fma" : "sse2"; }

// One loop per (function, ISA): full vectors, then the tail copied into a
// padded vector (padding 0: finite for both functions) so every element goes
// through the same vector code.
#define VMATH_AVX2(name, fn)                                          \
    __attribute__((target("avx2,fma"))) static void name(float *y, const float *x, size_t n) \
    {                                                                 \
        size_t i = 0;                                                 \
        for (; i + 8 <= n; i += 8)                                    \
            _mm256_storeu_ps(y + i, fn(_mm256_loadu_ps(x + i)));      \
        if (i < n) {                                                  \
            float t[8] = { 0 };                                       \
            memcpy(t, x + i, (n - i) * sizeof *t);                    \
            _mm256_storeu_ps(t, fn(_mm256_loadu_ps(t)));              \
            memcpy(y + i, t, (n - i) * sizeof *t);                    \
        }                                                             \
    }
#define VMATH_SSE2(name, fn)                                          \
    static void name(float *y, const float *x, size_t n)              \
    {                                                                 \
        size_t i = 0;                                                 \
        for (; i + 4 <= n; i += 4)                                    \
            _mm_storeu_ps(y + i, fn(_mm_loadu_ps(x + i)));            \
        if (i < n) {                                                  \
            float t[4] = { 0 };                                       \
            memcpy(t, x + i, (n - i) * sizeof *t);                    \
            _mm_storeu_ps(t, fn(_mm_loadu_ps(t)));                    \
            memcpy(y + i, t, (n - i) * sizeof *t);                    \
        }                                                             \
    }

VMATH_AVX2(exp_avx2, Sleef_finz_expf8_u10avx2)
VMATH_AVX2(tanh_avx2, Sleef_finz_tanhf8_u35avx2)
VMATH_SSE2(exp_sse2, Sleef_cinz_expf4_u10sse2)
VMATH_SSE2(tanh_sse2, Sleef_cinz_tanhf4_u35sse2)

void moe_vexpf(float *y, const float *x, size_t n)
{
    if (use_avx2())
        exp_avx2(y, x, n);
    else
        exp_sse2(y, x, n);
}

void moe_vtanhf(float *y, const float *x, size_t n)
{
    if (use_avx2())
        tanh_avx2(y, x, n);
    else
        tanh_sse2(y, x, n);
}
