# Every variable is typed, described and validated; tests/unit/test_terraform.py checks that each one is used,
# listed in README.md, and that the chart renders (Helm's own engine, values.schema.json) with what main.tf passes.

# -- The release ----------------------------------------------------------------------------------------------

variable "release_name" {
  type        = string
  description = "Helm release name. Objects are named <release>-kiln, or <release> when it already contains \"kiln\"."
  default     = "kiln"

  validation {
    condition     = can(regex("^[a-z]([-a-z0-9]{0,51}[a-z0-9])?$", var.release_name))
    error_message = "release_name must be a DNS label of at most 53 characters (Helm's limit)."
  }
}

variable "namespace" {
  type        = string
  description = "Namespace of the operator, the gateway and (trial) SeaweedFS."
  default     = "kiln-system"

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", var.namespace)) && !contains(["default", "kube-system", "kube-public", "kube-node-lease"], var.namespace)
    error_message = "namespace must be a DNS label, and not default or a kube-* system namespace."
  }
}

variable "create_namespace" {
  type        = bool
  description = "Create the namespace (labelled for Pod Security \"restricted\"). false: it exists already."
  default     = true
}

variable "namespace_labels" {
  type        = map(string)
  description = "Extra labels for every namespace the module creates (the release's and the team namespaces)."
  default     = {}

  validation {
    condition     = alltrue([for k, v in var.namespace_labels : can(regex("^([a-z0-9.-]+/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$", k)) && length(v) <= 63])
    error_message = "namespace_labels keys must be label keys ([prefix/]name) and values at most 63 characters."
  }
}

# -- The chart --------------------------------------------------------------------------------------------------

variable "chart_path" {
  type        = string
  description = "Path of the chart when chart_repository is empty. Empty: this repository's charts/kiln."
  default     = ""

  validation {
    condition     = !can(regex("^[a-z]+://", var.chart_path))
    error_message = "chart_path is a local path; put a URL in chart_repository."
  }
}

variable "chart_repository" {
  type        = string
  description = "Helm repository URL (https:// or oci://) to install the chart \"kiln\" from instead of chart_path."
  default     = ""

  validation {
    condition     = var.chart_repository == "" || can(regex("^(https|oci)://[^ ]+$", var.chart_repository))
    error_message = "chart_repository must be empty or an https:// or oci:// URL."
  }
}

variable "chart_version" {
  type        = string
  description = "Chart version to install from chart_repository (ignored for chart_path)."
  default     = "0.1.0"

  validation {
    condition     = can(regex("^[0-9]+\\.[0-9]+\\.[0-9]+(-[0-9A-Za-z.-]+)?$", var.chart_version))
    error_message = "chart_version must be a semantic version, e.g. 0.1.0."
  }
}

variable "helm_timeout" {
  type        = number
  description = "Seconds Helm waits for the operator and the gateway to be ready (the release is rolled back after that)."
  default     = 600

  validation {
    condition     = var.helm_timeout >= 60 && var.helm_timeout <= 3600
    error_message = "helm_timeout must be between 60 and 3600 seconds."
  }
}

variable "extra_values_yaml" {
  type        = string
  description = "More chart values as YAML, merged over the module's (e.g. resources, nodeSelector, monitoring labels)."
  default     = ""

  validation {
    condition     = var.extra_values_yaml == "" || can(keys(yamldecode(var.extra_values_yaml)))
    error_message = "extra_values_yaml must be empty or a YAML mapping."
  }
}

# -- Images -------------------------------------------------------------------------------------------------------

variable "image_repositories" {
  type        = map(string)
  description = "Repositories of the three images, keys operator, trainer and server (e.g. registry.example.com/ml/kiln-operator)."
  default = {
    operator = "kiln/operator"
    trainer  = "kiln/trainer"
    server   = "kiln/server"
  }

  validation {
    condition     = length(setsubtract(["operator", "trainer", "server"], keys(var.image_repositories))) == 0 && length(var.image_repositories) == 3 && alltrue([for r in values(var.image_repositories) : can(regex("^[a-z0-9][a-z0-9._/:-]*[a-z0-9]$", r))])
    error_message = "image_repositories needs exactly the keys operator, trainer and server, each an image repository without tag."
  }
}

variable "image_tag" {
  type        = string
  description = "Tag of the three images. Empty: the chart's appVersion."
  default     = ""

  validation {
    condition     = var.image_tag == "" || can(regex("^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$", var.image_tag))
    error_message = "image_tag must be empty or a valid image tag."
  }
}

variable "allowed_image_prefixes" {
  type        = list(string)
  description = "Prefixes a TrainingJob's or Deployment's spec.image must start with (the chart's images.allowed)."
  default     = ["kiln/"]

  validation {
    condition     = length(var.allowed_image_prefixes) > 0 && alltrue([for p in var.allowed_image_prefixes : length(p) > 0 && !can(regex("[*?]", p))])
    error_message = "allowed_image_prefixes must hold at least one non-empty prefix; they are prefixes, not patterns."
  }
}

# -- S3 ------------------------------------------------------------------------------------------------------------

variable "s3_endpoint" {
  type        = string
  description = "S3-compatible endpoint (MinIO, Ceph, SeaweedFS ...). Empty: AWS S3, or the trial SeaweedFS when trial_seaweedfs is set."
  default     = ""

  validation {
    condition     = var.s3_endpoint == "" || can(regex("^https?://[^ /]+(/.*)?$", var.s3_endpoint))
    error_message = "s3_endpoint must be empty or an http(s):// URL."
  }
}

variable "s3_region" {
  type        = string
  description = "S3 region (AWS_REGION of the operator and the workload Secrets)."
  default     = "us-east-1"

  validation {
    condition     = can(regex("^[a-z0-9-]{2,32}$", var.s3_region))
    error_message = "s3_region must look like us-east-1."
  }
}

variable "s3_bucket" {
  type        = string
  description = "Bucket of the model registry (versions under s3://<bucket>/models/<namespace>)."
  default     = "kiln"

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.s3_bucket))
    error_message = "s3_bucket must be a valid S3 bucket name."
  }
}

variable "s3_create_bucket" {
  type        = bool
  description = "Run the chart's post-install Job that creates the bucket when it is missing (always on with trial_seaweedfs)."
  default     = false
}

variable "s3_access_key_id" {
  type        = string
  description = "Access key of the operator and the training pods. Empty: credentials come from the ServiceAccount (operator_service_account_annotations) and no Secrets are created."
  default     = ""
  sensitive   = true

  validation {
    condition     = var.s3_access_key_id == "" || can(regex("^[A-Za-z0-9_+=,.@/-]{3,128}$", var.s3_access_key_id))
    error_message = "s3_access_key_id must be empty or 3-128 characters without spaces."
  }
}

variable "s3_secret_access_key" {
  type        = string
  description = "Secret key that goes with s3_access_key_id."
  default     = ""
  sensitive   = true

  validation {
    condition     = var.s3_secret_access_key == "" || length(var.s3_secret_access_key) >= 8
    error_message = "s3_secret_access_key must be empty or at least 8 characters."
  }
}

variable "s3_read_access_key_id" {
  type        = string
  description = "Read-only access key for serving pods (s3:GetObject/ListBucket). Empty: serving pods use the read-write Secret."
  default     = ""
  sensitive   = true

  validation {
    condition     = var.s3_read_access_key_id == "" || can(regex("^[A-Za-z0-9_+=,.@/-]{3,128}$", var.s3_read_access_key_id))
    error_message = "s3_read_access_key_id must be empty or 3-128 characters without spaces."
  }
}

variable "s3_read_secret_access_key" {
  type        = string
  description = "Secret key that goes with s3_read_access_key_id."
  default     = ""
  sensitive   = true

  validation {
    condition     = var.s3_read_secret_access_key == "" || length(var.s3_read_secret_access_key) >= 8
    error_message = "s3_read_secret_access_key must be empty or at least 8 characters."
  }
}

variable "workload_secret_name" {
  type        = string
  description = "Name of the Secret training pods (and serving pods, without a read-only pair) load in each team namespace."
  default     = "kiln-s3"

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]{0,56}[a-z0-9])?$", var.workload_secret_name))
    error_message = "workload_secret_name must be a DNS label of at most 58 characters (\"-read\" is appended for serving)."
  }
}

variable "operator_service_account_annotations" {
  type        = map(string)
  description = "Annotations of the operator's ServiceAccount, e.g. an IAM role for S3 without static keys."
  default     = {}
}

variable "trial_seaweedfs" {
  type        = bool
  description = "FOR TRIALS: the chart's single-pod SeaweedFS as the S3 store (data lost with the pod). Needs s3_access_key_id and s3_secret_access_key, which then also sit in the Helm release."
  default     = false
}

# -- Team namespaces --------------------------------------------------------------------------------------------

variable "team_namespaces" {
  type        = list(string)
  description = "Namespaces that run Kiln workloads: created (unless create_team_namespaces is false), given the workload Secret(s) and watched by the operator."
  default     = []

  validation {
    condition     = alltrue([for ns in var.team_namespaces : can(regex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", ns)) && !contains(["kube-system", "kube-public", "kube-node-lease"], ns)]) && length(distinct(var.team_namespaces)) == length(var.team_namespaces)
    error_message = "team_namespaces must be distinct DNS labels and no kube-* system namespace."
  }
}

variable "create_team_namespaces" {
  type        = bool
  description = "Create the team namespaces (labelled for Pod Security \"restricted\"). false: they exist already."
  default     = true
}

variable "watch_all_namespaces" {
  type        = bool
  description = "Let the operator watch every namespace (ClusterRole) instead of team_namespaces only (RoleBindings). With no team_namespaces it watches all anyway."
  default     = false
}

variable "team_quota" {
  type = object({
    cpu    = string
    memory = string
    gpu    = number
    pods   = number
  })
  description = "A ResourceQuota for each team namespace (requests.cpu, requests.memory, requests.nvidia.com/gpu, pods). null: none."
  default     = null

  validation {
    condition     = var.team_quota == null ? true : (can(regex("^[0-9]+(\\.[0-9]+)?m?$", var.team_quota.cpu)) && can(regex("^[0-9]+(Ki|Mi|Gi|Ti)?$", var.team_quota.memory)) && var.team_quota.gpu >= 0 && var.team_quota.pods >= 1)
    error_message = "team_quota: cpu like \"8\" or \"500m\", memory like \"32Gi\", gpu >= 0, pods >= 1."
  }
}

# -- The gateway and the rest -----------------------------------------------------------------------------------

variable "gateway_replicas" {
  type        = number
  description = "Replicas of the gateway/activator (a PodDisruptionBudget keeps one)."
  default     = 2

  validation {
    condition     = var.gateway_replicas >= 1 && var.gateway_replicas <= 20 && floor(var.gateway_replicas) == var.gateway_replicas
    error_message = "gateway_replicas must be a whole number from 1 to 20."
  }
}

variable "network_policy_enabled" {
  type        = bool
  description = "The chart's NetworkPolicies for the gateway, the operator and (team namespaces) the serving pods."
  default     = true
}

variable "monitoring_enabled" {
  type        = bool
  description = "PodMonitors, the PrometheusRule and the Grafana dashboard ConfigMap (needs the Prometheus Operator's CRDs)."
  default     = false
}
