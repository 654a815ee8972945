#!/usr/bin/env bash
# Renders every overlay with kustomize and validates the result against the Kubernetes
# schemas of a pinned version, offline (pip install kubernetes-validate).
set -euo pipefail
cd "$(dirname "$0")"
K8S_VERSION="${K8S_VERSION:-1.33.0}"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
for overlay in overlays/*/; do
  name="$(basename "$overlay")"
  kubectl kustomize "$overlay" > "$out/$name.yaml"
  python3 -m kubernetes_validate --strict --quiet -k "$K8S_VERSION" "$out/$name.yaml"
  echo "k8s: overlay $name renders ($(grep -c '^kind:' "$out/$name.yaml") objects) and validates against Kubernetes $K8S_VERSION"
done
