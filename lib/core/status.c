// status.c: error message helpers (see status.h).
#include "core/status.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int moe_error(struct moe_err *err, int code, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
        err->code = code;
    }
    return code;
}

int moe_error_prefix(struct moe_err *err, const char *fmt, ...)
{
    if (!err)
        return 0;
    char prefix[MOE_ERR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    size_t cap = sizeof err->msg - 1;
    size_t pl = strlen(prefix), ol = strlen(err->msg);
    if (pl > cap)
        pl = cap;
    if (ol > cap - pl)
        ol = cap - pl;
    memmove(err->msg + pl, err->msg, ol);
    memcpy(err->msg, prefix, pl);
    err->msg[pl + ol] = '\0';
    return err->code;
}

int moe_status_exit_code(int code)
{
    switch (code) {
    case MOE_OK:
        return 0;
    case MOE_EINVAL:
    case MOE_ECONFIG:
    case MOE_ESHAPE:
        return 2;
    default:
        return 1;
    }
}

const char *moe_status_name(int code)
{
    switch (code) {
    case MOE_OK: return "ok";
    case MOE_EINVAL: return "invalid argument";
    case MOE_ECONFIG: return "config error";
    case MOE_ESHAPE: return "shape mismatch";
    case MOE_EIO: return "i/o error";
    case MOE_EFORMAT: return "malformed file";
    case MOE_ENOMEM: return "out of memory";
    case MOE_ENUMERIC: return "numerical fault";
    case MOE_EINTR: return "interrupted";
    case MOE_EDIST: return "distributed run failed";
    }
    return "unknown error";
}

const char *moe_msg_str(const char *s, char *buf, size_t len)
{
    size_t o = 0, max = len - 1;
    int cut = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (o + 4 > max) {
            cut = 1;
            break;
        }
        buf[o++] = (*p < 0x20 || *p == 0x7f) ? '?' : (char)*p;
    }
    if (cut)
        o += (size_t)snprintf(buf + o, len - o, "...");
    buf[o] = '\0';
    return buf;
}
