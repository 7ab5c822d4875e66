"""The stand-in for trio that the mount gives pyfuse3 (mount/fastwait.py)."""

from __future__ import annotations

import socket
import threading
import types

import pytest
import trio

from mount import fastwait

pytestmark = pytest.mark.mount  # the mount guard (tests/needs.py need_mount), not a skip


def test_the_stand_in_is_trio_except_for_the_wait_and_the_lock():
    shim = fastwait._Trio()
    assert shim.open_nursery is trio.open_nursery
    assert shim.ClosedResourceError is trio.ClosedResourceError
    assert shim.lowlevel.current_trio_token is trio.lowlevel.current_trio_token
    assert shim.lowlevel.notify_closing is trio.lowlevel.notify_closing
    assert shim.Lock is fastwait._Lock


def test_install_is_idempotent_and_uninstall_restores_trio():
    mod = types.SimpleNamespace(trio=trio)
    fastwait.install(mod)
    first = mod.trio
    fastwait.install(mod)
    assert mod.trio is first and isinstance(first, fastwait._Trio)
    fastwait.uninstall(mod)
    assert mod.trio is trio


def test_wait_readable_returns_for_queued_data_and_waits_for_data_to_come():
    low = fastwait._Lowlevel()
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    order: list[str] = []

    async def main() -> None:
        b.send(b"queued")
        await low.wait_readable(a.fileno())  # fast path: already readable
        order.append("fast")
        a.recv(100)
        async with trio.open_nursery() as n:

            async def reader() -> None:
                await low.wait_readable(a.fileno())  # nothing queued: trio's own wait
                order.append("woken")

            n.start_soon(reader)
            await trio.sleep(0.05)
            order.append("sent")
            b.send(b"later")

    try:
        trio.run(main)
    finally:
        a.close()
        b.close()
    assert order == ["fast", "sent", "woken"]


def test_a_closed_descriptor_is_reported_as_trio_does():
    low = fastwait._Lowlevel()
    a, b = socket.socketpair()

    async def main() -> None:
        async with trio.open_nursery() as n:
            raised: list[BaseException] = []

            async def waiter() -> None:
                try:
                    await low.wait_readable(a.fileno())
                except trio.ClosedResourceError as exc:
                    raised.append(exc)

            n.start_soon(waiter)
            await trio.sleep(0.05)
            trio.lowlevel.notify_closing(a.fileno())
        assert len(raised) == 1

    try:
        trio.run(main)
    finally:
        a.close()
        b.close()


def test_the_lock_excludes_and_wakes_a_waiter():
    lock = fastwait._Lock()
    events: list[str] = []

    async def holder(name: str) -> None:
        async with lock:
            events.append(f"{name} in")
            await trio.sleep(0.01)
            events.append(f"{name} out")

    async def main() -> None:
        async with trio.open_nursery() as n:
            n.start_soon(holder, "a")
            n.start_soon(holder, "b")

    trio.run(main)
    assert events in (["a in", "a out", "b in", "b out"], ["b in", "b out", "a in", "a out"])


def test_the_spin_catches_a_request_that_comes_while_it_polls(monkeypatch):
    # a budget far longer than the sender's delay: the request must be caught by the
    # spin, never by trio's own wait (which is made to fail here)
    low = fastwait._Lowlevel(spin=60.0)
    a, b = socket.socketpair()

    async def not_expected(fd: object) -> None:
        raise AssertionError("fell back to trio's wait")

    monkeypatch.setattr(trio.lowlevel, "wait_readable", not_expected)
    sender = threading.Timer(0.01, b.send, (b"request",))

    async def main() -> None:
        sender.start()
        await low.wait_readable(a.fileno())

    try:
        trio.run(main)
    finally:
        sender.join()
        a.close()
        b.close()


def test_the_spin_gives_way_to_a_worker_threads_result():
    # the spin's budget is far longer than the test's deadline: it must stop when the
    # worker thread's result is queued for trio, so the result is delivered and the
    # request sent afterwards is received through trio's own wait
    low = fastwait._Lowlevel(spin=60.0)
    a, b = socket.socketpair()
    a.setblocking(False)
    order: list[str] = []
    started = threading.Event()
    spinning = threading.Event()
    spin = low._spin

    def spin_and_tell(p):
        spinning.set()
        return spin(p)

    low._spin = spin_and_tell  # the thread's result must come while the spin runs

    async def main() -> None:
        with trio.fail_after(30):
            async with trio.open_nursery() as n:

                def in_thread() -> None:
                    started.set()
                    spinning.wait(30)

                async def worker() -> None:
                    await trio.to_thread.run_sync(in_thread)
                    order.append("thread result delivered")
                    b.send(b"request")

                async def waiter() -> None:
                    await low.wait_readable(a.fileno())
                    order.append("request received")

                n.start_soon(worker)
                while not started.is_set():  # the thread runs before the spin begins
                    await trio.sleep(0.001)
                n.start_soon(waiter)

    try:
        trio.run(main)
    finally:
        a.close()
        b.close()
    assert order == ["thread result delivered", "request received"]


def test_no_spin_with_a_single_cpu(monkeypatch):
    monkeypatch.setattr(fastwait, "_cpus", lambda: 1)
    assert fastwait._Lowlevel().spin == 0
    monkeypatch.setattr(fastwait, "_cpus", lambda: 2)
    assert fastwait._Lowlevel().spin == fastwait.SPIN_SECONDS


class _Steps(trio.abc.Instrument):
    """Counts how often each task is stepped: a task that yields is stepped again."""

    def __init__(self) -> None:
        self.steps: dict[object, int] = {}

    def before_task_step(self, task: object) -> None:
        self.steps[task] = self.steps.get(task, 0) + 1


def _yielded(low: fastwait._Lowlevel, trio_has_work: list[bool]) -> list[bool]:
    """Wait once per item with a request queued (and, where the item is True, a job queued
    for trio first); return whether each wait yielded to trio's scheduler."""
    a, b = socket.socketpair()
    steps = _Steps()
    seen: list[bool] = []

    async def main() -> None:
        me = trio.lowlevel.current_task()
        b.send(b"request")
        for work in trio_has_work:
            if work:  # as a worker thread's result or a signal would be
                trio.lowlevel.current_trio_token().run_sync_soon(lambda: None)
            before = steps.steps.get(me, 0)
            await low.wait_readable(a.fileno())
            seen.append(steps.steps.get(me, 0) > before)

    try:
        trio.run(main, instruments=[steps])
    finally:
        a.close()
        b.close()
    return seen


def test_a_queued_request_is_taken_without_yielding_unless_trio_has_work():
    low = fastwait._Lowlevel(spin=0.0, yield_every=60.0)
    assert _yielded(low, [False, True]) == [False, True]


def test_a_stream_of_requests_still_yields_every_so_often():
    low = fastwait._Lowlevel(spin=0.0, yield_every=0.0)
    assert _yielded(low, [False]) == [True]
