"""Recognise values that look like credentials, so they never reach logs, MLflow or compiled pipelines."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["REDACTED", "looks_secret_name", "looks_secret_value", "redact", "secret_env_values"]

REDACTED = "<redacted>"

# Whole words of a name only: `max_caption_tokens` is not a secret, `auth_token` is.
_SECRET_NAME = re.compile(
    r"(?<![a-z])(secret|passw(or)?d|token|credentials?|apikey|auth|authorization)(?![a-z])"
    r"|(?<![a-z])(api|access|private|session)[_-]?key(?![a-z])",
    re.IGNORECASE,
)
_SECRET_VALUE = [
    re.compile(r"\b(AKIA|ASIA)[A-Z0-9]{16}\b"),  # AWS access key id
    re.compile(r"://[^/\s:@]+:[^/\s@]+@"),  # URL with user:password
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"\bbearer\s+\S{8,}", re.IGNORECASE),
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}\b"),  # GitHub tokens
    re.compile(r"\beyJ[\w-]{8,}\.[\w-]{8,}\.[\w-]{8,}\b"),  # JWT
    # An AWS-secret-shaped string: 40 chars of base64 with upper, lower case and digits
    # (a lower-case hex digest such as a git commit does not match).
    re.compile(
        r"(?<![A-Za-z0-9/+])(?=[A-Za-z0-9/+]*[A-Z])(?=[A-Za-z0-9/+]*[a-z])(?=[A-Za-z0-9/+]*\d)[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])"
    ),
]
_MIN_ENV_SECRET = 6  # shorter env values would match by accident


def looks_secret_name(name: str) -> bool:
    """True for names such as `aws_secret_access_key`, `password`, `api_token`."""
    return bool(_SECRET_NAME.search(name))


def secret_env_values(environ: Mapping[str, str] | None = None) -> set[str]:
    """The values of environment variables whose names look like credentials."""
    env = os.environ if environ is None else environ
    names = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}
    return {v for k, v in env.items() if (k in names or looks_secret_name(k)) and len(v) >= _MIN_ENV_SECRET}


def looks_secret_value(value: Any, env_secrets: set[str] | None = None) -> bool:
    """True when a value has a credential's shape or contains a secret from the environment."""
    text = str(value)
    if any(p.search(text) for p in _SECRET_VALUE):
        return True
    secrets = secret_env_values() if env_secrets is None else env_secrets
    return any(s in text for s in secrets)


def redact(params: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of flat `params` with every credential-looking name or value replaced by REDACTED."""
    env_secrets = secret_env_values()
    return {
        k: (REDACTED if looks_secret_name(k) or looks_secret_value(v, env_secrets) else v) for k, v in params.items()
    }
