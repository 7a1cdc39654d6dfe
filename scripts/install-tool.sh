#!/usr/bin/env bash
# Install one pinned CLI into ./bin: download, verify its SHA-256, keep it as a versioned file
# (bin/NAME-VERSION) and point the symlink bin/NAME at it. Bumping a version in mk/cluster.mk
# changes the versioned file name, so make installs the new one.
#
#   scripts/install-tool.sh NAME VERSION URL SHA256 CHECKSUM_URL FORMAT DEST
#
# FORMAT: raw (the file is the binary), gz (gzip of the binary), tgz:PATH (PATH inside a .tar.gz).
# SHA256 is the pinned digest. When it is empty (a platform without a pinned digest), the
# digest published at CHECKSUM_URL is used instead and printed, so it can be pinned.
set -euo pipefail

if (($# != 7)); then
  echo "usage: $0 NAME VERSION URL SHA256 CHECKSUM_URL FORMAT DEST" >&2
  exit 2
fi
name=$1 version=$2 url=$3 sha256=$4 checksum_url=$5 format=$6 dest=$7

sha256_of() {
  if command -v sha256sum >/dev/null; then
    sha256sum "$1" | cut -d' ' -f1
  else
    shasum -a 256 "$1" | cut -d' ' -f1
  fi
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "fetching $name $version from $url"
curl --fail --silent --show-error --location --retry 3 --output "$work/download" "$url"
actual=$(sha256_of "$work/download")

if [[ -z $sha256 ]]; then
  # A checksum file holds one digest, or one line per release file: take this file's.
  listing=$(curl --fail --silent --show-error --location --retry 3 "$checksum_url")
  published=$( (grep -F "$(basename "$url")" <<<"$listing" || echo "$listing") | awk '{print $1}' | head -n1)
  echo "note: no pinned SHA-256 for $name $version on this platform; using the published one" >&2
  echo "      ($checksum_url): $published; computed: $actual -- pin it in mk/cluster.mk" >&2
  sha256=$published
fi
if [[ $actual != "$sha256" ]]; then
  echo "error: $name $version: SHA-256 $actual does not match the expected $sha256;" >&2
  echo "       the download is corrupt or not the published release. Nothing was installed." >&2
  exit 1
fi

case $format in
  raw) cp "$work/download" "$work/bin" ;;
  gz) gunzip --stdout "$work/download" >"$work/bin" ;;
  tgz:*)
    tar -xzf "$work/download" -C "$work" "${format#tgz:}"
    mv "$work/${format#tgz:}" "$work/bin"
    ;;
  *)
    echo "error: unknown format $format" >&2
    exit 2
    ;;
esac

mkdir -p "$(dirname "$dest")"
install -m 0755 "$work/bin" "$dest"
ln -sfn "$(basename "$dest")" "$(dirname "$dest")/$name"
echo "installed $name $version (sha256 $actual) -> $dest"
