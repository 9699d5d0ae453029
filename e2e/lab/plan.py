"""Which VM moves where, in which order: a pure function of the lab's shape.

Migrations go round-robin over the nodes (each VM to the next node in the
ring, the client's node included), and each VM moves twice in a row, so the
plan holds back-to-back migrations of the same VM; once a VM has gone round
the ring it returns to the node it started on.

>>> plan_migrations(["vm1", "vm2"], {"vm1": "n1", "vm2": "n2"}, ["n1", "n2", "n3"], 6)
... # doctest: +NORMALIZE_WHITESPACE
[('vm1', 'n1', 'n2'), ('vm1', 'n2', 'n3'), ('vm2', 'n2', 'n3'), ('vm2', 'n3', 'n1'),
 ('vm1', 'n3', 'n1'), ('vm1', 'n1', 'n2')]
"""

from __future__ import annotations


def plan_migrations(
    vms: list[str], start: dict[str, str], nodes: list[str], count: int
) -> list[tuple[str, str, str]]:
    if len(nodes) < 2:
        raise ValueError("migrations need at least 2 nodes")
    where = dict(start)
    plan = []
    for k in range(count):
        vm = vms[(k // 2) % len(vms)]
        source = where[vm]
        target = nodes[(nodes.index(source) + 1) % len(nodes)]
        plan.append((vm, source, target))
        where[vm] = target
    return plan


def split_clients(clients: int, vms: int) -> list[int]:
    """Spread ``clients`` pgbench clients over ``vms`` VMs as evenly as possible.

    >>> split_clients(16, 3)
    [6, 5, 5]
    """
    return [clients // vms + (1 if i < clients % vms else 0) for i in range(vms)]
