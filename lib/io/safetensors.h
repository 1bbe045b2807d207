// safetensors.h: read and write checkpoints in the safetensors format
// (8-byte little-endian header length N, N bytes of JSON header, raw
// little-endian tensor data), so PyTorch/NumPy users can open our files.
// Reading validates every offset, shape and dtype before data is touched.
#ifndef MOE_SAFETENSORS_H
#define MOE_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "core/params.h"
#include "core/status.h"

// I8: int8-quantized weights (compress/quant.h; docs/checkpoint.md, Quantized tensors).
enum moe_dtype { MOE_F32 = 0, MOE_I32 = 1, MOE_I64 = 2, MOE_F64 = 3, MOE_U8 = 4, MOE_I8 = 5 };

// A tensor to write: not necessarily in a registry (e.g. normalisation
// statistics, hash tables, optimizer moments).
struct moe_st_ref {
    const char *name;
    enum moe_dtype dtype;
    int ndim;
    size_t shape[MOE_MAX_DIMS];
    const void *data;
    // Instead of data (NULL): a tensor produced while it is written.
    // fill(ctx, off, buf, n, err) puts its bytes off .. off + n - 1 into buf (off
    // and n multiples of the dtype's size), in order, once for every byte, also
    // after a write has failed (the writer stops writing, not filling); not at
    // all if the file cannot be opened. crc is then its CRC-32 (moe_crc32),
    // needed before the data because the header holds it.
    int (*fill)(void *ctx, size_t off, void *buf, size_t n, struct moe_err *err);
    void *ctx;
    uint32_t crc;
};

// CRC-32 (zlib's) of n bytes continued from crc (0 to start), and the CRC of
// two pieces from theirs (len_b: the second piece's bytes).
uint32_t moe_crc32(uint32_t crc, const void *data, size_t n);
uint32_t moe_crc32_combine(uint32_t crc_a, uint32_t crc_b, size_t len_b);

// One __metadata__ entry (safetensors allows only string values).
struct moe_st_meta {
    const char *key;
    const char *value;
};

// The metadata key of the checksum table: a JSON object (as a string) mapping
// every tensor's name to the CRC-32 of its bytes in the file (zlib.crc32), as
// 8 lowercase hex digits. Written into every file; verified by
// moe_safetensors_open when present (docs/checkpoint.md).
#define MOE_ST_CRC_KEY "tensor_crc32"

// Write tensors (in the order given) and metadata to path, atomically
// (temporary name, fsync, rename). Names must be unique; the metadata may not
// use MOE_ST_CRC_KEY, which the writer adds.
int moe_safetensors_write(const char *path, const struct moe_st_ref *refs, size_t n_refs,
                          const struct moe_st_meta *meta, size_t n_meta, struct moe_err *err);

struct moe_st_entry {
    char name[MOE_NAME_MAX];
    enum moe_dtype dtype;
    int ndim;
    size_t shape[MOE_MAX_DIMS];
    size_t numel;
    size_t begin, end;   // byte offsets into the data section
    const void *data;    // points into the file buffer (begin already applied)
};

struct moe_st_file {
    char path[1024];
    uint8_t *buf;        // the whole file
    size_t size;
    size_t n;            // tensors
    struct moe_st_entry *e;
    size_t n_meta;
    char **meta_key, **meta_val;
};

// Read and fully validate a file: header length within the file, JSON
// well formed, every entry has a known dtype, a shape of 0..4 dims whose byte
// size equals end-begin, offsets inside the data section, no overlaps, no
// duplicate names, metadata values are strings. When the metadata holds a checksum
// table, every tensor must be in it and match it. On failure nothing is
// returned and the message names the file and what is wrong.
int moe_safetensors_open(const char *path, struct moe_st_file *ret, struct moe_err *err);
// Fill err with "checkpoint '<path>': <message>" and return code: the form of
// every message about a file's contents (the readers of other dtypes use it too).
int moe_safetensors_fail(struct moe_err *err, int code, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
const struct moe_st_entry *moe_safetensors_find(const struct moe_st_file *f, const char *name);
const char *moe_safetensors_meta(const struct moe_st_file *f, const char *key);
void moe_safetensors_close(struct moe_st_file *f);

// Copy the file's tensors into a registry. Every registry tensor must be present
// with dtype F32 and exactly the registry's shape (a mismatch is MOE_ESHAPE,
// naming the tensor, both shapes and the file). Tensors in the file that the
// registry lacks are ignored only when allow_extra is set.
int moe_safetensors_load_params(const struct moe_st_file *f, struct moe_params *p, int allow_extra,
                                struct moe_err *err);

// A reader for registry tensors stored in a dtype other than F32 (e.g. int8
// with scales, compress/quant.h), for moe_safetensors_load_params_dec.
struct moe_st_decoder {
    enum moe_dtype dtype; // the stored dtype it reads, e.g. "(or I8, quantized)" in messages
    const char *what;     // how messages name it, e.g. "quantized"
    // 0 when e (dtype `dtype`, the registry's shape) and its companions in f
    // are well formed, else an error code with one line naming the tensor.
    int (*check)(const struct moe_st_file *f, const struct moe_st_entry *e, struct moe_err *err);
    // 1 when a tensor of f named name is a companion of a registry tensor
    // stored in `dtype` (not an extra tensor).
    int (*is_part)(const struct moe_st_file *f, const struct moe_params *p, const char *name);
    // Decode elements first .. first + n - 1 of e (checked) into w.
    int (*load)(const struct moe_st_file *f, const struct moe_st_entry *e, float *w, size_t first, size_t n,
                struct moe_err *err);
};
// moe_safetensors_load_params, where a registry tensor may also be stored as
// dec reads it (dec NULL: the very same function).
int moe_safetensors_load_params_dec(const struct moe_st_file *f, struct moe_params *p, int allow_extra,
                                    const struct moe_st_decoder *dec, struct moe_err *err);

// Copy one tensor of the file into ref->data (the caller's writable buffer):
// it must exist with exactly ref's dtype and shape.
int moe_safetensors_load_ref(const struct moe_st_file *f, const struct moe_st_ref *ref, struct moe_err *err);

// Convenience: write every registry tensor (F32, registry order) plus extra refs and metadata.
int moe_safetensors_write_params(const char *path, const struct moe_params *p,
                                 const struct moe_st_ref *extra, size_t n_extra,
                                 const struct moe_st_meta *meta, size_t n_meta, struct moe_err *err);

#endif
