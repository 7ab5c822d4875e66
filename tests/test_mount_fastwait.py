"""The stand-in for trio that the mount gives pyfuse3 (mount/fastwait.py)."""

from __future__ import annotations

import socket
import types

import pytest
import trio

pytest.importorskip("pyfuse3")

from mount import fastwait  # noqa: E402


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
