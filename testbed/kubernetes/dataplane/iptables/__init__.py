"""kube-proxy's iptables mode: upstream's rules, rendered (rules) and applied (restore, proxier)."""
