"""Reading each section of a topology file (vpc, cni, nodes, deployments, loadBalancer, clients,
links) into the model, one problem per line with its field (services: testbed.spec.services;
kubernetes: testbed.spec.timing).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any

from testbed.spec.fields import (
    NAME_RE,
    Reader,
    address,
    boolean,
    choice,
    did_you_mean,
    duration_ms,
    integer,
    kind_of,
    name,
    network,
    number,
    text,
)
from testbed.spec.model import (
    DEFAULT_CLIENT,
    DEFAULT_POD_CIDR,
    DEFAULT_SERVICE_CIDR,
    DEFAULT_VPC,
    GATEWAY_SUBNETS,
    INTERNET_CIDR,
    LB_ADDRESS_KINDS,
    LB_CIDR,
    LB_HOST,
    LB_KINDS,
    MAX_CLIENTS,
    MAX_NODES,
    MAX_PODS,
    MAX_SUBNETS,
    MAX_VNI,
    MIN_INTERVAL_MS,
    MIN_TIMEOUT_MS,
    MODE_HINT,
    MODES,
    PRIVATE_RANGES,
    SHARED_RANGE,
    SPECIAL_RANGES,
    SWITCH_NAME_RE,
    VIP_RANGE,
    Bgp,
    Client,
    Cni,
    Deployment,
    HealthCheck,
    Links,
    LoadBalancer,
    Node,
    Subnet,
    Vpc,
)
from testbed.spec.yamldoc import Path


def written_path(r: Reader, path: Path) -> Path:
    """The path if the file has that field, else its nearest ancestor the file has: a problem
    about a default value points at a line the file has and names no field it lacks."""
    path = tuple(path)
    while path and not r.has(path):
        path = path[:-1]
    return path


def read_vpc(r: Reader) -> Vpc:
    path = ("vpc",)
    r.mapping(path, {"cidr", "subnets", "maxPodsPerNode"})
    cidr = r.get(path, "cidr", network, default=DEFAULT_VPC)
    if cidr is not None and not any(cidr.subnet_of(p) for p in PRIVATE_RANGES):
        r.problem(path + ("cidr",), f"{cidr} is not a private range: {_holds(cidr)}",
                  "use a range inside 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16, "
                  "e.g. 192.168.0.0/16")
        cidr = None
    subnets = []
    raw = r.value(path + ("subnets",))
    if not r.has(path + ("subnets",)) or raw in (None, {}):
        # no subnets written: one subnet, the VPC's first /24 (or the whole VPC if smaller)
        base = cidr or DEFAULT_VPC
        if base.prefixlen > 25:
            r.problem(path + ("cidr",), f"{base} has no room for a subnet (/25 is the smallest)",
                      "use /25 or larger for vpc.cidr (a /16 is usual)")
        subnets.append(Subnet("default", next(base.subnets(new_prefix=24))
                              if base.prefixlen <= 24 else base))
    for sname in r.mapping(path + ("subnets",), None, what="subnet name: CIDR"):
        spath = path + ("subnets", sname)
        try:
            name(12)(sname)
        except ValueError as exc:
            r.problem(spath, str(exc), "name subnets like az-a")
            continue
        if sname in GATEWAY_SUBNETS:
            r.problem(spath, f"'{sname}' is the name of the testbed's own {sname} gateway",
                      "name subnets like az-a")
            continue
        net = r.get(path + ("subnets",), sname, network,
                    fix="write the subnet as a CIDR like 192.168.1.0/24")
        if net is None:
            continue
        if cidr is not None and not net.subnet_of(cidr):
            r.problem(spath, f"{net} is not inside the VPC {cidr}",
                      f"pick a subnet inside {cidr} or widen vpc.cidr")
        if net.prefixlen > 25:
            r.problem(spath, f"/{net.prefixlen} is too small for a subnet",
                      "use /25 or larger (a /24 is usual)")
        for other in subnets:
            if net.overlaps(other.cidr):
                r.problem(spath, f"{net} overlaps subnet '{other.name}' ({other.cidr})",
                          "give each subnet its own range")
        subnets.append(Subnet(sname, net))
    if len(subnets) > MAX_SUBNETS:
        r.problem(path + ("subnets",), f"{len(subnets)} subnets is more than the {MAX_SUBNETS} "
                  "supported", f"use at most {MAX_SUBNETS} subnets")
    max_pods = r.get(path, "maxPodsPerNode", integer(1, 250), default=17,
                     fix="set maxPodsPerNode between 1 and 250 (an m5.large has 29 slots)")
    return Vpc(cidr or DEFAULT_VPC, tuple(subnets), max_pods or 17)


def _holds(net: ipaddress.IPv4Network) -> str:
    """What a range that is not private holds instead, for the message."""
    for special, what in SPECIAL_RANGES:
        if net.overlaps(special):
            return f"it overlaps {what}"
    return "it holds public addresses"


def read_cni(r: Reader) -> Cni:
    path = ("cni",)
    r.mapping(path, {"overlay", "podCIDR", "nodePrefix", "serviceCIDR", "vxlanPort", "vni", "mtu",
                     "ipMasq", "routing", "blockSize", "bgp"})
    nets = {}
    for key, default, example in (("podCIDR", DEFAULT_POD_CIDR, "10.244.0.0/16"),
                                  ("serviceCIDR", DEFAULT_SERVICE_CIDR, "10.96.0.0/12")):
        net = r.get(path, key, network, default=default)
        if net is not None and not any(net.subnet_of(p) for p in PRIVATE_RANGES + (SHARED_RANGE,)):
            r.problem(path + (key,), f"{net} is not a private range: {_holds(net)}",
                      f"use a private range such as {example} (RFC 1918, or 100.64.0.0/10)")
            net = None
        nets[key] = net
    return Cni(
        overlay=r.get(path, "overlay", choice("vxlan", "host-gw"), default="vxlan"),
        pod_cidr=nets["podCIDR"],
        node_prefix=r.get(path, "nodePrefix", integer(16, 28), default=24),
        service_cidr=nets["serviceCIDR"],
        vxlan_port=r.get(path, "vxlanPort", integer(1, 65535), default=8472),
        vxlan_vni=r.get(path, "vni", integer(1, MAX_VNI), default=1,
                        fix=f"use a VNI of 1-{MAX_VNI}: the node's device is flannel.<VNI>, and "
                            "interface names have at most 15 characters"),
        mtu=r.get(path, "mtu", integer(1280, 1500), default=1450),
        ip_masq=r.get(path, "ipMasq", boolean, default=True,
                      fix="write true (flannel's default: pods' traffic to addresses outside the "
                          "pod range takes the node's address) or false"),
        routing=r.get(path, "routing", choice("default", "bgp"), default="default",
                      fix="write bgp (Calico-style: pod blocks announced by BGP, no overlay) or "
                          "leave it out"),
        block_size=r.get(path, "blockSize", integer(20, 32), default=26,
                         fix="use a block size of 20-32 (Calico's default: 26)"),
        bgp=read_bgp(r),
    )


def variant_cni(r: Reader, path: Path) -> str | None:
    """An experiment variant's `cni`: bgp, or None (the topology's cni.routing)."""
    return r.get(path, "cni", choice("bgp"), default=None, fix="write bgp or leave it out")


def read_bgp(r: Reader) -> Bgp:
    """cni.bgp: Calico's BGPConfiguration and its BGPPeer to the fabric, in a few fields."""
    path = ("cni", "bgp")
    r.mapping(path, {"asNumber", "nodeToNodeMesh", "fabricPeer", "fabricASNumber", "holdTime"})
    asn = integer(1, 4294967295)
    return Bgp(
        as_number=r.get(path, "asNumber", asn, default=64512),
        node_to_node_mesh=r.get(path, "nodeToNodeMesh", boolean, default=True),
        fabric_peer=r.get(path, "fabricPeer", boolean, default=True),
        fabric_as_number=r.get(path, "fabricASNumber", asn, default=65000),
        hold_time_s=r.get(path, "holdTime", integer(3, 65535), default=90,
                          fix="use a hold time of 3-65535 seconds (BGP's minimum is 3)"),
    )


def _host_name(r: Reader, path: Path, value: str, kind: str, example: str) -> bool:
    """Check a node's or client's name (a Mininet host); report and return False if bad."""
    try:
        name(12)(value)
    except ValueError as exc:
        r.problem(path, str(exc), f"name {kind}s like {example} (at most 12 characters)")
        return False
    if value == LB_HOST or SWITCH_NAME_RE.fullmatch(value):
        what = ("the load balancer's health-check host" if value == LB_HOST
                else "a switch of the fabric (vpc0 is the core, vpc1... the subnets)")
        r.problem(path, f"'{value}' is the testbed's name for {what}",
                  f"name the {kind} like {example} ({LB_HOST} and vpc<N> are taken)")
        return False
    return True


def read_nodes(r: Reader, vpc: Vpc) -> tuple[Node, ...]:
    raw = r.mapping(("nodes",), None, what="node name: {subnet: ...}")
    subnet_names = [s.name for s in vpc.subnets]
    nodes = []
    if r.value(("nodes",)) in (None, {}) or (isinstance(r.value(("nodes",)), dict) and not raw):
        r.problem(("nodes",), "no nodes", "add at least one node, e.g. 'node1: {subnet: az-a}'")
    if len(raw) > MAX_NODES:
        r.problem(("nodes",), f"{len(raw)} nodes is more than the {MAX_NODES} supported",
                  f"use at most {MAX_NODES} nodes")
        return ()
    for nname in raw:
        path = ("nodes", nname)
        if not _host_name(r, path, nname, "node", "node1"):
            continue
        r.mapping(path, {"subnet"})
        if not isinstance(r.value(path), (dict, type(None))):
            continue
        if r.has(path + ("subnet",)):
            subnet = r.get(path, "subnet", text)
            if subnet is None:
                continue
        elif len(subnet_names) == 1:
            subnet = subnet_names[0]
        else:   # several subnets (or none that parsed, which is reported at vpc.subnets)
            if subnet_names:
                r.problem(path + ("subnet",), f"missing: the VPC has {len(subnet_names)} subnets",
                          f"add 'subnet:' with one of {', '.join(subnet_names)}")
            continue
        if subnet not in subnet_names:
            if not unknown_ref(subnet, declared_subnets(r), 12):
                continue
            r.problem(path + ("subnet",), f"unknown subnet '{subnet}'",
                      did_you_mean(subnet, subnet_names, f"use one of {', '.join(subnet_names)}"))
            continue
        nodes.append(Node(nname, subnet))
    return tuple(nodes)


def declared(r: Reader, section: str) -> list[str]:
    """Every name written in a section, valid or not: references are checked against these, so
    one bad node does not also make every reference to it an error."""
    raw = r.value((section,))
    return list(raw) if isinstance(raw, dict) else []


def unknown_ref(ref: str, declared: Sequence[str], max_len: int) -> bool:
    """Whether a reference is to report as unknown: it names nothing declared, and every
    declared name is well formed (else the reference may mean the ill-formed one, a 'node2'
    with a newline, say, which is reported where it is declared)."""
    def well_formed(n: object) -> bool:
        return isinstance(n, str) and bool(NAME_RE.fullmatch(n)) and len(n) <= max_len
    return ref not in declared and all(well_formed(n) for n in declared)


def declared_subnets(r: Reader) -> list[str]:
    raw = r.value(("vpc", "subnets"))
    return list(raw) if isinstance(raw, dict) and raw else ["default"]


def read_deployments(r: Reader, node_names: Sequence[str]) -> tuple[Deployment, ...]:
    raw = r.mapping(("deployments",), None, what="deployment name: {replicas: ...}")
    out = []
    total = 0
    for dname in raw:
        path = ("deployments", dname)
        try:
            name(20)(dname)
        except ValueError as exc:
            r.problem(path, str(exc), "name deployments like web (at most 20 characters)")
            continue
        r.mapping(path, {"replicas", "placement", "port", *ROLLOUT_KEYS},
                  what="replicas, placement, port")
        if not isinstance(r.value(path), (dict, type(None))):
            continue
        replicas = r.get(path, "replicas", integer(0, MAX_PODS), default=1,
                         fix=f"set replicas between 0 and {MAX_PODS}")
        port = r.get(path, "port", integer(1, 65535), default=8080, fix="use a port in 1-65535")
        placement = _placement(r, path, replicas, node_names)
        rollout = read_rollout_fields(r, path)
        if replicas is not None and total <= MAX_PODS < total + replicas:
            r.problem(written_path(r, path + ("replicas",)),
                      f"{total + replicas} pods in all deployments is more than the {MAX_PODS} "
                      "supported", f"use at most {MAX_PODS} pods in all")
        total += replicas or 0
        if replicas is not None and port is not None and placement is not None:
            out.append(Deployment(dname, replicas, placement, port, **rollout))
    return tuple(out)


# A deployment's rollout fields, in Kubernetes' names (Deployment spec and its pod template's
# readinessGates); what they do: testbed.kubernetes.deployment, docs/rollout.md.
ROLLOUT_KEYS = ("strategy", "minReadySeconds", "readinessGates")


def int_or_percent(raw: object) -> int | str:
    """An IntOrString as a Deployment's validation accepts it: a count >= 0 or "N%"."""
    if isinstance(raw, int) and not isinstance(raw, bool) and raw >= 0:
        return raw
    if isinstance(raw, str) and raw.endswith("%") and raw[:-1].isdigit() \
            and (raw[:-1] == "0" or not raw.startswith("0")):
        return raw
    raise ValueError(f"expected a count or a percentage like 25%, got {kind_of(raw)} {raw!r}")


def _int_or_percent_value(value: int | str) -> int:
    return value if isinstance(value, int) else int(value[:-1])


def read_rollout_fields(r: Reader, path: Path) -> dict[str, Any]:
    """strategy.rollingUpdate (maxSurge, maxUnavailable), minReadySeconds and readinessGates
    of a deployment: the Deployment fields' keyword arguments (absent ones left out)."""
    out: dict[str, Any] = {}
    spath = tuple(path) + ("strategy",)
    if r.has(spath):
        r.mapping(spath, {"type", "rollingUpdate"}, what="type, rollingUpdate")
        r.get(spath, "type", choice("RollingUpdate"), default="RollingUpdate",
              fix="use RollingUpdate (the testbed has no Recreate strategy)")
        rpath = spath + ("rollingUpdate",)
        r.mapping(rpath, {"maxSurge", "maxUnavailable"}, what="maxSurge, maxUnavailable")
        fix = "write a count like 1 or a percentage like 25%"
        surge = r.get(rpath, "maxSurge", int_or_percent, default="25%", fix=fix)
        unavailable = r.get(rpath, "maxUnavailable", int_or_percent, default="25%", fix=fix)
        if isinstance(unavailable, str) and _int_or_percent_value(unavailable) > 100:
            r.problem(rpath + ("maxUnavailable",), f"{unavailable} is more than 100%",
                      "use at most 100%")
        elif surge is not None and unavailable is not None:
            if _int_or_percent_value(surge) == 0 and _int_or_percent_value(unavailable) == 0:
                # as upstream's ValidateRollingUpdateDeployment
                r.problem(written_path(r, rpath + ("maxUnavailable",)),
                          "may not be 0 when maxSurge is 0",
                          "let one of maxSurge and maxUnavailable be more than 0")
            else:
                out.update(max_surge=surge, max_unavailable=unavailable)
    ready = r.get(path, "minReadySeconds", number(0, 3600), default=None,
                  fix="seconds between 0 and 3600 (default 0)")
    if ready is not None:
        out["min_ready_s"] = float(ready)
    gpath = tuple(path) + ("readinessGates",)
    if r.has(gpath):
        raw = r.value(gpath)
        example = "write 'readinessGates: [{conditionType: target-health.cnlb.io/web}]'"
        if not isinstance(raw, list):
            r.problem(gpath, f"expected a list, got {kind_of(raw)} {raw!r}", example)
            return out
        gates = []
        for i, gate in enumerate(raw):
            if not isinstance(gate, dict):
                r.problem(gpath + (i,), f"expected a mapping, got {kind_of(gate)} {gate!r}",
                          example)
                continue
            r.mapping(gpath + (i,), {"conditionType"}, what="conditionType")
            kind = r.get(gpath + (i,), "conditionType", text, fix=example)
            if kind is not None:
                gates.append(kind)
        out["readiness_gates"] = tuple(gates)
    return out


def _placement(r: Reader, path: Path, replicas: int | None,
               node_names: Sequence[str]) -> tuple[tuple[str, int], ...] | None:
    """A deployment's placement: () for spread, (node, count) pairs, None if wrong."""
    ppath = path + ("placement",)
    raw = r.value(ppath)
    if not r.has(ppath) or raw == "spread":
        return ()
    example = "write 'placement: spread' or 'placement: {node1: 2, node2: 1}'"
    if not isinstance(raw, dict):
        r.problem(ppath, f"expected 'spread' or a mapping node: count, got {kind_of(raw)} {raw!r}",
                  did_you_mean(raw, ["spread"], example) if isinstance(raw, str) else example)
        return None
    placement: list[tuple[str, int]] = []
    complete = bool(node_names)
    for nname in raw:
        if not node_names:
            break   # the nodes section itself is wrong; that is reported there
        if nname not in node_names:
            if not unknown_ref(nname, node_names, 12):
                complete = False
                continue
            r.problem(ppath + (nname,), f"unknown node '{nname}'",
                      did_you_mean(nname, node_names, f"use one of {', '.join(node_names)}"))
            complete = False
            continue
        count = r.get(ppath, nname, integer(0, MAX_PODS), fix="give a pod count")
        if count is None:
            complete = False
            continue
        placement.append((nname, count))
    total = sum(c for _, c in placement)
    if replicas is not None and complete and total != replicas:
        r.problem(ppath, f"places {total} pods but replicas is {replicas}",
                  "make the counts add up to replicas, or write 'placement: spread'")
    return tuple(placement)


def vip_problem(ip: ipaddress.IPv4Address) -> str:
    if ip == LB_CIDR.network_address + 1:
        return f"{ip} is the gateway of the load balancer range"
    if ip == LB_CIDR.network_address + 2:
        return f"{ip} is the address of {LB_HOST}, the load balancer's health-check host"
    if ip in LB_CIDR:
        return (f"{ip} is not in the load balancer range 198.51.100.10-250 "
                "(the rest is the testbed's)")
    if ip in INTERNET_CIDR:
        return (f"{ip} is on the internet side, where the clients are, "
                "not in the load balancer range")
    return f"{ip} is not in the load balancer range 198.51.100.10-250"


def read_load_balancer(r: Reader) -> LoadBalancer:
    path = ("loadBalancer",)
    r.mapping(path, {"vip", "targets", "preserveClientIP", "healthCheck", "address", "kind"},
              hints={"mode": MODE_HINT})
    vip = r.get(path, "vip", address, default=VIP_RANGE[0],
                fix="write an address in 198.51.100.0/24")
    if vip is not None and not VIP_RANGE[0] <= vip <= VIP_RANGE[1]:
        r.problem(path + ("vip",), vip_problem(vip), "pick an address such as 198.51.100.10")
    targets = r.get(path, "targets", choice(*MODES), default="nodeport")
    preserve = r.get(path, "preserveClientIP", boolean, default=True)
    # how the cloud reports the LB in status.loadBalancer.ingress: GCP an IP, AWS a hostname
    kind = r.get(path, "address", choice(*LB_ADDRESS_KINDS), default="ip",
                 fix="write address: ip (GCP-like) or address: hostname (AWS NLB/ALB-like)")
    lb_kind = r.get(path, "kind", choice(*LB_KINDS), default="l4",
                    fix="write kind: l4 (NLB-like) or kind: l7 (HTTP proxy, ALB/GCLB-like)")
    return LoadBalancer(vip or VIP_RANGE[0], targets or "nodeport",
                        preserve if preserve is not None else True, _health_check(r),
                        kind or "ip", lb_kind or "l4")


def _health_check(r: Reader) -> HealthCheck:
    hpath = ("loadBalancer", "healthCheck")
    r.mapping(hpath, {"interval", "timeout", "healthyThreshold", "unhealthyThreshold"})
    interval = r.get(hpath, "interval", duration_ms, default=1000.0,
                     fix="write an interval like 1s or 500ms")
    if interval is not None and interval < MIN_INTERVAL_MS:
        r.problem(hpath + ("interval",), f"{_ms(interval)} is shorter than the "
                  f"{_ms(MIN_INTERVAL_MS)} the health checker supports",
                  f"use {_ms(MIN_INTERVAL_MS)} or more (cloud LBs check every 5-30s)")
        interval = None
    timeout = r.get(hpath, "timeout", duration_ms,
                    default=min(500.0, interval / 2) if interval else 500.0,
                    fix="write a timeout like 500ms")
    if timeout is not None and timeout < MIN_TIMEOUT_MS:
        r.problem(hpath + ("timeout",), f"{_ms(timeout)} is shorter than the "
                  f"{_ms(MIN_TIMEOUT_MS)} a check needs", f"use {_ms(MIN_TIMEOUT_MS)} or more")
    elif timeout is not None and interval is not None and timeout >= interval:
        r.problem(written_path(r, hpath + ("timeout",)), f"timeout {_ms(timeout)} is "
                  f"{'longer than' if timeout > interval else 'as long as'} the interval "
                  f"{_ms(interval)}", "make the timeout shorter than the interval")
    return HealthCheck(
        interval_s=(interval or 1000.0) / 1000.0,
        timeout_s=(timeout or 500.0) / 1000.0,
        healthy_threshold=r.get(hpath, "healthyThreshold", integer(1, 10), default=2) or 2,
        unhealthy_threshold=r.get(hpath, "unhealthyThreshold", integer(1, 10), default=2) or 2,
    )


def _ms(value: float) -> str:
    return f"{value / 1000:g}s" if value >= 1000 else f"{value:g}ms"


def read_clients(r: Reader) -> tuple[Client, ...]:
    raw = r.value(("clients",))
    if not r.has(("clients",)) or raw is None or raw == {}:
        return (Client(DEFAULT_CLIENT),)
    r.mapping(("clients",), None, what="client name: {}")
    if not isinstance(raw, dict):
        return ()
    out = []
    for cname, body in raw.items():
        path = ("clients", cname)
        if not _host_name(r, path, cname, "client", "client1"):
            continue
        if body not in (None, {}):
            r.mapping(path, set(), what="clients take no fields: write 'client1: {}'")
        out.append(Client(cname))
    if len(out) > MAX_CLIENTS:
        r.problem(("clients",), f"{len(out)} clients is more than the {MAX_CLIENTS} supported",
                  "use fewer clients")
    return tuple(out)


def read_links(r: Reader, netem: bool | None) -> Links:
    path = ("links",)
    r.mapping(path, {"bw", "delay", "loss"})
    bw = r.get(path, "bw", number(0.1, 100_000), default=None, fix="bw is in Mbit/s, e.g. 1000")
    delay = r.get(path, "delay", duration_ms, default=0.0, fix="write a delay like 2ms")
    loss = r.get(path, "loss", number(0, 100), default=0.0, fix="loss is a percentage 0-100")
    if netem is False:
        for key, val in (("delay", delay), ("loss", loss)):
            if val:
                r.problem(path + (key,), f"{key} needs the kernel's netem qdisc (sch_netem), "
                          "which this kernel lacks", f"remove links.{key} or run on a kernel "
                          "with sch_netem (a usual VM has it)")
    return Links(bw, delay or 0.0, loss or 0.0)
