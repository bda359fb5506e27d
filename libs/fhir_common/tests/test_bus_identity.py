"""Transactional ids: stable per replica, never shared by two live processes on one host."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from fhir_common.bus.identity import TransactionalIdInUseError, claim_transactional_id


def test_slots_are_distinct_while_held_and_reused_once_released(tmp_path: Path) -> None:
    host = socket.gethostname()
    first = claim_transactional_id("svc", lock_dir=tmp_path)
    second = claim_transactional_id("svc", lock_dir=tmp_path)
    assert first.transactional_id == f"svc-{host}-0"
    assert second.transactional_id == f"svc-{host}-1"
    first.release()
    again = claim_transactional_id("svc", lock_dir=tmp_path)
    assert again.transactional_id == f"svc-{host}-0"  # what a restart fences with
    assert claim_transactional_id("other", lock_dir=tmp_path).transactional_id.startswith("other-")


def test_an_explicit_instance_id_is_claimed_once(tmp_path: Path) -> None:
    claim = claim_transactional_id("svc", "replica-2", lock_dir=tmp_path)
    assert claim.transactional_id == "svc-replica-2"
    with pytest.raises(TransactionalIdInUseError, match="JOINEDUP_INSTANCE_ID"):
        claim_transactional_id("svc", "replica-2", lock_dir=tmp_path)
    claim.release()
    claim_transactional_id("svc", "replica-2", lock_dir=tmp_path).release()


def test_a_killed_process_leaves_its_slot_to_the_next(tmp_path: Path) -> None:
    """The kernel drops a dead process's claim: its restart gets the same id."""
    script = (
        "import sys, time; from pathlib import Path;"
        "from fhir_common.bus.identity import claim_transactional_id;"
        "c = claim_transactional_id('svc', lock_dir=Path(sys.argv[1]));"
        "print(c.transactional_id, flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        held = holder.stdout.readline().strip()
        mine = claim_transactional_id("svc", lock_dir=tmp_path)
        assert mine.transactional_id != held
        mine.release()
    finally:
        holder.kill()
        holder.wait()
    assert claim_transactional_id("svc", lock_dir=tmp_path).transactional_id == held
