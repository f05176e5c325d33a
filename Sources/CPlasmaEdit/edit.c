#include "CPlasmaEdit.h"

#include <stdio.h>
#include <stdlib.h>
#include <editline/readline.h>

static plasma_complete_fn complete_fn;
static void *complete_ctx;

static char **attempted(const char *text, int start, int end) {
    (void)start; (void)end;
    rl_attempted_completion_over = 1;
    if (complete_fn == NULL) return NULL;
    return complete_fn(text, rl_line_buffer ? rl_line_buffer : "", complete_ctx);
}

void plasma_edit_init(const char *name, plasma_complete_fn fn, void *ctx) {
    /* C globals cannot be assigned from Swift 6: this is why this file exists. */
    rl_readline_name = name;
    complete_fn = fn;
    complete_ctx = ctx;
    rl_attempted_completion_function = attempted;
    rl_basic_word_break_characters = " \t\n\"'`@$><=;|&{(,+-*/%^~#[]";
    rl_completion_append_character = '\0';
    using_history();
}

char *plasma_edit_readline(const char *prompt) {
    return readline(prompt);
}

void plasma_edit_add_history(const char *line) { add_history(line); }

int plasma_edit_read_history(const char *path) { return read_history(path); }

int plasma_edit_write_history(const char *path, int max_lines) {
    int rc = write_history(path);
    if (rc == 0 && max_lines > 0) history_truncate_file(path, max_lines);
    return rc;
}
