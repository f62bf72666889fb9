"""Every documented recipe key is read by some stage: none is accepted and then ignored."""

import dataclasses
import re
from pathlib import Path

import vidcli
from vidcli import recipe

PACKAGE = Path(vidcli.__file__).parent


def test_every_section_field_is_read_outside_recipe_py():
    sources = [p.read_text() for p in PACKAGE.rglob("*.py") if p.name != "recipe.py"]
    sections = [
        c
        for c in vars(recipe).values()
        if isinstance(c, type) and dataclasses.is_dataclass(c) and c.__name__.endswith("Section")
    ]
    assert {"DataSection", "TrainSection"} <= {c.__name__ for c in sections}
    unread = [
        f"{section.__name__}.{field.name}"
        for section in sections
        for field in dataclasses.fields(section)
        if not any(re.search(rf"\.{field.name}\b", text) for text in sources)
    ]
    assert not unread, f"documented but never read: {unread}"
