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
 *   --rate R        open loop: request i starts when it is due, at i/R seconds, whatever
 *                   became of the earlier ones. Requests run side by side (up to R times two
 *                   timeouts plus a second of them, at most 16384 and the open files allowed),
 *                   so one that hangs until its timeout holds up no other: a dead backend
 *                   costs one failed request per request sent to it, not a stalled schedule
 *                   (no coordinated omission). A request that starts more than 1 ms after it
 *                   was due (every slot taken, or the probe could not keep up) is counted
 *                   "late"; its lateness is t_start - i/R. Without --rate requests run one at
 *                   a time, back to back (closed loop).
 *   --timeout-ms T  limit for the connect and, separately, for the response (from sending the
 *                   request to its last byte); default 2000, which lets one lost SYN be
 *                   retransmitted (Linux retries after 1 s) before a connect counts as failed
 *   --keepalive     one connection reused for all requests (open loop: a request takes an
 *                   idle kept connection, or opens one when all are busy); a new one is opened
 *                   when the server closed it (checked before the request, outside the
 *                   timings) or after an error. udp: one socket for the whole run, whatever
 *                   happens — one source port, so one conntrack flow (without it every
 *                   request has a new socket and source port: a new flow each, as TCP has a
 *                   new connection)
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
 * "unreachable". On a kept socket an answer goes to the request its "echo" names (podserver
 * repeats the datagram's first line); one to a request that is over is skipped, and one
 * without an echo (or an ICMP error) goes to the oldest request waiting.
 *
 * Output: one JSON line per request, in request order (written once it and every earlier one
 * has finished), flushed as it is written (so `tail -f` and a killed run keep every finished
 * request), then a summary line. A reader must keep up: a full pipe stops the probe's loop.
 *   {"i":0,"t_start":0.000012,"connect_ms":0.0412,"total_ms":0.1180,"status":200,"pod":"web-0",
 *    "node":"node1","client":"127.0.0.1","client_port":40312,"server":"127.0.0.1",
 *    "local_port":40312,"syn_ack_ttl":64,"error":null}
 *   {"summary":true,"requests":20,"errors":0,"late":0,"elapsed_s":0.0031}
 * t_start: seconds since the probe started, when this request began. connect_ms: connect()
 * to established; null when a kept-alive connection was reused. total_ms: from the same start
 * (connect included when there was one) to the last byte of the response. pod, node, client,
 * client_port, server: from podserver's JSON body (null when absent; pod falls back to the
 * X-Pod header, so a 503 from a failing pod still says whose it was). forwarded_for: the
 * body's, present only when it has one (the X-Forwarded-For an L7 LB added: the client's
 * address, which the pod's "client", the proxy's, is not). local_port: our side of
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
 * socket needs no waiting. It is read without blocking when a connect completes, each SYN-ACK
 * given to the connection whose local IP and port it was sent to. Without CAP_NET_RAW
 * syn_ack_ttl is null throughout.
 *
 * Limits: IPv4 literals only (no DNS: the testbed addresses everything by IP); plain http;
 * Content-Length or close-delimited bodies; bodies beyond 16 KiB are read and discarded
 * (fields are taken from the first 16 KiB).
 *
 * Exit codes: 0 when it ran (even if every request failed), 1 when it could not start (e.g.
 * --out not writable), 2 with a one-line usage error on a bad command line. SIGINT/SIGTERM
 * stop the starting of requests; those in flight finish (within their timeouts), the summary
 * is still written and the exit code is 0.
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
#include <sys/resource.h>
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

/* The next SYN-ACK from DST queued on the raw socket FD: true with the address and port it
 * was sent to (network order: our side of that connection) and its TTL; false when the queue
 * is empty. */
static bool ttl_next(int fd, const struct sockaddr_in *dst, struct sockaddr_in *to, int *ttl)
{
    unsigned char pkt[RAW_SNAP];
    for (;;) {
        ssize_t n = recv(fd, pkt, sizeof pkt, MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return false;       /* EAGAIN: queue empty */
        }
        if (n < 20 || (pkt[0] >> 4) != 4)
            continue;
        size_t ihl = (size_t)(pkt[0] & 0x0f) * 4;
        if (ihl < 20 || (size_t)n < ihl + 14 || pkt[9] != IPPROTO_TCP)
            continue;
        const unsigned char *tcp = pkt + ihl;
        if (memcmp(pkt + 12, &dst->sin_addr, 4) || memcmp(tcp, &dst->sin_port, 2) ||
            (tcp[13] & (TCP_SYN | TCP_ACK)) != (TCP_SYN | TCP_ACK))
            continue;
        memcpy(&to->sin_addr, pkt + 16, 4);
        memcpy(&to->sin_port, tcp + 2, 2);
        *ttl = pkt[8];          /* the first SYN-ACK; a retransmitted one has the same TTL */
        return true;
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
    char forwarded_for[FIELD_CAP];   /* podserver's "forwarded_for": an L7 LB's X-Forwarded-For */
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

/* A response as it comes in: the head and up to BUF_CAP of it in buf. */
struct reading {
    char *buf;                   /* BUF_CAP bytes, from the probe's pool */
    size_t len, head_len;        /* head_len 0: the head is not complete yet */
    long long clen, body_seen;   /* content length (-1: to EOF), body bytes seen */
};

/* Read what FD holds now. 1: the whole response is in (RS filled); 0: more is to come;
 * -1: failed (r->error set). */
static int read_some(int fd, struct reading *rd, struct response *rs, struct result *r)
{
    static char sink[BUF_CAP];
    for (;;) {
        if (rd->head_len && rd->clen >= 0 && rd->body_seen >= rd->clen)
            break;
        char *dst = rd->len < BUF_CAP ? rd->buf + rd->len : sink;
        size_t room = rd->len < BUF_CAP ? BUF_CAP - rd->len : sizeof sink;
        ssize_t n = recv(fd, dst, room, MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN)
                return 0;
            set_errno_error(r, errno);
            return -1;
        }
        if (n == 0) {
            if (rd->head_len && rd->clen < 0)
                break;          /* close-delimited body: EOF is its end */
            r->error = "closed";
            return -1;
        }
        if (dst != sink)
            rd->len += (size_t)n;
        if (!rd->head_len) {
            const char *e = memmem(rd->buf, rd->len, "\r\n\r\n", 4);
            if (!e) {
                if (rd->len >= BUF_CAP) {
                    r->error = "bad response";
                    return -1;
                }
                continue;
            }
            rd->head_len = (size_t)(e - rd->buf) + 4;
            if (!parse_head(rd->buf, rd->head_len, rs, &rd->clen)) {
                r->error = "bad response";
                return -1;
            }
            rd->body_seen = (long long)(rd->len - rd->head_len);
        } else {
            rd->body_seen += n;
        }
    }
    rs->body = rd->buf + rd->head_len;
    rs->body_len = rd->len - rd->head_len;
    if (rd->clen >= 0 && (long long)rs->body_len > rd->clen)
        rs->body_len = (size_t)rd->clen;
    return 1;
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
    json_field(rs->body, rs->body_len, "forwarded_for", r->forwarded_for);
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
    if (r->forwarded_for[0])   /* only behind a proxy that adds X-Forwarded-For */
        put_string(f, "forwarded_for", r->forwarded_for);
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

/* ---- requests in flight ----------------------------------------------------------------- */

/* Open loop: request i starts when it is due (i/R), whatever became of the earlier ones, so a
 * request that hangs until its timeout holds up nothing but itself — the probe does not slow
 * down with the system it measures (no coordinated omission). Each request has a slot in a
 * ring indexed by its number from its start until its line is written; lines are written in
 * request order, so a slot stays taken until every earlier request has finished too. The
 * ring's size bounds the requests in flight. Closed loop: a ring of one. */

enum {
    MAX_WINDOW = 16384,          /* slots at most (each holds a result: ~1.4 KiB) */
    LATE_NS = 1000000,           /* a start this much after its due time is "late" */
};

enum state { FREE, CONNECTING, READING, UDP_WAITING, DONE };

struct slot {
    enum state state;
    long long i;                 /* the request's number */
    struct conn c;               /* its connection or socket (not the kept UDP socket) */
    bool fresh;                  /* its connection was opened for it */
    int64_t t0;                  /* when it started (monotonic ns) */
    int64_t deadline;            /* of the connect, then of the response */
    struct reading rd;
    struct response rs;
    struct result r;
};

struct probe {
    const struct config *cfg;
    const char *req;             /* the HTTP request, the same for every request */
    size_t req_len;
    int raw_fd;                  /* SYN-ACK TTLs; -1 without CAP_NET_RAW */
    int64_t origin;
    struct slot *ring;
    long long cap;               /* slots in the ring */
    long long next, first;       /* the next request to start, the first not yet written */
    long long inflight;
    struct conn *idle;           /* --keepalive TCP: open connections between requests */
    long long nidle;
    struct conn udp;             /* --keepalive udp: the run's one socket */
    char **bufs;                 /* response buffers not in use */
    long long nbufs;
    FILE *out;
    long long errors, late;
    int64_t last;                /* when the last request finished */
};

static struct slot *slot_of(struct probe *p, long long i)
{
    return &p->ring[i % p->cap];
}

/* Slots: closed loop one; open loop what the rate brings in two timeouts (the connect's and
 * the response's) and a second more, within the files the process may open (its soft limit
 * raised to the hard one). */
static long long window_size(const struct config *cfg)
{
    if (cfg->rate <= 0)
        return 1;
    long long files = 1024;
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        if (rl.rlim_cur < rl.rlim_max) {
            rl.rlim_cur = rl.rlim_max;
            (void)setrlimit(RLIMIT_NOFILE, &rl);
            (void)getrlimit(RLIMIT_NOFILE, &rl);
        }
        files = rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur > MAX_WINDOW ? MAX_WINDOW + 64
                                                                         : (long long)rl.rlim_cur;
    }
    double want = cfg->rate * (2.0 * cfg->timeout_ms / 1000.0 + 1.0) + 16;
    long long n = want > MAX_WINDOW ? MAX_WINDOW : (long long)want;
    if (n > files - 32)          /* stdio, the raw socket, the kept UDP socket */
        n = files - 32;
    return n < 1 ? 1 : n;
}

static char *buf_get(struct probe *p)
{
    return p->nbufs ? p->bufs[--p->nbufs] : malloc(BUF_CAP);
}

static void buf_put(struct probe *p, char *buf)
{
    if (buf && p->nbufs < p->cap)
        p->bufs[p->nbufs++] = buf;
    else
        free(buf);
}

/* Give each SYN-ACK queued on the raw socket to the connection it answers. The kernel queues a
 * raw socket's copy before TCP sees the packet, so when a connect has completed its SYN-ACK
 * is here already. */
static void ttl_collect(struct probe *p)
{
    struct sockaddr_in to;
    int ttl;
    if (p->raw_fd < 0)
        return;
    while (ttl_next(p->raw_fd, &p->cfg->dst, &to, &ttl)) {
        for (long long i = p->first; i < p->next; i++) {
            struct slot *s = slot_of(p, i);
            if ((s->state == CONNECTING || s->state == READING) && s->fresh &&
                s->c.have_local && s->c.ttl < 0 && s->c.local.sin_port == to.sin_port &&
                s->c.local.sin_addr.s_addr == to.sin_addr.s_addr) {
                s->c.ttl = ttl;
                break;
            }
        }
    }
}

static void done(struct probe *p, struct slot *s)
{
    s->state = DONE;
    p->inflight--;
    p->last = now_ns();
    if (s->r.error)
        p->errors++;
}

/* The request is over and its timings are taken; the rest costs nothing measured. */
static void finish_tcp(struct probe *p, struct slot *s, bool ok)
{
    if (s->fresh) {
        if (!s->c.have_local)
            note_local(&s->c);
        if (s->c.ttl < 0)
            ttl_collect(p);
    }
    if (s->c.have_local)
        s->r.local_port = ntohs(s->c.local.sin_port);
    s->r.ttl = s->c.ttl;
    if (ok)
        take_fields(&s->rs, &s->r);
    buf_put(p, s->rd.buf);
    s->rd.buf = NULL;
    if (ok && p->cfg->keepalive && !s->rs.close && p->nidle < p->cap) {
        p->idle[p->nidle++] = s->c;
        s->c.fd = -1;
    } else {
        conn_close(&s->c);
    }
    done(p, s);
}

static void send_request(struct probe *p, struct slot *s)
{
    ssize_t n = send(s->c.fd, p->req, p->req_len, MSG_NOSIGNAL);
    if (n < 0 || (size_t)n < p->req_len) {
        if (n < 0)
            set_errno_error(&s->r, errno);
        else
            s->r.error = "short send";  /* a fresh socket buffer takes a few hundred bytes */
        finish_tcp(p, s, false);
        return;
    }
    s->rd = (struct reading){ .buf = buf_get(p), .clen = -1 };
    if (!s->rd.buf) {
        s->r.error = "out of memory";
        finish_tcp(p, s, false);
        return;
    }
    s->state = READING;
    s->deadline = now_ns() + (int64_t)p->cfg->timeout_ms * 1000000;
}

/* A kept-alive connection if one is idle and still open, else a new one (connect started). */
static void start_tcp(struct probe *p, struct slot *s)
{
    while (p->nidle && s->c.fd < 0) {     /* the most recently used first */
        struct conn c = p->idle[--p->nidle];
        if (conn_usable(&c))
            s->c = c;
        else
            conn_close(&c);
    }
    if (s->c.fd < 0) {
        int err = open_socket(&s->c);
        if (err) {
            s->r.t_start = (double)(now_ns() - p->origin) / 1e9;
            set_errno_error(&s->r, err);
            finish_tcp(p, s, false);
            return;
        }
        s->fresh = true;
    }
    s->t0 = now_ns();
    s->r.t_start = (double)(s->t0 - p->origin) / 1e9;
    if (!s->fresh) {
        send_request(p, s);
        return;
    }
    int err = connect(s->c.fd, (const struct sockaddr *)&p->cfg->dst, sizeof p->cfg->dst) < 0
              ? errno : 0;
    /* the local port is chosen by now, and a refused socket no longer has one afterwards */
    note_local(&s->c);
    if (err == EINPROGRESS) {
        s->state = CONNECTING;
        s->deadline = s->t0 + (int64_t)p->cfg->timeout_ms * 1000000;
        return;
    }
    if (err) {
        set_errno_error(&s->r, err);
        finish_tcp(p, s, false);
        return;
    }
    s->r.connect_ms = ms_between(s->t0, now_ns());
    send_request(p, s);
}

static void connected(struct probe *p, struct slot *s)
{
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(s->c.fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
        err = errno;
    if (err) {
        set_errno_error(&s->r, err);
        finish_tcp(p, s, false);
        return;
    }
    s->r.connect_ms = ms_between(s->t0, now_ns());
    send_request(p, s);
}

static void readable(struct probe *p, struct slot *s)
{
    int rc = read_some(s->c.fd, &s->rd, &s->rs, &s->r);
    if (rc == 0)
        return;
    if (rc > 0)
        s->r.total_ms = ms_between(s->t0, now_ns());
    finish_tcp(p, s, rc > 0);
}

/* ---- UDP requests ----------------------------------------------------------------------- */

static void finish_udp(struct probe *p, struct slot *s, const char *answer, size_t len,
                       int ttl)
{
    const struct conn *c = p->cfg->keepalive ? &p->udp : &s->c;
    if (c->have_local)
        s->r.local_port = ntohs(c->local.sin_port);
    if (answer) {
        struct response rs = { .status = 200, .body = answer, .body_len = len };
        take_fields(&rs, &s->r);
        s->r.ttl = ttl;
    }
    if (!p->cfg->keepalive)
        conn_close(&s->c);
    done(p, s);
}

static struct slot *oldest_waiting(struct probe *p)
{
    for (long long i = p->first; i < p->next; i++)
        if (slot_of(p, i)->state == UDP_WAITING)
            return slot_of(p, i);
    return NULL;
}

/* The waiting request an echo ("httpprobe N") names; NULL if none (over, or not OWN). */
static struct slot *echoed(struct probe *p, const char *echo, const struct slot *own)
{
    char *end;
    if (strncmp(echo, "httpprobe ", 10))
        return NULL;
    long long n = strtoll(echo + 10, &end, 10);
    if (*end || n < p->first || n >= p->next)
        return NULL;
    struct slot *s = slot_of(p, n);
    return s->state == UDP_WAITING && s->i == n && (!own || s == own) ? s : NULL;
}

/* Take what FD holds. An answer goes to the request its echo names (podserver repeats the
 * datagram's first line): an answer to a request that is over is skipped. An answer without
 * one, or an error (ICMP port unreachable...), goes to OWN or, on the kept socket, to the
 * oldest request waiting; with none waiting it is dropped (reading an error clears it). */
static void udp_receive(struct probe *p, int fd, struct slot *own)
{
    static char buf[BUF_CAP];
    for (;;) {
        union {                 /* aligned for cmsghdr */
            char buf[CMSG_SPACE(sizeof(int))];
            struct cmsghdr align;
        } ctl;
        struct iovec iov = { .iov_base = buf, .iov_len = sizeof buf };
        struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf,
                              .msg_controllen = sizeof ctl.buf };
        ssize_t got = recvmsg(fd, &msg, MSG_DONTWAIT);
        int64_t t = now_ns();
        if (got < 0) {
            int err = errno;
            if (err == EINTR)
                continue;
            if (err == EAGAIN || err == EWOULDBLOCK)
                return;
            struct slot *s = own ? own : oldest_waiting(p);
            if (s) {
                set_errno_error(&s->r, err);
                finish_udp(p, s, NULL, 0, -1);
            }
            if (own || (err != ECONNREFUSED && err != EHOSTUNREACH && err != ENETUNREACH))
                return;
            continue;
        }
        struct slot *s = own ? own : oldest_waiting(p);
        char echo[FIELD_CAP];
        if (json_field(buf, (size_t)got, "echo", echo))
            s = echoed(p, echo, own);
        if (!s)
            continue;
        s->r.total_ms = ms_between(s->t0, t);
        finish_udp(p, s, buf, (size_t)got, udp_ttl(&msg));
        if (own)
            return;
    }
}

/* One datagram out ("httpprobe N\n"); its answer is the first datagram back that is its. */
static void start_udp(struct probe *p, struct slot *s)
{
    struct conn *c = p->cfg->keepalive ? &p->udp : &s->c;
    if (c->fd < 0) {
        int err = open_udp_socket(p->cfg, c);
        if (err) {
            s->r.t_start = (double)(now_ns() - p->origin) / 1e9;
            set_errno_error(&s->r, err);
            finish_udp(p, s, NULL, 0, -1);
            return;
        }
    } else {
        udp_receive(p, c->fd, NULL);    /* nothing pending may be taken for this request's */
    }
    char payload[48];
    int len = snprintf(payload, sizeof payload, "httpprobe %lld\n", s->i);
    s->t0 = now_ns();
    s->r.t_start = (double)(s->t0 - p->origin) / 1e9;
    if (send(c->fd, payload, (size_t)len, MSG_NOSIGNAL) != len) {
        set_errno_error(&s->r, errno);
        finish_udp(p, s, NULL, 0, -1);
        return;
    }
    s->state = UDP_WAITING;
    s->deadline = s->t0 + (int64_t)p->cfg->timeout_ms * 1000000;
}

/* ---- the schedule ----------------------------------------------------------------------- */

static void start_request(struct probe *p, int64_t due)
{
    struct slot *s = slot_of(p, p->next);
    memset(&s->r, 0, sizeof s->r);
    s->r.connect_ms = s->r.total_ms = -1;
    s->r.client_port = -1;
    s->r.ttl = -1;
    s->i = p->next++;
    s->c = (struct conn){ .fd = -1, .ttl = -1 };
    s->rd = (struct reading){ .buf = NULL, .clen = -1 };
    s->rs = (struct response){ .status = 0 };
    s->fresh = false;
    s->state = CONNECTING;       /* taken; its start sets what it waits for */
    s->deadline = INT64_MAX;
    p->inflight++;
    if (now_ns() - due > LATE_NS)
        p->late++;
    if (p->cfg->udp)
        start_udp(p, s);
    else
        start_tcp(p, s);
}

/* Lines of the finished requests, in request order. */
static void write_done(struct probe *p)
{
    while (p->first < p->next && slot_of(p, p->first)->state == DONE) {
        struct slot *s = slot_of(p, p->first);
        print_result(p->out, s->i, &s->r);
        s->state = FREE;
        p->first++;
    }
}

static void expire(struct probe *p, int64_t now)
{
    for (long long i = p->first; i < p->next; i++) {
        struct slot *s = slot_of(p, i);
        if (s->state == DONE || now < s->deadline)
            continue;
        if (s->state == CONNECTING) {
            s->r.error = "connect timeout";
            finish_tcp(p, s, false);
        } else if (s->state == READING) {
            s->r.error = "read timeout";
            finish_tcp(p, s, false);
        } else if (s->state == UDP_WAITING) {
            s->r.error = "timeout";
            finish_udp(p, s, NULL, 0, -1);
        }
    }
}

/* Start what is due; false once no more requests will start. *WAKE: the next due time, if
 * one will start later (-1: none yet). */
static bool start_due(struct probe *p, int64_t *wake)
{
    const struct config *cfg = p->cfg;
    int64_t dur_ns = (int64_t)(cfg->duration * 1e9);
    for (;;) {
        if (stop_requested || (cfg->requests && p->next >= cfg->requests))
            return false;
        int64_t now = now_ns(), due = now;
        if (cfg->rate > 0) {
            due = p->origin + (int64_t)((double)p->next * 1e9 / cfg->rate);
            if (cfg->duration && due - p->origin >= dur_ns)
                return false;
            if (due > now) {
                *wake = due;
                return true;
            }
        } else if (cfg->duration && now - p->origin >= dur_ns) {
            return false;
        }
        if (p->next - p->first >= p->cap)
            return true;        /* every slot taken: this one will start late */
        start_request(p, due);
        write_done(p);
    }
}

/* Wait for the sockets in flight until WAKE (or a deadline, or a signal), then act on them. */
static void wait_and_handle(struct probe *p, int64_t wake, struct pollfd *fds,
                            struct slot **who)
{
    nfds_t n = 0;
    bool kept_udp = false;
    for (long long i = p->first; i < p->next; i++) {
        struct slot *s = slot_of(p, i);
        if (s->state == DONE)
            continue;
        if (wake < 0 || s->deadline < wake)
            wake = s->deadline;
        if (s->state == UDP_WAITING && p->cfg->keepalive) {
            kept_udp = true;
            continue;
        }
        fds[n] = (struct pollfd){ .fd = s->c.fd,
                                  .events = s->state == CONNECTING ? POLLOUT : POLLIN };
        who[n++] = s;
    }
    if (kept_udp) {
        fds[n] = (struct pollfd){ .fd = p->udp.fd, .events = POLLIN };
        who[n++] = NULL;
    }
    int64_t left = wake < 0 ? 0 : wake - now_ns();
    if (left < 0)
        left = 0;
    struct timespec ts = { .tv_sec = left / 1000000000, .tv_nsec = left % 1000000000 };
    int ready = ppoll(fds, n, wake < 0 ? NULL : &ts, NULL);
    for (nfds_t k = 0; ready > 0 && k < n; k++) {
        struct slot *s = who[k];
        if (!fds[k].revents)
            continue;
        if (!s)
            udp_receive(p, p->udp.fd, NULL);
        else if (s->state == CONNECTING)
            connected(p, s);
        else if (s->state == READING)
            readable(p, s);
        else if (s->state == UDP_WAITING)
            udp_receive(p, s->c.fd, s);
    }
    expire(p, now_ns());
}

static bool run(struct probe *p)
{
    struct pollfd *fds = calloc((size_t)p->cap + 1, sizeof *fds);
    struct slot **who = calloc((size_t)p->cap + 1, sizeof *who);
    if (!fds || !who) {
        free(fds);
        free(who);
        return false;
    }
    bool starting = true;
    for (;;) {
        int64_t wake = -1;
        if (starting)
            starting = start_due(p, &wake);
        write_done(p);
        if (!starting && p->first == p->next)
            break;
        wait_and_handle(p, wake, fds, who);
        write_done(p);
    }
    free(fds);
    free(who);
    return true;
}

/* ---- main ------------------------------------------------------------------------------- */

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

    struct probe p = { .cfg = &cfg, .req = req, .req_len = (size_t)req_len, .out = out,
                       .udp = { .fd = -1, .ttl = -1 } };
    p.cap = window_size(&cfg);
    p.ring = calloc((size_t)p.cap, sizeof *p.ring);
    p.idle = calloc((size_t)p.cap, sizeof *p.idle);
    p.bufs = calloc((size_t)p.cap, sizeof *p.bufs);
    p.raw_fd = cfg.udp ? -1 : ttl_open(&cfg.dst);
    p.origin = p.last = now_ns();
    bool ran = p.ring && p.idle && p.bufs && run(&p);

    while (p.nidle)
        conn_close(&p.idle[--p.nidle]);
    conn_close(&p.udp);
    while (p.nbufs)
        free(p.bufs[--p.nbufs]);
    free(p.ring);
    free(p.idle);
    free(p.bufs);
    if (p.raw_fd >= 0)
        close(p.raw_fd);
    if (!ran) {
        fprintf(stderr, "httpprobe: out of memory\n");
        return 1;
    }
    fprintf(out, "{\"summary\":true,\"requests\":%lld,\"errors\":%lld,\"late\":%lld,"
                 "\"elapsed_s\":%.6f}\n", p.next, p.errors, p.late,
            (double)(p.last - p.origin) / 1e9);
    if (fclose(out) != 0) {
        fprintf(stderr, "httpprobe: writing output: %s\n", strerror(errno));
        return 1;
    }
    return 0;
}
