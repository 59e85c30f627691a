#!/usr/bin/env bash
# vlab set-up: installs what the labs need (idempotent: a second run skips what is done), then runs a job.
#
#   ./setup.sh              install, then serve the labs in JupyterLab (prints the URL)
#   ./setup.sh --headless   install, then the tour: boot a guest, run `uptime` in it, power it off, exit
#   ./setup.sh test         install, then the whole test suite (ruff, mypy, pytest incl. notebooks)
#   ./setup.sh packages     print the Debian packages step 1 installs, and exit
#
# Environment: VLAB_IMAGES (guest image cache, default ~/.cache/vlab/images), VLAB_VENV (default ./.venv),
# VLAB_PORT (JupyterLab port, default 8888).
set -euo pipefail
cd "$(dirname "$0")"
here=$(pwd)
venv=${VLAB_VENV:-$here/.venv}
job=${1:-lab}

step() { printf '\n==> %s\n' "$*"; }

# Debian packages: one list for this machine and Binder, binder/apt.txt (repo2docker installs it there; it says
# what each package is for), plus what only this machine needs: python3-venv for .venv (Binder brings its own
# Python) and, for the tests, chromium (the browser test).
mapfile -t apt_packages < <(sed -e 's/#.*//' -e 's/[[:space:]]//g' -e '/^$/d' binder/apt.txt)
apt_packages+=(python3-venv)
# tests only: chromium (the browser test), qemu-system-misc (riscv64: the toy VMM's conformance reference)
[ "$job" = test ] && apt_packages+=(chromium qemu-system-misc)
if [ "$job" = packages ]; then  # what step 1 would install, one per line (for tests and packagers)
    printf '%s\n' "${apt_packages[@]}"
    exit 0
fi

install_apt() {
    local missing=()
    for pkg in "${apt_packages[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        echo "Debian packages: all ${#apt_packages[@]} present"
        return
    fi
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    echo "Debian packages: installing ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

install_python() {
    local stamp="$venv/.vlab-installed" want
    want=$(sha256sum pyproject.toml | cut -d' ' -f1)
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        echo "Python environment: up to date ($venv)"
        return
    fi
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
    echo "Python environment: installing vlab and its dependencies into $venv"
    "$venv/bin/pip" install -q --disable-pip-version-check -e ".[dev,browser]" 2>&1 | grep -v '^WARNING: Location' || true
    "$venv/bin/python" -c "import vlab, unicorn, qemu.qmp, plotly, nbval" # fails loudly if the install did not
    echo "$want" > "$stamp"
}

step "1/4 Debian packages"; install_apt
step "2/4 Python environment"; install_python
step "3/4 guest images"; "$venv/bin/vlab" images build
step "4/4 doctor"; "$venv/bin/vlab" doctor || { echo "setup: doctor found a missing part (see above)"; exit 1; }

export PATH="$venv/bin:$PATH"
case "$job" in
    lab)
        step "JupyterLab serving labs/ (Ctrl-C to stop)"
        root_flag=(); [ "$(id -u)" -eq 0 ] && root_flag=(--allow-root)
        exec jupyter lab --no-browser --ip=127.0.0.1 --port="${VLAB_PORT:-8888}" --notebook-dir="$here/labs" \
            "${root_flag[@]}" ;;
    --headless|tour)
        step "tour: boot a guest, run uptime, power off"
        exec vlab tour ;;
    test)
        step "tests: ruff, mypy, pytest (unit, QEMU and Unicorn integration, grading, browser) and nbval (labs)"
        ruff check vlab tests bench binder
        mypy
        # nbval runs the notebooks students get (labs/NN-*.ipynb); the solutions (labs/source/) run top to bottom
        # in tests/labs/test_labs.py, whose grading fails on any cell error, so nbval would run them a second time
        exec pytest -q -n 2 --dist loadfile --tb=native --durations=15 tests labs/[0-9][0-9]-*.ipynb --nbval-lax \
            --nbval-sanitize-with labs/nbval-sanitize.cfg ;;
    *)
        echo "usage: ./setup.sh [--headless | test | packages]" >&2; exit 2 ;;
esac
