"""CLIP-IQA and LIQE: tokenizer, OpenAI weight layouts, pyiqa's pipeline, contract.

Real weights are user-supplied, so the networks here are random: tiny CLIP configurations
(subclasses of the metrics) keep the suite fast, and full-size models are only built on the
meta device to check the parameter layout. The tokenizer needs OpenAI's BPE vocabulary,
shipped in ``open_clip_torch`` (tests that need it skip when it is absent).

The pipelines are compared with pyiqa's own classes (``pyiqa.archs.clipiqa_arch.CLIPIQA``,
``pyiqa.archs.liqe_arch.LIQE``, pyiqa 0.1.16, installed --no-deps by ``make install``; the
tests skip without it): pyiqa builds its CLIP with ``clip_model.load(name)``, which would
download OpenAI's checkpoint, so the tests hand it ``clip_model.build_model`` of *our* tiny
network's state dict instead (same random weights in both), block every download, and
keep LIQE's text-feature cache in a temporary folder.
"""

from __future__ import annotations

import importlib.util
import math
import warnings

import pytest
import torch
from torch import nn

from fvr_bench import weights
from fvr_bench.errors import ConfigError, WeightsMissingError
from fvr_bench.metrics.backends.clip import (
    BPE_VOCAB_SHA256,
    RN50,
    TEXT_RN50,
    TEXT_VIT_B_32,
    VIT_B_32,
    CLIPModel,
    ResNetConfig,
    SimpleTokenizer,
    TextConfig,
    VisionConfig,
    build_clip,
    find_bpe_vocab,
    infer_clip_config,
    load_openai_state_dict,
)
from fvr_bench.metrics.clip_iqa import (
    CLIPIQA,
    LIQE,
    LIQE_DISTORTIONS,
    LIQE_QUALITIES,
    LIQE_SCENES,
    liqe_prompts,
)

VOCAB = find_bpe_vocab()
needs_vocab = pytest.mark.skipif(VOCAB is None, reason="OpenAI BPE vocabulary not installed (pip install --no-deps open_clip_torch)")

TINY_RN = ResNetConfig(layers=(1, 1, 1, 1), width=16, output_dim=32, input_resolution=64)
TINY_VIT = VisionConfig(input_resolution=224, patch_size=32, width=64, layers=1, heads=1, output_dim=32)
TINY_TEXT = TextConfig(context_length=77, vocab_size=49408, width=64, layers=1, embed_dim=32)


class TinyCLIPIQA(CLIPIQA):
    vision_config = TINY_RN
    text_config = TINY_TEXT


class TinyLIQE(LIQE):
    vision_config = TINY_VIT
    text_config = TINY_TEXT


# --------------------------------------------------------------------------- tokenizer


@pytest.fixture(scope="module")
def tokenizer() -> SimpleTokenizer:
    if VOCAB is None:
        pytest.skip("OpenAI BPE vocabulary not installed")
    return SimpleTokenizer(VOCAB)


@needs_vocab
def test_vocab_is_openais():
    assert weights.sha256_of(VOCAB) == BPE_VOCAB_SHA256


# ids from OpenAI's clip.simple_tokenizer (openai-clip 1.0.1, with ftfy + regex)
KNOWN_IDS = {
    "Good image": [886, 2867],
    "Good photo.": [886, 1125, 269],
    "Noise-free image": [9307, 268, 1139, 2867],
    "a photo of a still_life with jpeg2000 compression artifacts, which is of perfect quality": [
        320, 1125, 539, 320, 1170, 318, 970, 593, 73, 11207, 273, 271, 271, 271, 25638, 30249, 267, 1448, 533, 539, 1878, 3027,
    ],
}  # fmt: skip


def test_tokenizer_known_ids(tokenizer):
    for text, ids in KNOWN_IDS.items():
        assert tokenizer.encode(text) == ids, text
    tokens = tokenizer(["Good image", "Bad photo."])
    assert tokens.shape == (2, 77) and tokens.dtype == torch.long
    assert tokens[0, :4].tolist() == [49406, 886, 2867, 49407] and tokens[0, 4:].eq(0).all()
    assert tokenizer.encode("GOOD   Image") == tokenizer.encode("good image")  # lower case, whitespace collapsed
    with pytest.raises(ConfigError, match="more than"):
        tokenizer(["word " * 80])


def test_tokenizer_matches_reference_when_installed(tokenizer):
    """open_clip's copy of OpenAI's tokenizer and OpenAI's own (``clip``, what pyiqa calls;
    both need ftfy + regex) on every prompt used here."""
    reference = pytest.importorskip("open_clip.tokenizer").SimpleTokenizer(str(VOCAB))
    texts = liqe_prompts() + CLIPIQA(pretrained=False).prompts() + ["It's a test &amp; café 3.14!"]
    assert all(tokenizer.encode(t) == reference.encode(t) for t in texts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # openai-clip imports pkg_resources
        openai = pytest.importorskip("clip")
    assert torch.equal(tokenizer(texts), openai.tokenize(texts))


def test_liqe_prompts():
    prompts = liqe_prompts()
    assert len(prompts) == 5 * 9 * 11 == len(set(prompts))
    assert prompts[0] == "a photo of a animal with jpeg2000 compression artifacts, which is of bad quality"
    assert prompts[-1] == "a photo of a others with other artifacts, which is of perfect quality"
    # quality outermost, distortion innermost (LIQE's product(qualitys, scenes, dists_map))
    assert prompts[1].endswith("jpeg compression artifacts, which is of bad quality")
    assert prompts[99 * 4] == "a photo of a animal with jpeg2000 compression artifacts, which is of perfect quality"
    assert len(LIQE_QUALITIES) * len(LIQE_SCENES) * len(LIQE_DISTORTIONS) == 495


# --------------------------------------------------------------------------- OpenAI layouts


def test_full_size_layouts_match_openai():
    """RN50.pt: 489 entries (102.1 M values); ViT-B-32.pt / LIQE.pt: 302 (151.3 M); names and
    shapes equal to OpenAI's ``model.CLIP`` as pyiqa copies it (when pyiqa is installed)."""
    with torch.device("meta"):
        rn50 = CLIPModel(RN50, TEXT_RN50).state_dict()
        vitb = CLIPModel(VIT_B_32, TEXT_VIT_B_32).state_dict()
    assert len(rn50) == 489 and len(vitb) == 302
    assert tuple(rn50["visual.attnpool.positional_embedding"].shape) == (50, 2048)
    assert tuple(rn50["visual.layer4.0.downsample.0.weight"].shape) == (2048, 1024, 1, 1)
    assert tuple(rn50["text_projection"].shape) == (512, 1024) and tuple(vitb["text_projection"].shape) == (512, 512)
    assert tuple(vitb["token_embedding.weight"].shape) == (49408, 512) and tuple(vitb["positional_embedding"].shape) == (77, 512)
    assert rn50["logit_scale"].shape == () and "transformer.resblocks.11.attn.in_proj_weight" in vitb
    assert infer_clip_config(rn50) == (RN50, TEXT_RN50) and infer_clip_config(vitb) == (VIT_B_32, TEXT_VIT_B_32)
    if importlib.util.find_spec("pyiqa") is None:
        return
    from pyiqa.archs.clip_model import CLIP

    with torch.device("meta"):  # OpenAI's RN50 and ViT-B/32 hyper-parameters (clip_model.build_model)
        openai_rn50 = CLIP(1024, 224, (3, 4, 6, 3), 64, None, 77, 49408, 512, 8, 12).state_dict()
        openai_vitb = CLIP(512, 224, 12, 768, 32, 77, 49408, 512, 8, 12).state_dict()
    for ours, theirs in ((rn50, openai_rn50), (vitb, openai_vitb)):
        assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in theirs.items()}


def _openai_archive(model: CLIPModel, path) -> None:
    """OpenAI's release format: TorchScript, fp16, plus scalar entries."""

    class OpenAILayout(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            for name, child in model.named_children():
                setattr(self, name, child)
            for name, param in model.named_parameters(recurse=False):
                setattr(self, name, param)
            self.register_buffer("input_resolution", torch.tensor(224))
            self.register_buffer("context_length", torch.tensor(77))
            self.register_buffer("vocab_size", torch.tensor(49408))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.logit_scale

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        archive = torch.jit.trace(OpenAILayout().half(), torch.zeros((), dtype=torch.half))
        torch.jit.save(archive, str(path))


def test_every_key_consumed_from_torchscript_and_wrapped_dicts(tmp_path):
    source = build_clip(None, TINY_RN, TINY_TEXT, random_seed=1)
    half = {k: v.half().float() if v.is_floating_point() else v for k, v in source.state_dict().items()}
    _openai_archive(build_clip(None, TINY_RN, TINY_TEXT, random_seed=1), tmp_path / "RN-tiny.pt")
    state = load_openai_state_dict(tmp_path / "RN-tiny.pt")
    assert set(state) == set(source.state_dict())  # scalars dropped, nothing else
    assert all(v.dtype == torch.float32 for k, v in state.items() if not k.endswith("num_batches_tracked"))
    # pyiqa's conversion: {"params": {"clip_model.<openai key>": …}}
    torch.save({"params": {f"clip_model.{k}": v for k, v in half.items()}}, tmp_path / "wrapped.pt")
    wrapped = load_openai_state_dict(tmp_path / "wrapped.pt")
    assert set(wrapped) == set(state)
    # BatchNorm counters may be absent (they do not change the output)
    loaded = build_clip({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")})
    tokens = torch.tensor([[49406, 886, 2867, 49407] + [0] * 73])
    x = torch.rand(2, 3, 64, 64)
    ref = build_clip(half)
    with torch.no_grad():
        assert torch.allclose(loaded.encode_text(tokens), ref.encode_text(tokens), atol=1e-5)
        assert torch.allclose(loaded.encode_image(x), ref.encode_image(x), atol=1e-5)
    with pytest.raises(ConfigError, match="does not match"):
        build_clip({k: v for k, v in state.items() if k != "ln_final.bias"})
    with pytest.raises(ConfigError, match="does not match"):
        build_clip({**state, "extra.weight": torch.zeros(1)})


def test_text_truncation_after_eot_is_exact():
    net = build_clip(None, TINY_VIT, TINY_TEXT, random_seed=2)
    tokens = torch.zeros(2, 77, dtype=torch.long)
    tokens[0, :4] = torch.tensor([49406, 886, 2867, 49407])
    tokens[1, :6] = torch.tensor([49406, 5, 6, 7, 8, 49407])
    with torch.no_grad():
        ours = net.encode_text(tokens)
        x = net.token_embedding(tokens) + net.positional_embedding
        full = net.ln_final(net.transformer(x))[torch.arange(2), tokens.argmax(-1)] @ net.text_projection
    assert torch.allclose(ours, full, atol=1e-5)


# --------------------------------------------------------------------------- pipelines


@pytest.fixture
def pyiqa_archs(tmp_path, monkeypatch):
    """pyiqa's clipiqa/liqe modules with every download blocked and LIQE's text-feature
    cache in ``tmp_path``; ``use(net)`` makes their ``load(backbone)`` return pyiqa's own
    CLIP class built from ``net``'s (our) state dict."""
    clipiqa_arch = pytest.importorskip("pyiqa.archs.clipiqa_arch")
    liqe_arch = pytest.importorskip("pyiqa.archs.liqe_arch")
    from pyiqa.archs import arch_util, clip_model

    def no_download(*args, **kwargs):
        raise AssertionError(f"pyiqa tried to download {args or kwargs}")

    monkeypatch.setattr(clip_model, "_download", no_download)
    monkeypatch.setattr(arch_util, "load_file_from_url", no_download)
    for module in (clipiqa_arch, liqe_arch):
        monkeypatch.setattr(module, "load_file_from_url", no_download, raising=False)
    monkeypatch.setattr(liqe_arch, "DEFAULT_CACHE_DIR", str(tmp_path))

    def use(net: CLIPModel) -> nn.Module:
        state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        pyiqa_clip = clip_model.build_model(dict(state)).float()  # build_model stores fp16 ...
        pyiqa_clip.load_state_dict(state)  # ... so the float32 values are loaded again
        pyiqa_clip.eval()
        for module in (clipiqa_arch, liqe_arch):
            monkeypatch.setattr(module, "load", lambda name, device="cpu": pyiqa_clip)
        return pyiqa_clip

    return clipiqa_arch, liqe_arch, use


def _sharpen(net: CLIPModel) -> None:
    """CLIP-IQA: logit_scale = ln 100, the released checkpoints' value (initialisation:
    ln 1/0.07), so that the random network's scores move away from 1/2 and differences
    show. (LIQE keeps the initial value: at ln 100 its 495-way softmax saturates.)"""
    with torch.no_grad():
        net.logit_scale.fill_(math.log(100.0))


# Tolerances: same float32 weights and inputs, so only the order of float32 operations
# differs (our batch-first attention and text truncated after the EOT token, pyiqa's
# sequence-first attention over all 77 tokens). Measured max |Δ|: 2e-7 (CLIP-IQA, in
# [0, 1]) and 7e-7 (LIQE, in [1, 5]); the tolerances leave > 25× room, and the tests check
# that a real pipeline difference (pyiqa's other positional-embedding mode, one patch
# fewer for LIQE) and a different frame move the score by far more than the tolerance.
CLIPIQA_ATOL, LIQE_ATOL = 1e-5, 2e-5


@needs_vocab
def test_clipiqa_matches_pyiqa(pyiqa_archs):
    clipiqa_arch, _, use = pyiqa_archs
    metric = TinyCLIPIQA(pretrained=False, seed=3)
    _sharpen(metric.model())
    use(metric.model())
    frames = torch.rand(1, 3, 3, 80, 96, generator=torch.Generator().manual_seed(0))
    frames[0, 2] = frames[0, 2].round()  # one frame of black and white noise
    scores = metric.frame_scores(frames)
    assert scores.shape == (1, 3) and ((scores >= 0) & (scores <= 1)).all()
    assert scores.max() - scores.min() > 20 * CLIPIQA_ATOL  # frames are told apart (measured 1.8e-3)
    # pyiqa reads 8-bit images: feed it the 8-bit levels our metric quantises to
    levels = torch.round(frames[0] * 255) / 255
    with torch.no_grad():
        reference = clipiqa_arch.CLIPIQA(pretrained=False).eval()
        torch.testing.assert_close(scores[0], reference(levels).reshape(-1), rtol=0, atol=CLIPIQA_ATOL)
        # pyiqa's pos_embedding=True is our positional="interpolate" (and far from the default)
        reference = clipiqa_arch.CLIPIQA(pretrained=False, pos_embedding=True).eval()(levels).reshape(-1)
        assert (scores[0] - reference).abs().max() > 100 * CLIPIQA_ATOL  # measured 0.11
        interpolate = TinyCLIPIQA(pretrained=False, seed=3, positional="interpolate")
        _sharpen(interpolate.model())
        torch.testing.assert_close(interpolate.frame_scores(frames)[0], reference, rtol=0, atol=CLIPIQA_ATOL)
    paper = TinyCLIPIQA(pretrained=False, seed=3, prompts="paper")
    assert paper.prompts() == ["Good photo.", "Bad photo."]
    assert paper.provenance().provenance_id != metric.provenance().provenance_id


@needs_vocab
def test_liqe_matches_pyiqa(pyiqa_archs):
    """Frame sizes with 6 windows (all used), 1 window, and 30 (pyiqa's eval-mode choice of
    15: every second one)."""
    _, liqe_arch, use = pyiqa_archs
    metric = TinyLIQE(pretrained=False, seed=4)
    use(metric.model())
    with torch.no_grad():
        reference = liqe_arch.LIQE(pretrained=False, mtl=True).eval()  # mtl: the 495 prompts of LIQE-mix
        torch.testing.assert_close(metric.text_features(), reference.text_features, rtol=0, atol=1e-6)
        generator = torch.Generator().manual_seed(1)
        for size in ((256, 300), (224, 224), (384, 352)):
            frames = torch.rand(1, 2, 3, *size, generator=generator)
            frames[0, 1] = frames[0, 1].round()
            scores = metric.frame_scores(frames)
            assert scores.shape == (1, 2) and ((scores >= 1) & (scores <= 5)).all()
            assert scores.max() - scores.min() > 20 * LIQE_ATOL  # measured 6e-3 to 7e-2
            levels = torch.round(frames[0] * 255) / 255
            torch.testing.assert_close(scores[0], reference(levels).reshape(-1), rtol=0, atol=LIQE_ATOL)
        # 30 windows: choosing one patch fewer (pyiqa num_patch=14) is far outside the tolerance
        fewer = liqe_arch.LIQE(pretrained=False, mtl=True, num_patch=14).eval()(levels).reshape(-1)
        assert (scores[0] - fewer).abs().max() > 20 * LIQE_ATOL  # measured 3e-3


@pytest.mark.parametrize("size", [(256, 320), (224, 224), (300, 250), (384, 352)])
def test_liqe_patch_indices(size):
    """pyiqa's eval rule, on window indices: all windows when fewer than 15, else 15 at a step
    of n // 15 in row-major order (pyiqa's own class is compared in test_liqe_matches_pyiqa)."""
    metric = LIQE(pretrained=False)
    rows, cols = ((s - 224) // 32 + 1 for s in size)
    expected = list(range(rows * cols)) if rows * cols <= 15 else [(rows * cols // 15) * i for i in range(15)]
    assert metric.patch_indices(*size) == [((k // cols) * 32, (k % cols) * 32) for k in expected]


@needs_vocab
def test_liqe_short_side_rule():
    metric = TinyLIQE(pretrained=False, seed=4)
    with pytest.raises(ConfigError, match="short side"):
        metric.frame_scores(torch.rand(1, 1, 3, 200, 300))
    small = TinyLIQE(pretrained=False, seed=4, upscale_small=True)
    assert small.frame_scores(torch.rand(1, 1, 3, 112, 128)).shape == (1, 1)


# --------------------------------------------------------------------------- contract


@needs_vocab
def test_contract_update_and_loading_through_weights_path(tmp_path):
    """update → one value per clip (mean of frames); weights read from an OpenAI archive."""
    _openai_archive(build_clip(None, TINY_RN, TINY_TEXT, random_seed=5), tmp_path / "RN50.pt")
    metric = TinyCLIPIQA(weights_path=str(tmp_path / "RN50.pt"), verify_weights=False)
    assert metric.missing_weights() == []
    videos = torch.rand(2, 2, 3, 64, 64)
    metric.update(videos)
    frame = metric.frame_scores(videos)
    assert torch.allclose(metric.per_clip(), frame.mean(dim=1).double(), atol=1e-6)
    assert metric.weights_file() == ("RN50.pt", weights.sha256_of(tmp_path / "RN50.pt"))
    with pytest.raises(ConfigError, match="RN50"):
        CLIPIQA(weights_path=str(tmp_path / "RN50.pt"), verify_weights=False).model()  # tiny ≠ RN50


def test_missing_weights_name_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("FVR_BENCH_WEIGHTS", str(tmp_path))
    monkeypatch.setattr(weights, "USER_CACHE", tmp_path / "none")
    for cls, name, filename in ((CLIPIQA, "clip_rn50", "RN50.pt"), (LIQE, "liqe_mix", "LIQE.pt")):
        metric = cls()
        assert metric.required_weights()[0] == name and name in metric.missing_weights()
        assert not cls.needs_reference and cls.higher_is_better and cls.level == "frame"
        with pytest.raises(WeightsMissingError, match=filename):
            metric.update(torch.rand(1, 1, 3, 224, 224))
    with pytest.raises(WeightsMissingError, match="bpe_simple_vocab_16e6"):
        CLIPIQA(pretrained=False, vocab_path=str(tmp_path / "nope.txt.gz")).tokenizer()
    assert CLIPIQA(pretrained=False).settings()["pretrained"] is False


def test_bad_options():
    with pytest.raises(ConfigError):
        CLIPIQA(prompts="nope")
    with pytest.raises(ConfigError):
        CLIPIQA(positional="nope")
    with pytest.raises(ConfigError):
        LIQE(num_patch=0)
