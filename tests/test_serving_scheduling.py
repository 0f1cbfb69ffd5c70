"""How `movierec serve` schedules work: which requests share a model call (the Batcher)
and how the workers share connections (workers.BalancedAcceptor). Real event loops, real
thread pools and real loopback sockets; the "model" is a plain function that records the
batches it is called with."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import socket
import time

import numpy as np
import pytest

from serving import workers
from serving.server import Batcher


class RecordingSignature:
    """A signature whose call takes `seconds` and records each batch's size."""

    def __init__(self, seconds: float = 0.003):
        self.seconds, self.batches = seconds, []

    def batch_key(self, feeds):
        return ("recording",)

    def call_batch(self, requests):
        self.batches.append(len(requests))
        time.sleep(self.seconds)
        return [{"x": r["x"] * 2} for r in requests]


def _feeds(i):
    return {"x": np.array([i])}


async def _closed_loop(batcher, signature, clients: int, rounds: int, think: float = 0.0):
    """`clients` clients that each ask again `think` seconds after their answer."""

    async def client(c):
        for r in range(rounds):
            out = await batcher.run(signature, _feeds(c * 1000 + r), client=("127.0.0.1", c))
            assert out["x"].tolist() == [(c * 1000 + r) * 2]  # its own answer
            await asyncio.sleep(think)

    await asyncio.gather(*(client(c) for c in range(clients)))


def _run(coro_fn, *args):
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        batcher = Batcher(pool, 1)
        return asyncio.run(coro_fn(batcher, *args)), batcher
    finally:
        pool.shutdown()


def test_clients_that_ask_again_at_once_share_one_call():
    # 4 clients asking again 0.5 ms after each answer: without the wait for returning
    # clients the calls alternate 1, 3, 1, 3 ...; with it nearly every call carries all 4
    signature = RecordingSignature()
    _run(_closed_loop, signature, 4, 30, 0.0005)
    later = signature.batches[4:]  # the first answers teach which clients come back
    assert sum(later) == 4 * 30 - sum(signature.batches[:4])
    assert np.mean(later) > 3.5, signature.batches


def test_a_lone_client_and_a_new_connection_never_wait():
    signature = RecordingSignature(seconds=0.0)
    started = time.perf_counter()
    _run(_closed_loop, signature, 1, 200)
    alone = (time.perf_counter() - started) / 200
    assert signature.batches == [1] * 200
    assert alone < Batcher.RETURN_WAIT / 2  # never the wait (which would take 2.5 ms)

    async def new_connections(batcher, signature):
        waits = []
        for c in range(20):  # each request on a connection of its own
            t = time.perf_counter()
            await batcher.run(signature, _feeds(c), client=("127.0.0.1", 50000 + c))
            waits.append(time.perf_counter() - t)
        return waits

    waits, _ = _run(new_connections, signature)
    assert max(waits) < Batcher.RETURN_WAIT


def test_a_client_that_asks_now_and_then_makes_no_one_wait():
    # client 0 asks every 20 ms (slower than Batcher.QUICK), client 1 asks again at once:
    # client 1's requests never wait for client 0
    signature = RecordingSignature(seconds=0.0)

    async def mixed(batcher, signature):
        waits = []

        async def sometimes():
            for r in range(10):
                await batcher.run(signature, _feeds(r), client=("127.0.0.1", 1))
                await asyncio.sleep(0.02)

        async def often():
            for r in range(150):
                t = time.perf_counter()
                await batcher.run(signature, _feeds(r), client=("127.0.0.1", 2))
                waits.append(time.perf_counter() - t)
                await asyncio.sleep(0.001)

        await asyncio.gather(sometimes(), often())
        return waits

    waits, _ = _run(mixed, signature)
    assert sorted(waits)[int(0.95 * len(waits))] < Batcher.RETURN_WAIT / 2


def test_a_failing_call_answers_each_request_with_its_error():
    class Failing(RecordingSignature):
        def call_batch(self, requests):
            raise RuntimeError("the pool is gone")

    async def one(batcher, signature):
        with pytest.raises(RuntimeError, match="the pool is gone"):
            await batcher.run(signature, _feeds(1), client=("127.0.0.1", 1))

    _run(one, Failing())


# ------------------------------------------------------------------------- the acceptor
def test_workers_share_persistent_connections_evenly(tmp_path):
    """Two acceptors on one listening socket (as two workers are): 8 connections opened
    at once split 4 / 4, and a worker whose connections closed takes the next ones."""
    loads_file = str(tmp_path / "loads")
    workers.Loads.create(loads_file, 2)
    listener = workers.listening_socket("127.0.0.1", 0)
    address = listener.getsockname()[:2]

    async def main():
        open_sets = [set(), set()]

        def factory(i):
            class Protocol(asyncio.Protocol):
                def connection_made(self, transport):
                    self.transport = transport
                    open_sets[i].add(self)

                def connection_lost(self, exc):
                    open_sets[i].discard(self)

            return Protocol

        acceptors = [workers.BalancedAcceptor(
            socket.socket(fileno=os.dup(listener.fileno())), workers.Loads(loads_file), i,
            factory(i), open_sets[i]) for i in range(2)]
        for a in acceptors:
            a.start()
        loop = asyncio.get_running_loop()

        async def connect():
            sock = socket.socket()
            sock.setblocking(False)
            await loop.sock_connect(sock, address)
            return sock

        async def settle(total):
            for _ in range(200):
                if sum(map(len, open_sets)) == total:
                    break
                await asyncio.sleep(0.01)

        clients = await asyncio.gather(*(connect() for _ in range(8)))
        await settle(8)
        first = sorted(map(len, open_sets))
        # worker 0's connections close: the next 4 go to it
        for protocol in list(open_sets[0]):
            protocol.transport.close()
        for _ in range(200):
            if not open_sets[0]:
                break
            await asyncio.sleep(0.01)
        for a in acceptors:
            a.update()
        more = await asyncio.gather(*(connect() for _ in range(4)))
        await settle(8)
        after = [len(s) for s in open_sets]
        for a in acceptors:
            a.close()
        for sock in clients + more:
            sock.close()
        return first, after

    try:
        first, after = asyncio.run(main())
    finally:
        listener.close()
    assert first == [4, 4]
    assert after == [4, 4]
