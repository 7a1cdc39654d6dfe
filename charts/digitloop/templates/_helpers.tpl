{{/*
digitloop.name: the chart name, or nameOverride; a DNS label.
*/}}
{{- define "digitloop.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
digitloop.fullname: the release's base name. "digitloop" for the release "digitloop", so the
default names are digitloop-config, digitloop-secrets, digitloop-workflow...
*/}}
{{- define "digitloop.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
digitloop.componentName: "<fullname>-<component>", for a component passed as
(dict "root" $ "component" "serving-stable").
*/}}
{{- define "digitloop.componentName" -}}
{{- printf "%s-%s" (include "digitloop.fullname" .root) .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
digitloop.chart: chart name and version for the helm.sh/chart label.
*/}}
{{- define "digitloop.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
digitloop.labels: the common labels plus the component's, for (dict "root" $ "component" "x").
*/}}
{{- define "digitloop.labels" -}}
helm.sh/chart: {{ include "digitloop.chart" .root }}
{{ include "digitloop.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: digitloop
{{- end }}

{{/*
digitloop.selectorLabels: the labels a component's selectors use.
*/}}
{{- define "digitloop.selectorLabels" -}}
app.kubernetes.io/name: {{ include "digitloop.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
digitloop.image: "repository:tag" of one of .Values.images, for (dict "root" $ "image" "app").
*/}}
{{- define "digitloop.image" -}}
{{- $image := index .root.Values.images .image }}
{{- printf "%s:%s" $image.repository $image.tag }}
{{- end }}

{{/*
digitloop.secretsName, digitloop.configName, digitloop.minioSecretName,
digitloop.workflowServiceAccount, digitloop.rolloutServiceAccount, digitloop.routingName:
names other objects and the workflow refer to.
*/}}
{{- define "digitloop.secretsName" -}}
{{- include "digitloop.componentName" (dict "root" . "component" "secrets") }}
{{- end }}
{{- define "digitloop.configName" -}}
{{- include "digitloop.componentName" (dict "root" . "component" "config") }}
{{- end }}
{{- define "digitloop.minioSecretName" -}}
{{- if .Values.minio.enabled }}
{{- include "digitloop.componentName" (dict "root" . "component" "minio") }}
{{- else }}
{{- required "s3.external.existingSecret is required when minio.enabled=false" .Values.s3.external.existingSecret }}
{{- end }}
{{- end }}
{{- define "digitloop.workflowServiceAccount" -}}
{{- include "digitloop.componentName" (dict "root" . "component" "workflow") }}
{{- end }}
{{- define "digitloop.rolloutServiceAccount" -}}
{{- include "digitloop.componentName" (dict "root" . "component" "rollout") }}
{{- end }}
{{- define "digitloop.routingName" -}}
{{- include "digitloop.componentName" (dict "root" . "component" "routing") }}
{{- end }}
{{- define "digitloop.appServiceAccount" -}}
{{- include "digitloop.componentName" (dict "root" . "component" "app") }}
{{- end }}

{{/*
digitloop.s3Endpoint: host:port of the object store (no scheme), as DIGITLOOP_S3_ENDPOINT wants.
*/}}
{{- define "digitloop.s3Endpoint" -}}
{{- if .Values.minio.enabled }}
{{- printf "%s.%s.svc.cluster.local:9000" (include "digitloop.componentName" (dict "root" . "component" "minio")) .Release.Namespace }}
{{- else }}
{{- required "s3.external.endpoint is required when minio.enabled=false" .Values.s3.external.endpoint }}
{{- end }}
{{- end }}

{{/*
digitloop.s3Url: the object store as a URL, for MLflow's MLFLOW_S3_ENDPOINT_URL.
*/}}
{{- define "digitloop.s3Url" -}}
{{- $secure := and (not .Values.minio.enabled) .Values.s3.external.secure }}
{{- printf "%s://%s" (ternary "https" "http" $secure) (include "digitloop.s3Endpoint" .) }}
{{- end }}

{{/*
digitloop.s3Secure: "true" or "false" (DIGITLOOP_S3_SECURE).
*/}}
{{- define "digitloop.s3Secure" -}}
{{- and (not .Values.minio.enabled) .Values.s3.external.secure | toString }}
{{- end }}

{{/*
digitloop.trackingUri: the MLflow tracking URI every component uses.
*/}}
{{- define "digitloop.trackingUri" -}}
{{- if .Values.mlflow.enabled }}
{{- printf "http://%s.%s.svc.cluster.local:5000" (include "digitloop.componentName" (dict "root" . "component" "mlflow")) .Release.Namespace }}
{{- else }}
{{- required "mlflow.externalTrackingUri is required when mlflow.enabled=false" .Values.mlflow.externalTrackingUri }}
{{- end }}
{{- end }}

{{/*
digitloop.uiServiceUrl: where the UI sends predictions: ui.serviceUrl, else the gateway, else
(kserve backend) the InferenceService's in-cluster URL.
*/}}
{{- define "digitloop.uiServiceUrl" -}}
{{- if .Values.ui.serviceUrl }}
{{- .Values.ui.serviceUrl }}
{{- else if eq .Values.serving.backend "kserve" }}
{{- printf "http://%s.%s.svc.cluster.local" (include "digitloop.componentName" (dict "root" . "component" "serving")) .Release.Namespace }}
{{- else }}
{{- .Values.gateway.serviceUrl }}
{{- end }}
{{- end }}

{{/*
digitloop.generated: a value kept across upgrades. Returns, in order: the given value, the value
already in the installed Secret (lookup; empty during `helm template`), or 32 random characters.
Called as (dict "root" $ "secret" NAME "key" KEY "given" VALUE). The result is cached per
secret/key in the values, so two objects rendered from one install see the same random value.
*/}}
{{- define "digitloop.generated" -}}
{{- $cache := .root.Values._generated | default dict }}
{{- $id := printf "%s/%s" .secret .key }}
{{- if not (hasKey $cache $id) }}
{{- $value := .given }}
{{- if not $value }}
{{- $existing := lookup "v1" "Secret" .root.Release.Namespace .secret }}
{{- if and $existing $existing.data (hasKey $existing.data .key) }}
{{- $value = index $existing.data .key | b64dec }}
{{- else }}
{{- $value = randAlphaNum 32 }}
{{- end }}
{{- end }}
{{- $_ := set $cache $id $value }}
{{- $_ := set .root.Values "_generated" $cache }}
{{- end }}
{{- index $cache $id }}
{{- end }}

{{/*
digitloop.podSecurityContext: non-root, seccomp RuntimeDefault, for a uid.
*/}}
{{- define "digitloop.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ . }}
runAsGroup: {{ . }}
fsGroup: {{ . }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
digitloop.containerSecurityContext: no privilege escalation, no capabilities, read-only root.
*/}}
{{- define "digitloop.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
digitloop.trackHeader: the request header that pins a request to a track (`stable` or
`canary`). The service fixes it (contracts/api.py TRACK_HEADER; tests/chart checks they agree),
so it is no value.
*/}}
{{- define "digitloop.trackHeader" -}}
X-Digitloop-Track
{{- end }}

{{/*
digitloop.servingEnv: the environment of a serving container for (dict "root" $ "track" T),
with "knative" true for KServe's predictor. Each pod serves one track; secrets come from
Secrets only.
*/}}
{{- define "digitloop.servingEnv" -}}
{{- $root := .root }}
- name: DIGITLOOP_ONLY_TRACK
  value: {{ .track | quote }}
- name: DIGITLOOP_STABLE_MODEL
  value: {{ $root.Values.serving.stable.modelVersion | toString | quote }}
{{- if or $root.Values.serving.canary.enabled (eq .track "canary") }}
- name: DIGITLOOP_CANARY_MODEL
  value: {{ required "serving.canary.modelVersion is required when the canary is enabled" $root.Values.serving.canary.modelVersion | toString | quote }}
{{- end }}
- name: DIGITLOOP_WORKERS
  value: {{ $root.Values.serving.workers | quote }}
- name: OMP_NUM_THREADS
  value: "1"
- name: DIGITLOOP_DATA_DIR
  value: /data/digitloop
- name: HOME
  value: /tmp
- name: BENTOML_HOME
  value: /tmp/bentoml
{{- if not .knative }}
{{- /* Knative refuses fieldRef by default; there the host name, the default, is the pod's. */}}
- name: DIGITLOOP_POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- end }}
- name: DIGITLOOP_MLFLOW_TRACKING_URI
  value: {{ include "digitloop.trackingUri" $root | quote }}
- name: DIGITLOOP_S3_ENDPOINT
  value: {{ include "digitloop.s3Endpoint" $root | quote }}
- name: DIGITLOOP_S3_SECURE
  value: {{ include "digitloop.s3Secure" $root | quote }}
- name: DIGITLOOP_S3_BUCKET
  value: {{ $root.Values.s3.bucket | quote }}
- name: DIGITLOOP_S3_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "digitloop.minioSecretName" $root }}
      key: accessKey
- name: DIGITLOOP_S3_SECRET_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "digitloop.minioSecretName" $root }}
      key: secretKey
- name: DIGITLOOP_PREDICTION_ID_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ include "digitloop.secretsName" $root }}
      key: DIGITLOOP_PREDICTION_ID_SECRET
- name: DIGITLOOP_ADMIN_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "digitloop.secretsName" $root }}
      key: DIGITLOOP_ADMIN_TOKEN
{{- end }}

{{/*
digitloop.servingPod: the pod template spec of a serving track, for (dict "root" $ "track" T).
BentoML's image runs as its `bentoml` user (uid 1034); its home and the data dir are emptyDirs.
*/}}
{{- define "digitloop.servingPod" -}}
{{- $root := .root }}
{{- $values := index $root.Values.serving .track }}
metadata:
  labels:
    {{- include "digitloop.selectorLabels" (dict "root" $root "component" (printf "serving-%s" .track)) | nindent 4 }}
    app.kubernetes.io/part-of: digitloop
    digitloop.dev/serving: "true"
    digitloop.dev/track: {{ .track }}
  {{- if $root.Values.monitoring.enabled }}
  annotations:
    digitloop.dev/scrape: "true"
    digitloop.dev/metrics-port: "3000"
    digitloop.dev/metrics-path: /metrics
  {{- end }}
spec:
  serviceAccountName: {{ include "digitloop.appServiceAccount" $root }}
  automountServiceAccountToken: false
  securityContext:
    {{- include "digitloop.podSecurityContext" 1034 | nindent 4 }}
  terminationGracePeriodSeconds: 30
  containers:
    - name: serving
      image: {{ include "digitloop.image" (dict "root" $root "image" "serving") }}
      imagePullPolicy: {{ $root.Values.images.serving.pullPolicy }}
      ports:
        - name: http
          containerPort: 3000
          protocol: TCP
      env:
        {{- include "digitloop.servingEnv" . | nindent 8 }}
      readinessProbe:
        httpGet: {path: /readyz, port: http}
        periodSeconds: 5
        timeoutSeconds: 3
        failureThreshold: 3
      livenessProbe:
        httpGet: {path: /livez, port: http}
        initialDelaySeconds: 20
        periodSeconds: 10
        timeoutSeconds: 5
        failureThreshold: 6
      startupProbe:
        httpGet: {path: /livez, port: http}
        periodSeconds: 5
        failureThreshold: 60
      resources:
        {{- toYaml $values.resources | nindent 8 }}
      securityContext:
        {{- include "digitloop.containerSecurityContext" . | nindent 8 }}
      volumeMounts:
        - {name: tmp, mountPath: /tmp}
        - {name: data, mountPath: /data/digitloop}
  volumes:
    - name: tmp
      emptyDir: {sizeLimit: 2Gi}
    - name: data
      emptyDir: {sizeLimit: 1Gi}
{{- end }}
