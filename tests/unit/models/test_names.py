import pytest
from hypothesis import given
from hypothesis import strategies as st

from ollamamax.errors import BadRequest
from ollamamax.models import names


@pytest.mark.parametrize(("given_name", "short"), [
    ("smollm2", "smollm2:latest"),
    ("smollm2:135m", "smollm2:135m"),
    ("library/smollm2:135m", "smollm2:135m"),
    ("registry.ollama.ai/library/smollm2:135m", "smollm2:135m"),
    ("me/model:v1", "me/model:v1"),
    ("example.com:5000/team/model:v1", "example.com:5000/team/model:v1"),
])
def test_parse_applies_ollama_defaults(given_name, short):
    assert names.parse(given_name).short == short


def test_keys_compare_case_insensitively():
    assert names.model_key("SmolLM2:135M") == names.model_key("smollm2:135m")


@pytest.mark.parametrize("bad", ["", "a/b/c/d", "../x", "x:", ":tag", "bad name", "a" * 400, 7])
def test_invalid_names_are_bad_requests(bad):
    with pytest.raises(BadRequest):
        names.parse(bad)
    assert names.try_key(bad) == ""


@given(st.from_regex(r"[a-z0-9][a-z0-9._-]{0,20}", fullmatch=True),
       st.from_regex(r"[a-z0-9][a-z0-9._-]{0,10}", fullmatch=True))
def test_short_form_parses_back_to_itself(model, tag):
    parsed = names.parse(f"{model}:{tag}")
    assert names.parse(parsed.short) == parsed
