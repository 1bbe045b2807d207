// atomic.c: temporary-name-then-rename file output (see atomic.h).
#include "io/atomic.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
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

int moe_open_regular(const char *path, uint64_t *ret_size, char *why, size_t why_len)
{
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        snprintf(why, why_len, "%s", strerror(errno));
        return -2;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        snprintf(why, why_len, "%s", strerror(errno));
        close(fd);
        return -1;
    }
    if (!S_ISREG(st.st_mode)) {
        const char *kind = S_ISDIR(st.st_mode)    ? "a directory"
                           : S_ISFIFO(st.st_mode) ? "a FIFO"
                           : S_ISCHR(st.st_mode)  ? "a character device"
                           : S_ISBLK(st.st_mode)  ? "a block device"
                           : S_ISSOCK(st.st_mode) ? "a socket"
                                                  : "of an unknown kind";
        snprintf(why, why_len, "it is %s, not a regular file", kind);
        close(fd);
        return -1;
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl == -1 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) == -1) {
        snprintf(why, why_len, "%s", strerror(errno));
        close(fd);
        return -1;
    }
    *ret_size = (uint64_t)st.st_size;
    return fd;
}

int moe_read_file_why(const char *path, char **ret_buf, size_t *ret_len, char *why, size_t why_len, int *ret_at_open)
{
    uint64_t size;
    int fd = moe_open_regular(path, &size, why, why_len);
    if (ret_at_open)
        *ret_at_open = fd == -2;
    if (fd < 0)
        return MOE_EIO;
    if (size > (uint64_t)SIZE_MAX - 1) {
        close(fd);
        snprintf(why, why_len, "out of memory for %llu bytes", (unsigned long long)size);
        return MOE_ENOMEM;
    }
    // Read what fstat said the file holds, no more: a file that grows while it is
    // read (or lies about its size) cannot make us read without end.
    char *buf = malloc((size_t)size + 1);
    if (!buf) {
        close(fd);
        snprintf(why, why_len, "out of memory for %llu bytes", (unsigned long long)size);
        return MOE_ENOMEM;
    }
    size_t len = 0;
    while (len < (size_t)size) {
        ssize_t got = read(fd, buf + len, (size_t)size - len);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0) {
            snprintf(why, why_len, "%s", strerror(errno));
            free(buf);
            close(fd);
            return MOE_EIO;
        }
        if (got == 0)
            break; // shrank while read: what is there
        len += (size_t)got;
    }
    close(fd);
    buf[len] = '\0';
    *ret_buf = buf;
    if (ret_len)
        *ret_len = len;
    return 0;
}

int moe_read_file(const char *path, char **ret_buf, size_t *ret_len, struct moe_err *err)
{
    char why[256];
    int at_open = 0;
    int rc = moe_read_file_why(path, ret_buf, ret_len, why, sizeof why, &at_open);
    if (rc == MOE_ENOMEM)
        return moe_error(err, rc, "out of memory reading '%s'", path);
    if (rc)
        return moe_error(err, rc, "cannot %s '%s': %s", at_open ? "open" : "read", path, why);
    return 0;
}
