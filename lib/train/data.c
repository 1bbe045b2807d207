// data.c: build the train and test splits named by a config's data.* keys.
// Not a reader: the formats live in lib/io; this only maps keys to specs.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "io/safetensors.h"
#include "train/train.h"

#define MAX_LIST 4096

static int load_table(struct moe_data *d, const struct moe_config *cfg, struct moe_err *err)
{
    struct moe_table_spec s;
    memset(&s, 0, sizeof s);
    s.path = moe_cfg_str(cfg, "data.table.path");
    if (!s.path)
        return moe_error(err, MOE_ECONFIG, "key 'data.table.path' must be set when data.source is 'table'");
    const char *delim = moe_cfg_str(cfg, "data.table.delimiter");
    s.delimiter = strcmp(delim, "tab") == 0 ? '\t' : strcmp(delim, "comma") == 0 ? ',' : 0;
    s.task = strcmp(moe_cfg_str(cfg, "data.table.task"), "regression") == 0 ? MOE_TASK_REGRESSION
                                                                            : MOE_TASK_CLASSIFICATION;
    const char *lists[] = { "data.table.features", "data.table.targets", "data.table.classes", "data.table.where" };
    const char **vals[4] = { 0 };
    size_t lens[4];
    int rc = 0;
    for (int l = 0; l < 4; l++) {
        lens[l] = moe_cfg_len(cfg, lists[l]);
        vals[l] = calloc(lens[l] + 1, sizeof(char *));
        if (!vals[l]) {
            rc = moe_error(err, MOE_ENOMEM, "out of memory");
            goto out;
        }
        for (size_t i = 0; i < lens[l]; i++)
            vals[l][i] = moe_cfg_str_at(cfg, lists[l], i);
    }
    if (lens[0] == 0) {
        rc = moe_error(err, MOE_ECONFIG, "key 'data.table.features' must name at least one column");
        goto out;
    }
    if (lens[1] == 0 || (s.task == MOE_TASK_CLASSIFICATION && lens[1] != 1)) {
        rc = moe_error(err, MOE_ECONFIG, "key 'data.table.targets' must name %s column",
                       s.task == MOE_TASK_CLASSIFICATION ? "exactly one" : "at least one");
        goto out;
    }
    s.features = vals[0], s.n_features = lens[0];
    s.targets = vals[1], s.n_targets = lens[1];
    s.classes = lens[2] ? vals[2] : NULL, s.n_classes = lens[2];
    s.where = vals[3], s.n_where = lens[3];
    for (size_t i = 0; i < s.n_where; i++) {
        struct moe_err ferr;
        if (moe_table_filter_check(s.where[i], &ferr)) {
            rc = moe_error(err, MOE_ECONFIG, "key 'data.table.where[%zu]': %s", i, ferr.msg);
            goto out;
        }
    }
    s.split_column = moe_cfg_str(cfg, "data.table.split_column");
    if (s.split_column) {
        const char *ranges[] = { "data.table.train_range", "data.table.test_range" };
        double *dst[] = { s.train_range, s.test_range };
        for (int r = 0; r < 2; r++) {
            if (moe_cfg_len(cfg, ranges[r]) != 2) {
                rc = moe_error(err, MOE_ECONFIG, "key '%s' must be [lo, hi] when data.table.split_column is set",
                               ranges[r]);
                goto out;
            }
            dst[r][0] = moe_cfg_num_at(cfg, ranges[r], 0);
            dst[r][1] = moe_cfg_num_at(cfg, ranges[r], 1);
            if (dst[r][0] > dst[r][1]) {
                rc = moe_error(err, MOE_ECONFIG, "key '%s' is [%g, %g]: expected [lo, hi] with lo <= hi", ranges[r],
                               dst[r][0], dst[r][1]);
                goto out;
            }
        }
    }
    s.test_fraction = moe_cfg_num(cfg, "data.table.test_fraction");
    s.seed = (uint64_t)moe_cfg_int(cfg, "train.seed");
    rc = moe_table_read(&s, &d->train, &d->test, err);
out:
    for (int l = 0; l < 4; l++)
        free(vals[l]);
    return rc;
}

// Text: the corpus, then the two splits as windows of model.n_ctx + 1 tokens.
static int load_text(struct moe_data *d, const struct moe_config *cfg, const struct moe_vocab *vocab,
                     struct moe_err *err)
{
    struct moe_corpus_spec s = {
        .path = moe_cfg_str(cfg, "data.text.path"),
        .tokens = strcmp(moe_cfg_str(cfg, "data.text.tokens"), "words") == 0 ? MOE_TOK_WORDS : MOE_TOK_BYTES,
        .vocab_size = (size_t)moe_cfg_int(cfg, "data.text.vocab_size"),
        .vocab = vocab,
        .valid_fraction = moe_cfg_num(cfg, "data.text.valid_fraction"),
        .max_bytes = (size_t)moe_cfg_int(cfg, "data.text.max_bytes"),
    };
    if (!s.path)
        return moe_error(err, MOE_ECONFIG, "key 'data.text.path' must be set when data.source is 'text'");
    const char *vpath = moe_cfg_str(cfg, "data.text.vocab");
    struct moe_vocab file_vocab;
    memset(&file_vocab, 0, sizeof file_vocab);
    int rc;
    if (!vocab && vpath) {
        if ((rc = moe_vocab_read(&file_vocab, vpath, err))) {
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
    size_t C = (size_t)moe_cfg_int(cfg, "model.n_ctx");
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
    const char *keys[] = { "data.text.train_eval_windows", "data.text.valid_eval_windows" };
    for (int i = 0; i < 2; i++) {
        struct moe_dataset *ds = sp[i];
        ds->task = MOE_TASK_LM;
        ds->text = tx[i];
        ds->n_ctx = C;
        ds->n_in = d->corpus.n_lang;
        ds->n_out = d->corpus.vocab.n;
        ds->n_group = d->corpus.n_lang;
        if ((rc = moe_text_fixed_windows(tx[i], C, (size_t)moe_cfg_int(cfg, keys[i]), &ds->win, &ds->n_win, err)))
            return rc;
        ds->n = ds->n_win;
    }
    uint64_t per_epoch = (uint64_t)moe_cfg_int(cfg, "data.text.windows_per_epoch");
    d->train.n = per_epoch ? (size_t)per_epoch : (d->corpus.train.n_tok / C ? d->corpus.train.n_tok / C : 1);
    return 0;
}

// IDX: both splits, each filtered to data.idx.classes before its limit applies.
static int load_idx(struct moe_data *d, const struct moe_config *cfg, struct moe_err *err)
{
    size_t n_classes = moe_cfg_len(cfg, "data.idx.classes");
    int32_t classes[256]; // the schema's range makes each a byte; duplicates may repeat one
    if (n_classes > sizeof classes / sizeof *classes)
        return moe_error(err, MOE_ECONFIG, "key 'data.idx.classes' has %zu entries, at most %zu",
                         n_classes, sizeof classes / sizeof *classes);
    for (size_t i = 0; i < n_classes; i++) {
        double c = moe_cfg_num_at(cfg, "data.idx.classes", i);
        if (c != (double)(int32_t)c)
            return moe_error(err, MOE_ECONFIG, "key 'data.idx.classes[%zu]' must be an integer, got %g", i, c);
        classes[i] = (int32_t)c;
    }
    const char *split[][3] = { { "data.idx.train_images", "data.idx.train_labels", "data.idx.limit_train" },
                               { "data.idx.test_images", "data.idx.test_labels", "data.idx.limit_test" } };
    struct moe_dataset *ds[] = { &d->train, &d->test };
    for (int s = 0; s < 2; s++) {
        int rc = moe_dataset_from_idx_ex(moe_cfg_str(cfg, split[s][0]), moe_cfg_str(cfg, split[s][1]),
                                         (size_t)moe_cfg_int(cfg, split[s][2]), classes, n_classes, ds[s], err);
        if (rc == MOE_EINVAL && n_classes) { // a class the labels cannot hold
            char msg[sizeof err->msg];
            snprintf(msg, sizeof msg, "%s", err ? err->msg : "");
            return moe_error(err, MOE_ECONFIG, "key 'data.idx.classes': %s", msg);
        }
        if (rc)
            return rc;
        if (ds[s]->n == 0) // a data error, as for a table whose filters keep no row
            return moe_error(err, MOE_EFORMAT, "idx '%s': no row has a label in data.idx.classes",
                             moe_cfg_str(cfg, split[s][1]));
    }
    return 0;
}

int moe_data_load(struct moe_data *ret, const struct moe_config *cfg, struct moe_err *err)
{
    return moe_data_load_ex(ret, cfg, NULL, err);
}

int moe_data_load_ex(struct moe_data *ret, const struct moe_config *cfg, const struct moe_vocab *vocab,
                     struct moe_err *err)
{
    memset(ret, 0, sizeof *ret);
    const char *src = moe_cfg_str(cfg, "data.source");
    int rc;
    if (strcmp(src, "text") == 0) {
        rc = load_text(ret, cfg, vocab, err);
    } else if (strcmp(src, "synthetic") == 0) {
        struct moe_synth_spec s = {
            .kind = moe_cfg_str(cfg, "data.synthetic.kind"),
            .n_train = (size_t)moe_cfg_int(cfg, "data.synthetic.n_train"),
            .n_test = (size_t)moe_cfg_int(cfg, "data.synthetic.n_test"),
            .n_in = (size_t)moe_cfg_int(cfg, "data.synthetic.n_in"),
            // kind classes has one class per region; n_out applies to regression only
            .n_out = strcmp(moe_cfg_str(cfg, "data.synthetic.kind"), "classes") == 0
                         ? (size_t)moe_cfg_int(cfg, "data.synthetic.n_regions")
                         : (size_t)moe_cfg_int(cfg, "data.synthetic.n_out"),
            .n_regions = (size_t)moe_cfg_int(cfg, "data.synthetic.n_regions"),
            .noise = moe_cfg_num(cfg, "data.synthetic.noise"),
            .spread = moe_cfg_num(cfg, "data.synthetic.spread"),
            .seed = (uint64_t)moe_cfg_int(cfg, "train.seed"),
        };
        rc = moe_synth_make(&s, &ret->train, &ret->test, err);
    } else if (strcmp(src, "idx") == 0) {
        rc = load_idx(ret, cfg, err);
        if (!rc && ret->test.n_in != ret->train.n_in)
            rc = moe_error(err, MOE_EFORMAT, "idx '%s' has %zu pixels per image but '%s' has %zu",
                           moe_cfg_str(cfg, "data.idx.train_images"), ret->train.n_in,
                           moe_cfg_str(cfg, "data.idx.test_images"), ret->test.n_in);
        if (!rc && ret->test.n_out != ret->train.n_out)
            rc = moe_error(err, MOE_EFORMAT, "idx '%s' has %zu classes but '%s' has %zu",
                           moe_cfg_str(cfg, "data.idx.train_labels"), ret->train.n_out,
                           moe_cfg_str(cfg, "data.idx.test_labels"), ret->test.n_out);
    } else {
        rc = load_table(ret, cfg, err);
    }
    if (!rc && moe_cfg_bool(cfg, "data.standardize") && !ret->has_text) {
        rc = moe_standardize_fit(&ret->stats, &ret->train, err);
        if (!rc) {
            moe_standardize_apply(&ret->stats, &ret->train);
            moe_standardize_apply(&ret->stats, &ret->test);
            ret->standardized = 1;
        }
    }
    if (rc)
        moe_data_release(ret);
    return rc;
}

void moe_data_release(struct moe_data *d)
{
    if (!d)
        return;
    moe_dataset_release(&d->train);
    moe_dataset_release(&d->test);
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
