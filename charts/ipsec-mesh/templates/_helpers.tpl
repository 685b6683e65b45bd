{{- define "ipsec-mesh.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- /* As helm create's: fullnameOverride, else <release>-<name> unless the release already contains the name. */ -}}
{{- define "ipsec-mesh.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "ipsec-mesh.operatorName" -}}
{{- printf "%s-operator" (include "ipsec-mesh.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ipsec-mesh.labels" -}}
app.kubernetes.io/name: {{ include "ipsec-mesh.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ipsec-mesh
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "ipsec-mesh.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ipsec-mesh.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "ipsec-mesh.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "ipsec-mesh.sidecarImage" -}}
{{- $image := .Values.sidecar.image -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $image.repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $image.repository (default .Chart.AppVersion $image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "ipsec-mesh.webhookName" -}}
{{- include "ipsec-mesh.fullname" . -}}
{{- end -}}

{{- /* HA mode: ha.enabled or two replicas or more; kopf peering then elects the writer. */ -}}
{{- define "ipsec-mesh.ha" -}}
{{- if or .Values.ha.enabled (ge (int .Values.replicaCount) 2) -}}true{{- end -}}
{{- end -}}

{{- define "ipsec-mesh.replicas" -}}
{{- if include "ipsec-mesh.ha" . -}}{{ max 2 (int .Values.replicaCount) }}{{- else -}}{{ .Values.replicaCount }}{{- end -}}
{{- end -}}

{{- define "ipsec-mesh.peering" -}}
{{- if or .Values.peering.enabled (include "ipsec-mesh.ha" .) -}}true{{- end -}}
{{- end -}}

{{- define "ipsec-mesh.priorityClassName" -}}
{{- if .Values.priorityClassName -}}
{{- .Values.priorityClassName -}}
{{- else if include "ipsec-mesh.ha" . -}}
{{- include "ipsec-mesh.fullname" . -}}
{{- end -}}
{{- end -}}

{{- /* Namespaces no webhook ever sees: the release's own, the listed ones, and those labelled <namespaceLabel>=<namespaceExcludeValue>. */ -}}
{{- define "ipsec-mesh.webhookNamespaceExclusions" -}}
- key: kubernetes.io/metadata.name
  operator: NotIn
  values: {{ append .Values.webhook.excludeNamespaces .Release.Namespace | uniq | toJson }}
{{- end -}}
