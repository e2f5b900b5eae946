"""How many connections change backend when one of N backends goes: the eBPF kube-proxy's
Maglev tables (testbed.kubernetes.dataplane.ebpf.maps.maglev_table, what every node loads)
against hashing modulo N, the consistent hash Maglev replaces. Pure (no root, no cluster).

For each N and each backend removed in turn, a flow hashes to one table entry (M entries, as
bpf/lb.c's tuple_hash % M picks one); it "moves" when that entry names another backend after
the removal. The flows of the removed backend must move (1/N of them): what counts is how many
others move too. Random selection (Cilium's default, the mode's `random`) keeps a connection
on its backend only through the connection-tracking map; a new connection of the same client
goes anywhere, so (N-1)/N of them land elsewhere whatever is removed.

    .venv/bin/python bench/maglev_disruption.py [--m 1021] [--max-n 16] [--out FILE]
        [--figure PNG]

Writes bench/results/maglev_disruption.json: per N, the mean and max fraction of flows moved
(Maglev, modulo) and the part of it that was not the removed backend's own; with --figure,
draws the same rows (docs/reference/figures/maglev-disruption.png is drawn so).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from testbed.kubernetes.dataplane.ebpf.maps import maglev_table  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def moved_fraction(before: list[str], after: list[str]) -> float:
    """Of the flows (one per table entry), the share whose backend changed."""
    return sum(a != b for a, b in zip(before, after, strict=True)) / len(before)


def measure(n: int, m: int) -> dict[str, float]:
    """Remove each of n backends in turn; mean and max share of flows moved."""
    backends = [f"10.244.{i // 200 + 1}.{i % 200 + 2}:8080" for i in range(n)]
    maglev_before = [backends[i] for i in maglev_table(backends, m)]
    modulo_before = [backends[h % n] for h in range(m)]
    maglev, modulo, others = [], [], []
    for gone in range(n):
        left = backends[:gone] + backends[gone + 1:]
        after = [left[i] for i in maglev_table(left, m)]
        maglev.append(moved_fraction(maglev_before, after))
        others.append(sum(a != b for a, b in zip(maglev_before, after, strict=True)
                          if a != backends[gone]) / m)
        modulo.append(moved_fraction(modulo_before, [left[h % (n - 1)] for h in range(m)]))
    return {"n": n, "m": m, "removed_share": 1 / n,
            "maglev_mean": sum(maglev) / n, "maglev_max": max(maglev),
            "maglev_others_moved_mean": sum(others) / n,
            "modulo_mean": sum(modulo) / n, "random_new_connection": (n - 1) / n}


def draw(rows: list[dict[str, float]], m: int, path: str) -> None:
    """The share of flows that change backend against N: what must move (1/N), Maglev's
    mean and max, hashing modulo N, and random selection's new connections."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    n = [r["n"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.plot(n, [r["random_new_connection"] for r in rows], "s-", color="0.55",
            label="random (a new connection)")
    ax.plot(n, [r["modulo_mean"] for r in rows], "^-", color="tab:red", label="hash mod N")
    ax.plot(n, [r["maglev_mean"] for r in rows], "o-", color="tab:blue",
            label=f"Maglev, M = {m} (mean)")
    ax.fill_between(n, [r["maglev_mean"] for r in rows], [r["maglev_max"] for r in rows],
                    color="tab:blue", alpha=0.2, label="Maglev, worst backend removed")
    ax.plot(n, [r["removed_share"] for r in rows], "k--", label="1/N (must move)")
    ax.set_xlabel("backends N (one removed)")
    ax.set_ylabel("share of flows that change backend")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center right")
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--m", type=int, default=1021, help="Maglev table size (a prime)")
    ap.add_argument("--max-n", type=int, default=16, help="largest number of backends")
    ap.add_argument("--out", default=os.path.join(RESULTS, "maglev_disruption.json"))
    ap.add_argument("--figure", help="also draw the rows into this PNG")
    args = ap.parse_args(argv)
    t0 = time.time()
    rows = [measure(n, args.m) for n in range(2, args.max_n + 1)]
    print(f"{'N':>3} {'1/N':>6} {'maglev':>7} {'(max)':>6} {'others':>7} {'mod N':>6} "
          f"{'random':>7}")
    for r in rows:
        print(f"{r['n']:>3} {r['removed_share']:6.3f} {r['maglev_mean']:7.3f} "
              f"{r['maglev_max']:6.3f} {r['maglev_others_moved_mean']:7.3f} "
              f"{r['modulo_mean']:6.3f} {r['random_new_connection']:7.3f}")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump({"kind": "maglev_disruption", "m": args.m, "rows": rows,
                   "meta": {"python": platform.python_version(), "time": time.time(),
                            "seconds": round(time.time() - t0, 3)}}, fh, indent=1)
    print(f"written {args.out}")
    if args.figure:
        draw(rows, args.m, args.figure)
        print(f"written {args.figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
