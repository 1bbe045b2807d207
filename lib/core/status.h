// status.h: status codes and per-call error messages for the moe library.
// Not a logger: library code never prints or exits; it returns a negative
// MOE_E* code and, when the caller passed a struct moe_err, a one-line message.
// Only cmd/ turns these into text on stderr and an exit code.
#ifndef MOE_STATUS_H
#define MOE_STATUS_H

#include <stddef.h>

#ifdef __cplusplus // the CUDA backend's .cu files call these
extern "C" {
#endif

enum moe_status {
    MOE_OK = 0,
    MOE_EINVAL = -1,   // bad argument, option or config value (a usage error: exit 2)
    MOE_ECONFIG = -2,  // config file or override is malformed (exit 2)
    MOE_ESHAPE = -3,   // tensors or data whose shapes disagree with the config (exit 2)
    MOE_EIO = -4,      // a file could not be opened, read or written (exit 1)
    MOE_EFORMAT = -5,  // a data or checkpoint file is corrupt or truncated (exit 1)
    MOE_ENOMEM = -6,   // allocation failed (exit 1)
    MOE_ENUMERIC = -7, // NaN or Inf in a loss or gradient (exit 1)
    MOE_EINTR = -8,    // stopped on request (a signal) after saving a checkpoint (exit 128 + signal)
    MOE_EDIST = -9,    // a collective over MPI processes failed, or another process did (exit 1)
};

#define MOE_ERR_MSG_MAX 512

// Optional out-parameter for a message. Functions write it only on failure.
struct moe_err {
    int code;
    char msg[MOE_ERR_MSG_MAX];
};

// Fill err (when non-NULL) with code and a printf-style message; return code.
// Use as: return moe_error(err, MOE_EIO, "cannot open '%s': %s", path, strerror(errno));
int moe_error(struct moe_err *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

// Prefix an existing message with more context ("file 'x': " + old message).
// Text from a possibly hostile file (a name, a metadata value) copied into buf
// for a message: control bytes become '?' (messages stay on one line) and long
// text is cut with "...". Returns buf.
const char *moe_msg_str(const char *s, char *buf, size_t len);
int moe_error_prefix(struct moe_err *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

// Exit code the CLI should use for a status: 2 for usage/config/shape, 1 otherwise.
int moe_status_exit_code(int code);

const char *moe_status_name(int code);

#ifdef __cplusplus
}
#endif

#endif
