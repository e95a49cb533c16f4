"""Reward configuration: every default lives here (mirrored under `reward:` in the Hydra YAML)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal, get_args

MATH_FORMATS = ("boxed", "answer_line", "gsm8k")
CODE_EXTRACTIONS = ("last_python_block", "last_block", "raw")
CodeIsolation = Literal["strict", "none"]
CODE_ISOLATIONS = get_args(CodeIsolation)


@dataclass(frozen=True)
class RewardConfig:
    """How responses are scored.

    Values: a correct answer gets `correct_reward`, anything else `wrong_reward` (DAPO uses
    +1 / -1); `format_reward` is added when an answer (math) or a program (code) could be
    extracted at all, whatever its correctness.
    """

    # What a run *is* (a resumed run may not change these; docs/checkpoints.md): the reward definition.
    # Timeouts, sandbox limits and pool settings may change. (The convention of cispo's schemas.)
    IDENTITY_KEYS = frozenset({
        "correct_reward",
        "wrong_reward",
        "format_reward",
        "math_formats",
        "strip_think",
        "aime_min",
        "aime_max",
        "math_strict",
        "math_allow_multiple_answers",
        "math_max_answers_checked",
        "math_ignore_units",
        "math_allow_equations",
        "math_ignore_text",
        "math_rel_tol",
        "code_extraction",
        "code_partial_credit",
        "code_io_float_tolerance",
        "code_allow_site_packages",
        "overlong_shaping",
        "overlong_max_len",
        "overlong_cache_len",
        "overlong_filtering",
    })

    # --- reward values
    correct_reward: float = 1.0
    wrong_reward: float = 0.0
    format_reward: float = 0.0

    # --- math
    math_formats: tuple[str, ...] = MATH_FORMATS  # which answer formats are accepted
    strip_think: bool = True  # answer is looked for only after the last </think>
    math_timeout_s: float = 5.0  # hard limit for one math-verify parse + compare
    aime_min: int = 0
    aime_max: int = 999
    math_strict: bool = True
    """Grade math answers like a careful human (docs/rewards-math.md): one visible final answer
    (hedged or several differing answers score 0 as `multiple_answers`), units, words, negations
    and equations checked before math-verify, plain numbers compared exactly. The strict rules
    and the relaxations below apply only when this is True; False restores the earlier grader
    (the answer written last wins, math-verify's verdict as is)."""
    math_allow_multiple_answers: bool = False
    """Relaxation: when a response writes several differing final answers, grade the one written
    last instead of refusing the response (what verl/DAPO-style "last box" graders do)."""
    math_max_answers_checked: int = 4
    """When a response writes differing final answers (textually), each is checked against the
    gold and the response is correct only if all are equivalent (`\\frac12` and `0.5`); beyond
    this many the response is refused as `multiple_answers` without checking (bounds the cost)."""
    math_ignore_units: bool = False
    """Relaxation: do not compare units (`500 kg` then equals a gold of `500 g`). By default a
    unit missing on either side is no error, a different one is (no unit conversion)."""
    math_allow_equations: bool = False
    """Relaxation: grade any equation by math-verify (which reduces `4 = 5` to its right-hand side).
    By default an equation is accepted only as `variable = value` (`x = 5`, `m+n = 7`)."""
    math_ignore_text: bool = False
    """Relaxation: ignore words inside `\\text{}` that are not a unit (math-verify drops them).
    By default qualifying or extra words (`\\text{ or more}`, `\\text{ approximately}`) make the
    answer wrong unless the gold has them too."""
    math_rel_tol: float = 1e-6
    """Relative tolerance for numbers: a decimal answer that is the gold rounded to its places and
    within this relative error is accepted (`0.333333` for 1/3); math-verify's own absolute
    rounding to 6 decimals is additionally held to it (so `0.0` is not `1e-7`). 0: exact only."""

    # --- code
    code_extraction: str = "last_python_block"
    code_test_timeout_s: float = 10.0  # wall clock, per test (one assert / check / io case)
    code_total_timeout_s: float = 30.0  # wall clock, whole program (all tests)
    code_memory_mb: int = 1024  # address space per process, and the whole sandbox: its cgroup limit (else resident total)
    code_output_cap_bytes: int = 1 << 20  # captured stdout/stderr per test; beyond it: output_limit
    code_max_processes: int = 16  # RLIMIT_NPROC of the sandbox user, and pids.max of its cgroup
    code_max_open_files: int = 64  # RLIMIT_NOFILE
    code_max_file_mb: int = 16  # RLIMIT_FSIZE (largest file the program may write)
    code_disk_mb: int = 64  # size of the private working folder (namespace mode)
    code_partial_credit: bool = False  # score = fraction of tests passed instead of all-or-nothing
    code_io_float_tolerance: float = 1e-6  # io tests: relative/absolute tolerance for decimal tokens
    code_allow_site_packages: bool = True  # programs may import installed packages (read-only)
    code_use_namespaces: bool = True  # net/pid/mount namespaces + minimal root, when available
    code_drop_privileges: bool = True  # run as a fresh unprivileged uid when started as root
    code_uid_range: tuple[int, int] = (1_000_000, 2_000_000)  # sandbox uids drawn from [lo, hi)
    code_use_cgroups: bool = True
    """Give each sandbox run its own cgroup (needs root; v1 or v2 detected): the kernel bounds its
    memory to `code_memory_mb` (shm, memfd and tmpfs pages included) and its tasks to
    `code_max_processes`, and every task left when the run ends is killed by membership."""
    code_require_cgroups: bool = False
    """When no per-run cgroup can be made: True refuses to score code (reason `sandbox_error`);
    False warns once at start-up, naming what is still enforced (docs/rewards.md)."""
    code_max_inodes: int = 4096
    """`nr_inodes` of the sandbox's private tmpfs (namespace mode): files, folders and user xattrs
    there cost kernel memory that `code_disk_mb` (`size=`) alone does not bound."""
    code_ipc_shm_mb: int = 16
    """SysV shared memory allowed in the sandbox's IPC namespace (kernel.shmmax and shmall)."""
    code_ipc_max_objects: int = 16
    """SysV shared-memory segments and message queues allowed (kernel.shmmni, msgmni)."""
    code_ipc_msg_queue_bytes: int = 16384
    """Bytes one SysV message queue may hold (kernel.msgmnb; 16384 is Linux's default)."""
    code_max_message_mb: int = 16
    """Largest encoded value the trusted judge accepts from the program in one reply."""
    code_isolation: CodeIsolation = "strict"
    """The least isolation code rewards accept. `strict`: namespaces (mount, pid, net, ipc, uts;
    a user namespace first when not root) and resource limits (a cgroup, else rlimits), or code
    rewards refuse to start (`SandboxUnavailableError`, saying what is missing). `none`: run
    whatever this machine allows, plain execution without isolation included, with a warning at
    every start. docs/rewards.md lists what each level guarantees."""

    # --- machinery
    hard_timeout_grace_s: float = 2.0  # slack before a stuck worker or harness is killed
    pool_start_timeout_s: float = 120.0  # a pool worker must be ready (imports done) within this
    pool_max_tasks_per_worker: int = 10_000  # then the worker is replaced (bounds caches and leaks)

    # --- DAPO overlong handling
    overlong_shaping: bool = False
    overlong_max_len: int = 20480  # L_max
    overlong_cache_len: int = 4096  # L_cache
    overlong_filtering: bool = False  # loop masks out truncated responses (finish_reason == "length")

    def __post_init__(self) -> None:
        object.__setattr__(self, "math_formats", tuple(self.math_formats))  # a YAML list arrives as a list
        self.validate()

    def validate(self) -> None:
        """Raises ValueError naming ``reward.<key>`` (the style of every schema of the project)."""
        for name in ("correct_reward", "wrong_reward", "format_reward"):
            _finite(self, name)
        if not self.math_formats:
            raise ValueError("reward.math_formats must name at least one of " + ", ".join(MATH_FORMATS))
        for fmt in self.math_formats:
            if fmt not in MATH_FORMATS:
                raise ValueError(
                    f"reward.math_formats: unknown format {fmt!r}, expected some of {', '.join(MATH_FORMATS)}"
                )
        for name in (
            "math_timeout_s",
            "code_test_timeout_s",
            "code_total_timeout_s",
            "hard_timeout_grace_s",
            "pool_start_timeout_s",
        ):
            _positive(self, name)
        if isinstance(self.math_rel_tol, bool) or not isinstance(self.math_rel_tol, (int, float)) \
                or not math.isfinite(self.math_rel_tol) or not 0.0 <= self.math_rel_tol < 1.0:
            raise ValueError(f"reward.math_rel_tol must be a number in [0, 1), got {self.math_rel_tol!r}")
        object.__setattr__(self, "math_rel_tol", float(self.math_rel_tol))
        if not 0.0 <= float(self.code_io_float_tolerance) < 1.0 or not math.isfinite(self.code_io_float_tolerance):
            raise ValueError(f"reward.code_io_float_tolerance must be in [0, 1), got {self.code_io_float_tolerance!r}")
        for name in ("aime_min", "aime_max"):
            _int(self, name, minimum=0)
        if self.aime_max < self.aime_min:
            raise ValueError(f"reward.aime_max ({self.aime_max}) must be >= reward.aime_min ({self.aime_min})")
        if self.code_extraction not in CODE_EXTRACTIONS:
            raise ValueError(
                f"reward.code_extraction must be one of {', '.join(CODE_EXTRACTIONS)}, got {self.code_extraction!r}"
            )
        if self.code_isolation not in CODE_ISOLATIONS:
            raise ValueError(
                f"reward.code_isolation must be one of {', '.join(CODE_ISOLATIONS)}, got {self.code_isolation!r}"
            )
        if self.code_isolation == "strict" and self.code_use_namespaces is False:
            raise ValueError("reward.code_use_namespaces=false needs reward.code_isolation=none "
                             "(strict isolation is built on namespaces)")
        _int(self, "pool_max_tasks_per_worker", minimum=1)
        _int(self, "math_max_answers_checked", minimum=1)
        for name in (
            "code_memory_mb",
            "code_output_cap_bytes",
            "code_max_processes",
            "code_max_open_files",
            "code_max_file_mb",
            "code_disk_mb",
            "code_max_inodes",
            "code_ipc_shm_mb",
            "code_ipc_msg_queue_bytes",
            "code_max_message_mb",
        ):
            _int(self, name, minimum=1)
        _int(self, "code_ipc_max_objects", minimum=0)
        if self.code_max_open_files < 16:
            raise ValueError(
                f"reward.code_max_open_files must be >= 16 (the interpreter needs a few), got {self.code_max_open_files}"
            )
        if self.code_memory_mb < 64:
            raise ValueError(f"reward.code_memory_mb must be >= 64 (the interpreter needs it), got {self.code_memory_mb}")
        lo_hi = tuple(self.code_uid_range)
        if len(lo_hi) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in lo_hi):
            raise ValueError(f"reward.code_uid_range must be two integers [lo, hi), got {self.code_uid_range!r}")
        if not 1000 <= lo_hi[0] < lo_hi[1] <= 2**31 - 2:
            raise ValueError(
                f"reward.code_uid_range must satisfy 1000 <= lo < hi <= 2**31-2 (unprivileged, unused uids), got {lo_hi}"
            )
        object.__setattr__(self, "code_uid_range", lo_hi)
        for name in (
            "strip_think",
            "math_strict",
            "math_allow_multiple_answers",
            "math_ignore_units",
            "math_allow_equations",
            "math_ignore_text",
            "code_partial_credit",
            "code_allow_site_packages",
            "code_use_namespaces",
            "code_drop_privileges",
            "code_use_cgroups",
            "code_require_cgroups",
            "overlong_shaping",
            "overlong_filtering",
        ):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"reward.{name} must be a bool, got {getattr(self, name)!r}")
        _int(self, "overlong_max_len", minimum=1)
        _int(self, "overlong_cache_len", minimum=0)
        if self.overlong_cache_len > self.overlong_max_len:
            raise ValueError(
                f"reward.overlong_cache_len ({self.overlong_cache_len}) must be <= "
                f"reward.overlong_max_len ({self.overlong_max_len})"
            )

    def replace(self, **overrides: Any) -> "RewardConfig":
        """A copy with some fields changed; an unknown name is a ValueError naming it."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ValueError(f"unknown reward option(s) {unknown}; known: {sorted(names)}")
        return dataclasses.replace(self, **overrides)


def resolve_config(options: dict[str, Any]) -> RewardConfig:
    """`config=` (a RewardConfig) plus any RewardConfig field given by name as an override.

    Lives here (not in rewards.scoring) so that rewards.batch needs nothing from rewards.scoring,
    which itself uses the pool in rewards.batch: no import circle.
    """
    options = dict(options)
    cfg = options.pop("config", None)
    if cfg is None:
        cfg = DEFAULT_CONFIG
    if not isinstance(cfg, RewardConfig):
        raise ValueError(f"config must be a RewardConfig, got {type(cfg).__name__}")
    return cfg.replace(**options) if options else cfg


def _finite(cfg: RewardConfig, name: str) -> None:
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"reward.{name} must be a finite number, got {value!r}")
    object.__setattr__(cfg, name, float(value))


def _positive(cfg: RewardConfig, name: str) -> None:
    _finite(cfg, name)
    if getattr(cfg, name) <= 0:
        raise ValueError(f"reward.{name} must be > 0, got {getattr(cfg, name)!r}")


def _int(cfg: RewardConfig, name: str, *, minimum: int) -> None:
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"reward.{name} must be an integer >= {minimum}, got {value!r}")


DEFAULT_CONFIG = RewardConfig()

__all__ = ["RewardConfig", "DEFAULT_CONFIG", "resolve_config", "MATH_FORMATS", "CODE_EXTRACTIONS", "CODE_ISOLATIONS"]
