/*
 * plasmavmc-supervisor: one small process per VM, in the model of conmon and containerd-shim.
 *
 *   plasmavmc-supervisor DIR ACCEL -- QEMU-ARGV...
 *
 * It starts QEMU as its child and outlives the command that created the VM. It is the one
 * place that knows how QEMU ended: it reaps QEMU and writes DIR/exit.json (exit code or signal,
 * the last SHUTDOWN event, what plasmavmc asked for, and the reason code). It holds a QMP
 * monitor of its own (DIR/qmp-sup.sock) and appends every lifecycle event to DIR/events.log.
 * It is the only client of QEMU's serial socket (DIR/serial.sock): it writes the console log
 * (capped and rotated) and serves DIR/console.sock to any number of readers and writers. On
 * DIR/supervisor.sock it answers `status`, and carries out `stop MS` and `kill`, one line each.
 *
 * Start-up is reported on stdout (a pipe from the creating process): one line, "ready PID" or
 * "error MESSAGE", then stdout is closed. Everything else goes to the files above.
 *
 * One thread, one poll loop; every socket is non-blocking; nothing here waits without a
 * deadline. A client that does not read its console output fast enough is dropped rather
 * than allowed to stall the guest. If this process dies, QEMU runs on; plasmavmc then acts
 * on QEMU by pid and start time.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "CPlasmaSys.h"

#define MAX_CLIENTS 64
#define LINE_MAX_BYTES 65536
#define CLIENT_OUT_MAX (4u << 20)   /* console bytes a client may lag behind before it is dropped */
#define INPUT_MAX (1u << 20)        /* console input queued for the guest before writers wait */
#define EVENTS_LOG_MAX (1u << 20)
#define POWERDOWN_INTERVAL_MS 2000

static const char *dir;
static char accel[16];
static pid_t qemu_pid = -1;
static unsigned long long qemu_start_time;
static unsigned long long sup_start_time;
static int qemu_gone;            /* reaped */
static int exit_exited, exit_code;
/* SIGTERM while starting: the creating process gave up; take QEMU down with us. */
static volatile sig_atomic_t abort_launch;
static void on_term(int sig) { (void)sig; abort_launch = 1; }

/* What QMP told us. */
static char runstate[32] = "prelaunch";
static int shutdown_seen, shutdown_guest;
static char shutdown_reason[64];
static int panicked;

/* What plasmavmc asked for. */
static char request[16];         /* "", "stop", "kill" */
static char stop_step[16];       /* the step of a stop in progress or done */

/* stop escalation */
enum { ESC_NONE, ESC_POWERDOWN, ESC_QUIT, ESC_SIGTERM, ESC_SIGKILL };
static int esc_phase = ESC_NONE;
static long long esc_begin, esc_phase_end, esc_next_powerdown, esc_graceful_end, esc_force;

static int qmp_fd = -1, serial_fd = -1, console_listen = -1, control_listen = -1, sig_fd = -1;
static int exit_tmp_fd = -1;

/* console log */
static unsigned long long console_cap = 8ull << 20;
static int console_fd = -1;
static unsigned long long console_size, console_gen;
static int console_full_logged;

struct buf { char *data; size_t len, cap; };

enum { C_CONSOLE, C_CONTROL };
struct client {
    int fd, kind;
    struct buf in, out;
    int waiting;                 /* control: 1 while a stop or kill reply is owed */
    int waiting_cont;            /* control: 1 while a cont reply is owed */
    int closing;                 /* close once out is flushed */
};
static struct client clients[MAX_CLIENTS];
static int nclients;

static struct buf qmp_in, qmp_out, serial_out;

/* ---------- small helpers ---------- */

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void buf_add(struct buf *b, const char *p, size_t n) {
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n) cap *= 2;
        char *d = realloc(b->data, cap);
        if (!d) abort();
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
}

static void buf_drop(struct buf *b, size_t n) {
    memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
}

static void path_in(char *out, size_t size, const char *name) {
    snprintf(out, size, "%s/%s", dir, name);
}

static int proc_stat(pid_t pid, unsigned long long *start, char *state) {
    uint64_t st = 0;
    char letter = 0;
    if (plasma_proc_stat(pid, &st, &letter) != 0) return -1;
    *start = st;
    if (state) *state = letter;
    return 0;
}

/* Appends `s` to `b` as a JSON string literal. */
static void json_str(struct buf *b, const char *s) {
    buf_add(b, "\"", 1);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        char esc[8];
        if (c == '"' || c == '\\') { esc[0] = '\\'; esc[1] = (char)c; buf_add(b, esc, 2); }
        else if (c == '\n') buf_add(b, "\\n", 2);
        else if (c < 0x20) { snprintf(esc, sizeof(esc), "\\u%04x", c); buf_add(b, esc, 6); }
        else buf_add(b, (const char *)&c, 1);
    }
    buf_add(b, "\"", 1);
}

static void bprintf(struct buf *b, const char *fmt, ...) {
    char tmp[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n > 0) buf_add(b, tmp, (size_t)n < sizeof(tmp) ? (size_t)n : sizeof(tmp) - 1);
}

/* Writes a whole file atomically: temp, fsync, rename. Returns 0 or -1. */
static int write_record(const char *name, const char *data, size_t len) {
    char path[4096], tmp[4200];
    path_in(path, sizeof(path), name);
    snprintf(tmp, sizeof(tmp), "%s.tmp.%d", path, (int)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) return -1;
    ssize_t w = write(fd, data, len);
    if (w != (ssize_t)len || fsync(fd) != 0) { close(fd); unlink(tmp); return -1; }
    close(fd);
    if (rename(tmp, path) != 0) { unlink(tmp); return -1; }
    return 0;
}

/* The value of `"key": "…"` or `"key": true/false` in a QMP line: good enough for the fixed
 * shapes QEMU sends (keys are not repeated inside the strings we look at). */
static int json_find(const char *line, const char *key, char *out, size_t size) {
    char pat[64];
    snprintf(pat, sizeof(pat), "\"%s\":", key);
    const char *p = strstr(line, pat);
    if (!p) return 0;
    p += strlen(pat);
    while (*p == ' ') p++;
    size_t i = 0;
    if (*p == '"') {
        p++;
        while (*p && *p != '"' && i + 1 < size) {
            if (*p == '\\' && p[1]) p++;
            out[i++] = *p++;
        }
    } else {
        while (*p && *p != ',' && *p != '}' && *p != ' ' && i + 1 < size) out[i++] = *p++;
    }
    out[i] = 0;
    return 1;
}

/* The text of the object after `"data": ` (braces matched, strings respected), or "{}". */
static void json_object_after(const char *line, const char *key, struct buf *out) {
    char pat[64];
    snprintf(pat, sizeof(pat), "\"%s\":", key);
    const char *p = strstr(line, pat);
    if (!p) { buf_add(out, "{}", 2); return; }
    p += strlen(pat);
    while (*p == ' ') p++;
    if (*p != '{') { buf_add(out, "{}", 2); return; }
    int depth = 0, in_str = 0;
    const char *s = p;
    for (; *p; p++) {
        if (in_str) {
            if (*p == '\\' && p[1]) p++;
            else if (*p == '"') in_str = 0;
        } else if (*p == '"') in_str = 1;
        else if (*p == '{') depth++;
        else if (*p == '}' && --depth == 0) { buf_add(out, s, (size_t)(p - s + 1)); return; }
    }
    buf_add(out, "{}", 2);
}

/* ---------- state ---------- */

/* The VM state for a QEMU run state (the table in QEMU.md). */
static const char *vm_state(void) {
    if (qemu_gone) return "stopped";
    if (panicked || !strcmp(runstate, "guest-panicked") || !strcmp(runstate, "internal-error")) return "crashed";
    if (!strcmp(runstate, "prelaunch")) return "created";
    if (!strcmp(runstate, "running")) return "running";
    if (!strcmp(runstate, "shutdown")) return "stopped";
    return "paused";
}

static const char *signame(int sig) {
    switch (sig) {
    case SIGKILL: return "SIGKILL";
    case SIGTERM: return "SIGTERM";
    case SIGINT: return "SIGINT";
    case SIGHUP: return "SIGHUP";
    case SIGQUIT: return "SIGQUIT";
    case SIGABRT: return "SIGABRT";
    case SIGSEGV: return "SIGSEGV";
    case SIGBUS: return "SIGBUS";
    case SIGILL: return "SIGILL";
    case SIGFPE: return "SIGFPE";
    default: return NULL;
    }
}

/* QEMU prints "terminating on signal N from pid P (NAME)" before a clean exit on a signal. */
static int signal_from_log(int *sig, char *from, size_t size) {
    char path[4096], b[8192];
    path_in(path, sizeof(path), "qemu.log");
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    off_t end = lseek(fd, 0, SEEK_END);
    off_t start = end > (off_t)sizeof(b) - 1 ? end - (off_t)sizeof(b) + 1 : 0;
    ssize_t n = pread(fd, b, sizeof(b) - 1, start);
    close(fd);
    if (n <= 0) return 0;
    b[n] = 0;
    char *p = NULL, *q = b;
    while ((q = strstr(q, "terminating on signal "))) p = q++;
    if (!p) return 0;
    *sig = atoi(p + strlen("terminating on signal "));
    from[0] = 0;
    char *f = strstr(p, " from pid ");
    if (f) {
        char *eol = strchr(f, '\n');
        size_t len = eol ? (size_t)(eol - f - 1) : strlen(f + 1);
        if (len >= size) len = size - 1;
        memcpy(from, f + 1, len);
        from[len] = 0;
    }
    return 1;
}

/* The reason code and message for QEMU's end (README: "Reason codes"). */
static void exit_reason(char *code, size_t csize, char *msg, size_t msize, const char **state) {
    const char *sn = exit_exited ? NULL : signame(exit_code);
    char sigtext[32];
    if (!exit_exited) snprintf(sigtext, sizeof(sigtext), "%s", sn ? sn : "");
    if (!exit_exited && !sn) snprintf(sigtext, sizeof(sigtext), "signal %d", exit_code);
    *state = "stopped";
    if (!strcmp(request, "kill")) {
        snprintf(code, csize, "killed");
        snprintf(msg, msize, "killed by plasmavmc kill (SIGKILL)");
    } else if (!strcmp(request, "stop") && stop_step[0]) {
        snprintf(code, csize, "stop");
        snprintf(msg, msize, "stopped by plasmavmc stop (step: %s)", stop_step);
    } else if (!exit_exited && exit_code == SIGKILL) {
        /* Gone without a shutdown: crashed (QEMU.md's state table), killed by whom it says. */
        snprintf(code, csize, "killed");
        snprintf(msg, msize, "killed by SIGKILL from outside plasmavmc");
        *state = "crashed";
    } else if (!exit_exited && (exit_code == SIGTERM || exit_code == SIGINT || exit_code == SIGHUP)) {
        snprintf(code, csize, "host-signal");
        snprintf(msg, msize, "ended by %s from outside plasmavmc before it could shut down", sigtext);
        *state = "crashed";
    } else if (!exit_exited) {
        snprintf(code, csize, "qemu-crashed");
        snprintf(msg, msize, "QEMU crashed (%s)", sigtext);
        *state = "crashed";
    } else if (exit_code != 0) {
        snprintf(code, csize, "qemu-crashed");
        snprintf(msg, msize, "QEMU exited with status %d (see qemu.log)", exit_code);
        *state = "crashed";
    } else if (shutdown_seen && shutdown_guest) {
        snprintf(code, csize, "guest-shutdown");
        snprintf(msg, msize, "the guest shut down (%s)", shutdown_reason);
    } else if (shutdown_seen && !strcmp(shutdown_reason, "host-qmp-quit")) {
        snprintf(code, csize, "host-quit");
        snprintf(msg, msize, "QEMU quit on a QMP quit from outside plasmavmc");
    } else if (shutdown_seen && !strcmp(shutdown_reason, "host-signal")) {
        int sig = 0;
        char from[256];
        snprintf(code, csize, "host-signal");
        if (signal_from_log(&sig, from, sizeof(from))) {
            const char *name = signame(sig);
            char num[16];
            snprintf(num, sizeof(num), "signal %d", sig);
            if (from[0]) snprintf(msg, msize, "ended by %s %s, outside plasmavmc", name ? name : num, from);
            else snprintf(msg, msize, "ended by %s from outside plasmavmc", name ? name : num);
        } else {
            snprintf(msg, msize, "ended by a signal from outside plasmavmc");
        }
    } else if (shutdown_seen && !strcmp(shutdown_reason, "guest-panic")) {
        snprintf(code, csize, "guest-panicked");
        snprintf(msg, msize, "the guest panicked and QEMU shut down");
        *state = "crashed";
    } else if (shutdown_seen) {
        snprintf(code, csize, "host-quit");
        snprintf(msg, msize, "QEMU shut down (%s) at a request from outside plasmavmc", shutdown_reason);
    } else {
        snprintf(code, csize, "host-quit");
        snprintf(msg, msize, "QEMU exited cleanly without a shutdown event");
    }
}

/* ---------- event log ---------- */

static void event_log(const char *kind, const char *details /* JSON members or NULL */) {
    struct buf b = {0};
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char when[64];
    strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%S", &tm);
    bprintf(&b, "{\"time\":\"%s.%03ldZ\",\"unix_nanos\":%lld,\"kind\":", when, ts.tv_nsec / 1000000,
            (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec);
    json_str(&b, kind);
    buf_add(&b, ",\"state\":", 9);
    json_str(&b, vm_state());
    if (details && *details) { buf_add(&b, ",", 1); buf_add(&b, details, strlen(details)); }
    buf_add(&b, "}\n", 2);
    char path[4096];
    path_in(path, sizeof(path), "events.log");
    struct stat st;
    if (stat(path, &st) == 0 && (unsigned long long)st.st_size + b.len > EVENTS_LOG_MAX) {
        char old[4200];
        snprintf(old, sizeof(old), "%s.1", path);
        rename(path, old);
    }
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd >= 0) {
        ssize_t w = write(fd, b.data, b.len);   /* one write: lines never interleave */
        (void)w;                                 /* a full disk loses the line, never the VM */
        close(fd);
    }
    free(b.data);
}

/* ---------- console log ---------- */

static void console_write_gen(void) {
    char text[64];
    int n = snprintf(text, sizeof(text), "%llu %llu\n", console_gen, console_cap);
    write_record("console.gen", text, (size_t)n);
}

/* console.gen is written only when the log rotates: without it, the log is generation 0. */
static void console_open(void) {
    char gen_path[4096], log_path[4096], old_path[4200];
    path_in(gen_path, sizeof(gen_path), "console.gen");
    path_in(log_path, sizeof(log_path), "console.log");
    snprintf(old_path, sizeof(old_path), "%s.1", log_path);
    int same_cap = 1;
    FILE *f = fopen(gen_path, "re");
    if (f) {
        unsigned long long gen = 0, cap = 0;
        if (fscanf(f, "%llu %llu", &gen, &cap) == 2 && cap == console_cap) console_gen = gen;
        else same_cap = 0;
        fclose(f);
    }
    console_fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0600);
    struct stat st;
    console_size = (console_fd >= 0 && fstat(console_fd, &st) == 0) ? (unsigned long long)st.st_size : 0;
    if (!same_cap || console_size > console_cap) {
        /* Written with another cap (a relaunch under another PLASMAVMC_CONSOLE_LOG_MAX): the
         * offsets of the old files mean nothing now. Keep the last log as the previous one and
         * start again at generation 1, whose offsets readers can map. */
        if (console_fd >= 0) close(console_fd);
        rename(log_path, old_path);
        console_fd = open(log_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
        console_size = 0;
        console_gen = 1;
        console_write_gen();
    }
}

/* Appends guest output; every file but the current one holds exactly `console_cap` bytes, so
 * a reader maps an offset to (generation, position) without asking us. */
static void console_append(const char *p, size_t n) {
    while (n > 0 && console_fd >= 0) {
        if (console_size >= console_cap) {
            char cur[4096], old[4200];
            path_in(cur, sizeof(cur), "console.log");
            snprintf(old, sizeof(old), "%s.1", cur);
            close(console_fd);
            rename(cur, old);
            console_gen++;
            console_size = 0;
            console_fd = open(cur, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0600);
            console_write_gen();
            if (console_fd < 0) return;
        }
        size_t room = (size_t)(console_cap - console_size);
        size_t chunk = n < room ? n : room;
        ssize_t w = write(console_fd, p, chunk);
        if (w <= 0) {
            if (!console_full_logged) {
                console_full_logged = 1;
                char d[128];
                snprintf(d, sizeof(d), "\"error\":\"%s\"", strerror(errno));
                event_log("console-log-error", d);
            }
            /* Keep offsets honest: what could not be written is counted as written (a gap). */
            console_size += chunk;
        } else {
            console_size += (size_t)w;
            chunk = (size_t)w;
        }
        p += chunk;
        n -= chunk;
    }
}

/* ---------- clients ---------- */

static void client_close(int i) {
    close(clients[i].fd);
    free(clients[i].in.data);
    free(clients[i].out.data);
    clients[i] = clients[--nclients];
}

static void client_add(int fd, int kind) {
    if (nclients >= MAX_CLIENTS) { close(fd); return; }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    memset(&clients[nclients], 0, sizeof(clients[nclients]));
    clients[nclients].fd = fd;
    clients[nclients].kind = kind;
    nclients++;
}

static void reply(struct client *c, const char *text) {
    buf_add(&c->out, text, strlen(text));
}

static void status_json(struct buf *b) {
    bprintf(b, "{\"runstate\":");
    json_str(b, runstate);
    bprintf(b, ",\"state\":");
    json_str(b, vm_state());
    bprintf(b, ",\"qemu\":{\"pid\":%d,\"startTime\":%llu},\"supervisor\":{\"pid\":%d,\"startTime\":%llu}",
            (int)qemu_pid, qemu_start_time, (int)getpid(), sup_start_time);
    bprintf(b, ",\"accel\":");
    json_str(b, accel);
    if (stop_step[0]) { bprintf(b, ",\"stopping\":"); json_str(b, stop_step); }
    buf_add(b, "}\n", 2);
}

/* ---------- QMP ---------- */

static void qmp_send(const char *json) {
    if (qmp_fd < 0) return;
    buf_add(&qmp_out, json, strlen(json));
    buf_add(&qmp_out, "\r\n", 2);
}

static void query_status(void) { qmp_send("{\"execute\":\"query-status\",\"id\":\"sup-status\"}"); }

/* Answers every client waiting for `cont`. */
static void cont_replies(const char *text) {
    for (int i = 0; i < nclients; i++) {
        if (clients[i].kind == C_CONTROL && clients[i].waiting_cont) {
            buf_add(&clients[i].out, text, strlen(text));
            clients[i].waiting_cont = 0;
        }
    }
}

static void lower_kind(const char *event, char *out, size_t size) {
    size_t i = 0;
    for (; event[i] && i + 1 < size; i++) out[i] = event[i] == '_' ? '-' : (char)(event[i] | 0x20);
    out[i] = 0;
}

static void qmp_line(const char *line) {
    char ev[64], val[64];
    if (json_find(line, "event", ev, sizeof(ev))) {
        if (!strcmp(ev, "RESUME")) snprintf(runstate, sizeof(runstate), "running");
        else if (!strcmp(ev, "STOP")) { if (strcmp(runstate, "shutdown")) snprintf(runstate, sizeof(runstate), "paused"); }
        else if (!strcmp(ev, "SUSPEND")) snprintf(runstate, sizeof(runstate), "suspended");
        else if (!strcmp(ev, "WAKEUP")) snprintf(runstate, sizeof(runstate), "running");
        else if (!strcmp(ev, "GUEST_PANICKED")) { panicked = 1; snprintf(runstate, sizeof(runstate), "guest-panicked"); }
        else if (!strcmp(ev, "SHUTDOWN")) {
            shutdown_seen = 1;
            shutdown_guest = json_find(line, "guest", val, sizeof(val)) && !strcmp(val, "true");
            if (!json_find(line, "reason", shutdown_reason, sizeof(shutdown_reason))) shutdown_reason[0] = 0;
            snprintf(runstate, sizeof(runstate), "shutdown");
        }
        char kind[64];
        lower_kind(ev, kind, sizeof(kind));
        struct buf d = {0};
        buf_add(&d, "\"data\":", 7);
        json_object_after(line, "data", &d);
        buf_add(&d, "", 1);
        event_log(kind, d.data);
        free(d.data);
        if (strcmp(ev, "SHUTDOWN") && strcmp(ev, "POWERDOWN") && strcmp(ev, "RESET")) query_status();
        return;
    }
    if (strstr(line, "\"sup-status\"") && json_find(line, "status", val, sizeof(val))) {
        snprintf(runstate, sizeof(runstate), "%s", val);
    }
    if (strstr(line, "\"sup-cont\"")) {
        if (strstr(line, "\"return\"")) {
            if (!strcmp(runstate, "prelaunch")) snprintf(runstate, sizeof(runstate), "running");
            cont_replies("{\"ok\":true}\n");
        } else {
            char desc[512] = "cont failed";
            json_find(line, "desc", desc, sizeof(desc));
            struct buf r = {0};
            bprintf(&r, "{\"error\":");
            json_str(&r, desc);
            buf_add(&r, "}\n", 3);
            cont_replies(r.data);
            free(r.data);
        }
    }
}

/* Reads and handles whole lines. Returns -1 when the monitor went away. */
static int qmp_read(void) {
    char b[65536];
    for (;;) {
        ssize_t n = read(qmp_fd, b, sizeof(b));
        if (n == 0) return -1;
        if (n < 0) return (errno == EAGAIN || errno == EINTR) ? 0 : -1;
        buf_add(&qmp_in, b, (size_t)n);
        if (qmp_in.len > (1u << 20) && !memchr(qmp_in.data, '\n', qmp_in.len)) qmp_in.len = 0;  /* no line that long */
        char *nl;
        while ((nl = memchr(qmp_in.data, '\n', qmp_in.len))) {
            size_t len = (size_t)(nl - qmp_in.data) + 1;
            if (len > LINE_MAX_BYTES) { buf_drop(&qmp_in, len); continue; }
            char *line = strndup(qmp_in.data, len);
            buf_drop(&qmp_in, len);
            qmp_line(line);
            free(line);
        }
    }
}

static void flush(int fd, struct buf *b) {
    while (fd >= 0 && b->len > 0) {
        ssize_t w = send(fd, b->data, b->len, MSG_NOSIGNAL);
        if (w <= 0) {
            if (w < 0 && (errno == EAGAIN || errno == EINTR)) return;
            b->len = 0;   /* peer gone: the caller notices on its next read */
            return;
        }
        buf_drop(b, (size_t)w);
    }
}

/* ---------- stop and kill ---------- */

static void kill_qemu(int sig) {
    unsigned long long st = 0;
    char state = 0;
    if (!qemu_gone && proc_stat(qemu_pid, &st, &state) == 0 && st == qemu_start_time) kill(qemu_pid, sig);
}

static void esc_enter(int phase, long long now) {
    esc_phase = phase;
    const char *names[] = {"", "powerdown", "quit", "sigterm", "sigkill"};
    snprintf(stop_step, sizeof(stop_step), "%s", names[phase]);
    char d[64];
    snprintf(d, sizeof(d), "\"step\":\"%s\"", names[phase]);
    event_log("stop-step", d);
    switch (phase) {
    case ESC_POWERDOWN:
        qmp_send("{\"execute\":\"system_powerdown\",\"id\":\"sup-pd\"}");
        esc_next_powerdown = now + POWERDOWN_INTERVAL_MS;
        esc_phase_end = esc_graceful_end;
        break;
    case ESC_QUIT:
        qmp_send("{\"execute\":\"quit\",\"id\":\"sup-quit\"}");
        esc_phase_end = now + esc_force / 2;
        break;
    case ESC_SIGTERM:
        kill_qemu(SIGTERM);
        esc_phase_end = now + esc_force / 4;
        break;
    case ESC_SIGKILL:
        kill_qemu(SIGKILL);
        esc_phase_end = now + 5000;
        break;
    }
}

static void stop_begin(long long timeout_ms) {
    long long now = now_ms();
    snprintf(request, sizeof(request), "stop");
    esc_begin = now;
    esc_force = timeout_ms / 2 < 6000 ? timeout_ms / 2 : 6000;
    esc_graceful_end = now + timeout_ms - esc_force;
    char d[64];
    snprintf(d, sizeof(d), "\"timeout_ms\":%lld", timeout_ms);
    event_log("stop-requested", d);
    unsigned long long st = 0;
    char pstate = 0;
    if (proc_stat(qemu_pid, &st, &pstate) == 0 && (pstate == 'T' || pstate == 't')) {
        /* Stopped by a signal: it answers nothing and takes no SIGTERM until continued. */
        esc_enter(ESC_SIGKILL, now);
    } else if (!strcmp(runstate, "running") && esc_graceful_end > now) {
        esc_enter(ESC_POWERDOWN, now);
    } else {
        esc_enter(ESC_QUIT, now);
    }
}

static void esc_tick(long long now) {
    if (esc_phase == ESC_NONE || qemu_gone) return;
    if (esc_phase == ESC_POWERDOWN && now >= esc_next_powerdown && now < esc_phase_end) {
        qmp_send("{\"execute\":\"system_powerdown\",\"id\":\"sup-pd\"}");
        esc_next_powerdown = now + POWERDOWN_INTERVAL_MS;
    }
    if (now >= esc_phase_end && esc_phase < ESC_SIGKILL) esc_enter(esc_phase + 1, now);
}

static void control_line(struct client *c, char *line) {
    char *nl = strchr(line, '\n');
    if (nl) *nl = 0;
    if (!strcmp(line, "status")) {
        status_json(&c->out);
    } else if (!strncmp(line, "stop ", 5)) {
        char *end;
        long long ms = strtoll(line + 5, &end, 10);
        if (end == line + 5 || ms < 0 || ms > 86400000LL * 365) {
            reply(c, "{\"error\":\"stop needs a timeout in milliseconds\"}\n");
            return;
        }
        c->waiting = 1;
        if (qemu_gone) return;
        if (esc_phase == ESC_NONE) stop_begin(ms);
    } else if (!strcmp(line, "cont")) {
        /* start: only a VM that has not run yet; the rest is refused, never guessed at. */
        if (strcmp(runstate, "prelaunch") || esc_phase != ESC_NONE || qmp_fd < 0) {
            struct buf r = {0};
            bprintf(&r, "{\"error\":\"not startable\",\"runstate\":");
            json_str(&r, runstate);
            buf_add(&r, "}\n", 2);
            buf_add(&c->out, r.data, r.len);
            free(r.data);
            return;
        }
        c->waiting_cont = 1;
        qmp_send("{\"execute\":\"cont\",\"id\":\"sup-cont\"}");
    } else if (!strcmp(line, "kill")) {
        c->waiting = 1;
        if (qemu_gone) return;
        snprintf(request, sizeof(request), "kill");
        event_log("kill-requested", NULL);
        kill_qemu(SIGKILL);
    } else {
        reply(c, "{\"error\":\"unknown command\"}\n");
    }
}

/* ---------- exit ---------- */

static void record_exit(void) {
    char code[32], msg[512];
    const char *state;
    exit_reason(code, sizeof(code), msg, sizeof(msg), &state);
    struct buf b = {0};
    bprintf(&b, "{\"exited\":%s,\"code\":%d,\"reasonCode\":", exit_exited ? "true" : "false", exit_code);
    json_str(&b, code);
    bprintf(&b, ",\"message\":");
    json_str(&b, msg);
    bprintf(&b, ",\"state\":");
    json_str(&b, state);
    if (shutdown_seen) {
        bprintf(&b, ",\"shutdown\":{\"guest\":%s,\"reason\":", shutdown_guest ? "true" : "false");
        json_str(&b, shutdown_reason);
        buf_add(&b, "}", 1);
    }
    if (request[0]) { bprintf(&b, ",\"request\":"); json_str(&b, request); }
    if (stop_step[0]) { bprintf(&b, ",\"step\":"); json_str(&b, stop_step); }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    bprintf(&b, ",\"at\":%.3f}\n", (double)ts.tv_sec + ts.tv_nsec / 1e9);
    /* The temp file was filled with spaces at start-up: writing it needs no new space, so a
     * full disk cannot lose how the VM ended. */
    char path[4096], tmp[4200];
    path_in(path, sizeof(path), "exit.json");
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    int ok = exit_tmp_fd >= 0 && pwrite(exit_tmp_fd, b.data, b.len, 0) == (ssize_t)b.len
        && ftruncate(exit_tmp_fd, (off_t)b.len) == 0 && fsync(exit_tmp_fd) == 0 && rename(tmp, path) == 0;
    if (!ok) write_record("exit.json", b.data, b.len);
    char d[700];
    struct buf e = {0};
    bprintf(&e, "\"reason_code\":");
    json_str(&e, code);
    bprintf(&e, ",\"message\":");
    json_str(&e, msg);
    if (exit_exited) bprintf(&e, ",\"exit_status\":%d", exit_code);
    else bprintf(&e, ",\"signal\":%d", exit_code);
    buf_add(&e, "", 1);
    snprintf(d, sizeof(d), "%s", e.data);
    event_log("exit", d);
    free(e.data);
    free(b.data);
    /* Owed replies. */
    cont_replies("{\"error\":\"QEMU exited\"}\n");
    for (int i = 0; i < nclients; i++) {
        if (clients[i].kind == C_CONTROL && clients[i].waiting) {
            struct buf r = {0};
            bprintf(&r, "{\"step\":");
            json_str(&r, stop_step[0] ? stop_step : (!strcmp(request, "kill") ? "sigkill" : "already-gone"));
            bprintf(&r, ",\"elapsed_ms\":%lld,\"reasonCode\":", esc_begin ? now_ms() - esc_begin : 0);
            json_str(&r, code);
            buf_add(&r, "}\n", 2);
            buf_add(&clients[i].out, r.data, r.len);
            free(r.data);
            clients[i].waiting = 0;
            clients[i].closing = 1;
        }
    }
}

static void reap(void) {
    int status;
    pid_t r;
    while ((r = waitpid(-1, &status, WNOHANG)) > 0) {
        if (r != qemu_pid) continue;
        qemu_gone = 1;
        if (WIFEXITED(status)) { exit_exited = 1; exit_code = WEXITSTATUS(status); }
        else { exit_exited = 0; exit_code = WIFSIGNALED(status) ? WTERMSIG(status) : 0; }
        record_exit();
    }
}

/* ---------- start-up ---------- */

static void startup_fail(const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (qemu_pid > 0 && !qemu_gone) {
        kill(qemu_pid, SIGKILL);
        int status;
        while (waitpid(qemu_pid, &status, 0) < 0 && errno == EINTR) {}
        qemu_gone = 1;
        if (WIFEXITED(status)) { exit_exited = 1; exit_code = WEXITSTATUS(status); }
        else { exit_exited = 0; exit_code = WTERMSIG(status); }
    }
    dprintf(1, "error %s\n", msg);
    char d[1200];
    struct buf b = {0};
    bprintf(&b, "\"message\":");
    json_str(&b, msg);
    buf_add(&b, "", 1);
    snprintf(d, sizeof(d), "%s", b.data);
    free(b.data);
    event_log("launch-failed", d);
    struct buf r = {0};
    bprintf(&r, "{\"exited\":true,\"code\":0,\"reasonCode\":\"launch-failed\",\"message\":");
    json_str(&r, msg);
    bprintf(&r, ",\"state\":\"crashed\",\"at\":0}\n");
    write_record("exit.json", r.data, r.len);
    free(r.data);
    exit(1);
}

static int connect_unix(const char *name) {
    char path[4096];
    path_in(path, sizeof(path), name);
    struct sockaddr_un a = { .sun_family = AF_UNIX };
    if (strlen(path) >= sizeof(a.sun_path)) return -ENAMETOOLONG;
    strcpy(a.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return -errno;
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) { int e = errno; close(fd); return -e; }
    return fd;
}

static int listen_unix(const char *name) {
    char path[4096];
    path_in(path, sizeof(path), name);
    unlink(path);
    struct sockaddr_un a = { .sun_family = AF_UNIX };
    if (strlen(path) >= sizeof(a.sun_path)) return -ENAMETOOLONG;
    strcpy(a.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return -errno;
    mode_t old = umask(0077);
    int rc = bind(fd, (struct sockaddr *)&a, sizeof(a));
    umask(old);
    if (rc < 0 || listen(fd, 64) < 0) { int e = errno; close(fd); return -e; }
    return fd;
}

/* Reads one whole QMP line within the deadline (start-up only). */
static void startup_fail(const char *fmt, ...);

static int qmp_read_line(char *out, size_t size, long long deadline) {
    size_t len = 0;
    while (len + 1 < size) {
        if (abort_launch) startup_fail("launch aborted (SIGTERM)");
        long long left = deadline - now_ms();
        if (left <= 0) return -1;
        struct pollfd p = { .fd = qmp_fd, .events = POLLIN };
        if (poll(&p, 1, (int)left) <= 0) continue;
        ssize_t n = read(qmp_fd, out + len, 1);
        if (n == 0) return -1;
        if (n < 0) { if (errno == EAGAIN || errno == EINTR) continue; return -1; }
        if (out[len++] == '\n') { out[len] = 0; return 0; }
    }
    return -1;
}

static int qemu_alive(void) {
    int status;
    pid_t r = waitpid(qemu_pid, &status, WNOHANG);
    if (r == qemu_pid) {
        qemu_gone = 1;
        if (WIFEXITED(status)) { exit_exited = 1; exit_code = WEXITSTATUS(status); }
        else { exit_exited = 0; exit_code = WTERMSIG(status); }
        return 0;
    }
    return 1;
}

static const char *exit_text(void) {
    static char t[64];
    if (exit_exited) snprintf(t, sizeof(t), "exit status %d", exit_code);
    else snprintf(t, sizeof(t), "signal %d%s%s%s", exit_code, signame(exit_code) ? " (" : "",
                  signame(exit_code) ? signame(exit_code) : "", signame(exit_code) ? ")" : "");
    return t;
}

/* Connects to one of QEMU's sockets, retrying while QEMU starts. */
static int connect_while_starting(const char *name, long long deadline) {
    for (;;) {
        if (abort_launch) startup_fail("launch aborted (SIGTERM)");
        int fd = connect_unix(name);
        if (fd >= 0) return fd;
        if (!qemu_alive()) startup_fail("QEMU exited while starting (%s)", exit_text());
        if (now_ms() >= deadline) startup_fail("QEMU did not open %s within the launch timeout", name);
        usleep(500);
    }
}

/* Forks and execs QEMU (paused: -S). */
static void spawn_qemu(char **argv) {
    char path[4096];
    path_in(path, sizeof(path), "qemu.log");
    int log = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (log < 0) startup_fail("cannot open %s: %s", path, strerror(errno));
    int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
    pid_t pid = fork();
    if (pid < 0) startup_fail("cannot fork: %s", strerror(errno));
    if (pid == 0) {
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        signal(SIGPIPE, SIG_DFL);
        signal(SIGHUP, SIG_DFL);
        signal(SIGINT, SIG_DFL);
        dup2(devnull, 0);
        dup2(log, 1);
        dup2(log, 2);
        execv(argv[0], argv);
        dprintf(2, "plasmavmc-supervisor: cannot run %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    close(log);
    close(devnull);
    qemu_pid = pid;
    /* The start time is read while QEMU is our unreaped child: the pid cannot be reused. */
    if (proc_stat(pid, &qemu_start_time, NULL) != 0) qemu_start_time = 0;
    char d[128];
    snprintf(d, sizeof(d), "\"pid\":%d,\"accel\":\"%s\"", (int)pid, accel);
    event_log("launch", d);
}

/* Waits for QEMU's monitor and serial port (QEMU initialises meanwhile). */
static void connect_qemu(long long deadline) {
    qmp_fd = connect_while_starting("qmp-sup.sock", deadline);
    char line[LINE_MAX_BYTES];
    long long greet_by = now_ms() + 5000 < deadline ? now_ms() + 5000 : deadline;
    if (qmp_read_line(line, sizeof(line), greet_by) != 0 || !strstr(line, "\"QMP\""))
        startup_fail("QEMU's monitor did not greet within 5 s");
    {
        struct buf v = {0};
        char major[16] = "", minor[16] = "", micro[16] = "";
        json_find(line, "major", major, sizeof(major));
        json_find(line, "minor", minor, sizeof(minor));
        json_find(line, "micro", micro, sizeof(micro));
        bprintf(&v, "\"qemu_version\":\"%s.%s.%s\"", major, minor, micro);
        buf_add(&v, "", 1);
        event_log("greeting", v.data);
        free(v.data);
    }
    const char *neg = "{\"execute\":\"qmp_capabilities\"}\r\n{\"execute\":\"query-status\",\"id\":\"sup-status\"}\r\n";
    if (send(qmp_fd, neg, strlen(neg), MSG_NOSIGNAL) != (ssize_t)strlen(neg))
        startup_fail("cannot write to QEMU's monitor: %s", strerror(errno));
    for (;;) {
        if (qmp_read_line(line, sizeof(line), deadline) != 0)
            startup_fail("QEMU's monitor did not answer query-status within the launch timeout");
        if (strstr(line, "\"sup-status\"")) {
            char st[32];
            if (!json_find(line, "status", st, sizeof(st))) startup_fail("unexpected query-status reply: %s", line);
            snprintf(runstate, sizeof(runstate), "%s", st);
            break;
        }
        if (strstr(line, "\"error\"")) startup_fail("QMP negotiation failed: %s", line);
    }
    if (strcmp(runstate, "prelaunch"))
        startup_fail("QEMU came up in state %s instead of prelaunch", runstate);
    serial_fd = connect_while_starting("serial.sock", deadline);
}

int main(int argc, char **argv) {
    long long launch_ms = 15000;
    int sep = 3;
    while (sep < argc && strcmp(argv[sep], "--")) {
        char *end;
        if (sep + 1 < argc && !strcmp(argv[sep], "--console-log-max")) {
            unsigned long long v = strtoull(argv[sep + 1], &end, 10);
            if (*end || v < 4096 || v > (1ull << 40)) { fprintf(stderr, "bad --console-log-max\n"); return 2; }
            console_cap = v;
        } else if (sep + 1 < argc && !strcmp(argv[sep], "--launch-timeout-ms")) {
            long long v = strtoll(argv[sep + 1], &end, 10);
            if (*end || v <= 0 || v > 600000) { fprintf(stderr, "bad --launch-timeout-ms\n"); return 2; }
            launch_ms = v;
        } else {
            break;
        }
        sep += 2;
    }
    if (argc < 4 || sep + 1 >= argc || strcmp(argv[sep], "--")) {
        fprintf(stderr, "usage: plasmavmc-supervisor DIR ACCEL [--console-log-max BYTES] [--launch-timeout-ms MS] -- QEMU-ARGV...\n"
                        "(started by plasmavmc; not meant to be run by hand)\n");
        return 2;
    }
    dir = argv[1];
    snprintf(accel, sizeof(accel), "%s", argv[2]);
    if (dir[0] != '/') { fprintf(stderr, "plasmavmc-supervisor: DIR must be absolute\n"); return 2; }
    /* Hold no folder of the caller's: a long-lived process must not keep a mount busy. */
    if (chdir("/") != 0) { perror("plasmavmc-supervisor: chdir /"); return 1; }

    signal(SIGPIPE, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    signal(SIGINT, SIG_IGN);
    struct sigaction sa = { .sa_handler = on_term };
    sigaction(SIGTERM, &sa, NULL);
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGCHLD);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    sig_fd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
    proc_stat(getpid(), &sup_start_time, NULL);

    /* QEMU first: the records below are written while it initialises. */
    long long deadline = now_ms() + launch_ms;
    spawn_qemu(argv + sep + 1);

    /* Room for exit.json reserved now, while the disk has it. */
    {
        char tmp[4200], path[4096];
        path_in(path, sizeof(path), "exit.json");
        snprintf(tmp, sizeof(tmp), "%s.tmp", path);
        exit_tmp_fd = open(tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (exit_tmp_fd >= 0) {
            char spaces[4096];
            memset(spaces, ' ', sizeof(spaces));
            /* The write reserves the blocks (ENOSPC shows here, not later); no fsync needed. */
            if (write(exit_tmp_fd, spaces, sizeof(spaces)) != (ssize_t)sizeof(spaces)) {
                close(exit_tmp_fd);
                exit_tmp_fd = -1;
                unlink(tmp);
                startup_fail("cannot reserve %s: %s (is the runtime dir's disk full?)", tmp, strerror(errno));
            }
        }
    }

    console_open();
    console_listen = listen_unix("console.sock");
    control_listen = listen_unix("supervisor.sock");
    if (console_listen < 0 || control_listen < 0)
        startup_fail("cannot listen on the console or control socket: %s", strerror(-(console_listen < 0 ? console_listen : control_listen)));

    /* launch.json: the one record of which QEMU (and which supervisor) is this VM's. */
    {
        struct buf b = {0};
        bprintf(&b, "{\"process\":{\"pid\":%d,\"startTime\":%llu},\"supervisor\":{\"pid\":%d,\"startTime\":%llu},\"accel\":",
                (int)qemu_pid, qemu_start_time, (int)getpid(), sup_start_time);
        json_str(&b, accel);
        bprintf(&b, ",\"argv\":[");
        for (int i = sep + 1; i < argc; i++) { if (i > sep + 1) buf_add(&b, ",", 1); json_str(&b, argv[i]); }
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        bprintf(&b, "],\"launchedAt\":%.3f}\n", (double)ts.tv_sec + ts.tv_nsec / 1e9);
        if (write_record("launch.json", b.data, b.len) != 0)
            startup_fail("cannot write launch.json: %s", strerror(errno));
        free(b.data);
    }

    connect_qemu(deadline);

    if (abort_launch) startup_fail("launch aborted (SIGTERM)");
    signal(SIGTERM, SIG_DFL);   /* from now on QEMU outlives us, whatever ends us */
    dprintf(1, "ready %d\n", (int)qemu_pid);
    int devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);
    dup2(devnull, 1);
    close(devnull);

    char b[65536];
    for (;;) {
        if (qemu_gone) {
            /* Deliver owed replies (bounded), then go. */
            long long until = now_ms() + 1000;
            for (;;) {
                int pending = 0;
                for (int i = 0; i < nclients; i++) {
                    flush(clients[i].fd, &clients[i].out);
                    if (clients[i].kind == C_CONTROL && clients[i].out.len) pending = 1;
                }
                if (!pending || now_ms() >= until) break;
                usleep(5000);
            }
            char sock[4096];
            path_in(sock, sizeof(sock), "console.sock");
            unlink(sock);
            path_in(sock, sizeof(sock), "supervisor.sock");
            unlink(sock);
            return 0;
        }
        struct pollfd p[MAX_CLIENTS + 8];
        int n = 0;
        p[n++] = (struct pollfd){ .fd = sig_fd, .events = POLLIN };
        p[n++] = (struct pollfd){ .fd = qmp_fd, .events = (short)(POLLIN | (qmp_out.len ? POLLOUT : 0)) };
        p[n++] = (struct pollfd){ .fd = serial_fd, .events = (short)(POLLIN | (serial_out.len ? POLLOUT : 0)) };
        p[n++] = (struct pollfd){ .fd = console_listen, .events = POLLIN };
        p[n++] = (struct pollfd){ .fd = control_listen, .events = POLLIN };
        int base = n;
        for (int i = 0; i < nclients; i++) {
            short ev = clients[i].out.len ? POLLOUT : 0;
            /* Writers wait while the guest has not taken what is queued: backpressure, not loss. */
            if (!(clients[i].kind == C_CONSOLE && serial_out.len >= INPUT_MAX)) ev |= POLLIN;
            p[n++] = (struct pollfd){ .fd = clients[i].fd, .events = ev };
        }
        int timeout = 1000;
        long long now = now_ms();
        if (esc_phase != ESC_NONE) {
            long long next = esc_phase_end;
            if (esc_phase == ESC_POWERDOWN && esc_next_powerdown < next) next = esc_next_powerdown;
            long long d = next - now;
            timeout = d < 0 ? 0 : d > 1000 ? 1000 : (int)d;
        }
        int r = poll(p, (nfds_t)n, timeout);
        if (r < 0 && errno != EINTR) return 1;
        now = now_ms();
        if (p[0].revents) {
            struct signalfd_siginfo si;
            while (read(sig_fd, &si, sizeof(si)) > 0) {}
            reap();
        }
        if (qmp_fd >= 0 && p[1].revents & (POLLIN | POLLHUP | POLLERR)) {
            if (qmp_read() < 0) { close(qmp_fd); qmp_fd = -1; qmp_out.len = 0; }
        }
        if (qmp_fd >= 0 && p[1].revents & POLLOUT) flush(qmp_fd, &qmp_out);
        if (serial_fd >= 0 && p[2].revents & (POLLIN | POLLHUP | POLLERR)) {
            ssize_t got = read(serial_fd, b, sizeof(b));
            if (got > 0) {
                console_append(b, (size_t)got);
                for (int i = 0; i < nclients; i++) {
                    if (clients[i].kind != C_CONSOLE) continue;
                    if (clients[i].out.len + (size_t)got > CLIENT_OUT_MAX) { clients[i].closing = 2; continue; }
                    buf_add(&clients[i].out, b, (size_t)got);
                }
            } else if (got == 0 || (errno != EAGAIN && errno != EINTR)) {
                close(serial_fd);
                serial_fd = -1;
            }
        }
        if (serial_fd >= 0 && p[2].revents & POLLOUT) flush(serial_fd, &serial_out);
        if (p[3].revents & POLLIN) {
            int fd;
            while ((fd = accept4(console_listen, NULL, NULL, SOCK_CLOEXEC)) >= 0) client_add(fd, C_CONSOLE);
        }
        if (p[4].revents & POLLIN) {
            int fd;
            while ((fd = accept4(control_listen, NULL, NULL, SOCK_CLOEXEC)) >= 0) client_add(fd, C_CONTROL);
        }
        /* Clients, newest last; iterate backwards so closing one does not skip another. */
        int polled = n - base;
        for (int i = polled - 1; i >= 0; i--) {
            if (i >= nclients) continue;
            struct client *c = &clients[i];
            short re = p[base + i].revents;
            int gone = 0;
            if (re & (POLLIN | POLLHUP | POLLERR)) {
                ssize_t got = read(c->fd, b, sizeof(b));
                if (got > 0) {
                    if (c->kind == C_CONSOLE) {
                        if (serial_fd >= 0) buf_add(&serial_out, b, (size_t)got);
                    } else {
                        buf_add(&c->in, b, (size_t)got);
                        char *nl;
                        while ((nl = memchr(c->in.data, '\n', c->in.len))) {
                            size_t len = (size_t)(nl - c->in.data) + 1;
                            char *line = strndup(c->in.data, len);
                            buf_drop(&c->in, len);
                            control_line(c, line);
                            free(line);
                        }
                        if (c->in.len > LINE_MAX_BYTES) gone = 1;
                    }
                } else if (got == 0 || (errno != EAGAIN && errno != EINTR)) {
                    gone = 1;
                }
            }
            if (!gone && c->out.len) flush(c->fd, &c->out);
            if (gone || c->closing == 2 || (c->closing == 1 && !c->out.len)) client_close(i);
        }
        if (serial_fd >= 0 && serial_out.len) flush(serial_fd, &serial_out);
        if (qmp_fd >= 0 && qmp_out.len) flush(qmp_fd, &qmp_out);
        esc_tick(now);
    }
}
