#!/usr/bin/env bash
# Build (once) the srpipe image from containers/srpipe.def, the Apptainer recipe itself, with Charliecloud as a
# directory image, and print its path on the last line.
#
# Usage: bash hpc/charliecloud/build-image.sh [--rebuild] [--def RECIPE] [--dockerfile]
#   --rebuild      ignore a cached image directory (ch-image's own build cache still applies)
#   --def RECIPE   build this Apptainer recipe instead of containers/srpipe.def (its %files stay relative to the repo)
#   --dockerfile   print the Dockerfile converted from the recipe and stop: builds nothing
# Env: SRPIPE_CH_CACHE (cache root, default /var/cache/srpipe/charliecloud),
#      SRPIPE_WHEEL_CACHE (the host's Horovod wheel cache, default /var/cache/srpipe/wheels),
#      SRPIPE_DEBIAN_MIRROR (default http://deb.debian.org/debian)
#
# Steps (see README.md next to this script): spython (PyPI, pinned, in a tool venv of the cache) converts the recipe
# to a Dockerfile, rewritten only where ch-image 0.31 forces it -> key -> apt-get install charliecloud + mmdebstrap if
# missing -> mmdebstrap --variant=minbase bookworm (cached) plus this host's build settings, imported as
# debian:bookworm-slim, the recipe's own From: -> the repository's files under the recipe's %files sources staged as
# the build context -> ch-image build, /opt/wheels and the Horovod wheel cache bound into its RUNs (what
# `apptainer build --bind` does) -> ch-convert to $SRPIPE_CH_CACHE/images/srpipe-<key>, plus the recipe, its sha256
# and both Dockerfiles in IMAGE/ch/. The key hashes the recipe, its conversion, the install inputs among the staged
# files (pyproject.toml, containers/install.sh, hpc/horovod/*), the local wheels' names and sizes and the CA
# certificates: a second run with none of them changed only prints the path, whatever else changed (srpipe's code
# included: an image holds the code of the commit that built it; bind a checkout over /opt/srpipe/src to run another).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cache=${SRPIPE_CH_CACHE:-/var/cache/srpipe/charliecloud}
wheel_cache=${SRPIPE_WHEEL_CACHE:-/var/cache/srpipe/wheels}
mirror=${SRPIPE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
suite=bookworm
base_ref=debian:bookworm-slim    # the recipe's From:, served from local storage (nothing is pulled)
spython_version=0.3.14
recipe=$repo/containers/srpipe.def

die() { echo "build-image.sh: error: $*" >&2; exit 1; }
log() { echo "build-image.sh: $*" >&2; }
now() { date +%s; }

rebuild=0 print_only=0
while [ $# -gt 0 ]; do
  case "$1" in
    --rebuild) rebuild=1 ;;
    --def) [ $# -ge 2 ] || die "--def needs a path"; recipe=$(realpath "$2"); shift ;;
    --dockerfile) print_only=1 ;;
    -h|--help) sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option '$1' (usage: build-image.sh [--rebuild] [--def RECIPE] [--dockerfile])" ;;
  esac
  shift
done
[ -f "$recipe" ] || die "no recipe at $recipe"
tag=srpipe   # ch-image's name for the build; another recipe gets its own, so that it never touches srpipe's
[ "$recipe" = "$repo/containers/srpipe.def" ] || tag=srpipe-alt

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

# --- the recipe, converted ---------------------------------------------------------------------------------------------
spython=$cache/tools/spython-$spython_version/bin/spython
ensure_spython() {  # a venv of its own: the conversion must not depend on which venv (if any) runs this script
  [ -x "$spython" ] && return 0
  local venv=${spython%/bin/spython}
  log "installing spython==$spython_version into $venv (pip)"
  rm -rf "$venv"
  if ! /usr/bin/python3 -m venv "$venv" 2>/dev/null; then
    [ "$(id -u)" = 0 ] || die "python3 -m venv failed and not root (apt-get install python3-venv)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >/dev/null \
      && /usr/bin/python3 -m venv "$venv" || die "cannot create a venv for spython in $venv"
  fi
  "$venv/bin/python" -m pip --disable-pip-version-check -q install "spython==$spython_version" \
    || die "pip install spython==$spython_version failed"
}

# The Dockerfile that ch-image builds: `spython recipe` output, rewritten only where ch-image 0.31 forces it:
#  1. ADD -> COPY. spython writes %files as ADD, which ch-image 0.31 ignores (with a warning, issue #782): the files
#     would be missing from the image. For local paths COPY is what %files does (ADD would also unpack archives).
#  2. ENV X=${Y:-d} -> ENV X=d. ch-image 0.31 refuses the ${Y:-d} modifier (issue #774); Docker's builder gives d too,
#     Y being unset at build time. (Apptainer sources %environment at run time, where a Y set on the host would win.)
# Everything else stays as spython writes it: LABEL, CMD (the %runscript) and HEALTHCHECK (%test) are ignored by
# ch-image 0.31 with a warning; the RUNs that write %test into /tests.sh do run.
convert() {
  "$spython" recipe --parser singularity --writer docker "$1" > "$2.spython" || die "spython cannot convert $1"
  sed -E -e 's/^ADD /COPY /' -e '/^ENV /s/\$\{[A-Za-z_][A-Za-z0-9_]*:-([^}]*)\}/\1/g' "$2.spython" > "$2"
}

ensure_spython
conv=$cache/convert
mkdir -p "$conv"
convert "$recipe" "$conv/Dockerfile"
if [ "$print_only" = 1 ]; then
  cat "$conv/Dockerfile"
  exit 0
fi

# --- the key: recipe, its conversion, the install inputs, the local wheels by name and size, the certs ------------------
if [ -d "$repo/.git" ] && command -v git >/dev/null; then
  mapfile -t src_files < <(cd "$repo" && git ls-files -co --exclude-standard | sort)
else   # a tarball of the repo: everything but the usual build outputs
  mapfile -t src_files < <(cd "$repo" && find . -type f -not -path './.git/*' -not -path './.venv/*' \
    -not -path './runs/*' -not -path '*/__pycache__/*' -not -path '*.egg-info/*' -not -path './.*_cache/*' \
    -not -path './build/*' -printf '%P\n' | sort)
fi
# the context holds what the recipe's %files take (its COPY sources), so a change elsewhere (tests/...) rebuilds nothing
mapfile -t copy_srcs < <(awk '$1 == "COPY" && NF == 3 { sub("/$", "", $2); print $2 }' "$conv/Dockerfile")
kept=()
for f in "${src_files[@]}"; do
  [ -f "$repo/$f" ] || continue   # git lists deleted files too
  for s in "${copy_srcs[@]}"; do
    if [ "$f" = "$s" ] || [[ "$f" == "$s/"* ]]; then kept+=("$f"); break; fi
  done
done
src_files=("${kept[@]}")
[ ${#src_files[@]} -gt 0 ] || die "none of the recipe's %files ($(echo "${copy_srcs[@]}")) found in $repo"
# what %post installs is made of these (install.sh reads pyproject.toml's requirements and builds hpc/horovod/); the
# code (srpipe/, configs/, ...) is only copied, so its changes rebuild nothing: the tests bind the checkout over
# /opt/srpipe/src, where the image's editable install of srpipe points
key_files=()
for f in "${src_files[@]}"; do
  case "$f" in pyproject.toml|containers/install.sh|hpc/horovod/*) key_files+=("$f") ;; esac
done
local_wheels=()   # /opt/wheels: this site's torch CPU wheel, which install.sh finds through the bind
[ -d /opt/wheels ] && mapfile -t local_wheels < <(find /opt/wheels -maxdepth 1 -type f | sort)
certs=()
[ -d /usr/local/share/ca-certificates ] \
  && mapfile -t certs < <(find /usr/local/share/ca-certificates -maxdepth 1 -name '*.crt' | sort)
wheels_id=$(for w in "${local_wheels[@]}"; do echo "wheel $w $(stat -c %s "$w")"; done)
key=$( {
  echo "base $suite minbase $mirror as $base_ref"
  sha256sum "$recipe" "$conv/Dockerfile" | cut -d' ' -f1
  [ ${#key_files[@]} -eq 0 ] || (cd "$repo" && sha256sum "${key_files[@]}")
  echo "$wheels_id"
  for c in "${certs[@]}"; do sha256sum "$c"; done
} | sha256sum | cut -c1-16)
image_dir=$cache/images/srpipe-$key
if [ "$rebuild" = 0 ] && [ -f "$image_dir/.srpipe-image-complete" ]; then
  log "image for key $key is up to date: nothing to do ($(( $(now) - t_start ))s)"
  echo "$image_dir"
  exit 0
fi
log "building $recipe (key $key) into $image_dir"

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

# --- base: Debian 12 minbase standing in for docker.io's debian:bookworm-slim (python3 is 3.11, as in the wheels) -----
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
fi

# This host's build settings, put into the base (the recipe stays as converted). What an Apptainer build as root or
# with --fakeroot never needs, and a site behind a TLS proxy needs in any image:
#  * apt's sandbox off: only root is mapped in ch-image's user namespace, so apt cannot drop to _apt. ch-image --force
#    writes this very file, but only before a RUN that names apt-get or dpkg; the recipe's RUNs call install.sh, so
#    the build runs without --force (and none of its RUNs needs fakeroot).
#  * a dpkg stat override for /usr/bin/ssh-agent: openssh-client (pulled in by openmpi-bin) runs `chgrp _ssh` in its
#    postinst, which fails with EINVAL when only root is mapped; with the override the postinst skips it.
#  * this site's CA certificates (update-ca-certificates adds them to the system bundle when install.sh's apt-get
#    installs ca-certificates) and a pip.conf pointing pip at that bundle (pip's own certifi lacks the proxy CA).
prepare_base() {
  mkdir -p "$base_dir/etc/apt/apt.conf.d" "$base_dir/var/lib/dpkg" "$base_dir/usr/local/share/ca-certificates"
  echo 'APT::Sandbox::User "root";' > "$base_dir/etc/apt/apt.conf.d/no-sandbox"
  local override="root root 0755 /usr/bin/ssh-agent"
  grep -qxF "$override" "$base_dir/var/lib/dpkg/statoverride" 2>/dev/null \
    || echo "$override" >> "$base_dir/var/lib/dpkg/statoverride"
  rm -f "$base_dir/usr/local/share/ca-certificates/"*.crt "$base_dir/etc/pip.conf"
  [ ${#certs[@]} -gt 0 ] || return 0
  cp -p "${certs[@]}" "$base_dir/usr/local/share/ca-certificates/"
  printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > "$base_dir/etc/pip.conf"
}
base_id=$( { echo "$base_ref settings v1"; stat -c %Y "$base_dir/.complete"; for c in "${certs[@]}"; do sha256sum "$c"; done; } \
  | sha256sum | cut -c1-16)
stored=$(ch-image list 2>/dev/null || true)   # not piped into grep -q: with pipefail, its early exit reads as a miss
if [ "$(cat "$cache/base/imported" 2>/dev/null)" != "$base_id" ] || ! grep -qxF "$base_ref" <<< "$stored"; then
  prepare_base
  log "ch-image import $base_dir $base_ref"
  ch-image delete "$base_ref" >/dev/null 2>&1 || true
  ch-image delete srpipe-base >/dev/null 2>&1 || true   # the base's name before the recipe was built as is
  ch-image import "$base_dir" "$base_ref" >/dev/null || die "ch-image import of $base_dir failed"
  echo "$base_id" > "$cache/base/imported"
fi
t_base=$(( $(now) - t0 ))

# --- build context: the repository (the recipe's %files paths are relative to it) --------------------------------------
ctx=$cache/context
rm -rf "$ctx"
mkdir -p "$ctx"
(cd "$repo" && cp --parents -p "${src_files[@]}" "$ctx/")
# ch-image's build cache hashes COPY sources by path, mode, size and mtime, directories included: files keep their
# mtimes (cp -p), the freshly made directories get a fixed one, so an unchanged file stays a cache hit
find "$ctx" -type d -exec touch -d @0 {} +

# --- build and convert ------------------------------------------------------------------------------------------------
# %post sees the local wheels as `apptainer build --bind` shows them: /opt/wheels (install.sh's --find-links) and the
# Horovod wheel cache at its default path (hpc/horovod/build.sh installs a cached wheel, or compiles and fills it).
# ch-run creates the two mount points, which stay in the image as empty directories.
binds=()
mkdir -p "$wheel_cache" 2>/dev/null && binds+=(-b "$wheel_cache:/var/cache/srpipe/wheels")
[ -d /opt/wheels ] && binds+=(-b /opt/wheels)
# ch-image's build cache does not see what is bound: when the local wheels change, its cached RUNs must not be reused
cache_flags=()
if [ -f "$cache/storage.wheels" ] && [ "$(cat "$cache/storage.wheels")" != "$wheels_id" ]; then
  log "the local wheels changed since the last build: ch-image build --rebuild"
  cache_flags=(--rebuild)
fi
t0=$(now)
log "ch-image build -t $tag -f $conv/Dockerfile $ctx (log: $cache/build.log)"
# ch-image updates the storage's image (srpipe) in place (a git worktree of its build cache). A build that was killed (a
# cancelled job, a machine restart) leaves that worktree dirty, and every later build then fails at ch-image's
# `git checkout`, or silently carries the stray files into the image. So each build starts from a fresh checkout of
# the build cache: every finished layer stays cached, the checkout costs about a minute.
ch-image delete "$tag" >/dev/null 2>&1 || true
if ! ch-image build "${cache_flags[@]}" "${binds[@]}" -t "$tag" -f "$conv/Dockerfile" "$ctx" \
     > "$cache/build.log" 2>&1; then
  tail -n 40 "$cache/build.log" >&2
  die "ch-image build of $recipe failed; full log: $cache/build.log"
fi
echo "$wheels_id" > "$cache/storage.wheels"
grep -E 'ignored' "$cache/build.log" | sed 's/^/build-image.sh: ch-image: /' >&2 || true
t_build=$(( $(now) - t0 ))
t0=$(now)
rm -rf "$image_dir" "$image_dir.tmp"
ch-convert -i ch-image -o dir "$tag" "$image_dir.tmp" >&2 \
  || die "ch-convert -i ch-image -o dir $tag $image_dir.tmp failed"
# what this image was built from, for the tests and for anyone holding the image: IMAGE/ch/ (ch-image's own folder)
cp "$recipe" "$image_dir.tmp/ch/srpipe.def"
sha256sum "$recipe" | cut -d' ' -f1 > "$image_dir.tmp/ch/srpipe.def.sha256"
cp "$conv/Dockerfile.spython" "$image_dir.tmp/ch/Dockerfile.spython"
cp "$conv/Dockerfile" "$image_dir.tmp/ch/Dockerfile"
touch "$image_dir.tmp/.srpipe-image-complete"
mv "$image_dir.tmp" "$image_dir"
t_convert=$(( $(now) - t0 ))
# older images of other keys are only disk: drop them, keep this one (another recipe's build drops nothing)
for old in "$cache"/images/srpipe-*; do
  [ "$tag" != srpipe ] || [ "$old" = "$image_dir" ] || rm -rf "$old"
done
rm -rf "$ctx"
log "built $image_dir ($(du -sh "$image_dir" | cut -f1)): base ${t_base}s, build ${t_build}s," \
  "convert ${t_convert}s, total $(( $(now) - t_start ))s"
echo "$image_dir"
