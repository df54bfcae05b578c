"""CLIP-based no-reference image quality, per frame: ``clipiqa`` and ``liqe``.

Both follow pyiqa (0.1.x, ``pyiqa/archs/clipiqa_arch.py`` and ``liqe_arch.py``), which the
field reports; each frame is scored as pyiqa scores one image read from an 8-bit file, and
a clip's value is the mean over its frames (``level = "frame"``). Higher is better; no
reference is needed.

**CLIP-IQA** (Wang, Chan & Loy, AAAI 2023; id ``clipiqa``), pyiqa's ``clipiqa``:

1. the frame at its own resolution (no resize, no crop), CLIP mean/std normalisation;
2. OpenAI CLIP **RN50** image features, with the attention pool's positional embedding
   **not added** (pyiqa's ``pos_embedding=False`` default; ``positional: interpolate``
   resizes it bicubically as pyiqa's ``pos_embedding=True``);
3. antonym prompt pairs, ``logit_scale.exp() · cos(image, prompt)``, softmax within each
   pair, the probability of the positive prompt averaged over the pairs. pyiqa assembles
   five pairs (``prompts: pyiqa``, default): "Good image"/"bad image", "Sharp image"/
   "blurry image", "sharp edges"/"blurry edges", "High resolution image"/"low resolution
   image", "Noise-free image"/"noisy image". The paper and the official CLIP-IQA code use
   the single pair "Good photo."/"Bad photo." (``prompts: paper``) — a different number,
   with its own provenance.

Output in [0, 1].

**LIQE** (Zhang et al., CVPR 2023; id ``liqe``), pyiqa's ``liqe_mix`` = the official
``LIQE.py`` with the released multitask checkpoint:

1. the frame at its own resolution, CLIP mean/std normalisation; the short side must be
   ≥ 224 (pyiqa asserts; ``upscale_small: true`` instead upsamples the frame bicubically,
   aspect kept, so its short side is 224 — a documented deviation);
2. all 224² windows at stride 32 (``unfold``, row-major), of which ``num_patch = 15`` are
   kept: indices ``0, s, 2s, …, 14s`` with ``s = max(1, n // 15)`` (pyiqa's evaluation-mode
   rule; deterministic — pyiqa draws random patches only in training mode; the official
   ``LIQE.py`` computes ``s`` from the batch size, a bug pyiqa fixed); fewer than 15
   windows → all of them;
3. fine-tuned CLIP ViT-B/32 features of each patch; logits ``logit_scale.exp() · cos``
   against the 495 prompts "a photo of a {scene} with {distortion} artifacts, which is of
   {quality} quality" (5 qualities × 9 scenes × 11 distortions, in that nesting order;
   "a" before every scene, "still_life" with its underscore, exactly as LIQE);
4. logits averaged over the patches, softmax over the 495, summed over scenes and
   distortions → p(quality), score = Σ q · p(q) for bad, poor, fair, good, perfect = 1…5.

Output in [1, 5].

Text features of the fixed prompts are computed once per model and device with the
checkpoint's own (for LIQE: fine-tuned) text tower; prompts are tokenised at run time by
:class:`~fvr_bench.metrics.backends.clip.SimpleTokenizer` from OpenAI's BPE vocabulary
(``bpe_simple_vocab_16e6.txt.gz``, shipped in the ``open_clip_torch`` wheel).

Weights: ``clip_rn50`` (OpenAI ``RN50.pt``) for CLIP-IQA; ``liqe_mix`` (``LIQE.pt``: the
full fine-tuned CLIP ViT-B/32 state dict in OpenAI's key layout — ``visual.*``,
``token_embedding.weight``, ``positional_embedding``, ``transformer.resblocks.*``,
``ln_final.*``, ``text_projection``, ``logit_scale`` — loaded strictly, so OpenAI's
ViT-B-32.pt is not needed) for LIQE. Both run in float32 (pyiqa on CPU; the official LIQE
on a GPU runs CLIP in float16). ``pretrained=False`` builds seeded random networks — tests
only, recorded in the provenance.
"""

from __future__ import annotations

import logging
from itertools import product
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from fvr_bench.errors import ConfigError
from fvr_bench.metrics.backends.clip import (
    CLIP_MEAN,
    CLIP_STD,
    POSITIONAL_MODES,
    RN50,
    TEXT_RN50,
    TEXT_VIT_B_32,
    VIT_B_32,
    CLIPModel,
    SimpleTokenizer,
    build_clip,
    infer_clip_config,
    load_openai_state_dict,
    locate_bpe_vocab,
)
from fvr_bench.metrics.fidelity import quantize_8bit
from fvr_bench.metrics.perceptual import _PerceptualMetric

log = logging.getLogger(__name__)

CLIPIQA_PROMPTS: dict[str, tuple[tuple[str, str], ...]] = {
    "pyiqa": (
        ("Good image", "bad image"),
        ("Sharp image", "blurry image"),
        ("sharp edges", "blurry edges"),
        ("High resolution image", "low resolution image"),
        ("Noise-free image", "noisy image"),
    ),
    "paper": (("Good photo.", "Bad photo."),),
}

LIQE_QUALITIES = ("bad", "poor", "fair", "good", "perfect")
LIQE_SCENES = ("animal", "cityscape", "human", "indoor", "landscape", "night", "plant", "still_life", "others")
LIQE_DISTORTIONS = (
    "jpeg2000 compression", "jpeg compression", "noise", "blur", "color", "contrast",
    "overexposure", "underexposure", "spatial", "quantization", "other",
)  # fmt: skip


def liqe_prompts() -> list[str]:
    """The 495 LIQE prompts in LIQE's order (quality outermost, distortion innermost)."""
    return [
        f"a photo of a {scene} with {dist} artifacts, which is of {quality} quality"
        for quality, scene, dist in product(LIQE_QUALITIES, LIQE_SCENES, LIQE_DISTORTIONS)
    ]


def clip_normalize(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(CLIP_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


class _CLIPPromptMetric(_PerceptualMetric):
    """Shared machinery: lazy CLIP + tokenizer, cached prompt features, frame chunking."""

    higher_is_better: ClassVar[bool] = True
    needs_reference: ClassVar[bool] = False
    level: ClassVar[str] = "frame"

    weights_name: ClassVar[str] = ""
    vision_config: ClassVar[Any] = None
    text_config: ClassVar[Any] = None
    backbone: ClassVar[str] = ""

    def __init__(
        self,
        quantize: bool = True,
        weights_path: str | None = None,
        vocab_path: str | None = None,
        pretrained: bool = True,
        seed: int = 0,
        verify_weights: bool = True,
        chunk_frames: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._init_common(pretrained, seed, quantize, chunk_frames, verify_weights)
        self.vocab_path = vocab_path
        from fvr_bench.metrics.backends.clip import BPE_VOCAB_REGISTRY_NAME

        # the vocabulary is needed with random weights too, and is not part of the provenance
        self._declare({self.weights_name: weights_path}, extra={BPE_VOCAB_REGISTRY_NAME: vocab_path})
        # plain dict, not a submodule (like the networks in _init_common)
        self._text: dict[str, torch.Tensor] = {}

    def random_weights_label(self) -> str | None:
        return None  # provenance of pretrained=False: no file (the settings say pretrained=False)

    # -- networks --------------------------------------------------------------------

    def model(self, device: torch.device | str = "cpu") -> CLIPModel:
        """The CLIP model (float32, eval) on ``device``; loaded on the first call."""
        net = self._nets.get("clip")
        if net is None:
            if self.pretrained:
                state = load_openai_state_dict(self.files.path(self.weights_name))
                vision, text = infer_clip_config(state)
                if (vision, text) != (self.vision_config, self.text_config):
                    raise ConfigError(
                        f"{self.metric_id} is defined on CLIP {self.backbone}; the checkpoint is {vision} + {text}"
                    )
                net = build_clip(state)
            else:
                log.warning("%s: RANDOM weights (pretrained=False) — for tests only", self.metric_id)
                net = build_clip(None, self.vision_config, self.text_config, self.seed)
            self._nets["clip"] = net
            self._text.clear()
        device = torch.device(device)
        if net.text_projection.device != device:
            net.to(device)
        return net

    def tokenizer(self) -> SimpleTokenizer:
        tok = self._nets.get("tokenizer")
        if tok is None:
            tok = SimpleTokenizer(locate_bpe_vocab(self.vocab_path, verify=self.verify_weights))
            self._nets["tokenizer"] = tok  # type: ignore[assignment]
        return tok  # type: ignore[return-value]

    def prompts(self) -> list[str]:
        raise NotImplementedError

    @torch.no_grad()
    def text_features(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """``(P, D)`` L2-normalised features of :meth:`prompts`, cached per device."""
        net = self.model(device)
        key = str(torch.device(device))
        feats = self._text.get(key)
        if feats is None:
            tokens = self.tokenizer()(self.prompts(), net.text_config.context_length).to(device)
            feats = torch.cat([net.encode_text(tokens[i : i + 128]) for i in range(0, tokens.shape[0], 128)])
            feats = feats / feats.norm(dim=-1, keepdim=True)
            self._text[key] = feats
        return feats

    def prepare(self, frames: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` in [0, 1] → float32 CLIP-normalised (8-bit levels first with ``quantize``)."""
        x = (quantize_8bit(frames) / 255.0).to(torch.float32) if self.quantize else frames.to(torch.float32)
        return clip_normalize(x)

    def image_scores(self, net: CLIPModel, text: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``(n, 3, H, W)`` normalised frames → ``(n,)`` scores."""
        raise NotImplementedError

    @torch.no_grad()
    def frame_scores(self, preds: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, T, 3, H, W)`` in [0, 1] → ``(B, T)`` float32 per-frame scores."""
        batch, frames = preds.shape[:2]
        flat = preds.reshape(batch * frames, *preds.shape[2:])
        net = self.model(flat.device)
        text = self.text_features(flat.device)
        chunk = self.chunk_frames or (32 if flat.device.type == "cuda" else 4)
        scores = [self.image_scores(net, text, self.prepare(flat[i : i + chunk])) for i in range(0, flat.shape[0], chunk)]
        return torch.cat(scores).reshape(batch, frames).float()

    def common_settings(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "backbone": self.backbone,
            "input": "native resolution, CLIP mean/std",
            "quantize": self.quantize,
            "tokenizer": "OpenAI CLIP BPE (bpe_simple_vocab_16e6.txt.gz)",
            "reference_implementation": "pyiqa",
        }
        if not self.pretrained:
            out["pretrained"] = False
            out["seed"] = self.seed
        return out


class CLIPIQA(_CLIPPromptMetric):
    """CLIP-IQA per frame (see the module docstring): ``(B, T, 3, H, W)`` → ``(B, T)`` in [0, 1].

    Args:
        prompts: ``pyiqa`` (five antonym pairs, pyiqa's ``clipiqa``) or ``paper``
            ("Good photo." / "Bad photo.").
        positional: attention-pool positional embedding, one of ``none`` (pyiqa default),
            ``interpolate`` (pyiqa ``pos_embedding=True``), ``native`` (OpenAI; input must
            be 224²).
        quantize: round frames to 8-bit levels first (pyiqa reads 8-bit images).
        weights_path: explicit ``RN50.pt``; otherwise looked up in the registry (``clip_rn50``).
        vocab_path: explicit ``bpe_simple_vocab_16e6.txt.gz``.
        pretrained: False → seeded random CLIP RN50 (tests only; recorded in provenance).
        seed: seed of the random weights.
        verify_weights: check files against their published sha256.
        chunk_frames: frames per encoder pass (does not change the number).
    """

    metric_id: ClassVar[str] = "clipiqa"
    weights_name: ClassVar[str] = "clip_rn50"
    vision_config: ClassVar[Any] = RN50
    text_config: ClassVar[Any] = TEXT_RN50
    backbone: ClassVar[str] = "RN50"

    def __init__(self, prompts: str = "pyiqa", positional: str = "none", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if prompts not in CLIPIQA_PROMPTS:
            raise ConfigError(f"clipiqa: prompts must be one of {sorted(CLIPIQA_PROMPTS)}, got {prompts!r}")
        if positional not in POSITIONAL_MODES:
            raise ConfigError(f"clipiqa: positional must be one of {POSITIONAL_MODES}, got {positional!r}")
        self.prompt_set = prompts
        self.positional = positional

    def prompts(self) -> list[str]:
        return [text for pair in CLIPIQA_PROMPTS[self.prompt_set] for text in pair]

    def image_scores(self, net: CLIPModel, text: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        feats = net.encode_image(x, positional=self.positional)
        feats = feats / feats.norm(dim=-1, keepdim=True)
        logits = net.logit_scale.exp() * feats @ text.t()  # (n, 2 · pairs)
        probs = logits.reshape(x.shape[0], -1, 2).softmax(dim=-1)
        return probs[..., 0].mean(dim=1)

    def settings(self) -> dict[str, Any]:
        return {
            **self.common_settings(),
            "prompts": self.prompt_set,
            "prompt_pairs": [list(pair) for pair in CLIPIQA_PROMPTS[self.prompt_set]],
            "positional_embedding": self.positional,
        }


class LIQE(_CLIPPromptMetric):
    """LIQE per frame (see the module docstring): ``(B, T, 3, H, W)`` → ``(B, T)`` in [1, 5].

    Args:
        num_patch: 224² patches per frame (15, LIQE/pyiqa).
        step: stride of the patch grid (32, LIQE/pyiqa).
        upscale_small: frames whose short side is < 224: False → ConfigError (pyiqa
            asserts); True → bicubic upscale to short side 224 first (deviation, recorded).
        quantize, weights_path (``LIQE.pt``), vocab_path, pretrained, seed,
        verify_weights, chunk_frames: as :class:`CLIPIQA`.
    """

    metric_id: ClassVar[str] = "liqe"
    weights_name: ClassVar[str] = "liqe_mix"
    vision_config: ClassVar[Any] = VIT_B_32
    text_config: ClassVar[Any] = TEXT_VIT_B_32
    backbone: ClassVar[str] = "ViT-B/32 (LIQE fine-tuned, multitask)"
    patch: ClassVar[int] = 224

    def __init__(self, num_patch: int = 15, step: int = 32, upscale_small: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if int(num_patch) < 1 or int(step) < 1:
            raise ConfigError(f"liqe: num_patch and step must be positive, got {num_patch}, {step}")
        self.num_patch = int(num_patch)
        self.step = int(step)
        self.upscale_small = bool(upscale_small)

    def prompts(self) -> list[str]:
        return liqe_prompts()

    def patch_indices(self, height: int, width: int) -> list[tuple[int, int]]:
        """Top-left corners ``(y, x)`` of the selected 224² windows (pyiqa's eval rule)."""
        rows = (height - self.patch) // self.step + 1
        cols = (width - self.patch) // self.step + 1
        total = rows * cols
        count = min(self.num_patch, total)
        sel_step = max(1, total // count)
        return [((k // cols) * self.step, (k % cols) * self.step) for k in (sel_step * i for i in range(count))]

    def prepare(self, frames: torch.Tensor) -> torch.Tensor:
        height, width = frames.shape[-2:]
        if min(height, width) < self.patch:
            if not self.upscale_small:
                raise ConfigError(
                    f"liqe needs frames with a short side >= {self.patch} (pyiqa asserts it), got {height}x{width}; "
                    "set upscale_small=true to upsample them first"
                )
            scale = self.patch / min(height, width)
            size = (max(self.patch, round(height * scale)), max(self.patch, round(width * scale)))
            x = (quantize_8bit(frames) / 255.0).float() if self.quantize else frames.float()
            x = F.interpolate(x, size=size, mode="bicubic", align_corners=False).clamp(0, 1)
            return clip_normalize(x)
        return super().prepare(frames)

    def image_scores(self, net: CLIPModel, text: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        corners = self.patch_indices(*x.shape[-2:])
        size = self.patch
        patches = torch.stack([x[:, :, y : y + size, c : c + size] for y, c in corners], dim=1)  # (n, P, 3, 224, 224)
        feats = net.encode_image(patches.flatten(0, 1))
        feats = feats / feats.norm(dim=-1, keepdim=True)
        logits = net.logit_scale.exp() * feats @ text.t()  # (n·P, 495)
        logits = logits.reshape(x.shape[0], len(corners), -1).mean(dim=1)
        probs = logits.softmax(dim=-1).reshape(x.shape[0], len(LIQE_QUALITIES), len(LIQE_SCENES), len(LIQE_DISTORTIONS))
        p_quality = probs.sum(dim=(2, 3))  # (n, 5)
        levels = torch.arange(1, len(LIQE_QUALITIES) + 1, device=x.device, dtype=p_quality.dtype)
        return (p_quality * levels).sum(dim=1)

    def settings(self) -> dict[str, Any]:
        return {
            **self.common_settings(),
            "prompts": "a photo of a {scene} with {distortion} artifacts, which is of {quality} quality (5x9x11)",
            "num_patch": self.num_patch,
            "patch": self.patch,
            "step": self.step,
            "patch_selection": "uniform (pyiqa eval): k*max(1, n//num_patch)",
            "upscale_small": self.upscale_small,
        }


__all__ = ["CLIPIQA", "CLIPIQA_PROMPTS", "LIQE", "LIQE_DISTORTIONS", "LIQE_QUALITIES", "LIQE_SCENES", "liqe_prompts"]
