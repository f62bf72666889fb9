"""Encode/decode throughput of vidcli's DC-AE vs diffusers' AutoencoderDC, same weights and input.

    python benchmarks/bench_dcae.py --size 256 --batch 1 --repeats 3 [--preset-like sana|tiny]

Builds a diffusers AutoencoderDC (random weights), saves it, loads the folder with
`load_autoencoder`, then times both on the same input in one process. Prints images/s and the
ratio ours/diffusers (> 1 means ours is faster).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from vidcli.models.dcae import load_autoencoder

CONFIGS = {
    # dc-ae-f32c32-sana-1.0's layout at a quarter of its widths (CPU-friendly)
    "sana": {
        "latent_channels": 32,
        "attention_head_dim": 32,
        "encoder_block_types": ["ResBlock"] * 3 + ["EfficientViTBlock"] * 3,
        "decoder_block_types": ["ResBlock"] * 3 + ["EfficientViTBlock"] * 3,
        "encoder_block_out_channels": [32, 64, 128, 128, 256, 256],
        "decoder_block_out_channels": [32, 64, 128, 128, 256, 256],
        "encoder_layers_per_block": [2, 2, 2, 3, 3, 3],
        "decoder_layers_per_block": [3, 3, 3, 3, 3, 3],
        "encoder_qkv_multiscales": [[], [], [], [5], [5], [5]],
        "decoder_qkv_multiscales": [[], [], [], [5], [5], [5]],
        "downsample_block_type": "conv",
        "upsample_block_type": "interpolate",
        "decoder_norm_types": "rms_norm",
        "decoder_act_fns": "silu",
        "scaling_factor": 0.41407,
    },
}


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--config", choices=list(CONFIGS), default="sana")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from diffusers import AutoencoderDC

    torch.manual_seed(0)
    ref = AutoencoderDC(**CONFIGS[args.config]).eval()
    with tempfile.TemporaryDirectory() as tmp:
        ref.save_pretrained(tmp)
        ours = load_autoencoder(tmp)
    sf = ours.scaling_factor
    x = torch.rand(args.batch, 3, args.size, args.size) * 2 - 1
    with torch.inference_mode():
        z = ref.encode(x).latent
        diff = ((ours.encode(x) * sf - z).norm() / z.norm()).item()
        rows = {
            "encode": (
                timed(lambda: ours.encode(x), args.repeats),
                timed(lambda: ref.encode(x), args.repeats),
            ),
            "decode": (
                timed(lambda: ours.decode(z / sf), args.repeats),
                timed(lambda: ref.decode(z).sample, args.repeats),
            ),
        }
    print(
        f"config {args.config}, input {tuple(x.shape)}, threads {args.threads}, "
        f"latent rel-L2 {diff:.1e}"
    )
    print(f"{'':8}{'ours img/s':>12}{'diffusers img/s':>17}{'ratio':>8}")
    for name, (t_ours, t_ref) in rows.items():
        print(f"{name:8}{args.batch / t_ours:12.3f}{args.batch / t_ref:17.3f}{t_ref / t_ours:8.2f}")


if __name__ == "__main__":
    main()
