"""IP-FVR conditioning: text context (OpenCLIP penultimate + ln_final), Face2Text, image prompt."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fvr_bench.errors import ConfigError, WeightsMissingError
from fvr_bench.methods.ip_fvr import face2text as f2t
from fvr_bench.methods.ip_fvr.image_prompt import (
    DecoupledAttnProcessor,
    FaceImageEncoder,
    ImagePromptProjection,
    decoupled_processors,
    image_prompt_state,
    join_context,
    load_image_prompt_state,
    mean_identity,
    set_decoupled_attention,
    set_scale,
)
from fvr_bench.methods.ip_fvr.text import (
    OPENCLIP_VIT_H_TEXT,
    TextEncoder,
    convert_open_clip_text,
    load_open_clip_text,
)

TINY_TEXT = {"context_length": 77, "vocab_size": 1000, "width": 32, "heads": 4, "layers": 3}
TINY_HF = {"vocab_size": 1000, "hidden_size": 32, "intermediate_size": 128, "num_attention_heads": 4,
           "num_hidden_layers": 3, "max_position_embeddings": 77}


# --------------------------------------------------------------------------- text encoder


@pytest.fixture(scope="module")
def tiny_open_clip():
    """A tiny OpenCLIP CLIP (full model layout: visual.*, logit_scale, text tower), seeded."""
    from open_clip.model import CLIP

    torch.manual_seed(0)
    model = CLIP(16, {"image_size": 32, "patch_size": 16, "width": 32, "layers": 1, "head_width": 16}, TINY_TEXT).eval()
    with torch.no_grad():  # open_clip zero-inits nothing in the text tower, but make LN non-trivial
        model.ln_final.weight.uniform_(0.5, 1.5)
        model.ln_final.bias.normal_(0, 0.1)
    return model


def _venhancer_reference(model, tokens: torch.Tensor, skip: int) -> torch.Tensor:
    """VEnhancer FrozenOpenCLIPEmbedder.encode_with_transformer (layer_idx = skip) on open_clip."""
    x = model.token_embedding(tokens) + model.positional_embedding
    batch_first = model.transformer.batch_first
    if not batch_first:
        x = x.permute(1, 0, 2)
    blocks = model.transformer.resblocks
    for block in blocks[: len(blocks) - skip]:
        x = block(x, attn_mask=model.attn_mask)
    if not batch_first:
        x = x.permute(1, 0, 2)
    return model.ln_final(x)


@pytest.mark.parametrize("layer,skip", [("penultimate", 1), ("last", 0)])
def test_text_encoder_matches_open_clip(tiny_open_clip, layer, skip):
    encoder = TextEncoder(TINY_HF, layer=layer)
    encoder.load_converted(convert_open_clip_text(tiny_open_clip.state_dict()), "tiny open_clip")
    prompts = ["a good video", f2t.with_quality("a close-up video of a young woman, speaking")]
    tokens = encoder.tokenize(prompts)
    assert tokens.shape == (2, 77) and tokens.dtype == torch.long
    with torch.no_grad():
        expected = _venhancer_reference(tiny_open_clip, tokens, skip)
        got = encoder.encode(prompts)
    assert got.shape == (2, 77, 32)
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-5)
    if layer == "penultimate":
        with torch.no_grad():
            last = _venhancer_reference(tiny_open_clip, tokens, 0)
        assert not torch.allclose(got, last, atol=1e-3)  # the layer choice matters


def test_text_encoder_memoises_per_prompt(tiny_open_clip):
    encoder = TextEncoder(TINY_HF)
    encoder.load_converted(convert_open_clip_text(tiny_open_clip.state_dict()), "tiny open_clip")
    calls = []
    encoder.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    first = encoder.encode(["a", "b", "a"])
    second = encoder.encode(["b"])
    assert calls == [2]  # "a" and "b" once each, the second call from the memo
    torch.testing.assert_close(first[1], second[0])
    torch.testing.assert_close(first[0], first[2])
    assert not first.requires_grad


def test_tokenizer_truncates_and_pads():
    encoder = TextEncoder(TINY_HF)
    encoder.vocab_size = 49408  # look at the raw OpenCLIP ids (no test-only modulo)
    ids = encoder.tokenize(["a good video", "word " * 200])
    assert ids[0, 0] == 49406 and ids[0, 4] == 49407 and ids[0, 5:].eq(0).all()
    assert ids[1, -1] == 49407 and ids[1].ne(0).all()


def test_vit_h_config_matches_open_clip_json():
    import open_clip

    cfg = json.loads((Path(open_clip.__file__).parent / "model_configs" / "ViT-H-14.json").read_text())
    text, h = cfg["text_cfg"], OPENCLIP_VIT_H_TEXT
    assert (h["hidden_size"], h["num_attention_heads"], h["num_hidden_layers"]) == (text["width"], text["heads"], text["layers"])
    assert (h["vocab_size"], h["max_position_embeddings"]) == (text["vocab_size"], text["context_length"])
    assert h["intermediate_size"] == 4 * text["width"] and h["projection_dim"] == cfg["embed_dim"]
    assert h["hidden_act"] == "gelu" and not cfg.get("quick_gelu", False) and h["layer_norm_eps"] == 1e-5


def test_convert_open_clip_text_is_strict(tiny_open_clip):
    state = dict(tiny_open_clip.state_dict())
    converted = convert_open_clip_text(state)
    assert "embeddings.position_embedding.weight" in converted and "encoder.layers.2.self_attn.k_proj.bias" in converted
    assert not any(k.startswith("visual") or "text_projection" in k for k in converted)
    _, k, _ = state["transformer.resblocks.1.attn.in_proj_weight"].chunk(3)
    torch.testing.assert_close(converted["encoder.layers.1.self_attn.k_proj.weight"], k)
    with_proj = convert_open_clip_text(state, with_projection=True)
    torch.testing.assert_close(with_proj["text_projection.weight"], state["text_projection"].t())

    with pytest.raises(ConfigError, match="unexpected"):
        convert_open_clip_text({**state, "transformer.resblocks.0.attn.extra": torch.zeros(1)})
    with pytest.raises(ConfigError, match="missing"):
        convert_open_clip_text({k: v for k, v in state.items() if k != "ln_final.bias"})
    with pytest.raises(ConfigError, match="resblocks.1 lacks"):
        convert_open_clip_text({k: v for k, v in state.items() if k != "transformer.resblocks.1.mlp.c_fc.bias"})
    with pytest.raises(ConfigError, match="indices"):
        convert_open_clip_text({k: v for k, v in state.items() if not k.startswith("transformer.resblocks.1.")})

    # a config of another shape / depth is refused when loading
    with pytest.raises(ConfigError, match="another shape"):
        TextEncoder({**TINY_HF, "intermediate_size": 64}).load_converted(converted, "tiny")
    with pytest.raises(ConfigError, match="3 transformer block"):
        TextEncoder({**TINY_HF, "num_hidden_layers": 4}).load_converted(converted, "tiny")


def test_load_open_clip_text(tmp_path, tiny_open_clip):
    missing = tmp_path / "open_clip_pytorch_model.bin"
    with pytest.raises(WeightsMissingError, match="open_clip_pytorch_model.bin"):
        load_open_clip_text(missing, TINY_HF)
    torch.save(tiny_open_clip.state_dict(), missing)
    encoder = load_open_clip_text(missing, TINY_HF)
    tokens = encoder.tokenize(["a good video"])
    with torch.no_grad():
        torch.testing.assert_close(encoder.encode("a good video"), _venhancer_reference(tiny_open_clip, tokens, 1),
                                   atol=2e-5, rtol=1e-5)
    with pytest.raises(ConfigError):
        load_open_clip_text(missing, {**TINY_HF, "hidden_size": 64, "intermediate_size": 256})


# --------------------------------------------------------------------------- Face2Text


WOMAN = {"Male": False, "Young": True, "Wavy_Hair": True, "Brown_Hair": True, "Arched_Eyebrows": True,
         "Wearing_Earrings": True, "Attractive": True, "Blurry": True, "No_Beard": True}
MAN = {"Male": True, "Young": False, "Black_Hair": True, "Straight_Hair": True, "Eyeglasses": True,
       "Goatee": True, "No_Beard": False, "Big_Nose": True, "Smiling": True}


def test_face2text_sentences():
    text = f2t.describe(WOMAN, "happy", ["speaking"])
    assert text == ("a close-up video of a young woman with wavy brown hair and arched eyebrows, wearing earrings, "
                    "speaking, looking happy")
    assert f2t.describe(WOMAN, "happy", ["speaking"]) == text  # deterministic
    man = f2t.describe(MAN, "surprise", ["speaking", "Speaking", " "])
    assert man == ("a close-up video of an older man with straight black hair, a big nose and a goatee, "
                   "wearing glasses, smiling and speaking, looking surprised")
    assert f2t.describe({}, None, ()) == "a close-up video of a person"
    assert f2t.describe({"Bald": True, "Black_Hair": True, "male": True}, "neutral") == \
        "a close-up video of a man with a bald head, with a neutral expression"
    for sentence in (text, man, f2t.describe({name: True for name in f2t.CELEBA_ATTRIBUTES}, "sad", ["nodding"])):
        assert "None" not in sentence and ",," not in sentence and "  " not in sentence
        assert not sentence.endswith((",", " ")) and " with ," not in sentence
    assert "attractive" not in text and "blurry" not in text  # subjective / image-quality attributes left out
    with pytest.raises(ConfigError, match="unknown CelebA"):
        f2t.describe({"Big_Ears": True})
    with pytest.raises(ConfigError, match="unknown emotion"):
        f2t.describe({}, "bored")
    assert len(f2t.CELEBA_ATTRIBUTES) == 40 and len(set(f2t.CELEBA_ATTRIBUTES)) == 40
    assert f2t.FER2013_EMOTIONS == ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


def test_face2text_negative_flips_attributes():
    neg = f2t.negative(WOMAN, "happy", ["speaking"])
    assert neg == "a close-up video of an old man with straight blond hair, looking sad"
    neg_man = f2t.negative(MAN, "neutral")
    assert neg_man == ("a close-up video of a young woman with curly blond hair and a clean-shaven face, "
                       "wearing no glasses, frowning and looking angry")
    assert f2t.negative({"Male": True, "No_Beard": True}) == "a close-up video of a woman with a full beard"
    assert f2t.negative({}, None) == f2t.DEFAULT_NEGATIVE == ""


def test_quality_prompts():
    assert f2t.with_quality("a good video") == "a good video" + f2t.QUALITY_POSITIVE  # VEnhancer: text + positive
    assert f2t.with_quality("", positive=False) == f2t.QUALITY_NEGATIVE
    assert f2t.with_quality("x", positive=False, joiner=", ") == "x, " + f2t.QUALITY_NEGATIVE
    assert f2t.QUALITY_POSITIVE.startswith("Cinematic") and f2t.QUALITY_NEGATIVE.endswith("over-smooth")


def test_face2text_prompts_and_fallback():
    plain = f2t.Face2Text()
    pos, neg, note = plain.prompts(torch.rand(3, 16, 16))
    assert (pos, neg) == ("a good video", "")
    assert note == "Face2Text: no attribute/emotion classifier files; default prompt 'a good video'"
    assert plain.prompts(None, ["speaking"])[0] == "a close-up video of a person, speaking"

    # references vote: two say Male, one does not; emotions happy, sad, happy
    votes = iter([{"Male": True}, {"Male": False}, {"Male": True}])
    emotions = iter(["happy", "sad", "happy"])
    model = f2t.Face2Text(lambda image: next(votes), lambda image: next(emotions))
    pos, neg, note = model.prompts(torch.rand(3, 3, 16, 16), ["speaking"])
    assert pos == "a close-up video of a man, speaking, looking happy"
    assert neg == "a close-up video of a woman, looking sad"
    assert "LLM is unnamed" in note

    # the logit-network adapters of the declared classifier files
    attr_net = lambda x: torch.where(torch.arange(40) == 20, 5.0, -5.0).expand(x.shape[0], 40)
    emo_net = lambda x: torch.eye(7)[5].expand(x.shape[0], 7)
    wrapped = f2t.Face2Text(f2t.attribute_classifier(attr_net), f2t.emotion_classifier(emo_net))
    pos, _, _ = wrapped.prompts(torch.rand(3, 50, 40))
    # only Male is positive; Young / No_Beard false → "older", "a beard"
    assert pos == "a close-up video of an older man with a beard, looking surprised"


# --------------------------------------------------------------------------- decoupled attention


def _tiny_unet():
    from diffusers import UNet3DConditionModel

    torch.manual_seed(0)
    return UNet3DConditionModel(block_out_channels=(8, 16), norm_num_groups=4,
                                down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
                                up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"), cross_attention_dim=8,
                                attention_head_dim=4, layers_per_block=1, in_channels=4, out_channels=4).eval()


def _attention(dim=16, ctx=8, heads=2):
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(1)
    return Attention(dim, cross_attention_dim=ctx, heads=heads, dim_head=dim // heads).eval()


def test_decoupled_scale_zero_is_text_only():
    from diffusers.models.attention_processor import AttnProcessor2_0

    attn = _attention()
    x, text, image = torch.randn(2, 10, 16), torch.randn(2, 5, 8), torch.randn(2, 3, 8)
    processor = DecoupledAttnProcessor(16, 8, num_tokens=3, scale=0.0)
    with torch.no_grad():
        expected = AttnProcessor2_0()(attn, x, text)
        got = processor(attn, x, join_context(text, image))
        assert torch.equal(got, expected)
        processor.scale = 0.7
        # zero image tokens: the image branch adds exactly nothing whatever λ
        torch.testing.assert_close(processor(attn, x, join_context(text, None, 3)), expected, atol=1e-6, rtol=0)
        with_image = processor(attn, x, join_context(text, image))
        assert not torch.allclose(with_image, expected, atol=1e-4)
        # λ ≠ 0 changes only through the image tokens: Z' − Z = λ·Attn(Q, K_i, V_i) through to_out (linear)
        other = processor(attn, x, join_context(text, image * 2))
        text_changed = processor(attn, x, join_context(torch.randn(2, 5, 8), image))
        assert not torch.allclose(other, with_image, atol=1e-4) and not torch.allclose(text_changed, with_image, atol=1e-4)
        q = attn.to_q(x).view(2, 10, 2, 8).transpose(1, 2)
        k = processor.to_k_ip(image).view(2, 3, 2, 8).transpose(1, 2)
        v = processor.to_v_ip(image).view(2, 3, 2, 8).transpose(1, 2)
        image_part = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(2, 10, 16)
        # to_out is affine: its bias is in the text part, only the weight acts on the image part
        torch.testing.assert_close(with_image - expected, 0.7 * F.linear(image_part, attn.to_out[0].weight),
                                   atol=1e-5, rtol=1e-4)


def test_decoupled_matches_diffusers_ip_adapter():
    from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0

    attn = _attention()
    ours = DecoupledAttnProcessor(16, 8, num_tokens=4, scale=0.6)
    reference = IPAdapterAttnProcessor2_0(16, 8, num_tokens=(4,), scale=0.6)
    with torch.no_grad():
        reference.to_k_ip[0].weight.copy_(ours.to_k_ip.weight)
        reference.to_v_ip[0].weight.copy_(ours.to_v_ip.weight)
        x, text, image = torch.randn(2, 10, 16), torch.randn(2, 6, 8), torch.randn(2, 4, 8)
        torch.testing.assert_close(ours(attn, x, join_context(text, image)), reference(attn, x, (text, [image])),
                                   atol=1e-6, rtol=1e-5)


def test_set_decoupled_attention_on_unet3d():
    unet = _tiny_unet()
    before = {name: type(p).__name__ for name, p in unet.attn_processors.items()}
    installed = set_decoupled_attention(unet, num_tokens=2, scale=0.5)
    assert sorted(installed) == ["down_blocks.0.attentions.0.transformer_blocks.0.attn2",
                                 "mid_block.attentions.0.transformer_blocks.0.attn2",
                                 "up_blocks.1.attentions.0.transformer_blocks.0.attn2",
                                 "up_blocks.1.attentions.1.transformer_blocks.0.attn2"]
    for name, processor in unet.attn_processors.items():
        spatial_attn2 = name[: -len(".processor")] in installed
        assert isinstance(processor, DecoupledAttnProcessor) == spatial_attn2
        if not spatial_attn2:
            assert type(processor).__name__ == before[name]  # temporal / self-attention untouched
    mid = installed["mid_block.attentions.0.transformer_blocks.0.attn2"]
    assert mid.to_k_ip.weight.shape == (16, 8)
    attn = unet.mid_block.attentions[0].transformer_blocks[0].attn2
    assert torch.equal(mid.to_k_ip.weight, attn.to_k.weight) and torch.equal(mid.to_v_ip.weight, attn.to_v.weight)
    assert any(k.endswith("attn2.processor.to_k_ip.weight") for k in unet.state_dict())  # saved with the UNet

    torch.manual_seed(2)
    sample, text, image = torch.randn(1, 4, 2, 8, 8), torch.randn(1, 5, 8), torch.randn(1, 2, 8)
    with torch.no_grad():
        out = unet(sample, 10, encoder_hidden_states=join_context(text, image)).sample
        assert out.shape == sample.shape and torch.isfinite(out).all()
        set_scale(unet, 0.0)
        text_only = unet(sample, 10, encoder_hidden_states=join_context(text, image)).sample
        assert all(p.scale == 0.0 for p in decoupled_processors(unet).values())
        stock = _tiny_unet()  # same seed: identical weights, stock processors, text tokens only
        torch.testing.assert_close(text_only, stock(sample, 10, encoder_hidden_states=text).sample, atol=1e-6, rtol=1e-5)
    with pytest.raises(ConfigError):
        set_scale(_tiny_unet(), 1.0)


def test_image_prompt_state_roundtrip():
    unet, projection = _tiny_unet(), ImagePromptProjection(512, 8, 2)
    set_decoupled_attention(unet, 2)
    state = image_prompt_state(unet, projection)
    assert "attn.mid_block.attentions.0.transformer_blocks.0.attn2.to_v_ip.weight" in state
    assert "projection.proj.weight" in state
    other_unet, other_projection = _tiny_unet(), ImagePromptProjection(512, 8, 2)
    set_decoupled_attention(other_unet, 2)
    perturbed = {k: v + 1 for k, v in state.items()}
    load_image_prompt_state(other_unet, other_projection, perturbed, "test")
    for key, value in image_prompt_state(other_unet, other_projection).items():
        torch.testing.assert_close(value, perturbed[key])
    with pytest.raises(ConfigError, match="missing"):
        load_image_prompt_state(other_unet, other_projection, {k: v for k, v in list(state.items())[1:]}, "test")


# --------------------------------------------------------------------------- image tokens


class _TinyFaceEmbedder(torch.nn.Module):
    """A random stand-in for ArcFace: (R, 3, H, W) → (R, 512)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.net = torch.nn.Linear(3 * 4 * 4, 512)

    def forward(self, images):
        return self.net(F.adaptive_avg_pool2d(images, 4).flatten(1))


def test_projection_shapes_and_multi_reference_average():
    projection = ImagePromptProjection(512, 8, num_tokens=3)
    embedder = _TinyFaceEmbedder()
    encoder = FaceImageEncoder(projection, embedder)
    refs = torch.rand(4, 3, 20, 20)
    assert projection(torch.randn(5, 512)).shape == (5, 3, 8)
    tokens = encoder(refs[0])
    assert tokens.shape == (1, 3, 8)
    assert encoder(refs).shape == (1, 3, 8)
    assert encoder(torch.stack([refs[:2], refs[2:]])).shape == (2, 3, 8)
    assert encoder([refs[0], refs[1:]]).shape == (2, 3, 8)
    # several references: the L2-normalised mean of the L2-normalised embeddings
    with torch.no_grad():
        raw = embedder(refs)
    expected = F.normalize(F.normalize(raw, dim=-1).mean(0), dim=-1)
    torch.testing.assert_close(encoder.embed(refs)[0], expected)
    torch.testing.assert_close(mean_identity(raw[:1] * 7.0), F.normalize(raw[0], dim=-1))
    torch.testing.assert_close(encoder(refs), projection(expected[None]))
    # the degraded reference of the negative visual stream takes the same path
    degraded = F.interpolate(F.interpolate(refs, scale_factor=0.25, mode="area"), size=(20, 20), mode="bilinear")
    assert not torch.allclose(encoder(degraded), encoder(refs))
    # gradients reach the projection only
    encoder(refs).sum().backward()
    assert projection.proj.weight.grad is not None and embedder.net.weight.grad is None
    assert all(key.startswith("projection.") for key in encoder.state_dict())  # the face network is not saved
    with pytest.raises(ConfigError):
        encoder(torch.rand(20, 20))
    with pytest.raises(ConfigError):
        projection(torch.randn(2, 128))
