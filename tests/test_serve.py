"""The web API through an in-process client: answers, every bad input's status and message, the API key."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import threading

import httpx2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from cifarkit.cli import main
from cifarkit.data.images import image_to_array
from cifarkit.errors import CifarkitError
from cifarkit.inference import predict_proba
from cifarkit.recipes import get_recipe
from cifarkit.runs import load_model
from cifarkit.serve.app import create_app
from cifarkit.serve.backends import Classifier, load_classifier
from cifarkit.serve.security import check_bind, is_loopback
from cifarkit.serve.settings import ServeSettings
from cifarkit.train import train
from stand_in import stand_in_classifier

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from conftest import synthetic_cifar

    return train(
        get_recipe("seed_cnn3").replace(epochs=1, bf16=False, tta="flip"),
        synthetic_cifar(),
        tmp_path_factory.mktemp("runs") / "tiny",
        progress=False,
    )


@pytest.fixture(scope="module")
def classifier(run) -> Classifier:
    return load_classifier(run, device="cpu")


def client(classifier: Classifier, **settings) -> TestClient:
    return TestClient(create_app(classifier, ServeSettings(**settings)))


@pytest.fixture(scope="module")
def api(classifier):
    with client(classifier) as c:
        yield c


def encode(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def photo(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels).convert(mode)


def assert_error(response: httpx2.Response, status: int, *words: str) -> str:
    """The response is ``status`` with a JSON ``detail`` naming the problem, and no traceback."""
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and "Traceback" not in response.text
    for word in words:
        assert word in detail, detail
    return detail


@pytest.mark.parametrize(
    ("fmt", "image"),
    [
        ("PNG", photo(32, 32)),
        ("JPEG", photo(640, 480)),
        ("WEBP", photo(45, 90)),
        ("GIF", photo(100, 60, "P")),
        ("BMP", photo(7, 5)),
        ("PNG", photo(64, 64, "RGBA")),
        ("TIFF", photo(33, 31, "L")),
    ],
)
def test_predicts_images_of_several_formats_and_sizes(api, run, fmt, image):
    data = encode(image, fmt)
    response = api.post("/v1/predict", files={"file": (f"x.{fmt.lower()}", data)}, data={"top_k": "10"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"]["run"] == "tiny" and body["model"]["recipe"] == "seed_cnn3"
    [result] = body["results"]
    assert result["image"] == f"x.{fmt.lower()}"
    probs = [p["probability"] for p in result["predictions"]]
    assert sorted(p["class"] for p in result["predictions"]) == sorted(CLASSES)
    assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1, abs=1e-5)
    # The answer is the model's: the run's TTA (flip) on the image as `cifarkit predict` decodes it.
    expected = predict_proba(load_model(run), np.stack([image_to_array(data)]), tta="flip", device="cpu")[0]
    got = {p["class"]: p["probability"] for p in result["predictions"]}
    np.testing.assert_allclose([got[c] for c in CLASSES], expected, atol=1e-5)


def test_batch_keeps_order_and_top_k(api):
    files = [("file", (f"img{i}.png", encode(photo(40, 40, seed=i), "PNG"))) for i in range(3)]
    results = api.post("/v1/predict", files=files, data={"top_k": "2"}).json()["results"]
    assert [r["image"] for r in results] == ["img0.png", "img1.png", "img2.png"]
    assert all(len(r["predictions"]) == 2 for r in results)
    single = api.post("/v1/predict", files=[files[1]], data={"top_k": "2"}).json()["results"][0]
    # the same image alone or in a batch: same classes, probabilities up to float rounding of the batch's kernels
    assert [p["class"] for p in single["predictions"]] == [p["class"] for p in results[1]["predictions"]]
    assert [p["probability"] for p in single["predictions"]] == pytest.approx(
        [p["probability"] for p in results[1]["predictions"]], abs=1e-6
    )
    assert len(api.post("/v1/predict", files=[files[0]]).json()["results"][0]["predictions"]) == 3  # default


@pytest.mark.parametrize("top_k", ["0", "11", "-1"])
def test_top_k_out_of_range(api, top_k):
    response = api.post("/v1/predict", files={"file": ("a.png", encode(photo(8, 8), "PNG"))}, data={"top_k": top_k})
    assert_error(response, 422, "top_k")


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG file whose header declares ``width`` x ``height`` pixels (a decompression bomb)."""
    return encode(Image.new("1", (width, height)), "PNG")


@pytest.mark.parametrize(
    ("name", "data", "status", "words"),
    [
        ("notes.txt", b"this is not an image", 400, ["notes.txt", "not a readable image"]),
        ("cut.png", encode(photo(64, 64), "PNG")[:200], 400, ["cut.png"]),
        ("empty.png", b"", 400, ["empty.png", "empty"]),
        ("bomb.png", png_declaring(8000, 6000), 400, ["bomb.png", "megapixels"]),
    ],
)
def test_unusable_files_are_4xx_naming_the_file(api, name, data, status, words):
    assert_error(api.post("/v1/predict", files={"file": (name, data)}), status, *words)


def test_one_bad_file_refuses_the_batch_and_names_it(api):
    files = [("file", ("good.png", encode(photo(8, 8), "PNG"))), ("file", ("bad.jpg", b"\xff\xd8 nope"))]
    assert_error(api.post("/v1/predict", files=files), 400, "bad.jpg")


def test_missing_file_field(api):
    assert_error(api.post("/v1/predict", data={"top_k": "3"}), 422, "file")
    assert_error(api.post("/v1/predict", files={"image": ("a.png", encode(photo(8, 8), "PNG"))}), 422, "file")


def test_too_many_files(classifier):
    files = [("file", (f"{i}.png", encode(photo(8, 8), "PNG"))) for i in range(3)]
    with client(classifier, max_files=2) as c:
        assert_error(c.post("/v1/predict", files=files), 400, "Too many files")
        assert c.post("/v1/predict", files=files[:2]).status_code == 200


def test_upload_over_the_limit_is_413_declared_or_streamed(classifier):
    big = encode(photo(300, 300), "BMP")  # 270 KB
    with client(classifier, max_upload_mb=0.1) as c:
        assert_error(c.post("/v1/predict", files={"file": ("big.bmp", big)}), 413, "0.1 MB")
        # Without Content-Length (chunked) the body is counted as it arrives.
        body, content_type = multipart_body(big)
        streamed = c.post(
            "/v1/predict",
            content=iter([body[i : i + 4096] for i in range(0, len(body), 4096)]),
            headers={"Content-Type": content_type},
        )
        assert_error(streamed, 413, "0.1 MB")
        assert c.post("/v1/predict", files={"file": ("small.png", encode(photo(8, 8), "PNG"))}).status_code == 200


def multipart_body(data: bytes) -> tuple[bytes, str]:
    """A multipart form uploading ``data`` as one file: its bytes and its Content-Type header."""
    request = httpx2.Request("POST", "http://x/", files={"file": ("big.bmp", data)})
    return request.read(), request.headers["Content-Type"]


def test_pixel_limit_is_configurable(classifier):
    with client(classifier, max_pixels=100 * 100) as c:
        assert c.post("/v1/predict", files={"file": ("ok.png", encode(photo(100, 100), "PNG"))}).status_code == 200
        assert_error(
            c.post("/v1/predict", files={"file": ("big.png", encode(photo(101, 100), "PNG"))}),
            400,
            "big.png",
            "decompression bomb",
        )


def test_api_key(classifier):
    image = {"file": ("a.png", encode(photo(8, 8), "PNG"))}
    with client(classifier, api_key="s3cret-key") as c:
        assert c.get("/health").status_code == 200
        assert c.get("/").status_code == 200  # the page asks for the key itself
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret-key"}):
            response = c.get("/v1/model", headers=headers)
            assert_error(response, 401, "API key")
            assert response.headers["WWW-Authenticate"] == "Bearer"
            assert_error(c.post("/v1/predict", files=image, headers=headers), 401, "API key")
        good = {"Authorization": "Bearer s3cret-key"}
        assert c.get("/v1/model", headers=good).status_code == 200
        assert c.post("/v1/predict", files=image, headers=good).status_code == 200
    with client(classifier) as c:  # no key configured: open
        assert c.get("/v1/model").status_code == 200


def test_binding_beyond_loopback_needs_a_key():
    assert is_loopback("127.0.0.1") and is_loopback("127.8.9.10") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("example.org")
    check_bind("127.0.0.1", None)
    check_bind("0.0.0.0", "key")
    with pytest.raises(CifarkitError, match="--api-key"):
        check_bind("0.0.0.0", None)


def test_cli_refuses_a_public_bind_without_key(run, capsys, monkeypatch):
    monkeypatch.delenv("CIFARKIT_API_KEY", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", str(run), "--host", "0.0.0.0"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("cifarkit: error:") and "--api-key" in err


def test_settings_are_checked():
    with pytest.raises(CifarkitError, match="--max-files"):
        ServeSettings(max_files=10, max_queue=5)
    with pytest.raises(CifarkitError, match="--max-batch"):
        ServeSettings(max_batch=0)


def test_model_info_health_docs_and_page(api, run):
    info = api.get("/v1/model").json()
    metrics = json.loads((run / "metrics.json").read_text())
    assert info["classes"] == CLASSES and info["input_size"] == [32, 32]
    assert info["parameters"] == metrics["params"] == 1_084_234
    assert info["test_acc"] == metrics.get("test_acc") and info["tta"] == "flip"
    assert info["backend"] == "torch" and info["precision"] == "float32" and info["device"] == "cpu"
    assert info["limits"]["max_files"] == ServeSettings().max_files
    assert api.get("/health").json() == {"status": "ok"}
    assert "/v1/predict" in api.get("/openapi.json").json()["paths"] and api.get("/docs").status_code == 200
    page = api.get("/")
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    assert 'type="file"' in page.text and "http://" not in page.text and "https://" not in page.text
    assert_error(api.get("/etc/passwd"), 404)
    assert_error(api.get("/v1/predict"), 405)


def test_one_log_line_per_request(api, caplog):
    with caplog.at_level(logging.INFO, logger="cifarkit.serve"):
        api.get("/health")
        api.post("/v1/predict", files={"file": ("x.txt", b"text")})
    lines = [r.getMessage() for r in caplog.records if r.name == "cifarkit.serve"]
    assert len(lines) == 2
    assert lines[0].startswith("GET /health 200 ") and lines[0].endswith(" ms")
    assert lines[1].startswith("POST /v1/predict 400 ")


def gated_classifier(
    armed: threading.Event, entered: threading.Event, release: threading.Event, batches: list[int]
) -> Classifier:
    """A stand-in model that, once ``armed``, blocks in its forward pass until ``release`` is set."""

    def predict(images: np.ndarray) -> np.ndarray:
        if armed.is_set():
            batches.append(len(images))
            entered.set()
            release.wait(timeout=30)
        return np.full((len(images), 10), 0.1, dtype=np.float32)

    return stand_in_classifier(predict, run="gated")


def test_full_queue_is_503_with_retry_after_and_waiting_requests_share_a_batch():
    armed, entered, release, batches = threading.Event(), threading.Event(), threading.Event(), []
    app = create_app(gated_classifier(armed, entered, release, batches), ServeSettings(max_queue=3, max_files=2))
    image = ("file", ("a.png", encode(photo(8, 8), "PNG")))

    async def scenario() -> list[httpx2.Response]:
        transport = httpx2.ASGITransport(app=app)
        async with app.router.lifespan_context(app), httpx2.AsyncClient(transport=transport, base_url="http://t") as c:
            armed.set()  # after the start-up warm-up pass
            first = asyncio.create_task(c.post("/v1/predict", files=[image]))
            await asyncio.to_thread(entered.wait, 30)  # the model is busy with the first request
            queued = [asyncio.create_task(c.post("/v1/predict", files=files)) for files in ([image, image], [image])]
            while app.state.batcher.waiting < 3:  # both are in the queue, which is now full
                await asyncio.sleep(0.01)
            refused = await c.post("/v1/predict", files=[image])
            release.set()
            return [refused, await first, *[await task for task in queued]]

    refused, *answered = asyncio.run(scenario())
    assert_error(refused, 503, "busy")
    assert refused.headers["Retry-After"] == "1"
    assert [r.status_code for r in answered] == [200, 200, 200]
    assert [len(r.json()["results"]) for r in answered] == [1, 2, 1]
    assert batches == [1, 3]  # the two waiting requests ran as one forward pass
