// test_cuda_device.c: the CUDA probe (lib/cuda/device.cu) on a real GPU.
// Built only with CUDA (tests/meson.build). Without a usable device (no
// driver, no GPU) it prints the probe's reason and exits 77, which meson
// reports as SKIP. Otherwise it checks what the probe says:
//   - the row is built and available, with a runtime and a driver version
//     and at least one device;
//   - every device has a name, a compute capability and memory (whether the
//     build has code for that capability, sm_80 or sm_90 or PTX for 9.0 and
//     up, is for the kernels' tests to find out);
//   - a device number past the count describes no device.
#include <check.h>
#include <stdio.h>
#include <string.h>

#include "backend/backend.h"
#include "testutil.h"

START_TEST(test_probe)
{
    const struct moe_backend *b = moe_backend_find("cuda");
    struct moe_backend_info info;
    ck_assert_int_eq(b->probe(-1, &info), 0);
    ck_assert(info.built && info.available);
    ck_assert_str_eq(info.reason, "");
    ck_assert_int_ge(info.runtime_version, 12000);
    ck_assert_int_ge(info.driver_version, 12000);
    ck_assert_int_ge(info.device_count, 1);
    int n = info.device_count;
    for (int d = 0; d < n; d++) {
        ck_assert_int_eq(b->probe(d, &info), 0);
        ck_assert_int_eq(info.device, d);
        ck_assert_int_eq(info.device_count, n);
        ck_assert(strlen(info.dev.name) > 0);
        ck_assert_int_ge(info.dev.cc_major, 1);
        ck_assert(info.dev.total_memory > 0);
        printf("cuda:%d %s, compute capability %d.%d, %zu bytes\n", d, info.dev.name, info.dev.cc_major,
               info.dev.cc_minor, info.dev.total_memory);
    }
    ck_assert_int_eq(b->probe(n, &info), 0);
    ck_assert_int_eq(info.device, -1);
}
END_TEST

int main(void)
{
    struct moe_backend_info info;
    moe_backend_find("cuda")->probe(-1, &info);
    if (!info.available) {
        printf("SKIP: no usable CUDA device: %s\n", info.reason);
        return 77;
    }
    Suite *s = suite_create("cuda_device");
    TCase *tc = tcase_create("cuda_device");
    tcase_add_test(tc, test_probe);
    suite_add_tcase(s, tc);
    return moe_test_run(s);
}
