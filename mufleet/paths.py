"""Where mufleet keeps what it builds: generated models, backend directories, rendered repos."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """The mufleet state directory: ``$MUFLEET_HOME``, default ``~/.cache/mufleet``."""
    return Path(os.environ.get("MUFLEET_HOME", Path.home() / ".cache" / "mufleet"))


def model_repository_templates() -> Path:
    """The template model repository: ``$MUFLEET_MODEL_REPOSITORY`` or the project's own."""
    override = os.environ.get("MUFLEET_MODEL_REPOSITORY")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[1] / "model_repository"


def profiles() -> Path:
    """The shipped profiles: calibrated pairs, and ``hardware/`` for the sim engine."""
    return Path(__file__).resolve().parents[1] / "profiles"
