{{- define "flotilla-agent.labels" -}}
app.kubernetes.io/name: flotilla-agent
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "flotilla-agent.validate" -}}
{{- /* The server grants impersonation (kubectl through Flotilla) to this service account by
name, and the agent keeps its credential in this namespace. */ -}}
{{- if ne .Release.Namespace "flotilla-system" -}}
{{- fail "install the agent in namespace flotilla-system (helm install … -n flotilla-system --create-namespace)" -}}
{{- end -}}
{{- if not .Values.server -}}
{{- fail "server is required: the Flotilla server's URL" -}}
{{- end -}}
{{- if not .Values.caChecksum -}}
{{- fail "caChecksum is required: the checksum of the server's CA, as flotilla server prints it" -}}
{{- end -}}
{{- if and (not .Values.token.value) (not .Values.token.existingSecret) -}}
{{- fail "token.value or token.existingSecret is required: a registration token (flotilla token create)" -}}
{{- end -}}
{{- if not (has .Values.onClusterDeleted (list "keep" "prune")) -}}
{{- fail "onClusterDeleted must be keep or prune" -}}
{{- end -}}
{{- end -}}
