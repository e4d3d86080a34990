#!/usr/bin/env bash
# A Debian bookworm image with Python 3.11 (python3, venv), made with mmdebstrap from Debian's own
# packages: the CPU image's base on machines that reach Debian's mirror but no image registry.
#   images/base-image.sh [REF]     (default localhost/photogenic-python:3.11-bookworm; `make base-image`)
# Imports it with the first engine that works: a Docker daemon, podman or buildah.
set -euo pipefail
ref=${1:-localhost/photogenic-python:3.11-bookworm}
suite=${DEBIAN_SUITE:-bookworm}
command -v mmdebstrap >/dev/null || { echo "base-image: mmdebstrap is not installed (apt-get install mmdebstrap)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates \
  --format=tar "$suite" "$tmp/rootfs.tar"
change='CMD ["/bin/bash"]'
if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
  docker import --change "$change" "$tmp/rootfs.tar" "$ref"
elif command -v podman >/dev/null; then
  podman import --change "$change" "$tmp/rootfs.tar" "$ref"
elif command -v buildah >/dev/null; then
  ctr=$(buildah from scratch)
  buildah add "$ctr" "$tmp/rootfs.tar" /
  buildah config --cmd /bin/bash "$ctr"
  buildah commit --rm "$ctr" "$ref"
else
  echo "base-image: no container engine here (a Docker daemon, podman or buildah)" >&2
  exit 1
fi
echo "base image: $ref"
