"""User-facing entry points: the ``nemotron-sglang`` CLI (no HTTP server of its own)."""
