"""What we answer a sender: HL7 acknowledgement codes, error codes and the reason why.

Acknowledgement codes (HL7 table 0008, original mode):

* ``AA`` accepted: every resource of the message is on the bus.
* ``AE`` error: the message's content is wrong (missing patient identifier, bad date in a
  required field, an invalid resource). Sending it again unchanged fails again.
* ``AR`` rejected: we will not take it as it is (unknown sender, unsupported message type or
  version, not HL7 at all, too large), or we could not take it now (the bus is down): the
  reason says which, and ``transient`` marks the second kind, which a resend may fix.

Error codes are HL7 table 0357 (message error condition codes).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class AckCode(StrEnum):
    ACCEPT = "AA"
    ERROR = "AE"
    REJECT = "AR"


class ErrorCode(StrEnum):
    """HL7 table 0357, with the text HL7 gives each."""

    SEGMENT_SEQUENCE = "100"
    REQUIRED_FIELD_MISSING = "101"
    DATA_TYPE = "102"
    TABLE_VALUE_NOT_FOUND = "103"
    UNSUPPORTED_MESSAGE_TYPE = "200"
    UNSUPPORTED_EVENT_CODE = "201"
    UNSUPPORTED_PROCESSING_ID = "202"
    UNSUPPORTED_VERSION = "203"
    UNKNOWN_KEY = "204"
    DUPLICATE_KEY = "205"
    RECORD_LOCKED = "206"
    INTERNAL_ERROR = "207"

    @property
    def text(self) -> str:
        return _ERROR_TEXT[self]


_ERROR_TEXT = {
    ErrorCode.SEGMENT_SEQUENCE: "Segment sequence error",
    ErrorCode.REQUIRED_FIELD_MISSING: "Required field missing",
    ErrorCode.DATA_TYPE: "Data type error",
    ErrorCode.TABLE_VALUE_NOT_FOUND: "Table value not found",
    ErrorCode.UNSUPPORTED_MESSAGE_TYPE: "Unsupported message type",
    ErrorCode.UNSUPPORTED_EVENT_CODE: "Unsupported event code",
    ErrorCode.UNSUPPORTED_PROCESSING_ID: "Unsupported processing id",
    ErrorCode.UNSUPPORTED_VERSION: "Unsupported version id",
    ErrorCode.UNKNOWN_KEY: "Unknown key identifier",
    ErrorCode.DUPLICATE_KEY: "Duplicate key identifier",
    ErrorCode.RECORD_LOCKED: "Application record locked",
    ErrorCode.INTERNAL_ERROR: "Application internal error",
}


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a message: where (``PID-7``), which HL7 error, and in words."""

    reason: str
    code: ErrorCode = ErrorCode.INTERNAL_ERROR
    segment: str = ""
    field: int | None = None

    @property
    def where(self) -> str:
        if not self.segment:
            return ""
        return f"{self.segment}-{self.field}" if self.field else self.segment

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}" if self.where else self.reason


class Rejected(Exception):  # noqa: N818 - an answer to give, not a fault of ours
    """The message is answered with ``ack`` (AE or AR) because of ``problem``.

    ``transient`` marks a failure of ours (the bus or the database is away) that a resend may
    cure: it is neither remembered against the control id nor dead-lettered as bad data.
    """

    def __init__(self, ack: AckCode, problem: Problem, *, transient: bool = False) -> None:
        if ack is AckCode.ACCEPT:
            raise ValueError("a rejection is AE or AR")
        super().__init__(str(problem))
        self.ack = ack
        self.problem = problem
        self.transient = transient

    @classmethod
    def error(
        cls,
        reason: str,
        code: ErrorCode = ErrorCode.DATA_TYPE,
        segment: str = "",
        field: int | None = None,
    ) -> Rejected:
        return cls(AckCode.ERROR, Problem(reason, code, segment, field))

    @classmethod
    def reject(
        cls,
        reason: str,
        code: ErrorCode = ErrorCode.INTERNAL_ERROR,
        segment: str = "",
        field: int | None = None,
    ) -> Rejected:
        return cls(AckCode.REJECT, Problem(reason, code, segment, field))
