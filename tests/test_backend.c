// test_backend.c: the backend table (lib/backend/) and the CLI's --device
// handling (cmd/cli.c), in every build, with or without CUDA, GPU or not.
//   - the table has "cpu" first and "cuda", both findable by name; the cpu
//     row is always available with one device that has a name and memory;
//   - the cuda row's probe is consistent whatever this build and machine
//     are: not built (unavailable, no device, a reason naming
//     -Dcuda=enabled), built without a usable device (a reason, no device),
//     or built with devices (each one named, with a compute capability and
//     memory); asking for a device out of range describes none;
//   - version numbers as text (13000 -> 13.0);
//   - --device parsing: cpu, cuda, cuda:N accepted; signs, spaces, empty
//     numbers, overflow and other names refused;
//   - the one-line refusal for each case, from made-up probe results, so the
//     GPU cases are checked on machines without one.
// It links the CLI's helper library (cmd/), so it checks the functions the
// CLI calls.
#include <check.h>
#include <string.h>

#include "backend/backend.h"
#include "cli.h"
#include "testutil.h"

START_TEST(test_table)
{
    size_t n = 0;
    const struct moe_backend *t = moe_backends(&n);
    ck_assert_uint_eq(n, 2);
    ck_assert_str_eq(t[0].name, "cpu");
    ck_assert_str_eq(t[1].name, "cuda");
    ck_assert_ptr_eq(moe_backend_find("cpu"), &t[0]);
    ck_assert_ptr_eq(moe_backend_find("cuda"), &t[1]);
    ck_assert_ptr_null(moe_backend_find("tpu"));
    ck_assert_ptr_null(moe_backend_find("cuda:0"));
}
END_TEST

START_TEST(test_cpu)
{
    struct moe_backend_info info;
    const struct moe_backend *b = moe_backend_find("cpu");
    ck_assert_int_eq(b->probe(-1, &info), 0);
    ck_assert(info.built && info.available);
    ck_assert_int_eq(info.device_count, 1);
    ck_assert_int_eq(info.device, -1);
    ck_assert_str_eq(info.reason, "");
    ck_assert_int_eq(b->probe(0, &info), 0);
    ck_assert_int_eq(info.device, 0);
    ck_assert(strlen(info.dev.name) > 0);
    ck_assert(info.dev.total_memory > 0);
    ck_assert_int_eq(b->probe(1, &info), 0);
    ck_assert_int_eq(info.device, -1);
}
END_TEST

START_TEST(test_cuda_row)
{
    struct moe_backend_info info;
    const struct moe_backend *b = moe_backend_find("cuda");
    memset(&info, 0x5a, sizeof info); // the probe fills everything
    ck_assert_int_eq(b->probe(-1, &info), 0);
    ck_assert_int_eq(info.device, -1);
    ck_assert(memchr(info.reason, '\0', sizeof info.reason) != NULL);
    ck_assert(strchr(info.reason, '\n') == NULL);
    if (!info.built) {
        ck_assert(!info.available);
        ck_assert_int_eq(info.device_count, 0);
        ck_assert_int_eq(info.runtime_version, 0);
        ck_assert_ptr_nonnull(strstr(info.reason, "-Dcuda=enabled"));
        return;
    }
    ck_assert_int_ge(info.runtime_version, 1000); // a runtime is loaded
    if (!info.available) {
        ck_assert_int_eq(info.device_count, 0);
        ck_assert(strlen(info.reason) > 0);
        ck_assert_int_eq(b->probe(0, &info), 0);
        ck_assert_int_eq(info.device, -1);
        return;
    }
    ck_assert_int_ge(info.device_count, 1);
    ck_assert_int_ge(info.driver_version, 1000);
    int n = info.device_count;
    for (int d = 0; d < n; d++) {
        ck_assert_int_eq(b->probe(d, &info), 0);
        ck_assert_int_eq(info.device, d);
        ck_assert(strlen(info.dev.name) > 0);
        ck_assert_int_ge(info.dev.cc_major, 1);
        ck_assert(info.dev.total_memory > 0);
    }
    ck_assert_int_eq(b->probe(n, &info), 0);
    ck_assert_int_eq(info.device, -1);
}
END_TEST

START_TEST(test_version_str)
{
    char buf[16];
    moe_backend_version_str(13000, buf, sizeof buf);
    ck_assert_str_eq(buf, "13.0");
    moe_backend_version_str(12040, buf, sizeof buf);
    ck_assert_str_eq(buf, "12.4");
    moe_backend_version_str(11080, buf, sizeof buf);
    ck_assert_str_eq(buf, "11.8");
    moe_backend_version_str(0, buf, sizeof buf);
    ck_assert_str_eq(buf, "none");
}
END_TEST

START_TEST(test_device_parse)
{
    int id = -7;
    ck_assert_int_eq(cli_device_parse("cpu", &id), 0);
    ck_assert_int_eq(id, 0);
    id = -7;
    ck_assert_int_eq(cli_device_parse("cuda", &id), 0);
    ck_assert_int_eq(id, 0);
    ck_assert_int_eq(cli_device_parse("cuda:3", &id), 0);
    ck_assert_int_eq(id, 3);
    ck_assert_int_eq(cli_device_parse("cuda:2147483647", &id), 0);
    ck_assert_int_eq(id, 2147483647);
    id = 5;
    const char *bad[] = { "cuda:", "cuda:x", "cuda:-1", "cuda:+1", "cuda: 1", "cuda:1 ", "cuda:0x1", "cuda:2147483648",
                          "cuda:99999999999999999999", "cuda0", "cudax", "CUDA", "gpu", "cpu:0", "", "cuda:1:2" };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        ck_assert_msg(cli_device_parse(bad[i], &id) == -1, "'%s' should be refused", bad[i]);
    ck_assert_int_eq(id, 5); // untouched by a refusal
}
END_TEST

static struct moe_backend_info made_up(int built, int available, int count, const char *reason)
{
    struct moe_backend_info info;
    memset(&info, 0, sizeof info);
    info.built = built;
    info.available = available;
    info.device_count = count;
    info.device = -1;
    info.runtime_version = built ? 13000 : 0;
    info.driver_version = available ? 13000 : 0;
    snprintf(info.reason, sizeof info.reason, "%s", reason);
    return info;
}

START_TEST(test_refusals)
{
    char buf[1024];
    // a build without CUDA: the row's own reason says how to get one
    struct moe_backend_info info;
    moe_backend_find("cuda")->probe(-1, &info);
    if (!info.built) {
        cli_device_refusal(buf, sizeof buf, "cuda", 0, &info);
        ck_assert_ptr_nonnull(strstr(buf, "option '--device cuda' cannot be used: this build has no CUDA backend"));
        ck_assert_ptr_nonnull(strstr(buf, "meson setup -Dcuda=enabled"));
    }
    info = made_up(0, 0, 0, "this build has no CUDA backend; 'meson setup -Dcuda=enabled BUILDDIR' builds one");
    cli_device_refusal(buf, sizeof buf, "cuda:1", 1, &info);
    ck_assert_str_eq(buf, "option '--device cuda:1' cannot be used: this build has no CUDA backend; 'meson setup "
                          "-Dcuda=enabled BUILDDIR' builds one; use --device cpu");
    // built, no driver: the driver's reason
    info = made_up(1, 0, 0, "no CUDA driver; cudaGetDeviceCount returned cudaErrorInsufficientDriver: x");
    cli_device_refusal(buf, sizeof buf, "cuda", 0, &info);
    ck_assert_str_eq(buf, "option '--device cuda' cannot be used: no usable CUDA device (no CUDA driver; "
                          "cudaGetDeviceCount returned cudaErrorInsufficientDriver: x); use --device cpu");
    cli_cuda_devices_str(buf, sizeof buf, &info);
    ck_assert_str_eq(buf, "CUDA devices: 0 (no CUDA driver; cudaGetDeviceCount returned cudaErrorInsufficientDriver: x)");
    // two devices, the third asked for
    info = made_up(1, 1, 2, "");
    cli_device_refusal(buf, sizeof buf, "cuda:2", 2, &info);
    ck_assert_str_eq(buf, "option '--device cuda:2' cannot be used: no CUDA device 2; CUDA devices: 2 (cuda:0 to "
                          "cuda:1); use --device cpu");
    info.device_count = 1;
    cli_cuda_devices_str(buf, sizeof buf, &info);
    ck_assert_str_eq(buf, "CUDA devices: 1 (cuda:0)");
    // a usable device, for a command that does not run on one yet
    info = made_up(1, 1, 1, "");
    info.device = 0;
    snprintf(info.dev.name, sizeof info.dev.name, "NVIDIA H200");
    info.dev.cc_major = 9;
    info.dev.total_memory = (size_t)150 << 30;
    cli_device_refusal(buf, sizeof buf, "cuda", 0, &info);
    ck_assert_str_eq(buf, "option '--device cuda' cannot be used: this command does not run on a CUDA device yet (cuda:0 "
                          "is NVIDIA H200, compute capability 9.0, 150.0 GiB); use --device cpu");
    // a device that exists but could not be described
    info = made_up(1, 1, 1, "device 0: cudaGetDeviceProperties returned cudaErrorUnknown: unknown error");
    cli_device_refusal(buf, sizeof buf, "cuda:0", 0, &info);
    ck_assert_str_eq(buf, "option '--device cuda:0' cannot be used: device 0: cudaGetDeviceProperties returned "
                          "cudaErrorUnknown: unknown error; use --device cpu");
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("backend");
    TCase *tc = tcase_create("backend");
    tcase_add_test(tc, test_table);
    tcase_add_test(tc, test_cpu);
    tcase_add_test(tc, test_cuda_row);
    tcase_add_test(tc, test_version_str);
    tcase_add_test(tc, test_device_parse);
    tcase_add_test(tc, test_refusals);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return moe_test_run(suite());
}
