#!/usr/bin/env bash
# Build and tag Stratolab's three images with docker buildx, from the repository root:
#   stratolab/notebook:0.1.0-cpu, stratolab/notebook:0.1.0-cuda, stratolab/hub:0.1.0
#
#   images/build.sh                 build all three into the local image store (--load)
#   images/build.sh --smoke         ... then run the smoke test in each notebook image (CPU mode)
#   REGISTRY=ghcr.io/acme images/build.sh --push    tag as ghcr.io/acme/stratolab/... and push
#
# The tags follow stratolab/platform/profiles.py (the images the profiles name) and the version in
# pyproject.toml. linux/amd64 only: the requirement locks are resolved for x86-64 wheels.
set -euo pipefail

cd "$(dirname "$0")/.."
VERSION="$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml | head -1)"
CUDA_BASE_IMAGE="${CUDA_BASE_IMAGE:-nvidia/cuda:13.0.1-base-ubuntu22.04}"
PREFIX="${REGISTRY:+${REGISTRY%/}/}stratolab"
OUTPUT=--load
SMOKE=no
for arg in "$@"; do
  case "$arg" in
    --push) OUTPUT=--push ;;
    --smoke) SMOKE=yes ;;
    *) echo "usage: $0 [--push] [--smoke]" >&2; exit 2 ;;
  esac
done

build() {  # build TAG DOCKERFILE [BUILD-ARG ...]
  local tag="$1" dockerfile="$2"
  shift 2
  echo "==> $tag"
  docker buildx build --platform linux/amd64 "$OUTPUT" -f "$dockerfile" \
    --build-arg "VERSION=$VERSION" "$@" -t "$tag" .
}

build "$PREFIX/notebook:$VERSION-cpu" images/notebook/Dockerfile --build-arg VARIANT=cpu
build "$PREFIX/notebook:$VERSION-cuda" images/notebook/Dockerfile --build-arg VARIANT=cuda \
  --build-arg "BASE_IMAGE=$CUDA_BASE_IMAGE"
build "$PREFIX/hub:$VERSION" images/hub/Dockerfile

if [ "$SMOKE" = yes ]; then
  for variant in cpu cuda; do
    echo "==> smoke test of $PREFIX/notebook:$VERSION-$variant (add --gpus all and --gpu on a GPU node)"
    docker run --rm "$PREFIX/notebook:$VERSION-$variant" python /opt/stratolab/smoke_test.py
  done
fi
