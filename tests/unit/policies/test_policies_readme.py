"""The example in router/policies/README.md runs and prints what it says."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parents[3] / "router" / "policies" / "README.md"


def test_readme_example_runs() -> None:
    text = README.read_text()
    (code,) = re.findall(r"```python\n(.*?)```", text, re.S)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, str(README), "exec"), {})
    expected = re.search(r"# (h100-0 - .*)", code)
    assert expected is not None
    assert out.getvalue().strip() == expected.group(1).strip()


def test_readme_lists_every_policy() -> None:
    from router.policies import POLICIES

    text = README.read_text()
    for name in POLICIES:
        assert f"`{name}`" in text, name
