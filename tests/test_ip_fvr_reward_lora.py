"""IP-FVR's identity reward (§3.3) on hand-computed values, and the personalised LoRA (§3.2)
on a tiny diffusers UNet3DConditionModel: which layers it selects, zero init, save/load,
strict errors, one training step."""

from __future__ import annotations

import copy
import functools
import json
import math

import pytest
import torch
from torch import nn

from fvr_bench.errors import ConfigError, DataError
from fvr_bench.methods.ip_fvr.lora import (
    LORA_TARGETS,
    add_identity_lora,
    identity_names,
    load_identity_lora,
    lora_config,
    lora_meta,
    lora_state,
    lora_target_names,
    save_identity_lora,
    set_active_identity,
)
from fvr_bench.methods.ip_fvr.reward import (
    IdentityReward,
    discounted_suffix_sums,
    frame_rewards,
    normalised_advantages,
    reward_loss,
)

# ----------------------------------------------------------------------------- reward


def test_frame_rewards_cosine_on_2d_embeddings():
    frames = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [-3.0, 0.0]])
    r = frame_rewards(frames, torch.tensor([2.0, 0.0]))
    torch.testing.assert_close(r, torch.tensor([1.0, 0.0, 1 / math.sqrt(2), -1.0]))


def test_frame_rewards_several_references_use_mean_of_normalised():
    # normalised refs (1,0) and (0,1) → mean (0.5, 0.5), direction (1,1)/√2
    refs = torch.tensor([[5.0, 0.0], [0.0, 0.1]])
    frames = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    torch.testing.assert_close(frame_rewards(frames, refs), torch.tensor([1.0, 1 / math.sqrt(2)]))


def test_frame_rewards_invalid_frames_are_zero():
    frames = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    r = frame_rewards(frames, torch.tensor([1.0, 0.0]), valid=torch.tensor([False, True]))
    torch.testing.assert_close(r, torch.tensor([0.0, 0.0]))


def test_normalised_advantages_population_std():
    # mean 2, population std sqrt(2/3) → A = ±1/sqrt(2/3) = ±sqrt(1.5)
    a = normalised_advantages(torch.tensor([1.0, 2.0, 3.0]))
    torch.testing.assert_close(a, torch.tensor([-math.sqrt(1.5), 0.0, math.sqrt(1.5)]))


def test_normalised_advantages_ignore_invalid_frames():
    r = torch.tensor([1.0, 100.0, 3.0])
    a = normalised_advantages(r, valid=torch.tensor([True, False, True]))
    torch.testing.assert_close(a, torch.tensor([-1.0, 0.0, 1.0]))  # mean 2, std 1 over {1, 3}


def test_normalised_advantages_degenerate_cases():
    r = torch.tensor([0.5, 0.7, 0.9], requires_grad=True)
    single = normalised_advantages(r, valid=torch.tensor([False, True, False]))
    assert torch.equal(single, torch.zeros(3))
    equal = torch.full((4,), 0.3, requires_grad=True)
    a = normalised_advantages(equal)
    assert torch.equal(a, torch.zeros(4))
    a.sum().backward()
    assert torch.isfinite(equal.grad).all()


def test_discounted_suffix_sums_by_hand():
    # γ = 0.5, A = [1, −1, 2]: R2 = 2, R1 = −1 + 0.5·2 = 0, R0 = 1 + 0.5·0 = 1
    r = discounted_suffix_sums(torch.tensor([1.0, -1.0, 2.0]), 0.5)
    torch.testing.assert_close(r, torch.tensor([1.0, 0.0, 2.0]))
    # γ = 1 is a plain suffix sum; γ = 0 is A itself
    torch.testing.assert_close(discounted_suffix_sums(torch.tensor([1.0, -1.0, 2.0]), 1.0),
                               torch.tensor([2.0, 1.0, 2.0]))
    torch.testing.assert_close(discounted_suffix_sums(torch.tensor([1.0, -1.0, 2.0]), 0.0),
                               torch.tensor([1.0, -1.0, 2.0]))


def test_reward_loss_random_frame_follows_generator():
    returns = torch.tensor([0.0, 1.0, -1.0, 2.0, 0.5])
    expected_index = int(torch.randint(5, (1,), generator=torch.Generator().manual_seed(3)))
    loss = reward_loss(returns, torch.Generator().manual_seed(3))
    torch.testing.assert_close(loss, 1 - torch.exp(returns[expected_index]))
    mean = reward_loss(returns, frame="mean")
    torch.testing.assert_close(mean, (1 - torch.exp(returns)).mean())
    with pytest.raises(ConfigError):
        reward_loss(returns, frame="max")


class TinyEmbedder(nn.Module):
    """conv → global average pool → linear: a differentiable stand-in for ArcFace."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(8, 6)

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = torch.relu(self.conv(frames)).mean(dim=(2, 3))
        return self.head(features), torch.ones(frames.shape[0], dtype=torch.bool)


def _reward_setup(frame: str = "random"):
    torch.manual_seed(0)
    reward = IdentityReward(TinyEmbedder(), gamma=0.9, frame=frame)
    frames = torch.rand(5, 3, 12, 12, requires_grad=True)
    reference = torch.rand(2, 3, 12, 12)
    return reward, frames, reference


def test_identity_reward_gradient_reaches_frames_only():
    reward, frames, reference = _reward_setup()
    reference.requires_grad_(True)
    out = reward(frames, reference, generator=torch.Generator().manual_seed(0))
    assert set(out) == {"loss", "rewards", "advantages", "returns", "valid"}
    assert out["loss"].ndim == 0 and out["rewards"].shape == (5,)
    torch.testing.assert_close(out["returns"], discounted_suffix_sums(out["advantages"], 0.9))
    out["loss"].backward()
    assert frames.grad is not None and frames.grad.abs().sum() > 0
    assert reference.grad is None  # the reference embedding is detached
    assert all(p.grad is None for p in reward.embedder.parameters())  # frozen judge
    reward.train()
    assert not reward.embedder.training


def test_identity_reward_adam_step_lowers_loss():
    reward, frames, reference = _reward_setup(frame="mean")
    optimiser = torch.optim.Adam([frames], lr=1e-2)
    before = reward(frames, reference)["loss"]
    optimiser.zero_grad()
    before.backward()
    optimiser.step()
    after = reward(frames, reference)["loss"]
    assert after.item() < before.item()


def test_identity_reward_needs_a_reference_face():
    def no_face(frames):
        return torch.ones(frames.shape[0], 4), torch.zeros(frames.shape[0], dtype=torch.bool)

    with pytest.raises(DataError):
        IdentityReward(no_face)(torch.rand(3, 3, 8, 8), torch.rand(1, 3, 8, 8))


# ----------------------------------------------------------------------------- LoRA


@functools.lru_cache(maxsize=1)
def _base_unet():
    from diffusers import UNet3DConditionModel

    torch.manual_seed(0)
    return UNet3DConditionModel(
        block_out_channels=(8, 16), norm_num_groups=4,
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        cross_attention_dim=8, attention_head_dim=4, layers_per_block=1).eval().requires_grad_(False)


def tiny_unet():
    """A fresh copy of one tiny UNet (built once: construction is the slow part). Frozen
    like the base under LoRA training: on the CPU a weight that requires grad can take
    another (equally valid) kernel path that differs in the last bits, so bitwise
    comparisons need the same requires_grad flags on both sides."""
    return copy.deepcopy(_base_unet())


@functools.lru_cache(maxsize=1)
def vanilla_output() -> torch.Tensor:
    with torch.no_grad():
        return run_unet(_base_unet())


def unet_inputs():
    g = torch.Generator().manual_seed(1)
    return (torch.randn(1, 4, 3, 8, 8, generator=g), torch.tensor([10]), torch.randn(1, 4, 8, generator=g))


def run_unet(unet) -> torch.Tensor:
    sample, timestep, context = unet_inputs()
    return unet(sample, timestep, encoder_hidden_states=context).sample


def _expected_names(unet, kind: str) -> set[str]:
    """Written independently of the regexes: structure of the module path."""
    names = set()
    for name, module in unet.named_modules():
        parts = name.split(".")
        if not isinstance(module, nn.Linear) or "transformer_blocks" not in parts:
            continue
        if not (parts[-1] in {"to_q", "to_k", "to_v"} and parts[-2] in {"attn1", "attn2"}
                or parts[-2:] == ["to_out", "0"] and parts[-3] in {"attn1", "attn2"}):
            continue
        temporal = "temp_attentions" in parts or parts[0] == "transformer_in"
        spatial = "attentions" in parts
        if (kind == "temporal" and temporal) or (kind == "spatial" and spatial):
            names.add(name)
    return names


def test_lora_targets_select_exactly_the_attention_projections():
    unet = tiny_unet()
    spatial, temporal = _expected_names(unet, "spatial"), _expected_names(unet, "temporal")
    # spatial transformers: down0, mid, up1 ×2 = 4; temporal: transformer_in + the same 4 = 5; 8 projections each
    assert len(spatial) == 4 * 8 and len(temporal) == 5 * 8 and not spatial & temporal
    assert set(lora_target_names(unet, ["spatial"])) == spatial
    assert set(lora_target_names(unet, ["temporal"])) == temporal
    assert set(lora_target_names(unet)) == spatial | temporal
    assert any(n.startswith("transformer_in.") for n in temporal)
    for name in lora_target_names(unet):
        assert not any(word in name for word in ("resnets", "conv", "ff.", "proj_in", "proj_out", "time_emb"))
    assert set(LORA_TARGETS) == {"spatial", "temporal"}

    config = lora_config(rank=4)
    assert config.r == 4 and config.lora_alpha == 4 and isinstance(config.target_modules, str)
    add_identity_lora(unet, "alice", config)
    from peft.tuners.tuners_utils import BaseTunerLayer

    wrapped = {n for n, m in unet.named_modules() if isinstance(m, BaseTunerLayer)}
    assert wrapped == spatial | temporal
    with pytest.raises(ConfigError):
        lora_config(targets=("spatial", "ff"))


def test_lora_init_leaves_output_unchanged_and_only_lora_trains():
    unet = tiny_unet()
    params = add_identity_lora(unet, "alice", lora_config(rank=4))
    with torch.no_grad():
        adapted = run_unet(unet)
    assert torch.equal(vanilla_output(), adapted)
    trainable = {id(p) for p in unet.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in params} and len(params) == 2 * 72


def test_save_load_reproduces_adapted_output(tmp_path):
    unet = tiny_unet()
    add_identity_lora(unet, "alice", lora_config(rank=4, alpha=8))
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)
        adapted = run_unet(unet)
    assert not torch.allclose(vanilla_output(), adapted, atol=1e-3)  # the adapter does something
    state = lora_state(unet, "alice")
    assert all(k.endswith((".lora_A.weight", ".lora_B.weight")) and ".alice." not in k for k in state)
    assert len(state) == 2 * 72
    meta = lora_meta(lora_config(rank=4, alpha=8), base_model="tiny", training={"steps": 0})
    save_identity_lora(tmp_path, "alice", state, meta)
    assert (tmp_path / "alice" / "lora.safetensors").is_file()
    stored = json.loads((tmp_path / "alice" / "lora.json").read_text())
    assert stored["rank"] == 4 and stored["alpha"] == 8 and stored["targets"] == ["spatial", "temporal"]
    assert identity_names(tmp_path) == ["alice"]

    fresh = tiny_unet()
    loaded = load_identity_lora(fresh, tmp_path, "alice", config=lora_config(rank=4, alpha=8), base_model="tiny")
    assert loaded["training"] == {"steps": 0}
    with torch.no_grad():
        assert torch.equal(run_unet(fresh), adapted)
    # plug-and-play: a second identity on the same UNet, switch between them and off
    add_identity_lora(fresh, "bob", lora_config(rank=2))
    fresh.requires_grad_(False)
    with torch.no_grad():
        assert torch.equal(run_unet(fresh), vanilla_output())  # bob has B = 0
        set_active_identity(fresh, "alice")
        assert torch.equal(run_unet(fresh), adapted)
        set_active_identity(fresh, None)
        assert torch.equal(run_unet(fresh), vanilla_output())


def test_load_errors(tmp_path):
    unet = tiny_unet()
    add_identity_lora(unet, "alice", lora_config(rank=4))
    save_identity_lora(tmp_path, "alice", lora_state(unet, "alice"), lora_meta(lora_config(rank=4), "tiny"))
    save_identity_lora(tmp_path, "carol", lora_state(unet, "alice"), lora_meta(lora_config(rank=4), "tiny"))

    with pytest.raises(ConfigError, match=r"lora\.json.*rank 4.*expected rank 8"):
        load_identity_lora(tiny_unet(), tmp_path, "alice", config=lora_config(rank=8))
    with pytest.raises(ConfigError, match="base model"):
        load_identity_lora(tiny_unet(), tmp_path, "alice", base_model="other")
    with pytest.raises(ConfigError) as unknown:
        load_identity_lora(tiny_unet(), tmp_path, "dave")
    message = str(unknown.value)
    assert "alice, carol" in message
    assert "python -m fvr_bench train method=ip_fvr stage=identity identity=dave" in message

    # a json that lies about the rank of its weights, or its targets
    meta_path = tmp_path / "alice" / "lora.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "rank": 8}))
    fresh = tiny_unet()
    with pytest.raises(ConfigError, match=r"lora\.json"):
        load_identity_lora(fresh, tmp_path, "alice")
    assert not any("lora" in n for n, _ in fresh.named_parameters())  # untouched on failure
    meta_path.write_text(json.dumps({**meta, "targets": ["spatial"]}))
    with pytest.raises(ConfigError, match=r"unexpected"):
        load_identity_lora(tiny_unet(), tmp_path, "alice")

    with pytest.raises(ConfigError):
        add_identity_lora(unet, "alice", lora_config(rank=4))  # already there
    with pytest.raises(ConfigError):
        add_identity_lora(unet, "../evil", lora_config(rank=4))


def test_one_lora_step_lowers_mse():
    unet = tiny_unet()
    base = {n: p.detach().clone() for n, p in unet.named_parameters()}
    params = add_identity_lora(unet, "alice", lora_config())
    sample, timestep, context = unet_inputs()
    target = torch.randn(1, 4, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    optimiser = torch.optim.Adam(params, lr=1e-3)

    def loss_now():
        return nn.functional.mse_loss(unet(sample, timestep, encoder_hidden_states=context).sample, target)

    before = loss_now()
    optimiser.zero_grad()
    before.backward()
    optimiser.step()
    with torch.no_grad():
        after = loss_now()
    assert after.item() < before.item()
    for name, param in unet.named_parameters():
        if "lora_" not in name:
            key = name.replace(".base_layer", "")
            assert torch.equal(param, base[key]), name
