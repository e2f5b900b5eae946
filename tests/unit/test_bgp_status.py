"""`cnlb status` under cni.routing bgp: the fabric's sessions and learned routes, as the
controller's GET /v1/bgp gives them."""

from testbed.emulation.session import bgp_lines, format_status

VIEW = {"neighbors": [{"name": "Mesh_node1", "node": "node1", "address": "192.168.0.10",
                       "state": "up", "info": "Established", "established": True},
                      {"name": "Mesh_node3", "node": "node3", "address": "192.168.2.10",
                       "state": "start", "info": "Active", "established": False}],
        "routes": [{"prefix": "10.244.0.0/26", "next_hop": "192.168.0.10", "node": "node1"}],
        "updated_at": 0, "updates": 1}


def test_each_neighbour_and_learned_route_is_one_line():
    assert bgp_lines(VIEW) == [
        "bgp (the VPC fabric's speaker):",
        "  neighbour node1      192.168.0.10    up Established",
        "  neighbour node3      192.168.2.10    start Active",
        "  learned   10.244.0.0/26      via node1 (192.168.0.10)",
    ]


def test_no_bgp_no_lines_and_a_silent_controller_is_said():
    assert bgp_lines(None) == []
    assert bgp_lines({"error": "connection refused"}) == \
        ["bgp: the controller did not answer (connection refused)"]


def test_status_prints_the_bgp_part_after_the_load_balancers():
    status = {"cluster": "talk", "mode": "nodeport", "file": "t.yaml", "holder": None,
              "owner": {"pid": 1, "alive": True},
              "controller": {"pid": 2, "alive": True, "rest": "http://127.0.0.1:1/v1/"},
              "nodes": [], "pods": [], "services": [], "load_balancers": [], "bgp": VIEW}
    lines = format_status(status)
    assert lines[-4:] == bgp_lines(VIEW)
