/*
 * The C side of the plugin logger (see src/net/logger.rs).
 *
 * `ncclDebugLogger_t` is C-variadic:
 *   void (*)(ncclDebugLogLevel level, unsigned long flags, const char* file, int line,
 *            const char* fmt, ...);
 * Rust cannot define such a function on stable, so this shim formats the message with
 * vsnprintf into a stack buffer (no heap allocation) and hands the finished string to Rust,
 * which forwards it to `tracing`. Messages longer than the buffer are truncated and flagged.
 *
 * It is called from any plugin thread, concurrently; it keeps no state.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>

/* Implemented in Rust (src/net/logger.rs). */
int tcpx_rs_net_log_enabled(int level);
void tcpx_rs_net_log_sink(int level, unsigned long flags, const char* file, int line,
                          const char* msg, size_t len, int truncated);

void tcpx_rs_net_logger(int level, unsigned long flags, const char* file, int line,
                        const char* fmt, ...);

#define TCPX_RS_LOG_BUF 2048

void tcpx_rs_net_logger(int level, unsigned long flags, const char* file, int line,
                        const char* fmt, ...) {
  char buf[TCPX_RS_LOG_BUF];
  va_list ap;
  int n;
  size_t len;

  if (!tcpx_rs_net_log_enabled(level)) return;
  if (fmt == NULL) {
    static const char null_fmt[] = "(NULL format string)";
    tcpx_rs_net_log_sink(level, flags, file, line, null_fmt, sizeof null_fmt - 1, 0);
    return;
  }
  va_start(ap, fmt);
  n = vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  if (n < 0) {
    static const char bad_fmt[] = "(message could not be formatted)";
    tcpx_rs_net_log_sink(level, flags, file, line, bad_fmt, sizeof bad_fmt - 1, 0);
    return;
  }
  len = (size_t)n < sizeof buf ? (size_t)n : sizeof buf - 1;
  tcpx_rs_net_log_sink(level, flags, file, line, buf, len, (size_t)n >= sizeof buf);
}
