"""IP-FVR's image prompt: decoupled cross-attention (paper Eq. 4) and the face-token encoder.

``Z' = Attention(Q, K_t, V_t) + λ · Attention(Q, K_i, V_i)`` — IP-Adapter's decoupled
cross-attention "integrated into the 2D framework of the vanilla VLDM", i.e. on the **spatial**
cross-attention layers of the UNet; the temporal transformers keep their stock processors.

Context layout. ``UNet3DConditionModel`` ``repeat_interleave``s ``encoder_hidden_states`` over
frames, so the image tokens cannot travel as a separate tuple: they are concatenated after the text
tokens, ``[text (77); image (N)]`` → ``(B, 77 + N, D)``, and every :class:`DecoupledAttnProcessor`
splits off the last ``N`` (:func:`join_context` builds it). Image tokens of zeros contribute exactly
nothing (``to_k_ip`` / ``to_v_ip`` have no bias, so ``V_i = 0``): :func:`join_context` with no image
gives the plain text model whatever λ.

Image tokens. The paper never names its face encoder, the token count or the projection. Here: a
face-identity embedding (512-d; default this project's ArcFace IR-SE50 on MTCNN-aligned 112²
crops, :class:`ArcFaceReferenceEmbedder`) → ``Linear(512, N·D)`` → reshape → ``LayerNorm(D)``
(IP-Adapter's ``ImageProjModel``), ``N = 4`` by default. Several reference images give one
identity: the L2-normalised mean of their L2-normalised embeddings (the IP-FVR README: more
references, better identity). The degraded reference of the negative visual stream (Eq. 12,
``c̃_i``) goes through the same path.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fvr_bench.errors import ConfigError

DEFAULT_NUM_TOKENS = 4  # IP-Adapter's token count; IP-FVR states none
FACE_EMBED_DIM = 512
# spatial cross-attention of the UNet (and of a ControlNet copy with the same module names):
# down_blocks.i / mid_block / up_blocks.i → attentions.j (not temp_attentions) → attn2
SPATIAL_ATTN2 = re.compile(r"(^|\.)(down_blocks\.\d+|mid_block|up_blocks\.\d+)\.attentions\.\d+\.transformer_blocks\.\d+\.attn2$")

FaceEmbedder = Callable[[torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------------- attention


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``(B, L, heads·d)`` → ``(B, heads, L, d)``."""
    batch, length, inner = x.shape
    return x.view(batch, length, heads, inner // heads).transpose(1, 2)


class DecoupledAttnProcessor(nn.Module):
    """Decoupled cross-attention processor for a diffusers ``Attention`` layer (Eq. 4).

    ``hidden_size``: the layer's inner dim (``attn.to_k.out_features``); ``cross_attention_dim``:
    the context's D; ``num_tokens``: N image tokens at the end of the context; ``scale``: λ.
    ``to_k_ip`` / ``to_v_ip`` (``Linear(D, hidden_size, bias=False)``) are the trainable image
    K/V. Being an ``nn.Module`` set as ``attn.processor``, they are saved with the UNet
    (``…attn2.processor.to_k_ip.weight``) — the same layout as diffusers' IP-Adapter.
    """

    def __init__(self, hidden_size: int, cross_attention_dim: int, num_tokens: int = DEFAULT_NUM_TOKENS,
                 scale: float = 1.0) -> None:
        super().__init__()
        if num_tokens < 1:
            raise ConfigError(f"decoupled attention needs at least one image token, got {num_tokens}")
        self.hidden_size = int(hidden_size)
        self.cross_attention_dim = int(cross_attention_dim)
        self.num_tokens = int(num_tokens)
        self.scale = float(scale)
        self.to_k_ip = nn.Linear(cross_attention_dim, hidden_size, bias=False)
        self.to_v_ip = nn.Linear(cross_attention_dim, hidden_size, bias=False)

    def split(self, encoder_hidden_states: torch.Tensor | tuple) -> tuple[torch.Tensor, torch.Tensor]:
        """``[text; image]`` ``(B, L + N, D)`` (or a ``(text, image)`` tuple) → ``(text, image)``."""
        if isinstance(encoder_hidden_states, tuple):
            text, image = encoder_hidden_states
            return text, image
        if encoder_hidden_states.shape[1] <= self.num_tokens:
            raise ConfigError(f"decoupled attention: the context has {encoder_hidden_states.shape[1]} tokens, expected "
                              f"[text; {self.num_tokens} image tokens] (build it with join_context)")
        end = encoder_hidden_states.shape[1] - self.num_tokens
        return encoder_hidden_states[:, :end], encoder_hidden_states[:, end:]

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | tuple | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 **kwargs) -> torch.Tensor:
        """diffusers' processor protocol; ``hidden_states`` ``(B, S, C)`` or ``(B, C, H, W)``.
        Extra keyword arguments (``cross_attention_kwargs``) are accepted and ignored."""
        if encoder_hidden_states is None:
            raise ConfigError("DecoupledAttnProcessor is for cross-attention layers (attn2); it got no context")
        text, image = self.split(encoder_hidden_states)
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch = hidden_states.shape[0]
        if attention_mask is not None:
            # the mask is over the text tokens (as in diffusers' IP-Adapter); image tokens are unmasked
            attention_mask = attn.prepare_attention_mask(attention_mask, text.shape[1], batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if attn.norm_cross:
            text = attn.norm_encoder_hidden_states(text)
        query = _heads(query, attn.heads)
        key, value = _heads(attn.to_k(text), attn.heads), _heads(attn.to_v(text), attn.heads)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False)
        if self.scale != 0.0:  # λ = 0: exactly the text-only layer, and no wasted work
            key_ip = _heads(self.to_k_ip(image.to(query.dtype)), attn.heads)
            value_ip = _heads(self.to_v_ip(image.to(query.dtype)), attn.heads)
            if attn.norm_k is not None:
                key_ip = attn.norm_k(key_ip)
            out = out + self.scale * F.scaled_dot_product_attention(query, key_ip, value_ip, dropout_p=0.0,
                                                                     is_causal=False)
        hidden_states = out.transpose(1, 2).reshape(batch, -1, out.shape[1] * out.shape[3]).to(query.dtype)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))  # linear, dropout
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def spatial_cross_attention_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Module name → ``Attention`` of every spatial cross-attention (``…attentions.*.…attn2``)."""
    from diffusers.models.attention_processor import Attention

    return {name: module for name, module in model.named_modules()
            if isinstance(module, Attention) and SPATIAL_ATTN2.search(name)}


def set_decoupled_attention(unet: nn.Module, num_tokens: int = DEFAULT_NUM_TOKENS,
                            scale: float = 1.0) -> dict[str, DecoupledAttnProcessor]:
    """Install a :class:`DecoupledAttnProcessor` on every spatial cross-attention ``attn2`` of
    ``unet`` (down / mid / up blocks); ``transformer_in``, ``temp_attentions`` and all ``attn1``
    keep their processors. ``to_k_ip`` / ``to_v_ip`` start as copies of the layer's ``to_k`` /
    ``to_v`` (IP-Adapter practice: the image branch starts as a text-like attention over the image
    tokens). Returns layer name → processor."""
    layers = spatial_cross_attention_layers(unet)
    if not layers:
        raise ConfigError(f"{type(unet).__name__} has no spatial cross-attention layer "
                          f"(…attentions.*.transformer_blocks.*.attn2)")
    installed = {}
    for name, attn in layers.items():
        if not attn.is_cross_attention:
            raise ConfigError(f"{name} is not a cross-attention layer")
        weight = attn.to_k.weight
        processor = DecoupledAttnProcessor(attn.to_k.out_features, attn.to_k.in_features, num_tokens, scale)
        processor.to(device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            processor.to_k_ip.weight.copy_(attn.to_k.weight)
            processor.to_v_ip.weight.copy_(attn.to_v.weight)
        attn.set_processor(processor)
        installed[name] = processor
    return installed


def decoupled_processors(model: nn.Module) -> dict[str, DecoupledAttnProcessor]:
    """Layer name → installed :class:`DecoupledAttnProcessor`."""
    return {name: attn.processor for name, attn in spatial_cross_attention_layers(model).items()
            if isinstance(attn.processor, DecoupledAttnProcessor)}


def set_scale(unet: nn.Module, scale: float) -> int:
    """Set λ on every decoupled processor of ``unet``; returns how many. None installed is a
    :class:`ConfigError` (a silent no-op would hide a missing image prompt)."""
    processors = decoupled_processors(unet)
    if not processors:
        raise ConfigError("set_scale: no decoupled cross-attention installed (call set_decoupled_attention first)")
    for processor in processors.values():
        processor.scale = float(scale)
    return len(processors)


def join_context(text: torch.Tensor, image_tokens: torch.Tensor | None, num_tokens: int | None = None) -> torch.Tensor:
    """``[text; image]``: ``(B, L, D)`` + ``(B or 1, N, D)`` → ``(B, L + N, D)``. ``image_tokens``
    None → ``num_tokens`` zero tokens (image branch contributes exactly 0: a text-only pass)."""
    if image_tokens is None:
        if num_tokens is None:
            raise ConfigError("join_context: give image_tokens or num_tokens")
        image_tokens = text.new_zeros(text.shape[0], num_tokens, text.shape[2])
    if image_tokens.shape[0] == 1 and text.shape[0] > 1:
        image_tokens = image_tokens.expand(text.shape[0], -1, -1)
    if image_tokens.shape[0] != text.shape[0] or image_tokens.shape[2] != text.shape[2]:
        raise ConfigError(f"join_context: text {tuple(text.shape)} and image tokens {tuple(image_tokens.shape)} differ "
                          f"in batch or width")
    return torch.cat([text, image_tokens.to(text.dtype)], dim=1)


# --------------------------------------------------------------------------- image tokens


class ImagePromptProjection(nn.Module):
    """Face embedding ``(B, E)`` → image tokens ``(B, N, D)``: ``Linear(E, N·D)`` → reshape →
    ``LayerNorm(D)`` (IP-Adapter's ``ImageProjModel``)."""

    def __init__(self, embed_dim: int = FACE_EMBED_DIM, cross_attention_dim: int = 1024,
                 num_tokens: int = DEFAULT_NUM_TOKENS) -> None:
        super().__init__()
        self.embed_dim, self.cross_attention_dim, self.num_tokens = int(embed_dim), int(cross_attention_dim), int(num_tokens)
        self.proj = nn.Linear(embed_dim, num_tokens * cross_attention_dim)
        self.norm = nn.LayerNorm(cross_attention_dim)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        if embeddings.ndim != 2 or embeddings.shape[1] != self.embed_dim:
            raise ConfigError(f"image prompt projection expects (B, {self.embed_dim}) embeddings, "
                              f"got {tuple(embeddings.shape)}")
        tokens = self.proj(embeddings.to(self.proj.weight.dtype))
        return self.norm(tokens.reshape(-1, self.num_tokens, self.cross_attention_dim))


def mean_identity(embeddings: torch.Tensor) -> torch.Tensor:
    """``(R, E)`` embeddings of one person's references → ``(E,)``: the L2-normalised mean of the
    L2-normalised embeddings (each reference counts equally, whatever its norm)."""
    return F.normalize(F.normalize(embeddings.float(), dim=-1).mean(0), dim=-1)


def _groups(references: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Reference input → one ``(R, 3, H, W)`` tensor per sample."""
    if isinstance(references, torch.Tensor):
        if references.ndim == 3:
            return [references[None]]
        if references.ndim == 4:
            return [references]
        if references.ndim == 5:
            return list(references)
        raise ConfigError(f"references: expected (3, H, W), (R, 3, H, W) or (B, R, 3, H, W), got {tuple(references.shape)}")
    groups = []
    for item in references:
        if not isinstance(item, torch.Tensor) or item.ndim not in (3, 4):
            raise ConfigError(f"references: each sample is a (3, H, W) or (R, 3, H, W) tensor, got "
                              f"{tuple(getattr(item, 'shape', ()))}")
        groups.extend(_groups(item))
    if not groups:
        raise ConfigError("references: no reference image")
    return groups


class FaceImageEncoder(nn.Module):
    """Reference face(s) → image tokens ``(B, N, D)``.

    ``face_embedder``: ``(R, 3, H, W)`` RGB in [0, 1] → ``(R, E)`` identity embeddings (frozen,
    run without gradient); default :class:`ArcFaceReferenceEmbedder` (IR-SE50, weights looked up in
    the registry when first used). ``projection``: the trainable :class:`ImagePromptProjection`.

    ``references``: ``(3, H, W)`` (one image), ``(R, 3, H, W)`` (one person, R images),
    ``(B, R, 3, H, W)`` or a sequence of per-sample ``(3, H, W)`` / ``(R, 3, H, W)`` tensors; the
    R embeddings of a sample are averaged (:func:`mean_identity`). For the negative visual stream
    pass the degraded reference(s) the same way. ``state_dict()`` holds ``projection.*`` only.
    """

    def __init__(self, projection: ImagePromptProjection, face_embedder: FaceEmbedder | None = None) -> None:
        super().__init__()
        self.projection = projection
        # kept out of the module tree on purpose: the frozen face network is neither trained, nor
        # saved with the image-prompt weights, nor moved by ``.to`` (it runs on its own device)
        self.__dict__["face_embedder"] = face_embedder if face_embedder is not None else ArcFaceReferenceEmbedder()

    def embed(self, references: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """``(B, E)`` per-sample identity embeddings (unit vectors)."""
        out = []
        for group in _groups(references):
            with torch.no_grad():
                embeddings = torch.as_tensor(self.face_embedder(group.float().clamp(0, 1)))
            if embeddings.ndim != 2 or embeddings.shape[0] != group.shape[0]:
                raise ConfigError(f"face embedder returned {tuple(embeddings.shape)} for {group.shape[0]} image(s), "
                                  f"expected (R, E)")
            out.append(mean_identity(embeddings))
        return torch.stack(out)

    def forward(self, references: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        param = self.projection.proj.weight
        return self.projection(self.embed(references).to(device=param.device, dtype=param.dtype))


class ArcFaceReferenceEmbedder:
    """The default face embedder: this project's ArcFace IR-SE50 (:mod:`fvr_bench.faces.embedders`).

    ``(R, 3, H, W)`` [0, 1] → ``(R, 512)`` unit float32. Each image goes through MTCNN (largest
    face, 5 points) and the ArcFace 112² alignment; an image where no face is found is taken to be
    an aligned face crop already (the ArcFace template scaled to the image), and counted in
    :attr:`fallbacks`. ``random_weights`` is for tests only.
    """

    def __init__(self, weights_path: str | None = None, random_weights: bool = False, random_seed: int = 0,
                 device: torch.device | str | None = None) -> None:
        self.weights_path, self.random_weights, self.random_seed = weights_path, random_weights, random_seed
        self.device = torch.device(device) if device is not None else None
        self.fallbacks = 0
        self._embedder = None

    def required_weights(self) -> list[str]:
        return self._backend().required_weights()

    def _backend(self):
        if self._embedder is None:
            from fvr_bench.faces.embedders import ArcFaceIRSE50

            self._embedder = ArcFaceIRSE50(self.weights_path, self.random_weights, self.random_seed)
        return self._embedder

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        from fvr_bench.faces.align import ARCFACE_TEMPLATE_112, Geometry
        from fvr_bench.faces.frames import frames_of

        device = self.device or images.device
        frames = frames_of(images)
        backend = self._backend()
        geometries = backend.detect_many(frames, device)
        fixed = []
        for frame, geometry in zip(frames, geometries):
            if geometry is None or geometry.points is None:
                self.fallbacks += 1
                scale = np.array([frame.width / 112.0, frame.height / 112.0])
                geometry = Geometry(box=(0.0, 0.0, float(frame.width), float(frame.height)),
                                    points=ARCFACE_TEMPLATE_112 * scale)
            fixed.append(geometry)
        embeddings = backend.embed_many(frames, fixed, device)
        return torch.from_numpy(np.stack(embeddings)).to(torch.float32)


# --------------------------------------------------------------------------- export


def image_prompt_state(unet: nn.Module, projection: ImagePromptProjection) -> dict[str, torch.Tensor]:
    """The trainable image-prompt weights (``ip_fvr_image_prompt.safetensors`` layout):
    ``attn.<layer>.to_k_ip.weight`` / ``…to_v_ip.weight`` per spatial ``attn2`` + ``projection.*``."""
    state = {f"projection.{k}": v.detach() for k, v in projection.state_dict().items()}
    for name, processor in decoupled_processors(unet).items():
        for key, value in processor.state_dict().items():
            state[f"attn.{name}.{key}"] = value.detach()
    return state


def load_image_prompt_state(unet: nn.Module, projection: ImagePromptProjection,
                            state: Mapping[str, torch.Tensor], source: str) -> None:
    """Strict inverse of :func:`image_prompt_state` (:class:`ConfigError` naming ``source``)."""
    from fvr_bench.state_dicts import load_state

    processors = decoupled_processors(unet)
    if not processors:
        raise ConfigError(f"{source}: install the decoupled attention (set_decoupled_attention) before loading it")
    holder = nn.Module()
    holder.projection = projection
    holder.attn = nn.ModuleDict({name.replace(".", "/"): p for name, p in processors.items()})

    def key_map(key: str) -> str:
        if key.startswith("attn."):
            layer, _, leaf = key[len("attn."):].rpartition(".")
            layer, _, param = layer.rpartition(".")
            return f"attn.{layer.replace('.', '/')}.{param}.{leaf}"
        return key

    load_state(holder, state, source, key_map)
