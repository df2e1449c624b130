"""Placeholder: filled in by the dsp_negotiation work."""

from __future__ import annotations

from fastapi import APIRouter

__all__ = ["router"]

router = APIRouter()
