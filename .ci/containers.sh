#!/usr/bin/env bash
# CI's container engine and image, as root: Debian's podman with runc, a Debian base image made with
# mmdebstrap (no image registry is reachable), and `make image-local`. Cached between runs on one
# machine: packages installed stay installed, the base image is made once, image layers are reused.
set -euo pipefail
cd "$(dirname "$0")/.."
packages=(podman buildah runc fuse-overlayfs slirp4netns uidmap mmdebstrap)
if ! dpkg -s "${packages[@]}" >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi
if [ ! -e /etc/containers/containers.conf ] || ! cmp -s images/containers.conf /etc/containers/containers.conf; then
  install -D -m 644 images/containers.conf /etc/containers/containers.conf
fi
base=localhost/photogenic-python:3.11-bookworm
podman image exists "$base" || make base-image
make image-local BASE_IMAGE="$base"
