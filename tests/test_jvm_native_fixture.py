"""The project's fixture for SKaiNET's JVM kernel dispatch (fixtures/jvm, never SKaiNET):
KernelServiceLoader/KernelRegistry mirrors, the scalar, Panama and native (FFM) providers
listed in META-INF/services, the FFM kernels over the fixture C library bundled as
native/linux-<arch>/libskainet_kernels.so, and the two class directories in which the native
provider is registered but unavailable. Each JVM runs in a child process (JPype), with its
own java.io.tmpdir, so what it leaves there is seen."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harness.jvm.fixtures import (
    NATIVE_LIBRARY,
    SERVICES_FILE,
    fixture_classpath,
    native_resource,
    unavailable_native_classpaths,
)
from harness.jvm.jdk import find_jdk
from kernels_ref import matmul_wt
from kernels_ref.bounds import error_bound
from oracle import quantize, to_input_block_major

pytestmark = pytest.mark.jvm
IN_DIM, OUT_DIM = 64, 5
#: offsets of every call: input, weight bytes, output
X_OFF, W_OFF, Y_OFF = 3, 7, 4
SENTINEL = np.float32(7.25)
PROVIDERS = [["native-ffm", 100], ["panama-vector", 50], ["scalar", 0]]

#: The child: start a JVM on CP (java.io.tmpdir TMP), install the listed providers, report
#: the registry, the kernel the runtime would take per format, and the outputs of each
#: kernel (by key) on the arrays of DATA: output padded by SENTINEL cells on both sides.
CHILD = r"""
import json, os, sys
import jpype
import numpy as np
libjvm, cp, tmp, data, out = sys.argv[1:6]
jpype.startJVM(libjvm, f"-Djava.io.tmpdir={tmp}", "--enable-native-access=ALL-UNNAMED",
               "--add-modules=jdk.incubator.vector", classpath=cp.split(":"),
               convertStrings=True)
J = jpype.JClass
kernel_pkg = "sk.ainet.backend.api.kernel."
registry = J(kernel_pkg + "KernelRegistry").INSTANCE
installed = list(J(kernel_pkg + "KernelServiceLoader").INSTANCE.installAll())
providers = list(registry.providers())


def picked(accessor):
    for p in providers:
        if p.isAvailable() and getattr(p, accessor)() is not None:
            return getattr(p, accessor)()
    return None


kernels = {fmt: picked(acc) for fmt, acc in
           (("Q8_0", "matmulQ8_0"), ("Q4_0", "matmulQ4_0"), ("F32", "matmulFp32"))}
d = np.load(data)
outputs = {}
calls = {"picked_Q8_0": (kernels["Q8_0"], "w_q8"), "picked_Q4_0": (kernels["Q4_0"], "w_q4"),
         "scalar_Q8_0": (J("skoracle.fixture.ScalarQ8_0MatmulKernel").INSTANCE, "w_q8"),
         "scalar_Q4_0": (J("skoracle.fixture.ScalarQ4_0MatmulKernel").INSTANCE, "w_q4")}
for key, (kernel, w) in calls.items():
    y = jpype.JArray(jpype.JFloat)(d["y"])
    kernel.matmul(jpype.JArray(jpype.JFloat)(d["x"]), int(d["offsets"][0]),
                  jpype.JArray(jpype.JByte)(d[w].view(np.int8)), int(d["offsets"][1]),
                  int(d["dims"][0]), int(d["dims"][1]), y, int(d["offsets"][2]))
    outputs[key] = np.array(y, np.float32)
np.savez(out, **outputs)
print(json.dumps({
    "installed": installed,
    "providers": [[p.getName(), p.getPriority(), bool(p.isAvailable())] for p in providers],
    "best": registry.bestAvailable().getName(),
    "available": list(registry.availableNames()),
    "found": registry.find("NATIVE-FFM").getName(),
    "picked": {f: (k.getClass().getName() if k is not None else None)
               for f, k in kernels.items()},
    "tmp_while_running": sorted(os.path.relpath(os.path.join(r, f), tmp)
                                for r, _, fs in os.walk(tmp) for f in fs),
}))
"""


@pytest.fixture(scope="module")
def jdk():
    found = find_jdk()
    assert found.feature >= 22 and native_resource(), "needs JDK >= 22 on Linux x86-64/aarch64"
    return found


@pytest.fixture(scope="module")
def cp(jdk) -> str:
    return fixture_classpath(jdk)


def packed(fmt: str, codes: np.ndarray, d_bits: int) -> np.ndarray:
    """Row-major blocks of `codes` (out x in ints: Q8_0 int8, Q4_0 0..15) all with scale
    bits `d_bits`."""
    out, nb = codes.shape[0], codes.shape[1] // 32
    blocks = codes.reshape(out, nb, 32)
    if fmt == "Q4_0":
        blocks = (blocks[..., :16] | (blocks[..., 16:] << 4)).astype(np.uint8)
    scale = np.full((out, nb, 1), d_bits, "<u2").view(np.uint8).reshape(out, nb, 2)
    return np.concatenate([scale, blocks.astype(np.int8).view(np.uint8)], axis=2).reshape(out, -1)


def data_file(where: Path, x: np.ndarray, w_q8: np.ndarray, w_q4: np.ndarray) -> Path:
    """The child's arrays: x and both weights at their offsets, a sentinel-filled output."""
    def at(offset: int, arr: np.ndarray) -> np.ndarray:
        return np.concatenate([np.full(offset, 0x55, arr.dtype), arr.ravel(),
                               np.full(9, 0x55, arr.dtype)])

    y = np.full(Y_OFF + OUT_DIM + 6, SENTINEL, np.float32)
    path = where / "data.npz"
    np.savez(path, x=at(X_OFF, x.astype(np.float32)), y=y,
             w_q8=at(W_OFF, to_input_block_major(w_q8, "Q8_0")),
             w_q4=at(W_OFF, to_input_block_major(w_q4, "Q4_0")),
             offsets=np.array([X_OFF, W_OFF, Y_OFF]), dims=np.array([IN_DIM, OUT_DIM]))
    return path


def run_child(jdk, cp: str, where: Path, data: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """One JVM on `cp`: its report and the outputs; its java.io.tmpdir is empty after."""
    tmp = where / "jvm-tmp"
    tmp.mkdir()
    out = where / "out.npz"
    r = subprocess.run([sys.executable, "-c", CHILD, str(jdk.libjvm), cp, str(tmp), str(data),
                        str(out)], capture_output=True, text=True, timeout=120, env=os.environ)
    assert r.returncode == 0, r.stderr
    assert not list(tmp.iterdir()), "the JVM left files in its java.io.tmpdir"
    with np.load(out) as z:
        return json.loads(r.stdout.strip().splitlines()[-1]), dict(z)


def integer_case(where: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """Small integers and a scale of 0.5: every product and sum is exact in float32, so any
    order gives the same bits. Returns the data file and both exact results."""
    rng = np.random.default_rng(5)
    x = rng.integers(-4, 5, IN_DIM).astype(np.float32)
    q8 = rng.integers(-8, 9, (OUT_DIM, IN_DIM))
    q4 = rng.integers(0, 16, (OUT_DIM, IN_DIM))
    w_q8, w_q4 = packed("Q8_0", q8, 0x3800), packed("Q4_0", q4, 0x3800)
    want8 = (q8 * 0.5) @ x.astype(np.float64)
    want4 = ((q4 - 8) * 0.5) @ x.astype(np.float64)
    return data_file(where, x, w_q8, w_q4), want8.astype(np.float32), want4.astype(np.float32)


def test_services_name_only_the_providers_of_the_parts_compiled(jdk, cp):
    def listed(classes: str) -> list[str]:
        names = (Path(classes) / SERVICES_FILE).read_text().split()
        for n in names:  # every name is a class of that directory
            assert (Path(classes) / (n.replace(".", "/") + ".class")).is_file(), n
        return names

    assert listed(cp) == ["skoracle.fixture.FixtureScalarKernelProvider",
                          "skoracle.fixture.FixturePanamaKernelProvider",
                          "skoracle.fixture.ffm.FixtureNativeKernelProvider"]
    lib = Path(cp) / native_resource()
    assert lib.name == NATIVE_LIBRARY and lib.read_bytes()[:4] == b"\x7fELF"
    old = fixture_classpath(dataclasses.replace(jdk, has_vector=False, feature=21))
    assert listed(old) == ["skoracle.fixture.FixtureScalarKernelProvider"]
    assert not (Path(old) / "native").exists()


def test_dispatch_takes_the_native_kernels_and_they_compute(jdk, cp, tmp_path):
    data, want8, want4 = integer_case(tmp_path)
    rep, y = run_child(jdk, cp, tmp_path, data)
    assert sorted(rep["installed"]) == ["native-ffm", "panama-vector", "scalar"]
    assert rep["providers"] == [[*p, True] for p in PROVIDERS]  # priority, descending
    assert rep["best"] == rep["found"] == "native-ffm"
    assert rep["available"] == ["native-ffm", "panama-vector", "scalar"]
    assert rep["picked"] == {
        "Q8_0": "skoracle.fixture.ffm.FixtureNativeQ8_0MatmulKernel",
        "Q4_0": "skoracle.fixture.ffm.ZeroesBeforeOffsetNativeQ4_0MatmulKernel",
        "F32": "skoracle.fixture.ffm.FixtureNativeFp32MatmulKernel"}
    # the library was copied under java.io.tmpdir while the JVM ran (and is gone after)
    [copied] = rep["tmp_while_running"]
    assert copied.startswith("skoracle-fixture-native-") and copied.endswith("/" + NATIVE_LIBRARY)
    rows = slice(Y_OFF, Y_OFF + OUT_DIM)
    native, scalar = y["picked_Q8_0"], y["scalar_Q8_0"]
    assert native[rows].tobytes() == scalar[rows].tobytes() == want8.tobytes()
    untouched = np.r_[0:Y_OFF, Y_OFF + OUT_DIM:len(native)]
    assert (native[untouched] == SENTINEL).all()  # correct: only its own range written
    wrong = y["picked_Q4_0"]
    assert wrong[rows].tobytes() == y["scalar_Q4_0"][rows].tobytes() == want4.tobytes()
    assert (wrong[:Y_OFF] == 0).all()  # the deliberate defect: output[0, outputOffset) zeroed
    assert (wrong[Y_OFF + OUT_DIM:] == SENTINEL).all()


def test_native_q8_0_is_within_the_bound_on_random_weights(jdk, cp, tmp_path):
    """Random weights: the C kernel's order (-O3 -ffast-math, not modelled) is judged within
    the rigorous bound of kernels_ref, as the scalar fixture is."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal(IN_DIM).astype(np.float32)
    w = quantize("Q8_0", rng.standard_normal((OUT_DIM, IN_DIM)).astype(np.float32))
    w4 = quantize("Q4_0", rng.standard_normal((OUT_DIM, IN_DIM)).astype(np.float32))
    _, y = run_child(jdk, cp, tmp_path, data_file(tmp_path, x, w, w4))
    exact = matmul_wt(x, w, "Q8_0", OUT_DIM, IN_DIM).astype(np.float64)
    bound = error_bound(x, w, "Q8_0", OUT_DIM, IN_DIM)
    for key in ("picked_Q8_0", "scalar_Q8_0"):
        got = y[key][Y_OFF:Y_OFF + OUT_DIM].astype(np.float64)
        assert (np.abs(got - exact) <= bound).all(), key
    scalar = matmul_wt(x, w, "Q8_0", OUT_DIM, IN_DIM, semantics="skainet_scalar")
    assert y["scalar_Q8_0"][Y_OFF:Y_OFF + OUT_DIM].tobytes() == scalar.tobytes()


@pytest.mark.parametrize("variant", ["missing", "corrupt"])
def test_a_native_provider_whose_library_does_not_load_is_unavailable(jdk, tmp_path, variant):
    classes = getattr(unavailable_native_classpaths(jdk, tmp_path / "cp"), variant)
    data, want8, _ = integer_case(tmp_path)
    rep, y = run_child(jdk, classes, tmp_path, data)
    assert rep["providers"] == [[*p, p[0] != "native-ffm"] for p in PROVIDERS]
    assert rep["best"] == "panama-vector" and rep["found"] == "native-ffm"
    assert rep["available"] == ["panama-vector", "scalar"]
    assert rep["picked"]["Q8_0"] == "skoracle.fixture.ScalarQ8_0MatmulKernel"
    assert rep["picked"]["Q4_0"] == "skoracle.fixture.ScalarQ4_0MatmulKernel"
    # missing: nothing to copy; corrupt: copied, failed to load, removed at exit
    assert len(rep["tmp_while_running"]) == (variant == "corrupt")
    assert y["picked_Q8_0"][Y_OFF:Y_OFF + OUT_DIM].tobytes() == want8.tobytes()
