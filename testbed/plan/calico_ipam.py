"""Calico's IPAM, in the small: the pod CIDR cut into blocks affine to nodes, claimed on demand
(pure).

Calico's ipam (libcalico-go lib/ipam) hands a node a block of the IP pool (`blockSize`, /26 by
default) the first time the node needs an address, and a further block when the ones it holds are
full; each block is announced by the node as one route (bird_aggr.cfg), so the fabric holds one
route per block, not one per pod. Upstream picks a free block from a random start to spread
contention between nodes; here the lowest free block is taken, so a plan is reproducible.
Like upstream, every address of a block is a pod address (there is no network or broadcast
address in a routed /26), and a block stays with its node when its pods go (affinity is released
only with the node).

Block: one claimed block (its CIDR and the node it is affine to)
assign: the next address for a pod on a node, and the block it lies in
claim: the blocks with a block added (when assign picked a fresh one)
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Block:
    """A block of the pool affine to one node (Calico's BlockAffinity + AllocationBlock).

    cidr: the block, e.g. 10.244.0.0/26
    node: the node it is affine to
    """
    cidr: str
    node: str


class PoolExhausted(ValueError):
    """No block of the pool is free and the node's blocks are full."""


def assign(pool: str, block_size: int, blocks: Sequence[Block], node: str,
           used: Collection[str]) -> tuple[str, Block]:
    """The address a new pod on node gets: the lowest free one in the node's blocks (oldest
    block first), else the first address of the lowest unclaimed block (then claim it).

    pool: the IP pool (the topology's cni.podCIDR)
    block_size: the blocks' prefix length (cni.blockSize)
    blocks: the blocks claimed so far, every node's
    used: addresses pods hold now
    returns: (address, the block it lies in); PoolExhausted when there is none"""
    taken = {ipaddress.IPv4Address(a) for a in used}
    for block in blocks:
        if block.node != node:
            continue
        free = next((a for a in _addresses(block.cidr) if a not in taken), None)
        if free is not None:
            return str(free), block
    claimed = {b.cidr for b in blocks}
    net = ipaddress.IPv4Network(pool)
    if block_size < net.prefixlen:
        raise PoolExhausted(f"block size /{block_size} is wider than the pool {pool}")
    for cidr in net.subnets(new_prefix=block_size):
        if str(cidr) not in claimed:
            return str(cidr.network_address), Block(str(cidr), node)
    raise PoolExhausted(f"no free /{block_size} block left in {pool} for node {node}")


def claim(blocks: Sequence[Block], block: Block) -> list[Block]:
    """blocks with block in it (unchanged when it is there already)."""
    return list(blocks) if block in blocks else [*blocks, block]


def blocks_of(blocks: Sequence[Block], node: str) -> list[str]:
    """The CIDRs of the blocks affine to node, in the order they were claimed."""
    return [b.cidr for b in blocks if b.node == node]


def _addresses(cidr: str) -> Iterator[ipaddress.IPv4Address]:
    net = ipaddress.IPv4Network(cidr)
    return (net.network_address + i for i in range(net.num_addresses))
