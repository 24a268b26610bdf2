"""A delaying TCP proxy on loopback, to make a real server slow (or deaf) for its clients.

Kafka clients connect to the address the broker advertises in its metadata, not to the
bootstrap address they were given, so the proxy only sits in the path when the broker
advertises the proxy's port (deploy/kafka/kafka.py `start_broker(advertised_port=...)`).

The proxy runs its own event loop in a thread: it keeps forwarding while the test blocks (a
broker start, a subprocess wait) and its delay can be changed from any thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

CHUNK_BYTES = 64 * 1024
_EOF = b""


class DelayProxy:
    """Forwards 127.0.0.1:`port` to 127.0.0.1:`target_port`, holding every chunk `delay_ms`."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.delay_ms = 0.0  # per direction; read as each chunk arrives, so it can change live
        self.port = 0
        self.connections = 0
        self.refused = 0  # client connections closed because the target did not accept
        self.forwarded_bytes = 0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> DelayProxy:
        """Bind a free loopback port (`port`) and start forwarding."""
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._listen(), self._loop)
        future.result(timeout=10)
        return self

    def stop(self) -> None:
        """Close the listener and every connection, end the thread."""
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            target_r, target_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            # The broker is down: the client sees its connection closed, as a dead host's
            # connection would be, and retries on its own.
            self.refused += 1
            client_w.close()
            return
        for reader, writer in ((client_r, target_w), (target_r, client_w)):
            task = asyncio.create_task(self._pipe(reader, writer))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Read chunks as they come; write each one once it is `delay_ms` old, in order."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        sender = asyncio.create_task(self._send_late(queue, writer))
        try:
            while True:
                chunk = await reader.read(CHUNK_BYTES)
                queue.put_nowait((time.monotonic() + self.delay_ms / 1000, chunk))
                if chunk == _EOF:
                    break
            await sender
        except (OSError, asyncio.CancelledError):
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await sender
        finally:
            writer.close()

    async def _send_late(
        self, queue: asyncio.Queue[tuple[float, bytes]], writer: asyncio.StreamWriter
    ) -> None:
        while True:
            due_s, chunk = await queue.get()
            await asyncio.sleep(max(0.0, due_s - time.monotonic()))
            if chunk == _EOF:
                return
            writer.write(chunk)
            await writer.drain()
            self.forwarded_bytes += len(chunk)
