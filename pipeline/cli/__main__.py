"""`python -m pipeline.cli`: the bmsearch command."""

from __future__ import annotations

from pipeline.cli import main

main()
