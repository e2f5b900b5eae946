"""kube-proxy's health-check node ports, one process per node.

A LoadBalancer Service with externalTrafficPolicy=Local gets a healthCheckNodePort; on every
node this server answers HTTP on it, 200 with ready local endpoints and 503 without (upstream's
pkg/proxy/healthcheck), so the cloud LB only sends to nodes with a pod. It answers from the JSON
state file the data plane writes (model.health_check_state), read again when it changes.

Run:  python -m testbed.kubernetes.dataplane.healthserver --state FILE [--bind A] [--healthz-port P]
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
from dataclasses import dataclass
from datetime import UTC, datetime

PROXY_HEALTHZ_PORT = 10256  # upstream's default --healthz-bind-address port
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
class State:
    """Everything the server answers from: services by port, and kube-proxy's own health."""

    services: dict[int, ServiceHealth]
    proxy_healthy: bool = True


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
    return State(services, healthy)


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


def proxy_healthz_response(started: float, proxy_healthy: bool) -> tuple[int, dict[str, str], str]:
    """kube-proxy's own /healthz: when it last synced (here: when the server started)."""
    def stamp(t: float) -> str:
        return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S.%f +0000 UTC")

    body = json.dumps({"lastUpdated": stamp(started), "currentTime": stamp(time.time())})
    headers = {"Content-Type": "application/json", "X-Content-Type-Options": "nosniff"}
    return (200 if proxy_healthy else 503), headers, body


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
                 healthz_port: int = PROXY_HEALTHZ_PORT):
        self.state_path = state_path
        self.bind = bind
        self.healthz_port = healthz_port
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
        for port in sorted(set(self.servers) - wanted):
            server = self.servers.pop(port)
            server.close()
            await server.wait_closed()
        for port in sorted(wanted - set(self.servers)):
            try:
                self.servers[port] = await asyncio.start_server(
                    functools.partial(self.handle, port=port), self.bind, port,
                    reuse_address=True,
                )
            except OSError as err:
                print(f"healthserver: cannot listen on {self.bind}:{port}: {err}",
                      file=sys.stderr, flush=True)
        ports = ",".join(str(p) for p in sorted(self.servers))
        print(f"healthserver: listening on {self.bind} ports {ports}", flush=True)

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

    def respond(self, port: int, request: bytes) -> bytes:
        if not request.split(b" ", 1)[0].isalpha():
            return http_bytes(400, {"Content-Type": "text/plain"}, "bad request\n")
        svc = self.state.services.get(port)
        if svc is not None:
            return http_bytes(*service_response(svc, self.state.proxy_healthy))
        if port == self.healthz_port:
            return http_bytes(*proxy_healthz_response(self.started, self.state.proxy_healthy))
        return http_bytes(404, {"Content-Type": "text/plain"}, "no such service\n")

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
                        help="kube-proxy's own /healthz port (0: off)")
    args = parser.parse_args(argv)
    asyncio.run(HealthServer(args.state, args.bind, args.healthz_port).run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
