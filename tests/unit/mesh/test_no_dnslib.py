"""mesh/ builds records through node_agent.dns.build: dns/build.py is the one module that imports dnslib."""

from __future__ import annotations

import ast
from pathlib import Path

import node_agent.mesh

MESH = Path(node_agent.mesh.__file__).parent


def imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_no_module_of_mesh_imports_dnslib() -> None:
    files = sorted(MESH.rglob("*.py"))
    assert MESH / "table" / "answer.py" in files  # the walk reaches the package's modules
    assert [str(f.relative_to(MESH)) for f in files if "dnslib" in imported_roots(f)] == []
