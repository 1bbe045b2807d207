// testutil.h: what every Check test program's main() shares.
#ifndef MOE_TESTUTIL_H
#define MOE_TESTUTIL_H

#include <check.h>
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
