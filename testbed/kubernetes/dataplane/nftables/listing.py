"""What `nft -j` lists of kube-proxy's table, read back: the names a sync over a table in place
needs (which chains and sets are there), and the table as a comparable state (handles left
out, elements sorted), so two loads can be checked to have left the same table.
"""

from __future__ import annotations

import json
from typing import Any

from testbed.kubernetes.dataplane.nftables.names import TABLE


def _items(listing: str) -> list[dict[str, Any]]:
    """The objects of `nft -j` output ([] for no output)."""
    return list(json.loads(listing).get("nftables", [])) if listing.strip() else []


def names(listing: str, kind: str) -> set[str]:
    """The names of kube-proxy's objects of `kind` ("chain", "set") in `nft -j list ...`."""
    return {obj["name"] for item in _items(listing)
            if (obj := item.get(kind)) and obj.get("table") == TABLE}


def table_state(listing: str) -> dict[str, dict[str, Any]]:
    """`nft -j list table ip kube-proxy` as kind -> name -> what it holds (a chain's rules in
    order, a set's or map's elements sorted), handles left out: equal for equal tables."""
    state: dict[str, dict[str, Any]] = {"chain": {}, "set": {}, "map": {}}
    for item in _items(listing):
        ((kind, body),) = item.items()
        if kind in ("chain", "set", "map"):
            body = {k: v for k, v in body.items() if k != "handle"}
            if "elem" in body:
                body["elem"] = sorted(json.dumps(e, sort_keys=True) for e in body["elem"])
            state[kind].setdefault(body["name"], {}).update(body)
        elif kind == "rule":
            chain = state["chain"].setdefault(body["chain"], {})
            chain.setdefault("rules", []).append(json.dumps(body["expr"], sort_keys=True))
    return state
