"""node_agent.upstream.policy: server order, health, attempts and rounds, 0x20 standing, failure
reasons - on plain state, no sockets."""

from __future__ import annotations

from typing import Any

import pytest

from node_agent.dns.consts import Rcode
from node_agent.settings import UpstreamSettings
from node_agent.upstream import policy
from node_agent.upstream.policy import AttemptFailed, Policy, ServerState


def make(n: int = 3, **kw: Any) -> tuple[Policy[ServerState], list[ServerState]]:
    servers = [ServerState(f"s{i}") for i in range(n)]
    return Policy(servers, UpstreamSettings(**kw)), servers


def names(servers: list[ServerState]) -> list[str]:
    return [s.name for s in servers]


def fail(p: Policy[ServerState], s: ServerState, times: int, reason: str = "timeout") -> list[bool]:
    return [p.failed(s, reason) for _ in range(times)]


def test_no_servers_is_refused() -> None:
    with pytest.raises(ValueError):
        Policy([], UpstreamSettings())


def test_unreachable_failures_make_a_server_unhealthy_at_the_threshold() -> None:
    p, (a, b, _) = make(unhealthy_after=3)
    assert fail(p, a, 4) == [False, False, True, False]  # True once: when it crossed the line
    assert not p.healthy(a) and p.needs_probe(a)
    assert fail(p, b, 3, "network") == [False, False, True]
    assert p.health() == {"s0": False, "s1": False, "s2": True}


@pytest.mark.parametrize("reason", ["servfail", "refused", "bad-reply", "overload"])
def test_answers_and_bad_replies_do_not_count_against_health(reason: str) -> None:
    p, (a, *_) = make(unhealthy_after=1)
    assert fail(p, a, 5, reason) == [False] * 5
    assert p.healthy(a) and not p.needs_probe(a) and a.down_streak == 0


def test_an_answer_resets_the_streak_and_says_when_it_was_a_recovery() -> None:
    p, (a, *_) = make(unhealthy_after=2)
    fail(p, a, 1)
    assert p.answered(a) is False and a.down_streak == 0  # was not unhealthy: nothing to log
    fail(p, a, 2)
    assert p.answered(a) is True and p.healthy(a)
    assert p.answered(a) is False


def test_order_healthy_first_then_least_recently_failing() -> None:
    p, (a, b, c) = make(unhealthy_after=2)
    assert names(p.ordered()) == ["s0", "s1", "s2"]
    fail(p, a, 5)
    fail(p, b, 2)
    assert names(p.ordered()) == ["s2", "s1", "s0"]
    p.answered(a)
    fail(p, a, 1)  # below the threshold: back in its configured place
    assert names(p.ordered()) == ["s0", "s2", "s1"]


def test_sequential_attempts_cycle_through_the_order() -> None:
    p, (a, b, c) = make(attempts=5, unhealthy_after=1)
    assert not p.parallel
    assert names(p.sequence()) == ["s0", "s1", "s2", "s0", "s1"]
    fail(p, a, 1)
    assert names(p.sequence()) == ["s1", "s2", "s0", "s1", "s2"]
    p1, _ = make(1, attempts=3)
    assert names(p1.sequence()) == ["s0"] * 3


def test_parallel_rounds() -> None:
    p, (a, b, c) = make(attempts=3, parallel=True, unhealthy_after=1)
    assert p.parallel and p.rounds == 3
    assert names(p.round_targets(0)) == ["s0", "s1", "s2"]
    fail(p, b, 1)
    assert names(p.round_targets(0)) == ["s0", "s2"]  # round 1: the healthy ones
    assert names(p.round_targets(1)) == ["s0", "s1", "s2"]  # later rounds: everyone
    fail(p, a, 1)
    fail(p, c, 1)
    assert names(p.round_targets(0)) == ["s0", "s1", "s2"]  # none healthy: everyone
    one, _ = make(1, parallel=True)
    assert not one.parallel  # nothing to run in parallel with


def test_0x20_standing() -> None:
    p, (a, b, _) = make()
    assert p.randomize(a) and p.randomize(b)
    assert p.case_not_echoed(a) is True
    assert p.case_not_echoed(a) is False  # already off: nothing to log
    assert not p.randomize(a) and p.randomize(b)
    off, (x, *_) = make(randomize_case=False)
    assert not off.randomize(x)


def test_answer_failure_by_rcode() -> None:
    assert policy.answer_failure(Rcode.SERVFAIL) == "servfail"
    assert policy.answer_failure(Rcode.REFUSED) == "refused"
    assert policy.answer_failure(2) == "servfail"  # a plain int from the header, as the client passes it
    for rc in (Rcode.NOERROR, Rcode.FORMERR, Rcode.NXDOMAIN, Rcode.NOTIMP, 15):
        assert policy.answer_failure(rc) is None


def test_every_attempt_failure_has_a_stats_key() -> None:
    for reason in policy.REASONS:
        if reason != "overload":  # the client's, never an attempt's
            assert policy.failure_kind(reason) in policy.FAILURE_KINDS
    assert policy.failure_kind("bad-reply") == "bad_reply"


def test_final_error_prefers_the_last_answer_over_timeouts() -> None:
    sf = AttemptFailed("servfail", "SERVFAIL from s0", b"sf-bytes")
    rf = AttemptFailed("refused", "REFUSED from s1", b"rf-bytes")
    to = AttemptFailed("timeout")
    e = policy.final_error([sf, rf, to])
    assert isinstance(e, policy.UpstreamError)
    assert (e.reason, e.response, str(e)) == ("refused", b"rf-bytes", "refused: REFUSED from s1")
    e = policy.final_error([to, AttemptFailed("network", "s1: refused")])
    assert (e.reason, e.response, str(e)) == ("network", None, "network: s1: refused")
    assert str(policy.final_error([to])) == "timeout: timeout"
