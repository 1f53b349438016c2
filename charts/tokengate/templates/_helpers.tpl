{{/* Labels of every object: kustomize's (name, part-of) and Helm's own. */}}
{{- define "tokengate.labels" -}}
app.kubernetes.io/name: tokengate
app.kubernetes.io/part-of: tokengate
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end }}

{{/* metadata of a namespaced object named tokengate-ish: name, namespace, labels. */}}
{{- define "tokengate.metadata" -}}
name: {{ .name }}
namespace: {{ .root.Values.namespace.name }}
labels:
  {{- include "tokengate.labels" .root | nindent 2 }}
{{- end }}
