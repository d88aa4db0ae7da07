"""Ollama's model-name grammar and canonical names."""

from __future__ import annotations

import pytest

from ollama_web.core.errors import ValidationError
from ollama_web.ollama.names import (
    canonical_model_name,
    model_key,
    parse_model_name,
    validate_model_name,
)


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("llama3.2", "llama3.2:latest"),
        ("llama3.2:latest", "llama3.2:latest"),
        ("LLaMA3.2:Latest", "llama3.2:latest"),
        ("library/llama3.2", "llama3.2:latest"),
        ("registry.ollama.ai/library/llama3.2:1b", "llama3.2:1b"),
        ("user/model:v1", "user/model:v1"),
        (
            "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M",
            "hf.co/bartowski/llama-3.2-1b-instruct-gguf:q4_k_m",
        ),
        ("localhost:5000/ns/model:tag", "localhost:5000/ns/model:tag"),
        ("_private:_tag", "_private:_tag"),
    ],
)
def test_canonical_name_adds_latest_and_ignores_case(name: str, canonical: str) -> None:
    assert canonical_model_name(name) == canonical


def test_a_name_and_its_latest_tag_are_the_same_model() -> None:
    assert canonical_model_name("llama3.2") == canonical_model_name("llama3.2:latest")
    assert model_key("Llama3.2") == model_key("llama3.2:latest")


def test_display_keeps_the_case_given() -> None:
    name = validate_model_name("User/Model")
    assert name.display == "User/Model:latest"
    assert (name.host, name.namespace, name.model, name.tag) == (
        "registry.ollama.ai",
        "User",
        "Model",
        "latest",
    )


@pytest.mark.parametrize(
    "name",
    [
        "",
        " ",
        "llama 3",
        "a/b/c/d",
        ":latest",
        "llama3:",
        "-llama",
        ".llama",
        "llama3:-tag",
        "name.space/model",  # namespaces allow no dots
        "mo:del/x",  # the tag would contain '/'
        "modèle",
        "x" * 81,
        "model:" + "t" * 81,
        "m" * 600,
        "../etc/passwd",
        "model;rm",
    ],
)
def test_invalid_names_are_rejected_with_422(name: str) -> None:
    assert parse_model_name(name) is None
    assert model_key(name) is None
    with pytest.raises(ValidationError) as caught:
        canonical_model_name(name)
    assert caught.value.status_code == 422
    assert caught.value.code == "VALIDATION_ERROR"
    assert caught.value.details["fields"][0]["loc"] == ["model"]
