"""Settings: defaults < file < environment < flags, strict about typos, and the CLI's flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from node_agent import cli, config


def _args(*argv: str):
    return cli.build_parser().parse_args(["run", *argv])


def test_layers_file_env_flags(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(
        "listen: {address: 169.254.20.11, port: 5300}\nupstream: {servers: ['10.0.0.1', '[fd00::1]:5353']}\n"
        "intercept: {dns_services: [10.96.0.10, fd00:10:96::a], stale_after: 2.5}\n"
    )
    s = cli.load_settings(_args("--config", str(f)), env={"NODE_AGENT_LISTEN_PORT": "5301"})
    assert (s.listen.address, s.listen.port) == ("169.254.20.11", 5301)  # env beats file
    assert s.upstream.servers == (("10.0.0.1", 53), ("fd00::1", 5353))
    assert s.intercept.dns_services == ("10.96.0.10", "fd00:10:96::a")
    assert s.intercept.stale_after == 2.5
    s = cli.load_settings(
        _args("--config", str(f), "--listen", "127.0.0.1:5302", "--upstream", "10.0.0.9"),
        env={"NODE_AGENT_LISTEN_PORT": "5301"},
    )
    assert (s.listen.address, s.listen.port) == ("127.0.0.1", 5302)  # flags beat env
    assert s.upstream.servers == (("10.0.0.9", 53),)


def test_repeatable_flags_and_node_name() -> None:
    s = cli.load_settings(
        _args(
            "--upstream",
            "10.0.0.1",
            "--upstream",
            "10.0.0.2:54",
            "--dns-service",
            "10.96.0.10",
            "--dns-service",
            "10.96.0.11",
            "--static",
            "a.yaml",
            "--static",
            "b.yaml",
            "--cgroup",
            "/kubepods",
            "--no-bpf",
            "--capture-all",
        ),
        env={"NODE_NAME": "node-7"},
    )
    assert s.upstream.servers == (("10.0.0.1", 53), ("10.0.0.2", 54))
    assert s.intercept.dns_services == ("10.96.0.10", "10.96.0.11")
    assert s.sources.static_files == ("a.yaml", "b.yaml")
    assert s.intercept.cgroup == "/kubepods" and s.intercept.capture_all
    assert s.no_bpf is True
    assert s.sources.node_name == "node-7"


def test_flags_not_given_do_not_override(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("intercept: {capture_all: true}\nno_bpf: true\nupstream: {servers: [10.0.0.1]}\n")
    s = cli.load_settings(_args("--config", str(f)), env={})
    assert s.intercept.capture_all is True and s.no_bpf is True


@pytest.mark.parametrize(
    "text, message",
    [
        ("listen: {adress: 1.2.3.4}\n", "unknown setting 'adress'"),
        ("lisen: {address: 1.2.3.4}\n", "unknown group 'lisen'"),
        ("listen: {port: many}\n", "expected int"),
        ("intercept: {capture_all: maybe}\n", "expected a boolean"),
        ("upstream: {servers: [dns.example.com]}\n", "not an IP address"),
        ("- just a list\n", "expected a mapping"),
        ("listen: [1, 2\n", "not valid YAML"),
    ],
)
def test_bad_files_are_clear_errors(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(config.ConfigError, match=message):
        cli.load_settings(_args("--config", str(f), "--upstream", "10.0.0.1"), env={})


def test_env_group_typo_is_an_error() -> None:
    with pytest.raises(config.ConfigError, match="NODE_AGENT_LISTN_PORT"):
        cli.load_settings(_args("--upstream", "10.0.0.1"), env={"NODE_AGENT_LISTN_PORT": "1"})


def test_upstream_defaults_to_resolv_conf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rc = tmp_path / "resolv.conf"
    rc.write_text("search example\nnameserver 10.1.2.3\nnameserver fe80::1%eth0\noptions ndots:2\n")
    assert config.resolv_conf_servers(str(rc)) == (("10.1.2.3", 53), ("fe80::1", 53))


def test_listen_address_as_upstream_is_a_loop() -> None:
    with pytest.raises(config.ConfigError, match="loop"):
        cli.load_settings(_args("--listen", "169.254.20.10:53", "--upstream", "169.254.20.10"), env={})


@pytest.mark.parametrize(
    "text, expected",
    [
        ("10.0.0.1", ("10.0.0.1", 53)),
        ("10.0.0.1:5353", ("10.0.0.1", 5353)),
        ("fd00::1", ("fd00::1", 53)),
        ("[fd00::1]:5353", ("fd00::1", 5353)),
    ],
)
def test_parse_hostport(text: str, expected: tuple[str, int]) -> None:
    assert config.parse_hostport(text) == expected


def test_cli_rejects_bad_listen(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["run", "--listen", "nowhere:53"])
    assert "not an IP address" in capsys.readouterr().err


def test_zone_ns_record_names_the_dns_services_pods_use() -> None:
    s = cli.load_settings(_args("--dns-service", "10.96.0.10", "--dns-service", "fd00:10:96::a",
                                "--upstream", "10.0.0.1", "--node-name", "n1"), env={})
    assert s.table.dns_service_ips == ("10.96.0.10", "fd00:10:96::a")
