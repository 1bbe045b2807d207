// atomic.c: temporary-name-then-rename file output (see atomic.h).
#include "io/atomic.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int moe_atomic_open(struct moe_atomic_file *a, const char *path, struct moe_err *err)
{
    memset(a, 0, sizeof *a);
    if (strlen(path) >= sizeof a->path)
        return moe_error(err, MOE_EINVAL, "path too long: '%s'", path);
    snprintf(a->path, sizeof a->path, "%s", path);
    snprintf(a->tmp, sizeof a->tmp, "%s.tmp.%ld", path, (long)getpid());
    a->f = fopen(a->tmp, "wb");
    if (!a->f)
        return moe_error(err, MOE_EIO, "cannot write '%s': %s", a->path, strerror(errno));
    return 0;
}

int moe_atomic_commit(struct moe_atomic_file *a, struct moe_err *err)
{
    if (!a->f)
        return moe_error(err, MOE_EIO, "cannot commit '%s': file not open", a->path);
    int bad = fflush(a->f) != 0 || ferror(a->f);
    if (!bad)
        bad = fsync(fileno(a->f)) != 0;
    int saved = errno;
    bad |= fclose(a->f) != 0;
    a->f = NULL;
    if (bad) {
        remove(a->tmp);
        return moe_error(err, MOE_EIO, "cannot write '%s': %s", a->path, strerror(saved ? saved : EIO));
    }
    if (rename(a->tmp, a->path) != 0) {
        saved = errno;
        remove(a->tmp);
        return moe_error(err, MOE_EIO, "cannot rename '%s' to '%s': %s", a->tmp, a->path, strerror(saved));
    }
    return 0;
}

void moe_atomic_abort(struct moe_atomic_file *a)
{
    if (a->f) {
        fclose(a->f);
        a->f = NULL;
        remove(a->tmp);
    }
}

int moe_atomic_write(const char *path, const void *buf, size_t len, struct moe_err *err)
{
    struct moe_atomic_file a;
    int rc = moe_atomic_open(&a, path, err);
    if (rc)
        return rc;
    if (len && fwrite(buf, 1, len, a.f) != len) {
        moe_atomic_abort(&a);
        return moe_error(err, MOE_EIO, "cannot write '%s': %s", path, strerror(errno));
    }
    return moe_atomic_commit(&a, err);
}

int moe_read_file(const char *path, char **ret_buf, size_t *ret_len, struct moe_err *err)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return moe_error(err, MOE_EIO, "cannot open '%s': %s", path, strerror(errno));
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap + 1);
    if (!buf) {
        fclose(f);
        return moe_error(err, MOE_ENOMEM, "out of memory reading '%s'", path);
    }
    for (;;) {
        if (len == cap) {
            char *nb = cap > ((size_t)1 << 40) ? NULL : realloc(buf, 2 * cap + 1);
            if (!nb) {
                free(buf);
                fclose(f);
                return moe_error(err, MOE_ENOMEM, "out of memory reading '%s'", path);
            }
            buf = nb;
            cap *= 2;
        }
        size_t got = fread(buf + len, 1, cap - len, f);
        len += got;
        if (got == 0)
            break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        return moe_error(err, MOE_EIO, "cannot read '%s'", path);
    }
    buf[len] = '\0';
    *ret_buf = buf;
    if (ret_len)
        *ret_len = len;
    return 0;
}
