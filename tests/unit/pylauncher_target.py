"""A server for tests of testbed.emulation.pylauncher: writes where it runs, then waits.

main([FILE]) writes "PID NETNS" to FILE (NETNS: its network namespace's link) and waits for
SIGTERM, then exits with status 3 (so a test sees the code travel back).
"""

import os
import signal


def main(argv):
    path = argv[0]
    with open(path + ".tmp", "w") as fh:
        fh.write(f"{os.getpid()} {os.readlink('/proc/self/ns/net')}")
    os.replace(path + ".tmp", path)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(3))
    while True:
        signal.pause()
