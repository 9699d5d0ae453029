"""Namespaces of a run: named vmo-<run id>-<role>, removed on close, even with processes inside.

Scenarios:
- add() creates the namespace with loopback up; close() removes it and kills what runs there;
- removal refuses names without the vmo- prefix;
- a run whose owner process is alive is never a leftover.
"""

from __future__ import annotations

import os

import pytest

from e2e import netns as nsmod


def test_namespace_lifecycle(netns: nsmod.RunNamespaces) -> None:
    name = netns.add("t0")
    assert name == f"vmo-{netns.run_id}-t0"
    assert name in nsmod.list_namespaces()
    assert "LOOPBACK,UP" in netns.check(name, ["ip", "link", "show", "lo"])
    proc = netns.popen(name, ["sleep", "60"])
    netns.close()
    assert name not in nsmod.list_namespaces()
    assert proc.wait(timeout=5) != 0


def test_live_run_is_not_a_leftover(netns: nsmod.RunNamespaces) -> None:
    netns.add("t1")
    assert nsmod.run_is_alive(netns.run_id)
    assert netns.run_id not in nsmod.leftover_runs()


def test_refuses_foreign_namespace() -> None:
    with pytest.raises(nsmod.NetnsError, match="not a vmoverlay namespace"):
        nsmod.remove_namespace("flannel-test")
    assert os.getpid() > 0


def test_down_drops_the_pid_file_of_a_dead_run_without_namespaces(
    netns: nsmod.RunNamespaces,
) -> None:
    dead = nsmod.STATE_DIR / "dead00.pid"
    dead.write_text("999999999\n")  # beyond pid_max: no such process
    try:
        assert list(nsmod.remove_leftovers(only="dead00")) == []
        assert not dead.exists()
        assert nsmod.run_is_alive(netns.run_id)
        list(nsmod.remove_leftovers(only=netns.run_id))
        assert (nsmod.STATE_DIR / f"{netns.run_id}.pid").exists()
    finally:
        dead.unlink(missing_ok=True)
