#ifndef CPLASMASYS_H
#define CPLASMASYS_H

#include <sys/types.h>
#include <stdint.h>

/// Spawns `path` with `argv` (NULL-terminated) and the current environment.
/// stdin/stdout/stderr are dup'ed from the given fds (-1 means /dev/null).
/// All other fds are closed in the child. With `new_session` the child calls setsid().
/// Returns 0 and sets *pid, or an errno value.
int plasma_spawn(const char *path, char *const argv[], int stdin_fd, int stdout_fd,
                 int stderr_fd, int new_session, pid_t *pid);

/// Connects a new SOCK_STREAM unix socket (close-on-exec, blocking) to `path`, giving up after
/// 2 s when the server does not accept (a full backlog). Returns the fd, or -errno:
/// -ENAMETOOLONG when the path does not fit sun_path, -ETIMEDOUT past the deadline.
int plasma_unix_connect(const char *path);

/// plasma_unix_connect with its own deadline in milliseconds.
int plasma_unix_connect_timeout(const char *path, int timeout_ms);

/// Creates a listening unix socket at `path` (for test servers). Returns fd or -errno.
int plasma_unix_listen(const char *path, int backlog);

/// Field 22 of /proc/PID/stat (start time in clock ticks) and the state letter.
/// Returns 0 on success, -1 if the process does not exist.
int plasma_proc_stat(pid_t pid, uint64_t *start_time, char *state);

/// waitpid wrapper returning the decoded status: *exited=1 and *code for a normal exit,
/// *exited=0 and *code=signal for a signal death. Returns the pid, 0, or -errno.
int plasma_waitpid(pid_t pid, int nohang, int *exited, int *code);

/// Largest unix socket path length accepted (sizeof sun_path - 1).
int plasma_unix_path_max(void);

/// An eventfd (close-on-exec, non-blocking) for waking a thread blocked in poll(). -errno on failure.
int plasma_eventfd(void);

/// Waits until `fd` is readable or `wake_fd` is signalled, at most `timeout_ms` (-1: forever).
/// Returns a bit set: 1 = fd readable (or hung up), 2 = woken; 0 on timeout; -errno on error.
/// A wake is consumed.
int plasma_poll2(int fd, int wake_fd, int timeout_ms);

/// Signals an eventfd made by plasma_eventfd.
void plasma_eventfd_signal(int fd);

/// Bytes written to the unix socket `fd` that the peer has not read yet (SIOCOUTQ), or -errno.
int plasma_unix_outq(int fd);

#endif
