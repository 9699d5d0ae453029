"""vmoverlay's shared core: what the node agent, the IPAM controller, the CNI plugin
and the lab all need, written once.

- ``api``: the API group, resource names and typed views of the custom resources.
- ``identity``: the stable MAC derived from a VM's UID.
- ``kube``: Kubernetes client set-up and the project's own API error types.
- ``logs``: one logging set-up (human or JSON lines) for every entry point.
- ``metrics``: the Prometheus metrics and health endpoint server.
"""

__version__ = "0.1.0"
