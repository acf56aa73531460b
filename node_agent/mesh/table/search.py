"""The server-side search path: answer ``<base>.<search>`` with what the pod's resolver would end up
with, in one round trip.

The asked name must be one the table may call non-existent (under the cluster domain, synced),
otherwise it could be real upstream. Of the view's searches the first one the name ends with is
taken as the expansion (the most specific, as Istio does). The pod would next try base with each
later search, then base itself, so the answer points at the first of those that exists:

* a later expansion that the table has -> CNAME to it, plus its records (see below);
* a later expansion under the cluster domain that the table lacks -> known not to exist, skip;
* a later expansion under another domain (node searches) -> unknown: skipped only if
  `search_past_node_domains`, else no shortcut;
* then base: a table name -> CNAME + records; under the cluster domain but unknown -> no
  shortcut (NXDOMAIN anyway); a single label -> no shortcut (the pod asks the bare name last;
  that goes upstream as normal DNS); external with at least one dot -> CNAME + `target`, but
  only when the asked name ends with the pod's own ``<ns>.svc.<domain>`` search.

Why that last restriction: a name can be an expansion and a literal query at once.
``api.dev.svc.cluster.local`` is "api.dev + svc.cluster.local" or the full name of service api
in namespace dev; if that service does not exist the literal answer is NXDOMAIN, while the
expansion reading would send the pod to the public ``api.dev``. Names under the pod's own
namespace search are the first expansion a ClusterFirst resolver tries, which is where the
round trips are saved; a literal query there names something in the pod's own namespace by a
multi-label FQDN, whose expansion reading leads to the same upstream name the pod's resolver
would end with anyway — except inside an existing Service's subtree (``kafka-2.kafka.<ns>...``,
``_x._tcp.web.<ns>...``), which is left to NXDOMAIN.

A name that is an alias is one for every type (RFC 1034 3.6.2): the answer is the CNAME plus
the target's records of qtype, or the CNAME alone (NOERROR) when the target has none. Never
CNAME for A and NXDOMAIN for AAAA: musl sends both at once and moves to the next search domain
on NXDOMAIN in either (src/network/lookup_name.c, name_from_dns), so a split answer saves it
nothing. Why CNAME alone gives each resolver what it would have got without the shortcut:

* musl stops at the first name where neither answer is NXDOMAIN. Without the shortcut that is
  the target (it exists, so both of its answers are NOERROR); with it, the asked name, whose
  answers carry exactly the target's records. Same addresses, or none (EAI_NODATA) in both.
* glibc (__res_context_search) stops at the first name with an answer that has records, and a
  CNAME is one; on NODATA it goes on. Without the shortcut it passes the target only for types
  the target lacks and then tries the names after it. So CNAME alone is right only if those
  names hold nothing the target lacks: `_rest_adds_nothing` requires each of them to be known
  not to exist, or to be the target's alias (``web.b``, the Istio alternate name of
  ``web.b.svc.<domain>``). Otherwise there is no shortcut for any type. A target that is
  itself a CNAME ends glibc there for every type, so it needs no such check.
"""

from __future__ import annotations

from node_agent.dns.consts import Type
from node_agent.mesh.table.answer import Answer, AnswerKind, answer, cname
from node_agent.mesh.table.compile import Compiler, Data
from node_agent.mesh.views import View


def shortcut(names: Compiler, view: View, name: str, qtype: int) -> Answer | None:
    """The search-path answer for `name` asked in `view`, None when there is none (see the module
    docstring)."""
    if not names.authoritative_nx(name):
        return None
    own = f"{view.namespace}.svc.{names.index.domain}"
    for i, search in enumerate(view.searches):
        if name.endswith("." + search):
            base = name[: -len(search) - 1]
            return _shortcut_from(names, view, name, base, view.searches[i + 1 :], qtype, search == own)
    return None


def _shortcut_from(
    names: Compiler, view: View, name: str, base: str, later: tuple[str, ...], qtype: int, external_ok: bool
) -> Answer | None:
    ns = view.namespace
    for i, search in enumerate(later):
        cand = f"{base}.{search}"
        data = names.find(cand, ns)
        if data is not None:
            if not data.cname and not _rest_adds_nothing(names, base, later[i + 1 :], data, ns):
                return None
            return _cname_to(names, name, cand, data, qtype, ns)
        if names.authoritative_nx(cand):
            continue
        if not names.settings.search_past_node_domains:
            return None
    data = names.find(base, ns)
    if data is not None:
        return _cname_to(names, name, base, data, qtype, ns)
    if not external_ok or "." not in base or names.index.in_domain(base):
        return None
    if base.rsplit(".", 1)[1] in names.index.svc_by_ns.get(ns, ()):
        # Read literally, the name is inside that Service's subtree (an endpoint or SRV name that
        # does not exist): NXDOMAIN, not the public <x>.<service> name.
        return None
    alias = cname(name, base, names.settings.ttl)
    if qtype == Type.CNAME:
        return Answer(AnswerKind.SEARCH_CNAME, (alias,))
    return Answer(AnswerKind.SEARCH_CNAME, (alias,), target=base, authoritative=False)


def _rest_adds_nothing(names: Compiler, base: str, rest: tuple[str, ...], target: Data, ns: str) -> bool:
    """Would every name the pod tries after the target (the remaining expansions, then `base` as
    it is) answer nothing the target lacks? Unknown names count as "might"."""
    for search in rest:
        cand = f"{base}.{search}"
        if names.find(cand, ns) is not None:
            return False
        if not names.authoritative_nx(cand) and not names.settings.search_past_node_domains:
            return False
    data = names.find(base, ns)
    if data is not None:
        return data.same_records(target)
    return names.authoritative_nx(base)


def _cname_to(names: Compiler, name: str, target: str, data: Data, qtype: int, ns: str) -> Answer | None:
    alias = cname(name, target, names.settings.ttl)
    if qtype == Type.CNAME:
        return Answer(AnswerKind.SEARCH_CNAME, (alias,))
    sub = answer(names, target, data, qtype, ns)
    if sub.kind is AnswerKind.NXDOMAIN:
        return None  # the chain ends nowhere: the pod's resolver would search on (NXDOMAIN here)
    # CNAME + records, or the CNAME alone when the target lacks qtype (NOERROR): see the module docstring.
    return Answer(AnswerKind.SEARCH_CNAME, (alias,) + sub.records, sub.target, sub.authoritative, sub.ordered)

