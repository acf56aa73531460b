"""`node-agent demo` (what `make demo` runs) builds, answers every probe as expected, tears down."""

from __future__ import annotations

import subprocess
import sys


def test_demo_runs_and_cleans_up() -> None:
    before = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    r = subprocess.run([sys.executable, "-m", "node_agent.cli", "demo"], capture_output=True, text=True,
                       timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "demo: all answers as expected" in r.stdout
    assert "kube-dns, directly" in r.stdout and "db-2 via 240.240." in r.stdout
    assert "cache hits 1," in r.stdout  # example.org from the second namespace
    assert subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout == before
