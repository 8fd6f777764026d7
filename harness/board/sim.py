"""Board-in-a-box: a real SSH server on 127.0.0.1 with the SL2610's userland gaps.

What it is made of (all real programs, nothing mocked):
- dropbear (the SSH server BusyBox boards ship) on a free loopback port, with a fresh
  ed25519 host key and one client key; password logins off; no sftp server.
- The login user `board` exists only inside the sim: dropbear resolves it through
  nss_wrapper (an LD_PRELOADed passwd/group file in the sim directory), so no system account
  or file outside the sim directory is touched. Its home holds authorized_keys.
- Every command runs through a forced-command login script that puts the session in a
  BusyBox userland: PATH is a directory of busybox-static applets WITHOUT `timeout` (the
  board has none; see `_busybox_without_timeout`), HOME is the sim's home, and the memory
  cap is set (below).
- aarch64 programs run under `qemu-aarch64 -cpu cortex-a76` (same features that matter as
  the board's Cortex-A55: dotprod yes; i8mm, bf16, SVE no). The sim never registers
  binfmt_misc itself (a system-wide kernel setting). Where the host already has an enabled
  `qemu-aarch64` binfmt entry, programs are exec'd directly and the login script's
  QEMU_CPU=cortex-a76 / QEMU_LD_PREFIX pick the CPU model and sysroot; otherwise (as on this
  project's machines, where /proc/sys/fs/binfmt_misc is not even mounted) the profile's
  `exec_prefix` names qemu. Dynamic programs find their loader and libc in
  /usr/aarch64-linux-gnu; the board's "system" library directory is the sim's `lib/`
  (profile `lib_dirs`).
- Memory cap standing for the board's 1.9 GB: `ulimit -v` (RLIMIT_AS) on every session, set
  to `memory_mb + QEMU_VM_ALLOWANCE_MB`. Under emulation it measures qemu's host virtual
  address space: the guest's mappings plus qemu's own (~250 MB of translation buffer and
  tables reserved at start, measured by the tests). So an allocation that the board could
  not hold fails up front with ENOMEM (malloc returns NULL) instead of the board's kernel
  OOM killer striking later; the runner reports both as "out of memory". Peak RSS reported
  for a run is qemu's VmHWM: the guest's resident pages plus qemu's own (~15-25 MB).

Confinement: the server runs in a private mount namespace (`unshare -m`; `-r` too when not
root) where every mount outside /proc, /sys and /dev is read-only and only the sim's own
directory is writable, so no command a session runs can write outside the sim (`board push
x /nonexistent_dir/x` fails with "Read-only file system", as on a board whose root is
read-only). Where namespaces are not available the sim runs unconfined (`confined` False).

Stopping kills every process that carries the sim's id in its environment (the login script
exports it, so programs started in their own session are found too) and removes the
directory if the sim created it.
"""

from __future__ import annotations

import atexit
import ctypes.util
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from harness.atomic import write_atomic
from harness.board.profile import BoardProfile, write_profile
from harness.errors import HarnessError

QEMU_CPU = "cortex-a76"
AARCH64_SYSROOT = "/usr/aarch64-linux-gnu"
#: Virtual address space qemu-aarch64 itself takes, added to the board's RAM for RLIMIT_AS.
QEMU_VM_ALLOWANCE_MB = 320
BOARD_MEMORY_MB = 1946  # 1.9 GiB
SIM_USER = "board"
_ENV_TAG = "SKORACLE_SIM_ID"
_NSS_WRAPPER_PATHS = ("/usr/lib/x86_64-linux-gnu/libnss_wrapper.so",
                      "/usr/lib/aarch64-linux-gnu/libnss_wrapper.so",
                      "/usr/lib64/libnss_wrapper.so", "/usr/lib/libnss_wrapper.so")


def _need(tool: str, package: str) -> str:
    path = shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if not path:
        raise HarnessError(f"board-sim needs `{tool}` (Debian package {package}; "
                           f"scripts/setup.sh installs it)")
    return path


def _nss_wrapper() -> str:
    for p in _NSS_WRAPPER_PATHS:
        if Path(p).is_file():
            return p
    found = ctypes.util.find_library("nss_wrapper")
    if found:
        return found
    raise HarnessError("board-sim needs nss_wrapper (Debian package libnss-wrapper; "
                       "scripts/setup.sh installs it)")


def binfmt_aarch64_enabled() -> bool:
    """Does the kernel already run aarch64 ELF files through qemu (binfmt_misc)?"""
    try:
        status = Path("/proc/sys/fs/binfmt_misc/qemu-aarch64").read_text()
    except OSError:
        return False
    return status.splitlines()[:1] == ["enabled"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tagged_processes(sim_id: str) -> list[int]:
    """PIDs whose environment carries this sim's id."""
    tag = f"{_ENV_TAG}={sim_id}".encode() + b"\0"
    pids = []
    me = os.getpid()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as fh:
                if tag in fh.read() + b"\0":
                    pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def _mount_points() -> list[str]:
    """Mount points of this mount namespace, octal escapes (\\040 for space) decoded."""
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        field = line.split(" ")[4]
        out.append(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field))
    return out


def _unshare_argv() -> list[str] | None:
    """`unshare` for a private mount namespace, or None where this machine allows none."""
    tool = shutil.which("unshare")
    if not tool:
        return None
    argv = [tool, "-m", "--propagation", "private"]
    if os.geteuid() != 0:
        argv.insert(1, "-r")
    ok = subprocess.run([*argv, "true"], capture_output=True).returncode == 0
    return argv if ok else None


def _busybox_without_timeout(src: Path, dst: Path) -> None:
    """Copy busybox with its `timeout` applet unreachable, as on the board.

    busybox-static runs any applet by name whatever PATH says (standalone shell), so leaving
    out a symlink is not enough. Its applet table is one sorted NUL-separated list of names;
    renaming `timeout` to `timeou_` keeps the order (so lookups still work) and makes
    `timeout` "not found" for the shell, `env`, `setsid`, `xargs` alike.
    """
    data = src.read_bytes()
    table = b"\0time\0timeout\0top\0"
    if data.count(table) != 1:
        if b"\0timeout\0" in data and b"\0time\0" in data:
            raise HarnessError(f"board-sim: cannot find the applet table of {src} to take "
                               "`timeout` out (unexpected busybox build)")
    write_atomic(dst, data.replace(table, b"\0time\0timeou_\0top\0"), 0o755)


class BoardSim:
    """Board-in-a-box, usable as a context manager (`with BoardSim() as sim: sim.profile`)."""

    def __init__(self, directory: Path | str | None = None, memory_mb: int = BOARD_MEMORY_MB,
                 port: int | None = None, remove_dir: bool | None = None) -> None:
        #: remove the directory on stop (default: only when the sim made it)
        self.own_dir = directory is None if remove_dir is None else remove_dir
        self._stop_at_exit = False  # `board-sim start` leaves the sim running on purpose
        self.dir = Path(directory) if directory else None
        self.memory_mb = memory_mb
        self.port = port
        self.id = secrets.token_hex(6)
        self._proc: subprocess.Popen | None = None
        self.pid: int | None = None
        #: sessions cannot write outside the sim's directory (see the module docstring)
        self.confined = False

    # -- layout -------------------------------------------------------------------------

    def path(self, *parts: str) -> Path:
        assert self.dir is not None
        return self.dir.joinpath(*parts)

    @property
    def rootfs_bin(self) -> Path:
        return self.path("rootfs", "bin")

    @property
    def remote_dir(self) -> str:
        return str(self.path("tmp", "skoracle"))

    @property
    def system_lib_dir(self) -> Path:
        return self.path("lib")

    @property
    def profile_path(self) -> Path:
        return self.path("board.toml")

    @property
    def profile(self) -> BoardProfile:
        qemu = _need("qemu-aarch64", "qemu-user")
        assert self.port is not None
        return BoardProfile(
            name="board-in-a-box",
            host="127.0.0.1",
            port=self.port,
            user=SIM_USER,
            identity_file=str(self.path("client_key")),
            known_hosts=str(self.path("known_hosts")),
            connect_timeout=5.0,
            keepalive=5,
            remote_dir=self.remote_dir,
            exec_prefix=("" if binfmt_aarch64_enabled()
                         else f"{qemu} -cpu {QEMU_CPU} -L {AARCH64_SYSROOT}"),
            lib_dirs=(str(self.system_lib_dir),),
            lock_wait=30.0,
            kill_grace=1.0,
            sample_interval=0.05,
            memory_mb=self.memory_mb,
            source=str(self.profile_path),
        )

    def _build(self) -> None:
        busybox = _need("busybox", "busybox-static")
        _need("qemu-aarch64", "qemu-user")
        keygen = _need("dropbearkey", "dropbear-bin")
        ssh_keygen = _need("ssh-keygen", "openssh-client")
        d = self.dir
        assert d is not None
        for sub in ("rootfs/bin", "home/.ssh", "lib", "tmp"):
            self.path(*sub.split("/")).mkdir(parents=True, exist_ok=True)
        os.chmod(self.path("home"), 0o755)
        os.chmod(self.path("home", ".ssh"), 0o700)
        board_busybox = self.rootfs_bin / "busybox"
        _busybox_without_timeout(Path(busybox), board_busybox)
        applets = subprocess.run([str(board_busybox), "--list"], capture_output=True,
                                 text=True, check=True).stdout.split()
        for applet in applets:
            link = self.rootfs_bin / applet
            if applet != "busybox" and not link.exists():
                link.symlink_to("busybox")
        self.path("passwd").write_text(
            f"{SIM_USER}:x:0:0:board-in-a-box:{self.path('home')}:/bin/sh\n")
        self.path("group").write_text(f"{SIM_USER}:x:0:\n")
        subprocess.run([ssh_keygen, "-q", "-t", "ed25519", "-N", "", "-C", "skoracle-sim",
                        "-f", str(self.path("client_key"))], check=True,
                       stdin=subprocess.DEVNULL)
        auth = self.path("home", ".ssh", "authorized_keys")
        auth.write_text(self.path("client_key.pub").read_text())
        os.chmod(auth, 0o600)
        self._new_host_key(keygen)
        sh = self.rootfs_bin / "sh"
        cap_kb = (self.memory_mb + QEMU_VM_ALLOWANCE_MB) * 1024
        login = self.path("rootfs", "login")
        login.write_text(
            f"#!{sh}\n"
            "# board-in-a-box login: BusyBox userland, no `timeout`, the board's memory cap.\n"
            f"export PATH={self.rootfs_bin} HOME={self.path('home')} {_ENV_TAG}={self.id}\n"
            f"export USER={SIM_USER} LOGNAME={SIM_USER} SHELL={sh}\n"
            f"export QEMU_CPU={QEMU_CPU} QEMU_LD_PREFIX={AARCH64_SYSROOT}\n"
            "unset LD_PRELOAD NSS_WRAPPER_PASSWD NSS_WRAPPER_GROUP\n"
            'cd "$HOME" || exit 1\n'
            f"ulimit -v {cap_kb} || exit 1\n"
            'if [ -n "$SSH_ORIGINAL_COMMAND" ]; then exec sh -c "$SSH_ORIGINAL_COMMAND"; fi\n'
            "exec sh -l\n"
        )
        os.chmod(login, 0o755)

    def _write_confine(self) -> None:
        """The script that makes everything but the sim's directory read-only (run inside
        the server's private mount namespace, before dropbear), and proves it worked."""
        root = str(self.dir)
        skip = ("/proc", "/sys", "/dev")
        mounts = [m for m in _mount_points()
                  if m != root and not any(m == s or m.startswith(s + "/") for s in skip)]
        script = self.path("rootfs", "confine")
        script.write_text(
            "#!/bin/sh\n"
            "# board-in-a-box: only the sim's directory stays writable (private mount ns).\n"
            f"S={shlex.quote(root)}\n"
            'mount --bind "$S" "$S" || exit 1\n'
            + "".join(f"mount -o remount,bind,ro {shlex.quote(m)} 2>/dev/null\n"
                      for m in mounts)
            + 'if mkdir "$S.confine-probe" 2>/dev/null; then rmdir "$S.confine-probe"; '
            'echo "board-sim: $S/.. is still writable" >&2; exit 1; fi\n'
            'exec "$@"\n'
        )
        os.chmod(script, 0o755)

    def _new_host_key(self, keygen: str | None = None) -> None:
        keygen = keygen or _need("dropbearkey", "dropbear-bin")
        key = self.path("hostkey")
        key.unlink(missing_ok=True)
        subprocess.run([keygen, "-t", "ed25519", "-f", str(key)], check=True,
                       capture_output=True)

    def host_public_key(self) -> str:
        """`ssh-ed25519 AAAA...` of the current host key."""
        out = subprocess.run([_need("dropbearkey", "dropbear-bin"), "-y", "-f",
                              str(self.path("hostkey"))], capture_output=True, text=True,
                             check=True).stdout
        for line in out.splitlines():
            if line.startswith("ssh-"):
                return " ".join(line.split()[:2])
        raise HarnessError(f"dropbearkey printed no public key for {self.path('hostkey')}")

    def _write_known_hosts(self) -> None:
        kh = self.path("known_hosts")
        kh.write_text(f"[127.0.0.1]:{self.port} {self.host_public_key()}\n")

    # -- server -----------------------------------------------------------------------------

    def _spawn(self) -> None:
        dropbear = _need("dropbear", "dropbear-bin")
        env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "LD_PRELOAD": _nss_wrapper(),
            "NSS_WRAPPER_PASSWD": str(self.path("passwd")),
            "NSS_WRAPPER_GROUP": str(self.path("group")),
            _ENV_TAG: self.id,
        }
        unshare = _unshare_argv()
        confine: list[str] = []
        if unshare:
            self._write_confine()
            confine = [*unshare, str(self.path("rootfs", "confine"))]
        self.confined = bool(confine)
        for attempt in range(5):
            port = self.port or _free_port()
            log = self.path("dropbear.log").open("ab")
            proc = subprocess.Popen(
                [*confine, dropbear, "-F", "-E", "-s", "-m", "-j", "-k", "-p", f"127.0.0.1:{port}",
                 "-r", str(self.path("hostkey")), "-P", str(self.path("dropbear.pid")),
                 "-c", str(self.path("rootfs", "login"))],
                env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.dir, start_new_session=True,
            )
            log.close()
            if self._wait_ready(proc, port):
                self._proc, self.pid, self.port = proc, proc.pid, port
                return
            proc.kill()
            proc.wait()
            if self.port and attempt == 0 and port == self.port:
                break
        tail = self.path("dropbear.log").read_text(errors="replace")[-800:]
        raise HarnessError(f"board-sim: dropbear did not start: {tail.strip()}")

    @staticmethod
    def _wait_ready(proc: subprocess.Popen, port: int, limit: float = 10.0) -> bool:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
                    s.settimeout(2.0)
                    if s.recv(64).startswith(b"SSH-2.0-"):
                        return True
            except OSError:
                time.sleep(0.05)
        return False

    def start(self) -> BoardSim:
        """Create the sim directory (keys, userland, profile) and start the SSH server."""
        if self.dir is None:
            self.dir = Path(tempfile.mkdtemp(prefix="skoracle-board-sim-"))
        else:
            self.dir.mkdir(parents=True, exist_ok=True)
            if self.path("state.json").exists():
                raise HarnessError(f"board-sim: {self.dir} already holds a running sim "
                                   f"(stop it first: skoracle board-sim stop --dir {self.dir})")
        try:
            self._build()
            self._spawn()
            self._write_known_hosts()
            write_profile(self.profile_path, self.profile)
            state = {"id": self.id, "pid": self.pid, "port": self.port,
                     "profile": str(self.profile_path), "own_dir": self.own_dir}
            self.path("state.json").write_text(json.dumps(state, indent=1) + "\n")
            if self._stop_at_exit:
                # Safety net: a Ctrl-C between start() returning and the caller's `with`
                # taking hold would otherwise leave the server running after we exit.
                atexit.register(self.stop)
        except BaseException:
            self.stop()
            raise
        return self

    def __enter__(self) -> BoardSim:
        self._stop_at_exit = True  # a `with` block owns the sim: it never outlives us
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def processes(self) -> list[int]:
        """Every live process of this sim (server, sessions, programs)."""
        return tagged_processes(self.id)

    def kill_server(self) -> None:
        """SIGKILL the SSH server and its connection processes (the board's sshd dies)."""
        for pid in self.processes():
            if Path(_cmdline(pid).split(" ")[0]).name == "dropbear":
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if self._proc is not None:
            self._proc.wait()
            self._proc = None

    def restart(self, new_host_key: bool = False) -> None:
        """Start the server again on the same port (optionally with a new host key, as a
        re-flashed board would have; known_hosts is NOT updated then)."""
        self.kill_server()
        if new_host_key:
            self._new_host_key()
        self._spawn()

    def stop(self) -> None:
        """Kill every process of the sim (TERM, then KILL) and remove its directory."""
        atexit.unregister(self.stop)
        deadline = time.monotonic() + 3.0
        sig = signal.SIGTERM
        while True:
            pids = self.processes()
            if not pids:
                break
            if time.monotonic() > deadline:
                sig = signal.SIGKILL
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            if self._proc is not None and self._proc.poll() is not None:
                self._proc = None
            time.sleep(0.05)
            if time.monotonic() > deadline + 5.0:
                raise HarnessError(f"board-sim: processes {pids} would not die")
        if self._proc is not None:
            self._proc.wait()
            self._proc = None
        if self.dir is not None:
            self.path("state.json").unlink(missing_ok=True)
            if self.own_dir:
                shutil.rmtree(self.dir, ignore_errors=True)

    @classmethod
    def attach(cls, directory: Path | str) -> BoardSim:
        """The sim whose state is in `directory` (for `board-sim stop`)."""
        d = Path(directory)
        try:
            state = json.loads((d / "state.json").read_text())
        except (OSError, ValueError):
            raise HarnessError(f"board-sim: no running sim in {d} (no state.json)") from None
        sim = cls(d, port=state["port"])
        sim.id, sim.pid, sim.own_dir = state["id"], state["pid"], bool(state.get("own_dir"))
        return sim
