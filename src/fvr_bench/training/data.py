"""Training samples: windows of consecutive GT frames, degraded on the fly by a preset.

A sample is ``frames`` consecutive frames of one clip, resized to ``size``² (the clips are
aligned face crops, so a resize keeps the face whole; a random crop would cut it), flipped
horizontally at random when ``augment`` is on, and degraded with the stage's preset. The
degradation draws its parameters once per sample (consistent per video, as BFVR-STC trains),
seeded from (seed, sample key), so a sample is reproducible in any worker and on any rank.

Clips shorter than ``frames`` are played forward then backward (ping-pong) until long
enough — the sample set has 24-frame clips and a stage may ask for more; a warning names
the clip once.

Multi-task training (SVFR) degrades every window several times instead — one
:class:`~fvr_bench.training.views.TaskViews` view per task combination — and may add the
GT frames' 68 dlib landmarks; see :class:`ClipWindows` for the item layout.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from fvr_bench.data.base import VideoDataset
from fvr_bench.degradations import Compose
from fvr_bench.errors import ConfigError, DataError
from fvr_bench.methods.base import resize_video
from fvr_bench.training.views import TaskViews, multi_hot

log = logging.getLogger(__name__)

LANDMARKS = (None, "dlib68")


def ping_pong(frames: torch.Tensor, length: int) -> torch.Tensor:
    """``(T, ...)`` → ``(length, ...)``: the clip forward, backward, forward … (no repeated
    end frames), for clips shorter than a training window."""
    if len(frames) >= length:
        return frames
    if len(frames) == 1:
        return frames.expand(length, *frames.shape[1:])
    cycle = torch.cat([frames, frames.flip(0)[1:-1]])
    repeats = -(-length // len(cycle))
    return cycle.repeat(repeats, *([1] * (frames.dim() - 1)))[:length]


class ClipWindows(torch.utils.data.Dataset):
    """Dataset of ``(gt, lq)`` windows from the clips of a :class:`VideoDataset`.

    clip_ids:  which clips to draw from (training clips; held-out ones are left out).
    frames:    window length T; size: output side S (square).
    augment:   True: ``samples_per_epoch`` random windows (random clip, start, flip), the draw
               seeded by (seed, epoch, index); False: every clip cut into consecutive
               windows (the last one ends at the clip's end), a fixed list whose keys stay
               the same between runs (for latent pre-extraction).
    degradation: the stage's preset (None: LQ = GT); views: a :class:`TaskViews` instead,
               for multi-task training (SVFR) — the two are mutually exclusive.
    landmarks: None, or ``"dlib68"``: the 68 dlib landmarks of every GT frame.

    Items (float32 tensors unless said otherwise; T frames, S the size, V = ``views.views``,
    K = ``len(TASKS)`` = 4, in :data:`~fvr_bench.degradations.TASKS` order):

    - ``"gt"``: ``(T,3,S,S)`` in [0,1]; ``"clip_id"``: str; ``"key"``: str (the seed key).
    - with ``degradation`` or neither: ``"lq"``: ``(T,3,S,S)`` in [0,1]; LQ frames smaller
      than S (presets that downscale) are resized back up bicubically.
    - with ``views``: ``"lq"``: ``(V,T,3,S,S)`` in [0,1] (view v of the same window, see
      :mod:`fvr_bench.training.views`); ``"mask"``: ``(V,T,1,S,S)``, 1 = masked (all zeros
      for views without a mask preset); ``"tasks"``: ``(V,K)`` multi-hot task vector of
      every view (e.g. ``[0,1,1,0]`` = colorization + inpainting).
    - with ``landmarks="dlib68"``: ``"landmarks"``: ``(T,68,2)`` (x/S, y/S) of the GT frame
      as served (after the flip), clipped to [0,1]; ``"landmarks_valid"``: bool ``(T,)``,
      False where dlib finds no face (its landmarks are 0). Computed once per (clip, frame,
      flip) and kept; a frame of S below ~80 px seldom has a detectable face.
    """

    def __init__(
        self,
        dataset: VideoDataset,
        clip_ids: Sequence[str],
        frames: int,
        size: int,
        degradation: Compose | None,
        seed: int = 0,
        augment: bool = True,
        samples_per_epoch: int | None = None,
        views: TaskViews | None = None,
        landmarks: str | None = None,
    ) -> None:
        if not clip_ids:
            raise DataError(f"no training clips in dataset {dataset.name!r}")
        if frames < 1 or size < 8:
            raise ConfigError(f"training windows need frames >= 1 and size >= 8, got frames={frames} size={size}")
        self.dataset, self.clip_ids = dataset, list(clip_ids)
        if degradation is not None and views is not None:
            raise ConfigError("a training stage takes either one degradation preset or task_views, not both")
        if views is not None and not isinstance(views, TaskViews):
            raise ConfigError(f"views must be a fvr_bench.training.views.TaskViews, got {type(views).__name__}")
        if landmarks not in LANDMARKS:
            raise ConfigError(f"landmarks must be one of {LANDMARKS}, got {landmarks!r}")
        self.frames, self.size, self.degradation = int(frames), int(size), degradation
        self.views, self.landmarks = views, landmarks
        self._landmarks: dict[tuple[str, int, bool], np.ndarray | None] = {}
        self.seed, self.augment, self.epoch = int(seed), bool(augment), 0
        self._clips: dict[str, torch.Tensor] = {}
        self._warned: set[str] = set()
        if augment:
            self.samples = [None] * int(samples_per_epoch or 8 * len(self.clip_ids))
        else:
            self.samples = [(clip_id, start) for clip_id in self.clip_ids for start in self._fixed_starts(clip_id)]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.samples)

    def _clip(self, clip_id: str) -> torch.Tensor:
        """GT frames ``(T, 3, S, S)`` of a clip (resized once and kept: training sets are small
        per worker; a large set reads from disk each time through the dataset's own cache)."""
        if clip_id not in self._clips:
            sample = self.dataset.load(clip_id)
            if sample.gt is None:
                raise DataError(f"clip {clip_id!r} of {self.dataset.name!r} has no ground truth ({sample.source}); "
                                "training needs a GT set")
            gt = resize_video(sample.gt[None].float(), (self.size, self.size))[0]
            if len(gt) < self.frames and clip_id not in self._warned:
                self._warned.add(clip_id)
                log.warning("clip %s has %d frames < window %d: extended by ping-pong", clip_id, len(gt), self.frames)
            self._clips[clip_id] = gt
        return self._clips[clip_id]

    def _fixed_starts(self, clip_id: str) -> list[int]:
        total = len(self._clip(clip_id))  # loads and keeps the clip: sampling reads it from memory
        if total <= self.frames:
            return [0]
        starts = list(range(0, total - self.frames + 1, self.frames))
        if starts[-1] + self.frames < total:
            starts.append(total - self.frames)
        return starts

    def __getitem__(self, index: int) -> dict:
        if self.augment:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            clip_id = self.clip_ids[int(rng.integers(len(self.clip_ids)))]
            clip = ping_pong(self._clip(clip_id), self.frames)
            start = int(rng.integers(len(clip) - self.frames + 1))
            flip = bool(rng.integers(2))
            key = f"{clip_id}/e{self.epoch}/i{index}"
        else:
            clip_id, start = self.samples[index]
            clip = ping_pong(self._clip(clip_id), self.frames)
            flip = False
            key = f"{clip_id}/t{start}/n{self.frames}/s{self.size}"
        gt = clip[start : start + self.frames]
        if flip:
            gt = gt.flip(-1)
        extra = {} if self.landmarks is None else self._window_landmarks(clip_id, gt, start, flip)
        if self.views is not None:
            return {"gt": gt.contiguous(), **self._views(gt, key), "clip_id": clip_id, "key": key, **extra}
        lq = gt
        if self.degradation is not None:
            frames = gt.permute(0, 2, 3, 1).numpy()
            degraded = self.degradation(frames, seed=self.seed, clip_id=key)
            lq = torch.from_numpy(degraded.lq).permute(0, 3, 1, 2).float() / 255.0
            if lq.shape[-2:] != gt.shape[-2:]:
                lq = F.interpolate(lq, size=gt.shape[-2:], mode="bicubic", align_corners=False).clamp(0, 1)
        return {"gt": gt.contiguous(), "lq": lq.contiguous(), "clip_id": clip_id, "key": key, **extra}

    def _views(self, gt: torch.Tensor, key: str) -> dict[str, torch.Tensor]:
        """``lq`` (V,T,3,S,S), ``mask`` (V,T,1,S,S) and ``tasks`` (V,K) of the window."""
        views = self.views(gt.permute(0, 2, 3, 1).numpy(), seed=self.seed, key=key)
        lq = torch.from_numpy(np.stack([view.lq for view in views])).permute(0, 1, 4, 2, 3).float() / 255.0
        masks = np.zeros((len(views), *gt.shape[:1], 1, *gt.shape[-2:]), dtype=np.float32)
        for index, view in enumerate(views):
            if view.mask is not None:
                masks[index, :, 0] = view.mask
        tasks = np.stack([multi_hot(view.tasks) for view in views])
        return {"lq": lq.contiguous(), "mask": torch.from_numpy(masks), "tasks": torch.from_numpy(tasks)}

    def _window_landmarks(self, clip_id: str, gt: torch.Tensor, start: int, flip: bool) -> dict[str, torch.Tensor]:
        """dlib's 68 landmarks of every frame of the window, normalised to [0,1] (see the
        class docstring); frames are identified by their index in the clip (ping-pong
        included) and the flip, so each is analysed once per worker."""
        from fvr_bench.faces.dlib import shared_dlib
        from fvr_bench.faces.frames import frames_of

        total = len(self._clip(clip_id))
        sources = ping_pong(torch.arange(total), self.frames)[start : start + self.frames].tolist()
        points = np.zeros((len(gt), 68, 2), dtype=np.float32)
        valid = np.zeros(len(gt), dtype=np.bool_)
        todo = [t for t, source in enumerate(sources) if (clip_id, source, flip) not in self._landmarks]
        if todo:
            faces = shared_dlib()
            for t, frame in zip(todo, frames_of(gt[todo])):
                geometry = faces.detect(frame)
                found = None
                if geometry is not None:
                    scale = np.array([frame.width, frame.height], dtype=np.float64)
                    found = np.clip(faces.landmarks68(frame, geometry) / scale, 0.0, 1.0).astype(np.float32)
                self._landmarks[(clip_id, sources[t], flip)] = found
        for t, source in enumerate(sources):
            found = self._landmarks[(clip_id, source, flip)]
            if found is not None:
                points[t], valid[t] = found, True
        return {"landmarks": torch.from_numpy(points), "landmarks_valid": torch.from_numpy(valid)}


class ClipWindowDataModule(L.LightningDataModule):
    """Lightning wrapper: one training loader over :class:`ClipWindows` (validation is a
    separate ``run`` on held-out clips, with the full metric zoo)."""

    def __init__(self, windows: ClipWindows, batch_size: int, num_workers: int = 0) -> None:
        super().__init__()
        self.windows, self.batch_size, self.num_workers = windows, int(batch_size), int(num_workers)

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        self.windows.set_epoch(self.trainer.current_epoch if self.trainer is not None else 0)
        return torch.utils.data.DataLoader(
            self.windows,
            batch_size=self.batch_size,
            shuffle=not self.windows.augment,
            num_workers=self.num_workers,
            drop_last=len(self.windows) >= self.batch_size,
            persistent_workers=False,
        )

    def ordered_dataloader(self) -> torch.utils.data.DataLoader:
        """Every sample once, in order (latent pre-extraction)."""
        return torch.utils.data.DataLoader(self.windows, batch_size=self.batch_size, shuffle=False,
                                           num_workers=self.num_workers)
