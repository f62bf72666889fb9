"""The shipped reference vectors are complete, unaltered and documented.

A vector file that went missing, was re-encoded (line endings, a Git LFS pointer) or was added
without its provenance would otherwise surface only as a confusing numeric failure, or not at all.
"""

import hashlib


def test_every_vector_file_matches_sha256sums_and_is_documented(vectors_dir):
    listed = {}
    for line in (vectors_dir / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        listed[name] = digest
    shipped = {p.name for p in vectors_dir.iterdir()} - {"README.md", "SHA256SUMS"}
    assert set(listed) == shipped
    readme = (vectors_dir / "README.md").read_text()
    for name, digest in listed.items():
        assert hashlib.sha256((vectors_dir / name).read_bytes()).hexdigest() == digest, name
        assert f"`{name}`" in readme, f"{name} has no provenance row in README.md"
