"""`--json` output is strict JSON: NaN and ±Infinity become null, and `non_finite` says which."""

import json
import math
from dataclasses import dataclass, field

import pytest

from vidcli.console import print_result


def _strict_loads(text: str):
    """json.loads that rejects NaN/Infinity (Python accepts them by default; JSON does not)."""

    def reject(name: str):
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=reject)


@dataclass
class Scores:
    psnr: float
    ssim: float


@dataclass
class Result:
    loss: float
    rows: list[Scores] = field(default_factory=list)
    curve: list[float] = field(default_factory=list)


def test_non_finite_numbers_print_as_null_with_a_reason(capsys):
    result = Result(
        loss=math.nan,
        rows=[Scores(psnr=31.5, ssim=0.9), Scores(psnr=math.inf, ssim=1.0)],
        curve=[1.0, -math.inf, 0.5],
    )
    print_result(result, as_json=True)
    data = _strict_loads(capsys.readouterr().out)
    assert data["loss"] is None
    assert data["rows"] == [{"psnr": 31.5, "ssim": 0.9}, {"psnr": None, "ssim": 1.0}]
    assert data["curve"] == [1.0, None, 0.5]
    assert data["non_finite"] == {"loss": "nan", "rows[1].psnr": "inf", "curve[1]": "-inf"}


def test_finite_results_have_no_non_finite_field(capsys):
    print_result(Result(loss=0.25, curve=[0.5]), as_json=True)
    assert _strict_loads(capsys.readouterr().out) == {"loss": 0.25, "rows": [], "curve": [0.5]}


def test_text_output_keeps_the_values(capsys):
    print_result(Result(loss=math.nan), as_json=False)
    assert "loss: nan" in capsys.readouterr().out


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_torch_scalars_are_covered(capsys, value):
    torch = pytest.importorskip("torch")
    print_result(Result(loss=torch.tensor(value)), as_json=True)
    data = _strict_loads(capsys.readouterr().out)
    assert data["loss"] is None and set(data["non_finite"]) == {"loss"}
