"""The address plan (pure): every name, address, MAC and port of a cluster."""
