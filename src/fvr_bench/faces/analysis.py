"""Per-frame results of a video and the status of each frame (the no-face policy).

Frames without a face (the policy every face metric follows)
------------------------------------------------------------
* Full-reference metrics (restored vs GT): the GT frame is analysed first. **A GT frame
  without a face is skipped** (its score is NaN and it is counted as ``no_face_gt``).
  **A restored frame without its own detection is analysed with the GT frame's geometry**
  (counted as ``fallback``): dlib runs its shape predictors inside the GT box; ArcFace
  aligns with the GT's five MTCNN points; MediaPipe re-runs the mesh on a square crop
  around the GT mesh (1.5× its extent, resampled to 256²) and maps the points back. A
  restored frame is therefore penalised for a destroyed face instead of being dropped —
  dropping it would reward methods whose failures are severe enough to hide the face.
  Only if that crop still yields nothing (MediaPipe) is the frame skipped (``missing``).
* No-reference metrics (FaceCons, TLME-NR): a frame without a face is skipped and counted
  (``missing``).
* A clip whose frames are all skipped scores NaN; the result store keeps non-finite
  values out of the mean and the summary's ``n_clips`` shows it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STATUS_OWN = "own"  # the frame's own detection
STATUS_FALLBACK = "fallback"  # restored frame analysed with the GT frame's geometry
STATUS_MISSING = "missing"  # no face in the frame (and no usable fallback): skipped
STATUS_NO_FACE_GT = "no_face_gt"  # GT frame without a face: the frame pair is skipped


@dataclass
class FrameAnalysis:
    """Per-frame results of one video: ``values`` ``(T, …)`` float64 with NaN rows where
    a frame was skipped, and one status per frame (``own``, ``fallback``, ``missing``,
    ``no_face_gt``)."""

    values: np.ndarray
    status: list[str]

    @property
    def valid(self) -> np.ndarray:
        return np.isfinite(self.values.reshape(len(self.status), -1)).all(axis=1)


def concat_analyses(parts: list[FrameAnalysis]) -> FrameAnalysis:
    """The analyses of consecutive runs of frames of one video as one (frames in order):
    a video analysed frame by frame (to report progress per frame) gives what one call
    over all its frames gives, since every per-frame result depends on its frame only."""
    if len(parts) == 1:
        return parts[0]
    return FrameAnalysis(np.concatenate([part.values for part in parts]), [s for part in parts for s in part.status])
