{{/* Names: <release>-kiln, or <release> when it already contains "kiln". */}}
{{- define "kiln.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "kiln.operator" -}}{{ include "kiln.fullname" . }}-operator{{- end -}}

{{- define "kiln.gateway" -}}{{ include "kiln.fullname" . }}-gateway{{- end -}}

{{- define "kiln.gatewayServiceAccountName" -}}
{{- if .Values.gateway.serviceAccount.create -}}
{{- default (include "kiln.gateway" .) .Values.gateway.serviceAccount.name -}}
{{- else -}}
{{- required "gateway.serviceAccount.name is required when gateway.serviceAccount.create is false" .Values.gateway.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "kiln.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "kiln.operator" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "kiln.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: kiln
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kiln
{{- end -}}

{{- define "kiln.selectorLabels" -}}
app.kubernetes.io/name: kiln
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "kiln.gatewaySelectorLabels" -}}
app.kubernetes.io/name: kiln
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end -}}

{{/* image reference from {repository, tag, digest}: digest wins, tag defaults to appVersion. */}}
{{- define "kiln.image" -}}
{{- $img := index . 0 -}}{{- $root := index . 1 -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $img.repository $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $img.repository (default $root.Chart.AppVersion $img.tag) -}}
{{- end -}}
{{- end -}}

{{/* The Secret holding the operator's S3 credentials, or "" when there is none. */}}
{{- define "kiln.s3SecretName" -}}
{{- if .Values.s3.existingSecret -}}
{{- .Values.s3.existingSecret -}}
{{- else if or .Values.s3.accessKeyId .Values.s3.secretAccessKey -}}
{{- include "kiln.fullname" . }}-s3
{{- end -}}
{{- end -}}

{{- define "kiln.seaweedfs" -}}{{ include "kiln.fullname" . }}-seaweedfs{{- end -}}

{{/* The S3 endpoint: the value, or the bundled SeaweedFS when it is enabled. */}}
{{- define "kiln.s3Endpoint" -}}
{{- if .Values.s3.endpoint -}}
{{- .Values.s3.endpoint -}}
{{- else if .Values.seaweedfs.enabled -}}
{{- printf "http://%s.%s.svc:8333" (include "kiln.seaweedfs" .) .Release.Namespace -}}
{{- end -}}
{{- end -}}

{{/* Cross-field rules that JSON schema cannot say clearly. */}}
{{- define "kiln.validate" -}}
{{- if and .Values.s3.existingSecret (or .Values.s3.accessKeyId .Values.s3.secretAccessKey) -}}
{{- fail "s3: set either existingSecret or accessKeyId/secretAccessKey, not both" -}}
{{- end -}}
{{- if and (or .Values.s3.accessKeyId .Values.s3.secretAccessKey) (not (and .Values.s3.accessKeyId .Values.s3.secretAccessKey)) -}}
{{- fail "s3: accessKeyId and secretAccessKey go together" -}}
{{- end -}}
{{- if and .Values.seaweedfs.enabled (not .Values.s3.accessKeyId) -}}
{{- fail "seaweedfs.enabled needs s3.accessKeyId and s3.secretAccessKey (the credentials it is set up with)" -}}
{{- end -}}
{{- end -}}

{{/* S3 environment shared by the operator and the bucket Job. */}}
{{- define "kiln.s3Env" -}}
{{- with (include "kiln.s3Endpoint" .) }}
- name: KILN_S3_ENDPOINT
  value: {{ . | quote }}
{{- end }}
- name: AWS_REGION
  value: {{ .Values.s3.region | quote }}
- name: KILN_BUCKET
  value: {{ .Values.s3.bucket | quote }}
{{- end -}}

{{- define "kiln.s3EnvFrom" -}}
{{- with (include "kiln.s3SecretName" .) }}
envFrom:
  - secretRef:
      name: {{ . }}
{{- end }}
{{- end -}}
