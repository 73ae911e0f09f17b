"""Kiln's operator: `kopf run -m kiln_operator`. Importing the package registers the handlers."""

from kiln_operator import handlers  # noqa: F401  (registers kopf handlers on import)
