"""`python -m engine.tiny`: write a tiny checkpoint (see engine/tiny/sd.py)."""

from .sd import main

main()
