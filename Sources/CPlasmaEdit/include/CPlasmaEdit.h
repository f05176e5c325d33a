#ifndef CPLASMAEDIT_H
#define CPLASMAEDIT_H

/// Completes `text` (the word before the cursor) given the whole line. Returns a malloc'd,
/// NULL-terminated array: the replacement for `text` (the common prefix) first, then every
/// candidate; or NULL for none. Each string is malloc'd too (libedit frees them).
typedef char **(*plasma_complete_fn)(const char *text, const char *line, void *ctx);

/// Sets libedit up: program name, word breaks suited to Lua (`.` and `:` stay in a word),
/// the completion callback, no space after a completion, no file-name fallback.
void plasma_edit_init(const char *name, plasma_complete_fn fn, void *ctx);

/// readline() with `prompt`; NULL at end of input. The result must be freed.
char *plasma_edit_readline(const char *prompt);

/// From any thread (a SIGINT handler): abandon the line being typed, as Ctrl-C does in a
/// shell. readline() then returns an empty line and plasma_edit_take_cancel() returns 1.
void plasma_edit_cancel_line(void);

/// 1 once after the line was abandoned by plasma_edit_cancel_line, else 0.
int plasma_edit_take_cancel(void);

void plasma_edit_add_history(const char *line);
int plasma_edit_read_history(const char *path);
int plasma_edit_write_history(const char *path, int max_lines);

#endif
