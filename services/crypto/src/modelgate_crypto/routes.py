"""HTTP routes of the crypto service: translate HTTP to calls of plain logic."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
