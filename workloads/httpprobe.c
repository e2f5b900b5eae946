/*
 * httpprobe — an HTTP client that measures every request on its own.
 *
 * curl costs a process per request and wrk reports only aggregates; experiments need, for each
 * request: how long the TCP connect took, how long until the whole response was in, which pod
 * answered, which client address the pod saw (was the source NATed?), and the TTL of the
 * SYN-ACK (routed hops on the way back = 64 - TTL, since Linux sends with TTL 64).
 *
 *   httpprobe --url http://IP[:PORT][/PATH] (--requests N | --duration S | both)
 *             [--rate R] [--timeout-ms T] [--keepalive] [--out FILE]
 *   httpprobe --url udp://IP:PORT ...the same flags
 *
 *   --requests N    stop after N requests
 *   --duration S    stop starting requests S seconds after the first one (float); with both,
 *                   whichever comes first
 *   --rate R        open loop: request i is due at i/R seconds. Requests run one at a time;
 *                   one that is due while its predecessor still runs starts at once and is
 *                   counted "late" (its lateness is t_start - i/R). Without --rate requests
 *                   run back to back (closed loop).
 *   --timeout-ms T  limit for the connect and, separately, for the response (from sending the
 *                   request to its last byte); default 2000, which lets one lost SYN be
 *                   retransmitted (Linux retries after 1 s) before a connect counts as failed
 *   --keepalive     one connection reused for all requests; a new one is opened when the
 *                   server closed it (checked before the request, outside the timings) or
 *                   after an error. udp: one socket for the whole run, whatever happens — one
 *                   source port, so one conntrack flow (without it every request has a new
 *                   socket and source port: a new flow each, as TCP has a new connection)
 *   --out FILE      write the lines there instead of stdout
 *
 * udp://IP:PORT: each request is one datagram ("httpprobe N\n", N the request's number) to a
 * connected UDP socket, and its answer is the first datagram back within --timeout-ms (one
 * datagram, as podserver's UDP ports send: its JSON line). The record is the same: connect_ms
 * null, total_ms from sending to the answer, status 200 when an answer came (UDP has no
 * status; 200 keeps "status 200 and no error" meaning answered for both), pod/node/client/
 * client_port/server from the answer's JSON, local_port our source port, and syn_ack_ttl the
 * TTL of the answer datagram (IP_RECVTTL; no privilege needed). Errors: "timeout" (no answer:
 * the datagram or its answer was lost, or nobody answered), "refused" (ICMP port unreachable:
 * no socket on the port, or kube-proxy's REJECT for a Service without endpoints),
 * "unreachable". On a kept socket an answer to an earlier request can come late: one whose
 * "echo" (podserver repeats the datagram's first line) is not this request's is skipped.
 *
 * Output: one JSON line per request, flushed as it is written (so `tail -f` and a killed run
 * keep every finished request), then a summary line:
 *   {"i":0,"t_start":0.000012,"connect_ms":0.0412,"total_ms":0.1180,"status":200,"pod":"web-0",
 *    "node":"node1","client":"127.0.0.1","client_port":40312,"server":"127.0.0.1",
 *    "local_port":40312,"syn_ack_ttl":64,"error":null}
 *   {"summary":true,"requests":20,"errors":0,"late":0,"elapsed_s":0.0031}
 * t_start: seconds since the probe started, when this request began. connect_ms: connect()
 * to established; null when a kept-alive connection was reused. total_ms: from the same start
 * (connect included when there was one) to the last byte of the response. pod, node, client,
 * client_port, server: from podserver's JSON body (null when absent; pod falls back to the
 * X-Pod header, so a 503 from a failing pod still says whose it was). local_port: our side of
 * the connection. syn_ack_ttl: see below; null when unknown. A request that got any HTTP
 * answer has error null and that status (503 included); otherwise status 0 and error one of
 *   "connect timeout" "refused" "unreachable" (ICMP host/net unreachable) "reset"
 *   "read timeout" "closed" (EOF before the whole response) "bad response" (not parseable,
 *   or chunked) or, for anything else, the system's error text.
 * "errors" in the summary counts lines whose error is not null; "late" the late requests.
 *
 * SYN-ACK TTL: the kernel does not tell a TCP socket the TTL of packets it received, so a raw
 * IPv4 socket (IPPROTO_TCP; needs CAP_NET_RAW) is opened before the first connect, with a BPF
 * filter that keeps only SYN-ACKs from the server's IP:port. The kernel gives raw sockets their
 * copy of a packet before TCP processes it (ip_protocol_deliver_rcu: raw_local_deliver, then
 * tcp_v4_rcv), so when connect() has completed, its SYN-ACK is already queued: reading the raw
 * socket needs no waiting. It is read without blocking after the request's timings are taken,
 * and matched by our local IP and port. Without CAP_NET_RAW syn_ack_ttl is null throughout.
 *
 * Limits: IPv4 literals only (no DNS: the testbed addresses everything by IP); plain http;
 * Content-Length or close-delimited bodies; bodies beyond 16 KiB are read and discarded
 * (fields are taken from the first 16 KiB).
 *
 * Exit codes: 0 when it ran (even if every request failed), 1 when it could not start (e.g.
 * --out not writable), 2 with a one-line usage error on a bad command line. SIGINT/SIGTERM
 * stop it after the current request; the summary is still written and the exit code is 0.
 * C11 + libc only.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/filter.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define USAGE "httpprobe --url http://IP[:PORT][/PATH]|udp://IP:PORT " \
              "(--requests N | --duration S) [--rate R] [--timeout-ms T] [--keepalive] " \
              "[--out FILE]"
#define PROG "httpprobe"
#include "cliargs.h"

enum {
    BUF_CAP = 16384,      /* response head + the part of the body we look into */
    REQ_CAP = 4096,
    FIELD_CAP = 256,      /* a Kubernetes name is <= 253 characters */
    PATH_CAP = 2048,
    RAW_SNAP = 128,       /* bytes of a SYN-ACK we keep: IP header (<= 60) + TCP flags */
    TCP_SYN = 0x02,
    TCP_ACK = 0x10,
};

static const int DEFAULT_TIMEOUT_MS = 2000;

/* ---- configuration ---------------------------------------------------------------------- */

struct config {
    struct sockaddr_in dst;
    char host[32];               /* Host header: "IP:PORT" */
    char path[PATH_CAP];
    long long requests;          /* 0: no limit (then --duration is set) */
    double rate;                 /* requests/s; 0: closed loop */
    double duration;             /* seconds; 0: no limit */
    int timeout_ms;
    bool keepalive;
    bool udp;                    /* udp://: one datagram per request */
    const char *out;
};

static double parse_positive(const char *flag, const char *text)
{
    char *end;
    errno = 0;
    double v = strtod(text, &end);
    if (errno || end == text || *end || !isfinite(v) || v <= 0 || v > 1e9)
        usage_error("%s: '%s' is not a number > 0", flag, text);
    return v;
}

/* http://A.B.C.D[:PORT][/PATH]; the path goes into the request line verbatim.
 * udp://A.B.C.D:PORT; no default port and no path. */
static void parse_url(struct config *cfg, const char *url)
{
    const char *p = url;
    if (!strncmp(p, "http://", 7))
        p += 7;
    else if (!strncmp(p, "udp://", 6))
        p += 6, cfg->udp = true;
    else
        usage_error("--url: '%s' does not start with http:// or udp://", url);
    size_t hlen = strcspn(p, ":/");
    char ip[INET_ADDRSTRLEN];
    if (hlen == 0 || hlen >= sizeof ip)
        usage_error("--url: '%s' has no IPv4 address after //", url);
    memcpy(ip, p, hlen);
    ip[hlen] = '\0';
    memset(&cfg->dst, 0, sizeof cfg->dst);
    cfg->dst.sin_family = AF_INET;
    if (inet_pton(AF_INET, ip, &cfg->dst.sin_addr) != 1)
        usage_error("--url: '%s' is not an IPv4 address (no DNS here)", ip);
    p += hlen;
    long port = 80;
    if (*p == ':') {
        p++;
        size_t plen = strcspn(p, "/");
        char num[8];
        if (plen == 0 || plen >= sizeof num)
            usage_error("--url: '%s' has a bad port", url);
        memcpy(num, p, plen);
        num[plen] = '\0';
        port = (long)parse_whole("--url port", num, 1, 65535);
        p += plen;
    } else if (cfg->udp) {
        usage_error("--url: '%s' needs a port (udp://IP:PORT)", url);
    }
    if (cfg->udp && *p && strcmp(p, "/"))
        usage_error("--url: '%s': a udp:// URL has no path", url);
    cfg->dst.sin_port = htons((uint16_t)port);
    snprintf(cfg->host, sizeof cfg->host, "%s:%ld", ip, port);
    const char *path = *p ? p : "/";
    if (strlen(path) >= sizeof cfg->path)
        usage_error("--url: path longer than %d characters", PATH_CAP - 1);
    for (const char *c = path; *c; c++)
        if ((unsigned char)*c <= ' ' || *c == 0x7f)
            usage_error("--url: path has a space or control character");
    strcpy(cfg->path, path);
}

/* Accepts "--flag value" and "--flag=value". */
static struct config parse_args(int argc, char **argv)
{
    struct config cfg = { .timeout_ms = DEFAULT_TIMEOUT_MS };
    bool have_url = false;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (!strcmp(arg, "-h") || !strcmp(arg, "--help")) {
            puts("usage: " USAGE);
            exit(0);
        }
        if (strncmp(arg, "--", 2) != 0)
            usage_error("unexpected argument '%s'", arg);
        if (!strcmp(arg, "--keepalive")) {
            cfg.keepalive = true;
            continue;
        }
        const char *eq = strchr(arg, '=');
        size_t flen = eq ? (size_t)(eq - arg) : strlen(arg);
        char flag[32];
        if (flen >= sizeof flag)
            usage_error("unknown flag '%s'", arg);
        memcpy(flag, arg, flen);
        flag[flen] = '\0';
        bool known = !strcmp(flag, "--url") || !strcmp(flag, "--requests") ||
                     !strcmp(flag, "--rate") || !strcmp(flag, "--duration") ||
                     !strcmp(flag, "--timeout-ms") || !strcmp(flag, "--out");
        if (!known)
            usage_error("unknown flag '%s'", flag);
        const char *val = eq ? eq + 1 : (i + 1 < argc ? argv[++i] : NULL);
        if (!val)
            usage_error("%s needs a value", flag);

        if (!strcmp(flag, "--url")) {
            parse_url(&cfg, val);
            have_url = true;
        } else if (!strcmp(flag, "--requests")) {
            cfg.requests = parse_whole(flag, val, 1, 1000000000LL);
        } else if (!strcmp(flag, "--rate")) {
            cfg.rate = parse_positive(flag, val);
        } else if (!strcmp(flag, "--duration")) {
            cfg.duration = parse_positive(flag, val);
        } else if (!strcmp(flag, "--timeout-ms")) {
            cfg.timeout_ms = (int)parse_whole(flag, val, 1, 3600000);
        } else {
            if (!*val)
                usage_error("--out needs a file name");
            cfg.out = val;
        }
    }
    if (!have_url)
        usage_error("--url is required");
    if (!cfg.requests && !cfg.duration)
        usage_error("--requests or --duration is required");
    return cfg;
}

/* ---- time ------------------------------------------------------------------------------- */

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static double ms_between(int64_t a, int64_t b)
{
    return (double)(b - a) / 1e6;
}

static volatile sig_atomic_t stop_requested;

static void on_stop_signal(int sig)
{
    (void)sig;
    stop_requested = 1;
}

/* Sleep until monotonic time T; false if a stop signal interrupted it. */
static bool sleep_until(int64_t t)
{
    struct timespec ts = { .tv_sec = t / 1000000000, .tv_nsec = t % 1000000000 };
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
        if (stop_requested)
            return false;
    return true;
}

/* poll() one fd until DEADLINE (monotonic ns); signals do not cut the wait short.
 * Returns revents, 0 on timeout. */
static short wait_fd(int fd, short events, int64_t deadline)
{
    struct pollfd pfd = { .fd = fd, .events = events };
    for (;;) {
        int64_t left = deadline - now_ns();
        if (left <= 0)
            return 0;
        int n = poll(&pfd, 1, (int)((left + 999999) / 1000000));
        if (n > 0)
            return pfd.revents;
        if (n < 0 && errno != EINTR)
            return POLLERR;
    }
}

/* ---- SYN-ACK TTL ------------------------------------------------------------------------ */

/* A raw socket that receives only SYN-ACKs from DST, or -1 without CAP_NET_RAW. */
static int ttl_open(const struct sockaddr_in *dst)
{
    int fd = socket(AF_INET, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_TCP);
    if (fd < 0)
        return -1;
    /* Offsets are from the IP header: a raw socket's filter sees the packet from there. */
    struct sock_filter code[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, 12),                          /* IP source */
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, ntohl(dst->sin_addr.s_addr), 0, 7),
        BPF_STMT(BPF_LDX | BPF_B | BPF_MSH, 0),                          /* X = IP hdr len */
        BPF_STMT(BPF_LD | BPF_H | BPF_IND, 0),                           /* TCP source port */
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, ntohs(dst->sin_port), 0, 4),
        BPF_STMT(BPF_LD | BPF_B | BPF_IND, 13),                          /* TCP flags */
        BPF_STMT(BPF_ALU | BPF_AND | BPF_K, TCP_SYN | TCP_ACK),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, TCP_SYN | TCP_ACK, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, RAW_SNAP),
        BPF_STMT(BPF_RET | BPF_K, 0),
    };
    struct sock_fprog prog = { .len = sizeof code / sizeof code[0], .filter = code };
    /* Without the filter the socket still works (ttl_find checks every field itself); it just
     * queues every TCP packet of the namespace, so the drain reads more. */
    (void)setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof prog);
    return fd;
}

/* Read everything queued; return the TTL of the SYN-ACK from DST to LOCAL, -1 if none. */
static int ttl_drain(int fd, const struct sockaddr_in *dst, const struct sockaddr_in *local)
{
    int ttl = -1;
    unsigned char pkt[RAW_SNAP];
    if (fd < 0)
        return -1;
    for (;;) {
        ssize_t n = recv(fd, pkt, sizeof pkt, MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return ttl;         /* EAGAIN: queue empty */
        }
        if (!local || ttl >= 0 || n < 20 || (pkt[0] >> 4) != 4)
            continue;
        size_t ihl = (size_t)(pkt[0] & 0x0f) * 4;
        if (ihl < 20 || (size_t)n < ihl + 14 || pkt[9] != IPPROTO_TCP)
            continue;
        const unsigned char *tcp = pkt + ihl;
        bool match = !memcmp(pkt + 12, &dst->sin_addr, 4) &&
                     !memcmp(pkt + 16, &local->sin_addr, 4) &&
                     !memcmp(tcp, &dst->sin_port, 2) &&
                     !memcmp(tcp + 2, &local->sin_port, 2) &&
                     (tcp[13] & (TCP_SYN | TCP_ACK)) == (TCP_SYN | TCP_ACK);
        if (match)
            ttl = pkt[8];       /* the first SYN-ACK; a retransmitted one has the same TTL */
    }
}

/* ---- one request ------------------------------------------------------------------------ */

struct conn {
    int fd;                      /* -1: none */
    struct sockaddr_in local;
    bool have_local;
    int ttl;                     /* of this connection's SYN-ACK; -1 unknown */
};

struct result {
    double t_start;              /* s since probe start */
    double connect_ms;           /* < 0: no connect (reused connection) or none completed */
    double total_ms;             /* < 0: failed before any timing made sense */
    int status;
    const char *error;           /* NULL: none */
    char errbuf[128];
    char pod[FIELD_CAP], node[FIELD_CAP], client[FIELD_CAP], server[FIELD_CAP];
    long long client_port;       /* -1: null */
    unsigned local_port;         /* 0: null */
    int ttl;                     /* -1: null */
};

static void set_errno_error(struct result *r, int err)
{
    switch (err) {
    case ECONNREFUSED: r->error = "refused"; break;
    case ECONNRESET: case EPIPE: case ECONNABORTED: r->error = "reset"; break;
    case EHOSTUNREACH: case ENETUNREACH: r->error = "unreachable"; break;
    default:
        snprintf(r->errbuf, sizeof r->errbuf, "%s", strerror(err));
        r->error = r->errbuf;
    }
}

static void conn_close(struct conn *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    c->have_local = false;
    c->ttl = -1;
}

/* A kept-alive connection the server has closed (or reset, or written to unasked) is
 * readable; such a connection must not be used for the next request. */
static bool conn_usable(const struct conn *c)
{
    struct pollfd pfd = { .fd = c->fd, .events = POLLIN };
    return c->fd >= 0 && poll(&pfd, 1, 0) == 0;
}

static void note_local(struct conn *c)
{
    socklen_t len = sizeof c->local;
    c->have_local = getsockname(c->fd, (struct sockaddr *)&c->local, &len) == 0 &&
                    c->local.sin_port != 0;
}

/* Non-blocking connect with a deadline. On failure sets r->error and returns false. The local
 * address is noted right after connect() hands back (the port is chosen by then, and a
 * refused socket no longer has one). */
static bool do_connect(const struct config *cfg, struct conn *c, struct result *r, int64_t t0)
{
    int err = 0;
    if (connect(c->fd, (const struct sockaddr *)&cfg->dst, sizeof cfg->dst) < 0) {
        err = errno;
        note_local(c);
        if (err == EINPROGRESS) {
            short ev = wait_fd(c->fd, POLLOUT, t0 + (int64_t)cfg->timeout_ms * 1000000);
            if (!ev) {
                r->error = "connect timeout";
                return false;
            }
            socklen_t len = sizeof err;
            if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
                err = errno;
        }
    }
    if (err) {
        set_errno_error(r, err);
        return false;
    }
    return true;
}

struct response {
    int status;
    bool close;                  /* the server will close after this response */
    char x_pod[FIELD_CAP];
    const char *body;            /* within the buffer */
    size_t body_len;             /* bytes of the body kept in the buffer */
};

static bool name_is(const char *name, size_t len, const char *want)
{
    return len == strlen(want) && !strncasecmp(name, want, len);
}

static void copy_field(char *dst, const char *src, size_t len)
{
    if (len >= FIELD_CAP)
        len = FIELD_CAP - 1;
    memcpy(dst, src, len);
    dst[len] = '\0';
}

/* Parse the status line and headers in BUF[0..head_len). Content length -1: to EOF. */
static bool parse_head(const char *buf, size_t head_len, struct response *rs, long long *clen)
{
    int minor, status;
    char sp;
    if (head_len < 13 || sscanf(buf, "HTTP/1.%1d %3d%c", &minor, &status, &sp) != 3 ||
        (sp != ' ' && sp != '\r') || status < 100)
        return false;
    rs->status = status;
    rs->close = minor == 0;
    *clen = -1;
    const char *p = memchr(buf, '\n', head_len), *end = buf + head_len;
    while (p && ++p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        if (!eol)
            break;
        const char *colon = memchr(p, ':', (size_t)(eol - p));
        if (colon) {
            const char *v = colon + 1, *ve = eol;
            while (v < ve && (*v == ' ' || *v == '\t'))
                v++;
            while (ve > v && (ve[-1] == '\r' || ve[-1] == ' ' || ve[-1] == '\t'))
                ve--;
            size_t nlen = (size_t)(colon - p), vlen = (size_t)(ve - v);
            if (name_is(p, nlen, "content-length")) {
                char num[24];
                char *e;
                if (vlen == 0 || vlen >= sizeof num)
                    return false;
                memcpy(num, v, vlen);
                num[vlen] = '\0';
                *clen = strtoll(num, &e, 10);
                if (*e || *clen < 0)
                    return false;
            } else if (name_is(p, nlen, "connection")) {
                if (memmem(v, vlen, "close", 5))
                    rs->close = true;
                else if (memmem(v, vlen, "keep-alive", 10))
                    rs->close = false;
            } else if (name_is(p, nlen, "transfer-encoding")) {
                return false;   /* chunked: podserver never sends it; not worth decoding */
            } else if (name_is(p, nlen, "x-pod")) {
                copy_field(rs->x_pod, v, vlen);
            }
        }
        p = eol;
    }
    if (status < 200 || status == 204 || status == 304)
        *clen = 0;
    if (*clen < 0)
        rs->close = true;       /* a body delimited by EOF ends the connection */
    return true;
}

/* Read one whole response before DEADLINE. BUF holds the head and up to BUF_CAP of it. */
static bool read_response(int fd, char *buf, struct response *rs, struct result *r,
                          int64_t deadline)
{
    size_t len = 0, head_len = 0;
    long long clen = -1, body_seen = 0;
    char sink[BUF_CAP];
    for (;;) {
        if (head_len && clen >= 0 && body_seen >= clen)
            break;
        short ev = wait_fd(fd, POLLIN, deadline);
        if (!ev) {
            r->error = "read timeout";
            return false;
        }
        char *dst = len < BUF_CAP ? buf + len : sink;
        size_t room = len < BUF_CAP ? BUF_CAP - len : sizeof sink;
        ssize_t n = recv(fd, dst, room, MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR)
                continue;
            set_errno_error(r, errno);
            return false;
        }
        if (n == 0) {
            if (head_len && clen < 0)
                break;          /* close-delimited body: EOF is its end */
            r->error = "closed";
            return false;
        }
        if (dst == buf + len)
            len += (size_t)n;
        if (!head_len) {
            const char *e = memmem(buf, len, "\r\n\r\n", 4);
            if (!e) {
                if (len >= BUF_CAP) {
                    r->error = "bad response";
                    return false;
                }
                continue;
            }
            head_len = (size_t)(e - buf) + 4;
            if (!parse_head(buf, head_len, rs, &clen)) {
                r->error = "bad response";
                return false;
            }
            body_seen = (long long)(len - head_len);
        } else {
            body_seen += n;
        }
    }
    rs->body = buf + head_len;
    rs->body_len = len - head_len;
    if (clen >= 0 && (long long)rs->body_len > clen)
        rs->body_len = (size_t)clen;
    return true;
}

/* The value of "KEY" in a flat one-line JSON object: a string (minimal unescaping) or a bare
 * number/literal. Returns false when the key is absent. */
static bool json_field(const char *body, size_t len, const char *key, char *out)
{
    char pat[40];
    int plen = snprintf(pat, sizeof pat, "\"%s\":", key);
    const char *p = memmem(body, len, pat, (size_t)plen), *end = body + len;
    if (!p)
        return false;
    p += plen;
    while (p < end && *p == ' ')
        p++;
    size_t o = 0;
    if (p < end && *p == '"') {
        for (p++; p < end && *p != '"'; p++) {
            if (*p == '\\' && p + 1 < end)
                p++;
            if (o < FIELD_CAP - 1)
                out[o++] = *p;
        }
        if (p >= end)
            return false;
    } else {
        while (p < end && *p != ',' && *p != '}' && *p != ' ' && *p != '\n' && *p != '\r')
            if (o < FIELD_CAP - 1)
                out[o++] = *p++;
            else
                p++;
        if (o == 0 || !strncmp(out, "null", o))
            return false;
    }
    out[o] = '\0';
    return true;
}

static void take_fields(const struct response *rs, struct result *r)
{
    char num[FIELD_CAP];
    r->status = rs->status;
    if (!json_field(rs->body, rs->body_len, "pod", r->pod))
        snprintf(r->pod, sizeof r->pod, "%s", rs->x_pod);
    json_field(rs->body, rs->body_len, "node", r->node);
    json_field(rs->body, rs->body_len, "client", r->client);
    json_field(rs->body, rs->body_len, "server", r->server);
    if (json_field(rs->body, rs->body_len, "client_port", num)) {
        char *e;
        long long v = strtoll(num, &e, 10);
        if (!*e && v >= 0)
            r->client_port = v;
    }
}

static int open_socket(struct conn *c)
{
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0)
        return errno;
    int one = 1;
    /* The request is one write, but a kept-alive connection's next request must not wait
     * for an ACK behind Nagle. */
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return 0;
}

/* One request. Timings first; everything else (local port, TTL, output) after them. */
static void probe_once(const struct config *cfg, const char *req, size_t req_len,
                       struct conn *c, int raw_fd, int64_t origin, struct result *r)
{
    static char buf[BUF_CAP];
    struct response rs = { .status = 0 };
    bool fresh = false;

    r->connect_ms = r->total_ms = -1;
    r->client_port = -1;
    r->ttl = -1;

    if (c->fd >= 0 && !conn_usable(c))
        conn_close(c);
    if (c->fd < 0) {
        int err = open_socket(c);
        if (err) {
            r->t_start = (double)(now_ns() - origin) / 1e9;
            set_errno_error(r, err);
            return;
        }
        ttl_drain(raw_fd, &cfg->dst, NULL);     /* nothing stale may match this connection */
        fresh = true;
    }

    int64_t t0 = now_ns();
    r->t_start = (double)(t0 - origin) / 1e9;
    bool ok = true;
    if (fresh) {
        ok = do_connect(cfg, c, r, t0);
        if (ok)
            r->connect_ms = ms_between(t0, now_ns());
    }
    if (ok) {
        ssize_t n = send(c->fd, req, req_len, MSG_NOSIGNAL);
        if (n < 0)
            set_errno_error(r, errno);
        else if ((size_t)n < req_len)   /* a fresh socket buffer takes a few hundred bytes */
            r->error = "short send";
        ok = n >= 0 && (size_t)n == req_len;
    }
    if (ok) {
        ok = read_response(c->fd, buf, &rs, r,
                           now_ns() + (int64_t)cfg->timeout_ms * 1000000);
        if (ok)
            r->total_ms = ms_between(t0, now_ns());
    }

    /* ---- timings are taken; the rest costs nothing measured ---- */
    if (fresh) {
        if (!c->have_local)
            note_local(c);
        c->ttl = ttl_drain(raw_fd, &cfg->dst, c->have_local ? &c->local : NULL);
    }
    if (c->have_local)
        r->local_port = ntohs(c->local.sin_port);
    r->ttl = c->ttl;
    if (ok)
        take_fields(&rs, r);
    if (!ok || !cfg->keepalive || rs.close)
        conn_close(c);
}

/* ---- one UDP request -------------------------------------------------------------------- */

/* A connected UDP socket: the source port is chosen here, and an ICMP error for our
 * datagram (port unreachable) comes back as this socket's error. */
static int open_udp_socket(const struct config *cfg, struct conn *c)
{
    c->fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0)
        return errno;
    int one = 1;
    (void)setsockopt(c->fd, IPPROTO_IP, IP_RECVTTL, &one, sizeof one);   /* ttl: best effort */
    if (connect(c->fd, (const struct sockaddr *)&cfg->dst, sizeof cfg->dst) < 0) {
        int err = errno;
        conn_close(c);
        return err;
    }
    note_local(c);
    return 0;
}

/* Drop what a kept socket still holds: late answers to earlier requests, and a pending ICMP
 * error (reading it clears it), so neither is taken for this request's answer. */
static void udp_drain(int fd)
{
    char sink[64];
    for (int i = 0; i < 4096; i++) {
        ssize_t n = recv(fd, sink, sizeof sink, MSG_DONTWAIT);
        if (n < 0 && errno != EINTR && errno != ECONNREFUSED && errno != EHOSTUNREACH &&
            errno != ENETUNREACH)
            return;             /* EAGAIN: empty */
    }
}

/* The TTL the answer arrived with (IP_RECVTTL), -1 if not given. */
static int udp_ttl(struct msghdr *msg)
{
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(msg); cm; cm = CMSG_NXTHDR(msg, cm)) {
        if (cm->cmsg_level == IPPROTO_IP && cm->cmsg_type == IP_TTL) {
            int ttl;
            memcpy(&ttl, CMSG_DATA(cm), sizeof ttl);
            return ttl;
        }
    }
    return -1;
}

/* One datagram out, the first datagram back. Timings first, as in probe_once. */
static void probe_udp(const struct config *cfg, long long i, struct conn *c, int64_t origin,
                      struct result *r)
{
    static char buf[BUF_CAP];
    r->connect_ms = r->total_ms = -1;
    r->client_port = -1;
    r->ttl = -1;
    if (c->fd < 0) {
        int err = open_udp_socket(cfg, c);
        if (err) {
            r->t_start = (double)(now_ns() - origin) / 1e9;
            set_errno_error(r, err);
            return;
        }
    } else {
        udp_drain(c->fd);
    }
    char payload[48];
    int plen = snprintf(payload, sizeof payload, "httpprobe %lld\n", i);

    int64_t t0 = now_ns();
    r->t_start = (double)(t0 - origin) / 1e9;
    ssize_t got = -1;
    union {                     /* aligned for cmsghdr */
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } ctl;
    struct iovec iov = { .iov_base = buf, .iov_len = sizeof buf };
    struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
    if (send(c->fd, payload, (size_t)plen, MSG_NOSIGNAL) != plen) {
        set_errno_error(r, errno);
    } else {
        int64_t deadline = t0 + (int64_t)cfg->timeout_ms * 1000000;
        for (;;) {
            if (!wait_fd(c->fd, POLLIN, deadline)) {
                r->error = "timeout";
                break;
            }
            msg.msg_control = ctl.buf;
            msg.msg_controllen = sizeof ctl.buf;
            got = recvmsg(c->fd, &msg, MSG_DONTWAIT);
            char echo[FIELD_CAP];
            if (got >= 0 && json_field(buf, (size_t)got, "echo", echo) &&
                (strlen(echo) + 1 != (size_t)plen || memcmp(echo, payload, (size_t)plen - 1))) {
                got = -1;       /* a late answer to an earlier request */
                continue;
            }
            if (got >= 0) {
                r->total_ms = ms_between(t0, now_ns());
                break;
            }
            if (errno != EAGAIN && errno != EINTR) {
                set_errno_error(r, errno);
                break;
            }
        }
    }

    /* ---- timings are taken ---- */
    if (c->have_local)
        r->local_port = ntohs(c->local.sin_port);
    if (got >= 0) {
        struct response rs = { .status = 200, .body = buf, .body_len = (size_t)got };
        take_fields(&rs, r);
        r->ttl = udp_ttl(&msg);
    }
    if (!cfg->keepalive)
        conn_close(c);
}

/* ---- output ----------------------------------------------------------------------------- */

static void put_string(FILE *f, const char *key, const char *s)
{
    fprintf(f, ",\"%s\":", key);
    if (!s || !*s) {
        fputs("null", f);
        return;
    }
    fputc('"', f);
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            fprintf(f, "\\%c", ch);
        else if (ch < 0x20 || ch == 0x7f)
            fprintf(f, "\\u%04x", ch);
        else
            fputc(ch, f);
    }
    fputc('"', f);
}

static void put_ms(FILE *f, const char *key, double ms)
{
    if (ms < 0)
        fprintf(f, ",\"%s\":null", key);
    else
        fprintf(f, ",\"%s\":%.4f", key, ms);    /* 0.1 us: loopback connects take ~10 us */
}

static void print_result(FILE *f, long long i, const struct result *r)
{
    fprintf(f, "{\"i\":%lld,\"t_start\":%.6f", i, r->t_start);
    put_ms(f, "connect_ms", r->connect_ms);
    put_ms(f, "total_ms", r->total_ms);
    fprintf(f, ",\"status\":%d", r->status);
    put_string(f, "pod", r->pod);
    put_string(f, "node", r->node);
    put_string(f, "client", r->client);
    if (r->client_port >= 0)
        fprintf(f, ",\"client_port\":%lld", r->client_port);
    else
        fputs(",\"client_port\":null", f);
    put_string(f, "server", r->server);
    if (r->local_port)
        fprintf(f, ",\"local_port\":%u", r->local_port);
    else
        fputs(",\"local_port\":null", f);
    if (r->ttl >= 0)
        fprintf(f, ",\"syn_ack_ttl\":%d", r->ttl);
    else
        fputs(",\"syn_ack_ttl\":null", f);
    put_string(f, "error", r->error);
    fputs("}\n", f);
}

/* ---- main loop -------------------------------------------------------------------------- */

int main(int argc, char **argv)
{
    struct config cfg = parse_args(argc, argv);

    FILE *out = stdout;
    if (cfg.out && !(out = fopen(cfg.out, "w"))) {
        fprintf(stderr, "httpprobe: --out %s: %s\n", cfg.out, strerror(errno));
        return 1;
    }
    setvbuf(out, NULL, _IOLBF, 0);

    struct sigaction sa = { .sa_handler = on_stop_signal };   /* no SA_RESTART */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    char req[REQ_CAP];
    int req_len = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: %s\r\n%s\r\n", cfg.path,
                           cfg.host, cfg.keepalive ? "" : "Connection: close\r\n");

    int raw_fd = cfg.udp ? -1 : ttl_open(&cfg.dst);
    struct conn c = { .fd = -1, .ttl = -1 };
    long long done = 0, errors = 0, late = 0;
    int64_t origin = now_ns();
    int64_t last = origin;
    int64_t dur_ns = (int64_t)(cfg.duration * 1e9);

    while (!stop_requested && (!cfg.requests || done < cfg.requests)) {
        if (cfg.rate > 0) {
            int64_t due = origin + (int64_t)((double)done * 1e9 / cfg.rate);
            if (cfg.duration && due - origin >= dur_ns)
                break;
            if (last > due)     /* the previous request ran into this one's slot */
                late++;
            else if (!sleep_until(due))
                break;
        } else if (cfg.duration && now_ns() - origin >= dur_ns) {
            break;
        }
        struct result r;
        memset(&r, 0, sizeof r);
        if (cfg.udp)
            probe_udp(&cfg, done, &c, origin, &r);
        else
            probe_once(&cfg, req, (size_t)req_len, &c, raw_fd, origin, &r);
        last = now_ns();
        print_result(out, done, &r);
        done++;
        if (r.error)
            errors++;
    }
    conn_close(&c);
    if (raw_fd >= 0)
        close(raw_fd);
    fprintf(out, "{\"summary\":true,\"requests\":%lld,\"errors\":%lld,\"late\":%lld,"
                 "\"elapsed_s\":%.6f}\n", done, errors, late, (double)(last - origin) / 1e9);
    if (fclose(out) != 0) {
        fprintf(stderr, "httpprobe: writing output: %s\n", strerror(errno));
        return 1;
    }
    return 0;
}
