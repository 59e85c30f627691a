"""vlab.labs.notebook: what every lab notebook shares."""

from __future__ import annotations

import pytest

from vlab.labs import create_vm, migration, overhead
from vlab.labs.notebook import attempt


def test_attempt_skips_only_unanswered_stubs(capsys: pytest.CaptureFixture[str]) -> None:
    def stub() -> int:
        raise NotImplementedError("Write your answer for q3 here")

    def broken() -> int:
        raise ZeroDivisionError

    assert attempt(stub) is None
    assert "not answered yet" in capsys.readouterr().out
    assert attempt(lambda x: x + 1, 1) == 2
    with pytest.raises(ZeroDivisionError):
        attempt(broken)


def test_the_labs_that_use_attempt_share_the_one_copy() -> None:
    assert create_vm.attempt is migration.attempt is overhead.attempt is attempt
