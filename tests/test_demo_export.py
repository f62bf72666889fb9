"""`python -m vidcli.demo` exports into --out; the installed package's demo is replaced only with
an explicit --overwrite-package."""

import torch
from safetensors.torch import load_file

import vidcli.demo as demo
from vidcli.models.mmdit import build_dit, save_dit


def _checkpoint(tmp_path):
    torch.manual_seed(0)
    return save_dit(build_dit("mmdit-tiny"), tmp_path / "ckpt")


def _package(tmp_path, monkeypatch):
    package = tmp_path / "package-demo"
    (package / "dit").mkdir(parents=True)
    (package / "dit" / "model.safetensors").write_bytes(b"shipped")
    monkeypatch.setattr(demo, "DEMO_DIR", package)
    return package


def test_no_destination_is_a_usage_error_and_leaves_the_package_alone(
    tmp_path, monkeypatch, capsys
):
    package = _package(tmp_path, monkeypatch)
    assert demo.main(["dit", str(_checkpoint(tmp_path))]) == 2
    err = capsys.readouterr().err
    assert "--out DIR" in err and "--overwrite-package" in err
    assert (package / "dit" / "model.safetensors").read_bytes() == b"shipped"


def test_out_writes_the_bf16_dit_there(tmp_path, monkeypatch):
    package = _package(tmp_path, monkeypatch)
    ckpt = _checkpoint(tmp_path)
    assert demo.main(["dit", str(ckpt), "--out", str(tmp_path / "export")]) == 0
    exported = load_file(str(tmp_path / "export" / "model.safetensors"))
    for key, value in load_file(str(ckpt / "model.safetensors")).items():
        assert torch.equal(exported[key], value.to(torch.bfloat16)), key
    assert (package / "dit" / "model.safetensors").read_bytes() == b"shipped"


def test_non_empty_out_needs_overwrite(tmp_path, monkeypatch, capsys):
    _package(tmp_path, monkeypatch)
    ckpt = _checkpoint(tmp_path)
    out = tmp_path / "export"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert demo.main(["dit", str(ckpt), "--out", str(out)]) == 2
    assert "not empty; add --overwrite" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"
    assert demo.main(["dit", str(ckpt), "--out", str(out), "--overwrite"]) == 0
    assert (out / "model.safetensors").is_file()


def test_overwrite_package_replaces_the_package_demo(tmp_path, monkeypatch):
    package = _package(tmp_path, monkeypatch)
    assert demo.main(["dit", str(_checkpoint(tmp_path)), "--overwrite-package"]) == 0
    assert (package / "dit" / "model.safetensors").read_bytes() != b"shipped"
    assert set(load_file(str(package / "dit" / "model.safetensors")))
