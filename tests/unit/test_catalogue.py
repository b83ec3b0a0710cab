"""Which provider answers mean "no such model", and the ids suggested then
(`imagegw.providers.catalogue`, through `upstream.error_for`)."""

from __future__ import annotations

import httpx
import pytest

from imagegw.providers.upstream import error_for

KNOWN = ("Qwen/Qwen-Image", "Qwen/Qwen-Image-Edit", "Tongyi-MAI/Z-Image-Turbo")


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (404, {"errors": {"message": "The model 'qwen/qwen-imag' does not exist."}}),
        (400, {"errors": {"message": "Invalid model id: qwen/qwen-imag"}}),  # ModelScope
        (400, {"code": 20012, "message": "Model does not exist. Please check it carefully."}),
        (404, {"error": {"message": "The model `qwen/qwen-imag` does not exist"}}),  # OpenAI
    ],
)
def test_a_providers_no_such_model_is_a_404_naming_the_closest_ids(
    status: int, body: dict[str, object]
) -> None:
    answer = httpx.Response(status, json=body)
    error = error_for("ModelScope", answer, model="qwen/qwen-imag", known=KNOWN)
    assert error.status == 404 and error.code == "model_not_found"
    assert error.message.endswith("The closest known ids: Qwen/Qwen-Image, Qwen/Qwen-Image-Edit.")


def test_other_refusals_keep_their_own_status_and_code() -> None:
    answer = httpx.Response(400, json={"errors": {"message": "prompt is required"}})
    error = error_for("ModelScope", answer, model="Qwen/Qwen-Image", known=KNOWN)
    assert error.status == 400 and error.code == "provider_error"
    # and an id far from every known one suggests none
    answer = httpx.Response(404, json={"errors": {"message": "The model 'zzz' does not exist."}})
    assert "closest" not in error_for("ModelScope", answer, model="zzz", known=KNOWN).message
