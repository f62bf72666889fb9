"""ImageNet-1k class names <-> the label ids the class-conditional models take (0..999).

`vidcli/assets/imagenet_classes.txt` holds one name per line, line i = class i, in the short
WordNet-derived spelling of the widely used Keras `imagenet_class_index.json` (underscores for
spaces). Two names occur twice ("crane": 134 bird, 517 machine; "maillot": 638, 639); ask for
those by number.
"""

from __future__ import annotations

import difflib
import functools
from importlib import resources

from vidcli.errors import UsageError
from vidcli.models.dcae_diffusion.config import NUM_CLASSES


@functools.cache
def class_names() -> tuple[str, ...]:
    """The 1000 class names, index = label id."""
    text = resources.files("vidcli").joinpath("assets/imagenet_classes.txt").read_text()
    names = tuple(text.split("\n")[:NUM_CLASSES])
    if len(names) != NUM_CLASSES or not all(names):
        raise RuntimeError("vidcli/assets/imagenet_classes.txt must list 1000 class names")
    return names


def _normalise(name: str) -> str:
    return " ".join(name.replace("_", " ").split()).lower()


@functools.cache
def _ids_by_name() -> dict[str, tuple[int, ...]]:
    ids: dict[str, tuple[int, ...]] = {}
    for i, name in enumerate(class_names()):
        key = _normalise(name)
        ids[key] = (*ids.get(key, ()), i)
    return ids


def class_id(name_or_id: str | int) -> int:
    """A label id from an id (`279`, `"279"`) or a class name (`"Arctic fox"`, `arctic_fox`).

    Names match case-insensitively with `_` and spaces interchangeable; an unknown or ambiguous
    name raises a UsageError naming the closest classes or the ids to choose from.
    """
    text = str(name_or_id).strip()
    if text.isdigit():
        label = int(text)
        if label >= NUM_CLASSES:
            raise UsageError(f"class id {label} out of range 0..{NUM_CLASSES - 1}")
        return label
    key = _normalise(text)
    ids = _ids_by_name().get(key)
    if ids is None:
        close = difflib.get_close_matches(key, _ids_by_name(), n=3, cutoff=0.6)
        hint = f"; closest: {', '.join(close)}" if close else ""
        raise UsageError(f"unknown ImageNet class {text!r}{hint} (or give an id 0..999)")
    if len(ids) > 1:
        raise UsageError(f"ImageNet class {text!r} is ambiguous: ids {', '.join(map(str, ids))}")
    return ids[0]


def class_name(label: int) -> str:
    """The readable name of a label id (underscores become spaces)."""
    return class_names()[label].replace("_", " ")
