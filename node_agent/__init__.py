"""node-agent: node-level DNS interceptor for Kubernetes service meshes."""
