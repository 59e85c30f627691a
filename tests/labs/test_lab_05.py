"""Lab 05's own checks: each misconception fails its check with its hint, and the solution passes.

``tests/labs/test_labs.py`` covers what every lab shares (current student copy, 100 % / 0 %, the grading design);
here each wrong answer is a variant a student might write — a container without ``--mount-proc`` or without
``exec``, the other cgroup version's file names, a limit in MiB, a passphrase pasted unquoted into the guest's
shell, a dump of the first MiB only, a leak finder for strings only — run
through the lab's own checks on the real kernel and real guests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from vlab.grading.testing import lab_checks, run_check, solution_answers
from vlab.labs import isolation as lab

SOURCE = Path(__file__).resolve().parents[2] / "labs" / "source" / "05-isolation.ipynb"
NAMESPACES, CGROUPS, _WHY = lab.container_support()
needs_ns = pytest.mark.skipif(not NAMESPACES, reason=_WHY)
needs_cgroups = pytest.mark.skipif(not (NAMESPACES and CGROUPS), reason=_WHY)
HELPERS = ("def container_trial(", "def q5_trial(")


def answers(**replace: tuple[str, str]) -> dict[str, Any]:
    """The solution's answers (with ``replace[q] = (old, new)`` applied to question q's cell), the read-only helpers
    and the measurements the locked cells would have exported."""
    namespace = solution_answers(SOURCE, {"lab": lab, "Any": Any}, replace=replace,
                                 readonly=lambda text: any(helper in text for helper in HELPERS))
    namespace.update(disk_facts={"luks_header": True, "image_bytes": 32 << 20, "plain_copies": 0,
                                 "reads_back": True, "ram_bytes": 128 << 20},
                     image_hits=0, dump_hits=2, key_hits={"data": 1, "tweak": 1}, passphrase_hits=0,
                     measured_forks=None)
    return namespace


@pytest.fixture(scope="module")
def checks() -> tuple[dict[str, Any], dict[str, Any]]:
    namespace, found = lab_checks(SOURCE)
    return namespace["PARAMS"], found


def verdict(checks: tuple[dict[str, Any], dict[str, Any]], name: str, **replace: tuple[str, str]) -> tuple[bool, str]:
    params, found = checks
    result = run_check(found[name], params, **answers(**replace))
    return result.passed, result.message


# ---------------------------------------------------------------- q2: the container the student builds

@needs_ns
@pytest.mark.parametrize(("old", "new", "hint"), [
    ('"--mount-proc", ', "", "--mount-proc"),
    ('&& exec "$@"', '&& "$@"', "not 1"),
    ('"--net", ', "", "only lo"),
    ('hostname "$0" && ', "", "hostname"),
])
def test_a_container_missing_a_step_fails_with_that_steps_hint(checks: Any, old: str, new: str, hint: str) -> None:
    passed, message = verdict(checks, "the_container_sees_only_itself", q2=(old, new))
    assert not passed and hint in message, message


@needs_ns
def test_the_solutions_container_passes(checks: Any) -> None:
    for name in ("a_practice_container", "the_container_sees_only_itself"):
        assert verdict(checks, name) == (True, ""), name


@needs_cgroups
@pytest.mark.parametrize(("old", "new", "hint"), [
    ("limit = str(memory_mib << 20)", "limit = str(memory_mib)", "in bytes"),
    ('"memory.memsw.limit_in_bytes": limit, ', "", "swap"),
    ("if version == 2:", "if version == 1:", "v1"),
])
def test_wrong_limit_files_lose_the_memory_point(checks: Any, old: str, new: str, hint: str) -> None:
    passed, message = verdict(checks, "its_memory_limit_holds_exactly", q2=(old, new))
    assert not passed and hint in message, message


@needs_cgroups
def test_the_solutions_limits_hold_for_real(checks: Any) -> None:
    for name in ("its_memory_limit_holds_exactly", "its_pids_limit_holds"):
        assert verdict(checks, name) == (True, ""), name


def test_without_namespaces_the_container_checks_are_unchecked_not_judged_by_the_command_line(
        checks: Any, no_unshare: None) -> None:
    """A grading host that cannot create namespaces (unshare(1) not found, as the probe sees Binder) neither hands
    out the container's points for a command line that merely names the flags nor fails the student: the checks
    that run the container stop as not checked on this host (the grader's status says ``unchecked``). The limit
    checks judge the limit files exactly, as in the grader's jail, which has no writable cgroups."""
    params, found = checks
    for name in ("a_practice_container", "the_container_sees_only_itself"):
        result = run_check(found[name], params, **answers())
        assert (result.passed, result.unchecked) == (False, True), (name, result)
        assert result.message.startswith("not checked on this host: ") and "unshare" in result.message, result
    for name in ("its_memory_limit_holds_exactly", "its_pids_limit_holds"):
        result = run_check(found[name], params, **answers())
        assert (result.passed, result.unchecked) == (True, False), (name, result)
    # a wrong limit file is still a mistake the host need not run a container to see
    wrong = run_check(found["its_memory_limit_holds_exactly"], params,
                      **answers(q2=("limit = str(memory_mib << 20)", "limit = str(memory_mib)")))
    assert (wrong.passed, wrong.unchecked) == (False, False) and "in bytes" in wrong.message, wrong


# ---------------------------------------------------------------- q5, q6: encryption in the guest, RAM from the host

def verdicts(checks: tuple[dict[str, Any], dict[str, Any]], names: tuple[str, ...],
             **replace: tuple[str, str]) -> dict[str, tuple[bool, str]]:
    """Several checks on one set of answers (the q5 checks then share one guest, as in the grader)."""
    params, found = checks
    given = answers(**replace)
    return {name: (lambda r: (r.passed, r.message))(run_check(found[name], params, **given)) for name in names}


Q5 = ("encrypts_inside_the_guest_whatever_the_passphrase", "dumps_the_guests_whole_ram")


def test_the_solution_passes_q5_on_a_real_guest(checks: Any) -> None:
    assert verdicts(checks, Q5) == {name: (True, "") for name in Q5}


def test_an_unquoted_passphrase_fails_q5(checks: Any) -> None:
    """The hidden check's passphrase holds quotes, $( ) and backquotes: pasted into the guest's shell unquoted,
    it is not the passphrase cryptsetup gets (or the command breaks)."""
    got = verdicts(checks, Q5[:1], q5=('key = f"printf %s {shlex.quote(passphrase)} |"',
                                       'key = f"printf %s \'{passphrase}\' |"'))
    passed, message = got[Q5[0]]
    assert not passed and "quote it" in message, message


def test_a_dump_of_the_first_mib_fails_q5(checks: Any) -> None:
    passed, message = verdicts(checks, Q5[1:], q5=('"size": size,', '"size": 1 << 20,'))[Q5[1]]
    assert not passed and "128 MiB" in message, message


def test_a_leak_finder_for_strings_only_misses_the_key(checks: Any) -> None:
    strings_only = ('needles = [secret] if isinstance(secret, bytes) else [secret.encode("utf-8"), '
                    'secret.encode("utf-16-le")]', 'needles = [secret.encode("utf-8"), secret.encode("utf-16-le")]')
    passed, message = verdict(checks, "bytes_secrets", q6=strings_only)
    assert not passed, message
    assert verdict(checks, "bytes_secrets") == (True, "")
