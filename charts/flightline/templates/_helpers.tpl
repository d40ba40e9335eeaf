{{/* The chart name, or nameOverride. */}}
{{- define "flightline.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name of the release's objects: fullnameOverride, else <release>-<chart> (just <release>
when it already contains the chart name), at most 63 characters.
*/}}
{{- define "flightline.fullname" -}}
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

{{/* Name of the cluster-scoped objects: the full name, prefixed with the namespace so that two
releases of the same name in different namespaces do not collide. */}}
{{- define "flightline.clusterName" -}}
{{- printf "%s-%s" .Release.Namespace (include "flightline.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* chart label: name-version */}}
{{- define "flightline.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select the operator's pods. */}}
{{- define "flightline.selectorLabels" -}}
app.kubernetes.io/name: {{ include "flightline.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* Standard labels of every object. */}}
{{- define "flightline.labels" -}}
helm.sh/chart: {{ include "flightline.chart" . }}
{{ include "flightline.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: flightline
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The operator's ServiceAccount. */}}
{{- define "flightline.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "flightline.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The operator's image: repository@digest, else repository:tag (default appVersion). */}}
{{- define "flightline.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Default image of a pipeline component: pipelineImages.<component>, else the published one. */}}
{{- define "flightline.pipelineImage" -}}
{{- $ctx := index . 0 }}
{{- $component := index . 1 }}
{{- default (printf "ghcr.io/flightline/flightline-%s:%s" $component $ctx.Chart.AppVersion) (index $ctx.Values.pipelineImages $component) }}
{{- end }}

{{/* Namespace of the fleet and operator dashboards. */}}
{{- define "flightline.dashboardNamespace" -}}
{{- default .Release.Namespace .Values.dashboards.namespace }}
{{- end }}

{{/* Whether the prometheus-operator API is served (or named with --api-versions). */}}
{{- define "flightline.hasMonitoringApi" -}}
{{- if .Capabilities.APIVersions.Has "monitoring.coreos.com/v1" }}true{{ end }}
{{- end }}

{{/* The fleet and operator dashboards the operator applies at start-up, by name. A server-side
apply that creates an object is authorized as `patch` and `create`, with the object's name (so
resourceNames restricts the create too). */}}
{{- define "flightline.dashboardRule" -}}
# The fleet and operator dashboards, applied server-side by the operator at start-up.
- apiGroups: [""]
  resources: [configmaps]
  resourceNames: [flightline-fleet-dashboard, flightline-operator-dashboard]
  verbs: [get, create, patch]
{{- end }}
