/*
 * podserver — the application container of one emulated Kubernetes pod.
 *
 * Every pod of the testbed (a network namespace behind a veth to its node) runs one of these.
 * It answers each request with who answered (pod, node) and what addresses it saw (client =
 * getpeername, server = getsockname of the accepted socket): that is how an experiment tells
 * which pod a load balancer picked and whether the client's source IP survived the path
 * (container-native) or was SNATed to a node (classic NodePort, externalTrafficPolicy=Cluster).
 *
 *   podserver --port PORT[/tcp|/udp] [--port ...] --pod NAME --node NODE [--bind ADDR]
 *             [--netns FILE] [--ready-fd N]
 *   podserver --launch
 *
 * --port: a port to serve, TCP unless it ends in /udp; repeat it for more ports (up to 32; a
 * Service's targetPorts, each TCP or UDP, all served by this one process). Every port is
 * bound to --bind (default 0.0.0.0).
 * --netns FILE: enter the network namespace FILE names (/proc/PID/ns/net, /run/netns/NAME)
 * before binding, so a pod's server needs no process already inside the pod to start it.
 *
 * TCP ports speak HTTP. Endpoints (method GET or HEAD; anything else gets 405):
 *   /healthz   200 "ok\n"                      — the load balancer's / kubelet's health check
 *              (liveness: readiness does not change it)
 *   /readyz    200 "ready\n", or 503 "not ready\n" while the pod is not ready (SIGUSR1, or
 *              terminating): the kubelet's readiness probe
 *   /fail      503 "failing\n", and from then on every request except /recover gets
 *              503 "failing\n" (health checks included): emulates a pod whose application
 *              has stopped working while its process and addresses stay up
 *   /recover   200 "recovered\n", back to normal
 *   any other  200 application/json, one line:
 *              {"pod":..,"node":..,"client":..,"client_port":..,"server":..,"server_port":..,
 *               "requests":N}  where N counts these JSON answers (TCP and UDP), this one
 *              included; with "forwarded_for":"..." added when the request carried
 *              X-Forwarded-For (an L7 load balancer's: the client's address; several header
 *              lines joined by ", "; left out when longer than 128 characters or not made
 *              of address characters)
 * Every response carries "X-Pod: NAME".
 *
 * UDP ports answer every datagram (whatever it holds) with one datagram carrying the same
 * JSON line, sent from the address the datagram was sent to (so conntrack's reverse tuple
 * matches on a multi-address pod). client/client_port are the datagram's source as seen here
 * (a SNATed client shows its node), server/server_port where it was sent to. One key more:
 * "echo", the datagram's first line when it is 1-64 characters of [A-Za-z0-9 ._:-], so a
 * client that reuses its socket can tell a late answer to an earlier datagram from the
 * answer to its latest. A failing pod (/fail) answers no datagram: the client times out.
 *
 * Readiness: SIGUSR1 makes /readyz answer 503 (not ready), SIGUSR2 makes it 200 again, with no
 * restart and no effect on anything else — the pod keeps serving whatever reaches it, as a
 * real pod does while the endpoints controller takes it out of its Services.
 *
 * Why C, epoll, one thread: up to 1000 pods share a 2-core machine, so a pod must cost little
 * memory when idle (no interpreter) and never be the bottleneck of a latency measurement.
 * Plain C11 + libc; a server is one thread and never forks.
 *
 * Launcher (--launch): starts the servers of many pods, so a cluster's thousand pods cost a
 * thousand fork()s of one small process rather than a thousand exec()s from the testbed.
 * It reads one line per pod on stdin, the flags of one server separated by spaces (as above,
 * without --ready-fd), forks a server per line and stays its parent until every server has
 * exited. It reports on stdout, one line each, in this order per server:
 *   started PID         the line was read and its server forked (one per line, in line order;
 *                       "error WHAT" instead when the fork failed)
 *   ready PID           the server listens (its --ready-fd is the launcher's stdout); it may
 *                       come before its "started" line, being written by the server itself
 *   exit PID CODE       it exited: CODE is its exit status, or -SIGNAL if a signal killed it
 * A server dies with its launcher (PR_SET_PDEATHSIG). SIGTERM/SIGINT to the launcher pass
 * SIGTERM to every server; it exits 0 once the last one has exited, and also when stdin is
 * closed and no server is left. A server's error messages go to the launcher's stderr, after
 * "podserver POD: ".
 *
 * HTTP subset: HTTP/1.0 and 1.1, keep-alive (1.1 default, "Connection: close" honoured; 1.0
 * only with "Connection: keep-alive"), pipelining, request heads up to 8 KiB (else 431 and
 * close), request bodies by Content-Length are read and discarded, chunked bodies get 501.
 * No Date header: it would cost a clock read and a format per response and nothing here uses it.
 *
 * Lifecycle: prints nothing on success; with --ready-fd N writes "ready\n" to fd N and closes
 * it once every port is bound. SIGTERM is a graceful termination, as the kubelet asks for it:
 * every listening socket (TCP and UDP) is closed at once, so new connections are refused;
 * idle keep-alive connections are closed; a request already received (or partly received) is
 * answered, with "Connection: close"; the process exits 0 when no connection is left (the
 * kubelet's SIGKILL after the grace period ends a client that never finishes its request).
 * SIGINT exits 0 at once. Connections idle for 60 s are closed.
 * Exit codes: 0 on signal, 1 on a startup error (bind, ...), 2 on a bad command line.
  */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define USAGE "podserver --port PORT[/udp] [--port ...] --pod NAME --node NODE [--bind ADDR] " \
              "[--netns FILE] [--ready-fd N] | podserver --launch"
#define PROG "podserver"
#include "cliargs.h"

enum {
    IN_CAP = 8192,        /* largest request head accepted; also the read buffer */
    OUT_CAP = 8192,       /* queued responses per connection before we stop parsing */
    MAX_RESPONSE = 2048,  /* room one response needs: headers + JSON with 253-char names */
    BODY_CAP = 1024,
    FORWARDED_MAX = 128,  /* X-Forwarded-For kept for the JSON: a few proxies' addresses */
    NAME_MAX_LEN = 253,   /* a Kubernetes object name is a DNS subdomain: <= 253 chars */
    ADDR_LEN = INET6_ADDRSTRLEN,
    BACKLOG = 4096,       /* the kernel caps this at net.core.somaxconn */
    MAX_EVENTS = 256,
    ACCEPT_BURST = 64,    /* accepts per wakeup, so a connect storm cannot starve reads */
    LINGER_READS = 8,
    MAX_PORTS = 32,       /* --port flags; a Service rarely has more than a handful */
    UDP_BURST = 64,       /* datagrams per wakeup, so a flood on one port cannot starve others */
    ECHO_MAX = 64,        /* longest first line of a datagram echoed in its answer */
};

static const int64_t IDLE_MS = 60000;  /* keep-alive connections idle this long are closed */
static const int64_t LINGER_MS = 2000; /* after our FIN, how long we wait for the client's */

/* ---- configuration ---------------------------------------------------------------------- */

struct port_spec {
    unsigned port;
    bool udp;
};

struct config {
    struct port_spec ports[MAX_PORTS];
    size_t nports;
    const char *pod;
    const char *node;
    const char *bind;
    const char *netns;     /* NULL: stay in the namespace we were started in */
    int ready_fd;          /* -1: none */
    bool ready_pid;        /* say "ready PID" (many servers share the launcher's pipe) */
};

/* Names go verbatim into JSON and an HTTP header, so allow only characters that need no
 * escaping in either: Kubernetes names are [a-z0-9.-]; '_' and capitals are harmless extras. */
static const char *parse_name(const char *flag, const char *text)
{
    size_t n = strlen(text);
    if (n == 0 || n > NAME_MAX_LEN)
        usage_error("%s: name must be 1-%d characters", flag, NAME_MAX_LEN);
    for (size_t i = 0; i < n; i++) {
        char ch = text[i];
        bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                  (ch >= '0' && ch <= '9') || ch == '-' || ch == '.' || ch == '_';
        if (!ok)
            usage_error("%s: '%s' has a character outside [A-Za-z0-9._-]", flag, text);
    }
    return text;
}

/* "8080", "8080/tcp" or "5353/udp"; the same port and protocol twice is a mistake. */
static void parse_port(struct config *cfg, const char *flag, const char *val)
{
    char num[8];
    const char *slash = strchr(val, '/');
    size_t nlen = slash ? (size_t)(slash - val) : strlen(val);
    bool udp = false;
    if (slash && !strcmp(slash + 1, "udp"))
        udp = true;
    else if (slash && strcmp(slash + 1, "tcp"))
        usage_error("%s: '%s' must be PORT, PORT/tcp or PORT/udp", flag, val);
    if (nlen >= sizeof num)
        usage_error("%s: '%s' is not a whole number in 1-65535", flag, val);
    memcpy(num, val, nlen);
    num[nlen] = '\0';
    unsigned port = (unsigned)parse_whole(flag, num, 1, 65535);
    for (size_t i = 0; i < cfg->nports; i++)
        if (cfg->ports[i].port == port && cfg->ports[i].udp == udp)
            usage_error("%s: %u/%s is given twice", flag, port, udp ? "udp" : "tcp");
    if (cfg->nports == MAX_PORTS)
        usage_error("%s: at most %d ports", flag, MAX_PORTS);
    cfg->ports[cfg->nports++] = (struct port_spec){ port, udp };
}

/* Accepts "--flag value" and "--flag=value". */
static struct config parse_args(int argc, char **argv)
{
    struct config cfg = { .nports = 0, .bind = "0.0.0.0", .ready_fd = -1 };
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (!strcmp(arg, "-h") || !strcmp(arg, "--help")) {
            puts("usage: " USAGE);
            exit(0);
        }
        if (strncmp(arg, "--", 2) != 0)
            usage_error("unexpected argument '%s'", arg);
        const char *eq = strchr(arg, '=');
        size_t flen = eq ? (size_t)(eq - arg) : strlen(arg);
        char flag[32];
        if (flen >= sizeof flag)
            usage_error("unknown flag '%s'", arg);
        memcpy(flag, arg, flen);
        flag[flen] = '\0';
        bool known = !strcmp(flag, "--port") || !strcmp(flag, "--pod") ||
                     !strcmp(flag, "--node") || !strcmp(flag, "--bind") ||
                     !strcmp(flag, "--netns") || !strcmp(flag, "--ready-fd");
        if (!known)
            usage_error("unknown flag '%s'", flag);
        const char *val = eq ? eq + 1 : (i + 1 < argc ? argv[++i] : NULL);
        if (!val)
            usage_error("%s needs a value", flag);

        if (!strcmp(flag, "--port"))
            parse_port(&cfg, flag, val);
        else if (!strcmp(flag, "--pod"))
            cfg.pod = parse_name(flag, val);
        else if (!strcmp(flag, "--node"))
            cfg.node = parse_name(flag, val);
        else if (!strcmp(flag, "--bind"))
            cfg.bind = val;
        else if (!strcmp(flag, "--netns"))
            cfg.netns = val;
        else {
            cfg.ready_fd = (int)parse_whole(flag, val, 0, INT_MAX);
            if (fcntl(cfg.ready_fd, F_GETFD) < 0)
                usage_error("--ready-fd: fd %d is not open", cfg.ready_fd);
        }
    }
    if (!cfg.nports)
        usage_error("--port is required");
    if (!cfg.pod)
        usage_error("--pod is required");
    if (!cfg.node)
        usage_error("--node is required");
    return cfg;
}

/* ---- server and connection state -------------------------------------------------------- */

/* epoll hands back data.ptr; the first member tells what it points at. */
enum kind { K_LISTEN, K_UDP, K_SIGNAL, K_CONN };
struct handle { enum kind kind; };

/* One bound port: a TCP listening socket or a UDP socket. */
struct listener {
    struct handle h;            /* first: epoll's data.ptr points here */
    int fd;                     /* -1 once closed (terminating) */
    struct port_spec spec;
};

enum { T_IDLE, T_LINGER, T_COUNT };

struct conn {
    struct handle h;            /* first: epoll's data.ptr points here */
    int fd;
    uint32_t events;            /* current epoll interest, to skip no-op epoll_ctl calls */
    int timer;                  /* which timer list the connection is on */
    int64_t deadline;           /* monotonic ms */
    struct conn *prev, *next;   /* timer list links */
    bool peer_eof;              /* client sent FIN: answer what is queued, then close */
    bool closing;               /* answer sent with "Connection: close": no more parsing */
    bool lingering;             /* our FIN is out; discarding input until the client's FIN */
    unsigned long long skip;    /* request body bytes still to read and discard */
    size_t in_len, out_len, out_off;
    char peer[ADDR_LEN], local[ADDR_LEN];
    unsigned peer_port, local_port;
    char in[IN_CAP];
    char out[OUT_CAP];
};

/* Both lists hold connections in deadline order because each list has one fixed timeout:
 * appending on activity keeps them sorted, so expiry only ever looks at the heads. */
struct timer_list {
    struct conn *head, *tail;
    int64_t timeout_ms;
};

struct server {
    struct config cfg;
    int epfd, sigfd;
    struct listener listeners[MAX_PORTS];   /* cfg.ports, in order */
    int spare_fd;               /* held open so EMFILE can be cleared by shedding a connection */
    struct handle signal_h;
    struct timer_list timers[T_COUNT];
    int64_t now;                /* monotonic ms, refreshed once per loop turn */
    unsigned long long requests;
    bool failing;               /* set by /fail, cleared by /recover */
    bool not_ready;             /* set by SIGUSR1, cleared by SIGUSR2: /readyz answers 503 */
    bool terminating;           /* SIGTERM: no listeners; answer what is in flight, then exit */
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void timer_remove(struct server *s, struct conn *c)
{
    struct timer_list *t = &s->timers[c->timer];
    if (c->prev) c->prev->next = c->next; else t->head = c->next;
    if (c->next) c->next->prev = c->prev; else t->tail = c->prev;
    c->prev = c->next = NULL;
}

static void timer_append(struct server *s, struct conn *c, int which)
{
    struct timer_list *t = &s->timers[which];
    c->timer = which;
    c->deadline = s->now + t->timeout_ms;
    c->prev = t->tail;
    c->next = NULL;
    if (t->tail) t->tail->next = c; else t->head = c;
    t->tail = c;
}

/* Activity pushes the idle deadline back; a lingering connection keeps its short deadline. */
static void touch(struct server *s, struct conn *c)
{
    if (c->timer != T_IDLE || c->deadline == s->now + IDLE_MS)
        return;
    timer_remove(s, c);
    timer_append(s, c, T_IDLE);
}

/* Milliseconds until the earliest deadline, -1 when no connection is open. */
static int next_timeout(const struct server *s)
{
    int64_t best = -1;
    for (int i = 0; i < T_COUNT; i++) {
        const struct conn *h = s->timers[i].head;
        if (h && (best < 0 || h->deadline < best))
            best = h->deadline;
    }
    if (best < 0)
        return -1;
    return best <= s->now ? 0 : (int)(best - s->now);
}

static void conn_close(struct server *s, struct conn *c)
{
    timer_remove(s, c);
    close(c->fd);               /* also drops it from the epoll set: the fd is never dup'ed */
    free(c);
}

static void expire(struct server *s)
{
    for (int i = 0; i < T_COUNT; i++)
        while (s->timers[i].head && s->timers[i].head->deadline <= s->now)
            conn_close(s, s->timers[i].head);
}

static void set_interest(struct server *s, struct conn *c, uint32_t events)
{
    if (events == c->events)
        return;
    struct epoll_event ev = { .events = events, .data.ptr = &c->h };
    epoll_ctl(s->epfd, EPOLL_CTL_MOD, c->fd, &ev);
    c->events = events;
}

/* ---- addresses -------------------------------------------------------------------------- */

/* IPv4-mapped IPv6 (a v4 client on a "::" socket) is shown as plain IPv4, so experiments
 * compare one spelling of each address. */
static void format_addr(const struct sockaddr_storage *ss, char *out, unsigned *port)
{
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
        inet_ntop(AF_INET, &a->sin_addr, out, ADDR_LEN);
        *port = ntohs(a->sin_port);
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
        if (IN6_IS_ADDR_V4MAPPED(&a->sin6_addr))
            inet_ntop(AF_INET, &a->sin6_addr.s6_addr[12], out, ADDR_LEN);
        else
            inet_ntop(AF_INET6, &a->sin6_addr, out, ADDR_LEN);
        *port = ntohs(a->sin6_port);
    } else {
        snprintf(out, ADDR_LEN, "unknown");
        *port = 0;
    }
}

/* ---- HTTP parsing ----------------------------------------------------------------------- */

enum parse_result { P_INCOMPLETE, P_OK, P_BAD, P_TOO_LARGE, P_VERSION };

struct request {
    int minor;                  /* HTTP/1.minor */
    bool get, head;
    bool keep_alive;
    bool chunked;
    unsigned long long content_length;
    const char *path;
    size_t path_len;
    char forwarded[FORWARDED_MAX + 1];  /* X-Forwarded-For, several header lines joined */
    size_t forwarded_len;
    bool forwarded_bad;         /* too long or a character JSON would need escaped: left out */
};

/* Offset just past the blank line ending the head, 0 if it has not arrived yet.
 * Bare LF line ends are accepted too (RFC 9112 2.2 allows it; netcat users send them). */
static size_t head_end(const char *buf, size_t len)
{
    const char *p = buf, *end = buf + len;
    while ((p = memchr(p, '\n', (size_t)(end - p))) != NULL) {
        p++;
        if (p < end && *p == '\n')
            return (size_t)(p + 1 - buf);
        if (p + 1 < end && p[0] == '\r' && p[1] == '\n')
            return (size_t)(p + 2 - buf);
    }
    return 0;
}

/* Clients may send a stray CRLF between requests (after a body); RFC 9112 2.2 says skip it. */
static size_t skip_blank_lines(const char *buf, size_t len)
{
    size_t i = 0;
    for (;;) {
        if (i < len && buf[i] == '\n')
            i++;
        else if (i + 1 < len && buf[i] == '\r' && buf[i + 1] == '\n')
            i += 2;
        else
            return i;
    }
}

static bool ieq(const char *a, size_t alen, const char *b)
{
    return alen == strlen(b) && strncasecmp(a, b, alen) == 0;
}

/* Does a comma-separated header value contain TOKEN (case-insensitive)? */
static bool has_token(const char *v, size_t len, const char *token)
{
    size_t i = 0;
    while (i < len) {
        while (i < len && (v[i] == ' ' || v[i] == '\t' || v[i] == ','))
            i++;
        size_t start = i;
        while (i < len && v[i] != ',')
            i++;
        size_t stop = i;
        while (stop > start && (v[stop - 1] == ' ' || v[stop - 1] == '\t'))
            stop--;
        if (stop > start && ieq(v + start, stop - start, token))
            return true;
    }
    return false;
}

static bool parse_content_length(const char *v, size_t len, unsigned long long *out)
{
    unsigned long long n = 0;
    if (len == 0)
        return false;
    for (size_t i = 0; i < len; i++) {
        if (v[i] < '0' || v[i] > '9' || n > (ULLONG_MAX - 9) / 10)
            return false;
        n = n * 10 + (unsigned long long)(v[i] - '0');
    }
    *out = n;
    return true;
}

/* The path of an origin-form ("/a?b") or absolute-form ("http://h/a") target, query dropped. */
static void target_path(const char *t, size_t len, struct request *rq)
{
    const char *p = t, *end = t + len;
    const char *scheme = memchr(t, ':', len);
    if (*t != '/' && scheme && end - scheme >= 3 && scheme[1] == '/' && scheme[2] == '/') {
        p = memchr(scheme + 3, '/', (size_t)(end - scheme - 3));
        if (!p) {
            rq->path = "/";
            rq->path_len = 1;
            return;
        }
    }
    const char *q = p;
    while (q < end && *q != '?' && *q != '#')
        q++;
    rq->path = p;
    rq->path_len = (size_t)(q - p);
}

static enum parse_result parse_request_line(const char *line, size_t len, struct request *rq)
{
    const char *sp1 = memchr(line, ' ', len);
    if (!sp1 || sp1 == line)
        return P_BAD;
    const char *rest = sp1 + 1, *end = line + len;
    const char *sp2 = memchr(rest, ' ', (size_t)(end - rest));
    if (!sp2 || sp2 == rest)
        return P_BAD;
    const char *ver = sp2 + 1;
    size_t vlen = (size_t)(end - ver);
    if (vlen != 8 || memcmp(ver, "HTTP/", 5) != 0 || ver[6] != '.' ||
        ver[5] < '0' || ver[5] > '9' || ver[7] < '0' || ver[7] > '9')
        return P_BAD;
    if (ver[5] != '1')
        return P_VERSION;
    rq->minor = ver[7] - '0';
    size_t mlen = (size_t)(sp1 - line);
    rq->get = mlen == 3 && !memcmp(line, "GET", 3);
    rq->head = mlen == 4 && !memcmp(line, "HEAD", 4);
    target_path(rest, (size_t)(sp2 - rest), rq);
    return P_OK;
}

/* Append one X-Forwarded-For header's value: lines join with ", " (RFC 9110 5.3). Only
 * address characters are kept verbatim in the JSON; anything else drops the field. */
static void add_forwarded(struct request *rq, const char *v, size_t vlen)
{
    size_t sep = rq->forwarded_len ? 2 : 0;
    if (rq->forwarded_len + sep + vlen > FORWARDED_MAX) {
        rq->forwarded_bad = true;
        return;
    }
    for (size_t i = 0; i < vlen; i++) {
        char ch = v[i];
        if (!isalnum((unsigned char)ch) && !strchr(".:,[]_- ", ch)) {
            rq->forwarded_bad = true;
            return;
        }
    }
    if (sep)
        memcpy(rq->forwarded + rq->forwarded_len, ", ", 2);
    memcpy(rq->forwarded + rq->forwarded_len + sep, v, vlen);
    rq->forwarded_len += sep + vlen;
    rq->forwarded[rq->forwarded_len] = '\0';
}

static enum parse_result parse_header(const char *line, size_t len, struct request *rq,
                                      bool *conn_close, bool *conn_keep)
{
    const char *colon = memchr(line, ':', len);
    if (!colon || colon == line)
        return P_BAD;
    size_t nlen = (size_t)(colon - line);
    const char *v = colon + 1, *end = line + len;
    while (v < end && (*v == ' ' || *v == '\t'))
        v++;
    while (end > v && (end[-1] == ' ' || end[-1] == '\t'))
        end--;
    size_t vlen = (size_t)(end - v);

    if (ieq(line, nlen, "connection")) {
        *conn_close |= has_token(v, vlen, "close");
        *conn_keep |= has_token(v, vlen, "keep-alive");
    } else if (ieq(line, nlen, "content-length")) {
        if (!parse_content_length(v, vlen, &rq->content_length))
            return P_BAD;
    } else if (ieq(line, nlen, "transfer-encoding")) {
        rq->chunked = true;
    } else if (ieq(line, nlen, "x-forwarded-for")) {
        add_forwarded(rq, v, vlen);
    }
    return P_OK;
}

/* Parse one request head at BUF. On P_OK, *used is its length (body not included). */
static enum parse_result parse_request(const char *buf, size_t len, struct request *rq,
                                       size_t *used)
{
    size_t total = head_end(buf, len);
    if (!total)
        return len >= IN_CAP ? P_TOO_LARGE : P_INCOMPLETE;
    memset(rq, 0, sizeof *rq);
    bool conn_close = false, conn_keep = false;
    const char *p = buf, *end = buf + total;
    bool first = true;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t llen = (size_t)(nl - p);
        if (llen && p[llen - 1] == '\r')
            llen--;
        if (llen == 0)
            break;              /* the blank line ending the head */
        enum parse_result r = first ? parse_request_line(p, llen, rq)
                                    : parse_header(p, llen, rq, &conn_close, &conn_keep);
        if (r != P_OK)
            return r;
        first = false;
        p = nl + 1;
    }
    rq->keep_alive = rq->minor >= 1 ? !conn_close : (conn_keep && !conn_close);
    *used = total;
    return P_OK;
}

/* ---- responses -------------------------------------------------------------------------- */

struct response {
    int status;
    const char *type;
    const char *body;
    size_t body_len;
    const char *extra;          /* whole header lines, "" if none */
};

static const char *reason(int status)
{
    switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 405: return "Method Not Allowed";
    case 431: return "Request Header Fields Too Large";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    case 505: return "HTTP Version Not Supported";
    default:  return "Unknown";
    }
}

static struct response text(int status, const char *body)
{
    return (struct response){ status, "text/plain", body, strlen(body), "" };
}

/* Queue a response. Callers make sure MAX_RESPONSE bytes are free; if a response ever does
 * not fit, the connection is closed rather than sending half of it. */
static void append_response(struct server *s, struct conn *c, const struct response *r,
                            bool head, bool keep, int minor)
{
    /* 1.1 keeps alive by default, 1.0 must be told; either way say so when closing. */
    const char *conn_hdr = !keep ? "Connection: close\r\n"
                           : minor == 0 ? "Connection: keep-alive\r\n" : "";
    char *dst = c->out + c->out_len;
    size_t room = OUT_CAP - c->out_len;
    int n = snprintf(dst, room,
                     "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                     "X-Pod: %s\r\n%s%s\r\n",
                     r->status, reason(r->status), r->type, r->body_len, s->cfg.pod,
                     r->extra, conn_hdr);
    size_t body = head ? 0 : r->body_len;
    if (n < 0 || (size_t)n + body > room) {
        c->closing = true;
        return;
    }
    memcpy(dst + n, r->body, body);
    c->out_len += (size_t)n + body;
    if (!keep)
        c->closing = true;
}

static bool path_is(const struct request *rq, const char *p)
{
    return rq->path_len == strlen(p) && !memcmp(rq->path, p, rq->path_len);
}

/* The JSON answer (HTTP and UDP alike) into BODY (BODY_CAP bytes); returns its length.
 * ECHO: NULL, or a string that needs no JSON escaping (UDP only).
 * FORWARDED: NULL, or the request's X-Forwarded-For (checked to need no escaping): the
 * client's address as a proxy in front (an L7 load balancer) passed it on. */
static size_t who_answered(struct server *s, const char *peer, unsigned peer_port,
                           const char *local, unsigned local_port, const char *echo,
                           const char *forwarded, char *body)
{
    s->requests++;
    int n = snprintf(body, BODY_CAP,
                     "{\"pod\":\"%s\",\"node\":\"%s\",\"client\":\"%s\",\"client_port\":%u,"
                     "\"server\":\"%s\",\"server_port\":%u,\"requests\":%llu%s%s%s%s%s%s}\n",
                     s->cfg.pod, s->cfg.node, peer, peer_port, local, local_port, s->requests,
                     echo ? ",\"echo\":\"" : "", echo ? echo : "", echo ? "\"" : "",
                     forwarded ? ",\"forwarded_for\":\"" : "", forwarded ? forwarded : "",
                     forwarded ? "\"" : "");
    return n < 0 ? 0 : (size_t)n < BODY_CAP ? (size_t)n : BODY_CAP - 1;
}

/* Decide the answer to a GET/HEAD. BODY is scratch space for the JSON answer. */
static struct response route(struct server *s, const struct conn *c, const struct request *rq,
                             char *body)
{
    if (path_is(rq, "/recover")) {
        s->failing = false;
        return text(200, "recovered\n");
    }
    if (path_is(rq, "/fail"))
        s->failing = true;
    if (s->failing)
        return text(503, "failing\n");
    if (path_is(rq, "/healthz"))
        return text(200, "ok\n");
    if (path_is(rq, "/readyz"))
        return s->not_ready || s->terminating ? text(503, "not ready\n") : text(200, "ready\n");

    const char *fwd = rq->forwarded_len && !rq->forwarded_bad ? rq->forwarded : NULL;
    size_t len = who_answered(s, c->peer, c->peer_port, c->local, c->local_port, NULL, fwd,
                              body);
    return (struct response){ 200, "application/json", body, len, "" };
}

static void serve(struct server *s, struct conn *c, const struct request *rq)
{
    char body[BODY_CAP];
    struct response r;
    bool keep = rq->keep_alive && !s->terminating;   /* terminating: this answer is the last */
    c->skip = rq->content_length;
    if (rq->chunked) {
        /* no pod here takes uploads; closing is simpler than decoding chunks to skip them */
        r = text(501, "chunked request bodies are not supported\n");
        keep = false;
    } else if (!rq->get && !rq->head) {
        r = text(405, "method not allowed\n");
        r.extra = "Allow: GET, HEAD\r\n";
    } else {
        r = route(s, c, rq, body);
    }
    append_response(s, c, &r, rq->head, keep, rq->minor);
}

static void reply_error(struct server *s, struct conn *c, enum parse_result pr)
{
    struct response r = pr == P_TOO_LARGE ? text(431, "request head larger than 8 KiB\n")
                        : pr == P_VERSION ? text(505, "only HTTP/1.0 and HTTP/1.1\n")
                        : text(400, "bad request\n");
    append_response(s, c, &r, false, false, 1);
}

/* ---- connection I/O --------------------------------------------------------------------- */

/* Turn buffered input into queued responses. Returns true when it stopped only because the
 * output queue is full (so it must run again once the queue drains). */
static bool process_input(struct server *s, struct conn *c)
{
    size_t pos = 0;
    bool blocked = false;
    while (!c->closing) {
        size_t avail = c->in_len - pos;
        if (c->skip) {
            size_t n = c->skip < avail ? (size_t)c->skip : avail;
            pos += n;
            c->skip -= n;
            if (c->skip)
                break;
            avail -= n;
        }
        size_t blank = skip_blank_lines(c->in + pos, avail);
        pos += blank;
        avail -= blank;
        if (!avail)
            break;
        if (OUT_CAP - c->out_len < MAX_RESPONSE) {
            blocked = true;
            break;
        }
        struct request rq;
        size_t used = 0;
        enum parse_result pr = parse_request(c->in + pos, avail, &rq, &used);
        if (pr == P_INCOMPLETE)
            break;
        if (pr != P_OK) {
            reply_error(s, c, pr);
            break;
        }
        pos += used;
        serve(s, c, &rq);
    }
    if (c->closing)
        pos = c->in_len;        /* nothing after a closing answer will be read */
    memmove(c->in, c->in + pos, c->in_len - pos);
    c->in_len -= pos;
    return blocked;
}

/* Returns false if the connection broke. Leftover output waits for EPOLLOUT. */
static bool flush_output(struct server *s, struct conn *c)
{
    while (c->out_off < c->out_len) {
        ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (n > 0) {
            c->out_off += (size_t)n;
            touch(s, c);
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            return true;
        } else {
            return false;
        }
    }
    c->out_off = c->out_len = 0;
    return true;
}

/* Returns false if the connection broke. */
static bool read_input(struct server *s, struct conn *c)
{
    if (c->in_len == IN_CAP)
        return true;            /* recv of 0 bytes would look like EOF */
    ssize_t n = recv(c->fd, c->in + c->in_len, IN_CAP - c->in_len, 0);
    if (n > 0) {
        c->in_len += (size_t)n;
        touch(s, c);
    } else if (n == 0) {
        c->peer_eof = true;
    } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        return false;
    }
    return true;
}

/* Close our side only after the answer is out, then wait for the client's FIN: closing with
 * unread input would make the kernel send RST, which can destroy the answer in flight. */
static void start_linger(struct server *s, struct conn *c)
{
    shutdown(c->fd, SHUT_WR);
    c->lingering = true;
    timer_remove(s, c);
    timer_append(s, c, T_LINGER);
    set_interest(s, c, EPOLLIN);
}

static void linger_read(struct server *s, struct conn *c)
{
    for (int i = 0; i < LINGER_READS; i++) {
        ssize_t n = recv(c->fd, c->in, IN_CAP, 0);
        if (n > 0)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            return;
        conn_close(s, c);       /* the client's FIN, or an error */
        return;
    }
}

/* Parse, answer and send until nothing more can be done now; then pick what to wait for. */
static void pump(struct server *s, struct conn *c)
{
    for (;;) {
        bool blocked = process_input(s, c);
        if (!flush_output(s, c)) {
            conn_close(s, c);
            return;
        }
        if (c->out_len || !blocked)
            break;
    }
    if (c->out_len) {
        set_interest(s, c, EPOLLOUT);
    } else if (c->peer_eof) {
        conn_close(s, c);       /* client is gone and everything it asked for is answered */
    } else if (c->closing) {
        start_linger(s, c);
    } else if (s->terminating && !c->in_len && !c->skip) {
        conn_close(s, c);       /* answered everything it asked before SIGTERM: idle now */
    } else {
        set_interest(s, c, EPOLLIN);
    }
}

static void on_conn_event(struct server *s, struct conn *c, uint32_t events)
{
    if (c->lingering) {
        linger_read(s, c);
        return;
    }
    if ((events & (EPOLLIN | EPOLLHUP | EPOLLERR)) && (c->events & EPOLLIN)) {
        if (!read_input(s, c)) {
            conn_close(s, c);
            return;
        }
    }
    pump(s, c);
}

/* ---- accepting -------------------------------------------------------------------------- */

static void conn_open(struct server *s, int fd, const struct sockaddr_storage *peer)
{
    struct conn *c = malloc(sizeof *c);
    if (!c) {
        close(fd);
        return;
    }
    memset(c, 0, offsetof(struct conn, in));   /* the buffers need no zeroing */
    c->h.kind = K_CONN;
    c->fd = fd;
    c->events = EPOLLIN;

    /* Responses go out in one send; without this a pipelined second answer could wait for
     * the client's delayed ACK (Nagle), adding ~40 ms to a latency sample. */
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);

    /* The addresses never change for a connection: look them up once, not per request. */
    struct sockaddr_storage local;
    socklen_t len = sizeof local;
    if (getsockname(fd, (struct sockaddr *)&local, &len) < 0)
        local.ss_family = AF_UNSPEC;
    format_addr(peer, c->peer, &c->peer_port);
    format_addr(&local, c->local, &c->local_port);

    struct epoll_event ev = { .events = EPOLLIN, .data.ptr = &c->h };
    if (epoll_ctl(s->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        close(fd);
        free(c);
        return;
    }
    timer_append(s, c, T_IDLE);
}

/* Out of descriptors: the pending connection would keep the (level-triggered) listening
 * socket readable forever. Free the spare descriptor, accept and drop one, take it back. */
static void shed_one(struct server *s, int lfd)
{
    if (s->spare_fd < 0)
        return;
    close(s->spare_fd);
    int fd = accept(lfd, NULL, NULL);
    if (fd >= 0)
        close(fd);
    s->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
}

static void on_listen(struct server *s, struct listener *l)
{
    for (int i = 0; i < ACCEPT_BURST; i++) {
        struct sockaddr_storage peer;
        socklen_t len = sizeof peer;
        int fd = accept4(l->fd, (struct sockaddr *)&peer, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0) {
            conn_open(s, fd, &peer);
            continue;
        }
        if (errno == EINTR || errno == ECONNABORTED)
            continue;
        if (errno == EMFILE || errno == ENFILE)
            shed_one(s, l->fd);
        return;                 /* EAGAIN: drained; anything else: try again next wakeup */
    }
}

/* ---- UDP -------------------------------------------------------------------------------- */

/* Where a datagram was sent to, from its IP_PKTINFO / IPV6_PKTINFO; and the same control
 * message made ready to send the answer from that address. */
struct udp_dst {
    struct sockaddr_storage addr;
    union {                     /* aligned for cmsghdr */
        char buf[CMSG_SPACE(sizeof(struct in6_pktinfo))];
        struct cmsghdr align;
    } reply;
    size_t reply_len;
};

static void udp_dst_from(struct msghdr *msg, unsigned port, struct udp_dst *d)
{
    memset(d, 0, sizeof *d);
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(msg); cm; cm = CMSG_NXTHDR(msg, cm)) {
        struct cmsghdr *out = (struct cmsghdr *)d->reply.buf;
        if (cm->cmsg_level == IPPROTO_IP && cm->cmsg_type == IP_PKTINFO) {
            struct in_pktinfo pi;
            memcpy(&pi, CMSG_DATA(cm), sizeof pi);
            struct sockaddr_in *a = (struct sockaddr_in *)&d->addr;
            a->sin_family = AF_INET;
            a->sin_addr = pi.ipi_addr;
            a->sin_port = htons((uint16_t)port);
            /* answer from the address asked; the route picks the interface */
            struct in_pktinfo back = { .ipi_ifindex = 0, .ipi_spec_dst = pi.ipi_addr };
            out->cmsg_level = IPPROTO_IP;
            out->cmsg_type = IP_PKTINFO;
            out->cmsg_len = CMSG_LEN(sizeof back);
            memcpy(CMSG_DATA(out), &back, sizeof back);
            d->reply_len = CMSG_SPACE(sizeof back);
        } else if (cm->cmsg_level == IPPROTO_IPV6 && cm->cmsg_type == IPV6_PKTINFO) {
            struct in6_pktinfo pi;
            memcpy(&pi, CMSG_DATA(cm), sizeof pi);
            struct sockaddr_in6 *a = (struct sockaddr_in6 *)&d->addr;
            a->sin6_family = AF_INET6;
            a->sin6_addr = pi.ipi6_addr;
            a->sin6_port = htons((uint16_t)port);
            out->cmsg_level = IPPROTO_IPV6;
            out->cmsg_type = IPV6_PKTINFO;
            out->cmsg_len = CMSG_LEN(sizeof pi);
            memcpy(CMSG_DATA(out), &pi, sizeof pi);   /* same address, same interface */
            d->reply_len = CMSG_SPACE(sizeof pi);
        }
    }
}

/* The datagram's first line if it can go into JSON as it is (see the header), else NULL.
 * OUT has room for ECHO_MAX + 1. */
static const char *udp_echo(const char *in, size_t len, char *out)
{
    size_t n = 0;
    while (n < len && in[n] != '\n' && in[n] != '\r')
        n++;
    if (n == 0 || n > ECHO_MAX)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        char ch = in[i];
        bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                  (ch >= '0' && ch <= '9') || ch == ' ' || ch == '.' || ch == '_' ||
                  ch == ':' || ch == '-';
        if (!ok)
            return NULL;
    }
    memcpy(out, in, n);
    out[n] = '\0';
    return out;
}

/* Answer each queued datagram with the JSON line. A send that would block drops the answer:
 * UDP promises nothing more, and a pod must not stall its other ports for one client. */
static void on_udp(struct server *s, struct listener *l)
{
    for (int i = 0; i < UDP_BURST; i++) {
        char in[512], body[BODY_CAP], echo[ECHO_MAX + 1];
        char cbuf[CMSG_SPACE(sizeof(struct in6_pktinfo)) + CMSG_SPACE(sizeof(struct in_pktinfo))]
            __attribute__((aligned(8)));
        struct sockaddr_storage peer;
        struct iovec iov = { .iov_base = in, .iov_len = sizeof in };
        struct msghdr msg = { .msg_name = &peer, .msg_namelen = sizeof peer, .msg_iov = &iov,
                              .msg_iovlen = 1, .msg_control = cbuf,
                              .msg_controllen = sizeof cbuf };
        ssize_t n = recvmsg(l->fd, &msg, MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return;             /* EAGAIN: drained; anything else: try again next wakeup */
        }
        if (s->failing)
            continue;           /* a broken application: the client times out */
        struct udp_dst dst;
        udp_dst_from(&msg, l->spec.port, &dst);
        char peer_s[ADDR_LEN], local_s[ADDR_LEN];
        unsigned peer_port, local_port;
        format_addr(&peer, peer_s, &peer_port);
        format_addr(&dst.addr, local_s, &local_port);
        if (!dst.reply_len)
            local_port = l->spec.port;
        size_t len = who_answered(s, peer_s, peer_port, local_s, local_port,
                                  udp_echo(in, (size_t)n, echo), NULL, body);
        struct iovec out = { .iov_base = body, .iov_len = len };
        struct msghdr reply = { .msg_name = &peer, .msg_namelen = msg.msg_namelen,
                                .msg_iov = &out, .msg_iovlen = 1,
                                .msg_control = dst.reply_len ? dst.reply.buf : NULL,
                                .msg_controllen = dst.reply_len };
        while (sendmsg(l->fd, &reply, MSG_DONTWAIT | MSG_NOSIGNAL) < 0 && errno == EINTR)
            ;
    }
}

/* ---- startup ---------------------------------------------------------------------------- */

/* Set in a launched server: its messages share the launcher's stderr with every other pod's. */
static const char *launched_pod;

static void die(const char *what)
{
    if (launched_pod)
        fprintf(stderr, "podserver %s: %s: %s\n", launched_pod, what, strerror(errno));
    else
        fprintf(stderr, "podserver: %s: %s\n", what, strerror(errno));
    exit(1);
}

/* setns() before the listening socket exists: a socket belongs to the namespace it is made in. */
static void enter_netns(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || setns(fd, CLONE_NEWNET) < 0) {
        char what[PATH_MAX + 16];
        snprintf(what, sizeof what, "--netns %s", path);
        die(what);
    }
    close(fd);
}

/* A pod with many keep-alive clients needs more than the usual soft limit of 1024 fds. */
static void raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

/* SIGTERM/SIGINT/SIGUSR1/SIGUSR2 arrive through the event loop (signalfd), so no handler runs
 * in the middle of a buffer update. The dispositions are reset first: a shell that starts a
 * background job sets SIGINT to "ignore", and an ignored signal never reaches a signalfd. */
static int setup_signals(void)
{
    static const int handled[] = { SIGTERM, SIGINT, SIGUSR1, SIGUSR2 };
    signal(SIGPIPE, SIG_IGN);   /* a vanished client or launcher must not kill the pod */
    sigset_t set;
    sigemptyset(&set);
    for (size_t i = 0; i < sizeof handled / sizeof handled[0]; i++) {
        signal(handled[i], SIG_DFL);
        sigaddset(&set, handled[i]);
    }
    if (sigprocmask(SIG_BLOCK, &set, NULL) < 0)
        die("sigprocmask");
    int fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    if (fd < 0)
        die("signalfd");
    return fd;
}

static int open_listener(const struct config *cfg, struct port_spec spec)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    socklen_t len;
    struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, cfg->bind, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)spec.port);
        len = sizeof *a4;
    } else if (inet_pton(AF_INET6, cfg->bind, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)spec.port);
        len = sizeof *a6;
    } else {
        usage_error("--bind: '%s' is not an IPv4 or IPv6 address", cfg->bind);
    }

    int fd = socket(ss.ss_family, (spec.udp ? SOCK_DGRAM : SOCK_STREAM) | SOCK_NONBLOCK |
                    SOCK_CLOEXEC, 0);
    if (fd < 0)
        die("socket");
    int one = 1;
    /* a restarted pod must not wait for the last run's TIME_WAIT connections to expire */
    if (!spec.udp && setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0)
        die("SO_REUSEADDR");
    /* a wildcard-bound UDP socket learns where each datagram was sent only from PKTINFO */
    if (spec.udp && (ss.ss_family == AF_INET
                     ? setsockopt(fd, IPPROTO_IP, IP_PKTINFO, &one, sizeof one)
                     : setsockopt(fd, IPPROTO_IPV6, IPV6_RECVPKTINFO, &one, sizeof one)) < 0)
        die("PKTINFO");
    if (spec.udp && ss.ss_family == AF_INET6)
        (void)setsockopt(fd, IPPROTO_IP, IP_PKTINFO, &one, sizeof one);   /* v4 on a "::" */
    if (bind(fd, (struct sockaddr *)&ss, len) < 0) {
        char what[96];
        snprintf(what, sizeof what, "bind %s port %u%s", cfg->bind, spec.port,
                 spec.udp ? "/udp" : "");
        die(what);
    }
    if (!spec.udp && listen(fd, BACKLOG) < 0)
        die("listen");
    return fd;
}

static void epoll_add(struct server *s, int fd, struct handle *h)
{
    struct epoll_event ev = { .events = EPOLLIN, .data.ptr = h };
    if (epoll_ctl(s->epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
        die("epoll_ctl");
}

/* Tell the launcher we listen, so it need not poll the port. One write of a few bytes is
 * atomic on a pipe, so servers sharing the launcher's pipe never mix their lines. */
static void signal_ready(int fd, bool with_pid)
{
    char msg[32];
    int len = with_pid ? snprintf(msg, sizeof msg, "ready %ld\n", (long)getpid())
                       : snprintf(msg, sizeof msg, "ready\n");
    ssize_t n;
    do
        n = write(fd, msg, (size_t)len);
    while (n < 0 && errno == EINTR);
    if (n != len)
        die("--ready-fd write");
    if (fd > STDERR_FILENO) {
        close(fd);
        return;
    }
    /* a standard descriptor is pointed at /dev/null, not closed: a later socket must not
     * take its number and receive what is meant for it */
    int null = open("/dev/null", O_WRONLY | O_CLOEXEC);
    if (null >= 0) {
        dup2(null, fd);
        close(null);
    }
}

static void server_init(struct server *s, const struct config *cfg)
{
    memset(s, 0, sizeof *s);
    s->cfg = *cfg;
    s->signal_h.kind = K_SIGNAL;
    s->timers[T_IDLE].timeout_ms = IDLE_MS;
    s->timers[T_LINGER].timeout_ms = LINGER_MS;
    raise_fd_limit();
    s->sigfd = setup_signals();
    if (cfg->netns)
        enter_netns(cfg->netns);
    s->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    s->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (s->epfd < 0)
        die("epoll_create1");
    for (size_t i = 0; i < cfg->nports; i++) {
        struct listener *l = &s->listeners[i];
        l->h.kind = cfg->ports[i].udp ? K_UDP : K_LISTEN;
        l->spec = cfg->ports[i];
        l->fd = open_listener(cfg, l->spec);
        epoll_add(s, l->fd, &l->h);
    }
    epoll_add(s, s->sigfd, &s->signal_h);
    s->now = now_ms();
}

/* ---- main loop -------------------------------------------------------------------------- */

static bool no_connections(const struct server *s)
{
    for (int i = 0; i < T_COUNT; i++)
        if (s->timers[i].head)
            return false;
    return true;
}

/* SIGTERM: what a server does when the kubelet stops its pod. Closing the listening sockets
 * makes new connections fail at once (RST, or ICMP port unreachable for UDP) rather than
 * wait. A connection with nothing of a request read is closed now; one with a request in
 * it — already in the socket, partly read, or its body being skipped — gets its answer with
 * "Connection: close" (serve() and pump() see s->terminating). Lingering ones end as usual. */
static void terminate_gracefully(struct server *s)
{
    s->terminating = true;
    for (size_t i = 0; i < s->cfg.nports; i++) {
        if (s->listeners[i].fd >= 0)
            close(s->listeners[i].fd);   /* also leaves the epoll set */
        s->listeners[i].fd = -1;
    }
    struct conn *c = s->timers[T_IDLE].head, *next;
    for (; c; c = next) {
        next = c->next;         /* c may be closed (freed) below, or moved to T_LINGER */
        if (!read_input(s, c))
            conn_close(s, c);
        else if (!c->in_len && !c->skip && !c->out_len)
            conn_close(s, c);   /* idle keep-alive: nothing was asked */
        else
            pump(s, c);
    }
}

/* Returns true when the server must exit now. */
static bool on_server_signals(struct server *s)
{
    struct signalfd_siginfo si;
    while (read(s->sigfd, &si, sizeof si) == (ssize_t)sizeof si) {
        if (si.ssi_signo == SIGINT)
            return true;        /* nothing to save, just go */
        if (si.ssi_signo == SIGUSR1)
            s->not_ready = true;
        else if (si.ssi_signo == SIGUSR2)
            s->not_ready = false;
        else if (si.ssi_signo == SIGTERM && !s->terminating)
            terminate_gracefully(s);
    }
    return false;
}

static void run(struct server *s)
{
    struct epoll_event events[MAX_EVENTS];
    while (!(s->terminating && no_connections(s))) {
        int n = epoll_wait(s->epfd, events, MAX_EVENTS, next_timeout(s));
        if (n < 0 && errno != EINTR)
            die("epoll_wait");
        s->now = now_ms();
        for (int i = 0; i < n; i++) {
            struct handle *h = events[i].data.ptr;
            if (h->kind == K_SIGNAL) {
                if (on_server_signals(s))
                    return;
                break;          /* the batch may name listeners or connections just closed */
            }
            if (h->kind == K_LISTEN)
                on_listen(s, (struct listener *)h);
            else if (h->kind == K_UDP)
                on_udp(s, (struct listener *)h);
            else
                on_conn_event(s, (struct conn *)h, events[i].events);
        }
        expire(s);
    }
}

static int serve_pod(const struct config *cfg)
{
    static struct server srv;   /* one per process; static keeps it off the stack */
    server_init(&srv, cfg);
    if (cfg->ready_fd >= 0)
        signal_ready(cfg->ready_fd, cfg->ready_pid);
    run(&srv);
    return 0;
}

/* ---- launcher --------------------------------------------------------------------------- */

enum {
    LINE_CAP = 4096,            /* one pod's flags; the testbed's lines are under 200 bytes */
    MAX_WORDS = 2 * MAX_PORTS + 16,
};

struct launcher {
    int sigfd;
    pid_t *kids;                /* servers not yet reaped */
    size_t nkids, cap;
    bool stopping;              /* SIGTERM/SIGINT: servers told to stop, no more starts */
    bool eof;                   /* stdin closed: no more starts */
};

/* One report line. The testbed may be gone (EPIPE): the servers still run and are reaped. */
static void report(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void report(const char *fmt, ...)
{
    char line[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    size_t len = (size_t)n < sizeof line ? (size_t)n : sizeof line - 1;
    ssize_t w;
    do
        w = write(STDOUT_FILENO, line, len);
    while (w < 0 && errno == EINTR);
}

/* In the forked child: become the server LINE's words describe, inside its namespace. */
static void become_server(struct launcher *l, pid_t launcher_pid, int argc, char **argv)
{
    /* die with the launcher: nobody else would reap this server or tell the testbed */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != launcher_pid)
        _exit(1);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    signal(SIGCHLD, SIG_DFL);
    close(l->sigfd);
    int null = open("/dev/null", O_RDONLY);
    if (null >= 0) {
        dup2(null, STDIN_FILENO);   /* the launcher's stdin must see EOF when the testbed closes it */
        if (null > STDERR_FILENO)
            close(null);
    }
    struct config cfg = parse_args(argc, argv);
    launched_pod = cfg.pod;
    cfg.ready_fd = STDOUT_FILENO;
    cfg.ready_pid = true;
    exit(serve_pod(&cfg));
}

static void launch(struct launcher *l, char *line)
{
    char *argv[MAX_WORDS + 1];
    int argc = 0;
    argv[argc++] = "podserver";
    for (char *save = NULL, *w = strtok_r(line, " \t", &save); w;
         w = strtok_r(NULL, " \t", &save)) {
        if (argc == MAX_WORDS) {
            report("error more than %d words on a line\n", MAX_WORDS - 1);
            return;
        }
        argv[argc++] = w;
    }
    argv[argc] = NULL;
    if (l->nkids == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 256;
        pid_t *kids = realloc(l->kids, cap * sizeof *kids);
        if (!kids) {
            report("error out of memory\n");
            return;
        }
        l->kids = kids;
        l->cap = cap;
    }
    pid_t me = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        report("error fork: %s\n", strerror(errno));
        return;
    }
    if (pid == 0)
        become_server(l, me, argc, argv);
    l->kids[l->nkids++] = pid;
    report("started %ld\n", (long)pid);
}

static void reap(struct launcher *l)
{
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        int code = WIFSIGNALED(status) ? -WTERMSIG(status) : WEXITSTATUS(status);
        for (size_t i = 0; i < l->nkids; i++) {
            if (l->kids[i] == pid) {
                l->kids[i] = l->kids[--l->nkids];
                break;
            }
        }
        report("exit %ld %d\n", (long)pid, code);
    }
}

static void on_signals(struct launcher *l)
{
    struct signalfd_siginfo si;
    while (read(l->sigfd, &si, sizeof si) == (ssize_t)sizeof si) {
        if (si.ssi_signo == SIGCHLD) {
            reap(l);
        } else if (!l->stopping) {
            l->stopping = true;
            for (size_t i = 0; i < l->nkids; i++)
                kill(l->kids[i], SIGTERM);
        }
    }
}

/* Feed complete lines of stdin to launch(); a line longer than LINE_CAP is reported and
 * skipped up to its end, so the next line starts cleanly. */
static void on_input(struct launcher *l, char *buf, size_t *len, bool *skipping)
{
    ssize_t n = read(STDIN_FILENO, buf + *len, LINE_CAP - *len);
    if (n < 0 && errno == EINTR)
        return;
    if (n <= 0) {
        l->eof = true;
        return;
    }
    *len += (size_t)n;
    char *start = buf, *nl;
    while ((nl = memchr(start, '\n', (size_t)(buf + *len - start))) != NULL) {
        *nl = '\0';
        if (!*skipping && !l->stopping)
            launch(l, start);
        *skipping = false;
        start = nl + 1;
    }
    *len = (size_t)(buf + *len - start);
    memmove(buf, start, *len);
    if (*len == LINE_CAP) {
        report("error line longer than %d bytes\n", LINE_CAP);
        *skipping = true;
        *len = 0;
    }
}

static int launcher(void)
{
    signal(SIGPIPE, SIG_IGN);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    if (sigprocmask(SIG_BLOCK, &set, NULL) < 0)
        die("sigprocmask");
    struct launcher l = { .sigfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC) };
    if (l.sigfd < 0)
        die("signalfd");
    static char buf[LINE_CAP];
    size_t len = 0;
    bool skipping = false;
    while (!((l.eof || l.stopping) && l.nkids == 0)) {
        struct pollfd fds[2] = {
            { .fd = l.sigfd, .events = POLLIN },
            { .fd = l.eof || l.stopping ? -1 : STDIN_FILENO, .events = POLLIN },
        };
        if (poll(fds, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            die("poll");
        }
        if (fds[0].revents)
            on_signals(&l);
        if (fds[1].revents)
            on_input(&l, buf, &len, &skipping);
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 2 && !strcmp(argv[1], "--launch"))
        return launcher();
    struct config cfg = parse_args(argc, argv);
    return serve_pod(&cfg);
}
