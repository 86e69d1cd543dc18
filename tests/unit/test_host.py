"""The host fingerprint every timing carries: CPU model, the ISA flags that change kernels, cores, bandwidth."""

from __future__ import annotations

from pathlib import Path

from llmops import host

ZEN4 = ("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9B14\n"
        "flags\t\t: fpu sse2 avx2 fma avx512f avx512_vnni avx512_bf16 sha_ni\n")
AVX2_ONLY = "processor\t: 0\nmodel name\t: AMD EPYC 7B12\nflags\t\t: fpu sse2 avx2 fma\n"
SPR = "model name\t: Intel(R) Xeon(R) Platinum 8481C\nflags\t\t: avx2 avx512f avx512_vnni amx_tile amx_bf16 amx_int8\n"


def test_fingerprint_fields_from_cpuinfo() -> None:
    fp = host.fingerprint(ZEN4, env={})
    assert fp["cpu"] == "AMD EPYC 9B14" and fp["isa"] == "avx2+avx512f+avx512_vnni+avx512_bf16"
    assert fp["native_bf16"] and fp["isa_limits"] == {} and fp["cores"] >= 1 and len(fp["key"]) == 16
    avx2 = host.fingerprint(AVX2_ONLY, env={})
    assert avx2["isa"] == "avx2" and not avx2["native_bf16"] and avx2["key"] != fp["key"]
    assert host.fingerprint(SPR, env={})["native_bf16"]
    assert host.fingerprint("flags: fpu sse2\n", env={})["isa"] == "baseline"


def test_isa_caps_from_the_environment_make_another_host() -> None:
    capped = host.fingerprint(ZEN4, env={"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "X": "1"})
    assert capped["isa_limits"] == {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
    assert capped["key"] != host.fingerprint(ZEN4, env={})["key"]
    assert host.isa_tag(capped).endswith("(limited: ATEN_CPU_CAPABILITY=avx2,ONEDNN_MAX_CPU_ISA=AVX2)")


def test_engine_hardware_key_uses_the_same_flag_list() -> None:
    assert host.cpu_hardware(SPR).endswith("-avx2+avx512f+avx512_vnni+amx_tile+amx_bf16+amx_int8")


def test_bandwidth_is_measured_once_per_host_and_recorded(tmp_path: Path) -> None:
    bw = host.measure_bandwidth(mib=8, reps=2)
    assert bw["mem_bw_1t_gbs"] > 0 and bw["mem_bw_all_gbs"] > 0 and bw["mem_bw_threads"] == host.usable_cores()
    first = host.describe(tmp_path)
    assert host.describe(tmp_path)["mem_bw_1t_gbs"] == first["mem_bw_1t_gbs"]  # cached, not re-measured
    line = host.host_line(first)
    assert line.startswith(f"host: {first['cpu']}, ") and "GB/s 1 thread" in line and first["key"] in line
    tags = host.lineage_tags(first)
    assert {"host.cpu", "host.isa", "host.cores", "host.key", "host.mem_bw_1t_gbs"} <= set(tags)
    assert all(isinstance(v, str) for v in tags.values())
