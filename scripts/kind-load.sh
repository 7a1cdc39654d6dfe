#!/usr/bin/env bash
# Load locally built images into the kind cluster's node, skipping any it already has.
#   scripts/kind-load.sh KIND CLUSTER IMAGE...
# Through an image archive of this machine's platform only (`docker save --platform`, then
# `kind load image-archive`): `kind load docker-image` saves every platform of an image and
# imports with `ctr import --all-platforms`, which fails with Docker's containerd image store
# (the default of Docker 29 and Docker Desktop) on the first blob the store does not hold
# (kind#3795, open at kind v0.33.0). `docker save --platform` needs Docker 28 (API 1.48);
# preflight checks it. The tags name the content (scripts/image-tag.sh), so an image the node
# already has under its tag is this one.
set -euo pipefail
kind=$1 cluster=$2
shift 2
node="${cluster}-control-plane"
platform=$(docker version --format '{{.Server.Os}}/{{.Server.Arch}}')

missing=()
for image in "$@"; do
  # kind's node image has crictl; a node that cannot answer gets the image loaded anyway.
  if docker exec "$node" crictl inspecti "docker.io/library/$image" >/dev/null 2>&1; then
    echo "$image is on the node"
  else
    missing+=("$image")
  fi
done
((${#missing[@]})) || exit 0

archive_dir=$(mktemp -d)
trap 'rm -rf "$archive_dir"' EXIT
echo "saving ${missing[*]} ($platform)"
docker save --platform "$platform" --output "$archive_dir/images.tar" "${missing[@]}"
"$kind" load image-archive --name "$cluster" "$archive_dir/images.tar"
