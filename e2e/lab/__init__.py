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
- :mod:`e2e.lab.sheet`, :mod:`e2e.lab.up`, :mod:`e2e.lab.down`, :mod:`e2e.lab.status`.

Design choices, and where they improve on the first design:

- Fidelity of the guest NIC: the guest namespace holds only ``eth0``; the
  bridge that joins it to the moving uplink lives in a separate QEMU-side
  namespace. In one namespace, the bridge answered ARP for the guest's IP
  with the bridge's own MAC (weak host model) and clients lost the VM when
  the uplink moved: found in the first trial, so the split is deliberate.
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
- pgbench only prints totals when its ``-T`` ends on its own, so the run's
  length is fixed up front from the plan and the measured CNI start-up time.
"""
