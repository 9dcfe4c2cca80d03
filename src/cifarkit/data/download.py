"""Download a file resumably and MD5-checked, for the official CIFAR-10 archive.

Bytes go to ``<dest>.part``, which the next call continues with an HTTP Range request; only a file whose MD5
matches is renamed to ``dest``, so ``dest`` is either absent or complete.
"""

from __future__ import annotations

import http.client
import os
import urllib.error
import urllib.request
from pathlib import Path

from cifarkit.data.sources import file_md5
from cifarkit.errors import DataError
from cifarkit.progress import progress_bar

DEFAULT_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
DEFAULT_TIMEOUT = 10.0
"""Seconds to wait for a connection or for the next bytes: offline machines fail fast."""
CHUNK_SIZE = 1 << 20


def download_file(url: str, dest: str | os.PathLike[str], md5: str, *, timeout: float = DEFAULT_TIMEOUT) -> Path:
    """Download ``url`` to ``dest`` (returned), resuming a partial ``dest.part``, and verify its MD5.

    A network failure keeps the part file for the next call; an MD5 mismatch deletes it.
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    try:
        _fetch(url, part, timeout)  # creates dest's folder only once the server answers: offline, nothing is made
    except (OSError, http.client.HTTPException) as exc:  # URLError is an OSError
        reason = " ".join(str(exc).split())  # one line, whatever the library put in its message
        raise DataError(
            f"could not download {url} ({reason}). Check the network and try again (the download "
            f"resumes), or download the file yourself and save it as {dest}."
        ) from exc
    digest = file_md5(part)
    if digest != md5.lower():
        part.unlink()
        raise DataError(
            f"the file downloaded from {url} has MD5 {digest}, expected {md5}: it is corrupt "
            f"and was deleted. Try again, or download the file yourself and save it as {dest}."
        )
    os.replace(part, dest)
    return dest


def _fetch(url: str, part: Path, timeout: float) -> None:
    """Write the whole of ``url`` to ``part``, appending to what is there when the server allows."""
    offset = part.stat().st_size if part.exists() else 0
    try:
        response = _request(url, offset, timeout)
    except urllib.error.HTTPError as exc:
        if exc.code != 416 or not offset:  # 416: the part is as long as the file, or longer
            raise
        exc.close()
        offset = 0
        response = _request(url, offset, timeout)
    with response:
        if response.status != 206:  # the server sent the whole file: start again
            offset = 0
        part.parent.mkdir(parents=True, exist_ok=True)
        expected = int(response.headers.get("Content-Length") or -1)
        received = 0
        with (
            part.open("ab" if offset else "wb") as out,
            progress_bar(
                total=offset + expected if expected >= 0 else None,
                initial=offset,
                desc=part.name,
                unit="B",
                unit_scale=True,
            ) as progress,
        ):
            while chunk := response.read(CHUNK_SIZE):
                out.write(chunk)
                received += len(chunk)
                progress.update(len(chunk))
    if received < expected:  # http.client returns a short body, without raising, when the peer hangs up
        raise ConnectionError(f"the connection closed after {offset + received} of {offset + expected} bytes")


def _request(url: str, offset: int, timeout: float) -> http.client.HTTPResponse:
    """GET ``url``, asking for the bytes from ``offset`` on when it is not 0."""
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
