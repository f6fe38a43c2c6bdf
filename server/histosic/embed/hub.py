"""Weights of foundation models on the Hugging Face hub: cache, download, offline, gated (no torch).

Where the weights come from, in order:

1. ``<model>:<path>`` (``histosic embed --weights PATH``): a weights file, or a folder laid out as
   the hub client lays out its cache (``models--org--name/`` with ``refs/main`` and
   ``snapshots/<revision>/``, or one snapshot folder, or any folder holding the weights file).
2. The hub cache (``$HF_HUB_CACHE``, ``$HF_HOME/hub``, read by ``huggingface_hub``): used as is,
   online or not.
3. A download with ``huggingface_hub`` (token from ``$HF_TOKEN`` or ``huggingface-cli login``),
   into that cache; refused at once when offline (``HF_HUB_OFFLINE=1``, ``HISTOSIC_OFFLINE=1``, or
   the hub unreachable) and, for gated models, when there is no token.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from histosic.embed.foundation import Foundation, by_name
from histosic.embed.network import online
from histosic.errors import ModelUnavailableError
from histosic.store import file_fingerprint

__all__ = [
    "FOUNDATION_EXTRA",
    "availability",
    "cached",
    "local",
    "locate",
    "offline",
    "status",
    "token",
    "weights_id",
]

FOUNDATION_EXTRA = "pip install 'histosic[foundation]'"
HUB_HOST = "huggingface.co"
_WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin")


def _hub_installed() -> bool:
    return importlib.util.find_spec("huggingface_hub") is not None


def token() -> str | None:
    """The hub token ``huggingface_hub`` would send (``$HF_TOKEN`` or the saved login)."""
    if not _hub_installed():
        return None
    from huggingface_hub import get_token

    tok = get_token()
    return tok or None


def offline() -> bool:
    """True when no download may be tried: hub offline mode, histosic offline, or no network."""
    if _hub_installed():
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE:
            return True
    return not online(HUB_HOST)


def cached(fm: Foundation) -> Path | None:
    """The weights file in the local hub cache, if there (no network)."""
    if not _hub_installed():
        return None
    from huggingface_hub import try_to_load_from_cache

    for repo in (fm.repo, *fm.former_repos):  # a cache filled before a rename counts too
        hit = try_to_load_from_cache(repo, fm.filename, repo_type=fm.repo_type)
        if isinstance(hit, str):
            return Path(hit)
    return None


def _repo_folders(fm: Foundation) -> list[str]:
    """The cache folder names of the repository (``models--org--name``, ``datasets--...``)."""
    return [f"{fm.repo_type}s--" + r.replace("/", "--") for r in (fm.repo, *fm.former_repos)]


def _in_folder(folder: Path, fm: Foundation) -> Path | None:
    """The weights file in a folder as the hub lays it out, or None."""
    base = fm.filename.rsplit("/", 1)[-1]
    names = dict.fromkeys((fm.filename, base, *_WEIGHT_NAMES))
    for name in names:
        if (folder / name).is_file():
            return folder / name
    snapshots = folder / "snapshots"
    if snapshots.is_dir():
        ref = folder / "refs" / "main"
        revisions = [ref.read_text().strip()] if ref.is_file() else []
        revisions += sorted(p.name for p in snapshots.iterdir() if p.is_dir())
        for rev in revisions:
            hit = _in_folder(snapshots / rev, fm)
            if hit is not None:
                return hit
    for name in _repo_folders(fm):
        if (folder / name).is_dir():
            hit = _in_folder(folder / name, fm)
            if hit is not None:
                return hit
    hub = folder / "hub"
    return _in_folder(hub, fm) if hub.is_dir() else None


def local(fm: Foundation, arg: str) -> Path:
    """The weights file named by ``--weights`` (a file, or a folder laid out as the hub's)."""
    path = Path(arg).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        hit = _in_folder(path, fm)
        if hit is not None:
            return hit
        raise ModelUnavailableError(
            f"{fm.name}: no {fm.filename} in {path} (looked in it, in snapshots/<revision>/ as "
            f"refs/main names, and in {_repo_folders(fm)[0]}/); give the weights "
            "file itself or the folder the hub client downloaded"
        )
    raise ModelUnavailableError(
        f"{fm.name}: weights path {path} does not exist; give a {fm.filename} file or a folder "
        f"laid out as the Hugging Face cache (download it from {fm.page})"
    )


def status(fm: Foundation, arg: str) -> tuple[bool, str]:
    """``(usable now, why not / where the weights come from)``; no download, no torch."""
    if arg:
        try:
            return True, f"local weights {local(fm, arg)}"
        except ModelUnavailableError as err:
            return False, str(err)
    if not _hub_installed():
        return False, f"needs huggingface_hub, not installed here: {FOUNDATION_EXTRA}"
    hit = cached(fm)
    if hit is not None:
        return True, f"cached at {hit}"
    if offline():
        return False, (
            f"not in the Hugging Face cache and offline (HF_HUB_OFFLINE, HISTOSIC_OFFLINE or no "
            f"network): download {fm.repo} on a machine with internet, then copy the cache or "
            "pass --weights PATH"
        )
    if fm.gated and token() is None:
        return False, (
            f"gated: request access at {fm.page}, then set HF_TOKEN (a read token of the "
            "account that was granted access)"
        )
    return True, f"downloadable from {fm.page} (cached after the first use)"


def locate(fm: Foundation, arg: str) -> Path:
    """The weights file, downloaded into the hub cache if needed.

    Raises
    ------
    ModelUnavailableError
        Offline without a cache, gated without a token or access, or the download failed.
    """
    if arg:
        return local(fm, arg)
    ok, reason = status(fm, arg)
    if not ok:
        raise ModelUnavailableError(f"{fm.name}: {reason}")
    hit = cached(fm)
    if hit is not None:
        return hit
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError

    try:
        return Path(hf_hub_download(fm.repo, fm.filename, repo_type=fm.repo_type, token=token()))
    except GatedRepoError as err:
        raise ModelUnavailableError(
            f"{fm.name}: the hub refused the download (gated): request access at {fm.page} with "
            "the account whose token is in HF_TOKEN"
        ) from err
    except (HfHubHTTPError, OSError, ValueError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ModelUnavailableError(
            f"{fm.name}: cannot download {fm.repo}/{fm.filename} ({first}); pass --weights PATH"
        ) from err


def availability(kind: str, arg: str) -> tuple[bool, str]:
    """The registry's availability of foundation model ``kind`` (libraries, then weights)."""
    fm = by_name(kind)
    missing = [m for m in (fm.library, "safetensors") if importlib.util.find_spec(m) is None]
    if missing:
        return False, f"needs {' and '.join(missing)}, not installed here: {FOUNDATION_EXTRA}"
    return status(fm, arg)


def weights_id(kind: str, arg: str) -> str:
    """A local file by content; hub weights by repository, file and cached revision."""
    fm = by_name(kind)
    if arg:
        return file_fingerprint(local(fm, arg))
    hit = cached(fm)
    # .../snapshots/<revision>/<filename>, the filename maybe in sub-folders
    depth = len(Path(fm.filename).parts)
    revision = hit.parents[depth - 1].name if hit is not None else "latest"
    return f"hf:{fm.repo}/{fm.filename}@{revision}"
