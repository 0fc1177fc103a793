"""Unit tests for the sim engine's fault switches and their control file."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from python_backends.sim_engine.faults import (
    FAULT_FILE_ENV,
    FaultFile,
    FaultSwitches,
    write_faults,
)


def _bump_mtime(path: Path, seconds: int = 1) -> None:
    """Move the file's mtime on, so a rewrite is seen even on coarse-timestamp filesystems."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + seconds * 1_000_000_000))


def test_defaults_are_healthy() -> None:
    switches = FaultSwitches()

    assert not switches.hang and not switches.garbage and not switches.crash
    assert switches.slowdown == 1.0
    assert switches.error_rate == 0.0


@pytest.mark.parametrize(
    "values",
    [
        {"slowdown": 0.5},
        {"slowdown": 1001.0},
        {"error_rate": 1.5},
        {"error_rate": -0.1},
        {"hang": True, "explode": True},
    ],
    ids=["slowdown<1", "slowdown>1000", "error_rate>1", "error_rate<0", "extra-key"],
)
def test_invalid_switches_are_rejected(values: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        FaultSwitches.model_validate(values)


def test_switches_are_frozen() -> None:
    switches = FaultSwitches()
    with pytest.raises(ValidationError):
        switches.hang = True  # type: ignore[misc]


def test_write_faults_is_atomic_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "node-0" / "faults.json"
    switches = FaultSwitches(slowdown=3.0, error_rate=0.25, garbage=True)

    write_faults(path, switches)
    old_inode = path.stat().st_ino
    with path.open() as reader:  # a reader of the old file keeps a whole old file
        write_faults(path, switches.model_copy(update={"hang": True}))
        assert FaultSwitches.model_validate_json(reader.read()) == switches

    assert path.stat().st_ino != old_inode  # replaced by rename, never truncated in place
    assert sorted(p.name for p in path.parent.iterdir()) == ["faults.json"]
    assert FaultSwitches.model_validate_json(path.read_text()) == switches.model_copy(
        update={"hang": True}
    )


def test_fault_file_picks_up_a_change(tmp_path: Path) -> None:
    path = tmp_path / "faults.json"
    faults = FaultFile(path, poll_s=0)
    assert faults.current() == FaultSwitches()

    write_faults(path, FaultSwitches(hang=True))
    assert faults.current().hang is True

    write_faults(path, FaultSwitches(slowdown=5.0))
    _bump_mtime(path)
    current = faults.current()
    assert current.hang is False
    assert current.slowdown == 5.0
    assert faults.last_error is None


def test_fault_file_polls_at_most_every_poll_s(tmp_path: Path) -> None:
    path = tmp_path / "faults.json"
    write_faults(path, FaultSwitches(hang=True))
    faults = FaultFile(path, poll_s=3600)
    assert faults.current().hang is True

    write_faults(path, FaultSwitches())
    _bump_mtime(path)

    assert faults.current().hang is True  # not re-read within poll_s


def test_malformed_file_keeps_previous_switches(tmp_path: Path) -> None:
    path = tmp_path / "faults.json"
    write_faults(path, FaultSwitches(slowdown=2.0))
    faults = FaultFile(path, poll_s=0)
    assert faults.current().slowdown == 2.0

    path.write_text('{"slowdown": ')
    _bump_mtime(path)
    assert faults.current().slowdown == 2.0
    assert faults.last_error

    path.write_text('{"slowdown": 0.1}')  # well-formed JSON, invalid value
    _bump_mtime(path, 2)
    assert faults.current().slowdown == 2.0
    assert faults.last_error

    write_faults(path, FaultSwitches(error_rate=1.0))
    _bump_mtime(path, 3)
    assert faults.current() == FaultSwitches(error_rate=1.0)
    assert faults.last_error is None


def test_missing_file_means_no_faults(tmp_path: Path) -> None:
    path = tmp_path / "faults.json"
    faults = FaultFile(path, poll_s=0)
    assert faults.current() == FaultSwitches()

    write_faults(path, FaultSwitches(hang=True))
    assert faults.current().hang is True
    path.unlink()

    assert faults.current() == FaultSwitches()


def test_no_path_means_no_faults() -> None:
    faults = FaultFile(None, poll_s=0)

    assert faults.current() == FaultSwitches()
    assert faults.last_error is None


def test_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "faults.json"
    write_faults(path, FaultSwitches(garbage=True))

    monkeypatch.setenv(FAULT_FILE_ENV, str(path))
    faults = FaultFile.from_environment()
    assert faults.path == path
    assert faults.current().garbage is True

    monkeypatch.setenv(FAULT_FILE_ENV, "")
    assert FaultFile.from_environment().path is None
    monkeypatch.delenv(FAULT_FILE_ENV)
    assert FaultFile.from_environment().path is None


def test_rewrite_with_the_same_mtime_is_picked_up(tmp_path: Path) -> None:
    path = tmp_path / "faults.json"
    write_faults(path, FaultSwitches(hang=True))
    faults = FaultFile(path, poll_s=0)
    assert faults.current().hang is True
    stamp = path.stat().st_mtime_ns

    write_faults(path, FaultSwitches())  # e.g. "hang off" written right after "hang on"
    os.utime(path, ns=(stamp, stamp))  # what a coarse-timestamp filesystem records

    assert faults.current().hang is False


# -- faults a restart clears ---------------------------------------------------------------
def _set_mtime(path: Path, mtime_ns: int) -> None:
    os.utime(path, ns=(mtime_ns, mtime_ns))


def test_an_until_restart_file_wedges_only_an_engine_started_before_it(tmp_path: Path) -> None:
    path = tmp_path / "faults.json"
    write_faults(path, FaultSwitches(hang=True, until_restart=True))
    written = 2_000_000_000_000_000_000
    _set_mtime(path, written)

    running = FaultFile(path, poll_s=0, started_ns=written - 1)
    restarted = FaultFile(path, poll_s=0, started_ns=written + 1)

    assert running.current().hang is True
    assert restarted.current() == FaultSwitches()
    assert restarted.last_error is None
    assert path.exists()  # the file stays; only the new engine ignores it


def test_without_until_restart_the_file_wedges_a_restarted_engine_too(tmp_path: Path) -> None:
    path = tmp_path / "faults.json"
    write_faults(path, FaultSwitches(hang=True))
    written = 2_000_000_000_000_000_000
    _set_mtime(path, written)

    assert FaultFile(path, poll_s=0, started_ns=written + 1).current().hang is True


def test_an_engine_sees_an_until_restart_fault_written_while_it_runs(tmp_path: Path) -> None:
    path = tmp_path / "faults.json"
    faults = FaultFile(path, poll_s=0)  # the engine starts now
    assert faults.current().hang is False

    write_faults(path, FaultSwitches(hang=True, until_restart=True))
    _set_mtime(path, faults.started_ns + 1_000_000_000)
    assert faults.current().hang is True

    _set_mtime(path, faults.started_ns - 1_000_000_000)  # as if written before it started
    assert faults.current() == FaultSwitches()


def test_a_fault_file_starts_its_engine_clock_when_built(tmp_path: Path) -> None:
    path = tmp_path / "faults.json"
    write_faults(path, FaultSwitches(hang=True, until_restart=True))
    _set_mtime(path, time.time_ns() - 1_000_000_000)

    assert FaultFile(path, poll_s=0).current().hang is False


@pytest.mark.parametrize("until_restart", [False, True])
def test_mufleet_fault_writes_until_restart(tmp_path: Path, until_restart: bool) -> None:
    from mufleet.cli import main

    path = tmp_path / "node1.json"
    flags = ["--until-restart"] if until_restart else []

    assert main(["fault", "node1", "--file", str(path), "--hang", *flags]) == 0

    switches = FaultSwitches.model_validate_json(path.read_text())
    assert switches == FaultSwitches(hang=True, until_restart=until_restart)
