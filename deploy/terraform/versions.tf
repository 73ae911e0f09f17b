terraform {
  # optional() object attributes are not used; preconditions need 1.2, check blocks none.
  required_version = ">= 1.3.0"

  required_providers {
    # The module configures no provider: the calling root does (see examples/trial/versions.tf).
    helm = {
      source  = "hashicorp/helm"
      version = ">= 2.12.0, < 4.0.0"
    }
    kubernetes = {
      source  = "hashicorp/kubernetes"
      version = ">= 2.23.0, < 4.0.0"
    }
  }
}
