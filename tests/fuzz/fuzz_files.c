// fuzz_files.c: libFuzzer harness for what every reader of a user file does
// with the kind of file it is given (lib/io/atomic.c moe_open_regular and the
// readers built on it): the config, checkpoint, IDX, table, vocabulary and
// text-corpus readers, each handed a regular file holding the fuzzed bytes, a
// FIFO nobody writes to, a directory, /dev/zero or /dev/null.
// Input: byte 0 picks the kind of file (mod 5), byte 1 the reader (mod 6); the
// rest is the regular file's content. Corpus: tests/fuzz/corpus/files/.
// Checks beyond the sanitizers: a FIFO, a device or (for every reader but the
// corpus, which takes a directory of text files) a directory is refused with a
// negative status and a one-line message naming it as what it is, at once (a
// FIFO used to block forever, /dev/zero to grow memory without end: libFuzzer's
// -timeout and -rss_limit_mb catch a regression); a regular file gives either
// a result or an error that keeps the message contract.
// fuzz-max-len: 2048
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz_util.h"
#include "io/atomic.h"
#include "io/config.h"
#include "io/corpus.h"
#include "io/dataset.h"
#include "io/safetensors.h"
#include "io/vocab.h"

enum kind { K_REGULAR, K_FIFO, K_DIR, K_ZERO, K_NULL, N_KINDS };
enum reader { R_CONFIG, R_CHECKPOINT, R_IDX, R_TABLE, R_VOCAB, R_CORPUS, N_READERS };

static char fifo[512], dir[512];

static void remove_specials(void)
{
    unlink(fifo);
    rmdir(dir);
}

// The FIFO and the (empty) directory, made once in the scratch folder and
// removed at exit.
static const char *special(enum kind k)
{
    if (!fifo[0]) {
        snprintf(fifo, sizeof fifo, "%s/fuzz-files-fifo-%ld", fuzz_tmpdir(), (long)getpid());
        snprintf(dir, sizeof dir, "%s/fuzz-files-dir-%ld", fuzz_tmpdir(), (long)getpid());
        if ((mkfifo(fifo, 0600) != 0 && errno != EEXIST) || (mkdir(dir, 0700) != 0 && errno != EEXIST)) {
            perror("fuzz_files: mkfifo/mkdir");
            abort();
        }
        atexit(remove_specials);
    }
    return k == K_FIFO ? fifo : k == K_DIR ? dir : k == K_ZERO ? "/dev/zero" : "/dev/null";
}

// A one-key schema: the config reader's file handling does not depend on the keys.
static const struct moe_cfg_key schema[] = {
    { "a", MOE_CFG_INT, "1", 0, 10, NULL, "a number" },
};

// Read path with reader r; 0 or the reader's status, err filled on failure.
static int read_with(enum reader r, const char *path, struct moe_err *err)
{
    int rc = 0;
    switch (r) {
    case R_CONFIG: {
        struct moe_config c;
        if (!(rc = moe_config_load(&c, schema, 1, path, NULL, 0, err)))
            moe_config_release(&c);
        break;
    }
    case R_CHECKPOINT: {
        struct moe_st_file f;
        if (!(rc = moe_safetensors_open(path, &f, err)))
            moe_safetensors_close(&f);
        break;
    }
    case R_IDX: {
        struct moe_idx m;
        if (!(rc = moe_idx_read(path, &m, err)))
            moe_idx_release(&m);
        break;
    }
    case R_TABLE: {
        static const char *const features[] = { "x" }, *const targets[] = { "y" };
        struct moe_table_spec s = { .path = path, .delimiter = ',', .features = features, .n_features = 1,
                                    .targets = targets, .n_targets = 1, .task = MOE_TASK_REGRESSION,
                                    .test_fraction = 0.5, .seed = 1 };
        struct moe_dataset tr, te;
        if (!(rc = moe_table_read(&s, &tr, &te, err))) {
            moe_dataset_release(&tr);
            moe_dataset_release(&te);
        }
        break;
    }
    case R_VOCAB: {
        struct moe_vocab v;
        if (!(rc = moe_vocab_read(&v, path, err)))
            moe_vocab_release(&v);
        break;
    }
    case R_CORPUS: {
        struct moe_corpus_spec s = { .path = path, .tokens = MOE_TOK_BYTES, .vocab_size = 256, .valid_fraction = 0.1 };
        struct moe_corpus c;
        if (!(rc = moe_corpus_load(&s, &c, err)))
            moe_corpus_release(&c);
        break;
    }
    default:
        abort();
    }
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    enum kind k = (enum kind)(data[0] % N_KINDS);
    enum reader r = (enum reader)(data[1] % N_READERS);
    const char *path = k == K_REGULAR ? fuzz_file(0, data + 2, size - 2) : special(k);
    struct moe_err err = { 0 };
    int rc = read_with(r, path, &err);
    if (rc)
        fuzz_check_err(rc, &err);
    if (k == K_REGULAR)
        return 0;
    // Not a regular file: refused (an empty directory is no corpus either), and named as what it is.
    FUZZ_CHECK(rc != 0, "reader %d accepted %s", (int)r, path);
    if (r == R_CORPUS)
        return 0; // "is not a file or directory", or for the directory "holds no text file"
    const char *what = k == K_FIFO ? "FIFO" : k == K_DIR ? "directory" : "device";
    FUZZ_CHECK(strstr(err.msg, what), "reader %d on %s: message does not say '%s': %s", (int)r, path, what,
               err.msg);
    return 0;
}
