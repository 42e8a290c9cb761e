#!/usr/bin/env bash
# Offline checks of the deployment files that `cargo test` does not run: hadolint on the
# container image definition, and scripts/check-kubernetes.py on the Kubernetes manifests
# (kustomize builds, API schemas, the fields a relay needs). The dashboard, the alert rules, the
# systemd unit and the example configuration are checked by crates/turnpike/tests/deploy.rs
# against a live relay. scripts/setup.sh installs the tools.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

echo "check-deploy: hadolint deploy/container/Dockerfile" >&2
hadolint deploy/container/Dockerfile
echo "check-deploy: Kubernetes manifests" >&2
python3 scripts/check-kubernetes.py
