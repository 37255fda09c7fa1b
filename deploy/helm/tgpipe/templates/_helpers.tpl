{{/* Chart name. */}}
{{- define "tgpipe.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Fully qualified name: release-chart, or fullnameOverride. */}}
{{- define "tgpipe.fullname" -}}
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

{{- define "tgpipe.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Common labels. */}}
{{- define "tgpipe.labels" -}}
helm.sh/chart: {{ include "tgpipe.chart" . }}
app.kubernetes.io/name: {{ include "tgpipe.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tgpipe
{{- end -}}

{{/* Selector labels of a component: call with (dict "ctx" $ "component" "ingress"). */}}
{{- define "tgpipe.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tgpipe.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "tgpipe.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "tgpipe.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* An image reference: call with (dict "ctx" $ "image" .Values.ingress.image). The
image's own registry and tag win over `image.registry` and `image.tag`; a digest pins the
image by content and replaces the tag. */}}
{{- define "tgpipe.image" -}}
{{- $registry := default .ctx.Values.image.registry .image.registry -}}
{{- $ref := .image.repository -}}
{{- if $registry -}}
{{- $ref = printf "%s/%s" $registry $ref -}}
{{- end -}}
{{- if .image.digest -}}
{{- printf "%s@%s" $ref .image.digest -}}
{{- else -}}
{{- printf "%s:%s" $ref (default .ctx.Chart.AppVersion (default .ctx.Values.image.tag .image.tag)) -}}
{{- end -}}
{{- end -}}

{{/* The Secret with the bots' secrets and tokens. */}}
{{- define "tgpipe.secretName" -}}
{{- if .Values.bots.existingSecret -}}
{{- .Values.bots.existingSecret -}}
{{- else -}}
{{- printf "%s-bots" (include "tgpipe.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/*
A number from values as its decimal digits. values.yaml numbers reach templates as
float64, and `quote`/`%v` print one of a million or more in exponent form
("1.048576e+06"), which no binary parses: every number a binary reads goes through this.
*/}}
{{- define "tgpipe.int" -}}
{{- . | int64 | toString -}}
{{- end -}}

{{/* Environment shared by every container. */}}
{{- define "tgpipe.commonEnv" -}}
- name: NATS_URL
  value: {{ .Values.natsUrl | quote }}
- name: TGPIPE_STREAM
  value: {{ .Values.stream.name | quote }}
- name: TGPIPE_DLQ_STREAM
  value: {{ .Values.stream.dlqName | quote }}
- name: TGPIPE_DEDUPE_WINDOW
  value: {{ .Values.stream.dedupeWindow | quote }}
- name: TGPIPE_MAX_AGE
  value: {{ .Values.stream.maxAge | quote }}
- name: TGPIPE_STREAM_REPLICAS
  value: {{ include "tgpipe.int" .Values.stream.replicas | quote }}
- name: TGPIPE_REGISTRY
  value: {{ .Values.registry.enabled | toString | quote }}
- name: TGPIPE_REGISTRY_BUCKET
  value: {{ .Values.registry.bucket | quote }}
- name: TGPIPE_LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
- name: RUST_LOG
  value: {{ .Values.logLevel | quote }}
{{- with .Values.otlpEndpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ . | quote }}
{{- end }}
{{- end -}}

{{/* Worker environment of one lane: call with (dict "ctx" $ "lane" $lane). */}}
{{- define "tgpipe.workerEnv" -}}
{{- $v := .ctx.Values -}}
{{ include "tgpipe.commonEnv" .ctx }}
- name: REDIS_URL
  value: {{ $v.redisUrl | quote }}
- name: TGPIPE_API_URL
  value: {{ $v.worker.apiUrl | quote }}
- name: TGPIPE_REMOVED_POLICY
  value: {{ $v.registry.removedPolicy | quote }}
- name: TGPIPE_BOT_TOKENS_FILE
  value: /etc/tgpipe/bots/tokens
- name: TGPIPE_LANE
  value: {{ .lane.name | quote }}
- name: TGPIPE_LANE_KINDS
  value: {{ join "," (.lane.updateTypes | default list) | quote }}
- name: TGPIPE_CONCURRENCY
  value: {{ include "tgpipe.int" (.lane.concurrency | default 32) | quote }}
# The shard count is part of the subject the ingress publishes on: workers must use the
# ingress's, or partitions would miss shards.
- name: TGPIPE_SHARDS
  value: {{ include "tgpipe.int" $v.ingress.shards | quote }}
{{- $partitions := .lane.partitions | default $v.worker.partitions | default (min (int $v.ingress.shards) 256) }}
{{- if gt (int $partitions) (int $v.ingress.shards) }}
{{- fail (printf "worker.lanes: lane %q has %d partitions but there are only %d shards (ingress.shards)" .lane.name (int $partitions) (int $v.ingress.shards)) }}
{{- end }}
- name: TGPIPE_PARTITIONS
  value: {{ include "tgpipe.int" $partitions | quote }}
- name: TGPIPE_BALANCE
  value: {{ $v.worker.balance | quote }}
- name: TGPIPE_MAX_DELIVER
  value: {{ include "tgpipe.int" $v.worker.maxDeliver | quote }}
{{- if lt (int $v.worker.shutdownGraceSeconds) (add (int $v.worker.handlerTimeoutSeconds) 5) }}
{{- fail (printf "worker.shutdownGraceSeconds (%d) must be at least worker.handlerTimeoutSeconds (%d) + 5: a handler cut off at shutdown would run again on the partition's next owner" (int $v.worker.shutdownGraceSeconds) (int $v.worker.handlerTimeoutSeconds)) }}
{{- end }}
- name: TGPIPE_HANDLER_TIMEOUT
  value: {{ printf "%ds" (int $v.worker.handlerTimeoutSeconds) | quote }}
- name: TGPIPE_SHUTDOWN_GRACE
  value: {{ printf "%ds" (int $v.worker.shutdownGraceSeconds) | quote }}
{{- if $v.worker.fsmTtlSeconds }}
- name: TGPIPE_FSM_TTL
  value: {{ printf "%ss" (include "tgpipe.int" $v.worker.fsmTtlSeconds) | quote }}
{{- end }}
- name: TGPIPE_WEBHOOK_CHECK_INTERVAL
  value: {{ printf "%ss" (include "tgpipe.int" $v.worker.webhookCheckSeconds) | quote }}
- name: TGPIPE_ALBUM_QUIET
  value: {{ $v.worker.albumQuiet | quote }}
{{- with $v.provision.publicUrl }}
# The static bots' webhook URL and secrets: the watchdog checks them and sets them again.
- name: TGPIPE_WEBHOOK_URL
  value: {{ . | quote }}
- name: TGPIPE_BOTS_FILE
  value: /etc/tgpipe/bots/bots
{{- end }}
- name: TGPIPE_LISTEN
  value: "0.0.0.0:9090"
{{- end -}}

{{/*
Lane validation: names are DNS labels and unique; kinds are Bot API kinds (or `timer`,
the kind of fired durable timers); no kind is in
two lanes; a catch-all lane (no kinds) is alone. With work-queue retention JetStream
refuses overlapping consumers, so an overlap would only show up as a crash-looping pod.
*/}}
{{- define "tgpipe.validateLanes" -}}
{{- $known := list "message" "edited_message" "channel_post" "edited_channel_post" "business_connection" "business_message" "edited_business_message" "deleted_business_messages" "message_reaction" "message_reaction_count" "inline_query" "chosen_inline_result" "callback_query" "shipping_query" "pre_checkout_query" "purchased_paid_media" "poll" "poll_answer" "my_chat_member" "chat_member" "chat_join_request" "chat_boost" "removed_chat_boost" "managed_bot" "guest_message" "stopped_message_generation" "subscription" "timer" -}}
{{- $seenNames := dict -}}
{{- $seenKinds := dict -}}
{{- $lanes := .Values.worker.lanes -}}
{{- if not $lanes -}}{{- fail "worker.lanes: at least one lane is needed" -}}{{- end -}}
{{- range $lanes -}}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?$" (toString .name)) -}}
{{- fail (printf "worker.lanes: lane name %q must be a DNS label of at most 32 characters" (toString .name)) -}}
{{- end -}}
{{- if hasKey $seenNames .name -}}{{- fail (printf "worker.lanes: lane %q is listed twice" .name) -}}{{- end -}}
{{- $_ := set $seenNames .name true -}}
{{- if and (not .updateTypes) (gt (len $lanes) 1) -}}
{{- fail (printf "worker.lanes: lane %q takes every update type, so it cannot share the stream with other lanes" .name) -}}
{{- end -}}
{{- $lane := .name -}}
{{- range .updateTypes -}}
{{- if not (has . $known) -}}{{- fail (printf "worker.lanes: lane %q lists %q, which is not a Bot API update type (or timer)" $lane .) -}}{{- end -}}
{{- if hasKey $seenKinds . -}}
{{- fail (printf "worker.lanes: update type %q is in lanes %q and %q; lanes must not overlap" . (get $seenKinds .) $lane) -}}
{{- end -}}
{{- $_ := set $seenKinds . $lane -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
An egress rule to a backing service: call with (dict "peer" .Values.networkPolicy.nats).
Pods matching podSelector in the namespaces namespaceSelector matches (`{}`: all), and/or
the CIDRs.
*/}}
{{- define "tgpipe.egressTo" -}}
{{- $p := .peer -}}
{{- if and (not $p.podSelector) (not $p.cidrs) -}}
{{- fail "networkPolicy: nats, redis and otelCollector each need a podSelector or cidrs" -}}
{{- end -}}
- to:
    {{- if $p.podSelector }}
    - namespaceSelector:
        {{- if $p.namespaceSelector }}
        matchLabels:
          {{- toYaml $p.namespaceSelector | nindent 10 }}
        {{- else }} {}
        {{- end }}
      podSelector:
        matchLabels:
          {{- toYaml $p.podSelector | nindent 10 }}
    {{- end }}
    {{- range $p.cidrs }}
    - ipBlock:
        cidr: {{ . }}
    {{- end }}
  ports:
    - {port: {{ $p.port }}, protocol: TCP}
{{- end -}}

{{/* Egress to cluster DNS and to NATS. */}}
{{- define "tgpipe.egressDnsNats" -}}
- to:
    - namespaceSelector: {}
      podSelector:
        matchLabels:
          k8s-app: kube-dns
  ports:
    - {port: 53, protocol: UDP}
    - {port: 53, protocol: TCP}
{{ include "tgpipe.egressTo" (dict "peer" .Values.networkPolicy.nats) }}
{{- end -}}
