"""Readiness: each part says ready or why not; one report for /readyz, nodeagent_ready and `status`."""

from __future__ import annotations

import functools

import pytest

from node_agent.app.health import Readiness, Report


def test_ready_when_every_part_is() -> None:
    r = Readiness()
    r.add("bpf", lambda: None)
    r.add("table", lambda: None)
    report = r.check()
    assert report.ready
    assert report.text() == "ready"


def test_each_part_not_ready_is_named_with_its_reason_in_order() -> None:
    state = {"bpf": "not attached", "listener": None, "table": "not synced"}
    r = Readiness()
    for part in state:
        r.add(part, functools.partial(state.get, part))
    report = r.check()
    assert not report.ready
    assert report.not_ready == (("bpf", "not attached"), ("table", "not synced"))
    assert report.text() == "bpf: not attached; table: not synced"
    state["bpf"] = None  # probes are asked again at every check
    assert r.check().text() == "table: not synced"
    state["table"] = None
    assert r.check().ready


def test_a_probe_that_raises_is_a_part_not_ready() -> None:
    def broken() -> str | None:
        raise RuntimeError("map gone")

    r = Readiness()
    r.add("bpf", broken)
    assert r.check().not_ready == (("bpf", "probe failed: map gone"),)


def test_a_part_cannot_be_added_twice() -> None:
    r = Readiness()
    r.add("table", lambda: None)
    with pytest.raises(ValueError):
        r.add("table", lambda: "not synced")


@pytest.mark.parametrize(
    "report",
    [Report(), Report((("table", "not synced (waiting for a, b)"),)),
     Report((("bpf", "not loaded"), ("listener", "down")))],
)
def test_the_readyz_body_reads_back_as_the_same_report(report: Report) -> None:
    assert Report.parse(report.text() + "\n") == report
