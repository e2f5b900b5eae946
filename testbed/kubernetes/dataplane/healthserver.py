"""kube-proxy's HTTP servers on a node, one process per node: health checks and metrics.

- the health-check node ports (upstream pkg/proxy/healthcheck service_health.go): a LoadBalancer
  Service with externalTrafficPolicy=Local gets a healthCheckNodePort; this server answers HTTP
  on it, 200 with ready local endpoints and 503 without, so the cloud LB only sends to nodes
  with a pod;
- the proxier health server (proxier_health.go), port 10256: /healthz and /livez, healthy
  unless a queued sync is older than the health timeout; /healthz also needs the node eligible;
- the metrics server (cmd/kube-proxy serveMetrics), port 10249 on 127.0.0.1: /metrics
  (metrics.render_metrics), /proxyMode, /healthz.
It answers from the JSON state file the data plane writes, read again when it changes.

Run:  python -m testbed.kubernetes.dataplane.healthserver --state FILE [--bind A]
          [--healthz-port P] [--metrics-bind A] [--metrics-port P] [--proxy-mode M]
docs/kube-proxy.md has the responses, the state file's format and what a bad file does.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

from testbed.kubernetes.dataplane.metrics import ProxyMetrics, render_metrics

PROXY_HEALTHZ_PORT = 10256  # upstream's default --healthz-bind-address port
METRICS_PORT = 10249  # upstream's default --metrics-bind-address 127.0.0.1:10249
# Upstream's healthTimeout is 2 x --sync-period (default 30 s): a queued sync older than this
# makes /healthz and /livez 503.
DEFAULT_HEALTH_TIMEOUT_S = 60.0
NOT_FOUND = "404 page not found\n"  # Go's http.NotFound body
MAX_REQUEST_BYTES = 16384
READ_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class ServiceHealth:
    """One health-check node port.

    namespace, name: the Service
    port: its healthCheckNodePort
    local_endpoints: ready endpoints of the Service on this node
    """

    namespace: str
    name: str
    port: int
    local_endpoints: int


@dataclass(frozen=True)
class ProxierHealth:
    """What the proxier health server knows (upstream proxierHealthServer's fields).

    last_updated: epoch seconds of the last successful sync (None: none yet)
    oldest_pending_queued: epoch seconds of the oldest sync request not yet synced (None: none)
    health_timeout: how long a queued sync may wait before kube-proxy is unhealthy
    node_eligible: the node is neither being deleted nor tainted ToBeDeletedByClusterAutoscaler
    """

    last_updated: float | None = None
    oldest_pending_queued: float | None = None
    health_timeout: float = DEFAULT_HEALTH_TIMEOUT_S
    node_eligible: bool = True

    def is_healthy(self, now: float) -> bool:
        """Upstream's isHealthy: nothing queued, or the oldest queued sync is not late yet."""
        pending = self.oldest_pending_queued
        return pending is None or now - pending < self.health_timeout


@dataclass(frozen=True)
class State:
    """Everything the server answers from: services by port, kube-proxy's own health, metrics.

    proxy_healthy: false forces every answer unhealthy (kube-proxy's sync is broken)
    """

    services: dict[int, ServiceHealth]
    proxy_healthy: bool = True
    proxier: ProxierHealth = ProxierHealth()
    metrics: ProxyMetrics = field(default_factory=ProxyMetrics)

    def healthy(self, now: float) -> bool:
        """The proxier's health (IsHealthy), which the service health checks report too."""
        return self.proxy_healthy and self.proxier.is_healthy(now)


class StateError(ValueError):
    """The state file is not what the testbed writes."""


def parse_state(text: str, source: str = "state") -> State:
    """Parse and check the JSON state; raise StateError naming the bad field."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise StateError(f"{source}: not JSON ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("services", []), list):
        raise StateError(f'{source}: expected {{"services": [...]}}')
    healthy = data.get("proxyHealthy", True)
    if not isinstance(healthy, bool):
        raise StateError(f"{source}: proxyHealthy must be true or false")
    services: dict[int, ServiceHealth] = {}
    for i, item in enumerate(data.get("services", [])):
        where = f"{source}: services[{i}]"
        if not isinstance(item, dict):
            raise StateError(f"{where}: expected an object")
        for key in ("namespace", "name"):
            if not isinstance(item.get(key), str) or not item[key]:
                raise StateError(f"{where}.{key}: expected a non-empty string")
        port, count = item.get("port"), item.get("local_endpoints", 0)
        if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
            raise StateError(f"{where}.port: {port!r} is not a port number (1-65535)")
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise StateError(f"{where}.local_endpoints: {count!r} is not a count >= 0")
        if port in services:
            raise StateError(f"{where}.port: {port} is used by two services")
        services[port] = ServiceHealth(item["namespace"], item["name"], port, count)
    return State(services, healthy, _parse_proxier(data.get("proxier", {}), source),
                 _parse_metrics(data.get("metrics", {}), source))


def _parse_proxier(data: object, source: str) -> ProxierHealth:
    if not isinstance(data, dict):
        raise StateError(f"{source}: proxier: expected an object")
    times = {}
    for key in ("lastUpdated", "oldestPendingQueued"):
        value = data.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise StateError(f"{source}: proxier.{key}: {value!r} is not a time (epoch seconds)")
        times[key] = None if value is None else float(value)
    timeout = data.get("healthTimeout", DEFAULT_HEALTH_TIMEOUT_S)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise StateError(f"{source}: proxier.healthTimeout: {timeout!r} is not seconds > 0")
    eligible = data.get("nodeEligible", True)
    if not isinstance(eligible, bool):
        raise StateError(f"{source}: proxier.nodeEligible must be true or false")
    return ProxierHealth(times["lastUpdated"], times["oldestPendingQueued"], float(timeout),
                         eligible)


def _parse_metrics(data: object, source: str) -> ProxyMetrics:
    if not isinstance(data, dict):
        raise StateError(f"{source}: metrics: expected an object")
    try:
        return ProxyMetrics.from_json(data)
    except (TypeError, ValueError) as err:
        raise StateError(f"{source}: metrics: {err}") from None


def service_response(svc: ServiceHealth, proxy_healthy: bool) -> tuple[int, dict[str, str], str]:
    """(status, headers, body) for a probe of `svc`, as upstream's hcHandler writes it."""
    healthy = svc.local_endpoints > 0 and proxy_healthy
    body = (
        "{\n"
        '\t"service": {\n'
        f"\t\t\"namespace\": {json.dumps(svc.namespace)},\n"
        f"\t\t\"name\": {json.dumps(svc.name)}\n"
        "\t},\n"
        f'\t"localEndpoints": {svc.local_endpoints},\n'
        f'\t"serviceProxyHealthy": {"true" if proxy_healthy else "false"}\n'
        "}"
    )
    headers = {
        "Content-Type": "application/json",
        "X-Content-Type-Options": "nosniff",
        "X-Load-Balancing-Endpoint-Weight": str(svc.local_endpoints),
    }
    return (200 if healthy else 503), headers, body


def go_time(t: float | None, started: float | None = None) -> str:
    """`t` (epoch seconds) as Go's time.Time.String() writes it in UTC: nanoseconds without
    trailing zeros, and with `started` (the process start) the monotonic reading " m=+S.NNNNNNNNN"
    a time.Now() value carries; None is Go's zero time."""
    if t is None:
        return "0001-01-01 00:00:00 +0000 UTC"
    ns = _nanoseconds(t)
    sec, frac = divmod(ns, 10**9)
    text = datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%d %H:%M:%S")
    if frac:
        text += "." + f"{frac:09d}".rstrip("0")
    text += " +0000 UTC"
    if started is not None:
        mono = max(0, ns - _nanoseconds(started))
        text += f" m=+{mono // 10**9}.{mono % 10**9:09d}"
    return text


def _nanoseconds(t: float) -> int:
    # through the float's shortest decimal form: 1714567890.125 is ...125 ns, not ...124999936
    return int((Decimal(repr(float(t))) * 10**9).to_integral_value())


def proxy_healthz_response(state: State, now: float, started: float | None = None,
                           livez: bool = False) -> tuple[int, dict[str, str], str]:
    """kube-proxy's /healthz (or /livez) on port 10256, as upstream's healthzHandler writes it.

    Healthy: no sync queued for longer than the health timeout (and, for /healthz, the node is
    eligible). While healthy upstream reports lastUpdated as the current time (older releases'
    meaning); while unhealthy, the time of the last successful sync.
    """
    healthy = state.healthy(now)
    eligible = state.proxier.node_eligible
    if not livez:
        healthy = healthy and eligible
    last = now if healthy else state.proxier.last_updated
    last_text, now_text = go_time(last, started), go_time(now, started)
    body = f'{{"lastUpdated": {json.dumps(last_text)},"currentTime": {json.dumps(now_text)}'
    body += "}" if livez else f', "nodeEligible": {"true" if eligible else "false"}}}'
    headers = {"Content-Type": "application/json", "X-Content-Type-Options": "nosniff"}
    return (200 if healthy else 503), headers, body


def _text(status: int, body: str) -> tuple[int, dict[str, str], str]:
    return status, {"Content-Type": "text/plain; charset=utf-8",
                    "X-Content-Type-Options": "nosniff"}, body


def request_path(request: bytes) -> str:
    """The path of an HTTP request's first line, without its query ("/" when there is none)."""
    parts = request.split(b"\r\n", 1)[0].split(b" ")
    target = parts[1].decode(errors="replace") if len(parts) > 1 else "/"
    return target.split("?", 1)[0] or "/"


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 503: "Service Unavailable"}


def http_bytes(status: int, headers: dict[str, str], body: str) -> bytes:
    """A complete HTTP/1.1 response that closes the connection."""
    payload = body.encode()
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    lines += [f"Content-Length: {len(payload)}", "Connection: close", "", ""]
    return "\r\n".join(lines).encode() + payload


class HealthServer:
    """Listens on every port in the state file and answers from the current state.

    state_path: the JSON state file
    bind: the address to listen on (0.0.0.0 in a node; 127.0.0.1 in tests)
    healthz_port: kube-proxy's /healthz port, or 0 for none
    """

    def __init__(self, state_path: str, bind: str = "0.0.0.0",
                 healthz_port: int = PROXY_HEALTHZ_PORT, metrics_bind: str = "127.0.0.1",
                 metrics_port: int = 0, proxy_mode: str = "iptables"):
        self.state_path = state_path
        self.bind = bind
        self.healthz_port = healthz_port
        self.metrics_bind, self.metrics_port = metrics_bind, metrics_port
        self.proxy_mode = proxy_mode
        self.healthz_total: dict[str, int] = {}   # kubeproxy_proxy_healthz_total by code
        self.livez_total: dict[str, int] = {}
        self.state = State({})
        self.mtime: int | None = None
        self.servers: dict[int, asyncio.AbstractServer] = {}
        self.started = time.time()
        self.stopping: asyncio.Event | None = None

    def load(self) -> bool:
        """Read the state file; keep the old state on error. True when the state was read."""
        try:
            mtime = os.stat(self.state_path).st_mtime_ns
            with open(self.state_path, encoding="utf-8") as f:
                self.state = parse_state(f.read(), self.state_path)
            self.mtime = mtime
            return True
        except (OSError, StateError) as err:
            print(f"healthserver: keeping the previous state: {err}", file=sys.stderr, flush=True)
            return False

    def changed_on_disk(self) -> bool:
        try:
            return os.stat(self.state_path).st_mtime_ns != self.mtime
        except OSError:
            return False

    async def reload(self) -> None:
        if self.load():
            await self.sync_listeners()

    async def sync_listeners(self) -> None:
        """Open ports that appeared in the state, close ports that went away."""
        wanted = set(self.state.services)
        if self.healthz_port:
            wanted.add(self.healthz_port)
        if self.metrics_port and self.metrics_port not in self.servers:
            await self._listen(self.metrics_port, self.metrics_bind)
        wanted.add(self.metrics_port)
        for port in sorted(set(self.servers) - wanted):
            server = self.servers.pop(port)
            server.close()
            await server.wait_closed()
        for port in sorted(wanted - set(self.servers) - {0}):
            await self._listen(port, self.bind)
        ports = ",".join(str(p) for p in sorted(self.servers))
        print(f"healthserver: listening on ports {ports}", flush=True)

    async def _listen(self, port: int, bind: str) -> None:
        try:
            self.servers[port] = await asyncio.start_server(
                functools.partial(self.handle, port=port), bind, port, reuse_address=True)
        except OSError as err:
            print(f"healthserver: cannot listen on {bind}:{port}: {err}",
                  file=sys.stderr, flush=True)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     port: int) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_S)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError):
            writer.close()
            return
        if self.changed_on_disk():
            await self.reload()
        writer.write(self.respond(port, request))
        try:
            await writer.drain()
        except ConnectionError:
            pass
        writer.close()

    def respond(self, port: int, request: bytes, now: float | None = None) -> bytes:
        if not request.split(b" ", 1)[0].isalpha():
            return http_bytes(400, {"Content-Type": "text/plain"}, "bad request\n")
        now = time.time() if now is None else now
        svc = self.state.services.get(port)
        if svc is not None:   # any path, as upstream's hcHandler
            return http_bytes(*service_response(svc, self.state.healthy(now)))
        path = request_path(request)
        if port == self.healthz_port and path in ("/healthz", "/livez"):
            livez = path == "/livez"
            answer = proxy_healthz_response(self.state, now, self.started, livez)
            counts = self.livez_total if livez else self.healthz_total
            counts[str(answer[0])] = counts.get(str(answer[0]), 0) + 1
            return http_bytes(*answer)
        if port == self.metrics_port and port:
            return http_bytes(*self.metrics_response(path))
        return http_bytes(*_text(404, NOT_FOUND))

    def metrics_response(self, path: str) -> tuple[int, dict[str, str], str]:
        """The metrics server's mux: /metrics, /proxyMode, /healthz, else Go's 404."""
        if path == "/metrics":
            body = render_metrics(self.state.metrics, self.healthz_total, self.livez_total)
            return 200, {"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}, body
        if path == "/proxyMode":
            return _text(200, self.proxy_mode)
        if path == "/healthz":
            return _text(200, "ok")
        return _text(404, NOT_FOUND)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.stopping = asyncio.Event()
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload()))
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        self.load()
        await self.sync_listeners()
        await self.stopping.wait()
        for server in self.servers.values():
            server.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testbed.kubernetes.dataplane.healthserver",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--state", required=True, help="JSON state file (see module docs)")
    parser.add_argument("--bind", default="0.0.0.0", help="address to listen on")
    parser.add_argument("--healthz-port", type=int, default=PROXY_HEALTHZ_PORT,
                        help="kube-proxy's own /healthz and /livez port (0: off)")
    parser.add_argument("--metrics-bind", default="127.0.0.1",
                        help="address of the metrics server")
    parser.add_argument("--metrics-port", type=int, default=0,
                        help=f"metrics server port (upstream's is {METRICS_PORT}; 0: off)")
    parser.add_argument("--proxy-mode", default="iptables", help="what /proxyMode answers")
    args = parser.parse_args(argv)
    asyncio.run(HealthServer(args.state, args.bind, args.healthz_port, args.metrics_bind,
                             args.metrics_port, args.proxy_mode).run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
