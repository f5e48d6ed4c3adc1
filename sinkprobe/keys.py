"""The one hash every cache is keyed by: a study stage, a finished analysis, a frozen model's
references. Equal parts give equal keys on any machine; any changed part, another key."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, is_dataclass


def content_key(*parts, length: int = 16) -> str:
    """sha256 of ``parts`` as JSON (a dataclass as its fields, keys sorted, anything else
    JSON cannot write by ``str``), as ``length`` hex digits."""
    blob = json.dumps(
        [asdict(p) if is_dataclass(p) and not isinstance(p, type) else p for p in parts], sort_keys=True, default=str
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:length]
