"""Tests for tfvision.cpu_features: the CPU's flags read from /proc/cpuinfo files the tests write."""

from tfvision import cpu_features


def test_flags_of_x86_and_arm_cpus(cpuinfo_file):
    xeon = cpuinfo_file("xeon", "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_tile\n"
                                "processor\t: 1\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_tile\n")
    epyc = cpuinfo_file("epyc", "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx avx2 fma\n")
    avx512_only = cpuinfo_file("avx512", "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_vnni\n")
    arm = cpuinfo_file("arm", "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n")
    assert cpu_features.cpu_flags(epyc) == {"fpu", "sse2", "avx", "avx2", "fma"}
    assert [cpu_features.has_bfloat16(p) for p in (xeon, epyc, avx512_only, arm)] == [True, False, False, True]
    assert [cpu_features.has_avx512(p) for p in (xeon, epyc, avx512_only, arm)] == [True, False, True, False]


def test_unreadable_cpuinfo_is_unknown(tmp_path):
    missing = str(tmp_path / "no_such_file")
    assert cpu_features.cpu_flags(missing) is None
    assert cpu_features.has_bfloat16(missing) is None
    assert cpu_features.has_avx512(missing) is None
