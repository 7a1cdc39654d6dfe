#!/usr/bin/env bash
# What runs where: pods, the model version of each track, the canary weight, the last runs.
#   scripts/cluster-status.sh KUBECTL HELM ARGO NAMESPACE RELEASE CONTEXT
set -euo pipefail
kubectl=$1 helm=$2 argo=$3 namespace=$4 release=$5 context=$6

echo "== pods ($namespace)"
"$kubectl" --context "$context" -n "$namespace" get pods -o wide

echo
echo "== serving (helm values of release $release)"
"$helm" --kube-context "$context" -n "$namespace" get values "$release" --all -o json | python3 -c '
import json, sys
serving = json.load(sys.stdin)["serving"]
canary = serving["canary"]
print(f"  backend: {serving[\"backend\"]}")
print(f"  stable:  model {serving[\"stable\"][\"modelVersion\"]}, {serving[\"stable\"][\"replicas\"]} replica(s)")
if canary.get("enabled"):
    print(f"  canary:  model {canary[\"modelVersion\"]}, weight {canary[\"weight\"]} %")
else:
    print("  canary:  off")
'

echo
echo "== last workflow runs"
"$argo" --context "$context" -n "$namespace" list 2>/dev/null | head -n 6 ||
  echo "  (argo list failed: is Argo Workflows installed?)"
"$argo" --context "$context" -n "$namespace" cron list 2>/dev/null || true
