#!/usr/bin/env bash
# Print the tag of both digitloop images: the project's version and the first 12 hex digits of
# a git object id (SHA-1) over the name and content of every file the images are built from (committed or
# not; git-ignored files left out). A change to the code, the chart or the build gives new
# tags, so `make up` run again rolls the Deployments onto the new images (a fixed tag with
# IfNotPresent kept the old ones), and the chart baked into the app image, which the loop's
# rollout upgrades with, is the chart `make deploy` installed. Same tree, same tag.
#   scripts/image-tag.sh
set -euo pipefail
cd "$(dirname "$0")/.."

inputs=(pyproject.toml README.md bentofile.yaml requirements contracts model services ui pipelines digitloop docker charts/digitloop)
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml)
[[ -n $version ]] || { echo "error: no version in pyproject.toml" >&2; exit 1; }

# git alone, so it runs the same on Linux and macOS: each file's blob id, then one id of the list.
files=$(git ls-files --cached --others --exclude-standard -- "${inputs[@]}" | sort -u |
  while IFS= read -r file; do
    # A tracked file deleted in the work tree is not an input any more.
    if [[ -f $file ]]; then echo "$file"; fi
  done)
[[ -n $files ]] || { echo "error: no image inputs found: run this in the digitloop checkout" >&2; exit 1; }
digest=$(paste <(echo "$files") <(echo "$files" | git hash-object --stdin-paths) |
  git hash-object --stdin | cut -c1-12)
echo "$version-$digest"
