"""The ``histosic`` entry point: help, version, error reporting and exit codes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from histosic import __version__, cli
from histosic.errors import (
    HistosicError,
    InvalidInputError,
    SlideNotFoundError,
    UnknownModelError,
)


def test_version_and_help_in_a_subprocess() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "histosic", "--version"], capture_output=True, text=True, check=True
    )
    assert __version__ in out.stdout
    helptext = subprocess.run(
        [sys.executable, "-m", "histosic", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for command in ("embed", "cluster", "serve", "evaluate", "demo"):
        assert command in helptext


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == cli.EXIT_USAGE
    assert "usage: histosic" in capsys.readouterr().out


def test_unknown_command_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["frobnicate"])
    assert info.value.code == 2


def test_errors_inherit_builtins_and_read_plainly() -> None:
    err = UnknownModelError("unknown model 'x'; see `histosic models`")
    assert isinstance(err, KeyError)
    assert isinstance(err, ValueError)
    assert isinstance(err, HistosicError)
    assert str(err) == "unknown model 'x'; see `histosic models`"
    assert isinstance(SlideNotFoundError("a"), FileNotFoundError)
    assert isinstance(InvalidInputError("a"), ValueError)
