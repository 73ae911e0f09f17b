# Kiln on a cluster: the release namespace, the operator's S3 Secret, the chart, and each team namespace with the
# Secret(s) its training and serving pods load. Providers (kubernetes, helm) come from the calling root.

locals {
  # The chart's own naming (templates/_helpers.tpl "kiln.fullname"): <release>-kiln, or <release> when it
  # already contains "kiln", at most 50 characters.
  fullname = trimsuffix(substr(length(regexall("kiln", var.release_name)) > 0 ? var.release_name : "${var.release_name}-kiln", 0, 50), "-")

  chart = var.chart_repository != "" ? "kiln" : (var.chart_path != "" ? var.chart_path : "${path.module}/../../charts/kiln")

  static_credentials = var.s3_access_key_id != ""
  read_credentials   = var.s3_read_access_key_id != ""

  # Production: the operator's keys live in a Secret this module manages (s3.existingSecret). The trial SeaweedFS
  # is set up by the chart from inline keys, so then the chart writes that Secret itself.
  operator_secret_name = "${local.fullname}-s3"
  create_operator_secret = local.static_credentials && !var.trial_seaweedfs

  # Where training and serving pods reach S3: the endpoint given, the trial SeaweedFS's Service, or AWS.
  s3_endpoint = var.s3_endpoint != "" ? var.s3_endpoint : (var.trial_seaweedfs ? "http://${local.fullname}-seaweedfs.${var.namespace}.svc:8333" : "")

  serving_secret_name = local.read_credentials ? "${var.workload_secret_name}-read" : ""
  gateway_port        = 8081

  # Exactly what the chart gets (tests/unit/test_terraform.py renders the chart with it).
  chart_values = {
    image = {
      repository = var.image_repositories["operator"]
      tag        = var.image_tag
    }
    images = {
      trainer = {
        repository = var.image_repositories["trainer"]
        tag        = var.image_tag
      }
      server = {
        repository = var.image_repositories["server"]
        tag        = var.image_tag
      }
      allowed = var.allowed_image_prefixes
    }
    s3 = {
      endpoint        = var.s3_endpoint
      region          = var.s3_region
      bucket          = var.s3_bucket
      existingSecret  = local.create_operator_secret ? local.operator_secret_name : ""
      accessKeyId     = var.trial_seaweedfs ? var.s3_access_key_id : ""
      secretAccessKey = var.trial_seaweedfs ? var.s3_secret_access_key : ""
      workloadSecret  = var.workload_secret_name
      servingSecret   = local.serving_secret_name
      createBucket    = var.s3_create_bucket || var.trial_seaweedfs
    }
    operator = {
      watchNamespaces = var.watch_all_namespaces ? [] : var.team_namespaces
    }
    gateway = {
      replicas = var.gateway_replicas
      port     = local.gateway_port
    }
    serviceAccount = {
      annotations = var.operator_service_account_annotations
    }
    networkPolicy = {
      enabled = var.network_policy_enabled
    }
    monitoring = {
      podMonitor = {
        enabled = var.monitoring_enabled
      }
      prometheusRule = {
        enabled = var.monitoring_enabled
      }
      dashboard = {
        enabled = var.monitoring_enabled
      }
    }
    seaweedfs = {
      enabled = var.trial_seaweedfs
    }
  }

  restricted = {
    "pod-security.kubernetes.io/enforce" = "restricted"
    "pod-security.kubernetes.io/audit"   = "restricted"
    "pod-security.kubernetes.io/warn"    = "restricted"
  }

  # What training pods load (envFrom) in each team namespace; serving pods load the read-only pair if given.
  workload_env = {
    AWS_ACCESS_KEY_ID     = var.s3_access_key_id
    AWS_SECRET_ACCESS_KEY = var.s3_secret_access_key
    AWS_REGION            = var.s3_region
    KILN_S3_ENDPOINT      = local.s3_endpoint
  }
  serving_env = {
    AWS_ACCESS_KEY_ID     = var.s3_read_access_key_id
    AWS_SECRET_ACCESS_KEY = var.s3_read_secret_access_key
    AWS_REGION            = var.s3_region
    KILN_S3_ENDPOINT      = local.s3_endpoint
  }
  team_namespaces = toset(var.team_namespaces)
}

resource "kubernetes_namespace_v1" "kiln" {
  count = var.create_namespace ? 1 : 0

  metadata {
    name   = var.namespace
    labels = merge(var.namespace_labels, local.restricted, { "app.kubernetes.io/part-of" = "kiln" })
  }
}

resource "kubernetes_secret_v1" "operator_s3" {
  count = local.create_operator_secret ? 1 : 0

  metadata {
    name      = local.operator_secret_name
    namespace = var.namespace
    labels    = { "app.kubernetes.io/part-of" = "kiln" }
  }
  data = {
    AWS_ACCESS_KEY_ID     = var.s3_access_key_id
    AWS_SECRET_ACCESS_KEY = var.s3_secret_access_key
  }
  type = "Opaque"

  depends_on = [kubernetes_namespace_v1.kiln]
}

resource "helm_release" "kiln" {
  name       = var.release_name
  namespace  = var.namespace
  repository = var.chart_repository != "" ? var.chart_repository : null
  chart      = local.chart
  version    = var.chart_repository != "" ? var.chart_version : null
  values     = compact([yamlencode(local.chart_values), var.extra_values_yaml])

  atomic          = true
  cleanup_on_fail = true
  wait            = true
  timeout         = var.helm_timeout
  max_history     = 10

  depends_on = [kubernetes_namespace_v1.kiln, kubernetes_secret_v1.operator_s3]

  lifecycle {
    precondition {
      condition     = (var.s3_access_key_id == "") == (var.s3_secret_access_key == "")
      error_message = "s3_access_key_id and s3_secret_access_key go together."
    }
    precondition {
      condition     = (var.s3_read_access_key_id == "") == (var.s3_read_secret_access_key == "")
      error_message = "s3_read_access_key_id and s3_read_secret_access_key go together."
    }
    precondition {
      condition     = !var.trial_seaweedfs || local.static_credentials
      error_message = "trial_seaweedfs needs s3_access_key_id and s3_secret_access_key (SeaweedFS is set up with them)."
    }
    precondition {
      condition     = !contains(var.team_namespaces, var.namespace)
      error_message = "team_namespaces must not include the release namespace."
    }
  }
}

# -- Team namespaces ----------------------------------------------------------------------------------------------

resource "kubernetes_namespace_v1" "team" {
  for_each = var.create_team_namespaces ? local.team_namespaces : toset([])

  metadata {
    name   = each.value
    labels = merge(var.namespace_labels, local.restricted)
  }
}

resource "kubernetes_secret_v1" "workload" {
  for_each = local.static_credentials ? local.team_namespaces : toset([])

  metadata {
    name      = var.workload_secret_name
    namespace = each.value
    labels    = { "app.kubernetes.io/part-of" = "kiln" }
  }
  data = { for k, v in local.workload_env : k => v if v != "" }
  type = "Opaque"

  depends_on = [kubernetes_namespace_v1.team]
}

resource "kubernetes_secret_v1" "serving" {
  for_each = local.read_credentials ? local.team_namespaces : toset([])

  metadata {
    name      = local.serving_secret_name
    namespace = each.value
    labels    = { "app.kubernetes.io/part-of" = "kiln" }
  }
  data = { for k, v in local.serving_env : k => v if v != "" }
  type = "Opaque"

  depends_on = [kubernetes_namespace_v1.team]
}

resource "kubernetes_resource_quota_v1" "team" {
  for_each = var.team_quota != null ? local.team_namespaces : toset([])

  metadata {
    name      = "kiln-team"
    namespace = each.value
  }
  spec {
    hard = {
      "requests.cpu"            = var.team_quota.cpu
      "requests.memory"         = var.team_quota.memory
      "requests.nvidia.com/gpu" = var.team_quota.gpu
      "pods"                    = var.team_quota.pods
    }
  }

  depends_on = [kubernetes_namespace_v1.team]
}
