"""Embed one slide: tissue grid, batched patch reading in DataLoader workers, inference, HDF5.

Workers each open the slide themselves and return whole batches of ``uint8`` patches (so there is
no per-patch collation); neighbouring patches on a row are read as one region, which halves the
decoding at 50% overlap. The main process copies a batch to the device (pinned, non-blocking on
CUDA), converts and normalises it there, and runs the model under ``torch.inference_mode`` in
``channels_last`` with bf16/fp16 autocast on CUDA. Results are appended to a ``.partial`` HDF5
file that a killed run resumes; the final name appears only when every patch is written.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from histosic.config import DEFAULT_MODEL
from histosic.embed.output_file import (
    embedding_filename,
    existing_state,
    full_meta,
    n_patches,
    no_tissue_error,
    other_output_error,
    output_meta,
)
from histosic.embed.reading import batch_bounds, read_size, slide_grid
from histosic.embed.registry import (
    LoadedModel,
    ModelInfo,
    check_weights,
    get_model_info,
    load_model,
)
from histosic.errors import CancelledError, HistosicError, InvalidInputError
from histosic.patches import read_patches
from histosic.slides import Slide, TissueConfig, open_slide, white_fraction
from histosic.store import EmbeddingWriter
from histosic.tiling import PatchGrid, TilingConfig

__all__ = [
    "default_workers",
    "embed_slide",
    "embedding_filename",
    "fit_batch_size",
    "forward",
    "prepare_module",
    "read_patches",
    "resolve_device",
    "slide_grid",
]

log = logging.getLogger(__name__)


def resolve_device(device: str = "auto") -> torch.device:
    """``'auto'`` picks CUDA, then Apple MPS, then the CPU; other values are checked."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise InvalidInputError(
            f"unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'"
        ) from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError(
            f"device {device!r} asked for, but CUDA is not available here; use --device cpu"
        )
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise InvalidInputError(f"device {device!r}: only {torch.cuda.device_count()} CUDA devices")
    return dev


def default_workers(device: torch.device) -> int:
    """DataLoader workers: most cores on a GPU machine; on the CPU one reader beside the model."""
    cores = os.cpu_count() or 1
    if device.type == "cpu":
        return 1 if cores >= 2 else 0
    return max(1, min(16, cores - 1))


class _PatchBatches(Dataset[tuple[torch.Tensor, torch.Tensor, int]]):
    """Item ``i`` is batch ``i`` of :func:`batch_bounds`: (uint8 patches (b, s, s, 3), white
    fractions (b,), first row)."""

    def __init__(
        self,
        path: Path,
        mpp: float,
        coords: npt.NDArray[np.int64],
        size_level0: int,
        patch_size: int,
        batch_size: int,
        start: int,
        slide: Slide | None = None,
        backend: str | None = None,
    ) -> None:
        self.path = path
        self.mpp = mpp
        self.backend = backend
        self.coords = coords
        self.size_level0 = size_level0
        self.patch_size = patch_size
        self.bounds = batch_bounds(start, len(coords), batch_size)
        self._slide = slide

    def __getstate__(self) -> dict[str, Any]:
        # Each worker opens its own slide handle; handles do not cross processes.
        state = dict(self.__dict__)
        state["_slide"] = None
        return state

    def __len__(self) -> int:
        return len(self.bounds)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        if self._slide is None:
            self._slide = open_slide(self.path, mpp=self.mpp, backend=self.backend)
        lo, hi = self.bounds[index]
        patches = read_patches(self._slide, self.coords[lo:hi], self.size_level0, self.patch_size)
        return torch.from_numpy(patches), torch.from_numpy(white_fraction(patches)), lo


def _clean_worker_error(err: HistosicError) -> HistosicError:
    # DataLoader re-raises a worker's exception with the worker's traceback in the message;
    # users need the original one line.
    text = str(err)
    if "Traceback" not in text:
        return err
    last = text.rstrip().splitlines()[-1]
    _, sep, msg = last.partition(f"{type(err).__name__}: ")
    return type(err)(msg if sep else last)


class _Preprocess:
    """uint8 NHWC batch on the device -> normalised float NCHW (channels_last) at the model size."""

    def __init__(self, loaded: LoadedModel, device: torch.device) -> None:
        info = loaded.info
        self.size = info.input_size
        # Resize to ``crop_from``, then centre-crop the input size (GigaPath: 256 -> 224).
        self.resize = info.crop_from or info.input_size
        # (x / 255 - mean) / std as one scale and one shift of the raw 0..255 values.
        mean = torch.tensor(info.mean, device=device).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(info.std, device=device).view(1, 3, 1, 1) * 255.0
        self.scale = 1.0 / std
        self.shift = -mean / std
        self.device = device

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch.to(self.device, non_blocking=True)
        # NHWC memory viewed as NCHW is already channels_last.
        x = x.permute(0, 3, 1, 2).float()
        if x.shape[-1] != self.resize or x.shape[-2] != self.resize:
            x = F.interpolate(
                x,
                size=(self.resize, self.resize),
                mode="bilinear",
                antialias=True,
                align_corners=False,
            )
        if self.resize != self.size:
            top = int(round((self.resize - self.size) / 2.0))
            x = x[:, :, top : top + self.size, top : top + self.size]
        x = x.mul_(self.scale).add_(self.shift)  # in place: no extra full-size copies
        return x.contiguous(memory_format=torch.channels_last)


def prepare_module(loaded: LoadedModel, device: torch.device) -> torch.nn.Module:
    """The model on the device, channels_last where it has convolutions or runs on a GPU."""
    module = loaded.module.to(device)
    if device.type != "cpu" or any(p.dim() == 4 for p in module.parameters()):
        module = module.to(memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return module


def forward(module: torch.nn.Module, prep: _Preprocess, patches: torch.Tensor) -> torch.Tensor:
    """Features (b, dim) in float32 of a uint8 NHWC batch (call under inference mode)."""
    feats: torch.Tensor = module(prep(patches))
    if feats.ndim != 2:
        feats = feats.flatten(1)
    return feats.float()


def autocast(device: torch.device, precision: str = "auto") -> Any:
    """Mixed precision on CUDA as the model's authors run it (``ModelInfo.precision``).

    ``auto``: bf16 where supported, else fp16; ``float32``: none (models whose authors run them in
    full precision); ``float16`` / ``bfloat16``: that type. On the CPU always full precision.
    """
    import contextlib

    if device.type != "cuda" or precision == "float32":
        return contextlib.nullcontext()
    bf16 = torch.cuda.is_bf16_supported()
    if precision == "float16":
        dtype = torch.float16
    elif precision == "bfloat16" and bf16:
        dtype = torch.bfloat16
    else:
        dtype = torch.bfloat16 if bf16 else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def _iterate(
    dataset: _PatchBatches, workers: int, device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
    """The batches in order; with workers, these start reading at once (before the first
    ``next``), so that the model's move to the device overlaps their start-up."""
    if workers <= 0:
        return (dataset[i] for i in range(len(dataset)))
    # fork is fast, but forking a process whose other threads hold locks (a gRPC server calling us
    # from a worker thread) can deadlock the child; spawn is safe there.
    ctx = (
        "fork"
        if threading.current_thread() is threading.main_thread() and os.name == "posix"
        else "spawn"
    )
    loader = DataLoader(
        dataset,
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        # Two batches per worker: enough to hide reading, little shared memory (/dev/shm).
        prefetch_factor=2,
        multiprocessing_context=ctx,
        persistent_workers=False,
    )
    started = iter(loader)

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        yield from started

    return batches()


def embed_slide(
    slide: str | os.PathLike[str] | Slide,
    out: str | os.PathLike[str],
    *,
    model: str = DEFAULT_MODEL,
    tiling: TilingConfig = TilingConfig(),  # noqa: B008 - frozen dataclass
    slide_mpp: float | None = None,
    batch_size: int = 64,
    workers: int | None = None,
    device: str = "auto",
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    tissue: TissueConfig = TissueConfig(),  # noqa: B008 - frozen dataclass
    dtype: str = "float32",
) -> Path:
    """Embed every tissue patch of a slide and write an HDF5 embedding file.

    Parameters
    ----------
    slide : path-like or Slide
        The slide (an open :class:`~histosic.slides.Slide` is used as is; workers reopen its path).
    out : path-like
        An ``.h5``/``.hdf5`` file name, or a directory that receives
        :func:`embedding_filename`.
    model : str, default DEFAULT_MODEL ('he-features')
        A registry name (:func:`histosic.embed.registry.list_models`).
    tiling : TilingConfig
    slide_mpp : float, optional
        Level-0 microns per pixel; overrides metadata, required for plain images.
    batch_size : int, default 64
    workers : int, optional
        DataLoader worker processes; None picks :func:`default_workers`, 0 reads in this process.
    device : str, default 'auto'
        'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'.
    overwrite : bool, default False
        Re-embed although a file with the same settings exists (and ignore a partial file).
    progress : callable(done, total), optional
        Called after every batch with the numbers of patches written and in all.
    should_stop : callable() -> bool, optional
        Polled before every batch; when it returns True the partial file is deleted and
        :class:`~histosic.errors.CancelledError` raised.
    tissue : TissueConfig
    dtype : {'float32', 'float16'}, default 'float32'
        Stored feature type.

    Returns
    -------
    Path
        The embedding file (returned at once when it already exists with the same settings).

    Raises
    ------
    SlideNotFoundError, CorruptFileError, UnknownResolutionError, NoTissueError,
    UnknownModelError, ModelUnavailableError, OutputExistsError, CancelledError
        With no partial file left behind (a run killed from outside leaves one, to resume).
    """
    tiling.validate()
    tissue.validate()
    if int(batch_size) != batch_size or batch_size < 1:
        raise InvalidInputError(f"batch size must be a positive integer, got {batch_size!r}")
    if workers is not None and (int(workers) != workers or workers < 0):
        raise InvalidInputError(f"workers must be a non-negative integer, got {workers!r}")
    info = get_model_info(model, check=False)  # unknown model: fail before any work
    check_weights(model)  # gated without a token, offline without a cache: before any slide
    dev = resolve_device(device)
    opened = not isinstance(slide, Slide)
    s = open_slide(slide, mpp=slide_mpp) if not isinstance(slide, Slide) else slide
    try:
        return _embed_open_slide(
            s,
            Path(out),
            model,
            info.name,
            tiling,
            tissue,
            int(batch_size),
            workers,
            dev,
            overwrite,
            progress,
            should_stop,
            dtype,
        )
    finally:
        if opened:
            s.close()


def _embed_open_slide(
    slide: Slide,
    out: Path,
    model: str,
    model_name: str,
    tiling: TilingConfig,
    tissue: TissueConfig,
    batch_size: int,
    workers: int | None,
    device: torch.device,
    overwrite: bool,
    progress: Callable[[int, int], None] | None,
    should_stop: Callable[[], bool] | None,
    dtype: str,
) -> Path:
    path, base_meta = output_meta(slide, out, model, model_name, tiling, tissue)
    state = existing_state(path, base_meta, overwrite)
    if state == "same":
        log.info("%s is already embedded with these settings: %s (skipped)", slide.path, path)
        if progress is not None:
            n = n_patches(path)
            progress(n, n)
        return path
    if state == "other":
        raise other_output_error(path)

    if should_stop is not None and should_stop():
        raise CancelledError(f"embedding of {slide.path} cancelled before it started")
    # The model is built while the tissue is detected: the two are independent and each takes
    # about a second (benchmarks/bench_embed.py). The thread has ended before any reader forks.
    building = _Background(_load_for, model, device)
    try:
        grid, _ = slide_grid(slide, tiling, tissue)
    except BaseException:
        building.join()  # the slide's error wins; the model's, if any, is dropped
        raise
    loaded: LoadedModel = building.result()
    if len(grid) == 0:
        raise no_tissue_error(slide, grid, tiling)
    info = loaded.info
    meta = full_meta(slide, base_meta, grid, info, loaded.weights_hash, tiling, str(device))
    writer = EmbeddingWriter(path, meta, grid.coords, info.dim, dtype=dtype, resume=not overwrite)
    try:
        _run(
            slide, grid, loaded, writer, batch_size, workers, device, tiling, progress, should_stop
        )
        return writer.finish()
    except HistosicError:
        writer.discard()
        raise
    except BaseException:
        # An interruption or an unexpected failure keeps the partial file for a resume.
        writer.close()
        raise


def _load_for(model: str, device: torch.device) -> LoadedModel:
    """The model, already in the CPU's memory format when it runs there (off the critical path:
    this runs in the thread beside tissue detection; on a GPU the move waits for the readers)."""
    loaded = load_model(model)
    if device.type == "cpu":
        prepare_module(loaded, device)  # in place; the call in _run is then free
    return loaded


class _Background:
    """Run ``fn(*args)`` in a thread; :meth:`result` waits and returns or raises what it did."""

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        self._value: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._target, args=(fn, args), name="histosic-model", daemon=True
        )
        self._thread.start()

    def _target(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        try:
            self._value = fn(*args)
        except BaseException as err:  # handed to the caller in result()
            self._error = err

    def join(self) -> None:
        self._thread.join()

    def result(self) -> Any:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value


def _probe(
    module: torch.nn.Module,
    prep: _Preprocess,
    read_size: int,
    precision: str,
    device: torch.device,
) -> Callable[[int], None]:
    """A forward pass of ``b`` blank patches, as the loop runs it (for :func:`fit_batch_size`)."""

    def run(b: int) -> None:
        blank = torch.zeros((b, read_size, read_size, 3), dtype=torch.uint8)
        with torch.inference_mode(), autocast(device, precision):
            module(prep(blank))
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return run


def fit_batch_size(forward: Callable[[int], None], batch_size: int) -> int:
    """The largest batch size up to ``batch_size`` (halving) whose forward pass fits in memory.

    On a GPU a foundation model's activations at the default batch (64 patches) may not fit
    beside its weights (ViT-g in fp16 on a small card); the batch is halved until one forward pass
    runs, and the same memory is then enough for every batch of the slide (patches have one size).
    """
    batch = max(1, int(batch_size))
    while True:
        try:
            forward(batch)
            return batch
        except torch.OutOfMemoryError:
            if batch == 1:
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            log.info("batch %d does not fit in device memory; trying %d", batch, batch // 2)
            batch //= 2


def _read_size(patch_size: int, info: ModelInfo, device: torch.device) -> int:
    """Side of the patches the readers return (:func:`histosic.embed.reading.read_size`)."""
    return read_size(patch_size, info, gpu=device.type == "cuda")


def _run(
    slide: Slide,
    grid: PatchGrid,
    loaded: LoadedModel,
    writer: EmbeddingWriter,
    batch_size: int,
    workers: int | None,
    device: torch.device,
    tiling: TilingConfig,
    progress: Callable[[int, int], None] | None,
    should_stop: Callable[[], bool] | None,
) -> None:
    n_total = writer.n_total
    if progress is not None:
        progress(writer.n_done, n_total)
    if writer.n_done >= n_total:
        return
    n_workers = default_workers(device) if workers is None else int(workers)
    read_size = _read_size(tiling.patch_size, loaded.info, device)
    module: torch.nn.Module | None = None
    if device.type == "cuda":
        # The batch that fits in device memory decides the readers' batches: model first.
        module = prepare_module(loaded, device)
        batch_size = fit_batch_size(
            _probe(module, _Preprocess(loaded, device), read_size, loaded.info.precision, device),
            min(batch_size, n_total - writer.n_done),
        )
    dataset = _PatchBatches(
        slide.path,
        slide.mpp,
        grid.coords,
        grid.patch_size_level0,
        read_size,
        batch_size,
        writer.n_done,
        slide=slide if n_workers == 0 else None,
        backend=slide.backend,
    )
    log.info(
        "embedding %d patches of %s with %s on %s (%d workers, batch %d), starting at %d",
        n_total,
        slide.path,
        loaded.info.name,
        device,
        n_workers,
        batch_size,
        writer.n_done,
    )
    batches = _iterate(dataset, n_workers, device)  # readers start now
    if module is None:
        module = prepare_module(loaded, device)
    prep = _Preprocess(loaded, device)
    cuda = device.type == "cuda"
    # On CUDA one batch is in flight: batch i's features come back to the host (pinned,
    # non-blocking) and are written while the GPU computes batch i + 1, so the HDF5 write and the
    # next batch's fetch do not leave the GPU idle. On the CPU each batch is written at once.
    pending: tuple[torch.Tensor, int, npt.NDArray[np.float32], Any] | None = None

    def flush(item: tuple[torch.Tensor, int, npt.NDArray[np.float32], Any]) -> None:
        host, lo, white_np, event = item
        if event is not None:
            event.synchronize()
        hi = lo + host.shape[0]
        writer.write(host.numpy(), grid.tissue_fraction[lo:hi], white_np)
        if progress is not None:
            progress(writer.n_done, n_total)

    expected = writer.n_done
    try:
        with torch.inference_mode(), autocast(device, loaded.info.precision):
            for patches, white, lo in batches:
                if should_stop is not None and should_stop():
                    raise CancelledError(
                        f"embedding of {slide.path} cancelled at patch {writer.n_done} of {n_total}"
                    )
                if lo != expected:  # pragma: no cover - the loader keeps order
                    raise RuntimeError(f"batch starts at {lo}, expected {expected}")
                expected = lo + patches.shape[0]
                feats = forward(module, prep, patches)
                if not cuda:
                    flush((feats, lo, white.numpy(), None))
                    continue
                host = torch.empty(feats.shape, dtype=torch.float32, pin_memory=True)
                host.copy_(feats, non_blocking=True)
                event = torch.cuda.Event()  # type: ignore[no-untyped-call]
                event.record()
                if pending is not None:
                    flush(pending)
                pending = (host, lo, white.numpy(), event)
            if pending is not None:
                flush(pending)
    except HistosicError as err:
        clean = _clean_worker_error(err)
        if clean is err:
            raise
        raise clean from err
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()
