#!/usr/bin/env bash
# What runs where: pods and the last workflow runs (`make status` adds the model version of
# each track and the canary weight, from `digitloop rollout status`).
#   scripts/cluster-status.sh KUBECTL ARGO NAMESPACE CONTEXT
set -euo pipefail
kubectl=$1 argo=$2 namespace=$3 context=$4

echo "== pods ($namespace)"
"$kubectl" --context "$context" -n "$namespace" get pods -o wide

echo
echo "== last workflow runs"
"$argo" --context "$context" -n "$namespace" list 2>/dev/null | head -n 6 ||
  echo "  (argo list failed: is Argo Workflows installed?)"
"$argo" --context "$context" -n "$namespace" cron list 2>/dev/null || true
