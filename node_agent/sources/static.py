"""Static source: a YAML file of Kubernetes / Istio objects, as `kubectl get -o yaml` prints them.

Accepted layouts (mixable): several YAML documents, each an object or a list of objects; a `List`
(or any mapping) with `items:`. A top-level mapping may carry `cluster: <name>`, the cluster of the
objects inside it; an object's annotation ``dns.node-agent.io/cluster`` overrides it per object (how a
single demo file describes a multicluster mesh). Kinds the name table does not use are skipped.

Each file is its own source (``static:<path>``), so reloading one file never removes another's records.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import yaml

from node_agent.model import Record, Snapshot
from node_agent.sources.convert import to_record

log = logging.getLogger(__name__)

CLUSTER_ANNOTATION = "dns.node-agent.io/cluster"
DEFAULT_CLUSTER = "Kubernetes"


def source_name(path: str) -> str:
    return f"static:{path}"


def load(path: str, cluster: str = DEFAULT_CLUSTER) -> Snapshot:
    """Read a file into a snapshot of source ``static:<path>`` for `cluster` (records may name others)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return Snapshot(source=source_name(path), cluster=cluster, records=parse(text, cluster))


def parse(text: str, cluster: str = DEFAULT_CLUSTER) -> list[Record]:
    records: list[Record] = []
    for obj, obj_cluster in _objects(yaml.safe_load_all(text), cluster):
        record = to_record(obj, obj_cluster)
        if record is not None:
            records.append(record)
    return records


def _objects(docs: Any, cluster: str) -> Iterator[tuple[dict[str, Any], str]]:
    for doc in docs:
        if doc is None:
            continue
        if isinstance(doc, list):
            yield from _objects(doc, cluster)
        elif isinstance(doc, dict) and "items" in doc and ("kind" not in doc or _is_list(doc)):
            inner = str(doc.get("cluster") or cluster)
            yield from _objects(doc.get("items") or [], inner)
        elif isinstance(doc, dict) and "kind" in doc:
            annotations = (doc.get("metadata") or {}).get("annotations") or {}
            yield doc, str(annotations.get(CLUSTER_ANNOTATION) or cluster)
        else:
            raise ValueError(f"not a Kubernetes object or list: {str(doc)[:80]!r}")


def _is_list(doc: dict[str, Any]) -> bool:
    return str(doc.get("kind", "")).endswith("List")


Callback = Callable[[Snapshot], Awaitable[None] | None]


async def watch_file(
    path: str, callback: Callback, interval: float = 2.0, cluster: str = DEFAULT_CLUSTER
) -> None:
    """Call `callback` with a fresh snapshot whenever the file's mtime/size/inode changes (polling: works
    for ConfigMap mounts, whose atomic symlink swap inotify watches on the file would miss).

    The first load happens at once. A file that fails to parse keeps the previous records and is retried
    at the next change; runs until cancelled.
    """
    seen: tuple[float, int, int] | None = None
    while True:
        try:
            st = os.stat(path)
            stamp = (st.st_mtime, st.st_size, st.st_ino)
        except OSError as e:
            log.warning("static source %s: %s", path, e)
            stamp = None
        if stamp is not None and stamp != seen:
            seen = stamp
            try:
                snap = load(path, cluster)
            except (OSError, ValueError, yaml.YAMLError) as e:
                log.warning("static source %s not reloaded: %s", path, e)
            else:
                result = callback(snap)
                if inspect.isawaitable(result):
                    await result
        await asyncio.sleep(interval)
