"""The board side of one run: the BusyBox sh script that starts, watches and ends a program,
and the reading of what it reports. Pure functions, tested without SSH.

The script starts the program in a session of its own (`setsid`; its PID is also its process
group and session id) with a run tag in its environment (`SKORACLE_RUN=<token>`), which every
process it starts inherits, including one that double-forks into a new session. While the
program runs, a sampler walks /proc every `sample_interval`: a process belongs to the run when
it is in the program's session or its parent does; for each it records the VmHWM when it
grows, and the sum of the members' VmRSS when that grows (the run's total). When the program
has exited, the group is killed, then every process still carrying the run tag (found with
`grep -z` over /proc/*/environ, or `tr` where grep has no -z) is SIGKILLed and named. The
kernel log lines written during the run that name the OOM killer are passed back, or the
reason the log could not be read.

Report lines go to stderr as `<tag><key> <value>`, after the program is done, so none can
interleave with the program's own output (the `pid` line, written first, excepted).
"""

from __future__ import annotations

import math
import re
import shlex
from dataclasses import dataclass, field

q = shlex.quote

#: The environment variable that marks every process of a run.
RUN_TAG_VAR = "SKORACLE_RUN"


def oom_victim(kernel_log: bytes, pid: int) -> bool:
    """Does the kernel log name `pid` as killed by the OOM killer?"""
    pat = re.compile(rb"(Out of memory: Killed process %d\b|oom-kill:.*\bpid=%d\b)"
                     % (pid, pid))
    return bool(pat.search(kernel_log))


@dataclass(frozen=True)
class RunSpec:
    """Everything the board-side script needs for one run."""

    tag: str  # marker prefix of the report lines (random per run)
    run_token: str  # value of SKORACLE_RUN for the run's processes
    run_dir: str
    argv: tuple[str, ...]
    lock_dir: str
    env: tuple[tuple[str, str], ...] = ()
    cwd: str | None = None  # absolute, or relative to run_dir; default run_dir
    timeout: float | None = None
    kill_grace: float = 2.0
    sample_interval: float = 0.1
    has_setsid: bool = True
    kernel_log_cmd: str = "dmesg"  # prints the kernel log (BusyBox's applet on the board)


def _nap(sec: float) -> str:
    return f"usleep {int(sec * 1e6)} 2>/dev/null || sleep {math.ceil(sec)}"


def tagged_sh(token: str) -> str:
    """Shell that prints the PIDs of the processes carrying the run tag `token` (a word of
    letters and digits, or a shell variable such as `$_i`)."""
    want = f'"{RUN_TAG_VAR}={token}"'
    return (
        "if echo x | grep -zq x 2>/dev/null; then "
        f"for _f in $(grep -lzsx {want} /proc/[0-9]*/environ 2>/dev/null); do "
        '_f=${_f#/proc/}; echo "${_f%/environ}"; done; '
        "else for _f in /proc/[0-9]*; do "
        f"tr '\\0' '\\n' < $_f/environ 2>/dev/null | grep -qx {want} && echo \"${{_f#/proc/}}\"; "
        "done; fi"
    )


def _sampler(usec: int) -> str:
    """The /proc walk: `hwm PID KB COMM` when a member's VmHWM grows, `total KB` when the
    members' summed VmRSS reaches a new high. The program itself is read first in each
    round (a walk of a busy /proc can take tens of milliseconds)."""
    return (
        '( known=" $p "; mt=0\n'
        "while [ -d /proc/$p ]; do\n"
        " tot=0; first=1\n"
        " for d in /proc/$p /proc/[0-9]*; do\n"  # the program first: it may be short-lived
        "  i=${d#/proc/}; l=\n"
        '  if [ "$i" = "$p" ]; then [ -n "$first" ] || continue; first=; fi\n'
        "  { read -r l < $d/stat; } 2>/dev/null || continue\n"
        '  set -- ${l##*") "}\n'
        '  case "$known" in *" $i "*) ;; *)\n'
        '   case "$known" in *" $2 "*) ;; *) [ "$4" = "$p" ] || continue;; esac\n'
        '   known="$known$i ";;\n'
        "  esac\n"
        "  h=0; r=0\n"
        "  while read -r k v u; do case $k in VmHWM:) h=$v;; VmRSS:) r=$v;; esac; done "
        "< $d/status\n"
        "  tot=$((tot + r))\n"
        '  eval "o=\\${h_$i:-0}"\n'
        '  if [ "$h" -gt "$o" ]; then eval "h_$i=$h"; c=; { read -r c < $d/comm; } '
        '2>/dev/null; echo "hwm $i $h $c"; fi\n'
        " done\n"
        ' [ "$tot" -gt "$mt" ] && { mt=$tot; echo "total $mt"; }\n'
        f" usleep {usec} 2>/dev/null || sleep 1\n"
        "done )"
    )


def run_script(spec: RunSpec) -> str:
    """The board-side script for `spec` (BusyBox sh; see the module docstring)."""
    tag = spec.tag
    exports = "".join(f"export {k}={q(v)}\n" for k, v in spec.env)
    inner = q(f'echo "{tag}pid $$" >&2; exec "$@"')
    words = " ".join(q(a) for a in spec.argv)
    usec = max(10_000, int(spec.sample_interval * 1e6))
    rss = ".skoracle-rss-$p"
    wdf = ".skoracle-wd-$p"
    grace = spec.kill_grace
    setsid, grp = ("setsid ", "-") if spec.has_setsid else ("", "")
    kind = "g" if spec.has_setsid else "p"
    record = ('{ read -r l < /proc/$%s/stat; } 2>/dev/null; set -- ${l##*") "}; '
              'echo "$%s ${20} %s" %s "$L/procs"\n')
    watchdog = ""
    if spec.timeout is not None:
        dog = (f"{_nap(spec.timeout)}; echo TERM > {wdf}; kill -TERM {grp}$p 2>/dev/null; "
               f"{_nap(grace)}; echo KILL > {wdf}; kill -KILL {grp}$p 2>/dev/null")
        dog = "p=$1; " + dog  # its own shell: the program's PID comes as an argument
        watchdog = (f"{setsid}sh -c {q(dog)} sh $p </dev/null >/dev/null 2>&1 &\n"
                    "w=$!\n" + record % ("w", "w", kind, ">>"))
    cd = f" && cd {q(spec.cwd)}" if spec.cwd else ""
    run_env = f"{RUN_TAG_VAR}={q(spec.run_token)}"
    return (
        f"mkdir -p {q(spec.run_dir)} && cd {q(spec.run_dir)}{cd} || exit 125\n{exports}"
        f"L={q(spec.lock_dir)}\n"
        f"d0=$({spec.kernel_log_cmd} 2>/dev/null | tail -n 1)\n"
        f"{run_env} {setsid}sh -c {inner} sh {words} </dev/null &\n"
        "p=$!\n"
        + record % ("p", "p", kind, ">")
        + f'echo "{spec.run_token} 0 e" >> "$L/procs"\n'
        + watchdog
        + _sampler(usec) + f" >{rss} 2>/dev/null </dev/null &\n"
        "s=$!\n"
        "wait $p\nst=$?\n"
        + (f"kill -KILL $w {grp}$w 2>/dev/null; wait $w 2>/dev/null\n" if watchdog else "")
        + (f"if kill -0 -$p 2>/dev/null; then kill -KILL -$p 2>/dev/null; "
           f"echo '{tag}leftover killed' >&2; fi\n" if spec.has_setsid else "")
        + "for _r in 1 2 3; do _n=0\n"
        f" for i in $({tagged_sh(spec.run_token)}); do c=; "
        "{ read -r c < /proc/$i/comm; } 2>/dev/null; "
        f'kill -KILL $i 2>/dev/null && {{ _n=1; echo "{tag}stray $i $c" >&2; }}; done\n'
        ' [ "$_n" = 0 ] && break; usleep 20000 2>/dev/null || sleep 1\ndone\n'
        'rm -f "$L/procs"\n'
        + (f"if [ -f {wdf} ]; then read r < {wdf}; echo \"{tag}timeout $r\" >&2; "
           f"rm -f {wdf}; fi\n" if watchdog else "")
        + "kill $s 2>/dev/null; wait $s 2>/dev/null\n"
        f'while read -r a b c d; do echo "{tag}$a $b $c $d" >&2; done < {rss}; rm -f {rss}\n'
        f"if dm=$({spec.kernel_log_cmd} 2>&1); then\n"
        # the lines after the last one seen before the run (all, if it rotated out)
        ' { if [ -n "$d0" ] && printf "%s\\n" "$dm" | grep -qxF -- "$d0"; then '
        'printf "%s\\n" "$dm" | awk -v l="$d0" \'f{print} $0==l{f=1}\'; '
        'else printf "%s\\n" "$dm"; fi; } | '
        "grep -E 'Out of memory|oom-kill|oom_reaper' | tail -n 40 | "
        f'while read -r x; do echo "{tag}oomlog $x" >&2; done\n'
        f'else echo "{tag}nodmesg $(printf "%s" "$dm" | head -n 1)" >&2; fi\n'
        "exit $st\n"
    )


@dataclass
class RunReport:
    """What the board-side script reported about a run."""

    pid: int | None = None
    leftover: bool = False
    timeout: str | None = None  # "TERM" | "KILL"
    strays: list[tuple[int, str]] = field(default_factory=list)  # killed after the run
    peaks: dict[int, tuple[int, str]] = field(default_factory=dict)  # pid -> (VmHWM kB, comm)
    total_kb: int | None = None  # highest sampled sum of the members' VmRSS
    kernel_log: list[str] = field(default_factory=list)  # OOM lines written during the run
    kernel_log_error: str | None = None  # why the kernel log could not be read

    @property
    def peak_kb(self) -> int | None:
        """The whole run's peak: the sampled total, never below one process's own peak."""
        vals = [kb for kb, _ in self.peaks.values()]
        if self.total_kb is not None:
            vals.append(self.total_kb)
        return max(vals) if vals else None

    def oom_victims(self) -> list[tuple[int, str]]:
        """The run's processes (PID, name) that the kernel log says the OOM killer killed."""
        log = "\n".join(self.kernel_log).encode()
        pids = set(self.peaks) | ({self.pid} if self.pid else set())
        return [(pid, self.peaks.get(pid, (0, "?"))[1]) for pid in sorted(pids)
                if oom_victim(log, pid)]


def read_report(lines: list[tuple[str, str]]) -> RunReport:
    """Fold the script's `<key> <value>` report lines (in order) into a RunReport."""
    rep = RunReport()
    for key, value in lines:
        words = value.split()
        if key == "pid" and words and words[0].isdigit():
            rep.pid = int(words[0])
        elif key == "leftover":
            rep.leftover = True
        elif key == "timeout" and words:
            rep.timeout = words[0]
        elif key == "stray" and words and words[0].isdigit():
            rep.strays.append((int(words[0]), " ".join(words[1:]) or "?"))
        elif key == "hwm" and len(words) >= 2 and words[0].isdigit() and words[1].isdigit():
            pid, kb = int(words[0]), int(words[1])
            if kb >= rep.peaks.get(pid, (0, ""))[0]:
                rep.peaks[pid] = (kb, " ".join(words[2:]) or "?")
        elif key == "total" and words and words[0].isdigit():
            rep.total_kb = max(rep.total_kb or 0, int(words[0]))
        elif key == "oomlog":
            rep.kernel_log.append(value)
        elif key == "nodmesg":
            rep.kernel_log_error = value.strip() or "dmesg failed"
    return rep
