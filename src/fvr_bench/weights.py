"""Every pretrained file fvr_bench can use: name, file, source, licence, checksum, lookup.

The files are declared by the packages that use them, each in its own
``weights_declared.py`` (``WEIGHTS = (WeightFile(...), ...)``); this module discovers
those modules on the first lookup (:func:`declarations`) and owns lookup, messages,
checksums and ``weights fetch``.

Nothing downloads at run time. :func:`locate` looks a file up in this order:

1. an explicit path from the config (``metric.weights_path=...``);
2. ``$FVR_BENCH_WEIGHTS/<file>``;
3. ``~/.cache/fvr_bench/weights/<file>``;
4. inside the installed package that ships it (dlib, MediaPipe, MTCNN, I3D, NIQE models);
5. the owning library's own cache (torch hub checkpoints, HF hub cache).

A missing file stops with one message naming the file, its source and where to put it.
``python -m fvr_bench weights status`` lists what is runnable; ``weights fetch <name>``
downloads one file, only when asked.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from fvr_bench.errors import ConfigError, WeightsMissingError

USER_CACHE = Path("~/.cache/fvr_bench/weights")
TORCH_HUB = "~/.cache/torch/hub/checkpoints"


@dataclass(frozen=True)
class WeightFile:
    """One pretrained file.

    name:     registry key (what configs and ``weights fetch`` use).
    filename: the file's own name, looked up in every search directory.
    source:   where it comes from (URL of the official release, or the package).
    url:      direct download link for ``weights fetch``, when one exists.
    licence:  the licence of the weights as their release states it.
    sha256:   checksum when the release publishes one (or the file name embeds it).
    package:  ``(package, path inside it)`` when an installed package ships the file.
    library_dirs: other caches the owning library uses.
    used_by:  metric / method ids that need it.
    """

    name: str
    filename: str
    source: str
    licence: str
    used_by: tuple[str, ...]
    url: str | None = None
    sha256: str | None = None
    package: tuple[str, str] | None = None
    library_dirs: tuple[str, ...] = ()
    sha256_prefix: str | None = None  # torchvision-style names embed the first hex digits
    directory: bool = False  # a model folder (e.g. a diffusers checkpoint), not a single file

    def present(self, path: Path) -> bool:
        """Whether ``path`` holds this entry: an existing file, or a folder for directory entries."""
        return path.is_dir() if self.directory else path.is_file()

    def candidates(self, explicit: str | os.PathLike | None = None) -> list[Path]:
        paths = []
        if explicit:
            paths.append(Path(explicit).expanduser())
        if os.environ.get("FVR_BENCH_WEIGHTS"):
            paths.append(Path(os.environ["FVR_BENCH_WEIGHTS"]).expanduser() / self.filename)
        paths.append(USER_CACHE.expanduser() / self.filename)
        if self.package:
            root = _package_dir(self.package[0])
            if root is not None:
                paths.append(root / self.package[1])
        paths.extend(Path(d).expanduser() / self.filename for d in self.library_dirs)
        return paths


def _package_dir(package: str) -> Path | None:
    """Folder of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


# ------------------------------------------------------------------ declarations
#
# Each package that loads pretrained files declares them itself, as data next to its code:
# a module named ``weights_declared.py`` (e.g. ``fvr_bench/metrics/weights_declared.py``,
# ``fvr_bench/methods/<method>/weights_declared.py``) holding ``WEIGHTS``, a tuple of
# :class:`WeightFile`. This module finds those files under :data:`DECLARATION_ROOTS` on the
# first lookup and caches the table; a new method adds its own file and edits nothing here.

DECLARATION_MODULE = "weights_declared"
"""File name (without ``.py``) of a declaration module; it defines ``WEIGHTS``."""

DECLARATION_ROOTS: tuple[tuple[str, Path], ...] = (("fvr_bench", Path(__file__).resolve().parent),)
"""``(package name, its folder)`` pairs searched (recursively) for declaration modules."""


class WeightsDeclarationError(ConfigError):
    """A declaration module that cannot be read, or one name declared twice."""


_TABLE: dict[tuple, dict[str, tuple[WeightFile, str]]] = {}
_TABLE_LOCK = threading.RLock()


def declaration_modules() -> list[tuple[str, Path]]:
    """``(module name, file)`` of every declaration module under :data:`DECLARATION_ROOTS`."""
    found = []
    for package, root in DECLARATION_ROOTS:
        root = Path(root)
        for path in sorted(root.rglob(f"{DECLARATION_MODULE}.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if any(part.startswith((".", "__")) for part in parts):
                continue
            found.append((".".join((package, *parts)), path))
    return found


def _declared_in(module_name: str, path: Path) -> tuple[WeightFile, ...]:
    """``WEIGHTS`` of one declaration module. Loaded from its file without importing the
    packages above it (their ``__init__`` may import torch); a module already imported is reused."""
    module = sys.modules.get(module_name)
    if module is None or Path(getattr(module, "__file__", "") or "").resolve() != path.resolve():
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise WeightsDeclarationError(f"{path}: cannot load the declaration module {module_name}")
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as error:
            raise WeightsDeclarationError(f"{module_name} ({path}) does not load: {error!r}") from error
    declared = getattr(module, "WEIGHTS", None)
    if not isinstance(declared, (tuple, list)) or not all(isinstance(item, WeightFile) for item in declared):
        raise WeightsDeclarationError(
            f"{module_name} ({path}): a declaration module defines WEIGHTS, a tuple of fvr_bench.weights.WeightFile")
    return tuple(declared)


def declarations() -> dict[str, tuple[WeightFile, str]]:
    """Every declared file: ``name -> (WeightFile, declaring module)``, discovered on first
    use and cached (per :data:`DECLARATION_MODULE` / :data:`DECLARATION_ROOTS`). A name
    declared twice is a :class:`WeightsDeclarationError` naming both modules."""
    key = (DECLARATION_MODULE, tuple((package, str(root)) for package, root in DECLARATION_ROOTS))
    with _TABLE_LOCK:
        if key not in _TABLE:
            table: dict[str, tuple[WeightFile, str]] = {}
            for module_name, path in declaration_modules():
                for item in _declared_in(module_name, path):
                    if item.name in table:
                        raise WeightsDeclarationError(
                            f"pretrained file '{item.name}' is declared twice: in {table[item.name][1]} and in "
                            f"{module_name}; keep one declaration (list every user in its used_by)")
                    table[item.name] = (item, module_name)
            _TABLE[key] = table
        return _TABLE[key]


class _Registry(Mapping):
    """Read-only ``name -> WeightFile`` view of :func:`declarations` (the former central dict)."""

    def __getitem__(self, name: str) -> WeightFile:
        return declarations()[name][0]

    def __iter__(self) -> Iterator[str]:
        return iter(declarations())

    def __len__(self) -> int:
        return len(declarations())

    def __repr__(self) -> str:
        return f"REGISTRY({sorted(self)})"


REGISTRY: Mapping[str, WeightFile] = _Registry()
"""Every declared file by name: a read-only view built from the declaration modules."""


def entry(name: str) -> WeightFile:
    if name not in REGISTRY:
        raise WeightsMissingError(f"unknown pretrained file '{name}'; known: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def find(name: str, explicit: str | os.PathLike | None = None) -> Path | None:
    """The first existing candidate path of ``name``, or None."""
    for path in entry(name).candidates(explicit):
        if entry(name).present(path):
            return path
    return None


def missing_message(name: str, explicit: str | os.PathLike | None = None) -> str:
    item = entry(name)
    looked = "\n    ".join(str(p) for p in item.candidates(explicit))
    how = f"`python -m fvr_bench weights fetch {name}` (downloads {item.url})" if item.url else "obtain it from the source above"
    return (
        f"pretrained file '{name}' ({item.filename}) not found; needed by {', '.join(item.used_by)}.\n"
        f"  source: {item.source} (licence: {item.licence})\n"
        f"  put it at {USER_CACHE / item.filename} or $FVR_BENCH_WEIGHTS/{item.filename}, or {how}.\n"
        f"  looked in:\n    {looked}"
    )


def locate(name: str, explicit: str | os.PathLike | None = None, verify: bool = False) -> Path:
    """Path of pretrained file ``name``; raises :class:`WeightsMissingError` when absent."""
    if explicit and not entry(name).present(Path(explicit).expanduser()):
        # an explicit path is a promise: never fall back silently to another file
        raise WeightsMissingError(f"pretrained file '{name}' ({entry(name).filename}): the configured path {explicit} does not exist")
    path = find(name, explicit)
    if path is None:
        raise WeightsMissingError(missing_message(name, explicit))
    if verify:
        check_sha256(name, path)
    return path


_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def sha256_of(path: str | os.PathLike) -> str:
    """sha256 of a file, cached by (path, size, mtime): provenance asks for it every clip,
    and a 528 MB VGG16 file takes a second to hash."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA_CACHE:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _SHA_CACHE[key] = digest.hexdigest()
    return _SHA_CACHE[key]


def check_sha256(name: str, path: Path) -> str:
    """Verify a file against its published checksum; returns its sha256."""
    item = entry(name)
    actual = sha256_of(path)
    expected = item.sha256 or item.sha256_prefix
    if expected and not actual.startswith(expected):
        raise WeightsMissingError(
            f"{path}: sha256 {actual[:16]}… does not match the published {expected[:16]}… of '{name}' "
            f"({item.filename}, {item.source}); use the released file, or verify_weights=false where a metric "
            f"offers it to measure with this one (its sha256 is recorded in the provenance)"
        )
    return actual


def status() -> list[dict[str, str]]:
    """One row per declared file: name, state (found / missing), path, used_by, declared_in."""
    rows = []
    for name, (item, module_name) in sorted(declarations().items()):
        path = find(name)
        rows.append({
            "name": name,
            "state": "found" if path else "missing",
            "path": str(path) if path else str(USER_CACHE / item.filename),
            "used_by": ",".join(item.used_by),
            "declared_in": module_name,
        })
    return rows


def fetch(name: str, destination: Path | None = None) -> Path:
    """Download ``name`` into the user cache — only ever called on the user's request."""
    import urllib.error
    import urllib.request

    item = entry(name)
    existing = find(name)
    if existing is not None:
        return existing
    if not item.url:
        raise WeightsMissingError(f"'{name}' has no direct download link; {missing_message(name)}")
    destination = (destination or USER_CACHE.expanduser()) / item.filename
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{item.filename}.", dir=destination.parent)
    try:
        with urllib.request.urlopen(item.url, timeout=60) as response, os.fdopen(fd, "wb") as handle:
            shutil.copyfileobj(response, handle)
        check_sha256(name, Path(tmp))
        os.replace(tmp, destination)
    except (urllib.error.URLError, OSError) as error:
        raise WeightsMissingError(
            f"could not download '{name}' from {item.url} ({error}); without network, copy the file to {destination}"
        ) from error
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return destination
