"""llmk: an LLM kernel. Versioned parameters, inference workers and an online optimizer."""

__version__ = "0.1.0"
