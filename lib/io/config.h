// config.h: JSON run configuration with strict, schema-driven validation.
// A schema is a flat table of dotted key paths ("model.n_expert") with a kind,
// a default, a range or a set of choices, and one line of documentation.
// Loading parses the file (cJSON), rejects duplicate keys, applies
// `--set key.path=value` overrides, rejects unknown keys (naming the full path
// and the nearest valid key), checks kind, integrality, finiteness and range,
// and fills every default, so the resolved tree holds every schema key.
// Not a general JSON library: it only knows the shapes a schema can describe.
#ifndef MOE_CONFIG_H
#define MOE_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/status.h"

struct cJSON;

enum moe_cfg_kind {
    MOE_CFG_INT,      // integral JSON number within [min, max]
    MOE_CFG_NUM,      // finite JSON number within [min, max]
    MOE_CFG_BOOL,     // true / false
    MOE_CFG_STR,      // string; one of `choices` ("a|b|c") when choices is non-NULL
    MOE_CFG_STR_LIST, // array of strings (each one of `choices` when non-NULL)
    MOE_CFG_NUM_LIST, // array of finite numbers, each within [min, max]
};

struct moe_cfg_key {
    const char *path;          // dotted path, e.g. "optim.lr"
    enum moe_cfg_kind kind;
    const char *def;           // default as JSON text: "4", "0.1", "true", "\"nll\"", "[]"; "null" = optional, unset
    double min, max;           // inclusive range for INT, NUM and NUM_LIST elements (ignored when min > max)
    const char *choices;       // "a|b|c" for STR / STR_LIST, NULL for free text
    const char *doc;           // one line of documentation
};

struct moe_config {
    struct cJSON *root;                // resolved tree: every schema key present (JSON null when unset)
    const struct moe_cfg_key *schema;
    size_t n_schema;
};

// Load: text from `path` (NULL: start from an empty object), then overrides of the
// form "key.path=value" applied in order, then validation and defaults.
// Errors: MOE_EIO (cannot read file), MOE_ECONFIG (parse error with line:column,
// duplicate key, unknown key with nearest valid key, wrong kind, out of range,
// not one of the choices, malformed override). Messages name the file and the key path.
int moe_config_load(struct moe_config *ret, const struct moe_cfg_key *schema, size_t n_schema,
                    const char *path, const char *const *overrides, size_t n_overrides,
                    struct moe_err *err);
// Same, from JSON text already in memory; `source` names it in messages.
int moe_config_parse(struct moe_config *ret, const struct moe_cfg_key *schema, size_t n_schema,
                     const char *text, const char *source, const char *const *overrides,
                     size_t n_overrides, struct moe_err *err);
// Apply one more override to a loaded config and re-validate (used by sweeps
// such as compare-loss that vary one key of a base config).
int moe_config_set(struct moe_config *c, const char *override, struct moe_err *err);
// Deep copy.
int moe_config_copy(struct moe_config *ret, const struct moe_config *c, struct moe_err *err);

// Accessors. The path must be a schema key of the right kind (asserted).
int64_t moe_cfg_int(const struct moe_config *c, const char *path);
double moe_cfg_num(const struct moe_config *c, const char *path);
bool moe_cfg_bool(const struct moe_config *c, const char *path);
const char *moe_cfg_str(const struct moe_config *c, const char *path); // NULL when unset
size_t moe_cfg_len(const struct moe_config *c, const char *path);      // list length (0 when unset)
const char *moe_cfg_str_at(const struct moe_config *c, const char *path, size_t i);
double moe_cfg_num_at(const struct moe_config *c, const char *path, size_t i);
// The strings of a string-list key as a malloc'd array of views into c (at
// least one slot, so an empty list is not NULL); free() it. MOE_ENOMEM on failure.
int moe_cfg_str_list(const struct moe_config *c, const char *path, const char ***ret, size_t *ret_n,
                     struct moe_err *err);

// The resolved config as JSON text (malloc'd; keys in schema order). pretty=0 gives
// the compact canonical form that moe_config_hash hashes.
char *moe_config_to_json(const struct moe_config *c, int pretty);
// FNV-1a 64 of the compact canonical JSON: equal configs hash equal.
uint64_t moe_config_hash(const struct moe_config *c);

void moe_config_release(struct moe_config *c);

// Edit distance, exposed for "did you mean" messages elsewhere (option names).
size_t moe_edit_distance(const char *a, const char *b);

#endif
