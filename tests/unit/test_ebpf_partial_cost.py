"""What a partial sync of the eBPF kube-proxy renders (testbed.kubernetes.dataplane.ebpf.maps):
the service ports that changed and nothing else, so a one-endpoint change's work does not grow
with the number of services (the measurement is bench/ebpf_sync.py's)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from testbed.kubernetes.dataplane.ebpf import maps
from testbed.kubernetes.dataplane.model import Endpoint, ServicePort
from tests.unit.kubeproxy_cases import NODE1


def _services(n: int) -> list[ServicePort]:
    return [ServicePort("bench", f"svc-{i}", "http", "TCP", f"10.96.{i // 250}.{i % 250 + 1}",
                        80, 8080, node_port=30000 + i if i % 5 == 0 else None,
                        endpoints=tuple(Endpoint(f"10.244.{i // 50}.{(i % 50) * 5 + j + 1}",
                                                 8080, ("node1", "node2")[j % 2])
                                        for j in range(5)))
            for i in range(n)]


def _one_endpoint_changed(services: list[ServicePort], k: int) -> list[ServicePort]:
    svc = services[k]
    moved = replace(svc, endpoints=svc.endpoints[:-1] + (Endpoint("10.244.250.1", 8080,
                                                                  "node2"),))
    return services[:k] + [moved] + services[k + 1:]


@pytest.fixture
def rendered(monkeypatch):
    """The names of the service ports whose frontends render computes."""
    seen: list[str] = []
    real = maps._service_frontends

    def counting(svc, *args, **kwargs):
        seen.append(svc.name)
        return real(svc, *args, **kwargs)
    monkeypatch.setattr(maps, "_service_frontends", counting)
    return seen


@pytest.mark.parametrize("algorithm", maps.ALGORITHMS)
def test_a_one_endpoint_change_renders_that_service_port_only(rendered, algorithm):
    old = _services(500)
    new = _one_endpoint_changed(old, 251)
    options = maps.Options(algorithm)
    text = maps.render_partial(old, new, NODE1, options)
    assert set(rendered) == {"svc-251"} and len(rendered) == 2   # its old and new self
    assert text and all("10.96.1.2:80/TCP" in line for line in text.splitlines())
    # the same lines a comparison of the whole states gives
    before, after = maps.entries(old, NODE1, options), maps.entries(new, NODE1, options)
    assert sorted(text.splitlines()) == sorted(after[k] for k in after
                                               if before.get(k) != after[k])


def test_a_change_of_options_still_renders_every_service_port(rendered):
    services = _services(20)
    text = maps.render_partial(services, services, NODE1, maps.Options("maglev", 251),
                               maps.Options("random"))
    assert len(rendered) == 40
    assert sum(line.startswith("maglev ") for line in text.splitlines()) == 24   # 20 + 4 nodeports


def test_a_removed_and_an_added_service_port_are_rendered_and_nothing_else(rendered):
    old = _services(30)
    added = _services(31)[30]
    text = maps.render_partial(old, old[1:] + [added], NODE1)
    assert sorted(rendered) == ["svc-0", "svc-30"]
    deletes = [line for line in text.splitlines() if line.startswith("delete ")]
    assert deletes and all("10.96.0.1:80/TCP" in line or "192.168.0.11:30000/TCP" in line
                           for line in deletes)
