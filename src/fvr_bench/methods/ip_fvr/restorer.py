"""The IP-FVR restorer: VEnhancer-style SDEdit restoration guided by a reference face.

    x    = LQ frames resized to the output size, padded (white, as VEnhancer) to a size the
           UNet's resampling quirks accept
    z_l  = 0.18215 · VAE posterior sample of x               (the latents the ControlNet sees,
           diffused to t_hint = noise_aug − 1, and SDEdit's start, diffused to t = 899)
    text = Face2Text(reference) ⊕ VEnhancer's quality prompts → OpenCLIP ViT-H text tower
    c_i  = face identity embedding of the reference(s) → image tokens (decoupled cross-attention)
    per clip of 24 frames (overlap 8, shared noise, exponential blending), DPM-Solver++(2M) SDE:
        v = (1 + w_nt + w_nv)·v(pos text, c_i) − w_nt·v(neg text, c_i) − w_nv·v(pos text, c̃_i)
    x̂    = VAE decode of the stitched latents, padding cropped

:class:`IPFVRRestorer` is a plain ``nn.Module`` with injected networks; :func:`load_restorer`
(``method.restorer``) builds it for ``run``, :func:`build_restorer` for training (float32).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fvr_bench import weights as weight_registry
from fvr_bench.degradations.base import root_seed_sequence
from fvr_bench.errors import ConfigError, WeightsMissingError
from fvr_bench.methods.base import NetworkRestorer, known_options, parse_dtype, plain, resize_video
from fvr_bench.methods.ip_fvr.backbone import build_unet, nearest_legal_latent_size
from fvr_bench.methods.ip_fvr.controlnet import VideoControlNet
from fvr_bench.methods.ip_fvr.face2text import Face2Text, negative, with_quality
from fvr_bench.methods.ip_fvr.image_prompt import (
    FaceImageEncoder,
    ImagePromptProjection,
    join_context,
    load_image_prompt_state,
    set_decoupled_attention,
    set_scale,
)
from fvr_bench.methods.ip_fvr.long_video import ExponentialBlender, SharedStepNoise, clip_spans, stitch
from fvr_bench.methods.ip_fvr.sampler import cfg_with_rescale, multi_stream_guidance, venhancer_sample
from fvr_bench.methods.ip_fvr.schedule import NoiseSchedule
from fvr_bench.methods.ip_fvr.text import TextEncoder, load_open_clip_text
from fvr_bench.state_dicts import read_state

log = logging.getLogger(__name__)

GUIDANCE = ("multi_stream", "venhancer_cfg")
PADDING = ("legal", "venhancer_720x1280")
BLENDING = ("literal", "aligned")
VAE_KINDS = ("svd", "sd21")


@dataclass(frozen=True)
class RestoreSettings:
    """``method.restore`` of conf/method/ip_fvr.yaml. Paper values where it gives them (F = 24,
    O = 8, w_nt = w_nv = 0.5); VEnhancer's where it does not (t_start 899, noise_aug 250,
    s_cond 8, fast solver: 14 model evaluations, η = 1)."""

    clip_frames: int = 24
    clip_overlap: int = 8
    blending: str = "literal"         # literal (paper Eq. 10 indices) | aligned (temporally matching frames)
    stitch: str = "earlier"           # which clip keeps an overlap frame: earlier | later | middle
    t_start: int = 899                # SDEdit start
    noise_aug: int = 250              # hint noise level t_hint = noise_aug − 1
    s_cond: float = 8.0               # the ControlNet's scale condition (VEnhancer Aug/Sep code)
    solver_mode: str = "fast"         # fast (14 evaluations) | normal (`steps`)
    steps: int = 45
    eta: float = 1.0
    guidance: str = "multi_stream"    # multi_stream (paper Eq. 11) | venhancer_cfg (7.5, rescale 0.2)
    w_nt: float = 0.5
    w_nv: float = 0.5
    guide_scale: float = 7.5
    guide_rescale: float = 0.2
    ip_scale: float = 1.0             # λ of the decoupled cross-attention
    actions: tuple[str, ...] = ()     # manually labelled facial actions (the paper labels them by hand)
    reference_degradation: int = 4    # c̃_i: the reference ↓ this factor and ↑ back (bicubic)
    padding: str = "legal"            # legal (smallest size the UNet accepts) | venhancer_720x1280 (official)
    decode_chunk: int = 8
    native_scale: int = 4             # output = this × the LQ size when no out_size is asked (YouRef: r = 4)
    batch_streams: bool = True        # the guidance streams in one batch (False: one after the other, less memory)
    seed: int = 0

    @classmethod
    def from_mapping(cls, restore: Mapping | None) -> RestoreSettings:
        values = known_options(cls, restore, "ip_fvr method.restore")
        values["actions"] = tuple(values.get("actions") or ())
        settings = cls(**values)
        for option, value, choices in (("guidance", settings.guidance, GUIDANCE), ("padding", settings.padding, PADDING),
                                       ("blending", settings.blending, BLENDING)):
            if value not in choices:
                raise ConfigError(f"ip_fvr: method.restore.{option}={value!r}; one of {', '.join(choices)}")
        return settings


def _pad_white(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(T, 3, H, W)`` in [−1, 1] → bottom/right padded with white (+1) to ``size`` (VEnhancer pads white)."""
    pad_h, pad_w = size[0] - frames.shape[-2], size[1] - frames.shape[-1]
    return F.pad(frames, (0, pad_w, 0, pad_h), value=1.0)


class IPFVRRestorer(NetworkRestorer):
    """IP-FVR inference on injected networks.

    unet: VEnhancer-compatible ``UNet3DConditionModel`` with decoupled attention processors on
    its spatial ``attn2`` (and an identity LoRA when ``method.identity`` is set); controlnet:
    :class:`.controlnet.VideoControlNet`; vae: SVD temporal-decoder or SD-2.1 VAE; text:
    :class:`.text.TextEncoder`; image_encoder: :class:`.image_prompt.FaceImageEncoder`;
    face2text: :class:`.face2text.Face2Text`. Frames ``(B, T, 3, H, W)`` in [0, 1];
    latents ``(1, 4, T, h, w)``.
    """

    def __init__(self, unet, controlnet, vae, text: TextEncoder, image_encoder: FaceImageEncoder | None,
                 face2text: Face2Text, *, restore: Mapping | None = None, name: str = "ip_fvr",
                 architecture: Mapping | None = None, sources: Mapping | None = None, latent_factor: int = 8,
                 downsamples: int = 3) -> None:
        super().__init__()
        self.name = name
        self.unet, self.controlnet, self.vae, self.text = unet, controlnet, vae, text
        self.image_encoder = image_encoder
        self.face2text = face2text
        self.schedule = NoiseSchedule()
        self.settings = RestoreSettings.from_mapping(restore)
        self.architecture = dict(plain(architecture) or {})
        self.sources = dict(sources or {})
        self.latent_factor, self.downsamples = int(latent_factor), int(downsamples)
        self.size_multiple = self.latent_factor
        self._notes: list[tuple[str, str]] = []
        if image_encoder is not None:
            set_scale(unet, self.settings.ip_scale)

    # ------------------------------------------------------------------ bookkeeping

    def export_config(self) -> dict[str, Any]:
        return {"method": "ip_fvr", "architecture": {k: self.architecture.get(k) for k in ("unet", "image_tokens")}}

    def provenance(self) -> dict[str, Any]:
        return {"method": self.name, "restore": asdict(self.settings), "weights": dict(self.sources),
                "image_prompt": self.image_encoder is not None}

    def take_notes(self) -> list[tuple[str, str]]:
        notes, self._notes = self._notes, []
        return notes

    @property
    def num_image_tokens(self) -> int:
        return self.image_encoder.projection.num_tokens if self.image_encoder is not None else 0

    # ------------------------------------------------------------------ sizes and VAE

    def model_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """The padded pixel size the networks run at for an output ``size``."""
        h, w = size
        if self.settings.padding == "venhancer_720x1280":
            h, w = max(h, 720), max(w, 1280)
        lat = nearest_legal_latent_size(-(-h // self.latent_factor), -(-w // self.latent_factor), self.downsamples)
        return lat[0] * self.latent_factor, lat[1] * self.latent_factor

    def encode(self, pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``(T, 3, H, W)`` in [−1, 1] → scaled posterior samples ``(1, 4, T, h, w)`` (VEnhancer samples)."""
        dtype = next(self.vae.parameters()).dtype
        chunks = []
        for i in range(0, len(pixels), self.settings.decode_chunk):
            dist = self.vae.encode(pixels[i : i + self.settings.decode_chunk].to(dtype)).latent_dist
            noise = torch.randn(dist.mean.shape, generator=generator).to(dist.mean)
            chunks.append((dist.mean + dist.std * noise).float())
        return (torch.cat(chunks) * self.vae.config.scaling_factor).permute(1, 0, 2, 3)[None]

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """``(1, 4, T, h, w)`` → frames ``(T, 3, H, W)`` in [−1, 1]."""
        dtype = next(self.vae.parameters()).dtype
        z = latents[0].permute(1, 0, 2, 3) / self.vae.config.scaling_factor
        out = []
        for i in range(0, len(z), self.settings.decode_chunk):
            chunk = z[i : i + self.settings.decode_chunk].to(dtype)
            kwargs = {"num_frames": len(chunk)} if "num_frames" in inspect.signature(self.vae.decode).parameters else {}
            out.append(self.vae.decode(chunk, **kwargs).sample.float())
        return torch.cat(out)

    # ------------------------------------------------------------------ conditioning

    def degraded_reference(self, reference: torch.Tensor) -> torch.Tensor:
        """c̃_i's input: the reference ``(R, 3, H, W)`` bicubic ↓ ``reference_degradation`` and ↑ back."""
        factor = self.settings.reference_degradation
        h, w = reference.shape[-2:]
        small = resize_video(reference[None], (max(1, h // factor), max(1, w // factor)))
        return resize_video(small, (h, w))[0]

    def streams(self, reference: torch.Tensor | None, clip_id: str) -> tuple[list[torch.Tensor], list[str]]:
        """The UNet contexts ``[text; image tokens]`` of each guidance stream, and their names."""
        s = self.settings
        positive, negative_text, note = self.face2text.prompts(reference, s.actions)
        if note:
            self._notes.append((clip_id, note))
        text_pos = self.text.encode([with_quality(positive, positive=True)])
        if s.guidance == "venhancer_cfg":
            text_neg = self.text.encode([with_quality("", positive=False)])
        else:
            text_neg = self.text.encode([with_quality(negative_text or negative(None), positive=False)])
        n = self.num_image_tokens
        if reference is None or self.image_encoder is None:
            if self.image_encoder is not None:
                self._notes.append((clip_id, "no reference image: the image prompt is off for this clip"))
            contexts = [join_context(text_pos, None, n) if n else text_pos, join_context(text_neg, None, n) if n else text_neg]
            return contexts, ["pos", "neg_text"]
        image = self.image_encoder(reference).to(text_pos)
        image_degraded = self.image_encoder(self.degraded_reference(reference)).to(text_pos)
        if s.guidance == "venhancer_cfg":
            return [join_context(text_pos, image), join_context(text_neg, image)], ["pos", "neg_text"]
        return ([join_context(text_pos, image), join_context(text_neg, image), join_context(text_pos, image_degraded)],
                ["pos", "neg_text", "neg_visual"])

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, contexts: list[torch.Tensor], hint: torch.Tensor) -> torch.Tensor:
        """Guided v ``(1, 4, F, h, w)``: the guidance streams through ControlNet + UNet (one batch,
        or one stream at a time with ``batch_streams: false``)."""
        s = self.settings
        groups = [contexts] if s.batch_streams else [[c] for c in contexts]
        out = torch.cat([self._streams(x_t, t, group, hint) for group in groups])
        if s.guidance == "venhancer_cfg":
            return cfg_with_rescale(out[0:1], out[1:2], s.guide_scale, s.guide_rescale)
        if len(contexts) == 2:  # no reference: no negative visual stream
            return multi_stream_guidance(out[0:1], out[1:2], out[0:1], s.w_nt, 0.0)
        return multi_stream_guidance(out[0:1], out[1:2], out[2:3], s.w_nt, s.w_nv)

    def _streams(self, x_t: torch.Tensor, t: torch.Tensor, contexts: list[torch.Tensor], hint: torch.Tensor) -> torch.Tensor:
        """Unguided v of each context ``(S, 4, F, h, w)`` float32, the S streams as one batch."""
        s = self.settings
        dtype = self.unet.dtype
        streams = len(contexts)
        sample = x_t.expand(streams, *x_t.shape[1:]).to(dtype)
        timestep = t.to(x_t.device).reshape(-1)[:1].expand(streams)
        context = torch.cat(contexts).to(dtype)
        text_only = context[:, : context.shape[1] - self.num_image_tokens] if self.num_image_tokens else context
        hint_t = torch.full((streams,), s.noise_aug - 1, device=x_t.device)
        down, mid = self.controlnet(sample, timestep, text_only, hint=hint.expand(streams, *hint.shape[1:]).to(dtype),
                                    hint_timestep=hint_t, scale=torch.full((streams,), s.s_cond, device=x_t.device))
        return self.unet(sample, timestep, encoder_hidden_states=context, down_block_additional_residuals=down,
                         mid_block_additional_residual=mid, return_dict=False)[0].float()

    # ------------------------------------------------------------------ restore

    def _seed(self, clip_id: str) -> int:
        return int(root_seed_sequence(self.settings.seed, clip_id).generate_state(1)[0])

    @torch.no_grad()
    def restore_video(self, frames: torch.Tensor, reference: torch.Tensor | None, size: tuple[int, int],
                      clip_id: str) -> torch.Tensor:
        """One video ``(T, 3, h, w)`` in [0, 1] (+ reference ``(R, 3, Hr, Wr)``) → ``(T, 3, *size)`` in [0, 1]."""
        s = self.settings
        device = next(self.unet.parameters()).device
        seed = self._seed(clip_id)
        generator = torch.Generator("cpu").manual_seed(seed)
        pixels = resize_video(frames[None].float(), size)[0].to(device) * 2 - 1
        pixels = _pad_white(pixels, self.model_size(size))
        latents = self.encode(pixels, generator)                          # (1, 4, T, h, w)
        total = latents.shape[2]
        hint = self.schedule.diffuse(latents, s.noise_aug - 1, torch.randn(latents.shape, generator=generator).to(latents))
        start = self.schedule.diffuse(latents, s.t_start, torch.randn(latents.shape, generator=generator).to(latents))
        contexts, _ = self.streams(None if reference is None else reference.to(device), clip_id)
        spans = clip_spans(total, s.clip_frames, s.clip_overlap)
        blender = ExponentialBlender(spans, s.clip_frames, s.clip_overlap, mode=s.blending)
        step_noise = SharedStepNoise(latents.shape, seed + 1, device=device)
        clips = []
        for index, (first, stop) in enumerate(spans):
            hint_clip = hint[:, :, first:stop]
            clips.append(venhancer_sample(
                lambda x, t, hint_clip=hint_clip: self.velocity(x, t, contexts, hint_clip),
                start[:, :, first:stop], self.schedule, t_start=s.t_start, solver_mode=s.solver_mode, steps=s.steps,
                eta=s.eta, noise_sampler=step_noise.for_clip((first, stop)), step_hook=blender.hook(index)))
        restored = stitch(clips, spans, total, mode=s.stitch)
        out = self.decode(restored)[:, :, : size[0], : size[1]]
        return ((out + 1) / 2).clamp(0, 1)

    @torch.no_grad()
    def restore(self, lq: torch.Tensor, *, task: str = "bfr", reference=None, mask=None, out_size=None,
                clip_ids=None) -> torch.Tensor:
        """LQ ``(B, T, 3, h, w)`` in [0, 1] → ``(B, T, 3, H, W)`` (``out_size`` or ``native_scale`` × the input). ``reference``: ``(B, 3, Hr, Wr)`` or ``(B, R, 3, Hr, Wr)`` face images or None."""
        if task != "bfr":
            raise ConfigError(f"ip_fvr restores blind face restoration (task 'bfr') only, not {task!r}")
        if lq.ndim != 5 or lq.shape[2] != 3:
            raise ValueError(f"ip_fvr: expected LQ (B, T, 3, h, w), got {tuple(lq.shape)}")
        scale = self.settings.native_scale
        size = tuple(int(v) for v in out_size) if out_size is not None else (lq.shape[-2] * scale, lq.shape[-1] * scale)
        outputs = []
        for b in range(lq.shape[0]):
            ref = None
            if reference is not None:
                ref = reference[b]
                ref = ref[None] if ref.ndim == 3 else ref
            clip_id = clip_ids[b] if clip_ids else f"batch{b}"
            outputs.append(self.restore_video(lq[b], ref, size, clip_id).cpu())
        return torch.stack(outputs)


# ---------------------------------------------------------------------- building


class RandomFaceEmbedder(nn.Module):
    """Test-only stand-in for the ArcFace reference embedder: a seeded random conv net,
    ``(R, 3, H, W)`` [0, 1] → ``(R, 512)`` unit vectors (differentiable, for the reward tests)."""

    def __init__(self, seed: int = 0, dim: int = 512) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(3, 8, 3, stride=2)
        self.fc = nn.Linear(8, dim)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
        self.requires_grad_(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(images.float(), size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
        return F.normalize(self.fc(F.silu(self.conv(x)).mean(dim=(2, 3))), dim=-1)


def _vae(architecture: Mapping, dtype: torch.dtype, seed: int) -> tuple[nn.Module, str, int]:
    """``(vae, source, spatial factor)``: constructor arguments (random, tests) or the SVD / SD-2.1 folder."""
    from diffusers import AutoencoderKL, AutoencoderKLTemporalDecoder

    spec = architecture.get("vae")
    if spec is not None:
        spec = dict(spec)
        kind = spec.pop("class", "temporal")
        torch.manual_seed(seed + 1)
        vae = (AutoencoderKLTemporalDecoder if kind == "temporal" else AutoencoderKL)(**spec)
        return vae, "random (constructor arguments)", 2 ** (len(spec.get("block_out_channels", (1,))) - 1)
    kind = architecture.get("vae_kind", "svd")
    if kind not in VAE_KINDS:
        raise ConfigError(f"ip_fvr: architecture.vae_kind={kind!r}; one of {', '.join(VAE_KINDS)}")
    if kind == "svd":
        folder = weight_registry.locate("svd_xt_diffusers", architecture.get("svd_dir"))
        variant = "fp16" if any((folder / "vae").glob("*.fp16.*")) else None
        return (AutoencoderKLTemporalDecoder.from_pretrained(folder, subfolder="vae", variant=variant, torch_dtype=dtype),
                f"{folder}/vae", 8)
    folder = weight_registry.locate("sd21_vae_diffusers", architecture.get("sd21_vae_dir"))
    return AutoencoderKL.from_pretrained(folder, torch_dtype=dtype), str(folder), 8


def _text(architecture: Mapping, explicit: str | None, dtype: torch.dtype) -> tuple[TextEncoder, str]:
    config = architecture.get("text_encoder")
    if config is not None:  # test sizes: seeded random
        torch.manual_seed(7)
        return TextEncoder(dict(config)), "random (constructor arguments)"
    path = weight_registry.locate("open_clip_vit_h14_laion2b", explicit)
    return load_open_clip_text(path, dtype=dtype), str(path)


def missing_files(architecture: Mapping, checkpoint, image_prompt, text_encoder, allow_random_weights: bool) -> list[str]:
    """Every declared file this configuration needs that is not here (one message, before building)."""
    needs = []
    if architecture.get("unet") is None:
        needs.append(("venhancer_v2" if architecture.get("venhancer", "v2") == "v2" else "venhancer_paper", checkpoint))
    if architecture.get("text_encoder") is None:
        needs.append(("open_clip_vit_h14_laion2b", text_encoder))
    if architecture.get("vae") is None:
        kind = architecture.get("vae_kind", "svd")
        needs.append(("svd_xt_diffusers" if kind == "svd" else "sd21_vae_diffusers",
                      architecture.get("svd_dir") if kind == "svd" else architecture.get("sd21_vae_dir")))
    if image_prompt not in (None, "none") and not (allow_random_weights and image_prompt == "random"):
        needs.append(("ip_fvr_image_prompt", None if image_prompt == "registry" else image_prompt))
    problems = []
    for name, explicit in needs:
        if weight_registry.find(name, explicit) is None:
            problems.append(weight_registry.missing_message(name, explicit))
    return problems


def _assemble(architecture: Mapping, restore: Mapping | None, name: str, checkpoint, image_prompt, text_encoder,
              identity: str | None, identity_dir, allow_random_weights: bool, seed: int, dtype: torch.dtype,
              face_embedder=None) -> IPFVRRestorer:
    from fvr_bench.methods.ip_fvr.official import load_venhancer

    architecture = dict(plain(architecture) or {})
    problems = missing_files(architecture, checkpoint, image_prompt, text_encoder, allow_random_weights)
    if problems:
        raise WeightsMissingError("ip_fvr cannot run:\n- " + "\n- ".join(problems))
    if architecture.get("unet") is not None and not allow_random_weights:
        raise ConfigError("ip_fvr: architecture.unet given as constructor arguments builds RANDOM weights (tests only); "
                          "set allow_random_weights: true, or null to load VEnhancer")
    from fvr_bench.methods.ip_fvr.backbone import VENHANCER_UNET

    unet_config = dict(architecture.get("unet") or VENHANCER_UNET)
    sources: dict[str, str] = {}
    paper = architecture.get("unet") is None
    with torch.device("meta") if paper else torch.device("cpu"):
        torch.manual_seed(seed)
        unet = build_unet(unet_config)
        controlnet = VideoControlNet.from_unet(unet)
    if paper:
        name_v = "venhancer_v2" if architecture.get("venhancer", "v2") == "v2" else "venhancer_paper"
        path = weight_registry.locate(name_v, checkpoint)
        load_venhancer(path, unet, controlnet, dtype=dtype)
        sources["venhancer"] = str(path)
    else:
        sources["venhancer"] = "random (constructor arguments)"
    image_encoder = None
    if image_prompt not in (None, "none"):
        tokens = int(architecture.get("image_tokens", 4))
        set_decoupled_attention(unet, num_tokens=tokens)
        projection = ImagePromptProjection(512, unet.config.cross_attention_dim, tokens)
        if face_embedder is None:
            if architecture.get("face_embedder") == "random":
                face_embedder = RandomFaceEmbedder(seed)
            else:
                from fvr_bench.methods.ip_fvr.image_prompt import (
                    ArcFaceReferenceEmbedder,
                )

                face_embedder = ArcFaceReferenceEmbedder()
        image_encoder = FaceImageEncoder(projection, face_embedder)
        if image_prompt == "random":
            sources["image_prompt"] = "random (allow_random_weights): the decoupled attention is untrained"
        else:
            path = weight_registry.locate("ip_fvr_image_prompt", None if image_prompt == "registry" else image_prompt)
            load_image_prompt_state(unet, projection, read_state(path), str(path))
            sources["image_prompt"] = str(path)
    if identity:
        from fvr_bench.methods.ip_fvr.lora import load_identity_lora

        load_identity_lora(unet, Path(identity_dir), identity)
        sources["identity_lora"] = f"{Path(identity_dir) / identity}"
    vae, sources["vae"], factor = _vae(architecture, dtype, seed)
    text, sources["text_encoder"] = _text(architecture, text_encoder, dtype)
    downsamples = sum(1 for block in unet.down_blocks if getattr(block, "downsamplers", None))
    face2text = _face2text(architecture)
    return IPFVRRestorer(unet, controlnet, vae, text, image_encoder, face2text, restore=restore, name=name,
                         architecture=architecture, sources=sources, latent_factor=factor, downsamples=downsamples)


def _face2text(architecture: Mapping) -> Face2Text:
    """Face2Text with the user's classifier files when both are found (TorchScript), else its named default."""
    from fvr_bench.methods.ip_fvr.face2text import (
        attribute_classifier,
        emotion_classifier,
    )

    found = {name: weight_registry.find(name) for name in ("face2text_attributes", "face2text_emotion")}
    attribute = emotion = None
    if found["face2text_attributes"] is not None:
        attribute = attribute_classifier(torch.jit.load(str(found["face2text_attributes"]), map_location="cpu").eval())
    if found["face2text_emotion"] is not None:
        emotion = emotion_classifier(torch.jit.load(str(found["face2text_emotion"]), map_location="cpu").eval())
    return Face2Text(attribute, emotion, default_prompt=architecture.get("default_prompt", "a good video"))


def load_restorer(architecture: Mapping, restore: Mapping | None = None, checkpoint: str | None = None,
                  image_prompt: str | None = "registry", text_encoder: str | None = None, identity: str | None = None,
                  identity_dir: str | None = None, name: str = "ip_fvr", allow_random_weights: bool = False,
                  seed: int = 0, dtype: str = "float16", vae_dtype: str = "float16",
                  face_embedder=None) -> IPFVRRestorer:
    """The ``run`` entry point (eval mode, no gradients).

    checkpoint: ``venhancer_v2.pt`` / ``venhancer_paper.pt`` (registry, ``architecture.venhancer``);
    image_prompt: ``registry`` (``ip_fvr_image_prompt.safetensors``), a path, ``none`` (run
    without the image prompt: VEnhancer + Face2Text + negative text guidance) or ``random``
    (tests); identity: a per-identity LoRA under ``identity_dir``.
    """
    target, target_vae = parse_dtype(dtype, "method.restorer.dtype"), parse_dtype(vae_dtype, "method.restorer.vae_dtype")
    restorer = _assemble(architecture, restore, name, checkpoint, image_prompt, text_encoder, identity, identity_dir,
                         allow_random_weights, seed, target, face_embedder)
    restorer.eval().requires_grad_(False)
    for net in (restorer.unet, restorer.controlnet, restorer.text):
        nn.Module.to(net, target)
    nn.Module.to(restorer.vae, target_vae)
    if restorer.image_encoder is not None:
        nn.Module.to(restorer.image_encoder, target)
    return restorer


def build_restorer(architecture: Mapping, restore: Mapping | None = None, checkpoint: str | None = None,
                   image_prompt: str | None = "registry", text_encoder: str | None = None, name: str = "ip_fvr",
                   allow_random_weights: bool = False, seed: int = 0, face_embedder=None) -> IPFVRRestorer:
    """The float32 restorer a training stage starts from (no identity LoRA: the stage adds its own)."""
    return _assemble(architecture, restore, name, checkpoint, image_prompt, text_encoder, None, None,
                     allow_random_weights, seed, torch.float32, face_embedder)


__all__ = ["IPFVRRestorer", "RestoreSettings", "build_restorer", "load_restorer"]
