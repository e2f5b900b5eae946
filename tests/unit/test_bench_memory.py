"""bench/memory.py's pure parts: the meminfo and smaps_rollup parsers, the least-squares fit, the
pods-that-fit estimate, the process kinds and the generated topologies (nothing is measured)."""

import importlib.util
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load():
    # bench/ is a folder of scripts, not a package: load the module from its file
    spec = importlib.util.spec_from_file_location("bench_memory", ROOT / "bench" / "memory.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_memory"] = module   # dataclasses look their module up while defining
    spec.loader.exec_module(module)
    return module


memory = _load()

MEMINFO = """\
MemTotal:       24684084 kB
MemFree:        21980032 kB
MemAvailable:   22327644 kB
Slab:            1857476 kB
SReclaimable:     189092 kB
SUnreclaim:      1668384 kB
KernelStack:        1956 kB
PageTables:         3556 kB
Percpu:            43520 kB
HugePages_Total:       0
Hugepagesize:       2048 kB
"""


def test_meminfo_is_read_in_kib_and_used_is_total_less_available():
    info = memory.parse_meminfo(MEMINFO)
    assert info["MemTotal"] == 24684084 and info["Percpu"] == 43520
    assert info["HugePages_Total"] == 0             # a count without a unit is kept too
    assert memory.used_kib(info) == 24684084 - 22327644
    # the kernel's unreclaimable part: SUnreclaim, Percpu, stacks, page tables (not all Slab)
    assert memory.kernel_kib(info) == 1668384 + 43520 + 1956 + 3556


def test_meminfo_ignores_lines_without_a_number():
    assert memory.parse_meminfo("garbage\nMemTotal: kB\nMemFree: 5 kB\n") == {"MemFree": 5}


def test_rollup_reads_rss_pss_and_the_own_share_without_file_pages():
    text = ("55d0-7ffd ---p 00000000 00:00 0  [rollup]\nRss:  1234 kB\nPss:  567 kB\n"
            "Pss_Dirty:  410 kB\nPss_Anon:  400 kB\nPss_File:  157 kB\nPss_Shmem:  10 kB\n"
            "Shared_Clean:  900 kB\n")
    assert memory.parse_rollup(text) == {"rss": 1234, "pss": 567, "own": 410}
    # a kernel without the split: all of Pss is its own
    assert memory.parse_rollup("Rss: 8 kB\nPss: 4 kB\n") == {"rss": 8, "pss": 4, "own": 4}


def test_an_exact_plane_is_recovered_with_no_residual():
    def used(n, p):
        return 300_000 + 900 * n + 250 * p

    points = [(n, p, used(n, p)) for n, p in [(10, 100), (10, 500), (50, 500), (25, 625)]]
    fit = memory.fit_linear(points)
    assert fit.base == pytest.approx(300_000)
    assert fit.per_node == pytest.approx(900)
    assert fit.per_pod == pytest.approx(250)
    assert fit.max_residual == pytest.approx(0, abs=1e-6)


def test_least_squares_splits_the_noise_and_reports_the_worst_point():
    # four points of a plane (100 per node, 90 per pod), one 4000 KiB high: the fit leans
    # towards it, and the worst residual shows it
    points = [(10, 100, 10_000.0), (10, 500, 46_000.0), (50, 500, 50_000.0 + 4000),
              (25, 625, 58_750.0)]
    fit = memory.fit_linear(points)
    residuals = [fit.base + fit.per_node * n + fit.per_pod * p - v for n, p, v in points]
    assert max(abs(r) for r in residuals) == pytest.approx(fit.max_residual)
    assert 0 < fit.max_residual < 4000
    # least squares: the residuals are orthogonal to every column (1, nodes, pods)
    for column in ([1] * 4, [n for n, _, _ in points], [p for _, p, _ in points]):
        assert sum(c * r for c, r in zip(column, residuals, strict=True)) == pytest.approx(
            0, abs=1e-3)


def test_sizes_that_cannot_tell_nodes_from_pods_are_refused():
    with pytest.raises(ValueError, match="at least 3 sizes"):
        memory.fit_linear([(10, 100, 1.0), (20, 200, 2.0)])
    with pytest.raises(ValueError, match="vary nodes and pods"):   # always 10 pods per node
        memory.fit_linear([(10, 100, 1.0), (20, 200, 2.0), (40, 400, 4.0)])
    with pytest.raises(ValueError, match="at least 4"):
        memory.fit_linear([(10, 100, 1.0), (10, 400, 2.0), (40, 100, 4.0)], cross=True)


def test_the_cross_term_is_recovered_from_a_two_by_two_design():
    def used(n, p):   # kube-proxy-like: every node holds a rule per pod
        return 50_000 + 700 * n + 300 * p + 1.25 * n * p

    points = [(n, p, used(n, p)) for n in (10, 40) for p in (80, 400)]
    plane = memory.fit_linear(points)
    assert plane.max_residual > 1000                   # a plane cannot follow it
    fit = memory.fit_linear(points, cross=True)
    assert (fit.base, fit.per_node, fit.per_pod, fit.per_node_pod) == pytest.approx(
        (50_000, 700, 300, 1.25))
    assert fit.max_residual == pytest.approx(0, abs=1e-6)


def test_pods_that_fit_is_the_largest_count_within_the_budget():
    fit = memory.Fit(base=100_000, per_node=2_000, per_pod=300, max_residual=0)

    def need(pods, per_node=17):
        return 100_000 + 2_000 * math.ceil(pods / per_node) + 300 * pods

    budget = 22 * 2**20
    pods = memory.pods_that_fit(fit, budget, 17)
    assert need(pods) <= budget < need(pods + 1)
    # fewer pods per node means more nodes: fewer pods fit
    assert memory.pods_that_fit(fit, budget, 5) < pods


def test_pods_that_fit_with_a_cross_term_solves_the_quadratic():
    fit = memory.Fit(base=0, per_node=0, per_pod=0, max_residual=0, per_node_pod=1.0)
    # need = nodes * pods = pods^2 / 10 at 10 pods per node: 1000 KiB holds 100 pods
    assert memory.pods_that_fit(fit, 1000, 10) == 100
    assert memory.pods_that_fit(fit, 999, 10) < 100


def test_pods_that_fit_is_zero_when_the_base_alone_is_too_big_and_none_for_a_nonsense_fit():
    assert memory.pods_that_fit(memory.Fit(10_000, 10, 10, 0), 5_000, 17) == 0
    assert memory.pods_that_fit(memory.Fit(10_000, -500, -10, 0), 1e9, 17) is None
    assert memory.pods_that_fit(memory.Fit(0, 0, 1e-9, 0), 1e9, 17) is None   # past the limit


def test_process_kinds_from_command_lines():
    kind = memory.process_kind
    launcher = ["/repo/build/podserver", "--launch"]
    assert kind(launcher, ["/usr/bin/python3", "bench/memory.py"]) == "pod server launcher"
    assert kind(launcher, launcher) == "pod servers"     # forked by it, same command line
    assert kind(["/repo/build/podserver", "--port", "8080"]) == "pod servers"
    assert kind(["bash", "--norc", "--noediting", "-is", "mininet:lbhost"]) == "shells"
    assert kind(["bash", "-c", "true"]) == "other"
    assert kind(["/venv/bin/python", "-m", "controllers.run", "--config", "f"]) == \
        "vpc controller"
    assert kind(["/venv/bin/python", "-m", "controllers.run", "--checker"]) == "health checker"
    assert kind(["python", "-m", "testbed.kubernetes.dataplane.healthserver", "--state",
                 "x"]) == "kube-proxy health servers"
    assert kind([]) == "other"


def test_quiet_needs_a_full_window_within_the_spread():
    assert memory.is_quiet([5000, 5100, 5200, 5300, 5400], window=5, spread_kib=1024)
    assert not memory.is_quiet([5000, 5100, 5200, 5300], window=5, spread_kib=1024)
    assert not memory.is_quiet([0, 5000, 5100, 5200, 9000], window=5, spread_kib=1024)
    assert memory.is_quiet([0, 90_000, 5000, 5100, 5200, 5300, 5400], window=5)


def test_sizes_are_nodes_by_pods_per_node():
    assert memory.parse_size(" 10x50 ") == (10, 50)
    for bad in ("10", "x5", "0x5", "10x", "ax5", "10*5"):
        with pytest.raises(ValueError, match="NODESxPODS_PER_NODE"):
            memory.parse_size(bad)


@pytest.mark.parametrize("nodes,pods", [(3, 4), (10, 50), (50, 10), (25, 25), (100, 50)])
def test_generated_topologies_load_in_both_modes_with_every_pod(tmp_path, nodes, pods):
    from testbed.plan.addresses import build_plan
    from testbed.spec.topology import load_topology

    path = tmp_path / "t.yaml"
    path.write_text(memory.topology_yaml(nodes, pods))
    for mode in memory.MODES:
        plan = build_plan(load_topology(str(path), mode=mode))
        assert len(plan.nodes) == nodes and len(plan.pods) == nodes * pods
        assert {p.node for p in plan.pods} == {n.name for n in plan.nodes}


def test_a_size_whose_subnet_would_be_too_big_is_refused():
    with pytest.raises(ValueError, match="/20"):
        memory.topology_yaml(10, 5000)


def test_a_measurement_is_disturbed_when_the_kernel_moved_or_did_not_come_back():
    assert memory.disturbed([True, True], -12 * 1024, 150 * 1024) is None
    assert "hold still" in memory.disturbed([True, False], 0, 150 * 1024)
    # another cluster's namespaces freed meanwhile: far more than this one ever added
    assert "moved by -454 MiB" in memory.disturbed([True, True], -454 * 1024, 20 * 1024)
    # a big cluster may leave a little more behind than a small one
    assert memory.disturbed([True], 40 * 1024, 200 * 1024) is None
    assert memory.disturbed([True], 40 * 1024, 100 * 1024) is not None
    # begun while another cluster's objects were still there: they hide what this one costs
    assert "820 MiB more" in memory.disturbed([True], -19 * 1024, 33 * 1024, 820 * 1024)
    assert memory.disturbed([True], 0, 160 * 1024, 10 * 1024) is None


def test_predictions_set_each_run_beside_an_earlier_results_fits():
    plane = memory.Fit(1000, 100, 10, 0).to_dict()
    cross = memory.Fit(1000, 100, 10, 0, per_node_pod=0.5).to_dict()
    earlier = {"summary": {"nodeport": {"fits": {"accounted": plane},
                                        "fits_with_nodes_x_pods": {"accounted": cross}}}}
    runs = [{"mode": "nodeport", "nodes": 100, "pods": 1000, "added": {"accounted_kib": 70000}},
            {"mode": "container-native", "nodes": 10, "pods": 10,
             "added": {"accounted_kib": 5}}]
    rows = memory.predictions(runs, earlier)
    assert rows[0] == {"mode": "nodeport", "nodes": 100, "pods": 1000, "accounted_kib": 70000,
                       "plane": 1000 + 100 * 100 + 10 * 1000,
                       "with nodes x pods": 1000 + 100 * 100 + 10 * 1000 + 0.5 * 100 * 1000}
    assert rows[1]["plane"] is None and rows[1]["with nodes x pods"] is None   # no fit there
