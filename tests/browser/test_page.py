"""The page (`GET /`) in headless Chromium against `make run`'s server: it loads under its
Content-Security-Policy without console errors, makes pictures with the demo provider and with
a (fake) ModelScope while showing progress, keeps a gallery across a reload, edits from a
result, compares models side by side, shows a gateway key's usage, writes the request as code
without the key, and never reads a prompt as markup. The README's screenshots come from here."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
from browser.conftest import Console, Served

from fakes.modelscope import FakeModelScope

Page = tuple[Any, Console]


def open_page(page: Any, served: Served) -> None:
    page.goto(served.url + "/")
    page.wait_for_selector("#model-list input")


def generate(page: Any, *, runs: int = 1) -> None:
    """Press Generate and wait for every run to end."""
    page.click("#generate")
    ended = "n => document.querySelectorAll('.run .progress.done, .run .error:not(:empty)')"
    page.wait_for_function(ended + ".length >= n", arg=runs)


def loaded_images(page: Any, selector: str) -> list[int]:
    """The natural widths of the images under `selector` once loaded (0: broken)."""
    page.wait_for_function(
        "s => [...document.querySelectorAll(s)].every(i => i.complete)", arg=selector
    )
    widths: list[int] = page.eval_on_selector_all(selector, "all => all.map(i => i.naturalWidth)")
    return widths


def test_the_page_loads_under_its_policy_without_console_errors(page: Page, served: Served) -> None:
    tab, console = page
    answer = tab.goto(served.url + "/")
    policy = answer.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    tab.wait_for_selector("#model-list input")
    providers = tab.eval_on_selector_all("#provider option", "all => all.map(o => o.value)")
    assert providers[0] == "demo" and "modelscope" in providers
    models = tab.eval_on_selector_all("#model-list input", "all => all.map(i => i.value)")
    assert models == ["demo/shapes", "demo/waves", "demo/edit"]
    assert console.problems() == []


def test_a_demo_picture_with_progress_while_it_is_made(
    page: Page, served: Served, screenshots: Path
) -> None:
    tab, console = page
    open_page(tab, served)
    tab.fill("#prompt", "a lighthouse on a cliff at dusk")
    tab.select_option("#size", "512x512")
    tab.fill("#seed", "42")
    tab.click("#generate")
    # progress words arrive while the task runs, before any picture
    tab.wait_for_selector(".run .steps li:has-text('generating')")
    assert tab.locator(".run figure").count() == 0
    tab.wait_for_selector(".run .progress.done")
    assert loaded_images(tab, ".run figure img") == [512]
    steps = tab.eval_on_selector_all(".run .steps li", "all => all.map(li => li.textContent)")
    assert any(step.startswith("queued at Demo") for step in steps)
    assert any(step.startswith("generating") for step in steps)
    tab.screenshot(path=str(screenshots / "page.png"), full_page=True)
    assert (screenshots / "page.png").stat().st_size > 0
    assert console.problems() == []


def test_one_prompt_on_two_models_side_by_side(
    page: Page, served: Served, screenshots: Path
) -> None:
    tab, _ = page
    open_page(tab, served)
    tab.check("#model-list input[value='demo/waves']")
    tab.fill("#prompt", "two moons over a quiet sea")
    tab.select_option("#size", "256x256")
    tab.fill("#seed", "7")
    generate(tab, runs=2)
    headings = tab.eval_on_selector_all(".run h3", "all => all.map(h => h.textContent)")
    assert headings == ["demo · demo/shapes", "demo · demo/waves"]
    assert loaded_images(tab, ".run figure img") == [256, 256]
    sources = tab.eval_on_selector_all(".run figure img", "all => all.map(i => i.src)")
    assert sources[0] != sources[1]
    tab.screenshot(path=str(screenshots / "page-compare.png"), full_page=False)


def test_a_picture_through_modelscope_with_the_clients_token(
    page: Page, served: Served, fake_modelscope: FakeModelScope
) -> None:
    tab, console = page
    open_page(tab, served)
    tab.fill("#key", "ms-test-token")
    tab.select_option("#provider", "modelscope")
    tab.wait_for_selector("#model-list input[value='Qwen/Qwen-Image']")
    tab.fill("#prompt", "a paper boat on a pond")
    submitted = len(fake_modelscope.submissions)
    tab.click("#generate")
    tab.wait_for_selector(".run .steps li:has-text('generating')")
    tab.wait_for_selector(".run .progress.done")
    assert all(width > 0 for width in loaded_images(tab, ".run figure img"))
    assert fake_modelscope.submissions[submitted]["body"]["prompt"] == "a paper boat on a pond"
    # the key stays in this browser: the request as code names a variable, never the token
    for lang in ("curl", "python", "javascript"):
        tab.click(f".tab[data-lang='{lang}']")
        code = tab.text_content("#snippet")
        assert "ms-test-token" not in code and "IMAGEGW_KEY" in code
        assert "modelscope/v1" in code and "Qwen/Qwen-Image" in code
    assert console.problems() == []


def test_the_gallery_survives_a_reload(page: Page, served: Served) -> None:
    tab, _ = page
    open_page(tab, served)
    tab.fill("#prompt", "a cabin in the snow")
    tab.select_option("#size", "256x256")
    generate(tab)
    made = tab.eval_on_selector_all(".run figure img", "all => all.map(i => i.src)")
    tab.reload()
    tab.wait_for_selector("#gallery figure img")
    kept = tab.eval_on_selector_all("#gallery figure img", "all => all.map(i => i.src)")
    assert kept == made
    assert loaded_images(tab, "#gallery figure img") == [256]
    caption = tab.text_content("#gallery figcaption")
    assert caption == "demo/shapes · a cabin in the snow"


def test_editing_continues_from_a_result(page: Page, served: Served) -> None:
    tab, console = page
    open_page(tab, served)
    tab.fill("#prompt", "a red barn")
    tab.select_option("#size", "256x256")
    generate(tab)
    first = tab.get_attribute(".run figure img", "src")
    tab.click(".run figure .edit-this")
    assert tab.get_attribute("#attached-img", "src") == first
    assert tab.is_checked("#model-list input[value='demo/edit']")
    assert not tab.is_checked("#model-list input[value='demo/shapes']")
    tab.fill("#prompt", "now make it night")
    generate(tab)
    assert tab.text_content(".run h3") == "demo · demo/edit"
    assert loaded_images(tab, ".run figure img") == [256]
    edited = tab.get_attribute(".run figure img", "src")
    assert edited != first
    # the edit is of that picture: the first image's bytes and the edit's differ, both served
    with httpx.Client(follow_redirects=True) as client:
        assert client.get(first).content != client.get(edited).content
    assert tab.locator("#gallery figure").count() == 2
    assert console.problems() == []


def test_an_attached_file_is_edited(page: Page, served: Served, tmp_path: Any) -> None:
    tab, _ = page
    from fakes.png import make_png

    picture = tmp_path / "photo.png"
    picture.write_bytes(make_png(64, 48, (20, 160, 90)))
    open_page(tab, served)
    tab.set_input_files("#file", str(picture))
    tab.wait_for_selector("#attached:not([hidden])")
    assert tab.is_checked("#model-list input[value='demo/edit']")
    tab.fill("#prompt", "add a rainbow")
    tab.select_option("#size", "256x256")
    generate(tab)
    assert loaded_images(tab, ".run figure img") == [256]


def test_a_prompt_full_of_markup_stays_text(page: Page, served: Served) -> None:
    tab, console = page
    prompt = (
        '<img src=x onerror="window.pwned=1"><b id="injected">bold</b>'
        "<script>window.pwned=2</script>"
    )
    open_page(tab, served)
    tab.fill("#prompt", prompt)
    tab.select_option("#size", "256x256")
    generate(tab)
    assert tab.evaluate("window.pwned") is None
    assert tab.locator("#injected").count() == 0
    assert tab.text_content(".run .prompt") == prompt
    assert prompt in (tab.text_content("#gallery figcaption") or "")
    assert prompt.replace('"', '\\"') in (tab.text_content("#snippet") or "")
    tab.reload()
    tab.wait_for_selector("#gallery figure")
    assert tab.evaluate("window.pwned") is None
    assert tab.locator("#injected").count() == 0
    assert console.problems() == []


def test_a_gateway_key_sees_its_usage_and_quota(page: Page, served: Served) -> None:
    tab, _ = page
    key = served.admin("key", "browser", "--quota", "5").strip().splitlines()[-1]
    assert re.fullmatch(r"gk-\S+", key)
    open_page(tab, served)
    tab.fill("#key", key)
    tab.wait_for_selector("#account:not([hidden]) #usage table")
    tab.fill("#prompt", "a kite")
    tab.select_option("#size", "256x256")
    generate(tab)
    tab.click("#refresh-account")
    tab.wait_for_function("() => document.querySelector('#usage').textContent.includes('1 of 5')")
    usage = tab.text_content("#usage") or ""
    assert "browser" in usage and "demo/shapes" in usage
    assert key not in (tab.text_content("body") or "")  # shown only in the password field


def test_a_durable_job_is_listed_and_ends_with_its_picture(page: Page, served: Served) -> None:
    tab, console = page
    open_page(tab, served)
    tab.fill("#prompt", "a windmill")
    tab.select_option("#size", "256x256")
    tab.check("#as-job")
    generate(tab)
    assert loaded_images(tab, ".run figure img") == [256]
    jobs = tab.text_content("#jobs") or ""
    assert re.search(r"job-[0-9a-f]+ · succeeded · demo/shapes · a windmill", jobs), jobs
    tab.reload()
    tab.wait_for_selector("#jobs-panel:not([hidden]) #jobs li")
    assert console.problems() == []


def test_a_page_elsewhere_can_fetch_a_stored_image(
    page: Page, served: Served, fake_modelscope: FakeModelScope
) -> None:
    """Bucket CORS (template.yaml `UploadsBucket` `CorsConfiguration`; moto's S3 here): a page
    of another origin fetch()es a lasting link, through its redirect to the bucket."""
    tab, _ = page
    made = httpx.post(
        f"{served.url}/v1/images/generations",
        json={"model": "demo/waves", "prompt": "a red kite", "size": "128x128"},
        timeout=60,
    )
    link = made.json()["data"][0]["url"]
    elsewhere = fake_modelscope.base_url.removesuffix("/v1")  # type: ignore[attr-defined]
    tab.goto(elsewhere + "/v1/models")
    got = tab.evaluate(
        """async (link) => {
            const answer = await fetch(link);
            const blob = await answer.blob();
            return [answer.status, blob.type, blob.size];
        }""",
        link,
    )
    assert got[0] == 200 and got[1] == "image/jpeg" and got[2] > 1000
