"""Where `skoracle run` puts its report, and the only files it may touch there.

The tool owns exactly three names, `report.json`, `report.md` and `report.html`; it never
deletes anything. A directory is recognised as a previous report by its `report.json`
carrying the report schema (`skoracle-report/...`). The target is checked before any leg
runs (`check_report_dir`):

- a missing directory is written whole under a temp name beside it, then renamed into place;
- an empty directory, or a previous report, gets its three files replaced one by one (each
  written under a temp name, then renamed), whatever else it holds stays as it is;
- any other non-empty directory (e.g. `--out .` in a source tree) is refused with exit 2,
  unless `force`: then the three files are written into it the same way, nothing else touched.

Report files are 0644 and a new report directory 0755, like any output the user shares.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from pathlib import Path

from harness.atomic import write_atomic
from harness.errors import HarnessError

REPORT_FILES = ("report.json", "report.md", "report.html")
SCHEMA_PREFIX = "skoracle-report/"
FILE_MODE, DIR_MODE = 0o644, 0o755
_MARKER_MAX_BYTES = 256 << 20  # a report.json larger than this is not one of ours


def is_report_dir(path: Path) -> bool:
    """True if `path/report.json` is a regular file holding this tool's report schema."""
    marker = Path(path) / REPORT_FILES[0]
    try:
        st = marker.lstat()
        if not stat.S_ISREG(st.st_mode) or st.st_size > _MARKER_MAX_BYTES:
            return False
        doc = json.loads(marker.read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and str(doc.get("schema", "")).startswith(SCHEMA_PREFIX)


def _absolute(out: Path | str) -> Path:
    return Path(os.path.abspath(out))


def check_report_dir(out: Path | str, force: bool = False) -> Path:
    """Validate `--out` before anything runs; returns the absolute target (HarnessError, 2)."""
    target = _absolute(out)
    if target.exists():
        if not target.is_dir():
            raise HarnessError(f"--out {out}: exists and is not a directory")
        if any(target.iterdir()) and not is_report_dir(target) and not force:
            raise HarnessError(
                f"--out {out}: directory is not empty and holds no previous report "
                f"({REPORT_FILES[0]} with schema {SCHEMA_PREFIX}*); choose another directory, "
                f"or pass --force to write {', '.join(REPORT_FILES)} into it (nothing else "
                f"there is touched)")
        for name in REPORT_FILES:
            if (target / name).is_dir() and not (target / name).is_symlink():
                raise HarnessError(f"--out {out}: {target / name} is a directory")
        writable = target
    else:
        if target.is_symlink():
            raise HarnessError(f"--out {out}: a dangling symbolic link")
        writable = target.parent
        while not writable.exists():
            writable = writable.parent
        if not writable.is_dir():
            raise HarnessError(f"--out {out}: {writable} is not a directory")
    if not os.access(writable, os.W_OK | os.X_OK):
        raise HarnessError(f"--out {out}: {writable} is not writable")
    return target


def _write_file(directory: Path, name: str, text: str) -> None:
    """`directory/name` = text, via a temp file in the same directory and a rename."""
    write_atomic(directory / name, text, FILE_MODE)


def write_report_files(out: Path | str, files: dict[str, str]) -> Path:
    """Write the report files into `out` (see the module docstring); returns the directory."""
    unknown = set(files) - set(REPORT_FILES)
    if unknown:
        raise ValueError(f"not a report file name: {', '.join(sorted(unknown))}")
    target = _absolute(out)
    try:
        if target.is_dir():
            for name, text in files.items():
                _write_file(target, name, text)
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp",
                                    dir=target.parent))
        try:
            for name, text in files.items():
                _write_file(tmp, name, text)
            os.chmod(tmp, DIR_MODE)
            os.rename(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    except OSError as exc:
        raise HarnessError(f"{target}: cannot write the report ({exc.strerror or exc})") from None
    return target
