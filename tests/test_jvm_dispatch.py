"""`jvm dispatch` and the dispatch-aware `jvm parity` on the project's fixture (fixtures/jvm:
a KernelRegistry mirror, scalar/Panama/native providers listed in META-INF/services, FFM
kernels over the fixture C library bundled as native/linux-<arch>/libskainet_kernels.so):
what the registry picks per format, the user's system properties, why a registered provider
is unavailable, the dispatched kernel judged first, "wrote before its output offset", and no
extracted library left behind, even by a killed worker."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from harness.jvm.fixtures import fixture_classpath, unavailable_native_classpaths
from harness.jvm.jdk import find_jdk

pytestmark = pytest.mark.jvm
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cp() -> str:
    jdk = find_jdk()
    if jdk.feature < 22:
        pytest.fail(f"the FFM fixture needs JDK >= 22; found {jdk.describe()}")
    return fixture_classpath(jdk)


def _skoracle(*args: str, tmp: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if tmp:
        env["TMPDIR"] = tmp
    return subprocess.run([sys.executable, "-m", "harness", "jvm", *args], capture_output=True,
                          text=True, timeout=600, env=env, cwd=ROOT)


def _dispatch(cp: str, *extra: str) -> dict:
    r = _skoracle("dispatch", "--classpath", cp, "--json", *extra)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _choice(d: dict, fmt: str) -> dict:
    return next(c for c in d["choices"] if c["fmt"] == fmt)


def test_dispatch_picks_the_native_provider_first(cp: str) -> None:
    d = _dispatch(cp)
    assert [(p["name"], p["priority"], p["available"]) for p in d["providers"]] == [
        ("native-ffm", 100, True), ("panama-vector", 50, True), ("scalar", 0, True)]
    q8 = _choice(d, "Q8_0")
    assert q8["provider"] == "native-ffm"
    assert q8["kernel"] == "skoracle.fixture.ffm.FixtureNativeQ8_0MatmulKernel"
    assert q8["fallbacks"] == [["scalar", "skoracle.fixture.ScalarQ8_0MatmulKernel"]]
    f32 = _choice(d, "F32")
    assert (f32["provider"], f32["kernel"]) == (
        "native-ffm", "skoracle.fixture.ffm.FixtureNativeFp32MatmulKernel")
    assert [p for p, _ in f32["fallbacks"]] == ["panama-vector", "scalar"]
    assert "kernel" not in _choice(d, "Q6_K") or _choice(d, "Q6_K")["kernel"] is None
    # Q4_K: the byte-array accessor, and MemSegKernelProvider's for MemorySegment weights
    for key, cls in (("Q4_K", "FixtureNativeQ4KMatmulKernel"),
                     ("Q4_K+MemorySegment", "FixtureNativeQ4KMemSegMatmulKernel")):
        q4k = _choice(d, key)
        assert (q4k["provider"], q4k["kernel"]) == ("native-ffm", f"skoracle.fixture.ffm.{cls}")
        assert not q4k.get("fallbacks")  # no other fixture provider carries Q4_K


def test_dispatch_text_is_labelled_as_fixture(cp: str) -> None:
    r = _skoracle("dispatch", "--classpath", cp, "--formats", "Q8_0,Q4_K,Q6_K")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "TEST FIXTURE" in lines[0]
    assert "Q8_0 -> native-ffm FixtureNativeQ8_0MatmulKernel; fallback scalar " \
           "ScalarQ8_0MatmulKernel" in lines
    assert "Q4_K -> native-ffm FixtureNativeQ4KMatmulKernel" in lines
    assert "Q4_K+MemorySegment -> native-ffm FixtureNativeQ4KMemSegMatmulKernel" in lines
    assert "Q6_K -> no available provider carries it" in lines


def test_jvm_prop_reaches_the_registry(cp: str) -> None:
    d = _dispatch(cp, "--jvm-prop", "skainet.cpu.vector.enabled=false", "--formats", "F32")
    assert d["props"] == ["skainet.cpu.vector.enabled=false"]
    panama = next(p for p in d["providers"] if p["name"] == "panama-vector")
    assert not panama["available"]
    assert panama["reason"] == "-Dskainet.cpu.vector.enabled=false"
    assert [p for p, _ in _choice(d, "F32")["fallbacks"]] == ["scalar"]  # panama is off


def test_bad_jvm_prop_is_a_usage_error(cp: str) -> None:
    r = _skoracle("dispatch", "--classpath", cp, "--jvm-prop", "no-equals-sign")
    assert r.returncode == 2
    assert "--jvm-prop 'no-equals-sign': expected key=value" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("entry", ["missing-dir", "not-a.jar"])
def test_bad_classpath_entry_is_named_before_a_jvm_starts(tmp_path: Path, entry: str) -> None:
    bad = tmp_path / entry
    if entry.endswith(".jar"):
        bad.write_bytes(b"PK\x03\x04 not a zip")
    r = _skoracle("dispatch", "--classpath", str(bad))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    why = "neither a directory nor a jar" if entry.endswith(".jar") else \
        "no such file or directory"
    assert r.stderr.strip().endswith(f"--classpath entry {bad}: {why}"), r.stderr


def test_no_registry_on_the_classpath_is_a_usage_error(tmp_path: Path) -> None:
    r = _skoracle("dispatch", "--classpath", str(tmp_path))
    assert r.returncode == 2
    assert "KernelRegistry is not on the classpath" in r.stderr


def test_unavailable_native_provider_names_the_reason(cp: str, tmp_path: Path) -> None:
    variants = unavailable_native_classpaths(find_jdk(), tmp_path)
    missing = _dispatch(variants.missing, "--formats", "Q8_0")
    native = missing["providers"][0]
    assert native["name"] == "native-ffm" and not native["available"]
    assert native["reason"].startswith("no native/linux-") and "on the classpath" in \
        native["reason"]
    assert _choice(missing, "Q8_0")["provider"] == "scalar"
    corrupt = _dispatch(variants.corrupt, "--formats", "Q8_0")
    reason = corrupt["providers"][0]["reason"]
    assert "libskainet_kernels.so is on the classpath but does not load" in reason, reason


def test_parity_judges_the_dispatched_kernels_first(cp: str) -> None:
    r = _skoracle("parity", "--classpath", cp, "--formats", "Q8_0,Q4_0", "--lanes", "4",
                  "--jit", "pinned", "--shape", "16x256x2", "--timeout", "20", "--json")
    assert r.returncode == 1, r.stderr  # fixtures FAIL on purpose
    run = json.loads(r.stdout)
    cases = [c for cr in run["configs"] for c in cr["cases"]]
    assert [c["kernel"] for c in cases[:2]] == [
        "FixtureNativeQ8_0MatmulKernel", "ZeroesBeforeOffsetNativeQ4_0MatmulKernel"]
    good, wrong = cases[0], cases[1]
    assert good["dispatched"] == "Q8_0 via native-ffm"
    assert good["verdict"] == "bit-exact" and good["reference"] == "skainet_x86", good
    assert "C kernel through FFM: the x86-64 order gcc" in good["detail"]
    assert wrong["dispatched"] == "Q4_0 via native-ffm"
    assert wrong["verdict"] == "FAIL"
    assert wrong["detail"].startswith("wrote before its output offset: row 0's call "
                                      "(outputOffset 16) set output[0..15] to 0.0"), wrong
    assert "OUTSIDE error_bound" not in wrong["detail"]
    assert not any(c["dispatched"] for c in cases[2:])
    assert run["dispatch"]["choices"][0]["fmt"] == "Q8_0"


def test_parity_text_says_what_skainet_runs(cp: str) -> None:
    r = _skoracle("parity", "--classpath", cp, "--formats", "Q4_0", "--lanes", "4",
                  "--jit", "pinned", "--shape", "16x256x2")
    assert r.returncode == 1
    out = r.stdout
    assert "dispatch: Q4_0 -> native-ffm ZeroesBeforeOffsetNativeQ4_0MatmulKernel" in out
    last = out.strip().splitlines()
    summary = next(line for line in last if line.startswith("FAIL: "))
    assert summary.startswith("FAIL: ZeroesBeforeOffsetNativeQ4_0MatmulKernel (SKaiNET runs "
                              "it for Q4_0 via native-ffm) at 4 lanes: FAIL wrote before its "
                              "output offset")


def test_parity_judges_the_native_memory_segment_kernel_bit_exact_vs_skainet_x86(cp: str
                                                                                 ) -> None:
    """The MemorySegment kernel SKaiNET's registry hands out for Q4_K (the fixture's C
    skainet_q4k_matmul through FFM, the worker's read-only mapping passed as is) is judged
    against skainet_x86, binding, at every default shape (one at weightByteOffset 40). On
    9x512x3 the other Q4_K orders give other bits, so judging it against any of them (the
    Q8-activation reference candidate native kernels fall back to, the NEON build's orders)
    would FAIL."""
    from harness.jvm.parity import DEFAULT_SHAPES, reference

    r = _skoracle("parity", "--classpath", cp, "--formats", "Q4_K", "--lanes", "4",
                  "--jit", "pinned", "--timeout", "30", "--json")
    assert r.returncode == 1, r.stderr  # the deliberately wrong Java Q4_K fixtures FAIL
    run = json.loads(r.stdout)
    cases = [c for cr in run["configs"] for c in cr["cases"]]
    n = len(DEFAULT_SHAPES)
    assert [c["kernel"] for c in cases[:2 * n]] == [
        *["FixtureNativeQ4KMatmulKernel"] * n, *["FixtureNativeQ4KMemSegMatmulKernel"] * n]
    memseg = cases[n:2 * n]
    assert [tuple(c["shape"]) for c in memseg] == list(DEFAULT_SHAPES)
    for c in memseg:
        assert c["dispatched"] == "Q4_K+MemorySegment via native-ffm"
        assert c["verdict"] == "bit-exact" and c["reference"] == "skainet_x86", c
        assert c["detail"].startswith("vs skainet_x86; C kernel through FFM: the x86-64 order "
                                      "gcc") and c["detail"].endswith(
            "; SKaiNET runs this for Q4_K+MemorySegment via native-ffm"), c["detail"]
    for c in cases[:n]:
        assert c["dispatched"] == "Q4_K via native-ffm" and c["verdict"] == "bit-exact", c
    shape = (9, 512, 3, 0)
    x86 = reference("Q4_K", shape, 0, "skainet_x86", (("kernel_order", "feed"),))
    for model, opts in (("skainet_q8_reference", ()), ("skainet_neon", ()),
                        ("skainet_neon", (("fused_final", False),))):
        other = reference("Q4_K", shape, 0, model, opts)
        assert (other.view(np.uint32) != x86.view(np.uint32)).any(), (model, opts)


#: The child: start a JVM on CP, take the MemorySegment Q4_K kernel SKaiNET's registry hands
#: out, map the weights file read-only and call it once per batch row (weights at byte
#: offset PAD), then with a segment one byte too short and an offset past int32.
MEMSEG_CHILD = r"""
import json, sys
import jpype
import numpy as np
libjvm, cp, tmp, data, weights, out = sys.argv[1:7]
jpype.startJVM(libjvm, f"-Djava.io.tmpdir={tmp}", "--enable-native-access=ALL-UNNAMED",
               classpath=cp.split(":"), convertStrings=True)
J = jpype.JClass
api = "sk.ainet.backend.api.kernel."
J(api + "KernelServiceLoader").INSTANCE.installAll()
memseg = J(api + "MemSegKernelProvider")
provider = next(p for p in J(api + "KernelRegistry").INSTANCE.providers()
                if p.isAvailable() and isinstance(p, memseg) and p.matmulQ4KMemSeg() is not None)
kernel = provider.matmulQ4KMemSeg()
d = np.load(data)
in_dim, out_dim, pad = (int(v) for v in d["dims"])
x = jpype.JArray(jpype.JFloat)(d["x"].ravel())
batch = d["x"].shape[0]
y = jpype.JArray(jpype.JFloat)(np.zeros(batch * out_dim, np.float32))
channel = J("java.nio.channels.FileChannel")
arena = J("java.lang.foreign.Arena").ofConfined()
ch = channel.open(J("java.nio.file.Path").of(weights), J("java.nio.file.StandardOpenOption").READ)
seg = ch.map(channel.MapMode.READ_ONLY, 0, ch.size(), arena)
ch.close()
for r in range(batch):
    kernel.matmul(x, r * in_dim, seg, pad, in_dim, out_dim, y, r * out_dim)
refused = []
for w, off in ((seg.asSlice(0, seg.byteSize() - 1), pad), (seg, 2**31)):
    try:
        kernel.matmul(x, 0, w, off, in_dim, out_dim, y, 0)
        refused.append("")
    except jpype.JException as exc:
        refused.append(f"{exc.getClass().getName()}: {exc.getMessage()}")
np.save(out, np.array(y, np.float32).reshape(batch, out_dim))
print(json.dumps({"provider": provider.getName(), "kernel": kernel.getClass().getName(),
                  "read_only": bool(seg.isReadOnly()), "native": bool(seg.isNative()),
                  "refused": refused}))
"""


def test_memory_segment_kernel_reads_a_read_only_mapping_in_place(cp: str, tmp_path: Path
                                                                   ) -> None:
    """In a JVM of its own: the registry's MemorySegment Q4_K kernel called on a weights file
    mapped READ_ONLY (as a packed model load maps its GGUF), 40 bytes in: bit-exact with
    skainet_x86, the file unchanged; a segment shorter than the blocks it reads, and an
    offset the C kernel's int32 cannot take, are refused with IllegalArgumentException
    before any native call."""
    from harness.jvm.parity import case_data, reference

    shape = (9, 512, 3, 40)
    x, _, arr = case_data("Q4_K", shape, 0)
    weights = tmp_path / "w.bin"
    weights.write_bytes(arr.tobytes())
    data = tmp_path / "data.npz"
    np.savez(data, x=x, dims=np.array([shape[1], shape[0], shape[3]]))
    jvm_tmp, out = tmp_path / "jvm-tmp", tmp_path / "y.npy"
    jvm_tmp.mkdir()
    r = subprocess.run([sys.executable, "-c", MEMSEG_CHILD, str(find_jdk().libjvm), cp,
                        str(jvm_tmp), str(data), str(weights), str(out)],
                       capture_output=True, text=True, timeout=120, env=os.environ)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout.strip().splitlines()[-1])
    assert rep["provider"] == "native-ffm"
    assert rep["kernel"] == "skoracle.fixture.ffm.FixtureNativeQ4KMemSegMatmulKernel"
    assert rep["read_only"] and rep["native"]
    x86 = reference("Q4_K", shape, 0, "skainet_x86", (("kernel_order", "feed"),))
    assert np.load(out).view(np.uint32).tobytes() == x86.view(np.uint32).tobytes()
    assert weights.read_bytes() == arr.tobytes()
    short, far = rep["refused"]
    assert short == ("java.lang.IllegalArgumentException: FixtureNativeQ4KMemSegMatmulKernel: "
                     f"the weight segment holds {arr.size - 1} bytes, the kernel reads "
                     f"{arr.size - 40} from offset 40")
    assert far.startswith("java.lang.IllegalArgumentException: FixtureNativeQ4KMemSegMatmul"
                          "Kernel: weightByteOffset 2147483648 is not an int32 offset")
    assert not list(jvm_tmp.iterdir())


def test_killed_worker_leaves_no_extracted_library(cp: str) -> None:
    """A hang kills the worker (no JVM exit hooks run); the library the native provider
    extracted went to the worker's own java.io.tmpdir, removed with it."""
    java_default = "/tmp/skoracle-fixture-native-*"  # where a JVM left alone extracts it
    before = set(glob.glob(java_default))
    with tempfile.TemporaryDirectory(prefix="skoracle-test-tmp-") as tmp:
        r = _skoracle("parity", "--classpath", cp, "--formats", "Q8_0", "--lanes", "4",
                      "--jit", "pinned", "--shape", "16x256x2", "--timeout", "5", tmp=tmp)
        assert "NeverReturnsQ8_0MatmulKernel" in r.stdout and " timeout " in r.stdout
        assert "FixtureNativeQ8_0MatmulKernel" in r.stdout  # the library was extracted
        assert os.listdir(tmp) == []  # the worker's log, weights and java.io.tmpdir
    assert set(glob.glob(java_default)) - before == set()


def test_native_kernel_in_the_jvm_keeps_subnormals(cp: str) -> None:
    """The fixture library is linked with gcc's crtfastmath (loading it turns on
    flush-to-zero in a plain process); in the JVM the FFM call runs with the JVM's own
    float environment, so subnormal products are kept and skainet_x86 holds bit for bit
    (the host child resets the environment to match: tests/test_host_kernels.py)."""
    import numpy as np

    from harness.jvm.worker import JvmConfig, Worker
    from kernels_ref import matmul_wt
    from oracle import quantize, to_input_block_major

    jdk = find_jdk()
    rng = np.random.default_rng(3)
    out_dim, in_dim = 8, 256
    raw = quantize("Q8_0", rng.standard_normal((out_dim, in_dim)).astype(np.float32))
    x = (rng.uniform(1.0, 2.0, (2, in_dim)) * 1e-39).astype(np.float32)
    ibm = np.ascontiguousarray(to_input_block_major(raw, "Q8_0"), np.uint8).reshape(-1)
    with Worker(JvmConfig(str(jdk.home), cp, "4", "pinned", jdk.has_vector)) as wk:
        r = wk.call("skoracle.fixture.ffm.FixtureNativeQ8_0MatmulKernel", x, ibm, in_dim,
                    out_dim, calls=2)
    want = matmul_wt(x, raw, "Q8_0", out_dim, in_dim, semantics="skainet_x86")
    assert r.status == "ok" and r.violations == []
    assert np.count_nonzero(want) == want.size
    assert r.y.view(np.uint32).tolist() == want.view(np.uint32).tolist()


def test_dense_native_kernel_is_bit_exact_with_the_x86_dense_order(cp: str) -> None:
    """SKaiNET's dense C kernels through FFM (here the fixture's skainet_fp32_matmul) are
    held to skainet_x86's dense order, binding, at the GEMM shapes (offsets, strides, k not
    a multiple of the lanes)."""
    r = _skoracle("parity", "--classpath", cp, "--formats", "F32", "--lanes", "4", "--jit",
                  "pinned", "--json")
    run = json.loads(r.stdout)
    cases = [c for cr in run["configs"] for c in cr["cases"]
             if c["kernel"] == "FixtureNativeFp32MatmulKernel"]
    assert len(cases) == 3
    for c in cases:
        assert (c["verdict"], c["reference"], c["dispatched"]) == (
            "bit-exact", "skainet_x86", "F32 via native-ffm"), c
