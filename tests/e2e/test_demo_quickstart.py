"""A fresh clone with no token: `make run`, then the README's first request, gives a picture.

The request is read from README.md (the block after its `quick-start-request` marker) and run
as written with curl, against `make run`'s server (`tests/local_run.py`, on its own port) in an
environment with no provider settings and no AWS credentials."""

from __future__ import annotations

import base64
import io
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import httpx
import openai
import pytest
from PIL import Image

from local_run import REPO_ROOT, serve_locally

pytestmark = pytest.mark.e2e
README = REPO_ROOT / "README.md"


def quick_start_request() -> str:
    """The command the README gives to copy and paste."""
    text = README.read_text()
    found = re.search(r"<!-- quick-start-request[^>]*-->\s*```bash\n(.*?)\n```", text, re.S)
    assert found is not None, "README.md has no quick-start-request block"
    command = found.group(1).strip()
    assert command.startswith("curl ") and "\n" not in command
    return command


@pytest.mark.skipif(shutil.which("curl") is None, reason="the README's request is a curl command")
def test_the_readmes_first_request_makes_a_picture_on_a_fresh_make_run(tmp_path: Path) -> None:
    command = quick_start_request()
    assert "Authorization" not in command  # no token on a fresh clone
    with serve_locally(tmp_path) as (url, log):
        assert "http://127.0.0.1:8000" in command
        run = shlex.split(command.replace("http://127.0.0.1:8000", url))
        done = subprocess.run(run, capture_output=True, text=True, timeout=60, check=True)
        answer = json.loads(done.stdout)
        (link,) = [item["url"] for item in answer["data"]]
        assert link.startswith(f"{url}/v1/files/")
        picture = httpx.get(link, follow_redirects=True, timeout=30)
        assert picture.status_code == 200
        image = Image.open(io.BytesIO(picture.content))
        assert image.format == "JPEG" and image.size == (512, 512)
        # make run said how to try it without a token
        assert "demo provider" in log.read_text()


def test_the_openai_sdk_streams_demo_progress_then_two_different_pictures(tmp_path: Path) -> None:
    with serve_locally(tmp_path) as (url, _):
        client = openai.OpenAI(base_url=f"{url}/demo/v1", api_key="anything", max_retries=0)
        stream = client.chat.completions.create(
            model="demo/waves",
            messages=[{"role": "user", "content": "a harbour at night"}],
            stream=True,
            extra_body={"n": 2, "seed": 5, "size": "256x256"},
        )
        progress, content = "", ""
        for chunk in stream:
            delta = chunk.choices[0].delta if chunk.choices else None
            if delta is not None:
                progress += getattr(delta, "reasoning_content", None) or ""
                content += delta.content or ""
        assert "queued at Demo" in progress and "generating" in progress
        links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", content)
        assert len(links) == 2
        pictures = [httpx.get(link, follow_redirects=True, timeout=30).content for link in links]
        assert pictures[0] != pictures[1]
        # the same seed again: the same two pictures
        again = client.images.generate(
            model="demo/waves",
            prompt="a harbour at night",
            n=2,
            size="256x256",
            extra_body={"seed": 5},
            response_format="b64_json",
        )
        assert [base64.b64decode(item.b64_json or "") for item in again.data or []] == pictures
