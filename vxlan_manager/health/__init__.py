"""Fabric health: is the overlay on this node (and across the cluster) as intended?

Layout, one concern per module (user guide: docs/health.md):

- :mod:`.findings`: the finding record, severities, exit codes, the stable JSON
  schema (``SCHEMA_VERSION``) and the table for people.
- :mod:`.observed`: a snapshot of what the kernel holds (VXLAN device, bridge
  and its ports, links, FDB and neighbour entries), in the agent's own types.
- :mod:`.checks`: pure functions, observed state + the agent's desired state
  (from its configuration, the Nodes and the VMs) + probe results -> findings.
  No I/O, so every rule is unit-tested without a kernel.
- :mod:`.observe`: reads the snapshot through the agent's netlink readers (the edge).
- :mod:`.probe`: a node's probe address and the prober that measures
  reachability, round-trip time and path MTU to every peer across the overlay.
- :mod:`.service`: what runs inside the agent: the prober thread and ``/health``.
- :mod:`.cli`: ``vxlan-manager check`` (one node) and ``check --cluster``.
"""
