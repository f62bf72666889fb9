"""AE Bs for the AE-Adapt benchmark: the demo AE's body with wider latent projections.

On the shared 2-core CPU an AE trained from scratch costs hours (~40 s a step), so AE B starts
from the demo AE (4x8x8, 16 channels) with its latent projections widened to `channels`:

    z_B = Q [z_A ; e]       Q: a random orthogonal (channels x channels) mix
                            e: channels-16 random conv features of the encoder's last activations

and the decoder reads Qᵀ z_B's first 16 rows, so the starting AE B reconstructs exactly as the demo
AE does while its latent has `channels` channels, `channels - 16` of them content the decoder
does not need (a nonlinear function of the clip, not a linear map of z_A). The demo AE's
latent shortcuts (channel averaging out of the encoder, duplication into the decoder) are folded
into A's convs and taken out of B's centre taps, so B keeps the same shortcuts where the body's
last width (64) is a multiple of `channels`; past it (128 channels) B's shortcuts are off and its
projections are plain convs (as in MIT's and diffusers' DC-AE without the shortcut).
`vidcli train-ae` on `recipes/demo-ae-f8c{32,64,128}.toml` then trains it further (bounded
steps):

    python benchmarks/ae_adapt_aes.py --channels 128 --out runs/ae-b-f8c128-init
    vidcli train-ae recipes/demo-ae-f8c128.toml --set ae.path='"runs/ae-b-f8c128-init"'
    python -c "from pathlib import Path; from vidcli.demo import export_autoencoder; \
        export_autoencoder(Path('runs/demo-ae-f8c128/checkpoints/step-0000020'), \
        Path('runs/ae-b-f8c128'))"
    python benchmarks/ae_adapt_aes.py --psnr runs/ae-b-f8c128
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
DEMO_AE = REPO / "vidcli" / "assets" / "demo" / "ae"
ENC_OUT = "encoder.project_out.main.op_list.0.conv"
DEC_IN = "decoder.project_in.main.conv"


@torch.no_grad()
def widened_ae(channels: int, seed: int = 0, clips: int = 8):
    """The demo AE with `channels` latent channels (module docstring); scaling_factor unset."""
    from vidcli.models import load_autoencoder
    from vidcli.models.dcae.model import DCAE

    demo = load_autoencoder(DEMO_AE)
    cfg_a = demo.config
    c_a = cfg_a.latent_channels
    if channels <= c_a:
        raise ValueError(f"channels must exceed the demo AE's {c_a}")
    # B keeps A's latent shortcuts where its last widths are multiples of `channels`; past
    # them (128 channels on widths of 64) they go off and the projections are plain convs.
    cfg = dataclasses.replace(
        cfg_a,
        latent_channels=channels,
        scaling_factor=None,
        encoder_out_shortcut=cfg_a.encoder_out_shortcut
        and cfg_a.encoder_widths[-1] % channels == 0,
        decoder_in_shortcut=cfg_a.decoder_in_shortcut and cfg_a.decoder_widths[-1] % channels == 0,
    )
    state = demo.state_dict()
    gen = torch.Generator().manual_seed(seed)
    w_enc, b_enc = state[f"{ENC_OUT}.weight"].clone(), state[f"{ENC_OUT}.bias"].clone()
    w_dec = state[f"{DEC_IN}.weight"].clone()
    centre = tuple(k // 2 for k in w_enc.shape[2:])
    width = w_enc.shape[1]
    # The latent shortcuts as matrices: folded into A's convs, taken out of B's.
    enc_a, dec_a = _shortcuts(cfg_a, width, c_a), _shortcuts(cfg_a, width, c_a, decoder=True)
    enc_b, dec_b = _shortcuts(cfg, width, channels), _shortcuts(cfg, width, channels, decoder=True)
    w_enc[(..., *centre)] += enc_a
    w_dec[(..., *centre)] += dec_a
    extra = torch.randn(
        (channels - c_a, *w_enc.shape[1:]), generator=gen, dtype=w_enc.dtype
    ) / np.sqrt(w_enc[0].numel())
    # e's std matched to z_A's on a few clips (the encoder's input to project_out).
    feats = _last_activations(demo, clips)
    z_a = torch.nn.functional.conv3d(feats, w_enc, b_enc, padding=centre)
    e = torch.nn.functional.conv3d(feats, extra, padding=centre)
    extra *= float(z_a.std()) / float(e.std())
    q, _ = torch.linalg.qr(torch.randn(channels, channels, generator=gen, dtype=torch.float64))
    q = q.to(w_enc.dtype)
    w_enc_b = torch.einsum("kc,c...->k...", q, torch.cat((w_enc, extra)))
    w_enc_b[(..., *centre)] -= enc_b
    w_dec_b = torch.einsum("oc...,kc->ok...", w_dec, q[:, :c_a])
    w_dec_b[(..., *centre)] -= dec_b
    state[f"{ENC_OUT}.weight"] = w_enc_b
    state[f"{ENC_OUT}.bias"] = q @ torch.cat((b_enc, torch.zeros(channels - c_a)))
    state[f"{DEC_IN}.weight"] = w_dec_b
    model = DCAE(cfg)
    model.load_state_dict(state, strict=True)
    return model.eval()


def _shortcuts(cfg, width: int, latent: int, decoder: bool = False) -> torch.Tensor:
    """The encoder-output (latent x width) / decoder-input (width x latent) shortcut as a matrix:
    channel averaging over groups of width // latent, channel duplication back (0 when off)."""
    if not (cfg.decoder_in_shortcut if decoder else cfg.encoder_out_shortcut):
        return torch.zeros(width, latent) if decoder else torch.zeros(latent, width)
    group = width // latent
    avg = torch.zeros(latent, width)
    for k in range(latent):
        avg[k, k * group : (k + 1) * group] = 1.0 / group
    return avg.T * group if decoder else avg


def _last_activations(ae, clips: int) -> torch.Tensor:
    """The encoder's input to project_out on `clips` synthetic training clips."""
    from vidcli.data.synthetic import COLOURS, DIRECTIONS, SHAPES, render_shapes_clip

    rng = np.random.default_rng(0)
    videos = []
    for i in range(clips):
        c, s, d = list(COLOURS)[i % 5], SHAPES[i % len(SHAPES)], list(DIRECTIONS)[i % 4]
        clip = render_shapes_clip(c, s, d, frames=8, size=64, rng=rng)
        videos.append(torch.from_numpy(clip).permute(3, 0, 1, 2).float().div(127.5).sub(1.0))
    x = torch.stack(videos)
    enc = ae.encoder
    x = enc.project_in(x)
    for stage in enc.stages:
        for op in stage.op_list:
            x = op(x)
    return x


@torch.no_grad()
def psnr(ae, clips: int = 16, seed: int = 4321) -> float:
    """Reconstruction PSNR (dB, pixels in [-1, 1] -> range 2) on fresh synthetic 16-frame clips."""
    from vidcli.data.synthetic import COLOURS, DIRECTIONS, SHAPES, render_shapes_clip

    rng = np.random.default_rng(seed)
    errors = []
    for _ in range(clips):
        c = list(COLOURS)[rng.integers(len(COLOURS))]
        s, d = SHAPES[rng.integers(len(SHAPES))], list(DIRECTIONS)[rng.integers(len(DIRECTIONS))]
        clip = render_shapes_clip(c, s, d, frames=16, size=64, rng=rng)
        video = torch.from_numpy(clip).permute(3, 0, 1, 2).float().div(127.5).sub(1.0)[None]
        recon = ae.decode(ae.encode(video)).clamp(-1, 1)
        errors.append(float((recon - video).pow(2).mean()))
    return float(10 * np.log10(4.0 / np.mean(errors)))


def main(argv: list[str] | None = None) -> int:
    from vidcli.models import load_autoencoder, save_autoencoder

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=128)
    parser.add_argument("--out", type=Path, help="write the widened starting AE here")
    parser.add_argument("--psnr", type=Path, help="only print the PSNR of this exported AE")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.psnr:
        print(f"{psnr(load_autoencoder(args.psnr)):.2f}")
        return 0
    model = widened_ae(args.channels, args.seed)
    print(save_autoencoder(model, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
