#!/bin/sh
# Build the eBPF kube-proxy's programs (bpf/lb.c) into build/bpf/lb.o at the repo root: CO-RE
# against the running kernel's BTF (build/bpf/vmlinux.h, dumped by bpftool), compiled by
# clang for the BPF target. No kernel headers needed. The Makefile calls it.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
out="$root/build/bpf"
mkdir -p "$out"
bpftool btf dump file /sys/kernel/btf/vmlinux format c > "$out/vmlinux.h.tmp"
mv "$out/vmlinux.h.tmp" "$out/vmlinux.h"
exec "${CLANG:-clang}" -O2 -g -Wall -Werror -target bpf -D__TARGET_ARCH_x86 \
    -I "$out" -c "$root/bpf/lb.c" -o "$out/lb.o"
