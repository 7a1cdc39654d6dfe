#!/usr/bin/env bash
# Build the two images digitloop runs, with pinned tags:
#   SERVING_IMAGE from the Bento (bentoml build + bentoml containerize), and
#   APP_IMAGE from docker/app.Dockerfile (UI, pipeline steps, MLflow server, jobs).
#   scripts/build-images.sh BENTOML SERVING_IMAGE APP_IMAGE TAG
# Safe to re-run: the Bento of this tag is rebuilt from the current code; Docker's layer
# cache keeps the app image rebuild short.
set -euo pipefail
bentoml=$1 serving_image=$2 app_image=$3 tag=$4

# The Bento store stays inside the project (not ~/bentoml).
export BENTOML_HOME=${BENTOML_HOME:-$PWD/.digitloop/bentoml}
if "$bentoml" get "digitloop:$tag" >/dev/null 2>&1; then
  "$bentoml" delete --yes "digitloop:$tag" >/dev/null
fi
"$bentoml" build --version "$tag"
"$bentoml" containerize "digitloop:$tag" --image-tag "$serving_image"

docker build --file docker/app.Dockerfile --tag "$app_image" .
echo "built $serving_image and $app_image"
