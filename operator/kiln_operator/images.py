"""The image allowlist: a spec may only name images the platform team allowed."""

from __future__ import annotations


class ImageNotAllowed(ValueError):
    def __init__(self, field: str, image: str, allowed: list[str]):
        super().__init__(f"{field}: image {image!r} is not allowed; allowed prefixes: {', '.join(allowed)}")
        self.field = field


def choose(requested: str | None, default: str, allowed: list[str], field: str) -> str:
    if not requested or requested == default:
        return default
    if any(requested.startswith(prefix) for prefix in allowed):
        return requested
    raise ImageNotAllowed(field, requested, allowed)
