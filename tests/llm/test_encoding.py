"""Chat encoding: the template rendered as transformers renders it, labels on exactly the
assistant answers and their end-of-turn tokens, truncation at turn boundaries."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest

from modelfab.hub.chat import chat_tokenizer_folder
from modelfab.llm.encoding import IGNORE_INDEX, count_tokens, encode_chat, render_chat
from modelfab.llm.tokenizer import ChatTokenizer, load_tokenizer, tiny_tokenizer
from tests.llm.files import needs_smollm2

CHAT = [
    {"role": "system", "content": "You answer in one word."},
    {"role": "user", "content": "Capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Italy? Answer with 2 words, 100%."},
    {"role": "assistant", "content": "Rome, Italy."},
]


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> ChatTokenizer:
    needs_smollm2()
    hub = tmp_path_factory.mktemp("hub")
    return load_tokenizer(chat_tokenizer_folder(hub, "smollm2-135m-instruct"))


def trained_text(tok: ChatTokenizer, ids: list[int], labels: list[int]) -> list[str]:
    """The labelled stretches, each decoded with its special tokens."""
    runs: list[list[int]] = []
    for i, (token, label) in enumerate(zip(ids, labels, strict=True)):
        if label == IGNORE_INDEX:
            continue
        assert label == token
        if i and labels[i - 1] != IGNORE_INDEX:
            runs[-1].append(token)
        else:
            runs.append([token])
    return [tok.decode(run, skip_special_tokens=False) for run in runs]


@pytest.mark.parametrize("which", ["tiny", "smollm2"])
def test_labels_cover_exactly_the_answers_and_their_end_tokens(
    which: str, request: pytest.FixtureRequest
) -> None:
    tok = tiny_tokenizer() if which == "tiny" else request.getfixturevalue("smollm2")
    enc = encode_chat(tok, CHAT, max_length=4096)

    assert trained_text(tok, enc.input_ids, enc.labels) == [
        "Paris.<|im_end|>",
        "Rome, Italy.<|im_end|>",
    ]
    assert tok.decode(enc.input_ids, skip_special_tokens=False) == render_chat(tok, CHAT)
    assert not enc.truncated
    assert enc.trained_tokens == sum(len(tok.encode(t)) for t in ("Paris.", "Rome, Italy.")) + 2
    assert count_tokens(tok, CHAT) == len(enc.input_ids)


def test_render_chat_is_what_transformers_renders(tmp_path: Path, smollm2: ChatTokenizer) -> None:
    from transformers import AutoTokenizer

    for tok in (tiny_tokenizer(), smollm2):
        folder = tmp_path / str(tok.vocab_size)
        tok.save(folder)
        reference = AutoTokenizer.from_pretrained(folder)
        for prompt in (False, True):
            want = reference.apply_chat_template(
                CHAT[:4], tokenize=False, add_generation_prompt=prompt
            )
            assert render_chat(tok, CHAT[:4], add_generation_prompt=prompt) == want
        ids = reference(render_chat(tok, CHAT), add_special_tokens=False)["input_ids"]
        assert ids == encode_chat(tok, CHAT, max_length=4096).input_ids


def test_the_default_system_turn_is_not_trained() -> None:
    tok = tiny_tokenizer()
    chat = CHAT[1:3]
    text = render_chat(tok, chat)
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
    enc = encode_chat(tok, chat, max_length=4096)
    assert trained_text(tok, enc.input_ids, enc.labels) == ["Paris.<|im_end|>"]


def test_an_assistant_first_conversation_is_found_by_its_content() -> None:
    # The template adds a system turn only when the conversation has messages, so the
    # prefix before the first answer renders differently: the content is searched instead.
    tok = tiny_tokenizer()
    chat = [{"role": "assistant", "content": "Hello! Ask me anything."}, *CHAT[1:3]]
    enc = encode_chat(tok, chat, max_length=4096)
    assert trained_text(tok, enc.input_ids, enc.labels) == [
        "Hello! Ask me anything.<|im_end|>",
        "Paris.<|im_end|>",
    ]


def test_truncation_keeps_whole_turns() -> None:
    tok = tiny_tokenizer()
    full = encode_chat(tok, CHAT, max_length=4096)
    first_turn_end = full.input_ids.index(tok.eos_id, full.labels.index(tok.encode("P")[0])) + 1

    assert full.input_ids[-2:] == [tok.eos_id, *tok.encode("\n")]

    almost = encode_chat(tok, CHAT, max_length=len(full.input_ids) - 1)
    assert almost.truncated and almost.input_ids == full.input_ids[:-1]  # only the newline

    cut = encode_chat(tok, CHAT, max_length=len(full.input_ids) - 2)
    assert cut.truncated
    assert len(cut.input_ids) == first_turn_end  # the second exchange goes whole
    assert cut.input_ids == full.input_ids[:first_turn_end]
    assert trained_text(tok, cut.input_ids, cut.labels) == ["Paris.<|im_end|>"]


def test_a_first_answer_longer_than_max_length_is_cut_but_still_trained() -> None:
    tok = tiny_tokenizer()
    chat = [{"role": "user", "content": "Count."}, {"role": "assistant", "content": "1 2 3 " * 50}]
    prompt = len(tok.encode(render_chat(tok, chat[:1], add_generation_prompt=True)))
    enc = encode_chat(tok, chat, max_length=prompt + 10)
    assert enc.truncated and len(enc.input_ids) == prompt + 10
    assert enc.trained_tokens == 10


def test_a_conversation_without_answers_trains_nothing() -> None:
    enc = encode_chat(tiny_tokenizer(), CHAT[:2], max_length=4096)
    assert enc.trained_tokens == 0
    assert set(enc.labels) == {IGNORE_INDEX}


def test_template_refusals_and_bad_lengths_are_value_errors() -> None:
    strict = replace(
        tiny_tokenizer(),
        chat_template="{% if messages[0]['role'] != 'user' %}"
        "{{ raise_exception('Conversations must start with the user') }}{% endif %}x",
    )
    with pytest.raises(ValueError, match="must start with the user"):
        encode_chat(strict, CHAT, max_length=10)
    with pytest.raises(ValueError, match="max_length"):
        encode_chat(tiny_tokenizer(), CHAT, max_length=0)


def test_counting_tokens_needs_no_torch(tmp_path: Path) -> None:
    import subprocess

    code = (
        "import sys\nfrom pathlib import Path\n"
        "from modelfab.hub.chat import chat_tokenizer_folder\n"
        "from modelfab.llm.tokenizer import load_tokenizer\n"
        "from modelfab.llm.encoding import count_tokens, encode_chat\n"
        f"tok = load_tokenizer(chat_tokenizer_folder(Path({str(tmp_path)!r}), 'tiny-chat'))\n"
        "assert count_tokens(tok, [{'role': 'user', 'content': 'hi'}]) > 2\n"
        "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
