"""Linux namespaces: can this process create them (the isolation lab's containers)?"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

__all__ = ["NAMESPACE_FLAGS", "NamespaceSupport", "detect_namespaces"]

#: unshare(1) flag for each namespace kind the labs use.
NAMESPACE_FLAGS = {"pid": "--pid", "net": "--net", "mount": "--mount", "uts": "--uts", "ipc": "--ipc", "user": "--user"}


@dataclass(frozen=True)
class NamespaceSupport:
    """Namespace kinds this process can create, and why the others failed."""

    available: tuple[str, ...]
    unavailable: dict[str, str]

    def describe(self) -> str:
        text = "namespaces: " + (", ".join(self.available) or "none")
        if self.unavailable:
            text += " (not: " + ", ".join(f"{k}: {v}" for k, v in self.unavailable.items()) + ")"
        return text


def detect_namespaces(timeout: float = 5.0) -> NamespaceSupport:
    """Try ``unshare`` once per namespace kind."""
    if shutil.which("unshare") is None:
        return NamespaceSupport(
            (), {kind: "unshare(1) is not installed (apt-get install util-linux)" for kind in NAMESPACE_FLAGS}
        )
    ok, failed = [], {}
    for kind, flag in NAMESPACE_FLAGS.items():
        extra = ["--fork", "--mount-proc"] if kind == "pid" else []
        try:
            done = subprocess.run(
                ["unshare", flag, *extra, "true"], capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired:
            failed[kind] = "timed out"
            continue
        if done.returncode == 0:
            ok.append(kind)
        else:
            failed[kind] = (done.stderr.strip().splitlines() or ["failed"])[-1]
    return NamespaceSupport(tuple(ok), failed)
