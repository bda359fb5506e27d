"""What each ADT trigger event means for the Encounter (DESIGN.md "Codes" and HL7 chapter 3).

An event sets the Encounter's status (or keeps it, for updates and pending events) and says
how the location history moves. Events not listed here are refused with AR 201: we would
rather say so than guess what a swap (A17) or a link (A24) should do to the record.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Move(Enum):
    """How an event changes Encounter.location."""

    STAY = "stay"  # the current location (PV1-3) is where the patient is; nothing else moves
    ARRIVE = "arrive"  # the patient is now at PV1-3 (admit, register, update)
    TRANSFER = "transfer"  # from PV1-6 to PV1-3, at the event time
    LEAVE = "leave"  # discharge: the last location is left at the discharge time
    PLAN = "plan"  # PV1-3 is where the patient is expected
    UNDO_TRANSFER = "undo-transfer"  # A12: back to PV1-3, the cancelled move forgotten
    UNDO_LEAVE = "undo-leave"  # A13: the patient is at PV1-3 again, as if never discharged


@dataclass(frozen=True)
class Event:
    trigger: str
    meaning: str
    status: str | None = None  # None: keep the status known so far (or read it from PV1)
    move: Move = Move.STAY
    encounter: bool = True  # whether the message's PV1 makes an Encounter
    merge: bool = False  # PID is the survivor, MRG the patient merged into it
    # PV1-45 is when the encounter ended (and finishes an active one); not after A13, which
    # cancels that very discharge
    honours_discharge_time: bool = True


ADT_EVENTS = {
    e.trigger: e
    for e in (
        Event("A01", "admit", "in-progress", Move.ARRIVE),
        Event("A02", "transfer", "in-progress", Move.TRANSFER),
        Event("A03", "discharge", "finished", Move.LEAVE),
        Event("A04", "register (ED attendance, outpatient)", "in-progress", Move.ARRIVE),
        Event("A05", "pre-admit", "planned", Move.PLAN),
        Event("A06", "outpatient becomes inpatient", "in-progress", Move.ARRIVE),
        Event("A07", "inpatient becomes outpatient", "in-progress", Move.ARRIVE),
        Event("A08", "update", None, Move.ARRIVE),
        Event("A11", "cancel admit", "entered-in-error"),
        Event("A12", "cancel transfer", "in-progress", Move.UNDO_TRANSFER),
        Event(
            "A13", "cancel discharge", "in-progress", Move.UNDO_LEAVE, honours_discharge_time=False
        ),
        Event("A14", "pending admit", "planned", Move.PLAN),
        Event("A15", "pending transfer"),
        Event("A16", "pending discharge"),
        Event("A21", "leave of absence", "onleave"),
        Event("A22", "back from leave of absence", "in-progress"),
        Event("A25", "cancel pending discharge"),
        Event("A26", "cancel pending transfer"),
        Event("A27", "cancel pending admit", "cancelled"),
        Event("A28", "add person", encounter=False),
        Event("A31", "update person", encounter=False),
        Event("A34", "merge patient id (v2.3)", encounter=False, merge=True),
        Event("A38", "cancel pre-admit", "cancelled"),
        Event("A39", "merge person", encounter=False, merge=True),
        Event("A40", "merge patient", encounter=False, merge=True),
        Event("A52", "cancel leave of absence", "in-progress"),
        Event("A53", "cancel back from leave of absence", "onleave"),
    )
}

ORU_RESULT = Event("R01", "observation result", encounter=False)
