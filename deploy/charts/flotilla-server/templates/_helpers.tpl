{{- define "flotilla-server.name" -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "flotilla-server.labels" -}}
app.kubernetes.io/name: flotilla-server
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "flotilla-server.selector" -}}
app.kubernetes.io/name: flotilla-server
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "flotilla-server.validate" -}}
{{- if not (has .Values.storage (list "sqlite" "postgres")) -}}
{{- fail (printf "storage must be sqlite or postgres, not %q" .Values.storage) -}}
{{- end -}}
{{- if and (eq .Values.storage "sqlite") (ne (int .Values.replicas) 1) -}}
{{- fail "storage: sqlite runs exactly one replica (the database is a file on one volume)" -}}
{{- end -}}
{{- if and (eq .Values.storage "postgres") (not .Values.postgres.existingSecret) -}}
{{- fail "storage: postgres needs postgres.existingSecret, a Secret holding the database URL" -}}
{{- end -}}
{{- if and (eq .Values.storage "postgres") (gt (int .Values.replicas) 1) (not .Values.tls.existingSecret) -}}
{{- fail "replicas > 1 needs tls.existingSecret: every replica must present the same CA, which agents pin" -}}
{{- end -}}
{{- if and (eq .Values.storage "postgres") (gt (int .Values.replicas) 1) (not .Values.kek.existingSecret) -}}
{{- fail "replicas > 1 needs kek.existingSecret: every replica must hold the same key-encryption key" -}}
{{- end -}}
{{- end -}}
