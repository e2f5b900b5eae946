"""cnlb: an emulated Kubernetes cluster on real network namespaces, to compare the classic
NodePort path with container-native load balancing.

Module map, lowest layer first (a module imports only its own area and lower layers):

errors, paths  one-line user errors; where the repository and its built programs are
spec           what the user writes: YAML read once with its lines, topology, experiment
plan           the address plan (pure): every name, address, MAC and port
kubernetes     node set-up, pods; CNI plugins (cni/) and kube-proxy's data planes (dataplane/)
cloud          the VPC fabric's config, the controller process, cloud load balancers (lb/)
analysis       run records, statistics, agreement, figures, diagrams, the report
emulation      Mininet hosts, the cluster and its control plane, journal and lock, sessions
experiments    the runner core and one module per experiment kind
cli            `cnlb`: parse, call the library, print
"""

__version__ = "0.1.0"
