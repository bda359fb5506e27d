from pydantic import Field

from fhir_common.settings import Settings


class IngestAcuteSettings(Settings):
    """ingest-acute's own knobs, on top of the shared settings (same ``JOINEDUP_`` prefix)."""

    mllp_host: str = "0.0.0.0"
    mllp_port: int = Field(default=2575, description="MLLP listener port; 0 picks a free one")
    mllp_enabled: bool = Field(default=True, description="run the MLLP listener at all")
    mllp_max_message_bytes: int = Field(
        default=1024 * 1024,
        description="a larger MLLP block is refused (AR) and only its first bytes are kept; "
        "it is also what one connection may buffer",
    )
    mllp_max_connections: int = Field(
        default=200, description="connections beyond this are closed at once"
    )
    mllp_idle_timeout_seconds: float = Field(
        default=900.0, description="a connection that sends nothing for this long is closed"
    )
    mllp_message_timeout_seconds: float = Field(
        default=30.0,
        description="a message begun but not finished within this is kept as truncated and "
        "the connection closed",
    )
    hl7v2_http_max_body_bytes: int = Field(
        default=10 * 1024 * 1024, description="largest body POST /hl7v2 accepts"
    )
    hl7v2_local_timezone: str = Field(
        default="Europe/London",
        description="IANA zone of HL7 times sent without an offset (FHIR needs one)",
    )
    hl7v2_placeholder_nhs_numbers: list[str] = Field(
        default_factory=list,
        description="NHS numbers a feed sends as placeholders (e.g. 3333333333): ignored",
    )
    hl7v2_validate: bool = Field(
        default=False,
        description="validate every resource with fhir.resources before publishing it "
        "(the tests do; at run time it costs about two thirds of the CPU per message)",
    )
    hl7v2_validate_share: float = Field(
        default=0.01,
        ge=0.0,
        le=1.0,
        description="when hl7v2_validate is false, the share of messages validated all the "
        "same (chosen by content digest, so a resend is treated alike): a mapping regression "
        "shows up as AE answers and logs instead of going unnoticed",
    )
