#!/usr/bin/env bash
# Validates the deployment files without running them: compose against the compose
# specification, the Kubernetes manifests against the Kubernetes schemas (offline) and the
# restricted profile, and the systemd unit with systemd-analyze.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== compose.yaml"
SECRET_KEY=check docker-compose -f compose.yaml config -q

echo "== deploy/kubernetes"
# kustomization.yaml is kustomize's, not the API server's: it has no schema there.
manifests=$(ls deploy/kubernetes/*.yaml | grep -v kustomization.yaml)
kubernetes-validate --strict --quiet $manifests
python3 deploy/check-manifests.py

echo "== deploy/systemd"
unit="$(mktemp -d)/portcullis.service"
# verify wants the binary to exist: point the unit at this build's.
binary="$PWD/target/debug/portcullis"
[ -x "$binary" ] || cargo build --bin portcullis
sed "s#/usr/local/bin/portcullis#$binary#g" deploy/systemd/portcullis.service >"$unit"
complaints="$(systemd-analyze verify "$unit" 2>&1 || true)"
rm -rf "$(dirname "$unit")"
if [ -n "$complaints" ]; then
  echo "$complaints" >&2
  exit 1
fi
echo "deploy/systemd/portcullis.service: verified"
