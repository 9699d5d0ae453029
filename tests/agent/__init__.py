"""Tests of the node agent (vxlan_manager): pure unit tests and root tests in namespaces."""
