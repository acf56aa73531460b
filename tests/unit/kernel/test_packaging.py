"""bpf/ stays at the top of the tree but ships inside the package (node_agent.kernel.bpf), so a plain
`pip install .` works: build the wheel from a copy of the tree and look inside."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from importlib import resources
from pathlib import Path

from node_agent.kernel import maps

ROOT = Path(__file__).resolve().parents[3]


def test_the_loader_finds_the_sources_through_the_package() -> None:
    assert maps.SOURCE == resources.files(maps.BPF_PACKAGE) / "dns_steer.c"
    assert maps.HEADER.parent == maps.SOURCE.parent
    assert maps.SOURCE.read_bytes() == (ROOT / "bpf" / "dns_steer.c").read_bytes()


def test_the_wheel_carries_every_module_the_bpf_sources_and_the_demo_data(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(ROOT / "pyproject.toml", src)
    ignore = shutil.ignore_patterns("__pycache__")
    for d in ("node_agent", "bpf"):
        shutil.copytree(ROOT / d, src / d, ignore=ignore)
    # No build isolation: the venv's setuptools, so the test needs no network.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "dist"), str(src)], check=True, capture_output=True, timeout=120)
    (wheel,) = (tmp_path / "dist").glob("node_agent-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    wanted = {p.relative_to(src).as_posix() for p in (src / "node_agent").rglob("*") if p.is_file()}
    wanted |= {f"node_agent/kernel/bpf/{p.name}" for p in (src / "bpf").iterdir() if p.suffix in (".c", ".h", ".py")}
    assert {"node_agent/kernel/bpf/dns_steer.c", "node_agent/kernel/bpf/dns_steer.h"} <= wanted
    assert wanted - names == set(), "left out of the wheel: list the package in pyproject.toml [tool.setuptools]"
