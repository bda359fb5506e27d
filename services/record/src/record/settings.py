from fhir_common.events import FHIR_TOPIC_PATTERN, RECORD_CHANGES
from fhir_common.settings import Settings


class RecordSettings(Settings):
    """The record's own knobs, on top of the shared settings (same ``JOINEDUP_`` prefix)."""

    record_default_count: int = 100  # search page size when _count is not given
    record_max_count: int = 1000  # largest search page
    record_everything_count: int = 1000  # $everything page size when _count is not given
    record_everything_max_count: int = 5000
    record_revinclude_limit: int = 1000  # most resources _revinclude adds to one page
    # messages per consumer batch: a batch's fixed costs (lookups, positions, outbox, commit)
    # are shared by more resources in a larger one; 4,000 (about 5 MB of Synthea) took 7-15%
    # less CPU a resource than 2,000
    record_consumer_batch: int = 4000
    # a batch is stored in this many parts at once (split by topic partition), so that one part
    # is parsed and indexed while another waits for the database; 0: 2 on PostgreSQL, 1 on SQLite.
    # With as many replicas as cores, 1: another replica uses the core while one waits.
    record_parallel: int = 0
    # Python's cyclic GC: objects alive after start-up are frozen and young collections made
    # rarer, since a batch allocates many short-lived objects (0 leaves the GC alone). The
    # threshold counts objects allocated and not yet freed: a 4,000-message batch holds 150,000
    # or so until it is stored, so at 50,000 every batch ran about three young collections that
    # freed nothing (8 us of CPU a resource); above the batch's peak none run in the middle of one
    record_gc_threshold: int = 300_000
    # which topics the record stores (a prefix keeps benchmarks and tests off the real ones)
    record_topic_pattern: str = FHIR_TOPIC_PATTERN
    record_changes_topic: str = RECORD_CHANGES
    # outbox rows older than this were left behind by a crash: the relay publishes them
    record_outbox_grace_seconds: float = 10.0
    record_outbox_poll_seconds: float = 2.0
    record_summary_recent: int = 10  # encounters shown per care setting in the summary
