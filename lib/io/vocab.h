// vocab.h: the vocabularies of the byte-level and word-level language models
// (bytes, or the most frequent words of the training text), their file format,
// and tokenisation.
// Not a subword tokeniser (no BPE, no normalisation, no case folding) and not a
// corpus reader: reading text files, training / validation splits, byte
// classes and windows are io/corpus.h.
// V = vocabulary size.
#ifndef MOE_VOCAB_H
#define MOE_VOCAB_H

#include <stddef.h>
#include <stdint.h>

#include "core/status.h"

enum moe_tok_kind { MOE_TOK_BYTES = 0, MOE_TOK_WORDS = 1 };
#define MOE_VOCAB_UNK 0   // word vocabularies: id 0 is the unknown word

// "bytes" or "words" (NULL for any other value).
const char *moe_tok_kind_name(enum moe_tok_kind k);

struct moe_vocab {
    enum moe_tok_kind kind;
    size_t n;            // V: 256 for bytes (id = byte value); words: 1 (<unk>) + words
    char **tok;          // (n) token bytes (tok[0] of a word vocabulary is "<unk>", a placeholder);
                         //     each is also NUL-terminated (a bytes vocabulary's tok[0] is "\0", length 1)
    size_t *len;         // (n) their lengths
    // private: the token bytes (one block), and the lookup index: open addressing
    // over ids 1..n-1 (n_hash slots, a power of two, 0 = empty, else id), plus the
    // id of every one-byte token.
    char *store_;
    int32_t *hash_;
    size_t n_hash_;
    int32_t byte_id_[256];
};
int moe_vocab_bytes(struct moe_vocab *ret, struct moe_err *err);
// Word vocabulary from training texts: <unk>, then the (cap - 1) most frequent words,
// by count descending, ties by bytes (memcmp order, a prefix first). cap >= 2.
// A word here is every token of the word tokeniser below (runs of word bytes,
// and single punctuation, space and control bytes alike).
int moe_vocab_build_words(struct moe_vocab *ret, const uint8_t *const *texts, const size_t *lens, size_t n_texts,
                          size_t cap, struct moe_err *err);
// A deep copy.
int moe_vocab_copy(struct moe_vocab *ret, const struct moe_vocab *v, struct moe_err *err);
// The vocabulary file format (text): first line "moe-vocab 1 bytes 256" or "moe-vocab 1 words N",
// then for words exactly N lines, line i+2 holding token id i, escaped: "\\\\" for backslash, "\\n", "\\t",
// "\\r", and "\\xHH" (two lowercase hex digits) for every other byte < 0x20 and 0x7f; bytes >= 0x80 are
// written raw (UTF-8 words stay readable). The <unk> line is written "<unk>" and its text is ignored on read.
// A bytes vocabulary has no token lines. Every line ends in "\n". Parse errors name `what` and the line:
// bad header, wrong count, bad escape, empty token, duplicate token, trailing data, NUL byte.
// The parser also accepts "\\xHH" for any byte (the writer uses the short forms), and rejects a raw
// control byte on a token line (a CRLF file) and a last line without its "\n".
int moe_vocab_serialize(const struct moe_vocab *v, char **ret_buf, size_t *ret_len, struct moe_err *err);
int moe_vocab_parse(struct moe_vocab *ret, const char *buf, size_t len, const char *what, struct moe_err *err);
int moe_vocab_read(struct moe_vocab *ret, const char *path, struct moe_err *err);
int moe_vocab_write(const struct moe_vocab *v, const char *path, struct moe_err *err); // atomic, io/atomic.h
void moe_vocab_release(struct moe_vocab *v);  // NULL and zeroed structs are fine
// Token id of a word (MOE_VOCAB_UNK if absent); for a bytes vocabulary, s[0] (len must be 1; -1 otherwise).
int32_t moe_vocab_lookup(const struct moe_vocab *v, const uint8_t *s, size_t len);

// Words: a maximal run of word bytes (ASCII letters, ASCII digits, and every byte >= 0x80, so UTF-8
// letters of any script stay inside words); every other byte (space, punctuation, newline, control) is a
// token of its own. Case is kept. Bytes: every byte is a token.
// Tokenise text (len bytes) with v: ids (capacity len) get the ids, off (capacity len; may be NULL) each
// token's byte offset within text; returns the number of tokens.
size_t moe_tokenize(const struct moe_vocab *v, const uint8_t *text, size_t len, int32_t *ids, uint64_t *off);
// 1 for a word byte (above), else 0.
int moe_word_byte(uint8_t b);

// For the text readers (this file and io/corpus.c), whose messages quote file
// names and file contents: when rc != 0, every control byte of err's message
// becomes '?' (the CLI prints a message as one line). Returns rc.
int moe_err_one_line(int rc, struct moe_err *err);

#endif
