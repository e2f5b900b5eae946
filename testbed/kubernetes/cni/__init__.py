"""CNI plugins: what a node and a pod get (addresses, devices, routes)."""
