{{/* Chart name, truncated to the 63 characters a label allows. */}}
{{- define "onnx-serve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: the release name, with the chart's unless it already holds it. */}}
{{- define "onnx-serve.fullname" -}}
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

{{- define "onnx-serve.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "onnx-serve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "onnx-serve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "onnx-serve.labels" -}}
helm.sh/chart: {{ include "onnx-serve.chart" . }}
{{ include "onnx-serve.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "onnx-serve.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "onnx-serve.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image reference: the GPU flavour is tagged "<appVersion>-gpu" unless gpuTag says. */}}
{{- define "onnx-serve.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion }}
{{- if .Values.gpu.enabled }}
{{- $tag = .Values.image.gpuTag | default (printf "%s-gpu" $tag) }}
{{- end }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}

{{/* Whether several pods may run at once (and so share the model volume). */}}
{{- define "onnx-serve.scaledOut" -}}
{{- if or (gt (int .Values.replicaCount) 1) .Values.autoscaling.enabled }}true{{ end }}
{{- end }}

{{/* The Secret holding API keys, or "" when there is none. */}}
{{- define "onnx-serve.secretName" -}}
{{- if .Values.apiKeys.existingSecret }}
{{- .Values.apiKeys.existingSecret }}
{{- else if or .Values.apiKeys.management .Values.apiKeys.inference }}
{{- include "onnx-serve.fullname" . }}
{{- end }}
{{- end }}

{{/* Server settings as ONNX_SERVE_* variables, with what the chart decides filled in. */}}
{{- define "onnx-serve.settingsEnv" -}}
{{- $settings := deepCopy .Values.settings }}
{{- if and (not (hasKey $settings "repository_poll_seconds")) .Values.persistence.enabled (include "onnx-serve.scaledOut" .) }}
{{- $_ := set $settings "repository_poll_seconds" 10 }}
{{- end }}
{{- if .Values.gpu.enabled }}
{{- if not (hasKey $settings "require_accelerator") }}
{{- $_ := set $settings "require_accelerator" .Values.gpu.requireAccelerator }}
{{- end }}
{{- end }}
{{- with .Values.memoryBudget }}
{{- if .enabled }}
{{- if and (not (hasKey $settings "memory_budget")) .bytes }}
{{- $_ := set $settings "memory_budget" (toString .bytes) }}
{{- else if not (hasKey $settings "memory_budget") }}
{{- if not (and $.Values.resources $.Values.resources.limits $.Values.resources.limits.memory) }}
{{- fail "memoryBudget takes a share of the pod's memory limit: set resources.limits.memory, or memoryBudget.bytes" }}
{{- end }}
{{- $_ := set $settings "memory_budget" (printf "%v%%" .percent) }}
{{- end }}
{{- if and .gpu (not (hasKey $settings "gpu_memory_budget")) }}
{{- $_ := set $settings "gpu_memory_budget" (toString .gpu) }}
{{- end }}
{{- end }}
{{- end }}
{{- $_ := set $settings "host" "0.0.0.0" }}
{{- $_ := set $settings "port" 8000 }}
{{- $_ := set $settings "grpc_port" (ternary 8001 0 .Values.grpc.enabled) }}
{{- $_ := set $settings "model_repository" "/models" }}
{{- range $key := keys $settings | sortAlpha }}
{{- $value := get $settings $key }}
{{- /* Values arrive as float64: write whole numbers without an exponent. */}}
{{- if and (kindIs "float64" $value) (eq $value (float64 (int64 $value))) }}
{{- $value = int64 $value }}
{{- end }}
{{ printf "ONNX_SERVE_%s" (upper $key) }}: {{ $value | toString | quote }}
{{- end }}
{{- end }}
