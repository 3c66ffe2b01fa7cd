"""``gpt2tune serve``: load the base, its adapters and the variants, and run the HTTP server."""

from __future__ import annotations

import logging
import math
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from gpt2tune.core.model import cast_for_inference
from gpt2tune.core.qa import GPT2QuestionAnswering
from gpt2tune.core.tokenizer import Tokenizer
from gpt2tune.errors import UserError
from gpt2tune.formats.hf import QA_ARCH, load_model, read_hf_config, resolve_model_dir
from gpt2tune.formats.peft import (
    ADAPTER_CONFIG,
    load_classifier_with_adapter,
    load_model_with_adapters,
    load_qa_model_with_adapter,
)
from gpt2tune.inference.engine import Engine
from gpt2tune.runtime import autocast_dtype, resolve_device
from gpt2tune.serve.service import ServedModel, Service
from gpt2tune.serve.tasks import ServedClassifier, ServedQA

log = logging.getLogger(__name__)


@dataclass
class ServeConfig:
    """What to serve, where, and how much at once."""

    model: str
    """HF-format GPT-2 directory or hub id: the base, served under its name (a directory's name)."""
    adapter: list[str] = field(default_factory=list)
    """NAME=DIR: a LoRA adapter (peft format) of the base, served as NAME (repeatable)."""
    variant: list[str] = field(default_factory=list)
    """NAME=DIR: a fully fine-tuned model (HF format), served as NAME (repeatable)."""
    classifier: list[str] = field(default_factory=list)
    """NAME=DIR: a classifier for POST /v1/classify, served as NAME: a
    GPT2ForSequenceClassification directory, or a classification adapter of --model
    (repeatable)."""
    qa: list[str] = field(default_factory=list)
    """NAME=DIR: a question-answering model for POST /v1/answer, served as NAME: a
    GPT2ForQuestionAnswering directory, or a question-answering adapter of --model
    (repeatable)."""
    host: str = "127.0.0.1"
    """Address to listen on (127.0.0.1: this machine only)."""
    port: int = 8000
    """Port to listen on."""
    api_key: str | None = None
    """If set, every /v1 request needs the header 'Authorization: Bearer KEY'."""
    max_batch: int = 8
    """Rows (samples) decoded together per model; further requests wait in the queue."""
    max_queue: int = 64
    """Requests that may wait beyond the running batch; more are refused with 429."""
    max_tokens_cap: int = 1024
    """The most new tokens one request may ask for."""
    max_body_bytes: int = 1 << 20
    """Request bodies over this size are refused with 413."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """Matmul precision via autocast; auto: bf16 where the CPU (AVX-512 BF16, AMX) or GPU runs it
    natively, else fp32 (as gpt2tune generate: the same greedy tokens at the same precision)."""
    device: str = "auto"
    """auto, cpu or cuda[:N]."""
    allow_adapter_loading: bool = False
    """Offer POST /v1/load_lora_adapter and /v1/unload_lora_adapter (vLLM's): LoRA adapters of
    the base loaded and unloaded while the server runs. Off: those paths do not exist (404)."""
    adapter_root: str | None = None
    """With `allow_adapter_loading`: adapters may be loaded only from under this directory."""
    max_request_tokens: int | None = None
    """The most token slots one request may use, checked before its work starts (larger: 400):
    over its prompts, n x (prompt tokens + max_tokens), times 1 + logprobs when it asks for
    log-probabilities; for /v1/classify, its texts' tokens as the classifier reads them; for
    /v1/answer, the question and context tokens of every window the model reads. Default:
    4 x max_batch x the model's context."""
    prefix_cache_mb: float = 256
    """MiB per model (the base with its adapters, each variant) for the keys and values of
    prompt prefixes, kept in 64-token blocks, least recently used out: a priming text that
    requests share is prefilled once. 0: off."""
    allowed_host: list[str] = field(default_factory=list)
    """NAME: a Host name (any port) answered besides localhost, 127.0.0.1 and [::1]
    (repeatable). With a loopback `host` only those names are answered, so a web page whose name
    is rebound to this machine cannot use the API; with another `host`, Host is not checked
    unless this is given."""
    header_timeout: float = 10.0
    """Seconds a connection has to send its request's headers, from its opening or its previous
    response; then it is closed (also one that sends a byte now and then)."""
    idle_timeout: int = 5
    """Seconds a connection may stay idle between requests before it is closed."""
    send_timeout: float = 30.0
    """Seconds a response may wait for its client to read; then the client is dropped and its
    rows freed (a stalled streaming reader)."""
    shutdown_timeout: float = 30.0
    """Seconds SIGTERM (or Ctrl-C) waits for the running requests; then the connections still
    open are dropped and the server stops (after SIGTERM with exit status 0)."""
    max_connections: int = 256
    """Connections served at once; a request on a connection over the cap gets a 503."""


def _named(pairs: list[str], field: str) -> dict[str, str | Path]:
    """NAME=DIR pairs of the ``ServeConfig`` field ``field`` as {NAME: DIR}."""
    out: dict[str, str | Path] = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise UserError(
                f"`{field}` {pair!r} is not NAME=DIR; e.g. `{field}` news=runs/news-lora"
            )
        if name in out:
            raise UserError(f"`{field}` name {name!r} is given twice; give each a different name")
        out[name] = path
    return out


def base_name(model: str) -> str:
    """The name the base is served under: a hub id as given, a directory by its own name."""
    path = Path(model)
    return path.name if path.exists() else model


def build_service(cfg: ServeConfig) -> Service:
    """Load every model once and put them behind one service.

    Raises:
        UserError: a name is given twice, or a model or adapter cannot be loaded.
    """
    adapters = _named(cfg.adapter, "adapter")
    variants = _named(cfg.variant, "variant")
    classifiers = _named(cfg.classifier, "classifier")
    qa = _named(cfg.qa, "qa")
    base = base_name(cfg.model)
    names = [base, *adapters, *variants, *classifiers, *qa]
    clash = next((n for n in names if names.count(n) > 1), None)
    if clash is not None:
        raise UserError(
            f"two models would be served as {clash!r}; rename the `adapter`, "
            "`variant`, `classifier` or `qa` (NAME=DIR)"
        )
    for limit, least in (("max_batch", 1), ("max_queue", 0), ("max_tokens_cap", 1)):
        if getattr(cfg, limit) < least:
            raise UserError(f"`{limit}` must be >= {least}, got {getattr(cfg, limit)}")
    if cfg.max_request_tokens is not None and cfg.max_request_tokens < 2:
        raise UserError(f"`max_request_tokens` must be >= 2, got {cfg.max_request_tokens}")
    device = resolve_device(cfg.device)
    dtype = autocast_dtype(cfg.precision, device)

    def engine(model) -> Engine:
        if dtype is not None:
            cast_for_inference(model, dtype)  # once, not at every step
        return Engine(
            model.eval(),
            eot_id=Tokenizer(model.source_dir).eot_id,
            max_batch=cfg.max_batch,
            autocast_dtype=dtype,
            prefix_cache_mb=cfg.prefix_cache_mb,
        )

    base_model = load_model_with_adapters(cfg.model, adapters, device=device)
    shared = engine(base_model)
    tok = Tokenizer(base_model.source_dir)
    served = [ServedModel(base, "base", shared, None, tok)]
    served += [ServedModel(name, "adapter", shared, name, tok) for name in adapters]
    for name, path in variants.items():
        model = load_model(path, device=device)
        served.append(
            ServedModel(name, "variant", engine(model), None, Tokenizer(model.source_dir))
        )

    def task_model(load, path):
        # an adapter directory is an adapter of the base (its task head inside); else a whole model
        if (Path(path) / ADAPTER_CONFIG).is_file():
            return load(cfg.model, path, device=device)
        return load(path, device=device)

    clfs = []
    for name, path in classifiers.items():
        clf = task_model(load_classifier_with_adapter, path)
        clfs.append(ServedClassifier(name, clf, Tokenizer(clf.source_dir), dtype))
    readers = []
    for name, path in qa.items():
        reader = task_model(_qa_model, path)
        readers.append(ServedQA(name, reader, Tokenizer(reader.source_dir), dtype))
    return Service(
        served,
        max_queue=cfg.max_queue,
        classifiers=clfs,
        qa=readers,
        max_request_tokens=cfg.max_request_tokens,
    )


def _qa_model(
    model: str | Path, adapter: str | Path | None = None, *, device
) -> GPT2QuestionAnswering:
    """``load_qa_model_with_adapter``, refusing a plain GPT-2 without an adapter: it would get a
    fresh, untrained head and answer at random (a classifier without labels is refused so too).

    Raises:
        UserError: a plain GPT-2 without an adapter, or what the loader refuses.
    """
    if adapter is None and QA_ARCH not in read_hf_config(resolve_model_dir(model)).get(
        "architectures", []
    ):
        raise UserError(
            f"`qa` {model} has no question-answering head; give a {QA_ARCH} directory or a "
            "question-answering adapter of `model`"
        )
    return load_qa_model_with_adapter(model, adapter, device=device)


def build_server(cfg: ServeConfig):
    """The uvicorn server for ``cfg``, models loaded, not yet running (``.run()`` runs it; from
    the main thread, SIGINT/SIGTERM stop it after the running requests finish, or after
    ``cfg.shutdown_timeout``).

    Raises:
        UserError: FastAPI/uvicorn are missing, the port is taken, or a model cannot be loaded.
    """
    try:
        import uvicorn

        from gpt2tune.serve.app import create_app
        from gpt2tune.serve.transport import GuardedH11Protocol, Limits, allowed_hosts
    except ImportError as e:
        raise UserError(
            f"gpt2tune serve needs FastAPI and uvicorn ({e.name} is missing); "
            "install them with: pip install 'gpt2tune[serve]'"
        ) from None
    import socket

    # a taken port is found before the models load (uvicorn would say it only after)
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((cfg.host, cfg.port))
        except OSError as e:
            raise UserError(
                f"cannot listen on {cfg.host}:{cfg.port} ({e.strerror}); choose "
                "another `port` or stop what uses it"
            ) from None
    if cfg.adapter_root is not None and not cfg.allow_adapter_loading:
        raise UserError("`adapter_root` applies to `allow_adapter_loading`; give both or neither")
    if cfg.adapter_root is not None and not Path(cfg.adapter_root).is_dir():
        raise UserError(f"`adapter_root` {cfg.adapter_root} is not a directory; give one that is")
    hosts = allowed_hosts(cfg.host, _checked_limits(cfg))
    service = build_service(cfg)
    app = create_app(
        service,
        api_key=cfg.api_key,
        max_tokens_cap=cfg.max_tokens_cap,
        max_body_bytes=cfg.max_body_bytes,
        allowed_hosts=hosts,
    )
    if cfg.allow_adapter_loading:
        from gpt2tune.serve.adapters import enable_adapter_loading

        enable_adapter_loading(app, cfg.adapter_root)
    log.info("serving %s on http://%s:%d", ", ".join(service.models), cfg.host, cfg.port)
    limits = Limits(
        header_timeout=cfg.header_timeout,
        send_timeout=cfg.send_timeout,
        shutdown_timeout=cfg.shutdown_timeout,
    )
    config = uvicorn.Config(
        app,
        host=cfg.host,
        port=cfg.port,
        log_level="warning",
        http=GuardedH11Protocol.with_limits(limits),
        timeout_keep_alive=cfg.idle_timeout,
        # uvicorn counts the connection asking among those open: N + 1 serves N at once
        limit_concurrency=cfg.max_connections + 1,
        # the protocol drops what is still open at shutdown_timeout; uvicorn's own timeout,
        # which cancels the requests' tasks, is only a backstop
        timeout_graceful_shutdown=math.ceil(cfg.shutdown_timeout) + 5,
    )
    return uvicorn.Server(config)


def _checked_limits(cfg: ServeConfig) -> list[str]:
    """``cfg.allowed_host``, once it and the connection limits are checked.

    Raises:
        UserError: a limit out of range, or an empty or malformed host name.
    """
    for name in ("header_timeout", "idle_timeout", "send_timeout", "shutdown_timeout"):
        value = getattr(cfg, name)
        if not 0 < value < math.inf:
            raise UserError(f"`{name}` must be a number of seconds > 0, got {value}")
    if cfg.max_connections < 1:
        raise UserError(f"`max_connections` must be >= 1, got {cfg.max_connections}")
    for name in cfg.allowed_host:
        if not name.strip() or any(c in name for c in " /,@") or not name.isprintable():
            raise UserError(
                f"`allowed_host` {name!r} is not a host name; give one such as myhost.lan"
            )
    return cfg.allowed_host


def serve(cfg: ServeConfig) -> None:
    """Run the server until SIGINT/SIGTERM; running requests finish (up to
    ``cfg.shutdown_timeout``) before it stops."""
    server = build_server(cfg)
    # uvicorn raises the signal that stopped it again once it has shut down, which would end the
    # process by SIGTERM; the shutdown it asked for is done by then, so it exits normally (0)
    if threading.current_thread() is not threading.main_thread():  # (no signals there)
        return server.run()
    previous = signal.signal(signal.SIGTERM, lambda *_: setattr(server, "should_exit", True))
    try:
        server.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
