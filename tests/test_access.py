"""The server's allow-list (backpack_core.model.access): the app opens models and runs only under the
operator's model roots, refuses other paths without revealing whether they exist, and loads hub
ids only when the operator allows them."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from backpack_core.model import access
from backpack_core.model.loading import DEFAULT_MODEL_DIR
from tests.conftest import HANG_S


@pytest.fixture
def server(tmp_path, monkeypatch):
    """A server working directory with runs/ (the default roots) and secrets outside it."""
    monkeypatch.chdir(tmp_path)
    for name in (access.ROOTS_ENV, access.HUB_ENV, access.MODEL_ENV):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "runs" / "mine").mkdir(parents=True)
    (tmp_path / "runs" / "mine" / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "key.txt").write_text("x")
    (tmp_path / "runs" / "escape").symlink_to(tmp_path / "secret")
    return tmp_path


def message(fn, *args) -> str:
    with pytest.raises(access.AccessError) as info:
        fn(*args)
    return str(info.value)


def test_default_roots_are_the_shipped_model_and_runs(server):
    assert access.allowed_source(str(server / "runs" / "mine")) == str(server / "runs" / "mine")
    assert access.allowed_source("runs/mine") == str(server / "runs" / "mine")
    assert access.allowed_source(str(DEFAULT_MODEL_DIR)) == str(DEFAULT_MODEL_DIR.resolve())
    assert access.allowed_source(None) is None
    assert access.allowed_path("runs/mine/metrics.jsonl") == server / "runs" / "mine" / "metrics.jsonl"


def test_paths_outside_are_refused_without_revealing_existence(server):
    refusals = {message(access.allowed_path, p, "this metrics file")
                for p in ("/etc/shadow", "/etc/no-such-file", str(server / "secret" / "key.txt"),
                          "runs/../secret/key.txt", "runs/escape/key.txt")}
    assert len(refusals) == 1 and "outside the model directories" in refusals.pop()
    dirs = {message(access.allowed_source, p) for p in ("/etc", "/no/such/dir", "./secret", "~")}
    assert len(dirs) == 1
    for text in dirs:
        assert "/etc" not in text and "secret" not in text


def test_hub_ids_only_when_the_operator_allows(server, monkeypatch):
    assert "not enabled" in message(access.allowed_source, "stanfordnlp/backpack-gpt2")
    assert "not enabled" in message(access.allowed_source, "secret/key.txt")  # not read as a path
    monkeypatch.setenv(access.HUB_ENV, "stanfordnlp/backpack-gpt2")
    assert access.allowed_source("stanfordnlp/backpack-gpt2") == "stanfordnlp/backpack-gpt2"
    assert "not enabled" in message(access.allowed_source, "someone/else")
    monkeypatch.setenv(access.HUB_ENV, "1")
    assert access.allowed_source("someone/else") == "someone/else"
    monkeypatch.delenv(access.HUB_ENV)
    monkeypatch.setenv(access.MODEL_ENV, "someone/default")  # the operator's own choice
    assert access.allowed_source("someone/default") == "someone/default"


def test_operator_sets_the_roots(server, monkeypatch):
    monkeypatch.setenv(access.ROOTS_ENV, os.pathsep.join([str(server / "secret"), "/nowhere"]))
    assert access.allowed_path(server / "secret" / "key.txt") == server / "secret" / "key.txt"
    assert "outside" in message(access.allowed_path, server / "runs" / "mine")


def test_models_page_refuses_paths_outside_the_roots(tiny_model_dir, monkeypatch, tmp_path):
    from streamlit.testing.v1 import AppTest

    app = Path(__file__).resolve().parent.parent / "app"
    if str(app) not in sys.path:
        sys.path.insert(0, str(app))
    monkeypatch.setenv(access.MODEL_ENV, str(tiny_model_dir))
    monkeypatch.setenv("BACKPACK_DEVICE", "cpu")
    monkeypatch.setenv(access.ROOTS_ENV, str(tiny_model_dir))
    at = AppTest.from_file(str(app / "Home.py"), default_timeout=HANG_S)
    at.switch_page("app_pages/models.py")
    at.run()
    at.radio(key="models:kind").set_value("directory").run()
    at.text_input(key="models:dir").input("/etc").run()
    at.button(key="models:load").click().run()
    errors = " ".join(str(e.value) for e in at.error)
    assert not at.exception and "outside the model directories" in errors and "/etc" not in errors
    at.selectbox(key="models:metrics").set_value("another file…").run()
    at.text_input(key="models:metrics-path").input("/etc/passwd").run()
    errors = " ".join(str(e.value) for e in at.error)
    assert "outside the model directories" in errors and "has no records" not in errors


LONG = "a" * 300  # a path component longer than the 255 bytes a file name may have


@pytest.mark.parametrize("name", ["/tmp/a\0b", "./x\0", f"/tmp/{LONG}/model", f"./{LONG}",
                                  f"runs/{LONG}", "x\0/y"])
def test_names_no_file_can_have_are_refused_like_any_other(server, name):
    """Issue 20 item 22: a NUL byte or a component over 255 characters raised ValueError / OSError
    (not AccessError), which the dashboard did not catch."""
    text = message(access.allowed_source, name)
    assert "outside the model directories" in text or "not enabled" in text
    assert "outside the model directories" in message(access.allowed_path, name, "this metrics file")


def test_an_allowed_hub_id_gets_the_same_answer_whether_or_not_a_path_of_that_name_exists(
        server, monkeypatch):
    """With BACKPACK_ALLOW_HUB=1 an existing server path was refused as "outside the model
    directories" while a missing one was accepted as a hub id: that told what exists."""
    from backpack_core.model import loading

    monkeypatch.setenv(access.HUB_ENV, "1")
    (server / "other" / "dir").mkdir(parents=True)
    answers = {name: access.allowed_source(name)
               for name in ("secret/key.txt", "other/dir", "secret/none", "nobody/nothing",
                            f"someone/{LONG}")}
    assert answers == {name: name for name in answers}  # every one: the hub id itself
    assert all(isinstance(a, loading.HubId) for a in answers.values())
    downloaded = []
    monkeypatch.setattr(loading, "_download", lambda hub_id: downloaded.append(hub_id) or server / "x")
    loading.resolve_source(answers["other/dir"])  # from the hub: the local directory is never read
    assert downloaded == ["other/dir"]
    assert access.allowed_source("runs/mine") == str(server / "runs" / "mine")  # a run: local
    monkeypatch.setenv(access.HUB_ENV, "0")
    assert {message(access.allowed_source, n) for n in ("other/dir", "secret/none")} == {
        message(access.allowed_source, "nobody/nothing")}


@pytest.mark.parametrize("model", ["/tmp/a\0b", f"/tmp/{LONG}", f"runs/{LONG}", f"ROOT/{LONG}"])
def test_a_link_with_a_model_no_file_can_have_is_refused_in_the_sidebar(tiny_model_dir, monkeypatch,
                                                                         model):
    """?model= with a NUL byte or a 300-character component crashed the page: restore_model runs
    before the page's error boundary and caught only AccessError."""
    from streamlit.testing.v1 import AppTest

    app = Path(__file__).resolve().parent.parent / "app"
    if str(app) not in sys.path:
        sys.path.insert(0, str(app))
    monkeypatch.setenv(access.MODEL_ENV, str(tiny_model_dir))
    monkeypatch.setenv("BACKPACK_DEVICE", "cpu")
    monkeypatch.setenv(access.ROOTS_ENV, str(tiny_model_dir))
    at = AppTest.from_file(str(app / "Home.py"), default_timeout=HANG_S)
    at.query_params["model"] = model.replace("ROOT", str(tiny_model_dir))  # under the root
    at.run()
    assert not at.exception, at.exception
    warnings = " ".join(str(w.value) for w in at.warning)
    assert "The model in the link was not loaded" in warnings, warnings
    assert not at.error, [str(e.value) for e in at.error]


def test_display_source_names_a_model_relative_to_its_root(server):
    """What a visitor sees: never the server's absolute path."""
    assert access.display_source(None) == DEFAULT_MODEL_DIR.name
    assert access.display_source(str(DEFAULT_MODEL_DIR)) == DEFAULT_MODEL_DIR.name
    assert access.display_source(str(server / "runs" / "mine" / "metrics.jsonl")) == \
        "runs/mine/metrics.jsonl"
    assert access.display_source("stanfordnlp/backpack-gpt2") == "stanfordnlp/backpack-gpt2"
    outside = access.display_source(str(server / "secret" / "key.txt"))
    assert outside == "key.txt" and str(server) not in outside
