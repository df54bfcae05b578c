"""The dataset contract: clip ids in, clips out."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ClipSample:
    """One clip as the evaluator sees it.

    gt:        ``(T, 3, H, W)`` float32 in [0, 1], or None for no-reference sets.
    lq:        ``(T, 3, h, w)`` float32 in [0, 1] when the set ships its own LQ input,
               else None (the evaluator degrades ``gt``).
    reference: ``(3, Hr, Wr)`` reference face image (identity-guided methods) or None.
    source:    file or folder the clip was read from (named in error messages).
    """

    clip_id: str
    gt: torch.Tensor | None
    lq: torch.Tensor | None = None
    reference: torch.Tensor | None = None
    fps: float = 25.0
    source: str = ""

    @property
    def num_frames(self) -> int:
        return len(self.gt if self.gt is not None else self.lq)


class VideoDataset:
    """A list of clips; ``load`` reads one lazily. Subclasses set ``name`` and ``has_gt``."""

    name: str = "dataset"
    has_gt: bool = True

    def clip_ids(self) -> list[str]:
        raise NotImplementedError

    def load(self, clip_id: str) -> ClipSample:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.clip_ids())
