"""cnlb: an emulated Kubernetes cluster on real network namespaces, to compare the classic
NodePort path with container-native load balancing."""

__version__ = "0.1.0"
