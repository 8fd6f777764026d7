"""Build the gate's test binaries from fixtures/elf with the real cross toolchain.

Used by the tests (a session fixture builds into a temporary directory) and by
bench/bench_gate.py. Everything is compiled with aarch64-linux-gnu-gcc / -as / -ar; the
only bytes written by hand are the BSD-format archives (macOS `ar` is not available on
Debian), and `ar t`/`ar p` of GNU binutils read them back in the tests.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import HarnessError
from harness.gate.encodings import ASSEMBLER_MARCH

FIXTURE_DIR = Path(__file__).resolve().parents[2] / "fixtures" / "elf"
CROSS = "aarch64-linux-gnu-"
SYSROOT = Path("/usr/aarch64-linux-gnu")
TOOLS = (f"{CROSS}gcc", f"{CROSS}as", f"{CROSS}ar", f"{CROSS}strip", "gcc", "qemu-aarch64")
KLIB_NATIVE_DIR = "default/targets/linux_arm64/native"
KERNEL_ARCHIVE = "libskainet_kernels.a"

_CFLAGS = ("-Wall", "-ffreestanding", "-fno-stack-protector", "-fno-pie",
           "-fno-tree-loop-distribute-patterns", "-fno-asynchronous-unwind-tables")


@dataclass(frozen=True)
class Program:
    """One freestanding test program: its sources, -march, kernels and expected verdict."""

    name: str
    sources: tuple[str, ...]
    march: str
    kernels: tuple[str, ...]
    forbidden: tuple[str, ...] = ()  # features a Cortex-A55 lacks that the program uses
    opt: str = "-O2"
    callees: tuple[tuple[str, str], ...] = ()  # (kernel, helper function it calls)

    def functions_of(self, kernel: str) -> set[str]:
        """The kernel and the helper functions it calls (where its instructions may sit)."""
        return {kernel} | {callee for k, callee in self.callees if k == kernel}


PROGRAMS: tuple[Program, ...] = (
    Program("neon", ("neon.c",), "armv8.2-a+fp16", ("k_neon_fma", "k_fp16_add")),
    Program("dotprod", ("dotprod.c",), "armv8.2-a+dotprod", ("k_sdot", "k_udot", "k_sdot_lane")),
    Program("i8mm", ("i8mm.c",), "armv8.2-a+i8mm",
            ("k_smmla", "k_ummla", "k_usmmla", "k_usdot", "k_usdot_lane", "k_sudot_lane"),
            ("I8MM",)),
    Program("bf16", ("bf16.c",), "armv8.2-a+bf16",
            ("k_bfdot", "k_bfdot_lane", "k_bfmmla", "k_bfmlalb", "k_bfmlalt", "k_bfcvtn",
             "k_bfcvt"), ("BF16",)),
    Program("sve", ("sve.c",), "armv8.2-a+sve", ("k_sve_acle", "k_sve_loop"), ("SVE",), "-O3",
            (("k_sve_loop", "saxpy"),)),
    Program("sme", ("sme.c", "sme.s"), "armv8.2-a", ("k_smstart",), ("SME",)),
    Program("litpool", ("litpool.c", "litpool.s"), "armv8.2-a", ("k_litpool", "k_after_pool")),
    Program("rawword", ("rawword.c", "rawword.s"), "armv8.2-a", ("k_rawword",), ("I8MM",)),
)

#: Kernel objects for the archives: (source, object name as CMake writes it, -march).
KERNEL_OBJECTS: tuple[tuple[str, str, str], ...] = (
    ("kernels/q8_0_matmul.c", "q8_0_matmul.c.o", "armv8.2-a+fp16+dotprod"),
    ("kernels/q4k_matmul.c", "q4k_matmul.c.o", "armv8.2-a+fp16+dotprod"),
    ("kernels/fp32_matmul.c", "fp32_matmul.c.o", "armv8.2-a+fp16+dotprod"),
)
I8MM_OBJECT = ("kernels/q8_0_matmul_i8mm.c", "q8_0_matmul_i8mm.c.o", "armv8.2-a+fp16+i8mm")


@dataclass
class Built:
    """Paths of everything `build_all` produced."""

    root: Path
    programs: dict[str, Path] = field(default_factory=dict)
    extra: dict[str, Path] = field(default_factory=dict)
    marker: str = "skainet-build-7f3c9e-fresh"
    old_marker: str = "skainet-build-1a2b3c-old"


def missing_tools() -> list[str]:
    return [t for t in TOOLS if shutil.which(t) is None]


def _run(cmd: list[str], cwd: Path | None = None) -> None:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise HarnessError(f"build step failed: {' '.join(cmd)}\n{proc.stderr.strip()}", 2)


def _cc(src: Path, out: Path, march: str, opt: str = "-O2", extra: tuple[str, ...] = ()) -> Path:
    _run([f"{CROSS}gcc", opt, f"-march={march}", *_CFLAGS, f"-I{FIXTURE_DIR}", *extra,
          "-c", str(src), "-o", str(out)])
    return out


def _as(src: Path, out: Path) -> Path:
    _run([f"{CROSS}as", f"-march={ASSEMBLER_MARCH}", str(src), "-o", str(out)])
    return out


def build_program(prog: Program, out_dir: Path, runtime: list[Path], marker: str) -> Path:
    """Compile and statically link one freestanding program (no libc inside); `marker` is
    compiled into its .rodata."""
    objs = []
    for src in prog.sources:
        path = FIXTURE_DIR / src
        obj = out_dir / "obj" / f"{prog.name}.{Path(src).stem}.{Path(src).suffix[1:]}.o"
        objs.append(_as(path, obj) if src.endswith(".s") else _cc(
            path, obj, prog.march, prog.opt, (f'-DBUILD_MARKER="{marker}"',)))
    exe = out_dir / prog.name
    _run([f"{CROSS}gcc", "-static", "-nostdlib", "-no-pie", "-o", str(exe),
          *map(str, runtime), *map(str, objs), "-lgcc"])
    return exe


def write_bsd_archive(path: Path, members: list[tuple[str, bytes]],
                      symdef: bool = True) -> Path:
    """Write a BSD-format `ar` archive as macOS `ar`/`ranlib` do: `#1/<len>` names stored in
    front of the data, an optional `__.SYMDEF SORTED` index (here with no entries: what a
    macOS host writes when it cannot read the objects' symbols)."""

    def header(name: bytes, size: int) -> bytes:
        padded = name + b"\0" * (-len(name) % 4)
        fields = (b"#1/%d" % len(padded)).ljust(16) + b"0".ljust(12) + b"0".ljust(6) \
            + b"0".ljust(6) + b"100644".ljust(8) + str(size + len(padded)).encode().ljust(10) \
            + b"`\n"
        return fields + padded

    out = bytearray(b"!<arch>\n")
    entries = []
    if symdef:
        entries.append((b"__.SYMDEF SORTED", struct.pack("<II", 0, 0)))
    entries += [(n.encode(), d) for n, d in members]
    for name, data in entries:
        out += header(name, len(data)) + data
        if len(out) % 2:
            out += b"\n"
    path.write_bytes(bytes(out))
    return path


def _zip(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def _klib(path: Path, archive: bytes, marker: str) -> Path:
    """A zip laid out like a Kotlin/Native klib for linux_arm64 with an embedded archive."""
    return _zip(path, {
        "default/manifest": (
            b"abi_version=1.8.0\nbuiltins_platform=NATIVE\n"
            b"unique_name=sk.ainet.core\\:skainet-backend-native-cpu\n"
            b"native_targets=linux_arm64\nir_provider=kotlin.native.cinterop\n"
        ),
        "default/linkdata/module": b"\x0a\x1bsk.ainet.exec.kernel\x12" + (
            f"const val BUILD_MARKER = \"{marker}\"\n" * 20).encode("utf-16-le"),
        f"{KLIB_NATIVE_DIR}/{KERNEL_ARCHIVE}": archive,
        "default/resources/README": b"kernel archive for linux_arm64\n",
    })


def build_all(root: Path) -> Built:
    """Build every program, object, archive and container the gate tests use."""
    missing = missing_tools()
    if missing:
        raise HarnessError(f"missing tools {missing}: run scripts/setup.sh", 2)
    root.mkdir(parents=True, exist_ok=True)
    built = Built(root)
    objdir = root / "obj"
    objdir.mkdir(exist_ok=True)
    runtime = [
        _cc(FIXTURE_DIR / "start.S", objdir / "start.o", "armv8-a"),
        _cc(FIXTURE_DIR / "rt.c", objdir / "rt.o", "armv8-a", "-O1"),
    ]
    for prog in PROGRAMS:
        built.programs[prog.name] = build_program(prog, root, runtime, built.marker)
    x = built.extra

    # Stripped copy: no .symtab, so no function names and no mapping symbols.
    x["i8mm.stripped"] = root / "i8mm.stripped"
    _run([f"{CROSS}strip", "-o", str(x["i8mm.stripped"]), str(built.programs["i8mm"])])
    x["litpool.stripped"] = root / "litpool.stripped"
    _run([f"{CROSS}strip", "-o", str(x["litpool.stripped"]), str(built.programs["litpool"])])

    # Ordinary glibc programs: dynamic (like a .kexe) and static (glibc's SVE ifuncs inside).
    for name, flags in (("neon.dynamic", ()), ("neon.glibc-static", ("-static",))):
        x[name] = root / name
        _run([f"{CROSS}gcc", "-O2", "-march=armv8.2-a+fp16", f"-I{FIXTURE_DIR}", *flags,
              "-o", str(x[name]), str(FIXTURE_DIR / "neon.c")])

    # Kernel objects (-fPIC: the same objects go into the .a and the .so), archives.
    kdir = root / "kernels"
    kdir.mkdir(exist_ok=True)
    good = [_cc(FIXTURE_DIR / s, kdir / o, m, "-O3", ("-fPIC",)) for s, o, m in KERNEL_OBJECTS]
    s, o, m = I8MM_OBJECT
    i8mm_obj = _cc(FIXTURE_DIR / s, kdir / o, m, "-O3", ("-fPIC",))
    for name, objs in (("kernels.a", good), ("kernels_i8mm.a", [*good, i8mm_obj])):
        x[name] = root / name
        x[name].unlink(missing_ok=True)
        _run([f"{CROSS}ar", "rcs", str(x[name]), *(p.name for p in objs)], cwd=kdir)
    x["empty_gnu.a"] = root / "empty_gnu.a"
    x["empty_gnu.a"].unlink(missing_ok=True)
    _run([f"{CROSS}ar", "rcs", str(x["empty_gnu.a"])])
    x["empty_bsd.a"] = write_bsd_archive(root / "empty_bsd.a", [])
    x["kernels_bsd.a"] = write_bsd_archive(
        root / "kernels_bsd.a", [(p.name, p.read_bytes()) for p in good])
    host_obj = root / "host_rt.o"
    _run(["gcc", "-O1", "-ffreestanding", "-fno-builtin", "-c", str(FIXTURE_DIR / "rt.c"),
          "-o", str(host_obj)])
    x["host_rt.o"] = host_obj
    x["kernels_x86.a"] = root / "kernels_x86.a"
    x["kernels_x86.a"].unlink(missing_ok=True)
    _run(["ar", "rcs", str(x["kernels_x86.a"]), str(host_obj)])

    # Shared objects (the -jvm jar bundles one per OS/arch).
    x["kernels.so"] = root / "libskainet_kernels.so"
    _run([f"{CROSS}gcc", "-shared", "-nostdlib", "-o", str(x["kernels.so"]), *map(str, good)])
    x["host.so"] = root / "libskainet_kernels.x86_64.so"
    _run(["gcc", "-shared", "-nostdlib", "-fPIC", "-O1", "-ffreestanding", "-fno-builtin",
          "-o", str(x["host.so"]), str(FIXTURE_DIR / "rt.c")])

    # klibs: fresh, stale (old marker), i8mm inside, empty (symbol table only), x86 archive.
    arch = {k: x[k].read_bytes() for k in ("kernels.a", "kernels_i8mm.a", "empty_bsd.a",
                                           "kernels_x86.a")}
    for name, archive, marker in (
        ("good.klib", arch["kernels.a"], built.marker),
        ("stale.klib", arch["kernels.a"], built.old_marker),
        ("i8mm.klib", arch["kernels_i8mm.a"], built.marker),
        ("empty.klib", arch["empty_bsd.a"], built.marker),
        ("x86.klib", arch["kernels_x86.a"], built.marker),
    ):
        x[name] = _klib(root / f"skainet-backend-native-cpu-linuxarm64-{name}", archive, marker)

    # The -jvm jar: per-OS/arch shared objects as resources, plus class files.
    x["jvm.jar"] = _zip(root / "skainet-backend-native-cpu-jvm.jar", {
        "META-INF/MANIFEST.MF": b"Manifest-Version: 1.0\r\n\r\n",
        "sk/ainet/exec/kernel/NativeKernelProvider.class": b"\xca\xfe\xba\xbe\0\0\0\x41" * 8,
        "native/linux-arm64/libskainet_kernels.so": x["kernels.so"].read_bytes(),
        "native/linux-x86_64/libskainet_kernels.so": x["host.so"].read_bytes(),
    })
    # A zip inside a zip (a fat jar holding the klib).
    x["nested.zip"] = _zip(root / "bundle.zip", {
        "libs/skainet-backend-native-cpu-linuxarm64.klib": x["i8mm.klib"].read_bytes(),
    })
    return built


_SESSION: dict[str, Built] = {}


def build_once(make_root: Callable[[], Path]) -> Built:
    """`build_all` once per process (test modules share one build in a pytest session)."""
    if "built" not in _SESSION:
        _SESSION["built"] = build_all(make_root())
    return _SESSION["built"]


def run_qemu(exe: Path, cpu: str, *args: str, sysroot: Path | None = None,
             timeout: float = 60) -> int:
    """Exit status of `exe` under qemu-aarch64 -cpu CPU (negative: killed by that signal)."""
    cmd = ["qemu-aarch64", "-cpu", cpu]
    if sysroot is not None:
        cmd += ["-L", str(sysroot)]
    proc = subprocess.run([*cmd, str(exe), *args], capture_output=True, timeout=timeout)
    return proc.returncode
