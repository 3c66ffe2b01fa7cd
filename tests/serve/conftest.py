"""A live `gpt2tune serve` over a tiny random GPT-2, two LoRA adapters (random B, so they change
the tokens) and a full fine-tuned variant (other random weights)."""

from __future__ import annotations

import pytest
import torch
from checkpoints import make_hf_model
from serving import start_server, stop_server


@pytest.fixture(scope="session")
def serve_files(tmp_path_factory):
    """Directories of the base, the adapters and the variant."""
    import peft
    from transformers import GPT2LMHeadModel

    root = tmp_path_factory.mktemp("serve")
    make_hf_model(root / "tiny-base")
    make_hf_model(root / "full", seed=5)
    dirs = {"tiny-base": root / "tiny-base", "full": root / "full"}
    for i, (name, targets) in enumerate((("news", ["c_attn"]), ("falstaff", ["c_attn", "c_fc"]))):
        torch.manual_seed(30 + i)
        pm = peft.get_peft_model(
            GPT2LMHeadModel.from_pretrained(root / "tiny-base"),
            peft.LoraConfig(
                task_type="CAUSAL_LM",
                fan_in_fan_out=True,
                init_lora_weights=False,
                r=4,
                lora_alpha=32,
                target_modules=targets,
            ),
        )
        pm.save_pretrained(root / name)
        dirs[name] = root / name
    # a classifier (GPT2ForSequenceClassification) for /v1/classify
    from transformers import GPT2Config, GPT2ForSequenceClassification

    torch.manual_seed(40)
    labels = {0: "news", 1: "play"}
    GPT2ForSequenceClassification(
        GPT2Config(
            n_layer=2,
            n_head=3,
            n_embd=48,
            n_positions=64,
            pad_token_id=50256,
            id2label=labels,
            label2id={v: k for k, v in labels.items()},
        )
    ).save_pretrained(root / "kind")
    dirs["kind"] = root / "kind"
    return dirs


@pytest.fixture(scope="session")
def live_server(serve_files, tmp_path_factory):
    served = start_server(serve_files, tmp_path_factory.mktemp("log") / "serve.log")
    yield served
    stop_server(served)


@pytest.fixture
def client(live_server):
    """The official openai client for the live server (no retries: a 429 must show)."""
    import openai

    with openai.OpenAI(
        base_url=live_server.url + "/v1", api_key="unused", max_retries=0, timeout=60
    ) as c:
        yield c
