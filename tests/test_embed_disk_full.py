"""``histosic embed`` onto a full disk: one line ``No space left on device``, exit 1, no traceback.

The disk is real: a small tmpfs mounted in a private mount namespace (``unshare --user --mount``,
no root needed where unprivileged user namespaces are allowed), so the kernel itself answers
``ENOSPC``. Tests skip with the reason where such a namespace cannot be made.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_service_support import make_slide

pytestmark = pytest.mark.slow

SERVER = Path(__file__).resolve().parents[1] / "server"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HISTOSIC_OFFLINE": "1", "PYTHONPATH": str(SERVER)}


def _can_mount_tmpfs(where: Path) -> str:
    """'' when a tmpfs can be mounted at ``where`` in a private namespace, else why not."""
    if shutil.which("unshare") is None:
        return "no unshare command"
    probe = subprocess.run(
        ["unshare", "-r", "-m", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {where}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return "" if probe.returncode == 0 else f"cannot mount a tmpfs: {probe.stderr.strip()[:200]}"


def _embed_on_tmpfs(
    tmp_path: Path, size: str, *, fill_during: bool = False, no_fallocate: bool = False
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run ``histosic embed`` with ``--out`` on a fresh tmpfs of ``size`` (with ``fill_during``,
    another writer fills the disk to the last byte once the ``.partial`` file exists); returns
    the process and the names left on the tmpfs."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    why = _can_mount_tmpfs(mnt)
    if why:
        pytest.skip(why)
    slide = make_slide(tmp_path / "slide.png", 512)
    prelude = "import os\ndel os.posix_fallocate\n" if no_fallocate else ""
    code = prelude + "import sys\nfrom histosic.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    histosic = [sys.executable, "-c", code, "-q", "embed", str(slide), "--out", f"{mnt}/"]
    histosic += ["--slide-mpp", "0.5", "--mpp", "0.5", "--patch-size", "32"]
    histosic += ["--tissue-threshold", "0", "--model", "handcrafted", "--workers", "0"]
    listing = tmp_path / "left.txt"
    run = shlex.join(histosic)
    if fill_during:
        run = (
            f"{run} & pid=$!; while ! ls {mnt} | grep -q partial; do sleep 0.05; done; "
            f"dd if=/dev/zero of={mnt}/other bs=4k 2>/dev/null; wait $pid"
        )
    script = (
        f"mount -t tmpfs -o size={size} tmpfs {mnt} && {run}; rc=$?; "
        f"df -k {mnt} | tail -1 > {tmp_path}/df.txt; ls -A {mnt} > {listing}; exit $rc"
    )
    proc = subprocess.run(
        ["unshare", "-r", "-m", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=600,
        env=ENV,
    )
    left = listing.read_text().split()
    return proc, left


def _one_line_disk_full(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("histosic embed: error: No space left on device: ")
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_output_larger_than_the_disk(tmp_path: Path) -> None:
    # 961 patches x 43 floats and their coordinates, about 0.2 MiB, on a 64 KiB disk: refused
    # when the space is reserved, before any patch is embedded.
    proc, left = _embed_on_tmpfs(tmp_path, "64k")
    _one_line_disk_full(proc)
    assert left == []  # no final file and no .partial


def test_disk_full_in_the_middle_of_writing(tmp_path: Path) -> None:
    # Without fallocate (as on filesystems that lack it) the space runs out inside HDF5's
    # writes, after some batches are written: still one line and exit 1, not a segfault.
    proc, left = _embed_on_tmpfs(tmp_path, "64k", no_fallocate=True)
    _one_line_disk_full(proc)
    assert not [n for n in left if n.endswith(".h5")]  # never a file that looks finished


def test_disk_filled_by_another_writer_after_the_start(tmp_path: Path) -> None:
    # With fallocate the whole file is reserved up front: a disk that another writer fills to
    # the last byte while the embedding runs still takes the whole embedding.
    proc, left = _embed_on_tmpfs(tmp_path, "8m", fill_during=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "df.txt").read_text().split()[3] == "0"  # the disk was indeed full
    assert [n for n in left if n.endswith(".h5")] and not [n for n in left if ".partial" in n]
