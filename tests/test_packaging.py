"""Installing vidcli must not shadow other packages: `kernels/vidcli_kernels/` is imported as
`vidcli_kernels`, and the folder `kernels/` itself is no package."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_kernels_folder_is_installed_as_vidcli_kernels():
    spec = importlib.util.find_spec("vidcli_kernels")
    assert spec is not None and spec.origin is not None
    assert spec.origin.replace("\\", "/").endswith("kernels/vidcli_kernels/__init__.py")


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


def test_kernels_from_the_repo_root_is_the_hub_package():
    # Users run vidcli from the repo root, where '' (the working directory) leads sys.path; so do
    # benchmark workers, DeepSpeed ranks and prepare-data workers. transformers imports
    # `kernels.CUDAProperties` from the Hugging Face package (a hard dependency since 5.x).
    pytest.importorskip("kernels")
    code = (
        "import kernels; from kernels import CUDAProperties, get_kernel; "
        "print(kernels.__file__); import transformers, diffusers; "
        "from diffusers import AutoencoderKLHunyuanVideo; print('ok')"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    origin, ok = out.stdout.split()
    assert not Path(origin).resolve().is_relative_to(REPO_ROOT / "kernels"), origin
    assert ok == "ok"


def test_kernels_folder_holds_no_importable_code_of_its_own():
    # Without the hub package, `import kernels` from the repo root must not run any of our files:
    # the folder has no __init__.py, so at most Python forms an empty namespace package (no
    # __file__, no attributes), which transformers' probe (distribution metadata) reports absent.
    assert not (REPO_ROOT / "kernels" / "__init__.py").exists()
    assert not list((REPO_ROOT / "kernels").glob("*.py"))
    code = (
        "import sys; sys.path[:] = [p for p in sys.path if 'packages' not in p]; "
        "import importlib.util; spec = importlib.util.find_spec('kernels'); "
        "print('absent' if spec is None else repr(spec.origin))"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, ''); {code}"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() in ("absent", "None"), out.stdout


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
