#!/bin/sh
# The test suite, as `make test` runs it: the pure unit tests in a second process beside the
# integration tests (which build one cluster at a time and so run in order, in this one). The
# unit tests' output is kept in a temporary file and printed when they end; the exit status
# is a failure if either part failed.
set -u
PY=${1:-.venv/bin/python}
unit=
log=$(mktemp "${TMPDIR:-/tmp}/cnlb-unit-tests.XXXXXX")
trap 'rm -f "$log"' EXIT
trap '[ -n "$unit" ] && kill "$unit" 2>/dev/null; exit 130' INT TERM
"$PY" -m pytest tests/unit -q -p no:cacheprovider >"$log" 2>&1 &
unit=$!
"$PY" -m pytest tests/integration -q -rs --durations=30
integration=$?
wait "$unit"
units=$?
echo "---- unit tests (tests/unit, run beside the integration tests) ----"
cat "$log"
[ "$integration" -eq 0 ] && [ "$units" -eq 0 ]
