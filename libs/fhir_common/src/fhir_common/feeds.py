"""The registry of provider feeds: who may push to us, in what format, for which organisation.

It is a JSON file (``Settings.resolved_feeds_file()``) so that ``joinedup feeds add`` can
register a feed while an instance runs: the registry re-reads the file when it changes.
"""

from __future__ import annotations

import os
import tempfile
import threading
from enum import StrEnum
from pathlib import Path

import orjson
from pydantic import BaseModel, Field, TypeAdapter

from fhir_common.auth import Principal
from fhir_common.errors import FhirError

SETTINGS = ("primary", "acute", "community", "mental-health", "social-care")


class FeedKind(StrEnum):
    HL7V2 = "hl7v2"
    FHIR = "fhir"
    CSV = "csv"


class Feed(BaseModel):
    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    kind: FeedKind
    ods: str = Field(pattern=r"^[A-Z0-9]{3,8}$", description="ODS code of the provider")
    setting: str = Field(pattern="^(" + "|".join(SETTINGS) + ")$")
    sender: str | None = Field(default=None, description="MSH-4 sending facility (HL7 v2)")
    description: str = ""


_FEEDS = TypeAdapter(list[Feed])


class FeedRegistry:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._feeds: dict[str, Feed] = {}

    def _fresh(self) -> dict[str, Feed]:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return {}
        stamp = (stat.st_mtime_ns, stat.st_size)
        with self._lock:
            if stamp != self._stamp:
                feeds = _FEEDS.validate_json(self.path.read_bytes())
                self._feeds = {f.id: f for f in feeds}
                self._stamp = stamp
            return self._feeds

    def get(self, feed_id: str) -> Feed | None:
        return self._fresh().get(feed_id)

    def by_sender(self, sender: str) -> Feed | None:
        return next(
            (f for f in self._fresh().values() if f.kind is FeedKind.HL7V2 and f.sender == sender),
            None,
        )

    def all(self) -> list[Feed]:
        return sorted(self._fresh().values(), key=lambda f: f.id)

    def add(self, feed: Feed) -> None:
        """Add or replace a feed, writing the file atomically."""
        feeds = {f.id: f for f in self.all()}
        feeds[feed.id] = feed
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = orjson.dumps(
            [f.model_dump(mode="json") for f in sorted(feeds.values(), key=lambda f: f.id)],
            option=orjson.OPT_INDENT_2,
        )
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".feeds-")
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, self.path)


def authorise_push(registry: FeedRegistry, principal: Principal, kinds: set[FeedKind]) -> Feed:
    """The feed a push token speaks for, if it is registered for this kind of input."""
    if not principal.feed:
        raise FhirError.single(403, "forbidden", "only a provider feed's token may push data")
    feed = registry.get(principal.feed)
    if feed is None:
        raise FhirError.single(403, "forbidden", f"feed {principal.feed!r} is not registered")
    if feed.kind not in kinds:
        allowed = ", ".join(sorted(kinds))
        raise FhirError.single(
            403,
            "forbidden",
            f"feed {feed.id!r} is a {feed.kind} feed; this endpoint takes {allowed}",
        )
    return feed
