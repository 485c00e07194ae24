{{/* The fleet: the replicas' shared Redis and the Inference Gateway's pool. */}}

{{- define "llamaserve.redisName" -}}
{{- printf "%s-redis" (include "llamaserve.fullname" . | trunc 57 | trimSuffix "-") -}}
{{- end -}}

{{/* Where the Redis URL's Secret is mounted: a directory of its own, so the kubelet can update it in place. */}}
{{- define "llamaserve.redisUrlDir" -}}/etc/llamaserve/redis{{- end -}}

{{/* Values that would install a fleet that cannot work, or leak a password. */}}
{{- define "llamaserve.fleetChecks" -}}
{{- with .Values.redis -}}
{{- $sources := 0 -}}
{{- range $given := list .url .existingSecret .deploy.enabled -}}{{- if $given -}}{{- $sources = add1 $sources -}}{{- end -}}{{- end -}}
{{- if gt $sources 1 -}}
{{- fail "redis: set one of redis.url, redis.existingSecret and redis.deploy.enabled" -}}
{{- end -}}
{{- /* user:password@host, or redis-py's ?password= */ -}}
{{- if and .url (or (regexMatch "^[a-z]+://[^/@]*:[^/@]*@" .url) (regexMatch "[?&]password=" .url)) -}}
{{- fail "redis.url holds a password: put the URL in a Secret and name it in redis.existingSecret" -}}
{{- end -}}
{{- end -}}
{{- if and .Values.inferencePool.enabled (not .Values.inferencePool.endpointPicker.service) -}}
{{- fail "inferencePool.endpointPicker.service: name the endpoint picker's Service (docs/DEPLOY.md, \"Routing with the Inference Gateway\")" -}}
{{- end -}}
{{- end -}}

{{/* The server container's Redis env: the URL as a value (no password) or as a file from the Secret. */}}
{{- define "llamaserve.redisEnv" -}}
{{- with .Values.redis }}
{{- if .existingSecret }}
- name: LLAMASERVE_REDIS_URL_FILE
  value: {{ printf "%s/url" (include "llamaserve.redisUrlDir" $) | quote }}
{{- else if .url }}
- name: LLAMASERVE_REDIS_URL
  value: {{ .url | quote }}
{{- else if .deploy.enabled }}
- name: LLAMASERVE_REDIS_URL
  value: {{ printf "redis://%s:6379/0" (include "llamaserve.redisName" $) | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "llamaserve.redisVolumes" -}}
{{- if .Values.redis.existingSecret }}
- name: redis-url
  secret:
    secretName: {{ .Values.redis.existingSecret }}
    items:
      - key: {{ .Values.redis.existingSecretKey }}
        path: url
{{- end }}
{{- end -}}

{{- define "llamaserve.redisVolumeMounts" -}}
{{- if .Values.redis.existingSecret }}
- name: redis-url
  mountPath: {{ include "llamaserve.redisUrlDir" . }}
  readOnly: true
{{- end }}
{{- end -}}
