"""The precision choice: bfloat16 where native, float32 elsewhere, forced either way."""

from __future__ import annotations

import pytest

from translator import precision

AMX = {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}
AVX2 = {"sse4_2", "avx", "avx2", "fma"}


@pytest.mark.parametrize(
    "setting, flags, gpu, policy",
    [
        ("auto", AMX, False, "mixed_bfloat16"),
        ("auto", {"avx512_bf16"}, False, "mixed_bfloat16"),
        ("auto", AVX2, False, "float32"),
        ("auto", AVX2, True, "mixed_bfloat16"),
        (True, AVX2, False, "mixed_bfloat16"),
        (False, AMX, True, "float32"),
    ],
)
def test_policy_follows_the_hardware_unless_forced(setting, flags, gpu, policy):
    chosen, why = precision.resolve(setting, flags=flags, gpu=gpu)
    assert chosen == policy
    assert why.startswith(f"mixed_precision={str(setting).lower()}")


def test_forcing_bf16_without_native_support_says_so():
    _, why = precision.resolve(True, flags=AVX2, gpu=False)
    assert "warning" in why and "emulated" in why
    assert "warning" not in precision.resolve(True, flags=AMX, gpu=False)[1]


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor : 0\nflags\t\t: fpu avx2 amx_bf16\n\nflags : avx2 amx_bf16\n")
    assert precision.cpu_flags(cpuinfo) == {"fpu", "avx2", "amx_bf16"}
    assert precision.cpu_flags(tmp_path / "missing") is None
    assert precision.native_bf16(set(), gpu=False)[0] is False
