"""Static source: a YAML file of Kubernetes / Istio objects, as `kubectl get -o yaml` prints them.

Accepted layouts (mixable): several YAML documents, each an object or a list of objects; a `List`
(or any `*List`, or a mapping with `items:` and no kind) wrapping objects. A top-level mapping may carry
`cluster: <name>`, the cluster of the objects inside it; an object's annotation
``dns.node-agent.io/cluster`` overrides it per object (how a single demo file describes a multicluster
mesh).

Nothing is skipped in silence: an object of a kind that is not read (`convert.read_kinds`), a malformed
one, or the same object twice makes the whole file refused (`StaticFileError`, a ValueError naming each
object and its line), so a typo'd kind cannot leave a mesh without answers and without an error.

v1 Endpoints are read as EndpointSlices (`convert.endpoints`). A file that has real EndpointSlices
for a service as well (``kubectl get endpoints,endpointslices -o yaml`` of a real cluster has both)
keeps only those for it: the EndpointSlices win, the service's Endpoints are dropped, so no endpoint
is counted twice. The rule is per file and cluster; it cannot see other files or the API source.

Each file is its own source (``static:<path>``), so reloading one file never removes another's records.
"""

from __future__ import annotations

import asyncio
import difflib
import inspect
import logging
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import yaml

from node_agent.mesh.model import EndpointSlice, Key, Record, Snapshot
from node_agent.sources.convert import describe, is_mirrored, read_groups_of, read_kinds, to_records

log = logging.getLogger(__name__)
SETTLE = 0.2  # seconds a changed file must be left alone before it is read (watch_file)

CLUSTER_ANNOTATION = "dns.node-agent.io/cluster"
DEFAULT_CLUSTER = "Kubernetes"
FILE_KIND = "(file)"  # the `kind` of a problem with the file itself (YAML syntax, unreadable)
NO_KIND = "(none)"  # ... of a document that is no Kubernetes object

# Rejected objects by (source, kind), for nodeagent_source_rejected_objects_total.
Rejected = Counter[tuple[str, str]]

_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True)
class Problem:
    line: int  # 1-based line of the object (or of the YAML error) in the file
    kind: str
    message: str


class StaticFileError(ValueError):
    """A file refused: every object that could not be read, with its line (the message: the first)."""

    def __init__(self, origin: str, problems: list[Problem]) -> None:
        self.origin = origin
        self.problems = problems
        first = problems[0]
        where = _where(origin, first.line)
        more = ""
        if len(problems) > 1:
            lines = ", ".join(str(p.line) for p in problems[1:6]) + (", ..." if len(problems) > 6 else "")
            more = f" (and {len(problems) - 1} more: line {lines})"
        super().__init__(f"{where}: {first.message}{more}")


def source_name(path: str) -> str:
    return f"static:{path}"


def load(path: str, cluster: str = DEFAULT_CLUSTER) -> Snapshot:
    """Read a file into a snapshot of source ``static:<path>`` for `cluster` (records may name others).
    StaticFileError (a ValueError) if anything in it cannot be read; OSError if the file cannot."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise StaticFileError(path, [Problem(0, FILE_KIND, f"not UTF-8 text: {e}")]) from None
    return Snapshot(source=source_name(path), cluster=cluster, records=parse(text, cluster, origin=path))


def parse(text: str, cluster: str = DEFAULT_CLUSTER, origin: str = "") -> list[Record]:
    """Every record of the file's objects; StaticFileError naming each object that is not read."""
    records: list[Record] = []
    problems: list[Problem] = []
    seen: dict[Key, int] = {}  # key -> line of the object that gave it
    with_slices: set[tuple[str, str, str]] = set()  # (cluster, namespace, service) with real EndpointSlices
    try:
        for obj, obj_cluster, line in _objects(text, cluster, problems):
            try:
                recs = to_records(obj, obj_cluster)
            except ValueError as e:
                problems.append(Problem(line, _kind(obj), str(e)))
                continue
            if recs is None:
                problems.append(Problem(line, _kind(obj), _not_read(obj)))
                continue
            if not recs:
                log.warning("%s: %s names nothing (an EndpointSlice needs the label kubernetes.io/service-name)",
                            _where(origin, line), describe(obj))
            for r in recs:
                key = Key.of(r)
                if key in seen:
                    problems.append(Problem(line, _kind(obj), f"{describe(obj)}: the same object as line {seen[key]}"))
                    break
                seen[key] = line
                if isinstance(r, EndpointSlice) and not is_mirrored(r):
                    with_slices.add((r.cluster, r.namespace, r.service))
                records.append(r)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        problems.append(Problem(mark.line + 1 if mark else 0, FILE_KIND, f"YAML: {_yaml_message(e)}"))
    except yaml.YAMLError as e:
        problems.append(Problem(0, FILE_KIND, f"YAML: {e}"))
    if problems:
        raise StaticFileError(origin, problems)
    kept = [
        r
        for r in records
        if not (isinstance(r, EndpointSlice) and is_mirrored(r) and (r.cluster, r.namespace, r.service) in with_slices)
    ]
    if len(kept) != len(records):
        log.info("%s: %d slices made from v1 Endpoints dropped: their services have EndpointSlices in the file",
                 origin or "static source", len(records) - len(kept))
    return kept


def _where(origin: str, line: int) -> str:
    if not line:
        return origin or "static source"
    return f"{origin}:{line}" if origin else f"line {line}"


def _kind(obj: dict[str, Any]) -> str:
    return str(obj.get("kind") or NO_KIND)


def _not_read(obj: dict[str, Any]) -> str:
    kind = str(obj.get("kind"))
    api_version = str(obj.get("apiVersion") or "")
    groups = read_groups_of(kind)
    if groups:
        wanted = " or ".join(f"{g}/..." if g else "v1" for g in groups)
        return f"{describe(obj)}: apiVersion {api_version or '(none)'} is not read, {kind} is read as {wanted}"
    hint = difflib.get_close_matches(kind, [k.rpartition("/")[2] for k in read_kinds()], n=1)
    did_you_mean = f" (did you mean {hint[0]}?)" if hint else ""
    return f"{describe(obj)}: kind {kind} is not read{did_you_mean}; read: {', '.join(read_kinds())}"


def _yaml_message(e: yaml.MarkedYAMLError) -> str:
    return ", ".join(str(p) for p in (e.context, e.problem) if p)


def _objects(text: str, cluster: str, problems: list[Problem]) -> Iterator[tuple[dict[str, Any], str, int]]:
    """(object, its cluster, its 1-based line) of every object in the file, walking the YAML nodes
    beside the constructed data for the lines; documents that are no object go to `problems`."""
    loader = _Loader(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            yield from _walk(node, loader.construct_document(node), cluster, problems)
    finally:
        loader.dispose()


def _walk(
    node: yaml.Node | None, doc: Any, cluster: str, problems: list[Problem]
) -> Iterator[tuple[dict[str, Any], str, int]]:
    line = node.start_mark.line + 1 if node is not None else 0
    if doc is None:
        return
    if isinstance(doc, list):
        nodes: list[Any] = node.value if isinstance(node, yaml.SequenceNode) else []
        for i, item in enumerate(doc):
            yield from _walk(nodes[i] if i < len(nodes) else node, item, cluster, problems)
    elif isinstance(doc, dict) and _is_list(doc):
        items = doc.get("items") or []
        if not isinstance(items, list):
            problems.append(Problem(line, _kind(doc), f"items of {doc.get('kind') or 'a list'} is no list"))
            return
        inner = str(doc.get("cluster") or cluster)
        yield from _walk(_value_node(node, "items") or node, items, inner, problems)
    elif isinstance(doc, dict) and doc.get("kind"):
        meta = doc.get("metadata")
        annotations = meta.get("annotations") if isinstance(meta, dict) else None
        own = annotations.get(CLUSTER_ANNOTATION) if isinstance(annotations, dict) else None
        yield doc, str(own or cluster), line  # a malformed metadata is the converter's to report
    else:
        problems.append(Problem(line, NO_KIND, f"not a Kubernetes object or list: {str(doc)[:80]!r}"))


def _is_list(doc: dict[str, Any]) -> bool:
    kind = doc.get("kind")
    return str(kind).endswith("List") if kind else "items" in doc


def _value_node(node: yaml.Node | None, key: str) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value == key:
                return v  # type: ignore[no-any-return]
    return None


Callback = Callable[[Snapshot], Awaitable[None] | None]


async def watch_file(
    path: str,
    callback: Callback,
    interval: float = 2.0,
    cluster: str = DEFAULT_CLUSTER,
    rejected: Rejected | None = None,
    settle: float = SETTLE,
) -> None:
    """Call `callback` with a fresh snapshot whenever the file's mtime/size/inode changes (polling: works
    for ConfigMap mounts, whose atomic symlink swap inotify watches on the file would miss).

    A changed file is read once it was last modified `settle` seconds ago: a file rewritten in place
    (truncated, then written) is empty or cut short in between, and loading it then would drop its
    records, and with them its pods' steering, until the next poll. The first load happens at once
    unless the file was just written. A file that is refused keeps the previous records, is logged and
    counted in `rejected` (per object refused, by kind; FILE_KIND when the file itself cannot be read),
    and is retried at the next change; runs until cancelled.
    """
    source = source_name(path)
    seen: tuple[float, int, int] | None = None
    while True:
        try:
            stamp: tuple[float, int, int] | None = _stamp(path)
        except OSError as e:
            log.warning("static source %s: %s", path, e)
            stamp = None
        if stamp is not None and stamp != seen:
            age = time.time() - stamp[0]
            if 0 <= age < settle:  # a future mtime (a skewed clock, a copied file) would never age
                await asyncio.sleep(min(interval, settle - age))
                continue
            seen = stamp
            try:
                snap = load(path, cluster)
            except StaticFileError as e:
                log.warning("static source %s not reloaded, the previous records stay: %s", path, e)
                if rejected is not None:
                    for p in e.problems:
                        rejected[(source, p.kind)] += 1
            except (OSError, ValueError) as e:
                log.warning("static source %s not reloaded, the previous records stay: %s", path, e)
                if rejected is not None:
                    rejected[(source, FILE_KIND)] += 1
            else:
                try:
                    changed = _stamp(path) != stamp
                except OSError:  # gone meanwhile: the next look says so
                    changed = True
                if changed:  # written to while read: read again once it settles
                    seen = None
                    continue
                result = callback(snap)
                if inspect.isawaitable(result):
                    await result
        await asyncio.sleep(interval)


def _stamp(path: str) -> tuple[float, int, int]:
    """What tells one version of a file from the next: mtime (first), size, inode."""
    st = os.stat(path)
    return (st.st_mtime, st.st_size, st.st_ino)
