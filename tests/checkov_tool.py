"""checkov in a virtualenv of its own, built on first use: .kiln/checkov-venv (pinned version).

checkov pins boto3, packaging and others to versions that conflict with the project's own pins (boto3==1.44.8:
`pip install --dry-run -e '.[dev]' checkov` reports ResolutionImpossible), so it cannot go into the dev extra.
The tests call checkov() and get the command that runs it; tests/tool_venv.py builds the venv on first use.
"""

from __future__ import annotations

import tool_venv

VERSION = "3.3.30"


def checkov() -> list[str]:
    """The command that runs checkov VERSION (the venv's python -m checkov.main: console scripts would carry the
    directory the venv was built in); builds the venv when it is missing or stale."""
    return [tool_venv.python("checkov", f"checkov=={VERSION}"), "-m", "checkov.main"]
