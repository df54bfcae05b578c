"""VividFace's MLLM curation: rubric, prompt, answer parsing and audit, face crops, the
Qwen2.5-VL scorer (tiny random-weight model built locally) and the resumable command."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import overrides

from fvr_bench.config import compose
from fvr_bench.curation.faces import FaceRegionExtractor, sample_indices
from fvr_bench.curation.parse import (
    close_truncated,
    normalise_json,
    parse_answer,
    reports_blur,
    to_number,
)
from fvr_bench.curation.prompt import build_prompt, prompt_digest
from fvr_bench.curation.rubric import VIVIDFACE_RUBRIC, Band, Rubric
from fvr_bench.curation.run import curate_command, format_summary
from fvr_bench.curation.scorer import QwenVLScorer, locate_model_dir
from fvr_bench.errors import ConfigError, ResultsMismatchError, WeightsMissingError
from fvr_bench.video import to_tensor

ANSWERS = Path(__file__).parent / "data" / "curation"


def recorded(name: str) -> str:
    return (ANSWERS / f"{name}.txt").read_text()


# =========================================================================== rubric, prompt


def test_rubric_encodes_vividface_facts():
    rubric = VIVIDFACE_RUBRIC
    assert {d.key: d.max_points for d in rubric.dimensions} == {
        "facial_detail_clarity": 35, "stability_motion_blur": 20, "lighting": 20, "artifacts_noise": 15, "occlusion": 10}
    assert [(b.low, b.high) for b in rubric.dimension("Facial detail clarity").bands] == [
        (0, 12), (13, 21), (22, 28), (29, 32), (33, 35)]
    assert [(b.low, b.high) for b in rubric.dimension("occlusion").bands] == [(0, 2), (3, 4), (5, 6), (7, 8), (9, 10)]
    assert {a.key: a.points for a in rubric.adjustments} == {
        "exceptional_skin_texture": 2, "perfect_color_white_balance": 1, "key_region_motion_blur": -3,
        "digital_noise_grain": -2, "unnatural_smoothing": -3, "inconsistent_sharpness": -2}
    assert [rubric.tier_for(s).key for s in (100, 85, 84.5, 80, 79, 75, 74.9, 0)] == [
        "premium", "premium", "high", "high", "standard", "standard", "below_standard", "below_standard"]
    assert rubric.threshold == 90 and rubric.total == 100
    assert rubric.dimension("Stability & Regional Motion-Blur (20 pts)").key == "stability_motion_blur"
    assert rubric.adjustment("Beauty filter") .key == "unnatural_smoothing"
    assert rubric.adjustment("noise and smoothing") is None  # ambiguous names are not guessed
    assert rubric.tier_named("Below Standard (<75)").key == "below_standard"
    assert rubric.dimension("lighting").band_of(17).meaning.startswith("excellent")
    assert rubric.dimension("lighting").band_of(21) is None


def test_rubric_validation_rejects_gaps_and_wrong_totals():
    occlusion = VIVIDFACE_RUBRIC.dimensions[-1]
    gap = dataclasses.replace(occlusion, bands=(Band(0, 4, "a"), Band(6, 10, "b")))
    with pytest.raises(ValueError, match="not contiguous"):
        dataclasses.replace(VIVIDFACE_RUBRIC, dimensions=(*VIVIDFACE_RUBRIC.dimensions[:-1], gap))
    with pytest.raises(ValueError, match="add up"):
        Rubric("short", 100, VIVIDFACE_RUBRIC.dimensions[:-1], (), (), VIVIDFACE_RUBRIC.tiers, ())


def test_prompt_is_written_from_the_rubric():
    prompt = build_prompt(4)
    for dim in VIVIDFACE_RUBRIC.dimensions:
        assert f'"{dim.key}"' in prompt and f"0-{dim.max_points} points" in prompt
        for band in dim.bands:
            assert f"{band.low}-{band.high}: {band.meaning}" in prompt
    for adjustment in VIVIDFACE_RUBRIC.adjustments:
        assert f'"{adjustment.key}" {adjustment.points:+d}' in prompt
    assert '"premium": 85 or more' in prompt and '"below_standard": below 75' in prompt
    assert '"motion_blur_check"' in prompt and '"teeth"' in prompt and "iris detail" in prompt
    assert "4 face crops" in prompt and "video clip (8 frames" in build_prompt(8, as_video=True)
    assert prompt_digest(prompt) != prompt_digest(build_prompt(5))


# =========================================================================== parsing


@pytest.mark.parametrize(
    "name, source, final, tier, flags",
    [
        ("clean_json", "json", 92, "premium", []),
        ("fenced_with_prose", "json", 72, "below_standard", ["json_repaired"]),
        ("python_style", "json", 91, "premium", ["json_repaired"]),
        ("arithmetic_errors", "json", 86, "premium",
         ["base_mismatch", "adjustment_value:key_region_motion_blur", "unknown_adjustment:good_head_pose",
          "final_mismatch", "tier_mismatch"]),
        ("out_of_range", "json", 100, "premium",
         ["score_out_of_range:facial_detail_clarity", "base_mismatch", "final_mismatch"]),
        ("plain_text", "text", 83, "high", ["text_fallback", "tier_mismatch"]),
        ("truncated", "json", 97, "premium",
         ["truncated", "missing_field:motion_blur_check.mouth", "missing_field:motion_blur_check.teeth"]),
        ("draft_then_answer", "json", 80, "high", ["multiple_answers"]),
        ("missing_dimension", "json", None, None, ["missing_score:occlusion"]),
        ("unparseable", "none", None, None, ["unparseable"]),
    ],
)
def test_recorded_answers(name, source, final, tier, flags):
    answer = parse_answer(recorded(name))
    assert (answer.source, answer.final, answer.tier) == (source, final, tier)
    assert answer.flags == flags


def test_arithmetic_is_recomputed_not_copied():
    answer = parse_answer(recorded("arithmetic_errors"))
    assert answer.scores == {"facial_detail_clarity": 31, "stability_motion_blur": 18, "lighting": 17,
                             "artifacts_noise": 12, "occlusion": 9}
    assert answer.base == 87 and answer.reported == {"base": 89, "final": 89, "tier": "high"}
    applied = {a.key: (a.reported, a.applied) for a in answer.adjustments}
    # the rubric's -3, not the model's -5; an invented bonus is not applied
    assert applied == {"exceptional_skin_texture": (2, 2), "key_region_motion_blur": (-5, -3), "good_head_pose": (3, 0)}
    assert answer.final == 87 + 2 - 3 and not answer.consistent
    clamped = parse_answer(recorded("out_of_range"))
    assert clamped.scores["facial_detail_clarity"] == 35 and clamped.reported["final"] == 103


def test_fields_of_readable_answers():
    text = parse_answer(recorded("plain_text"))
    assert text.scores["stability_motion_blur"] == 16 and text.reported == {"base": 83, "final": 83, "tier": "standard"}
    assert [(a.key, a.applied) for a in text.adjustments] == [("exceptional_skin_texture", 2), ("digital_noise_grain", -2)]
    assert text.motion_blur_check == {"eyes": "sharp", "mouth": "sharp while speaking", "teeth": "not visible"}
    assert text.critical_issues == ["faint grain", "microphone near the chin"]
    assert text.reasons["lighting"] == "excellent natural light"
    python = parse_answer(recorded("python_style"))
    assert "subject's eyelashes" in python.reasons["facial_detail_clarity"]  # apostrophe inside a string
    assert python.critical_issues == [] and python.consistent  # null issues = none
    fenced = parse_answer(recorded("fenced_with_prose"))
    assert fenced.critical_issues == ["mouth motion blur", "compression blocking"]


def test_motion_blur_check_must_be_penalised():
    answer = json.loads(recorded("clean_json"))
    answer["motion_blur_check"]["mouth"] = "sharp; brief smearing of the lips in frame 2"
    assert "motion_blur_not_penalised" in parse_answer(json.dumps(answer)).flags
    answer["adjustments"].append({"name": "Motion blur in key region", "points": -3, "reason": "lips"})
    answer["base"], answer["final"] = 92, 89
    parsed = parse_answer(json.dumps(answer))
    assert parsed.flags == [] and (parsed.final, parsed.tier) == (89, "premium")
    assert reports_blur("slightly blurred while speaking") and not reports_blur("sharp, no motion blur")
    assert not reports_blur("not visible") and not reports_blur(True)


def test_adjustment_edge_cases_and_shapes():
    base = json.loads(recorded("clean_json"))
    base["adjustments"] = {"exceptional skin texture": "+2", "Perfect colour & white balance": 0,
                           "inconsistent_sharpness": {"points": -2}, "Inconsistent sharpness between frames": -2}
    parsed = parse_answer(json.dumps(base))
    assert [(a.key, a.applied) for a in parsed.adjustments] == [
        ("exceptional_skin_texture", 2), ("perfect_color_white_balance", 0), ("inconsistent_sharpness", -2),
        ("inconsistent_sharpness", 0)]
    assert parsed.flags == ["duplicate_adjustment:inconsistent_sharpness"] and parsed.final == 92
    del base["adjustments"], base["tier"]
    base["final"] = 94
    assert parse_answer(json.dumps(base)).flags == ["missing_field:adjustments", "final_mismatch", "missing_field:tier"]
    flat = {"Facial detail clarity": "30/35", "lighting": 18, "lighting_reason": "soft", "stability": 17,
            "artifacts": 12, "occlusion": {"value": 9}, "total": "86"}
    parsed = parse_answer("Result: " + json.dumps(flat))
    assert parsed.final == 86 and parsed.reasons == {"lighting": "soft"}
    assert "missing_reason:occlusion" in parsed.flags and "missing_field:base" in parsed.flags


def test_text_adjustments_on_one_line_and_worked_sums():
    text = ("Facial detail clarity: 33/35\nStability: 19/20\nLighting: 19/20\nArtifacts and noise: 14/15\n"
            "Occlusion: 10/10\nBase score = 33 + 19 + 19 + 14 + 10 = 95\n"
            "Adjustments: +2 exceptional skin texture, -3 motion blur on the teeth\nFinal score: 95 + 2 - 3 = 94\n"
            "Tier: Premium\nMotion blur check: eyes sharp, mouth sharp, teeth blurred when smiling\n")
    parsed = parse_answer(text)
    assert parsed.reported["base"] == 95 and parsed.reported["final"] == 94 and parsed.final == 94
    assert [a.key for a in parsed.adjustments] == ["exceptional_skin_texture", "key_region_motion_blur"]
    assert parsed.motion_blur_check["teeth"] == "blurred when smiling"
    assert [f for f in parsed.flags if not f.startswith("missing_")] == ["text_fallback"]
    assert parsed.kept(90) and not parsed.kept(95) and not parsed.kept(90, exclude_flags=("text_fallback",))


def test_json_repair_helpers():
    assert json.loads(normalise_json("{'a': +2, 'b': [True, None,], // note\n 'c': 'it\\'s'}")) == {
        "a": 2, "b": [True, None], "c": "it's"}
    assert json.loads(normalise_json('{"a": \u22123, "t": \u201cfine\u201d}')) == {"a": -3, "t": "fine"}
    assert json.loads(close_truncated('{"a": {"score": 30}, "b": {"sco')) == {"a": {"score": 30}}
    assert close_truncated('{"a": 1') is None
    assert [to_number(v) for v in (30, "30/35", "+2", "\u22123 points", "<integer 0-35>", True, "n/a")] == [
        30, 30, 2, -3, None, None, None]


# =========================================================================== face crops


def test_face_crops_of_a_real_clip(carphone):
    video = to_tensor(carphone[:40])
    crops = FaceRegionExtractor(size=56).extract(video, 4)
    assert crops.region == "detected" and crops.detections >= 3
    assert crops.images.shape == (4, 56, 56, 3) and crops.images.dtype == np.uint8
    assert crops.indices == [0, 13, 26, 39] == sample_indices(40, 4)
    box = crops.box
    assert 0 <= box.x and box.x + box.size <= 176 and 0 <= box.y and box.y + box.size <= 144
    # one box for every sampled frame: the crop of frame 13 is that box of frame 13
    from fvr_bench.data.sample import crop_square, resize_square

    expected = resize_square(np.ascontiguousarray(crop_square((carphone[13:14] * 255 + 0.5).astype(np.uint8), box)), 56)
    assert np.abs(crops.images[1].astype(int) - expected[0].astype(int)).max() <= 1
    given = FaceRegionExtractor(detector="none", size=56).extract(video, 2)
    assert given.region == "given" and given.box is None


def test_no_face_policy_and_bad_settings():
    grey = torch.full((6, 3, 64, 80), 0.5)
    assert FaceRegionExtractor(size=28).extract(grey, 3) is None
    full = FaceRegionExtractor(size=28, on_no_face="full_frame").extract(grey, 3)
    assert full.region == "full_frame" and full.images.shape == (3, 28, 28, 3)
    assert sample_indices(2, 4) == [0, 1] and sample_indices(9, 1) == [4]
    for bad in ({"size": 50}, {"margin": 0.8}, {"detector": "bisenet"}, {"on_no_face": "guess"}):
        with pytest.raises(ConfigError, match="faces."):
            FaceRegionExtractor(**bad)


# =========================================================================== tiny Qwen2.5-VL

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>"]
# the structure of Qwen2.5-VL's chat template (roles, vision placeholders, generation prompt)
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% else %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_qwen():
    """A random-weight Qwen2.5-VL (1 text layer, 1 vision block, hidden 32) with a byte-level
    BPE tokenizer trained here on the prompt, wrapped in the real processor classes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        PreTrainedTokenizerFast,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator([build_prompt(4)], trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    processor = Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(), video_processor=Qwen2VLVideoProcessor(),
                                    tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    config = Qwen2_5_VLConfig(
        text_config={"vocab_size": backend.get_vocab_size(), "hidden_size": 32, "intermediate_size": 64,
                     "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
                     "max_position_embeddings": 4096,
                     "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
                     "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
                     "pad_token_id": ids["<|endoftext|>"]},
        vision_config={"depth": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 32,
                       "fullatt_block_indexes": [0], "window_size": 56},
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(0)
    return Qwen2_5_VLForConditionalGeneration(config).eval(), processor


@pytest.fixture(scope="module")
def tiny_qwen_dir(tmp_path_factory, one_torch_thread):
    """The tiny model saved as a local model folder, like a Hugging Face snapshot."""
    folder = tmp_path_factory.mktemp("Qwen2.5-VL-7B-Instruct")
    model, processor = build_tiny_qwen()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def face_crops(count: int = 2, size: int = 56) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8)


def test_tiny_qwen_answers_end_to_end_and_gibberish_is_flagged(one_torch_thread):
    model, processor = build_tiny_qwen()
    scorer = QwenVLScorer.from_components(model, processor, frames=2, max_new_tokens=12)
    inputs = scorer.inputs(face_crops())
    assert inputs["image_grid_thw"].tolist() == [[1, 4, 4], [1, 4, 4]]  # 56² crops pass unresized
    assert (inputs["input_ids"] == model.config.image_token_id).sum() == 2 * 4  # 2×2 patch merge
    answer = scorer.answer(face_crops())
    assert isinstance(answer, str) and answer == scorer.answer(face_crops())  # greedy: reproducible
    parsed = parse_answer(answer)
    assert parsed.flags == ["unparseable"] and parsed.final is None and not parsed.kept(0)
    video = QwenVLScorer.from_components(model, processor, frames=3, max_new_tokens=4, input_mode="video",
                                         min_pixels=56 * 56, max_pixels=56 * 56)
    inputs = video.inputs(face_crops(3))
    assert inputs["video_grid_thw"].tolist() == [[2, 4, 4]]  # 3 crops padded to 4 frames, paired in time
    assert isinstance(video.answer(face_crops(3)), str)


def test_scorer_loads_a_local_folder_and_names_a_missing_one(tiny_qwen_dir, tmp_path, monkeypatch):
    scorer = QwenVLScorer(model_dir=str(tiny_qwen_dir), frames=2, max_new_tokens=4, device="cpu")
    scorer.load()
    assert scorer.model.dtype == torch.float32 and isinstance(scorer.answer(face_crops()), str)
    assert scorer.identity()["model"] == tiny_qwen_dir.name
    assert QwenVLScorer().identity()["model"] == "Qwen2.5-VL-7B-Instruct"
    with pytest.raises(WeightsMissingError, match="no Qwen2.5-VL model there"):
        QwenVLScorer(model_dir=str(tmp_path)).load()
    monkeypatch.setenv("FVR_BENCH_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("fvr_bench.weights.USER_CACHE", tmp_path / "user_cache")
    with pytest.raises(WeightsMissingError, match="Qwen2.5-VL-7B-Instruct") as error:
        locate_model_dir()
    assert "huggingface.co/Qwen/Qwen2.5-VL-7B-Instruct" in str(error.value)
    snapshot = tmp_path / "hub" / "models--Qwen--Qwen2.5-VL-7B-Instruct" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    assert locate_model_dir() == snapshot
    with pytest.raises(ConfigError, match="scorer.input_mode"):
        QwenVLScorer(input_mode="gif")


@pytest.mark.gpu
def test_scorer_runs_in_bfloat16_on_cuda(tiny_qwen_dir):
    scorer = QwenVLScorer(model_dir=str(tiny_qwen_dir), frames=2, max_new_tokens=8, device="cuda")
    scorer.load()
    assert scorer.model.dtype == torch.bfloat16 and scorer.device.type == "cuda"
    assert parse_answer(scorer.answer(face_crops())).flags == ["unparseable"]


# =========================================================================== the command


def test_curate_command_resumes_and_rethresholds(tiny_data_dir, tiny_qwen_dir, tmp_path, monkeypatch):
    args = overrides(tiny_data_dir, tmp_path, f"scorer.model_dir={tiny_qwen_dir}", "scorer.frames=2",
                     "scorer.max_new_tokens=8", "faces.size=56")
    out = curate_command(compose("curate", [*args, "limit_clips=1"]))
    assert out == tmp_path / "outputs" / "curation" / "sample"
    rows = pd.read_csv(out / "scores.csv", dtype=str, keep_default_na=False)
    assert rows["clip_id"].tolist() == ["carphone_000"] and rows["status"].tolist() == ["unparseable"]
    assert rows["face_region"].tolist() == ["detected"] and rows["frames"].tolist() == ["0 8"]
    assert (out / rows["answer_file"][0]).is_file() and (out / "kept.txt").read_text() == ""
    assert "100-point scale" in (out / "prompt.txt").read_text()

    # resume: only the second clip is graded; its recorded answer scores 92
    calls = []
    monkeypatch.setattr(QwenVLScorer, "answer", lambda self, crops: calls.append(crops.shape) or recorded("clean_json"))
    curate_command(compose("curate", args))
    assert calls == [(2, 56, 56, 3)]
    rows = pd.read_csv(out / "scores.csv", dtype=str, keep_default_na=False).set_index("clip_id")
    assert rows.loc["carphone_001", ["final", "tier", "kept", "status"]].tolist() == ["92", "premium", "true", "scored"]
    assert json.loads(rows.loc["carphone_001", "adjustments"])[0] == {
        "name": "exceptional_skin_texture", "reported": 2, "applied": 2,
        "reason": "Pores and fine lines are visible across cheeks and forehead."}
    assert (out / "kept.txt").read_text() == "carphone_001\n"

    # a stricter threshold re-decides every row without grading anything
    curate_command(compose("curate", [*args, "threshold=95"]))
    assert len(calls) == 1 and (out / "kept.txt").read_text() == ""
    summary = json.loads((out / "summary.json").read_text())
    assert summary["clips_graded"] == 2 and summary["kept"] == 0 and summary["status"] == {"scored": 1, "unparseable": 1}
    assert format_summary(out).startswith("graded 2 of 2 clips; kept 0 (final >= 95); mean final 92.0")

    # reparse re-reads the stored answers; another prompt/frames setting is refused
    (out / "answers" / "carphone_000.txt").write_text(recorded("python_style"))
    curate_command(compose("curate", [*args, "reparse=true"]))
    assert (out / "kept.txt").read_text() == "carphone_000\ncarphone_001\n" and len(calls) == 1
    with pytest.raises(ResultsMismatchError, match="overwrite=true"):
        curate_command(compose("curate", [*args, "scorer.frames=3"]))


def test_curate_stops_before_the_first_clip_without_a_model(tiny_data_dir, tmp_path):
    args = overrides(tiny_data_dir, tmp_path, f"scorer.model_dir={tmp_path / 'nowhere'}")
    with pytest.raises(WeightsMissingError, match="scorer.model_dir"):
        curate_command(compose("curate", args))
    assert not (tmp_path / "outputs" / "curation" / "sample").exists()  # nothing written
