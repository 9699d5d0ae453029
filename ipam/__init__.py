"""ipam: the controller that gives every VM one stable IP and MAC, recorded in its status.

Design in brief (details in :mod:`ipam.controller` and ``ipam/README.md``):

- Every taken address is one cluster-scoped ``IPAllocation`` named
  ``vmoverlay.api.allocation_name(pool, ip)``; the API server's name uniqueness
  makes a duplicate impossible, with any number of controllers running.
- Kubernetes forbids owner references from a cluster-scoped object to a
  namespaced one, so an allocation cannot be garbage-collected with its VM.
  It records the VM in ``spec.vm`` {namespace, name, uid} and the controller
  releases it itself: on the VM's DELETED event (matched by UID), and through
  a leak sweeper that lists allocations first, then VMs, matches by UID, and
  frees only allocations older than a grace period whose VM is gone (delete
  with a UID precondition).
- ``status.network`` is written once (create allocation, then a
  resourceVersion-checked status write) and never changed afterwards.
- Pure decisions live in :mod:`ipam.allocator` and :mod:`ipam.sweeper`;
  Kubernetes I/O in :mod:`ipam.store`, :mod:`ipam.informer`, :mod:`ipam.leader`.
"""
