"""The lab: a whole vmoverlay cluster in network namespaces, and its migration gate.

``vmoverlay-lab gate`` (``make lab``) builds a cluster on this machine, runs
real Postgres 15 in VMs, drives pgbench against them from a pod on another
node, live-migrates the VMs again and again, and fails if one client
connection breaks or one transaction fails. ``up`` / ``down`` / ``status``
keep a lab running for exploration and clean up after crashed runs.

Modules, top-down:

- :mod:`e2e.lab.gate`: the command; runs the plan, gathers the figures.
- :mod:`e2e.lab.lab`: topology, control plane, node agents, VMs, client, and the
  three steps of a live migration (prepare, switch-over, finish).
- :mod:`e2e.lab.cluster`: what a kubelet and a VM controller would write to the
  API (Nodes, runner Pods, VirtualMachine status, migrations).
- :mod:`e2e.lab.components`, :mod:`e2e.lab.cni`: the real components, started in
  their namespaces; the CNI plugin run per pod as kubelet runs it.
- :mod:`e2e.lab.vm`: a VM in ``netns`` mode: guest namespace + QEMU-side
  namespace, Postgres, the echo responder, freeze and thaw.
- :mod:`e2e.lab.announce`: QEMU's RARP self-announce after resume.
- :mod:`e2e.lab.probe`, :mod:`e2e.lab.pgwire`, :mod:`e2e.lab.echo`: the 10 ms probe.
- :mod:`e2e.lab.pgbench`: pgbench's command lines and output, stamped per line.
- :mod:`e2e.lab.plan`, :mod:`e2e.lab.report`: pure: who moves where; figures,
  verdict, table, JSON, JUnit.
- :mod:`e2e.lab.limits`: what ``gate`` and ``up`` accept (flag ranges from the
  address plan, writable output paths), checked before anything starts.
- :mod:`e2e.lab.sheet`, :mod:`e2e.lab.up`, :mod:`e2e.lab.down`, :mod:`e2e.lab.status`.

Design choices, and where they improve on the first design:

- Fidelity of the guest NIC: the guest namespace holds only ``eth0``; the
  bridge that joins it to the moving uplink lives in a separate QEMU-side
  namespace. In one namespace, the bridge answered ARP for the guest's IP
  with the bridge's own MAC (weak host model) and clients lost the VM when
  the uplink moved: found in the first trial, so the split is deliberate.
- The VM's own bridges (QEMU side and runner pod) do not learn MACs: they stand
  in for a tap, which is a wire. A learning bridge there learned the VM's MAC
  on the uplink from the node agent's gratuitous ARP (sent as the VM and
  flooded to the VM's port too) and dropped the client's frames as "same port":
  80-200 ms losses after a migration that no real tap has.
- The switch-over moves the uplink by netlink from the gate process itself
  (:mod:`e2e.lab.linkctl`): the old uplink leaves the VM bridge, the prepared one
  (carrier already up) joins it. Bringing a link up instead lets the kernel
  apply the carrier to the bridge port later from its link-watch work, which
  added up to 50 ms of loss under load; an ``ip`` process costs 5-30 ms. The
  pause window is exact to well under a millisecond.
- The VM's ``status.node`` is written at the start of the pause window, as a
  VM controller that knows the target at stop-and-copy time would, so the
  agents move their FDB entries while the VM is paused anyway: the extra
  blackout can approach zero. The migration gate of the CNI plugin
  (``vmoverlay.io/migration-target``) is not used: the target port stays
  silent because its uplink is down until switch-over, and the gate would
  never open under ``--no-vm-announce``.
- The API server listens on the lab underlay in the control-plane namespace;
  the lab's own API calls run on worker threads that entered that namespace
  (setns on one thread), so the root namespace needs no address or route.
- Timestamps are CLOCK_MONOTONIC in every process (probe, pgbench reader,
  migration), so they line up without conversion.
- pgbench only prints totals when its ``-T`` ends on its own; the gate gives it
  a generous ``-T`` as a bound and ends it with SIGINT after the last migration,
  taking committed transactions from ``pgbench_history`` and failures from its
  per-second progress lines, so migrations need no fixed schedule.
- Limitation: in ``netns`` mode a paused VM's processes are frozen but its
  kernel (the namespace's network stack) keeps running: TCP timers still fire
  during the pause and their segments are dropped at the detached uplink. A
  QEMU guest's kernel stops too (``--mode qemu``, :mod:`e2e.qemu`).
- Interruption: a terminal's Ctrl-C reaches the gate and its children alike;
  the helpers ignore it (the probe) or end quietly, and the gate reports
  "interrupted" with 130 (143 for SIGTERM) even when a child noticed first.
  It kills the probes and pgbench instead of waiting for their results, ends
  every VM's Postgres by immediate shutdown, and keeps no logs.
- Faults: ``--fault agent-kill`` SIGKILLs the target node's agent just before
  the first switch-over and restarts it 1 s later; ``--fault ipam-restart``
  restarts the IPAM controller before the middle migration. Every VM's
  network record must be the same after the run as before.
"""
