output "namespace" {
  description = "Namespace of the operator and the gateway."
  value       = var.create_namespace ? kubernetes_namespace_v1.kiln[0].metadata[0].name : var.namespace
}

output "release_name" {
  description = "The Helm release."
  value       = helm_release.kiln.name
}

output "gateway_url" {
  description = "In-cluster URL of the gateway; predictions go to <gateway_url>/<namespace>/<deployment>/v2/models/<model>/infer with a bearer token."
  value       = "http://${local.fullname}-gateway.${var.namespace}.svc:${local.gateway_port}"
}

output "operator_metrics_url" {
  description = "In-cluster URL of the operator's Prometheus metrics (kiln_operator_*)."
  value       = "http://${local.fullname}-operator.${var.namespace}.svc:8082/metrics"
}

output "team_namespaces" {
  description = "The team namespaces the operator's workloads run in."
  value       = var.team_namespaces
}

output "workload_secret_name" {
  description = "Secret that training pods load in each team namespace."
  value       = var.workload_secret_name
}

output "s3_endpoint" {
  description = "The S3 endpoint Kiln uses (empty: AWS S3)."
  value       = local.s3_endpoint
}
