#!/usr/bin/env bash
# Build the Cumulus supervisor image from this repository (see supervisor_image/Dockerfile).
#
#   supervisor_image/build.sh [--tag cumulus-supervisor:VERSION] [--base IMAGE] [--python PY] [--wheels DIR]
#                             [--docker-host URL] [--network none] [--label KEY=VALUE]... [--save FILE]
#
# Steps: stage a build context in a temporary directory (the Dockerfile, wheels/, worker_image/), then
# `docker build` it. wheels/ holds cumulus[server] and every dependency as wheels, made on this machine by
# `PY -m pip wheel` (so pip's own index settings apply: pip.conf, PIP_INDEX_URL, PIP_FIND_LINKS), plus pip itself
# (a base without pip bootstraps from it). PY must be CPython 3.11 on the image's architecture, because the
# wheels of grpcio, cryptography, ... are built for the interpreter that makes them; the check below says so.
#
#   --tag TAG          image name (default cumulus-supervisor:<version of this repository>)
#   --base IMAGE       base image with Python 3.11 (default python:3.11-slim; offline: cumulus-base:bookworm, the
#                      debootstrap base `cumulus local up` imports)
#   --python PY        the interpreter that makes the wheels (default: python3.11, else python3)
#   --wheels DIR       use the wheels in DIR (cumulus-*.whl, its dependencies, pip-*.whl) instead of making them
#   --docker-host URL  the Docker daemon to build on (default: $DOCKER_HOST or the local one)
#   --network MODE     `docker build --network` (none for an offline build: nothing is fetched while building)
#   --label KEY=VALUE  an extra image label (repeatable)
#   --save FILE        also `docker save` the image to FILE (to `docker load` it on another node)
#
# Prints the image id (sha256:...) as the last line. Nothing is written into the repository: the package is
# built from a copy of its sources.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
tag="" base="" python="" wheels="" network="" save=""
docker=(docker)
labels=()
die() { echo "build.sh: $*" >&2; exit 1; }
while [ $# -gt 0 ]; do
  case "$1" in
    --tag) tag="${2:?--tag needs a value}"; shift 2 ;;
    --base) base="${2:?--base needs a value}"; shift 2 ;;
    --python) python="${2:?--python needs a value}"; shift 2 ;;
    --wheels) wheels="${2:?--wheels needs a value}"; shift 2 ;;
    --docker-host) docker=(docker -H "${2:?--docker-host needs a value}"); shift 2 ;;
    --network) network="${2:?--network needs a value}"; shift 2 ;;
    --label) labels+=(--label "${2:?--label needs a value}"); shift 2 ;;
    --save) save="${2:?--save needs a value}"; shift 2 ;;
    -h|--help) sed -n '2,25p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done

version="$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$repo/cumulus/_version.py")"
[ -n "$version" ] || die "cannot read the version from cumulus/_version.py"
tag="${tag:-cumulus-supervisor:$version}"

ctx="$(mktemp -d "${TMPDIR:-/tmp}/cumulus-supervisor-image.XXXXXX")"
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/wheels"

if [ -n "$wheels" ]; then
  [ -d "$wheels" ] || die "--wheels $wheels: not a directory"
  cp "$wheels"/*.whl "$ctx/wheels/"
else
  if [ -z "$python" ]; then
    python="$(command -v python3.11 || command -v python3 || true)"
    [ -n "$python" ] || die "no python3 found; give --python PY (CPython 3.11)"
  fi
  abi="$("$python" -c 'import platform as p, sys; print(sys.implementation.name, p.python_version()[:4], p.machine())')"
  case "$abi" in
    "cpython 3.11 "*) ;;
    *) die "$python is '$abi'; the image runs CPython 3.11, so the wheels must be made by CPython 3.11 (--python)" ;;
  esac
  # A copy of the package sources: setuptools writes build/ and *.egg-info next to the sources it builds.
  mkdir -p "$ctx/src"
  cp "$repo/pyproject.toml" "$repo/README.md" "$ctx/src/"
  (cd "$repo" && tar --exclude=__pycache__ --exclude='*.pyc' -cf - cumulus) | tar -C "$ctx/src" -xf -
  echo "making wheels with $python (cumulus[server] and its dependencies, pip)" >&2
  "$python" -m pip wheel --disable-pip-version-check --no-input -q --wheel-dir "$ctx/wheels" "$ctx/src[server]" pip >&2
  rm -rf "$ctx/src"
fi
ls "$ctx/wheels"/cumulus-*.whl >/dev/null 2>&1 || die "no cumulus-*.whl among the wheels"
ls "$ctx/wheels"/pip-*.whl >/dev/null 2>&1 || die "no pip-*.whl among the wheels (the offline base has no pip)"

cp "$here/Dockerfile" "$ctx/Dockerfile"
(cd "$repo" && tar --exclude=__pycache__ --exclude='*.pyc' -cf - worker_image) | tar -C "$ctx" -xf -

args=(build -t "$tag" --build-arg "VERSION=$version" --label "cumulus.version=$version" "${labels[@]}")
[ -n "$base" ] && args+=(--build-arg "BASE=$base")
[ -n "$network" ] && args+=(--network "$network")
# The classic builder: Debian's docker.io 20.10 has no buildx, and it needs no network for a local base.
DOCKER_BUILDKIT=0 "${docker[@]}" "${args[@]}" "$ctx" >&2
id="$("${docker[@]}" image inspect --format '{{.Id}}' "$tag")"
if [ -n "$save" ]; then
  "${docker[@]}" save -o "$save.tmp" "$tag"
  mv "$save.tmp" "$save"
fi
echo "$id"
