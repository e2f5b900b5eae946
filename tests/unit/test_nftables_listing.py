"""testbed.kubernetes.dataplane.nftables.listing: what `nft -j` lists, read back."""

import json

from testbed.kubernetes.dataplane.nftables import listing

META = {"metainfo": {"version": "1.0.6", "json_schema_version": 1}}


def nft_json(*items: dict) -> str:
    return json.dumps({"nftables": [META, *items]})


def test_names_are_kube_proxys_of_that_kind_only():
    out = nft_json({"chain": {"family": "ip", "table": "kube-proxy", "name": "services"}},
                   {"chain": {"family": "ip", "table": "other", "name": "zz/zz"}},
                   {"set": {"family": "ip", "table": "kube-proxy", "name": "cluster-ips"}})
    assert listing.names(out, "chain") == {"services"}
    assert listing.names(out, "set") == {"cluster-ips"}
    assert listing.names("", "chain") == set()


def test_equal_tables_give_equal_states_whatever_the_handles_and_element_order():
    def table(handle: int, elems: list) -> str:
        return nft_json(
            {"chain": {"table": "kube-proxy", "name": "services", "handle": handle}},
            {"rule": {"chain": "services", "handle": handle + 1, "expr": [{"accept": None}]}},
            {"set": {"table": "kube-proxy", "name": "cluster-ips", "handle": handle + 2,
                     "elem": elems}})
    a, b = table(1, ["10.96.0.1", "10.96.0.2"]), table(7, ["10.96.0.2", "10.96.0.1"])
    assert listing.table_state(a) == listing.table_state(b)
    assert listing.table_state(a) != listing.table_state(table(1, ["10.96.0.1"]))
    assert listing.table_state(a)["chain"]["services"]["rules"] == ['[{"accept": null}]']
