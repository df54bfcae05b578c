"""VividFace training: one LightningModule for every stage, configured per stage.

:class:`VividFaceTraining` holds the restorer being trained (:class:`.restorer.VividFaceRestorer`)
and the stage's loss object (:mod:`.objectives`). What a stage trains, what it requires from
the previous stage and its objective come from ``train.stages.<s>.module`` of
``conf/method/vividface.yaml`` (Hydra-instantiated):

* ``trained``: the restorer parts this stage optimises (``transformer``: the whole DiT, or only
  its LoRA adapters with ``lora.rank``; ``vae``: a VAE built from constructor arguments);
* ``init_parts``: the parts the previous stage's weights must provide (``vae``: every VAE
  weight; ``transformer``: DiT or LoRA weights); everything else they hold is loaded too;
* ``stage``: a label — it names the latent cache folder (``stage<s>``) and messages, and
  chooses nothing.

Checkpoint keys: ``restorer.transformer.*`` / ``restorer.vae.*``, only the weights not read from
the Wan folder: the trained parts' (LoRA only with LoRA), plus the VAE's when it was built from
constructor arguments (trained in stage vae, or random) — what ``run`` needs with the DiT.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from fvr_bench.errors import ConfigError
from fvr_bench.methods.base import TrainingModule, parse_dtype
from fvr_bench.methods.vividface.latents import LatentCache
from fvr_bench.methods.vividface.masks import FACE_CLASSES, PARSERS, build_parser
from fvr_bench.methods.vividface.restorer import PARTS, SPATIAL_MULTIPLE, VividFaceRestorer, canonical_state, plain
from fvr_bench.methods.vividface.windows import latent_frame_count
from fvr_bench.state_dicts import EMA_KEY

log = logging.getLogger(__name__)


def state_fingerprint(module: torch.nn.Module) -> str:
    """SHA-1 of a module's tensors (names, dtypes, shapes and values): tells two sets of weights
    of the same architecture apart, e.g. a random VAE from the one trained in stage ``vae``."""
    digest = hashlib.sha1()
    for name, tensor in sorted(module.state_dict().items()):
        data = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{data.dtype}|{tuple(data.shape)}".encode())
        if data.numel():
            digest.update(data.reshape(-1).view(torch.uint8).numpy())  # the raw bytes, without a copy
    return digest.hexdigest()


class VividFaceTraining(TrainingModule):
    """``restorer``: the networks ``run`` uses (float32 master weights); ``objective``: the stage's
    loss (:mod:`.objectives`); ``trained`` / ``init_parts`` / ``stage``: see the module docstring.

    face_parser:      ``kind`` (auto | bisenet | mediapipe), ``bisenet_path``, ``face_classes``,
                      ``input_size``, ``allow_random_weights`` — the masks' parser (:mod:`.masks`).
    gradient_checkpointing: diffusers' block checkpointing of the DiT while it is trained.
    lr, weight_decay: AdamW.
    latent_cache_dir, latent_cache_dtype: where pre-extracted inputs are read (:mod:`.latents`).
    seed:             the switch's generator (each rank draws from ``seed + rank``).
    """

    def __init__(self, restorer: VividFaceRestorer, objective: nn.Module, lr: float, trained: Sequence[str],
                 stage: str = "", init_parts: Sequence[str] = (), face_parser: Mapping | None = None,
                 gradient_checkpointing: bool = True, weight_decay: float = 0.01,
                 latent_cache_dir: str | None = None, latent_cache_dtype: str = "float16", seed: int = 0) -> None:
        super().__init__()
        self.restorer, self.objective = restorer, objective
        self.stage = str(stage)
        self.trained = [str(part) for part in plain(trained)]
        self.init_parts = [str(part) for part in plain(init_parts)]
        for option, parts in (("trained", self.trained), ("init_parts", self.init_parts)):
            unknown = sorted(set(parts) - set(PARTS))
            if unknown:
                raise ConfigError(f"vividface stage {self.stage}: {option} {unknown}; known parts: {', '.join(PARTS)}")
        if not self.trained:
            raise ConfigError(f"vividface stage {self.stage}: trains nothing (module.trained is empty)")
        if "vae" in self.trained and restorer.vae_from_wan:
            raise ConfigError(
                f"vividface stage {self.stage} trains a VAE built from constructor arguments (runs without the Wan "
                "weights); this configuration loads the pretrained Wan VAE (method.backbone.vae: null) — train stage 1 directly")
        self.lr, self.weight_decay, self.seed = float(lr), float(weight_decay), int(seed)
        # the checkpoint holds only the weights not read from the Wan folder (see on_save_checkpoint);
        # Lightning must not demand the rest back, on_load_checkpoint checks those it holds
        self.strict_loading = False

        restorer.requires_grad_(False)
        for name, parameter in restorer.named_parameters():
            part = name.split(".")[0]
            if part in self.trained and not (part == "transformer" and restorer.lora_rank and ".lora_" not in name):
                parameter.requires_grad_(True)
        if "transformer" in self.trained and gradient_checkpointing:
            restorer.transformer.enable_gradient_checkpointing()

        settings = dict(plain(face_parser) or {})
        settings.setdefault("face_classes", list(FACE_CLASSES))
        settings["face_classes"] = list(settings["face_classes"])
        if settings.get("kind", "auto") not in PARSERS:
            raise ConfigError(f"vividface: face_parser.kind must be one of {PARSERS}, got '{settings.get('kind')}'")
        if int(settings.get("input_size", 512)) < 32:
            raise ConfigError(f"vividface: face_parser.input_size must be at least 32 (BiSeNet downsamples 32×), "
                              f"got {settings.get('input_size')}")
        self._parser_settings = settings
        self._parser = None
        self.cache_dtype = parse_dtype(latent_cache_dtype, "latent_cache_dtype")
        # opened on first use, after init_from_previous_stage may have replaced the VAE it is keyed on
        self._latent_cache_dir = latent_cache_dir if getattr(objective, "extract", None) else None
        self._latent_cache: LatentCache | None = None

    def train(self, mode: bool = True) -> VividFaceTraining:
        """Parts this stage does not train stay in eval mode."""
        super().train(mode)
        for part in PARTS:
            if part not in self.trained:
                getattr(self.restorer, part).eval()
        return self

    # ------------------------------------------------------------------ inputs

    @property
    def parser(self):
        """The face parser, built on first use (its name goes to the logs, cache and checkpoint)."""
        if self._parser is None:
            self._parser = build_parser(**self._parser_settings)
            log.info("vividface: face masks from the %s parser", self._parser.name)
        return self._parser

    @property
    def latent_cache(self) -> LatentCache | None:
        """The pre-extracted inputs this stage reads (``latent_cache_dir`` or :meth:`prepare`'s), or None."""
        if self._latent_cache is None and self._latent_cache_dir:
            self._latent_cache = self._open_cache(self._latent_cache_dir)
        return self._latent_cache

    def _open_cache(self, cache_dir: str | os.PathLike) -> LatentCache:
        vae = self.restorer.vae
        vae_config = {k: v for k, v in dict(vae.config).items() if not k.startswith("_")}
        meta = {
            "format": 2,
            "stage": self.stage,
            # not the folder's path: moving the Wan folder must not invalidate the cache
            "vae": "pretrained (Wan folder)" if self.restorer.vae_from_wan else "constructor arguments (random or stage vae)",
            "vae_config_sha1": hashlib.sha1(json.dumps(vae_config, sort_keys=True, default=str).encode()).hexdigest(),
            # the weights themselves: a VAE trained further (or another seed) must not reuse latents
            "vae_weights_sha1": state_fingerprint(vae),
            "mask_parser": self.parser.name,
            "face_classes": self._parser_settings["face_classes"],
            "storage_dtype": str(self.cache_dtype).removeprefix("torch."),
        }
        return LatentCache(Path(cache_dir) / f"stage{self.stage}", meta, self.cache_dtype)

    def check_training_clip(self, gt: torch.Tensor) -> None:
        t, h, w = gt.shape[1], gt.shape[-2], gt.shape[-1]
        if (t - 1) % 4 or h % SPATIAL_MULTIPLE or w % SPATIAL_MULTIPLE:
            raise ConfigError(
                f"vividface stage {self.stage}: training clips need 1 + 4k frames and sides that are multiples of "
                f"{SPATIAL_MULTIPLE} (set train.stages.{self.stage}.frames / size), got {t} frames of {h}×{w}"
            )

    def _extractor(self):
        extract = getattr(self.objective, "extract", None)
        if extract is None:
            raise ConfigError(f"vividface stage {self.stage}: its objective ({type(self.objective).__name__}) reads "
                              f"frames, nothing to pre-extract (set train.stages.{self.stage}.pre_extract: false)")
        return extract

    @torch.no_grad()
    def extract(self, gt: torch.Tensor, lq: torch.Tensor) -> dict[str, torch.Tensor]:
        """What the objective trains on, from GT ``(B, T, 3, S, S)`` and LQ ``(B, T, 3, s, s)`` in [0, 1]."""
        self.check_training_clip(gt)
        return self._extractor()(self, gt, lq)

    def training_inputs(self, batch: dict) -> dict[str, torch.Tensor]:
        """Cached entries for the batch's keys where present, the rest extracted now."""
        gt, lq = batch["gt"], batch["lq"]
        self.check_training_clip(gt)
        keys = list(batch.get("key") or [])
        cache = self.latent_cache
        entries = [cache.load(k) for k in keys] if cache is not None and keys else [None] * gt.shape[0]
        missing = [i for i, entry in enumerate(entries) if entry is None]
        if missing:
            index = torch.tensor(missing, device=gt.device)
            fresh = self.extract(gt.index_select(0, index), lq.index_select(0, index))
            for j, i in enumerate(missing):
                entries[i] = {name: tensor[j] for name, tensor in fresh.items()}
        inputs = {name: torch.stack([entry[name] for entry in entries]).to(gt.device) for name in entries[0]}
        expected = (self.restorer.vae.config.z_dim, latent_frame_count(gt.shape[1]), gt.shape[-2] // 8, gt.shape[-1] // 8)
        if tuple(inputs["lq_latent"].shape[1:]) != expected:
            where = f"latent cache {cache.root}" if cache is not None else "extraction"
            raise ConfigError(f"vividface: {where} gives latents {tuple(inputs['lq_latent'].shape[1:])}, this batch needs "
                              f"{expected}; the cache was made for other frames/size — use another cache_dir")
        return inputs

    def prepare(self, dataloader, cache_dir) -> None:
        """The train command's hook before fitting (``pre_extract: true``): :meth:`pre_extract`."""
        self.pre_extract(dataloader, cache_dir)

    @torch.no_grad()
    def pre_extract(self, dataloader, cache_dir: str | os.PathLike, device: str | torch.device | None = None) -> int:
        """Encode every sample of ``dataloader`` once and store it under ``cache_dir/stage<s>``.

        Resumable (keys already on disk are skipped; files are written atomically). Under DDP
        each rank takes the keys whose hash falls in its share (``RANK``/``WORLD_SIZE``).
        Only the VAE and the parser run, on ``device`` (default: this rank's GPU, else CPU).
        Returns the number of samples extracted by this call.
        """
        self._extractor()
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
        if device is None:
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if torch.cuda.is_available() else "cpu"
        cache = self._open_cache(cache_dir)
        vae = self.restorer.vae
        home = next(vae.parameters()).device
        vae.to(device)
        extracted = 0
        try:
            for batch in dataloader:
                keys = list(batch["key"])
                todo = [i for i, key in enumerate(keys)
                        if int(hashlib.sha1(key.encode()).hexdigest(), 16) % world == rank and not cache.has(key)]
                if not todo:
                    continue
                index = torch.tensor(todo)
                fresh = self.extract(batch["gt"].index_select(0, index).to(device), batch["lq"].index_select(0, index).to(device))
                for j, i in enumerate(todo):
                    cache.save(keys[i], {name: tensor[j] for name, tensor in fresh.items()})
                extracted += len(todo)
        finally:
            vae.to(home)
        self._latent_cache, self._latent_cache_dir = cache, cache_dir
        log.info("vividface: %d samples pre-extracted to %s (mask parser: %s)", extracted, cache.root, self.parser.name)
        return extracted

    # ------------------------------------------------------------------ Lightning

    def compute_loss(self, batch: dict, use_mask: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The stage's loss on a batch with the switch set to ``use_mask``; returns (loss, parts)."""
        return self.objective.loss(self, batch, use_mask)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        use_mask = self.objective.draw()
        loss, parts = self.compute_loss(batch, use_mask)
        batch_size = batch["gt"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        if self.objective.uses_mask:
            self.log("train/face_focused_step", float(use_mask), batch_size=batch_size)
        for name, value in parts.items():
            self.log(f"train/{name}", value, batch_size=batch_size)
        return loss

    def on_fit_start(self) -> None:
        # every rank draws its own switch sequence, reproducibly
        self.objective.reseed(self.seed + self.global_rank)

    def configure_optimizers(self):
        parameters = [p for p in self.parameters() if p.requires_grad]
        if not parameters:
            raise ConfigError(f"vividface stage {self.stage}: no trainable parameters")
        return torch.optim.AdamW(parameters, lr=self.lr, weight_decay=self.weight_decay)

    # ------------------------------------------------------------------ weights

    def saved_weight_names(self) -> list[str]:
        """What a checkpoint of this stage holds (module keys): the trained parts' weights (LoRA
        only with LoRA), plus the VAE's when it is not the Wan folder's."""
        parts = set(self.trained) | (set() if self.restorer.vae_from_wan else {"vae"})
        return [f"restorer.{name}" for name in self.restorer.weight_names([p for p in PARTS if p in parts])]

    def init_from_previous_stage(self, state_dict: Mapping[str, torch.Tensor], previous_stage: str) -> None:
        """Start from the previous stage's weights (this module's keys, or the former one-module
        layout): every restorer weight they hold is loaded (a full DiT into a LoRA DiT's base
        layers); ``init_parts`` must be present — ``vae``: every VAE weight, ``transformer``: DiT
        (or LoRA) weights."""
        source = f"stage {previous_stage} weights"
        state = canonical_state(state_dict)
        required = []
        if "vae" in self.init_parts:
            if not any(key.startswith("vae.") for key in state):
                raise ConfigError(f"{source}: holds no VAE weights (keys 'vae.*'); is it a stage-vae checkpoint?")
            if self.restorer.vae_from_wan:
                raise ConfigError(f"{source}: a VAE trained in stage vae cannot replace the pretrained Wan VAE of this "
                                  f"configuration; set method.backbone.vae to the arguments it was trained with")
            required += self.restorer.weight_names(["vae"])
        if "transformer" in self.init_parts and not any(key.startswith("transformer.") for key in state):
            raise ConfigError(f"{source}: holds no DiT weights (keys 'transformer.*'); is it a stage-vae checkpoint?")
        loaded = self.restorer.load_weights(state, source, required=required)
        if any(key.startswith("vae.") for key in loaded):
            self._latent_cache = None  # keyed on the VAE's weights: reopen with the new ones
        log.info("vividface stage %s: %d tensors initialised from stage %s", self.stage, len(loaded), previous_stage)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # what comes from the Wan folder (the VAE; with LoRA the base DiT) is not repeated in the checkpoint
        keep = set(self.saved_weight_names())
        for entry in ("state_dict", EMA_KEY):
            if isinstance(checkpoint.get(entry), dict):
                checkpoint[entry] = {k: v for k, v in checkpoint[entry].items() if k in keep}
        checkpoint["vividface"] = {"stage": self.stage, "lora_rank": self.restorer.lora_rank,
                                   "backbone": self.restorer.backbone_source,
                                   "vae": "pretrained (Wan folder)" if self.restorer.vae_from_wan else "in this checkpoint",
                                   "mask_parser": self._parser.name if self._parser is not None else None}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        missing = [name for name in self.saved_weight_names() if name not in checkpoint["state_dict"]]
        if missing:
            raise ConfigError(f"vividface checkpoint lacks {len(missing)} trained weight(s) (e.g. {missing[:3]}); "
                              f"was it saved with another lora.rank?")
