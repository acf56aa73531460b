"""What exists in the mesh: the registry model, per-pod views, VIPs, the name table."""
