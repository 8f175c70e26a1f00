"""The math comparator's sympy runs here, in a worker subprocess: sympy can loop for ever (simplify)
or sit in C code (10**10**10) where no signal reaches it, so the parent waits with a deadline and
kills the worker when it passes; the call then counts as "not equal" and the run goes on."""

from __future__ import annotations

import atexit
import json
import os
import select
import subprocess
import sys
import threading
import time
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

from harness import HarnessError
from harness.grading.mathtext import SYMPY_FUNCTIONS, latex_to_sympy_text, split_sequence
from harness.grading.numbers import format_fraction, normalize_number

# ---- worker side (runs in the subprocess; sympy is imported only there) ----------------------

_sympy_ns: dict[str, Any] = {}


def _parse_math(t: str) -> Any:
    import sympy
    from sympy.parsing.sympy_parser import (
        implicit_multiplication_application,
        parse_expr,
        standard_transformations,
    )

    if not _sympy_ns:
        # A closed namespace with no builtins: parse_expr evaluates its input, and its default
        # namespace includes open(), input(), exec() and all of sympy.
        _sympy_ns["globals"] = {
            "__builtins__": {},
            **{n: getattr(sympy, n) for n in ("Integer", "Float", "Rational", "Symbol", "Function", "pi", "oo")},
            **{n: getattr(sympy, n) for n in SYMPY_FUNCTIONS},
        }
        letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
        _sympy_ns["locals"] = {c: sympy.Symbol(c) for c in letters}
        _sympy_ns["transformations"] = standard_transformations + (implicit_multiplication_application,)
    text = latex_to_sympy_text(t)
    return parse_expr(
        text,
        local_dict=dict(_sympy_ns["locals"]),
        global_dict=_sympy_ns["globals"],
        transformations=_sympy_ns["transformations"],
        evaluate=True,
    )


def _expr_key(t: str) -> str:
    import sympy

    number = normalize_number(t, units=False)
    if number is not None:
        return number
    try:
        expr = _parse_math(t)
    except Exception:  # noqa: BLE001 - whatever the parser rejects is not a math expression
        return t.replace(" ", "")
    expr = sympy.simplify(expr)
    if expr.is_Rational:
        return format_fraction(Fraction(int(expr.p), int(expr.q)))
    if expr.is_Float:
        return format_fraction(Fraction(Decimal(str(expr))))
    return sympy.sstr(expr)


_SETS = ("", "{")  # a bare list "1, 2" (all solutions) and \{1, 2\} are unordered; both are sets


def _worker_key(t: str) -> str:
    seq = split_sequence(t)
    if seq:
        opener, closer, items = seq
        keys = [_expr_key(x) for x in items]
        if opener in _SETS:
            return "{" + ",".join(sorted(keys)) + "}"
        return opener + ",".join(keys) + closer
    return _expr_key(t)


def _expr_equal(a: str, b: str) -> bool:
    import sympy

    if a.replace(" ", "") == b.replace(" ", ""):
        return True
    na, nb = normalize_number(a, units=False), normalize_number(b, units=False)
    if na is not None and nb is not None:
        return na == nb
    try:
        ea, eb = _parse_math(a), _parse_math(b)
    except Exception:  # noqa: BLE001 - not both math expressions, and the texts differ
        return False
    if ea == eb:
        return True
    diff = ea - eb
    if diff.is_number:  # compare numerically with a tight relative tolerance: 2.83 != 2*sqrt(2)
        scale = abs(complex(eb.evalf(30))) if eb.is_number else 0.0  # 0.5x - x/2 is a number too
        return abs(complex(diff.evalf(30))) <= 1e-9 * max(1.0, scale)
    return sympy.simplify(diff) == 0


def _worker_equal(a: str, b: str) -> bool:
    sa, sb = split_sequence(a), split_sequence(b)
    if sa or sb:
        if not (sa and sb) or len(sa[2]) != len(sb[2]):
            return False
        if sa[0] in _SETS and sb[0] in _SETS:  # each item matched to a distinct equal item
            unmatched = list(sb[2])
            for x in sa[2]:
                y = next((y for y in unmatched if _expr_equal(x, y)), None)
                if y is None:
                    return False
                unmatched.remove(y)
            return True
        return sa[:2] == sb[:2] and all(_expr_equal(x, y) for x, y in zip(sa[2], sb[2]))
    return _expr_equal(a, b)


# math-verify (the `math_verify` comparator) runs here too: it is sympy underneath, so it gets the
# same hard deadline. Its own timeouts are signal.alarm() based (main thread only, and they would
# cancel our timer), so they are switched off: parsing_timeout=None, timeout_seconds=None.
_mv_parsed: dict[str, list] = {}


def _mv_parse(text: str) -> list:
    """math-verify's parse of `text` (sympy objects first, then the matched string), cached."""
    if text not in _mv_parsed:
        from math_verify import parse

        if len(_mv_parsed) >= 20_000:
            _mv_parsed.clear()
        try:
            _mv_parsed[text] = parse(text, parsing_timeout=None)
        except _WorkerTimeout:
            _mv_parsed[text] = []  # unreadable in time: the next call on it (equal after key) is instant
            raise
    return _mv_parsed[text]


def _mv_key(text: str) -> str | None:
    """Text of the first sympy object math-verify parsed (exact numbers in our canonical form), or
    None when it parsed none: only a matched string, or nothing, means it cannot read the answer."""
    import sympy

    parsed = [x for x in _mv_parse(text) if not isinstance(x, str)]
    if not parsed:
        return None
    expr = parsed[0]
    if isinstance(expr, sympy.Basic) and expr.is_number and not expr.free_symbols:
        value = expr.doit()  # 50\% parses as the unevaluated 50*(1/100)
        if value.is_Rational:
            return format_fraction(Fraction(int(value.p), int(value.q)))
        if value.is_Float:
            return format_fraction(Fraction(Decimal(str(value))))
    return sympy.sstr(expr)


def _mv_equal(pred: str, gold: str) -> bool:
    from math_verify import verify

    g, p = _mv_parse(gold), _mv_parse(pred)
    if not any(not isinstance(x, str) for x in g) or not any(not isinstance(x, str) for x in p):
        return False  # as key(): an answer math-verify cannot parse is never equal to anything
    return verify(g, p, timeout_seconds=None)  # gold first: verify is not symmetric


class _WorkerTimeout(BaseException):  # BaseException: sympy's `except Exception` must not eat it
    pass


def worker_main() -> None:
    """Subprocess entry: JSON lines {op, args, timeout} on stdin -> {ok, result | error} on stdout."""
    import signal

    try:  # a runaway big-integer power should fail with MemoryError, not take the machine down
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
    except (ImportError, ValueError, OSError):
        pass
    proto = os.fdopen(os.dup(1), "w")  # our channel; anything sympy prints goes to stderr
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def on_alarm(signum: int, frame: Any) -> None:
        raise _WorkerTimeout

    signal.signal(signal.SIGALRM, on_alarm)
    _parse_math("x")  # import sympy and build the namespace before saying ready
    try:  # math-verify loads here (60 ms), not under the first call's deadline
        _mv_parse("$1$")
    except ImportError:
        pass  # only the math_verify comparator needs it; its calls then fail (None)
    ops = {"key": _worker_key, "equal": _worker_equal, "mv_key": _mv_key, "mv_equal": _mv_equal}
    proto.write("ready\n")
    proto.flush()
    for line in sys.stdin:
        req = json.loads(line)
        try:
            # Soft deadline (Python code only); the parent's hard deadline covers C code.
            signal.setitimer(signal.ITIMER_REAL, req["timeout"])
            try:
                resp = {"ok": True, "result": ops[req["op"]](*req["args"])}
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        except _WorkerTimeout:
            resp = {"ok": False, "error": "timeout"}
        except Exception as e:  # noqa: BLE001 - any sympy failure means "cannot decide"
            resp = {"ok": False, "error": f"{type(e).__name__}: {e}"[:300]}
        proto.write(json.dumps(resp) + "\n")
        proto.flush()


# ---- parent side ----------------------------------------------------------------------------


class MathWorker:
    """One sympy subprocess, started lazily, killed and restarted when a call overruns."""

    STARTUP_TIMEOUT_S = 120.0
    GRACE_S = 1.0  # time past the soft deadline before the hard kill

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._pid = os.getpid()
        self._buf = b""
        self._lock = threading.Lock()
        self.kills = 0  # how many calls were cut off (reported by tests and diagnostics)

    def _start(self) -> None:
        root = str(Path(__file__).resolve().parents[2])  # the checkout that holds harness/
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
        self._proc = subprocess.Popen(
            [sys.executable, "-c", "from harness.grading.math_worker import worker_main; worker_main()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        self._pid, self._buf = os.getpid(), b""
        if self._read_line(time.monotonic() + self.STARTUP_TIMEOUT_S) != b"ready":
            self.close()
            raise HarnessError("math comparator: the sympy worker process did not start")

    def _read_line(self, deadline: float) -> bytes | None:
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        while b"\n" not in self._buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return None  # the worker died
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line

    def call(self, op: str, *args: str, timeout: float) -> Any:
        """The op's result, or None when it failed, overran `timeout` seconds, or the worker died."""
        with self._lock:
            if self._proc is None or self._proc.poll() is not None or self._pid != os.getpid():
                self._proc = None  # after a fork the pipes belong to the parent: start our own
                self._start()
            assert self._proc is not None and self._proc.stdin is not None
            try:
                self._proc.stdin.write((json.dumps({"op": op, "args": args, "timeout": timeout}) + "\n").encode())
                self._proc.stdin.flush()
            except (BrokenPipeError, OSError):
                self.close()
                return None
            line = self._read_line(time.monotonic() + timeout + self.GRACE_S)
            if line is None:  # stuck in C code (or dead): kill it, the next call starts a fresh one
                self.kills += 1
                self.close()
                return None
            resp = json.loads(line)
            return resp["result"] if resp.get("ok") else None

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and self._pid == os.getpid():
            proc.kill()
            proc.wait()
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()


default_worker = MathWorker()
atexit.register(default_worker.close)
