"""Fabric health: is the overlay on this node (and across the cluster) as intended?

Layout, one concern per module:

- :mod:`.findings`: the finding record, severities, exit codes, the stable JSON
  schema (``SCHEMA_VERSION``) and the table for people.
- :mod:`.observed`: typed snapshots of what the kernel holds (VXLAN device,
  bridge, underlay link, FDB and neighbour entries) and of peer probe results.
- :mod:`.checks`: pure functions, observed state + intent + Nodes + VMs ->
  findings. No I/O, so every rule is unit-tested without a kernel.
- :mod:`.observe`: reads the observed state through pyroute2 in the current
  network namespace (the edge).
- :mod:`.probe`: the probe address of a node and the prober thread that measures
  reachability, round-trip time and path MTU to every peer across the overlay.
- :mod:`.cli`: ``vxlan-manager check`` (one node) and ``check --cluster``.
"""
