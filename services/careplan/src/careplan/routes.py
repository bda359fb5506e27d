"""The careplan service's HTTP interface (its FHIR API arrives with the careplan issue)."""

from fastapi import APIRouter

router = APIRouter(tags=["careplan"])
