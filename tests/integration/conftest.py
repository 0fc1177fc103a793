"""A real ``tritonserver`` serving the cpu-profile repository, shared by the module tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from clients import ENGINE_SLOTS
from nodes import serving

from mufleet.node import TritonNode
from mufleet.repository import RenderParams


@pytest.fixture(scope="session")
def triton_node(tiny_model_dir: Path, mufleet_home: Path) -> Iterator[TritonNode]:
    params = RenderParams(profile="cpu", tokenizer_dir=tiny_model_dir, max_batch_size=ENGINE_SLOTS)
    with serving("test", params, mufleet_home) as node:
        yield node


@pytest.fixture(scope="session")
def unary_node(tiny_model_dir: Path, mufleet_home: Path) -> Iterator[TritonNode]:
    """The same repository rendered with ``decoupled_mode`` false: unary infer everywhere."""
    params = RenderParams(
        profile="cpu",
        tokenizer_dir=tiny_model_dir,
        max_batch_size=ENGINE_SLOTS,
        decoupled_mode=False,
    )
    with serving("unary", params, mufleet_home) as node:
        yield node
