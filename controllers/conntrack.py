"""The fabric's own connection tracking: flushing an LB's UDP flows to a backend whose
draining ended.

A UDP "connection" through the LB is a conntrack entry that lives as long as the client keeps
sending (30 s idle timeout, refreshed by every datagram). When a deregistered ip target's
draining ends, a cloud LB with connection termination (AWS NLB's
`deregistration_delay.connection_termination.enabled`, GCP's connection draining) ends its
flows, and the client's next datagram is a new flow that goes to a registered target. The
core's drop flow (lb.cut_backend) ends TCP connections; for UDP the entries themselves must go,
or the client's datagrams would be dropped for as long as it sends.

OVS 3.1's NXT_CT_FLUSH deletes entries matching a partial tuple; os-ken has no encoder for it,
so `ovs-ofctl ct-flush` sends it (the entries of the userspace datapath, every bridge's).
"""

from __future__ import annotations

import logging

from controllers.openflow import CT_ZONE_DNAT

LOG = logging.getLogger("cnlb.vpc")


def flush_udp_to_backend_argv(bridge: str, ip: str, port: int) -> list[str]:
    """ovs-ofctl's ct-flush of the LB's DNATed UDP entries whose replies come from ip:port
    (the reply tuple: an empty original tuple matches any client and VIP)."""
    return ["ovs-ofctl", "-O", "OpenFlow13", "ct-flush", bridge, f"zone={CT_ZONE_DNAT}", "",
            f"ct_nw_src={ip},ct_nw_proto=17,ct_tp_src={port}"]


def run(argv: list[str]) -> None:
    """Run a flush; a failure is logged (the flows then end by the drop flow and idle
    timeout, as before), never raised into the controller's event handler."""
    from eventlet.green import subprocess  # green pipes: the hub keeps serving meanwhile
    try:
        done = subprocess.run(argv, capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        LOG.error("%s: %s", " ".join(argv), e)
        return
    if done.returncode != 0:
        LOG.error("%s: exit %d: %s", " ".join(argv), done.returncode,
                  done.stderr.decode(errors="replace").strip())
