"""The metric contract: two kinds of metric, with provenance (issue 11, item 4).

* :class:`ClipMetric` — one value per clip. ``score(preds, target) -> (B,)`` float64 is
  stateless (the evaluator calls only this); what each clip could use — frames and a
  note — is in :attr:`ClipMetric.last_notes` after the call. torchmetrics' ``update`` /
  ``compute`` / ``reset`` still work for library users: ``update`` appends ``score()``,
  ``compute`` is the mean over clips.
* :class:`SetMetric` — one value for a whole set of clips (FVD):
  ``features(preds, target) -> {name: (B, D)}`` per clip (the evaluator stores them, so a
  resumed or sharded run computes the same value) and ``value(features) -> float`` over
  the stacked ``(N, D)`` features. ``update`` accumulates features, ``compute`` is the value.

The evaluator dispatches on the kind (the class a metric derives from); ``level``
(frame | clip | set) stays a class attribute for reporting. Metrics that need
pretrained files derive from :class:`NetworkMetric` as well and declare them once,
as a :class:`PretrainedFiles` (:meth:`NetworkMetric.pretrained_files`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torchmetrics import Metric

from fvr_bench.errors import ConfigError
from fvr_bench.metrics.determinism import thread_invariant_kernels


@dataclass(frozen=True)
class Provenance:
    """Everything that can change a metric's number: two numbers with different
    provenance ids never share a leaderboard column."""

    metric_id: str
    implementation: str
    backend: str = "torch"
    backend_version: str = ""
    weights: str | None = None
    weights_sha256: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def provenance_id(self) -> str:
        payload = json.dumps(asdict(self), sort_keys=True, default=str)
        return f"{self.metric_id}@{hashlib.sha1(payload.encode()).hexdigest()[:8]}"


# --------------------------------------------------------------------------- pretrained files


class PretrainedFiles:
    """The registry files one metric needs, declared once, with their explicit overrides.

    ``files``: ``{registry name: explicit path or None}`` (names of
    :func:`fvr_bench.weights.entry`). ``verify``: check a file against its published
    checksum when it is loaded. ``identity``: the names whose file enters the provenance
    (default: all, joined with ``+``). ``label``: the provenance name of a file — the
    ``"found"`` file's own name, or its ``"registry"`` file name. ``random``: what the
    provenance says when no file is used (seeded random weights; None → ``(None, None)``).
    ``provenance``: a callable giving ``(file name, sha256)`` instead, for files whose
    identity a backend outside the metrics owns (the face backends).

    Lookup is lazy: nothing touches the disk until a method is called. An explicit path is
    a promise: when it does not exist the file is missing (never a silent fallback).
    """

    def __init__(self, files: Mapping[str, str | os.PathLike | None] | Sequence[str] = (), verify: bool = False, *,
                 identity: Sequence[str] | None = None, label: str = "found", random: str | None = None,
                 provenance: Callable[[], tuple[str | None, str | None]] | None = None) -> None:
        if not isinstance(files, Mapping):
            files = {name: None for name in files}
        if label not in ("found", "registry"):
            raise ValueError(f"PretrainedFiles: label must be 'found' or 'registry', got {label!r}")
        self.files = {name: (None if explicit is None else str(explicit)) for name, explicit in files.items()}
        self.verify = bool(verify)
        self.identity = list(self.files) if identity is None else list(identity)
        self.label = label
        self.random = random
        self.provenance = provenance

    def names(self) -> list[str]:
        """The registry names (what ``required_weights`` returns)."""
        return list(self.files)

    def find(self, name: str) -> Path | None:
        """The file of ``name`` (the explicit path only, when one is given), or None."""
        from fvr_bench import weights

        explicit = self.files.get(name)
        if explicit:
            path = Path(explicit).expanduser()
            return path if weights.entry(name).present(path) else None
        return weights.find(name)

    def missing(self) -> list[str]:
        return [name for name in self.files if self.find(name) is None]

    def path(self, name: str) -> Path:
        """Located and (with ``verify``, when published) checksum-verified path;
        :class:`~fvr_bench.errors.WeightsMissingError` naming the file otherwise."""
        from fvr_bench import weights

        return weights.locate(name, self.files.get(name), verify=self.verify)

    def describe(self) -> tuple[str | None, str | None]:
        """``("a.pth+b.pth", "sha_a+sha_b")`` of the identity files; the sha is None while
        one is missing; ``(random, None)`` when no file is declared."""
        from fvr_bench import weights

        if self.provenance is not None:
            return self.provenance()
        if not self.identity:
            return self.random, None
        labels, shas = [], []
        for name in self.identity:
            found = self.find(name)
            labels.append(found.name if found is not None and self.label == "found" else weights.entry(name).filename)
            shas.append(weights.sha256_of(found) if found is not None else None)
        return "+".join(labels), (None if any(s is None for s in shas) else "+".join(shas))


# --------------------------------------------------------------------------- the base


class VideoMetric(Metric):
    """What every metric has: identity, settings, provenance, pretrained-file checks.

    Not used directly: a metric derives from :class:`ClipMetric` or :class:`SetMetric`
    (and from :class:`NetworkMetric` when it needs pretrained files).
    """

    metric_id: ClassVar[str] = ""
    higher_is_better: ClassVar[bool] = True
    needs_reference: ClassVar[bool] = True
    level: ClassVar[str] = "frame"  # frame | clip | set — for reporting
    full_state_update: ClassVar[bool] = False

    def settings(self) -> dict[str, Any]:
        """Settings that change the number (colour space, crop border, …)."""
        return {}

    def backend_version(self) -> str:
        return torch.__version__

    def cpu_only(self) -> bool:
        """True when this metric's number is computed on the CPU whatever device it is given
        (dlib, MediaPipe, OpenCV flow, NIQE's float64 statistics): the evaluator scores it on
        CPU tensors, so its value does not depend on the run's device, and with ``overlap``
        in a worker process while the next clip is restored (:mod:`fvr_bench.scoring`)."""
        return False

    def weights_file(self) -> tuple[str | None, str | None]:
        """``(file name, sha256)`` of the pretrained file the number depends on, if any."""
        return None, None

    def required_weights(self) -> list[str]:
        """Registry names (:func:`fvr_bench.weights.entry`) of the pretrained files this
        metric needs with its current settings. The evaluator checks them all before the
        first clip; a metric loads them lazily (on first use), never at import."""
        return []

    def missing_weights(self) -> list[str]:
        """The required files that cannot be found in the default places
        (:class:`NetworkMetric` honours explicit paths)."""
        from fvr_bench import weights

        return [name for name in self.required_weights() if weights.find(name) is None]

    def check_input(self, preds: torch.Tensor, target: torch.Tensor | None) -> None:
        if preds.ndim != 5:
            raise ValueError(f"{self.metric_id}: expected (B, T, C, H, W) predictions, got {tuple(preds.shape)}")
        if self.needs_reference:
            if target is None:
                raise ConfigError(f"metric {self.metric_id} needs ground truth; this dataset has none")
            if target.shape != preds.shape:
                raise ValueError(
                    f"{self.metric_id}: prediction {tuple(preds.shape)} and target {tuple(target.shape)} differ in shape"
                )

    def provenance(self) -> Provenance:
        cls = type(self)
        weights_name, weights_sha256 = self.weights_file()
        return Provenance(
            metric_id=self.metric_id,
            implementation=f"{cls.__module__}.{cls.__qualname__}",
            backend_version=self.backend_version(),
            weights=weights_name,
            weights_sha256=weights_sha256,
            settings=self.settings(),
        )


class ClipMetric(VideoMetric):
    """A metric with one value per clip.

    Subclasses implement ``frame_scores`` (``level = "frame"``: ``(B, T)`` values, averaged
    over frames per clip) or ``clip_scores`` (``(B,)``); while scoring clip ``b`` they may
    call :meth:`note_clip` when not every frame entered its value.

    ``score(preds, target)``: ``(B, T, 3, H, W)`` float in [0, 1] → ``(B,)`` float64, no
    state kept; afterwards :attr:`last_notes` holds ``(frames used, note)`` per clip of that
    call (:attr:`last_note`: the last clip's). ``update`` / ``compute`` / ``reset``: the
    torchmetrics accumulation of ``score()`` values (``per_clip()``; ``compute`` = mean).

    Progress within a clip: a slow metric (the face metrics, ~1 s per frame) calls
    :meth:`advance` with the number of frames it has just finished; whoever called
    ``score()`` inside ``with metric.frame_progress(callback):`` gets ``callback(n)``
    (the evaluator's per-frame bar). Without a callback ``advance`` does nothing; it never
    changes a value.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("values", default=[], dist_reduce_fx="cat")
        # plain attributes, not metric states: what each clip of the last score() could use
        self._notes: dict[int | None, tuple[int, str]] = {}
        self.last_notes: list[tuple[int, str]] = []
        self._progress: Callable[[int], None] | None = None

    @contextmanager
    def frame_progress(self, callback: Callable[[int], None] | None) -> Iterator[None]:
        """While inside, :meth:`advance` ``(n)`` calls ``callback(n)`` (``n`` frames of the
        ``B × T`` frames of a ``score()`` call done); the previous callback is restored after."""
        previous, self._progress = self._progress, callback
        try:
            yield
        finally:
            self._progress = previous

    def advance(self, frames: int) -> None:
        """Called by a subclass when ``frames`` more frames of the current ``score()`` call
        are done (a progress report only; see :meth:`frame_progress`)."""
        if self._progress is not None and frames:
            self._progress(int(frames))

    def note_clip(self, frames_used: int, note: str, clip: int | None = None) -> None:
        """Called by a subclass while it scores clip ``clip`` (index in the batch; None:
        the batch's last clip) that it could not score on every frame: ``frames_used``
        frames entered the value, ``note`` says why the others did not (e.g. "no face in
        3 of 9 frames"). The evaluator writes both into the clip's row of ``per_clip.csv``."""
        self._notes[clip] = (int(frames_used), str(note))

    @property
    def last_note(self) -> tuple[int | None, str]:
        """``(frames used, note)`` of the last clip of the last ``score()`` call."""
        return self.last_notes[-1] if self.last_notes else (None, "")

    # -- what subclasses implement ---------------------------------------------------

    def frame_scores(self, preds: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        """``(B, T, 3, H, W)`` → ``(B, T)`` per-frame values."""
        raise NotImplementedError

    def clip_scores(self, preds: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        """``(B, T, 3, H, W)`` → ``(B,)`` per-clip values (default: mean of frame scores)."""
        return self.frame_scores(preds, target).mean(dim=1)

    # -- the contract ----------------------------------------------------------------

    def score(self, preds: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        """``(B,)`` float64 values of the clips; stateless (see the class docstring)."""
        self.check_input(preds, target)
        self._notes = {}
        # CPU convolutions through kernels whose results do not follow the thread count
        with thread_invariant_kernels(preds.device):
            scores = self.clip_scores(preds.float(), None if target is None else target.float())
        batch, frames = preds.shape[:2]
        notes = [(frames, "")] * batch
        for clip, note in self._notes.items():
            notes[batch - 1 if clip is None else clip] = note
        self.last_notes = notes
        self._notes = {}
        return scores.detach().to(torch.float64).reshape(-1)

    def update(self, preds: torch.Tensor, target: torch.Tensor | None = None) -> None:
        self.values.append(self.score(preds, target))

    def per_clip(self) -> torch.Tensor:
        """All per-clip values accumulated by ``update``, ``(N,)`` float64."""
        values = self.values
        if isinstance(values, torch.Tensor):  # after a DDP sync the list is concatenated
            return values
        return torch.cat(values) if values else torch.zeros(0, dtype=torch.float64)

    def latest(self, count: int = 1) -> torch.Tensor:
        """Values of the last ``count`` clips accumulated by ``update``."""
        return self.per_clip()[-count:]

    def compute(self) -> torch.Tensor:
        return self.per_clip().mean()


class SetMetric(VideoMetric):
    """A metric with one value for a set of clips (FVD).

    ``features(preds, target)``: ``(B, T, 3, H, W)`` → named feature arrays ``(B, D)``
    (e.g. ``{"pred": …, "target": …}``), stateless; ``value(features)``: the metric over
    stacked ``(N, D)`` features, a float. ``update`` accumulates features (``stacked_features``),
    ``compute`` is their value, ``reset`` forgets them.
    """

    level: ClassVar[str] = "set"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # plain attribute: feature names are the subclass's (not torchmetrics states)
        self._accumulated: list[dict[str, torch.Tensor]] = []

    def features(self, preds: torch.Tensor, target: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def value(self, features: Mapping[str, torch.Tensor]) -> float:
        raise NotImplementedError

    def empty_features(self) -> dict[str, torch.Tensor]:
        """What ``stacked_features`` returns before any ``update``."""
        return {}

    def update(self, preds: torch.Tensor, target: torch.Tensor | None = None) -> None:
        self._accumulated.append(self.features(preds, target))

    def stacked_features(self) -> dict[str, torch.Tensor]:
        """Everything accumulated by ``update``: ``{name: (N, D)}``."""
        if not self._accumulated:
            return self.empty_features()
        return {name: torch.cat([batch[name] for batch in self._accumulated]) for name in self._accumulated[0]}

    def compute(self) -> torch.Tensor:
        return torch.tensor(self.value(self.stacked_features()), dtype=torch.float64)

    def reset(self) -> None:
        super().reset()
        self._accumulated = []


# --------------------------------------------------------------------------- networks


class DeclaresFiles:
    """``required_weights`` / ``missing_weights`` / ``weights_file`` from one declaration,
    :meth:`pretrained_files` (``self.files`` when set); shared by the network metrics and the
    backends they hold (flow networks)."""

    def pretrained_files(self) -> PretrainedFiles:
        files = getattr(self, "files", None)
        return files if files is not None else PretrainedFiles()

    def required_weights(self) -> list[str]:
        return self.pretrained_files().names()

    def missing_weights(self) -> list[str]:
        return self.pretrained_files().missing()

    def weights_file(self) -> tuple[str | None, str | None]:
        return self.pretrained_files().describe()


class NetworkMetric(DeclaresFiles, VideoMetric):
    """Base of the metrics that need pretrained files (mixed in before :class:`ClipMetric`
    or :class:`SetMetric`).

    A subclass declares its files once, by returning a :class:`PretrainedFiles` from
    :meth:`pretrained_files` (or by setting ``self.files``); ``required_weights``,
    ``missing_weights`` (explicit paths honoured) and ``weights_file`` (provenance) follow
    from it. :meth:`network` builds the network with ``_build()`` once, on first use.
    """

    files: PretrainedFiles

    # -- the lazily built network ------------------------------------------------------

    def _build(self) -> nn.Module:
        raise NotImplementedError

    def _on_first_build(self) -> None:
        """Hook called just before the network is built (e.g. a warning for random weights)."""

    def network(self, device: torch.device | str = "cpu") -> nn.Module:
        """The network (eval) on ``device``; built and loaded on the first call only.
        It lives in a plain dict, not as a submodule: ``Metric.to()`` / ``state_dict()`` /
        ``set_dtype`` never see it; it follows the input's device."""
        nets = self.__dict__.setdefault("_nets", {})
        net = nets.get("net")
        if net is None:
            self._on_first_build()
            net = nets["net"] = self._build()
        device = torch.device(device)
        if next(net.parameters()).device != device:
            net.to(device)
        return net


__all__ = ["ClipMetric", "NetworkMetric", "PretrainedFiles", "Provenance", "SetMetric", "VideoMetric"]
