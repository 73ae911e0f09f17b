output "namespace" {
  description = "Namespace of the operator and the gateway."
  value       = module.kiln.namespace
}

output "gateway_url" {
  description = "In-cluster URL of the gateway."
  value       = module.kiln.gateway_url
}

output "predict_url" {
  description = "Where the example model answers (POST, with a bearer token allowed to create deployments/predict)."
  value       = "${module.kiln.gateway_url}/${var.team_namespace}/${var.model_name}/v2/models/${var.model_name}/infer"
}
