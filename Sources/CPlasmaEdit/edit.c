#include "CPlasmaEdit.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <termios.h>
#include <unistd.h>
#include <editline/readline.h>

static plasma_complete_fn complete_fn;
static void *complete_ctx;

static char **attempted(const char *text, int start, int end) {
    (void)start; (void)end;
    rl_attempted_completion_over = 1;
    if (complete_fn == NULL) return NULL;
    return complete_fn(text, rl_line_buffer ? rl_line_buffer : "", complete_ctx);
}

/* Ctrl-C while typing abandons the line. The key reader below, which libedit calls for every
   key, turns the terminal's ISIG off while a line is edited, so ^C arrives in order as a byte;
   libedit restores the terminal (ISIG on) when the line is done, so during a running call ^C is
   SIGINT again. A SIGINT that still arrives at the prompt (kill -INT) wakes wake_fd. Either way
   the reader feeds libedit ^U (kill the line) and a newline. */
static int wake_fd = -1;
static volatile int cancelled;
static int pending[2];
static int npending;

static int cancel_key(void) {
    cancelled = 1;
    fputs("^C", rl_outstream ? rl_outstream : stdout);
    pending[0] = '\n';
    npending = 1;
    return 0x15;
}

static int read_key(FILE *in) {
    if (npending > 0) {
        int c = pending[0];
        pending[0] = pending[1];
        npending--;
        return c;
    }
    int fd = fileno(in);
    struct termios t;
    if (tcgetattr(fd, &t) == 0 && (t.c_lflag & ISIG)) {
        t.c_lflag &= ~ISIG;
        tcsetattr(fd, TCSANOW, &t);
    }
    for (;;) {
        struct pollfd p[2] = { { .fd = fd, .events = POLLIN }, { .fd = wake_fd, .events = POLLIN } };
        int r = poll(p, wake_fd >= 0 ? 2 : 1, -1);
        if (r < 0) {
            if (errno == EINTR) continue;
            return EOF;
        }
        if (wake_fd >= 0 && (p[1].revents & POLLIN)) {
            uint64_t v;
            while (read(wake_fd, &v, sizeof(v)) > 0) {}
            return cancel_key();
        }
        if (p[0].revents) {
            unsigned char ch;
            ssize_t n = read(fd, &ch, 1);
            if (n == 1) return ch == 3 ? cancel_key() : ch;
            if (n < 0 && errno == EINTR) continue;
            return EOF;
        }
    }
}

void plasma_edit_cancel_line(void) {
    if (wake_fd >= 0) {
        uint64_t one = 1;
        ssize_t r = write(wake_fd, &one, sizeof(one));
        (void)r;
    }
}

int plasma_edit_take_cancel(void) {
    int c = cancelled;
    cancelled = 0;
    return c;
}

void plasma_edit_init(const char *name, plasma_complete_fn fn, void *ctx) {
    /* C globals cannot be assigned from Swift 6: this is why this file exists. */
    rl_readline_name = name;
    complete_fn = fn;
    complete_ctx = ctx;
    rl_attempted_completion_function = attempted;
    rl_basic_word_break_characters = " \t\n\"'`@$><=;|&{(,+-*/%^~#[]";
    rl_completion_append_character = '\0';
    wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    rl_getc_function = read_key;
    using_history();
}

char *plasma_edit_readline(const char *prompt) {
    char *line = readline(prompt);
    /* The line is done and a call may run next: ^C must be SIGINT again. libedit restores its
       idea of the cooked terminal, which can be the ISIG-off state read_key left if libedit
       re-read the terminal while a line was edited; so ISIG is put back here explicitly. */
    int fd = fileno(rl_instream ? rl_instream : stdin);
    struct termios t;
    if (isatty(fd) && tcgetattr(fd, &t) == 0 && !(t.c_lflag & ISIG)) {
        t.c_lflag |= ISIG;
        tcsetattr(fd, TCSANOW, &t);
    }
    return line;
}

void plasma_edit_add_history(const char *line) { add_history(line); }

int plasma_edit_read_history(const char *path) { return read_history(path); }

int plasma_edit_write_history(const char *path, int max_lines) {
    int rc = write_history(path);
    if (rc == 0 && max_lines > 0) history_truncate_file(path, max_lines);
    return rc;
}
