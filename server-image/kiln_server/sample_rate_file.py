"""The payload log's sample rate from a file that may change while the server runs.

The operator mounts spec.logging.sampleRate as a ConfigMap volume (--payload-log-sample-rate-file), so a new rate
reaches running pods without a rollout: the kubelet writes the ConfigMap's new contents into a new directory and
swaps a symlink, within its sync period (about a minute by default). The server's once-a-second loop calls
RateFile.changed(), one stat(2) of the path (following the symlink); the file is read only when that stat differs.
Kubernetes offers no other notice of a volume's update inside the pod, and inotify does not see a swap of a
symlink's target two levels up.
"""

from __future__ import annotations

import math
import os

MAX_BYTES = 64  # a rate is a short number; anything longer is not one, and is not read further


def parse(text: bytes | str, where: str) -> float:
    """A rate 0..1 from the file's text (surrounding whitespace allowed); ValueError naming `where` otherwise."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    try:
        rate = float(text.strip())
    except ValueError:
        raise ValueError(f"{where}: {text.strip()[:MAX_BYTES]!r} is not a number between 0 and 1") from None
    if not (math.isfinite(rate) and 0.0 <= rate <= 1.0):
        raise ValueError(f"{where}: {rate!r} is not between 0 and 1")
    return rate


def read(path: str) -> float:
    """The rate the file holds; OSError or ValueError (naming the file) when it holds none."""
    with open(path, "rb") as f:
        text = f.read(MAX_BYTES + 1)
    if len(text) > MAX_BYTES:
        raise ValueError(f"{path}: longer than {MAX_BYTES} bytes; a sample rate is a number between 0 and 1")
    return parse(text, path)


class RateFile:
    def __init__(self, path: str):
        self.path = path
        self._seen = None

    def changed(self) -> float | None:
        """The file's rate when the file changed since the last call (the first call: always), else None. Raises
        OSError or ValueError (naming the file) when it changed and holds no rate; the next call reads it again
        only once it changes again."""
        st = os.stat(self.path)
        seen = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
        if seen == self._seen:
            return None
        self._seen = seen
        return read(self.path)
