// testutil.h: what every Check test program's main() shares.
#ifndef MOE_TESTUTIL_H
#define MOE_TESTUTIL_H

#include <check.h>
#include <math.h>
#include <stdio.h>

#include "core/gemm.h"

// Initialise BLIS with `threads` threads; print the reason and return 1 on failure.
static inline int moe_test_init_blas(int threads)
{
    struct moe_err err;
    if (moe_blas_init(threads, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    return 0;
}

// The larger of a running worst and d, a NaN on either side winning: fmax()
// drops a NaN (and "d > worst" is false for one), so a worst built that way
// passes a "worst <= tol" check whatever NaNs the compared values held.
static inline double moe_test_worst(double worst, double d)
{
    return isnan(worst) || isnan(d) ? NAN : d > worst ? d : worst;
}

// Run a suite; the exit code is 1 when any test failed.
static inline int moe_test_run(Suite *s)
{
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}

#endif
