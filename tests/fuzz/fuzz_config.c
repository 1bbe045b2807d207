// fuzz_config.c: libFuzzer harness for the JSON run configuration
// (lib/io/config.c): moe_config_parse / moe_config_load, `--set` overrides
// (moe_config_set), the accessors, moe_config_copy and the canonical
// to_json / hash round trip.
// Input: JSON text, then optionally a NUL byte and up to 8 override strings
// ("key.path=value"), NUL-separated. Corpus: tests/fuzz/corpus/config/.
// Every input is tried against two schemas: the real run schema
// (lib/train/schema.c) and a small local one that has every key kind, ranges,
// choices, null defaults and a required key.
// Checks beyond the sanitizers: failures carry a one-line message and a
// matching code; a resolved config satisfies its schema (kind, integrality,
// range, choices); to_json -> parse gives the same canonical text and hash;
// a failed moe_config_set leaves the config unchanged; parsing with overrides
// equals parsing without them and applying them one by one with
// moe_config_set (when every step succeeds).
// The run schema joins the key tables of lib/model, lib/moe and lib/train, so
// this harness links the whole library.
// fuzz-max-len: 4096
// fuzz-lib: full
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "fuzz_util.h"
#include "io/config.h"
#include "train/train.h"

#define MAX_OVERRIDES 8

static const struct moe_cfg_key local_schema[] = {
    {"a.int", MOE_CFG_INT, "3", -5, 100, NULL, "bounded integer"},
    {"a.num", MOE_CFG_NUM, "0.5", 0, 1, NULL, "bounded number"},
    {"a.big", MOE_CFG_INT, "0", 1, 0, NULL, "integer without a range"},
    {"a.flag", MOE_CFG_BOOL, "false", 1, 0, NULL, "flag"},
    {"a.name", MOE_CFG_STR, "\"x\"", 1, 0, "x|y|zz", "choice"},
    {"a.free", MOE_CFG_STR, "null", 1, 0, NULL, "optional free text"},
    {"b.c.list", MOE_CFG_STR_LIST, "[]", 1, 0, "p|q", "list of choices"},
    {"b.c.nums", MOE_CFG_NUM_LIST, "[1, 2]", -10, 10, NULL, "bounded numbers"},
    {"b.any", MOE_CFG_NUM_LIST, "null", 1, 0, NULL, "optional numbers"},
    {"b.words", MOE_CFG_STR_LIST, "null", 1, 0, NULL, "optional strings"},
    {"req", MOE_CFG_INT, NULL, 0, 10, NULL, "required"},
};

static int in_range(const struct moe_cfg_key *k, double d) { return k->min > k->max || (d >= k->min && d <= k->max); }

static int choice_ok(const char *choices, const char *s)
{
    size_t n = strlen(s);
    for (const char *p = choices;;) {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);
        if (len == n && strncmp(p, s, n) == 0)
            return 1;
        if (!bar)
            return 0;
        p = bar + 1;
    }
}

// A resolved config must hold every schema key with a value its key accepts.
static void check_resolved(const struct moe_config *c)
{
    for (size_t i = 0; i < c->n_schema; i++) {
        const struct moe_cfg_key *k = &c->schema[i];
        int nullable = k->def && strcmp(k->def, "null") == 0;
        switch (k->kind) {
        case MOE_CFG_INT: {
            double d = moe_cfg_num(c, k->path);
            int64_t v = moe_cfg_int(c, k->path);
            if (isnan(d) && nullable)
                break;
            FUZZ_CHECK(isfinite(d) && d == floor(d) && fabs(d) <= 9007199254740992.0, "%s = %g", k->path, d);
            FUZZ_CHECK((double)v == d, "%s: int %lld vs %g", k->path, (long long)v, d);
            FUZZ_CHECK(in_range(k, d), "%s = %g out of range", k->path, d);
            break;
        }
        case MOE_CFG_NUM: {
            double d = moe_cfg_num(c, k->path);
            if (isnan(d) && nullable)
                break;
            FUZZ_CHECK(isfinite(d) && in_range(k, d), "%s = %g", k->path, d);
            break;
        }
        case MOE_CFG_BOOL:
            (void)moe_cfg_bool(c, k->path);
            break;
        case MOE_CFG_STR: {
            const char *s = moe_cfg_str(c, k->path);
            FUZZ_CHECK(s || nullable, "%s unset but not nullable", k->path);
            if (s && k->choices)
                FUZZ_CHECK(choice_ok(k->choices, s), "%s = '%s' not a choice", k->path, s);
            break;
        }
        case MOE_CFG_STR_LIST:
        case MOE_CFG_NUM_LIST: {
            size_t n = moe_cfg_len(c, k->path);
            for (size_t j = 0; j < n; j++) {
                if (k->kind == MOE_CFG_STR_LIST) {
                    const char *s = moe_cfg_str_at(c, k->path, j);
                    FUZZ_CHECK(s, "%s[%zu] is not a string", k->path, j);
                    if (k->choices)
                        FUZZ_CHECK(choice_ok(k->choices, s), "%s[%zu] = '%s'", k->path, j, s);
                } else {
                    double d = moe_cfg_num_at(c, k->path, j);
                    FUZZ_CHECK(isfinite(d) && in_range(k, d), "%s[%zu] = %g", k->path, j, d);
                }
            }
            break;
        }
        }
    }
}

// Canonical text round trip, pretty form, and copy.
static void exercise(const struct moe_config *c)
{
    check_resolved(c);
    uint64_t h = moe_config_hash(c);
    char *compact = moe_config_to_json(c, 0);
    char *pretty = moe_config_to_json(c, 1);
    FUZZ_CHECK(compact && pretty, "to_json failed");
    struct moe_err err = {0};
    struct moe_config back;
    int rc = moe_config_parse(&back, c->schema, c->n_schema, compact, "round trip", NULL, 0, &err);
    FUZZ_CHECK(rc == 0, "canonical text does not parse back: %s\n%s", err.msg, compact);
    char *again = moe_config_to_json(&back, 0);
    FUZZ_CHECK(again && strcmp(again, compact) == 0, "round trip changed the text:\n%s\n%s", compact, again);
    FUZZ_CHECK(moe_config_hash(&back) == h, "round trip changed the hash");
    moe_config_release(&back);
    rc = moe_config_parse(&back, c->schema, c->n_schema, pretty, "pretty", NULL, 0, &err);
    FUZZ_CHECK(rc == 0 && moe_config_hash(&back) == h, "pretty text does not parse back to the same config");
    moe_config_release(&back);
    struct moe_config copy;
    rc = moe_config_copy(&copy, c, &err);
    FUZZ_CHECK(rc == 0 && moe_config_hash(&copy) == h, "copy differs");
    moe_config_release(&copy);
    free(again);
    cJSON_free(compact);
    cJSON_free(pretty);
}

static void run_schema(const struct moe_cfg_key *schema, size_t n_schema, const char *text,
                       const char *const *ovs, size_t n_ovs)
{
    struct moe_err err = {0};
    struct moe_config base, with;
    int rc = moe_config_parse(&base, schema, n_schema, text, "fuzz", NULL, 0, &err);
    if (rc)
        fuzz_check_err(rc, &err);
    else
        exercise(&base);

    if (n_ovs == 0) { // nothing more to try
        if (rc == 0)
            moe_config_release(&base);
        return;
    }
    memset(&err, 0, sizeof err);
    int rc_with = moe_config_parse(&with, schema, n_schema, text, "fuzz", ovs, n_ovs, &err);
    if (rc_with)
        fuzz_check_err(rc_with, &err);
    else
        check_resolved(&with);

    if (rc == 0) {
        int all_ok = 1;
        for (size_t i = 0; i < n_ovs; i++) {
            uint64_t before = moe_config_hash(&base);
            memset(&err, 0, sizeof err);
            int r = moe_config_set(&base, ovs[i], &err);
            if (r) {
                fuzz_check_err(r, &err);
                FUZZ_CHECK(moe_config_hash(&base) == before, "failed --set '%s' changed the config", ovs[i]);
                all_ok = 0;
            } else {
                check_resolved(&base);
            }
        }
        if (all_ok) {
            exercise(&base);
            FUZZ_CHECK(rc_with == 0, "overrides fail at load but succeed one by one");
            FUZZ_CHECK(moe_config_hash(&base) == moe_config_hash(&with),
                       "overrides at load and one by one disagree");
        }
        moe_config_release(&base);
    }
    if (rc_with == 0)
        moe_config_release(&with);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *rest;
    size_t rest_n;
    char *text = fuzz_split_nul(data, size, &rest, &rest_n);

    // Overrides: NUL-separated strings after the first NUL.
    const char *ovs[MAX_OVERRIDES];
    size_t n_ovs = 0;
    char *ovbuf = NULL;
    if (rest) {
        ovbuf = malloc(rest_n + 1);
        FUZZ_CHECK(ovbuf, "out of memory");
        memcpy(ovbuf, rest, rest_n);
        ovbuf[rest_n] = '\0';
        for (char *p = ovbuf; p <= ovbuf + rest_n && n_ovs < MAX_OVERRIDES;) {
            ovs[n_ovs++] = p;
            p += strlen(p) + 1;
        }
    }

    run_schema(moe_run_schema(), moe_run_schema_len(), text, ovs, n_ovs);
    run_schema(local_schema, sizeof local_schema / sizeof local_schema[0], text, ovs, n_ovs);

    // Defaults plus overrides only (a CLI run with --set and no --config).
    struct moe_err err = {0};
    struct moe_config c;
    int rc;
    if (n_ovs) {
        rc = moe_config_parse(&c, moe_run_schema(), moe_run_schema_len(), NULL, NULL, ovs, n_ovs, &err);
        if (rc) {
            fuzz_check_err(rc, &err);
        } else {
            check_resolved(&c);
            moe_config_release(&c);
        }
    }

    // The file path: the raw bytes, NULs included (the loader must reject
    // them). Without a NUL it parses the text already checked above.
    memset(&err, 0, sizeof err);
    rc = moe_config_load(&c, moe_run_schema(), moe_run_schema_len(), fuzz_file(0, data, size), NULL, 0, &err);
    if (rc) {
        fuzz_check_err(rc, &err);
    } else {
        FUZZ_CHECK(!memchr(data, 0, size), "a file with a NUL byte loaded");
        moe_config_release(&c);
    }

    free(ovbuf);
    free(text);
    return 0;
}
