"""On-disk cache of pre-extracted training inputs (VividFace pre-extracts its latents).

One file per sample key under ``<cache_dir>/stage<s>/``: a ``torch.save`` dict of the
tensors that stage trains on (stage 1: ``lq_latent``, ``gt_latent``, ``mask`` = latent face
mask; stage 2: ``lq_latent``, ``mask`` = pixel face mask). Files are written atomically,
so an interrupted extraction leaves only complete entries and a restart skips them.
``meta.json`` records what produced the entries (frames, size, VAE, parser); a cache made
under different settings is refused rather than mixed in.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from pathlib import Path

import torch

from fvr_bench.errors import ConfigError
from fvr_bench.io import atomic_write_bytes

META = "meta.json"


class LatentCache:
    """``<root>/<readable key>-<sha1>.pt`` per sample; ``meta`` must match ``meta.json``."""

    def __init__(self, root: str | Path, meta: dict, storage_dtype: torch.dtype = torch.float16) -> None:
        self.root = Path(root).expanduser()
        self.meta = json.loads(json.dumps(meta, sort_keys=True))  # plain JSON values, comparable with the file
        self.storage_dtype = storage_dtype
        self._check_or_write_meta()

    def _check_or_write_meta(self) -> None:
        path = self.root / META
        if path.is_file():
            existing = json.loads(path.read_text())
            if existing != self.meta:
                changed = sorted(k for k in set(existing) | set(self.meta) if existing.get(k) != self.meta.get(k))
                raise ConfigError(
                    f"latent cache {self.root} was extracted with other settings ({', '.join(changed)}: "
                    f"{ {k: existing.get(k) for k in changed} } vs now { {k: self.meta.get(k) for k in changed} }); "
                    f"use another cache_dir or delete that folder"
                )
            return
        atomic_write_bytes(path, json.dumps(self.meta, indent=2, sort_keys=True).encode())

    def path(self, key: str) -> Path:
        readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", key)[:80]
        return self.root / f"{readable}-{hashlib.sha1(key.encode()).hexdigest()[:16]}.pt"

    def has(self, key: str) -> bool:
        return self.path(key).is_file()

    def save(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        """Floating tensors are stored as ``storage_dtype`` (latents are unit-scale after
        Wan's normalisation, where float16 keeps ~3 decimal digits); masks stay bool."""
        stored = {name: (t.detach().to("cpu", self.storage_dtype) if t.is_floating_point() else t.detach().cpu()).contiguous()
                  for name, t in tensors.items()}
        buffer = io.BytesIO()
        torch.save(stored, buffer)
        atomic_write_bytes(self.path(key), buffer.getvalue())

    def load(self, key: str) -> dict[str, torch.Tensor] | None:
        """The entry as float32 / bool tensors, or None when it was not extracted."""
        path = self.path(key)
        if not path.is_file():
            return None
        stored = torch.load(path, map_location="cpu", weights_only=True)
        return {name: t.float() if t.is_floating_point() else t for name, t in stored.items()}
