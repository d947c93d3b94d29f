{{/* Names, labels and cross-value checks shared by the templates. */}}

{{- define "kubegate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 42 | trimSuffix "-" -}}
{{- end -}}

{{/* <release>-kubegate, cut to 42 characters so that "-dataplane-admin" etc. still fit in 63. */}}
{{- define "kubegate.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 42 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 42 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 42 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "kubegate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kubegate.labels" -}}
helm.sh/chart: {{ include "kubegate.chart" . }}
app.kubernetes.io/name: {{ include "kubegate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kubegate
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component: (dict "ctx" $ "component" "dataplane"). */}}
{{- define "kubegate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubegate.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "kubegate.componentLabels" -}}
{{ include "kubegate.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/*
An image reference: (dict "ctx" $ "image" .Values.dataplane.image). With imageRegistry, that registry
replaces the repository's (its first part, when that part is a host: a dot, a colon, or localhost) or is
put in front of a repository without one.
*/}}
{{- define "kubegate.image" -}}
{{- $repository := .image.repository -}}
{{- $registry := trimSuffix "/" .ctx.Values.imageRegistry -}}
{{- if $registry -}}
{{- $parts := splitList "/" $repository -}}
{{- $first := first $parts -}}
{{- if and (gt (len $parts) 1) (or (contains "." $first) (contains ":" $first) (eq $first "localhost")) -}}
{{- $repository = rest $parts | join "/" -}}
{{- end -}}
{{- $repository = printf "%s/%s" $registry $repository -}}
{{- end -}}
{{- $tag := default .ctx.Chart.AppVersion .image.tag -}}
{{- if .image.digest -}}
{{- printf "%s@%s" $repository .image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repository $tag -}}
{{- end -}}
{{- end -}}

{{/*
The topologySpreadConstraints items of a component's pods: (dict "ctx" $ "component" "dataplane"
"constraints" LIST "spread" BOOL). The user's first, each rendered with tpl, one without a labelSelector
given the component's pods; then, with spread, a soft one over nodes. Empty when there is none.
*/}}
{{- define "kubegate.topologySpreadConstraints" -}}
{{- $selector := include "kubegate.selectorLabels" (dict "ctx" .ctx "component" .component) | fromYaml -}}
{{- range .constraints }}
{{- $constraint := tpl (toYaml .) $.ctx | fromYaml }}
{{- if not (hasKey $constraint "labelSelector") }}
{{- $_ := set $constraint "labelSelector" (dict "matchLabels" $selector) }}
{{- end }}
- {{ toYaml $constraint | indent 2 | trim }}
{{- end }}
{{- if .spread }}
- maxSkew: 1
  topologyKey: kubernetes.io/hostname
  whenUnsatisfiable: ScheduleAnyway
  labelSelector:
    matchLabels:
      {{- include "kubegate.selectorLabels" (dict "ctx" .ctx "component" .component) | nindent 6 }}
{{- end }}
{{- end -}}

{{/* The fewest data-plane replicas there are: autoscaling.minReplicas with autoscaling, else replicas. */}}
{{- define "kubegate.dataplaneMinReplicas" -}}
{{- $dp := .Values.dataplane -}}
{{- ternary $dp.autoscaling.minReplicas $dp.replicas $dp.autoscaling.enabled | int -}}
{{- end -}}

{{/* The operator's headless metrics Service: Prometheus and `helm test` reach each replica through it. */}}
{{- define "kubegate.operatorService" -}}
{{- printf "%s-operator" (include "kubegate.fullname" .) -}}
{{- end -}}

{{- define "kubegate.operatorServiceAccount" -}}
{{- if .Values.operator.serviceAccount.create -}}
{{- default (printf "%s-operator" (include "kubegate.fullname" .)) .Values.operator.serviceAccount.name -}}
{{- else -}}
{{- required "operator.serviceAccount.name is required when operator.serviceAccount.create is false" .Values.operator.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "kubegate.dataplaneServiceAccount" -}}
{{- if .Values.dataplane.serviceAccount.create -}}
{{- default (printf "%s-dataplane" (include "kubegate.fullname" .)) .Values.dataplane.serviceAccount.name -}}
{{- else -}}
{{- required "dataplane.serviceAccount.name is required when dataplane.serviceAccount.create is false" .Values.dataplane.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "kubegate.pushTokenSecret" -}}
{{- default (printf "%s-push-token" (include "kubegate.fullname" .)) .Values.pushToken.existingSecret -}}
{{- end -}}

{{/* Whether the operator makes the push token's Secret (neither pushToken.value nor existingSecret). */}}
{{- define "kubegate.pushTokenByOperator" -}}
{{- if not (or .Values.pushToken.value .Values.pushToken.existingSecret) }}true{{ end -}}
{{- end -}}

{{- define "kubegate.bootstrapSecret" -}}
{{- default (printf "%s-bootstrap" (include "kubegate.fullname" .)) .Values.bootstrap.secretName -}}
{{- end -}}

{{- define "kubegate.adminService" -}}
{{- printf "%s-admin" (include "kubegate.fullname" .) -}}
{{- end -}}

{{- define "kubegate.leaseName" -}}
{{- default (printf "%s-operator" (include "kubegate.fullname" .)) .Values.operator.leaderElection.leaseName -}}
{{- end -}}

{{/* Cluster-scoped objects carry the namespace too: two releases of the same name may coexist. */}}
{{- define "kubegate.clusterRoleName" -}}
{{- printf "%s-%s-operator" .Release.Namespace (include "kubegate.fullname" .) -}}
{{- end -}}

{{/* Path of the push token inside both containers. */}}
{{- define "kubegate.pushTokenPath" -}}
/etc/kubegate/push-token/token
{{- end -}}

{{/* Directory of the default certificate's files (dataplane.tls.defaultCertificate) in the data plane. */}}
{{- define "kubegate.defaultCertificateDir" -}}
/etc/kubegate/default-certificate
{{- end -}}

{{/* The public HTTPS port that redirectHTTP names: dataplane.tls.redirectPort, else servicePort. */}}
{{- define "kubegate.tlsRedirectPort" -}}
{{- $tls := .Values.dataplane.tls -}}
{{- if kindIs "invalid" $tls.redirectPort -}}
{{- int $tls.servicePort -}}
{{- else -}}
{{- int $tls.redirectPort -}}
{{- end -}}
{{- end -}}

{{/* The chart's own Redis (redis.enabled): its Deployment, Service and NetworkPolicy. */}}
{{- define "kubegate.redisName" -}}
{{- printf "%s-redis" (include "kubegate.fullname" .) -}}
{{- end -}}

{{/*
The data plane's $KUBEGATE_REDIS_URL (EnvVar list items; empty without Redis): the chart's own Redis by
its Service, an external one from existingSecret (a URL may carry a password), or redis.url.
*/}}
{{- define "kubegate.redisEnv" -}}
{{- $redis := .Values.redis -}}
{{- if $redis.enabled -}}
- name: KUBEGATE_REDIS_URL
  value: {{ printf "redis://%s:6379/0" (include "kubegate.redisName" .) | quote }}
{{- else if $redis.existingSecret -}}
- name: KUBEGATE_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ $redis.existingSecret }}
      key: {{ $redis.existingSecretKey }}
{{- else if $redis.url -}}
- name: KUBEGATE_REDIS_URL
  value: {{ $redis.url | quote }}
{{- end -}}
{{- end -}}

{{/*
Checks that values.schema.json cannot express (across values). Included by templates/validate.yaml,
so that `helm install/upgrade/template` stops with one clear message.
*/}}
{{- define "kubegate.validate" -}}
{{- $dp := .Values.dataplane -}}
{{- if le (int $dp.terminationGracePeriodSeconds) (add $dp.preStopSleepSeconds $dp.drainTimeoutSeconds | int) -}}
{{- fail (printf "dataplane.terminationGracePeriodSeconds (%d) must be greater than dataplane.preStopSleepSeconds + dataplane.drainTimeoutSeconds (%d + %d), or in-flight requests are cut off" (int $dp.terminationGracePeriodSeconds) (int $dp.preStopSleepSeconds) (int $dp.drainTimeoutSeconds)) -}}
{{- end -}}
{{- if and (gt (int .Values.operator.replicas) 1) (not .Values.operator.leaderElection.enabled) -}}
{{- fail (printf "operator.replicas is %d but operator.leaderElection.enabled is false: two active operators would both push and write status; enable leader election or use 1 replica" (int .Values.operator.replicas)) -}}
{{- end -}}
{{- $pdb := $dp.podDisruptionBudget -}}
{{- if and $pdb.enabled (eq (kindIs "invalid" $pdb.minAvailable) (kindIs "invalid" $pdb.maxUnavailable)) -}}
{{- fail "dataplane.podDisruptionBudget: set exactly one of minAvailable and maxUnavailable (the other null)" -}}
{{- end -}}
{{- $fewest := include "kubegate.dataplaneMinReplicas" . | int -}}
{{- if and $pdb.enabled (gt $fewest 1) -}}
{{- /* Rendered (more than one replica): it must let at least one pod go at the fewest replicas. */ -}}
{{- $counted := ternary "autoscaling.minReplicas" "replicas" $dp.autoscaling.enabled -}}
{{- if not (kindIs "invalid" $pdb.minAvailable) -}}
{{- $min := toString $pdb.minAvailable -}}
{{- $needed := int $min -}}
{{- if hasSuffix "%" $min -}}
{{- $percent := trimSuffix "%" $min | int -}}
{{- $needed = div (add (mul $percent $fewest) 99) 100 | int -}}
{{- end -}}
{{- if ge $needed $fewest -}}
{{- fail (printf "dataplane.podDisruptionBudget.minAvailable (%s) keeps all %d pods (dataplane.%s) available: it would block every drain; lower it, or raise dataplane.%s" $min $fewest $counted $counted) -}}
{{- end -}}
{{- else if eq (toString $pdb.maxUnavailable | trimSuffix "%" | int) 0 -}}
{{- fail (printf "dataplane.podDisruptionBudget.maxUnavailable (%v) lets no pod go: it would block every drain" $pdb.maxUnavailable) -}}
{{- end -}}
{{- end -}}
{{- $as := $dp.autoscaling -}}
{{- if $as.enabled -}}
{{- if gt (int $as.minReplicas) (int $as.maxReplicas) -}}
{{- fail (printf "dataplane.autoscaling.minReplicas (%d) is greater than maxReplicas (%d)" (int $as.minReplicas) (int $as.maxReplicas)) -}}
{{- end -}}
{{- if and (kindIs "invalid" $as.targetCPUUtilizationPercentage) (kindIs "invalid" $as.targetMemoryUtilizationPercentage) (not $as.customMetrics) -}}
{{- fail "dataplane.autoscaling has no metric: set targetCPUUtilizationPercentage, targetMemoryUtilizationPercentage or customMetrics" -}}
{{- end -}}
{{- end -}}
{{- $svc := .Values.service -}}
{{- if and (eq $svc.type "ClusterIP") (not (kindIs "invalid" $svc.nodePort)) -}}
{{- fail "service.nodePort is set but service.type is ClusterIP: use NodePort or LoadBalancer" -}}
{{- end -}}
{{- if and $svc.loadBalancerIP (ne $svc.type "LoadBalancer") -}}
{{- fail (printf "service.loadBalancerIP is set but service.type is %s: use LoadBalancer" $svc.type) -}}
{{- end -}}
{{- if and (eq (len $svc.ipFamilies) 2) (not (has $svc.ipFamilyPolicy (list "PreferDualStack" "RequireDualStack"))) -}}
{{- fail "service.ipFamilies names two families: set service.ipFamilyPolicy to PreferDualStack or RequireDualStack" -}}
{{- end -}}
{{- range $component := list "operator" "dataplane" -}}
{{- $values := index $.Values $component -}}
{{- if $values.spreadAcrossNodes -}}
{{- range $values.topologySpreadConstraints -}}
{{- if and (eq (toString .topologyKey) "kubernetes.io/hostname") (eq (toString .whenUnsatisfiable) "ScheduleAnyway") -}}
{{- fail (printf "%s.topologySpreadConstraints has a ScheduleAnyway constraint on kubernetes.io/hostname, like the one of %s.spreadAcrossNodes (Kubernetes refuses two): set %s.spreadAcrossNodes to false" $component $component $component) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $token := .Values.pushToken.value -}}
{{- if and $token (lt (len $token) 16) -}}
{{- fail (printf "pushToken.value is %d characters long: use at least 16 (or leave it empty: the operator then generates one)" (len $token)) -}}
{{- end -}}
{{- if eq (int $dp.port) (int $dp.adminPort) -}}
{{- fail "dataplane.port and dataplane.adminPort must differ" -}}
{{- end -}}
{{- $tls := $dp.tls -}}
{{- if $tls.enabled -}}
{{- if or (eq (int $tls.port) (int $dp.port)) (eq (int $tls.port) (int $dp.adminPort)) -}}
{{- fail (printf "dataplane.tls.port (%d) must differ from dataplane.port and dataplane.adminPort" (int $tls.port)) -}}
{{- end -}}
{{- if eq (int $tls.servicePort) (int .Values.service.port) -}}
{{- fail (printf "dataplane.tls.servicePort and service.port are both %d: the traffic Service needs two ports" (int $tls.servicePort)) -}}
{{- end -}}
{{- if and (eq .Values.service.type "ClusterIP") (not (kindIs "invalid" $tls.nodePort)) -}}
{{- fail "dataplane.tls.nodePort is set but service.type is ClusterIP: use NodePort or LoadBalancer" -}}
{{- end -}}
{{- if and (not (kindIs "invalid" $tls.nodePort)) (not (kindIs "invalid" .Values.service.nodePort)) (eq (int $tls.nodePort) (int .Values.service.nodePort)) -}}
{{- fail (printf "dataplane.tls.nodePort and service.nodePort are both %d: use two node ports" (int $tls.nodePort)) -}}
{{- end -}}
{{- else if $tls.defaultCertificate.secretName -}}
{{- fail "dataplane.tls.defaultCertificate.secretName is set but dataplane.tls.enabled is false: the default certificate is served only by the HTTPS listener" -}}
{{- end -}}
{{- $redis := .Values.redis -}}
{{- if and $redis.enabled (or $redis.url $redis.existingSecret) -}}
{{- fail (printf "redis.enabled is true and redis.%s is set: use either the chart's own Redis (enabled) or an external one (url or existingSecret), not both" (ternary "url" "existingSecret" (not (empty $redis.url)))) -}}
{{- end -}}
{{- if and $redis.url $redis.existingSecret -}}
{{- fail "redis.url and redis.existingSecret are both set: give the external Redis's URL one way (existingSecret when it carries a password)" -}}
{{- end -}}
{{- end -}}
