"""Resumable, MD5-checked downloads, against a local HTTP server."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cifarkit.data import CIFAR10, load_cifar10
from cifarkit.data.download import DEFAULT_URL, download_file
from cifarkit.errors import DataError
from data_factories import assert_same_data, make_dataset, python_archive


@dataclass
class Served:
    """What the test server sends, and what it was asked for."""

    payload: bytes
    honor_range: bool = True
    cut_after: int | None = None  # send only this many bytes, then drop the connection
    missing: bool = False  # answer 404
    ranges: list[str | None] = field(default_factory=list)
    sent: int = 0


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        served = self.server.served
        requested = self.headers.get("Range")
        served.ranges.append(requested)
        if served.missing:
            self.send_error(404)
            return
        start = 0
        if requested and served.honor_range:
            start = int(requested.removeprefix("bytes=").rstrip("-"))
            if start >= len(served.payload):
                self.send_response(416)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(served.payload) - 1}/{len(served.payload)}")
        else:
            self.send_response(200)
        body = served.payload[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if served.cut_after is not None:
            body = body[: served.cut_after]
        served.sent += len(body)  # before writing: the client may finish reading before this thread goes on
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Keep test output quiet."""


class _Server(ThreadingHTTPServer):
    served: Served


pytestmark = pytest.mark.usefixtures("isolated_env")


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[CIFAR10, bytes, str]:
    """A small cifar-10-python.tar.gz: the data set, the archive's bytes and their MD5."""
    data = make_dataset()
    path, md5 = python_archive(data, tmp_path_factory.mktemp("archive"))
    return data, path.read_bytes(), md5


@pytest.fixture
def server(archive: tuple[CIFAR10, bytes, str]) -> Iterator[tuple[str, Served]]:
    """A local HTTP server on an ephemeral port; yields its archive URL and its state."""
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.served = Served(payload=archive[1])
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}/cifar-10-python.tar.gz", httpd.served
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.fixture
def closed_port_url() -> str:
    """A URL on which nothing listens: connecting is refused at once, as when offline."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/cifar-10-python.tar.gz"


def test_default_url_is_the_official_archive() -> None:
    assert DEFAULT_URL == "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"


def test_download(server: tuple[str, Served], archive: tuple[CIFAR10, bytes, str], tmp_path: Path) -> None:
    url, served = server
    dest = tmp_path / "dl" / "cifar-10-python.tar.gz"
    assert download_file(url, dest, archive[2]) == dest
    assert dest.read_bytes() == archive[1]
    assert not Path(f"{dest}.part").exists()
    assert served.ranges == [None]


def _download_over_part(
    server: tuple[str, Served], archive: tuple[CIFAR10, bytes, str], folder: Path, part: bytes
) -> Served:
    """Download the archive into ``folder``, where a ``.part`` file holding ``part`` is left over.

    Whatever the part held, the result must be the archive; returns what the server saw.
    """
    url, served = server
    dest = folder / "cifar-10-python.tar.gz"
    Path(f"{dest}.part").write_bytes(part)
    download_file(url, dest, archive[2])
    assert dest.read_bytes() == archive[1]
    return served


def test_resume_asks_for_the_rest_only(
    server: tuple[str, Served], archive: tuple[CIFAR10, bytes, str], tmp_path: Path
) -> None:
    served = _download_over_part(server, archive, tmp_path, archive[1][:1000])
    assert served.ranges == ["bytes=1000-"] and served.sent == len(archive[1]) - 1000


def test_restarts_when_the_server_ignores_range(
    server: tuple[str, Served], archive: tuple[CIFAR10, bytes, str], tmp_path: Path
) -> None:
    server[1].honor_range = False
    served = _download_over_part(server, archive, tmp_path, b"x" * 1000)  # would corrupt the file if appended to
    assert served.ranges == ["bytes=1000-"] and served.sent == len(archive[1])


def test_restarts_when_the_part_is_too_long(
    server: tuple[str, Served], archive: tuple[CIFAR10, bytes, str], tmp_path: Path
) -> None:
    served = _download_over_part(server, archive, tmp_path, archive[1] + b"extra")
    assert served.ranges == [f"bytes={len(archive[1]) + 5}-", None]


def test_interrupted_download_resumes_next_time(
    server: tuple[str, Served], archive: tuple[CIFAR10, bytes, str], tmp_path: Path
) -> None:
    url, served = server
    dest = tmp_path / "cifar-10-python.tar.gz"
    served.cut_after = 1500
    with pytest.raises(DataError, match="could not download .*closed after 1500 of .*the download resumes"):
        download_file(url, dest, archive[2])
    assert not dest.exists()
    assert Path(f"{dest}.part").read_bytes() == archive[1][:1500]
    served.cut_after = None
    download_file(url, dest, archive[2])
    assert served.ranges == [None, "bytes=1500-"]
    assert dest.read_bytes() == archive[1]


def test_checksum_mismatch_leaves_no_file(server: tuple[str, Served], tmp_path: Path) -> None:
    url, _ = server
    dest = tmp_path / "cifar-10-python.tar.gz"
    with pytest.raises(DataError, match="expected 0{32}: it is corrupt and was deleted"):
        download_file(url, dest, "0" * 32)
    assert list(tmp_path.iterdir()) == []


def test_http_error(server: tuple[str, Served], tmp_path: Path) -> None:
    url, served = server
    served.missing = True
    with pytest.raises(DataError, match="could not download .*HTTP Error 404"):
        download_file(url, tmp_path / "f.tar.gz", "0" * 32)
    assert list(tmp_path.iterdir()) == []


def test_offline_fails_fast(closed_port_url: str, tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(DataError, match="could not download .*save it as"):
        download_file(closed_port_url, tmp_path / "f.tar.gz", "0" * 32)
    assert time.monotonic() - started < 5


def test_silent_server_times_out(tmp_path: Path) -> None:
    with socket.socket() as listener:  # accepts connections (backlog) but never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/x.tar.gz"
        started = time.monotonic()
        with pytest.raises(DataError, match="could not download .*timed out"):
            download_file(url, tmp_path / "x.tar.gz", "0" * 32, timeout=0.5)
        assert time.monotonic() - started < 5


def test_load_downloads_into_the_cache(
    server: tuple[str, Served], archive: tuple[CIFAR10, bytes, str], isolated_env: Path
) -> None:
    url, served = server
    data, payload, md5 = archive
    assert_same_data(load_cifar10(url=url, md5=md5), data)
    assert (isolated_env / "cifar-10-python.tar.gz").read_bytes() == payload
    assert_same_data(load_cifar10(download=False, md5=md5), data)  # found in the cache now
    assert served.ranges == [None]


def test_load_with_a_corrupt_download(server: tuple[str, Served], isolated_env: Path) -> None:
    url, _ = server
    with pytest.raises(DataError, match="(?s)it is corrupt and was deleted.*CIFARKIT_DATA"):
        load_cifar10(url=url, md5="f" * 32)
    assert list(isolated_env.iterdir()) == []


def test_load_offline_says_where_to_put_the_data(closed_port_url: str, isolated_env: Path) -> None:
    archive = isolated_env / "cifar-10-python.tar.gz"
    with pytest.raises(DataError) as caught:
        load_cifar10(url=closed_port_url)
    message = str(caught.value)
    assert "could not download" in message and "CIFARKIT_DATA" in message and "--data" in message
    assert str(archive) in message
    assert not archive.exists()
