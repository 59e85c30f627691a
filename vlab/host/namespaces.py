"""Linux namespaces: can this process create them (the isolation lab's containers)?

Root creates any kind directly. An unprivileged user can often create them
*inside a new user namespace* (``unshare --user --map-root-user``: a rootless
container, as the grader's throw-away user does); where even that is refused
(Binder, some hardened hosts) the labs skip the container part.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

__all__ = ["NAMESPACE_FLAGS", "ROOTLESS_FLAGS", "NamespaceSupport", "detect_namespaces"]

#: unshare(1) flag for each namespace kind the labs use.
NAMESPACE_FLAGS = {"pid": "--pid", "net": "--net", "mount": "--mount", "uts": "--uts", "ipc": "--ipc", "user": "--user"}
#: What an unprivileged user adds to create the other kinds inside a user namespace.
ROOTLESS_FLAGS = ("--user", "--map-root-user")


@dataclass(frozen=True)
class NamespaceSupport:
    """Namespace kinds this process can create, and why the others failed.

    ``rootless`` lists kinds available only inside a new user namespace (pass :data:`ROOTLESS_FLAGS` to unshare).
    """

    available: tuple[str, ...]
    unavailable: dict[str, str]
    rootless: tuple[str, ...] = ()

    def describe(self) -> str:
        text = "namespaces: " + (", ".join(self.available) or "none")
        if self.rootless:
            text += f" (rootless, inside a user namespace: {', '.join(self.rootless)})"
        if self.unavailable:
            text += " (not: " + ", ".join(f"{k}: {v}" for k, v in self.unavailable.items()) + ")"
        return text


def _try(flags: list[str], timeout: float) -> str | None:
    """None if ``unshare FLAGS true`` worked, else the reason it did not."""
    try:
        done = subprocess.run(["unshare", *flags, "true"], capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return "timed out"
    if done.returncode == 0:
        return None
    return (done.stderr.strip().splitlines() or ["failed"])[-1]


def detect_namespaces(timeout: float = 5.0) -> NamespaceSupport:
    """Try ``unshare`` once per namespace kind, directly and then (if refused) inside a user namespace."""
    if shutil.which("unshare") is None:
        return NamespaceSupport(
            (), {kind: "unshare(1) is not installed (apt-get install util-linux)" for kind in NAMESPACE_FLAGS}
        )
    available, rootless, failed = [], [], {}
    for kind, flag in NAMESPACE_FLAGS.items():
        flags = [flag, "--fork", "--mount-proc"] if kind == "pid" else [flag]
        reason = _try(flags, timeout)
        if reason is None:
            available.append(kind)
        elif kind != "user" and _try([*ROOTLESS_FLAGS, *flags], timeout) is None:
            available.append(kind)
            rootless.append(kind)
        else:
            failed[kind] = reason
    return NamespaceSupport(tuple(available), failed, tuple(rootless))
