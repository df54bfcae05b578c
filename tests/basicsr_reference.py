"""BasicSR 1.4.2 modules loaded by file path, as an independent reference in tests.

``import basicsr`` runs its package ``__init__``, which imports its whole training stack;
so the few pure modules the metrics need are loaded one by one under stub packages.
Tests skip when the package is absent (``pip install --no-deps basicsr-fixed==1.4.2``).
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest

SUPPORT = (
    ("basicsr.utils.color_util", "utils/color_util.py"),
    ("basicsr.utils.registry", "utils/registry.py"),
    ("basicsr.utils.matlab_functions", "utils/matlab_functions.py"),
    ("basicsr.metrics.metric_util", "metrics/metric_util.py"),
)


def basicsr_root() -> Path:
    spec = importlib.util.find_spec("basicsr")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("BasicSR reference not installed (pip install --no-deps basicsr-fixed==1.4.2)")
    return Path(list(spec.submodule_search_locations)[0])


def _load(name: str, path: Path) -> types.ModuleType:
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    module_spec.loader.exec_module(module)
    return module


def load_basicsr(*files: str) -> list[types.ModuleType]:
    """Fresh copies of ``files`` (paths under the basicsr package, e.g.
    ``"metrics/niqe.py"``), in order; ``sys.modules`` is restored afterwards."""
    root = basicsr_root()
    names = ["basicsr", "basicsr.utils", "basicsr.metrics", *(name for name, _ in SUPPORT)]
    saved = {name: sys.modules.get(name) for name in names}
    try:
        for package, folder in (("basicsr", root), ("basicsr.utils", root / "utils"), ("basicsr.metrics", root / "metrics")):
            stub = types.ModuleType(package)
            stub.__path__ = [str(folder)]
            sys.modules[package] = stub
        for name, path in SUPPORT:
            module = _load(name, root / path)
            if name == "basicsr.utils.color_util":  # metric_util imports it from the package
                sys.modules["basicsr.utils"].bgr2ycbcr = module.bgr2ycbcr
        return [_load(f"_basicsr_reference_{index}_{Path(path).stem}", root / path) for index, path in enumerate(files)]
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
