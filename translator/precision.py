"""Which precision to compute in: bfloat16 where the hardware runs it natively, else float32.

bfloat16 pays where it is native: a GPU, or a CPU with `amx_bf16` or `avx512_bf16` (there a
bf16 matmul of the output-layer shape ran 3.5x faster than float32). On a CPU without them it is
emulated and slower than float32. `resolve("auto")` picks by those facts and says why; `True`
and `False` force the choice. Variables stay float32 either way (Keras's `mixed_bfloat16`), and
softmax and losses are computed in float32.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

BF16_FLAGS = ("amx_bf16", "avx512_bf16")
MIXED, FLOAT32 = "mixed_bfloat16", "float32"


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str] | None:
    """The CPU's feature flags (Linux), or None where they cannot be read."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return None
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return flags


def native_bf16(flags: set[str] | None = None, gpu: bool | None = None) -> tuple[bool, str]:
    """Whether bfloat16 runs natively here, and why (for the log)."""
    if gpu is None:
        import tensorflow as tf  # noqa: PLC0415  (only asked when a choice is made)

        gpu = bool(tf.config.list_physical_devices("GPU"))
    if gpu:
        return True, "a GPU is visible"
    flags = cpu_flags() if flags is None else flags
    if flags is None:
        return False, "the CPU flags cannot be read (no /proc/cpuinfo)"
    found = [f for f in BF16_FLAGS if f in flags]
    if found:
        return True, f"the CPU has {' and '.join(found)}"
    return False, "the CPU has neither amx_bf16 nor avx512_bf16 (bf16 would be emulated)"


def resolve(setting: bool | str, flags: set[str] | None = None, gpu: bool | None = None):
    """The Keras dtype policy name for a `mixed_precision` setting, and the reason.

    Args:
        setting: "auto", True (force bfloat16) or False (force float32).

    Returns:
        (policy, reason): "mixed_bfloat16" or "float32", and one sentence saying why.
    """
    if setting is True:
        native, why = native_bf16(flags, gpu)
        note = "" if native else f"; warning: {why}, usually slower than float32"
        return MIXED, f"mixed_precision=true{note}"
    if setting is False:
        return FLOAT32, "mixed_precision=false"
    native, why = native_bf16(flags, gpu)
    return (MIXED if native else FLOAT32), f"mixed_precision=auto: {why}"


# -- inference: the precision a model is loaded or exported in ------------------------------

PRECISIONS = ("auto", "bfloat16", "float32")
_POLICIES = {"bfloat16": MIXED, "float32": FLOAT32}


def inference_precision(
    setting: str, flags: set[str] | None = None, gpu: bool | None = None
) -> tuple[str, str]:
    """The precision ("bfloat16" or "float32") a model translates in, and why.

    Args:
        setting: "auto" (bfloat16 where it is native, see `native_bf16`), "bfloat16" or
            "float32".

    Raises:
        ValueError: `setting` is none of `PRECISIONS`.
    """
    if setting not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {setting!r}")
    if setting != "auto":
        return setting, f"precision={setting}"
    native, why = native_bf16(flags, gpu)
    return ("bfloat16" if native else "float32"), f"precision=auto: {why}"


def policy_name(precision: str) -> str:
    """The Keras dtype policy of an inference precision ("bfloat16" -> "mixed_bfloat16")."""
    return _POLICIES[precision]


@contextlib.contextmanager
def dtype_policy(policy: str):
    """Keras's global dtype policy set to `policy` while layers are built, then restored."""
    import keras  # noqa: PLC0415

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


@contextlib.contextmanager
def computing_in_float32(model):
    """Every layer of `model` (a `Seq2Seq`, or an `Ensemble` of them) computes in float32
    while a graph is traced inside, then in its own policy again.

    Variables stay float32 under `mixed_bfloat16`, so a bfloat16 model traced in here is the
    float32 model, operation for operation: a bfloat16 export's float32 path for batches too
    small for bfloat16 to pay (`api.build_translate_function`'s `float32_below`).
    """
    members = getattr(model, "members", [model])
    saved = [(layer, layer.dtype_policy) for m in members for layer in m._flatten_layers()]
    for layer, _ in saved:
        layer.dtype_policy = FLOAT32
    try:
        yield
    finally:
        for layer, policy in saved:
            layer.dtype_policy = policy
