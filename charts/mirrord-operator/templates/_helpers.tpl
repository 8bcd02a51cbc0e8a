{{/* Chart name; also the app.kubernetes.io/name label. */}}
{{- define "mirrord-operator.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Name of every object: fullnameOverride, else the release name (plus the chart name unless it is in it). */}}
{{- define "mirrord-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "mirrord-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mirrord-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mirrord-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: webhook
{{- end }}

{{- define "mirrord-operator.labels" -}}
helm.sh/chart: {{ include "mirrord-operator.chart" . }}
{{ include "mirrord-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: mirrord-operator
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "mirrord-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mirrord-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The coordinator's own ServiceAccount (coordinator.serviceAccount). */}}
{{- define "mirrord-operator.coordinatorServiceAccountName" -}}
{{- if .Values.coordinator.serviceAccount.create }}
{{- default (printf "%s-coordinator" (include "mirrord-operator.fullname" .)) .Values.coordinator.serviceAccount.name }}
{{- else }}
{{- required "coordinator.serviceAccount.name is required when coordinator.serviceAccount.create is false" .Values.coordinator.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret holding the serving certificate (self-managed: written by the webhook; cert-manager: by cert-manager). */}}
{{- define "mirrord-operator.tlsSecretName" -}}
{{- printf "%s-tls" (include "mirrord-operator.fullname" .) }}
{{- end }}

{{/* cert-manager's serving Certificate; the webhook configuration's inject-ca-from points at it. */}}
{{- define "mirrord-operator.servingCertificateName" -}}
{{- printf "%s-serving" (include "mirrord-operator.fullname" .) }}
{{- end }}

{{- define "mirrord-operator.tlsMode" -}}
{{- if .Values.certManager.enabled }}cert-manager{{ else }}self-managed{{ end }}
{{- end }}

{{/* Operator image; imageRegistry replaces the registry. */}}
{{- define "mirrord-operator.image" -}}
{{- $registry := .Values.imageRegistry | default .Values.image.registry }}
{{- $tag := .Values.image.tag | default .Chart.AppVersion }}
{{- printf "%s/%s:%s" $registry .Values.image.repository $tag }}
{{- end }}

{{/* Agent image: each part defaults to the operator's (one binary); imageRegistry replaces the registry. */}}
{{- define "mirrord-operator.agentImage" -}}
{{- $a := .Values.agent.image }}
{{- $registry := .Values.imageRegistry | default $a.registry | default .Values.image.registry }}
{{- $repository := $a.repository | default .Values.image.repository }}
{{- $tag := $a.tag | default .Values.image.tag | default .Chart.AppVersion }}
{{- printf "%s/%s:%s" $registry $repository $tag }}
{{- end }}

{{/* Namespaces never injected: the built-in ones, the release namespace and webhook.excludeNamespaces (JSON list). */}}
{{- define "mirrord-operator.excludedNamespaces" -}}
{{- $ns := list "kube-system" "kube-public" "kube-node-lease" .Release.Namespace }}
{{- concat $ns .Values.webhook.excludeNamespaces | uniq | toJson }}
{{- end }}

{{/* Extra SANs of the self-managed certificate: tls.extraSans and the host of webhook.url (JSON list). */}}
{{- define "mirrord-operator.extraSans" -}}
{{- $sans := .Values.tls.extraSans }}
{{- if .Values.webhook.url }}
{{- $sans = append $sans (urlParse .Values.webhook.url).hostname }}
{{- end }}
{{- $sans | uniq | toJson }}
{{- end }}

{{/* clientConfig of both webhook entries: webhook.url, else the Service. Never a caBundle (see mutatingwebhook.yaml). */}}
{{- define "mirrord-operator.clientConfig" -}}
{{- if .Values.webhook.url }}
url: {{ .Values.webhook.url | quote }}
{{- else }}
service:
  name: {{ include "mirrord-operator.fullname" . }}
  namespace: {{ .Release.Namespace }}
  path: /mutate
  port: 443
{{- end }}
{{- end }}
