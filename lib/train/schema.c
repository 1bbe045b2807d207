// schema.c: every key of a run configuration, its default, range and meaning.
// This table is the single source of docs/config.md (`moe help config` prints it)
// and of validation; add keys here, never parse JSON elsewhere.
#include "train/train.h"

#define FMNIST "/usr/share/datasets/fashion-mnist/"
#define BIG 1e9

const struct moe_cfg_key moe_run_schema[] = {
    // data
    { "data.source", MOE_CFG_STR, "\"synthetic\"", 1, 0, "synthetic|idx|table", "where examples come from: built-in generator, IDX files, or a CSV/TSV table" },
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
    { "data.idx.limit_train", MOE_CFG_INT, "0", 0, BIG, NULL, "use only the first N training rows (0 = all)" },
    { "data.idx.limit_test", MOE_CFG_INT, "0", 0, BIG, NULL, "use only the first N test rows (0 = all)" },
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
    // model
    { "model.type", MOE_CFG_STR, "\"mixture\"", 1, 0, "mixture|mlp", "mixture: 1991 dense mixture of experts; mlp: back-propagation baseline" },
    { "model.n_expert", MOE_CFG_INT, "4", 1, 1024, NULL, "experts in a mixture (E)" },
    { "model.expert", MOE_CFG_STR, "\"linear\"", 1, 0, "linear|mlp", "expert network: linear map, or one hidden layer" },
    { "model.n_expert_hidden", MOE_CFG_INT, "8", 1, 1 << 20, NULL, "hidden units per expert when model.expert = mlp" },
    { "model.n_hidden", MOE_CFG_INT, "8", 1, 1 << 20, NULL, "hidden units of the mlp baseline" },
    { "model.activation", MOE_CFG_STR, "\"tanh\"", 1, 0, "tanh|relu|sigmoid", "hidden-unit nonlinearity" },
    { "model.predict", MOE_CFG_STR, "\"mean\"", 1, 0, "mean|gate-max", "mixture output: gate-weighted mean of experts, or the expert with the largest gate" },
    { "model.init_scale", MOE_CFG_NUM, "1", 0, 100, NULL, "weights start U(-s, s), s = init_scale / sqrt(fan_in); biases and the gate start at 0" },
    // loss
    { "loss.type", MOE_CFG_STR, "\"nll\"", 1, 0, "cooperative|competitive|nll|nll-cat|mse|ce", "objective: the 1991 mixture losses (mixture) or mse / ce (mlp)" },
    { "loss.baseline", MOE_CFG_STR, "\"mse\"", 1, 0, "mse|ce", "objective of the mlp system in compare-loss" },
    // optimiser
    { "optim.type", MOE_CFG_STR, "\"adamw\"", 1, 0, "gd|sgd|adamw", "gd: full-batch gradient descent; sgd: mini-batch with momentum; adamw" },
    { "optim.lr", MOE_CFG_NUM, "0.01", 0, 1e3, NULL, "step size" },
    { "optim.momentum", MOE_CFG_NUM, "0.9", 0, 0.999999, NULL, "sgd momentum (heavy ball)" },
    { "optim.beta1", MOE_CFG_NUM, "0.9", 0, 0.999999, NULL, "adamw first-moment decay" },
    { "optim.beta2", MOE_CFG_NUM, "0.999", 0, 0.999999, NULL, "adamw second-moment decay" },
    { "optim.eps", MOE_CFG_NUM, "1e-8", 1e-30, 1, NULL, "adamw denominator floor" },
    { "optim.weight_decay", MOE_CFG_NUM, "0", 0, 10, NULL, "decoupled weight decay (sgd and adamw)" },
    { "optim.batch_size", MOE_CFG_INT, "64", 0, BIG, NULL, "rows per step for sgd/adamw (0 = full batch; gd is always full batch)" },
    { "optim.clip", MOE_CFG_NUM, "0", 0, 1e9, NULL, "clip the global gradient norm to this (0 = off)" },
    // training
    { "train.seed", MOE_CFG_INT, "1", 0, 4294967295.0, NULL, "seed of every random draw (init, data, order); --seed overrides" },
    { "train.epochs", MOE_CFG_INT, "20", 1, BIG, NULL, "maximum passes over the training split" },
    { "train.shuffle", MOE_CFG_BOOL, "true", 1, 0, NULL, "reshuffle mini-batches every epoch" },
    { "train.eval_every", MOE_CFG_INT, "1", 1, BIG, NULL, "write metrics every N epochs (and at epoch 0, the last epoch, and the criterion epoch)" },
    { "train.criterion", MOE_CFG_STR, "\"none\"", 1, 0, "none|loss|mse|accuracy", "stop when the training split reaches criterion_value on this metric" },
    { "train.criterion_value", MOE_CFG_NUM, "0", -1e30, 1e30, NULL, "loss/mse: stop at or below; accuracy: stop at or above" },
    { "train.active_threshold", MOE_CFG_NUM, "0.05", 0, 1, NULL, "an expert is active when its mean mixing proportion exceeds this" },
    { "train.max_batch_eval", MOE_CFG_INT, "4096", 1, 1 << 24, NULL, "rows per forward pass during evaluation" },
};

const size_t moe_run_schema_len = sizeof moe_run_schema / sizeof moe_run_schema[0];
