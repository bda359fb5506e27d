"""The risk service's HTTP interface (its FHIR API arrives with the risk issue)."""

from fastapi import APIRouter

router = APIRouter(tags=["risk"])
