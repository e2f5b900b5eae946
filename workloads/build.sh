#!/bin/sh
# Build the pod's HTTP server (workloads/podserver.c) into build/podserver at the repo root.
# Works from any directory; the Makefile calls it. CC overrides the compiler (default cc).
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$root/build"
# Also the measuring HTTP client (workloads/httpprobe.c) into build/httpprobe, same flags.
"${CC:-cc}" -O2 -Wall -Wextra -Werror -std=c11 -D_GNU_SOURCE \
    -o "$root/build/httpprobe" "$root/workloads/httpprobe.c"
exec "${CC:-cc}" -O2 -Wall -Wextra -Werror -std=c11 -D_GNU_SOURCE \
    -o "$root/build/podserver" "$root/workloads/podserver.c"
