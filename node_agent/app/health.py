"""Readiness, asked of each part: ready, or why not (CoreDNS's ready plugin asks each plugin the same).

One answer for every reader: /readyz (200, or 503 with the reasons), the nodeagent_ready gauge and
`node-agent status` (which reads the /readyz body back with Report.parse). A part is a name and a
probe; the probe returns None when the part is ready, else a short reason. Probes run at each ask
(a probe or a scrape), so they must be cheap and must not block: they read flags the parts keep.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

Probe = Callable[[], str | None]  # None = ready; else why not ("not synced")

READY = "ready"  # the /readyz body when every part is ready


@dataclass(frozen=True)
class Report:
    not_ready: tuple[tuple[str, str], ...] = ()  # (part, reason), in the order the parts were added

    @property
    def ready(self) -> bool:
        return not self.not_ready

    @property
    def reasons(self) -> list[str]:
        return [f"{part}: {why}" for part, why in self.not_ready]

    def text(self) -> str:
        """The /readyz body: "ready", or "part: reason; part: reason"."""
        return "; ".join(self.reasons) or READY

    @classmethod
    def parse(cls, text: str) -> Report:
        """text() read back (what `status` gets from /readyz)."""
        text = text.strip()
        if text == READY:
            return cls()
        parts = []
        for item in text.split("; "):
            part, sep, why = item.partition(": ")
            parts.append((part, why) if sep else ("?", item))
        return cls(tuple(parts))


class Readiness:
    def __init__(self) -> None:
        self._probes: dict[str, Probe] = {}

    def add(self, part: str, probe: Probe) -> None:
        if part in self._probes:
            raise ValueError(f"readiness part {part!r} added twice")
        self._probes[part] = probe

    def check(self) -> Report:
        out = []
        for part, probe in self._probes.items():
            try:
                why = probe()
            except Exception as e:  # a probe that cannot tell is a part not known to be ready
                why = f"probe failed: {e}"
            if why is not None:
                out.append((part, why))
        return Report(tuple(out))
