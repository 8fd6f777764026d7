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
    assert _choice(d, "F32")["provider"] == "panama-vector"
    assert "kernel" not in _choice(d, "Q6_K") or _choice(d, "Q6_K")["kernel"] is None


def test_dispatch_text_is_labelled_as_fixture(cp: str) -> None:
    r = _skoracle("dispatch", "--classpath", cp, "--formats", "Q8_0,Q4_K")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "TEST FIXTURE" in lines[0]
    assert "Q8_0 -> native-ffm FixtureNativeQ8_0MatmulKernel; fallback scalar " \
           "ScalarQ8_0MatmulKernel" in lines
    assert "Q4_K -> no available provider carries it" in lines


def test_jvm_prop_reaches_the_registry(cp: str) -> None:
    d = _dispatch(cp, "--jvm-prop", "skainet.cpu.vector.enabled=false", "--formats", "F32")
    assert d["props"] == ["skainet.cpu.vector.enabled=false"]
    panama = next(p for p in d["providers"] if p["name"] == "panama-vector")
    assert not panama["available"]
    assert panama["reason"] == "-Dskainet.cpu.vector.enabled=false"
    assert _choice(d, "F32")["provider"] == "scalar"


def test_bad_jvm_prop_is_a_usage_error(cp: str) -> None:
    r = _skoracle("dispatch", "--classpath", cp, "--jvm-prop", "no-equals-sign")
    assert r.returncode == 2
    assert "--jvm-prop 'no-equals-sign': expected key=value" in r.stderr
    assert "Traceback" not in r.stderr


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
