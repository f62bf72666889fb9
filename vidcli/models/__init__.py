"""The three model families behind one small interface each, built from config or recipe.

- autoencoders (`vidcli.models.dcae`): `load_autoencoder`, `build_autoencoder`
- diffusion transformers (`vidcli.models.mmdit`): `load_dit`, `build_dit`
- text encoders (`vidcli.models.text`): `build_text_encoder`
"""

from vidcli.models.dcae import build_autoencoder, load_autoencoder, save_autoencoder
from vidcli.models.mmdit import build_dit, load_dit, save_dit
from vidcli.models.recipe_builders import (
    autoencoder_from_section,
    dit_from_section,
    text_encoder_from_section,
)
from vidcli.models.text import build_text_encoder

__all__ = [
    "autoencoder_from_section",
    "build_autoencoder",
    "build_dit",
    "build_text_encoder",
    "dit_from_section",
    "load_autoencoder",
    "load_dit",
    "save_autoencoder",
    "save_dit",
    "text_encoder_from_section",
]
