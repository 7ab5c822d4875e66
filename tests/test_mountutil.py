"""The check of how a mount ended (tests/mountutil.py log_problems): what in a mount log counts
as something gone wrong, and what a test may allow."""

from __future__ import annotations

from tests.mountutil import log_problems

INFO = "2026-12-07 03:56:53,383 INFO nexusfs.mount: store /s mounted at /m"
WARNING = "2026-12-07 03:56:54,001 WARNING nexusfs.index: semantic indexing is off: no model"
ERROR_WITH_TRACEBACK = """2026-12-07 03:56:55,237 ERROR nexusfs.index: indexing failed; retrying shortly
Traceback (most recent call last):
  File "/x/indexer.py", line 177, in _loop
    done = self.run_batch(BACKGROUND_BATCH, background=True)
RuntimeError: boom"""
# what Python writes for an exception a thread did not catch (threading.excepthook)
THREAD_DIED = """Exception in thread nexus-commit:
Traceback (most recent call last):
  File "/usr/lib/python3.11/threading.py", line 1038, in _bootstrap_inner
    self.run()
ValueError: the commit thread died"""
CLOSED = "2026-12-07 03:56:56,408 INFO nexusfs.mount: store /s closed"


def test_a_clean_log_has_no_problems():
    assert log_problems("\n".join([INFO, CLOSED]) + "\n") == []
    assert log_problems("") == []


def test_warnings_errors_and_their_tracebacks_are_problems():
    text = "\n".join([INFO, WARNING, ERROR_WITH_TRACEBACK, CLOSED])
    assert log_problems(text) == [WARNING, ERROR_WITH_TRACEBACK]


def test_a_thread_that_died_is_a_problem_of_its_own():
    text = "\n".join([INFO, THREAD_DIED, CLOSED])
    assert log_problems(text) == [THREAD_DIED]
    # also right after a record the test allows: the traceback is not that record's
    text = "\n".join([WARNING, THREAD_DIED, CLOSED])
    assert log_problems(text, allow=["semantic indexing is off"]) == [THREAD_DIED]


def test_a_chained_traceback_is_one_problem():
    chained = THREAD_DIED + "\n\nDuring handling of the above exception, another exception occurred:\n\n" \
        + "\n".join(THREAD_DIED.splitlines()[1:])
    assert log_problems("\n".join([INFO, chained, CLOSED])) == [chained]


def test_a_bare_traceback_after_an_info_record_is_a_problem():
    bare = "\n".join(THREAD_DIED.splitlines()[1:])
    assert log_problems("\n".join([INFO, bare, CLOSED])) == [bare]


def test_stray_output_is_a_problem():
    assert log_problems("fuse: unknown option(s): `-o bogus'\n" + INFO) == ["fuse: unknown option(s): `-o bogus'"]


def test_an_allowed_entry_is_allowed_with_its_traceback_and_nothing_else():
    text = "\n".join([ERROR_WITH_TRACEBACK, WARNING])
    assert log_problems(text, allow=[r"indexing failed"]) == [WARNING]
    assert log_problems(text, allow=[r"indexing failed", r"WARNING nexusfs\.index: semantic"]) == []
    assert log_problems(text, allow=[r"^no such entry"]) == [ERROR_WITH_TRACEBACK, WARNING]
