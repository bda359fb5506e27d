"""ingest-acute's HTTP interface (HL7 v2 over HTTP arrives with the ingest-acute issue)."""

from fastapi import APIRouter

router = APIRouter(tags=["ingest"])
