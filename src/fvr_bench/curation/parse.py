"""Reading the model's graded answer: robust extraction, then an audit against the rubric.

Extraction, in order of preference:

1. a JSON object anywhere in the text — inside a code fence or surrounded by prose;
   objects that are not strict JSON are normalised (trailing commas, single-quoted
   strings, ``+2`` numbers, Python ``True``/``None``, typographic quotes and minus signs,
   ``//`` comments) and flagged ``json_repaired``; an object cut off by the token limit is
   closed after its last complete value and flagged ``truncated``. When several objects
   carry scores, the one with most recognised dimensions wins (the last of equals: models
   draft, then answer) and ``multiple_answers`` is flagged if they disagree;
2. otherwise plain text: ``"Facial detail clarity: 30/35"``, ``"Base score: 85"``,
   ``"-3 motion blur in mouth"``, ``"Tier: Premium"`` (flag ``text_fallback``);
3. otherwise the answer is ``unparseable``.

Audit: nothing is clamped or corrected silently — every inconsistency is a named flag
(``kind`` or ``kind:detail``), and the score that is used is always recomputed from the
rubric:

* ``missing_score:<dim>`` / ``score_not_a_number:<dim>`` — no final score then;
* ``conflicting_scores:<dim>`` — one answer gives a dimension two different scores (the
  first is used);
* ``score_out_of_range:<dim>`` — the score is clamped to ``0 … max`` for the recomputation;
* ``base_mismatch`` — the reported base is not the sum of the five scores;
* ``unknown_adjustment:<name>`` — not in the rubric: not applied;
* ``adjustment_value:<key>`` — a rubric adjustment with other points than the rubric's:
  applied at the rubric's value; ``duplicate_adjustment:<key>`` — applied once. An
  adjustment listed with 0 points is read as "considered, not applied" (no flag);
* ``final_mismatch`` — the reported final is not the recomputed base + adjustments;
  ``not_a_number:<base|final>`` — stated, but not as a number;
* ``tier_mismatch`` / ``unknown_tier`` — the reported tier is not the tier of the
  recomputed final, or no tier of the rubric;
* ``motion_blur_not_penalised`` — the motion-blur check reports blur in a key region but
  the rubric's motion-blur penalty was not applied (flagged, not applied: the check's
  prose is the model's judgement, the penalty its decision);
* ``missing_field:<name>``, ``missing_reason:<dim>`` — required parts of the answer absent.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from fvr_bench.curation.rubric import VIVIDFACE_RUBRIC, Rubric, normalise_name

# flags that describe how the answer was read, not a contradiction inside it
FORMAT_FLAGS = ("json_repaired", "truncated", "text_fallback")

_NUMBER = re.compile(r"[+\-\u2212\u2013]?\s*\d+(?:\.\d+)?")


@dataclass
class AdjustmentEntry:
    """One adjustment as the model reported it and as it is applied.

    key:      the rubric key, or the model's normalised name when it is not in the rubric.
    reported: the points the model gave (None when absent or not a number).
    applied:  the points that enter the recomputed final (0 when not applied).
    """

    key: str
    reported: float | None
    applied: int
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.key, "reported": _plain(self.reported), "applied": self.applied, "reason": self.reason}


@dataclass
class ParsedAnswer:
    """The audited reading of one answer.

    scores:  dimension key → score used (clamped into range; None when missing).
    base / final / tier: recomputed from ``scores`` and the applied adjustments (None
             when a dimension is missing).
    reported: what the model itself wrote for ``base``, ``final`` and ``tier``.
    flags:   named findings (module docstring); ``unparseable`` when nothing was read.
    source:  ``json``, ``text`` or ``none``.
    """

    scores: dict[str, float | None]
    reasons: dict[str, str] = field(default_factory=dict)
    adjustments: list[AdjustmentEntry] = field(default_factory=list)
    base: float | None = None
    final: float | None = None
    tier: str | None = None
    reported: dict[str, Any] = field(default_factory=dict)
    critical_issues: list[str] = field(default_factory=list)
    motion_blur_check: dict[str, str] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)
    source: str = "none"

    @property
    def parseable(self) -> bool:
        return self.source != "none"

    @property
    def consistent(self) -> bool:
        """True when the answer contradicts neither itself nor the rubric."""
        return self.final is not None and all(flag_kind(f) in FORMAT_FLAGS for f in self.flags)

    def kept(self, threshold: float, exclude_flags: tuple[str, ...] = ()) -> bool:
        return is_kept(self.final, self.flags, threshold, exclude_flags)


def is_kept(final: float | None, flags: list[str], threshold: float, exclude_flags: tuple[str, ...] = ()) -> bool:
    """The curation rule: a final score of at least ``threshold`` (VividFace: 90) and no
    flag of the ``exclude_flags`` kinds."""
    if final is None or final < threshold:
        return False
    return not any(flag_kind(f) in exclude_flags for f in flags)


def flag_kind(flag: str) -> str:
    """``"score_out_of_range:lighting"`` → ``"score_out_of_range"``."""
    return flag.split(":", 1)[0]


def _plain(value: float | None) -> float | int | None:
    """Integral floats as ints (the CSV shows ``30``, not ``30.0``)."""
    if value is None:
        return None
    return int(value) if float(value).is_integer() else float(value)


def to_number(value: Any) -> float | None:
    """A score as the model wrote it → float: ``30``, ``"30"``, ``"30/35"``, ``"+2"``,
    ``"−3 points"``; None for anything else (booleans, NaN, prose without a number)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        if "<" in value and ">" in value:  # an unfilled placeholder of the answer template
            return None
        match = _NUMBER.search(value)
        if match is None:
            return None
        text = re.sub(r"\s+", "", match.group()).replace("\u2212", "-").replace("\u2013", "-")
        return float(text)
    return None


# ====================================================================== JSON extraction


def _matching_end(text: str, start: int) -> int | None:
    """Index just past the ``}`` that closes the ``{`` at ``start``; None if it never
    closes. Double-quoted strings are skipped; a single quote opens a string only where
    a JSON value or key may start, so apostrophes in prose do not."""
    depth, index, last_token = 0, start, ""
    while index < len(text):
        char = text[index]
        if char == '"' or (char == "'" and last_token in _VALUE_STARTS):
            index = _string_end(text, index, char)
            if index is None:
                return None
            last_token = char
            continue
        if char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
            if depth == 0:
                return index + 1
        if not char.isspace():
            last_token = char
        index += 1
    return None


def _string_end(text: str, start: int, quote: str) -> int | None:
    """Index just past the string opened at ``start`` by ``quote``; None if unclosed."""
    index = start + 1
    while index < len(text):
        if text[index] == "\\":
            index += 2
            continue
        if text[index] == quote:
            return index + 1
        index += 1
    return None


def json_candidates(text: str) -> list[tuple[str, bool]]:
    """Top-level ``{...}`` spans of ``text`` as ``(span, complete)``, in order; an object
    that never closes (cut off by the token limit) is returned to the end, incomplete."""
    spans: list[tuple[str, bool]] = []
    index = 0
    while True:
        start = text.find("{", index)
        if start < 0:
            return spans
        end = _matching_end(text, start)
        if end is None:
            spans.append((text[start:], False))
            return spans
        spans.append((text[start:end], True))
        index = end


_VALUE_STARTS = ("{", "[", ":", ",")
_LITERALS = {"True": "true", "False": "false", "None": "null", "true": "true", "false": "false", "null": "null"}
_QUOTES = {'"': '"', "'": "'", "\u201c": "\u201d", "\u2018": "\u2019"}


def normalise_json(text: str) -> str:
    """Rewrite near-JSON into JSON, outside strings only: single/typographic quotes →
    double-quoted strings, trailing commas dropped, ``+2`` → ``2``, typographic minus →
    ``-``, Python literals → JSON, ``//`` comments removed."""
    out: list[str] = []
    index, last_token = 0, ""
    while index < len(text):
        char = text[index]
        if char in _QUOTES and (char == '"' or last_token in _VALUE_STARTS):
            end = _string_end(text, index, _QUOTES[char])
            body = text[index + 1 : (end - 1) if end else len(text)]
            if char == '"':
                out.append(f'"{body}"' if end else f'"{body}')
            else:
                # re-emit through json.dumps so inner double quotes are escaped
                out.append(json.dumps(body.replace("\\'", "'"), ensure_ascii=False)[: None if end else -1])
            index = end if end else len(text)
            last_token = '"'
            continue
        if char == "/" and text.startswith("//", index):
            newline = text.find("\n", index)
            index = len(text) if newline < 0 else newline
            continue
        if char == ",":
            following = text[index + 1 :].lstrip()
            if following[:1] in ("}", "]"):
                index += 1
                continue
        if char in "+\u2212\u2013" and index + 1 < len(text) and text[index + 1].isdigit() and last_token in _VALUE_STARTS:
            out.append("" if char == "+" else "-")
            index += 1
            last_token = "-"
            continue
        if char.isascii() and char.isalpha():
            word = re.match(r"[A-Za-z_]+", text[index:]).group()
            out.append(_LITERALS.get(word, word))
            index += len(word)
            last_token = "a"
            continue
        out.append(char)
        if not char.isspace():
            last_token = char
        index += 1
    return "".join(out)


def close_truncated(text: str) -> str | None:
    """A JSON object cut off mid-way, ended after its last complete value and closed
    (``{"a": {"score": 30}, "b": {"sco`` → ``{"a": {"score": 30}}``); None if nothing
    complete is left."""
    stack: list[str] = []
    cut: tuple[int, list[str]] | None = None
    index = 0
    while index < len(text):
        char = text[index]
        if char == '"':
            end = _string_end(text, index, '"')
            if end is None:
                break
            index = end
            continue
        if char in "{[":
            stack.append("}" if char == "{" else "]")
        elif char in "}]":
            if not stack:
                break
            stack.pop()
            if not stack:
                return text[: index + 1]
        elif char == ",":
            cut = (index, list(stack))
        index += 1
    if cut is None:
        return None
    position, open_stack = cut
    return text[:position] + "".join(reversed(open_stack))


def load_object(span: str, complete: bool) -> tuple[dict | None, list[str]]:
    """``span`` → (dict, flags): strict JSON first, then normalised, then (incomplete
    spans) closed after the last complete value."""
    attempts = [(span, [])] if complete else []
    normal = normalise_json(span)
    attempts.append((normal, ["json_repaired"]) if complete else (normal, []))
    if not complete:
        closed = close_truncated(normal)
        if closed is not None:
            attempts.append((closed, ["truncated"] + (["json_repaired"] if normal != span else [])))
    for candidate, flags in attempts:
        try:
            value = json.loads(candidate, strict=False)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            flags = [f for f in flags if f != "json_repaired" or candidate != span]
            return value, flags
    return None, []


# ====================================================================== field reading


@dataclass
class _Fields:
    """What an answer states, before the audit (values as written)."""

    scores: dict[str, Any] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    conflicts: set[str] = field(default_factory=set)
    base: Any = None
    final: Any = None
    tier: Any = None
    adjustments: list[tuple[str, Any, str]] | None = None
    critical_issues: Any = None
    motion_blur_check: Any = None
    present: set[str] = field(default_factory=set)  # fields the answer states (possibly as null)

    def state(self, name: str, value: Any) -> None:
        setattr(self, name, value)
        self.present.add(name)


_REASON_ONLY = object()  # marks an entry that carries a reason but no score
_SCORE_KEYS = ("score", "points", "value", "rating", "grade")
_REASON_KEYS = ("reason", "reasons", "reasoning", "explanation", "justification", "comment", "rationale", "notes")
_CONTAINER_KEYS = ("scores", "dimension_scores", "dimensions", "scoring", "evaluation", "ratings", "breakdown")
_FIELD_KEYS = {
    "base": ("base", "base_score", "base_total", "subtotal", "sum"),
    "final": ("final", "final_score", "total", "total_score", "overall_score", "overall"),
    "tier": ("tier", "quality_tier", "grade_tier", "level", "category"),
    "critical_issues": ("critical_issues", "issues", "critical_problems", "problems"),
    "motion_blur_check": ("motion_blur_check", "motion_blur", "blur_check", "motion_blur_checks", "regional_blur_check"),
    "adjustments": ("adjustments", "adjustment", "bonuses_penalties", "bonus_penalties", "modifiers", "bonuses_and_penalties"),
}


def _get(obj: dict, names: tuple[str, ...]) -> tuple[bool, Any]:
    by_name = {normalise_name(k): v for k, v in obj.items()}
    for name in names:
        if name in by_name:
            return True, by_name[name]
    return False, None


def _dimension_entries(container: Any, rubric: Rubric) -> list[tuple[str, Any, str]]:
    """``(dimension key, score as written, reason)`` found directly in a dict or list."""
    entries = []
    items: list[tuple[Any, Any]] = []
    if isinstance(container, dict):
        items = list(container.items())
    elif isinstance(container, list):
        for item in container:
            if isinstance(item, dict):
                found, name = _get(item, ("name", "dimension", "category", "criterion", "aspect"))
                if found:
                    items.append((name, item))
    for name, value in items:
        dim = rubric.dimension(str(name))
        if dim is None:
            # {"lighting": 18, "lighting_reason": "…"}: a reason kept beside its score
            base_name, _, suffix = normalise_name(str(name)).rpartition("_")
            dim = rubric.dimension(base_name) if suffix in _REASON_KEYS else None
            if dim is not None and isinstance(value, str):
                entries.append((dim.key, _REASON_ONLY, value))
            continue
        score, reason = value, ""
        if isinstance(value, dict):
            score = _get(value, _SCORE_KEYS)[1]
            reason = _get(value, _REASON_KEYS)[1] or ""
        entries.append((dim.key, score, str(reason)))
    return entries


def _score_holder(obj: dict, rubric: Rubric, depth: int = 0) -> tuple[dict, Any] | None:
    """``(parent, container)``: the dict/list holding most dimension scores, searched
    through a few levels of nesting (``{"evaluation": {"scores": {...}}}``)."""
    best: tuple[int, dict, Any] | None = None
    candidates = [(obj, obj)] + [(obj, v) for v in obj.values() if isinstance(v, (dict, list))]
    for parent, container in candidates:
        count = len({key for key, score, _ in _dimension_entries(container, rubric) if score is not _REASON_ONLY})
        if count and (best is None or count > best[0]):
            best = (count, parent, container)
    if best is None and depth < 3:
        for value in obj.values():
            if isinstance(value, dict):
                found = _score_holder(value, rubric, depth + 1)
                if found:
                    return found
    return (best[1], best[2]) if best else None


def _adjustment_list(value: Any) -> list[tuple[str, Any, str]]:
    """Adjustments in any of the shapes models use: list of dicts, ``{name: points}``,
    ``{name: {"points": …}}``, or list of strings like ``"+2 exceptional skin texture"``."""
    entries = []
    if isinstance(value, dict):
        value = [{"name": k, **(v if isinstance(v, dict) else {"points": v})} for k, v in value.items()]
    if not isinstance(value, list):
        return entries
    for item in value:
        if isinstance(item, dict):
            name = _get(item, ("name", "adjustment", "key", "type", "description", "label"))[1]
            points = _get(item, ("points", "value", "score", "delta", "adjustment_points"))[1]
            reason = _get(item, _REASON_KEYS)[1] or ""
            if name is None:
                continue
            entries.append((str(name), points, str(reason)))
        elif isinstance(item, str) and item.strip():
            points = to_number(item)
            name = _NUMBER.sub(" ", item, count=1)
            entries.append((name, points, ""))
    return entries


def fields_from_object(obj: dict, rubric: Rubric) -> _Fields:
    fields = _Fields()
    holder = _score_holder(obj, rubric)
    parent = obj
    if holder is not None:
        parent, container = holder
        for key, score, reason in _dimension_entries(container, rubric):
            if score is _REASON_ONLY:
                fields.reasons.setdefault(key, reason)
                continue
            if key in fields.scores and to_number(fields.scores[key]) != to_number(score):
                fields.conflicts.add(key)
                continue
            fields.scores.setdefault(key, score)
            if reason:
                fields.reasons.setdefault(key, reason)
    # reasons given apart from the scores: {"reasons": {"lighting": "…"}}
    found, reasons = _get(parent, ("reasons", "explanations", "justifications"))
    if found and isinstance(reasons, dict):
        for name, text in reasons.items():
            dim = rubric.dimension(str(name))
            if dim is not None:
                fields.reasons.setdefault(dim.key, str(text))
    for name in ("base", "final", "tier", "critical_issues", "motion_blur_check"):
        found, value = _get(parent, _FIELD_KEYS[name])
        if not found and parent is not obj:
            found, value = _get(obj, _FIELD_KEYS[name])
        if found:
            fields.state(name, value)
    found, value = _get(parent, _FIELD_KEYS["adjustments"])
    if not found and parent is not obj:
        found, value = _get(obj, _FIELD_KEYS["adjustments"])
    if found:
        fields.state("adjustments", _adjustment_list(value if value is not None else []))
    return fields


# ---------------------------------------------------------------------- plain text

_FRACTION = re.compile(r"(\d+(?:\.\d+)?)\s*(?:/|out of)\s*(\d+)", re.IGNORECASE)
_LABELS = {
    "base": re.compile(r"\bbase(?:\s+score)?\b[^:\n=]{0,20}[:=]", re.IGNORECASE),
    "final": re.compile(r"\b(?:final|total)(?:\s+score)?\b[^:\n=]{0,20}[:=]", re.IGNORECASE),
    "tier": re.compile(r"\b(?:quality\s+)?tier\b\s*[:=]\s*\**\s*([A-Za-z][A-Za-z _\-]*)", re.IGNORECASE),
    "critical_issues": re.compile(r"\bcritical\s+issues?\b\**\s*[:=]\s*(.+)", re.IGNORECASE),
}
_SIGNED = re.compile(r"(?<![\w/.])([+\-\u2212\u2013]\s?\d+)(?!\s*(?:/|\d|out of))")
_REGION = re.compile(r"^\W*(eyes?|mouth|lips|teeth)\b\W*?\s*[:\-\u2013]?\s*(.+)$", re.IGNORECASE)


def _stated_number(rest: str) -> str | None:
    """The number a label states: ``": 87"`` → 87; in a worked sum
    ``": 30 + 17 + 18 = 65"`` the result after the last ``=``."""
    tail = rest.rsplit("=", 1)[1] if "=" in rest else rest
    match = _NUMBER.search(tail)
    return match.group() if match else None


def _label_dimension(label: str, rubric: Rubric):
    """The dimension a free-text label (what precedes ``30/35`` on a line) names."""
    dim = rubric.dimension(label)
    if dim is not None:
        return dim
    bare = "_" + normalise_name(re.sub(r"\d+", " ", label)) + "_"
    hits = [d for d in rubric.dimensions if any(f"_{n}_" in bare for n in d.names() if len(n) > 4)]
    return hits[0] if len(hits) == 1 else None


def _text_adjustments(line: str, rubric: Rubric) -> list[tuple[str, Any, str]]:
    """``"- Motion blur (mouth): -3"`` or ``"Adjustments: +2 skin texture, -3 motion blur"``
    → ``[(name, points, reason)]`` for the parts that name a rubric adjustment."""
    parts = re.split(r"[,;]", line) if len(_SIGNED.findall(line)) > 1 else [line]
    found = []
    for part in parts:
        signed = _SIGNED.search(part)
        if signed is None:
            continue
        label = (part[: signed.start()] + " " + part[signed.end() :]).strip()
        label = re.sub(r"^\W*adjustments?\s*:", "", label, flags=re.IGNORECASE)
        name, _, reason = label.partition(":")
        for candidate in (name, label):
            if rubric.adjustment(candidate) is not None:
                found.append((candidate.strip(" -*\u2022()"), signed.group(1), reason.strip(" ()")))
                break
    return found


def _motion_blur_lines(text: str) -> dict[str, str] | None:
    """Region statements after a "motion blur check" heading: one per line
    (``"- Eyes: sharp"``) or on the heading's own line (``"…check: eyes sharp, mouth
    blurred"``)."""
    position = re.search(r"motion[\s_-]*blur[\s_-]*check\W*", text, re.IGNORECASE)
    if position is None:
        return None
    same_line, _, rest = text[position.end() :].partition("\n")
    check: dict[str, str] = {}
    for piece in [*re.split(r"[,;]", same_line), *rest.splitlines()]:
        region = _REGION.match(piece.strip())
        if region:
            key = {"eye": "eyes", "lips": "mouth"}.get(region.group(1).lower(), region.group(1).lower())
            check.setdefault(key, region.group(2).strip(" *."))
    return check or None


def fields_from_text(text: str, rubric: Rubric) -> _Fields:
    fields = _Fields()
    adjustments: list[tuple[str, Any, str]] = []
    saw_adjustment_heading = False
    for line in text.splitlines():
        match = _FRACTION.search(line)
        dim = _label_dimension(line[: match.start()], rubric) if match else None
        if dim is not None:
            if dim.key in fields.scores and to_number(fields.scores[dim.key]) != float(match.group(1)):
                fields.conflicts.add(dim.key)
                continue
            fields.scores.setdefault(dim.key, float(match.group(1)))
            reason = line[match.end() :].strip(" \t-\u2013\u2014:*().,")
            if reason:
                fields.reasons.setdefault(dim.key, reason)
            continue
        if re.search(r"\badjustments?\b", line, re.IGNORECASE):
            saw_adjustment_heading = True
        stated = False
        for name in ("base", "final"):
            label = _LABELS[name].search(line)
            if label:
                stated = True
                if name not in fields.present:
                    fields.state(name, _stated_number(line[label.end() :]))
        if stated:
            continue
        line_adjustments = _text_adjustments(line, rubric)
        if line_adjustments:
            adjustments.extend(line_adjustments)
            continue
        for name in ("tier", "critical_issues"):
            found = _LABELS[name].search(line)
            if found and name not in fields.present:
                fields.state(name, found.group(1).strip(" *."))
    if adjustments or saw_adjustment_heading:
        fields.state("adjustments", adjustments)
    if isinstance(fields.critical_issues, str):
        parts = [p.strip() for p in re.split(r";|\.\s", fields.critical_issues) if p.strip()]
        fields.critical_issues = [] if [normalise_name(p) for p in parts] in ([], ["none"]) else parts
    check = _motion_blur_lines(text)
    if check is not None:
        fields.state("motion_blur_check", check)
    return fields


# ====================================================================== the audit

_BLUR_YES = re.compile(r"\b(blurr?ed|blurry|blur|smear(?:ed|ing)?|ghosting)\b", re.IGNORECASE)
_BLUR_NEGATED = re.compile(r"\b(no|not|without|free of|zero|never)\b[^.;,]{0,25}\b(blurr?ed|blurry|blur|smear\w*|ghosting)\b", re.IGNORECASE)


def reports_blur(statement: Any) -> bool:
    """Whether a motion-blur check entry (prose) says the region is blurred: some clause
    names blur without negating it ("sharp; brief blur while speaking" → True, "sharp, no
    motion blur" → False). Non-text entries (``true``/``false``) are not interpreted."""
    if not isinstance(statement, str):
        return False
    clauses = re.split(r"[;,.]|\bbut\b|\bexcept\b", statement, flags=re.IGNORECASE)
    return any(_BLUR_YES.search(c) and not _BLUR_NEGATED.search(c) for c in clauses)


def _check_stated(fields: _Fields, name: str, recomputed: float | None, mismatch: str, flags: list[str]) -> float | None:
    """Compare a number the answer states (base or final) with its recomputation; returns
    the stated number. Flags ``missing_field:<name>``, ``not_a_number:<name>`` or
    ``mismatch``."""
    stated = to_number(getattr(fields, name))
    if name not in fields.present:
        flags.append(f"missing_field:{name}")
    elif stated is None:
        flags.append(f"not_a_number:{name}")
    elif recomputed is not None and not math.isclose(stated, recomputed, abs_tol=1e-6):
        flags.append(mismatch)
    return stated


def audit(fields: _Fields, rubric: Rubric, source: str, flags: list[str]) -> ParsedAnswer:
    """Check stated fields against the rubric and recompute base, final and tier."""
    flags = list(flags)
    scores: dict[str, float | None] = {}
    for dim in rubric.dimensions:
        if dim.key in fields.conflicts:
            flags.append(f"conflicting_scores:{dim.key}")
        if dim.key not in fields.scores:
            flags.append(f"missing_score:{dim.key}")
            scores[dim.key] = None
            continue
        value = to_number(fields.scores[dim.key])
        if value is None:
            flags.append(f"score_not_a_number:{dim.key}")
        elif not 0 <= value <= dim.max_points:
            flags.append(f"score_out_of_range:{dim.key}")
            value = min(max(value, 0.0), float(dim.max_points))
        scores[dim.key] = value
        if not fields.reasons.get(dim.key, "").strip():
            flags.append(f"missing_reason:{dim.key}")
    complete = all(v is not None for v in scores.values())
    base = math.fsum(scores.values()) if complete else None

    reported_base = _check_stated(fields, "base", base, "base_mismatch", flags)

    entries: list[AdjustmentEntry] = []
    applied_keys: set[str] = set()
    if "adjustments" not in fields.present:
        flags.append("missing_field:adjustments")
    for name, points, reason in fields.adjustments or []:
        reported = to_number(points)
        adjustment = rubric.adjustment(name)
        if adjustment is None:
            key = normalise_name(name)[:60] or "unnamed"
            flags.append(f"unknown_adjustment:{key}")
            entries.append(AdjustmentEntry(key, reported, 0, reason))
            continue
        if reported == 0:  # "considered, does not apply"
            entries.append(AdjustmentEntry(adjustment.key, reported, 0, reason))
            continue
        if adjustment.key in applied_keys:
            flags.append(f"duplicate_adjustment:{adjustment.key}")
            entries.append(AdjustmentEntry(adjustment.key, reported, 0, reason))
            continue
        if reported is None or not math.isclose(reported, adjustment.points):
            flags.append(f"adjustment_value:{adjustment.key}")
        applied_keys.add(adjustment.key)
        entries.append(AdjustmentEntry(adjustment.key, reported, adjustment.points, reason))
    final = base + sum(e.applied for e in entries) if base is not None else None

    reported_final = _check_stated(fields, "final", final, "final_mismatch", flags)

    tier = rubric.tier_for(final).key if final is not None else None
    reported_tier = rubric.tier_named(str(fields.tier)) if fields.tier is not None else None
    if "tier" not in fields.present:
        flags.append("missing_field:tier")
    elif reported_tier is None:
        flags.append("unknown_tier")
    elif tier is not None and reported_tier.key != tier:
        flags.append("tier_mismatch")

    issues = fields.critical_issues
    if "critical_issues" not in fields.present:
        flags.append("missing_field:critical_issues")
    if issues is None:  # absent, or stated as null ("no issues")
        issues = []
    elif isinstance(issues, str):
        issues = [issues] if issues.strip() and normalise_name(issues) not in ("none", "n_a") else []
    else:
        issues = [str(i) for i in issues] if isinstance(issues, list) else [str(issues)]

    check: dict[str, str] = {}
    if not isinstance(fields.motion_blur_check, dict):
        flags.append("missing_field:motion_blur_check")
    else:
        by_region = {normalise_name(k): v for k, v in fields.motion_blur_check.items()}
        by_region.setdefault("mouth", by_region.get("lips"))
        for region in rubric.motion_blur_regions:
            value = by_region.get(region)
            if value is None:
                flags.append(f"missing_field:motion_blur_check.{region}")
                continue
            check[region] = value if isinstance(value, str) else json.dumps(value)
        blur_key = next((a.key for a in rubric.adjustments if a.matches("motion blur")), None)
        if blur_key and any(reports_blur(v) for v in check.values()) and blur_key not in applied_keys:
            flags.append("motion_blur_not_penalised")

    return ParsedAnswer(
        scores=scores,
        reasons=dict(fields.reasons),
        adjustments=entries,
        base=base,
        final=final,
        tier=tier,
        reported={"base": _plain(reported_base), "final": _plain(reported_final),
                  "tier": reported_tier.key if reported_tier else (None if fields.tier is None else str(fields.tier))},
        critical_issues=issues,
        motion_blur_check=check,
        flags=list(dict.fromkeys(flags)),
        source=source,
    )


def parse_answer(text: str, rubric: Rubric = VIVIDFACE_RUBRIC) -> ParsedAnswer:
    """Read and audit one raw model answer (never raises on malformed text)."""
    text = text if isinstance(text, str) else ""
    readings: list[tuple[_Fields, list[str]]] = []
    for span, complete in json_candidates(text):
        obj, flags = load_object(span, complete)
        if obj is None:
            continue
        fields = fields_from_object(obj, rubric)
        if fields.scores:
            readings.append((fields, flags))
    if readings:
        best = max(range(len(readings)), key=lambda i: (len(readings[i][0].scores), i))
        fields, flags = readings[best]
        distinct = {tuple(sorted((k, to_number(v)) for k, v in r.scores.items())) for r, _ in readings}
        if len(distinct) > 1:
            flags = [*flags, "multiple_answers"]
        return audit(fields, rubric, "json", flags)
    fields = fields_from_text(text, rubric)
    if fields.scores:
        return audit(fields, rubric, "text", ["text_fallback"])
    return ParsedAnswer(scores={d.key: None for d in rubric.dimensions}, flags=["unparseable"], source="none")
