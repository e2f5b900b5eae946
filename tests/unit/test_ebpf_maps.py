"""The eBPF kube-proxy's map contents (testbed.kubernetes.dataplane.ebpf.maps): the frontends a
node answers on, the Maglev table, partial syncs, and the bytes bpftool writes (the sizes of
bpf/lb.c's structs). Where packets go is the behaviour suite's (tests/unit/test_dataplane.py,
with tests/unit/ebpf_model.py)."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from testbed.kubernetes.dataplane.ebpf import maps
from testbed.kubernetes.dataplane.model import Endpoint
from testbed.kubernetes.dataplane.registry import dataplane_for
from testbed.paths import REPO
from tests.unit.ebpf_model import BatchError, EbpfNode
from tests.unit.kubeproxy_cases import API, NODE1, NODE3, WEB
from tests.unit.kubeproxy_cases import replace_port as _replace

BACKENDS = [f"10.244.{i // 250}.{i % 250 + 2}:8080" for i in range(10)]


# --- Maglev ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("m", [251, 509, 1021])
@pytest.mark.parametrize("n", [2, 3, 10])
def test_maglev_gives_every_backend_m_over_n_entries_give_or_take_one(m, n):
    table = maps.maglev_table(BACKENDS[:n], m)
    assert len(table) == m and set(table) == set(range(n))
    counts = Counter(table)
    assert max(counts.values()) - min(counts.values()) <= 1, counts


@pytest.mark.parametrize("n", [4, 10])
def test_removing_one_of_n_backends_moves_about_one_nth_of_the_table(n):
    m = 1021
    before = [BACKENDS[i] for i in maps.maglev_table(BACKENDS[:n], m)]
    for gone in range(n):
        left = BACKENDS[:gone] + BACKENDS[gone + 1:n]
        after = [left[i] for i in maps.maglev_table(left, m)]
        moved = sum(a != b for a, b in zip(before, after, strict=True)) / m
        # the removed backend's own share must move; the paper measures little more
        assert 1 / n - 0.01 <= moved <= 1.5 / n, (gone, moved)
        # and every entry that stayed with its backend did so: nobody else's were shuffled
        kept = sum(a == b for a, b in zip(before, after, strict=True) if a != BACKENDS[gone])
        assert kept >= (1 - 0.5 / n) * sum(a != BACKENDS[gone] for a in before)


def test_modulo_hashing_moves_most_of_the_table_where_maglev_moves_one_nth():
    """What Maglev is for: hash mod N re-deals nearly everything when N changes."""
    m, n = 1021, 10
    before = [BACKENDS[h % n] for h in range(m)]
    after = [BACKENDS[:n - 1][h % (n - 1)] for h in range(m)]
    assert sum(a != b for a, b in zip(before, after, strict=True)) / m > 0.8


def test_maglev_table_is_deterministic_and_depends_on_backends_not_their_order():
    a = maps.maglev_table(BACKENDS[:4], 251)
    assert a == maps.maglev_table(BACKENDS[:4], 251)
    # a backend's permutation comes from its name: listed in another order, the same
    # backends own the same entries
    shuffled = [BACKENDS[i] for i in (2, 0, 3, 1)]
    b = maps.maglev_table(shuffled, 251)
    same = sum(BACKENDS[i] == shuffled[j] for i, j in zip(a, b, strict=True))
    assert same > 0.9 * 251
    assert maps.maglev_table([], 251) == []


@pytest.mark.parametrize("m, n", [(250, 2), (7, 7), (1, 0)])
def test_maglev_refuses_a_size_that_is_not_a_prime_above_n(m, n):
    with pytest.raises(ValueError, match="prime"):
        maps.maglev_table(BACKENDS[:max(n, 1)], m)


@pytest.mark.parametrize("kwargs", [{"algorithm": "roundrobin"}, {"maglev_m": 1000},
                                    {"maglev_m": 2039}])
def test_options_refuse_an_unknown_algorithm_or_a_bad_table_size(kwargs):
    with pytest.raises(ValueError):
        maps.Options(**kwargs)


# --- what a node's maps hold ----------------------------------------------------------------------


def _lines(text: str, kind: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith(kind + " ")]


def test_render_lists_each_frontend_with_its_backends_and_the_node_config():
    text = maps.render([WEB, API], NODE1)
    assert text.splitlines()[1] == f"config node_ip={NODE1.node_ip} cluster_cidr=10.244.0.0/16"
    services = {ln.split()[1]: ln for ln in _lines(text, "service")}
    web_np = services[f"{NODE1.node_ip}:30080/TCP"]
    assert "backends=3" in web_np and "flags=snat " in web_np
    assert "flags=snat-outside" in services[f"{WEB.cluster_ip}:80/TCP"]
    # Local policy: this node's pods for everyone, every pod for pods and the node itself
    api_lb = services[f"{API.load_balancer_ips[0]}:80/TCP"]
    assert "backends=1" in api_lb and "flags=- " in api_lb
    internal = services[f"{API.load_balancer_ips[0]}:80/TCP@internal"]
    assert "backends=3" in internal and "flags=snat-host" in internal


def test_local_policy_node_without_local_pods_drops_and_no_endpoints_rejects():
    text = maps.render([API], NODE3)
    lb = next(ln for ln in _lines(text, "service")
              if ln.split()[1] == f"{API.load_balancer_ips[0]}:80/TCP")
    assert "backends=0" in lb and "flags=drop" in lb
    empty = maps.render([_replace(API, endpoints=())], NODE3)
    assert all("backends=0" in ln and "drop" not in ln for ln in _lines(empty, "service"))


def test_maglev_option_adds_a_table_per_frontend_with_backends():
    text = maps.render([WEB, _replace(API, endpoints=())], NODE1, maps.Options("maglev", 251))
    tables = _lines(text, "maglev")
    with_backends = [ln for ln in _lines(text, "service") if "backends=0" not in ln]
    assert len(tables) == len(with_backends) and all(" 251 " in t for t in tables)
    assert all("algorithm=maglev m=251" in ln for ln in with_backends)
    EbpfNode.check(text)


def test_sctp_and_headless_services_are_not_rendered():
    sctp = _replace(WEB, protocol="SCTP")
    headless = _replace(WEB, name="headless", cluster_ip="None")
    assert _lines(maps.render([sctp, headless], NODE1), "service") == []


def test_partial_writes_backends_before_their_service_and_deletes_services_first():
    grown = _replace(WEB, endpoints=(*WEB.endpoints, Endpoint("10.244.3.9", 8080, "node3")))
    text = maps.render_partial([WEB], [grown], NODE1)
    kinds = [ln.split()[0] for ln in text.splitlines()]
    assert kinds.index("service") > max(i for i, k in enumerate(kinds) if k == "backend")
    shrunk = maps.render_partial([grown], [WEB], NODE1)
    words = [ln.split()[:2] for ln in shrunk.splitlines()]
    assert words[0][0] == "service" and ["delete", "backend"] in words
    gone = maps.render_partial([WEB], [], NODE1).splitlines()
    assert gone[0].startswith("delete service") and gone[-1].startswith("delete backend")


def test_partial_of_nothing_changed_is_empty_and_a_switch_to_maglev_only_adds_tables():
    assert maps.render_partial([WEB], [WEB], NODE1) == ""
    text = maps.render_partial([WEB], [WEB], NODE1, maps.Options("maglev", 251), maps.Options())
    assert {ln.split()[0] for ln in text.splitlines()} == {"maglev", "service"}


def test_a_delete_of_what_is_not_there_fails_the_batch_as_bpftool_would():
    node = EbpfNode()
    with pytest.raises(BatchError):
        node.load(f"delete backend {WEB.cluster_ip}:80/TCP 0\n")


def test_registry_mode_renders_maps():
    plane = dataplane_for("ebpf")
    assert plane.mode == "ebpf"
    assert plane.render([WEB], NODE1) == maps.render([WEB], NODE1)


# --- the bytes: bpf/lb.c's struct sizes -----------------------------------------------------------


def test_encoded_keys_and_values_have_the_sizes_of_the_c_structs():
    ranged = _replace(WEB, load_balancer_source_ranges=("203.0.113.0/25",))
    text = maps.render([ranged, API], NODE1, maps.Options("maglev", 509))
    sizes = Counter()
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        _op, name, key, value = maps.encode_line(line)
        assert value is not None
        sizes[(name, len(key), len(value))] += 1
    assert {k[0]: k[1:] for k in sizes} == {
        "cnlb_config": (4, 16), "cnlb_services": (8, 12), "cnlb_backends": (12, 8),
        "cnlb_maglev": (8, 2 * maps.MAGLEV_M_MAX), "cnlb_src_range": (16, 1)}


def test_a_range_key_is_cilium_lpm_key_with_the_frontend_for_the_rev_nat_id():
    """{prefixlen, frontend, client addr}: the prefix length counts the frontend's 64 bits
    (matched whole) and the CIDR's; the frontend's scope byte is always 0."""
    _op, name, key, value = maps.encode_line(f"range {WEB.load_balancer_ips[0]}:80/TCP "
                                             "203.0.113.0/25")
    assert name == "cnlb_src_range" and value == b"\0"
    assert key == (bytes([64 + 25, 0, 0, 0]) + bytes([198, 51, 100, 10, 0, 80, 6, 0])
                   + bytes([203, 0, 113, 0]))
    op, _name, key2, value2 = maps.encode_line("delete range 198.51.100.10:80/TCP 203.0.113.0/25")
    assert (op, key2, value2) == ("delete", key, None)


def test_bpf_source_agrees_on_the_table_room_and_the_flags():
    with open(f"{REPO}/bpf/lb.c") as fh:
        source = fh.read()

    def define(name: str) -> int:
        found = re.search(rf"#define {name} (\w+)", source)
        assert found, name
        return int(found.group(1), 0)
    assert define("MAGLEV_M_MAX") == maps.MAGLEV_M_MAX
    assert {f: define(f"SVC_{f.upper().replace('-', '_')}") for f in maps.FLAGS} == maps.FLAGS
    assert define("SCOPE_INTERNAL") == maps.SCOPES["internal"]
    assert re.search(r"#define SRC_RANGE_STATIC_PREFIX \(8 \* sizeof\(struct frontend\)\)",
                     source) and maps.SRC_RANGE_STATIC_PREFIX == 8 * 8


def test_a_maglev_line_fits_one_bpftool_batch_line():
    # bpftool's batch reads at most 4096 arguments per line: each byte of a key or value is one
    text = maps.render([WEB], NODE1, maps.Options("maglev", maps.MAGLEV_M_MAX))
    longest = max(len(ln.split()) for ln in maps.encode(text, "/x").splitlines())
    assert longest < 4096


# --- the topology's choice ------------------------------------------------------------------------


def test_topology_kube_proxy_load_balancer_algorithm_picks_maglev(tmp_path):
    from types import SimpleNamespace

    from testbed.kubernetes.dataplane.ebpf.proxier import EbpfKubeProxy
    from testbed.spec.topology import load_topology
    path = tmp_path / "t.yaml"
    path.write_text("name: t\nvpc: {cidr: 192.168.0.0/16, subnets: {az-a: 192.168.0.0/24}}\n"
                    "nodes: {node1: {subnet: az-a}}\ndeployments: {web: {replicas: 2}}\n"
                    "services: {web: {type: NodePort, port: 80}}\n"
                    "kubeProxy: {mode: ebpf, loadBalancer: {algorithm: maglev}}\n")
    topo = load_topology(str(path))
    assert (topo.kube_proxy.mode, topo.kube_proxy.algorithm) == ("ebpf", "maglev")
    plane = EbpfKubeProxy(SimpleNamespace(topo=topo, plan=None), min_sync_period_s=1.0)
    assert plane.options == maps.Options("maglev")
