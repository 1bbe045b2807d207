// corpus.h: the text corpora of the byte-level and word-level language models:
// one or more files (one language each) read, tokenised with a vocabulary
// (io/vocab.h) and cut into training and validation token streams; byte
// classes of the tokens for routing statistics; the choice of training and
// evaluation windows.
// Not a vocabulary (building, the file format and tokenisation are
// io/vocab.h) and not a batcher: the trainer turns window starts into batches.
// N = tokens of a split, V = vocabulary size, C = context length.
#ifndef MOE_CORPUS_H
#define MOE_CORPUS_H

#include <stddef.h>
#include <stdint.h>

#include "core/status.h"
#include "io/vocab.h"

// Byte classes for routing statistics: ASCII letters, ASCII digits, whitespace (space \t \n \v \f \r),
// ASCII punctuation (ispunct in the C locale), other (control bytes and every byte >= 0x80).
enum moe_byte_class { MOE_CLASS_LETTER = 0, MOE_CLASS_DIGIT = 1, MOE_CLASS_SPACE = 2, MOE_CLASS_PUNCT = 3,
                      MOE_CLASS_OTHER = 4 };
#define MOE_N_BYTE_CLASS 5
int moe_byte_class(uint8_t b);
const char *moe_byte_class_name(int c);   // "letter", "digit", "space", "punct", "other" (NULL otherwise)

// One split of a corpus as a token stream cut into segments (one per file / language).
struct moe_text_seg { size_t begin, end; int32_t lang; };  // tokens [begin, end) of tok; lang in [0, n_lang)
struct moe_text {
    size_t n_tok;
    int32_t *tok;        // (n_tok) token ids
    uint8_t *cls;        // (n_tok) byte class of each token's first source byte
    uint64_t *off;       // (n_tok + 1) cumulative source bytes: token i covers off[i+1] - off[i] bytes
    size_t n_seg;
    struct moe_text_seg *seg; // (n_seg) in order, contiguous, covering [0, n_tok)
};
void moe_text_release(struct moe_text *t);   // NULL and zeroed structs are fine
struct moe_corpus {
    struct moe_vocab vocab;
    struct moe_text train, valid;
    size_t n_lang;
    char **lang;         // (n_lang) language names: file names without their last extension, in sorted order
};
struct moe_corpus_spec {
    const char *path;              // a text file (one language), or a directory: every regular file whose
                                   // name does not start with '.', sorted by name (strcmp), one language each
    enum moe_tok_kind tokens;
    size_t vocab_size;             // words: the cap, including <unk> (>= 2)
    const struct moe_vocab *vocab; // use this vocabulary (copied) instead of building one (NULL = build from the
                                   // training parts of all files; bytes: always the 256 bytes). Its kind must
                                   // match `tokens`.
    double valid_fraction;         // in [0, 1): the last fraction of each file's bytes is validation; the cut is
                                   // moved back to a UTF-8 character boundary (never inside a multi-byte char)
    size_t max_bytes;              // 0 = whole files; else only the first max_bytes bytes of each file
};
// Errors (each names the path): missing path, not a file or directory, a directory with no text file,
// an empty file, a NUL byte (a binary file; name the byte offset), a read error, a file larger than
// 1 GiB, a vocabulary of the wrong kind.
// Details: every split has one segment per language (seg[l].lang = l), empty ones included (the
// validation split with valid_fraction 0 has n_lang empty segments); files are ordered by language
// name (the name less its last extension), and two files giving the same language are an error; the
// 1 GiB limit applies to the bytes used (after max_bytes), and max_bytes cuts exactly (it may split a
// UTF-8 character). Each file keeps at least one training byte (a cut moved back to 0 moves forward).
int moe_corpus_load(const struct moe_corpus_spec *spec, struct moe_corpus *ret, struct moe_err *err);
void moe_corpus_release(struct moe_corpus *c);
// Token frequencies of a split into freq (V), zeroed first (for balanced hash tables).
void moe_text_count(const struct moe_text *t, size_t V, uint64_t *freq);

// Windows of C + 1 consecutive tokens inside one segment (inputs i..i+C-1, next-token targets i+1..i+C).
// Valid starts: sum over segments of max(0, len - C) (len = end - begin).
uint64_t moe_text_n_starts(const struct moe_text *t, size_t C);
// Start token index of the i-th random training window of epoch `epoch`: uniform over the valid starts
// (a 64-bit draw from the counter-based RNG: seed, purpose MOE_RNG_WINDOW, stream = (uint32_t)epoch,
// index = i, mapped without bias worth mentioning, e.g. 64-bit multiply-shift with unsigned __int128);
// *ret_seg = its segment. Precondition: moe_text_n_starts(t, C) > 0.
// The draw: words 0 and 1 of Philox block i (moe_rng_block), low word first, times the number of
// starts, high 64 bits of the 128-bit product.
size_t moe_text_random_start(const struct moe_text *t, size_t C, uint64_t seed, uint64_t epoch, uint64_t i,
                             size_t *ret_seg);
// Fixed evaluation windows: in each segment, consecutive non-overlapping windows (start = begin + j*C while
// start + C + 1 <= end); if max > 0 and there are more than max, keep max of them evenly spaced
// (the k-th kept is number floor(k * total / max)). *ret_start: malloc'd array of start token indices.
// C >= 1. No window: *ret_start = NULL, *ret_n = 0.
int moe_text_fixed_windows(const struct moe_text *t, size_t C, size_t max, size_t **ret_start, size_t *ret_n,
                           struct moe_err *err);
// Segment holding token index i (binary search; i < n_tok).
size_t moe_text_seg_of(const struct moe_text *t, size_t i);

#endif
