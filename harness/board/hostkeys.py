"""Host key checking: a known_hosts file or a pinned fingerprint, nothing accepted silently.

An unknown key is refused with its fingerprint and the two ways to trust it (`--trust-new`,
or pinning `host_key_fingerprint` in the profile); a changed key is always refused and the
message says how to drop the old entry if the change is expected (a re-flashed board).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from pathlib import Path

import paramiko

from harness.errors import HarnessError


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH-style `SHA256:<base64, unpadded>` of the key's public blob."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def known_hosts_name(host: str, port: int) -> str:
    """The host name known_hosts uses: `host` on port 22, else `[host]:port`."""
    return host if port == 22 else f"[{host}]:{port}"


def _trust_hint(host: str, port: int, fp: str, known_hosts: str | None) -> str:
    where = f" to {known_hosts}" if known_hosts else ""
    return (
        f"check it out of band (on the board's console: `dropbearkey -y -f "
        f"/etc/dropbear/dropbear_ed25519_host_key` or `ssh-keygen -lf` on its host key), then "
        f"either rerun with --trust-new (adds it{where}) or put "
        f'host_key_fingerprint = "{fp}" in the board profile'
    )


class RefusingPolicy(paramiko.MissingHostKeyPolicy):
    """Unknown key: refuse, or (trust_new) add it to the known_hosts file and save."""

    def __init__(self, known_hosts: str | None, port: int, trust_new: bool = False,
                 pinned: str | None = None) -> None:
        self.known_hosts = known_hosts
        self.port = port
        self.trust_new = trust_new
        self.pinned = pinned
        self.added: str | None = None

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str,
                         key: paramiko.PKey) -> None:
        fp = fingerprint(key)
        if self.pinned is not None:
            if hmac.compare_digest(fp, self.pinned):
                return
            raise HarnessError(
                f"host key of {hostname} does not match the pinned fingerprint: the board "
                f"presented {key.get_name()} {fp}, the profile pins {self.pinned}. Refusing "
                f"to connect (a different machine, or the board was re-flashed; if that is "
                f"expected, update host_key_fingerprint in the profile)"
            )
        if self.trust_new and self.known_hosts:
            client.get_host_keys().add(hostname, key.get_name(), key)
            path = Path(self.known_hosts).expanduser()
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a", encoding="ascii") as fh:
                fh.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
            self.added = fp
            return
        host = hostname.split("]")[0].lstrip("[")
        raise HarnessError(
            f"unknown host key for {hostname}: {key.get_name()} {fp} is not in "
            f"{self.known_hosts or 'any known_hosts file'}. Refusing to connect; "
            + _trust_hint(host, self.port, fp, self.known_hosts)
        )


def changed_key_message(hostname: str, got: paramiko.PKey, expected: paramiko.PKey,
                        known_hosts: str | None) -> str:
    """What to say when the board presents a key other than the one on record."""
    kh = known_hosts or "known_hosts"
    return (
        f"HOST KEY CHANGED for {hostname}: the board presented {got.get_name()} "
        f"{fingerprint(got)}, but {kh} has {expected.get_name()} {fingerprint(expected)}. "
        f"Refusing to connect (someone may be intercepting, or the board was re-flashed). "
        f"If the change is expected, remove the old entry with "
        f"`ssh-keygen -R '{hostname}' -f {kh}` and connect again with --trust-new"
    )


def load_known_hosts(client: paramiko.SSHClient, known_hosts: str | None) -> None:
    """Load the known_hosts file into the client (a missing file is an empty one)."""
    if not known_hosts:
        return
    path = Path(known_hosts).expanduser()
    if not path.exists():
        return
    try:
        client.load_host_keys(str(path))
    except (OSError, paramiko.SSHException) as exc:
        raise HarnessError(f"known_hosts {path}: cannot read it: {exc}") from None
