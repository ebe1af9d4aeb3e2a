{{/* The chart's name, cut to a label's 63 characters. */}}
{{- define "crabglamp.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name: the prefix of every object the chart creates. */}}
{{- define "crabglamp.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "crabglamp.selectorLabels" -}}
app.kubernetes.io/name: {{ include "crabglamp.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "crabglamp.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "crabglamp.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "crabglamp.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "crabglamp.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The --lease-name flag's value. */}}
{{- define "crabglamp.leaseBase" -}}
{{- default (include "crabglamp.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{/*
  The shards this release runs, as a JSON list: each `shards` entry (one Deployment and Lease
  each, with its own credentials and Cloudflare account when given), else one entry for the
  single `shard` value ("" for every object) that keeps the release's plain names.
*/}}
{{- define "crabglamp.shardList" -}}
{{- if .Values.shards }}
{{- if .Values.shard }}
{{- fail "set either shard (one shard) or shards (several), not both" }}
{{- end }}
{{- toJson .Values.shards }}
{{- else }}
{{- toJson (list (dict "name" .Values.shard "single" true)) }}
{{- end }}
{{- end }}

{{/* A shard's Deployment name: the release's full name, with -<shard> for a listed shard. */}}
{{- define "crabglamp.shardFullname" -}}
{{- if .shard.single }}
{{- include "crabglamp.fullname" .root }}
{{- else }}
{{- printf "%s-%s" (include "crabglamp.fullname" .root) .shard.name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* A shard's pod selector: the release's, with the shard's label for a listed shard. */}}
{{- define "crabglamp.shardSelectorLabels" -}}
{{ include "crabglamp.selectorLabels" .root }}
{{- if not .shard.single }}
crabglamp.com/shard: {{ .shard.name | quote }}
{{- end }}
{{- end }}

{{/* The Leases the operator really uses: the base name, with -<shard> appended per shard. */}}
{{- define "crabglamp.leaseNames" -}}
{{- $base := include "crabglamp.leaseBase" . }}
{{- $names := list }}
{{- range include "crabglamp.shardList" . | fromJsonArray }}
{{- $names = append $names (ternary (printf "%s-%s" $base .name) $base (ne .name "")) }}
{{- end }}
{{- toJson $names }}
{{- end }}

{{/* The ConfigMap the operator anchors the audit chain's head in (fixed by the binary). */}}
{{- define "crabglamp.anchorConfigMap" -}}
crabglamp-audit-anchor
{{- end }}

{{- define "crabglamp.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
  A shard's container environment (`root`: the chart's context, `shard`: one entry of
  crabglamp.shardList): the pod's name and namespace from the downward API, each credential
  from its existing Secret (the optional ones only when named; a listed shard's Hetzner and
  Cloudflare tokens from its own Secret), then every non-empty setting (a listed shard's
  Cloudflare account and zone where it names them). Numbers are rendered as integers, never in
  exponent form.
*/}}
{{- define "crabglamp.env" -}}
{{- $root := .root }}
{{- $shard := .shard }}
{{- $c := $root.Values.config }}
{{- $s := $root.Values.secrets }}
{{- $cf := mergeOverwrite (deepCopy $c.cloudflare) (default dict $shard.cloudflare) }}
{{- $hcloud := $s.hcloudToken }}
{{- $cloudflare := $s.cloudflareApiToken }}
{{- with $shard.existingSecret }}
{{- $hcloud = dict "existingSecret" . "key" $s.hcloudToken.key }}
{{- $cloudflare = dict "existingSecret" . "key" $s.cloudflareApiToken.key }}
{{- end }}
{{- $env := list }}
{{- $env = append $env (dict "name" "POD_NAME" "valueFrom" (dict "fieldRef" (dict "fieldPath" "metadata.name"))) }}
{{- $env = append $env (dict "name" "POD_NAMESPACE" "valueFrom" (dict "fieldRef" (dict "fieldPath" "metadata.namespace"))) }}
{{- range $name, $ref := dict "HCLOUD_TOKEN" $hcloud "CLOUDFLARE_API_TOKEN" $cloudflare "DATABASE_URL" $s.databaseUrl "CRABGLAMP_SEALING_KEY" $s.sealingKey "CRABGLAMP_SEALING_PREVIOUS_KEYS" $s.sealingPreviousKeys "REDIS_URL" $s.redisUrl }}
{{- if $ref.existingSecret }}
{{- $env = append $env (dict "name" $name "valueFrom" (dict "secretKeyRef" (dict "name" $ref.existingSecret "key" $ref.key))) }}
{{- end }}
{{- end }}
{{- $plain := list
  (list "CRABGLAMP_SEALING_KEY_ID" $c.sealingKeyId)
  (list "HCLOUD_ENDPOINT" $c.hcloudEndpoint)
  (list "CLOUDFLARE_ACCOUNT_ID" $cf.accountId)
  (list "CLOUDFLARE_ZONE_ID" $cf.zoneId)
  (list "CLOUDFLARE_ZONE_NAME" $cf.zoneName)
  (list "CLOUDFLARE_ENDPOINT" $cf.endpoint)
  (list "CRABGLAMP_RESYNC_SECONDS" (int64 $c.resyncSeconds))
  (list "CRABGLAMP_FAST_POLL_MS" (int64 $c.fastPollMs))
  (list "CRABGLAMP_FIREWALL_AUDIT_EVERY" (int64 $c.firewallAuditEvery))
  (list "CRABGLAMP_SHUTDOWN_TIMEOUT_SECONDS" (int64 $c.shutdownTimeoutSeconds))
  (list "CRABGLAMP_SWEEPER_GRACE_SECONDS" (int64 $c.sweeperGraceSeconds))
  (list "CRABGLAMP_HETZNER_REQUESTS_PER_HOUR" (int64 $c.hetznerRequestsPerHour))
  (list "CRABGLAMP_CLOUDFLARE_REQUESTS_PER_5MIN" (int64 $c.cloudflareRequestsPer5min))
  (list "RUST_LOG" $root.Values.logLevel) }}
{{- range $plain }}
{{- $value := index . 1 | toString }}
{{- if $value }}
{{- $env = append $env (dict "name" (index . 0) "value" $value) }}
{{- end }}
{{- end }}
{{- concat $env $c.extraEnv | toYaml }}
{{- end }}

{{/*
  Exactly what the operator calls, no wildcard (tests/chart/rbac.rs records the calls of a run
  against the sandbox and compares). Cluster-wide by default; with watchNamespace the same
  rules as a Role in that namespace only.
*/}}
{{- define "crabglamp.watchRules" -}}
# Agents, PlainVMs, VirtualKeys: the controllers' list+watch, the finalizer's patch.
- apiGroups: ["crabglamp.com"]
  resources: ["agents", "plainvms", "virtualkeys"]
  verbs: ["list", "watch", "patch"]
# An Agent's transfer event is written only against a fresh read of the Agent (the cache the
# pass decided on may be behind; an audit event cannot be taken back).
- apiGroups: ["crabglamp.com"]
  resources: ["agents"]
  verbs: ["get"]
# Status is written as a merge patch of the status subresource only (never spec).
- apiGroups: ["crabglamp.com"]
  resources: ["agents/status", "plainvms/status", "virtualkeys/status"]
  verbs: ["patch"]
# Events about the objects (a repeated Event is a patch of its series).
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{/*
  The Secrets holding VirtualKeys (owned, labelled; removed by garbage collection with their
  VirtualKey, never deleted by the operator). Their ownerReference to the VirtualKey has no
  blockOwnerDeletion, so OwnerReferencesPermissionEnforcement asks for no virtualkeys/finalizers
  grant, and it is set at create (the plugin asks for delete only when an update changes it).
*/}}
{{- define "crabglamp.secretRules" -}}
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch", "create", "update", "delete"]
{{- end }}

{{/*
  Where the operator gets Secret access, one name a line: nothing without VirtualKeys (no
  secrets.redisUrl); "*" for every namespace (virtualKeys.allNamespaces, or its Role in
  watchNamespace); else virtualKeys.namespaces, or watchNamespace when that list is empty.
*/}}
{{- define "crabglamp.secretNamespaces" -}}
{{- $vk := .Values.virtualKeys }}
{{- if .Values.secrets.redisUrl.existingSecret }}
{{- if and $vk.allNamespaces $vk.namespaces }}
{{- fail "virtualKeys: set namespaces or allNamespaces, not both" }}
{{- else if and $vk.allNamespaces (not .Values.watchNamespace) }}
{{- "*" }}
{{- else if $vk.allNamespaces }}
{{- .Values.watchNamespace }}
{{- else if $vk.namespaces }}
{{- join "\n" $vk.namespaces }}
{{- else if .Values.watchNamespace }}
{{- .Values.watchNamespace }}
{{- else }}
{{- fail "secrets.redisUrl turns VirtualKeys on: list the namespaces they live in (virtualKeys.namespaces), where the operator then gets Secret access, or set virtualKeys.allNamespaces=true for every namespace (see the chart README's warning)" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The --virtual-key-namespaces flag, when VirtualKeys are served in listed namespaces only. */}}
{{- define "crabglamp.virtualKeyNamespacesFlag" -}}
{{- if and .Values.secrets.redisUrl.existingSecret .Values.virtualKeys.namespaces }}
{{- printf "--virtual-key-namespaces=%s" (join "," .Values.virtualKeys.namespaces) }}
{{- end }}
{{- end }}
