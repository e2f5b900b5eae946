"""Start the VPC controller, or (internally) its health checker.

    python -m controllers.run --config fabric.json --ofp-port 16653 --rest-port 18080 \\
        [--log controller.log] [--debug]

OpenFlow and REST listen on 127.0.0.1 only; SIGTERM or SIGINT stops the health-checker child
and exits 0 at once. `python -m controllers.run --checker` is the checker child itself
(health.checker_main, standard library only). The manual is docs/controller.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
import warnings

from controllers.health import checker_main  # standard library only, like this module

LOG = logging.getLogger("cnlb.run")

# The module os-ken's AppManager loads: it must define the OSKenApp subclass itself.
APP_MODULE = "controllers.app"


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

    # os-ken's app_manager must be imported before its controller module (a circular import).
    # isort: off
    from os_ken import cfg as os_ken_cfg
    from os_ken.base.app_manager import AppManager
    import os_ken.controller.controller  # noqa: F401  (registers the ofp-* options)
    # isort: on

    import controllers
    from controllers import app  # noqa: F401  (registers the vpc-* options)
    from controllers.config import parse_fabric

    config = os.path.abspath(args.config)
    try:
        with open(config) as f:
            parse_fabric(json.load(f), source=config)
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
             controllers.__version__, args.ofp_port, args.rest_port, config)
    AppManager.run_apps([APP_MODULE])
    return 0


def _on_signal(signum, frame):
    """SIGTERM/SIGINT: stop the checker child, exit 0 now (flows stay on the switches)."""
    LOG.info("signal %d: stopping", signum)
    app_manager = sys.modules.get("os_ken.base.app_manager")
    instance = app_manager.AppManager._instance if app_manager else None
    app = instance.applications.get("VpcController") if instance else None
    if app is not None:
        _stop_child(app.service.checker.proc)
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


if __name__ == "__main__":
    sys.exit(main())
