"""kube-proxy's nftables mode: upstream's ruleset, named (names), rendered (rules), applied
(proxier)."""
