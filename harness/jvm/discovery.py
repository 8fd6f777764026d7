"""Finding SKaiNET's kernels on a classpath by reading class files. A kernel is a class
implementing an interface of `sk.ainet.backend.api.kernel` (directly or through the
superclasses and superinterfaces on the classpath), or, without one, a class with a static
`INSTANCE` of its own type (a Kotlin `object`) and the packed
`matmul(float[], int, byte[], int, int, int, float[], int)`. Packed kernels with an INSTANCE
are run; every other kernel is listed with the reason it is not. No class list is
hard-coded: the kind comes from the interface, the format from the interfaces or the class
name, the provider from what the class refers to (the Vector API, the FFM API, or
neither)."""

from __future__ import annotations

import os
import re
import struct
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import HarnessError

MATMUL_NAME = "matmul"
MATMUL_DESCRIPTOR = "([FI[BIII[FI)V"  # float[],int,byte[],int,int,int,float[],int
#: Fp32MatmulKernel.matmul(a, aOffset, aStride, b, bOffset, bStride, out, outOffset,
#: outStride, m, n, k)
GEMM_DESCRIPTOR = "([FII[FII[FIIIII)V"
#: Q4KMemSegMatmulKernel.matmul(input, inputOffset, MemorySegment weight, long
#: weightByteOffset, inputDim, outputDim, output, outputOffset)
MEMSEG_DESCRIPTOR = "([FILjava/lang/foreign/MemorySegment;JII[FI)V"
#: Bf16MatmulKernel / NarrowFloatMatmulKernel.matmul: B as bytes, its offset and stride in bytes
B16_DESCRIPTOR = "([FII[BII[FIIIII)V"
ACC_STATIC = 0x0008

SCALAR, PANAMA, FFM = "scalar", "panama-vector", "native-ffm"
#: Format spellings in names (Q4_K, Q4K, q4k, Q8_0 ...) -> the oracle's format name.
_FORMAT_RE = re.compile(r"Q([4568])_?(0|1|K)", re.I)
#: SKaiNET's kernel SPI package: a class implementing one of its interfaces is a kernel.
KERNEL_PACKAGE = "sk.ainet.backend.api.kernel"
ACC_INTERFACE, ACC_ABSTRACT, ACC_SYNTHETIC = 0x0200, 0x0400, 0x1000
PACKED, MEMSEG, FP32, BF16, NARROW, VIEW, OTHER = (
    "packed", "memseg", "fp32", "bf16", "narrow-float", "view", "other")
#: Kinds of kernel interface by simple name, first match wins.
KERNEL_KINDS: tuple[tuple[str, re.Pattern[str]], ...] = (
    (MEMSEG, re.compile(r"MemSeg\w*Kernel$")),
    (PACKED, re.compile(r"^Q[4568]_?[01K]MatmulKernel$", re.I)),
    (FP32, re.compile(r"^Fp32MatmulKernel$")),
    (BF16, re.compile(r"^Bf16MatmulKernel$")),
    (NARROW, re.compile(r"^(NarrowFloat|Fp16)MatmulKernel$")),
    (VIEW, re.compile(r"^ViewKernel$")),
)
#: Kinds the worker runs, by the matmul descriptor it calls.
RUNNABLE_KINDS: dict[str, str] = {PACKED: MATMUL_DESCRIPTOR, MEMSEG: MEMSEG_DESCRIPTOR,
                                   FP32: GEMM_DESCRIPTOR, BF16: B16_DESCRIPTOR,
                                   NARROW: B16_DESCRIPTOR}
#: The dense kinds' formats (of B); Fp16MatmulKernel is the narrow-float one with a known codec.
DENSE_FORMATS: dict[str, str] = {FP32: "F32", BF16: "BF16", NARROW: "F16"}
#: Why a kind is listed, not run (the interface's simple name fills {iface}).
NOT_RUN_YET: dict[str, str] = {
    NARROW: "implements {iface} with a codec read at run time: no model for that yet "
            "(Fp16MatmulKernel is run)",
    VIEW: "no runner for {iface} yet (TensorView operands, built with a KernelKey: "
          "TernaryF32GemvKernel, BitNetGemvKernel, PackedViewMatmulKernel, ...)",
    OTHER: "implements {iface}: not a kernel interface, nothing to judge",
}
#: Kernels whose float order is a kernels_ref semantics of its own, by class name: SKaiNET's
#: Q8-activation reference kernels (Q4_KQ8ActivationReferenceKernel, Q6_K...) quantize the
#: activations to int8 per 256 by design, so the exact-float bound cannot judge them.
ORDER_MODELS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"Q8ActivationReference"), "skainet_q8_reference"),)


@dataclass(frozen=True)
class ClassInfo:
    """What discovery needs from one class file."""

    name: str  # binary name with dots
    interfaces: tuple[str, ...]
    static_fields: dict[str, str]
    methods: frozenset[tuple[str, str]]
    class_refs: frozenset[str]
    access: int = 0
    super_name: str | None = None  # None for java.lang.Object itself


@dataclass
class Kernel:
    """One discovered kernel: class, format (None when neither name nor interface says),
    provider, and where it was found."""

    cls: str
    fmt: str | None
    provider: str
    source: str
    interfaces: tuple[str, ...] = field(default_factory=tuple)
    #: the kernels_ref semantics that models this class's own float order (ORDER_MODELS),
    #: judged bit for bit; None: the provider's semantics (scalar, Panama) as candidates
    model: str | None = None
    kind: str = PACKED  # the kind of kernel interface (KERNEL_KINDS)
    reason: str = ""  # why it is listed and not run; "" when the worker can run it
    #: formats SKaiNET's KernelRegistry dispatches to this class (harness.jvm.dispatch),
    #: and the provider that hands it out
    dispatched: tuple[str, ...] = ()
    dispatched_by: str = ""

    @property
    def runnable(self) -> bool:
        return self.kind in RUNNABLE_KINDS and not self.reason

    @property
    def short(self) -> str:
        return self.cls.rsplit(".", 1)[-1]


def _utf8(b: bytes) -> str:
    return b.decode("utf-8", errors="replace")  # modified UTF-8: names are ASCII in practice


def read_class(data: bytes) -> ClassInfo:
    """Parse the parts of a class file discovery needs (JVMS §4). ValueError if malformed."""
    if data[:4] != b"\xca\xfe\xba\xbe":
        raise ValueError("not a class file")
    pool, pos = _read_constant_pool(data)
    class_refs = frozenset(str(pool[e[2]]) for e in pool
                           if isinstance(e, tuple) and e[1] == 7)
    # descriptors and signatures mention classes too (e.g. FloatVector in a field type)
    class_refs |= frozenset(m for e in pool if isinstance(e, str)
                            for m in re.findall(r"L([\w/$]+);", e))
    access, this_idx, super_idx = struct.unpack_from(">HHH", data, pos)
    pos += 6
    (n_if,) = struct.unpack_from(">H", data, pos)
    pos += 2
    interfaces = tuple(_class_name(pool, struct.unpack_from(">H", data, pos + 2 * k)[0])
                       for k in range(n_if))
    pos += 2 * n_if
    fields, pos = _read_members(data, pool, pos)
    methods, pos = _read_members(data, pool, pos)
    return ClassInfo(_class_name(pool, this_idx), interfaces,
                     {n: d for f, n, d in fields if f & ACC_STATIC},
                     frozenset((n, d) for _, n, d in methods), class_refs, access,
                     _class_name(pool, super_idx) if super_idx else None)


def _read_constant_pool(data: bytes) -> tuple[list[object], int]:
    """The constant pool (UTF-8 entries as str, class/string/... references as
    ("ref", tag, index), the rest None) and the offset just past it."""
    pos = 10
    (count,) = struct.unpack_from(">H", data, 8)
    pool: list[object] = [None] * count
    i = 1
    while i < count:
        tag = data[pos]
        pos += 1
        if tag == 1:
            (n,) = struct.unpack_from(">H", data, pos)
            pool[i] = _utf8(data[pos + 2 : pos + 2 + n])
            pos += 2 + n
        elif tag in (7, 8, 16, 19, 20):  # Class, String, MethodType, Module, Package
            pool[i] = ("ref", tag, struct.unpack_from(">H", data, pos)[0])
            pos += 2
        elif tag in (3, 4, 9, 10, 11, 12, 17, 18):
            pos += 4
        elif tag in (5, 6):
            pos += 8
            i += 1
        elif tag == 15:
            pos += 3
        else:
            raise ValueError(f"bad constant pool tag {tag}")
        i += 1
    return pool, pos


def _class_name(pool: list[object], idx: int) -> str:
    """The dotted name of the class the pool entry `idx` refers to."""
    ref = pool[idx]
    if not (isinstance(ref, tuple) and ref[1] == 7):
        raise ValueError("bad class reference")
    return str(pool[ref[2]]).replace("/", ".")


def _read_members(data: bytes, pool: list[object], pos: int
                  ) -> tuple[list[tuple[int, str, str]], int]:
    """The fields or methods table at `pos` as (access flags, name, descriptor), attributes
    skipped, and the offset just past it."""
    (n,) = struct.unpack_from(">H", data, pos)
    pos += 2
    out = []
    for _ in range(n):
        flags, ni, di, na = struct.unpack_from(">HHHH", data, pos)
        pos += 8
        for _ in range(na):
            (ln,) = struct.unpack_from(">I", data, pos + 2)
            pos += 6 + ln
        out.append((flags, str(pool[ni]), str(pool[di])))
    return out, pos


def format_of(*names: str) -> str | None:
    """The packed format a kernel's interface or class name spells (first one that does)."""
    for name in names:
        m = _FORMAT_RE.search(name.rsplit(".", 1)[-1])
        if m:
            return f"Q{m.group(1)}_{m.group(2).upper()}"
    return None


def model_of(cls: str) -> str | None:
    """The semantics modelling this class's own order (ORDER_MODELS), by its simple name."""
    short = cls.rsplit(".", 1)[-1]
    return next((sem for pat, sem in ORDER_MODELS if pat.search(short)), None)


def provider_of(info: ClassInfo, classes: dict[str, ClassInfo] | None = None) -> str:
    """What the kernel runs on, from the classes it refers to, following references into
    the other classes of the classpath (a kernel may reach the Vector API via a helper)."""
    seen, todo, refs = set(), [info], set()
    while todo:
        c = todo.pop()
        refs |= c.class_refs
        for r in c.class_refs:
            nxt = (classes or {}).get(r.replace("/", "."))
            if nxt is not None and nxt.name not in seen:
                seen.add(nxt.name)
                todo.append(nxt)
    if any(r.startswith("jdk/incubator/vector/") for r in refs):
        return PANAMA
    if any(r.startswith("java/lang/foreign/") for r in refs):
        return FFM
    return SCALAR


def resolve_classpath(classpath: str, cwd: str | Path | None = None) -> str:
    """The classpath with every entry made absolute against `cwd` (the caller's directory
    by default) and `dir/*` expanded to that directory's jars, as `java -cp` does, so the
    JVM worker loads exactly what discovery read, wherever it runs. Empty entries drop."""
    base = Path(cwd) if cwd is not None else Path.cwd()
    out: list[str] = []
    for entry in [e for e in classpath.split(":") if e]:
        p = Path(os.path.expanduser(entry))
        p = p if p.is_absolute() else base / p
        if p.name == "*":
            if not p.parent.is_dir():
                raise HarnessError(f"--classpath entry {entry}: no such directory")
            out += [str(j) for j in sorted(p.parent.iterdir())
                    if j.suffix.lower() == ".jar" and j.is_file()]
        else:
            out.append(os.path.normpath(p))
    return ":".join(dict.fromkeys(out))


def iter_class_files(classpath: str) -> Iterator[tuple[str, bytes]]:
    """(where, bytes) of every .class file in the classpath's jars and directories."""
    for entry in [e for e in classpath.split(":") if e]:
        p = Path(entry)
        if p.is_dir():
            for f in sorted(p.rglob("*.class")):
                yield f"{p}!{f.relative_to(p)}", f.read_bytes()
        elif p.is_file() and zipfile.is_zipfile(p):
            with zipfile.ZipFile(p) as z:
                for n in sorted(z.namelist()):
                    if n.endswith(".class") and not n.startswith("META-INF/"):
                        yield f"{p}!{n}", z.read(n)
        else:
            raise _bad_entry(entry)


def _bad_entry(entry: str) -> HarnessError:
    """Why a classpath entry is neither a directory nor a jar."""
    if not Path(entry).exists():
        return HarnessError(f"--classpath entry {entry}: no such file or directory")
    return HarnessError(f"--classpath entry {entry}: neither a directory nor a jar")


def check_classpath(classpath: str) -> None:
    """Every entry a directory or a jar (HarnessError naming the first that is not), before
    a JVM is started on it."""
    for entry in [e for e in classpath.split(":") if e]:
        p = Path(entry)
        if not (p.is_dir() or (p.is_file() and zipfile.is_zipfile(p))):
            raise _bad_entry(entry)


def read_classpath(classpath: str) -> tuple[dict[str, ClassInfo], dict[str, str]]:
    """Every readable class on `classpath` by name (the first wins, as in the JVM) and the
    jar or directory it came from."""
    classes: dict[str, ClassInfo] = {}
    where_of: dict[str, str] = {}
    for where, data in iter_class_files(classpath):
        try:
            info = read_class(data)
        except (ValueError, struct.error, IndexError):
            continue  # not ours to judge: a malformed or exotic class is skipped
        if info.name not in classes:
            classes[info.name], where_of[info.name] = info, where.split("!")[0]
    return classes, where_of


def kernel_interfaces(info: ClassInfo, classes: dict[str, ClassInfo]) -> tuple[str, ...]:
    """The interfaces of `KERNEL_PACKAGE` the class implements: its own, and those of its
    superclasses and superinterfaces that are on the classpath, in the order found."""
    out: list[str] = []
    seen: set[str] = set()
    todo = [info]
    while todo:
        c = todo.pop(0)
        for name in (*c.interfaces, c.super_name):
            if name is None or name in seen:
                continue
            seen.add(name)
            if name.rsplit(".", 1)[0] == KERNEL_PACKAGE and name in c.interfaces:
                out.append(name)
            if name in classes:
                todo.append(classes[name])
    return tuple(out)


def kinds_of(interfaces: tuple[str, ...]) -> dict[str, str]:
    """kind -> the first interface of that kind (KERNEL_KINDS); "other" only when the class
    implements no kernel interface of a known kind."""
    kinds: dict[str, str] = {}
    for iface in interfaces:
        short = iface.rsplit(".", 1)[-1]
        kind = next((k for k, pat in KERNEL_KINDS if pat.search(short)), OTHER)
        kinds.setdefault(kind, short)
    if len(kinds) > 1:
        kinds.pop(OTHER, None)
    return kinds


def _call_reason(info: ClassInfo, iface: str, descriptor: str = MATMUL_DESCRIPTOR) -> str:
    """Why a class of a kind the worker runs cannot be called ("" when it can)."""
    own = "L" + info.name.replace(".", "/") + ";"
    if (MATMUL_NAME, descriptor) not in info.methods:
        return f"implements {iface} without matmul{descriptor}"
    if info.static_fields.get("INSTANCE") != own:
        return (f"implements {iface} but has no static INSTANCE of its own type (not a "
                "Kotlin object): no instance to call")
    return ""


def kernels_of(info: ClassInfo, classes: dict[str, ClassInfo], source: str) -> list[Kernel]:
    """The class as one entry per kind of kernel it is (none for an interface, an abstract
    or synthetic class, or a class that is no kernel), each runnable or with its reason."""
    if info.access & (ACC_INTERFACE | ACC_ABSTRACT | ACC_SYNTHETIC):
        return []
    kinds = kinds_of(kernel_interfaces(info, classes))
    if not kinds:  # no SKaiNET interface: a packed kernel by its signature and INSTANCE
        if _call_reason(info, "a kernel interface"):
            return []
        kinds = {PACKED: ""}
    fmt = format_of(*info.interfaces, info.name)
    provider = provider_of(info, classes)
    out = []
    for kind, iface in kinds.items():
        if kind in RUNNABLE_KINDS and not (kind == NARROW and iface != "Fp16MatmulKernel"):
            reason = _call_reason(info, iface, RUNNABLE_KINDS[kind])
        else:
            reason = NOT_RUN_YET[kind].format(iface=iface)
        out.append(Kernel(info.name, DENSE_FORMATS.get(kind, fmt), provider, source,
                          info.interfaces,
                          None if kind in DENSE_FORMATS else model_of(info.name), kind, reason))
    return out


def inventory(classpath: str) -> list[Kernel]:
    """Every kernel class on `classpath`: those implementing an interface of
    `KERNEL_PACKAGE` (one entry per kind) and the packed kernels found by their signature,
    each runnable or with the reason it is not run; sorted by kind, format, class name."""
    classes, where_of = read_classpath(classpath)
    found = [k for info in classes.values()
             for k in kernels_of(info, classes, where_of[info.name])]
    order = {kind: i for i, kind in enumerate(dict.fromkeys((*RUNNABLE_KINDS, *NOT_RUN_YET)))}
    return sorted(found, key=lambda k: (order[k.kind], k.fmt or "~", k.cls))


def discover(classpath: str) -> list[Kernel]:
    """Every packed matmul kernel on `classpath` the JVM worker can call, sorted by format
    then class name (`inventory` lists the rest with their reasons)."""
    return [k for k in inventory(classpath) if k.runnable]
