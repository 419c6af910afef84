#!/usr/bin/env bash
# The one install script of srpipe: CI (.ci/run), `make install` and the %post of the Apptainer recipe
# (containers/srpipe.def, which the container tests build with Charliecloud) all run it, so a container holds exactly
# what CI tested.
#
# Usage: containers/install.sh [--venv DIR] [--no-apt] [--no-horovod] [--dev]
#   --venv DIR     virtual environment to create or update (default: $SRPIPE_VENV or <repo>/.venv)
#   --no-apt       skip Debian packages (they are already there, or you are not root)
#   --no-horovod   skip the patched Horovod build (everything but distributed training works without it)
#   --dev          also install the test and lint tools (pytest, ruff, websocket-client; chromium from apt)
# Env: SRPIPE_VENV (default venv), SRPIPE_FIND_LINKS (extra ':'-separated local wheel dirs for pip),
#      SRPIPE_WHEEL_CACHE (Horovod wheel cache, see hpc/horovod/README.md), PYTHON (interpreter for the venv)
# Order matters: torch==2.13.0 first (an unpinned torch pulls a multi-GB CUDA build), then Horovod built with the
# project's C++17 patch (hpc/horovod/), then srpipe itself, whose `horovod` requirement is then already satisfied.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${SRPIPE_VENV:-$repo/.venv}
apt=1 horovod=1 extras=""
while [ $# -gt 0 ]; do
  case "$1" in
    --venv) venv=$2; shift ;;
    --no-apt) apt=0 ;;
    --no-horovod) horovod=0 ;;
    --dev) extras="[dev]" ;;
    *) echo "install.sh: unknown option $1 (see the usage at the top of this file)" >&2; exit 2 ;;
  esac
  shift
done

if [ "$apt" = 1 ] && [ "$(id -u)" != 0 ]; then
  echo "install.sh: not root, skipping Debian packages (needs: python3-venv python3-dev g++ make cmake patch openmpi-bin libopenmpi-dev)" >&2
  apt=0
fi
if [ "$apt" = 1 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # compilers and Open MPI: Horovod builds against Debian's Open MPI, mpi4py loads it (the one `srun --mpi=pmix` speaks to)
  apt-get install -y -qq --no-install-recommends \
    python3 python3-venv python3-dev g++ make cmake patch git ca-certificates \
    openmpi-bin libopenmpi-dev >/dev/null
  # the tests render the evaluation report (reports/index.html) in a real headless browser
  if [ -n "$extras" ]; then apt-get install -y -qq --no-install-recommends chromium >/dev/null; fi
fi

python=${PYTHON:-python3}
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q install)
[ -d /opt/wheels ] && pip+=(--find-links /opt/wheels)   # this site's local wheel of torch 2.13.0 (CPU)
# extra local wheel dirs, ':'-separated
IFS=: read -ra find_links <<< "${SRPIPE_FIND_LINKS:-}"
for dir in "${find_links[@]}"; do
  [ -d "$dir" ] || { echo "install.sh: SRPIPE_FIND_LINKS names '$dir', which is not a directory" >&2; exit 2; }
  pip+=(--find-links "$dir")
done
"${pip[@]}" --upgrade pip "setuptools<81" wheel
"${pip[@]}" "torch==2.13.0"
# mpi4py's 4.x wheels bundle no MPI: they load the system's libmpi (Debian's Open MPI 4.1, the one that
# `srun --mpi=pmix` speaks to) at run time, so no 4-minute source build is needed
"${pip[@]}" --only-binary mpi4py "mpi4py>=4,<5"
if [ "$horovod" = 1 ]; then
  bash "$repo/hpc/horovod/build.sh" --python "$venv/bin/python"
fi
if [ "$horovod" = 1 ]; then
  "${pip[@]}" -e "$repo$extras"
else
  # srpipe's requirements less horovod; training then runs as a single process only
  reqs=$("$venv/bin/python" -c 'import sys, tomllib; p = tomllib.load(open(sys.argv[1], "rb"))["project"]
deps = p["dependencies"] + (p["optional-dependencies"]["dev"] if sys.argv[2] else [])
print("\n".join(d for d in deps if not d.startswith("horovod")))' "$repo/pyproject.toml" "$extras")
  "${pip[@]}" $reqs
  "${pip[@]}" --no-deps -e "$repo"
fi
echo "srpipe installed in $venv"
