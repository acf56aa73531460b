"""The one place that reads settings: defaults < config file (YAML) < environment < flags.

Settings are the frozen dataclasses of node_agent.settings, one group per concern (ListenSettings,
InterceptSettings, ...) under one root. The file mirrors the groups:

    listen: {address: 169.254.20.10, port: 53}
    upstream: {servers: ["10.96.0.10:53"]}

Environment variables are NODE_AGENT_<GROUP>_<FIELD> (NODE_AGENT_LISTEN_PORT=5353); lists are
comma-separated. Unknown groups or keys are errors, not silently ignored typos.
"""

from __future__ import annotations

import ipaddress
import types
import typing
from collections.abc import Mapping
from dataclasses import fields, replace
from typing import Any

import yaml

from node_agent.settings import Settings


class ConfigError(ValueError):
    pass


GROUPS = tuple(f.name for f in fields(Settings) if f.name != "no_bpf")


def parse_hostport(text: str, default_port: int = 53) -> tuple[str, int]:
    """'10.0.0.1', '10.0.0.1:53', 'fd00::1', '[fd00::1]:53' -> (address, port)."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") else default_port
    elif text.count(":") == 1:
        host, port_s = text.split(":")
        port = int(port_s)
    else:
        host, port = text, default_port
    try:
        ipaddress.ip_address(host)
    except ValueError as e:
        raise ConfigError(f"{text!r}: not an IP address[:port]") from e
    if not 0 < port < 65536:
        raise ConfigError(f"{text!r}: port out of range")
    return host, port


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("1", "true", "yes", "on"):
            return True
        if str(value).lower() in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError(f"{where}: expected a boolean, got {value!r}")
    if hint in (int, float):
        try:
            return hint(value)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}") from e
    if hint is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    if origin is tuple:
        items = value.split(",") if isinstance(value, str) else list(value or [])
        items = [i for i in items if i != ""]
        inner = typing.get_args(hint)[0]
        if typing.get_origin(inner) is tuple:  # (host, port) pairs
            return tuple(v if isinstance(v, (tuple, list)) else parse_hostport(str(v)) for v in items)
        return tuple(_coerce(i, inner, where) for i in items)
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return None if value is None else _coerce(value, args[0], where)
    return value


def _apply(group: Any, values: Mapping[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(type(group))
    known = {f.name for f in fields(group)}
    changes = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        if name not in known:
            raise ConfigError(f"{where}: unknown setting {key!r} (known: {', '.join(sorted(known))})")
        changes[name] = _coerce(value, hints[name], f"{where}.{key}")
    return replace(group, **changes)


def from_mapping(data: Mapping[str, Any], base: Settings | None = None, where: str = "config") -> Settings:
    settings = base or Settings()
    for key, values in (data or {}).items():
        if key == "no_bpf":
            settings = replace(settings, no_bpf=_coerce(values, bool, f"{where}.no_bpf"))
            continue
        if key not in GROUPS:
            raise ConfigError(f"{where}: unknown group {key!r} (known: {', '.join(GROUPS)})")
        if not isinstance(values, Mapping):
            raise ConfigError(f"{where}.{key}: expected a mapping")
        settings = replace(settings, **{key: _apply(getattr(settings, key), values, f"{where}.{key}")})
    return settings


def from_file(path: str, base: Settings | None = None) -> Settings:
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: expected a mapping of setting groups")
    return from_mapping(data, base, where=path)


def from_env(env: Mapping[str, str], base: Settings) -> Settings:
    data: dict[str, dict[str, str]] = {}
    for key, value in env.items():
        if not key.startswith("NODE_AGENT_"):
            continue
        rest = key[len("NODE_AGENT_") :].lower()
        if rest == "no_bpf":
            data["no_bpf"] = value  # type: ignore[assignment]
            continue
        group = next((g for g in GROUPS if rest.startswith(g + "_")), None)
        if group is None:
            raise ConfigError(f"environment: {key} names no setting group")
        data.setdefault(group, {})[rest[len(group) + 1 :]] = value
    return from_mapping(data, base, where="environment")


def load(
    config_file: str | None,
    env: Mapping[str, str],
    flags: Mapping[str, Mapping[str, Any]],
    no_bpf: bool | None = None,
) -> Settings:
    """Layer the sources; `flags` is {group: {field: value}} of the flags actually given."""
    settings = Settings()
    if config_file:
        settings = from_file(config_file, settings)
    settings = from_env(env, settings)
    settings = from_mapping({g: v for g, v in flags.items() if v}, settings, where="flags")
    if no_bpf is not None:
        settings = replace(settings, no_bpf=no_bpf)
    return _finish(settings)


def _finish(s: Settings) -> Settings:
    """Derived defaults: upstreams from the node's resolv.conf when none are configured, the node's
    own addresses as askers, the DNS service addresses for the zone's NS record."""
    if not s.upstream.servers:
        servers = resolv_conf_servers("/etc/resolv.conf")
        s = replace(s, upstream=replace(s.upstream, servers=servers))
    if not s.upstream.servers:
        raise ConfigError("no upstream servers: give --upstream or a nameserver in /etc/resolv.conf")
    if not s.table.node_ips:
        # The node itself gets answers too (not only its pods): its own addresses, found here once.
        from node_agent.kernel.listenaddr import local_addresses

        s = replace(s, table=replace(s.table, node_ips=local_addresses()))
    if not s.table.dns_service_ips and s.intercept.dns_services:
        # The zone's NS record names the DNS service the pods were told to use (what they asked).
        s = replace(s, table=replace(s.table, dns_service_ips=tuple(s.intercept.dns_services)))
    if (s.listen.address, s.listen.port) in s.upstream.servers:
        raise ConfigError(
            f"upstream {s.listen.address}:{s.listen.port} is the listen address itself (a loop)"
        )
    return s


def resolv_conf_servers(path: str) -> tuple[tuple[str, int], ...]:
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return ()
    out = []
    for line in lines:
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            try:
                out.append(parse_hostport(parts[1].split("%")[0]))
            except ConfigError:
                continue
    return tuple(out)

