"""The CPU's instruction-set features, read from Linux's /proc/cpuinfo: which kernels run fast on this machine.

Two choices depend on them: bfloat16 training (`train.mixed_precision`), which only CPUs with bfloat16
instructions run fast, and which convolutions run through XLA for inference (`tfvision.models.xla_convolutions`),
where TensorFlow's oneDNN convolutions are fast only with AVX-512. Every answer is None where the file cannot be
read (another OS): unknown, and callers then keep their default.
"""

from __future__ import annotations

CPUINFO = "/proc/cpuinfo"
# x86 (Linux's names), Arm ("Features: ... bf16").
BFLOAT16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def cpu_flags(cpuinfo=CPUINFO) -> frozenset | None:
    """The feature flags listed in `cpuinfo` (x86 "flags", Arm "Features"), or None if it cannot be read."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return None
    flags = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return frozenset(flags)


def has_bfloat16(cpuinfo=CPUINFO) -> bool | None:
    """Whether the CPU has bfloat16 instructions: AVX512-BF16 or AMX-BF16 on x86, BF16 on Arm."""
    flags = cpu_flags(cpuinfo)
    return None if flags is None else bool(flags & BFLOAT16_FLAGS)


def has_avx512(cpuinfo=CPUINFO) -> bool | None:
    """Whether the CPU has AVX-512 (its foundation, avx512f)."""
    flags = cpu_flags(cpuinfo)
    return None if flags is None else "avx512f" in flags
