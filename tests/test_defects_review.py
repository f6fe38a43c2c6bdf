"""Defects found in the re-layout review, each pinned by a test that failed before its fix."""

from __future__ import annotations

import threading
import urllib.request
from pathlib import Path

import pytest

from histosic.cli import main
from histosic.errors import HistosicError, InvalidInputError, ProjectNotFoundError
from histosic.service.jobs import JobManager
from histosic.service.server import ServerConfig, create_server


def test_batch_missing_project_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before: a built-in FileNotFoundError that the CLI did not catch (a traceback), and only
    # after paquo had tried to start QuPath.
    missing = tmp_path / "nope" / "project.qpproj"
    code = main(["batch", str(missing), "--store", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1
    assert f"QuPath project {missing} does not exist" in err
    assert "Traceback" not in err


def test_batch_missing_project_error_class() -> None:
    from histosic.batch import run_batch

    with pytest.raises(ProjectNotFoundError) as info:
        run_batch("/nonexistent/project.qpproj", store="/nonexistent")
    assert isinstance(info.value, HistosicError)
    assert isinstance(info.value, FileNotFoundError)


def test_job_manager_without_devices_is_invalid_input() -> None:
    # Before: a bare ValueError outside the error hierarchy.
    with pytest.raises(InvalidInputError, match="at least one device"):
        JobManager(())


def test_server_stop_leaves_http_thread_clean(tmp_path: Path) -> None:
    """Stopping closed the HTTP sockets while the loop sat in select(): now and then the HTTP
    thread died with ``OSError: Bad file descriptor`` (seen 1 in 30 start/stop cycles before the
    fix). The loop now closes its own sockets; no cycle may leave an exception or a live thread."""
    errors: list[BaseException | None] = []
    previous = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        errors.append(args.exc_value)

    threading.excepthook = hook
    try:
        for i in range(15):
            store = tmp_path / f"store{i}"
            store.mkdir()
            server, _ = create_server("127.0.0.1:0", ServerConfig(store=store))
            server.start()
            with urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/healthz") as r:
                assert r.status == 200
            server.stop(grace=0.5)
            thread = server._http_thread
            assert thread is not None and not thread.is_alive()
    finally:
        threading.excepthook = previous
    assert errors == []


def test_server_stop_before_start(tmp_path: Path) -> None:
    server, _ = create_server("127.0.0.1:0", ServerConfig(store=tmp_path))
    server.stop(grace=0.1)  # never started: closes its sockets without a loop
    with (
        pytest.raises(OSError),
        urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/healthz", timeout=2),
    ):
        pass


def test_cli_reads_the_environment_once_and_restores(monkeypatch: pytest.MonkeyPatch) -> None:
    from histosic import config

    seen: list[config.Settings] = []
    monkeypatch.setenv("HISTOSIC_OFFLINE", "1")
    monkeypatch.setenv("HISTOSIC_CACHE", "/tmp/histosic-cache-test")

    def run(argv: object) -> int:
        seen.append(config.current())
        return 0

    monkeypatch.setattr("histosic.cli._run", run)
    before = config.current()
    assert main(["models"]) == 0
    assert seen[0].offline and seen[0].cache_dir == Path("/tmp/histosic-cache-test")
    assert config.current() == before


def test_readme_lists_every_environment_variable() -> None:
    from histosic import config

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    missing = [name for name in config.ENV_VARS if f"| `{name}` |" not in readme]
    assert missing == []


def test_library_never_reads_the_environment() -> None:
    # Only the configuration module names HISTOSIC_* variables (as string constants) in the code.
    import ast

    from histosic import config

    root = Path(__file__).resolve().parents[1] / "server" / "histosic"
    readers = [
        f"{path.relative_to(root)}:{node.lineno}"
        for path in sorted(root.rglob("*.py"))
        if "api" not in path.relative_to(root).parts and path.name != "config.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Constant) and node.value in config.ENV_VARS
    ]
    assert readers == []
