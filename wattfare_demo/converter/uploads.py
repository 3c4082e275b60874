"""Uploads stay in memory: werkzeug would spill any upload over 500 KB to a temporary file.

A visitor's document must never be written to disk, so the converter's blueprint gives
the app a request class whose file streams are plain in-memory buffers
(`Request._get_file_stream` is werkzeug's documented hook for that). Memory stays
bounded by MAX_CONTENT_LENGTH (wattfare_demo/__init__.py).
"""

from __future__ import annotations

import io
from typing import IO

from flask import Request

__all__ = ["InMemoryUploadsRequest"]


class InMemoryUploadsRequest(Request):
    def _get_file_stream(
        self,
        total_content_length: int | None,
        content_type: str | None,
        filename: str | None = None,
        content_length: int | None = None,
    ) -> IO[bytes]:
        return io.BytesIO()
