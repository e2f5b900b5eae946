/* Command-line helpers shared by the testbed's small C programs (podserver, httpprobe).
 *
 * Include after defining PROG (the program's name) and USAGE (its one-line usage). Every bad
 * flag becomes one line on stderr and exit status 2: launchers show that line to the user.
 */
#ifndef CNLB_CLIARGS_H
#define CNLB_CLIARGS_H

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

static void usage_error(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));

static void usage_error(const char *fmt, ...)
{
    /* one write: launched servers share their launcher's stderr, and a line written in
     * pieces could be cut by another server's line */
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, PROG ": %s (usage: " USAGE ")\n", msg);
    exit(2);
}

/* A whole number in lo..hi, or a usage error naming the flag. */
static long long parse_whole(const char *flag, const char *text, long long lo, long long hi)
{
    char *end;
    errno = 0;
    long long v = strtoll(text, &end, 10);
    if (errno || end == text || *end || v < lo || v > hi)
        usage_error("%s: '%s' is not a whole number in %lld-%lld", flag, text, lo, hi);
    return v;
}

#endif
