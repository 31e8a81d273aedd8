"""The OpenAI Images API, driven by the official `openai` client against a server started with an API key:
images in both response formats (`url`s fetched from the server's own expiring store), the served model,
errors in OpenAI's shape, a wrong key refused on every route and the page; and the url store's bounds."""

import base64
import io
import json

import pytest
from PIL import Image

from dalle_mini_pt.app.image_store import ImageStore
from dalle_mini_pt.png_metadata import read_png_text

KEY = "test-key-0123"


def test_the_url_store_expires_images_and_keeps_to_its_bytes():
    now = [0.0]
    store = ImageStore(max_bytes=10, ttl=60, clock=lambda: now[0])
    first = store.put(b"12345")
    second = store.put(b"67890")
    assert store.get(first) == b"12345" and store.bytes == 10
    third = store.put(b"abc")  # over 10 bytes: the oldest goes
    assert store.get(first) is None and store.get(second) == b"67890" and store.get(third) == b"abc"
    now[0] = 61.0
    assert store.get(second) is None and store.get(third) is None and len(store) == 0 and store.bytes == 0
    with pytest.raises(ValueError, match="over the url store"):
        store.put(b"x" * 11)


@pytest.fixture(scope="module")
def server(tiny_data, tmp_path_factory):
    pytest.importorskip("gradio", reason="the demo needs the [demo] extra: pip install -e .[demo]")
    from demo_server import Server, save_tiny_pipeline

    pipeline = save_tiny_pipeline(tiny_data / "tokenizer", tmp_path_factory.mktemp("openai") / "pipeline")
    s = Server(pipeline, "--api-key", KEY, "--batch-images", "8", "--batch-wait", "0", key=KEY)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    openai = pytest.importorskip("openai", reason="the tests' dev extra holds the openai client")
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=300)


def png_of(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


@pytest.mark.slow
def test_the_openai_client_gets_images_in_both_formats(server, client):
    import httpx

    answer = client.images.generate(prompt="a red square", n=2, size="32x32", response_format="b64_json",
                                    model="dalle-mini-pt", user="tester")
    assert len(answer.data) == 2 and answer.created > 0
    images = [png_of(base64.b64decode(d.b64_json)) for d in answer.data]
    assert all(i.size == (32, 32) for i in images)
    text = read_png_text(base64.b64decode(answer.data[0].b64_json))
    assert text["prompt"] == "a red square" and json.loads(text["settings"])["num_images"] == 2

    answer = client.images.generate(prompt="a blue circle")  # OpenAI's defaults: n=1, a url
    (item,) = answer.data
    assert item.url.startswith(server.url + "/v1/images/files/")
    fetched = httpx.get(item.url, timeout=30)  # no key: the unguessable, expiring URL is the capability
    assert fetched.status_code == 200 and fetched.headers["content-type"] == "image/png"
    assert png_of(fetched.content).size == (32, 32)
    assert read_png_text(fetched.content)["prompt"] == "a blue circle"
    missing = httpx.get(server.url + "/v1/images/files/not-a-token.png", timeout=30)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


@pytest.mark.slow
def test_models_names_the_served_pipeline(client):
    assert [m.id for m in client.models.list().data] == ["dalle-mini-pt"]
    assert client.models.retrieve("dalle-mini-pt").owned_by == "dalle-mini-pt"


@pytest.mark.slow
@pytest.mark.parametrize("kwargs, error, param, words", [
    ({"size": "1024x1024"}, "BadRequestError", "size", "it makes 32x32 images"),
    ({"n": 99}, "BadRequestError", "n", "between 1 and 8"),
    ({"response_format": "webp"}, "BadRequestError", "response_format", "b64_json"),
    ({"model": "dall-e-3"}, "NotFoundError", "model", "serves 'dalle-mini-pt'"),
    ({"extra_body": {"style": "vivid"}}, "BadRequestError", "style", "unknown field 'style'"),
])
def test_errors_come_in_openais_shape(client, kwargs, error, param, words):
    import openai

    with pytest.raises(getattr(openai, error)) as refused:
        client.images.generate(prompt="a red square", **kwargs)
    assert refused.value.param == param and words in refused.value.message, refused.value.body


@pytest.mark.slow
def test_a_wrong_key_gets_401_on_every_route_and_the_page(server):
    import httpx
    import openai

    wrong = openai.OpenAI(base_url=server.url + "/v1", api_key="not-the-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as refused:
        wrong.images.generate(prompt="a red square")
    assert refused.value.status_code == 401 and refused.value.code == "invalid_api_key"
    for method, path in [("POST", "/api/generate"), ("GET", "/metrics"), ("GET", "/"),
                         ("GET", "/gradio_api/info"), ("GET", "/v1/models")]:
        answer = httpx.request(method, server.url + path, json={} if method == "POST" else None, timeout=30)
        assert answer.status_code == 401, (path, answer.status_code)
        assert any(h.startswith("Basic") for h in answer.headers.get_list("www-authenticate"))
    assert httpx.get(server.url + "/health", timeout=30).status_code == 200  # liveness stays open
    # a browser answers the Basic challenge with any user name and the key as password
    assert httpx.get(server.url + "/", auth=("anyone", KEY), timeout=30).status_code == 200
    assert httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200


@pytest.mark.slow
def test_the_page_works_with_the_key(server):
    from gradio_client import Client

    page = Client(server.url, verbose=False, headers={"Authorization": f"Bearer {KEY}"})
    gallery, status, files = page.predict("a green cross", 1, 4, 8, 1.0, 1.0, 3.0, None, 0,
                                          api_name="/generate")
    assert "seed **4**" in status and len(gallery) == 1 and read_png_text(files[0])["seed"] == "4"
