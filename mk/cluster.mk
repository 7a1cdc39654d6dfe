# digitloop on a kind cluster: `make up` builds and runs everything, `make down` removes it.
# Included from the Makefile (it relies on its SHELL, .SHELLFLAGS, BIN and help target).

##@ Cluster (kind, needs Docker)

# Where the pinned CLIs go: bin/<tool>-<version> plus a symlink bin/<tool>.
LOCALBIN ?= $(CURDIR)/bin
# kind cluster name (must match `name:` in the kind config).
CLUSTER_NAME ?= digitloop
# kind cluster configuration (node image pinned by digest, the gateway's port mappings).
KIND_CONFIG ?= kind-config.yaml
# Namespace and Helm release of the digitloop chart.
NAMESPACE ?= digitloop
RELEASE ?= digitloop
# Tag of both digitloop images: the version and a digest of every file they are built from
# (scripts/image-tag.sh), so changed code or chart gives new tags; worked out once per run.
IMAGE_TAG ?= $(eval IMAGE_TAG := $(shell scripts/image-tag.sh))$(IMAGE_TAG)
# The serving image (from the Bento) and the app image (docker/app.Dockerfile).
SERVING_IMAGE ?= digitloop-serving:$(IMAGE_TAG)
APP_IMAGE ?= digitloop-app:$(IMAGE_TAG)
# localhost ports the gateway publishes (kind-config.yaml): UI, API, MLflow, Argo, Grafana.
GATEWAY_PORTS ?= 8080 8081 8082 8083 8084
# Free disk `make up` wants, in GB (images, the node, volumes).
MIN_FREE_DISK_GB ?= 20
# How long a Helm install may take (the first digitloop install trains model version 1).
HELM_TIMEOUT ?= 20m
# A values file for the digitloop release on top of the chart's (make up DEPLOY_VALUES=my.yaml).
DEPLOY_VALUES ?=
# `make canary`: the model version of the canary and its share of traffic in percent.
VERSION ?=
WEIGHT ?= 20
# How canary/promote/rollback change the release: `helm` (its values; serving.backend=gateway)
# or `kserve` (the InferenceService through the kserve SDK; serving.backend=kserve).
ROLLOUT ?= helm
# MLflow as seen from this machine (through the gateway): the rollout moves its aliases too.
MLFLOW_URL ?= http://localhost:8082
# `make logs`: the app.kubernetes.io/component to show (serving-stable, serving-canary, ui,
# mlflow, minio, bootstrap, loop).
COMPONENT ?= serving-stable
# `make e2e`: arguments for pytest.
E2E_ARGS ?=

# -- Pinned versions, all in one place. Checksums: see docs in the report / SOURCES below. --
KIND_VERSION ?= v0.33.0
KUBECTL_VERSION ?= v1.36.4
HELM_VERSION ?= v4.3.0
ARGO_VERSION ?= v4.0.6
# Gateway API CRDs (standard channel) the Traefik chart below is written for, fetched by
# kustomize at the commit of that tag: a tag can be moved, a commit names one tree.
GATEWAY_API_VERSION ?= v1.5.1
GATEWAY_API_COMMIT ?= e7677b70ae75d14a4448fba94870e7deea6cf0ad
# Platform charts: Traefik (Gateway API), Argo Workflows, Prometheus, Grafana.
TRAEFIK_CHART_VERSION ?= 41.3.0
ARGO_WORKFLOWS_CHART_VERSION ?= 1.0.18
PROMETHEUS_CHART_VERSION ?= 29.27.0
GRAFANA_CHART_VERSION ?= 12.11.1

# SHA-256 of each release binary per platform. Empty: the published checksum file is used
# and the digest printed, to be pinned here.
KIND_SHA256_linux_amd64 := aee6151561422756b764a4ae28e7f44cda5af5a9eead3cc9985112b1de8d8e0d
KIND_SHA256_linux_arm64 := 20022bee6cfcd5086cb7234d218e3454e6090022f2a8f55d1fa7fcf42c3867a2
KIND_SHA256_darwin_amd64 := 5a99f26f57246dc9319dd294803313197a0f34d33c525b3ea8b655db5916ece0
KIND_SHA256_darwin_arm64 := 0c8c7dbe5e23594a198b786c4bc13dacc101fa6196b0cb0b23a1ca44e61f4b4f
KUBECTL_SHA256_linux_amd64 := 8b8f088da2dab964f853b38464033b1be15ede2839eca751482357c45abdd05a
KUBECTL_SHA256_linux_arm64 := 0ecf44450ee6063bf19dd166a103ee6df4a9034455c2abce626e6eea657d73fb
KUBECTL_SHA256_darwin_amd64 :=
KUBECTL_SHA256_darwin_arm64 :=
HELM_SHA256_linux_amd64 := 86584a54def73570558f66f5111cc53dfed56689637ae32c1201205d494f54fb
HELM_SHA256_linux_arm64 := 31c5794dd55c66a51e6b7d2e2ac7a114ae8b1de41ff1d9ba51748ac973b06a08
HELM_SHA256_darwin_amd64 :=
HELM_SHA256_darwin_arm64 := d3870437e1e95b67f8edbde964156c84a26503f560821d40c542441658934fba
ARGO_SHA256_linux_amd64 := 8ecdc25dcce175412093cc9b04fdd1063b1e7d635e90be6d01643fcb25a356e1
ARGO_SHA256_linux_arm64 := a4b6ef60ddf6cf996186e0f6dd1c744e5394fe2eda28cea2b6c33d74fe050a57
ARGO_SHA256_darwin_amd64 := 3444c909f576c67c0593bd3bc1664cf7962573616cbbbdd38d1326320ed9f5f6
ARGO_SHA256_darwin_arm64 := c03b80e90d7e373041d59c76dd13e836d2efce64fe73e9da06d74b5968e0749e

TOOL_OS := $(shell uname -s | tr '[:upper:]' '[:lower:]')
TOOL_ARCH := $(patsubst aarch64,arm64,$(patsubst x86_64,amd64,$(shell uname -m)))
PLATFORM := $(TOOL_OS)_$(TOOL_ARCH)

KIND := $(LOCALBIN)/kind-$(KIND_VERSION)
KUBECTL_BIN := $(LOCALBIN)/kubectl-$(KUBECTL_VERSION)
HELM_BIN := $(LOCALBIN)/helm-$(HELM_VERSION)
ARGO_BIN := $(LOCALBIN)/argo-$(ARGO_VERSION)
CONTEXT := kind-$(CLUSTER_NAME)
KUBECTL := $(KUBECTL_BIN) --context $(CONTEXT)
HELM := $(HELM_BIN) --kube-context $(CONTEXT)
ARGO := $(ARGO_BIN) --context $(CONTEXT)
INSTALL_TOOL := scripts/install-tool.sh

$(KIND):
	$(INSTALL_TOOL) kind $(KIND_VERSION) \
	  https://github.com/kubernetes-sigs/kind/releases/download/$(KIND_VERSION)/kind-$(TOOL_OS)-$(TOOL_ARCH) \
	  "$(KIND_SHA256_$(PLATFORM))" \
	  https://github.com/kubernetes-sigs/kind/releases/download/$(KIND_VERSION)/kind-$(TOOL_OS)-$(TOOL_ARCH).sha256sum \
	  raw $@

$(KUBECTL_BIN):
	$(INSTALL_TOOL) kubectl $(KUBECTL_VERSION) \
	  https://dl.k8s.io/release/$(KUBECTL_VERSION)/bin/$(TOOL_OS)/$(TOOL_ARCH)/kubectl \
	  "$(KUBECTL_SHA256_$(PLATFORM))" \
	  https://dl.k8s.io/release/$(KUBECTL_VERSION)/bin/$(TOOL_OS)/$(TOOL_ARCH)/kubectl.sha256 \
	  raw $@

$(HELM_BIN):
	$(INSTALL_TOOL) helm $(HELM_VERSION) \
	  https://get.helm.sh/helm-$(HELM_VERSION)-$(TOOL_OS)-$(TOOL_ARCH).tar.gz \
	  "$(HELM_SHA256_$(PLATFORM))" \
	  https://get.helm.sh/helm-$(HELM_VERSION)-$(TOOL_OS)-$(TOOL_ARCH).tar.gz.sha256sum \
	  tgz:$(TOOL_OS)-$(TOOL_ARCH)/helm $@

$(ARGO_BIN):
	$(INSTALL_TOOL) argo $(ARGO_VERSION) \
	  https://github.com/argoproj/argo-workflows/releases/download/$(ARGO_VERSION)/argo-$(TOOL_OS)-$(TOOL_ARCH).gz \
	  "$(ARGO_SHA256_$(PLATFORM))" \
	  https://github.com/argoproj/argo-workflows/releases/download/$(ARGO_VERSION)/argo-workflows-cli-checksums.txt \
	  gz $@

.PHONY: tools
tools: $(KIND) $(KUBECTL_BIN) $(HELM_BIN) $(ARGO_BIN) ## Fetch the pinned kind, kubectl, helm and argo CLIs into ./bin (checksums verified).

.PHONY: preflight
preflight: ## Check Docker, free ports and disk before `make up`.
	scripts/preflight.sh $(CLUSTER_NAME) $(MIN_FREE_DISK_GB) $(GATEWAY_PORTS)

.PHONY: cluster
cluster: $(KIND) $(KUBECTL_BIN) ## Create the kind cluster (safe to re-run: an existing one is kept).
# grep without -q: under pipefail, grep -q quitting early can SIGPIPE kind and read as "no".
	@if $(KIND) get clusters 2>/dev/null | grep -x '$(CLUSTER_NAME)' >/dev/null; then \
	  echo "kind cluster $(CLUSTER_NAME) exists"; \
	else \
	  $(KIND) create cluster --name $(CLUSTER_NAME) --config $(KIND_CONFIG) --wait 180s; \
	fi
	$(KUBECTL) wait --for=condition=Ready node --all --timeout=180s

.PHONY: platform
platform: $(KUBECTL_BIN) $(HELM_BIN) ## Install Gateway API CRDs, Traefik, Argo Workflows, Prometheus and Grafana (pinned).
	@echo "Gateway API $(GATEWAY_API_VERSION) CRDs (commit $(GATEWAY_API_COMMIT))"
	$(KUBECTL) apply --server-side --force-conflicts \
	  -k "github.com/kubernetes-sigs/gateway-api/config/crd?ref=$(GATEWAY_API_COMMIT)"
# Traefik's Gateway comes next: its kinds must be served, not only created.
	$(KUBECTL) wait --for=condition=Established --timeout=120s \
	  crd/gatewayclasses.gateway.networking.k8s.io crd/gateways.gateway.networking.k8s.io \
	  crd/httproutes.gateway.networking.k8s.io crd/tlsroutes.gateway.networking.k8s.io
	$(HELM) upgrade --install traefik traefik --repo https://traefik.github.io/charts \
	  --version $(TRAEFIK_CHART_VERSION) -n traefik --create-namespace \
	  -f charts/platform/traefik.values.yaml --wait --timeout 10m
	$(HELM) upgrade --install argo-workflows argo-workflows --repo https://argoproj.github.io/argo-helm \
	  --version $(ARGO_WORKFLOWS_CHART_VERSION) -n argo --create-namespace \
	  -f charts/platform/argo-workflows.values.yaml --wait --timeout 10m
	$(HELM) upgrade --install prometheus prometheus --repo https://prometheus-community.github.io/helm-charts \
	  --version $(PROMETHEUS_CHART_VERSION) -n monitoring --create-namespace \
	  -f charts/platform/prometheus.values.yaml --wait --timeout 10m
	$(HELM) upgrade --install grafana grafana --repo https://grafana-community.github.io/helm-charts \
	  --version $(GRAFANA_CHART_VERSION) -n monitoring --create-namespace \
	  -f charts/platform/grafana.values.yaml --wait --timeout 10m
	$(KUBECTL) apply -f charts/platform/routes.yaml

.PHONY: images
images: install $(KIND) ## Build the images of IMAGE_TAG (unless built) and load them into kind.
	@test -n "$(IMAGE_TAG)" || { echo "error: no image tag: scripts/image-tag.sh needs git and this checkout" >&2; exit 1; }
	scripts/build-images.sh $(BIN)/bentoml $(SERVING_IMAGE) $(APP_IMAGE) $(IMAGE_TAG)
	scripts/kind-load.sh $(KIND) $(CLUSTER_NAME) $(SERVING_IMAGE) $(APP_IMAGE)

# --reset-then-reuse-values: the chart's defaults, then every value the release was given
# since (the loop's and `make canary`'s rollouts among them), then the new image tags: a
# second `make up` keeps an active canary and what stable serves. Without it, new --set
# values replace all the earlier ones (helm pkg/action/upgrade.go, reuseValues).
.PHONY: deploy
deploy: images $(HELM_BIN) $(KUBECTL_BIN) ## Install or upgrade the digitloop chart on this tree's images and wait until it is ready.
	$(HELM) upgrade --install $(RELEASE) charts/digitloop -n $(NAMESPACE) --create-namespace \
	  --reset-then-reuse-values \
	  --set images.serving.tag=$(IMAGE_TAG) --set images.app.tag=$(IMAGE_TAG) \
	  $(if $(DEPLOY_VALUES),-f $(DEPLOY_VALUES)) --timeout $(HELM_TIMEOUT)
	$(KUBECTL) -n $(NAMESPACE) wait --for=condition=Available deployment --all --timeout=$(HELM_TIMEOUT)

.PHONY: urls
urls: ## Print where everything is and the next commands.
	@echo "digitloop is up:"
	@echo "  sketchpad        http://localhost:8080"
	@echo "  prediction API   http://localhost:8081   (header X-Digitloop-Track: canary|stable pins a track)"
	@echo "  MLflow           http://localhost:8082"
	@echo "  Argo Workflows   http://localhost:8083"
	@echo "  Grafana          http://localhost:8084   (dashboard: digitloop serving)"
	@echo "next:"
	@echo "  make status                      pods, model versions, canary weight, last runs"
	@echo "  make loop                        run the loop now"
	@echo "  make canary VERSION=2 WEIGHT=20  send 20 % of the traffic to model version 2"
	@echo "  make promote | make rollback     end the canary"
	@echo "  make down                        delete the cluster"

.PHONY: up
up: ## Create the cluster and run everything on it (safe to run again).
	@$(MAKE) --no-print-directory preflight
	@$(MAKE) --no-print-directory tools
	@$(MAKE) --no-print-directory cluster
	@$(MAKE) --no-print-directory platform
	@$(MAKE) --no-print-directory deploy IMAGE_TAG=$(IMAGE_TAG)
	@$(MAKE) --no-print-directory urls

.PHONY: down
down: $(KIND) ## Delete the kind cluster and everything in it.
	$(KIND) delete cluster --name $(CLUSTER_NAME)

.PHONY: status
status: install tools ## Show pods, the model version of each track, the canary weight and the last runs.
	scripts/cluster-status.sh $(KUBECTL_BIN) $(ARGO_BIN) $(NAMESPACE) $(CONTEXT)
	@echo
	@echo "== serving ($(ROLLOUT))"
	$(ROLLOUT_ENV) $(BIN)/digitloop rollout status

.PHONY: argo-ui
argo-ui: $(KUBECTL_BIN) ## Open Argo's UI: http://localhost:8083, or a port-forward to :2746.
	@echo "Argo UI through the gateway: http://localhost:8083"
	@echo "forwarding http://localhost:2746 as well (Ctrl-C to stop)"
	$(KUBECTL) -n argo port-forward svc/argo-workflows-server 2746:2746

# canary/promote/rollback run `digitloop rollout`: the pipeline's own drivers and moves.
ROLLOUT_ENV = DIGITLOOP_ROLLOUT=$(ROLLOUT) DIGITLOOP_HELM_BINARY=$(HELM_BIN) \
  DIGITLOOP_HELM_RELEASE=$(RELEASE) DIGITLOOP_HELM_CHART=charts/digitloop \
  DIGITLOOP_NAMESPACE=$(NAMESPACE) DIGITLOOP_KUBE_CONTEXT=$(CONTEXT) \
  DIGITLOOP_MLFLOW_TRACKING_URI=$(MLFLOW_URL)

# Only the helm driver needs the helm CLI.
ROLLOUT_TOOLS = $(if $(filter helm,$(ROLLOUT)),$(HELM_BIN))

# Checked before anything is fetched or built.
ifneq ($(filter canary,$(MAKECMDGOALS)),)
ifeq ($(VERSION),)
$(error give the model version: make canary VERSION=4 WEIGHT=20)
endif
endif

.PHONY: canary
canary: install $(ROLLOUT_TOOLS) ## Run model VERSION as a canary with WEIGHT percent of the traffic.
	$(ROLLOUT_ENV) $(BIN)/digitloop rollout canary $(VERSION) --weight $(WEIGHT)

.PHONY: promote
promote: install $(ROLLOUT_TOOLS) ## Make the canary's version stable and end the canary.
	$(ROLLOUT_ENV) $(BIN)/digitloop rollout promote

.PHONY: rollback
rollback: install $(ROLLOUT_TOOLS) ## End the canary; stable keeps its version.
	$(ROLLOUT_ENV) $(BIN)/digitloop rollout rollback

.PHONY: loop
loop: $(ARGO_BIN) ## Submit a run of the loop now and follow it.
	$(ARGO) submit -n $(NAMESPACE) --from workflowtemplate/digitloop-loop --watch

.PHONY: logs
logs: $(KUBECTL_BIN) ## Show recent logs of COMPONENT (default serving-stable).
	$(KUBECTL) -n $(NAMESPACE) logs -l app.kubernetes.io/component=$(COMPONENT) \
	  --all-containers --prefix --tail=200 --max-log-requests=10

.PHONY: e2e
e2e: install ## On a machine with Docker: make up, then the end-to-end test, then make down.
	DIGITLOOP_E2E=1 $(BIN)/python -m pytest tests/e2e -m cluster -p no:cacheprovider $(E2E_ARGS)
