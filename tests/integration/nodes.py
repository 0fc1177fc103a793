"""Starting a real tritonserver for a test module, on ephemeral loopback ports."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mufleet.node import NodePorts, TritonNode
from mufleet.repository import RenderParams, render
from mufleet.triton_dist import locate

TEST_GPU = Path(__file__).parents[1] / "data" / "sim_test_gpu.json"
"""A made-up GPU with round numbers, for sim tests."""


@contextmanager
def serving(name: str, params: RenderParams, home: Path) -> Iterator[TritonNode]:
    """A ready node serving ``params``' repository; stopped (with its stubs) on exit."""
    node = TritonNode(
        name=name,
        repository=render(params, home / f"repo-{name}"),
        triton=locate(),
        ports=NodePorts.ephemeral(),
        log_path=home / "logs" / f"{name}.log",
    )
    node.start()
    try:
        node.wait_ready(timeout=240)
        yield node
    finally:
        node.stop()


def sim_params(tokenizer_dir: Path, **overrides: object) -> RenderParams:
    """Sim-profile parameters for :data:`TEST_GPU`."""
    values: dict[str, object] = {
        "profile": "sim",
        "tokenizer_dir": tokenizer_dir,
        "hardware_profile": TEST_GPU,
        "max_context": 4096,
        **overrides,
    }
    return RenderParams.model_validate(values)
