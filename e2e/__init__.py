"""e2e: the lab (a cluster in network namespaces), its API server and the migration gate."""
