// dataset.h: in-memory data sets, the readers that fill them, and the typed
// settings of the data a run reads (which reader, with its spec).
// T = rows (examples), D = n_in features, O = n_out targets or classes.
// Readers validate what they read and report the file and line at fault;
// nothing here trains or prints, and nothing here reads the config (the
// data.* keys are parsed by train/data.c).
#ifndef MOE_DATASET_H
#define MOE_DATASET_H

#include <stddef.h>
#include <stdint.h>

#include "core/status.h"
#include "io/corpus.h"

enum moe_task { MOE_TASK_REGRESSION = 0, MOE_TASK_CLASSIFICATION = 1, MOE_TASK_LM = 2 };

struct moe_text;

struct moe_dataset {
    enum moe_task task;
    size_t n;            // rows
    size_t n_in;         // features (D)
    size_t n_out;        // regression targets, or number of classes (O)
    float *x;            // (n, n_in)
    float *y;            // (n, n_out) regression targets; NULL for classification
    int32_t *label;      // (n) class id in [0, n_out) for classification; NULL for regression
    int32_t *group;      // (n) ground-truth region/source id when known (synthetic data), else NULL
    size_t n_group;      // number of distinct groups (0 when group is NULL)
    char **class_names;  // (n_out) for classification, may be NULL
    char **feature_names;// (n_in), may be NULL
    // Language models (task MOE_TASK_LM): no x, y or label. A row is a window
    // of n_ctx + 1 consecutive tokens of `text` (inputs and next-token targets).
    // n_in = languages (1 for a single text), n_out = vocabulary size; n =
    // windows per training epoch (drawn at random, io/corpus.h); evaluation runs
    // over the n_win fixed windows starting at win[].
    const struct moe_text *text; // the split's tokens (owned by the corpus, not by the data set)
    size_t n_ctx;
    size_t *win;         // (n_win) start token of each evaluation window (owned)
    size_t n_win;
};

void moe_dataset_release(struct moe_dataset *d);
// Allocate x, and y or label (and group when with_group) for n rows; zero-filled.
int moe_dataset_alloc(struct moe_dataset *d, enum moe_task task, size_t n, size_t n_in, size_t n_out,
                      int with_group, struct moe_err *err);

// Per-feature standardisation statistics, computed on a training split and
// applied to every split: x' = (x - mean) / std (std of a constant feature is 1).
struct moe_standardize {
    size_t n_in;
    float *mean, *std;   // (n_in)
};
int moe_standardize_fit(struct moe_standardize *ret, const struct moe_dataset *train, struct moe_err *err);
void moe_standardize_apply(const struct moe_standardize *s, struct moe_dataset *d);
void moe_standardize_release(struct moe_standardize *s);

// ---- IDX (LeCun's format: magic 0x00000800 | type << 8 | ndim, big-endian dims) ----
// Raw or gzip-compressed (detected by content). Only unsigned-byte data (type 0x08).
struct moe_idx {
    int ndim;
    size_t dims[4];
    size_t count;        // product of dims
    uint8_t *data;
};
int moe_idx_read(const char *path, struct moe_idx *ret, struct moe_err *err);
void moe_idx_release(struct moe_idx *m);
// Images (n, rows, cols) scaled to [0, 1] and labels (n) into a classification
// set with n_out = 10 (or max label + 1). limit = 0 reads every row.
int moe_dataset_from_idx(const char *images, const char *labels, size_t limit, struct moe_dataset *ret,
                         struct moe_err *err);
// The same, keeping only the rows whose label is one of classes[0..n_classes)
// (n_classes = 0 keeps every row). Labels keep their values and n_out stays
// what the whole file implies, so a model still has every class's output.
// limit counts kept rows: the first `limit` rows with a kept label. When no
// row has a kept label the set is empty (n = 0). A class outside [0, n_out)
// is MOE_EINVAL.
int moe_dataset_from_idx_ex(const char *images,
                            const char *labels,
                            size_t limit,
                            const int32_t *classes,
                            size_t n_classes,
                            struct moe_dataset *ret,
                            struct moe_err *err);

// ---- CSV / TSV (libcsv) ----
struct moe_table_spec {
    const char *path;
    char delimiter;              // ',' or '\t'; 0 = from the extension (.tsv/.tab -> tab, else comma)
    const char *const *features; // feature column names
    size_t n_features;
    const char *const *targets;  // target column names: one for classification, >= 1 for regression
    size_t n_targets;
    enum moe_task task;
    const char *const *classes;  // classification: the classes to keep, in id order; NULL = every
    size_t n_classes;            //   distinct value of the target column, sorted (strcmp)
    const char *const *where;    // row filters, all must hold: "COL=a|b|c", "COL!=a", "COL<=x",
    size_t n_where;              //   "COL>=x", "COL<x", "COL>x" (numeric compare for < > forms)
    const char *split_column;    // NULL: random split by test_fraction; else rows are assigned
    double train_range[2];       //   by the numeric value of this column: train if within
    double test_range[2];        //   train_range (inclusive), test if within test_range, else dropped
    double test_fraction;        // for the random split
    uint64_t seed;               // for the random split (counter-based RNG)
};
// Read a table and return the train and test splits. Rows whose class is not in
// `classes` are dropped. Errors name the file and the line (missing column,
// non-numeric cell, ragged row, bad filter).
int moe_table_read(const struct moe_table_spec *spec, struct moe_dataset *ret_train,
                   struct moe_dataset *ret_test, struct moe_err *err);
// Check one row filter's syntax (as moe_table_read parses it), before any file is read.
int moe_table_filter_check(const char *expr, struct moe_err *err);

// ---- Built-in synthetic tasks, generated from the seed ----
// "regions": inputs drawn from n_regions known regions (Gaussian clusters with
// well-separated centres in D dimensions), each region with its own random
// linear map y = A_r x + b_r, plus Gaussian noise. group[] holds the region,
// so expert specialisation can be checked against the truth.
// "classes": same regions, each region owning one class (n_out is ignored:
// there are n_regions classes), for classification. Train and test are drawn with different
// streams of the same seed.
struct moe_synth_spec {
    const char *kind;     // "regions" or "classes"
    size_t n_train, n_test;
    size_t n_valid;       // validation rows, their own stream (moe_synth_make_ex; 0 = none)
    size_t n_in, n_out, n_regions;
    double noise;         // std of the target noise (regions; unused for classes)
    double spread;        // std of inputs around their region centre (centres ~ 3 N(0, 1))
    uint64_t seed;
};
int moe_synth_make(const struct moe_synth_spec *spec, struct moe_dataset *ret_train,
                   struct moe_dataset *ret_test, struct moe_err *err);
// The same with spec->n_valid validation rows into ret_valid (may be NULL when n_valid is 0): drawn
// like the others from the same regions and maps, on a stream of their own, so the training and test
// rows do not depend on n_valid.
int moe_synth_make_ex(const struct moe_synth_spec *spec, struct moe_dataset *ret_train, struct moe_dataset *ret_test,
                      struct moe_dataset *ret_valid, struct moe_err *err);
// Move the last n rows of d into *ret (allocated; d->n shrinks by n, its buffers stay as they are).
// Features, targets, labels and groups are copied; names are not (ret's are NULL).
int moe_dataset_split_tail(struct moe_dataset *d, size_t n, struct moe_dataset *ret, struct moe_err *err);

// ---- The data of a run: the data.* keys, typed ----
// Filled by moe_data_cfg_parse (train/data.c, which owns the keys and checks
// every rule between them) and read by the loader (moe_data_load_cfg) and the
// memory estimate (model/estimate.h). Declared here, below both, because it is
// made of the readers' specs. Only the section of `source` is filled (the
// others stay zero). Strings point into the config tree: valid while the
// config lives unchanged. Lists are owned by the struct (moe_data_cfg_release).
enum moe_data_source { MOE_DATA_SYNTHETIC = 0, MOE_DATA_IDX = 1, MOE_DATA_TABLE = 2, MOE_DATA_TEXT = 3 };
#define MOE_DATA_IDX_MAX_CLASSES 256
struct moe_data_cfg {
    enum moe_data_source source;     // data.source
    int standardize;                 // data.standardize (not applied to text)
    // synthetic: n_out is the number of classes for kind "classes" (n_regions;
    // data.synthetic.n_out applies to regression only); seed = train.seed.
    struct moe_synth_spec synthetic;
    struct {
        const char *train_images, *train_labels, *test_images, *test_labels;
        size_t limit_train, limit_test;                 // 0 = every row, counted after classes
        int32_t classes[MOE_DATA_IDX_MAX_CLASSES];      // data.idx.classes (duplicates allowed)
        size_t n_classes;                               // 0 = every label
        double valid_fraction;                          // data.idx.valid_fraction
    } idx;
    double table_valid_fraction;     // data.table.valid_fraction
    // table: features, targets, classes and where in an array the struct owns;
    // train_range and test_range set only with split_column; seed = train.seed.
    struct moe_table_spec table;
    struct {
        struct moe_corpus_spec corpus; // .vocab NULL: the loader's argument, else vocab_path, else built
        const char *vocab_path;        // data.text.vocab, or NULL
        size_t n_ctx;                  // model.n_ctx (copied): windows of n_ctx + 1 tokens
        uint64_t windows_per_epoch;    // 0 = training tokens / n_ctx
        size_t train_eval_windows;     // 0 = every window at steps of n_ctx tokens
        size_t valid_eval_windows;
    } text;
    const char **lists;              // the table's lists, one allocation (owned)
};

#endif
