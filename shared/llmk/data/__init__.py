"""Data shipped with llmk: finance tweets labelled for sentiment (see its README.md for source and licence)."""

from __future__ import annotations

from pathlib import Path

FINANCE_NEWS = Path(__file__).resolve().parent / "twitter-financial-news-sentiment"
