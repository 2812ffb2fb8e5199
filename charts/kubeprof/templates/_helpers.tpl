{{- define "kubeprof.fullname" -}}
{{- default .Release.Name .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every object: the recommended app.kubernetes.io set plus commonLabels. */}}
{{- define "kubeprof.labels" -}}
app.kubernetes.io/name: kubeprof
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Pod selector of one component; call with (list . "operator"). */}}
{{- define "kubeprof.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* "\n  annotations: ..." for an object's metadata when commonAnnotations has any, else
nothing; use as `{{- include "kubeprof.annotations" . }}` (or `$` inside range). */}}
{{- define "kubeprof.annotations" -}}
{{- with .Values.commonAnnotations }}
  annotations: {{- toYaml . | nindent 4 }}
{{- end }}
{{- end -}}

{{- define "kubeprof.image" -}}
{{ .Values.image.repository }}:{{ default .Chart.AppVersion .Values.image.tag }}
{{- end -}}

{{/* policy/v1 from Kubernetes 1.21; policy/v1beta1 before (the chart supports 1.20). */}}
{{- define "kubeprof.pdbApiVersion" -}}
{{- if semverCompare ">=1.21-0" .Capabilities.KubeVersion.Version -}}
policy/v1
{{- else -}}
policy/v1beta1
{{- end -}}
{{- end -}}
