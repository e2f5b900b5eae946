"""Start the VPC controller, or (internally) its health checker.

    python -m controllers.run --config fabric.json --ofp-port 16653 --rest-port 18080 \\
        [--log controller.log] [--debug]

Both the OpenFlow listener and the REST API listen on 127.0.0.1 only. SIGTERM or SIGINT stops
the health-checker child and exits 0 at once. Readiness: `GET /v1/health` answers 200 once
every switch of fabric.json is connected and programmed (503 until then).

    python -m controllers.run --checker

is the health checker the controller starts inside the LB host's network namespace (see
vpc_app.HealthChecker): JSON lines in on stdin ({"targets": [...]}, the whole set each time),
one JSON line per check out on stdout. It needs nothing but the standard library.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
import warnings

LOG = logging.getLogger("cnlb.run")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m controllers.run", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="fabric.json written by the testbed")
    ap.add_argument("--ofp-port", type=int, default=16653, help="OpenFlow port on 127.0.0.1")
    ap.add_argument("--rest-port", type=int, default=18080, help="REST port on 127.0.0.1")
    ap.add_argument("--log", help="log file (default: stderr)")
    ap.add_argument("--debug", action="store_true", help="log os-ken's debug messages too")
    ap.add_argument("--checker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if not args.checker and not args.config:
        ap.error("--config is required")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.checker:
        return checker_main()
    # The native hub crashes on Ctrl-C (its HubThread has no kill); eventlet's does not. The
    # hub type is read once, when os_ken.lib.hub is first imported -- so before any os_ken import.
    os.environ["OSKEN_HUB_TYPE"] = "eventlet"
    # Handlers first: a background job starts with SIGINT ignored, and a signal that comes
    # during the imports below must still stop us.
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    logging.basicConfig(filename=args.log, level=logging.DEBUG if args.debug else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.debug:
        logging.getLogger("os_ken").setLevel(logging.WARNING)
        logging.getLogger("os_ken.lib.hub").setLevel(logging.WARNING)

    warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
    from os_ken.lib import hub
    if hub.HUB_TYPE != "eventlet":
        print("controllers.run: os_ken was imported before OSKEN_HUB_TYPE was set", file=sys.stderr)
        return 2
    hub.patch(thread=False)          # as os-ken's (former) manager does

    from os_ken import cfg as os_ken_cfg
    from os_ken.base.app_manager import AppManager
    import os_ken.controller.controller  # noqa: F401  (registers the ofp-* options)
    from controllers import vpc_app  # noqa: F401  (registers the vpc-* options)
    from controllers import vpc_core

    config = os.path.abspath(args.config)
    try:
        with open(config) as f:
            vpc_core.parse_fabric(json.load(f), source=config)
    except (OSError, ValueError) as e:       # ConfigError is a ValueError, and so is bad JSON
        print(f"controllers.run: {e}", file=sys.stderr)
        return 2

    conf = os_ken_cfg.CONF
    conf(args=[], project="os_ken")
    conf.set_override("ofp_listen_host", "127.0.0.1")
    conf.set_override("ofp_tcp_listen_port", args.ofp_port)
    conf.set_override("vpc_config", config)
    conf.set_override("vpc_rest_host", "127.0.0.1")
    conf.set_override("vpc_rest_port", args.rest_port)

    LOG.info("VPC controller %s: OpenFlow 127.0.0.1:%d, REST 127.0.0.1:%d, config %s",
             vpc_app.controllers.__version__, args.ofp_port, args.rest_port, config)
    AppManager.run_apps(["controllers.vpc_app"])
    return 0


def _on_signal(signum, frame):
    """SIGTERM/SIGINT: stop the checker child, exit 0 now (flows stay on the switches)."""
    LOG.info("signal %d: stopping", signum)
    app_manager = sys.modules.get("os_ken.base.app_manager")
    instance = app_manager.AppManager._instance if app_manager else None
    app = instance.applications.get("VpcController") if instance else None
    if app is not None:
        _stop_child(app.checker.proc)
    logging.shutdown()
    os._exit(0)


def _stop_child(proc, timeout_s: float = 1.0) -> None:
    """SIGTERM the checker, SIGKILL it if it is still there after timeout_s; never blocks long.

    Runs inside a signal handler, so it uses the unpatched time.sleep, not eventlet's.
    """
    if proc is None or proc.poll() is not None:
        return
    from eventlet import patcher
    real_sleep = patcher.original("time").sleep
    proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if os.waitpid(proc.pid, os.WNOHANG) != (0, 0):
            return
        real_sleep(0.02)
    proc.kill()


# --------------------------------------------------------------------------------------------
# The health checker (runs in the LB host's network namespace, standard library only)
# --------------------------------------------------------------------------------------------

def checker_main() -> int:
    try:
        asyncio.run(_checker())
    except (BrokenPipeError, KeyboardInterrupt):
        pass
    return 0


def _emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def _checker() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=64 * 1024 * 1024)   # one line lists every target: 1000 pods exceed the 64 KiB default
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    _emit({"event": "ready", "pid": os.getpid(), "netns": os.readlink("/proc/self/ns/net")})
    tasks: dict[str, tuple[dict, asyncio.Task]] = {}
    while True:
        line = await reader.readline()
        if not line:                          # the controller is gone
            return
        try:
            targets = {t["id"]: t for t in json.loads(line)["targets"]}
        except (ValueError, KeyError, TypeError) as e:
            _emit({"event": "bad-input", "error": str(e)})
            continue
        for tid in list(tasks):
            if tasks[tid][0] != targets.get(tid):
                tasks.pop(tid)[1].cancel()
        for tid, t in targets.items():
            if tid not in tasks:
                tasks[tid] = (t, asyncio.create_task(_check_forever(t)))
        _emit({"event": "targets", "count": len(tasks)})


async def _check_forever(t: dict) -> None:
    loop = asyncio.get_running_loop()
    while True:
        start = loop.time()
        _emit(await probe(t["ip"], t["port"], t["path"], t["timeout_s"], t["id"]))
        await asyncio.sleep(max(0.0, t["interval_s"] - (loop.time() - start)))


async def probe(ip: str, port: int, path: str, timeout_s: float, tid: str = "") -> dict:
    """One HTTP GET; ok when the status is 200-399 within timeout_s."""
    t0 = time.monotonic()
    result: dict = {"id": tid, "ok": False}
    writer = None
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(ip, port)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {ip}:{port}\r\n"
                         f"User-Agent: cnlb-lb-health-checker\r\nConnection: close\r\n\r\n"
                         .encode())
            await writer.drain()
            status_line = await reader.readline()
        status = int(status_line.split()[1])
        result.update(ok=200 <= status < 400, status=status)
    except TimeoutError:
        result["error"] = "timeout"
    except OSError as e:
        result["error"] = os.strerror(e.errno) if e.errno else (str(e) or type(e).__name__)
    except (ValueError, IndexError):
        result["error"] = "not an HTTP response"
    finally:
        if writer is not None:
            writer.close()
    result["ms"] = round((time.monotonic() - t0) * 1000, 2)
    return result


if __name__ == "__main__":
    sys.exit(main())
