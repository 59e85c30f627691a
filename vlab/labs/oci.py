"""OCI images, built locally: layer tarballs, the image layout (index, manifest, config, blobs), and a digest
of a directory tree.

An OCI image is content-addressed: every blob is a file ``blobs/sha256/<its SHA-256>``, so SHA-256 here is
the format's own addressing, not a hash of an answer. Lab 08 builds its busybox image with these and has the
student unpack it (:mod:`vlab.labs.containers`).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["layer_tar", "rootfs_layer", "tree_digest", "write_oci_layout"]


def tree_digest(root: Path | str) -> str:
    """SHA-256 over every path, type, mode, symlink target and file content under ``root`` (symlinks are
    not followed): equal digests before and after a container run mean the image stayed pristine."""
    root = Path(root)
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        digest.update(f"{path.relative_to(root)}\0{info.st_mode:o}\0".encode())
        if path.is_symlink():
            digest.update(os.readlink(path).encode())
        elif path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def layer_tar(files: dict[str, bytes | None], *, mode: int = 0o644) -> bytes:
    """An uncompressed layer tarball: path -> file content, or None for an OCI *whiteout* (the entry
    ``dir/.wh.name``: "delete ``name`` from the layers below")."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in sorted(files.items()):
            head, _, base = name.rpartition("/")
            member = tarfile.TarInfo(name if content is not None else f"{head}/.wh.{base}".lstrip("/"))
            member.mode, member.mtime = mode, 0
            member.size = len(content or b"")
            tar.addfile(member, io.BytesIO(content or b""))
    return buffer.getvalue()


def rootfs_layer(rootfs: Path | str) -> bytes:
    """The root filesystem as an uncompressed layer tarball (deterministic: sorted, mtime 0, owner 0)."""
    buffer = io.BytesIO()

    def reset(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
        return info

    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        root = Path(rootfs)
        for path in sorted(root.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(root)), recursive=False, filter=reset)
    return buffer.getvalue()


def _blob(dest: Path, data: bytes, media_type: str) -> dict[str, Any]:
    digest = hashlib.sha256(data).hexdigest()
    (dest / "blobs" / "sha256" / digest).write_bytes(data)
    return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}


def write_oci_layout(dest: Path | str, layers: Sequence[bytes], *, cmd: Sequence[str] = ("/bin/sh",)) -> Path:
    """An OCI image layout at ``dest``: ``oci-layout``, ``index.json`` → a manifest → a config (with the
    layers' ``diff_ids``) and the layers, bottom first, as gzip'd tarballs in ``blobs/sha256/``."""
    dest = Path(dest)
    (dest / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (dest / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    descriptors = [_blob(dest, gzip.compress(tar, mtime=0), "application/vnd.oci.image.layer.v1.tar+gzip")
                   for tar in layers]
    config = {"architecture": "amd64", "os": "linux", "config": {"Cmd": list(cmd)},
              "rootfs": {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(t).hexdigest()}" for t in layers]}}
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": _blob(dest, json.dumps(config).encode(), "application/vnd.oci.image.config.v1+json"),
                "layers": descriptors}
    index = {"schemaVersion": 2, "manifests": [
        _blob(dest, json.dumps(manifest).encode(), "application/vnd.oci.image.manifest.v1+json")]}
    (dest / "index.json").write_text(json.dumps(index))
    return dest
