"""`cnlb`'s entry: parse, run one command, turn errors into exit statuses.

Exit status: 0 success, 1 a check or run failed, 2 bad input (file or flags, one line per
problem), 3 the machine cannot do it (not root, OVS missing, a cluster is held...), 130
interrupted.
"""

from __future__ import annotations

import signal
import sys

from testbed.cli.parser import build_parser
from testbed.errors import EXIT_BAD_INPUT, EnvironmentProblem, InputError, UsageError

EXIT_ENV, EXIT_INTERRUPTED = 3, 130
BUILDING_COMMANDS = ("up", "run")   # they tear down what they made before exiting


def main(argv=None) -> int:
    parser = build_parser()
    builds = False   # only commands that build may say, when interrupted, what they removed
    try:
        args = parser.parse_args(argv)
        builds = args.command in BUILDING_COMMANDS
        if not getattr(args, "func", None):
            parser.print_help()
            return EXIT_BAD_INPUT
        _install_sigterm()
        return args.func(args) or 0
    except InputError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_BAD_INPUT
    except UsageError as exc:
        print(exc, file=sys.stderr)
        return EXIT_BAD_INPUT
    except EnvironmentProblem as exc:
        print(f"cnlb: {exc}", file=sys.stderr)
        return EXIT_ENV
    except KeyboardInterrupt:
        print("cnlb: interrupted" + ("; everything the testbed made was removed" if builds else ""),
              file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return 0


def _install_sigterm():
    def handler(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, handler)
