"""Image uploads on local disk: type by magic bytes, content-addressed names.

A file is stored as `<data_dir>/uploads/<sha256>.<ext>`, so the same image uploaded twice
is one file with one URL, and a name never changes meaning (served as immutable).
The type comes from the file's first bytes, never from its name or the client's
Content-Type.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from server.errors import ApiError, validation_error

CONTENT_TYPES = {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp"}
NAME = re.compile(r"^[0-9a-f]{64}\.(png|jpg|webp)$")
CHUNK = 64 * 1024


def sniff_image(head: bytes) -> str | None:
    """Return the extension for PNG, JPEG or WebP data, or None for anything else."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpg"
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return None


def uploads_dir(data_dir: Path) -> Path:
    return data_dir / "uploads"


def upload_path(data_dir: Path, name: str) -> Path | None:
    """Return the stored file for a public name, or None when the name is not one of ours."""
    if not NAME.match(name):
        return None
    path = uploads_dir(data_dir) / name
    return path if path.is_file() else None


async def read_image_part(request: web.Request, limit: int) -> bytes:
    """Read the multipart field `file` (at most `limit` bytes) and return its content."""
    if request.content_type != "multipart/form-data":
        raise ApiError(415, "unsupported_media_type", "expected Content-Type: multipart/form-data")
    if (request.content_length or 0) > limit + 64 * 1024:
        raise ApiError(413, "payload_too_large", f"an image may be at most {limit} bytes")
    try:
        reader = await request.multipart()
        async for part in reader:
            if not isinstance(part, BodyPartReader) or part.name != "file":
                continue
            data = bytearray()
            while chunk := await part.read_chunk(CHUNK):
                data += chunk
                if len(data) > limit:
                    raise ApiError(413, "payload_too_large", f"an image may be at most {limit} bytes")
            return bytes(data)
    except (ValueError, AssertionError, RuntimeError, HttpProcessingError) as exc:
        # aiohttp's multipart reader signals a malformed body with these.
        raise validation_error(f"malformed multipart body: {exc}", file="malformed body") from None
    raise validation_error("multipart field 'file' is required", file="required")


def store_image(data_dir: Path, data: bytes) -> str:
    """Check the image type, write it once under its content hash, and return its name."""
    ext = sniff_image(data[:16])
    if ext is None:
        raise ApiError(415, "unsupported_media_type", "images must be PNG, JPEG or WebP")
    name = f"{hashlib.sha256(data).hexdigest()}.{ext}"
    folder = uploads_dir(data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    if not target.exists():
        # Write then rename: a reader never sees a half-written file under the final name.
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".upload-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, target)
    return name
