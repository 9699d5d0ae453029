"""vxlan_manager: the node agent that builds and keeps vmoverlay's data plane on one node."""
