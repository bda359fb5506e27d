from pathlib import Path

from pydantic import Field

from fhir_common.settings import Settings


class IngestGpSettings(Settings):
    """ingest-gp's own knobs, on top of the shared settings (same ``JOINEDUP_`` prefix)."""

    ingest_gp_max_bundle_bytes: int = 50 * 1024 * 1024
    ingest_gp_max_csv_bytes: int = Field(
        default=200 * 1024 * 1024, description="largest CSV extract taken in one request"
    )
    ingest_gp_max_upload_bytes: int = Field(
        default=20 * 1024**3, description="largest NDJSON body uploaded to $import (spooled)"
    )
    ingest_gp_max_line_bytes: int = Field(
        default=16 * 1024 * 1024, description="longest NDJSON line (one resource) taken"
    )
    ingest_gp_import_dir: Path | None = Field(
        default=None,
        description="$import reads file:// inputs under here only, and spools uploads here; "
        "default data_dir/imports",
    )
    ingest_gp_mapping_dir: Path | None = Field(
        default=None, description="CSV mapping files <feed id>.yaml; default data_dir/mappings"
    )
    ingest_gp_workers: int = Field(
        default=2,
        description="validation processes for $import and large bundles (0: validate in the "
        "service process)",
    )
    ingest_gp_import_batch: int = Field(
        default=1000, description="resources per atomic publication of an $import"
    )
    ingest_gp_import_errors_kept: int = Field(
        default=10_000, description="per-line errors an $import report keeps (the rest counted)"
    )
    ingest_gp_parallel_threshold: int = Field(
        default=200, description="bundles with at least this many entries validate in the pool"
    )

    def import_dir(self) -> Path:
        return self.ingest_gp_import_dir or self.data_dir / "imports"

    def mapping_dir(self) -> Path:
        return self.ingest_gp_mapping_dir or self.data_dir / "mappings"
