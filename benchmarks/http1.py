"""A lean HTTP/1.1 client for load generation: keep-alive connections, JSON POSTs.

The load generator shares the machine's two cores with the server and PostgreSQL it
measures. aiohttp's client spends about 180 µs of CPU per request (a quarter of a core
at 1,500 requests/s); this one writes each request as one buffer and reads the status
line, the headers and a Content-Length body from asyncio streams, for a fraction of it.
It knows only what our server answers with: no chunked bodies, no redirects, no TLS.
"""

from __future__ import annotations

import asyncio
import urllib.parse


class Http1Pool:
    """Up to `limit` keep-alive connections to one host; a request waits for a free one."""

    def __init__(self, url: str, limit: int) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"expected an http:// URL, got {url!r}")
        self.host, self.port = parts.hostname, parts.port or 80
        self.limit = limit
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._opened = 0
        self._freed = asyncio.Condition()

    async def post_json(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        """POST `body` (JSON) to `path`; return (status, response body)."""
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        request = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{head}\r\n"
        ).encode() + body
        reader, writer = await self._take()
        try:
            writer.write(request)
            status_line = await reader.readline()
            status = int(status_line.split(b" ", 2)[1])
            length, close = 0, False
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection" and value.strip().lower() == b"close":
                    close = True
            data = await reader.readexactly(length)
        except BaseException:
            writer.close()
            self._opened -= 1
            raise
        if close:
            writer.close()
            self._opened -= 1
        else:
            self._idle.append((reader, writer))
        async with self._freed:
            self._freed.notify()
        return status, data

    async def close(self) -> None:
        for _, writer in self._idle:
            writer.close()
        self._idle.clear()

    async def _take(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        while True:
            if self._idle:
                return self._idle.pop()
            if self._opened < self.limit:
                self._opened += 1
                try:
                    return await asyncio.open_connection(self.host, self.port)
                except BaseException:
                    self._opened -= 1
                    raise
            async with self._freed:
                await self._freed.wait()
