"""The numeric precision of a run: Keras's global dtype policy, chosen from `train`.

The choice lives here only, so a new rule (say, "auto": bfloat16 where it runs natively) is
one change in `set_policy`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import keras
import tensorflow as tf

from translator.config import TrainConfig

log = logging.getLogger(__name__)


def set_policy(config: TrainConfig) -> str:
    """Sets the global dtype policy for the layers built next; returns its name.

    Layers take the global policy when built, so it is set both ways (a process may train
    twice, e.g. a notebook).
    """
    policy = "mixed_bfloat16" if config.mixed_precision else "float32"
    keras.mixed_precision.set_global_policy(policy)
    if config.mixed_precision and not has_fast_bf16():
        log.warning(
            "train.mixed_precision=true on a CPU without bf16 instructions (avx512_bf16 or "
            "amx_bf16) and no GPU: bfloat16 is emulated and usually slower than float32 here"
        )
    return policy


def has_fast_bf16() -> bool:
    """Whether bfloat16 runs natively: a GPU, or a CPU with avx512_bf16/amx_bf16 (Linux flags).

    Unknown (no /proc/cpuinfo) counts as yes, so only a CPU known to lack them is warned about.
    """
    if tf.config.list_physical_devices("GPU"):
        return True
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return True
    return "avx512_bf16" in flags or "amx_bf16" in flags
