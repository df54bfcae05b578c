"""VividFace's 100-point face-video quality rubric, as data.

One source of truth: :mod:`fvr_bench.curation.prompt` writes the prompt from it and
:mod:`fvr_bench.curation.parse` checks the model's answer against it (dimension maxima,
adjustment values, tier cut-offs). The facts — five dimensions with their point bands,
the region checks, the bonuses/penalties and the tiers — are those VividFace lists for its
MLLM-driven curation (MLLM-Face90 keeps clips scoring >= 90); the wording of each band is
this project's paraphrase.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: VividFace keeps clips whose final score is at least this (MLLM-Face90).
DEFAULT_THRESHOLD = 90


@dataclass(frozen=True)
class Band:
    """Scores ``low … high`` (inclusive) of one dimension and what they stand for."""

    low: int
    high: int
    meaning: str


@dataclass(frozen=True)
class Dimension:
    """One scored dimension.

    key:       the JSON key the model must use.
    title:     the human name (also what plain-text answers are matched by).
    max_points: the dimension's share of the 100 points.
    bands:     ascending, contiguous, covering ``0 … max_points``.
    guidance:  what to look at beyond the bands.
    aliases:   other names a model uses for it (matched after :func:`normalise_name`).
    """

    key: str
    title: str
    max_points: int
    bands: tuple[Band, ...]
    guidance: str
    aliases: tuple[str, ...] = ()

    def band_of(self, score: float) -> Band | None:
        """The band a score falls in (fractional scores fall in the band below the next
        integer boundary); None outside ``0 … max_points``."""
        if not 0 <= score <= self.max_points:
            return None
        for band in self.bands:
            if band.low <= score < band.high + 1:
                return band
        return None

    def names(self) -> tuple[str, ...]:
        """Every normalised name this dimension answers to, the key first."""
        return tuple(dict.fromkeys(normalise_name(n) for n in (self.key, self.title, *self.aliases)))


@dataclass(frozen=True)
class Adjustment:
    """A bonus or penalty added to the base score.

    points:   the signed value the rubric fixes (the parser applies this, not the model's).
    keywords: alternatives, each a tuple of words that must all appear in a normalised
              adjustment name for a free-text name to be recognised as this adjustment.
    """

    key: str
    points: int
    description: str
    keywords: tuple[tuple[str, ...], ...]

    def matches(self, name: str) -> bool:
        normal = normalise_name(name)
        if normal == self.key:
            return True
        words = set(normal.split("_"))
        return any(all(any(w.startswith(k) for w in words) for k in group) for group in self.keywords)


@dataclass(frozen=True)
class Tier:
    """Quality tier: final scores ``>= min_score`` (and below the next tier) belong to it."""

    key: str
    title: str
    min_score: int | None  # None: everything below the lowest cut-off


@dataclass(frozen=True)
class RegionCheck:
    """A facial region the model must inspect, and what to look for there."""

    key: str
    title: str
    look_for: str


@dataclass(frozen=True)
class Rubric:
    """The whole rubric; :meth:`validate` checks its internal arithmetic."""

    name: str
    total: int
    dimensions: tuple[Dimension, ...]
    region_checks: tuple[RegionCheck, ...]
    adjustments: tuple[Adjustment, ...]
    tiers: tuple[Tier, ...]  # highest first
    motion_blur_regions: tuple[str, ...]  # regions of the explicit motion-blur check
    threshold: int = DEFAULT_THRESHOLD

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if sum(d.max_points for d in self.dimensions) != self.total:
            raise ValueError(f"rubric {self.name}: dimension maxima do not add up to {self.total}")
        for dim in self.dimensions:
            expected = 0
            for band in dim.bands:
                if band.low != expected or band.high < band.low:
                    raise ValueError(f"rubric {self.name}: bands of {dim.key} are not contiguous at {band}")
                expected = band.high + 1
            if expected != dim.max_points + 1:
                raise ValueError(f"rubric {self.name}: bands of {dim.key} do not end at {dim.max_points}")
        cut_offs = [t.min_score for t in self.tiers]
        if cut_offs[-1] is not None or any(c is None for c in cut_offs[:-1]) or cut_offs[:-1] != sorted(cut_offs[:-1], reverse=True):
            raise ValueError(f"rubric {self.name}: tiers must be ordered highest first and end with an open tier")
        if len({d.key for d in self.dimensions}) != len(self.dimensions) or len({a.key for a in self.adjustments}) != len(self.adjustments):
            raise ValueError(f"rubric {self.name}: duplicate keys")

    # -- lookups -----------------------------------------------------------------------

    def dimension(self, name: str) -> Dimension | None:
        """The dimension a (possibly free-text) name refers to, or None. Decorations a
        model adds to a name ("Lighting (20 points)", "occlusion_score") are ignored."""
        normal = normalise_name(name)
        bare = "_".join(w for w in normal.split("_") if w not in _NAME_DECORATIONS and not w.isdigit())
        for dim in self.dimensions:
            if normal in dim.names() or bare in dim.names():
                return dim
        return None

    def adjustment(self, name: str) -> Adjustment | None:
        """The adjustment a (possibly free-text) name refers to; None when it matches no
        adjustment or more than one (an ambiguous name is not guessed)."""
        normal = normalise_name(name)
        exact = [a for a in self.adjustments if a.key == normal]
        if exact:
            return exact[0]
        found = [a for a in self.adjustments if a.matches(name)]
        return found[0] if len(found) == 1 else None

    def tier_for(self, final: float) -> Tier:
        """The tier of a final score."""
        for tier in self.tiers:
            if tier.min_score is None or final >= tier.min_score:
                return tier
        raise AssertionError("validate() guarantees an open lowest tier")

    def tier_named(self, name: str) -> Tier | None:
        """The tier a free-text tier name refers to ("Premium", "below standard (<75)")."""
        normal = normalise_name(re.sub(r"\d+|tier", " ", str(name), flags=re.IGNORECASE))
        # longest names first: "below_standard" must win over "standard"
        for tier in sorted(self.tiers, key=lambda t: -len(t.key)):
            if normal == tier.key or normal.startswith(tier.key) or normalise_name(tier.title) == normal:
                return tier
        return None

    def max_adjustment(self) -> int:
        return sum(a.points for a in self.adjustments if a.points > 0)

    def min_adjustment(self) -> int:
        return sum(a.points for a in self.adjustments if a.points < 0)


_NAME_DECORATIONS = {"score", "scores", "points", "point", "pts", "pt", "max", "out", "of", "rating", "dimension"}


def normalise_name(name: str) -> str:
    """``"Stability & Regional Motion-Blur"`` → ``"stability_regional_motion_blur"``:
    lower case, British/American colour unified, every run of non-alphanumerics one
    underscore, the filler word "and" dropped."""
    text = str(name).lower().replace("colour", "color")
    words = [w for w in re.split(r"[^a-z0-9]+", text) if w and w != "and"]
    return "_".join(words)


VIVIDFACE_RUBRIC = Rubric(
    name="vividface_face90",
    total=100,
    dimensions=(
        Dimension(
            "facial_detail_clarity", "Facial detail clarity", 35,
            (
                Band(0, 12, "severely degraded; facial features hard to make out"),
                Band(13, 21, "basic features recognisable but no fine detail"),
                Band(22, 28, "skin texture visible; deduct here for motion blur in the eyes, mouth or teeth"),
                Band(29, 32, "pores and fine lines visible in every facial region"),
                Band(33, 35, "micro-detail: individual eyelashes, crisp teeth edges, lip texture"),
            ),
            "Judge the sharpest and the weakest frame; fine detail must hold in every key region.",
            aliases=("facial detail", "detail clarity", "facial clarity", "detail", "clarity", "facial details"),
        ),
        Dimension(
            "stability_motion_blur", "Stability and regional motion blur", 20,
            (
                Band(0, 6, "severe blur or instability"),
                Band(7, 11, "camera shake, or blur in the key regions"),
                Band(12, 15, "minor issues; key features stay sharp"),
                Band(16, 18, "minimal blur"),
                Band(19, 20, "no blur or instability at all"),
            ),
            "Motion blur counts even when it appears only briefly, e.g. while the person speaks or blinks.",
            aliases=("stability", "regional motion blur", "motion blur", "stability motion blur",
                     "stability regional blur", "stability_and_motion_blur"),
        ),
        Dimension(
            "lighting", "Lighting", 20,
            (
                Band(0, 6, "lighting obscures facial features"),
                Band(7, 11, "noticeable lighting problems"),
                Band(12, 15, "minor lighting issues"),
                Band(16, 18, "excellent natural lighting"),
                Band(19, 20, "studio-quality lighting"),
            ),
            "Exposure, harsh shadows, blown highlights and colour casts on the face.",
            aliases=("lighting quality", "illumination", "light"),
        ),
        Dimension(
            "artifacts_noise", "Artifacts and noise", 15,
            (
                Band(0, 4, "heavy compression artifacts or noise"),
                Band(5, 7, "noticeable artifacts or noise"),
                Band(8, 10, "minor artifacts or noise"),
                Band(11, 13, "minimal artifacts or noise"),
                Band(14, 15, "no artifacts or noise"),
            ),
            "Blocking, ringing, banding, mosquito noise, sensor grain.",
            aliases=("artifacts", "artefacts", "noise", "artifacts noise", "artifact", "compression artifacts",
                     "artifacts_and_noise"),
        ),
        Dimension(
            "occlusion", "Occlusion", 10,
            (
                Band(0, 2, "more than 25% of the face covered"),
                Band(3, 4, "10-25% of the face covered"),
                Band(5, 6, "5-10% of the face covered"),
                Band(7, 8, "less than 5% of the face covered"),
                Band(9, 10, "nothing covers the face"),
            ),
            "Hands, hair, glasses, microphones, masks, other people, the frame border.",
            aliases=("occlusions", "face occlusion", "occlusion level"),
        ),
    ),
    region_checks=(
        RegionCheck("eyes", "Eyes", "iris detail and individual eyelashes"),
        RegionCheck("mouth", "Mouth and lips", "lip texture and clean lip edges, no blur while speaking"),
        RegionCheck("teeth", "Teeth", "edges of individual teeth whenever teeth are shown"),
        RegionCheck("nose", "Nose", "nostrils and the nose bridge"),
    ),
    adjustments=(
        Adjustment("exceptional_skin_texture", +2, "exceptional skin texture throughout the clip",
                   (("skin", "texture"),)),
        Adjustment("perfect_color_white_balance", +1, "perfect colour reproduction and white balance",
                   (("perfect",), ("white", "balance"), ("color", "accura"), ("color", "reproduc"))),
        Adjustment("key_region_motion_blur", -3, "motion blur in any key region (eyes, mouth, teeth), even briefly",
                   (("motion", "blur"),)),
        Adjustment("digital_noise_grain", -2, "visible digital noise or grain",
                   (("noise",), ("grain",))),
        Adjustment("unnatural_smoothing", -3, "unnatural smoothing or a beauty filter",
                   (("smooth",), ("beauty",), ("filter",))),
        Adjustment("inconsistent_sharpness", -2, "sharpness that changes between frames",
                   (("inconsistent", "sharp"), ("sharpness", "frame"), ("sharpness", "vari"))),
    ),
    tiers=(
        Tier("premium", "Premium", 85),
        Tier("high", "High", 80),
        Tier("standard", "Standard", 75),
        Tier("below_standard", "Below standard", None),
    ),
    motion_blur_regions=("eyes", "mouth", "teeth"),
)
