"""Generation against transformers' generate() and logits processors."""

import pytest
import torch

from gpt2tune.core.tokenizer import Tokenizer
from gpt2tune.errors import UserError
from gpt2tune.formats.hf import load_model
from gpt2tune.inference.generate import (
    SamplingConfig,
    build_context,
    cut_at_stop,
    decode,
    generate,
    generate_ids,
    process_logits,
)

EOT = 50256


@pytest.fixture(scope="module")
def ours(tiny_hf):
    return load_model(tiny_hf[0])


def test_greedy_matches_transformers_generate(tiny_hf, ours):
    _, hf = tiny_hf
    prompt = Tokenizer().encode("The quick brown fox jumps over")
    ref = hf.generate(
        torch.tensor([prompt]),
        attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        do_sample=False,
        max_new_tokens=30,
        min_new_tokens=30,
        pad_token_id=EOT,
    )
    got = generate_ids(
        ours,
        [prompt],
        SamplingConfig(max_new_tokens=30, greedy=True, stop_at_eot=False),
        eot_id=EOT,
    )
    assert got[0] == ref[0, len(prompt) :].tolist()
    assert len(got[0]) == 30


def test_kv_cache_output_identical_to_no_cache(ours):
    prompts = [[464, 2068, 7586], [40, 1101]]
    for cfg in (
        SamplingConfig(max_new_tokens=20, greedy=True, stop_at_eot=False),
        SamplingConfig(max_new_tokens=20, top_k=50, seed=3, stop_at_eot=False),
    ):
        with_cache = generate_ids(ours, prompts, cfg, eot_id=EOT, use_cache=True)
        without = generate_ids(ours, prompts, cfg, eot_id=EOT, use_cache=False)
        assert with_cache == without


def test_left_padded_batch_equals_each_prompt_alone(ours):
    prompts = [[464, 2068, 7586, 21831, 18045], [40], [1639, 389, 257]]
    cfg = SamplingConfig(max_new_tokens=12, greedy=True, stop_at_eot=False)
    batch = generate_ids(ours, prompts, cfg, eot_id=EOT)
    for p, row in zip(prompts, batch):
        assert generate_ids(ours, [p], cfg, eot_id=EOT)[0] == row


def _hf_processors(cfg: SamplingConfig):
    from transformers.generation.logits_process import (
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    procs = []
    if cfg.repetition_penalty != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(cfg.repetition_penalty))
    procs.append(TemperatureLogitsWarper(cfg.temperature))
    if cfg.top_k:
        procs.append(TopKLogitsWarper(cfg.top_k))
    if cfg.top_p < 1:
        procs.append(TopPLogitsWarper(cfg.top_p))
    return procs


@pytest.mark.parametrize(
    "cfg",
    [
        SamplingConfig(temperature=0.7, top_k=20),
        SamplingConfig(top_p=0.9),
        SamplingConfig(temperature=1.3, top_p=0.5, repetition_penalty=1.3),
    ],
)
def test_sampling_filters_match_transformers(cfg):
    torch.manual_seed(0)
    logits = torch.randn(4, 1000) * 3
    context = torch.randint(0, 1000, (4, 30))
    ref = logits.clone()
    for proc in _hf_processors(cfg):
        ref = proc(context, ref)
    got = process_logits(logits, context, cfg)
    assert torch.equal(torch.isinf(got), torch.isinf(ref))
    finite = ~torch.isinf(ref)
    torch.testing.assert_close(got[finite], ref[finite])


def test_top_k_keeps_exactly_k_even_with_ties():
    logits = torch.zeros(1, 100)  # all tied
    got = process_logits(logits, torch.zeros(1, 1, dtype=torch.long), SamplingConfig(top_k=5))
    assert int(torch.isfinite(got).sum()) == 5


def test_same_seed_same_samples_and_batch_of_samples(ours):
    tok = Tokenizer()
    cfg = SamplingConfig(max_new_tokens=15, top_k=40, seed=7, stop_at_eot=False)
    a = generate(ours, tok, "Once upon a time", cfg, num_samples=3)
    b = generate(ours, tok, "Once upon a time", cfg, num_samples=3)
    assert [s.token_ids for s in a] == [s.token_ids for s in b]
    assert len({tuple(s.token_ids) for s in a}) > 1  # rows are sampled independently
    for s in a:
        assert s.text == tok.decode(s.token_ids)


def test_priming_is_trimmed_from_the_left():
    tok = Tokenizer()
    prime = " ".join(f"word{i}" for i in range(200))
    ids, trimmed = build_context(tok, "The end", prime, max_new_tokens=20, n_positions=64)
    assert len(ids) == 64 - 20 and trimmed > 0
    assert tok.decode(ids).endswith("\nThe end")
    full = tok.encode(prime + "\nThe end")
    assert ids == full[-44:]


@pytest.mark.parametrize(
    "prime, prompt, text",
    [
        ("FALSTAFF: Peace.", "HAL:", "FALSTAFF: Peace.\nHAL:"),  # joined with a newline
        ("FALSTAFF: Peace.\n", "HAL:", "FALSTAFF: Peace.\nHAL:"),  # already ends in whitespace
        ("FALSTAFF: Peace. ", "HAL:", "FALSTAFF: Peace. HAL:"),
        ("FALSTAFF: Peace.", "", "FALSTAFF: Peace."),  # no prompt: nothing to join
        (None, "HAL:", "HAL:"),
    ],
)
def test_prime_is_joined_as_documented(prime, prompt, text):
    ids, trimmed = build_context(Tokenizer(), prompt, prime, max_new_tokens=8, n_positions=64)
    assert ids == Tokenizer().encode(text) and trimmed == 0


def test_cut_at_stop_cuts_at_the_earliest_stop_and_keeps_the_token_that_completes_it():
    """Reference by hand: in "one two three two", the stops " two" (twice) and "o thr" start at
    3 and 6; the text is cut at 3, and the ids end with the token that completes " two"."""
    tok = Tokenizer()
    ids = tok.encode("one two three two")
    assert [tok.decode([i]) for i in ids] == ["one", " two", " three", " two"]
    assert cut_at_stop(tok, ids, ["o thr", " two"]) == ("one", ids[:2], True)
    assert cut_at_stop(tok, ids, ["o thr"]) == ("one tw", ids[:3], True)
    assert cut_at_stop(tok, ids, ["four", ""]) == ("one two three two", ids, False)


def test_streamed_pieces_join_up_to_the_text_with_long_stop_strings(ours):
    """Text is held back while it could be the start of a stop string (here 3 and 5 characters
    long), so the streamed pieces join up to exactly the returned text; one sample by default."""
    tok = Tokenizer()
    cfg = SamplingConfig(max_new_tokens=30, greedy=True, stop_at_eot=False)
    (free,) = generate(ours, tok, "Hello", cfg)
    half = len(free.text) // 2
    assert half > 12
    for stops in ([free.text[half : half + 3]], [free.text[half + 2 : half + 7], "never-appears"]):
        pieces: list[str] = []
        cfg = SamplingConfig(max_new_tokens=30, greedy=True, stop_at_eot=False, stop=stops)
        (cut,) = generate(
            ours, tok, "Hello", cfg, on_text=lambda _row, p, pieces=pieces: pieces.append(p)
        )
        assert cut.text == free.text[: free.text.find(stops[0])]
        assert "".join(pieces) == cut.text and len(pieces) > 1


def test_stop_strings_cut_text(ours):
    tok = Tokenizer()
    cfg = SamplingConfig(max_new_tokens=30, greedy=True, stop_at_eot=False)
    free = generate(ours, tok, "Hello", cfg)[0]
    assert len(free.text) > 4
    stop = free.text[2:4]
    cut = generate(
        ours,
        tok,
        "Hello",
        SamplingConfig(max_new_tokens=30, greedy=True, stop_at_eot=False, stop=[stop]),
    )[0]
    assert cut.text == free.text[: free.text.find(stop)]
    assert free.token_ids[: len(cut.token_ids)] == cut.token_ids


def test_prompt_too_long_for_context_is_a_clear_error(ours):
    with pytest.raises(UserError, match="exceeds the context"):
        generate_ids(ours, [[1] * 60], SamplingConfig(max_new_tokens=10), eot_id=EOT)


def test_decode_yields_each_rows_tokens_and_leaves_no_global_state(ours):
    """The iterator behind generate: each row's tokens equal the row decoded alone with the same
    greedy settings, a row that ended yields None, and grad mode and autocast (thread-wide
    settings) are as the consumer left them between steps."""
    prompts = [[464, 2068, 7586, 21831, 18045], [40], [1639, 389, 257]]
    cfg = SamplingConfig(max_new_tokens=10, greedy=True)
    rows: list[list[int]] = [[] for _ in prompts]
    ended = [False] * len(prompts)
    for step in decode(ours, prompts, cfg, eot_id=EOT, autocast_dtype=torch.bfloat16):
        assert torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu")
        for i, token in enumerate(step):
            assert (token is None) == ended[i]  # None exactly after a row's end
            if token is not None:
                rows[i].append(token)
                ended[i] = token == EOT
    for p, row in zip(prompts, rows):
        alone = generate_ids(ours, [p], cfg, eot_id=EOT, autocast_dtype=torch.bfloat16)[0]
        assert row[: len(alone)] == alone and row[len(alone) :] in ([], [EOT])
    # leaving the loop early stops decoding: no more steps are computed
    steps = 0
    for _ in decode(
        ours, prompts, SamplingConfig(max_new_tokens=30, greedy=True, stop_at_eot=False), eot_id=EOT
    ):
        steps += 1
        if steps == 3:
            break
    assert steps == 3


def test_draw_follows_the_distribution_and_never_picks_filtered_tokens():
    from gpt2tune.inference.sampling import draw

    probs = torch.tensor([0.0, 0.5, 0.0, 0.2, 0.3, 0.0])
    logits = probs.log().repeat(20_000, 1)  # -inf where the probability is 0
    got = draw(logits, torch.Generator().manual_seed(0))
    counts = torch.bincount(got, minlength=6).float() / len(got)
    assert counts[[0, 2, 5]].sum() == 0
    # within 4 standard deviations of each probability
    sd = (probs * (1 - probs) / len(got)).sqrt()
    assert ((counts - probs).abs() <= 4 * sd + 1e-9).all(), counts
    again = draw(logits, torch.Generator().manual_seed(0))
    assert torch.equal(got, again)


@pytest.mark.parametrize(
    "args",
    [
        ["--num-samples", "0"],
        ["--max-new-tokens", "0"],
        ["--max-new-tokens", "64"],  # the tiny model's whole context
        ["--temperature", "0"],
        ["--top-k", "-1"],
        ["--top-p", "1.5"],
        ["--repetition-penalty", "0"],
    ],
)
def test_the_cli_names_the_flag_it_was_given(tiny_hf, capsys, args):
    """The library's errors name fields; `gpt2tune generate` spells them as its own flags: the
    flag the test gave, and only flags the command has."""
    import re

    from gpt2tune.cli.main import build_parser, main

    _, commands = build_parser()
    commands["generate"].ensure_built()
    flags = set(commands["generate"]._option_string_actions)
    code = main(["generate", "--model", str(tiny_hf[0]), "--prompt", "Hi", *args])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert args[0] in err and "`" not in err, err
    assert set(re.findall(r"--[a-z][a-z-]*", err)) <= flags, err


def test_library_errors_carry_the_field_they_name():
    with pytest.raises(UserError) as info:
        SamplingConfig(top_k=-1).validate()
    assert info.value.field == "top_k" and str(info.value).startswith("top_k must be >= 0")
    with pytest.raises(UserError) as info:
        generate(None, None, "x", SamplingConfig(), num_samples=0)
    assert info.value.field == "num_samples"
