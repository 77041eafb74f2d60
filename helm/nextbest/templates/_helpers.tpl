{{/* The chart's name. */}}
{{- define "nextbest.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name (max 63 characters; leaves room for component suffixes). */}}
{{- define "nextbest.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "nextbest.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "nextbest.labels" -}}
helm.sh/chart: {{ include "nextbest.chart" . }}
app.kubernetes.io/name: {{ include "nextbest.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Selector labels of one component: (dict "ctx" $ "component" "serve"). */}}
{{- define "nextbest.selectorLabels" -}}
app.kubernetes.io/name: {{ include "nextbest.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "nextbest.componentLabels" -}}
{{ include "nextbest.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "nextbest.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "nextbest.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "nextbest.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The optional configuration overrides: setting name -> file name. */}}
{{- define "nextbest.configFiles" -}}
segments: NEXTBEST_SEGMENTS
actions: NEXTBEST_ACTIONS
traits: NEXTBEST_TRAITS
recommendations: NEXTBEST_RECOMMENDATIONS
{{- end }}

{{/* A checksum of everything mounted from values, so pods restart when it changes. */}}
{{- define "nextbest.configChecksum" -}}
{{- list .Values.config .Values.deliver.webhooks | toJson | sha256sum }}
{{- end }}

{{/* Environment shared by every component. */}}
{{- define "nextbest.env" -}}
- name: NEXTBEST_HOME
  value: /var/lib/nextbest
- name: NEXTBEST_LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
- name: NEXTBEST_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.existingSecret }}
      key: {{ .Values.redis.urlKey }}
{{- if .Values.redis.cluster }}
- name: NEXTBEST_REDIS_CLUSTER
  value: "1"
{{- end }}
- name: NEXTBEST_KAFKA_BROKERS
  valueFrom:
    secretKeyRef:
      name: {{ .Values.kafka.existingSecret }}
      key: {{ .Values.kafka.brokersKey }}
- name: NEXTBEST_IDENTITY_SALT
  valueFrom:
    secretKeyRef:
      name: {{ .Values.identitySalt.existingSecret }}
      key: {{ .Values.identitySalt.key }}
{{- range $key, $setting := include "nextbest.configFiles" . | fromYaml }}
{{- if index $.Values.config $key }}
- name: {{ $setting }}
  value: /etc/nextbest/{{ $key }}/{{ $key }}.yaml
{{- end }}
{{- end }}
{{- range $name, $value := .Values.env }}
- name: {{ $name }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end }}

{{/* Volumes shared by every component: scratch space and the configuration overrides. */}}
{{- define "nextbest.volumes" -}}
- name: tmp
  emptyDir: {}
{{- range $key, $setting := include "nextbest.configFiles" . | fromYaml }}
{{- if index $.Values.config $key }}
- name: config-{{ $key }}
  configMap:
    name: {{ include "nextbest.fullname" $ }}-{{ $key }}
{{- end }}
{{- end }}
{{- end }}

{{- define "nextbest.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- range $key, $setting := include "nextbest.configFiles" . | fromYaml }}
{{- if index $.Values.config $key }}
- name: config-{{ $key }}
  mountPath: /etc/nextbest/{{ $key }}
  readOnly: true
{{- end }}
{{- end }}
{{- end }}

{{/* The Bytewax peers: one address per dataflow pod, through the headless Service. */}}
{{- define "nextbest.dataflowAddresses" -}}
{{- $full := include "nextbest.fullname" . }}
{{- $addresses := list }}
{{- range $i := until (int .Values.dataflow.replicas) }}
{{- $addresses = append $addresses (printf "%s-dataflow-%d.%s-dataflow.%s.svc:%d" $full $i $full $.Release.Namespace (int $.Values.dataflow.clusterPort)) }}
{{- end }}
{{- join "," $addresses }}
{{- end }}
