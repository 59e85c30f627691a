"""Namespace probing runs unshare for real."""

from __future__ import annotations

import os

from vlab.host.namespaces import NAMESPACE_FLAGS, detect_namespaces


def test_every_kind_is_either_available_or_explained() -> None:
    support = detect_namespaces()
    assert set(support.available) | set(support.unavailable) == set(NAMESPACE_FLAGS)
    assert all(reason for reason in support.unavailable.values())


def test_root_can_create_pid_and_net_namespaces() -> None:
    if os.geteuid() != 0:
        return  # as a normal user the verdict depends on the host's user-namespace policy
    assert {"pid", "net"} <= set(detect_namespaces().available)

