"""kube-proxy's iptables mode: upstream's rules, rendered and applied."""
