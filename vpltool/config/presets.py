"""Class lists, CLIP-ES prompt names, background words and prompt templates for PASCAL VOC and COCO.

Torch-free constants. The CLIP-ES lists are kept exactly as that code spells them (synonyms fused inside one prompt
string, VOC-style spellings in the COCO list, the 'sknowboard' typo) because the text embeddings, and so the CAMs,
depend on the exact strings; matching them is what makes parity checks possible.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import VplError

BACKGROUND = "background"

# PASCAL VOC 2012, foreground classes 1..20 in the order of the mask values.
VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

VOC_CLIP_ES_NAMES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird avian", "boat", "bottle", "bus", "car", "cat", "chair seat", "cow",
    "diningtable", "dog", "horse", "motorbike", "person with clothes,people,human", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor screen",
)  # fmt: skip

# CLIP-ES background words: things that are in VOC images but are not VOC classes.
VOC_BACKGROUND: tuple[str, ...] = (
    "ground", "land", "grass", "tree", "building", "wall", "sky", "lake", "water", "river", "sea", "railway",
    "railroad", "keyboard", "helmet", "cloud", "house", "mountain", "ocean", "road", "rock", "street", "valley",
    "bridge", "sign",
)  # fmt: skip

# COCO 2014, the 80 categories in category-id order, remapped to mask values 1..80.
COCO_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
)  # fmt: skip

COCO_CLIP_ES_NAMES: tuple[str, ...] = (
    "person with clothes,people,human", "bicycle", "car", "motorbike", "aeroplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird avian", "cat", "dog", "horse",
    "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack,bag", "umbrella,parasol", "handbag,purse",
    "necktie", "suitcase", "frisbee", "skis", "sknowboard", "sports ball", "kite", "baseball bat", "glove",
    "skateboard", "surfboard", "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "dessertspoon",
    "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake",
    "chair seat", "sofa", "pottedplant", "bed", "diningtable", "toilet", "tvmonitor screen", "laptop", "mouse",
    "remote control", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book",
    "clock", "vase", "scissors", "teddy bear", "hairdrier,blowdrier", "toothbrush",
)  # fmt: skip

# 'keyboard' and 'sign' are dropped because COCO has them as classes (keyboard, stop sign).
COCO_BACKGROUND: tuple[str, ...] = tuple(w for w in VOC_BACKGROUND if w not in ("keyboard", "sign"))

CLIP_ES_TEMPLATE = "a clean origami {}."

# The 80 prompt templates of CLIP's ImageNet zero-shot evaluation.
IMAGENET_TEMPLATES: tuple[str, ...] = (
    "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.", "a photo of the hard to see {}.",
    "a low resolution photo of the {}.", "a rendering of a {}.", "graffiti of a {}.", "a bad photo of the {}.",
    "a cropped photo of the {}.", "a tattoo of a {}.", "the embroidered {}.", "a photo of a hard to see {}.",
    "a bright photo of a {}.", "a photo of a clean {}.", "a photo of a dirty {}.", "a dark photo of the {}.",
    "a drawing of a {}.", "a photo of my {}.", "the plastic {}.", "a photo of the cool {}.",
    "a close-up photo of a {}.", "a black and white photo of the {}.", "a painting of the {}.",
    "a painting of a {}.", "a pixelated photo of the {}.", "a sculpture of the {}.", "a bright photo of the {}.",
    "a cropped photo of a {}.", "a plastic {}.", "a photo of the dirty {}.", "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.", "a photo of the {}.", "a good photo of the {}.", "a rendering of the {}.",
    "a {} in a video game.", "a photo of one {}.", "a doodle of a {}.", "a close-up photo of the {}.",
    "a photo of a {}.", "the origami {}.", "the {} in a video game.", "a sketch of a {}.", "a doodle of the {}.",
    "a origami {}.", "a low resolution photo of a {}.", "the toy {}.", "a rendition of the {}.",
    "a photo of the clean {}.", "a photo of a large {}.", "a rendition of a {}.", "a photo of a nice {}.",
    "a photo of a weird {}.", "a blurry photo of a {}.", "a cartoon {}.", "art of a {}.", "a sketch of the {}.",
    "a embroidered {}.", "a pixelated photo of a {}.", "itap of the {}.", "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.", "a plushie {}.", "a photo of the nice {}.", "a photo of the small {}.",
    "a photo of the weird {}.", "the cartoon {}.", "art of the {}.", "a drawing of the {}.",
    "a photo of the large {}.", "a black and white photo of a {}.", "the plushie {}.", "a dark photo of a {}.",
    "itap of a {}.", "graffiti of the {}.", "a toy {}.", "itap of my {}.", "a photo of a cool {}.",
    "a photo of a small {}.", "a tattoo of the {}.",
)  # fmt: skip

PRESETS: dict[str, tuple[str, ...]] = {"voc": VOC_CLASSES, "coco": COCO_CLASSES}
_CLIP_ES_NAMES = {"voc": VOC_CLIP_ES_NAMES, "coco": COCO_CLIP_ES_NAMES}
_BACKGROUND_WORDS = {"voc": VOC_BACKGROUND, "coco": COCO_BACKGROUND}


def foreground(classes: Sequence[str]) -> tuple[str, ...]:
    """The foreground names of ``classes``: a leading 'background' entry is dropped, if there is one."""
    names = tuple(classes)
    return names[1:] if names and names[0] == BACKGROUND else names


def preset_for(classes: Sequence[str]) -> str | None:
    """'voc' or 'coco' if the foreground classes are exactly that preset's (same names, same order), else None.

    Args:
        classes: class names, with or without 'background' in front.
    """
    fg = foreground(classes)
    return next((name for name, preset in PRESETS.items() if fg == preset), None)


# VOC's run-together names as words, for a model prompted with a class's name (SAM 3: `sam-pseudo --masks sam3`)
_WORDS = {"diningtable": "dining table", "pottedplant": "potted plant", "tvmonitor": "tv monitor"}


def spoken_names(classes: Sequence[str]) -> list[str]:
    """Each foreground class's name as words: ``_`` read as a space, VOC's run-together names split
    (``pottedplant`` -> ``potted plant``)."""
    return [_WORDS.get(name, name.replace("_", " ")) for name in foreground(classes)]


def prompt_names(classes: Sequence[str], preset: str | None) -> list[str]:
    """The name put into the prompt template for each foreground class.

    Args:
        classes: class names, with or without 'background' in front.
        preset: 'voc' / 'coco' for the CLIP-ES names (synonyms included); None for the class names themselves,
            '_' read as a space ('potted_plant' -> 'potted plant').

    Returns:
        One name per foreground class, background excluded.
    """
    fg = foreground(classes)
    if preset is None:
        return [name.replace("_", " ") for name in fg]
    _check_preset(preset)
    if fg != PRESETS[preset]:
        raise VplError(f"the classes are not the {preset} preset's ({len(fg)} classes {list(fg[:3])}...); "
                       "use the plain class names (no preset)")
    return list(_CLIP_ES_NAMES[preset])


def background_words(preset: str | None, classes: Sequence[str] = ()) -> tuple[str, ...]:
    """CLIP-ES background words: COCO's 23 for 'coco', VOC's 25 for 'voc' and for a dataset without preset.

    Words that are also a foreground class in ``classes`` are removed, since a word that describes a class would
    steal that class's pixels (the reason CLIP-ES drops 'keyboard' and 'sign' for COCO).
    """
    if preset is not None:
        _check_preset(preset)
    words = _BACKGROUND_WORDS.get(preset or "voc", VOC_BACKGROUND)
    taken = {name.replace("_", " ").lower() for name in foreground(classes)}
    return tuple(w for w in words if w not in taken)


MAX_CLASSES = 254  # foreground classes a mask can hold: uint8 VOC-palette PNGs, 0 = background, 255 = ignore


def check_class_names(names: Sequence[str], option: str = "--classes",
                      synonyms: Sequence[Sequence[str]] | None = None) -> None:
    """Foreground class names as a user gives them (text-prototypes, predict ``--classes``): 'background' is class 0
    already, and a name given twice (case ignored, '_' read as a space: 'Star', 'STAR' and 'striped_star' vs
    'striped star' are one word to CLIP) made two rows of one class without a word of warning. One line naming
    ``option`` otherwise.

    At most :data:`MAX_CLASSES` names: every mask vpltool writes or reads is a uint8 VOC-palette PNG (0 background,
    255 ignore), the format CLIP-ES, mmseg and every VOC/COCO tool read; a 255th class would wrap around to 255 =
    ignore, a 256th to background. No WSSS benchmark comes near (COCO: 80).

    ``synonyms``: per class every name it is queried with (``segment --classes cat|kitten``); each word must then
    be unique over all classes too, and none may be 'background'."""
    if len(names) > MAX_CLASSES:
        raise VplError(f"{option}: {len(names)} class names, more than the {MAX_CLASSES} a mask holds (uint8 PNG: 0 = "
                       "background, 255 = ignore); split the vocabulary into runs of at most "
                       f"{MAX_CLASSES} classes")
    if any(not name.strip() for name in names):
        raise VplError(f"{option}: an empty class name; give names like cat,dog")
    broken = next((w for group in (synonyms or [[n] for n in names]) for w in [*group]
                   if any(c in w for c in "\n\r\t\v\f")), None)
    if broken is not None:  # a pasted list: 'cat\ndog' was one class, and its prompt two lines
        raise VplError(f"{option}: {broken!r} holds a line break or a tab, so it would be one class; give one class "
                       "an entry, e.g. cat,dog")
    from ..io.files import comment_problem

    seen: dict[str, str] = {}
    words = synonyms if synonyms is not None else [[name] for name in names]
    for name, group in zip(names, words):
        if comment_problem(name):  # it would be a comment in a class list file
            raise VplError(f"{option}: {name!r} {comment_problem(name)}; rename the class")
        for word in group:
            if word.replace("_", " ").strip().casefold() == BACKGROUND:
                of = f" (a synonym of {name!r})" if word != name else ""
                raise VplError(f"{option}: 'background'{of} is class 0 already (scored with the background words); "
                               "leave it out of the class names")
            key = word.replace("_", " ").casefold()
            if key in seen:
                twice = f"'{word}' is" if seen[key] == word else f"'{seen[key]}' and '{word}' are"
                under = " ('_' reads as a space)" if "_" in seen[key] + word else ""
                each = "class and synonym" if synonyms is not None else "class"
                raise VplError(f"{option}: {twice} named twice (case ignored){under}; give each {each} once")
            seen[key] = word


def clashing_word(names: Sequence[str], words: Sequence[str]) -> str | None:
    """The first of ``words`` that is also one of the class ``names`` (case ignored, '_' as a space), or None: a
    background word identical to a class takes half of that class's probability."""
    taken = {name.replace("_", " ").casefold() for name in foreground(names)}
    return next((w for w in words if w.replace("_", " ").casefold() in taken), None)


def _check_preset(preset: str) -> None:
    if preset not in PRESETS:
        raise VplError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")


__all__ = [
    "BACKGROUND", "VOC_CLASSES", "VOC_CLIP_ES_NAMES", "VOC_BACKGROUND", "COCO_CLASSES", "COCO_CLIP_ES_NAMES",
    "COCO_BACKGROUND", "CLIP_ES_TEMPLATE", "IMAGENET_TEMPLATES", "PRESETS", "foreground", "preset_for",
    "prompt_names", "spoken_names", "background_words", "check_class_names", "clashing_word", "MAX_CLASSES",
]  # fmt: skip
