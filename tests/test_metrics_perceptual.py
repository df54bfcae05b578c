"""LPIPS, DISTS and CLIP face consistency.

No pretrained weights are available here, so the networks run with random weights that
the tests write in the OFFICIAL file layouts (LPIPS ``alex.pth``/``vgg.pth``, torchvision
``features.*`` checkpoints, DISTS ``weights.pt``, OpenAI CLIP ``visual.*``) and load through
the metrics' explicit-path arguments: every key is consumed, none is missing. The same
random weights go into the reference implementations (``lpips`` 0.1.4, ``DISTS_pytorch``
0.1; skipped when not installed) and the scores must agree to float32 rounding. With
random weights the scores carry no perceptual meaning, so the rest checks mathematical
properties (identity, symmetry, non-negativity, batching invariance); the monotonicity
check on real weights is a ``calibration`` test.
"""

from __future__ import annotations

import types
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torchvision
from skimage import data
from torch import nn

from fvr_bench import weights
from fvr_bench.errors import ConfigError, WeightsMissingError
from fvr_bench.metrics.backends.clip import (
    VIT_B_32,
    VisionConfig,
    VisionTransformer,
    build_visual,
    infer_config,
    load_openai_visual_state_dict,
)
from fvr_bench.metrics.clip_consistency import FaceConsCLIP
from fvr_bench.metrics.perceptual import (
    DISTS,
    LPIPS,
    LPIPS_CHANNELS,
    build_dists_net,
    build_lpips_net,
    load_dists_alpha_beta,
    load_features_state,
    load_lpips_lins,
)

SIZE = 64


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --------------------------------------------------------------------------- inputs


def _uint8_to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image.astype(np.float32) / np.float32(255.0)).permute(2, 0, 1).contiguous()


@pytest.fixture(scope="module")
def frames() -> dict[str, torch.Tensor]:
    """astronaut at 64², blurred (σ = 1, 2) and noisy versions: ``(3, 64, 64)`` in [0, 1],
    on 8-bit levels (so ``quantize`` is a no-op and references see the same values)."""
    base = cv2.resize(data.astronaut(), (SIZE, SIZE), interpolation=cv2.INTER_AREA)
    rng = np.random.default_rng(0)
    noisy = np.clip(base.astype(np.float64) + rng.normal(0, 12, base.shape), 0, 255).round().astype(np.uint8)
    out = {
        "clean": base,
        "blur1": cv2.GaussianBlur(base, (0, 0), 1.0),
        "blur2": cv2.GaussianBlur(base, (0, 0), 2.0),
        "noise": noisy,
        "flip": base[:, ::-1].copy(),
    }
    return {name: _uint8_to_tensor(image) for name, image in out.items()}


def clip_of(frames: dict[str, torch.Tensor], *names: str) -> torch.Tensor:
    """``(1, T, 3, 64, 64)`` clip of the named frames."""
    return torch.stack([frames[n] for n in names])[None]


# --------------------------------------------------------------------------- official layouts


def torchvision_features(name: str, seed: int) -> nn.Sequential:
    """torchvision's own ``features`` of ``alexnet``/``vgg16`` (built by torchvision, not by
    us), randomly initialised with non-zero biases. The classifier is built on the meta
    device only, so it costs nothing."""
    with torch.device("meta"):
        model = getattr(torchvision.models, name)(weights=None)
    features = model.features.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(seed)
    for module in features.modules():
        if isinstance(module, nn.Conv2d):
            fan_in = module.weight[0].numel()
            module.weight.data.normal_(0.0, (2.0 / fan_in) ** 0.5, generator=generator)
            module.bias.data.normal_(0.0, 0.01, generator=generator)
    return features.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def official(tmp_path_factory) -> types.SimpleNamespace:
    """Random weights written in the official file layouts, plus the modules they came from."""
    root = tmp_path_factory.mktemp("weights")
    generator = torch.Generator().manual_seed(1)
    out = types.SimpleNamespace(root=root, features={}, lin={}, backbone={})
    for net, tv_name in (("alex", "alexnet"), ("vgg", "vgg16")):
        features = torchvision_features(tv_name, seed=2)
        out.features[net] = features
        state = {f"features.{k}": v for k, v in features.state_dict().items()}
        # a stand-in classifier entry: torchvision files carry classifier.*, which is ignored
        state["classifier.6.bias"] = torch.zeros(1000)
        out.backbone[net] = root / f"torchvision_{tv_name}.pth"
        torch.save(state, out.backbone[net])
        # LPIPS v0.1 linear layers: lin{k}.model.1.weight, (1, C, 1, 1), non-negative
        lins = {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1, generator=generator) * 2 / c
                for k, c in enumerate(LPIPS_CHANNELS[net])}  # fmt: skip
        out.lin[net] = root / f"{net}.pth"
        torch.save(lins, out.lin[net])
    # DISTS_pytorch weights.pt: alpha, beta of (1, 1475, 1, 1)
    out.alpha_beta = {"alpha": torch.rand(1, 1475, 1, 1, generator=generator) * 0.2,
                      "beta": torch.rand(1, 1475, 1, 1, generator=generator) * 0.2}  # fmt: skip
    out.dists = root / "weights.pt"
    torch.save(out.alpha_beta, out.dists)
    return out


# --------------------------------------------------------------------------- references


@pytest.fixture()
def lpips_reference(monkeypatch, official):
    """``lpips.LPIPS(net)`` of the reference package on our random backbone and linear file."""
    lpips = pytest.importorskip("lpips")
    fake_tv = types.SimpleNamespace(
        alexnet=lambda *a, **k: types.SimpleNamespace(features=official.features["alex"]),
        vgg16=lambda *a, **k: types.SimpleNamespace(features=official.features["vgg"]),
    )
    monkeypatch.setattr(lpips.pretrained_networks, "tv", fake_tv)

    def build(net: str):
        # the reference loads our linear-layer file itself (its own key mapping)
        return lpips.LPIPS(pretrained=True, net=net, version="0.1", model_path=str(official.lin[net]), verbose=False)

    return build


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_agrees_with_reference_package(net, frames, official, lpips_reference):
    metric = LPIPS(net=net, lin_path=str(official.lin[net]), backbone_path=str(official.backbone[net]), verify_weights=False)
    preds = clip_of(frames, "blur2", "noise")
    target = clip_of(frames, "clean", "clean")
    ours = metric.frame_scores(preds, target)
    assert ours.shape == (1, 2)
    with torch.no_grad():
        ref = lpips_reference(net)(preds[0], target[0], normalize=True).flatten()
    assert torch.allclose(ours[0], ref, rtol=1e-5, atol=1e-8), (ours, ref)
    assert (ours > 0).all()
    if net == "alex":
        # BFVR-STC quirk: frames already in [-1, 1] passed with normalize=True again
        compat = LPIPS(net=net, compat_double_normalize=True, lin_path=str(official.lin[net]),
                       backbone_path=str(official.backbone[net]), verify_weights=False)  # fmt: skip
        with torch.no_grad():
            ref_compat = lpips_reference(net)(preds[0] * 2 - 1, target[0] * 2 - 1, normalize=True).flatten()
        got = compat.frame_scores(preds, target)[0]
        assert torch.allclose(got, ref_compat, rtol=1e-5, atol=1e-8)
        assert not torch.allclose(got, ours[0])


def test_dists_agrees_with_reference_package(monkeypatch, frames, official):
    dists_pt = pytest.importorskip("DISTS_pytorch.DISTS_pt")
    monkeypatch.setattr(
        dists_pt, "models", types.SimpleNamespace(vgg16=lambda *a, **k: types.SimpleNamespace(features=official.features["vgg"]))
    )
    reference = dists_pt.DISTS(load_weights=False)
    reference.alpha.data = official.alpha_beta["alpha"].clone()  # what load_weights=True does
    reference.beta.data = official.alpha_beta["beta"].clone()
    metric = DISTS(weights_path=str(official.dists), backbone_path=str(official.backbone["vgg"]), verify_weights=False)
    preds = clip_of(frames, "clean", "blur1")  # frame 0 identical to its target
    target = clip_of(frames, "clean", "clean")
    ours = metric.frame_scores(preds, target)[0]
    with torch.no_grad():
        ref = reference(preds[0], target[0])
    assert torch.allclose(ours, ref, rtol=1e-5, atol=1e-6), (ours, ref)
    assert abs(ours[0].item()) < 1e-5  # identical frames: ≈ 0 (σxy = E[xy] − μxμy rounding)
    assert 0 < ours[1].item() < 1


# --------------------------------------------------------------------------- weight-key mapping


def test_official_files_are_consumed_key_by_key(official):
    for net in ("alex", "vgg"):
        model = build_lpips_net(net, None, None)
        lins = torch.load(official.lin[net], weights_only=True)
        assert load_lpips_lins(model, lins, "test") == sorted(lins)  # every key used
        for key, lin in zip(sorted(lins), model.lins):
            assert torch.equal(lin, lins[key])
        backbone = torch.load(official.backbone[net], weights_only=True)
        report = load_features_state(model.features, backbone, "test")
        assert report["ignored"] == ["classifier.6.bias"]
        assert sorted(report["used"] + report["ignored"]) == sorted(backbone)
        for key, value in model.features.state_dict().items():
            assert torch.equal(value, backbone[f"features.{key}"])
    model = build_dists_net(None, None)
    assert load_dists_alpha_beta(model, dict(official.alpha_beta), "test") == ["alpha", "beta"]
    assert torch.equal(model.alpha, official.alpha_beta["alpha"]) and torch.equal(model.beta, official.alpha_beta["beta"])


def test_released_files_shipped_in_reference_packages_load():
    """The real v0.1 ``alex.pth``/``vgg.pth`` (inside the ``lpips`` wheel; vgg.pth holds CUDA
    tensors) and DISTS ``weights.pt`` (inside ``DISTS_pytorch``) load through our key mapping."""
    lpips = pytest.importorskip("lpips")
    dists_pkg = pytest.importorskip("DISTS_pytorch")
    from fvr_bench.metrics.perceptual import _load_file

    for net in ("alex", "vgg"):
        state = _load_file(Path(lpips.__file__).parent / "weights" / "v0.1" / f"{net}.pth")
        model = build_lpips_net(net, None, None)
        assert load_lpips_lins(model, state, f"{net}.pth") == sorted(state)
        assert all((lin >= 0).all() for lin in model.lins)
    state = _load_file(Path(dists_pkg.__file__).parent / "weights.pt")
    model = build_dists_net(None, None)
    assert load_dists_alpha_beta(model, state, "weights.pt") == ["alpha", "beta"]
    assert model.alpha.shape == (1, 1475, 1, 1)


def test_wrong_layouts_are_refused(official):
    model = build_lpips_net("alex", None, None)
    lins = torch.load(official.lin["alex"], weights_only=True)
    with pytest.raises(ConfigError, match="lin4.model.1.weight"):
        load_lpips_lins(model, {k: v for k, v in lins.items() if not k.startswith("lin4")}, "alex.pth")
    with pytest.raises(ConfigError, match="unexpected"):
        load_lpips_lins(model, {**lins, "lin5.model.1.weight": torch.zeros(1, 8, 1, 1)}, "alex.pth")
    with pytest.raises(ConfigError, match="shape"):
        load_lpips_lins(model, {**lins, "lin0.model.1.weight": torch.zeros(1, 63, 1, 1)}, "alex.pth")
    vgg = torch.load(official.backbone["vgg"], weights_only=True)
    with pytest.raises(ConfigError, match="not a torchvision checkpoint"):
        load_features_state(model.features, vgg, "alexnet.pth")  # VGG file into AlexNet
    with pytest.raises(ConfigError, match="alpha"):
        load_dists_alpha_beta(build_dists_net(None, None), {"alpha": official.alpha_beta["alpha"]}, "weights.pt")


OPENAI_VIT_B_32_VISUAL = {
    "class_embedding": (768,),
    "positional_embedding": (50, 768),
    "proj": (768, 512),
    "conv1.weight": (768, 3, 32, 32),
    "ln_pre.weight": (768,), "ln_pre.bias": (768,),
    "ln_post.weight": (768,), "ln_post.bias": (768,),
    **{
        f"transformer.resblocks.{i}.{name}": shape
        for i in range(12)
        for name, shape in {
            "attn.in_proj_weight": (2304, 768), "attn.in_proj_bias": (2304,),
            "attn.out_proj.weight": (768, 768), "attn.out_proj.bias": (768,),
            "ln_1.weight": (768,), "ln_1.bias": (768,),
            "mlp.c_fc.weight": (3072, 768), "mlp.c_fc.bias": (3072,),
            "mlp.c_proj.weight": (768, 3072), "mlp.c_proj.bias": (768,),
            "ln_2.weight": (768,), "ln_2.bias": (768,),
        }.items()
    },
}  # fmt: skip


def test_clip_vit_b32_parameter_names_are_openai_visual_keys():
    """The 152 ``visual.*`` entries of OpenAI's ViT-B-32.pt, names and shapes."""
    with torch.device("meta"):
        model = VisionTransformer(VIT_B_32)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == OPENAI_VIT_B_32_VISUAL
    assert infer_config({k: torch.empty(s, device="meta") for k, s in OPENAI_VIT_B_32_VISUAL.items()}) == VIT_B_32


def test_clip_torchscript_archive_loads_visual_keys(tmp_path):
    """OpenAI ships a TorchScript archive with fp16 parameters, text tower and scalar
    entries; the loader keeps ``visual.*`` as float32 and the encoder consumes all of it."""
    tiny = VisionConfig(input_resolution=64, patch_size=32, width=64, layers=2, heads=1, output_dim=16)
    source = build_visual(None, tiny, random_seed=3)

    class OpenAILayout(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.visual = source
            self.token_embedding = nn.Embedding(10, 8)
            self.logit_scale = nn.Parameter(torch.tensor(4.6))
            self.register_buffer("input_resolution", torch.tensor(64))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.logit_scale

    with warnings.catch_warnings():  # TorchScript is deprecated (FutureWarning) in torch >= 2.9
        warnings.simplefilter("ignore", FutureWarning)
        archive = torch.jit.trace(OpenAILayout().half(), torch.zeros(1, dtype=torch.half))
        torch.jit.save(archive, str(tmp_path / "ViT-tiny.pt"))
    state = load_openai_visual_state_dict(tmp_path / "ViT-tiny.pt")
    assert set(state) == set(source.state_dict()) and all(v.dtype == torch.float32 for v in state.values())
    assert infer_config(state) == VisionConfig(64, 32, 64, 2, 1, 16)  # heads = width // 64
    loaded = build_visual(state)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded(x), source.half().float()(x), atol=1e-5)
    with pytest.raises(ConfigError, match="does not match"):
        build_visual({k: v for k, v in state.items() if k != "ln_post.bias"})


def test_clip_matches_open_clip_when_installed():
    """open_clip's VisionTransformer (OpenAI layout, QuickGELU) with our state dict."""
    transformer = pytest.importorskip("open_clip.transformer")
    tiny = {"image_size": 64, "patch_size": 32, "width": 64, "layers": 2, "heads": 1, "output_dim": 16}
    ref = transformer.VisionTransformer(mlp_ratio=4.0, act_layer=transformer.QuickGELU, **tiny).eval()
    ours = build_visual({k: v.clone() for k, v in ref.state_dict().items()})
    x = torch.rand(2, 3, 64, 64) * 255
    with torch.no_grad():
        assert torch.allclose(ours(x), ref(x), atol=1e-5)


# --------------------------------------------------------------------------- properties (random weights)


def test_lpips_properties_random_weights(frames):
    metric = LPIPS(net="alex", pretrained=False)
    clean = clip_of(frames, "clean", "blur1", "noise")
    other = clip_of(frames, "clean", "blur2", "flip")
    # one batch holds both orders: clip 0 = (clean, other), clip 1 = (other, clean)
    preds, target = torch.cat([clean, other]), torch.cat([other, clean])
    scores = metric.frame_scores(preds, target)
    assert scores[:, 0].eq(0).all()  # exactly 0 for identical frames
    assert (scores[:, 1:] > 0).all()  # non-negative weights → non-negative distance
    assert torch.allclose(scores[0], scores[1], rtol=1e-5)  # symmetric
    # chunking (and so batching) does not change the number
    chunked = LPIPS(net="alex", pretrained=False, chunk_frames=1).frame_scores(preds, target)
    assert torch.allclose(chunked, scores, rtol=1e-5, atol=1e-8)
    # the contract: update → one value per clip, the mean over its frames
    metric.update(preds, target)
    assert torch.allclose(metric.per_clip(), scores.mean(dim=1).double(), rtol=1e-6)
    # quantize rounds to 8-bit levels: a sub-level perturbation vanishes
    jitter = (clean[:, :1] + 0.3 / 255).clamp(0, 1)
    assert metric.frame_scores(jitter, clean[:, :1]).item() == 0
    assert LPIPS(net="alex", pretrained=False, quantize=False).frame_scores(jitter, clean[:, :1]).item() > 0


def test_settings_change_provenance(official):
    plain = LPIPS(net="alex", pretrained=False)
    compat = LPIPS(net="alex", pretrained=False, compat_double_normalize=True)
    assert plain.metric_id == "lpips_alex" and LPIPS(net="vgg", pretrained=False).metric_id == "lpips_vgg"
    assert plain.provenance().provenance_id != compat.provenance().provenance_id
    assert compat.settings()["net_input_range"].startswith("[-3, 1]")
    assert plain.weights_file() == ("random(seed=0)", None) and plain.required_weights() == []
    real = LPIPS(net="alex", lin_path=str(official.lin["alex"]), backbone_path=str(official.backbone["alex"]), verify_weights=False)
    name, sha = real.weights_file()
    assert name == f"alex.pth+{official.backbone['alex'].name}"
    assert sha == f"{weights.sha256_of(official.lin['alex'])}+{weights.sha256_of(official.backbone['alex'])}"
    assert real.missing_weights() == []
    assert FaceConsCLIP(clip_normalize=True, pretrained=False).provenance().provenance_id != FaceConsCLIP(pretrained=False).provenance().provenance_id
    with pytest.raises(ConfigError):
        LPIPS(net="squeeze")


def test_published_checksum_is_verified(official):
    """A file whose sha256 differs from the published one (the lin layers: full sha256;
    torchvision files: the prefix in their name) is refused unless verify_weights=false
    (the actual sha256 is then in the provenance)."""
    metric = LPIPS(net="alex", lin_path=str(official.lin["alex"]), backbone_path=str(official.backbone["alex"]))
    with pytest.raises(WeightsMissingError, match="does not match the published (df73285e|7be5be79)"):
        metric.frame_scores(torch.zeros(1, 1, 3, 64, 64), torch.zeros(1, 1, 3, 64, 64))


# --------------------------------------------------------------------------- missing weights


@pytest.fixture()
def no_weights_anywhere(monkeypatch, tmp_path):
    """Empty user cache, env folder, torch hub cache and package lookups."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FVR_BENCH_WEIGHTS", str(tmp_path / "env"))
    monkeypatch.setattr(weights, "_package_dir", lambda package: None)


@pytest.mark.parametrize(
    "build, filename",
    [
        (lambda: LPIPS(net="alex"), "alex.pth"),
        (lambda: LPIPS(net="vgg", lin_path="/nonexistent/vgg.pth"), "vgg.pth"),
        (lambda: DISTS(), "weights.pt"),
        (lambda: FaceConsCLIP(), "ViT-B-32.pt"),
    ],
)
def test_missing_weights_raise_naming_the_file(build, filename, no_weights_anywhere):
    metric = build()  # construction never touches the weights
    assert metric.missing_weights() == metric.required_weights() != []
    clip = torch.zeros(1, 2, 3, 64, 64)
    with pytest.raises(WeightsMissingError, match=filename.replace(".", r"\.")):
        metric.update(clip, None if not metric.needs_reference else clip)


# --------------------------------------------------------------------------- FaceCons (CLIP)


@pytest.fixture(scope="module")
def clip_weights(tmp_path_factory) -> Path:
    """A full-size random ViT-B/32 in OpenAI's key layout (fp16, text-tower entries beside
    the visual ones), saved as a plain state dict (the TorchScript path is tested above)."""
    model = build_visual(None, VIT_B_32, random_seed=5)
    state = {f"visual.{k}": v.half() for k, v in model.state_dict().items()}
    state.update({"logit_scale": torch.tensor(4.6), "token_embedding.weight": torch.zeros(8, 4), "input_resolution": torch.tensor(224)})
    path = tmp_path_factory.mktemp("clip") / "ViT-B-32.pt"
    torch.save(state, path)
    return path


def evalcrafter_reference(metric: FaceConsCLIP, video: torch.Tensor) -> float:
    """EvalCrafter's calculate_face_consistency_score on a ``(T, 3, H, W)`` clip: uint8
    frames as float 0–255, torchvision Resize([224, 224]) without antialias (0.15.2), the
    encoder, L2 normalisation, mean of feats[1:] @ feats[0]."""
    resize = torchvision.transforms.Resize([224, 224], antialias=False)
    uint8 = (video * 255 + 0.5).floor().to(torch.uint8)
    tensor_frames = [resize(frame.float()) for frame in uint8]
    encoder = metric.encoder()
    with torch.no_grad():
        feats = torch.cat([encoder(frame.unsqueeze(0)) for frame in tensor_frames])
    feats = feats / feats.norm(p=2, dim=-1, keepdim=True)
    return (feats[1:] @ feats[0].unsqueeze(0).T).mean().item()


def test_facecons_clip_reproduces_evalcrafter(frames, clip_weights):
    metric = FaceConsCLIP(weights_path=str(clip_weights), verify_weights=False)
    videos = torch.cat([clip_of(frames, "clean", "blur2"), clip_of(frames, "clean", "clean")])
    metric.update(videos)  # no reference; one value per clip
    scores = metric.per_clip()
    assert scores.shape == (2,)
    assert scores[0].item() == pytest.approx(evalcrafter_reference(metric, videos[0]), abs=1e-5)
    assert -1.0 <= scores[0].item() < 1.0
    assert scores[1].item() == pytest.approx(1.0, abs=1e-6)  # identical frames
    # the loaded encoder is the fp16 checkpoint cast to float32, every visual key used
    saved = torch.load(clip_weights, weights_only=True)
    own = metric.encoder().state_dict()
    assert {f"visual.{k}" for k in own} == {k for k in saved if k.startswith("visual.")}
    for key, value in own.items():
        assert torch.equal(value, saved[f"visual.{key}"].float())
    assert metric.weights_file() == ("ViT-B-32.pt", weights.sha256_of(clip_weights))


def test_facecons_clip_preprocessing():
    metric = FaceConsCLIP(pretrained=False)
    x = torch.rand(2, 3, 40, 56)
    evalcrafter = metric.encoder_input(x)
    assert evalcrafter.shape == (2, 3, 224, 224)
    assert evalcrafter.max() > 2.0  # 0–255 values, no normalisation
    expected = torchvision.transforms.Resize([224, 224], antialias=False)((x * 255 + 0.5).floor())
    assert torch.allclose(evalcrafter, expected, atol=1e-3)
    normalised = FaceConsCLIP(pretrained=False, clip_normalize=True).encoder_input(x)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    assert torch.allclose(normalised, (evalcrafter / 255 - mean) / std, atol=1e-4)
    with pytest.raises(ConfigError, match="T >= 2"):
        metric.clip_scores(torch.rand(1, 1, 3, 32, 32))
    assert FaceConsCLIP.needs_reference is False and FaceConsCLIP.higher_is_better is True


# --------------------------------------------------------------------------- real weights


@pytest.mark.calibration
def test_real_weights_are_monotonic_in_blur():
    """With the released weights (when present): more blur → larger LPIPS/DISTS."""
    names = ["lpips_alex_lin", "torchvision_alexnet", "lpips_vgg_lin", "torchvision_vgg16", "dists_alpha_beta"]
    if any(weights.find(n) is None for n in names):
        pytest.skip("released LPIPS/DISTS weights not found")
    base = cv2.resize(data.astronaut(), (256, 256), interpolation=cv2.INTER_AREA)
    levels = [_uint8_to_tensor(cv2.GaussianBlur(base, (0, 0), s)) for s in (0.5, 1.0, 2.0, 4.0)]
    preds = torch.stack(levels)[None]
    target = _uint8_to_tensor(base).expand(4, -1, -1, -1)[None]
    for metric in (LPIPS(net="alex"), LPIPS(net="vgg"), DISTS()):
        scores = metric.frame_scores(preds, target)[0]
        assert (scores.diff() > 0).all(), (metric.metric_id, scores)
