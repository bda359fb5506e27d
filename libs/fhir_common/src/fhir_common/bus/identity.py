"""The transactional id of a process's Kafka producer: stable per replica, unique among live ones.

Kafka fences a transactional producer as soon as another starts with the same transactional id,
and the broker then aborts whatever transaction the old one left open. So the id must be

* **stable** across restarts of one replica: a replica killed mid-publish is fenced by its own
  restart at once, instead of its open transaction stalling every ``read_committed`` consumer
  of its partitions for ``transaction.timeout.ms`` (60 s);
* **unique** among live producers: two live producers with one id would fence each other in
  turn, failing each other's publications.

How a replica gets its id:

* ``JOINEDUP_INSTANCE_ID`` set: ``<client id>-<instance id>``. The operator keeps it unique per
  live replica and stable across its restarts (a StatefulSet pod name, ``ingest-gp-2``; a
  systemd instance name). A second process on the same host claiming the same id is refused.
* otherwise: ``<client id>-<host name>-<slot>``, the slot being the lowest number no live process
  on this host holds. Host names tell hosts (and containers) apart; slots tell processes on one
  host apart. A slot is held by an exclusive ``flock`` on a file, which the kernel releases
  when the process dies, so a restarted process takes the slot its predecessor had.
  Containers that share one host name but not ``/tmp`` (``network_mode: host``) must set
  ``JOINEDUP_INSTANCE_ID``.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import re
import socket
import tempfile
import uuid
from pathlib import Path

log = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def default_lock_dir() -> Path:
    return Path(tempfile.gettempdir()) / "joinedup-kafka-transactional-ids"


class TransactionalIdInUseError(RuntimeError):
    """Another live process on this host holds the transactional id asked for."""


class TransactionalIdClaim:
    """A transactional id held by this process until ``release`` (or until it exits)."""

    def __init__(self, transactional_id: str, fd: int | None) -> None:
        self.transactional_id = transactional_id
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor drops the flock


def claim_transactional_id(
    client_id: str, instance_id: str | None = None, *, lock_dir: Path | None = None
) -> TransactionalIdClaim:
    """Claim this process's transactional id (see the module's docstring for the rules)."""
    folder = lock_dir or default_lock_dir()
    if instance_id:
        transactional_id = f"{client_id}-{instance_id}"
        claim = _try_claim(transactional_id, folder)
        if claim is None:
            raise TransactionalIdInUseError(
                f"Kafka transactional id {transactional_id!r} is held by another live process "
                "on this host: give each replica its own JOINEDUP_INSTANCE_ID"
            )
        return claim
    host = socket.gethostname() or "localhost"
    for slot in itertools.count():
        claim = _try_claim(f"{client_id}-{host}-{slot}", folder)
        if claim is not None:
            return claim
    raise AssertionError("unreachable")  # pragma: no cover - itertools.count never ends


def _try_claim(transactional_id: str, folder: Path) -> TransactionalIdClaim | None:
    """The claim of ``transactional_id``, or None if a live process holds it."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not a POSIX system: unique, but not stable
        log.warning("no flock on this platform: the Kafka transactional id is random")
        return TransactionalIdClaim(f"{transactional_id}-{uuid.uuid4()}", None)
    _make_shared_dir(folder)
    path = folder / f"{_UNSAFE.sub('_', transactional_id)}.lock"
    # Read-only is enough for flock, and lets users share the folder (files of others' ids).
    fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return TransactionalIdClaim(transactional_id, fd)


def _make_shared_dir(folder: Path) -> None:
    if folder.is_dir():
        return
    folder.mkdir(parents=True, exist_ok=True)
    # World-writable and sticky, like /tmp itself: every user of the host claims ids here.
    with contextlib.suppress(PermissionError):
        folder.chmod(0o1777)
