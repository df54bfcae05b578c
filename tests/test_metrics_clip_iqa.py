"""CLIP-IQA and LIQE: tokenizer, OpenAI weight layouts, pyiqa's pipeline, contract.

Real weights are user-supplied, so the networks here are random: tiny CLIP configurations
(subclasses of the metrics) keep the suite fast, and full-size models are only built on the
meta device to check the parameter layout. The tokenizer needs OpenAI's BPE vocabulary,
shipped in ``open_clip_torch`` (tests that need it skip when it is absent).
"""

from __future__ import annotations

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
    """open_clip's copy of OpenAI's tokenizer (needs ftfy + regex) on every prompt used here."""
    reference = pytest.importorskip("open_clip.tokenizer").SimpleTokenizer(str(VOCAB))
    texts = liqe_prompts() + CLIPIQA(pretrained=False).prompts() + ["It's a test &amp; café 3.14!"]
    assert all(tokenizer.encode(t) == reference.encode(t) for t in texts)


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
    """RN50.pt: 489 entries (102.1 M values); ViT-B-32.pt / LIQE.pt: 302 (151.3 M); shapes
    checked against OpenAI's ``model.CLIP`` (via pyiqa's copy) during development."""
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


@needs_vocab
def test_clipiqa_matches_pyiqa_formula():
    metric = TinyCLIPIQA(pretrained=False, seed=3)
    frames = torch.rand(1, 2, 3, 80, 96)
    scores = metric.frame_scores(frames)
    assert scores.shape == (1, 2) and ((scores >= 0) & (scores <= 1)).all()
    # pyiqa clipiqa_arch.forward, written out
    net = metric.model()
    tokens = metric.tokenizer()(["Good image", "bad image", "Sharp image", "blurry image", "sharp edges", "blurry edges",
                                 "High resolution image", "low resolution image", "Noise-free image", "noisy image"])
    x = (torch.round(frames[0] * 255) / 255 - torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)) / torch.tensor(
        [0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    with torch.no_grad():
        img = net.encode_image(x, positional="none")
        txt = net.encode_text(tokens)
        img, txt = img / img.norm(dim=-1, keepdim=True), txt / txt.norm(dim=-1, keepdim=True)
        logits = net.logit_scale.exp() * img @ txt.t()
        expected = logits.reshape(2, -1, 2).softmax(dim=-1)[..., 0].mean(dim=1)
    assert torch.allclose(scores[0], expected, atol=1e-5)
    paper = TinyCLIPIQA(pretrained=False, seed=3, prompts="paper")
    assert paper.prompts() == ["Good photo.", "Bad photo."]
    assert paper.provenance().provenance_id != metric.provenance().provenance_id


def _pyiqa_patches(x: torch.Tensor, step: int = 32, num_patch: int = 15) -> torch.Tensor:
    """pyiqa liqe_arch.forward's patch extraction and eval-mode selection."""
    bs = x.size(0)
    x = x.unfold(2, 224, step).unfold(3, 224, step).permute(0, 2, 3, 1, 4, 5).reshape(bs, -1, 3, 224, 224)
    num_patch = min(num_patch, x.size(1))
    sel_step = max(1, x.size(1) // num_patch)
    sel = torch.tensor([sel_step * i for i in range(num_patch)])
    return x[:, sel]


@pytest.mark.parametrize("size", [(256, 320), (224, 224), (300, 250)])
def test_liqe_patch_selection_matches_pyiqa(size):
    metric = LIQE(pretrained=False)
    x = torch.rand(1, 3, *size)
    ours = torch.stack([x[:, :, y : y + 224, c : c + 224] for y, c in metric.patch_indices(*size)], dim=1)
    assert torch.equal(ours, _pyiqa_patches(x))


@needs_vocab
def test_liqe_scores_in_range_and_formula():
    metric = TinyLIQE(pretrained=False, seed=4)
    frames = torch.rand(1, 2, 3, 256, 240)
    scores = metric.frame_scores(frames)
    assert scores.shape == (1, 2) and ((scores >= 1) & (scores <= 5)).all()
    net = metric.model()
    text = metric.text_features()
    assert text.shape == (495, 32)
    x = metric.prepare(frames[0, :1])
    with torch.no_grad():
        feats = net.encode_image(_pyiqa_patches(x).flatten(0, 1))
        feats = feats / feats.norm(dim=-1, keepdim=True)
        probs = (net.logit_scale.exp() * feats @ text.t()).mean(0).softmax(-1).view(5, 9, 11).sum((1, 2))
    assert torch.allclose(scores[0, 0], (probs * torch.arange(1, 6.0)).sum(), atol=1e-5)
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
