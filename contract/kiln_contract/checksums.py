"""sha256 of files and byte strings, streamed so large artifacts never sit in memory."""

import hashlib
from pathlib import Path

_CHUNK = 1 << 20


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class ChecksumMismatch(ValueError):
    def __init__(self, what: str, expected: str, actual: str):
        super().__init__(f"sha256 mismatch for {what}: expected {expected}, got {actual}")
        self.expected = expected
        self.actual = actual


def verify(what: str, expected: str, actual: str) -> None:
    if expected.lower() != actual.lower():
        raise ChecksumMismatch(what, expected, actual)
