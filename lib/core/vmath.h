// vmath.h: elementwise exp and tanh over float arrays, vectorised with SLEEF.
// Not here: reductions (callers sum in their own fixed order) or any other function.
//
// SLEEF's "finz" functions (FMA, deterministic) return the same bits for every
// vector width and on every CPU that has AVX2 and FMA; this file uses them
// 8 lanes at a time there, with the tail padded into one more vector, so a value
// never depends on n, on where it sits in the array, or on the thread that
// computed it. CPUs without AVX2+FMA get SLEEF's "cinz" (no-FMA) functions, 4
// lanes of SSE2: still deterministic, but their bits can differ from the finz
// ones in the last place (moe_vmath_isa() says which is in use).
// exp is SLEEF's 1.0-ULP class (u10); tanh its 3.5-ULP class (u35), three times
// faster than its u10 tanh and far inside what float training needs.
#ifndef MOE_VMATH_H
#define MOE_VMATH_H

#include <stddef.h>

// y[i] = exp(x[i]) for i < n; y == x allowed.
void moe_vexpf(float *y, const float *x, size_t n);
// y[i] = tanh(x[i]) for i < n (within 3.5 ULP); y == x allowed.
void moe_vtanhf(float *y, const float *x, size_t n);
// One value through the two functions above, with the bits it gets in an
// array: for code that takes the library's exp or tanh one value at a time
// (the tests that stand them in for a GPU's expf and tanhf).
static inline float moe_expf1(float x)
{
    float y;
    moe_vexpf(&y, &x, 1);
    return y;
}
static inline float moe_tanhf1(float x)
{
    float y;
    moe_vtanhf(&y, &x, 1);
    return y;
}
// "avx2-fma" or "sse2": which SLEEF functions this CPU runs.
const char *moe_vmath_isa(void);

#endif
