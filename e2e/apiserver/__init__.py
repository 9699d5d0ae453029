"""The lab's Kubernetes API server: what vmoverlay uses of the real one, in one process.

Modules, one concern each:

- :mod:`.resources` resource types (built in, and from CRDs);
- :mod:`.store` objects in memory, resourceVersion, event history, watch fan-out;
- :mod:`.persist` SQLite write-through for ``--data-dir``;
- :mod:`.objects` API semantics (create/update/patch/delete, status subresource,
  generation, finalizers, preconditions, CRDs, namespaces);
- :mod:`.rules`, :mod:`.validation`, :mod:`.patch`, :mod:`.selectors` pure
  rules and helpers;
- :mod:`.gc` ownerReferences garbage collection; :mod:`.views` types served as
  a view of another (events.k8s.io/v1 Events over core/v1 Events);
- :mod:`.watch` watch streams; :mod:`.discovery` discovery documents and tables;
- :mod:`.handlers` the HTTP layer; :mod:`.admin` ``/_lab/`` endpoints;
  :mod:`.faults` fault injection; :mod:`.audit` the audit record;
- :mod:`.server` assembly; :mod:`.main` the ``vmoverlay-lab apiserver`` command.
"""
