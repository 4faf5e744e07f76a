"""Tiny random models for the demo and the tests, written in the layouts real ones ship in.

`python -m engine.tiny` writes a tiny checkpoint (engine/tiny/sd.py); the other writers run as
`python -m engine.tiny.<name>`.
"""

from .sd import main

__all__ = ["main"]
