{{- define "hookline.labels" -}}
app.kubernetes.io/part-of: hookline
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selectors. Object and Pod labels are hookline.labels (which has the instance) plus
app.kubernetes.io/name, so no label key is written twice. */}}
{{- define "hookline.controllerSelector" -}}
app.kubernetes.io/name: hookline-controller
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "hookline.apiSelector" -}}
app.kubernetes.io/name: hookline-api
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "hookline.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
