#!/usr/bin/env bash
# Builds the container image with nothing pulled: the release binary on this host (static,
# stripped), laid out as the Dockerfile's `rootfs` stage, then the Dockerfile's final stage
# over it with podman.
#
#   deploy/build-image.sh [TAG]        (default localhost/portcullis:dev)
#
# PODMAN may name the command (for example "podman --runtime runc").
set -euo pipefail
cd "$(dirname "$0")/.."

tag="${1:-localhost/portcullis:dev}"
podman=(${PODMAN:-podman})
target=x86_64-unknown-linux-gnu
commit="$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)"
source_url="$(git remote get-url origin 2>/dev/null || true)"

echo "== building the static binary (profile dist) ($target, commit $commit)"
PORTCULLIS_COMMIT="$commit" RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --profile dist --locked --target "$target" --bin portcullis
binary="target/$target/dist/portcullis"
if [[ "$(readelf -l "$binary")" == *"program interpreter"* ]]; then
  echo "$binary is dynamically linked; the image has no libraries for it" >&2
  exit 1
fi

root="target/image-root"
rm -rf "$root"
mkdir -p "$root/etc/ssl/certs" "$root/data"
cp "$binary" "$root/portcullis"
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
cp deploy/image/passwd deploy/image/group "$root/etc/"

echo "== building $tag"
"${podman[@]}" build --format docker --target runtime \
  --build-context "rootfs=$root" \
  --build-arg "VERSION=$version" \
  --build-arg "PORTCULLIS_COMMIT=$commit" \
  --build-arg "SOURCE_URL=$source_url" \
  -t "$tag" -f Dockerfile "$root"
"${podman[@]}" image inspect --format '{{.Size}}' "$tag" \
  | awk -v tag="$tag" '{ printf "%s: %.1f MB\n", tag, $1 / 1000000 }'
