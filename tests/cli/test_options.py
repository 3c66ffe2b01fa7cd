"""The options machinery: flags from dataclasses, --config FILE.toml, one-line usage errors, and a
torch-free `gpt2tune --help`."""

import dataclasses
import json
import subprocess
import sys
import typing

import pytest

from gpt2tune.cli.commands import COMMANDS, Precision
from gpt2tune.cli.main import build_parser, main
from gpt2tune.cli.options import collect


def parse(*argv) -> dict:
    parser, _ = build_parser()
    args = vars(parser.parse_args([str(a) for a in argv]))
    args.pop("config", None)
    return args


def toml(**options) -> str:
    """TOML text for ``options``; a dict value becomes a table (``[lora] r = 4``)."""

    def value(v):
        return json.dumps(v) if not isinstance(v, bool) else str(v).lower()

    lines = [f"{k} = {value(v)}" for k, v in options.items() if not isinstance(v, dict)]
    for table, items in options.items():
        if isinstance(items, dict):
            lines += [f"[{table}]"] + [f"{k} = {value(v)}" for k, v in items.items()]
    return "\n".join(lines) + "\n"


# (command, its options as flags, the same options as a TOML file: names with dashes or
# underscores, and a [table] for a prefix)
SAME_OPTIONS = [
    (
        "generate",
        [
            "--model",
            "m",
            "--adapter",
            "a",
            "--device",
            "cpu",
            "--precision",
            "bf16",
            "--prompt",
            "Hi",
            "--prime",
            "Once",
            "--prime-file",
            "p.txt",
            "--num-samples",
            "2",
            "--json",
            "--stream",
            "--max-new-tokens",
            "7",
            "--greedy",
            "--temperature",
            "0.5",
            "--top-k",
            "3",
            "--top-p",
            "0.9",
            "--repetition-penalty",
            "1.1",
            "--presence-penalty",
            "0.5",
            "--frequency-penalty",
            "-0.25",
            "--stop",
            "A",
            "--stop",
            "B B",
            "--seed",
            "4",
            "--chat",
            "--system",
            "S",
            "--user",
            "U",
            "--user",
            "V",
            "--assistant",
            "A",
            "--messages",
            "m.json",
        ],
        dict(
            chat=True,
            system="S",
            user=["U", "V"],
            assistant=["A"],
            messages="m.json",
            model="m",
            adapter="a",
            device="cpu",
            precision="bf16",
            prompt="Hi",
            prime="Once",
            prime_file="p.txt",
            **{"num-samples": 2},
            json=True,
            stream=True,
            max_new_tokens=7,
            greedy=True,
            temperature=0.5,
            **{"top-k": 3},
            top_p=0.9,
            repetition_penalty=1.1,
            presence_penalty=0.5,
            frequency_penalty=-0.25,
            stop=["A", "B B"],
            seed=4,
        ),
    ),
    (
        "eval",
        [
            "--model",
            "m",
            "--adapter",
            "a",
            "--device",
            "cpu",
            "--precision",
            "auto",
            "--data",
            "d.txt",
            "--doc-sep",
            "line",
            "--text-field",
            "body",
            "--stride",
            "16",
            "--batch-size",
            "3",
            "--json",
            "--task",
            "classify",
            "--label-field",
            "kind",
            "--out",
            "o",
            "--loss-on",
            "all",
            "--block-size",
            "32",
            "--question-field",
            "q",
            "--context-field",
            "c",
            "--answers-field",
            "a",
            "--doc-stride",
            "8",
            "--max-answer-tokens",
            "5",
        ],
        dict(
            model="m",
            adapter="a",
            device="cpu",
            precision="auto",
            data="d.txt",
            doc_sep="line",
            **{"text-field": "body"},
            stride=16,
            batch_size=3,
            json=True,
            task="classify",
            label_field="kind",
            out="o",
            loss_on="all",
            block_size=32,
            question_field="q",
            context_field="c",
            answers_field="a",
            doc_stride=8,
            max_answer_tokens=5,
        ),
    ),
    (
        "answer",
        [
            "--model",
            "m",
            "--adapter",
            "a",
            "--device",
            "cpu",
            "--precision",
            "bf16",
            "--question",
            "Q1",
            "--question",
            "Q2",
            "--context",
            "C",
            "--file",
            "f.jsonl",
            "--question-field",
            "q",
            "--context-field",
            "c",
            "--doc-stride",
            "8",
            "--block-size",
            "40",
            "--max-answer-tokens",
            "5",
            "--json",
        ],
        dict(
            model="m",
            adapter="a",
            device="cpu",
            precision="bf16",
            question=["Q1", "Q2"],
            context=["C"],
            file="f.jsonl",
            question_field="q",
            context_field="c",
            doc_stride=8,
            block_size=40,
            max_answer_tokens=5,
            json=True,
        ),
    ),
    (
        "classify",
        [
            "--model",
            "m",
            "--adapter",
            "a",
            "--device",
            "cpu",
            "--precision",
            "bf16",
            "--text",
            "A",
            "--text",
            "B b",
            "--file",
            "f.txt",
            "--doc-sep",
            "blank",
            "--text-field",
            "body",
            "--json",
        ],
        dict(
            model="m",
            adapter="a",
            device="cpu",
            precision="bf16",
            text=["A", "B b"],
            file="f.txt",
            doc_sep="blank",
            text_field="body",
            json=True,
        ),
    ),
    (
        "info",
        [
            "--preset",
            "gpt2-nano",
            "--lora-r",
            "4",
            "--lora-targets",
            "c_attn",
            "mlp.c_fc",
            "--json",
        ],
        dict(preset="gpt2-nano", json=True, lora=dict(r=4, targets=["c_attn", "mlp.c_fc"])),
    ),
    (
        "merge",
        ["--model", "m", "--adapter", "a", "--out", "o", "--overwrite"],
        dict(model="m", adapter="a", out="o", overwrite=True),
    ),
]


ALTERNATIVES = {"info__model"}  # info takes --model or --preset


@pytest.mark.parametrize("command, flags, options", SAME_OPTIONS, ids=[c[0] for c in SAME_OPTIONS])
def test_config_file_gives_the_same_options_as_the_flags(tmp_path, command, flags, options):
    cfg = tmp_path / "options.toml"
    cfg.write_text(toml(**options))
    from_file, from_flags = parse(command, "--config", cfg), parse(command, *flags)
    assert from_file == from_flags
    # every other option is set away from its default, so an ignored file fails the test
    parser = build_parser()[1][command]
    parser.ensure_built()
    required = [a for a in parser._actions if a.required]
    defaults = parse(
        command, *[x for a in required for x in (a.option_strings[0], from_flags[a.dest])]
    )
    unchanged = {k for k in defaults if defaults[k] == from_flags[k]}
    assert unchanged - ALTERNATIVES == {"command", "func", *(a.dest for a in required)}


def test_command_line_options_win_over_the_config_file(tmp_path):
    cfg = tmp_path / "options.toml"
    cfg.write_text(toml(model="m", prompt="Hi", stop=["A"], seed=4, greedy=True))
    flags = ["--prompt", "Yo", "--stop", "B", "--stop", "C", "--no-greedy"]
    assert parse("generate", "--config", cfg, *flags) == parse(
        "generate", "--model", "m", "--seed", "4", *flags
    )


def test_config_works_for_every_command(tmp_path):
    for name, _, _, _ in COMMANDS:
        leaves = ["list", "show"] if name == "data" else [None]
        for leaf in leaves:
            argv = [name] + ([leaf] if leaf else [])
            _, commands = build_parser()
            parser = commands[name]
            parser.ensure_built()
            if leaf:
                parser = parser._subparsers._group_actions[0].choices[leaf]
                parser.ensure_built()
            assert "--config" in parser._option_string_actions, " ".join(argv)


def test_every_option_has_help_from_its_dataclass():
    _, commands = build_parser()
    for _name, parser in commands.items():
        parser.ensure_built()
        subs = (
            [parser]
            if parser._subparsers is None
            else list(parser._subparsers._group_actions[0].choices.values())
        )
        for p in subs:
            p.ensure_built()
            for action in p._actions:
                assert action.help and action.help.strip(" .()"), f"{p.prog} {action.dest}"


def test_generate_defaults_are_sampling_configs():
    from gpt2tune.inference.generate import SamplingConfig

    args = build_parser()[0].parse_args(["generate", "--model", "m"])
    assert collect(args, "sampling", SamplingConfig) == SamplingConfig()
    flags = build_parser()[1]["generate"].format_help()
    for f in dataclasses.fields(SamplingConfig):
        if f.name != "stop_at_eot":  # never a flag: samples always end at <|endoftext|>
            assert "--" + f.name.replace("_", "-") in flags


def test_precision_choices_are_the_runtimes():
    from gpt2tune.runtime import PRECISIONS

    assert typing.get_args(Precision) == PRECISIONS


def test_generate_and_eval_share_the_loading_options():
    def flags(command):
        parser = build_parser()[1][command]
        parser.ensure_built()
        return {a.option_strings[0] for a in parser._actions if a.dest.startswith("load__")}

    assert flags("generate") == flags("eval") == {"--model", "--adapter", "--device", "--precision"}


@pytest.mark.parametrize(
    "argv",
    [
        ["generate", "--prompt", "x"],
        ["eval", "--data", "d.txt"],
        ["merge", "--adapter", "a", "--out", "o"],
    ],
)
def test_missing_model_is_one_line(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("gpt2tune: error: ") and "--model" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_a_model_from_the_config_file_is_enough(tmp_path):
    cfg = tmp_path / "options.toml"
    cfg.write_text(toml(model="m"))
    assert parse("generate", "--config", cfg, "--prompt", "x")["load__model"] == "m"


@pytest.mark.parametrize(
    "text, message",
    [
        ('top-k = "many"\n', "top-k should be an integer"),
        ('precision = "fp64"\n', "should be one of auto, fp32, bf16, fp16"),
        ('stop = "A"\n', "stop should be a list"),
        ("greedy = 1\n", "greedy should be true or false"),
        ("lora-r = 4\n", "unknown option 'lora-r'"),
        ("top-k = \n", "not valid TOML"),
    ],
)
def test_bad_config_file_is_one_line(capsys, tmp_path, text, message):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    assert main(["generate", "--model", "m", "--prompt", "x", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert message in err and str(cfg) in err and len(err.strip().splitlines()) == 1


def test_usage_errors_are_one_line(capsys):
    for argv in (
        ["generate", "--model", "m", "--top-k", "x"],
        ["nonsense"],
        [],
        ["generate", "--config"],
        ["info", "--lora-targets", "wte"],
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("gpt2tune: error: ") and len(err.strip().splitlines()) == 1, err


def test_help_and_version_return_zero(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("gpt2tune ")
    assert main(["generate", "--help"]) == 0
    assert "--max-new-tokens" in capsys.readouterr().out


def _imports_torch(*argv: str) -> bool:
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['gpt2tune', *{list(argv)!r}]\n"
        "try:\n    runpy.run_module('gpt2tune', run_name='__main__')\n"
        "except SystemExit as e:\n    assert e.code == 0, e.code\n"
        "print('torch' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()[-1] == "True"


def test_top_level_help_and_version_do_not_import_torch():
    assert not _imports_torch("--help")
    assert not _imports_torch("--version")
    assert _imports_torch("generate", "--help")  # the check sees torch where it is imported


def test_serve_takes_each_repeatable_flag_many_times():
    """--adapter, --variant, --classifier, --qa and --allowed-host each add one more (a second one
    must not replace the first)."""
    from gpt2tune.serve.server import ServeConfig

    args = build_parser()[0].parse_args(
        ["serve", "--model", "m"]
        + ["--adapter", "a=1", "--adapter", "b=2", "--variant", "v=3", "--variant", "w=4"]
        + ["--classifier", "c=5", "--classifier", "d=6", "--qa", "q=7", "--qa", "r=8"]
        + ["--allowed-host", "x.test", "--allowed-host", "y.test"]
    )
    cfg = collect(args, "serve", ServeConfig)
    assert cfg.adapter == ["a=1", "b=2"] and cfg.variant == ["v=3", "w=4"]
    assert cfg.classifier == ["c=5", "d=6"] and cfg.allowed_host == ["x.test", "y.test"]
    assert cfg.qa == ["q=7", "r=8"]
