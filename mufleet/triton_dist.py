"""Locate the ``tritonserver`` shipped inside ``nvidia-pytriton`` and prepare its backends.

The Python backend runs each model in a stub process. The stub for the running Python
must sit next to ``libtriton_python.so``; the wheel keeps one stub per Python version in a
separate folder, so we assemble a backend directory once under the mufleet home (never
editing site-packages). The stub embeds the first ``libpython3.X.so`` the loader finds, so
the server gets ``LD_LIBRARY_PATH`` pointing at this interpreter's ``LIBDIR`` and ``PATH``
starting with this interpreter's ``bin/`` (the stub then adopts the venv's ``sys.prefix``).
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from mufleet import paths


class TritonNotFoundError(RuntimeError):
    """The ``nvidia-pytriton`` distribution, or a piece of it, is missing."""


@dataclass(frozen=True)
class TritonDistribution:
    """The files of one installed tritonserver and the environment it must run with."""

    binary: Path
    backend_dir: Path
    library_dirs: tuple[Path, ...]
    python_bin_dir: Path

    def environment(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """Environment for ``tritonserver`` so its Python stubs use this interpreter."""
        env = dict(os.environ if base is None else base)
        libs = [str(p) for p in self.library_dirs]
        if env.get("LD_LIBRARY_PATH"):
            libs.append(env["LD_LIBRARY_PATH"])
        env["LD_LIBRARY_PATH"] = os.pathsep.join(libs)
        env["PATH"] = os.pathsep.join([str(self.python_bin_dir), env.get("PATH", "")])
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env


def _pytriton_root() -> Path:
    try:
        import pytriton
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise TritonNotFoundError("nvidia-pytriton is not installed (pip install -e .)") from exc
    return Path(pytriton.__file__).resolve().parent


def _python_tag() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def prepare_backend_dir(target_root: Path | None = None) -> Path:
    """Assemble ``<root>/python/`` with the backend library, utils and our Python's stub.

    Idempotent and atomic: a complete directory is reused, a new one is built aside and
    renamed into place, so concurrent launchers never see half a backend.
    """
    src = _pytriton_root() / "tritonserver"
    stub = src / "python_backend_stubs" / _python_tag() / "triton_python_backend_stub"
    lib = src / "backends" / "python" / "libtriton_python.so"
    utils = src / "backends" / "python" / "triton_python_backend_utils.py"
    for needed in (stub, lib, utils):
        if not needed.exists():
            raise TritonNotFoundError(f"missing from nvidia-pytriton: {needed}")
    version = metadata.version("nvidia-pytriton")
    root = target_root or paths.home() / "backends" / f"pytriton-{version}-py{_python_tag()}"
    marker = root / ".complete"
    if marker.exists():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".backends-", dir=root.parent))
    python_dir = staging / "python"
    python_dir.mkdir()
    for file in (stub, lib, utils):
        shutil.copy2(file, python_dir / file.name)
    (staging / ".complete").write_text(version)
    try:
        os.replace(staging, root)
    except OSError:
        # Another launcher won the race; its directory is complete.
        shutil.rmtree(staging, ignore_errors=True)
    return root


def locate() -> TritonDistribution:
    """Find the tritonserver binary and build what it needs to serve Python models."""
    root = _pytriton_root()
    binary = root / "tritonserver" / "bin" / "tritonserver"
    if not binary.exists():
        raise TritonNotFoundError(f"tritonserver binary not found at {binary}")
    libdir = sysconfig.get_config_var("LIBDIR")
    library_dirs = tuple(
        p for p in (Path(libdir) if libdir else None, root.parent / "nvidia_pytriton.libs") if p
    )
    return TritonDistribution(
        binary=binary,
        backend_dir=prepare_backend_dir(),
        library_dirs=library_dirs,
        python_bin_dir=Path(sys.executable).parent,
    )
