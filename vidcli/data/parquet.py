"""Parquet helpers: atomic writes, and tensors stored as (bytes, shape, dtype) columns."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

from vidcli.fileio import atomic_path

if TYPE_CHECKING:
    import torch


def write_parquet_atomic(
    table: pa.Table, path: str | Path, row_group_size: int | None = None
) -> Path:
    """Write `table` to `path`; readers see the old file or the new one, never a partial one.

    `row_group_size`: rows per row group (the unit a reader decodes); None = pyarrow's default.
    """
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, row_group_size=row_group_size)
    return Path(path)


def tensor_columns(name: str) -> list[pa.Field]:
    """The three columns that hold tensor `name`: raw bytes, shape, dtype."""
    return [
        pa.field(name, pa.binary()),
        pa.field(f"{name}_shape", pa.list_(pa.int64())),
        pa.field(f"{name}_dtype", pa.string()),
    ]


def encode_tensor(name: str, tensor: torch.Tensor) -> dict:
    """`{name: bytes, name_shape: [...], name_dtype: 'float32'}` (any dtype, bfloat16 included)."""
    # torch is imported inside the tensor helpers: probe worker processes import this module for
    # the atomic writer and should not pay seconds of torch import each.
    import torch

    tensor = tensor.detach().to("cpu").contiguous()
    raw = tensor.reshape(-1).view(torch.uint8).numpy().tobytes()
    return {
        name: raw,
        f"{name}_shape": list(tensor.shape),
        f"{name}_dtype": str(tensor.dtype).removeprefix("torch."),
    }


def decode_tensor(row: dict, name: str) -> torch.Tensor:
    """The tensor `encode_tensor(name, ...)` stored in `row`."""
    import torch

    dtype = getattr(torch, row[f"{name}_dtype"])
    shape = row[f"{name}_shape"]
    if not row[name]:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(bytearray(row[name]), dtype=dtype).reshape(shape)
