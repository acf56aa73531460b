"""The table `make kernels` ends with (scripts/kernel_guest.py `table`): what makes a row pass, fail
or count as skipped, and that rows of one table name the commit they ran at."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "kernel_guest.py"
STEPS = ("load", "answers", "attach", "steer", "adopt")


def row(root: Path, suite: str, commit: str, *, failed: int = 0, result: bool = True,
        vm_rc: str | None = None) -> str:
    d = root / suite
    d.mkdir()
    (d / "vm").write_text(f"{suite}\n6.1\ntcg\n{commit}\n")
    (d / "vm-seconds").write_text("100\n")
    if vm_rc is not None:
        (d / "vm-rc").write_text(vm_rc + "\n")
        (d / "console.log").write_text("qemu-system-x86_64: terminating on signal 15\n")
    if result:
        tests = {"timed_out": False, "exit": int(failed > 0), "failed": failed, "skipped": 0,
                 "passed": 19 - failed, "failures": [f"test_x: boom{i}" for i in range(failed)],
                 "skips": []}
        (d / "result.json").write_text(json.dumps({
            "kernel": f"6.1.0-{suite}", "steps": {s: {"ok": True, "detail": ""} for s in STEPS},
            "tests": tests, "setup_s": 1.0, "probe_s": 1.0, "e2e_s": 1.0, "notes": []}))
    return str(d)


def table(*dirs: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), "table", *dirs], capture_output=True,
                          text=True, env=env or {}, timeout=60)


def test_rows_show_their_commit_and_a_mixed_table_says_so(tmp_path: Path) -> None:
    same = table(row(tmp_path, "a", "c02af62"), row(tmp_path, "b", "c02af62"))
    assert same.returncode == 0, same.stdout
    assert "commit" in same.stdout.splitlines()[1] and same.stdout.count("c02af62") == 2
    assert "different commits" not in same.stdout
    mixed = table(str(tmp_path / "a"), row(tmp_path, "c", "1234567+dirty"))
    assert mixed.returncode == 0
    assert "the rows come from different commits: 1234567+dirty, c02af62" in mixed.stdout


def test_a_failed_test_fails_the_table(tmp_path: Path) -> None:
    out = table(row(tmp_path, "a", "c1"), row(tmp_path, "b", "c1", failed=2))
    assert out.returncode == 1
    assert "17 passed, 2 failed" in out.stdout
    assert "kernels: 1 passed, 1 failed" in out.stdout


@pytest.mark.parametrize("skip", [False, True])
def test_a_vm_out_of_time_is_skipped_only_when_asked_and_never_passed(tmp_path: Path, skip: bool) -> None:
    out = table(row(tmp_path, "a", "c1"), row(tmp_path, "b", "c1", result=False, vm_rc="124"),
                env={"NA_KERNELS_TIMEOUT": "skip"} if skip else {})
    assert "VM timed out" in out.stdout
    if skip:
        assert out.returncode == 0
        assert "kernels: 1 passed, 0 failed, 1 skipped" in out.stdout
    else:
        assert out.returncode == 1
        assert "kernels: 1 passed, 1 failed" in out.stdout


def test_an_expected_failure_counts_only_with_its_reason(tmp_path: Path) -> None:
    dirs = (row(tmp_path, "a", "c1", failed=1),)
    expected = table(*dirs, env={"NA_KERNELS_XFAIL": "a=boom0"})
    assert expected.returncode == 0 and "fails as expected" in expected.stdout
    other = table(*dirs, env={"NA_KERNELS_XFAIL": "a=other"})
    assert other.returncode == 1 and "fails, but not with 'other'" in other.stdout
    stale = table(row(tmp_path, "b", "c1"), env={"NA_KERNELS_XFAIL": "b=boom0"})
    assert stale.returncode == 1 and "remove the entry" in stale.stdout
