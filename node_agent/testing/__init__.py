"""The simulated node (real kernel parts) shared by tests, the demo and benchmarks.

The product never imports this package (the CLI's `demo` command loads it lazily).
"""

from importlib import resources

DEMO_MESH = str(resources.files("node_agent.testing") / "data" / "demo-mesh.yaml")  # the demo's mesh
