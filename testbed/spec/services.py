"""Reading a topology's `services:` section (one Service at a time, in Kubernetes' field names)
into the model, with the API server's rules: ports, protocols, node ports, traffic policies.

read_service() reads one service wherever it is written (the topology's services section, or a
file given to `cnlb service apply`); NodePortClaims keeps node ports unique across a cluster.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from testbed.errors import InputError, Problem
from testbed.spec.external_ips import read_external_ips
from testbed.spec.fields import (
    Reader,
    address,
    boolean,
    choice,
    did_you_mean,
    integer,
    kind_of,
    name,
    text,
)
from testbed.spec.model import (
    MAX_SERVICE_PORTS,
    NODEPORT_RANGE,
    PROTOCOLS,
    SERVICE_TYPES,
    TRAFFIC_POLICIES,
    VIP_RANGE,
    Deployment,
    Service,
    ServicePortSpec,
)
from testbed.spec.sections import unknown_ref, vip_problem
from testbed.spec.yamldoc import Document, Path, parse_document

SERVICE_KEYS = {"type", "selector", "port", "targetPort", "nodePort", "protocol", "ports",
                "externalTrafficPolicy", "internalTrafficPolicy", "sessionAffinity",
                "externalIPs", "sessionAffinityTimeout", "healthCheckNodePort", "loadBalancerIP",
                "publishNotReadyAddresses", "labels", "loadBalancerSourceRanges",
                "allocateLoadBalancerNodePorts"}
PORT_KEYS = {"name", "port", "targetPort", "protocol", "nodePort"}
SINGLE_PORT_KEYS = ("port", "targetPort", "nodePort", "protocol")
# a port's name: a DNS label (IsDNS1123Label: may start with a digit, at most 63 characters)
PORT_NAME_RE = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")
NODEPORT_FIX = f"pick a free port in {NODEPORT_RANGE[0]}-{NODEPORT_RANGE[1]} or leave it out"


def protocol(raw: Any) -> str:
    """TCP or UDP; SCTP is Kubernetes' third, which the testbed cannot carry."""
    if isinstance(raw, str) and raw.upper() == "SCTP":
        raise ValueError("SCTP is not supported: the testbed's pods, probes and load balancer "
                         "speak TCP and UDP only")
    return choice(*PROTOCOLS)(raw)


def port_name(raw: Any) -> str:
    if not isinstance(raw, str) or not PORT_NAME_RE.fullmatch(raw):
        raise ValueError(f"{raw!r} is not a valid port name (a DNS label: lower-case letters, "
                         "digits, '-')")
    if len(raw) > 63:
        raise ValueError(f"'{raw}' is longer than 63 characters")
    return raw


class NodePortClaims:
    """Node ports taken in a cluster: each belongs to one service; within a service, one node
    port may serve a TCP and a UDP port (as upstream's allocator lets it), a health check port
    serves nothing else."""

    def __init__(self, r: Reader, taken: Mapping[int, str] | None = None):
        self.r = r
        # port -> (service, protocols using it; "" for a healthCheckNodePort)
        self.used: dict[int, tuple[str, set[str]]] = {
            p: (owner, {""}) for p, owner in (taken or {}).items()}

    def claim(self, path: Path, port: int | None, owner: str, proto: str = "") -> None:
        """Take a node port for owner's port of protocol proto ("": a health check port)."""
        if port is None:
            return
        if port not in self.used:
            self.used[port] = (owner, {proto})
            return
        holder, protos = self.used[port]
        if holder != owner:
            self.r.problem(path, f"{port} is already used by service '{holder}'", NODEPORT_FIX)
        elif proto and "" not in protos and proto not in protos:
            protos.add(proto)   # the same node port for TCP and UDP of one service
        else:
            what = "healthCheckNodePort" if "" in protos or not proto else f"{proto} nodePort"
            self.r.problem(path, f"{port} is already this service's {what}", NODEPORT_FIX)


def read_services(r: Reader, deployments: Sequence[Deployment],
                  deploy_names: Sequence[str]) -> tuple[Service, ...]:
    raw = r.mapping(("services",), None, what="service name: {port: ...}")
    claims = NodePortClaims(r)
    out = []
    for sname in raw:
        svc = read_service(r, ("services", sname), sname, deployments, deploy_names, claims)
        if svc is not None:
            out.append(svc)
    return tuple(out)


def read_service(r: Reader, path: Path, sname: str, deployments: Sequence[Deployment],
                 deploy_names: Sequence[str], claims: NodePortClaims) -> Service | None:
    """One service written at path (a mapping of Kubernetes' spec fields); None if wrong (the
    problems are in r)."""
    try:
        name(20)(sname)
    except ValueError as exc:
        r.problem(path, str(exc), "name services like web (at most 20 characters)")
        return None
    r.mapping(path, SERVICE_KEYS, what="type, port, ...")
    body = r.value(path)
    if body is None or not r.has(path):
        body = {}   # 'web:' alone: a service with every default, as 'web: {}'
    if not isinstance(body, dict):
        return None
    stype = r.get(path, "type", choice(*SERVICE_TYPES), default="LoadBalancer")
    selector = r.get(path, "selector", text, default=sname)
    if selector is not None and unknown_ref(selector, deploy_names, 20):
        r.problem(path + (("selector",) if "selector" in body else ()),
                  f"selects deployment '{selector}', which does not exist",
                  did_you_mean(selector, deploy_names,
                               "add 'selector:' naming one of " + ", ".join(deploy_names)
                               if deploy_names else "add a deployment under 'deployments:'"))
    deploy = next((d for d in deployments if d.name == selector), None)
    default_target = deploy.container_port if deploy else 8080

    def claim(p: Path, port: int | None, proto: str = "") -> None:
        claims.claim(p, port, sname, proto)

    if "ports" in body:
        ports = _ports(r, path, body, stype, default_target, claim)
    else:
        ports = _single_port(r, path, body, stype, deploy, claim)
    external_ips = read_external_ips(r, path, body)
    etp, hc_port = _external(r, path, body, stype, claim)
    itp = r.get(path, "internalTrafficPolicy", choice(*TRAFFIC_POLICIES), default="Cluster")
    affinity = r.get(path, "sessionAffinity", choice("None", "ClientIP"), default="None")
    timeout = r.get(path, "sessionAffinityTimeout", integer(1, 86400), default=10800,
                    fix="seconds between 1 and 86400")
    lb_ip = _load_balancer_ip(r, path, stype)
    source_ranges = _source_ranges(r, path, body, stype)
    allocate = _allocate_node_ports(r, path, body, stype)
    publish = r.get(path, "publishNotReadyAddresses", boolean, default=False)
    labels = _labels(r, path, body)
    if ports is None or etp is None or labels is None or source_ranges is None or None in (
            stype, selector, itp, affinity, timeout, publish, allocate):
        return None
    if external_ips is None:
        return None
    first = ports[0]
    return Service(sname, stype, selector, first.port, first.target_port, first.node_port, etp,
                   affinity, timeout, hc_port, lb_ip, first.protocol,
                   ports=ports if "ports" in body else (), external_ips=external_ips,
                   internal_traffic_policy=itp, publish_not_ready_addresses=publish,
                   labels=labels, load_balancer_source_ranges=source_ranges,
                   allocate_load_balancer_node_ports=bool(allocate))


# a label key: an optional DNS-subdomain prefix and '/', then a name of at most 63 characters
# (alphanumerics, '-', '_', '.', alphanumeric at both ends); values the same or empty
LABEL_KEY_RE = re.compile(r"([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?"
                          r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
LABEL_VALUE_RE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?")


def _labels(r: Reader, path: Path, body: Mapping[str, Any]) -> tuple[tuple[str, str], ...] | None:
    """metadata.labels: key -> value (text; a number or boolean as YAML wrote it), sorted.
    kube-proxy ignores a service labelled service.kubernetes.io/service-proxy-name or
    service.kubernetes.io/headless (testbed.kubernetes.dataplane.model)."""
    raw = body.get("labels")
    if raw is None:
        return ()
    lpath = path + ("labels",)
    if not isinstance(raw, dict):
        r.problem(lpath, f"expected a mapping of label: value, got {kind_of(raw)}",
                  "write labels: {service.kubernetes.io/headless: ''}")
        return None
    out = []
    for key, value in raw.items():
        value = "" if value is None else value
        if not isinstance(key, str) or not LABEL_KEY_RE.fullmatch(key):
            r.problem(lpath + (key,), f"'{key}' is not a label key",
                      "use a name like app or a prefixed one like example.com/tier")
        elif not isinstance(value, str | int | bool) or \
                not LABEL_VALUE_RE.fullmatch(str(value).lower() if isinstance(value, bool)
                                             else str(value)):
            r.problem(lpath + (key,), f"{value!r} is not a label value",
                      "use at most 63 letters, digits, '-', '_' or '.', or ''")
        else:
            out.append((key, str(value).lower() if isinstance(value, bool) else str(value)))
    return tuple(sorted(out)) if len(out) == len(raw) else None


def _single_port(r: Reader, path: Path, body: Mapping[str, Any], stype: str | None,
                 deploy: Deployment | None,
                 claim: Callable[..., None]) -> tuple[ServicePortSpec, ...] | None:
    """The shorthand: port, targetPort, nodePort, protocol on the service itself."""
    port = r.get(path, "port", integer(1, 65535), default=80, fix="use a port in 1-65535")
    target = r.get(path, "targetPort", integer(1, 65535),
                   default=deploy.container_port if deploy else 8080,
                   fix="use a port in 1-65535")
    if deploy and target is not None and target != deploy.container_port:
        r.problem(path + ("targetPort",), f"{target} is not the port deployment "
                  f"'{deploy.name}' listens on ({deploy.container_port})",
                  f"set targetPort: {deploy.container_port} or change "
                  f"deployments.{deploy.name}.port")
    proto = r.get(path, "protocol", protocol, default="TCP",
                  fix="write protocol: TCP or protocol: UDP")
    node_port = _node_port(r, path, body, stype, claim, proto)
    if None in (port, target, proto):
        return None
    return (ServicePortSpec("", port, target, proto, node_port),)


def _node_port(r: Reader, path: Path, body: Mapping[str, Any], stype: str | None,
               claim: Callable[..., None], proto: str | None) -> int | None:
    """A port's nodePort as the service's type allows it (claimed)."""
    if stype in ("NodePort", "LoadBalancer"):
        node_port = r.get(path, "nodePort", integer(*NODEPORT_RANGE), default=None,
                          fix=NODEPORT_FIX)
        claim(path + ("nodePort",), node_port, proto or "TCP")
        return node_port
    if stype is not None and "nodePort" in body:
        r.problem(path + ("nodePort",), "a ClusterIP service has no nodePort",
                  "remove nodePort or set type: NodePort")
    return None


def _ports(r: Reader, path: Path, body: Mapping[str, Any], stype: str | None,
           default_target: int, claim: Callable[..., None]) -> tuple[ServicePortSpec, ...] | None:
    """The `ports:` list, with the API server's rules: names (DNS labels) required and unique
    when there are several; (port, protocol) unique; the same number may serve TCP and UDP."""
    ppath = path + ("ports",)
    ok = True
    for key in SINGLE_PORT_KEYS:
        if key in body:
            r.problem(path + (key,), f"'{key}' is given beside 'ports'",
                      f"move {key} into the ports entries, or remove 'ports' and keep the "
                      "single-port form")
            ok = False
    raw = body["ports"]
    example = "write ports: [{name: http, port: 80}, {name: dns, port: 53, protocol: UDP}]"
    if not isinstance(raw, list):
        r.problem(ppath, f"expected a list of ports, got {kind_of(raw)}", example)
        return None
    if not raw:
        r.problem(ppath, "no ports", "list at least one port, or remove 'ports' (port 80)")
        return None
    if len(raw) > MAX_SERVICE_PORTS:
        r.problem(ppath, f"{len(raw)} ports is more than the {MAX_SERVICE_PORTS} supported",
                  f"use at most {MAX_SERVICE_PORTS} ports per service")
        return None
    out: list[ServicePortSpec] = []
    names: dict[str, int] = {}
    numbers: dict[tuple[int, str], int] = {}
    for i, item in enumerate(raw):
        ipath = ppath + (i,)
        if not isinstance(item, dict):
            r.problem(ipath, f"expected a mapping (name, port, ...), got {kind_of(item)}",
                      example)
            ok = False
            continue
        r.mapping(ipath, PORT_KEYS, what="name, port, targetPort, protocol, nodePort")
        pname = r.get(ipath, "name", port_name, default="",
                      fix="name ports like http or dns-udp")
        if pname == "" and len(raw) > 1 and "name" not in item:
            r.problem(ipath, "a port of a service with several ports needs a name",
                      "add 'name:' (e.g. http)")
            ok = False
        elif pname and pname in names:
            r.problem(ipath + ("name",), f"'{pname}' is also the name of ports[{names[pname]}]",
                      "give each port its own name")
            ok = False
        elif pname:
            names[pname] = i
        port = r.get(ipath, "port", integer(1, 65535), fix="use a port in 1-65535")
        target = r.get(ipath, "targetPort", integer(1, 65535), default=default_target,
                       fix="use a port in 1-65535")
        proto = r.get(ipath, "protocol", protocol, default="TCP",
                      fix="write protocol: TCP or protocol: UDP")
        if port is not None and proto is not None:
            if (port, proto) in numbers:
                other = "TCP" if proto == "UDP" else "UDP"
                r.problem(written_in(r, ipath, "port"), f"{port}/{proto} is also "
                          f"ports[{numbers[port, proto]}]", f"give each port its own number "
                          f"(the same number may serve {proto} once and {other} once)")
                ok = False
            numbers.setdefault((port, proto), i)
        node_port = _node_port(r, ipath, item, stype, claim, proto)
        if None in (pname, port, target, proto):
            ok = False
            continue
        out.append(ServicePortSpec(pname, port, target, proto, node_port))
    return tuple(out) if ok else None


def written_in(r: Reader, path: Path, key: str) -> Path:
    return path + (key,) if r.has(path + (key,)) else path


def _external(r: Reader, path: Path, body: Mapping[str, Any], stype: str | None,
              claim: Callable[..., None]) -> tuple[str | None, int | None]:
    """A service's outside-facing policy fields, as its type allows them:
    (externalTrafficPolicy, healthCheckNodePort)."""
    # what is allowed depends on the type: with a wrong type, say nothing more about it
    # (a ClusterIP service with externalIPs is externally accessible too, as upstream's
    # ExternallyAccessible says: externalTrafficPolicy applies to its external IPs)
    external = stype in ("NodePort", "LoadBalancer") or bool(body.get("externalIPs"))
    etp = r.get(path, "externalTrafficPolicy", choice(*TRAFFIC_POLICIES), default="Cluster")
    etp_ok = etp is not None and stype is not None
    if etp_ok and not external and "externalTrafficPolicy" in body:
        # as Kubernetes: "may only be set for externally-accessible services"
        r.problem(path + ("externalTrafficPolicy",), "a ClusterIP service has no "
                  "externalTrafficPolicy (it is about traffic from outside the cluster)",
                  "remove externalTrafficPolicy or set type: NodePort or LoadBalancer")
        etp_ok = False
    hc_port = None
    if "healthCheckNodePort" in body:
        hc_port = r.get(path, "healthCheckNodePort", integer(*NODEPORT_RANGE),
                        fix=NODEPORT_FIX)
        if hc_port is not None and etp_ok and not (stype == "LoadBalancer" and etp == "Local"):
            # as Kubernetes' API validation: the port exists only for the LB's checks of
            # Local services (Cluster services are checked on their nodePort)
            r.problem(path + ("healthCheckNodePort",), "may only be set when type is "
                      "LoadBalancer and externalTrafficPolicy is Local",
                      "remove healthCheckNodePort or set externalTrafficPolicy: Local")
            hc_port = None
        claim(path + ("healthCheckNodePort",), hc_port)
    return etp, hc_port


def _allocate_node_ports(r: Reader, path: Path, body: Mapping[str, Any],
                         stype: str | None) -> bool | None:
    """spec.allocateLoadBalancerNodePorts (true); upstream allows it on LoadBalancer services
    only. None when wrong (the problem is in r)."""
    allocate = r.get(path, "allocateLoadBalancerNodePorts", boolean, default=True)
    if "allocateLoadBalancerNodePorts" in body and stype not in (None, "LoadBalancer"):
        r.problem(path + ("allocateLoadBalancerNodePorts",),
                  f"may only be used when type is LoadBalancer (this is {stype})",
                  "remove it, or make the service 'type: LoadBalancer'")
        return None
    return allocate


def _load_balancer_ip(r: Reader, path: Path, stype: str | None) -> ipaddress.IPv4Address | None:
    ip = r.get(path, "loadBalancerIP", address, default=None,
               fix="write an address in 198.51.100.10-198.51.100.250")
    if ip is None:
        return None
    fpath = path + ("loadBalancerIP",)
    if stype in ("ClusterIP", "NodePort"):
        r.problem(fpath, f"a {stype} service has no loadBalancerIP",
                  "remove loadBalancerIP or set type: LoadBalancer")
    elif not VIP_RANGE[0] <= ip <= VIP_RANGE[1]:
        r.problem(fpath, vip_problem(ip), "pick an address in 198.51.100.10-198.51.100.250")
    return ip


SOURCE_RANGES_FIX = "write IPv4 CIDRs like loadBalancerSourceRanges: [203.0.113.0/25]"


def _source_ranges(r: Reader, path: Path, body: Mapping[str, Any],
                   stype: str | None) -> tuple[str, ...] | None:
    """spec.loadBalancerSourceRanges: the client CIDRs the cloud LB and kube-proxy let reach
    the LB IP (empty: everyone), normalized as upstream's ParseIPNets ("10.0.0.1/8" is
    10.0.0.0/8); only for type LoadBalancer, as the API server requires."""
    raw = body.get("loadBalancerSourceRanges")
    if raw is None:
        return ()
    fpath = path + ("loadBalancerSourceRanges",)
    if not isinstance(raw, list):
        r.problem(fpath, f"expected a list of CIDRs, got {kind_of(raw)}", SOURCE_RANGES_FIX)
        return None
    if stype is not None and stype != "LoadBalancer" and raw:
        r.problem(fpath, f"may only be used when type is LoadBalancer, not {stype}",
                  "remove loadBalancerSourceRanges or set type: LoadBalancer")
        return None
    out = []
    for i, item in enumerate(raw):
        ipath = fpath + (i,) if r.has(fpath + (i,)) else fpath
        try:
            if not isinstance(item, str):
                raise ValueError
            net = ipaddress.ip_network(item.strip(), strict=False)
        except ValueError:
            r.problem(ipath, f"{item!r} is not a CIDR", SOURCE_RANGES_FIX)
            continue
        if net.version != 4:
            r.problem(ipath, f"'{item}' is IPv6; the testbed is IPv4 only", SOURCE_RANGES_FIX)
            continue
        out.append(str(net))
    return tuple(out) if len(out) == len(raw) else None


# -- one service on its own: `cnlb service apply FILE` and `cnlb service set NAME field=value` ----

def read_one_service(doc: Document, deployments: Sequence[Deployment],
                     taken: Mapping[int, str]) -> Service:
    """The one service a document holds (`web: {type: ..., ports: ...}`, as under `services:`),
    checked as in a topology; taken: node ports other services hold (port -> service).
    Raises InputError with every problem."""
    r = Reader(doc)
    names = r.mapping((), None, what="service name: {type: ...}")
    if len(names) != 1:
        r.problem((), f"expected one service, got {len(names)}",
                  "write one service as 'web: {type: LoadBalancer, port: 80}'")
        r.raise_if_any()
    (sname,) = names
    svc = read_service(r, (sname,), sname, deployments, [d.name for d in deployments],
                       NodePortClaims(r, taken))
    r.raise_if_any()
    assert svc is not None   # no problem reported: the service was read
    return svc


def service_body(svc: Service) -> dict[str, Any]:
    """A Service as the fields a file writes (read_service's inverse)."""
    body: dict[str, Any] = {"type": svc.type, "selector": svc.selector}
    if svc.ports:
        body["ports"] = [_port_body(p, svc.type) for p in svc.ports]
    else:
        body.update(_port_body(svc.all_ports[0], svc.type))
        del body["name"]
    if svc.external_ips:
        body["externalIPs"] = list(svc.external_ips)
    if svc.type != "ClusterIP" or svc.external_ips:
        body["externalTrafficPolicy"] = svc.external_traffic_policy
    if svc.health_check_node_port is not None:
        body["healthCheckNodePort"] = svc.health_check_node_port
    if svc.load_balancer_ip is not None:
        body["loadBalancerIP"] = str(svc.load_balancer_ip)
    body.update(internalTrafficPolicy=svc.internal_traffic_policy,
                sessionAffinity=svc.session_affinity,
                sessionAffinityTimeout=svc.session_affinity_timeout,
                publishNotReadyAddresses=svc.publish_not_ready_addresses)
    if svc.labels:
        body["labels"] = dict(svc.labels)
    if svc.load_balancer_source_ranges:
        body["loadBalancerSourceRanges"] = list(svc.load_balancer_source_ranges)
    if not svc.allocate_load_balancer_node_ports:
        body["allocateLoadBalancerNodePorts"] = False
    return body


def _port_body(p: ServicePortSpec, stype: str) -> dict[str, Any]:
    out: dict[str, Any] = {"name": p.name, "port": p.port, "targetPort": p.target_port,
                           "protocol": p.protocol}
    if p.node_port is not None and stype != "ClusterIP":
        out["nodePort"] = p.node_port
    return out


def drop_type_dependent_fields(body: Mapping[str, Any], changed: Collection[str]
                               ) -> dict[str, Any]:
    """The fields a service's new type or policy no longer allows, dropped when the change did
    not write them (upstream's dropTypeDependentFields: `kubectl patch` to type ClusterIP
    releases the node ports instead of failing); changed: the fields the change wrote."""
    out = dict(body)
    stype = out.get("type", "LoadBalancer")
    if stype == "ClusterIP" and "nodePort" not in changed:
        out.pop("nodePort", None)
        if isinstance(out.get("ports"), list) and "ports" not in changed:
            out["ports"] = [{k: v for k, v in p.items() if k != "nodePort"}
                            if isinstance(p, dict) else p for p in out["ports"]]
    if stype == "ClusterIP" and not out.get("externalIPs") and \
            "externalTrafficPolicy" not in changed:
        out.pop("externalTrafficPolicy", None)
    local_lb = stype == "LoadBalancer" and out.get("externalTrafficPolicy") == "Local"
    if not local_lb and "healthCheckNodePort" not in changed:
        out.pop("healthCheckNodePort", None)
    if stype != "LoadBalancer" and "loadBalancerIP" not in changed:
        out.pop("loadBalancerIP", None)
    if stype != "LoadBalancer" and "allocateLoadBalancerNodePorts" not in changed:
        out.pop("allocateLoadBalancerNodePorts", None)
    return out


def set_fields_document(svc: Service, args: Sequence[str], source: str = "cnlb service set"
                        ) -> Document:
    """`field=value` arguments applied to a service, as a Document whose line N is argument N
    (values are YAML: `ports=[{name: http, port: 80}]`)."""
    changes: dict[str, Any] = {}
    lines: dict[Path, int] = {}
    problems = []
    for i, arg in enumerate(args, start=1):
        key, sep, raw = arg.partition("=")
        if not sep or not key:
            problems.append(Problem(source, i, svc.name, f"'{arg}' is not field=value",
                                    "write it like type=NodePort"))
            continue
        doc = parse_document(source, f"{key}: {raw}\n" if raw else f"{key}: null\n")
        changes[key] = doc.data[key]
        lines[(svc.name, key)] = i
        lines.update({(svc.name, key) + p[1:]: i for p in doc.lines if p[:1] == (key,)})
    if problems:
        raise InputError(problems)
    old = service_body(svc)
    if "ports" in changes:   # the list replaces the single-port form
        old = {k: v for k, v in old.items() if k not in SINGLE_PORT_KEYS}
    body = drop_type_dependent_fields({**old, **changes}, changes.keys())
    lines.setdefault((svc.name,), 1)
    return Document(source, {svc.name: body}, lines)
