"""Board settings: a small TOML profile, `--board user@host[:port]`, or both (flags win).

Example profile (every key optional except host):

    name = "sl2610"
    host = "192.168.1.50"
    port = 22
    user = "root"
    identity_file = "~/.ssh/id_ed25519"     # else the ssh agent, then ~/.ssh/id_*
    known_hosts = "~/.ssh/known_hosts"
    host_key_fingerprint = "SHA256:..."     # pin: checked instead of known_hosts
    connect_timeout = 10.0
    keepalive = 15                          # seconds between SSH keepalives, 0 = off
    remote_dir = "/tmp/skoracle"            # bin/, lib/, runs/ and the lock live here
    exec_prefix = ""                        # e.g. "qemu-aarch64 -cpu cortex-a76" (board-in-a-box)
    lib_dirs = ["/lib", "/usr/lib"]         # where the board's system libraries are
    lock_wait = 60.0                        # seconds a second run waits for the board lock
    kill_grace = 2.0                        # seconds between TERM and KILL on timeout
    sample_interval = 0.1                   # seconds between VmHWM samples
    memory_mb = 1946                        # the board's RAM, for reports
"""

from __future__ import annotations

import re
import shlex
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from harness.atomic import write_atomic
from harness.errors import HarnessError

DEFAULT_LIB_DIRS = (
    "/lib", "/usr/lib", "/lib64", "/usr/lib64",
    "/lib/aarch64-linux-gnu", "/usr/lib/aarch64-linux-gnu",
)

_BOARD_SPEC = re.compile(
    r"^(?:(?P<user>[^@\s]+)@)?(?P<host>\[[^\]]+\]|[^:@\s]+)(?::(?P<port>\d+))?$"
)


@dataclass(frozen=True)
class BoardProfile:
    """Everything needed to reach and use one board."""

    host: str
    port: int = 22
    user: str = "root"
    name: str = ""
    identity_file: str | None = None
    known_hosts: str | None = "~/.ssh/known_hosts"
    host_key_fingerprint: str | None = None
    connect_timeout: float = 10.0
    keepalive: int = 15
    remote_dir: str = "/tmp/skoracle"
    exec_prefix: str = ""
    lib_dirs: tuple[str, ...] = DEFAULT_LIB_DIRS
    lock_wait: float = 60.0
    kill_grace: float = 2.0
    sample_interval: float = 0.1
    memory_mb: int = 1946
    source: str = field(default="", compare=False)  # where it was read from, for messages

    @property
    def label(self) -> str:
        return self.name or f"{self.user}@{self.host}:{self.port}"

    @property
    def exec_prefix_argv(self) -> list[str]:
        return shlex.split(self.exec_prefix)

    def with_overrides(self, **kw: object) -> BoardProfile:
        """A copy with the non-None keyword values replaced."""
        return replace(self, **{k: v for k, v in kw.items() if v is not None})


def parse_board_spec(spec: str) -> dict[str, object]:
    """`user@host[:port]` (host may be `[v6addr]`) -> {user?, host, port?}."""
    m = _BOARD_SPEC.match(spec.strip())
    if not m:
        raise HarnessError(f"--board {spec!r}: expected user@host[:port]")
    out: dict[str, object] = {"host": m["host"].strip("[]")}
    if m["user"]:
        out["user"] = m["user"]
    if m["port"]:
        port = int(m["port"])
        if not 0 < port < 65536:
            raise HarnessError(f"--board {spec!r}: port {port} out of range")
        out["port"] = port
    return out


def _coerce(path: str, key: str, value: object, kind: type) -> object:
    if kind is tuple:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise HarnessError(f"{path}: {key} must be a list of strings")
        return tuple(value)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is str and value is None:
        return None
    if not isinstance(value, kind) or isinstance(value, bool):
        what = {int: "an integer", float: "a number", str: "a string"}[kind]
        raise HarnessError(f"{path}: {key} must be {what}, got {value!r}")
    return value


_KINDS = {
    "host": str, "port": int, "user": str, "name": str, "identity_file": str,
    "known_hosts": str, "host_key_fingerprint": str, "connect_timeout": float,
    "keepalive": int, "remote_dir": str, "exec_prefix": str, "lib_dirs": tuple,
    "lock_wait": float, "kill_grace": float, "sample_interval": float, "memory_mb": int,
}
assert set(_KINDS) == {f.name for f in fields(BoardProfile)} - {"source"}


def profile_from_dict(data: dict, source: str = "<profile>") -> BoardProfile:
    """Validate a parsed TOML table (top level, or a `[board]` table) into a profile."""
    if "board" in data and isinstance(data["board"], dict):
        data = data["board"]
    unknown = sorted(set(data) - set(_KINDS))
    if unknown:
        raise HarnessError(
            f"{source}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(_KINDS))}"
        )
    if "host" not in data:
        raise HarnessError(f"{source}: 'host' is required")
    values = {k: _coerce(source, k, v, _KINDS[k]) for k, v in data.items()}
    prof = BoardProfile(**values, source=source)  # type: ignore[arg-type]
    if not 0 < prof.port < 65536:
        raise HarnessError(f"{source}: port {prof.port} out of range")
    if not prof.remote_dir.startswith("/"):
        raise HarnessError(f"{source}: remote_dir must be an absolute path")
    return prof


def load_profile(path: Path | str) -> BoardProfile:
    """Read a TOML board profile; a missing or malformed file is a clear error."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise HarnessError(f"board profile {path}: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise HarnessError(f"board profile {path}: not valid TOML: {exc}") from None
    return profile_from_dict(data, str(path))


def resolve_profile(
    profile_path: str | None = None, board: str | None = None, **overrides: object
) -> BoardProfile:
    """Profile file and/or `--board` spec, then explicit overrides; one of the first two."""
    if profile_path:
        prof = load_profile(profile_path)
    elif board:
        prof = BoardProfile(host=str(parse_board_spec(board)["host"]), source="--board")
    else:
        raise HarnessError("no board given: use --profile FILE.toml or --board user@host[:port]")
    if board:
        prof = prof.with_overrides(**parse_board_spec(board))
    return prof.with_overrides(**overrides)


def write_profile(path: Path, prof: BoardProfile) -> None:
    """Write a profile as TOML (temp name, then rename)."""

    def toml_value(v: object) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, tuple):
            return "[" + ", ".join(toml_value(x) for x in v) + "]"
        s = str(v).replace("\\", "\\\\").replace('"', '\\"')
        return f'"{s}"'

    lines = ["# skoracle board profile"]
    for f in fields(BoardProfile):
        v = getattr(prof, f.name)
        if f.name == "source" or v is None:
            continue
        lines.append(f"{f.name} = {toml_value(v)}")
    write_atomic(path, "\n".join(lines) + "\n")
