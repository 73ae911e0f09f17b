# A trial of Kiln from Terraform: the chart with its bundled SeaweedFS (no S3 of your own; data is lost with the
# pod), one team namespace, and iris trained, registered and served there.
#
#   terraform init
#   terraform apply -target=module.kiln   # the CRDs must exist before kubernetes_manifest can plan Kiln objects
#   terraform apply

resource "random_password" "s3_secret_key" {
  length  = 40
  special = false
}

module "kiln" {
  source = "../.."

  release_name    = "kiln"
  namespace       = "kiln-system"
  team_namespaces = [var.team_namespace]

  image_repositories = {
    operator = "${var.image_registry}/kiln-operator"
    trainer  = "${var.image_registry}/kiln-trainer"
    server   = "${var.image_registry}/kiln-server"
  }
  image_tag              = var.image_tag
  allowed_image_prefixes = ["${var.image_registry}/"]

  trial_seaweedfs      = true
  s3_bucket            = "kiln"
  s3_access_key_id     = "kiln"
  s3_secret_access_key = random_password.s3_secret_key.result

  team_quota = {
    cpu    = "8"
    memory = "16Gi"
    gpu    = 0
    pods   = 40
  }
}

resource "kubernetes_manifest" "model" {
  manifest = {
    apiVersion = "kiln.dev/v1alpha1"
    kind       = "Model"
    metadata = {
      name      = var.model_name
      namespace = var.team_namespace
    }
    spec = {
      promotion = {
        policy         = "auto"
        metric         = "accuracy"
        minImprovement = 0
      }
      retention = {
        keepLast = 10
      }
    }
  }

  depends_on = [module.kiln]
}

resource "kubernetes_manifest" "training_job" {
  manifest = {
    apiVersion = "kiln.dev/v1alpha1"
    kind       = "TrainingJob"
    metadata = {
      name      = var.model_name
      namespace = var.team_namespace
    }
    spec = {
      model = var.model_name
      dataset = {
        uri = "builtin:iris"
      }
      algorithm = {
        name = "random_forest"
        params = {
          n_estimators = 100
          max_depth    = 5
        }
      }
      evaluation = {
        gates = [{ metric = "accuracy", op = ">=", value = 0.85 }]
      }
      export = {
        formats = ["onnx", "joblib"]
      }
      resources = {
        cpu    = "1"
        memory = "1Gi"
      }
    }
  }

  # Terraform's apply returns once the run has registered its version.
  wait {
    fields = {
      "status.phase" = "Succeeded"
    }
  }
  timeouts {
    create = "20m"
  }

  depends_on = [kubernetes_manifest.model]
}

resource "kubernetes_manifest" "deployment" {
  manifest = {
    apiVersion = "kiln.dev/v1alpha1"
    kind       = "Deployment"
    metadata = {
      name      = var.model_name
      namespace = var.team_namespace
    }
    spec = {
      model = {
        name  = var.model_name
        alias = "production"
      }
      runtime = "onnx"
      replicas = {
        min = 1
        max = 4
      }
      resources = {
        cpu    = "500m"
        memory = "512Mi"
      }
    }
  }

  wait {
    condition {
      type   = "Ready"
      status = "True"
    }
  }

  depends_on = [kubernetes_manifest.training_job]
}
