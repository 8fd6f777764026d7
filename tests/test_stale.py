"""`skoracle stale-check` on a fake home with real klibs/jars (zip files) in the three caches."""

from __future__ import annotations

import io
import json
import os
import pty
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli import main as skoracle
from harness.gate.stale import Roots, find_copies
from harness.gate.testbins import Built, build_once

GROUP, ARTIFACT, VERSION = "sk.ainet.core", "skainet-backend-native-cpu", "0.40.0"


@pytest.fixture(scope="session")
def gate_bins(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return build_once(lambda: tmp_path_factory.mktemp("gate-bins"))


@pytest.fixture()
def home(gate_bins: Built, tmp_path: Path) -> dict[str, Path]:
    """~/.m2, ~/.gradle and ~/.konan with fresh, stale and unrelated copies."""
    x = gate_bins.extra
    h = tmp_path / "home"
    m2 = h / ".m2" / "repository" / "sk" / "ainet" / "core"
    gradle_files = h / ".gradle" / "caches" / "modules-2" / "files-2.1" / GROUP
    konan_cache = (h / ".konan" / "kotlin-native-prebuilt-linux-x86_64-2.1.21" / "klib" / "cache"
                   / "linux_arm64-gSTATIC")
    paths = {
        # Maven local: the fresh linuxarm64 klib and a stale -jvm jar of the same version.
        "m2_klib": m2 / f"{ARTIFACT}-linuxarm64" / VERSION,
        "m2_jar": m2 / f"{ARTIFACT}-jvm" / VERSION,
        "m2_old_version": m2 / f"{ARTIFACT}-linuxarm64" / "0.39.0",
        "m2_other_artifact": m2 / "skainet-backend-cpu-linuxarm64" / VERSION,
        # Gradle: a stale klib under its sha1 directory.
        "gradle_klib": gradle_files / f"{ARTIFACT}-linuxarm64" / VERSION,
        # Kotlin/Native: the cache of the library (no version in the path) and another one.
        "konan": konan_cache / "sk.ainet.core-skainet-backend-native-cpu-cache",
        "konan_other": konan_cache / "org.jetbrains.kotlinx-kotlinx-coroutines-core-cache",
    }
    def put(key: str, name: str, src: Path) -> None:
        paths[key].mkdir(parents=True, exist_ok=True)
        shutil.copy(src, paths[key] / name)

    put("m2_klib", f"{ARTIFACT}-linuxarm64-{VERSION}.klib", x["good.klib"])
    (paths["m2_klib"] / f"{ARTIFACT}-linuxarm64-{VERSION}.pom").write_text("<project/>\n")
    put("m2_jar", f"{ARTIFACT}-jvm-{VERSION}.jar", x["jvm.jar"])
    put("m2_old_version", f"{ARTIFACT}-linuxarm64-0.39.0.klib", x["stale.klib"])
    put("m2_other_artifact", "skainet-backend-cpu-linuxarm64-0.40.0.klib", x["stale.klib"])
    sha = paths["gradle_klib"] / "0f1e2d3c4b5a69788796a5b4c3d2e1f0a9b8c7d6"
    sha.mkdir(parents=True)
    shutil.copy(x["stale.klib"], sha / f"{ARTIFACT}-linuxarm64-{VERSION}.klib")
    put("konan", "libskainet_kernels.a", x["kernels.a"])  # compiled cache: no marker inside
    put("konan_other", "kotlinx-coroutines-core.a", x["kernels.a"])
    paths["home"] = h
    return paths


def _args(home: dict[str, Path], *extra: str) -> list[str]:
    h = home["home"]
    return ["stale-check", "--group", GROUP, "--artifact", ARTIFACT, "--version", VERSION,
            "--konan-root", str(h / ".konan"), "--m2-root", str(h / ".m2" / "repository"),
            "--gradle-root", str(h / ".gradle"), *extra]


def test_lists_every_cached_copy_with_marker_state(home, gate_bins: Built,
                                                   capsys: pytest.CaptureFixture) -> None:
    assert skoracle(_args(home, "--marker", gate_bins.marker, "--json")) == 1
    doc = json.loads(capsys.readouterr().out)
    copies = {c["path"]: c for c in doc["copies"]}
    assert set(copies) == {str(home[k]) for k in ("m2_klib", "m2_jar", "gradle_klib", "konan")}
    assert copies[str(home["m2_klib"])]["has_marker"] is True
    assert copies[str(home["m2_klib"])]["marker_in"].endswith(".klib!/default/linkdata/module")
    for key in ("m2_jar", "gradle_klib", "konan"):
        assert copies[str(home[key])]["has_marker"] is False and copies[str(home[key])]["stale"]
    assert copies[str(home["konan"])]["version_in_path"] is False
    assert copies[str(home["m2_jar"])]["artifact"] == f"{ARTIFACT}-jvm"
    assert sorted(doc["remove"]) == sorted(str(home[k]) for k in ("m2_jar", "gradle_klib",
                                                                  "konan"))
    assert doc["removed"] == []
    assert all(home[k].exists() for k in ("m2_klib", "m2_jar", "gradle_klib", "konan"))


def test_clear_removes_exactly_the_printed_paths(home, gate_bins: Built,
                                                 capsys: pytest.CaptureFixture) -> None:
    assert skoracle(_args(home, "--marker", gate_bins.marker, "--clear", "--yes")) == 0
    out = capsys.readouterr().out.splitlines()
    printed = [line.removeprefix("remove: ") for line in out if line.startswith("remove: ")]
    removed = [line.removeprefix("removed: ") for line in out if line.startswith("removed: ")]
    assert printed == removed
    assert sorted(printed) == sorted(str(home[k]) for k in ("m2_jar", "gradle_klib", "konan"))
    assert out.index(f"remove: {printed[0]}") < out.index(f"removed: {printed[0]}")
    for key in ("m2_jar", "gradle_klib", "konan"):
        assert not home[key].exists()
    for key in ("m2_klib", "m2_old_version", "m2_other_artifact", "konan_other"):
        assert home[key].exists(), key
    assert home["gradle_klib"].parent.exists()  # only the version directory went
    # Nothing stale is left: the fresh copy alone, exit 0.
    assert skoracle(_args(home, "--marker", gate_bins.marker)) == 0
    out = capsys.readouterr().out
    assert "1 cached copy" in out and "marker found in" in out and "remove:" not in out


def test_without_marker_every_copy_is_listed_for_removal(home, capsys) -> None:
    assert skoracle(_args(home)) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{GROUP}:{ARTIFACT}:{VERSION}: 4 cached copies"
    assert len([line for line in out if line.startswith("remove: ")]) == 4
    assert any("(version not in path)" in line and "[konan]" in line for line in out)
    assert home["m2_klib"].exists()


def test_roots_from_environment(home, gate_bins: Built, monkeypatch) -> None:
    h = home["home"]
    monkeypatch.setenv("KONAN_DATA_DIR", str(h / ".konan"))
    monkeypatch.setenv("SKORACLE_M2_REPO", str(h / ".m2" / "repository"))
    monkeypatch.setenv("GRADLE_USER_HOME", str(h / ".gradle"))
    copies = find_copies(Roots.from_env(), GROUP, ARTIFACT, VERSION)
    assert {c.kind for c in copies} == {"maven-local", "gradle", "konan"} and len(copies) == 4
    monkeypatch.setenv("HOME", str(h))
    for var in ("KONAN_DATA_DIR", "SKORACLE_M2_REPO", "GRADLE_USER_HOME"):
        monkeypatch.delenv(var)
    assert len(find_copies(Roots.from_env(), GROUP, ARTIFACT, VERSION)) == 4


def test_corrupt_cached_klib_is_stale_and_removable(home, gate_bins: Built, capsys) -> None:
    klib = next(home["m2_klib"].glob("*.klib"))
    data = klib.read_bytes()
    klib.write_bytes(data[: len(data) // 2])
    assert skoracle(_args(home, "--marker", gate_bins.marker)) == 1
    out = capsys.readouterr().out
    assert f"{home['m2_klib']}  STALE (unreadable: {klib}: corrupt zip container" in out
    assert f"remove: {home['m2_klib']}" in out


def test_symlinked_copy_is_unlinked_not_followed(home, gate_bins: Built, tmp_path: Path,
                                                 capsys) -> None:
    outside = tmp_path / "outside-0.40.0"
    outside.mkdir()
    shutil.copy(gate_bins.extra["stale.klib"], outside / "x.klib")
    link = home["m2_klib"].parent.parent / f"{ARTIFACT}-linuxx64" / VERSION
    link.parent.mkdir(parents=True)
    link.symlink_to(outside, target_is_directory=True)
    assert skoracle(_args(home, "--marker", gate_bins.marker, "--clear", "--yes")) == 0
    capsys.readouterr()
    assert not link.exists() and not link.is_symlink()
    assert (outside / "x.klib").exists()


@pytest.mark.parametrize("bad", [["--group", "../../etc"], ["--version", "1.0/../.."],
                                 ["--artifact", ""]])
def test_bad_coordinates_are_usage_errors(home, bad, capsys) -> None:
    args = _args(home)
    i = args.index(bad[0])
    args[i + 1] = bad[1]
    assert skoracle(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("skoracle stale-check: error: ") and "Traceback" not in err


def _other_artifacts(home: dict[str, Path], gate_bins: Built) -> list[Path]:
    """Caches of artifacts whose names merely start with `skainet-backend`."""
    konan_cache = home["konan"].parent
    others = [konan_cache / "sk.ainet.core-skainet-backend-cpu-cache",
              home["m2_klib"].parent.parent / "skainet-backend-native-cpu-extra" / VERSION]
    for d in others:
        d.mkdir(parents=True)
        shutil.copy(gate_bins.extra["stale.klib"], d / "x.klib")
    return others


def test_artifact_names_match_exactly_plus_kmp_variants(home, gate_bins: Built,
                                                         capsys) -> None:
    others = _other_artifacts(home, gate_bins)
    args = _args(home, "--json")
    args[args.index("--artifact") + 1] = "skainet-backend"
    assert skoracle(args) == 0
    assert json.loads(capsys.readouterr().out)["copies"] == []  # a prefix is not a name
    variant = home["m2_klib"].parent.parent / f"{ARTIFACT}-linuxx64" / VERSION
    variant.mkdir(parents=True)
    copies = {str(c.path) for c in find_copies(Roots(home["home"] / ".konan",
                                                     home["home"] / ".m2" / "repository",
                                                     home["home"] / ".gradle"),
                                               GROUP, ARTIFACT, VERSION)}
    assert copies == {str(home[k]) for k in ("m2_klib", "m2_jar", "gradle_klib", "konan")} | {
        str(variant)}
    assert not {str(p) for p in others} & copies
    args[args.index("--artifact") + 1] = "skainet-backend*"  # a glob, written by the user
    assert skoracle(args) == 0
    globbed = {c["path"] for c in json.loads(capsys.readouterr().out)["copies"]}
    assert globbed == copies | {str(p) for p in others} | {str(home["m2_other_artifact"])}


def test_clear_without_yes_on_a_pipe_removes_nothing(home, capsys, monkeypatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n"))  # not a terminal
    assert skoracle(_args(home, "--clear")) == 2
    out, err = capsys.readouterr()
    assert len([line for line in out.splitlines() if line.startswith("remove: ")]) == 4
    assert "--yes" in err and "nothing removed" in err and "Traceback" not in err
    assert all(home[k].exists() for k in ("m2_klib", "m2_jar", "gradle_klib", "konan"))
    assert skoracle(_args(home, "--clear", "--json")) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("remove: ") == 4 and "--yes" in err
    assert all(home[k].exists() for k in ("m2_klib", "m2_jar", "gradle_klib", "konan"))


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("answer, code", [("n\n", 2), ("\n", 2), ("y\n", 0)])
def test_clear_asks_on_a_terminal(home, capsys, monkeypatch, answer: str, code: int) -> None:
    monkeypatch.setattr(sys, "stdin", _Terminal(answer))
    assert skoracle(_args(home, "--clear")) == code
    err = capsys.readouterr().err
    assert "remove the 4 paths listed above? [y/N]" in err
    assert home["m2_klib"].exists() is (code == 2)


def test_clear_confirmed_on_a_real_terminal(home) -> None:
    """stdin a pseudo-terminal: the prompt is shown and a typed y removes the copies."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "harness", *_args(home, "--clear")],
                            cwd=Path(__file__).resolve().parent.parent, stdin=slave,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    os.close(slave)
    try:
        os.write(master, b"y\n")
        out, err = proc.communicate(timeout=120)
    finally:
        os.close(master)
    assert proc.returncode == 0, err
    assert "remove the 4 paths listed above? [y/N]" in err
    assert out.count("removed: ") == 4
    assert not any(home[k].exists() for k in ("m2_klib", "m2_jar", "gradle_klib", "konan"))
