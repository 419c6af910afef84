#!/usr/bin/env bash
# The one install script of srpipe: CI (.ci/run), `make install`, the Charliecloud Dockerfile and the Apptainer
# %post all run it, so a container holds exactly what CI tested.
#
# Usage: containers/install.sh [--venv DIR] [--no-apt] [--no-horovod] [--dev]
#   --venv DIR     virtual environment to create or update (default: $SRPIPE_VENV or <repo>/.venv)
#   --no-apt       skip Debian packages (they are already there, or you are not root)
#   --no-horovod   skip the patched Horovod build (everything but distributed training works without it)
#   --dev          also install the test and lint tools (pytest, ruff)
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
  echo "install.sh: not root, skipping Debian packages (needs: g++ cmake openmpi-bin libopenmpi-dev)" >&2
  apt=0
fi
if [ "$apt" = 1 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # compilers and Open MPI: mpi4py and Horovod build against Debian's Open MPI (the one `srun --mpi=pmix` speaks to)
  apt-get install -y -qq --no-install-recommends \
    python3 python3-venv python3-dev g++ make cmake git ca-certificates \
    openmpi-bin libopenmpi-dev >/dev/null
fi

python=${PYTHON:-python3}
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q install)
[ -d /opt/wheels ] && pip+=(--find-links /opt/wheels)   # this site's local wheel of torch 2.13.0 (CPU)
"${pip[@]}" --upgrade pip "setuptools<81" wheel
"${pip[@]}" "torch==2.13.0"
# mpi4py from source, so that it links the system Open MPI rather than a wheel's bundled MPI
"${pip[@]}" --no-binary mpi4py "mpi4py>=4,<5"
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
