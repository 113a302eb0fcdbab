{{/* The chart's name, or nameOverride: the app.kubernetes.io/name label and the suffix of
  the full name. */}}
{{- define "memwarden.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 50 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's full name: fullnameOverride if set; else the release name, suffixed
  with -<name> unless it has it. 50 characters at most: suffixes such as -webhook-tls
  must still fit a DNS label. */}}
{{- define "memwarden.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "memwarden.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "memwarden.selectorLabels" -}}
app.kubernetes.io/name: {{ include "memwarden.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "memwarden.labels" -}}
{{ include "memwarden.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "memwarden.serviceAccountName" -}}
{{- default (include "memwarden.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "memwarden.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Names shared by several templates (and by the operator, through its env). */}}
{{- define "memwarden.webhookConfigurationName" -}}{{ include "memwarden.fullname" . }}{{- end -}}
{{- define "memwarden.caSecretName" -}}{{ include "memwarden.fullname" . }}-webhook-ca{{- end -}}
{{- define "memwarden.tlsSecretName" -}}{{ include "memwarden.fullname" . }}-webhook-tls{{- end -}}
{{- define "memwarden.tokenSecretName" -}}{{ include "memwarden.fullname" . }}-alertmanager{{- end -}}
{{- define "memwarden.claimName" -}}
{{- default (printf "%s-evidence" (include "memwarden.fullname" .)) .Values.evidence.existingClaim -}}
{{- end -}}
{{- define "memwarden.selfSigned" -}}{{ eq .Values.webhook.certs.mode "selfSigned" }}{{- end -}}

{{/* Namespaces never sent to the webhook: kube-system, the release's, and the extra ones. */}}
{{- define "memwarden.excludedNamespaces" -}}
{{- concat (list "kube-system" .Release.Namespace) .Values.namespaces.exclude | uniq | sortAlpha | toJson -}}
{{- end -}}

{{- define "memwarden.validate" -}}
{{- $self := .Values.webhook.certs.selfSigned -}}
{{- if ge (int $self.renewBeforeDays) (int $self.validityDays) -}}
{{- fail (printf "webhook.certs.selfSigned.renewBeforeDays (%v) must be less than validityDays (%v)" $self.renewBeforeDays $self.validityDays) -}}
{{- end -}}
{{- with .Values.serviceMonitor.scrapeTimeout -}}
{{- if gt (int (include "memwarden.seconds" .)) (int (include "memwarden.seconds" $.Values.serviceMonitor.interval)) -}}
{{- fail (printf "serviceMonitor.scrapeTimeout (%s) must not exceed serviceMonitor.interval (%s)" . $.Values.serviceMonitor.interval) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Seconds in a duration such as 10m or 1h30m (no ms: the schema allows none here). */}}
{{- define "memwarden.seconds" -}}
{{- $units := dict "s" 1 "m" 60 "h" 3600 -}}
{{- $total := 0 -}}
{{- range regexFindAll "[0-9]+[smh]" . -1 -}}
{{- $number := regexFind "^[0-9]+" . -}}
{{- $total = add $total (mul ($number | int) (get $units (trimPrefix $number .))) -}}
{{- end -}}
{{- $total -}}
{{- end -}}

{{/* rbac.py's "watched" rules: what memwarden may do to tenants' pods and namespaces. */}}
{{- define "memwarden.watchedRules" -}}
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: [namespaces]
  verbs: [get]
- apiGroups: [""]
  resources: [pods/ephemeralcontainers]
  verbs: [patch]
- apiGroups: [""]
  resources: [pods/resize]
  verbs: [patch]
- apiGroups: [""]
  resources: [pods/eviction]
  verbs: [create]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [list]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end -}}

{{/* The debug container's image (by default the operator's repository + "-toolbox", same
  tag: `make image` builds both), and the evidence API's host:port as debug containers reach
  it: the operator gets both through its env (deployment.yaml), and the operator-reach
  policy admits only that image, uploading only there. */}}
{{- define "memwarden.toolboxImage" -}}
{{- $default := printf "%s-toolbox:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- default $default .Values.capture.toolboxImage -}}
{{- end -}}
{{- define "memwarden.evidenceAuthority" -}}
{{- printf "%s.%s.svc:%v" (include "memwarden.fullname" .) .Release.Namespace .Values.http.port -}}
{{- end -}}
