"""One contract suite over every restorer config, ``conf/method/*.yaml`` (issue 11, item 4).

Each restorer is built only through the config, as the evaluator builds it —
``build(compose("run", ["method=<name>", …]).method.restorer, name)`` — never by importing
a method class, so the suite does not depend on where the methods' code lives. It is
called as the evaluator calls it (``torch.inference_mode()``, every keyword of the
restorer contract) and checked for:

* the shape contract ``(B, T, 3, h, w) → (B, T, 3, H, W)`` with ``out_size=(H, W)``, for
  T = 1, 5, 9 (9 > the tiny configs' BFVR-STC window: overlapping windows), odd sizes
  (37×45 → 74×90), same-size restoration, and ``out_size=None`` (the method's native
  scale: only B, T, 3 are fixed);
* values: floating point, finite, in [0, 1]; the input is not modified;
* a CPU run of the configs that need no user-supplied weights (the baselines and the
  ``*_tiny`` configs, random weights) takes well under a few seconds per call.

User-supplied weights are hidden from the whole module ($FVR_BENCH_WEIGHTS and the user
cache point to empty folders), so every machine sees what CI sees: a config that needs them
(``bfvr_stc``, ``vividface``) must refuse to build with ``WeightsMissingError``, and is
skipped with that message as the reason. ``precomputed`` reads a folder of saved outputs
written here (one frame folder per clip id, at the output size).

A method may refuse an input it does not support (a length or size) with a
``ConfigError``; that case is skipped with its message. A new ``conf/method/*.yaml`` is
covered automatically.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from contract_helpers import (
    config_files,
    mark_known_bug,
    no_network,
    path_overrides,
    read_frames,
    write_frames,
)

from fvr_bench import weights
from fvr_bench.config import build, compose
from fvr_bench.errors import ConfigError, DataError, WeightsMissingError

METHOD_FILES = config_files("method")
METHOD_NAMES = [path.stem for path in METHOD_FILES]
BATCH = 2
# a tiny or baseline restorer on these sizes takes < 0.2 s per call on one CPU thread
# (measured, T = 9 the slowest); the bound leaves 10× for a loaded CI machine
MAX_SECONDS_PER_CALL = 2.0

# name → (frames, lq (h, w), out_size)
CASES: dict[str, tuple[int, tuple[int, int], tuple[int, int] | None]] = {
    "T1_odd_x2": (1, (37, 45), (74, 90)),
    "T5_odd_x2": (5, (37, 45), (74, 90)),
    "T9_odd_x2": (9, (37, 45), (74, 90)),
    "T5_same_size": (5, (32, 32), (32, 32)),
    "T5_native": (5, (37, 45), None),
}
PRECOMPUTED_NATIVE_SIZE = (40, 48)  # the size of precomputed's saved outputs for out_size=None

# (test name, method) → reason, for a check that fails because of a known bug in the
# restorer: the case is xfail(strict=True), so fixing the bug makes it fail until removed.
KNOWN_BUGS: dict[tuple[str, str], str] = {}


@pytest.fixture(autouse=True)
def _known_bugs(request):
    mark_known_bug(request, KNOWN_BUGS, "method_file")


@pytest.fixture(scope="module", autouse=True)
def _as_in_ci(tmp_path_factory, one_torch_thread):
    """No user-supplied weights (only files shipped inside installed packages are found),
    no network, one torch thread (small tensors; see conftest)."""
    empty = tmp_path_factory.mktemp("no_weights")
    with pytest.MonkeyPatch.context() as patch, no_network():
        patch.setenv("FVR_BENCH_WEIGHTS", str(empty / "env"))
        patch.setattr(weights, "USER_CACHE", empty / "user_cache")
        yield


def clip_id(case: str, index: int) -> str:
    return f"{case}_{index}"


def output_size(case: str) -> tuple[int, int]:
    return CASES[case][2] or PRECOMPUTED_NATIVE_SIZE


@pytest.fixture(scope="module")
def saved_outputs(tmp_path_factory) -> Path:
    """precomputed's input: ``<root>/<clip id>/00000.png …`` at the output size of each case."""
    root = tmp_path_factory.mktemp("precomputed")
    generator = torch.Generator().manual_seed(0)
    for case, (frames, _, _) in CASES.items():
        for index in range(BATCH):
            write_frames(root / clip_id(case, index), torch.rand(frames, 3, *output_size(case), generator=generator))
    write_frames(root / "one_frame_short", torch.rand(4, 3, 32, 32, generator=generator))
    return root


@pytest.fixture(scope="module", params=METHOD_FILES, ids=METHOD_NAMES)
def method_file(request) -> Path:
    return request.param


@pytest.fixture(scope="module")
def method_overrides(method_file, saved_outputs, tmp_path_factory) -> list[str]:
    name = method_file.stem
    extra = [f"method.root={saved_outputs}"] if name == "precomputed" else []
    return [f"method={name}", *path_overrides(tmp_path_factory.mktemp(f"run_{name}")), *extra]


@pytest.fixture(scope="module")
def restorer(method_file, method_overrides):
    cfg = compose("run", method_overrides)
    try:
        return build(cfg.method.restorer, method_file.stem)
    except WeightsMissingError as error:
        pytest.skip(f"{method_file.stem} needs user-supplied weights (as in CI): {error}")


def restore(restorer, lq: torch.Tensor, out_size, clip_ids) -> torch.Tensor:
    """As the evaluator calls a restorer."""
    with torch.inference_mode():
        return restorer.restore(lq, task="bfr", reference=None, mask=None, out_size=out_size, clip_ids=clip_ids)


# --------------------------------------------------------------------------- every method


def test_the_suite_finds_the_method_configs():
    assert {"identity", "bicubic", "precomputed"} <= set(METHOD_NAMES)


def test_builds_a_named_restorer(restorer, method_file):
    assert callable(getattr(restorer, "restore", None))
    assert isinstance(restorer.name, str) and restorer.name


@pytest.mark.parametrize("case", list(CASES))
def test_shape_range_and_speed(restorer, method_file, case):
    frames, (h, w), out_size = CASES[case]
    lq = torch.rand(BATCH, frames, 3, h, w, generator=torch.Generator().manual_seed(1))
    untouched = lq.clone()
    start = time.perf_counter()
    try:
        out = restore(restorer, lq, out_size, [clip_id(case, index) for index in range(BATCH)])
    except ConfigError as error:
        pytest.skip(f"{method_file.stem} refuses {case}: {error}")
    seconds = time.perf_counter() - start

    assert isinstance(out, torch.Tensor) and out.is_floating_point(), type(out)
    if out_size is not None:
        assert out.shape == (BATCH, frames, 3, *out_size)
    else:
        assert out.shape[:3] == (BATCH, frames, 3) and out.ndim == 5, out.shape
    assert out.device == lq.device
    assert torch.isfinite(out).all(), "NaN/Inf in the output"
    assert out.min() >= 0.0 and out.max() <= 1.0, (float(out.min()), float(out.max()))
    assert torch.equal(lq, untouched), "restore modified its input in place"
    assert seconds < MAX_SECONDS_PER_CALL, f"{method_file.stem}: {case} took {seconds:.1f} s on CPU"


# --------------------------------------------------------------------------- precomputed


def test_precomputed_returns_the_saved_frames_and_refuses_a_frame_count_mismatch(saved_outputs, tmp_path):
    cfg = compose("run", ["method=precomputed", f"method.root={saved_outputs}", *path_overrides(tmp_path)])
    restorer = build(cfg.method.restorer, "precomputed")
    case = "T5_odd_x2"
    frames, (h, w), out_size = CASES[case]
    ids = [clip_id(case, index) for index in range(BATCH)]
    out = restore(restorer, torch.rand(BATCH, frames, 3, h, w), out_size, ids)
    expected = torch.stack([read_frames(saved_outputs / name) for name in ids])
    assert torch.allclose(out, expected, atol=1e-6)
    with pytest.raises(DataError, match="one_frame_short.*4 frames"):
        restore(restorer, torch.rand(1, 5, 3, 16, 16), (32, 32), ["one_frame_short"])
