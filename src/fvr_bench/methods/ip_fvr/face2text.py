"""Face2Text (IP-FVR §3.2): reference-face keywords → a sentence for the CLIP text encoder.

The paper gathers keywords from three sources — the 40 CelebA attributes of a facial-attribute
detector (MOON, Rudd et al. 2016), the FER-2013 emotion of a real-time emotion classifier
(Arriaga et al. 2017, mini-Xception) and manually labelled facial actions (e.g. "speaking",
"smiling") — and has "a large language model" write them up as natural-language sentences.
**The LLM is not named**, so this module writes the sentence with its own deterministic template
(:func:`describe`); a user who has an LLM can post-edit the string, nothing else depends on it.

The negative text stream of the multi-stream CFG (Eq. 11–12) is "a negative text prompt containing
false facial attributes": :func:`negative` flips the detected attributes that have a natural
opposite (man ↔ woman, young ↔ old, black hair → blond hair, glasses ↔ no glasses …).

Both streams get VEnhancer's quality prompts appended (``c_{pt⊕pq}``, ``c_{nt⊕nq}``):
:data:`QUALITY_POSITIVE` / :data:`QUALITY_NEGATIVE` and :func:`with_quality`.

The classifiers are user-supplied (declared files ``face2text_attributes`` /
``face2text_emotion``; nobody has released the paper's): :class:`Face2Text` takes any callables
``image (3, H, W) in [0, 1] -> dict[str, bool]`` and ``-> str``; :func:`attribute_classifier` /
:func:`emotion_classifier` wrap logit networks in the declared input formats. Without them it
falls back to VEnhancer's default prompt "a good video" (the paper's ablation baseline text) and
says so in a provenance note.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from fvr_bench.errors import ConfigError

# The 40 CelebA attributes, in list_attr_celeba.txt order (the order of a 40-logit classifier).
CELEBA_ATTRIBUTES: tuple[str, ...] = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips",
    "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin",
    "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open",
    "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline",
    "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat",
    "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
)
# FER-2013 classes, in the dataset's label order 0..6
FER2013_EMOTIONS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")

DEFAULT_PROMPT = "a good video"  # VEnhancer's --prompt default; IP-FVR's "w/o Face2Text" text
# Without attributes there is nothing false to state: the negative text is empty and the negative
# stream is VEnhancer's own negative (quality) prompt, exactly as VEnhancer runs it.
DEFAULT_NEGATIVE = ""

# VEnhancer video_to_video/utils/config.py: cfg.positive_prompt / cfg.negative_prompt (quoted;
# the source's line-continuation whitespace is collapsed, which the tokenizer's
# whitespace_clean does anyway).
QUALITY_POSITIVE = (
    "Cinematic, High Contrast, highly detailed, taken using a Canon EOS R camera, hyper detailed photo - "
    "realistic maximum detail, 32k, Color Grading, ultra HD, extreme meticulous detailing, skin pore detailing, "
    "hyper sharpness, perfect without deformations."
)
QUALITY_NEGATIVE = (
    "painting, oil painting, illustration, drawing, art, sketch, oil painting, cartoon, CG Style, 3D render, "
    "unreal engine, blurring, dirty, messy, worst quality, low quality, frames, watermark, signature, "
    "jpeg artifacts, deformed, lowres, over-smooth"
)
# VEnhancer's inference.py builds the caption as ``text + positive_prompt`` — no separator.
VENHANCER_JOINER = ""

_EMOTION_ALIASES = {
    "anger": "angry", "disgusted": "disgust", "fearful": "fear", "scared": "fear", "happiness": "happy",
    "sadness": "sad", "surprised": "surprise", "calm": "neutral",
}
_EMOTION_PHRASE = {
    "angry": "looking angry", "disgust": "looking disgusted", "fear": "looking fearful", "happy": "looking happy",
    "sad": "looking sad", "surprise": "looking surprised", "neutral": "with a neutral expression",
}
# a "false" emotion for the negative stream: the most clearly different expression
_EMOTION_OPPOSITE = {
    "angry": "happy", "disgust": "happy", "fear": "happy", "happy": "sad", "sad": "happy", "surprise": "neutral",
    "neutral": "angry",
}
_HAIR_COLOURS = (("Black_Hair", "black"), ("Blond_Hair", "blond"), ("Brown_Hair", "brown"), ("Gray_Hair", "gray"))
_HAIR_KEY = {colour: key for key, colour in _HAIR_COLOURS}
_HAIR_COLOUR_OPPOSITE = {"black": "blond", "blond": "black", "brown": "blond", "gray": "black"}
# Attributes left out of the description on purpose: "Attractive" is a rater's judgement, not a
# facial feature; "Blurry" describes the image quality, the opposite of what restoration wants
# (the quality prompts already cover sharpness).
_NOT_DESCRIBED = ("Attractive", "Blurry")

AttributeModel = Callable[[torch.Tensor], Mapping[str, bool]]
EmotionModel = Callable[[torch.Tensor], str]

_BY_LOWER = {name.lower(): name for name in CELEBA_ATTRIBUTES}


# --------------------------------------------------------------------------- normalisation

def normalise_attributes(attributes: Mapping[str, bool] | None) -> dict[str, bool]:
    """Attribute names → canonical CelebA spelling (case-insensitive); an unknown name is a
    :class:`ConfigError` (a typo would otherwise silently drop a feature)."""
    if not attributes:
        return {}
    out: dict[str, bool] = {}
    for name, value in attributes.items():
        canonical = _BY_LOWER.get(str(name).strip().lower())
        if canonical is None:
            raise ConfigError(f"Face2Text: unknown CelebA attribute {name!r} (known: {', '.join(CELEBA_ATTRIBUTES)})")
        out[canonical] = bool(value)
    return out


def normalise_emotion(emotion: str | None) -> str | None:
    """A FER-2013 class name (case-insensitive, common aliases such as "surprised" accepted) or None."""
    if emotion is None or not str(emotion).strip():
        return None
    key = str(emotion).strip().lower()
    key = _EMOTION_ALIASES.get(key, key)
    if key not in FER2013_EMOTIONS:
        raise ConfigError(f"Face2Text: unknown emotion {emotion!r} (FER-2013 classes: {', '.join(FER2013_EMOTIONS)})")
    return key


def _clean_actions(actions: Sequence[str] | str | None) -> list[str]:
    if actions is None:
        return []
    if isinstance(actions, str):
        actions = [actions]
    words = [" ".join(str(a).split()).lower() for a in actions]
    return list(dict.fromkeys(w for w in words if w))


def _join(items: Sequence[str]) -> str:
    """"a", "a and b", "a, b and c"."""
    items = [i for i in items if i]
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _article(phrase: str) -> str:
    return ("an " if phrase[:1] in "aeiou" else "a ") + phrase


# --------------------------------------------------------------------------- sentences

def _subject(on: Callable[[str], bool], off: Callable[[str], bool], flip: bool) -> str:
    """"young woman", "older clean-shaven man", "person" …"""
    words = []
    if on("Young"):
        words.append("old" if flip else "young")
    elif off("Young"):
        words.append("young" if flip else "older")
    if on("Male"):
        noun = "woman" if flip else "man"
    elif off("Male"):
        noun = "man" if flip else "woman"
    else:
        noun = "person"
    return _article(" ".join([*words, noun]))


def _hair(on: Callable[[str], bool], flip: bool) -> list[str]:
    if on("Bald"):
        return ["a full head of hair"] if flip else ["a bald head"]
    colours = [colour for key, colour in _HAIR_COLOURS if on(key)]
    styles = [style for key, style in (("Straight_Hair", "straight"), ("Wavy_Hair", "wavy")) if on(key)]
    if flip:
        colours = list(dict.fromkeys(_HAIR_COLOUR_OPPOSITE[c] for c in colours))
        colours = [c for c in colours if not on(_HAIR_KEY[c])]
        styles = ["curly" if s == "straight" else "straight" for s in styles]
    phrases = []
    if colours or styles:
        # "wavy brown hair", "black and gray hair"
        phrases.append(" ".join([*styles[:1], _join(colours), "hair"]).replace("  ", " ").strip())
    if not flip:
        if on("Bangs"):
            phrases.append("bangs")
        if on("Receding_Hairline"):
            phrases.append("a receding hairline")
    return phrases


def _features(on: Callable[[str], bool]) -> list[str]:
    """Face features of the positive description, in a fixed order (top to bottom of the face)."""
    phrases = []
    brows = [w for key, w in (("Bushy_Eyebrows", "bushy"), ("Arched_Eyebrows", "arched")) if on(key)]
    if brows:
        phrases.append(" ".join(brows) + " eyebrows")
    if on("Narrow_Eyes"):
        phrases.append("narrow eyes")
    if on("Bags_Under_Eyes"):
        phrases.append("bags under the eyes")
    nose = [w for key, w in (("Big_Nose", "big"), ("Pointy_Nose", "pointy")) if on(key)]
    if nose:
        phrases.append(_article(" ".join(nose) + " nose"))
    if on("High_Cheekbones"):
        phrases.append("high cheekbones")
    if on("Rosy_Cheeks"):
        phrases.append("rosy cheeks")
    if on("Big_Lips"):
        phrases.append("full lips")
    if on("Mouth_Slightly_Open"):
        phrases.append("a slightly open mouth")
    face = [w for key, w in (("Chubby", "chubby"), ("Oval_Face", "oval")) if on(key)]
    if face:
        phrases.append(_article(" ".join(face) + " face"))
    if on("Double_Chin"):
        phrases.append("a double chin")
    if on("Pale_Skin"):
        phrases.append("pale skin")
    return phrases


def _facial_hair(on: Callable[[str], bool], off: Callable[[str], bool], flip: bool) -> list[str]:
    specific = [p for key, p in (("5_o_Clock_Shadow", "stubble"), ("Goatee", "a goatee"), ("Mustache", "a mustache"),
                                 ("Sideburns", "sideburns")) if on(key)]
    bearded = off("No_Beard")
    if flip:
        if specific or bearded:
            return ["a clean-shaven face"]
        if on("No_Beard") and on("Male"):
            return ["a full beard"]
        return []
    if bearded and not specific:
        specific = ["a beard"]
    return specific


def _worn(on: Callable[[str], bool], flip: bool) -> list[str]:
    items = [p for key, p in (("Eyeglasses", "glasses"), ("Wearing_Hat", "a hat"), ("Wearing_Earrings", "earrings"),
                              ("Wearing_Necklace", "a necklace"), ("Wearing_Necktie", "a necktie"),
                              ("Heavy_Makeup", "heavy makeup"), ("Wearing_Lipstick", "lipstick")) if on(key)]
    if flip:
        # only the items whose absence is a clear visual fact are stated in the negative
        return [f"no {'makeup' if i == 'heavy makeup' else i.removeprefix('a ')}" for i in items
                if i in ("glasses", "a hat", "heavy makeup")]
    return items


def describe(attributes: Mapping[str, bool] | None, emotion: str | None = None,
             actions: Sequence[str] | str = ()) -> str:
    """A deterministic sentence from Face2Text keywords (this module's template; the paper's
    LLM is unnamed).

    ``attributes``: CelebA name → present (names missing from the mapping are unknown, not
    absent: ``Male`` missing gives "person", ``Male: False`` gives "woman"). ``emotion``: a
    FER-2013 class or None. ``actions``: free keywords ("speaking", "smiling"), kept in order,
    de-duplicated; ``Smiling`` from the attributes becomes the action "smiling".

    >>> describe({"Male": False, "Young": True, "Wavy_Hair": True, "Brown_Hair": True,
    ...           "Arched_Eyebrows": True}, "happy", ["speaking"])
    'a close-up video of a young woman with wavy brown hair and arched eyebrows, speaking, looking happy'
    """
    attrs = normalise_attributes(attributes)
    emotion = normalise_emotion(emotion)
    on = lambda key: attrs.get(key) is True
    off = lambda key: attrs.get(key) is False
    with_parts = [*_hair(on, flip=False), *_features(on), *_facial_hair(on, off, flip=False)]
    sentence = "a close-up video of " + _subject(on, off, flip=False)
    if with_parts:
        sentence += " with " + _join(with_parts)
    worn = _worn(on, flip=False)
    if worn:
        sentence += ", wearing " + _join(worn)
    acts = _clean_actions(actions)
    if on("Smiling") and "smiling" not in acts:
        acts.insert(0, "smiling")
    if acts:
        sentence += ", " + _join(acts)
    if emotion:
        sentence += ", " + _EMOTION_PHRASE[emotion]
    return sentence


def negative(attributes: Mapping[str, bool] | None, emotion: str | None = None,
             actions: Sequence[str] | str = ()) -> str:
    """The negative text of the multi-stream CFG: a sentence stating FALSE facial attributes.

    Flips what has a natural opposite: gender (man ↔ woman), age (young ↔ old), hair colour
    (black → blond, blond → black, brown → blond, gray → black; never a colour also detected),
    hair style (straight ↔ curly/wavy → straight), bald ↔ full head of hair, facial hair ↔
    clean-shaven (a clean-shaven man → "a full beard"), glasses / hat / heavy makeup → "no …",
    smiling → "frowning", and the emotion to a clearly different one (happy → sad …). Features
    without a natural opposite (a big nose, earrings, …) are left out. ``actions`` are accepted
    for symmetry with :func:`describe` but not negated (a missing action is not an identity
    feature). Returns :data:`DEFAULT_NEGATIVE` ("") when nothing can be flipped.
    """
    del actions  # documented: actions are not negated
    attrs = normalise_attributes(attributes)
    emotion = normalise_emotion(emotion)
    on = lambda key: attrs.get(key) is True
    off = lambda key: attrs.get(key) is False
    with_parts = [*_hair(on, flip=True), *_facial_hair(on, off, flip=True)]
    worn = _worn(on, flip=True)
    extras = []
    if on("Smiling"):
        extras.append("frowning")
    if emotion:
        extras.append(_EMOTION_PHRASE[_EMOTION_OPPOSITE[emotion]])
    flipped_subject = any(k in attrs for k in ("Male", "Young"))
    if not (flipped_subject or with_parts or worn or extras):
        return DEFAULT_NEGATIVE
    sentence = "a close-up video of " + _subject(on, off, flip=True)
    if with_parts:
        sentence += " with " + _join(with_parts)
    if worn:
        sentence += ", wearing " + _join(worn)
    if extras:
        sentence += ", " + _join(extras)
    return sentence


def with_quality(text: str, positive: bool = True, joiner: str = VENHANCER_JOINER) -> str:
    """``text ⊕`` VEnhancer's quality prompt: ``text + joiner + QUALITY_POSITIVE`` (``positive``)
    or ``… QUALITY_NEGATIVE``. The default joiner "" is VEnhancer's own ``text + positive_prompt``
    (inference.py); an empty ``text`` gives the quality prompt alone — VEnhancer's negative stream
    is exactly ``QUALITY_NEGATIVE``."""
    quality = QUALITY_POSITIVE if positive else QUALITY_NEGATIVE
    return quality if not text else text + joiner + quality


# --------------------------------------------------------------------------- classifiers

def _majority(attribute_sets: Sequence[Mapping[str, bool]]) -> dict[str, bool]:
    """Per attribute: present when more than half of the references say so."""
    sets = [normalise_attributes(s) for s in attribute_sets]
    names = [n for n in CELEBA_ATTRIBUTES if any(n in s for s in sets)]
    out = {}
    for name in names:
        votes = [s[name] for s in sets if name in s]
        out[name] = sum(votes) * 2 > len(votes)
    return out


def _most_common(labels: Sequence[str | None]) -> str | None:
    labels = [label for label in (normalise_emotion(x) for x in labels) if label]
    if not labels:
        return None
    counts = Counter(labels)
    best = max(counts.values())
    return next(label for label in labels if counts[label] == best)  # ties → the first reference's


def _images(reference: torch.Tensor) -> list[torch.Tensor]:
    if reference.ndim == 3:
        return [reference]
    if reference.ndim == 4:
        return list(reference)
    raise ConfigError(f"Face2Text: reference must be (3, H, W) or (R, 3, H, W), got {tuple(reference.shape)}")


def attribute_classifier(network: Callable[[torch.Tensor], torch.Tensor], size: int = 224,
                         threshold: float = 0.0) -> AttributeModel:
    """Wrap a CelebA logit network ``(N, 3, size, size)`` RGB [0, 1] → ``(N, 40)`` logits (the
    declared ``face2text_attributes`` format) as ``image (3, H, W) [0, 1] -> dict[str, bool]``:
    bilinear resize, attribute present when its logit > ``threshold`` (0 = probability 0.5)."""
    def classify(image: torch.Tensor) -> dict[str, bool]:
        x = F.interpolate(image[None].float(), size=(size, size), mode="bilinear", align_corners=False,
                          antialias=True).clamp(0, 1)
        with torch.no_grad():
            logits = network(x).reshape(-1)
        if logits.numel() != len(CELEBA_ATTRIBUTES):
            raise ConfigError(f"Face2Text attribute model returned {logits.numel()} logits, expected 40 (CelebA order)")
        return {name: bool(v > threshold) for name, v in zip(CELEBA_ATTRIBUTES, logits.tolist())}

    return classify


def emotion_classifier(network: Callable[[torch.Tensor], torch.Tensor], size: int = 64) -> EmotionModel:
    """Wrap a FER-2013 logit network ``(N, 1, size, size)`` grey [0, 1] → ``(N, 7)`` logits (the
    declared ``face2text_emotion`` format) as ``image (3, H, W) [0, 1] -> str``: grey =
    0.299 R + 0.587 G + 0.114 B (ITU-R 601), bilinear resize, arg-max class."""
    weights = torch.tensor([0.299, 0.587, 0.114])

    def classify(image: torch.Tensor) -> str:
        grey = (image.float() * weights.to(image.device).view(3, 1, 1)).sum(0, keepdim=True)
        x = F.interpolate(grey[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        with torch.no_grad():
            logits = network(x.clamp(0, 1)).reshape(-1)
        if logits.numel() != len(FER2013_EMOTIONS):
            raise ConfigError(f"Face2Text emotion model returned {logits.numel()} logits, expected 7 (FER-2013 order)")
        return FER2013_EMOTIONS[int(logits.argmax())]

    return classify


class Face2Text:
    """Reference face(s) → (positive text, negative text, provenance note).

    ``attribute_model``: ``image (3, H, W) [0, 1] -> dict[str, bool]`` (CelebA names) or None;
    ``emotion_model``: ``image -> str`` (a FER-2013 class) or None. With several references the
    attributes are a per-attribute majority vote and the emotion the most frequent label (ties:
    the earliest reference). The returned texts do **not** include the quality prompts — apply
    :func:`with_quality` (the multi-stream CFG needs ``pt⊕pq`` and ``nt⊕nq``).
    """

    def __init__(self, attribute_model: AttributeModel | None = None, emotion_model: EmotionModel | None = None,
                 default_prompt: str = DEFAULT_PROMPT, default_negative: str = DEFAULT_NEGATIVE) -> None:
        self.attribute_model = attribute_model
        self.emotion_model = emotion_model
        self.default_prompt = default_prompt
        self.default_negative = default_negative

    def keywords(self, reference: torch.Tensor) -> tuple[dict[str, bool], str | None]:
        """The classifiers' attributes and emotion of ``reference`` ``(3, H, W)`` / ``(R, 3, H, W)``."""
        images = [img.detach() for img in _images(reference)]
        attributes = _majority([self.attribute_model(img) for img in images]) if self.attribute_model else {}
        emotion = _most_common([self.emotion_model(img) for img in images]) if self.emotion_model else None
        return attributes, emotion

    def prompts(self, reference: torch.Tensor | None, actions: Sequence[str] | str = ()) -> tuple[str, str, str]:
        """``(positive, negative, note)``.

        Without classifiers (or without a reference) the positive text is ``default_prompt`` — or,
        when ``actions`` are given, the template with the actions alone — the negative is
        ``default_negative``, and the note says so (it goes to the run's provenance)."""
        acts = _clean_actions(actions)
        have_models = self.attribute_model is not None or self.emotion_model is not None
        if reference is None or not have_models:
            reason = ("no reference image" if have_models else "no attribute/emotion classifier files")
            note = f"Face2Text: {reason}; default prompt {self.default_prompt!r}"
            if acts:
                note += f"; manual actions {acts} described with the template"
                return describe(None, None, acts), self.default_negative, note
            return self.default_prompt, self.default_negative, note
        attributes, emotion = self.keywords(reference)
        missing = [what for what, model in (("attribute", self.attribute_model), ("emotion", self.emotion_model))
                   if model is None]
        note = ("Face2Text: sentence from this project's template (the paper's LLM is unnamed); "
                f"{sum(attributes.values())} attribute(s) present, emotion {emotion!r}, actions {acts}")
        if missing:
            note += f"; no {'/'.join(missing)} classifier file"
        positive = describe(attributes, emotion, acts)
        neg = negative(attributes, emotion, acts) or self.default_negative
        return positive, neg, note
