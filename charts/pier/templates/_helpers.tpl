{{/*
Names. The release's full name is "<release>-pier", or just "<release>" when
the release name already contains the chart name ("pier" → "pier").
*/}}
{{- define "pier.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "pier.fullname" -}}
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

{{- define "pier.controller.fullname" -}}
{{- printf "%s-controller" (include "pier.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "pier.dataplane.fullname" -}}
{{- printf "%s-dataplane" (include "pier.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels every object carries. */}}
{{- define "pier.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "pier.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: pier
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component ("controller" or "dataplane"). */}}
{{- define "pier.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pier.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "pier.componentLabels" -}}
{{ include "pier.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "pier.controller.serviceAccountName" -}}
{{- if .Values.controller.serviceAccount.create }}
{{- default (include "pier.controller.fullname" .) .Values.controller.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.controller.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "pier.dataplane.serviceAccountName" -}}
{{- if .Values.dataplane.serviceAccount.create }}
{{- default (include "pier.dataplane.fullname" .) .Values.dataplane.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.dataplane.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image both Deployments run (one image holds both binaries). */}}
{{- define "pier.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/*
The snapshot channel. The controller Service's DNS name is what the
dataplanes dial and what the certificate is issued for.
*/}}
{{- define "pier.snapshot.host" -}}
{{- printf "%s.%s.svc" (include "pier.controller.fullname" .) .Release.Namespace }}
{{- end }}

{{- define "pier.snapshot.dnsNames" -}}
{{- $svc := include "pier.controller.fullname" . }}
{{- $ns := .Release.Namespace }}
{{- list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.%s" $svc $ns .Values.clusterDomain) | toJson }}
{{- end }}

{{/* Secret holding tls.crt, tls.key and ca.crt of the snapshot service. */}}
{{- define "pier.snapshot.tlsSecretName" -}}
{{- if eq .Values.snapshot.tls.source "existingSecret" }}
{{- .Values.snapshot.tls.existingSecret }}
{{- else }}
{{- printf "%s-snapshot-tls" (include "pier.fullname" .) }}
{{- end }}
{{- end }}

{{/* Secret holding the bearer token ("token") of the snapshot service. */}}
{{- define "pier.snapshot.tokenSecretName" -}}
{{- default (printf "%s-snapshot-token" (include "pier.fullname" .)) .Values.snapshot.token.existingSecret }}
{{- end }}

{{/* Namespaces the controller watches; empty: all (cluster-wide RBAC). */}}
{{- define "pier.watchNamespaces" -}}
{{- join "," .Values.controller.watchNamespaces }}
{{- end }}

{{/* The controller's rules on routes, Events and backends. */}}
{{- define "pier.rbac.routeRules" -}}
# Routes: read them, write their status (server-side apply).
- apiGroups: ["pier.dev"]
  resources: ["staticroutes", "proxyroutes"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["pier.dev"]
  resources: ["staticroutes/status", "proxyroutes/status"]
  verbs: ["patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- if .Values.ingress.enabled }}
# Ingresses: read them, write their status.loadBalancer.
- apiGroups: ["networking.k8s.io"]
  resources: ["ingresses"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["networking.k8s.io"]
  resources: ["ingresses/status"]
  verbs: ["patch"]
{{- end }}
{{- if .Values.gateway.enabled }}
# Gateway API: read Gateways, HTTPRoutes and ReferenceGrants, write the
# status of the first two.
- apiGroups: ["gateway.networking.k8s.io"]
  resources: ["gateways", "httproutes", "referencegrants"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["gateway.networking.k8s.io"]
  resources: ["gateways/status", "httproutes/status"]
  verbs: ["patch"]
{{- end }}
{{- if .Values.rbac.backends }}
# For ProxyRoute backends: a Service's ports and its endpoints.
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["discovery.k8s.io"]
  resources: ["endpointslices"]
  verbs: ["get", "list", "watch"]
{{- end }}
{{- end }}

{{- /* Whole seconds, rounded up, of a duration such as 100ms, 15s, 5m, 1h. */ -}}
{{- define "pier.durationSeconds" -}}
{{- $d := toString . -}}
{{- if hasSuffix "ms" $d -}}
{{- div (add (trimSuffix "ms" $d | int64) 999) 1000 -}}
{{- else if hasSuffix "h" $d -}}
{{- mul (trimSuffix "h" $d | int64) 3600 -}}
{{- else if hasSuffix "m" $d -}}
{{- mul (trimSuffix "m" $d | int64) 60 -}}
{{- else -}}
{{- trimSuffix "s" $d | int64 -}}
{{- end -}}
{{- end }}
