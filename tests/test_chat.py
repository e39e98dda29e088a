"""Chat formats against transformers' apply_chat_template with the real templates: same text, same ids."""

from __future__ import annotations

import os

import pytest
import tokenizers

from memtrain_jax.checkpoint.gguf import default_gguf_path, load_gguf_tokenizer
from memtrain_jax.tokenizer import HFTokenizer, get_chat_format
from memtrain_jax.tokenizer.chat import SMOLLM2_DEFAULT_SYSTEM, chat_format_from_template

# Meta-Llama-3-8B-Instruct's tokenizer_config.json chat_template, verbatim.
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "You answer in one word."},
        {"role": "user", "content": "Capital of Peru?"},
        {"role": "assistant", "content": "Lima"},
        {"role": "user", "content": "  And of Chile?\n"},
    ],
    [
        {"role": "user", "content": "Search memory for 'Nile'."},
        {"role": "assistant", "content": "<tool>search('Nile')</tool>"},
        {"role": "tool", "content": "The Nile is a major north-flowing river in Africa."},
    ],
]


@pytest.fixture(scope="module")
def smollm2():
    """(our GGUF tokenizer, transformers' GGUF tokenizer carrying the file's chat template)."""
    from transformers import AutoTokenizer

    path = default_gguf_path()
    ref = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    return load_gguf_tokenizer(path), ref


@pytest.mark.parametrize("conversation", range(len(CONVERSATIONS)))
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_smollm2_format_matches_gguf_template(smollm2, conversation, add_generation_prompt):
    ours_tok, ref = smollm2
    messages = CONVERSATIONS[conversation]
    fmt = get_chat_format(chat_format_from_template(ours_tok.chat_template))
    assert fmt.name == "smollm2" and fmt.default_system == SMOLLM2_DEFAULT_SYSTEM
    kwargs = {"add_generation_prompt": add_generation_prompt}
    assert fmt.render(messages, **kwargs) == ref.apply_chat_template(messages, tokenize=False, **kwargs)
    ref_ids = ref.apply_chat_template(messages, tokenize=True, return_dict=False, **kwargs)
    assert fmt.encode(ours_tok, messages, **kwargs) == list(ref_ids)


def test_chatml_differs_only_by_default_system(smollm2):
    ours_tok, _ = smollm2
    messages = CONVERSATIONS[0]
    plain_chatml = get_chat_format("chatml")
    assert plain_chatml.render(messages) == "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n" + (
        "<|im_start|>assistant\n"
    )
    with_system = get_chat_format("chatml", default_system=SMOLLM2_DEFAULT_SYSTEM)
    assert with_system.render(messages) == get_chat_format("smollm2").render(messages)
    assert get_chat_format("smollm2", default_system=None).render(messages) == plain_chatml.render(messages)
    # A conversation that starts with a system message never gets the default one.
    assert with_system.render(CONVERSATIONS[1]) == plain_chatml.render(CONVERSATIONS[1])
    ids = plain_chatml.encode(ours_tok, messages)
    assert ids.count(ours_tok.token_to_id("<|im_start|>")) == 2 and ids.count(ours_tok.token_to_id("<|im_end|>")) == 1
    assert plain_chatml.stop_tokens(ours_tok) == (ours_tok.token_to_id("<|im_end|>"),)  # eos is <|im_end|> here


@pytest.fixture(scope="module")
def llama3(smollm2):
    """A tokenizer with Llama 3's chat specials (SmolLM2's BPE + added specials) and the official template."""
    from transformers import PreTrainedTokenizerFast

    backend = tokenizers.Tokenizer.from_str(smollm2[0].backend.to_str())
    backend.add_special_tokens([tokenizers.AddedToken(t, special=True, normalized=False) for t in LLAMA3_SPECIALS])
    ref = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|begin_of_text|>",
        eos_token="<|end_of_text|>",
        chat_template=LLAMA3_TEMPLATE,
    )
    ours = HFTokenizer.from_tokenizer(backend, bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>")
    return ours, ref


@pytest.mark.parametrize("conversation", range(len(CONVERSATIONS)))
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_llama3_format_matches_official_template(llama3, conversation, add_generation_prompt):
    ours_tok, ref = llama3
    messages = CONVERSATIONS[conversation]
    fmt = get_chat_format("llama3")
    kwargs = {"add_generation_prompt": add_generation_prompt}
    assert fmt.render(messages, **kwargs) == ref.apply_chat_template(messages, tokenize=False, **kwargs)
    ref_ids = ref.apply_chat_template(messages, tokenize=True, return_dict=False, **kwargs)
    assert fmt.encode(ours_tok, messages, **kwargs) == list(ref_ids)


def test_llama3_stop_tokens(llama3):
    tok, _ = llama3
    assert get_chat_format("llama3").stop_tokens(tok) == (
        tok.token_to_id("<|eot_id|>"),
        tok.token_to_id("<|end_of_text|>"),
    )
    assert chat_format_from_template(LLAMA3_TEMPLATE) == "llama3"


def test_plain_format(smollm2):
    tok, _ = smollm2
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    fmt = get_chat_format("plain")
    assert fmt.render(messages) == "User: hi\nAssistant: hello\nAssistant:"
    # BOS first, EOS closes each assistant turn (the model learns to stop), no chat markers.
    expected = [tok.bos_id, *tok.encode("User: hi\n"), *tok.encode("Assistant: hello\n"), tok.eos_id]
    assert fmt.encode(tok, messages) == expected + tok.encode("Assistant:")
    assert fmt.stop_tokens(tok) == (tok.eos_id,)
    assert chat_format_from_template(None) == "plain"


def test_bad_inputs(smollm2):
    with pytest.raises(ValueError, match="'chatm'"):
        get_chat_format("chatm")
    with pytest.raises(ValueError, match="empty conversation"):
        get_chat_format("smollm2").render([])
    with pytest.raises(ValueError, match="Message 1"):
        get_chat_format("chatml").render([{"role": "user", "content": "a"}, {"role": "user"}])
    tok, _ = smollm2
    with pytest.raises(ValueError, match=r"needs the tokens \['<\|begin_of_text\|>'"):
        get_chat_format("llama3").encode(tok, CONVERSATIONS[0])
