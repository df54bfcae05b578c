"""The grading prompt, written from the rubric data so prompt and parser never disagree.

The model sees ``N`` face crops of one clip (in time order, or one video) followed by
this text, and must answer with one JSON object (see :func:`answer_template`). The facts
come from :data:`fvr_bench.curation.rubric.VIVIDFACE_RUBRIC`; the wording is this
project's own (VividFace lists the rubric, not a reusable prompt string).
"""

from __future__ import annotations

import hashlib
import json

from fvr_bench.curation.rubric import VIVIDFACE_RUBRIC, Rubric


def _signed(points: int) -> str:
    return f"+{points}" if points > 0 else f"{points}"


def answer_template(rubric: Rubric = VIVIDFACE_RUBRIC) -> str:
    """The JSON layout the model must fill in, with ``<...>`` placeholders."""
    scores = {
        dim.key: {"score": f"<integer 0-{dim.max_points}>", "reason": "<one or two sentences>"}
        for dim in rubric.dimensions
    }
    layout = {
        "scores": scores,
        "base": "<sum of the five scores>",
        "adjustments": [{"name": "<adjustment key from the list>", "points": "<its value>", "reason": "<why>"}],
        "final": "<base plus the adjustment points>",
        "tier": f"<one of: {', '.join(t.key for t in rubric.tiers)}>",
        "critical_issues": ["<each problem that cost points, or an empty list>"],
        "motion_blur_check": {region: "<sharp | blurred | not visible>, <where/when>" for region in rubric.motion_blur_regions},
    }
    return json.dumps(layout, indent=2, ensure_ascii=False)


def build_prompt(num_frames: int, as_video: bool = False, rubric: Rubric = VIVIDFACE_RUBRIC) -> str:
    """The full grading instruction for ``num_frames`` face crops (or one face video)."""
    shown = (
        f"a face video clip ({num_frames} frames, cropped to the face region)"
        if as_video
        else f"{num_frames} face crops taken at evenly spaced times from one video clip, in time order"
    )
    lines = [
        (
            f"You are a strict quality inspector selecting face videos for training a face restoration model. "
            f"You are shown {shown}. Grade the clip on a {rubric.total}-point scale with the rubric below. "
            f"Be strict: a high score must be earned by visible evidence in every frame, and when in doubt "
            f"choose the lower band."
        ),
        "",
        f"SCORED DIMENSIONS ({' + '.join(str(d.max_points) for d in rubric.dimensions)} = {rubric.total} points)",
    ]
    for number, dim in enumerate(rubric.dimensions, 1):
        lines.append(f"{number}. {dim.title} (key \"{dim.key}\", 0-{dim.max_points} points). {dim.guidance}")
        lines.extend(f"   - {band.low}-{band.high}: {band.meaning}" for band in dim.bands)
    lines += ["", "REGION CHECKS (inspect each region in every frame before scoring)"]
    lines.extend(f"- {check.title}: {check.look_for}." for check in rubric.region_checks)
    lines += [
        "",
        "ADJUSTMENTS (apply each one that holds, at exactly the value given; never invent others)",
    ]
    lines.extend(f"- \"{adj.key}\" {_signed(adj.points)}: {adj.description}." for adj in rubric.adjustments)
    lines += [
        "",
        "ARITHMETIC",
        "- base = the sum of the five dimension scores.",
        "- final = base + the points of every adjustment you applied.",
        "",
        "TIERS (by final score)",
    ]
    for upper, tier in zip((None, *rubric.tiers[:-1]), rubric.tiers):
        if tier.min_score is None:
            lines.append(f"- \"{tier.key}\": below {upper.min_score}")
        else:
            lines.append(f"- \"{tier.key}\": {tier.min_score} or more" + (f" (below {upper.min_score})" if upper else ""))
    regions = ", ".join(rubric.motion_blur_regions)
    lines += [
        "",
        "ANSWER FORMAT",
        (
            f"Answer with ONE JSON object and nothing else: no prose, no code fence. Give every dimension a score "
            f"and a reason, list every adjustment you applied (an empty list if none), list the critical issues, "
            f"and report the motion-blur check of the {regions} explicitly. Replace every <...> placeholder:"
        ),
        answer_template(rubric),
    ]
    return "\n".join(lines)


def prompt_digest(prompt: str) -> str:
    """Short sha256 of a prompt: stored with the results, so a resumed run never mixes
    answers to two different prompts."""
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:16]
