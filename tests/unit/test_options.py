"""Generation options from request fields: common names, aliases, checked values."""

from __future__ import annotations

from typing import Any

import pytest

from imagegw.errors import InvalidRequestError
from imagegw.providers.options import (
    as_float,
    as_int,
    as_text,
    common_options,
    image_count,
    parse_size,
)

# ----------------------------------------------------------------------------- common_options


def test_common_names_are_kept_as_given() -> None:
    fields = {
        "negative_prompt": "blurry",
        "size": "1024x1024",
        "seed": 7,
        "steps": 30,
        "guidance": 3.5,
        "loras": "repo/lora",
        "n": 2,
    }

    assert common_options(fields) == fields


@pytest.mark.parametrize(
    ("alias", "common", "value"),
    [
        ("image_size", "size", "512x512"),
        ("num_inference_steps", "steps", 20),
        ("guidance_scale", "guidance", 4.0),
        ("cfg", "guidance", 2.5),
    ],
)
def test_aliases_map_to_common_names(alias: str, common: str, value: Any) -> None:
    assert common_options({alias: value}) == {common: value}


def test_chat_client_fields_are_ignored() -> None:
    fields = {"temperature": 0.7, "top_p": 1, "max_tokens": 100, "stream_options": {}, "steps": 9}

    assert common_options(fields) == {"steps": 9}


def test_null_counts_as_absent() -> None:
    assert common_options({"seed": None, "size": None, "image_size": "64x64"}) == {"size": "64x64"}


def test_alias_and_common_name_agreeing_is_fine() -> None:
    assert common_options({"steps": 30, "num_inference_steps": 30}) == {"steps": 30}


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"size": "1024x1024", "image_size": "512x512"}, ("size", "image_size")),
        ({"steps": 30, "num_inference_steps": 20}, ("steps", "num_inference_steps")),
        ({"guidance": 3.5, "cfg": 7}, ("guidance", "cfg")),
        ({"guidance_scale": 3.5, "cfg": 7}, ("guidance_scale", "cfg")),
    ],
)
def test_conflicting_values_are_a_400_naming_the_fields(
    fields: dict[str, Any], named: tuple[str, str]
) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        common_options(fields)

    error = caught.value
    assert error.status == 400
    assert error.param in named
    for name in named:
        assert f"'{name}'" in error.message


# ----------------------------------------------------------------------------- as_int


@pytest.mark.parametrize(
    ("value", "expected"), [(1, 1), (100, 100), ("30", 30), (" 42 ", 42), (30.0, 30)]
)
def test_as_int_accepts_integers_and_numeric_strings(value: Any, expected: int) -> None:
    assert as_int("steps", value, 1, 100) == expected


@pytest.mark.parametrize(
    "value", [0, 101, -1, "0", "101", 2.5, "2.5", "ten", "", None, [30], True, False]
)
def test_as_int_refuses_values_outside_the_range_or_not_integers(value: Any) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        as_int("steps", value, 1, 100)

    assert caught.value.status == 400
    assert caught.value.param == "steps"
    assert "'steps' must be an integer from 1 to 100" in caught.value.message


def test_as_int_refuses_a_huge_numeric_string_with_a_400() -> None:
    # a custom parameter can hold any text; thousands of digits must not crash the gateway
    with pytest.raises(InvalidRequestError) as caught:
        as_int("seed", "9" * 5000, 0, 2**31 - 1)

    assert caught.value.param == "seed"


# ----------------------------------------------------------------------------- as_float


@pytest.mark.parametrize(
    ("value", "expected"), [(1.5, 1.5), (20, 20.0), ("3.5", 3.5), (" 7 ", 7.0)]
)
def test_as_float_accepts_numbers_and_numeric_strings(value: Any, expected: float) -> None:
    result = as_float("guidance", value, 1.5, 20.0)

    assert result == expected
    assert isinstance(result, float)


@pytest.mark.parametrize(
    "value", [1.49, 20.01, "1", "abc", "nan", "inf", float("nan"), float("inf"), None, True]
)
def test_as_float_refuses_values_outside_the_range_or_not_numbers(value: Any) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        as_float("guidance", value, 1.5, 20.0)

    assert caught.value.status == 400
    assert caught.value.param == "guidance"
    assert "'guidance' must be a number from 1.5 to 20" in caught.value.message


# ----------------------------------------------------------------------------- as_text


def test_as_text_limits_the_length() -> None:
    assert as_text("negative_prompt", "x" * 1999, 2000) == "x" * 1999

    with pytest.raises(InvalidRequestError) as caught:
        as_text("negative_prompt", "x" * 2000, 2000)

    assert caught.value.param == "negative_prompt"
    assert "shorter than 2000 characters" in caught.value.message


def test_as_text_refuses_non_strings() -> None:
    with pytest.raises(InvalidRequestError) as caught:
        as_text("negative_prompt", ["blurry"], 2000)

    assert caught.value.param == "negative_prompt"


# ----------------------------------------------------------------------------- parse_size


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1024x1024", (1024, 1024)),
        ("64X1664", (64, 1664)),
        (" 512 x 768 ", (512, 768)),
        ("1328*1328", (1328, 1328)),
        ("800×600", (800, 600)),
    ],
)
def test_parse_size_accepts_width_x_height(value: str, expected: tuple[int, int]) -> None:
    assert parse_size("size", value, 64, 1664) == expected


@pytest.mark.parametrize("value", ["63x64", "64x63", "1665x1024", "1024x1665", "0x0"])
def test_parse_size_refuses_sides_outside_the_range(value: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        parse_size("size", value, 64, 1664)

    assert caught.value.status == 400
    assert caught.value.param == "size"
    assert "from 64x64 to 1664x1664" in caught.value.message


@pytest.mark.parametrize("value", ["1024", "big", "1024x", "x1024", "-64x64", 1024, None, ""])
def test_parse_size_refuses_malformed_sizes(value: Any) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        parse_size("image_size", value, 64, 2048)

    assert caught.value.param == "image_size"
    assert "WIDTHxHEIGHT" in caught.value.message


# ----------------------------------------------------------------------------- image_count


@pytest.mark.parametrize(("value", "expected"), [(None, 1), (1, 1), (10, 10), ("3", 3)])
def test_image_count_from_1_to_10(value: Any, expected: int) -> None:
    assert image_count(value) == expected


@pytest.mark.parametrize("value", [0, 11, -1, True, 1.5, "many"])
def test_image_count_out_of_bounds_is_a_400(value: Any) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        image_count(value)

    assert caught.value.status == 400
    assert caught.value.param == "n"
    assert "from 1 to 10" in caught.value.message
