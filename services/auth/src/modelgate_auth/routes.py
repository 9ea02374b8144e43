"""HTTP routes of the auth service: translate HTTP to calls of plain logic."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
