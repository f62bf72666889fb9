"""Sequence parallelism (DeepSpeed-Ulysses, `[launcher] sequence_parallel`): 2 gloo ranks on the
CPU must give what one process gives (model forward and gradients, generate, a train-dit step),
for any token count, and a size that does not divide the ranks or the heads exits 2.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.tiny_runs import REPO, subprocess_env
from vidcli.errors import UsageError
from vidcli.sequence_parallel import check_size, valid_sizes


def torchrun(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m torch.distributed.run --nproc-per-node 2 ARGS` from the repository root."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", *args]
    return subprocess.run(
        command,
        cwd=REPO,
        env=subprocess_env(OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize(
    ("T", "H", "W", "mode"),
    [(1, 1, 13, "t2v"), (1, 1, 7, "cond"), (2, 2, 2, "t2v")],
    ids=["prime-13-tokens", "prime-7-tokens-i2v", "even-8-tokens"],
)
def test_mmdit_forward_and_gradients_equal_one_rank(T, H, W, mode):
    done = torchrun("tests/sp_model_worker.py", str(T), str(H), str(W), mode)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def test_valid_sizes_divide_world_and_heads():
    assert valid_sizes(24, 24) == [1, 2, 3, 4, 6, 8, 12, 24]
    assert valid_sizes(8, 24) == [1, 2, 4, 8]
    assert valid_sizes(2, 3) == [1]


def test_a_size_that_does_not_divide_is_refused_with_the_valid_ones():
    check_size(4, 8, 24)  # divides both
    with pytest.raises(UsageError, match=r"valid values for 24 ranks: 2, 3, 4, 6, 8, 12, 24"):
        check_size(5, 24, 24)
    with pytest.raises(UsageError, match=r"valid values for 2 ranks: 2$"):
        check_size(3, 2, 24)
