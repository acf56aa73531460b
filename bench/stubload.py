"""Build bench/stubload.c (a load generator shaped like a pod's stub resolver) into a work directory."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

SOURCE = Path(__file__).with_name("stubload.c")


def build(workdir: Path) -> Path:
    """Compile stubload with the system's C compiler; its path. Raises with the compiler's message."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise RuntimeError("no C compiler (cc) to build bench/stubload.c: apt-get install gcc libc6-dev")
    out = workdir / "stubload"
    r = subprocess.run([cc, "-O2", "-Wall", "-o", str(out), str(SOURCE), "-lm"], capture_output=True, text=True,
                       timeout=120)
    if r.returncode != 0:
        raise RuntimeError(f"building {SOURCE.name} failed: {r.stderr.strip()[-800:]}")
    return out
