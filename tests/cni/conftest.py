"""Fixtures of the CNI plugin tests (see tests/cni/harness.py for the set-up)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from e2e.netns import RunNamespaces
from tests.cni.harness import PLUGIN, CniNode, NodeApi

API_ADDRESS = "198.18.0.1"


@dataclass
class Cluster:
    run: RunNamespaces
    node1: CniNode
    node2: CniNode
    api: NodeApi


@pytest.fixture
def cni_node(netns: RunNamespaces, tmp_path: Path) -> CniNode:
    """One node namespace with its bridge; no API server (for what needs none)."""
    if not PLUGIN.exists():
        pytest.skip(f"{PLUGIN} is not installed: run scripts/bootstrap.sh (make test does)")
    return CniNode(netns, netns.add("n1"), tmp_path)


@pytest.fixture
def cluster(cni_node: CniNode, netns: RunNamespaces, tmp_path: Path) -> Iterator[Cluster]:
    """Two nodes linked by 198.18.0.1/24 - 198.18.0.2/24; the lab API on 198.18.0.1."""
    node2_dir = tmp_path / "n2"
    node2_dir.mkdir()
    node2 = CniNode(netns, netns.add("n2"), node2_dir)
    node2.log_file = cni_node.log_file
    netns.check(cni_node.ns, ["ip", "link", "add", "ul0", "type", "veth", "peer", "ul0tmp"])
    netns.check(cni_node.ns, ["ip", "link", "set", "ul0tmp", "netns", node2.ns])
    netns.check(node2.ns, ["ip", "link", "set", "ul0tmp", "name", "ul0"])
    for node, address in ((cni_node, API_ADDRESS), (node2, "198.18.0.2")):
        netns.check(node.ns, ["ip", "addr", "add", f"{address}/24", "dev", "ul0"])
        netns.check(node.ns, ["ip", "link", "set", "ul0", "up"])
    api = NodeApi(cni_node.ns, API_ADDRESS, tmp_path)
    cni_node.kubeconfig = node2.kubeconfig = api.kubeconfig
    try:
        yield Cluster(netns, cni_node, node2, api)
    finally:
        api.stop()
