"""Data: probe sources into a Parquet manifest, bucket clips, decode them, pre-extract latents.

Modules: `sources` (SOURCE specs -> files), `prepare` (probe -> videos.parquet), `buckets`,
`datasets` (VideoDataset, LatentDataset), `latents` (--encode), `synthetic` (shapes clips).
"""
