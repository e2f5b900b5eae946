"""The L7 cloud load balancer (testbed.cloud.lb.l7, testbed.cloud.lb.haproxy): the rendered
HAProxy config and runtime-API lines, `show stat` read back, the VPC's view (VIPs routed to
lb7), the spec's loadBalancer.kind and `--lb`; then a real HAProxy on 127.0.0.1 (no root, no
namespace) in front of real pod servers: registration and health checks with thresholds,
draining, deregistration, per-request balancing over one kept-alive client connection, and
X-Forwarded-For at the pod. Every process started here is stopped by its pid."""

from __future__ import annotations

import http.client
import json
import shutil
import subprocess
import time
from dataclasses import replace

import pytest

from testbed.cli.parser import build_parser
from testbed.cloud.fabric import render_fabric
from testbed.cloud.lb import L7LoadBalancer, Target, load_balancer_kind
from testbed.cloud.lb import haproxy as hx
from testbed.emulation.journal import StateDir
from testbed.emulation.l7check import L7Row, judge, parse_answers
from testbed.errors import EnvironmentProblem, InputError
from testbed.plan.addresses import L7_HOST, LbPlan, build_plan
from testbed.spec.model import HealthCheck
from testbed.spec.topology import load_topology
from tests.unit.test_podserver import Server, free_port, podserver_bin  # noqa: F401

HAVE_HAPROXY = shutil.which(hx.HAPROXY) is not None
needs_haproxy = pytest.mark.skipif(not HAVE_HAPROXY, reason="haproxy is not installed "
                                   "(make setup installs it)")
FAST = HealthCheck(interval_s=0.2, timeout_s=0.1, healthy_threshold=2, unhealthy_threshold=2)


def topo(tmp_path, extra: str = "", mode: str | None = None):
    path = tmp_path / "t.yaml"
    path.write_text("name: t\nvpc: {cidr: 192.168.0.0/16, subnets: {az-a: 192.168.0.0/24}}\n"
                    "nodes: {node1: {subnet: az-a}, node2: {subnet: az-a}}\n"
                    "deployments: {web: {replicas: 3}}\n"
                    "services: {web: {type: LoadBalancer, port: 80, targetPort: 8080, "
                    "nodePort: 30080}}\n"
                    f"loadBalancer: {{vip: 198.51.100.10, targets: nodeport{extra}}}\n")
    return load_topology(str(path), mode=mode)


# -- the spec, the plan, the CLI ------------------------------------------------------------

def test_kind_defaults_to_l4_and_l7_adds_the_l7_host(tmp_path):
    assert topo(tmp_path).load_balancer.kind == "l4"
    assert L7_HOST not in {a.host for a in build_plan(topo(tmp_path)).attachments}
    plan = build_plan(topo(tmp_path, ", kind: l7"))
    lb7 = plan.attachment(L7_HOST)
    assert (lb7.ip, lb7.kind, lb7.subnet, lb7.switch) == ("198.51.100.3", "lb", "lb", "vpc0")


def test_a_bad_kind_is_one_line_naming_the_field(tmp_path):
    with pytest.raises(InputError) as err:
        topo(tmp_path, ", kind: l5")
    (problem,) = err.value.problems
    assert "loadBalancer.kind" in str(problem) and "l4, l7" in str(problem)


def test_lb_flag_on_up_and_run():
    p = build_parser()
    assert p.parse_args(["up", "t.yaml", "--lb", "l7"]).lb == "l7"
    assert p.parse_args(["up", "t.yaml"]).lb is None
    assert p.parse_args(["run", "e.yaml", "--lb", "l4"]).lb == "l4"
    assert load_balancer_kind("l7") is L7LoadBalancer


# -- rendering --------------------------------------------------------------------------------

def lb_plan(mode: str = "container-native") -> LbPlan:
    return build_plan(replace(topo_for_mode(mode))).load_balancers[0]


def topo_for_mode(mode: str):
    return load_topology("topologies/minimal.yaml", mode=mode)


def test_config_has_one_frontend_and_empty_backend_per_service():
    plan = build_plan(topo_for_mode("container-native"))
    text = hx.render_config(plan.load_balancers, FAST, "/run/x/haproxy.sock")
    assert "bind 198.51.100.10:80" in text
    assert "option forwardfor" in text and "http-reuse always" in text
    assert "option httpchk GET /healthz" in text and "timeout check 100ms" in text
    assert "stats socket /run/x/haproxy.sock mode 600 level admin" in text
    # free slots only: targets come through the runtime API
    assert "server-template target 1-64 0.0.0.0:1 disabled check inter 200 rise 2 fall 2 " \
        "port 8080" in text
    assert "\n    server " not in text


@needs_haproxy
def test_haproxy_accepts_the_config(tmp_path):
    plan = build_plan(topo_for_mode("nodeport"))
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(hx.render_config(plan.load_balancers, FAST, str(tmp_path / "s")))
    proc = subprocess.run([hx.HAPROXY, "-c", "-f", str(cfg)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_registering_fills_a_slot_and_starts_it_down():
    lb = build_plan(topo_for_mode("nodeport")).load_balancers[0]
    (proxy,) = hx.proxies(lb)
    assert hx.server_check(lb, FAST).port == 30080    # instance targets: the NodePort
    line = hx.add_server(proxy, hx.slot_name(3), "192.168.0.10", 30080)
    assert line.split("; ") == [
        "set server web/target3 addr 192.168.0.10 port 30080",
        "set server web/target3 state ready",
        "set server web/target3 health down"]
    assert hx.remove_server(proxy, "target3") == "set server web/target3 state maint"
    assert hx.drain_server(proxy, "target3") == "set server web/target3 state drain"


def test_a_target_is_served_on_its_listeners_port_not_its_pods_own():
    """A pod added later (its containerPort 8080) is registered at the target group's port:
    the targetPort for ip targets, as the L4 LB does (the first listener too)."""
    topo = topo_for_mode("container-native")
    lb = build_plan(topo).load_balancers[0]
    (proxy,) = hx.proxies(lb)
    assert proxy.target_port == lb.listeners[0].backend_port
    line = hx.add_server(proxy, hx.slot_name(1), "10.0.1.20", 9999)   # a pod's own port
    assert line.startswith(f"set server web/target1 addr 10.0.1.20 port {proxy.target_port};")


STAT = ("# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,"
        "wretr,wredis,status,weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,sid,"
        "throttle,lbtot,tracked,type,rate,rate_lim,rate_max,check_status,check_code,"
        "check_duration,hrsp_1xx,addr\n"
        "web,FRONTEND,,,0,1,,3,,,,,,,,,,OPEN,,,,,,,,,,,,,,,,,,,,,,,\n"
        "web,target1,0,0,2,2,,9,,,,,,,,,,UP,1,1,0,0,0,5,0,,1,3,1,,9,,2,0,,1,"
        "* L7OK,200,1,,10.0.0.1:80\n"
        "web,target2,0,0,0,0,,0,,,,,,,,,,DOWN 1/2,1,1,0,0,0,3,3,,1,3,2,,0,,2,0,,0,"
        "L7OK,200,1,,10.0.0.2:80\n"
        "web,target3,0,0,0,0,,4,,,,,,,,,,DOWN,1,1,0,6,1,1,3,,1,3,3,,4,,2,0,,0,"
        "L4CON,,0,,10.0.0.3:80\n"
        "web,BACKEND,0,0,2,2,,12,,,,,,,,,,UP,1,1,0,,0,5,0,,1,3,0,,9,,1,0,,1,,,,,\n")


def test_show_stat_rows_and_the_lbs_words():
    rows = hx.parse_stat(STAT)
    assert [r.server for r in rows] == ["target1", "target2", "target3"]
    a, b, c = rows
    assert (a.status, a.check_status, a.current, a.total, a.addr) == \
        ("UP", "L7OK", 2, 9, "10.0.0.1:80")
    assert hx.target_state(a, False, False) == (True, "healthy")
    assert hx.target_state(b, False, False) == (False, "initial")     # not up since registered
    assert hx.target_state(c, False, True) == (False, "unhealthy")
    assert hx.target_state(replace(a, status="UP 1/2"), False, True) == (True, "healthy")
    assert hx.target_state(replace(a, status="DRAIN"), False, True) == (False, "draining")
    assert hx.target_state(replace(a, status="MAINT"), True, True) == \
        (False, "deregistering")


def test_the_vpc_routes_each_vip_to_a_macvlan_of_lb7_and_balances_nothing(tmp_path):
    plan = build_plan(topo(tmp_path, ", kind: l7"))
    fabric = hx.l7_fabric(render_fabric(plan, FAST), plan)
    assert fabric["load_balancers"] == []
    lb7 = next(h for h in fabric["hosts"] if h["name"] == L7_HOST)
    vip = next(h for h in fabric["hosts"] if h["ip"] == "198.51.100.10")
    assert (vip["switch"], vip["port"]) == (lb7["switch"], lb7["port"])
    assert vip["mac"] != lb7["mac"]
    assert len({h["mac"] for h in fabric["hosts"]}) == len(fabric["hosts"])
    assert f"ip link add vip0 link eth0 address {vip['mac']} type macvlan mode bridge" in \
        hx.vip_setup(plan.load_balancers)


def test_the_controller_accepts_the_l7_fabric(tmp_path):
    from controllers.config import parse_fabric
    plan = build_plan(topo(tmp_path, ", kind: l7"))
    fabric = parse_fabric(hx.l7_fabric(render_fabric(plan, FAST), plan))
    assert not fabric.load_balancers
    assert "198.51.100.10" in {h.ip for h in fabric.hosts}


# -- the check's judging ------------------------------------------------------------------------

def test_l7_check_wants_the_clients_address_last_in_x_forwarded_for():
    answers = parse_answers('{"pod":"web-0","forwarded_for":"203.0.113.10"}\n'
                            'curl: noise\n{"pod":"web-1","forwarded_for":"1.2.3.4, 203.0.113.10"}')
    row = judge(L7Row("client1", "198.51.100.10:80", "keep-alive", "203.0.113.10", 2,
                      want_pods=2), answers)
    assert row.ok and row.pods == ["web-0", "web-1"]
    spoofed = judge(L7Row("client1", "v", "p", "203.0.113.10", 1), [{"pod": "web-0",
                                                                      "forwarded_for": "9.9.9.9"}])
    assert not spoofed.ok
    one_pod = judge(L7Row("client1", "v", "p", "203.0.113.10", 2, want_pods=2),
                    [{"pod": "web-0", "forwarded_for": "203.0.113.10"}] * 2)
    assert not one_pod.ok


# -- a real HAProxy on 127.0.0.1 ----------------------------------------------------------------

class LocalHost:
    """A stand-in for the L7 host: processes start in this namespace (127.0.0.1 only)."""

    def __init__(self):
        self.procs: list[subprocess.Popen] = []

    def popen(self, argv, **kwargs):
        proc = subprocess.Popen(argv, **kwargs)
        self.procs.append(proc)
        return proc


@pytest.fixture
def pods(podserver_bin):   # noqa: F811
    servers = [Server(podserver_bin, pod=f"web-{i}") for i in range(2)]
    yield servers
    for s in servers:
        s.stop()


@pytest.fixture
def l7(tmp_path, pods):
    if not HAVE_HAPROXY:
        pytest.skip("haproxy is not installed (make setup installs it)")
    host = LocalHost()
    for attempt in range(3):   # the free port can be taken before HAProxy binds it
        port = free_port()
        plan = build_plan(topo_for_mode("container-native"))
        lb = replace(plan.load_balancers[0], vip="127.0.0.1", port=port, listeners=(),
                     backends=())
        plan.load_balancers = [lb]
        plan.services = [replace(plan.services[0], endpoints=())]   # no targets at start
        balancer = L7LoadBalancer(None, "ip")   # type: ignore[arg-type]  (no VPC controller)
        try:
            balancer.start(host, StateDir(str(tmp_path)), plan, FAST, lambda cmds: None)
            break
        except EnvironmentProblem:
            if attempt == 2:
                raise
    balancer.port = port   # type: ignore[attr-defined]
    yield balancer
    for proc in host.procs:   # by pid: the one we started
        proc.terminate()
        proc.wait(5)


def target(srv) -> Target:
    return Target(srv.pod if hasattr(srv, "pod") else "?", "127.0.0.1", srv.port)


def targets_of(pods) -> list[Target]:
    return [Target(f"web-{i}", "127.0.0.1", s.port) for i, s in enumerate(pods)]


def states(l7) -> dict[str, str]:
    return {t.target.name: t.state for t in l7.targets("web")}


def wait_state(l7, name: str, state: str, timeout: float = 5.0) -> None:
    deadline = time.time() + timeout
    while states(l7).get(name) != state:
        assert time.time() < deadline, f"{name} never {state}: {states(l7)}"
        time.sleep(0.05)


def get(conn: http.client.HTTPConnection, path: str = "/") -> dict:
    conn.request("GET", path)
    resp = conn.getresponse()
    body = resp.read()
    assert resp.status == 200, body
    return json.loads(body)


def test_a_registered_target_is_initial_until_healthy_threshold_checks_pass(l7, pods):
    a, _ = targets_of(pods)
    l7.register("web", a)
    assert states(l7) == {"web-0": "initial"}
    l7.wait_ready({"web": {"web-0"}}, timeout=5)
    (row,) = l7.targets("web")
    assert row.in_service and row.detail["check"] == "L7OK" and row.target == a


def test_failing_checks_take_a_target_out_and_passing_ones_bring_it_back(l7, pods):
    a, b = targets_of(pods)
    for t in (a, b):
        l7.register("web", t)
    l7.wait_ready({"web": {"web-0", "web-1"}}, timeout=5)
    pod0 = http.client.HTTPConnection("127.0.0.1", pods[0].port, timeout=5)
    pod0.request("GET", "/fail")
    pod0.getresponse().read()
    wait_state(l7, "web-0", "unhealthy")
    conn = http.client.HTTPConnection("127.0.0.1", l7.port, timeout=5)
    assert {get(conn)["pod"] for _ in range(6)} == {"web-1"}
    pod0.request("GET", "/recover")
    pod0.getresponse().read()
    wait_state(l7, "web-0", "healthy")


def test_every_request_on_one_kept_alive_connection_is_balanced_and_carries_the_client(l7,
                                                                                     pods):
    for t in targets_of(pods):
        l7.register("web", t)
    l7.wait_ready({"web": {"web-0", "web-1"}}, timeout=5)
    conn = http.client.HTTPConnection("127.0.0.1", l7.port, timeout=5)
    answers = [get(conn) for _ in range(6)]
    assert {a["pod"] for a in answers} == {"web-0", "web-1"}   # roundrobin per request
    assert all(a["forwarded_for"] == "127.0.0.1" for a in answers)
    # the pods' side: connections HAProxy keeps and reuses, fewer than the requests
    assert len({(a["pod"], a["client_port"]) for a in answers}) < len(answers)


def test_draining_sends_no_new_requests_and_enable_takes_them_again(l7, pods):
    a, b = targets_of(pods)
    for t in (a, b):
        l7.register("web", t)
    l7.wait_ready({"web": {"web-0", "web-1"}}, timeout=5)
    l7.drain("web", a)
    assert states(l7)["web-0"] == "draining"
    assert not next(t for t in l7.targets("web") if t.target == a).in_service
    conn = http.client.HTTPConnection("127.0.0.1", l7.port, timeout=5)
    assert {get(conn)["pod"] for _ in range(6)} == {"web-1"}
    l7.enable("web", a)
    assert states(l7)["web-0"] == "healthy"
    assert {get(conn)["pod"] for _ in range(6)} == {"web-0", "web-1"}


def test_deregistering_removes_the_server_and_registering_again_starts_it_initial(l7, pods):
    a, b = targets_of(pods)
    for t in (a, b):
        l7.register("web", t)
    l7.wait_ready({"web": {"web-0", "web-1"}}, timeout=5)
    conn = http.client.HTTPConnection("127.0.0.1", l7.port, timeout=5)
    get(conn)
    l7.deregister("web", a)
    l7.deregister("web", a)                  # not there any more: fine
    assert "web-0" not in {t.target.name for t in l7.targets("web") if t.in_service}
    assert {get(conn)["pod"] for _ in range(4)} == {"web-1"}
    deadline = time.time() + 5
    while "web-0" in states(l7):             # deleted once its connections are gone
        assert time.time() < deadline, states(l7)
        time.sleep(0.05)
    l7.register("web", a)
    assert states(l7)["web-0"] == "initial"
    l7.wait_ready({"web": {"web-0", "web-1"}}, timeout=5)


@needs_haproxy
def test_a_service_that_is_no_http_is_proxied_per_connection(tmp_path):
    from testbed.experiments.compare import IPERF_SERVICE, with_iperf_service
    plan = build_plan(with_iperf_service(topo_for_mode("container-native"), "web"))
    assert hx.tcp_services(plan.services) == {IPERF_SERVICE}
    text = hx.render_config(plan.load_balancers, FAST, str(tmp_path / "s"),
                            tcp=hx.tcp_services(plan.services))
    web, iperf = text.split(f"frontend {IPERF_SERVICE}\n")
    assert "mode http" in web and "option forwardfor" in web
    assert "mode tcp" in iperf and "forwardfor" not in iperf and "http-reuse" not in iperf
    assert "option httpchk GET /healthz" in iperf and "port 8080" in iperf   # via web's port
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(text)
    proc = subprocess.run([hx.HAPROXY, "-c", "-f", str(cfg)], capture_output=True, text=True)
    assert proc.returncode == 0 and "WARNING" not in proc.stdout + proc.stderr, \
        proc.stdout + proc.stderr


def test_run_with_lb_sets_every_variants_kind():
    from testbed.experiments.run import with_lb_kind
    from testbed.spec.experiment import load_resolved
    resolved = with_lb_kind(load_resolved("experiments/compare-quick.yaml", None, netem=False),
                            "l7")
    assert resolved.topology.load_balancer.kind == "l7"
    assert {t.load_balancer.kind for t in resolved.variants.values()} == {"l7"}


def test_deregistration_after_a_lag_then_sessions_cut_after_the_delay(l7, pods):
    a, b = targets_of(pods)
    for t in (a, b):
        l7.register("web", t)
    l7.wait_ready({"web": {"web-0", "web-1"}}, timeout=5)
    l7.deregister_after("web", a, 0.5, drain_s=0.2)
    assert "web-0" in {t.target.name for t in l7.targets("web") if t.in_service}   # the lag
    deadline = time.time() + 5
    while "web-0" in states(l7):          # deregistered, cut, its slot freed
        assert time.time() < deadline, states(l7)
        time.sleep(0.05)
    (proxy,) = l7.proxies["web"]
    assert hx.cut_sessions(proxy, "target1") == "shutdown sessions server web/target1"
