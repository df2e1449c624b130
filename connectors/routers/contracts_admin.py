"""Placeholder: filled in by the dsp_catalog work."""

from __future__ import annotations

from fastapi import APIRouter

__all__ = ["router"]

router = APIRouter()
