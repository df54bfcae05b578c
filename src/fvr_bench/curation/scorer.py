"""Qwen2.5-VL as the grader: face crops + the rubric prompt in, the raw answer text out.

The model is read from a local directory only (``from_pretrained(dir,
local_files_only=True)``) — the Hugging Face snapshot of ``Qwen/Qwen2.5-VL-7B-Instruct``
(config, safetensors shards, tokenizer, preprocessor and chat-template files). Looked up
in this order: ``scorer.model_dir``; ``$FVR_BENCH_WEIGHTS/Qwen2.5-VL-7B-Instruct``;
``~/.cache/fvr_bench/weights/Qwen2.5-VL-7B-Instruct``; the Hugging Face hub cache
(``$HF_HUB_CACHE`` or ``$HF_HOME/hub``, default ``~/.cache/huggingface/hub``). Nothing is
ever downloaded. Decoding is greedy, so a clip's answer is reproducible on one machine.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fvr_bench import weights
from fvr_bench.curation.prompt import build_prompt, prompt_digest
from fvr_bench.errors import ConfigError, WeightsMissingError

WEIGHTS_NAME = "qwen25_vl_7b_instruct"
HUB_REPO = "Qwen/Qwen2.5-VL-7B-Instruct"
INPUT_MODES = ("images", "video")


def _hub_root() -> Path:
    """Where the Hugging Face hub cache keeps this model's snapshots."""
    hub = os.environ.get("HF_HUB_CACHE") or os.path.join(os.environ.get("HF_HOME", "~/.cache/huggingface"), "hub")
    return Path(hub).expanduser() / f"models--{HUB_REPO.replace('/', '--')}" / "snapshots"


def _hub_snapshots() -> list[Path]:
    """Snapshot folders of the model in the Hugging Face hub cache, newest first."""
    root = _hub_root()
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)


def _is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file()


def locate_model_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The local Qwen2.5-VL directory; raises :class:`WeightsMissingError` naming where
    to put it. The registry's own lookup finds files only, so the directory candidates
    are checked here (a folder counts when it holds ``config.json``)."""
    if explicit:
        path = Path(explicit).expanduser()
        if not _is_model_dir(path):
            raise WeightsMissingError(
                f"scorer.model_dir={explicit}: no Qwen2.5-VL model there (expected a folder with config.json, "
                f"*.safetensors, tokenizer and preprocessor files: a local copy of https://huggingface.co/{HUB_REPO})"
            )
        return path
    for path in [*weights.entry(WEIGHTS_NAME).candidates(), *_hub_snapshots()]:
        if _is_model_dir(path):
            return path
    raise WeightsMissingError(
        weights.missing_message(WEIGHTS_NAME)
        + f"\n    {_hub_root()}/<revision> (Hugging Face cache)"
        + f"\n  it is a folder (a local copy of https://huggingface.co/{HUB_REPO}); or pass scorer.model_dir=<folder>"
    )


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise ConfigError(f"scorer.device: {device!r} is not a device (auto | cpu | cuda | cuda:1)") from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"scorer.device={device}: no CUDA device is available; use device=cpu or auto")
    return resolved


def _resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        # bf16 is the released precision; CPUs run float32 (bf16 matmuls are slow there)
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in table:
        raise ConfigError(f"scorer.dtype must be auto, {', '.join(table)}; got {dtype!r}")
    return table[dtype]


class QwenVLScorer:
    """Grades one clip's face crops with Qwen2.5-VL and returns the raw answer.

    model_dir:      local model folder, or None to look it up (module docstring).
    frames:         how many face crops of a clip are shown.
    input_mode:     ``images`` (one image per crop, in time order) or ``video`` (the crops
                    as one video; Qwen2.5-VL then merges frame pairs temporally).
    max_new_tokens: answer length limit (a cut-off JSON answer is still parsed, flagged).
    device / dtype: ``auto`` = CUDA + bfloat16 when available, else CPU + float32.
    min_pixels / max_pixels: per-image pixel bounds for the processor (None: its defaults;
                    the crops are already a multiple of 28 px, so they pass unchanged).
    fps:            frame rate reported with ``video`` input (sampled crops are sparse in
                    time; Qwen2.5-VL uses it for its temporal position ids).
    """

    def __init__(
        self,
        model_dir: str | None = None,
        frames: int = 4,
        input_mode: str = "images",
        max_new_tokens: int = 1024,
        device: str = "auto",
        dtype: str = "auto",
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        fps: float = 2.0,
        attn_implementation: str | None = None,
    ) -> None:
        if input_mode not in INPUT_MODES:
            raise ConfigError(f"scorer.input_mode must be one of {', '.join(INPUT_MODES)}, got {input_mode!r}")
        if frames < 1 or (input_mode == "video" and frames < 2):
            raise ConfigError(f"scorer.frames must be >= 1 (>= 2 for video input), got {frames}")
        if max_new_tokens < 1:
            raise ConfigError(f"scorer.max_new_tokens must be >= 1, got {max_new_tokens}")
        self.model_dir = model_dir
        self.frames = int(frames)
        self.input_mode = input_mode
        self.max_new_tokens = int(max_new_tokens)
        self.device_name = device
        self.dtype_name = dtype
        self.min_pixels = min_pixels
        self.max_pixels = max_pixels
        self.fps = float(fps)
        self.attn_implementation = attn_implementation
        self.model = None
        self.processor = None
        self.device: torch.device | None = None
        self.source: str | None = None

    @classmethod
    def from_components(cls, model: Any, processor: Any, **settings: Any) -> QwenVLScorer:
        """A scorer around an already built model and processor (tests; notebooks that
        hold the model already). The model runs on its own device."""
        scorer = cls(**settings)
        scorer.model = model.eval()
        scorer.processor = processor
        scorer.device = next(model.parameters()).device
        scorer.source = f"components:{type(model).__name__}"
        return scorer

    # -- loading -----------------------------------------------------------------------

    def load(self) -> None:
        """Load model and processor from the local folder (once)."""
        if self.model is not None:
            return
        from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

        folder = locate_model_dir(self.model_dir)
        self.device = _resolve_device(self.device_name)
        options: dict[str, Any] = {"local_files_only": True, "dtype": _resolve_dtype(self.dtype_name, self.device)}
        if self.attn_implementation:
            options["attn_implementation"] = self.attn_implementation
        try:
            model = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(folder), **options)
            self.processor = AutoProcessor.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError) as error:
            raise WeightsMissingError(f"{folder}: not a loadable Qwen2.5-VL model folder ({error})") from error
        self.model = model.to(self.device).eval()
        self.source = str(folder)

    def identity(self) -> dict[str, Any]:
        """What decides whether two runs' answers may be mixed (stored in ``run.json``).
        The model is named by its folder (``Qwen2.5-VL-7B-Instruct`` when looked up), so a
        finished run can be re-thresholded on a machine without the model."""
        if self.source is not None and self.source.startswith("components:"):
            model = self.source
        else:
            model = Path(self.model_dir).name if self.model_dir else weights.entry(WEIGHTS_NAME).filename
        return {
            "model": model,
            "frames": self.frames,
            "input_mode": self.input_mode,
            "max_new_tokens": self.max_new_tokens,
            "min_pixels": self.min_pixels,
            "max_pixels": self.max_pixels,
            "fps": self.fps if self.input_mode == "video" else None,
            "prompt_sha256": prompt_digest(self.prompt(self.frames)),
        }

    # -- grading -----------------------------------------------------------------------

    def prompt(self, num_frames: int) -> str:
        return build_prompt(num_frames, as_video=self.input_mode == "video")

    def _size_kwargs(self) -> dict[str, Any]:
        if self.min_pixels is None and self.max_pixels is None:
            return {}
        size = {}
        if self.min_pixels is not None:
            size["shortest_edge"] = int(self.min_pixels)
        if self.max_pixels is not None:
            size["longest_edge"] = int(self.max_pixels)
        return {"size": size}

    def inputs(self, crops: np.ndarray) -> dict[str, Any]:
        """Processor tensors for uint8 ``(N, S, S, 3)`` crops: chat template with N image
        placeholders (or one video) followed by the prompt."""
        from PIL import Image

        if crops.ndim != 4 or crops.shape[-1] != 3 or crops.dtype != np.uint8:
            raise ValueError(f"expected uint8 (N, S, S, 3) crops, got {crops.dtype} {tuple(crops.shape)}")
        visual = [{"type": "video"}] if self.input_mode == "video" else [{"type": "image"}] * len(crops)
        messages = [{"role": "user", "content": [*visual, {"type": "text", "text": self.prompt(len(crops))}]}]
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        if self.input_mode == "video":
            video = crops if len(crops) % 2 == 0 else np.concatenate([crops, crops[-1:]])  # temporal patches pair frames
            return self.processor(text=[text], videos=[video], return_tensors="pt",
                                  videos_kwargs={"fps": self.fps, "do_sample_frames": False, **self._size_kwargs()})
        images = [Image.fromarray(crop) for crop in crops]
        return self.processor(text=[text], images=images, return_tensors="pt", images_kwargs=self._size_kwargs())

    @torch.no_grad()
    def answer(self, crops: np.ndarray) -> str:
        """The model's raw answer text for one clip's face crops (greedy decoding)."""
        self.load()
        inputs = self.inputs(crops).to(self.device)
        output = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False,
                                     temperature=None, top_p=None, top_k=None)
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        return self.processor.batch_decode(new_tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False)[0]
