"""The VPC controller: an os-ken (Ryu API) app that plays a cloud VPC and its load balancer.
Modules, lower layers first (a module imports only modules above it in this list):
    config: fabric.json -> validated dataclasses (standard library only); health: backend
    health states and the checker (parent and child sides); openflow: tables, priorities,
    cookies, the flow, group and conntrack builders; topology: which port leads where;
    icmp: the ICMP time-exceeded answer; conntrack: flushing a UDP LB's entries to a backend
    whose draining ended; routing: ARP, /32 routes, L2, pod routes; selection:
    how an LB picks a backend (select group, hash slots, client-IP slots); lb: the load
    balancer's state and flows (draining, in-VPC clients); bgp: prefixes the fabric's BGP
    speaker learned (Calico-style routing), as routes; vpc: the pure core, fabric config
    in, OpenFlow 1.3 messages out; service: switch states + core + checker, one method per
    event and the timed actions (no os-ken loop); rest: the REST API over the service; app:
    the os-ken app; run: the launcher. See docs/controller.md.
"""

__version__ = "0.1.0"
