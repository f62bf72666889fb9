"""Installing vidcli must not shadow other packages: `kernels/` is imported as `vidcli_kernels`."""

import importlib.util
import subprocess
import sys


def test_kernels_folder_is_installed_as_vidcli_kernels():
    spec = importlib.util.find_spec("vidcli_kernels")
    assert spec is not None and spec.origin is not None
    assert spec.origin.replace("\\", "/").endswith("kernels/__init__.py")


def test_transformers_and_diffusers_still_import():
    # A fresh interpreter, so nothing imported by other tests hides a clash.
    code = (
        "import vidcli, vidcli_kernels, transformers, diffusers; "
        "from transformers import AutoModel; from diffusers import AutoencoderDC; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_no_top_level_kernels_package_from_vidcli():
    spec = importlib.util.find_spec("kernels")
    if spec is not None:  # the Hugging Face kernel hub may be installed; it must not be ours
        assert "vidcli" not in (spec.origin or "")


def test_every_package_folder_is_listed_for_the_wheel():
    # pyproject lists packages explicitly: a folder missing there is absent from a non-editable
    # install, and every import of it fails there while editable installs (and CI) still pass.
    from pathlib import Path

    import tomllib

    root = Path(__file__).resolve().parents[1]
    listed = set(
        tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        ".".join(init.parent.relative_to(root).parts)
        for init in (root / "vidcli").rglob("__init__.py")
    }
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"
