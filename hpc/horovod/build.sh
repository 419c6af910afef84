#!/usr/bin/env bash
# Build (once) and install Horovod 0.28.1 for torch >= 2.1 into a Python environment.
#
# Usage: bash hpc/horovod/build.sh --python /path/to/venv/bin/python [--rebuild]
#   --python PY   interpreter of the target environment; torch must already be installed in it
#   --rebuild     ignore (and replace) a cached wheel
# Env: SRPIPE_WHEEL_CACHE (cache root), SRPIPE_BUILD_JOBS (parallel compile jobs, default nproc)
#
# Horovod 0.28.1 (the last PyPI release) builds its torch extension as C++14, which torch >= 2.1
# rejects; cxx17.patch (next to this script, see README.md) backports upstream's fix (horovod#3998).
# The patched wheel is cached under ${SRPIPE_WHEEL_CACHE:-/var/cache/srpipe/wheels}/<key>/, the key
# being the torch version, the CPython tag and the patch's sha256, so a rebuild only happens when one
# of those changes. A re-run with that very wheel already installed is a no-op.
# Needs: g++ make cmake (>= 3.13) openmpi-bin libopenmpi-dev (Debian), setuptools in the environment.
set -euo pipefail

HVD_VERSION=0.28.1
# sha256 of horovod-0.28.1.tar.gz on PyPI; checked before the sdist is built
HVD_SDIST_SHA256=92a43f5a94c43907a56805bad15f19700c62ffc83b7ca483f9e104e229f67ef0
# runtime requirements of horovod 0.28.1 (its setup.py require_list, less the py<3.7 one)
HVD_RUNTIME_DEPS=(cloudpickle psutil pyyaml packaging)

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
patch_file=$here/cxx17.patch
cache_root=${SRPIPE_WHEEL_CACHE:-/var/cache/srpipe/wheels}

die() { echo "build.sh: error: $*" >&2; exit 1; }
log() { echo "build.sh: $*"; }
now() { date +%s; }

py="" rebuild=0
while [ $# -gt 0 ]; do
  case "$1" in
    --python) [ $# -ge 2 ] || die "--python needs a path"; py=$2; shift ;;
    --rebuild) rebuild=1 ;;
    -h|--help) sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option '$1' (usage: build.sh --python /path/to/venv/bin/python [--rebuild])" ;;
  esac
  shift
done
[ -n "$py" ] || die "missing --python /path/to/venv/bin/python"
[ -x "$py" ] || die "'$py' is not an executable Python interpreter"
[ -f "$patch_file" ] || die "patch not found: $patch_file"

t_start=$(now)
pip=("$py" -m pip --disable-pip-version-check)

# --- cache key: torch version + CPython tag + sha256 of the patch -------------------------------
read -r torch_version py_tag < <("$py" - <<'PY' 2>/dev/null || true
import sys
from importlib.metadata import version
print(version("torch"), "cp%d%d" % sys.version_info[:2])
PY
) || true
[ -n "${torch_version:-}" ] || die "torch is not installed in $py; install torch==<pinned version> first"
patch_sha=$(sha256sum "$patch_file" | cut -d' ' -f1)
key="horovod-${HVD_VERSION}-torch-${torch_version//+/_}-${py_tag}-${patch_sha:0:16}"
cache_dir=$cache_root/$key
log "python $py (torch $torch_version, $py_tag), cache key $key"

# --- fast path: this very wheel is already installed -------------------------------------------
# pip records the wheel it installed from in direct_url.json; the cache key is part of that path.
read -r inst_version inst_url inst_ext < <("$py" - <<'PY' 2>/dev/null
import json
from importlib.metadata import distribution, PackageNotFoundError
try:
    d = distribution("horovod")
except PackageNotFoundError:
    raise SystemExit
url = json.loads(d.read_text("direct_url.json") or "{}").get("url", "-")
ext = any(str(f).startswith("horovod/torch/mpi_lib_v2") and d.locate_file(f).exists() for f in d.files or [])
print(d.version, url, ext)
PY
) || true
if [ "$rebuild" = 0 ] && [ "${inst_version:-}" = "$HVD_VERSION" ] && [ "${inst_ext:-}" = True ] \
   && [[ "${inst_url:-}" == */"$key"/horovod-* ]]; then
  log "horovod $HVD_VERSION already installed from $key: nothing to do ($(( $(now) - t_start ))s)"
  exit 0
fi

find_cached() { compgen -G "$cache_dir/horovod-${HVD_VERSION}-*.whl" | head -n1 || true; }
wheel=""
[ "$rebuild" = 1 ] || wheel=$(find_cached)
if [ -z "$wheel" ]; then
  mkdir -p "$cache_root" 2>/dev/null && [ -w "$cache_root" ] \
    || die "wheel cache $cache_root is not writable; set SRPIPE_WHEEL_CACHE to a writable directory"
  # one build per key at a time (parallel CI jobs): wait for a concurrent build, then re-check
  if command -v flock >/dev/null; then
    exec 9>"$cache_root/.$key.lock"
    flock 9
    [ "$rebuild" = 1 ] || wheel=$(find_cached)
  fi
fi

# --- build -------------------------------------------------------------------------------------
t_build=0
if [ -z "$wheel" ]; then
  missing=()
  for tool in g++ make cmake patch mpicxx mpirun; do command -v "$tool" >/dev/null || missing+=("$tool"); done
  if [ ${#missing[@]} -gt 0 ]; then
    die "missing build tools: ${missing[*]} (Debian: apt-get install -y g++ make cmake patch openmpi-bin libopenmpi-dev)"
  fi
  "$py" -c 'import setuptools' 2>/dev/null \
    || die "setuptools is not installed in $py (pip install 'setuptools<81' wheel)"

  tmp=$(mktemp -d "${TMPDIR:-/tmp}/srpipe-horovod.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  log "no cached wheel in $cache_dir: building horovod $HVD_VERSION (takes a while) in $tmp"
  t0=$(now)
  # --no-binary :all: = the sdist; pip prepares its metadata in an isolated env (needs PyPI)
  "${pip[@]}" download -q --no-deps --no-binary :all: -d "$tmp" "horovod==$HVD_VERSION" \
    || die "could not download the horovod $HVD_VERSION sdist from PyPI"
  sdist=$tmp/horovod-$HVD_VERSION.tar.gz
  [ -f "$sdist" ] || die "pip download did not produce $sdist"
  echo "$HVD_SDIST_SHA256  $sdist" | sha256sum -c --status \
    || die "sha256 mismatch for $sdist (expected $HVD_SDIST_SHA256)"
  tar -xzf "$sdist" -C "$tmp"
  src=$tmp/horovod-$HVD_VERSION
  patch -d "$src" -p1 --forward --batch --quiet < "$patch_file" \
    || die "cxx17.patch does not apply to the horovod $HVD_VERSION sdist"

  # MPI and Gloo are both compiled in: the runtime picks the controller (mpirun / srun --mpi=pmix:
  # MPI; horovodrun --gloo: Gloo). HOROVOD_CPU_OPERATIONS is deliberately NOT baked in: the built-in
  # default is then MPI, horovodrun --gloo sets gloo itself, and it can be chosen per job at runtime.
  failed_log=${TMPDIR:-/tmp}/srpipe-horovod-build.log   # the build log is kept here on failure
  log "pip wheel (log: $tmp/build.log, kept in the cache dir on success)"
  if ! env -u HOROVOD_CPU_OPERATIONS \
      HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_MPI=1 HOROVOD_WITH_GLOO=1 \
      HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 \
      MAKEFLAGS="-j${SRPIPE_BUILD_JOBS:-$(nproc)}" \
      "${pip[@]}" wheel -v --no-build-isolation --no-deps -w "$tmp/dist" "$src" > "$tmp/build.log" 2>&1; then
    tail -n 40 "$tmp/build.log" >&2
    cp "$tmp/build.log" "$failed_log" 2>/dev/null || true
    die "horovod build failed; full log: $failed_log"
  fi
  built=$(compgen -G "$tmp/dist/horovod-${HVD_VERSION}-*.whl" | head -n1 || true)
  if [ -z "$built" ]; then
    cp "$tmp/build.log" "$failed_log" 2>/dev/null || true
    die "pip wheel produced no horovod wheel; full log: $failed_log"
  fi
  # atomic store: copy under a temporary name in the cache dir, then rename
  mkdir -p "$cache_dir"
  name=$(basename "$built")
  cp "$built" "$cache_dir/.$name.tmp.$$"
  cp "$tmp/build.log" "$cache_dir/.build.log.tmp.$$" && mv -f "$cache_dir/.build.log.tmp.$$" "$cache_dir/build.log"
  mv -f "$cache_dir/.$name.tmp.$$" "$cache_dir/$name"
  wheel=$cache_dir/$name
  t_build=$(( $(now) - t0 ))
  log "built and cached $wheel in ${t_build}s"
else
  log "using cached wheel $wheel"
fi

# --- install -----------------------------------------------------------------------------------
t0=$(now)
"${pip[@]}" install -q "${HVD_RUNTIME_DEPS[@]}" || die "could not install horovod's runtime deps: ${HVD_RUNTIME_DEPS[*]}"
"${pip[@]}" install -q --no-deps --force-reinstall "$wheel" || die "could not install $wheel"
# smoke test: the torch extension loads and reports MPI and Gloo
"$py" - <<'PY' || die "installed horovod does not load its torch extension (see above)"
import horovod.torch as hvd
assert hvd.mpi_built() and hvd.gloo_built(), "horovod.torch lacks MPI or Gloo"
PY
t_install=$(( $(now) - t0 ))
log "installed horovod $HVD_VERSION into $py (build ${t_build}s, install ${t_install}s, total $(( $(now) - t_start ))s)"
