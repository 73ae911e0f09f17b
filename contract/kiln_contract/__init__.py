"""The artifact contract shared by Kiln's operator, trainer and server.

One place for the facts all three must agree on: the API group, where a version's
artifacts live, how they are checksummed, and what a model card holds.
"""

GROUP = "kiln.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

MODEL_CARD = "modelcard.json"
REPORT = "report.html"
