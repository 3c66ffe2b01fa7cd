"""LoRA adapters loaded and unloaded while the server runs, with vLLM's two endpoints:
``POST /v1/load_lora_adapter {"lora_name", "lora_path"}`` and
``POST /v1/unload_lora_adapter {"lora_name"}``.

The routes exist only on a server started with ``allow_adapter_loading`` (``enable_adapter_loading``
adds them; elsewhere they are unknown paths: 404). They sit behind the API key as every ``/v1``
route. With an adapter root, a path must lie under it once ``..`` and symbolic links are
resolved (a relative path is taken under the root). A success answers 200 with vLLM's plain-text
line; a refusal answers in OpenAI's error JSON, as the other routes do.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field

from gpt2tune.errors import UserError
from gpt2tune.formats.peft import read_adapter
from gpt2tune.serve.protocol import APIError
from gpt2tune.serve.routes import ServiceDep, authorized


@dataclass(frozen=True)
class AdapterLoading:
    """How this server loads adapters at run time."""

    root: Path | None
    """Adapters may be loaded from under this directory only (resolved); None: from anywhere."""


def enable_adapter_loading(app: FastAPI, root: str | Path | None = None) -> None:
    """Add the load and unload routes to ``app``, confined to the directory ``root`` when it is
    given."""
    app.state.adapter_loading = AdapterLoading(Path(root).resolve() if root is not None else None)
    app.include_router(router)


async def get_loading(request: Request) -> AdapterLoading:
    """The app's ``AdapterLoading`` (``app.state.adapter_loading``)."""
    return request.app.state.adapter_loading


LoadingDep = Annotated[AdapterLoading, Depends(get_loading)]

router = APIRouter(prefix="/v1", dependencies=[Depends(authorized)])
"""vLLM's adapter endpoints, behind the API key."""


class LoadAdapterRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    lora_name: str = Field(min_length=1)
    lora_path: str = Field(min_length=1)


class UnloadAdapterRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # vLLM's lora_int_id among others

    lora_name: str = Field(min_length=1)


def adapter_path(given: str, root: Path | None) -> Path:
    """The directory ``lora_path`` names; 403 if it leads out of ``root``."""
    if root is None:
        return Path(given)
    path = (root / given).resolve()  # `..` and symbolic links followed before the check
    if not path.is_relative_to(root):
        raise APIError(
            403,
            f"lora_path {given!r} is outside this server's adapter root {root}; "
            "give a directory under it",
            type="permission_error",
            param="lora_path",
            code="adapter_path_not_allowed",
        )
    return path


def name_taken(name: str) -> APIError:
    return APIError(
        400,
        f"the lora adapter {name!r} has already been loaded (or a model is served under that "
        "name); unload it first or choose another lora_name",
        param="lora_name",
    )


# (the handlers have no docstrings: FastAPI would publish them in /openapi.json)


@router.post("/load_lora_adapter", response_class=PlainTextResponse)
async def load_lora_adapter(
    body: LoadAdapterRequest, service: ServiceDep, loading: LoadingDep
) -> PlainTextResponse:
    name = body.lora_name
    if service.name_taken(name):
        raise name_taken(name)
    path = adapter_path(body.lora_path, loading.root)
    try:
        # read and checked against the base's shapes here, off the event loop; the worker
        # thread only puts the tensors in place, between two decoding steps
        adapter = await asyncio.to_thread(read_adapter, path, service.base().engine.model)
        if service.name_taken(name):  # loaded meanwhile by another request
            raise name_taken(name)
        await service.add_adapter(name, adapter)
    except UserError as e:
        raise APIError(400, e.phrased(), param="lora_path") from None
    return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")


@router.post("/unload_lora_adapter", response_class=PlainTextResponse)
async def unload_lora_adapter(body: UnloadAdapterRequest, service: ServiceDep) -> PlainTextResponse:
    name = body.lora_name
    model = service.models.get(name)
    if model is None:
        adapters = [m.name for m in service.models.values() if m.kind == "adapter"]
        raise APIError(
            404,
            f"the lora adapter {name!r} cannot be found; this server's adapters: "
            f"{', '.join(adapters) or 'none'}",
            param="lora_name",
            code="model_not_found",
        )
    if model.kind != "adapter":
        raise APIError(
            400,
            f"{name!r} is this server's {model.kind} model, not an adapter; only adapters "
            "can be unloaded",
            param="lora_name",
        )
    await service.remove_adapter(name)
    return PlainTextResponse(f"Success: LoRA adapter '{name}' removed successfully.")
