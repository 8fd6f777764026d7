"""The dispatch model and the per-call output checks, without a JVM: how a registry's
answer becomes the chosen kernel and its fallbacks, the kernels judged first, the report
lines, --jvm-prop's grammar, and "wrote before its output offset"."""

from __future__ import annotations

import numpy as np
import pytest

from harness.errors import HarnessError
from harness.jvm.discovery import FFM, SCALAR, Kernel
from harness.jvm.dispatch import (
    Dispatch,
    _choice,
    dispatched_kernels,
    parse_props,
)
from harness.jvm.worker import SENTINEL_BITS, call_violations, guarded_output

NATIVE_Q8 = "sk.ainet.exec.kernel.NativeQ8_0MatmulKernel"
SCALAR_Q8 = "sk.ainet.exec.kernel.ScalarQ8_0MatmulKernel"


def _providers() -> list[dict]:
    return [
        {"name": "native-ffm", "cls": "x.NativeKernelProviderFactory", "priority": 100,
         "available": False, "reason": "no native/linux-x86_64/libskainet_kernels.so",
         "kernels": {"Q8_0": NATIVE_Q8, "Q4_K": None}},
        {"name": "panama-vector", "cls": "x.PanamaVectorKernelProviderFactory",
         "priority": 50, "available": True, "reason": "",
         "kernels": {"Q8_0": "x.PanamaVectorQ8_0MatmulKernel", "Q4_K": "!matmulQ4K() threw"}},
        {"name": "scalar", "cls": "x.ScalarKernelProvider", "priority": 0, "available": True,
         "reason": "", "kernels": {"Q8_0": SCALAR_Q8, "Q4_K": None}},
    ]


def test_choice_skips_unavailable_and_broken_accessors() -> None:
    provs = _providers()
    q8 = _choice("Q8_0", provs)
    assert q8["provider"] == "panama-vector"  # native-ffm is unavailable
    assert q8["fallbacks"] == [("scalar", SCALAR_Q8)]
    assert _choice("Q4_K", provs) == {"fmt": "Q4_K"}  # a throwing accessor carries nothing


def test_chosen_native_when_available() -> None:
    provs = _providers()
    provs[0]["available"] = True
    assert _choice("Q8_0", provs)["kernel"] == NATIVE_Q8


def _dispatch(available: bool = True) -> Dispatch:
    provs = _providers()
    provs[0]["available"] = available
    return Dispatch.from_json({"props": ["skainet.strict.kernels=true"], "providers": provs,
                               "choices": [_choice(f, provs) for f in ("Q8_0", "Q4_K")]})


def test_lines_name_choice_fallbacks_and_unavailable_reason() -> None:
    lines = _dispatch(available=False).lines()
    text = "\n".join(lines)
    assert "-Dskainet.strict.kernels=true" in lines[0]
    assert "native-ffm (priority 100, NativeKernelProviderFactory) is registered but " \
           "unavailable: no native/linux-x86_64/libskainet_kernels.so" in text
    assert "Q8_0 -> panama-vector PanamaVectorQ8_0MatmulKernel; fallback scalar " \
           "ScalarQ8_0MatmulKernel" in lines
    assert "Q4_K -> no available provider carries it" in lines
    assert "TEST FIXTURE" not in lines[0]


def test_dispatched_kernels_first_and_marked() -> None:
    listed = [Kernel(SCALAR_Q8, "Q8_0", SCALAR, "cp"), Kernel(NATIVE_Q8, "Q8_0", FFM, "cp"),
              Kernel("x.Other", "Q4_0", SCALAR, "cp")]
    ks = dispatched_kernels(_dispatch(), listed)
    assert [k.cls for k in ks] == [NATIVE_Q8, SCALAR_Q8, "x.Other"]
    assert ks[0].dispatched == ("Q8_0",) and ks[0].dispatched_by == "native-ffm"
    assert ks[1].dispatched == ()


def test_dispatched_kernel_not_discovered_is_built_from_the_registry() -> None:
    ks = dispatched_kernels(_dispatch(), [Kernel(SCALAR_Q8, "Q8_0", SCALAR, "cp")])
    assert ks[0].cls == NATIVE_Q8 and ks[0].provider == FFM and ks[0].source == "KernelRegistry"
    assert ks[0].runnable


def test_no_registry_keeps_the_discovered_order() -> None:
    listed = [Kernel(SCALAR_Q8, "Q8_0", SCALAR, "cp")]
    d = Dispatch(error="sk.ainet.backend.api.kernel.KernelRegistry is not on the classpath")
    assert dispatched_kernels(d, listed) == listed
    assert d.lines() == [f"dispatch not asked: {d.error}"]


@pytest.mark.parametrize("bad", ["novalue", "=x", "a b=c", "k=v\nX"])
def test_parse_props_refuses(bad: str) -> None:
    with pytest.raises(HarnessError, match="--jvm-prop"):
        parse_props([bad])


def test_parse_props_keeps() -> None:
    assert parse_props(["skainet.strict.kernels=true", "a.b="]) == (
        "skainet.strict.kernels=true", "a.b=")


def _call(out: np.ndarray, offset: int, n: int, zero_prefix: bool) -> np.ndarray:
    after = out.copy()
    if zero_prefix:  # a wrapper copying its whole off-heap output back from index 0
        after[:offset] = 0.0
    after[offset:offset + n] = 1.5
    return after


def test_zeroing_before_the_offset_is_named() -> None:
    offsets, out = guarded_output(3, 5)
    out[offsets[0]:offsets[0] + 5], out[offsets[1]:offsets[1] + 5] = 2.0, 3.0  # earlier rows
    after = _call(out, offsets[2], 5, zero_prefix=True)
    got = call_violations(out, after, offsets[2], 5, 2)
    assert len(got) == 1
    assert got[0].startswith(f"wrote before its output offset: row 2's call (outputOffset "
                             f"{offsets[2]}) set output[0..{offsets[2] - 1}] to 0.0")


def test_clean_call_has_no_violation_and_past_writes_are_named() -> None:
    offsets, out = guarded_output(2, 5)
    after = _call(out, offsets[0], 5, zero_prefix=False)
    assert call_violations(out, after, offsets[0], 5, 0) == []
    after[offsets[0] + 5 + 2] = 7.0
    got = call_violations(out, after, offsets[0], 5, 0)
    assert got == [f"wrote output[outputOffset+outputDim+2] (row 0's call, array index "
                   f"{offsets[0] + 7}), outside its output range"]
    assert out.view(np.uint32)[0] == SENTINEL_BITS


def test_dispatch_keys_include_the_memory_segment_accessor() -> None:
    from harness.jvm.dispatch import ACCESSORS, base_format, dispatch_keys

    assert dispatch_keys(["Q4_K"]) == ("Q4_K", "Q4_K+MemorySegment")
    assert dispatch_keys(None) == tuple(ACCESSORS)
    assert base_format("Q4_K+MemorySegment") == "Q4_K"


def test_memseg_kernel_from_the_registry_is_a_memseg_kernel() -> None:
    from harness.jvm.discovery import MEMSEG

    provs = [{"name": "native-ffm", "cls": "x.P", "priority": 100, "available": True,
              "reason": "", "kernels": {"Q4_K+MemorySegment": "x.NativeQ4KMemSegMatmulKernel"}}]
    d = Dispatch.from_json({"providers": provs,
                            "choices": [_choice("Q4_K+MemorySegment", provs)]})
    (k,) = dispatched_kernels(d, [])
    assert (k.fmt, k.kind, k.provider) == ("Q4_K", MEMSEG, FFM)
    assert k.dispatched == ("Q4_K+MemorySegment",)
