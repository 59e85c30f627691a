"""The image manifest: what was built, from what, and how to check it.

``manifest.json`` in the image directory lists every file (size, sha256), the
source packages and their versions, and an *inputs key* — a hash of everything
the build reads (package versions, the recipe files in ``vm-images/``). A build
whose inputs key matches a manifest whose files still verify is a no-op.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vlab.errors import VlabError
from vlab.files import write_atomic

__all__ = ["MANIFEST_NAME", "FileEntry", "Manifest", "sha256_file"]

MANIFEST_NAME = "manifest.json"


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file's content, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class FileEntry:
    """One built file: its name in the image directory, size and sha256."""

    name: str
    size: int
    sha256: str

    @classmethod
    def of(cls, directory: Path, name: str) -> FileEntry:
        path = directory / name
        return cls(name=name, size=path.stat().st_size, sha256=sha256_file(path))


@dataclass
class Manifest:
    """What ``vlab images build`` produced (see the module docstring)."""

    inputs_key: str
    files: dict[str, FileEntry] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        try:
            raw = json.loads(text)
            files = {name: FileEntry(**entry) for name, entry in raw["files"].items()}
            return cls(raw["inputs_key"], files, dict(raw["sources"]), dict(raw.get("details", {})))
        except (ValueError, KeyError, TypeError) as exc:
            raise VlabError(
                f"the image manifest is not valid ({exc})",
                field=MANIFEST_NAME,
                fix="rebuild the images: vlab images build --force",
            ) from exc

    @classmethod
    def load(cls, directory: Path) -> Manifest | None:
        """The manifest in ``directory``, or None if there is none."""
        path = directory / MANIFEST_NAME
        if not path.exists():
            return None
        return cls.from_json(path.read_text())

    def save(self, directory: Path) -> None:
        write_atomic(directory / MANIFEST_NAME, self.to_json().encode())

    def problems(self, directory: Path) -> list[str]:
        """What no longer matches on disk: missing files, wrong sizes or checksums. Empty when all is well."""
        found = []
        for entry in self.files.values():
            path = directory / entry.name
            if not path.exists():
                found.append(f"{entry.name}: missing")
            elif path.stat().st_size != entry.size:
                found.append(f"{entry.name}: size {path.stat().st_size} != {entry.size} in the manifest")
            elif sha256_file(path) != entry.sha256:
                found.append(f"{entry.name}: sha256 does not match the manifest")
        return found
