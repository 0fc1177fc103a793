"""A real ``tritonserver`` serving the cpu-profile repository, shared by the module tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from clients import ENGINE_SLOTS

from mufleet.node import NodePorts, TritonNode
from mufleet.repository import RenderParams, render
from mufleet.triton_dist import locate


@pytest.fixture(scope="session")
def triton_node(tiny_model_dir: Path, mufleet_home: Path) -> Iterator[TritonNode]:
    params = RenderParams(profile="cpu", tokenizer_dir=tiny_model_dir, max_batch_size=ENGINE_SLOTS)
    node = TritonNode(
        name="test",
        repository=render(params, mufleet_home / "repo-test"),
        triton=locate(),
        ports=NodePorts.ephemeral(),
        log_path=mufleet_home / "logs" / "test-node.log",
    )
    node.start()
    try:
        node.wait_ready(timeout=240)
        yield node
    finally:
        node.stop()
