"""cni: the CNI plugin that plugs a VM's runner pod into the node's overlay bridge."""
