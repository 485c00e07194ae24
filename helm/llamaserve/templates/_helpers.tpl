{{- define "llamaserve.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "llamaserve.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "llamaserve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "llamaserve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "llamaserve.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "llamaserve.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Pods that answer HTTP: the Deployment's, or each LeaderWorkerSet group's leader. */}}
{{- define "llamaserve.servingSelector" -}}
{{ include "llamaserve.selectorLabels" . }}
llamaserve.io/role: server
{{- end -}}

{{/* The llamaserve settings: the preset text, overridden key by key by .Values.settings. YAML. */}}
{{- define "llamaserve.settings" -}}
{{- $preset := dict -}}
{{- if .Values.preset -}}
{{- $preset = fromYaml .Values.preset -}}
{{- if hasKey $preset "Error" -}}{{- fail (printf "preset is not YAML: %s" $preset.Error) -}}{{- end -}}
{{- end -}}
{{- $s := mergeOverwrite (dict) $preset (deepCopy (.Values.settings | default dict)) -}}
{{- range $k := list "api_keys" "api_key_file" "admin_api_keys" -}}
{{- if hasKey $s $k -}}{{- fail (printf "settings.%s: API keys go in the Secret (values: secret.*), never in plain env" $k) -}}{{- end -}}
{{- end -}}
{{- range $k := list "redis_url" "redis_url_file" -}}
{{- if hasKey $s $k -}}{{- fail (printf "settings.%s: set redis.* instead (a URL with a password by a Secret)" $k) -}}{{- end -}}
{{- end -}}
{{- range $k := list "port" "host" -}}
{{- if hasKey $s $k -}}{{- fail (printf "settings.%s: set containerPort instead; probes and the Service follow it" $k) -}}{{- end -}}
{{- end -}}
{{- with .Values.lora -}}
{{- if or .adapters .allowRuntime -}}
{{- $_ := set $s "lora_adapters" (.adapters | default dict) -}}
{{- $_ := set $s "allow_runtime_lora" .allowRuntime -}}
{{- $_ := set $s "lora_access" (.access | default dict) -}}
{{- $_ := set $s "max_loras" .maxLoras -}}
{{- $_ := set $s "max_lora_rank" .maxLoraRank -}}
{{- if .maxCpuLoras -}}{{- $_ := set $s "max_cpu_loras" .maxCpuLoras -}}{{- end -}}
{{- end -}}
{{- end -}}
{{- /* The endpoint picker scrapes /metrics without a key and routes by the adapters vLLM's series names. */ -}}
{{- if and .Values.inferencePool.enabled (not (hasKey $s "metrics_show_adapters")) -}}
{{- $_ := set $s "metrics_show_adapters" true -}}
{{- end -}}
{{- with .Values.tracing -}}
{{- if .endpoint -}}
{{- $_ := set $s "otlp_traces_endpoint" .endpoint -}}
{{- $_ := set $s "otlp_traces_protocol" .protocol -}}
{{- $_ := set $s "trace_sample_ratio" .sampleRatio -}}
{{- $_ := set $s "trace_service_name" (.serviceName | default (include "llamaserve.fullname" $)) -}}
{{- end -}}
{{- end -}}
{{- if .Values.multiNode.enabled -}}
{{- $backend := get $s "distributed_executor_backend" | default "ray" -}}
{{- if ne $backend "ray" -}}{{- fail "multiNode.enabled needs settings.distributed_executor_backend: ray" -}}{{- end -}}
{{- $_ := set $s "distributed_executor_backend" "ray" -}}
{{- end -}}
{{- toYaml $s -}}
{{- end -}}

{{/* GPUs per replica (all nodes of a group together). */}}
{{- define "llamaserve.gpusPerReplica" -}}
{{- $s := include "llamaserve.settings" . | fromYaml -}}
{{- mul (int (get $s "tensor_parallel_size" | default 1)) (int (get $s "pipeline_parallel_size" | default 1)) -}}
{{- end -}}

{{/* GPUs each pod requests. */}}
{{- define "llamaserve.gpusPerPod" -}}
{{- $total := include "llamaserve.gpusPerReplica" . | int -}}
{{- if .Values.multiNode.enabled -}}
{{- $size := int .Values.multiNode.size -}}
{{- if or (lt $size 2) (ne (mod $total $size) 0) -}}
{{- fail (printf "multiNode.size %d must be >= 2 and divide tensor_parallel_size x pipeline_parallel_size (%d)" $size $total) -}}
{{- end -}}
{{- div $total $size -}}
{{- else -}}
{{- $total -}}
{{- end -}}
{{- end -}}

{{- define "llamaserve.secretName" -}}
{{- .Values.secret.name | default (printf "%s-secrets" (include "llamaserve.fullname" .)) -}}
{{- end -}}

{{/* Container env: settings as LLAMASERVE_*, secrets by reference only. Called with (dict "ctx" $ "server" bool):
     the API keys go only to the container that serves HTTP; a Ray worker never checks a key. */}}
{{- define "llamaserve.env" -}}
{{- $server := .server -}}
{{- with .ctx -}}
- name: LLAMASERVE_PORT
  value: {{ .Values.containerPort | toString | quote }}
{{- /* The forms server/settings.py reads from the environment: a list comma-separated, a map as JSON. */}}
{{- range $k, $v := include "llamaserve.settings" . | fromYaml }}
{{- if not (kindIs "invalid" $v) }}
- name: {{ printf "LLAMASERVE_%s" (upper $k) }}
  value: {{ if kindIs "string" $v }}{{ $v | quote }}{{ else if kindIs "slice" $v }}{{ join "," $v | quote }}{{ else }}{{ toJson $v | quote }}{{ end }}
{{- end }}
{{- end }}
- name: HF_HOME
  value: {{ .Values.modelCache.mountPath | quote }}
{{- include "llamaserve.compileCacheEnv" . }}
- name: HF_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "llamaserve.secretName" . }}
      key: {{ .Values.secret.hfTokenKey }}
      # Not every model needs one (open repos, weights already in the cache).
      optional: true
{{- if and $server .Values.auth.enabled }}
# A file from the mounted Secret, not an env value: the kubelet updates it in place and the server re-reads it,
# so a key rotation needs no restart.
- name: LLAMASERVE_API_KEY_FILE
  value: {{ include "llamaserve.apiKeyFile" . | quote }}
{{- else if $server }}
# Without keys the server starts only when told to (server/protection/security.py); workers serve no HTTP.
- name: LLAMASERVE_ALLOW_UNAUTHENTICATED
  value: "true"
{{- end }}
{{- if $server }}
{{- include "llamaserve.redisEnv" . }}
{{- end }}
{{- if and $server .Values.lora.allowRuntime }}
- name: LLAMASERVE_ADMIN_API_KEYS
  valueFrom:
    secretKeyRef:
      name: {{ include "llamaserve.secretName" . }}
      key: {{ .Values.secret.adminApiKeysKey }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Where the API key file is mounted: a directory of its own, never a subPath mount (those are not updated). */}}
{{- define "llamaserve.apiKeyDir" -}}/etc/llamaserve/api-keys{{- end -}}
{{- define "llamaserve.apiKeyFile" -}}{{ include "llamaserve.apiKeyDir" . }}/keys{{- end -}}

{{/* The compile caches (torch inductor, Triton, vLLM's, FlashInfer's JIT, CUDA's PTX) on the model-cache volume:
     a second start on the same volume compiles nothing. */}}
{{- define "llamaserve.compileCacheEnv" -}}
{{- $root := printf "%s/compile" (.Values.modelCache.mountPath | trimSuffix "/") }}
- name: VLLM_CACHE_ROOT
  value: {{ printf "%s/vllm" $root | quote }}
- name: TORCHINDUCTOR_CACHE_DIR
  value: {{ printf "%s/torchinductor" $root | quote }}
- name: TRITON_CACHE_DIR
  value: {{ printf "%s/triton" $root | quote }}
- name: FLASHINFER_WORKSPACE_BASE
  value: {{ printf "%s/flashinfer" $root | quote }}
- name: CUDA_CACHE_PATH
  value: {{ printf "%s/cuda" $root | quote }}
{{- end -}}

{{/* Volumes shared by every pod template (`server`: the pod serves HTTP and reads the API keys). */}}
{{- define "llamaserve.volumes" -}}
{{- $server := .server -}}
{{- with .ctx -}}
- name: dshm
  emptyDir:
    medium: Memory
    sizeLimit: {{ .Values.shm.sizeLimit }}
- name: model-cache
{{- if .Values.modelCache.enabled }}
  persistentVolumeClaim:
    claimName: {{ .Values.modelCache.existingClaim | default (printf "%s-model-cache" (include "llamaserve.fullname" .)) }}
{{- else }}
  # On the node's disk: bounded, so that a download cannot fill it and evict its neighbours.
  emptyDir:
    sizeLimit: {{ .Values.modelCache.size }}
{{- end }}
{{- if and $server .Values.auth.enabled }}
- name: api-keys
  secret:
    secretName: {{ include "llamaserve.secretName" . }}
    items:
      - key: {{ .Values.secret.apiKeysKey }}
        path: keys
{{- end }}
{{- if $server }}
{{- include "llamaserve.redisVolumes" . }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "llamaserve.volumeMounts" -}}
{{- $server := .server -}}
{{- with .ctx -}}
- name: dshm
  mountPath: /dev/shm
- name: model-cache
  mountPath: {{ .Values.modelCache.mountPath }}
{{- if and $server .Values.auth.enabled }}
- name: api-keys
  mountPath: {{ include "llamaserve.apiKeyDir" . }}
  readOnly: true
{{- end }}
{{- if $server }}
{{- include "llamaserve.redisVolumeMounts" . }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The container's securityContext: IPC_LOCK added for RDMA, which pins memory for NCCL's transfers. */}}
{{- define "llamaserve.securityContext" -}}
{{- $ctx := deepCopy .Values.securityContext -}}
{{- if .Values.rdma.enabled -}}
{{- $caps := get $ctx "capabilities" | default dict -}}
{{- $_ := set $caps "add" (append (get $caps "add" | default list) "IPC_LOCK" | uniq) -}}
{{- $_ := set $ctx "capabilities" $caps -}}
{{- end -}}
{{- toYaml $ctx -}}
{{- end -}}

{{- define "llamaserve.resources" -}}
{{- $gpus := include "llamaserve.gpusPerPod" . | int -}}
{{- $res := deepCopy (.Values.resources | default dict) -}}
{{- /* The GPU count always comes from the settings, so it cannot disagree with tensor parallelism. */ -}}
{{- range $kind := list "requests" "limits" -}}
{{- $_ := set $res $kind (mergeOverwrite (get $res $kind | default dict) (dict $.Values.gpu.resourceName $gpus)) -}}
{{- if $.Values.rdma.enabled -}}
{{- $_ := set (get $res $kind) $.Values.rdma.resourceName $.Values.rdma.count -}}
{{- end -}}
{{- end -}}
{{- /* A model cache on the node's disk must be scheduled where that much disk is free. */ -}}
{{- if not .Values.modelCache.enabled -}}
{{- $_ := set (get $res "requests") "ephemeral-storage" .Values.modelCache.size -}}
{{- end -}}
{{- toYaml $res -}}
{{- end -}}

{{/* The HTTP probes; routes fixed by the API contract. */}}
{{- define "llamaserve.probes" -}}
{{- /* Startup waits on /ready: /health answers 200 while the model loads, so it would end the start budget at once. */ -}}
startupProbe:
  httpGet:
    path: /ready
    port: http
  periodSeconds: {{ .Values.probes.startup.periodSeconds }}
  timeoutSeconds: {{ .Values.probes.startup.timeoutSeconds }}
  failureThreshold: {{ .Values.probes.startup.failureThreshold }}
livenessProbe:
  httpGet:
    path: /health
    port: http
  periodSeconds: {{ .Values.probes.liveness.periodSeconds }}
  timeoutSeconds: {{ .Values.probes.liveness.timeoutSeconds }}
  failureThreshold: {{ .Values.probes.liveness.failureThreshold }}
readinessProbe:
  httpGet:
    path: /ready
    port: http
  periodSeconds: {{ .Values.probes.readiness.periodSeconds }}
  timeoutSeconds: {{ .Values.probes.readiness.timeoutSeconds }}
  failureThreshold: {{ .Values.probes.readiness.failureThreshold }}
{{- end -}}

{{/* Pod spec fields every pod template shares, before `containers`. */}}
{{- define "llamaserve.podCommon" -}}
{{- include "llamaserve.checks" . -}}
{{- $s := include "llamaserve.settings" . | fromYaml -}}
# Service links would add <SERVICE>_PORT=tcp://... for every Service in the namespace; one named llamaserve
# sets LLAMASERVE_PORT, a llamaserve setting. The server finds nothing through them.
enableServiceLinks: false
# Nothing in the pod calls the Kubernetes API; a token there would only be one to steal (the leader runs a Ray head).
automountServiceAccountToken: false
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
terminationGracePeriodSeconds: {{ add (int .Values.preStopSleepSeconds) (int (get $s "shutdown_grace_s" | default 30)) .Values.terminationGraceExtraSeconds }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "llamaserve.image" -}}
{{ printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) | quote }}
{{- end -}}

{{- define "llamaserve.scaleTarget" -}}
{{- if .Values.multiNode.enabled -}}
apiVersion: leaderworkerset.x-k8s.io/v1
kind: LeaderWorkerSet
{{- else -}}
apiVersion: apps/v1
kind: Deployment
{{- end }}
name: {{ include "llamaserve.workloadName" . }}
{{- end -}}

{{/* The Deployment's or LeaderWorkerSet's name. LeaderWorkerSet creates a headless Service of its own name for
     the workers to find their leader, but only if no Service of that name exists: the chart's Service has the
     fullname, so the LeaderWorkerSet must not. */}}
{{- define "llamaserve.workloadName" -}}
{{- if .Values.multiNode.enabled -}}
{{- printf "%s-group" (include "llamaserve.fullname" . | trunc 50 | trimSuffix "-") -}}
{{- else -}}
{{- include "llamaserve.fullname" . -}}
{{- end -}}
{{- end -}}

{{/* Drain on scale-in and rollouts: the pod stays up while endpoint controllers and kube-proxy take it out of
     the Service; only then does SIGTERM start the server's own drain. */}}
{{- define "llamaserve.lifecycle" -}}
{{- if gt (int .Values.preStopSleepSeconds) 0 }}
lifecycle:
  preStop:
    exec:
      command: ["sleep", {{ .Values.preStopSleepSeconds | toString | quote }}]
{{- end }}
{{- end -}}

{{/* Layouts that would install but never serve. */}}
{{- define "llamaserve.checks" -}}
{{- include "llamaserve.fleetChecks" . -}}
{{- $cache := .Values.modelCache -}}
{{- if and $cache.enabled (not $cache.existingClaim) (not (has "ReadWriteMany" $cache.accessModes)) -}}
{{- $autoscaled := and .Values.autoscaling.enabled (gt (int .Values.autoscaling.maxReplicas) 1) -}}
{{- if or (gt (int .Values.replicaCount) 1) $autoscaled .Values.multiNode.enabled -}}
{{- fail "modelCache.accessModes: more than one pod (replicaCount > 1, autoscaling or multiNode) mounts the model cache, which needs ReadWriteMany; a ReadWriteOnce claim leaves every pod but the first Pending (or set modelCache.existingClaim)" -}}
{{- end -}}
{{- end -}}
{{- if .Values.multiNode.enabled -}}
{{- $s := include "llamaserve.settings" . | fromYaml -}}
{{- $tp := int (get $s "tensor_parallel_size" | default 1) -}}
{{- $perPod := include "llamaserve.gpusPerPod" . | int -}}
{{- if ne (mod $perPod $tp) 0 -}}
{{- fail (printf "tensor_parallel_size %d does not fit the %d GPUs of one node: tensor parallel runs within a node (NVLink), split nodes with pipeline_parallel_size = multiNode.size" $tp $perPod) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The settings' hash restarts pods when only the preset text changes; the preset name helps kubectl users. */}}
{{- define "llamaserve.podAnnotations" -}}
llamaserve.io/settings-sha256: {{ include "llamaserve.settings" . | sha256sum | quote }}
{{- with .Values.presetName }}
llamaserve.io/preset: {{ . | quote }}
{{- end }}
{{- with .Values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Seconds the startup probe allows for download and load. */}}
{{- define "llamaserve.startupBudgetSeconds" -}}
{{- mul (int .Values.probes.startup.periodSeconds) (int .Values.probes.startup.failureThreshold) -}}
{{- end -}}

{{/* Scale-in as slow as a GPU pod's start is long; the HPA and KEDA's HPA use the same. */}}
{{- define "llamaserve.scaleInBehavior" -}}
scaleDown:
  stabilizationWindowSeconds: {{ .Values.autoscaling.scaleDownStabilizationSeconds }}
{{- end -}}
