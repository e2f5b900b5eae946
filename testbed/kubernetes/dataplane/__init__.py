"""Service data planes (kube-proxy modes) and the health-check node port server.

model: what every mode is given (ServicePort, Endpoint, NodeContext) and the health state
base: the ServiceDataPlane interface a mode implements; registry: DATAPLANES, dataplane_for
iptables/: the iptables mode (names, rules, restore, proxier); healthserver: the server process
"""
