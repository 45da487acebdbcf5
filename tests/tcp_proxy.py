"""A TCP proxy in front of PostgreSQL that a test can stop, to make a real outage.

Stopped, it refuses new connections and cuts the open ones, which is what psycopg sees
when the database host goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import os

from psycopg.conninfo import conninfo_to_dict, make_conninfo


class PostgresProxy:
    def __init__(self, target_dsn: str) -> None:
        info = conninfo_to_dict(target_dsn)
        self._dsn = target_dsn
        host = str(info.get("host") or "127.0.0.1")
        port = int(info.get("port") or 5432)
        self._unix = os.path.join(host, f".s.PGSQL.{port}") if host.startswith("/") else None
        self._target = (host, port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    @property
    def dsn(self) -> str:
        return make_conninfo(self._dsn, host="127.0.0.1", port=str(self.port))

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Refuse new connections and cut the open ones."""
        if self._server is not None:
            self._server.close()
            for w in list(self._writers):
                w.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if self._unix:
                up_reader, up_writer = await asyncio.open_unix_connection(self._unix)
            else:
                up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, upstream: bool) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    if not await self.forward(data, upstream):
                        break
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer, True), pipe(up_reader, writer, False))
        self._writers -= {writer, up_writer}

    async def forward(self, data: bytes, upstream: bool) -> bool:
        """Whether to pass this chunk on (False drops it and the connection); subclasses hold."""
        return True
