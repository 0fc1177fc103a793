"""The locust-free modules of ``loadtests/`` import as top-level modules, as Locust loads
them (it puts the locustfile's folder on ``sys.path``)."""

from __future__ import annotations

import sys
from pathlib import Path

LOADTESTS = Path(__file__).resolve().parents[3] / "loadtests"
if str(LOADTESTS) not in sys.path:
    sys.path.insert(0, str(LOADTESTS))
