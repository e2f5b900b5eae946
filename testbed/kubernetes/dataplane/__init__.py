"""Service data planes (kube-proxy modes) and the health-check node port server."""
