"""The Kubernetes parts: CNI plugins, service data planes (kube-proxy modes), pods."""
