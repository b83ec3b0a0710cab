"""The Files API of the Batch API (`/v1/files`), driven with the official SDK over HTTP against
the gateway (its bucket moto's S3 on loopback), and the lasting image links under the same path
that users' chat histories hold.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import pytest

from fakes.modelscope import FakeModelScope
from fakes.png import png_size

TOKEN = "ms-test-token"
OTHER = "ms-someone-else"

LINES = [
    {
        "custom_id": f"req-{i}",
        "method": "POST",
        "url": "/v1/images/generations",
        "body": {"model": "Qwen/Qwen-Image", "prompt": f"a lighthouse, take {i}"},
    }
    for i in range(3)
]
JSONL = "".join(json.dumps(line) + "\n" for line in LINES).encode()


def sdk(url: str, token: str = TOKEN, prefix: str = "") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}{prefix}/v1", api_key=token, max_retries=0)


def test_a_jsonl_file_uploaded_is_listed_read_and_deleted(gateway_url: str) -> None:
    client = sdk(gateway_url)
    created = client.files.create(file=("prompts.jsonl", JSONL), purpose="batch")
    assert created.id.startswith("file-")
    assert (created.object, created.bytes, created.filename, created.purpose) == (
        "file",
        len(JSONL),
        "prompts.jsonl",
        "batch",
    )
    assert client.files.retrieve(created.id).model_dump() == created.model_dump()
    assert client.files.content(created.id).read() == JSONL
    assert created.id in [item.id for item in client.files.list()]
    deleted = client.files.delete(created.id)
    assert (deleted.id, deleted.deleted) == (created.id, True)
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(created.id)
    assert created.id not in [item.id for item in client.files.list()]


def test_a_file_belongs_to_the_key_that_uploaded_it(gateway_url: str) -> None:
    mine = sdk(gateway_url).files.create(file=("mine.jsonl", JSONL), purpose="batch")
    other = sdk(gateway_url, OTHER)
    for look in (other.files.retrieve, other.files.content, other.files.delete):
        with pytest.raises(openai.NotFoundError) as caught:
            look(mine.id)
        assert caught.value.code == "file_not_found"
    assert mine.id not in [item.id for item in other.files.list()]
    # still there for its owner, also through a provider's prefix
    assert sdk(gateway_url, prefix="/modelscope").files.retrieve(mine.id).id == mine.id


@pytest.mark.parametrize(
    ("purpose", "content", "code"),
    [
        ("fine-tune", JSONL, "invalid_purpose"),
        ("batch", b"   \n", "empty_file"),
        ("batch", b"\xff\xfe not utf-8", "invalid_file"),
    ],
)
def test_a_file_that_cannot_be_a_batch_input_is_a_400(
    gateway_url: str, purpose: str, content: bytes, code: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(gateway_url).files.create(file=("x.jsonl", content), purpose=purpose)  # type: ignore[arg-type]
    assert caught.value.code == code


def test_files_need_a_key_and_stay_under_the_body_limit(gateway: Callable[..., str]) -> None:
    url = gateway(max_body_bytes=4096)
    answer = httpx.post(f"{url}/v1/files", files={"file": ("a.jsonl", JSONL)}, timeout=30)
    assert answer.status_code == 401
    with pytest.raises(openai.APIStatusError) as caught:
        sdk(url).files.create(file=("big.jsonl", JSONL * 100), purpose="batch")
    assert caught.value.status_code == 413


def test_image_links_under_v1_files_still_serve_their_image(
    gateway_url: str, fake_ms: FakeModelScope
) -> None:
    # Given an image link handed out before the Files API existed (now in a chat history)
    client = sdk(gateway_url)
    result = client.images.generate(model="Qwen/Qwen-Image", prompt="a red square", size="96x64")
    link = str((result.data or [])[0].url)
    assert "/v1/files/" in link
    # And files of the Batch API stored beside it
    client.files.create(file=("prompts.jsonl", JSONL), purpose="batch")
    # Then the link still answers with the image, with no key at all, GET and HEAD
    answer = httpx.get(link, follow_redirects=True, timeout=30)
    assert answer.status_code == 200 and png_size(answer.content) == (96, 64)
    assert httpx.head(link, timeout=30).status_code == 307
    # And an unknown image name is the 404 it always was
    assert httpx.get(link.replace(".png", "x.png"), timeout=30).status_code == 404


def big_file(lines: int) -> bytes:
    body = {"model": "Qwen/Qwen-Image", "prompt": "a product shot on a white table, soft light"}
    return "".join(
        json.dumps(
            {"custom_id": f"p-{i}", "method": "POST", "url": "/v1/images/generations", "body": body}
        )
        + "\n"
        for i in range(lines)
    ).encode()


def test_a_file_larger_than_a_request_body_arrives_through_the_uploads_api(
    gateway: Callable[..., str], tmp_path: Path
) -> None:
    # Given a gateway whose request bodies stop at 16 KiB and a 60 KiB batch file
    url = gateway(max_body_bytes=16384)
    content = big_file(400)
    assert len(content) > 4 * 16384
    path = tmp_path / "big.jsonl"
    path.write_bytes(content)
    client = sdk(url)
    with pytest.raises(openai.APIStatusError):  # too big for one request
        client.files.create(file=("big.jsonl", content), purpose="batch")
    # When the SDK sends it in parts
    upload = client.uploads.upload_file_chunked(
        file=path, mime_type="application/jsonl", purpose="batch", part_size=12000
    )
    # Then it is one file, whole
    assert upload.status == "completed" and upload.file is not None
    assert upload.file.bytes == len(content) and upload.file.filename == "big.jsonl"
    assert client.files.content(upload.file.id).read() == content
    assert upload.file.id in [item.id for item in client.files.list()]


def test_an_upload_whose_parts_do_not_add_up_is_refused_and_stays_the_owners(
    gateway_url: str,
) -> None:
    client = sdk(gateway_url)
    upload = client.uploads.create(
        bytes=100, filename="x.jsonl", mime_type="application/jsonl", purpose="batch"
    )
    part = client.uploads.parts.create(upload.id, data=b"{}\n")
    with pytest.raises(openai.BadRequestError) as caught:
        client.uploads.complete(upload.id, part_ids=[part.id])
    assert caught.value.code == "upload_size_mismatch"
    with pytest.raises(openai.NotFoundError):
        sdk(gateway_url, OTHER).uploads.parts.create(upload.id, data=b"{}\n")
    assert client.uploads.cancel(upload.id).status == "cancelled"
    with pytest.raises(openai.BadRequestError):
        client.uploads.parts.create(upload.id, data=b"{}\n")


def test_anonymous_demo_callers_keep_no_files_another_could_list(
    gateway: Callable[..., str],
) -> None:
    # Given the demo on, which serves callers without a token (none tells them apart)
    url = gateway(demo_provider="enabled")

    # When a caller without a token uploads a file, or lists the files, on the demo
    upload = httpx.post(f"{url}/demo/v1/files", files={"file": ("a.jsonl", JSONL)}, timeout=30)
    listing = httpx.get(f"{url}/demo/v1/files", timeout=30)

    # Then both are 401s naming the way out (any token), and nothing was kept
    for answer in (upload, listing):
        assert answer.status_code == 401
        assert answer.json()["error"]["code"] == "missing_api_key"
        assert "the demo takes any" in answer.json()["error"]["message"]
    # while a demo caller with a token of their own keeps files the next one does not see
    mine = sdk(url, "anything-a", "/demo").files.create(file=("a.jsonl", JSONL), purpose="batch")
    assert mine.id in [item.id for item in sdk(url, "anything-a", "/demo").files.list()]
    assert mine.id not in [item.id for item in sdk(url, "anything-b", "/demo").files.list()]
