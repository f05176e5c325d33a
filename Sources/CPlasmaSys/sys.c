#define _GNU_SOURCE
#include "CPlasmaSys.h"

#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

int plasma_spawn(const char *path, char *const argv[], int stdin_fd, int stdout_fd,
                 int stderr_fd, int new_session, pid_t *pid) {
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    int rc = posix_spawn_file_actions_init(&fa);
    if (rc != 0) return rc;
    rc = posix_spawnattr_init(&attr);
    if (rc != 0) { posix_spawn_file_actions_destroy(&fa); return rc; }

    int fds[3] = { stdin_fd, stdout_fd, stderr_fd };
    for (int i = 0; i < 3 && rc == 0; i++) {
        if (fds[i] >= 0) rc = posix_spawn_file_actions_adddup2(&fa, fds[i], i);
        else rc = posix_spawn_file_actions_addopen(&fa, i, "/dev/null", i == 0 ? O_RDONLY : O_WRONLY, 0);
    }
    if (rc == 0) rc = posix_spawn_file_actions_addclosefrom_np(&fa, 3);

    short flags = POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF;
    if (new_session) flags |= POSIX_SPAWN_SETSID;
    sigset_t none, all;
    sigemptyset(&none);
    sigfillset(&all);
    if (rc == 0) rc = posix_spawnattr_setflags(&attr, flags);
    if (rc == 0) rc = posix_spawnattr_setsigmask(&attr, &none);
    if (rc == 0) rc = posix_spawnattr_setsigdefault(&attr, &all);
    if (rc == 0) rc = posix_spawn(pid, path, &fa, &attr, argv, environ);

    posix_spawnattr_destroy(&attr);
    posix_spawn_file_actions_destroy(&fa);
    return rc;
}

static int fill_addr(struct sockaddr_un *addr, const char *path) {
    size_t len = strlen(path);
    if (len >= sizeof(addr->sun_path)) return -ENAMETOOLONG;
    memset(addr, 0, sizeof(*addr));
    addr->sun_family = AF_UNIX;
    memcpy(addr->sun_path, path, len + 1);
    return 0;
}

int plasma_unix_connect_timeout(const char *path, int timeout_ms) {
    struct sockaddr_un addr;
    int rc = fill_addr(&addr, path);
    if (rc < 0) return rc;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return -errno;
    /* A unix socket whose backlog is full (its server hung) answers EAGAIN at once to a
     * non-blocking connect, where a blocking one would wait forever: retry until the deadline. */
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (;;) {
        if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) == 0) break;
        int e = errno;
        if (e == EINTR) continue;
        clock_gettime(CLOCK_MONOTONIC, &now);
        long elapsed = (now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000;
        if (e != EAGAIN || elapsed >= timeout_ms) {
            close(fd);
            return e == EAGAIN ? -ETIMEDOUT : -e;
        }
        struct timespec pause = { 0, 2000000 };
        nanosleep(&pause, NULL);
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    return fd;
}

int plasma_unix_connect(const char *path) {
    return plasma_unix_connect_timeout(path, 2000);
}

int plasma_unix_listen(const char *path, int backlog) {
    struct sockaddr_un addr;
    int rc = fill_addr(&addr, path);
    if (rc < 0) return rc;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0 || listen(fd, backlog) < 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    return fd;
}

int plasma_proc_stat(pid_t pid, uint64_t *start_time, char *state) {
    char path[64], buf[2048];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0) return -1;
    buf[n] = 0;
    /* comm may contain spaces and parentheses: fields restart after the last ')'. */
    char *p = strrchr(buf, ')');
    if (!p || p[1] == 0) return -1;
    p += 2;
    *state = *p;
    /* p points at field 3 (state); start time is field 22. */
    int field = 3;
    while (*p && field < 22) {
        if (*p == ' ') field++;
        p++;
    }
    *start_time = strtoull(p, NULL, 10);
    return 0;
}

int plasma_waitpid(pid_t pid, int nohang, int *exited, int *code) {
    int status = 0;
    pid_t r;
    do {
        r = waitpid(pid, &status, nohang ? WNOHANG : 0);
    } while (r < 0 && errno == EINTR);
    if (r < 0) return -errno;
    if (r == 0) return 0;
    if (WIFEXITED(status)) { *exited = 1; *code = WEXITSTATUS(status); }
    else if (WIFSIGNALED(status)) { *exited = 0; *code = WTERMSIG(status); }
    else { *exited = 0; *code = 0; }
    return r;
}

int plasma_unix_path_max(void) {
    struct sockaddr_un addr;
    return (int)sizeof(addr.sun_path) - 1;
}

int plasma_eventfd(void) {
    int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    return fd < 0 ? -errno : fd;
}

int plasma_poll2(int fd, int wake_fd, int timeout_ms) {
    struct pollfd p[2] = { { .fd = fd, .events = POLLIN }, { .fd = wake_fd, .events = POLLIN } };
    int r = poll(p, 2, timeout_ms);
    if (r < 0) return -errno;
    int out = 0;
    if (p[0].revents) out |= 1;
    if (p[1].revents & POLLIN) {
        uint64_t v;
        while (read(wake_fd, &v, sizeof(v)) > 0) {}
        out |= 2;
    }
    return out;
}

void plasma_eventfd_signal(int fd) {
    uint64_t one = 1;
    ssize_t r = write(fd, &one, sizeof(one));
    (void)r;
}

int plasma_unix_outq(int fd) {
    int n = 0;
    if (ioctl(fd, SIOCOUTQ, &n) < 0) return -errno;
    return n;
}
