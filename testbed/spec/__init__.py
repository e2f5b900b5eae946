"""What the user writes: YAML read once with lines kept, typed fields, topology, experiment."""
