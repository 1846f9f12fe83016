"""What runs in a sandbox and what comes back: programs, their limits, their results.

Plain records, shared by the host side of the sandbox (rewards/sandbox/launch.py,
rewards/sandbox/warm.py) and its callers (the code reward builds a :class:`Program` per test
and reads a :class:`UnitResult` for each). Nothing here starts a process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class SandboxError(RuntimeError):
    """The sandbox itself could not run (not a failure of the program inside it)."""


@dataclass(frozen=True)
class Limits:
    """Resource limits for one sandbox run.

    ``timeout_s`` bounds the whole run (all its programs); ``unit_timeout_s``
    bounds each program (default: ``timeout_s``). CPU time per program is limited
    to its wall-clock limit plus one second.
    """

    timeout_s: float = 10.0
    unit_timeout_s: float | None = None
    memory_mb: int = 1024  # address space per program (RLIMIT_AS)
    file_size_mb: int = 16  # largest file a program may write, captured output included (rlimit: no new files)
    open_files: int = 64
    processes: int = 64  # RLIMIT_NPROC, only where seccomp is unavailable and the program runs as uid 65534
    output_bytes: int = 1 << 20  # stdout and stderr read back per run (each)
    tmpfs_mb: int = 64  # size of the writable /tmp under bubblewrap

    def __post_init__(self) -> None:
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {self.timeout_s}")
        if self.unit_timeout_s is not None and self.unit_timeout_s <= 0:
            raise ValueError(f"unit_timeout_s must be positive, got {self.unit_timeout_s}")


@dataclass
class Judge:
    """Tests run apart from the program they test (see :class:`Program`).

    ``code``: the test code, run in a judge process with ``prefix`` (trusted setup,
    e.g. a HumanEval prompt's helpers) executed first. Each of ``names`` (the free
    names of the tests) that neither the prefix nor the builtins define, and each
    key of ``aliases`` (``{"candidate": "f", "f": "f"}``), is bound to a proxy that
    calls the program's function of that name with plain-data arguments and returns
    its plain-data result. The test passes when ``code`` runs to its end.
    """

    code: str
    prefix: str = ""
    names: tuple[str, ...] = ()
    aliases: dict[str, str] = field(default_factory=dict)


@dataclass
class Program:
    """One program to run in the sandbox.

    ``kind``: ``"test"`` passes only if the program runs to its end (a
    ``SystemExit`` fails it); ``"io"`` and ``"script"`` also pass on ``exit(0)``.
    ``stdout``: ``"capture"`` (returned in :attr:`UnitResult.output`, at most
    ``output_limit`` bytes), ``"discard"``, or ``"pass"`` (to the run's stdout).
    ``judge`` (``kind="test"`` only): the tests, run in a separate judge process that
    decides the verdict; the program's process then only runs ``source`` and answers
    the judge's calls, and never sees the tests (see rewards/sandbox/_sandbox_child.py).
    """

    source: str
    stdin: bytes | str | None = None
    kind: str = "test"
    stdout: str = "discard"
    output_limit: int = 1 << 20
    timeout_s: float | None = None
    judge: Judge | None = None

    def __post_init__(self) -> None:
        if self.judge is not None and (self.kind != "test" or self.stdin is not None or self.stdout != "discard"):
            raise ValueError("a judged program is a test (kind='test') with no stdin and discarded output")


@dataclass
class UnitResult:
    """What happened to one program.

    ``status``: ``ok`` (ran to its end), ``exit`` (``SystemExit``; see
    ``exit_code``), ``error`` (an exception; see ``error``), ``timeout``,
    ``died`` (killed by a signal or exited without finishing, e.g. ``os._exit``),
    ``output_limit`` (printed more than allowed), ``skipped`` (not run: the run's
    time was up or an earlier program failed with ``stop_on_failure``).
    """

    status: str
    exit_code: int = -1
    time_s: float = 0.0
    error: str = ""
    output: bytes = b""
    kind: str = "test"

    @property
    def passed(self) -> bool:
        if self.kind == "test":
            return self.status == "ok"
        return self.status == "ok" or (self.status == "exit" and self.exit_code == 0)


@dataclass
class SandboxResult:
    """The outcome of one sandbox run."""

    units: list[UnitResult]
    stdout: bytes = b""
    stderr: bytes = b""
    timed_out: bool = False  # the whole run was killed at its time limit
    output_truncated: bool = False  # stdout/stderr passed the cap; the run was stopped
    duration_s: float = 0.0
    backend: str = ""
    protections: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return bool(self.units) and all(u.passed for u in self.units)

    @property
    def returncode(self) -> int | None:
        """Exit code of a single-program run (negative: killed by that signal; None: not finished)."""
        if len(self.units) != 1:
            raise ValueError("returncode is defined for single-program runs")
        u = self.units[0]
        return None if u.status in ("timeout", "skipped") else u.exit_code
