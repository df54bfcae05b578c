"""FaceCons (CLIP): EvalCrafter's face consistency score, id ``facecons_clip``.

EvalCrafter (``metrics/Scores_with_CLIP/Scores_with_CLIP.py``,
``calculate_face_consistency_score``) on every frame of a video:

1. the decoded uint8 RGB frame is cast to float **without** dividing by 255 and
   **without** CLIP's mean/std normalisation — the encoder sees values in [0, 255];
2. ``torchvision.transforms.Resize([224, 224])`` on that float tensor: the whole frame is
   squashed to 224×224 (no aspect-preserving resize, no centre crop), bilinear; with the
   torchvision 0.15.2 EvalCrafter pins, a tensor Resize does **not** antialias;
3. ``CLIPModel.get_image_features`` of ``clip-vit-base-patch32`` — the same network and
   weights as OpenAI's ViT-B/32 (projected class token, 512-d);
4. features L2-normalised; the score is the mean over frames t ≥ 1 of
   ``cos(f_t, f_0)`` (each frame against the first).

This metric reproduces exactly that (defaults ``clip_normalize=False``,
``antialias=False``). Feeding 0–255 values to a network trained on normalised inputs is
EvalCrafter's choice, kept so numbers compare with theirs; ``clip_normalize=True`` uses
CLIP's own input convention instead ([0, 1], minus :data:`CLIP_MEAN`, divided by
:data:`CLIP_STD`), which is a different metric and has its own provenance.

Higher is better (1 = every frame has the first frame's features); no reference needed.
The identity-embedding variant of KEEP/VividFace is a different metric (``facecons_id``).

Weights: ``clip_vit_b32`` (OpenAI's ``ViT-B-32.pt``) via :func:`fvr_bench.weights.locate`,
loaded on first use (``visual.*`` entries only), checked against the published sha256
(``verify_weights``) and required to be ViT-B/32. ``pretrained=False`` builds a seeded
random ViT-B/32 — for tests only, recorded in the provenance.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from fvr_bench.errors import ConfigError
from fvr_bench.metrics.backends.clip import (
    CLIP_MEAN,
    CLIP_STD,
    VIT_B_32,
    VisionTransformer,
    build_visual,
    infer_config,
    load_openai_visual_state_dict,
)
from fvr_bench.metrics.determinism import bilinear_resize
from fvr_bench.metrics.fidelity import quantize_8bit
from fvr_bench.metrics.perceptual import _PerceptualMetric

log = logging.getLogger(__name__)

WEIGHTS_NAME = "clip_vit_b32"


class FaceConsCLIP(_PerceptualMetric):
    """EvalCrafter's CLIP face consistency per clip (see the module docstring).

    Input ``(B, T, 3, H, W)`` float RGB in [0, 1], T ≥ 2; output ``(B,)`` float32 mean
    cosine similarity in [−1, 1] of frames 1…T−1 to frame 0.

    Args:
        clip_normalize: False (EvalCrafter): the encoder sees 0–255 values;
            True: CLIP's own [0, 1] mean/std normalisation.
        antialias: antialias the resize to 224² (False: EvalCrafter's torchvision 0.15).
        quantize: round frames to 8-bit levels first (EvalCrafter decodes uint8 frames).
        weights_path: explicit ``ViT-B-32.pt``; otherwise looked up in the registry.
        pretrained: False → seeded random ViT-B/32 (tests only; recorded in provenance).
        seed: seed of the random weights.
        verify_weights: check the file against OpenAI's published sha256.
        chunk_frames: frames per encoder pass (does not change the number); None: 16 on
            a CPU, 64 on a GPU.
    """

    metric_id: ClassVar[str] = "facecons_clip"
    higher_is_better: ClassVar[bool] = True
    needs_reference: ClassVar[bool] = False
    level: ClassVar[str] = "clip"

    def __init__(
        self,
        clip_normalize: bool = False,
        antialias: bool = False,
        quantize: bool = True,
        weights_path: str | None = None,
        pretrained: bool = True,
        seed: int = 0,
        verify_weights: bool = True,
        chunk_frames: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._init_common(pretrained, seed, quantize, chunk_frames, verify_weights)
        self.clip_normalize = bool(clip_normalize)
        self.antialias = bool(antialias)
        self._declare({WEIGHTS_NAME: weights_path})

    # -- weights ---------------------------------------------------------------------

    def encoder(self, device: torch.device | str = "cpu") -> VisionTransformer:
        """The CLIP image encoder (float32, eval) on ``device``; loaded on the first call."""
        net = self._nets.get("visual")
        if net is None:
            if self.pretrained:
                state = load_openai_visual_state_dict(self.files.path(WEIGHTS_NAME))
                found = infer_config(state)
                if found != VIT_B_32:
                    raise ConfigError(f"facecons_clip is defined on CLIP ViT-B/32; the checkpoint is {found}")
                net = build_visual(state)
            else:
                log.warning("facecons_clip: RANDOM weights (pretrained=False) — for tests only")
                net = build_visual(None, VIT_B_32, self.seed)
            self._nets["visual"] = net
        device = torch.device(device)
        if net.proj.device != device:
            net.to(device)
        return net

    # -- the metric ------------------------------------------------------------------

    def encoder_input(self, frames: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` in [0, 1] → ``(N, 3, 224, 224)`` float32 as the encoder is fed:
        EvalCrafter's 0–255 values (or CLIP-normalised with ``clip_normalize``), whole frame
        resized bilinearly (``align_corners=False``, torchvision's Resize)."""
        x = (quantize_8bit(frames) / 255.0).to(torch.float32) if self.quantize else frames.to(torch.float32)
        size = VIT_B_32.input_resolution
        if not self.clip_normalize:
            x = x * 255.0  # scaled before the resize, in EvalCrafter's order
        if self.antialias:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        else:  # F.interpolate's formula, thread-count independent (metrics.determinism)
            x = bilinear_resize(x, (size, size))
        if self.clip_normalize:
            mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
            std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
            x = (x - mean) / std
        return x

    @torch.no_grad()
    def features(self, frames: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` in [0, 1] → ``(N, 512)`` L2-normalised CLIP image features."""
        net = self.encoder(frames.device)
        chunk = self.chunk_frames or (64 if frames.device.type == "cuda" else 16)
        feats = torch.cat([net(self.encoder_input(frames[i : i + chunk])) for i in range(0, frames.shape[0], chunk)])
        return feats / feats.norm(p=2, dim=-1, keepdim=True)

    @torch.no_grad()
    def clip_scores(self, preds: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, T, 3, H, W)`` in [0, 1] → ``(B,)`` float32: mean over t ≥ 1 of cos(f_t, f_0)."""
        batch, frames = preds.shape[:2]
        if frames < 2:
            raise ConfigError(f"facecons_clip compares frames with the first one and needs T >= 2, got T = {frames}")
        feats = self.features(preds.reshape(batch * frames, *preds.shape[2:])).reshape(batch, frames, -1)
        cos = (feats[:, 1:] * feats[:, :1]).sum(dim=-1)  # (B, T-1)
        return cos.mean(dim=1)

    def settings(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "backbone": "ViT-B/32",
            "resize": "224x224 bilinear (whole frame)",
            "antialias": self.antialias,
            "clip_normalize": self.clip_normalize,
            "input_range": "[0, 1] mean/std-normalised" if self.clip_normalize else "[0, 255] (EvalCrafter)",
            "quantize": self.quantize,
            "anchor": "first frame",
        }
        if not self.pretrained:
            out["pretrained"] = False
            out["seed"] = self.seed
        return out


__all__ = ["FaceConsCLIP"]
