"""Data shipped with llmk: finance tweets labelled for sentiment (source and licence: its README.md)."""

from __future__ import annotations

from pathlib import Path

FINANCE_NEWS = Path(__file__).resolve().parent / "twitter-financial-news-sentiment"
