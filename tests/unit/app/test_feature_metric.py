"""nodeagent_bpf_feature: one series per kernel feature the probe answered, 1 found, 0 degraded."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from node_agent.app.metrics import FeatureCollector, parse_exposition
from node_agent.kernel.features import FEATURES, Features


def test_every_probed_feature_is_a_series_and_a_missing_one_is_zero() -> None:
    found = Features("5.10.0", {f.name: f.name != "set_retval" for f in FEATURES})
    registry = CollectorRegistry()
    FeatureCollector(found.found, registry=registry)
    m = parse_exposition(generate_latest(registry).decode())
    assert m['nodeagent_bpf_feature{feature="set_retval"}'] == 0.0
    assert {k for k, v in m.items() if v == 1.0} == {
        f'nodeagent_bpf_feature{{feature="{f.name}"}}' for f in FEATURES if f.name != "set_retval"}
