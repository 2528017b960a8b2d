{{/*
Names, labels and shared snippets. Every object is "<fullname>-<component>" and carries the
app.kubernetes.io labels; selectors use name + instance + component only, since the others change
on upgrade and a Deployment's selector cannot.
*/}}

{{- define "stratolab.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "stratolab.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" -}}
{{- end -}}

{{/* Selector labels; call with (dict "root" $ "component" "hub"). */}}
{{- define "stratolab.selectorLabels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Every label; call with (dict "root" $ "component" "hub"). */}}
{{- define "stratolab.labels" -}}
{{ include "stratolab.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ include "stratolab.chart" .root }}
{{- end -}}

{{/* Namespaces: user pods, Knative Services and Jobs may live apart from the release. */}}
{{- define "stratolab.singleuserNamespace" -}}
{{- .Values.singleuser.namespace | default .Release.Namespace -}}
{{- end -}}
{{- define "stratolab.functionsNamespace" -}}
{{- .Values.functions.namespace | default .Release.Namespace -}}
{{- end -}}
{{- define "stratolab.jobsNamespace" -}}
{{- .Values.scheduler.namespace | default .Release.Namespace -}}
{{- end -}}
{{/* Argo Workflows of pipelines: next to the notebook runs unless pipelines.argo.namespace says otherwise. */}}
{{- define "stratolab.pipelinesNamespace" -}}
{{- .Values.pipelines.argo.namespace | default (include "stratolab.jobsNamespace" .) -}}
{{- end -}}
{{/* "true" when the usage service meters the pipeline steps' pods of Argo Workflows (and stops their runs
over a budget through the pipelines service): pipelines on the argo backend; empty otherwise. */}}
{{- define "stratolab.usageReadsPipelineSteps" -}}
{{- if and .Values.usage.enabled .Values.pipelines.enabled (eq .Values.pipelines.backend "argo") }}true{{ end -}}
{{- end -}}

{{/* Object names. */}}
{{- define "stratolab.secretName" -}}{{ include "stratolab.fullname" . }}-secret{{- end -}}
{{- define "stratolab.hubName" -}}{{ include "stratolab.fullname" . }}-hub{{- end -}}
{{- define "stratolab.proxyPublicName" -}}{{ include "stratolab.fullname" . }}-proxy-public{{- end -}}
{{- define "stratolab.proxyApiName" -}}{{ include "stratolab.fullname" . }}-proxy-api{{- end -}}
{{- define "stratolab.functionsName" -}}{{ include "stratolab.fullname" . }}-functions{{- end -}}
{{- define "stratolab.schedulerName" -}}{{ include "stratolab.fullname" . }}-scheduler{{- end -}}
{{- define "stratolab.triggersName" -}}{{ include "stratolab.fullname" . }}-triggers{{- end -}}
{{- define "stratolab.usageName" -}}{{ include "stratolab.fullname" . }}-usage{{- end -}}
{{- define "stratolab.pipelinesName" -}}{{ include "stratolab.fullname" . }}-pipelines{{- end -}}
{{- define "stratolab.pipelineStepName" -}}{{ include "stratolab.fullname" . }}-pipeline-step{{- end -}}
{{- define "stratolab.postgresqlName" -}}{{ include "stratolab.fullname" . }}-postgresql{{- end -}}

{{/* In-cluster URLs (reachable from any namespace). */}}
{{- define "stratolab.hubUrl" -}}
http://{{ include "stratolab.hubName" . }}.{{ .Release.Namespace }}.svc:8081
{{- end -}}
{{- define "stratolab.proxyInternalUrl" -}}
http://{{ include "stratolab.proxyPublicName" . }}.{{ .Release.Namespace }}.svc
{{- end -}}
{{- define "stratolab.functionsUrl" -}}
http://{{ include "stratolab.functionsName" . }}.{{ .Release.Namespace }}.svc:10101
{{- end -}}
{{- define "stratolab.schedulerUrl" -}}
http://{{ include "stratolab.schedulerName" . }}.{{ .Release.Namespace }}.svc:10102
{{- end -}}
{{- define "stratolab.triggersUrl" -}}
http://{{ include "stratolab.triggersName" . }}.{{ .Release.Namespace }}.svc:10103
{{- end -}}
{{- define "stratolab.usageUrl" -}}
http://{{ include "stratolab.usageName" . }}.{{ .Release.Namespace }}.svc:10104
{{- end -}}
{{- define "stratolab.pipelinesUrl" -}}
http://{{ include "stratolab.pipelinesName" . }}.{{ .Release.Namespace }}.svc:10105
{{- end -}}
{{- define "stratolab.publicUrl" -}}
{{- if .Values.publicUrl -}}
{{- .Values.publicUrl | trimSuffix "/" -}}
{{- else if and .Values.ingress.enabled .Values.ingress.host -}}
{{- printf "%s://%s" (ternary "https" "http" .Values.ingress.tls.enabled) .Values.ingress.host -}}
{{- else -}}
{{- include "stratolab.proxyInternalUrl" . -}}
{{- end -}}
{{- end -}}

{{- define "stratolab.image" -}}
{{- printf "%s:%s" .repository .tag -}}
{{- end -}}

{{/*
The database: "postgresql" reads the URL from a Secret (the chart's, or postgresql.existingSecret);
refuse an embedded instance next to an external one, so nobody evaluates on one and believes the other.
*/}}
{{- define "stratolab.usesPostgres" -}}
{{- if eq .Values.hub.db.type "postgresql" -}}
{{- if and .Values.postgresql.embedded.enabled (or .Values.postgresql.url .Values.postgresql.existingSecret) -}}
{{- fail "postgresql: set postgresql.embedded.enabled=false when you give postgresql.url or postgresql.existingSecret" -}}
{{- end -}}
{{- if not (or .Values.postgresql.embedded.enabled .Values.postgresql.url .Values.postgresql.existingSecret) -}}
{{- fail "postgresql: hub.db.type is postgresql; set postgresql.url, postgresql.existingSecret or postgresql.embedded.enabled=true" -}}
{{- end -}}
true
{{- end -}}
{{- end -}}
{{- define "stratolab.embeddedPostgres" -}}
{{- if and (include "stratolab.usesPostgres" .) .Values.postgresql.embedded.enabled -}}true{{- end -}}
{{- end -}}

{{/* The env entry of the database URL; empty for sqlite (each pod then derives its own file). */}}
{{- define "stratolab.dbUrlEnv" -}}
{{- if include "stratolab.usesPostgres" .root -}}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      {{- if .root.Values.postgresql.existingSecret }}
      name: {{ .root.Values.postgresql.existingSecret }}
      key: {{ .root.Values.postgresql.existingSecretKey }}
      {{- else }}
      name: {{ include "stratolab.secretName" .root }}
      key: db-url
      {{- end }}
{{- end }}
{{- end -}}

{{/* One key of the chart's Secret as an env entry; call with (dict "root" $ "name" "VAR" "key" "k"). */}}
{{- define "stratolab.secretEnv" -}}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ include "stratolab.secretName" .root }}
      key: {{ .key }}
{{- end -}}

{{/* Free-form extra env (a map of names to values) as env entries. */}}
{{- define "stratolab.extraEnv" -}}
{{- range $name, $value := . }}
- name: {{ $name }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end -}}
{{/* Call sites guard with `with`, so an empty map leaves no blank line. */}}

{{/* Restricted-profile security: what every container of the chart runs with. */}}
{{- define "stratolab.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .uid }}
runAsGroup: {{ .gid }}
fsGroup: {{ .gid }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}
{{- define "stratolab.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "stratolab.imagePullSecrets" -}}
{{- $refs := list -}}
{{- range .Values.imagePullSecrets }}{{ $refs = append $refs (dict "name" .) }}{{ end -}}
imagePullSecrets: {{ toJson $refs }}
{{- end -}}

{{/*
A NetworkPolicy peer: pods of one component in one namespace (the namespace label is set by
Kubernetes itself, so peers in the user, Knative or Jobs namespaces are named the same way).
Call with (dict "root" $ "component" "hub" "namespace" "ns").
*/}}
{{- define "stratolab.peer" -}}
- namespaceSelector:
    matchLabels:
      kubernetes.io/metadata.name: {{ .namespace }}
  podSelector:
    matchLabels:
      app.kubernetes.io/instance: {{ .root.Release.Name }}
      app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Egress every sandboxed pod (user, job, function) gets: DNS, and anywhere but the blocked CIDRs. */}}
{{- define "stratolab.openEgressRules" -}}
- ports:
    - {protocol: UDP, port: 53}
    - {protocol: TCP, port: 53}
- to:
    - ipBlock:
        cidr: 0.0.0.0/0
        {{- with .Values.networkPolicy.blockedEgressCidrs }}
        except:
          {{- toYaml . | nindent 10 }}
        {{- end }}
{{- end -}}

{{/*
The profile list for KubeSpawner's profile_list, from singleuser.profiles (camelCase values) to the
KubeSpawner shape stratolab.hub.profiles parses; both the hub and the scheduler read it.
*/}}
{{- define "stratolab.profileList" -}}
{{- $list := list -}}
{{- range .Values.singleuser.profiles -}}
{{- $override := dict -}}
{{- with .image }}{{ $_ := set $override "image" . }}{{ end -}}
{{- if hasKey . "cpu" }}{{ $_ := set $override "cpu_limit" .cpu }}{{ end -}}
{{- with .memory }}{{ $_ := set $override "mem_limit" (toString .) }}{{ end -}}
{{- if .gpus }}{{ $_ := set $override "extra_resource_limits" (dict "nvidia.com/gpu" (toString (int .gpus))) }}{{ end -}}
{{- with .nodeSelector }}{{ $_ := set $override "node_selector" . }}{{ end -}}
{{- with .tolerations }}{{ $_ := set $override "tolerations" . }}{{ end -}}
{{- with .extraEnv }}{{ $_ := set $override "environment" . }}{{ end -}}
{{- $profile := dict "display_name" .displayName "slug" .slug "description" (.description | default "") "kubespawner_override" $override -}}
{{- if .default }}{{ $_ := set $profile "default" true }}{{ end -}}
{{- $list = append $list $profile -}}
{{- end -}}
{{- toYaml $list -}}
{{- end -}}

{{/*
A peer made of pods the services create (function revisions, notebook-run Jobs): they carry
app.kubernetes.io/component but not the release's labels, which their builders do not know.
Call with (dict "component" "function" "namespace" "ns").
*/}}
{{- define "stratolab.workloadPeer" -}}
- namespaceSelector:
    matchLabels:
      kubernetes.io/metadata.name: {{ .namespace }}
  podSelector:
    matchLabels:
      app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- /*
A digest of the values the chart's Secret is made from (the generated tokens are not among them: they
never change). Pods that read those values at start carry it as an annotation, so changing them rolls
the pods; the digest reveals nothing of the values.
*/}}
{{- define "stratolab.secretInputsChecksum" -}}
{{- toJson (dict "postgresql" .Values.postgresql "oidc" .Values.hub.auth.oidc "smtp" .Values.scheduler.smtp "brokers" .Values.triggers.brokers) | sha256sum -}}
{{- end }}

{{/*
The SMTP server's settings (values: scheduler.smtp), for every service that sends e-mail: the scheduler
(runs' notifications) and the usage service (budget warnings). Call with the root context.
*/}}
{{- define "stratolab.smtpEnv" -}}
{{- $root := . -}}
{{- with .Values.scheduler.smtp }}
{{- if .host }}
- name: STRATOLAB_SMTP_HOST
  value: {{ .host | quote }}
- name: STRATOLAB_SMTP_PORT
  value: {{ .port | default 587 | quote }}
- name: STRATOLAB_SMTP_STARTTLS
  value: {{ .starttls | ternary "true" "false" | quote }}
{{- with .user }}
- name: STRATOLAB_SMTP_USER
  value: {{ . | quote }}
{{- end }}
{{- with .from }}
- name: STRATOLAB_SMTP_FROM
  value: {{ . | quote }}
{{- end }}
{{- if or .password .existingSecret }}
- name: STRATOLAB_SMTP_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret | default (include "stratolab.secretName" $root) }}
      key: {{ if .existingSecret }}{{ .existingSecretKey | default "smtp-password" }}{{ else }}smtp-password{{ end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
