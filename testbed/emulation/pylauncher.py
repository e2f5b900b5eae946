"""Forks Python servers into network namespaces: the Python counterpart of `podserver --launch`.

    python -S -m testbed.emulation.pylauncher

Reads one line per server on stdin: `--netns FILE MODULE ARG...`. The first line naming a
MODULE imports it here, once; each line then forks: the child enters the network namespace
FILE names (setns) and runs MODULE.main([ARG...]). Fifty nodes' kube-proxy servers cost fifty
fork()s of one warm interpreter instead of fifty `ip netns exec python` starts, which was most
of a thousand-pod cluster's time in "workloads".

Speaks testbed.emulation.launcher's protocol on stdout: `started PID`, `exit PID CODE` (CODE:
exit status, or -SIGNAL), `error WHY`. A server dies with its launcher (PR_SET_PDEATHSIG);
SIGTERM or SIGINT to the launcher is passed to every server; after the end of its stdin, it
exits once its last server has. Standard library only: it starts without site-packages (-S).
"""

from __future__ import annotations

import ctypes
import importlib
import os
import selectors
import signal
import sys
from types import ModuleType

CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1


class Launcher:
    """The launcher's state: its servers, the modules it has imported, why it will stop."""

    def __init__(self) -> None:
        self.kids: set[int] = set()
        self.modules: dict[str, ModuleType] = {}
        self.stopping = False   # SIGTERM/SIGINT: servers told to stop, no more starts
        self.eof = False        # stdin closed: no more starts
        self.libc = ctypes.CDLL(None, use_errno=True)

    def report(self, line: str) -> None:
        """One report line; the testbed may be gone (EPIPE): the servers still get reaped."""
        try:
            os.write(sys.stdout.fileno(), (line + "\n").encode())
        except OSError:
            pass

    def launch(self, line: str) -> None:
        words = line.split()
        if len(words) < 3 or words[0] != "--netns":
            self.report("error expected: --netns FILE MODULE ARG...")
            return
        netns, name, args = words[1], words[2], words[3:]
        try:
            module = self.modules.get(name) or importlib.import_module(name)
        except ImportError as err:
            self.report(f"error import {name}: {err}".replace("\n", " "))
            return
        self.modules[name] = module
        me = os.getpid()
        try:
            pid = os.fork()
        except OSError as err:
            self.report(f"error fork: {err.strerror}")
            return
        if pid == 0:
            self.become_server(me, netns, module, args)
        self.kids.add(pid)
        self.report(f"started {pid}")

    def become_server(self, launcher_pid: int, netns: str, module: ModuleType,
                      args: list[str]) -> None:
        """In the forked child: enter the namespace and run the server; never returns."""
        code = 1
        try:
            # die with the launcher: nobody else would reap this server or tell the testbed
            if self.libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL) != 0 \
                    or os.getppid() != launcher_pid:
                os._exit(1)
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, signal.SIG_DFL)
            null = os.open(os.devnull, os.O_RDWR)
            os.dup2(null, 0)   # the launcher's stdin must see EOF when the testbed closes it
            os.dup2(null, 1)   # the reports' pipe is the launcher's alone
            os.close(null)
            fd = os.open(netns, os.O_RDONLY)
            if self.libc.setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err), netns)
            os.close(fd)
            code = module.main(args) or 0
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else 1
        except BaseException as err:   # the server's failure is its own; say it, exit 1
            print(f"{module.__name__} in {netns}: {err!r}", file=sys.stderr)
        finally:
            sys.stderr.flush()
            os._exit(code)

    def reap(self) -> None:
        while self.kids:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.kids.discard(pid)
            code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
            self.report(f"exit {pid} {code}")

    def stop(self) -> None:
        self.stopping = True
        for pid in list(self.kids):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def run(self) -> int:
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        caught: list[int] = []
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda s, _frame: caught.append(s))
        sel = selectors.DefaultSelector()
        sel.register(wake_r, selectors.EVENT_READ)
        sel.register(0, selectors.EVENT_READ)
        rest = b""
        while not ((self.eof or self.stopping) and not self.kids):
            for key, _ in sel.select():
                if key.fd == wake_r:
                    os.read(wake_r, 512)
                    continue
                chunk = os.read(0, 65536)
                if not chunk:
                    self.eof = True
                    sel.unregister(0)
                    continue
                *lines, rest = (rest + chunk).split(b"\n")
                for line in lines:
                    if line.strip() and not self.stopping:
                        self.launch(line.decode(errors="replace"))
            while caught:
                if caught.pop() == signal.SIGCHLD:
                    self.reap()
                else:
                    self.stop()
            self.reap()
        return 0


def main() -> int:
    return Launcher().run()


if __name__ == "__main__":
    sys.exit(main())
