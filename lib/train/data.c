// data.c: the data.* keys (their schema rows, read once into struct
// moe_data_cfg of io/dataset.h, with every rule between keys checked there)
// and the loader that builds the train and test splits from that struct.
// Not a reader: the formats live in lib/io; this only maps keys to specs.
// Below moe_data_cfg_parse no key is read by name.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "io/safetensors.h"
#include "model/estimate.h"
#include "train/train.h"

#define FMNIST "/usr/share/datasets/fashion-mnist/"
#define BIG 1e9

const struct moe_cfg_key moe_data_keys[] = {
    // data
    { "data.source", MOE_CFG_STR, "\"synthetic\"", 1, 0, "synthetic|idx|table|text", "where examples come from: built-in generator, IDX files, a CSV/TSV table, or plain text (model transformer)" },
    { "data.standardize", MOE_CFG_BOOL, "false", 1, 0, NULL, "standardise features with the training split's mean and std (stored in the checkpoint as data.mean, data.std)" },
    { "data.synthetic.kind", MOE_CFG_STR, "\"regions\"", 1, 0, "regions|classes", "regions: each input region has its own linear map (regression); classes: each region is a class" },
    { "data.synthetic.n_train", MOE_CFG_INT, "1000", 1, BIG, NULL, "training rows" },
    { "data.synthetic.n_test", MOE_CFG_INT, "500", 0, BIG, NULL, "test rows" },
    { "data.synthetic.n_valid", MOE_CFG_INT, "0", 0, BIG, NULL, "validation rows (split=valid in metrics.csv), drawn like the others from a stream of their own (0 = no validation split)" },
    { "data.synthetic.n_in", MOE_CFG_INT, "2", 1, 65536, NULL, "input features" },
    { "data.synthetic.n_out", MOE_CFG_INT, "1", 1, 65536, NULL, "regression targets (ignored for kind classes)" },
    { "data.synthetic.n_regions", MOE_CFG_INT, "4", 1, 4096, NULL, "number of input regions (and classes for kind classes)" },
    { "data.synthetic.noise", MOE_CFG_NUM, "0.1", 0, 1e6, NULL, "std of Gaussian noise added to regression targets" },
    { "data.synthetic.spread", MOE_CFG_NUM, "0.5", 0, 1e6, NULL, "std of inputs around their region centre" },
    { "data.idx.train_images", MOE_CFG_STR, "\"" FMNIST "train-images-idx3-ubyte.gz\"", 1, 0, NULL, "IDX images for training (raw or gzip)" },
    { "data.idx.train_labels", MOE_CFG_STR, "\"" FMNIST "train-labels-idx1-ubyte.gz\"", 1, 0, NULL, "IDX labels for training" },
    { "data.idx.test_images", MOE_CFG_STR, "\"" FMNIST "t10k-images-idx3-ubyte.gz\"", 1, 0, NULL, "IDX images for testing" },
    { "data.idx.test_labels", MOE_CFG_STR, "\"" FMNIST "t10k-labels-idx1-ubyte.gz\"", 1, 0, NULL, "IDX labels for testing" },
    { "data.idx.limit_train", MOE_CFG_INT, "0", 0, BIG, NULL, "use only the first N training rows (0 = all; counted after data.idx.classes)" },
    { "data.idx.limit_test", MOE_CFG_INT, "0", 0, BIG, NULL, "use only the first N test rows (0 = all; counted after data.idx.classes)" },
    { "data.idx.valid_fraction", MOE_CFG_NUM, "0", 0, 0.9, NULL, "the last fraction of the training rows (after classes and limit_train) is the validation split (0 = none)" },
    { "data.idx.classes", MOE_CFG_NUM_LIST, "[]", 0, 255, NULL, "keep only the rows whose label is in this list, in both splits (integers; [] = all); labels keep their values, so the model still has every class's output" },
    { "data.table.path", MOE_CFG_STR, "null", 1, 0, NULL, "CSV or TSV file with a header row" },
    { "data.table.delimiter", MOE_CFG_STR, "\"auto\"", 1, 0, "auto|comma|tab", "field separator; auto = tab for .tsv/.tab, else comma" },
    { "data.table.task", MOE_CFG_STR, "\"classification\"", 1, 0, "classification|regression", "classification: one string target column; regression: numeric targets" },
    { "data.table.features", MOE_CFG_STR_LIST, "[]", 1, 0, NULL, "feature column names" },
    { "data.table.targets", MOE_CFG_STR_LIST, "[]", 1, 0, NULL, "target column names (one for classification)" },
    { "data.table.classes", MOE_CFG_STR_LIST, "[]", 1, 0, NULL, "classes to keep, in label order (empty = every value, sorted); other rows are dropped" },
    { "data.table.where", MOE_CFG_STR_LIST, "[]", 1, 0, NULL, "row filters, all must hold: COL=a|b, COL!=a, COL<=x, COL>=x, COL<x, COL>x" },
    { "data.table.split_column", MOE_CFG_STR, "null", 1, 0, NULL, "numeric column that assigns rows to splits by range (unset = random split)" },
    { "data.table.train_range", MOE_CFG_NUM_LIST, "[]", 1, 0, NULL, "[lo, hi] inclusive range of split_column for training rows" },
    { "data.table.test_range", MOE_CFG_NUM_LIST, "[]", 1, 0, NULL, "[lo, hi] inclusive range of split_column for test rows" },
    { "data.table.test_fraction", MOE_CFG_NUM, "0.2", 0, 0.99, NULL, "fraction of rows held out by the random split" },
    { "data.table.valid_fraction", MOE_CFG_NUM, "0", 0, 0.9, NULL, "the last fraction of the training split's rows (in its order after the range or random split) is the validation split (0 = none)" },
    { "data.text.path", MOE_CFG_STR, "null", 1, 0, NULL, "a text file, or a directory with one text file per language (the file name without extension names the language)" },
    { "data.text.tokens", MOE_CFG_STR, "\"bytes\"", 1, 0, "bytes|words", "bytes: vocabulary of the 256 byte values; words: runs of letters/digits (and bytes >= 0x80) plus single other bytes, vocabulary built from the training text" },
    { "data.text.vocab_size", MOE_CFG_INT, "8192", 2, 1 << 24, NULL, "words: vocabulary cap including the unknown word <unk> (id 0); the most frequent training words are kept" },
    { "data.text.vocab", MOE_CFG_STR, "null", 1, 0, NULL, "words: read the vocabulary from this file (a run's vocab.txt) instead of building it" },
    { "data.text.valid_fraction", MOE_CFG_NUM, "0.1", 0, 0.9, NULL, "the last fraction of each file's bytes is the validation split" },
    { "data.text.max_bytes", MOE_CFG_INT, "0", 0, 1e15, NULL, "read only the first N bytes of each file (0 = all)" },
    { "data.text.windows_per_epoch", MOE_CFG_INT, "0", 0, 1e12, NULL, "training windows per epoch, each drawn at a random position (0 = training tokens / model.n_ctx)" },
    { "data.text.train_eval_windows", MOE_CFG_INT, "1024", 0, 1e12, NULL, "fixed windows, evenly spaced, on which the training split is evaluated (0 = every window at steps of n_ctx tokens; consecutive windows share one token, the last target of one is the first input of the next)" },
    { "data.text.valid_eval_windows", MOE_CFG_INT, "0", 0, 1e12, NULL, "the same for the validation split (0 = every window at steps of n_ctx tokens; consecutive windows share one token, the last target of one is the first input of the next)" },
};
const size_t moe_data_keys_len = sizeof moe_data_keys / sizeof moe_data_keys[0];

// ---------------------------------------------------------------- the keys, typed

static int parse_table(struct moe_data_cfg *c, const struct moe_config *cfg, struct moe_err *err)
{
    struct moe_table_spec *s = &c->table;
    s->path = moe_cfg_str(cfg, "data.table.path");
    if (!s->path)
        return moe_error(err, MOE_ECONFIG, "key 'data.table.path' must be set when data.source is 'table'");
    const char *delim = moe_cfg_str(cfg, "data.table.delimiter");
    s->delimiter = strcmp(delim, "tab") == 0 ? '\t' : strcmp(delim, "comma") == 0 ? ',' : 0;
    s->task = strcmp(moe_cfg_str(cfg, "data.table.task"), "regression") == 0 ? MOE_TASK_REGRESSION
                                                                             : MOE_TASK_CLASSIFICATION;
    // the four lists in one array, each NULL-terminated
    const char *lists[] = { "data.table.features", "data.table.targets", "data.table.classes", "data.table.where" };
    size_t lens[4], total = 0;
    for (int l = 0; l < 4; l++)
        total += (lens[l] = moe_cfg_len(cfg, lists[l])) + 1;
    c->lists = calloc(total, sizeof *c->lists);
    if (!c->lists)
        return moe_error(err, MOE_ENOMEM, "out of memory");
    const char **vals[4];
    for (size_t l = 0, at = 0; l < 4; l++) {
        vals[l] = c->lists + at;
        for (size_t i = 0; i < lens[l]; i++)
            vals[l][i] = moe_cfg_str_at(cfg, lists[l], i);
        at += lens[l] + 1;
    }
    if (lens[0] == 0)
        return moe_error(err, MOE_ECONFIG, "key 'data.table.features' must name at least one column");
    if (lens[1] == 0 || (s->task == MOE_TASK_CLASSIFICATION && lens[1] != 1))
        return moe_error(err, MOE_ECONFIG, "key 'data.table.targets' must name %s column",
                         s->task == MOE_TASK_CLASSIFICATION ? "exactly one" : "at least one");
    s->features = vals[0], s->n_features = lens[0];
    s->targets = vals[1], s->n_targets = lens[1];
    s->classes = lens[2] ? vals[2] : NULL, s->n_classes = lens[2];
    s->where = vals[3], s->n_where = lens[3];
    for (size_t i = 0; i < s->n_where; i++) {
        struct moe_err ferr;
        if (moe_table_filter_check(s->where[i], &ferr))
            return moe_error(err, MOE_ECONFIG, "key 'data.table.where[%zu]': %s", i, ferr.msg);
    }
    s->split_column = moe_cfg_str(cfg, "data.table.split_column");
    if (s->split_column) {
        const char *ranges[] = { "data.table.train_range", "data.table.test_range" };
        double *dst[] = { s->train_range, s->test_range };
        for (int r = 0; r < 2; r++) {
            if (moe_cfg_len(cfg, ranges[r]) != 2)
                return moe_error(err, MOE_ECONFIG, "key '%s' must be [lo, hi] when data.table.split_column is set",
                                 ranges[r]);
            dst[r][0] = moe_cfg_num_at(cfg, ranges[r], 0);
            dst[r][1] = moe_cfg_num_at(cfg, ranges[r], 1);
            if (dst[r][0] > dst[r][1])
                return moe_error(err, MOE_ECONFIG, "key '%s' is [%g, %g]: expected [lo, hi] with lo <= hi",
                                 ranges[r], dst[r][0], dst[r][1]);
        }
    }
    s->test_fraction = moe_cfg_num(cfg, "data.table.test_fraction");
    c->table_valid_fraction = moe_cfg_num(cfg, "data.table.valid_fraction");
    s->seed = (uint64_t)moe_cfg_int(cfg, "train.seed");
    return 0;
}

static int parse_text(struct moe_data_cfg *c, const struct moe_config *cfg, struct moe_err *err)
{
    struct moe_corpus_spec *s = &c->text.corpus;
    s->path = moe_cfg_str(cfg, "data.text.path");
    s->tokens = strcmp(moe_cfg_str(cfg, "data.text.tokens"), "words") == 0 ? MOE_TOK_WORDS : MOE_TOK_BYTES;
    s->vocab_size = (size_t)moe_cfg_int(cfg, "data.text.vocab_size");
    s->valid_fraction = moe_cfg_num(cfg, "data.text.valid_fraction");
    s->max_bytes = (size_t)moe_cfg_int(cfg, "data.text.max_bytes");
    if (!s->path)
        return moe_error(err, MOE_ECONFIG, "key 'data.text.path' must be set when data.source is 'text'");
    c->text.vocab_path = moe_cfg_str(cfg, "data.text.vocab");
    c->text.n_ctx = (size_t)moe_cfg_int(cfg, "model.n_ctx");
    c->text.windows_per_epoch = (uint64_t)moe_cfg_int(cfg, "data.text.windows_per_epoch");
    c->text.train_eval_windows = (size_t)moe_cfg_int(cfg, "data.text.train_eval_windows");
    c->text.valid_eval_windows = (size_t)moe_cfg_int(cfg, "data.text.valid_eval_windows");
    return 0;
}

static int parse_idx(struct moe_data_cfg *c, const struct moe_config *cfg, struct moe_err *err)
{
    size_t n = moe_cfg_len(cfg, "data.idx.classes");
    if (n > MOE_DATA_IDX_MAX_CLASSES) // the schema's range makes each a byte; duplicates may repeat one
        return moe_error(err, MOE_ECONFIG, "key 'data.idx.classes' has %zu entries, at most %zu", n,
                         (size_t)MOE_DATA_IDX_MAX_CLASSES);
    for (size_t i = 0; i < n; i++) {
        double k = moe_cfg_num_at(cfg, "data.idx.classes", i);
        if (k != (double)(int32_t)k)
            return moe_error(err, MOE_ECONFIG, "key 'data.idx.classes[%zu]' must be an integer, got %g", i, k);
        c->idx.classes[i] = (int32_t)k;
    }
    c->idx.n_classes = n;
    c->idx.train_images = moe_cfg_str(cfg, "data.idx.train_images");
    c->idx.train_labels = moe_cfg_str(cfg, "data.idx.train_labels");
    c->idx.test_images = moe_cfg_str(cfg, "data.idx.test_images");
    c->idx.test_labels = moe_cfg_str(cfg, "data.idx.test_labels");
    c->idx.limit_train = (size_t)moe_cfg_int(cfg, "data.idx.limit_train");
    c->idx.limit_test = (size_t)moe_cfg_int(cfg, "data.idx.limit_test");
    c->idx.valid_fraction = moe_cfg_num(cfg, "data.idx.valid_fraction");
    return 0;
}

static void parse_synthetic(struct moe_data_cfg *c, const struct moe_config *cfg)
{
    struct moe_synth_spec *s = &c->synthetic;
    s->kind = moe_cfg_str(cfg, "data.synthetic.kind");
    s->n_train = (size_t)moe_cfg_int(cfg, "data.synthetic.n_train");
    s->n_test = (size_t)moe_cfg_int(cfg, "data.synthetic.n_test");
    s->n_valid = (size_t)moe_cfg_int(cfg, "data.synthetic.n_valid");
    s->n_in = (size_t)moe_cfg_int(cfg, "data.synthetic.n_in");
    s->n_regions = (size_t)moe_cfg_int(cfg, "data.synthetic.n_regions");
    // kind classes has one class per region; n_out applies to regression only
    s->n_out = strcmp(s->kind, "classes") == 0 ? s->n_regions : (size_t)moe_cfg_int(cfg, "data.synthetic.n_out");
    s->noise = moe_cfg_num(cfg, "data.synthetic.noise");
    s->spread = moe_cfg_num(cfg, "data.synthetic.spread");
    s->seed = (uint64_t)moe_cfg_int(cfg, "train.seed");
}

int moe_data_cfg_parse(struct moe_data_cfg *c, const struct moe_config *cfg, struct moe_err *err)
{
    static const char *const sources[] = { [MOE_DATA_SYNTHETIC] = "synthetic", [MOE_DATA_IDX] = "idx",
                                           [MOE_DATA_TABLE] = "table", [MOE_DATA_TEXT] = "text" };
    memset(c, 0, sizeof *c);
    const char *src = moe_cfg_str(cfg, "data.source");
    for (size_t i = 0; i < sizeof sources / sizeof sources[0]; i++)
        if (strcmp(src, sources[i]) == 0)
            c->source = (enum moe_data_source)i;
    c->standardize = moe_cfg_bool(cfg, "data.standardize");
    int rc = 0;
    switch (c->source) {
    case MOE_DATA_SYNTHETIC:
        parse_synthetic(c, cfg);
        break;
    case MOE_DATA_IDX:
        rc = parse_idx(c, cfg, err);
        break;
    case MOE_DATA_TABLE:
        rc = parse_table(c, cfg, err);
        break;
    case MOE_DATA_TEXT:
        rc = parse_text(c, cfg, err);
        break;
    }
    if (rc)
        moe_data_cfg_release(c);
    return rc;
}

void moe_data_cfg_release(struct moe_data_cfg *c)
{
    if (!c)
        return;
    free(c->lists);
    memset(c, 0, sizeof *c);
}

// ---------------------------------------------------------------- loading

// Text: the corpus, then the two splits as windows of n_ctx + 1 tokens.
static int load_text(struct moe_data *d, const struct moe_data_cfg *c, const struct moe_vocab *vocab,
                     struct moe_err *err)
{
    struct moe_corpus_spec s = c->text.corpus;
    s.vocab = vocab;
    struct moe_vocab file_vocab;
    memset(&file_vocab, 0, sizeof file_vocab);
    int rc;
    if (!vocab && c->text.vocab_path) {
        if ((rc = moe_vocab_read(&file_vocab, c->text.vocab_path, err))) {
            char msg[sizeof err->msg];
            snprintf(msg, sizeof msg, "%s", err->msg);
            return moe_error(err, rc, "key 'data.text.vocab': %s", msg);
        }
        s.vocab = &file_vocab;
    }
    rc = moe_corpus_load(&s, &d->corpus, err);
    moe_vocab_release(&file_vocab);
    if (rc)
        return rc;
    d->has_text = 1;
    size_t C = c->text.n_ctx;
    if (moe_text_n_starts(&d->corpus.train, C) == 0) {
        size_t longest = 0;
        for (size_t i = 0; i < d->corpus.train.n_seg; i++) {
            size_t len = d->corpus.train.seg[i].end - d->corpus.train.seg[i].begin;
            longest = len > longest ? len : longest;
        }
        return moe_error(err, MOE_EINVAL, "'%s': the training text has no window of model.n_ctx + 1 = %zu tokens (its longest file has %zu training tokens)",
                         s.path, C + 1, longest);
    }
    struct moe_dataset *sp[] = { &d->train, &d->test };
    const struct moe_text *tx[] = { &d->corpus.train, &d->corpus.valid };
    const size_t max_win[] = { c->text.train_eval_windows, c->text.valid_eval_windows };
    for (int i = 0; i < 2; i++) {
        struct moe_dataset *ds = sp[i];
        ds->task = MOE_TASK_LM;
        ds->text = tx[i];
        ds->n_ctx = C;
        ds->n_in = d->corpus.n_lang;
        ds->n_out = d->corpus.vocab.n;
        ds->n_group = d->corpus.n_lang;
        if ((rc = moe_text_fixed_windows(tx[i], C, max_win[i], &ds->win, &ds->n_win, err)))
            return rc;
        ds->n = ds->n_win;
    }
    uint64_t per_epoch = c->text.windows_per_epoch;
    d->train.n = per_epoch ? (size_t)per_epoch : (d->corpus.train.n_tok / C ? d->corpus.train.n_tok / C : 1);
    return 0;
}

// IDX: both splits, each filtered to the classes before its limit applies.
static int load_idx(struct moe_data *d, const struct moe_data_cfg *c, struct moe_err *err)
{
    const char *split[][2] = { { c->idx.train_images, c->idx.train_labels },
                               { c->idx.test_images, c->idx.test_labels } };
    const size_t limit[] = { c->idx.limit_train, c->idx.limit_test };
    size_t n_classes = c->idx.n_classes;
    struct moe_dataset *ds[] = { &d->train, &d->test };
    for (int s = 0; s < 2; s++) {
        int rc = moe_dataset_from_idx_ex(split[s][0], split[s][1], limit[s], c->idx.classes, n_classes, ds[s], err);
        if (rc == MOE_EINVAL && n_classes) { // a class the labels cannot hold
            char msg[sizeof err->msg];
            snprintf(msg, sizeof msg, "%s", err ? err->msg : "");
            return moe_error(err, MOE_ECONFIG, "key 'data.idx.classes': %s", msg);
        }
        if (rc)
            return rc;
        if (ds[s]->n == 0) // a data error, as for a table whose filters keep no row
            return moe_error(err, MOE_EFORMAT, "idx '%s': no row has a label in data.idx.classes", split[s][1]);
    }
    if (d->test.n_in != d->train.n_in)
        return moe_error(err, MOE_EFORMAT, "idx '%s' has %zu pixels per image but '%s' has %zu",
                         c->idx.train_images, d->train.n_in, c->idx.test_images, d->test.n_in);
    if (d->test.n_out != d->train.n_out)
        return moe_error(err, MOE_EFORMAT, "idx '%s' has %zu classes but '%s' has %zu", c->idx.train_labels,
                         d->train.n_out, c->idx.test_labels, d->test.n_out);
    return 0;
}

// IDX and table data: the last floor(fraction * rows) training rows become the validation split
// (before standardisation, whose statistics are the remaining training rows'). A fraction that
// leaves no validation row, or no training row, is a config error naming the key.
static int split_valid(struct moe_data *d, double fraction, const char *key, struct moe_err *err)
{
    if (fraction <= 0.0)
        return 0;
    size_t n = d->train.n, nv = (size_t)(fraction * (double)n);
    if (nv == 0 || nv >= n)
        return moe_error(err, MOE_ECONFIG, "key '%s': %g of %zu training rows leaves %s", key, fraction, n,
                         nv == 0 ? "an empty validation split" : "no training row");
    return moe_dataset_split_tail(&d->train, nv, &d->valid, err);
}

int moe_data_load_cfg(struct moe_data *ret, const struct moe_data_cfg *c, const struct moe_vocab *vocab,
                      struct moe_err *err)
{
    memset(ret, 0, sizeof *ret);
    int rc = 0;
    switch (c->source) {
    case MOE_DATA_SYNTHETIC:
        rc = moe_synth_make_ex(&c->synthetic, &ret->train, &ret->test, &ret->valid, err);
        break;
    case MOE_DATA_IDX:
        rc = load_idx(ret, c, err);
        if (!rc)
            rc = split_valid(ret, c->idx.valid_fraction, "data.idx.valid_fraction", err);
        break;
    case MOE_DATA_TABLE:
        rc = moe_table_read(&c->table, &ret->train, &ret->test, err);
        if (!rc)
            rc = split_valid(ret, c->table_valid_fraction, "data.table.valid_fraction", err);
        break;
    case MOE_DATA_TEXT:
        rc = load_text(ret, c, vocab, err);
        break;
    }
    if (!rc && c->standardize && !ret->has_text) {
        rc = moe_standardize_fit(&ret->stats, &ret->train, err);
        if (!rc) {
            moe_standardize_apply(&ret->stats, &ret->train);
            moe_standardize_apply(&ret->stats, &ret->test);
            if (ret->valid.n)
                moe_standardize_apply(&ret->stats, &ret->valid);
            ret->standardized = 1;
        }
    }
    if (rc)
        moe_data_release(ret);
    return rc;
}

int moe_data_load(struct moe_data *ret, const struct moe_config *cfg, struct moe_err *err)
{
    return moe_data_load_ex(ret, cfg, NULL, err);
}

int moe_data_load_ex(struct moe_data *ret, const struct moe_config *cfg, const struct moe_vocab *vocab,
                     struct moe_err *err)
{
    struct moe_data_cfg c;
    int rc = moe_data_cfg_parse(&c, cfg, err);
    if (rc) {
        memset(ret, 0, sizeof *ret);
        return rc;
    }
    rc = moe_data_load_cfg(ret, &c, vocab, err);
    moe_data_cfg_release(&c);
    return rc;
}

int moe_data_shape(const struct moe_config *cfg, enum moe_task *ret_task, size_t *ret_n_in, size_t *ret_n_out,
                   size_t *ret_n_train, size_t *ret_n_test, struct moe_err *err)
{
    // Synthetic settings break no rule, so a failed parse is another source's
    // section: its shape is not known without the loader, which reports the error.
    struct moe_data_cfg c;
    struct moe_err perr;
    if (moe_data_cfg_parse(&c, cfg, &perr))
        return 0;
    int rc = moe_data_shape_cfg(&c, ret_task, ret_n_in, ret_n_out, ret_n_train, ret_n_test, err);
    moe_data_cfg_release(&c);
    return rc;
}

void moe_data_release(struct moe_data *d)
{
    if (!d)
        return;
    moe_dataset_release(&d->train);
    moe_dataset_release(&d->test);
    moe_dataset_release(&d->valid);
    moe_standardize_release(&d->stats);
    moe_corpus_release(&d->corpus);
    memset(d, 0, sizeof *d);
}

int moe_data_vocab_read(const struct moe_st_file *f, struct moe_vocab *ret, struct moe_err *err)
{
    const struct moe_st_entry *e = moe_safetensors_find(f, MOE_VOCAB_TENSOR);
    if (!e)
        return 0;
    if (e->dtype != MOE_U8 || e->ndim != 1)
        return moe_error(err, MOE_EFORMAT, "checkpoint '%s': tensor '%s' must be a 1-d U8 tensor", f->path,
                         MOE_VOCAB_TENSOR);
    char what[1100];
    snprintf(what, sizeof what, "%s (checkpoint tensor %s)", f->path, MOE_VOCAB_TENSOR);
    int rc = moe_vocab_parse(ret, (const char *)e->data, e->numel, what, err);
    return rc ? rc : 1;
}

int moe_data_check_text_checkpoint(const struct moe_data *d, const struct moe_st_file *f, struct moe_err *err)
{
    if (!d->has_text)
        return 0;
    // language ids only mean something to a model with language embeddings
    int lang_emb = 0;
    for (size_t i = 0; i < f->n && !lang_emb; i++) {
        size_t len = strlen(f->e[i].name);
        lang_emb = len >= 9 && strcmp(f->e[i].name + len - 9, ".lang_emb") == 0;
    }
    const char *langs = lang_emb ? moe_safetensors_meta(f, MOE_LANGUAGES_META) : NULL;
    if (langs) {
        cJSON *a = cJSON_Parse(langs);
        int same = cJSON_IsArray(a) && (size_t)cJSON_GetArraySize(a) == d->corpus.n_lang;
        for (size_t g = 0; same && g < d->corpus.n_lang; g++) {
            const cJSON *it = cJSON_GetArrayItem(a, (int)g);
            same = cJSON_IsString(it) && strcmp(it->valuestring, d->corpus.lang[g]) == 0;
        }
        cJSON_Delete(a);
        char shown[256];
        if (!same)
            return moe_error(err, MOE_ESHAPE, "'%s' was trained on the languages %s, but the data (data.text.path) has %zu language(s)",
                             f->path, moe_msg_str(langs, shown, sizeof shown), d->corpus.n_lang);
    }
    struct moe_vocab v;
    memset(&v, 0, sizeof v);
    int rc = moe_data_vocab_read(f, &v, err);
    if (rc <= 0)
        return rc;
    char *a = NULL, *b = NULL;
    size_t na = 0, nb = 0;
    rc = moe_vocab_serialize(&v, &a, &na, err);
    if (!rc)
        rc = moe_vocab_serialize(&d->corpus.vocab, &b, &nb, err);
    if (!rc && (na != nb || memcmp(a, b, na) != 0))
        rc = moe_error(err, MOE_ESHAPE, "'%s' has another vocabulary (%zu %s tokens) than the data (%zu); use its vocabulary with data.text.vocab",
                       f->path, v.n, moe_tok_kind_name(v.kind), d->corpus.vocab.n);
    free(a);
    free(b);
    moe_vocab_release(&v);
    return rc;
}
