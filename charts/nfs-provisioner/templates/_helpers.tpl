{{/* Name of the chart, or nameOverride. */}}
{{- define "nfs-provisioner.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name of this release's objects: fullnameOverride, or <release>-<name> unless the
release name already contains the name. */}}
{{- define "nfs-provisioner.fullname" -}}
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

{{/* The full name the Go nfs-subdir-external-provisioner chart gives this release (same
rule, its chart name): its default provisioner name is built from it, and a release switched
from that chart must keep serving the StorageClasses and PVs that name it. */}}
{{- define "nfs-provisioner.goFullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default "nfs-subdir-external-provisioner" .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "nfs-provisioner.provisionerName" -}}
{{- if .Values.storageClass.provisionerName -}}
{{- .Values.storageClass.provisionerName -}}
{{- else -}}
cluster.local/{{ include "nfs-provisioner.goFullname" . }}
{{- end -}}
{{- end -}}

{{- define "nfs-provisioner.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "nfs-provisioner.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Labels the pods are selected by (never change them: a Deployment's selector is
immutable). */}}
{{- define "nfs-provisioner.selectorLabels" -}}
app.kubernetes.io/name: {{ include "nfs-provisioner.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels of every object. */}}
{{- define "nfs-provisioner.labels" -}}
{{ include "nfs-provisioner.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- with .Values.labels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Labels of the pods. */}}
{{- define "nfs-provisioner.podLabels" -}}
{{ include "nfs-provisioner.selectorLabels" . }}
{{- with .Values.labels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The export is mounted through the chart's PersistentVolume and claim: with mount options
(an inline nfs volume has none) and in the PodSecurity restricted mode (which allows no nfs
volume). */}}
{{- define "nfs-provisioner.exportThroughClaim" -}}
{{- if or .Values.nfs.mountOptions .Values.podSecurity.restricted -}}true{{- end -}}
{{- end -}}

{{- define "nfs-provisioner.exportVolumeName" -}}
pv-{{ include "nfs-provisioner.fullname" . }}
{{- end -}}

{{- define "nfs-provisioner.exportClaimName" -}}
pvc-{{ include "nfs-provisioner.fullname" . }}
{{- end -}}

{{/* The container's securityContext: as configured, or in the restricted mode non-root with
no capability at all. */}}
{{- define "nfs-provisioner.securityContext" -}}
{{- if .Values.podSecurity.restricted -}}
{{- $base := omit (deepCopy (default (dict) .Values.securityContext)) "capabilities" "runAsUser" "runAsGroup" "privileged" "allowPrivilegeEscalation" "seccompProfile" "runAsNonRoot" -}}
{{- $restricted := dict "runAsNonRoot" true "runAsUser" (int .Values.podSecurity.runAsUser) "runAsGroup" (int .Values.podSecurity.runAsGroup) "allowPrivilegeEscalation" false "privileged" false "capabilities" (dict "drop" (list "ALL")) "seccompProfile" (dict "type" "RuntimeDefault") -}}
{{- toYaml (merge $restricted $base) -}}
{{- else -}}
{{- toYaml .Values.securityContext -}}
{{- end -}}
{{- end -}}

{{/* The pod's securityContext: in the restricted mode also runAsNonRoot and RuntimeDefault. */}}
{{- define "nfs-provisioner.podSecurityContext" -}}
{{- if .Values.podSecurity.restricted -}}
{{- $restricted := dict "runAsNonRoot" true "seccompProfile" (dict "type" "RuntimeDefault") -}}
{{- toYaml (merge $restricted (omit (deepCopy (default (dict) .Values.podSecurityContext)) "runAsNonRoot" "seccompProfile" "runAsUser")) -}}
{{- else -}}
{{- toYaml (default (dict) .Values.podSecurityContext) -}}
{{- end -}}
{{- end -}}

{{/* Whether an extra export (the dict given) is mounted through the chart's PV and claim. */}}
{{- define "nfs-provisioner.extraExportThroughClaim" -}}
{{- if or .export.mountOptions .root.Values.podSecurity.restricted -}}true{{- end -}}
{{- end -}}

{{/* Where the pod reads the extra exports' list (NFS_EXPORTS_CONFIG). */}}
{{- define "nfs-provisioner.exportsConfigDir" -}}
/etc/nfs-provisioner
{{- end -}}
