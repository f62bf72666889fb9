"""The three model families behind one small interface each, built from their own configs.

Recipe sections become models one layer up, in `vidcli.builders`.

- autoencoders (`vidcli.models.autoencoders`: DC-AE, HunyuanVideo VAE, Flux AE):
  `load_autoencoder`, `build_autoencoder`
- diffusion transformers (`vidcli.models.mmdit`): `load_dit`, `build_dit`
- text encoders (`vidcli.models.text`): `build_text_encoder`
"""

from vidcli.models.autoencoders import build_autoencoder, load_autoencoder
from vidcli.models.dcae import save_autoencoder
from vidcli.models.mmdit import build_dit, load_dit, save_dit
from vidcli.models.text import build_text_encoder

__all__ = [
    "build_autoencoder",
    "build_dit",
    "build_text_encoder",
    "load_autoencoder",
    "load_dit",
    "save_autoencoder",
    "save_dit",
]
