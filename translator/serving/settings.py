"""The server's limits and batching settings (`ServeSettings`), validated once at start-up."""

from __future__ import annotations

from dataclasses import dataclass

from translator.errors import ConfigError


@dataclass(frozen=True)
class ServeSettings:
    """Server limits and batching; every field has a `translator serve` flag."""

    model_name: str | None = None  # URL name of the model; default: the directory's name
    max_body_bytes: int = 1 << 20  # 413 above this
    max_sentences: int = 64  # sentences per request
    max_chars: int = 1000  # characters per sentence
    max_batch_size: int = 32  # sentences per model call (dynamic batching)
    # How long the first sentence of a batch waits for others once the model is free. 0: a
    # batch starts as soon as the model is free, with whatever queued while it ran (TF
    # Serving's advice for CPUs); a wait only adds latency at low load.
    max_wait_ms: float = 0.0
    poll_seconds: float = 2.0  # how often the directory is checked for new versions
    keep_versions: int = 1  # newest versions kept loaded (TF Serving's "latest" policy)

    def __post_init__(self) -> None:
        for key in ("max_body_bytes", "max_sentences", "max_chars", "max_batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"serve setting '{key}' must be >= 1, got {getattr(self, key)}")
        if self.keep_versions < 1:
            raise ConfigError(
                f"serve setting 'keep_versions' must be >= 1, got {self.keep_versions}"
            )
        if self.max_wait_ms < 0 or self.poll_seconds <= 0:
            raise ConfigError("serve settings need max_wait_ms >= 0 and poll_seconds > 0")
