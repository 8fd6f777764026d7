"""Scan speed of `skoracle elf-check` on the largest real AArch64 artifacts on this machine.

Peers measured in the same run:
- `aarch64-linux-gnu-objdump -d` over the same bytes (a full disassembly; what a shell
  script gate would grep), reported as the ratio objdump time / gate time;
- for the word classifier alone, a scalar Python loop over the same words.

Artifacts: glibc's libc.a (an archive of ~1900 objects), the largest AArch64 shared object
(libasan), and a klib-like zip holding libc.a, libm.a and libstdc++.so (deflated).

Run: python3 bench/bench_gate.py
"""

from __future__ import annotations

import subprocess
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from timing import best_of  # bench/timing.py (scripts run from bench/)

from harness.gate import check_artifact, profile
from harness.gate.elfscan import open_elf
from harness.gate.encodings import classify, classify_word

LIB = Path("/usr/aarch64-linux-gnu/lib")
OBJDUMP = "aarch64-linux-gnu-objdump"


def _objdump(paths: list[Path]) -> None:
    for p in paths:
        subprocess.run([OBJDUMP, "-d", str(p)], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)


def _largest_elf() -> Path:
    candidates = [p for p in LIB.glob("*.so*") if p.is_file() and not p.is_symlink()]
    elves = [p for p in candidates if p.read_bytes()[:4] == b"\x7fELF"]
    return max(elves, key=lambda p: p.stat().st_size)


def main() -> None:
    a55 = profile("cortex-a55")
    big_so = _largest_elf()
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(tmp) / "bundle.klib"
        members = [LIB / "libc.a", LIB / "libm.a", LIB / "libstdc++.so.6.0.30"]
        with zipfile.ZipFile(bundle, "w", zipfile.ZIP_DEFLATED) as zf:
            for m in members:
                zf.write(m, f"default/targets/linux_arm64/native/{m.name}")

        def objdump_bundle() -> None:
            with zipfile.ZipFile(bundle) as zf:
                zf.extractall(Path(tmp) / "x")
            _objdump(sorted((Path(tmp) / "x").rglob("*.*")))

        rows = []
        for label, path, peer in (
            ("libc.a (archive)", LIB / "libc.a", lambda: _objdump([LIB / "libc.a"])),
            (f"{big_so.name} (one ELF)", big_so, lambda: _objdump([big_so])),
            ("klib-like zip (libc.a, libm.a, libstdc++)", bundle, objdump_bundle),
        ):
            rep = check_artifact(path, a55)
            gate_s = best_of(lambda p=path: check_artifact(p, a55))
            peer_s = best_of(peer, repeat=2)
            size = path.stat().st_size if path != bundle else sum(m.stat().st_size
                                                                  for m in members)
            rows.append((label, size, rep.code_bytes, rep.elf_files, gate_s, peer_s,
                         len(rep.findings)))

    print(f"{'artifact':44} {'input MB':>9} {'code MB':>8} {'ELFs':>5} {'gate s':>7} "
          f"{'MB/s':>7} {'objdump s':>9} {'objdump/gate':>12} {'findings':>8}")
    for label, size, code, elves, gate_s, peer_s, nfind in rows:
        print(f"{label:44} {size / 1e6:9.2f} {code / 1e6:8.2f} {elves:5d} {gate_s:7.3f} "
              f"{size / 1e6 / gate_s:7.1f} {peer_s:9.3f} {peer_s / gate_s:12.2f} {nfind:8d}")

    # The word classifier alone, on the largest ELF's .text.
    text = open_elf(big_so.read_bytes()).get_section_by_name(".text").data()
    words = np.frombuffer(text, dtype="<u4", count=len(text) // 4).astype(np.uint32)
    vec_s = best_of(lambda: classify(words))
    n_scalar = min(len(words), 200_000)
    sample = words[:n_scalar].tolist()
    scalar_s = best_of(lambda: [classify_word(w) for w in sample], repeat=1)
    scalar_mbs = n_scalar * 4 / 1e6 / scalar_s
    vec_mbs = len(words) * 4 / 1e6 / vec_s
    print(f"\nclassifier on {big_so.name} .text ({len(text) / 1e6:.2f} MB): NumPy "
          f"{vec_mbs:.0f} MB/s, scalar Python loop {scalar_mbs:.2f} MB/s "
          f"(ratio {vec_mbs / scalar_mbs:.0f}x)")


if __name__ == "__main__":
    main()
