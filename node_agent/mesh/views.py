"""Per-pod resolver views: the search list and ndots a pod's own stub resolver uses.

The table needs them because a pod's queries arrive already expanded by its search list, and the
server-side search shortcut must know which expansions the pod would try next. Computed the way the
kubelet writes resolv.conf (pkg/kubelet/network/dns), including custom spec.dnsConfig — ztunnel ignores
dnsConfig (ztunnel#555); answering by a search list the pod does not have would be wrong.
"""

from __future__ import annotations

from typing import NamedTuple

from node_agent.mesh.model import Pod

GLIBC_DEFAULT_NDOTS = 1  # what a resolv.conf without "options ndots" means


class View(NamedTuple):
    """What the table needs to know about an asker. Hashable; equal views share cache entries.
    A NamedTuple, not a dataclass: it is hashed for every cache hit, and tuple hashing is C code."""

    namespace: str
    searches: tuple[str, ...]
    ndots: int


def _dedup(names: list[str]) -> tuple[str, ...]:
    # kubelet drops duplicate search domains, keeping the first occurrence.
    seen: dict[str, None] = {}
    for n in names:
        n = n.lower().rstrip(".")
        if n and n not in seen:
            seen[n] = None
    return tuple(seen)


def pod_view(pod: Pod, cluster_domain: str, default_ndots: int, node_searches: tuple[str, ...]) -> View:
    """The view of a pod, from dnsPolicy and spec.dnsConfig.

    * ClusterFirst (and ClusterFirstWithHostNet): ``<ns>.svc.<d> svc.<d> <d>`` + the node's searches,
      then dnsConfig searches; ndots from dnsConfig options if given, else `default_ndots` (kubelet's 5).
    * Default: the node's resolv.conf (node searches, glibc ndots 1), then dnsConfig.
    * None: dnsConfig only; without an ndots option the resolver's default (1) applies.
    """
    cfg = pod.dns_config
    extra = list(cfg.searches) if cfg else []
    policy = pod.dns_policy or "ClusterFirst"
    if policy == "None":
        searches, ndots = extra, GLIBC_DEFAULT_NDOTS
    elif policy == "Default":
        searches, ndots = list(node_searches) + extra, GLIBC_DEFAULT_NDOTS
    else:
        cluster = [f"{pod.namespace}.svc.{cluster_domain}", f"svc.{cluster_domain}", cluster_domain]
        searches, ndots = cluster + list(node_searches) + extra, default_ndots
    option = dns_config_ndots(pod)
    if option is not None:
        ndots = option
    return View(pod.namespace, _dedup(searches), ndots)


def dns_config_ndots(pod: Pod) -> int | None:
    """ndots from spec.dnsConfig.options, if the pod set it.

    model.DNSConfig.ndots defaults to 5 and cannot say "unset"; sources.convert also records the written
    options in ``DNSConfig.options``, which is preferred when present.
    """
    cfg = pod.dns_config
    if cfg is None:
        return None
    if cfg.options is not None:
        for name, value in cfg.options:
            if name == "ndots":
                try:
                    return max(0, min(15, int(value)))  # glibc caps ndots at 15
                except ValueError:
                    return None
        return None
    return cfg.ndots


def node_view(node_searches: tuple[str, ...]) -> View:
    """The node itself (hostNetwork processes): its resolv.conf, no namespace, glibc default ndots."""
    return View("", _dedup(list(node_searches)), GLIBC_DEFAULT_NDOTS)
