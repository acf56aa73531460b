"""The agent on a kernel it cannot steer on, run as a node runs it (`node-agent run`): a program the
kernel refuses, a kernel below the floor, a cgroup that is not there. Each ends the process with
one clear error line and a non-zero exit, at once, never a hang (on 5.10 the agent once printed the
verifier's dump, then nothing, and had not exited 9 minutes after SIGTERM); `--no-bpf` still runs.

The kernel's refusals are injected where the agent meets the kernel (bcc's load_func, the bpf()
call of the feature probe), so these run on any kernel; `make kernels` runs the real 5.10."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from node_agent.kernel import cgroups
from node_agent.kernel.loader import uninstall
from node_agent.testing.pace import ready_bound

ROOT = Path(__file__).resolve().parents[2]

# Runs the CLI with one fault injected (argv[1]), the rest of argv as node-agent's.
INJECT = r"""
import errno, sys
fault = sys.argv.pop(1)
if fault == "refuse-connect4":  # what bcc raises when the verifier rejects a program
    import bcc
    real = bcc.BPF.load_func
    def load_func(self, name, *args, **kw):
        if name == b"na_connect4":
            raise Exception("Failed to load BPF program b'na_connect4': Invalid argument")
        return real(self, name, *args, **kw)
    bcc.BPF.load_func = load_func
elif fault == "no-getpeername":  # a kernel without the getpeername hooks (before 5.8)
    from node_agent.kernel import features
    real_syscall = features.kernel_syscall
    def kernel_syscall():
        call = real_syscall()
        def refusing(cmd, attr, log_size):
            attach_type = int.from_bytes(attr[68:72], "little")
            if cmd == features.BPF_PROG_LOAD and attach_type in (features.GETPEERNAME4, features.GETPEERNAME6):
                return features.Answer(-1, errno.EINVAL)
            return call(cmd, attr, log_size)
        return refusing
    features.kernel_syscall = kernel_syscall
from node_agent import cli
sys.exit(cli.main(sys.argv[1:]))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Run:
    """One `node-agent run` on loopback ports and a test cgroup, with a fault injected."""

    def __init__(self, fault: str, cgroup: str, pin_root: str, log: Path, *extra: str) -> None:
        self.metrics = _free_port()
        self.log = log
        cmd = [sys.executable, "-c", INJECT, fault, "run", "--cgroup", cgroup, "--pin-root", pin_root,
               "--listen", f"127.0.0.1:{_free_port()}", "--metrics-addr", f"127.0.0.1:{self.metrics}",
               "--upstream", f"127.0.0.1:{_free_port()}", "--log-level", "info", *extra]
        self.t0 = time.monotonic()
        with open(log, "w") as f:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)

    def exit_within(self, bound: float) -> tuple[int | None, float]:
        """(exit code or None if still running after `bound` s, seconds)."""
        try:
            rc = self.proc.wait(bound)
        except subprocess.TimeoutExpired:
            rc = None
        return rc, time.monotonic() - self.t0

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics}/readyz", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def errors(self) -> list[str]:
        return [ln for ln in self.log.read_text().splitlines() if " ERROR " in ln]


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[tuple[str, str, Path]]:
    """A test cgroup (nothing runs in it) and a bpffs pin directory, removed afterwards."""
    tag = secrets.token_hex(3)
    cg = os.path.join(cgroups.cgroup2_mount(), f"na-feat-{tag}")
    os.makedirs(cg)
    pin_root = f"/sys/fs/bpf/na-feat-{tag}"
    try:
        yield cg, pin_root, tmp_path
    finally:
        uninstall(pin_root)
        os.rmdir(cg)


def test_a_program_the_kernel_refuses_ends_the_agent_with_one_error(sandbox: tuple[str, str, Path]) -> None:
    cg, pin_root, tmp = sandbox
    run = Run("refuse-connect4", cg, pin_root, tmp / "agent.log")
    try:
        # It gets as far as a start does (compile, bind), then must leave: within the bound of a
        # whole start on this machine, plus the drain.
        rc, took = run.exit_within(ready_bound() + 5)
    finally:
        run.kill()
    text = run.log.read_text()
    assert rc is not None, f"the agent is still running {took:.0f} s after its load failed:\n{text}"
    assert rc != 0, text
    errors = run.errors()
    assert len(errors) == 1 and "cannot start: the kernel refused program na_connect4" in errors[0], text
    assert "Traceback" not in text, text


def test_below_the_floor_one_error_line_and_no_bpf_still_runs(sandbox: tuple[str, str, Path]) -> None:
    cg, pin_root, tmp = sandbox
    run = Run("no-getpeername", cg, pin_root, tmp / "floor.log")
    try:
        rc, took = run.exit_within(ready_bound())
    finally:
        run.kill()
    text = run.log.read_text()
    assert rc not in (None, 0), text
    errors = run.errors()
    assert len(errors) == 1, text
    assert "lacks what BPF steering needs" in errors[0] and "getpeername4/getpeername6" in errors[0], errors
    assert "--no-bpf" in errors[0]
    assert "compiled" not in text, "below the floor nothing is compiled"
    assert "Traceback" not in text
    assert not os.path.exists(os.path.join(pin_root, "v1", "link_na_connect4")), "nothing attached"

    plain = Run("no-getpeername", cg, pin_root, tmp / "nobpf.log", "--no-bpf")
    try:
        deadline = time.monotonic() + ready_bound()
        while not plain.ready() and plain.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert plain.ready(), plain.log.read_text()
        plain.proc.send_signal(signal.SIGTERM)
        assert plain.exit_within(15)[0] == 0, plain.log.read_text()
    finally:
        plain.kill()


def test_a_cgroup_that_is_not_there_ends_the_agent_with_one_error(sandbox: tuple[str, str, Path]) -> None:
    cg, pin_root, tmp = sandbox
    missing = os.path.join(cg, "no-such-cgroup")
    run = Run("none", missing, pin_root, tmp / "cgroup.log")
    try:
        rc, took = run.exit_within(ready_bound())
    finally:
        run.kill()
    text = run.log.read_text()
    assert rc not in (None, 0), text
    errors = run.errors()
    assert len(errors) == 1 and "cannot start" in errors[0] and "no-such-cgroup" in errors[0], text
    assert "Traceback" not in text, text
