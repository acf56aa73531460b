"""`node-agent run` opts the agent out of transparent huge pages (cli.no_transparent_hugepages): the
kernel says so in /proc/PID/status (THP_enabled, 5.0+), for the agent and for what it starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

CHILD = r"""
import subprocess, sys
from node_agent.cli import no_transparent_hugepages

def thp(pid="self"):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("THP_enabled:"):
            return line.split()[1]

before = thp()
ok = no_transparent_hugepages()
child = subprocess.run([sys.executable, "-c", "print(open('/proc/self/status').read())"],
                       capture_output=True, text=True, check=True).stdout
kid = next(line.split()[1] for line in child.splitlines() if line.startswith("THP_enabled:"))
print(before, ok, thp(), kid)
"""


def test_run_opts_out_of_transparent_hugepages() -> None:
    if "THP_enabled:" not in Path("/proc/self/status").read_text():
        pytest.skip("this kernel does not report THP_enabled (before 5.0)")
    r = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60, check=True)
    before, ok, after, child = r.stdout.split()
    if before != "1":  # a kernel without THP, or a parent that opted out for us: nothing to show
        pytest.skip(f"huge pages off for this process already (THP_enabled {before})")
    assert (ok, after, child) == ("True", "0", "0"), r.stdout
