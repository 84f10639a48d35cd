"""The concrete `VideoModel`s a session can run.

`HeliosModel` drives the Helios DiT (through any `StreamEngine`); `TestPatternModel` is the
same protocol over a cheap drawn engine for tests and demos. The transformer itself lives
in `helios.model`, the `VideoModel` base class in `helios.runtime`.
"""

from helios.models.helios import HeliosModel
from helios.models.testpattern import TestPatternModel

__all__ = ["HeliosModel", "TestPatternModel"]
