#!/usr/bin/env bash
# Check what `make up` needs before it starts, with a message a person can act on.
#   scripts/preflight.sh CLUSTER_NAME MIN_FREE_DISK_GB PORT...
# The ports are skipped when the cluster already exists (its node holds them).
set -euo pipefail

cluster=$1 min_disk_gb=$2
shift 2
failed=0
fail() {
  echo "error: $*" >&2
  failed=1
}

# git: kustomize fetches the Gateway API CRDs at a pinned commit with it.
for tool in docker curl tar git; do
  command -v "$tool" >/dev/null || fail "$tool is not installed; install it and run make up again"
done

if command -v docker >/dev/null && ! docker info >/dev/null 2>&1; then
  fail "Docker is not running (docker info failed): start Docker Desktop or the docker service"
fi

running=$(docker ps --filter "name=^${cluster}-control-plane$" --format '{{.Names}}' 2>/dev/null || true)
if [[ -z $running ]]; then
  for port in "$@"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      fail "port $port on localhost is in use; stop what listens there (lsof -i :$port) or change the port mappings in kind-config.yaml"
    fi
  done
fi

free_kb=$(df -Pk . | awk 'NR == 2 {print $4}')
if ((free_kb < min_disk_gb * 1024 * 1024)); then
  fail "only $((free_kb / 1024 / 1024)) GB free here; make up needs about ${min_disk_gb} GB (images, node, volumes): free some (docker system prune)"
fi

if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
  # `docker save --platform` (scripts/kind-load.sh) came with Docker 28, API 1.48.
  api=$(docker version --format '{{.Server.APIVersion}}')
  if [[ ! $api =~ ^([0-9]+)\.([0-9]+) ]] || ((BASH_REMATCH[1] == 1 && BASH_REMATCH[2] < 48)); then
    fail "Docker's API is $api; make up needs Docker 28 or newer (API 1.48, for docker save --platform): upgrade Docker"
  fi
  cpus=$(docker info --format '{{.NCPU}}')
  mem_mib=$(($(docker info --format '{{.MemTotal}}') / 1024 / 1024))
  # Docker Desktop set to 8 GB reports about 7.7 GiB (its VM's kernel keeps some): warn below
  # 7.5 GiB, not below 8.
  if ((cpus < 4 || mem_mib < 7680)); then
    mem_gib=$(awk -v mib="$mem_mib" 'BEGIN { printf "%.1f", mib / 1024 }')
    echo "warning: Docker has $cpus CPUs and $mem_gib GiB of memory; digitloop asks for up to 4 CPUs and 8 GB (Docker Desktop: Settings > Resources)" >&2
  fi
fi

((failed == 0)) || exit 1
echo "preflight ok: Docker is running, ports $* are free, disk is enough"
