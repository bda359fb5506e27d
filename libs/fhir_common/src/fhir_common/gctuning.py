"""Garbage-collector settings for a service process once its start-up is over.

Parsing, checking, indexing and encoding resources allocate many short-lived objects, almost
none of them in reference cycles, so reference counting frees them. CPython's default
thresholds (700, 10, 10) still run a young collection every 700 allocations and a full one
every 70,000 or so, and a full collection walks every object the process holds: mostly the FHIR
models, their validators and the element definitions built at start-up and alive until the end.
Profiled, that made parsing a Synthea bundle 4-6 times dearer than orjson itself (ingest-gp),
and was a third of the record's CPU. So, once start-up is over:

* ``gc.freeze()`` moves what is alive into a permanent generation that collections skip;
* higher thresholds let a batch's garbage go by reference counting before a collection has to
  look at it.

Cyclic garbage is still collected, only less often.
"""

from __future__ import annotations

import gc

YOUNG = 50_000  # allocations between young collections
OLDER = (20, 100)  # young collections per middle one, middle per full one


def tune(young: int = YOUNG) -> None:
    """Freeze what is alive now, then collect less often (never more often than now)."""
    gc.collect()
    gc.freeze()
    first, second, third = gc.get_threshold()
    gc.set_threshold(max(first, young), max(second, OLDER[0]), max(third, OLDER[1]))
