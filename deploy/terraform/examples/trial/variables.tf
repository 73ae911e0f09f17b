variable "kubeconfig_path" {
  type        = string
  description = "kubeconfig of the cluster to install into."
  default     = "~/.kube/config"

  validation {
    condition     = length(var.kubeconfig_path) > 0
    error_message = "kubeconfig_path must not be empty."
  }
}

variable "kube_context" {
  type        = string
  description = "Context in kubeconfig_path. Empty: its current context."
  default     = ""

  validation {
    condition     = !can(regex("\\s", var.kube_context))
    error_message = "kube_context must not contain whitespace."
  }
}

variable "image_registry" {
  type        = string
  description = "Registry and path the three images were pushed to as kiln-operator, kiln-trainer and kiln-server."
  default     = "kiln"

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9._:/-]*[a-z0-9]$", var.image_registry)) && !endswith(var.image_registry, "/")
    error_message = "image_registry must be a registry path without a trailing slash, e.g. registry.example.com/ml."
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

variable "team_namespace" {
  type        = string
  description = "The team namespace the example Model, TrainingJob and Deployment are created in."
  default     = "team-a"

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", var.team_namespace)) && var.team_namespace != "kiln-system"
    error_message = "team_namespace must be a DNS label other than kiln-system."
  }
}

variable "model_name" {
  type        = string
  description = "Name of the example Model, TrainingJob and Deployment (iris, trained on scikit-learn's iris)."
  default     = "iris"

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]{0,40}[a-z0-9])?$", var.model_name))
    error_message = "model_name must be a DNS label of at most 42 characters."
  }
}
