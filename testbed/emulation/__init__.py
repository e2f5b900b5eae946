"""The Mininet emulation: hosts, links, the cluster, journal and lock, detached session, doctor."""
