#!/usr/bin/env bash
# Build (once) the srpipe Charliecloud image as a directory image, and print its path on the last line.
#
# Usage: bash hpc/charliecloud/build-image.sh [--rebuild]
#   --rebuild   ignore a cached image directory (ch-image's own build cache still applies)
# Env: SRPIPE_CH_CACHE (cache root, default /var/cache/srpipe/charliecloud),
#      SRPIPE_WHEEL_CACHE (the host's Horovod wheel cache, default /var/cache/srpipe/wheels),
#      SRPIPE_DEBIAN_MIRROR (default http://deb.debian.org/debian)
#
# Steps (see README.md next to this script): apt-get install charliecloud + mmdebstrap if missing ->
# mmdebstrap --variant=minbase bookworm (cached) -> ch-image import as srpipe-base -> stage the build context
# (repo, torch wheel, cached Horovod wheel, CA certs) -> ch-image build -f containers/Dockerfile ->
# ch-convert -i ch-image -o dir srpipe $SRPIPE_CH_CACHE/images/srpipe-<key>. The key hashes containers/Dockerfile
# and every file of the staged context (install.sh, pyproject.toml, hpc/horovod/*, srpipe's code, the wheels' names
# and sizes), so a second run with nothing changed is a no-op that only prints the path.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cache=${SRPIPE_CH_CACHE:-/var/cache/srpipe/charliecloud}
wheel_cache=${SRPIPE_WHEEL_CACHE:-/var/cache/srpipe/wheels}
mirror=${SRPIPE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
suite=bookworm

die() { echo "build-image.sh: error: $*" >&2; exit 1; }
log() { echo "build-image.sh: $*" >&2; }
now() { date +%s; }

rebuild=0
while [ $# -gt 0 ]; do
  case "$1" in
    --rebuild) rebuild=1 ;;
    -h|--help) sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option '$1' (usage: build-image.sh [--rebuild])" ;;
  esac
  shift
done

t_start=$(now)
# ch-image and ch-run are Python/C tools of the system: /usr/bin first, so a venv's or pyenv's python3 (without
# Debian's python3-lark) is not picked up by ch-image's `#!/usr/bin/env python3`
export PATH=/usr/bin:/bin:/usr/sbin:/sbin:$PATH
export USER=${USER:-$(id -un)}    # ch-run and ch-image refuse to start without $USER
# ch-image's build cache is a git repository; it needs an identity
export GIT_AUTHOR_NAME=${GIT_AUTHOR_NAME:-srpipe} GIT_AUTHOR_EMAIL=${GIT_AUTHOR_EMAIL:-srpipe@localhost}
export GIT_COMMITTER_NAME=${GIT_COMMITTER_NAME:-srpipe} GIT_COMMITTER_EMAIL=${GIT_COMMITTER_EMAIL:-srpipe@localhost}
export CH_IMAGE_STORAGE=$cache/storage

mkdir -p "$cache/images" 2>/dev/null && [ -w "$cache" ] \
  || die "cache $cache is not writable; set SRPIPE_CH_CACHE to a writable directory"
# one build at a time per cache (parallel CI jobs / pytest workers wait here)
exec 9>"$cache/.lock"
command -v flock >/dev/null && flock 9

# --- the key: Dockerfile + every file of the context (the wheels by name and size) --------------------------------
if [ -d "$repo/.git" ] && command -v git >/dev/null; then
  mapfile -t src_files < <(cd "$repo" && git ls-files -co --exclude-standard | sort)
else   # a tarball of the repo: everything but the usual build outputs
  mapfile -t src_files < <(cd "$repo" && find . -type f -not -path './.git/*' -not -path './.venv/*' \
    -not -path './runs/*' -not -path '*/__pycache__/*' -not -path '*.egg-info/*' -not -path './.*_cache/*' \
    -not -path './build/*' -printf '%P\n' | sort)
fi
kept=()
for f in "${src_files[@]}"; do [ -f "$repo/$f" ] && kept+=("$f"); done   # git lists deleted files too
src_files=("${kept[@]}")
[ ${#src_files[@]} -gt 0 ] || die "no files found in $repo"
torch_wheels=(/opt/wheels/torch-2.13.0*.whl)
[ -e "${torch_wheels[0]}" ] || torch_wheels=()
hvd_wheels=()
[ -d "$wheel_cache" ] && mapfile -t hvd_wheels < <(find "$wheel_cache" -mindepth 2 -maxdepth 2 -name 'horovod-*.whl' | sort)
certs=()
[ -d /usr/local/share/ca-certificates ] \
  && mapfile -t certs < <(find /usr/local/share/ca-certificates -maxdepth 1 -name '*.crt' | sort)
key=$( {
  echo "base $suite minbase $mirror"
  (cd "$repo" && sha256sum containers/Dockerfile "${src_files[@]}")
  for w in "${torch_wheels[@]}" "${hvd_wheels[@]}"; do echo "wheel ${w#"$wheel_cache"/} $(stat -c %s "$w")"; done
  for c in "${certs[@]}"; do sha256sum "$c"; done
} | sha256sum | cut -c1-16)
image_dir=$cache/images/srpipe-$key
if [ "$rebuild" = 0 ] && [ -f "$image_dir/.srpipe-image-complete" ]; then
  log "image for key $key is up to date: nothing to do ($(( $(now) - t_start ))s)"
  echo "$image_dir"
  exit 0
fi
log "building image for key $key into $image_dir"

# --- tools ---------------------------------------------------------------------------------------------------------
if ! command -v ch-image >/dev/null || ! command -v ch-run >/dev/null || ! command -v mmdebstrap >/dev/null \
   || ! /usr/bin/python3 -c 'import lark, requests' 2>/dev/null; then
  [ "$(id -u)" = 0 ] || die "charliecloud or mmdebstrap missing and not root (apt-get install charliecloud mmdebstrap)"
  t0=$(now)
  log "installing charliecloud and mmdebstrap (apt)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    charliecloud mmdebstrap python3-lark python3-requests git >/dev/null \
    || die "apt-get install charliecloud mmdebstrap failed (apt-get update first?)"
  log "tools installed in $(( $(now) - t0 ))s"
fi

# --- base rootfs: Debian 12 minbase (python3 is 3.11, the CPython of the cached wheels) ------------------------------
t0=$(now)
base_dir=$cache/base/$suite-minbase
if [ ! -f "$base_dir/.complete" ]; then
  log "mmdebstrap --variant=minbase $suite (about a minute)"
  rm -rf "$base_dir" "$base_dir.tmp"
  mkdir -p "$cache/base"
  mmdebstrap --quiet --variant=minbase "$suite" "$base_dir.tmp" \
    "deb $mirror $suite main" "deb $mirror $suite-updates main" \
    "deb ${mirror%/debian}/debian-security $suite-security main" \
    || die "mmdebstrap of $suite from $mirror failed"
  # device nodes out: ch-image import would copy /dev/zero's endless content (ch-run binds the host's /dev anyway)
  find "$base_dir.tmp/dev" -mindepth 1 ! -type d -delete
  touch "$base_dir.tmp/.complete"
  mv "$base_dir.tmp" "$base_dir"
  ch-image delete srpipe-base >/dev/null 2>&1 || true   # a new base must be imported again
fi
if ! ch-image list 2>/dev/null | grep -qx srpipe-base; then
  log "ch-image import $base_dir srpipe-base"
  ch-image import "$base_dir" srpipe-base >/dev/null || die "ch-image import of $base_dir failed"
fi
t_base=$(( $(now) - t0 ))

# --- build context ---------------------------------------------------------------------------------------------------
ctx=$cache/context
rm -rf "$ctx"
mkdir -p "$ctx/certs" "$ctx/deps" "$ctx/src" "$ctx/wheels/horovod"
(cd "$repo" && cp --parents -p "${src_files[@]}" "$ctx/src/")
for f in pyproject.toml README.md srpipe/__init__.py containers/install.sh; do
  (cd "$repo" && cp --parents -p "$f" "$ctx/deps/")
done
(cd "$repo" && cp --parents -p hpc/horovod/* "$ctx/deps/")
for w in "${torch_wheels[@]}"; do cp -l "$w" "$ctx/wheels/" 2>/dev/null || cp -p "$w" "$ctx/wheels/"; done
for w in "${hvd_wheels[@]}"; do
  rel=${w#"$wheel_cache"/}
  mkdir -p "$ctx/wheels/horovod/$(dirname "$rel")"
  cp -l "$w" "$ctx/wheels/horovod/$rel" 2>/dev/null || cp -p "$w" "$ctx/wheels/horovod/$rel"
done
[ ${#hvd_wheels[@]} -gt 0 ] || log "no cached Horovod wheel in $wheel_cache: the image build compiles it (~6 min)"
for c in "${certs[@]}"; do cp -p "$c" "$ctx/certs/"; done
touch -d @0 "$ctx/certs/.keep"
# ch-image's build cache hashes COPY sources by path, mode, size and mtime, directories included: files keep their
# mtimes (cp -p, hard links), the freshly made directories get a fixed one, so an unchanged layer stays a cache hit
find "$ctx" -type d -exec touch -d @0 {} +

# --- build and convert ------------------------------------------------------------------------------------------------
t0=$(now)
log "ch-image build -t srpipe -f containers/Dockerfile $ctx (log: $cache/build.log)"
# ch-image updates the storage's srpipe image in place (a git worktree of its build cache). A build that was killed (a
# cancelled job, a machine restart) leaves that worktree dirty, and every later build then fails at ch-image's
# `git checkout`, or silently carries the stray files into the image. So each build starts from a fresh checkout of
# the build cache: every finished layer stays cached, the checkout costs about a minute.
ch-image delete srpipe >/dev/null 2>&1 || true
if ! ch-image build --force -t srpipe -f "$repo/containers/Dockerfile" "$ctx" > "$cache/build.log" 2>&1; then
  tail -n 40 "$cache/build.log" >&2
  die "ch-image build failed; full log: $cache/build.log"
fi
t_build=$(( $(now) - t0 ))
t0=$(now)
rm -rf "$image_dir" "$image_dir.tmp"
ch-convert -i ch-image -o dir srpipe "$image_dir.tmp" >&2 \
  || die "ch-convert -i ch-image -o dir srpipe $image_dir.tmp failed"
touch "$image_dir.tmp/.srpipe-image-complete"
mv "$image_dir.tmp" "$image_dir"
t_convert=$(( $(now) - t0 ))
# older images of other keys are only disk: drop them, keep this one
for old in "$cache"/images/srpipe-*; do
  [ "$old" = "$image_dir" ] || rm -rf "$old"
done
rm -rf "$ctx"
log "built $image_dir ($(du -sh "$image_dir" | cut -f1)): base ${t_base}s, build ${t_build}s," \
  "convert ${t_convert}s, total $(( $(now) - t_start ))s"
echo "$image_dir"
