"""Names, tags and refs: what is accepted and what is refused (with the reason)."""

import pytest

from registry_db.errors import RefError
from registry_db.refs import Ref, parse_ref, validate_name, validate_tag

VALID_NAMES = ["team/bot", "a/b", "0/9", "my-org/llama-3.1_sft", "x" * 64 + "/" + "y" * 64]
INVALID_NAMES = [
    ("team", "no namespace"),
    ("team/bot/v1", "two slashes"),
    ("/bot", "empty namespace"),
    ("team/", "empty name"),
    ("../etc", "dot-dot traversal"),
    ("team/..", "dot-dot part"),
    ("team/a..b", "dot-dot inside a part"),
    ("team/.hidden", "leading dot"),
    ("Team/Bot", "uppercase"),
    ("team/b ot", "space"),
    ("team/bot\n", "newline"),
    ("team\\bot", "backslash"),
    ("team/" + "x" * 65, "part too long"),
    ("t/" + "x" * 300, "300 characters"),
    ("team/bøt", "non-ASCII"),
    ("", "empty"),
]


@pytest.mark.parametrize("name", VALID_NAMES)
def test_valid_names(name):
    assert validate_name(name) == name


@pytest.mark.parametrize("name,reason", INVALID_NAMES)
def test_invalid_names(name, reason):
    with pytest.raises(RefError) as err:
        validate_name(name)
    assert "invalid repository name" in str(err.value)
    assert len(str(err.value)) < 300, "errors quote a bounded part of a hostile name"


@pytest.mark.parametrize("tag", ["3", "42", "v3", "v10", "sha256", "sha256abc", "latest",
                                 "Prod", "a..b", ".x", "x" * 65, ""])
def test_tags_that_look_like_versions_or_are_malformed_are_refused(tag):
    with pytest.raises(RefError):
        validate_tag(tag)


@pytest.mark.parametrize("tag", ["prod", "candidate", "v1.2-rc", "2024-q3", "main"])
def test_valid_tags(tag):
    assert validate_tag(tag) == tag


@pytest.mark.parametrize("text,expected", [
    ("team/bot", Ref("team/bot")),
    ("team/bot@3", Ref("team/bot", number=3)),
    ("team/bot:prod", Ref("team/bot", tag="prod")),
    ("team/bot:latest", Ref("team/bot")),
    ("team/bot@sha256:0123456789ab", Ref("team/bot", digest_prefix="sha256:0123456789ab")),
])
def test_parse_ref(text, expected):
    ref = parse_ref(text)
    assert ref == expected
    assert str(ref) == text.replace(":latest", "")


@pytest.mark.parametrize("text", ["team/bot@0", "team/bot@03", "team/bot@-1", "team/bot@x",
                                  "team/bot@sha256:abc", "team/bot@sha256:0123456789AB",
                                  "team/bot:3", "team/bot:", "team/bot@", "team/../x@1",
                                  "team/bot@1@2"])
def test_invalid_refs(text):
    with pytest.raises(RefError):
        parse_ref(text)
