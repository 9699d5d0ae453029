"""Real QEMU guests for the lab: image, VM, QMP, live migration.

Building blocks, each in its own module, for the gate's ``--mode qemu`` and
for tests; nothing here knows the lab's Kubernetes objects:

- :mod:`e2e.qemu.image`: ``ensure_image()`` builds (once, cached) a Debian
  kernel + busybox initramfs carrying the host's Postgres 15;
- :mod:`e2e.qemu.vm`: ``QemuVM.start()`` runs QEMU in a network namespace on a
  tap, ``wait_ready()`` waits for Postgres, ``stop()``; ``ensure_tap()``;
  ``resolve_accel()`` (TCG unless a time-limited KVM probe passes);
- :mod:`e2e.qemu.migrate`: ``start_target()`` + ``migrate()`` return QEMU's own
  figures (total time, downtime, RAM transferred);
- :mod:`e2e.qemu.qmp`: the QMP client; :mod:`e2e.qemu.kmod`: module load order;
  :mod:`e2e.qemu.initramfs`: the cpio writer; :mod:`e2e.qemu.errors`: one
  error class per failure (QEMU missing, image step, guest not ready,
  migration failed).

Needs root, ``qemu-system-x86`` and ``busybox-static`` (Debian), and apt access
to ``linux-image-amd64``; ``python -m e2e.qemu`` builds the image and boots a
guest by hand.
"""
