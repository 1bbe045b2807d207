// test_config.c: tests for the schema-driven JSON config loader (lib/io/config.c).
// Covers defaults, canonical output, every error class with its message, overrides
// of each kind, moe_config_set, copy, hash and the to_json -> parse round trip.
// Not a test of cJSON itself.
#include <check.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "io/atomic.h"
#include "io/config.h"
#include "testutil.h"

static const struct moe_cfg_key schema[] = {
    {"model.type", MOE_CFG_STR, "\"mixture\"", 0, -1, "mixture|mlp", "model family"},
    {"model.n_expert", MOE_CFG_INT, "4", 1, 4096, NULL, "number of experts"},
    {"optim.lr", MOE_CFG_NUM, "0.1", 0, 10, NULL, "learning rate"},
    {"train.stop", MOE_CFG_BOOL, "false", 0, -1, NULL, "stop early"},
    {"data.path", MOE_CFG_STR, "null", 0, -1, NULL, "data file (optional)"},
    {"data.features", MOE_CFG_STR_LIST, "[]", 0, -1, NULL, "feature names"},
    {"data.range", MOE_CFG_NUM_LIST, "[0, 1]", 0, 1, NULL, "value range"},
    {"data.splits", MOE_CFG_STR_LIST, "[\"train\"]", 0, -1, "train|valid|test", "splits to use"},
    {"model.seed", MOE_CFG_INT, "7", 0, -1, NULL, "seed (no range)"},
    {"steps", MOE_CFG_INT, "null", 0, 1000000, NULL, "optional top-level key"},
};
#define N_SCHEMA (sizeof schema / sizeof schema[0])

static char tmpdir[64];

static void setup(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/moe-cfg-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static void teardown(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    ck_assert_int_eq(system(cmd), 0);
}

// Write text to a file in tmpdir; return its path (static buffer).
static const char *write_cfg(const char *name, const char *text)
{
    static char path[256];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    struct moe_err err = {0};
    ck_assert_int_eq(moe_atomic_write(path, text, strlen(text), &err), 0);
    return path;
}

// Parse text that must fail with code; check the message contains each of the
// NULL-terminated fragments.
static void expect_fail(const char *text, const char *const *ovs, size_t n_ovs, int code, ...)
{
    struct moe_config c;
    struct moe_err err = {0};
    int rc = moe_config_parse(&c, schema, N_SCHEMA, text, "t.json", ovs, n_ovs, &err);
    ck_assert_msg(rc == code, "rc %d (want %d) for %s: %s", rc, code, text ? text : "(null)", err.msg);
    ck_assert_int_eq(err.code, code);
    ck_assert_ptr_null(c.root);
    ck_assert_msg(strchr(err.msg, '\n') == NULL, "multi-line message: %s", err.msg);
    size_t n = strlen(err.msg);
    ck_assert_msg(n > 0 && err.msg[n - 1] != '.', "bad message shape: %s", err.msg);
    va_list ap;
    va_start(ap, code);
    for (const char *frag; (frag = va_arg(ap, const char *));)
        ck_assert_msg(strstr(err.msg, frag), "message '%s' lacks '%s'", err.msg, frag);
    va_end(ap);
}

static void load_ok(struct moe_config *c, const char *text, const char *const *ovs, size_t n_ovs)
{
    struct moe_err err = {0};
    int rc = moe_config_parse(c, schema, N_SCHEMA, text, "t.json", ovs, n_ovs, &err);
    ck_assert_msg(rc == 0, "unexpected failure: %s", err.msg);
}

static const char *defaults_json =
    "{\"model\":{\"type\":\"mixture\",\"n_expert\":4,\"seed\":7},\"optim\":{\"lr\":0.1},"
    "\"train\":{\"stop\":false},\"data\":{\"path\":null,\"features\":[],\"range\":[0,1],"
    "\"splits\":[\"train\"]},\"steps\":null}";

START_TEST(test_defaults)
{
    struct moe_config c;
    struct moe_err err = {0};
    ck_assert_int_eq(moe_config_load(&c, schema, N_SCHEMA, NULL, NULL, 0, &err), 0);
    ck_assert_str_eq(moe_cfg_str(&c, "model.type"), "mixture");
    ck_assert_int_eq(moe_cfg_int(&c, "model.n_expert"), 4);
    ck_assert_double_eq(moe_cfg_num(&c, "optim.lr"), 0.1);
    ck_assert_double_eq(moe_cfg_num(&c, "model.n_expert"), 4.0); // NUM accessor on INT
    ck_assert(!moe_cfg_bool(&c, "train.stop"));
    ck_assert_ptr_null(moe_cfg_str(&c, "data.path"));
    ck_assert_uint_eq(moe_cfg_len(&c, "data.features"), 0);
    ck_assert_uint_eq(moe_cfg_len(&c, "data.range"), 2);
    ck_assert_double_eq(moe_cfg_num_at(&c, "data.range", 1), 1.0);
    ck_assert_str_eq(moe_cfg_str_at(&c, "data.splits", 0), "train");
    ck_assert_int_eq(moe_cfg_int(&c, "model.seed"), 7);

    char *s = moe_config_to_json(&c, 0);
    ck_assert_str_eq(s, defaults_json);
    free(s);
    s = moe_config_to_json(&c, 1);
    ck_assert_ptr_nonnull(strchr(s, '\n'));
    ck_assert_ptr_nonnull(strstr(s, "\"n_expert\":\t4"));
    free(s);
    moe_config_release(&c);
    ck_assert_ptr_null(c.root);
    moe_config_release(&c); // twice is fine
    moe_config_release(NULL);
    struct moe_config zero = {0};
    moe_config_release(&zero);
}
END_TEST

START_TEST(test_valid_file)
{
    const char *path = write_cfg("ok.json",
                                 "{\n"
                                 "  \"data\": {\"features\": [\"a\", \"b\"], \"range\": [0.25, 0.5, 1],\n"
                                 "           \"path\": \"x.csv\", \"splits\": [\"valid\", \"test\"]},\n"
                                 "  \"model\": {\"n_expert\": 16, \"type\": \"mlp\"},\n"
                                 "  \"optim\": {\"lr\": 2.5e-3},\n"
                                 "  \"train\": {\"stop\": true},\n"
                                 "  \"steps\": 1000\n"
                                 "}\n");
    struct moe_config c;
    struct moe_err err = {0};
    ck_assert_int_eq(moe_config_load(&c, schema, N_SCHEMA, path, NULL, 0, &err), 0);
    ck_assert_str_eq(moe_cfg_str(&c, "model.type"), "mlp");
    ck_assert_int_eq(moe_cfg_int(&c, "model.n_expert"), 16);
    ck_assert_double_eq(moe_cfg_num(&c, "optim.lr"), 2.5e-3);
    ck_assert(moe_cfg_bool(&c, "train.stop"));
    ck_assert_str_eq(moe_cfg_str(&c, "data.path"), "x.csv");
    ck_assert_uint_eq(moe_cfg_len(&c, "data.features"), 2);
    ck_assert_str_eq(moe_cfg_str_at(&c, "data.features", 1), "b");
    ck_assert_uint_eq(moe_cfg_len(&c, "data.range"), 3);
    ck_assert_double_eq(moe_cfg_num_at(&c, "data.range", 0), 0.25);
    ck_assert_str_eq(moe_cfg_str_at(&c, "data.splits", 1), "test");
    ck_assert_int_eq(moe_cfg_int(&c, "model.seed"), 7); // default filled
    ck_assert_int_eq(moe_cfg_int(&c, "steps"), 1000);
    // Output follows the schema, not the file.
    char *s = moe_config_to_json(&c, 0);
    ck_assert_str_eq(s, "{\"model\":{\"type\":\"mlp\",\"n_expert\":16,\"seed\":7},\"optim\":{\"lr\":0.0025},"
                        "\"train\":{\"stop\":true},\"data\":{\"path\":\"x.csv\",\"features\":[\"a\",\"b\"],"
                        "\"range\":[0.25,0.5,1],\"splits\":[\"valid\",\"test\"]},\"steps\":1000}");
    free(s);
    moe_config_release(&c);

    // Optional keys accept null; an empty object is all defaults.
    load_ok(&c, "{\"data\": {\"path\": null}, \"steps\": null}", NULL, 0);
    ck_assert_ptr_null(moe_cfg_str(&c, "data.path"));
    moe_config_release(&c);
    load_ok(&c, " {} ", NULL, 0);
    s = moe_config_to_json(&c, 0);
    ck_assert_str_eq(s, defaults_json);
    free(s);
    moe_config_release(&c);
}
END_TEST

START_TEST(test_io_errors)
{
    struct moe_config c;
    struct moe_err err = {0};
    char path[128];
    snprintf(path, sizeof path, "%s/missing.json", tmpdir);
    ck_assert_int_eq(moe_config_load(&c, schema, N_SCHEMA, path, NULL, 0, &err), MOE_EIO);
    char want[256];
    snprintf(want, sizeof want, "cannot open '%s': No such file or directory", path);
    ck_assert_str_eq(err.msg, want);
    ck_assert_ptr_null(c.root);
    // NULL err is allowed.
    ck_assert_int_eq(moe_config_load(&c, schema, N_SCHEMA, path, NULL, 0, NULL), MOE_EIO);
    // A message names the file.
    const char *bad = write_cfg("bad.json", "{\"model\": {\"n_expertz\": 3}}");
    ck_assert_int_eq(moe_config_load(&c, schema, N_SCHEMA, bad, NULL, 0, &err), MOE_ECONFIG);
    snprintf(want, sizeof want, "config '%s': unknown key 'model.n_expertz' (did you mean 'model.n_expert'?)", bad);
    ck_assert_str_eq(err.msg, want);
}
END_TEST

START_TEST(test_invalid_json)
{
    expect_fail("{\n  \"model\": {\n    \"n_expert\": 4,\n  }\n}", NULL, 0, MOE_ECONFIG,
                "config 't.json': invalid JSON at line 4", NULL);
    expect_fail("{\"model\": {\"n_expert\": 4}", NULL, 0, MOE_ECONFIG, "invalid JSON at line 1", NULL);
    expect_fail("{\"a\": 1} trailing", NULL, 0, MOE_ECONFIG, "invalid JSON at line 1, column 10", NULL);
    expect_fail("{\"steps\": 'x'}", NULL, 0, MOE_ECONFIG, "invalid JSON at line 1, column 11", NULL);
    expect_fail("", NULL, 0, MOE_ECONFIG, "config 't.json': expected a JSON object, got empty text", NULL);
    expect_fail("[1, 2]", NULL, 0, MOE_ECONFIG, "expected a JSON object at the top level, got an array", NULL);
    expect_fail("3", NULL, 0, MOE_ECONFIG, "top level, got 3", NULL);
}
END_TEST

START_TEST(test_duplicate_key)
{
    expect_fail("{\"model\": {\"n_expert\": 4, \"type\": \"mlp\", \"n_expert\": 5}}", NULL, 0, MOE_ECONFIG,
                "config 't.json': duplicate key 'model.n_expert'", NULL);
    expect_fail("{\"optim\": {}, \"model\": {}, \"optim\": {}}", NULL, 0, MOE_ECONFIG, "duplicate key 'optim'",
                NULL);
    // Duplicates are found anywhere, even inside values the schema would reject.
    expect_fail("{\"data\": {\"range\": [{\"a\": 1, \"a\": 2}]}}", NULL, 0, MOE_ECONFIG,
                "duplicate key 'data.range[0].a'", NULL);
}
END_TEST

START_TEST(test_unknown_key)
{
    struct moe_config c;
    struct moe_err err = {0};
    ck_assert_int_eq(moe_config_parse(&c, schema, N_SCHEMA, "{\"model\": {\"n_expertz\": 3}}", "t.json", NULL, 0,
                                      &err),
                     MOE_ECONFIG);
    ck_assert_str_eq(err.msg, "config 't.json': unknown key 'model.n_expertz' (did you mean 'model.n_expert'?)");
    // Nothing close: no suggestion.
    ck_assert_int_eq(
        moe_config_parse(&c, schema, N_SCHEMA, "{\"optim\": {\"momentum_xyz\": 3}}", "t.json", NULL, 0, &err),
        MOE_ECONFIG);
    ck_assert_str_eq(err.msg, "config 't.json': unknown key 'optim.momentum_xyz'");
    // Unknown section, with and without a suggestion.
    expect_fail("{\"modle\": {\"n_expert\": 3}}", NULL, 0, MOE_ECONFIG,
                "unknown key 'modle' (did you mean 'model'?)", NULL);
    ck_assert_int_eq(moe_config_parse(&c, schema, N_SCHEMA, "{\"zzzzzzzz\": {}}", "t.json", NULL, 0, &err),
                     MOE_ECONFIG);
    ck_assert_str_eq(err.msg, "config 't.json': unknown key 'zzzzzzzz'");
    // A key's own name in the wrong section (or at the top) points to where it lives,
    // before any spelling match ('seed' is 3 edits from 'model' too).
    expect_fail("{\"seed\": 3}", NULL, 0, MOE_ECONFIG, "unknown key 'seed' (did you mean 'model.seed'?)", NULL);
    expect_fail("{\"optim\": {\"n_expert\": 3}}", NULL, 0, MOE_ECONFIG,
                "unknown key 'optim.n_expert' (did you mean 'model.n_expert'?)", NULL);
    expect_fail("{\"model\": {\"lr\": 3}}", NULL, 0, MOE_ECONFIG, "unknown key 'model.lr' (did you mean 'optim.lr'?)",
                NULL);
    // A key under a leaf.
    expect_fail("{\"optim\": {\"lr\": {\"value\": 0.1}}}", NULL, 0, MOE_ECONFIG, "unknown key 'optim.lr.value'",
                NULL);
    // A non-object where a section is expected.
    expect_fail("{\"model\": 3}", NULL, 0, MOE_ECONFIG, "config 't.json': key 'model' must be an object, got 3",
                NULL);
    // Control characters in a key never break the message onto two lines.
    expect_fail("{\"data\": {\"a\\nb\": 1}}", NULL, 0, MOE_ECONFIG, "unknown key 'data.a?b'", NULL);
    // A dotted name is not a path.
    expect_fail("{\"model.n_expert\": 3}", NULL, 0, MOE_ECONFIG, "key 'model.n_expert' has a '.' in its name",
                NULL);
}
END_TEST

START_TEST(test_kind_errors)
{
    expect_fail("{\"optim\": {\"lr\": \"0.1\"}}", NULL, 0, MOE_ECONFIG,
                "config 't.json': key 'optim.lr' must be a number in [0, 10], got string '0.1'", NULL);
    expect_fail("{\"model\": {\"n_expert\": 2.5}}", NULL, 0, MOE_ECONFIG,
                "key 'model.n_expert' must be an integer in [1, 4096], got 2.5", NULL);
    expect_fail("{\"model\": {\"n_expert\": 1e400}}", NULL, 0, MOE_ECONFIG,
                "key 'model.n_expert' must be an integer in [1, 4096], got a number too large for a double", NULL);
    expect_fail("{\"optim\": {\"lr\": -1e400}}", NULL, 0, MOE_ECONFIG, "key 'optim.lr' must be a number", NULL);
    expect_fail("{\"model\": {\"seed\": 1e20}}", NULL, 0, MOE_ECONFIG,
                "key 'model.seed' must be an integer of magnitude at most 2^53", NULL);
    expect_fail("{\"optim\": {\"lr\": -1}}", NULL, 0, MOE_ECONFIG,
                "config 't.json': key 'optim.lr' must be a number in [0, 10], got -1", NULL);
    expect_fail("{\"model\": {\"n_expert\": 0}}", NULL, 0, MOE_ECONFIG, "in [1, 4096], got 0", NULL);
    expect_fail("{\"model\": {\"n_expert\": 5000}}", NULL, 0, MOE_ECONFIG, "in [1, 4096], got 5000", NULL);
    expect_fail("{\"model\": {\"type\": \"moe\"}}", NULL, 0, MOE_ECONFIG,
                "key 'model.type' must be one of mixture|mlp, got 'moe'", NULL);
    expect_fail("{\"train\": {\"stop\": 1}}", NULL, 0, MOE_ECONFIG, "key 'train.stop' must be true or false, got 1",
                NULL);
    expect_fail("{\"data\": {\"features\": [\"a\", 3]}}", NULL, 0, MOE_ECONFIG,
                "key 'data.features[1]' must be a string, got 3", NULL);
    expect_fail("{\"data\": {\"features\": \"a\"}}", NULL, 0, MOE_ECONFIG,
                "key 'data.features' must be an array of strings, got string 'a'", NULL);
    expect_fail("{\"data\": {\"splits\": [\"train\", \"dev\"]}}", NULL, 0, MOE_ECONFIG,
                "key 'data.splits[1]' must be one of train|valid|test, got 'dev'", NULL);
    expect_fail("{\"data\": {\"range\": [0, \"1\"]}}", NULL, 0, MOE_ECONFIG,
                "key 'data.range[1]' must be a number in [0, 1], got string '1'", NULL);
    expect_fail("{\"data\": {\"range\": [0, 2]}}", NULL, 0, MOE_ECONFIG,
                "key 'data.range[1]' must be a number in [0, 1], got 2", NULL);
    expect_fail("{\"optim\": {\"lr\": null}}", NULL, 0, MOE_ECONFIG,
                "key 'optim.lr' must be a number in [0, 10], got null", NULL);
    expect_fail("{\"data\": {\"path\": 3}}", NULL, 0, MOE_ECONFIG, "key 'data.path' must be a string or null, got 3",
                NULL);
    expect_fail("{\"optim\": {\"lr\": {}}}", NULL, 0, MOE_ECONFIG, "key 'optim.lr' must be a number", "an object",
                NULL);
}
END_TEST

START_TEST(test_overrides)
{
    const char *ovs[] = {
        "model.n_expert=32",  "optim.lr=1e-3",        "train.stop=1",      "model.type=mlp",
        "data.path=\"a b\"",  "data.features=x, y,z", "data.range=[0.5]",  "data.splits=valid,test",
        "model.n_expert=64", // later wins
        "steps=12",
    };
    struct moe_config c;
    load_ok(&c, "{\"model\": {\"n_expert\": 8}, \"data\": {\"path\": \"file.csv\"}}", ovs, sizeof ovs / sizeof *ovs);
    ck_assert_int_eq(moe_cfg_int(&c, "model.n_expert"), 64);
    ck_assert_double_eq(moe_cfg_num(&c, "optim.lr"), 1e-3);
    ck_assert(moe_cfg_bool(&c, "train.stop"));
    ck_assert_str_eq(moe_cfg_str(&c, "model.type"), "mlp");
    ck_assert_str_eq(moe_cfg_str(&c, "data.path"), "a b");
    ck_assert_uint_eq(moe_cfg_len(&c, "data.features"), 3);
    ck_assert_str_eq(moe_cfg_str_at(&c, "data.features", 0), "x");
    ck_assert_str_eq(moe_cfg_str_at(&c, "data.features", 1), "y");
    ck_assert_str_eq(moe_cfg_str_at(&c, "data.features", 2), "z");
    ck_assert_uint_eq(moe_cfg_len(&c, "data.range"), 1);
    ck_assert_double_eq(moe_cfg_num_at(&c, "data.range", 0), 0.5);
    ck_assert_str_eq(moe_cfg_str_at(&c, "data.splits", 1), "test");
    ck_assert_int_eq(moe_cfg_int(&c, "steps"), 12);
    moe_config_release(&c);

    // Other spellings: bools, raw strings, empty and JSON lists, null, 4.0 as an integer.
    const char *ovs2[] = {"train.stop=false", "data.path=raw text", "data.features=", "data.range=0,0.25, 1",
                          "data.splits=[\"test\"]", "steps=null", "model.n_expert=4.0", "optim.lr=+2"};
    load_ok(&c, "{\"steps\": 5, \"train\": {\"stop\": true}}", ovs2, sizeof ovs2 / sizeof *ovs2);
    ck_assert(!moe_cfg_bool(&c, "train.stop"));
    ck_assert_str_eq(moe_cfg_str(&c, "data.path"), "raw text");
    ck_assert_uint_eq(moe_cfg_len(&c, "data.features"), 0);
    ck_assert_uint_eq(moe_cfg_len(&c, "data.range"), 3);
    ck_assert_double_eq(moe_cfg_num_at(&c, "data.range", 1), 0.25);
    ck_assert_str_eq(moe_cfg_str_at(&c, "data.splits", 0), "test");
    ck_assert_uint_eq(moe_cfg_len(&c, "data.splits"), 1);
    ck_assert_int_eq(moe_cfg_int(&c, "model.n_expert"), 4);
    ck_assert_double_eq(moe_cfg_num(&c, "optim.lr"), 2.0);
    char *s = moe_config_to_json(&c, 0);
    ck_assert_ptr_nonnull(strstr(s, "\"steps\":null"));
    free(s);
    moe_config_release(&c);

    // "null" on an optional string unsets it; a quoted "null" is the text.
    const char *ovs3[] = {"data.path=null"};
    load_ok(&c, "{\"data\": {\"path\": \"x\"}}", ovs3, 1);
    ck_assert_ptr_null(moe_cfg_str(&c, "data.path"));
    moe_config_release(&c);
    const char *ovs4[] = {"data.path=\"null\""};
    load_ok(&c, NULL, ovs4, 1);
    ck_assert_str_eq(moe_cfg_str(&c, "data.path"), "null");
    moe_config_release(&c);

    // An override replaces a file value that would have been invalid.
    const char *ovs5[] = {"optim.lr=0.5"};
    load_ok(&c, "{\"optim\": {\"lr\": -1}}", ovs5, 1);
    ck_assert_double_eq(moe_cfg_num(&c, "optim.lr"), 0.5);
    moe_config_release(&c);
}
END_TEST

START_TEST(test_override_errors)
{
    const char *unknown[] = {"model.n_expertz=3"};
    expect_fail("{}", unknown, 1, MOE_ECONFIG,
                "--set 'model.n_expertz=3': unknown key 'model.n_expertz' (did you mean 'model.n_expert'?)", NULL);
    const char *section[] = {"model=3"};
    expect_fail("{}", section, 1, MOE_ECONFIG, "--set 'model=3': 'model' is a section, not a key", NULL);
    const char *noeq[] = {"xyz"};
    expect_fail("{}", noeq, 1, MOE_ECONFIG, "--set 'xyz': expected key.path=value", NULL);
    const char *noname[] = {"=3"};
    expect_fail("{}", noname, 1, MOE_ECONFIG, "--set '=3': expected key.path=value", NULL);
    const char *badnum[] = {"optim.lr=abc"};
    expect_fail("{}", badnum, 1, MOE_ECONFIG,
                "--set 'optim.lr=abc': key 'optim.lr' must be a number in [0, 10], got 'abc'", NULL);
    const char *range[] = {"optim.lr=11"};
    expect_fail("{}", range, 1, MOE_ECONFIG,
                "--set 'optim.lr=11': key 'optim.lr' must be a number in [0, 10], got 11", NULL);
    const char *frac[] = {"model.n_expert=2.5"};
    expect_fail("{}", frac, 1, MOE_ECONFIG, "--set 'model.n_expert=2.5': key 'model.n_expert' must be an integer",
                "got 2.5", NULL);
    const char *inf[] = {"optim.lr=1e400"};
    expect_fail("{}", inf, 1, MOE_ECONFIG, "--set 'optim.lr=1e400': key 'optim.lr' must be a number", "got '1e400'",
                NULL);
    const char *hex[] = {"model.n_expert=0x10"};
    expect_fail("{}", hex, 1, MOE_ECONFIG, "got '0x10'", NULL);
    const char *space[] = {"model.n_expert= 4"};
    expect_fail("{}", space, 1, MOE_ECONFIG, "got ' 4'", NULL);
    const char *boolean[] = {"train.stop=yes"};
    expect_fail("{}", boolean, 1, MOE_ECONFIG, "--set 'train.stop=yes': key 'train.stop' must be true or false",
                NULL);
    const char *choice[] = {"model.type=moe"};
    expect_fail("{}", choice, 1, MOE_ECONFIG, "--set 'model.type=moe': key 'model.type' must be one of mixture|mlp",
                NULL);
    const char *list[] = {"data.range=0,x"};
    expect_fail("{}", list, 1, MOE_ECONFIG, "--set 'data.range=0,x': key 'data.range[1]' must be a number in [0, 1]",
                "got 'x'", NULL);
    const char *jlist[] = {"data.features=[1]"};
    expect_fail("{}", jlist, 1, MOE_ECONFIG, "--set 'data.features=[1]': key 'data.features[0]' must be a string",
                NULL);
    const char *badarr[] = {"data.features=[\"a\""};
    expect_fail("{}", badarr, 1, MOE_ECONFIG, "is not a valid JSON array", NULL);
    const char *nonnull[] = {"optim.lr=null"};
    expect_fail("{}", nonnull, 1, MOE_ECONFIG, "got 'null'", NULL);
    // A file error is still the file's, even next to overrides.
    const char *ok[] = {"optim.lr=0.5"};
    expect_fail("{\"model\": {\"n_expert\": 0}}", ok, 1, MOE_ECONFIG, "config 't.json': key 'model.n_expert'", NULL);
    expect_fail("{\"optim\": 3}", ok, 1, MOE_ECONFIG, "config 't.json': key 'optim' must be an object, got 3", NULL);

    // With no file, the non-override source is "defaults".
    struct moe_config c;
    struct moe_err err = {0};
    ck_assert_int_eq(moe_config_load(&c, schema, N_SCHEMA, NULL, badnum, 1, &err), MOE_ECONFIG);
    ck_assert_str_eq(err.msg, "--set 'optim.lr=abc': key 'optim.lr' must be a number in [0, 10], got 'abc'");
}
END_TEST

START_TEST(test_hash_set_copy)
{
    struct moe_config a, b, c;
    load_ok(&a, "{\"optim\": {\"lr\": 0.1}}", NULL, 0);
    load_ok(&b, "{}", NULL, 0);
    ck_assert_uint_eq(moe_config_hash(&a), moe_config_hash(&b));
    uint64_t h0 = moe_config_hash(&a);
    // The hash is FNV-1a 64 of the compact canonical text.
    char *text = moe_config_to_json(&a, 0);
    uint64_t fnv = 14695981039346656037ULL;
    for (const unsigned char *p = (const unsigned char *)text; *p; p++)
        fnv = (fnv ^ *p) * 1099511628211ULL;
    free(text);
    ck_assert_uint_eq(h0, fnv);

    struct moe_err err = {0};
    ck_assert_int_eq(moe_config_set(&b, "optim.lr=0.2", &err), 0);
    ck_assert_double_eq(moe_cfg_num(&b, "optim.lr"), 0.2);
    ck_assert_uint_ne(moe_config_hash(&b), h0);

    // set re-validates and leaves the config unchanged on failure.
    ck_assert_int_eq(moe_config_set(&b, "optim.lr=20", &err), MOE_ECONFIG);
    ck_assert_str_eq(err.msg, "--set 'optim.lr=20': key 'optim.lr' must be a number in [0, 10], got 20");
    ck_assert_int_eq(moe_config_set(&b, "optim.lrr=0.3", &err), MOE_ECONFIG);
    ck_assert_ptr_nonnull(strstr(err.msg, "did you mean 'optim.lr'?"));
    ck_assert_int_eq(moe_config_set(&b, "model.type=moe", NULL), MOE_ECONFIG);
    ck_assert_double_eq(moe_cfg_num(&b, "optim.lr"), 0.2);
    ck_assert_int_eq(moe_config_set(&b, "optim.lr=0.1", &err), 0);
    ck_assert_uint_eq(moe_config_hash(&b), h0);
    ck_assert_int_eq(moe_config_set(&b, "data.features=p,q", &err), 0);
    ck_assert_uint_eq(moe_cfg_len(&b, "data.features"), 2);

    // Copy is independent of the original.
    ck_assert_int_eq(moe_config_copy(&c, &a, &err), 0);
    ck_assert_uint_eq(moe_config_hash(&c), h0);
    ck_assert_int_eq(moe_config_set(&c, "model.n_expert=9", &err), 0);
    ck_assert_int_eq(moe_cfg_int(&c, "model.n_expert"), 9);
    ck_assert_int_eq(moe_cfg_int(&a, "model.n_expert"), 4);
    ck_assert_uint_eq(moe_config_hash(&a), h0);
    ck_assert_uint_ne(moe_config_hash(&c), h0);
    moe_config_release(&a);
    ck_assert_int_eq(moe_cfg_int(&c, "model.n_expert"), 9);

    moe_config_release(&b);
    moe_config_release(&c);
    struct moe_config z = {0};
    ck_assert_int_eq(moe_config_set(&z, "optim.lr=0.1", &err), MOE_EINVAL);
}
END_TEST

START_TEST(test_round_trip)
{
    const char *ovs[] = {"optim.lr=0.30000000000000004", "data.range=[1e-300, 0.1, 0.7]", "model.seed=9007199254740992",
                         "data.path=tab\there \"quoted\" \\ back", "data.features=[\"\\u00e9t\\u00e9\"]"};
    struct moe_config a, b;
    load_ok(&a, NULL, ovs, sizeof ovs / sizeof *ovs);
    for (int pretty = 0; pretty <= 1; pretty++) {
        char *s = moe_config_to_json(&a, pretty);
        const char *path = write_cfg("rt.json", s);
        struct moe_err err = {0};
        ck_assert_int_eq(moe_config_load(&b, schema, N_SCHEMA, path, NULL, 0, &err), 0);
        ck_assert_uint_eq(moe_config_hash(&a), moe_config_hash(&b));
        char *t = moe_config_to_json(&b, pretty);
        ck_assert_str_eq(s, t);
        ck_assert(moe_cfg_num(&b, "optim.lr") == 0.30000000000000004);
        ck_assert(moe_cfg_num_at(&b, "data.range", 0) == 1e-300);
        ck_assert_int_eq(moe_cfg_int(&b, "model.seed"), 9007199254740992LL);
        ck_assert_str_eq(moe_cfg_str(&b, "data.path"), "tab\there \"quoted\" \\ back");
        ck_assert_str_eq(moe_cfg_str_at(&b, "data.features", 0), "\xc3\xa9t\xc3\xa9");
        free(s);
        free(t);
        moe_config_release(&b);
    }
    // -0 is canonicalized so equal configs hash equal.
    const char *negz[] = {"optim.lr=-0"};
    struct moe_config z, d;
    load_ok(&z, NULL, negz, 1);
    const char *zero[] = {"optim.lr=0"};
    load_ok(&d, NULL, zero, 1);
    ck_assert_uint_eq(moe_config_hash(&z), moe_config_hash(&d));
    moe_config_release(&z);
    moe_config_release(&d);
    moe_config_release(&a);
}
END_TEST

static const struct moe_cfg_key bad_default[] = {
    {"optim.lr", MOE_CFG_NUM, "20", 0, 10, NULL, "out-of-range default"},
};
static const struct moe_cfg_key bad_shape[] = {
    {"model", MOE_CFG_INT, "1", 0, -1, NULL, "leaf"},
    {"model.n", MOE_CFG_INT, "1", 0, -1, NULL, "leaf under a leaf"},
};
static const struct moe_cfg_key required[] = {
    {"model.n", MOE_CFG_INT, NULL, 1, 10, NULL, "required: no default"},
};

START_TEST(test_schema_and_edit_distance)
{
    struct moe_config c;
    struct moe_err err = {0};
    ck_assert_int_eq(moe_config_parse(&c, bad_default, 1, "{}", "t.json", NULL, 0, &err), MOE_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.msg, "schema key 'optim.lr': bad default"));
    ck_assert_int_eq(moe_config_parse(&c, bad_shape, 2, "{}", "t.json", NULL, 0, &err), MOE_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.msg, "both a key and a section"));
    ck_assert_int_eq(moe_config_parse(&c, required, 1, "{}", "t.json", NULL, 0, &err), MOE_ECONFIG);
    ck_assert_str_eq(err.msg, "config 't.json': missing required key 'model.n'");
    ck_assert_int_eq(moe_config_parse(&c, required, 1, "{\"model\": {\"n\": 3}}", "t.json", NULL, 0, &err), 0);
    ck_assert_int_eq(moe_cfg_int(&c, "model.n"), 3);
    moe_config_release(&c);

    ck_assert_uint_eq(moe_edit_distance("", ""), 0);
    ck_assert_uint_eq(moe_edit_distance("abc", ""), 3);
    ck_assert_uint_eq(moe_edit_distance("", "abcd"), 4);
    ck_assert_uint_eq(moe_edit_distance("kitten", "sitting"), 3);
    ck_assert_uint_eq(moe_edit_distance("sitting", "kitten"), 3);
    ck_assert_uint_eq(moe_edit_distance("model.n_expertz", "model.n_expert"), 1);
    ck_assert_uint_eq(moe_edit_distance("flaw", "lawn"), 2);
    char a[300], b[300];
    memset(a, 'a', 299);
    a[299] = '\0';
    memset(b, 'a', 299);
    b[299] = '\0';
    b[150] = 'b';
    ck_assert_uint_eq(moe_edit_distance(a, b), 1); // long strings take the heap path
}
END_TEST

int main(void)
{
    Suite *s = suite_create("config");
    TCase *tc = tcase_create("config");
    tcase_set_timeout(tc, 30);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_defaults);
    tcase_add_test(tc, test_valid_file);
    tcase_add_test(tc, test_io_errors);
    tcase_add_test(tc, test_invalid_json);
    tcase_add_test(tc, test_duplicate_key);
    tcase_add_test(tc, test_unknown_key);
    tcase_add_test(tc, test_kind_errors);
    tcase_add_test(tc, test_overrides);
    tcase_add_test(tc, test_override_errors);
    tcase_add_test(tc, test_hash_set_copy);
    tcase_add_test(tc, test_round_trip);
    tcase_add_test(tc, test_schema_and_edit_distance);
    suite_add_tcase(s, tc);
    return moe_test_run(s);
}
