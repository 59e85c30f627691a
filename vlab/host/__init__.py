"""What the host can do: the accelerator's real kind, cgroups, namespaces.

Each probe takes a ``root`` (default ``/``) so tests can point it at a fake
``/proc`` and ``/sys`` tree.
"""

from vlab.host.accel import AccelInfo, AccelKind, detect_accelerator
from vlab.host.cgroups import Cgroup, CgroupSupport, detect_cgroups
from vlab.host.namespaces import NamespaceSupport, detect_namespaces

__all__ = [
    "AccelInfo",
    "AccelKind",
    "Cgroup",
    "CgroupSupport",
    "NamespaceSupport",
    "detect_accelerator",
    "detect_cgroups",
    "detect_namespaces",
]
