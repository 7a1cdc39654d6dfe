#!/usr/bin/env bash
# Build the two images digitloop runs, tagged with scripts/image-tag.sh's content tag:
#   SERVING_IMAGE from the Bento (bentoml build + bentoml containerize), and
#   APP_IMAGE from docker/app.Dockerfile (UI, pipeline steps, MLflow server, jobs).
#   scripts/build-images.sh BENTOML SERVING_IMAGE APP_IMAGE TAG
# Safe to re-run: the tag names the content, so an image of this tag that Docker already has
# is this tree's and is kept; any change to the inputs gives another tag and a build.
set -euo pipefail
bentoml=$1 serving_image=$2 app_image=$3 tag=$4

built() {
  if docker image inspect "$1" >/dev/null 2>&1; then
    echo "$1 is built (same content, same tag)"
    return 0
  fi
  return 1
}

# Single-platform images with no provenance attestation: with Docker's containerd image store
# BuildKit otherwise wraps each in an index whose attestation manifest kind's import trips on.
export BUILDX_NO_DEFAULT_ATTESTATIONS=1
# The Bento store stays inside the project (not ~/bentoml).
export BENTOML_HOME=${BENTOML_HOME:-$PWD/.digitloop/bentoml}
if ! built "$serving_image"; then
  if "$bentoml" get "digitloop:$tag" >/dev/null 2>&1; then
    "$bentoml" delete --yes "digitloop:$tag" >/dev/null
  fi
  "$bentoml" build --version "$tag"
  "$bentoml" containerize "digitloop:$tag" --image-tag "$serving_image"
fi

if ! built "$app_image"; then
  docker build --file docker/app.Dockerfile --tag "$app_image" .
fi
echo "images: $serving_image $app_image"
