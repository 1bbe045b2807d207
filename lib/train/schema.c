// schema.c: the run configuration's schema, every key with its default, range
// and meaning: the data.* keys here, and the tables of the files that read the
// others (model/model_config.c: model.* and loss.*; moe/layer_config.c: moe.*;
// optim.c: optim.*; trainer.c: train.*; distill.c: distill.*; tune.c: lora.*)
// joined in the order of docs/config.md. The schema
// is the single source of docs/config.md (`moe help config` prints it) and of
// validation; never parse JSON elsewhere.
#include "train/train.h"

#include <assert.h>
#include <string.h>

#define FMNIST "/usr/share/datasets/fashion-mnist/"
#define BIG 1e9

static const struct moe_cfg_key data_keys[] = {
    // data
    { "data.source", MOE_CFG_STR, "\"synthetic\"", 1, 0, "synthetic|idx|table|text", "where examples come from: built-in generator, IDX files, a CSV/TSV table, or plain text (model transformer)" },
    { "data.standardize", MOE_CFG_BOOL, "false", 1, 0, NULL, "standardise features with the training split's mean and std (stored in the checkpoint as data.mean, data.std)" },
    { "data.synthetic.kind", MOE_CFG_STR, "\"regions\"", 1, 0, "regions|classes", "regions: each input region has its own linear map (regression); classes: each region is a class" },
    { "data.synthetic.n_train", MOE_CFG_INT, "1000", 1, BIG, NULL, "training rows" },
    { "data.synthetic.n_test", MOE_CFG_INT, "500", 0, BIG, NULL, "test rows" },
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


#define N_DATA (sizeof data_keys / sizeof data_keys[0])
#define N_MAX 256 // room for every table; asserted

static struct moe_cfg_key schema[N_MAX];
static size_t schema_len;

// Joined on first use (the tables of other files are not constant expressions here).
static void join(void)
{
    if (schema_len)
        return;
    struct { const struct moe_cfg_key *keys; size_t n; } parts[] = {
        { data_keys, N_DATA },
        { moe_model_keys, moe_model_keys_len },
        { moe_layer_keys, moe_layer_keys_len },
        { moe_optim_keys, moe_optim_keys_len },
        { moe_train_keys, moe_train_keys_len },
        { moe_distill_keys, moe_distill_keys_len },
        { moe_lora_keys, moe_lora_keys_len },
    };
    size_t n = 0;
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
        assert(n + parts[i].n <= N_MAX);
        memcpy(schema + n, parts[i].keys, parts[i].n * sizeof *schema);
        n += parts[i].n;
    }
    schema_len = n;
}

const struct moe_cfg_key *moe_run_schema(void)
{
    join();
    return schema;
}

size_t moe_run_schema_len(void)
{
    join();
    return schema_len;
}
