"""Fully-qualified resource names: `deployments` alone would also match apps/v1."""

from kiln_contract import GROUP, VERSION

TRAININGJOBS = f"trainingjobs.{VERSION}.{GROUP}"
MODELS = f"models.{VERSION}.{GROUP}"
DEPLOYMENTS = f"deployments.{VERSION}.{GROUP}"
