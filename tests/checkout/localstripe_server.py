"""Run localstripe on 127.0.0.1 only, on a free port printed on stdout.

localstripe's own CLI binds every interface ('::') and pickles its store into
/tmp after every write; tests need neither, so this starts its app directly.
"""

from __future__ import annotations

import socket
import sys

from aiohttp import web
from localstripe import resources

resources.Store.dump_to_disk = lambda self: None  # type: ignore[method-assign]

from localstripe.server import app  # noqa: E402 - after the patch above


def main() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    print(sock.getsockname()[1], flush=True)
    web.run_app(app, sock=sock, print=None, access_log=None)


if __name__ == "__main__":
    sys.exit(main())
