"""kube-proxy's IPVS mode as upstream's pkg/proxy/ipvs writes it: ipsets.py (the sets and their
entries), state.py (a node's virtual servers, real servers, sets and kube-ipvs0 addresses, pure),
rules.py (the texts each tool loads, whole and as a change) and proxier.py (the mode on the
emulated nodes, registered as "ipvs"). docs/kube-proxy.md tells the story.
"""
