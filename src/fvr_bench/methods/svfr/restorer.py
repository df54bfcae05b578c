"""The SVFR restorer: two-pass self-referred refinement on Stable Video Diffusion.

    x   = LQ frames resized to ``size``² (512: what the released weights saw); grayscale for
          colorization, masked pixels white for inpainting (the official input preparation)
    z_l = VAE mode of x (unscaled: the conditioning latents), init = 0.18215 · z_l noised at σ_max
    pass 1: the first window (≤ 16 frames), no reference, zero ID tokens, ``first_pass_steps``
    ref  = a frame of pass 1's output (the last, as the official code) → its VAE latent, and
           ArcFace layer4 → 49 ID tokens when a face is found in it
    pass 2: the whole video with the reference latent and ID tokens, ``steps`` Euler steps,
           CFG 2.0 (uncond: no ID tokens, no reference, same LQ latent)

Any number of frames in, the same number out; the output is resized to ``out_size``.
:class:`SVFRRestorer` is a plain ``nn.Module`` with injected networks: ``unet``
(``UNetSpatioTemporalConditionModel``, 12 input channels), ``vae``
(``AutoencoderKLTemporalDecoder``), ``scheduler`` and ``identity`` (ArcFace + ID projection +
face detector). :func:`load_restorer` is what ``run`` builds; :func:`build_restorer` builds
the float32 restorer that training starts from.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fvr_bench import weights as weight_registry
from fvr_bench.degradations.base import root_seed_sequence
from fvr_bench.errors import ConfigError, WeightsMissingError
from fvr_bench.methods.base import NetworkRestorer, known_options, parse_dtype, plain, resize_video
from fvr_bench.methods.svfr.identity import ID_CROPS, IDTokenProjection, ReferenceIdentity, with_bn_counters
from fvr_bench.methods.svfr.iresnet import IResNet
from fvr_bench.methods.svfr.networks import build_scheduler, build_unet, build_vae, locate_svd_dir, unet_config
from fvr_bench.methods.svfr.sampling import Conditioning, SamplerSettings, WindowedSampler
from fvr_bench.methods.svfr.tasks import parse_tasks, prepare_input, task_prompt
from fvr_bench.state_dicts import load_state, read_state

log = logging.getLogger(__name__)

EXPORT_CONFIG = "restorer.json"
NO_FACE = ("zero_id", "no_reference")  # what pass 2 drops when the reference frame shows no face
TRAINED_PARTS = ("unet", "identity.projection")  # what training changes and an export holds


@dataclass(frozen=True)
class RestoreSettings:
    """``method.restore`` of conf/method/svfr.yaml (official values as defaults).

    size: side of the square frames the model runs at; steps / first_pass_steps: Euler steps of
    pass 2 / pass 1 (the official code hard-codes 50 for pass 1); srr: self-referred refinement
    (False: one pass, no reference, no ID tokens); reference_frame: which pass-1 output frame is
    the reference (−1: the last, official); id_crop: ``svfr_official`` | ``aligned_112``;
    no_face: ``zero_id`` (keep the reference latent, zero ID tokens) | ``no_reference`` (drop
    both); tasks: force the task prompt (e.g. ``[colorization, inpainting]``) instead of the
    degradation's task; noise_aug_strength: noise added to the LQ frames before the
    conditioning latents (official 0); encode_chunk / decode_chunk: VAE frames per call;
    seed: the noise of clip c is drawn from (seed, c), independent of order and batching.
    """

    size: int = 512
    steps: int = 30
    first_pass_steps: int = 50
    guidance_scale: float = 2.0
    window: int = 16
    overlap: int = 3
    overlap_steps: int = 3
    i2i_strength: float = 1.0
    noise_aug_strength: float = 0.0
    srr: bool = True
    reference_frame: int = -1
    id_crop: str = "svfr_official"
    no_face: str = "zero_id"
    tasks: tuple[str, ...] | None = None
    encode_chunk: int = 20
    decode_chunk: int = 16
    window_batch: int = 1
    sequential_cfg: bool = False
    skip_identical_branch: bool = True
    seed: int = 0

    @classmethod
    def from_mapping(cls, restore: Mapping | None) -> RestoreSettings:
        values = known_options(cls, restore, "svfr method.restore")
        if values.get("tasks") is not None:
            values["tasks"] = parse_tasks(values["tasks"])
        settings = cls(**values)
        if settings.id_crop not in ID_CROPS:
            raise ConfigError(f"svfr: method.restore.id_crop={settings.id_crop!r}; one of {', '.join(ID_CROPS)}")
        if settings.no_face not in NO_FACE:
            raise ConfigError(f"svfr: method.restore.no_face={settings.no_face!r}; one of {', '.join(NO_FACE)}")
        if settings.size % 8:
            raise ConfigError(f"svfr: method.restore.size must be a multiple of 8 (the VAE's factor), got {settings.size}")
        return settings

    def sampler(self, steps: int) -> SamplerSettings:
        """The sampler's settings for a pass of ``steps`` steps: every other field has the same
        name here (``method.restore`` is one flat mapping)."""
        shared = {f.name: getattr(self, f.name) for f in fields(SamplerSettings) if f.name != "steps"}
        return SamplerSettings(steps=steps, **shared)


class SVFRRestorer(NetworkRestorer):
    """SVFR inference on injected ``unet``, ``vae``, ``scheduler`` and ``identity``.

    Frames ``(B, T, 3, H, W)`` in [0, 1]; latents ``(1, T, 4, S/8, S/8)``. :meth:`take_notes`
    returns what happened per clip that a reader of the results must know (no face in the
    reference → no ID tokens), for the run's provenance.
    """

    size_multiple = 8

    def __init__(self, unet, vae, scheduler, identity: ReferenceIdentity, *, restore: Mapping | None = None,
                 name: str = "svfr", architecture: Mapping | None = None, sources: Mapping | None = None) -> None:
        super().__init__()
        self.name = name
        self.unet, self.vae, self.identity = unet, vae, identity
        self.scheduler = scheduler
        self.settings = RestoreSettings.from_mapping(restore)
        self.architecture = dict(plain(architecture) or {})
        self.sources = dict(sources or {})
        self._notes: list[tuple[str, str]] = []

    # ------------------------------------------------------------------ bookkeeping

    def export_config(self) -> dict[str, Any]:
        return {"method": "svfr", "architecture": {"unet": self.architecture.get("unet"),
                                                   "id_tokens_dim": int(self.identity.projection.final_norm.normalized_shape[0])}}

    def provenance(self) -> dict[str, Any]:
        """Settings and weight sources that determine the outputs (recorded with the run)."""
        return {"method": self.name, "restore": asdict(self.settings), "weights": dict(self.sources),
                "id_face_detector": "facenet-pytorch MTCNN 5 points (the official code: yoloface v5m)"}

    def take_notes(self) -> list[tuple[str, str]]:
        """``[(clip id, note)]`` since the last call."""
        notes, self._notes = self._notes, []
        return notes

    # ------------------------------------------------------------------ VAE

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """``(T, 3, S, S)`` in [−1, 1] → VAE mode ``(T, 4, S/8, S/8)`` float32, unscaled."""
        dtype = next(self.vae.parameters()).dtype
        chunks = [self.vae.encode(frames[i : i + self.settings.encode_chunk].to(dtype)).latent_dist.mode()
                  for i in range(0, len(frames), self.settings.encode_chunk)]
        return torch.cat(chunks).float()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents ``(T, 4, h, w)`` → frames ``(T, 3, 8h, 8w)`` in [−1, 1] float32, in
        chunks of ``decode_chunk`` frames (the temporal decoder sees each chunk as a clip)."""
        dtype = next(self.vae.parameters()).dtype
        latents = latents / self.vae.config.scaling_factor
        chunks = []
        for i in range(0, len(latents), self.settings.decode_chunk):
            chunk = latents[i : i + self.settings.decode_chunk].to(dtype)
            chunks.append(self.vae.decode(chunk, num_frames=len(chunk)).sample.float())
        return torch.cat(chunks)

    # ------------------------------------------------------------------ the two passes

    def _generator(self, clip_id: str | None) -> torch.Generator:
        state = root_seed_sequence(self.settings.seed, clip_id or "").generate_state(1)[0]
        return torch.Generator("cpu").manual_seed(int(state))

    def reference_identity(self, frame: torch.Tensor, clip_id: str) -> tuple[torch.Tensor | None, bool]:
        """Pass-1 output frame ``(3, S, S)`` in [−1, 1] → ``(ID tokens (1, 49, D) or None, keep the reference)``."""
        tokens, note = self.identity.tokens(((frame + 1) / 2).clamp(0, 1))
        if tokens is None:
            keep = self.settings.no_face == "zero_id"
            what = "zero ID tokens, reference latent kept" if keep else "no ID tokens and no reference"
            message = f"{note}: pass 2 runs with {what}"
            log.warning("svfr, clip %s: %s", clip_id, message)
            self._notes.append((clip_id, message))
            return None, keep
        return tokens.float(), True

    @torch.no_grad()
    def restore_video(self, frames: torch.Tensor, tasks: tuple[str, ...], mask: torch.Tensor | None,
                      clip_id: str, progress=None) -> torch.Tensor:
        """One video ``(T, 3, S, S)`` in [0, 1] (already at the model size) → restored, same shape, in [0, 1]."""
        s = self.settings
        device = next(self.unet.parameters()).device
        frames = prepare_input(frames.to(device).float(), tasks, mask)
        pixels = frames * 2 - 1
        generator = self._generator(clip_id)
        total = len(pixels)
        clean = self.encode(pixels)[None]                          # (1, T, 4, h, w) VAE mode, unscaled
        scaled = clean * self.vae.config.scaling_factor             # the img2img start
        lq_latents = clean                                          # the conditioning: the same, unless noise-augmented
        if s.noise_aug_strength:
            pixels = pixels + s.noise_aug_strength * torch.randn(pixels.shape, generator=generator).to(device)
            lq_latents = self.encode(pixels)[None]
        prompt = task_prompt(tasks).to(device)
        sampler = WindowedSampler(self.unet, self.scheduler, s.sampler(s.steps))
        reference = tokens = None
        if s.srr:
            first = min(s.window, total)
            noise = torch.randn((1, first, *lq_latents.shape[2:]), generator=generator).to(device)
            cond = Conditioning(lq_latents[:, :first], None, None, prompt)
            pass1 = WindowedSampler(self.unet, self.scheduler, s.sampler(s.first_pass_steps))
            latents = pass1.sample(cond, scaled[:, :first], noise, window=first, progress=progress)
            ref_frame = self.decode(latents[0])[s.reference_frame]
            tokens, keep = self.reference_identity(ref_frame, clip_id)
            if keep:
                reference = self.encode(ref_frame[None])  # (1, 4, h, w), unscaled mode
        noise = torch.randn((1, total, *lq_latents.shape[2:]), generator=generator).to(device)
        cond = Conditioning(lq_latents, reference, tokens, prompt)
        latents = sampler.sample(cond, scaled, noise, window=s.window, progress=progress)
        return ((self.decode(latents[0]) + 1) / 2).clamp(0, 1)

    @torch.no_grad()
    def restore(self, lq: torch.Tensor, *, task: str = "bfr", reference=None, mask=None, out_size=None,
                clip_ids=None) -> torch.Tensor:
        """LQ ``(B, T, 3, h, w)`` in [0, 1] → ``(B, T, 3, H, W)`` in [0, 1] (``out_size`` or the input size).

        task: ``bfr``, ``colorization``, ``inpainting`` or a ``+`` combination (``restore.tasks``
        overrides it); mask ``(B, T, 1, h, w)`` bool (inpainting, True = missing) or None.
        ``reference`` is not used: SVFR takes its reference from its own first pass.
        """
        if lq.ndim != 5 or lq.shape[2] != 3:
            raise ValueError(f"svfr: expected LQ (B, T, 3, h, w), got {tuple(lq.shape)}")
        tasks = self.settings.tasks or parse_tasks(task)
        size = tuple(int(v) for v in out_size) if out_size is not None else tuple(lq.shape[-2:])
        model_size = (self.settings.size, self.settings.size)
        outputs = []
        for b in range(lq.shape[0]):
            frames = resize_video(lq[b : b + 1].float(), model_size, mode="bicubic")[0]
            clip_mask = None
            if mask is not None:
                clip_mask = torch.nn.functional.interpolate(mask[b].float(), size=model_size, mode="nearest") > 0.5
            clip_id = clip_ids[b] if clip_ids else f"batch{b}"
            restored = self.restore_video(frames, tasks, clip_mask, clip_id)
            outputs.append(resize_video(restored[None].cpu(), size, mode="bicubic")[0])
        return torch.stack(outputs)


# ---------------------------------------------------------------------- building


def _networks(architecture: Mapping, svd_dir: Path | None, seed: int, unet_device="cpu", arcface_device="cpu",
              projection_device="cpu") -> tuple[nn.Module, nn.Module, nn.Module]:
    """``(unet, arcface, id projection)`` of the architecture; a part whose device is ``"meta"``
    gets placeholders (a weights file fills it), the others seeded random weights."""
    config = unet_config(architecture.get("unet"), svd_dir)
    unet = build_unet(config, unet_device, seed)
    with torch.device(arcface_device):
        torch.manual_seed(seed + 2)
        arcface = IResNet(list(architecture.get("arcface_layers", (3, 13, 30, 3))))
    with torch.device(projection_device):
        torch.manual_seed(seed + 3)
        projection = IDTokenProjection(512, int(config.get("cross_attention_dim", 1024)))
    return unet, arcface, projection


def _needs_svd_dir(architecture: Mapping) -> bool:
    return any(architecture.get(part) is None for part in ("unet", "vae", "scheduler"))


def build_restorer(architecture: Mapping, restore: Mapping | None = None, name: str = "svfr",
                   allow_random_weights: bool = False, arcface: str | Path | None = None, seed: int = 0,
                   pretrained_unet: bool = True) -> SVFRRestorer:
    """The float32 restorer training starts from: SVD-xt's UNet (conv_in widened 8 → 12, new
    channels zero) and VAE, the Glint360K ArcFace (frozen), a fresh ID projection; or seeded
    random networks of the ``architecture`` sizes (``allow_random_weights``, tests)."""
    from fvr_bench.methods.svfr.networks import pretrained_svd_unet

    architecture = dict(plain(architecture) or {})
    settings = RestoreSettings.from_mapping(restore)
    random_parts = [p for p in ("unet", "vae", "scheduler") if architecture.get(p) is not None]
    if random_parts and not allow_random_weights and set(random_parts) - {"scheduler"}:
        raise ConfigError(f"svfr: architecture.{'/'.join(random_parts)} given as constructor arguments builds RANDOM "
                          "weights (tests only); set allow_random_weights: true, or null to use the SVD-xt folder")
    svd_dir = locate_svd_dir(architecture.get("svd_dir")) if _needs_svd_dir(architecture) else None
    arcface_found = weight_registry.find("svfr_arcface_glint360k", arcface) is not None
    from_svd = architecture.get("unet") is None and pretrained_unet
    unet, arcface_net, projection = _networks(architecture, svd_dir, seed, unet_device="meta" if from_svd else "cpu",
                                              arcface_device="meta" if arcface_found else "cpu")
    sources = {"unet": "random (constructor arguments)" if architecture.get("unet") else "random"}
    if from_svd:
        unet = pretrained_svd_unet(svd_dir)
        sources["unet"] = f"{svd_dir}/unet (SVD-xt, conv_in widened to 12)"
    sources["arcface"] = _load_arcface(arcface_net, arcface, allow_random_weights)
    vae = build_vae(architecture.get("vae"), svd_dir, seed=seed).requires_grad_(False)
    scheduler = build_scheduler(architecture.get("scheduler"), svd_dir)
    identity = ReferenceIdentity(arcface_net.requires_grad_(False).eval(), projection, id_crop=settings.id_crop)
    return SVFRRestorer(unet, vae, scheduler, identity, restore=restore, name=name, architecture=architecture,
                        sources=sources)


def _load_arcface(net: nn.Module, explicit: str | Path | None, allow_random_weights: bool, dtype=None) -> str:
    """Load the Glint360K iresnet100 into ``net``; returns the source. Missing file → error,
    unless ``allow_random_weights`` (never silent random weights, unlike the official code)."""
    path = weight_registry.find("svfr_arcface_glint360k", explicit)
    if path is None:
        if not allow_random_weights:
            raise WeightsMissingError(weight_registry.missing_message("svfr_arcface_glint360k", explicit))
        log.warning("svfr: ArcFace for the ID tokens has RANDOM weights (allow_random_weights) — tests only")
        return "random (allow_random_weights)"
    load_state(net, with_bn_counters(net, read_state(path)), str(path), dtype=dtype, assign=True)
    return str(path)


def restorer_state(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """A weights file's entries → ``(restorer-layout state, layout)``: ``"official"`` (the
    release's ``unet.pth``: diffusers UNet keys, prefixed here with ``unet.``), or ``"export"``
    (a training module's ``restorer.*`` or an export's ``unet.*`` / ``identity.projection.*``)."""
    if any(key.startswith("restorer.") for key in state):
        state = {key[len("restorer."):]: value for key, value in state.items() if key.startswith("restorer.")}
    if any(key.startswith("unet.") for key in state):
        return {k: v for k, v in state.items() if k.startswith(TRAINED_PARTS)}, "export"
    return {f"unet.{key}": value for key, value in state.items()}, "official"


def check_export_config(path: Path, architecture: Mapping) -> None:
    """An export's ``restorer.json`` must describe the configured UNet."""
    config_file = path.with_name(EXPORT_CONFIG)
    if path.suffix != ".safetensors" or not config_file.is_file():
        return
    recorded = (json.loads(config_file.read_text()).get("architecture") or {}).get("unet")
    normal = lambda value: json.loads(json.dumps(value))
    if normal(recorded) != normal(architecture.get("unet")):
        raise ConfigError(f"{path}: exported with architecture.unet={recorded!r} ({config_file}); this config has "
                          f"{architecture.get('unet')!r} — use the config the weights were trained with")


def load_restorer(architecture: Mapping, restore: Mapping | None = None, checkpoint: str | Path | None = None,
                  id_projection: str | Path | None = None, arcface: str | Path | None = None, name: str = "svfr",
                  allow_random_weights: bool = False, seed: int = 0, dtype: str = "float16",
                  vae_dtype: str = "float16") -> SVFRRestorer:
    """The ``run`` entry point: SVFR in eval mode, UNet / ArcFace / ID projection in ``dtype``, VAE in ``vae_dtype``.

    ``checkpoint``: the official ``unet.pth`` (default: the weights registry's ``svfr_unet``),
    a training export (``restorer.safetensors``: UNet + ID projection) or a training checkpoint.
    ``id_projection``: the official ``id_linear.pth`` (registry ``svfr_id_linear``), needed
    unless the checkpoint holds the projection. ``arcface``: ``insightface_glint360k.pth``
    (registry ``svfr_arcface_glint360k``). Every missing file is listed in one
    WeightsMissingError before anything is built; nothing is ever left with random weights
    unless ``allow_random_weights`` (tests).
    """
    architecture = dict(plain(architecture) or {})
    settings = RestoreSettings.from_mapping(restore)
    target, target_vae = parse_dtype(dtype, "method.restorer.dtype"), parse_dtype(vae_dtype, "method.restorer.vae_dtype")
    problems: list[str] = []
    path = weight_registry.find("svfr_unet", checkpoint)
    if path is None and not allow_random_weights:
        problems.append(weight_registry.missing_message("svfr_unet", checkpoint)
                        + " (or method.checkpoint=<restorer.safetensors of `python -m fvr_bench train method=svfr`>)")
    state, layout = ({}, "none")
    if path is not None:
        state, layout = restorer_state(read_state(path))
    projection_path = None
    if not any(key.startswith("identity.projection.") for key in state):
        projection_path = weight_registry.find("svfr_id_linear", id_projection)
        if projection_path is None and not allow_random_weights:
            problems.append(weight_registry.missing_message("svfr_id_linear", id_projection))
    if weight_registry.find("svfr_arcface_glint360k", arcface) is None and not allow_random_weights:
        problems.append(weight_registry.missing_message("svfr_arcface_glint360k", arcface))
    svd_dir = None
    if _needs_svd_dir(architecture):
        try:
            svd_dir = locate_svd_dir(architecture.get("svd_dir"))
        except WeightsMissingError as error:
            problems.append(f"{error} (or set method.architecture.svd_dir=<folder>)")
    if problems:
        raise WeightsMissingError("svfr cannot run:\n- " + "\n- ".join(problems))
    if architecture.get("unet") is not None and not allow_random_weights and path is None:
        raise ConfigError("svfr: random UNet weights need allow_random_weights: true (tests only)")

    arcface_found = weight_registry.find("svfr_arcface_glint360k", arcface) is not None
    projection_state = {k[len("identity.projection."):]: v for k, v in state.items() if k.startswith("identity.projection.")}
    unet, arcface_net, projection = _networks(
        architecture, svd_dir, seed, unet_device="meta" if path is not None else "cpu",
        arcface_device="meta" if arcface_found else "cpu",
        projection_device="meta" if projection_state or projection_path is not None else "cpu")
    if path is None:
        log.warning("svfr: no UNet weights — RANDOM networks (allow_random_weights), tests only")
    sources = {"unet": f"{path} ({layout} layout)" if path is not None else "random (allow_random_weights)"}
    if path is not None:
        if layout == "export":
            check_export_config(path, architecture)
        unet_state = {k[len("unet."):]: v for k, v in state.items() if k.startswith("unet.")}
        load_state(unet, unet_state, str(path), dtype=target, assign=True)
    if projection_state:
        load_state(projection, projection_state, str(path), dtype=target, assign=True)
        sources["id_projection"] = str(path)
    elif projection_path is not None:
        load_state(projection, read_state(projection_path), str(projection_path), dtype=target, assign=True)
        sources["id_projection"] = str(projection_path)
    else:
        sources["id_projection"] = "random (allow_random_weights)"
    sources["arcface"] = _load_arcface(arcface_net, arcface, allow_random_weights, dtype=target)
    vae = build_vae(architecture.get("vae"), svd_dir, dtype=target_vae, seed=seed)
    scheduler = build_scheduler(architecture.get("scheduler"), svd_dir)
    identity = ReferenceIdentity(arcface_net, projection, id_crop=settings.id_crop)
    restorer = SVFRRestorer(unet, vae, scheduler, identity, restore=restore, name=name, architecture=architecture,
                            sources=sources)
    restorer.eval().requires_grad_(False)
    # nn.Module.to: diffusers' ModelMixin.to warns about float32 islands these models do not have
    for net, net_dtype in ((unet, target), (arcface_net, target), (projection, target), (vae, target_vae)):
        nn.Module.to(net, net_dtype)
    return restorer


__all__ = ["RestoreSettings", "SVFRRestorer", "build_restorer", "load_restorer"]
