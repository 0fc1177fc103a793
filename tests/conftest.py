"""Shared fixtures: an isolated mufleet home and the seeded tiny model."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from mufleet.tiny_model import build_tiny_model


@pytest.fixture(scope="session", autouse=True)
def mufleet_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Each test session gets its own backends, renders and logs."""
    home = tmp_path_factory.mktemp("mufleet-home")
    previous = os.environ.get("MUFLEET_HOME")
    os.environ["MUFLEET_HOME"] = str(home)
    os.environ["HF_HUB_OFFLINE"] = "1"
    yield home
    if previous is None:
        os.environ.pop("MUFLEET_HOME", None)
    else:
        os.environ["MUFLEET_HOME"] = previous


@pytest.fixture(scope="session")
def tiny_model_dir(mufleet_home: Path) -> Path:
    return build_tiny_model(mufleet_home / "models" / "tiny-llama")
