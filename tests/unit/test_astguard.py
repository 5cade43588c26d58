"""``secrobust._astguard``: on CPython < 3.11.8 (gh-106905) two threads converting ASTs at once can raise
``SystemError: AST constructor recursion depth mismatch``; the guard lets one thread convert at a time, with no
garbage collection (so no finalizer, no GIL hand-over) inside. These tests force the failing interleaving
deterministically (a gc callback pauses one thread in the middle of its conversion) instead of waiting for
the one-in-N run, and check that every ast user seen on our threads goes through the guard."""

from __future__ import annotations

import ast
import gc
import inspect
import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import secrobust  # noqa: F401  (installs the guard)
from secrobust import _astguard

needs_guard = pytest.mark.skipif(not _astguard.AFFECTED, reason="this interpreter has the gh-106905 fix")

SRC = Path(secrobust.__file__).resolve().parent.parent

# Thread A parses and, at the first garbage collection inside its conversion, waits (GIL released) until
# thread B has parsed; then A finishes its conversion. Unguarded, B resets the shared depth counter meanwhile.
RACE = textwrap.dedent("""
    import ast, gc, sys, threading
    from secrobust import _astguard
    if sys.argv[1] == "off":
        _astguard.uninstall()

    def inside_parse():
        f = sys._getframe(2)
        while f is not None:
            if f.f_code.co_name == "parse" and f.f_code.co_filename.endswith("ast.py"):
                return True
            f = f.f_back
        return False

    a_paused, b_done = threading.Event(), threading.Event()
    errors = {}

    def on_gc(phase, info):
        if phase == "start" and threading.current_thread().name == "A" and not a_paused.is_set() \\
                and inside_parse():
            a_paused.set()
            b_done.wait(3)

    def run(name, src):
        try:
            if name == "B":
                a_paused.wait(3)
            ast.parse(src)
        except BaseException as exc:
            errors[name] = f"{type(exc).__name__}: {exc}"
        finally:
            if name == "B":
                b_done.set()

    gc.collect()
    gc.set_threshold(5)
    gc.callbacks.append(on_gc)
    src_a = "x = " + "[" * 40 + "1" + "]" * 40 + "\\n" + "y = 1\\n" * 200
    threads = [threading.Thread(target=run, args=(n, s), name=n)
               for n, s in (("A", src_a), ("B", "z = f(g(h(1)))\\n" * 200))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print("paused" if a_paused.is_set() else "not-paused", errors or "ok")
""")


def _race(mode: str) -> str:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", RACE, mode], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_the_guard_is_installed_exactly_where_the_interpreter_needs_it():
    assert _astguard.installed() == _astguard.AFFECTED
    assert inspect.signature(ast.parse) == inspect.signature(_astguard._unguarded)


@needs_guard
def test_unguarded_the_forced_interleaving_raises_the_systemerror():
    """The harness reproduces gh-106905 on this interpreter, so the next test is not vacuous."""
    got = _race("off")
    assert got.startswith("paused") and "SystemError" in got and "recursion depth mismatch" in got, got


@needs_guard
def test_guarded_no_thread_is_paused_inside_a_conversion_and_nothing_fails():
    assert _race("on") == "not-paused ok"


@needs_guard
def test_the_guard_holds_its_lock_with_collection_off_during_the_parse(monkeypatch):
    seen = []
    inner = _astguard._unguarded

    def spy(*args, **kwargs):
        seen.append((_astguard._lock._is_owned(), gc.isenabled()))
        return inner(*args, **kwargs)

    monkeypatch.setattr(_astguard, "_unguarded", spy)
    assert gc.isenabled()
    assert isinstance(ast.parse("x = 1"), ast.Module)
    assert seen == [(True, False)] and gc.isenabled()


def _npy() -> io.BytesIO:
    buf = io.BytesIO()
    np.save(buf, np.arange(3.0))
    buf.seek(0)
    return buf


def _flower_array():
    flwr = pytest.importorskip("flwr")  # noqa: F841
    from flwr.app import Array
    return Array(np.arange(3.0))


def _traceback_with_carets():
    import traceback

    def f(b):
        return 1 + b["k"] * 2
    try:
        f({})
    except KeyError as exc:
        return traceback.format_exception(exc)


# the ast users the probe found on threads of tests/flower/test_flower_rounds.py and of the deployment's
# processes: NumPy's .npy header (Flower's Array.numpy(), every ClientApp thread), inspect's text signatures
# (numpy.ma's import, from Numba's first call on the kernel's warm-up or request thread), and 3.11's
# traceback carets (an exception logged on any thread)
CALLERS = {
    "np.load": lambda: np.load(_npy()),
    "flwr Array.numpy": lambda: _flower_array().numpy(),
    "inspect.signature of a builtin": lambda: inspect.signature(len),
    "traceback carets": _traceback_with_carets,
}


@needs_guard
@pytest.mark.parametrize("caller", list(CALLERS))
def test_each_ast_user_on_our_threads_goes_through_the_guard(monkeypatch, caller):
    calls = []
    inner = _astguard._unguarded

    def counting(*args, **kwargs):
        calls.append(_astguard._lock._is_owned())
        return inner(*args, **kwargs)

    monkeypatch.setattr(_astguard, "_unguarded", counting)
    CALLERS[caller]()
    if caller == "traceback carets" and sys.version_info[:2] != (3, 11):
        pytest.skip("only 3.11's traceback module parses the lines it underlines")
    assert calls and all(calls)
