"""The route handlers and their dependencies called as plain functions (no HTTP), and a library
error phrased in the request's terms."""

from __future__ import annotations

import asyncio

import pytest
from starlette.requests import Request

from gpt2tune.errors import UserError
from gpt2tune.serve import routes
from gpt2tune.serve.app import create_app
from gpt2tune.serve.protocol import APIError, CompletionRequest
from gpt2tune.serve.server import ServeConfig, build_service


@pytest.fixture(scope="module")
def service(serve_files):
    """The base and one adapter (not started: these handlers never reach the engine)."""
    return build_service(
        ServeConfig(model=str(serve_files["tiny-base"]), adapter=[f"news={serve_files['news']}"])
    )


def request(headers: dict[str, str] | None = None, app=None) -> Request:
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/",
        "app": app,
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
    }
    return Request(scope)


def test_handlers_are_functions_of_their_dependencies(service):
    settings = routes.Settings(api_key=None, max_tokens_cap=16, created=1234)
    health = asyncio.run(routes.health(service))
    assert health == {
        "status": "ok",
        "models": ["tiny-base", "news"],
        "in_flight": 0,
        "peak_batch": 0,
        "prefix_cache": {"blocks": 0, "bytes": 0, "hits": 0, "tokens_reused": 0},
    }
    listed = asyncio.run(routes.models(service, settings))
    assert [(m["id"], m["kind"], m["created"]) for m in listed["data"]] == [
        ("tiny-base", "base", 1234),
        ("news", "adapter", 1234),
    ]
    with pytest.raises(APIError) as info:
        asyncio.run(
            routes.completions(
                CompletionRequest(model="nope", prompt="x"), request(), service, settings
            )
        )
    assert info.value.status == 404 and info.value.param == "model"


def test_dependencies_read_what_create_app_put_in_the_app_state(service):
    app = create_app(service, api_key="sesame", max_tokens_cap=7)
    settings = asyncio.run(routes.get_settings(request(app=app)))
    assert (settings.api_key, settings.max_tokens_cap) == ("sesame", 7)
    assert asyncio.run(routes.get_service(request(app=app))) is service


def test_authorized_wants_the_bearer_key_only_when_there_is_one():
    keyed = routes.Settings(api_key="sesame", max_tokens_cap=16, created=0)
    for headers in (None, {"Authorization": "Bearer wrong"}, {"Authorization": "sesame"}):
        with pytest.raises(APIError) as info:
            asyncio.run(routes.authorized(request(headers), keyed))
        assert info.value.status == 401 and info.value.code == "invalid_api_key"
    asyncio.run(routes.authorized(request({"Authorization": "Bearer sesame"}), keyed))
    open_ = routes.Settings(api_key=None, max_tokens_cap=16, created=0)
    asyncio.run(routes.authorized(request(), open_))


@pytest.mark.parametrize(
    "library, message, param",
    [
        # the engine's names become the request's; a name both share stays
        ("`max_new_tokens` must be >= 1, got 0", "max_tokens must be >= 1, got 0", "max_tokens"),
        ("`num_samples` must be >= 1, got 0", "n must be >= 1, got 0", "n"),
        ("`top_p` must be in (0, 1], got 2", "top_p must be in (0, 1], got 2", "top_p"),
        (
            "prompt + `max_new_tokens` exceeds the context",
            "prompt + max_tokens exceeds the context",
            "max_tokens",
        ),
        ("no field named here", "no field named here", None),
    ],
)
def test_a_user_error_is_a_400_in_the_requests_terms(library, message, param):
    error = APIError.from_user_error(UserError(library))
    assert (error.status, error.message, error.param) == (400, message, param)
    assert error.body()["error"]["type"] == "invalid_request_error"


def test_an_explicit_field_is_the_param_in_the_requests_terms():
    """The engine names a request's sample count ``n`` and its adapter ``adapter``, which a
    request chooses by its ``model``."""
    assert APIError.from_user_error(UserError("3 samples are too many", field="n")).param == "n"
    assert (
        APIError.from_user_error(UserError("unknown adapter 'x'", field="adapter")).param == "model"
    )
