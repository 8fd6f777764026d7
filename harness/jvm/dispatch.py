"""Which kernel SKaiNET's own runtime runs, asked of SKaiNET itself.

SKaiNET's JVM ops do not call kernel classes by name: `KernelServiceLoader.installAll()`
registers every `KernelProvider` on the classpath into `KernelRegistry`, which keeps them
sorted by priority (native-ffm 100, panama-vector 50, scalar 0), and the matmul path takes,
per format, the first provider that `isAvailable()` and whose accessor (`matmulQ8_0()`,
`matmulQ4K()`, ...) returns a kernel. The worker asks exactly that, in a JVM started with
the user's system properties (`--jvm-prop`), and keeps the objects the registry hands out:
the dispatched kernel is judged first, by calling that object. A provider that is
registered but unavailable is named with the reason the harness can find (its library is
not on the classpath, does not load, lacks a symbol, the JDK has no FFM or no Vector API).
"""

from __future__ import annotations

import platform
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from harness.errors import HarnessError
from harness.jvm.discovery import (
    BF16,
    FFM,
    FP32,
    MEMSEG,
    NARROW,
    PACKED,
    PANAMA,
    SCALAR,
    Kernel,
)

REGISTRY = "sk.ainet.backend.api.kernel.KernelRegistry"
#: The dispatch key of a MemorySegment-weight accessor: "Q4_K+MemorySegment".
MEMSEG_SUFFIX = "+MemorySegment"
SERVICE_LOADER = "sk.ainet.backend.api.kernel.KernelServiceLoader"
#: The registry accessor of each format (SKaiNET's KernelProvider), in the oracle's names.
ACCESSORS: dict[str, str] = {
    "F32": "matmulFp32", "BF16": "matmulBf16", "F16": "matmulFp16",
    "Q8_0": "matmulQ8_0", "Q4_0": "matmulQ4_0", "Q5_0": "matmulQ5_0", "Q5_1": "matmulQ5_1",
    "Q4_K": "matmulQ4K", "Q5_K": "matmulQ5K", "Q6_K": "matmulQ6K",
    # MemSegKernelProvider (JVM only): weights in a MemorySegment (a mapped GGUF)
    "Q4_K" + MEMSEG_SUFFIX: "matmulQ4KMemSeg",
}
#: The kernel kind a format's accessor returns (harness.jvm.discovery kinds).
ACCESSOR_KINDS = {"F32": FP32, "BF16": BF16, "F16": NARROW, "Q4_K" + MEMSEG_SUFFIX: MEMSEG}
#: Symbols a native provider needs, checked when its library loads yet it says unavailable.
NATIVE_SYMBOLS = ("skainet_q4k_matmul", "skainet_q8_0_matmul", "skainet_q4_0_matmul",
                  "skainet_q6k_matmul")
#: The project's own fixture classes (fixtures/jvm), and what every dispatch over them says.
FIXTURE_PACKAGE = "skoracle.fixture."
FIXTURE_NOTE = "TEST FIXTURE: the project's own providers and kernels, not SKaiNET"
#: The first JDK whose FFM API (java.lang.foreign) is final.
FFM_JDK = 22
#: What the registry does not decide, said in every dispatch report.
REGISTRY_NOTES = (
    "Q8_0 weights held in a MemorySegment bypass the registry (SKaiNET's Panama "
    "matmulF32Q8_0MemSeg path)",
    "-Dskainet.strict.kernels=true turns a format no provider carries into "
    "NoSuchKernelException; without it SKaiNET's built-in fallback runs (not judged here)",
)


@dataclass
class ProviderEntry:
    """One registered provider, as the registry has it."""

    name: str
    cls: str
    priority: int
    available: bool
    reason: str = ""  # why it is unavailable ("" when available)
    #: format -> the class of the kernel its accessor returns (None: it carries none;
    #: "!<text>": the accessor is missing or threw)
    kernels: dict[str, str | None] = field(default_factory=dict)


@dataclass
class FormatChoice:
    """What SKaiNET runs for one format: the chosen (provider, kernel class) and the
    fallbacks after it, in registry order."""

    fmt: str
    provider: str | None = None
    kernel: str | None = None
    fallbacks: list[tuple[str, str]] = field(default_factory=list)

    def describe(self) -> str:
        """'Q8_0 -> native-ffm NativeQ8_0MatmulKernel; fallback panama-vector ...'."""
        if self.kernel is None:
            return f"{self.fmt} -> no available provider carries it"
        text = f"{self.fmt} -> {self.provider} {short(self.kernel)}"
        if self.fallbacks:
            text += "; fallback " + ", ".join(f"{p} {short(k)}" for p, k in self.fallbacks)
        return text


@dataclass
class Dispatch:
    """The registry's answer for a classpath and its system properties."""

    props: tuple[str, ...] = ()
    providers: list[ProviderEntry] = field(default_factory=list)
    choices: list[FormatChoice] = field(default_factory=list)
    #: "" when the registry answered; else why it could not be asked (no registry class)
    error: str = ""
    installed: list[str] = field(default_factory=list)  # installAll()'s names
    install_error: str = ""
    notes: tuple[str, ...] = REGISTRY_NOTES

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Dispatch:
        d = cls(**{k: v for k, v in data.items() if k not in ("providers", "choices")})
        d.props = tuple(d.props)
        d.notes = tuple(d.notes)
        d.providers = [ProviderEntry(**p) for p in data.get("providers", [])]
        d.choices = [FormatChoice(c["fmt"], c.get("provider"), c.get("kernel"),
                                  [tuple(f) for f in c.get("fallbacks", [])])
                     for c in data.get("choices", [])]
        return d

    def chosen(self) -> dict[str, tuple[str, str]]:
        """kernel class -> (provider, first format it is dispatched for)."""
        out: dict[str, tuple[str, str]] = {}
        for c in self.choices:
            if c.kernel is not None:
                out.setdefault(c.kernel, (c.provider or "", c.fmt))
        return out

    def lines(self) -> list[str]:
        """The report's dispatch section, a line each."""
        if self.error:
            return [f"dispatch not asked: {self.error}"]
        props = " ".join(f"-D{p}" for p in self.props) or "no system properties"
        out = [f"SKaiNET's KernelRegistry ({props}): " + (
            ", ".join(f"{p.name} ({p.priority}{'' if p.available else ', unavailable'})"
                      for p in self.providers) or "no provider registered")]
        if self.install_error:
            out.append(f"KernelServiceLoader.installAll() failed: {self.install_error}")
        out += [f"{p.name} (priority {p.priority}, {short(p.cls)}) is registered but "
                f"unavailable: {p.reason}" for p in self.providers if not p.available]
        out += [c.describe() for c in self.choices if c.kernel]
        none = [c.fmt for c in self.choices if not c.kernel]
        if none:
            out.append(f"{', '.join(none)} -> no available provider carries "
                       + ("it" if len(none) == 1 else "them"))
        if any(p.cls.startswith(FIXTURE_PACKAGE) for p in self.providers):
            out[0] += f" [{FIXTURE_NOTE}]"
        return out + list(self.notes)


def base_format(key: str) -> str:
    """The oracle format of a dispatch key ("Q4_K+MemorySegment" -> "Q4_K")."""
    return key.split("+", 1)[0]


def dispatch_keys(formats: Sequence[str] | None) -> tuple[str, ...]:
    """The dispatch keys to ask about: every accessor's, or those of `formats`."""
    return tuple(f for f in ACCESSORS if formats is None or base_format(f) in formats)


def short(cls: str) -> str:
    return cls.rsplit(".", 1)[-1]


def parse_props(values: Sequence[str]) -> tuple[str, ...]:
    """`--jvm-prop key=value` values, checked (HarnessError naming the bad one)."""
    out = []
    for v in values:
        if not re.fullmatch(r"[A-Za-z0-9_.\-]+=[^\n\r\0]*", v):
            raise HarnessError(f"--jvm-prop {v!r}: expected key=value (a Java system "
                               "property, e.g. skainet.strict.kernels=true)")
        out.append(v)
    return tuple(out)


# ----------------------------------------------------------------- child side (in the JVM)

def query_registry(jpype: Any, formats: Sequence[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Ask SKaiNET's registry (installing the providers on the classpath first when none is
    registered, as SKaiNET's ops do) which kernel each format gets. Returns (the JSON-able
    Dispatch, class name -> the kernel object the registry handed out)."""
    try:
        registry = jpype.JClass(REGISTRY).INSTANCE
    except Exception:  # JPype: "Class ... is not found"
        return {"error": f"{REGISTRY} is not on the classpath (SKaiNET's "
                         "skainet-backend-api jar, or its jvm classes)"}, {}
    d: dict[str, Any] = {"installed": [], "install_error": ""}
    if registry.providers().isEmpty():
        try:
            d["installed"] = [str(n) for n in jpype.JClass(SERVICE_LOADER).INSTANCE.installAll()]
        except Exception as exc:
            d["install_error"] = _exc_text(exc)
    objects: dict[str, Any] = {}
    providers = [_provider_entry(jpype, p, formats, objects) for p in registry.providers()]
    d["providers"] = providers
    d["choices"] = [_choice(fmt, providers) for fmt in formats]
    return d, objects


def _provider_entry(jpype: Any, p: Any, formats: Sequence[str], objects: dict[str, Any]
                    ) -> dict[str, Any]:
    """One provider: name, priority, availability (with a reason when unavailable) and the
    kernel class its accessor returns for each format."""
    entry: dict[str, Any] = {"name": str(p.getName()), "cls": str(p.getClass().getName()),
                             "priority": int(p.getPriority()), "kernels": {}}
    try:
        entry["available"] = bool(p.isAvailable())
        entry["reason"] = "" if entry["available"] else unavailable_reason(jpype, p)
    except Exception as exc:
        entry["available"], entry["reason"] = False, f"isAvailable() threw {_exc_text(exc)}"
    for fmt in formats:
        accessor = getattr(p, ACCESSORS[fmt], None)
        if accessor is None:  # not a MemSegKernelProvider, or an older KernelProvider
            entry["kernels"][fmt] = None if fmt.endswith(MEMSEG_SUFFIX) else \
                f"!no {ACCESSORS[fmt]}() (an older KernelProvider)"
            continue
        try:
            k = accessor()
        except Exception as exc:
            entry["kernels"][fmt] = f"!{ACCESSORS[fmt]}() threw {_exc_text(exc)}"
            continue
        if k is None:
            entry["kernels"][fmt] = None
        else:
            name = str(k.getClass().getName())
            entry["kernels"][fmt] = name
            objects.setdefault(name, k)
    return entry


def _choice(fmt: str, providers: list[dict[str, Any]]) -> dict[str, Any]:
    """The first available provider carrying `fmt`, and the ones after it that do too."""
    carrying = [(p["name"], p["kernels"][fmt]) for p in providers
                if p["available"] and p["kernels"].get(fmt)
                and not p["kernels"][fmt].startswith("!")]
    if not carrying:
        return {"fmt": fmt}
    (prov, kernel), rest = carrying[0], carrying[1:]
    return {"fmt": fmt, "provider": prov, "kernel": kernel, "fallbacks": rest}


def _exc_text(exc: Any) -> str:
    msg = exc.getMessage() if hasattr(exc, "getMessage") else str(exc)
    name = exc.getClass().getName() if hasattr(exc, "getClass") else type(exc).__name__
    return f"{name}: {msg}" if msg else str(name)


def unavailable_reason(jpype: Any, provider: Any) -> str:
    """Why a registered provider says it is unavailable, as far as the harness can tell:
    for a native provider its library resource (missing, not loading, lacking a symbol) or
    the JDK's FFM; for a Panama one the Vector API module and skainet.cpu.vector.enabled."""
    system = jpype.JClass("java.lang.System")
    kind = _provider_kind(f"{provider.getName()} {provider.getClass().getName()}")
    if kind == FFM:
        return _native_reason(jpype, provider)
    if kind == PANAMA:
        if str(system.getProperty("skainet.cpu.vector.enabled", "")) == "false":
            return "-Dskainet.cpu.vector.enabled=false"
        layer = jpype.JClass("java.lang.ModuleLayer").boot()
        if not layer.findModule("jdk.incubator.vector").isPresent():
            return "the JVM has no jdk.incubator.vector module (JDK < 16, or not added)"
    return "isAvailable() returned false (the provider gives no reason)"


def _native_reason(jpype: Any, provider: Any) -> str:
    """A native provider's library: where the resource should be (the worker's JVM runs on
    this machine), and what loading it says."""
    from harness.board.hostkernels import native_library_resource

    feature = int(jpype.JClass("java.lang.Runtime").version().feature())
    if feature < FFM_JDK:
        return f"the FFM API (java.lang.foreign) is final from JDK {FFM_JDK}; this JVM is " \
               f"{feature}"
    resource = native_library_resource()
    if resource is None:
        return f"SKaiNET bundles no library for {platform.system()} {platform.machine()}"
    loader = provider.getClass().getClassLoader() or \
        jpype.JClass("java.lang.ClassLoader").getSystemClassLoader()
    if loader.getResource(resource) is None:
        platform_dir = resource.split("/")[1]
        return f"no {resource} on the classpath (the build ships no library for " \
               f"{platform_dir})"
    return _load_reason(jpype, loader, resource)


def _load_reason(jpype: Any, loader: Any, resource: str) -> str:
    """Copy the library resource to a temp file, try to load it and find its symbols."""
    files = jpype.JClass("java.nio.file.Files")
    tmp = files.createTempFile("skoracle-native-", resource.rsplit("/", 1)[-1])
    arena = jpype.JClass("java.lang.foreign.Arena").ofConfined()
    try:
        with loader.getResourceAsStream(resource) as stream:
            files.copy(stream, tmp, jpype.JClass("java.nio.file.StandardCopyOption")
                       .REPLACE_EXISTING)
        try:
            lookup = jpype.JClass("java.lang.foreign.SymbolLookup").libraryLookup(tmp, arena)
        except Exception as exc:
            return f"{resource} is on the classpath but does not load: {_exc_text(exc)}"
        missing = [s for s in NATIVE_SYMBOLS if not lookup.find(s).isPresent()]
        if missing:
            return f"{resource} loads but lacks {', '.join(missing)}"
        return (f"{resource} loads and exports {', '.join(NATIVE_SYMBOLS)}; isAvailable() "
                "still returned false (a kill switch, or a downcall that failed to link)")
    finally:
        arena.close()
        files.deleteIfExists(tmp)


# ----------------------------------------------------------------------- parent side

def dispatched_kernels(d: Dispatch, listed: Sequence[Kernel]) -> list[Kernel]:
    """The kernels SKaiNET runs, one per class, first: the discovered entry when discovery
    found the class (marked), else one built from the registry's answer (the worker calls
    the very object the registry handed out). Then every other runnable kernel."""
    by_cls, chosen = {k.cls: k for k in listed}, d.chosen()
    first: list[Kernel] = []
    for cls, (prov, fmt) in chosen.items():
        fmts = tuple(c.fmt for c in d.choices if c.kernel == cls)
        k = by_cls.get(cls) or Kernel(cls, base_format(fmt), _provider_kind(prov),
                                      "KernelRegistry", kind=ACCESSOR_KINDS.get(fmt, PACKED))
        k.dispatched = fmts
        k.dispatched_by = prov
        if k.runnable:
            first.append(k)
    rest = [k for k in listed if k.runnable and k.cls not in chosen]
    return first + rest


def _provider_kind(name: str) -> str:
    low = name.lower()
    return FFM if "native" in low or "ffm" in low else PANAMA if "panama" in low or \
        "vector" in low else SCALAR
