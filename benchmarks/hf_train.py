"""What a transformers + peft user writes to LoRA-fine-tune GPT-2 on a text file: the reference
process of ``run.py``'s end-to-end row (``e2e-train-lora-news``), timed as a whole, against
``gpt2tune train`` with the same settings on the same file.

It follows transformers' own causal-LM example: tokenize each document, append the end-of-text
token, concatenate, cut into blocks (the remainder dropped), train with ``Trainer``, evaluate
the held-out file the same way, save the adapter.

    python benchmarks/hf_train.py --model DIR --train train.txt --val val.txt --out DIR \\
        --max-steps 30 --batch-size 8 --block-size 256 --lr 2e-4 [--bf16]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def blocks(tok, path: Path, block: int) -> list[dict]:
    """Documents separated by blank lines -> ids + EOS, concatenated, in rows of ``block``."""
    docs = [d.strip() for d in path.read_text(encoding="utf-8").split("\n\n") if d.strip()]
    ids: list[int] = []
    for enc in tok(docs)["input_ids"]:
        ids += enc + [tok.eos_token_id]
    n = len(ids) // block * block
    return [
        {"input_ids": ids[i : i + block], "labels": ids[i : i + block]} for i in range(0, n, block)
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--train", type=Path, required=True)
    ap.add_argument("--val", type=Path, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--max-steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--block-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bf16", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        GPT2LMHeadModel,
        GPT2TokenizerFast,
        Trainer,
        TrainingArguments,
        default_data_collator,
    )

    torch.manual_seed(args.seed)
    tok = GPT2TokenizerFast.from_pretrained(args.model)
    train, val = blocks(tok, args.train, args.block_size), blocks(tok, args.val, args.block_size)
    model = GPT2LMHeadModel.from_pretrained(args.model)
    model = get_peft_model(
        model,
        LoraConfig(
            r=4,
            lora_alpha=8,
            target_modules=["c_attn"],
            lora_dropout=0.0,
            fan_in_fan_out=True,
            task_type="CAUSAL_LM",
        ),
    )
    targs = TrainingArguments(
        output_dir=args.out,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size,
        learning_rate=args.lr,
        weight_decay=0.01,
        warmup_steps=0,
        lr_scheduler_type="cosine",
        max_grad_norm=1.0,
        bf16=args.bf16,
        use_cpu=True,
        seed=args.seed,
        logging_steps=10,
        eval_strategy="no",
        save_strategy="no",
        report_to=[],
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=targs,
        train_dataset=train,
        eval_dataset=val,
        data_collator=default_data_collator,
    )
    result = trainer.train()
    metrics = trainer.evaluate()
    model.save_pretrained(args.out)
    print(
        json.dumps(
            {
                "train_loss": result.training_loss,
                "val_loss": metrics["eval_loss"],
                "steps": result.global_step,
                "rows": len(train),
            }
        )
    )


if __name__ == "__main__":
    main()
