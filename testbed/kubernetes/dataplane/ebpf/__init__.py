"""kube-proxy's eBPF mode: maps (the node's map entries as text, Maglev), proxier (load, attach,
sync through bpftool). The programs are bpf/lb.c."""
