"""The alerts service's HTTP interface (its FHIR API arrives with the alerts issue)."""

from fastapi import APIRouter

router = APIRouter(tags=["alerts"])
