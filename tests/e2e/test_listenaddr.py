"""The listen address goes on a dummy link, or on lo where the kernel has none; idempotent; removable."""

from __future__ import annotations

import secrets
import subprocess
import sys

import pytest

pytestmark = pytest.mark.kernel  # the dummy driver, or its absence: `make kernels` runs it on each kernel

SCRIPT = r"""
import json
from node_agent.kernel import listenaddr as l
a = l.ensure("169.254.20.10"); b = l.ensure("fd00:a9fe:0::10"); c = l.ensure("169.254.20.10")
l.remove("169.254.20.10"); l.remove("fd00:a9fe::10")
print(json.dumps([[a.link, a.added], [b.address, b.added], [c.added]]))
"""


def test_listen_address_placed_idempotently_and_removed() -> None:
    ns = f"na-la-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", SCRIPT],
                             capture_output=True, text=True, check=True).stdout
        (link, added), (v6, v6_added), (again,) = __import__("json").loads(out)
        assert link in ("nodeagent0", "lo") and added and v6 == "fd00:a9fe::10" and v6_added
        assert again is False  # already there: nothing added twice
        left = subprocess.run(["ip", "-n", ns, "addr"], capture_output=True, text=True).stdout
        assert "169.254.20.10" not in left and "fd00:a9fe::10" not in left and "nodeagent0" not in left
    finally:
        subprocess.run(["ip", "netns", "del", ns])
