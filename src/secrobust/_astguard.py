"""A work-around for CPython gh-106905: ``ast.parse`` made thread-safe on the interpreters that need it.

On CPython before 3.11.8 (and 3.12.0-3.12.1) the counter of the AST-to-object converter (``PyAST_mod2obj``,
behind ``ast.parse`` and every ``compile(..., PyCF_ONLY_AST)``) lives in the ``_ast`` module's state, shared
by all threads. A garbage collection in the middle of a conversion runs finalizers, which may hand the GIL to
another thread; if that thread converts an AST too, the first one ends with
``SystemError: AST constructor recursion depth mismatch``. This process calls ``ast.parse`` from many threads
without asking for it: NumPy reads each ``.npy`` header with ``ast.literal_eval`` (Flower's ``Array.numpy()``,
on every ClientApp thread of ``secrobust.flower.run_inprocess``), ``inspect.signature`` parses builtins'
text signatures (``numpy.ma``'s import, which Numba's first call of the ring kernel triggers on the
kernel's warm-up thread), and Python 3.11's traceback printer parses each line it underlines.

``install()`` (run when this module is imported, first thing in ``secrobust``) replaces ``ast.parse`` on those interpreters by one that
converts under a process-wide lock with automatic garbage collection off, so no other thread converts
meanwhile and no finalizer runs while the lock is held. ``ast.literal_eval``, ``inspect``, ``traceback``,
NumPy and Numba all call ``ast.parse`` through the module, so they are covered. On fixed interpreters it does
nothing."""

from __future__ import annotations

import ast
import functools
import gc
import os
import sys
import threading

AFFECTED = sys.version_info < (3, 11, 8) or (3, 12) <= sys.version_info < (3, 12, 2)
"""Whether this interpreter shares the AST converter's recursion counter between threads (gh-106905)."""

_lock = threading.RLock()
_unguarded = ast.parse


def _reset_lock_in_child() -> None:     # a fork while another thread held the lock must not leave it held
    global _lock
    _lock = threading.RLock()


@functools.wraps(_unguarded)
def guarded_parse(*args, **kwargs):
    """``ast.parse``, one thread at a time and without a garbage collection (so without finalizers) inside."""
    with _lock:
        collecting = gc.isenabled()
        gc.disable()
        try:
            return _unguarded(*args, **kwargs)
        finally:
            if collecting:
                gc.enable()


def installed() -> bool:
    return ast.parse is guarded_parse


def install() -> None:
    """Guard ``ast.parse`` where the interpreter needs it (idempotent)."""
    if AFFECTED and not installed():
        ast.parse = guarded_parse


def uninstall() -> None:
    """Put the interpreter's own ``ast.parse`` back (for tests)."""
    if installed():
        ast.parse = _unguarded


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_lock_in_child)

install()
