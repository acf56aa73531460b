"""What the responder needs from whoever gives answers (the resolver, wired in by app): two calls, raw
query bytes in, raw reply bytes out. serve knows nothing else about resolve."""

from __future__ import annotations

from typing import Protocol


class Answerer(Protocol):
    def answer_fast(self, data: bytes, client: str, transport: str) -> bytes | None:
        """The synchronous hit path, tried first for every query; None = not answerable here."""

    async def answer(self, data: bytes, client: str, transport: str) -> bytes | None:
        """Everything else, after answer_fast said None; None = send nothing."""
