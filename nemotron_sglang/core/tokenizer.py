"""Tiny NLD-format tokenizer: build, save and load it (one responsibility).

Real Nemotron-Labs-Diffusion checkpoints cannot be downloaded here, so tests use tiny
checkpoints in the exact Hugging Face layout. This module builds their tokenizer offline: a
deterministic byte-level BPE whose ids 0..127 are special tokens with the NLD ids that matter
(bos ``<s>`` = 1, eos / chat turn end ``<|im_end|>`` = 11, diffusion mask ``<|mask|>`` = 100),
then the 256 byte-level symbols, then merges learned on a small embedded corpus. It writes and
reads the HF files (``tokenizer.json``, ``tokenizer_config.json``, ``special_tokens_map.json``,
``chat_template.jinja``). Only the standard library and ``tokenizers`` are used.
"""

from __future__ import annotations

import json
import os
from typing import Iterable

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

NUM_RESERVED = 128
UNK_ID, BOS_ID, EOS_ID, MASK_ID = 0, 1, 11, 100
_NAMED = {0: "<unk>", 1: "<s>", 2: "</s>", 3: "[TOOL_CALLS]", 4: "[AVAILABLE_TOOLS]",
          5: "[/AVAILABLE_TOOLS]", 6: "[TOOL_RESULTS]", 7: "[/TOOL_RESULTS]",
          10: "<|im_start|>", 11: "<|im_end|>", 12: "<think>", 13: "</think>", 100: "<|mask|>"}
THINK_START_ID, THINK_END_ID = 12, 13      # the reasoning section (SGLang's nemotron_3 parser)
# the Mistral family's tool markers (what SGLang's ``mistral`` tool-call parser reads)
TOOL_CALLS_ID, TOOLS_START_ID, TOOLS_END_ID, RESULTS_START_ID, RESULTS_END_ID = 3, 4, 5, 6, 7
# the VLM's image tokens (``with_image_tokens``), named as Pixtral's processor expects them
IMG, IMG_BREAK, IMG_END = "[IMG]", "[IMG_BREAK]", "[IMG_END]"
IMG_BREAK_ID, IMG_END_ID = 14, 15
# added but not "special": decoding with skip_special_tokens keeps them in the text, so a
# reasoning parser can split at </think> and a tool-call parser find [TOOL_CALLS] (as in Qwen3 /
# Nemotron / Mistral tokenizers)
TEXT_TOKENS = frozenset((THINK_START_ID, THINK_END_ID, TOOL_CALLS_ID, TOOLS_START_ID, TOOLS_END_ID,
                         RESULTS_START_ID, RESULTS_END_ID))
SPECIAL_TOKENS: dict[int, str] = {i: _NAMED.get(i, f"<SPECIAL_{i}>") for i in range(NUM_RESERVED)}
BYTE_ALPHABET_SIZE = 256
MIN_VOCAB_SIZE = NUM_RESERVED + BYTE_ALPHABET_SIZE + 1  # 385: at least one learned merge
MODEL_MAX_LENGTH = 4096

# the chat template: ChatML turns (``<|im_start|>role\n ... <|im_end|>\n``), then the assistant's
# turn (opening the reasoning section with ``enable_thinking``). The text template also renders
# the Mistral family's tool convention: the offered tools (name and parameter schema) as a first
# system turn ``[AVAILABLE_TOOLS][...][/AVAILABLE_TOOLS]``; an assistant's calls as
# ``[TOOL_CALLS] [{"name":"...", "arguments":{...}}]`` (spaced as SGLang's mistral parser's
# structural tag, which ``tool_choice`` required / named forces: its grammar takes the arguments
# from the ``{``, no space before it); a ``tool`` message as
# ``[TOOL_RESULTS]...[/TOOL_RESULTS]``; an assistant's ``reasoning_content`` as
# ``<think>\n...\n</think>\n\n`` before its content (none: ``<think></think>\n\n``). The text and the VLM templates differ in
# how a message's content is written.
# Thinking is off unless ``enable_thinking`` is given true: written as SGLang's template detection
# reads it (``explicit_enable_thinking_default_false``), so a reasoning parser such as nemotron_3
# leaves a plain chat's answer in ``content``.
_THINK_DEFAULT = "{% if not enable_thinking is defined %}{% set enable_thinking = false %}{% endif %}"
_BOS = _THINK_DEFAULT + "{{ '<s>' }}"
_LOOP = "{% for message in messages %}"
_CHAT_OPEN = _BOS + _LOOP


def _chat_close(thinking_off: str) -> str:
    """The end of the message loop and the assistant's turn: ``<think>\n`` opened with
    ``enable_thinking``, else ``thinking_off`` written."""
    off = "{% else %}{{ '" + thinking_off + "' }}" if thinking_off else ""
    return ("{% endfor %}"
            "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
            "{% if enable_thinking %}{{ '<think>\n' }}" + off + "{% endif %}"
            "{% endif %}")


_CHAT_CLOSE = _chat_close("")
_TOOLS = (
    "{% if tools %}{{ '<|im_start|>system\n[AVAILABLE_TOOLS][' }}"
    "{% for tool in tools %}{% set f = tool['function'] if tool['function'] is defined else tool %}"
    "{{ {'name': f['name'], 'parameters': f['parameters']} | tojson }}"
    "{% if not loop.last %}{{ ', ' }}{% endif %}{% endfor %}"
    "{{ '][/AVAILABLE_TOOLS]<|im_end|>\n' }}{% endif %}"
)
_MESSAGE = (
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['role'] == 'tool' %}"
    "{{ '[TOOL_RESULTS]' + message['content'] + '[/TOOL_RESULTS]' }}"
    "{% else %}"
    "{% if message['role'] == 'assistant' %}"
    "{% if message['reasoning_content'] is defined and message['reasoning_content'] %}"
    "{{ '<think>\n' + message['reasoning_content'] + '\n</think>\n\n' }}"
    "{% else %}{{ '<think></think>\n\n' }}{% endif %}{% endif %}"
    "{{ message['content'] or '' }}"
    "{% if message['tool_calls'] is defined and message['tool_calls'] %}{{ '[TOOL_CALLS] [' }}"
    "{% for call in message['tool_calls'] %}"
    "{% set f = call['function'] if call['function'] is defined else call %}"
    "{{ '{\"name\":' + (f['name'] | tojson) + ', \"arguments\":' }}"
    "{% if f['arguments'] is string %}{{ f['arguments'] }}{% else %}{{ f['arguments'] | tojson }}"
    "{% endif %}{{ '}' }}{% if not loop.last %}{{ ', ' }}{% endif %}{% endfor %}{{ ']' }}"
    "{% endif %}{% endif %}"
    "{{ '<|im_end|>' + '\n' }}"
)
# the text model's turn opens its reasoning section either way: ``<think>\n`` to be written
# (``enable_thinking``), else closed empty, ``<think></think>\n\n`` (as every earlier assistant
# turn without reasoning is written), so whether it reasons is the request's choice, not the model's
CHAT_TEMPLATE = _BOS + _TOOLS + _LOOP + _MESSAGE + _chat_close("<think></think>\n\n")

# the VLM's: a message's content is a string, or a list of parts ({"type": "text", "text": ...} or
# {"type": "image"}, as SGLang's chat route hands them over), each image written as [IMG] where it
# stands (the processor expands it); inferred, the released VLM's template is not readable here
VLM_CHAT_TEMPLATE = (
    _CHAT_OPEN
    + "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '[IMG]' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>' + '\n' }}"
    + _CHAT_CLOSE
)

_CORPUS = """\
The quick brown fox jumps over the lazy dog. A diffusion language model fills masked tokens in
parallel, block by block, and commits the most confident predictions at every denoising step.
Nemotron models are trained on large amounts of text, code and mathematics. The server receives
a request, tokenizes the prompt, runs the model on the accelerator and streams the answer back.
She opened the window and the cold morning air filled the small kitchen with the smell of rain.
We measured the latency of each request and reported the median, the mean and the tail values.
Please write a short story about a robot who learns to paint with watercolors in the mountains.
What is the capital of France? The capital of France is Paris, a city on the river Seine.
How many days are there in a leap year? There are 366 days in a leap year and 365 otherwise.
The meeting starts at 10:30 on Monday, March 4th, 2024, in room 215 of the north building.
In 1969, astronauts landed on the Moon; the mission lasted 8 days, 3 hours and 18 minutes.
Water boils at 100 degrees Celsius at sea level, which is 212 degrees Fahrenheit.
Pi is approximately 3.14159, and the square root of 2 is about 1.41421356.
Our team shipped version 2.7.1 with 128 bug fixes, 42 new features and 7 performance improvements.
The train leaves the station at 6:45 in the evening and arrives the next morning around 9:15.
Students should read the first three chapters before the exam on Thursday afternoon.
If you cannot find the answer in the documentation, ask a question on the community forum.
Each layer has its own attention weights, a feed forward network and two normalization layers.
The cache stores keys and values so that earlier positions do not have to be recomputed.
Good software is simple to read, easy to test, and honest about what it does not support.
My grandmother grows tomatoes, beans, peppers and sunflowers in her garden every summer.
The library closes at eight o'clock, but the reading room stays open until midnight.
def add(a, b):
    return a + b

def fibonacci(n: int) -> int:
    if n < 2:
        return n
    return fibonacci(n - 1) + fibonacci(n - 2)

class Counter:
    def __init__(self, start=0):
        self.value = start

    def increment(self, step=1):
        self.value += step
        return self.value

for i in range(10):
    print(f"item {i}: {i * i}")

import json
data = {"name": "tiny", "layers": 2, "hidden_size": 64, "vocab_size": 512}
with open("config.json", "w") as handle:
    json.dump(data, handle, indent=2)

numbers = [x for x in range(100) if x % 3 == 0]
total = sum(numbers) / len(numbers)
assert total > 0, "the average must be positive"
"""


def _default_texts() -> list[str]:
    numbers = " ".join(str(i * 37 % 1000) for i in range(200))
    return _CORPUS.splitlines() + [numbers]


def build_tokenizer(vocab_size: int = 512, texts: Iterable[str] | None = None,
                    split_digits: bool = False) -> Tokenizer:
    """Train the deterministic byte-level BPE tokenizer with exactly ``vocab_size`` entries.

    ``split_digits`` isolates every digit before the byte-level split (as Llama / Mistral
    tokenizers do), so no merge spans two digits: "417" is always ``4 1 7``. A tiny model can
    then learn carries digit by digit instead of a successor table over multi-digit tokens.
    """
    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(f"vocab_size must be >= {MIN_VOCAB_SIZE}, got {vocab_size}")
    specials = [AddedToken(SPECIAL_TOKENS[i], special=i not in TEXT_TOKENS, normalized=False)
                for i in range(NUM_RESERVED)]
    tok = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                  byte_level])
                         if split_digits else byte_level)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=0,
        show_progress=False,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(list(_default_texts() if texts is None else texts), trainer=trainer)
    tok.add_special_tokens(specials)
    data = json.loads(tok.to_str())           # the text tokens are added, not special
    for entry in data["added_tokens"]:
        if entry["id"] in TEXT_TOKENS:
            entry["special"] = False
    tok = Tokenizer.from_str(json.dumps(data))
    got = tok.get_vocab_size()
    if got != vocab_size:
        raise ValueError(f"training texts too small: learned vocab of {got}, wanted {vocab_size}")
    for i, s in SPECIAL_TOKENS.items():
        if tok.token_to_id(s) != i:
            raise RuntimeError(f"special token {s!r} got id {tok.token_to_id(s)}, expected {i}")
    return tok


def with_image_tokens(tok: Tokenizer) -> Tokenizer:
    """The VLM's tokenizer: ``tok`` with the Pixtral image tokens. ``[IMG]`` (the image token, one
    per image cell) is appended as the last id, as the released VLM's 131073rd; ``[IMG_BREAK]``
    (end of a row of cells) and ``[IMG_END]`` (end of an image) rename reserved specials."""
    data = json.loads(tok.to_str())
    vocab = data["model"]["vocab"]
    for i, name in ((IMG_BREAK_ID, IMG_BREAK), (IMG_END_ID, IMG_END)):
        old = SPECIAL_TOKENS[i]
        vocab[name] = vocab.pop(old)
        for entry in data["added_tokens"]:
            if entry["id"] == i:
                entry["content"] = name
    out = Tokenizer.from_str(json.dumps(data))
    image_id = out.get_vocab_size()
    out.add_special_tokens([AddedToken(IMG, special=True, normalized=False)])
    if out.token_to_id(IMG) != image_id:
        raise RuntimeError(f"{IMG} got id {out.token_to_id(IMG)}, expected {image_id}")
    return out


def _added_token_entry(content: str, special: bool = True) -> dict:
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False,
            "single_word": False, "special": special}


def save_tokenizer(tok: Tokenizer, directory: str | os.PathLike,
                   chat_template: str = CHAT_TEMPLATE) -> None:
    """Write tokenizer.json, tokenizer_config.json, special_tokens_map.json, chat_template.jinja."""
    os.makedirs(directory, exist_ok=True)
    tok.save(os.path.join(directory, "tokenizer.json"))
    names = {"bos_token": SPECIAL_TOKENS[BOS_ID], "eos_token": SPECIAL_TOKENS[EOS_ID],
             "unk_token": SPECIAL_TOKENS[UNK_ID], "pad_token": SPECIAL_TOKENS[EOS_ID]}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **names,
        "add_bos_token": False,
        "model_max_length": MODEL_MAX_LENGTH,
        "chat_template": chat_template,
        "added_tokens_decoder": {str(i): _added_token_entry(t.content, t.special)
                                 for i, t in sorted(tok.get_added_tokens_decoder().items())},
    }
    files = {
        "tokenizer_config.json": json.dumps(config, indent=2, ensure_ascii=False) + "\n",
        "special_tokens_map.json": json.dumps(names, indent=2) + "\n",
        "chat_template.jinja": chat_template,
    }
    for name, text in files.items():
        with open(os.path.join(directory, name), "w", encoding="utf-8", newline="") as handle:
            handle.write(text)


def load_tokenizer(directory: str | os.PathLike) -> Tokenizer:
    """Load ``tokenizer.json`` from ``directory``."""
    path = os.path.join(directory, "tokenizer.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no tokenizer.json at {path}")
    return Tokenizer.from_file(path)


def encode(tok: Tokenizer, text: str) -> list[int]:
    """Token ids of ``text``; special-token text maps to its id, no bos/eos is added."""
    return tok.encode(text, add_special_tokens=False).ids


def decode(tok: Tokenizer, ids: list[int], skip_special: bool = False) -> str:
    """Text of ``ids``; ``skip_special`` drops the special tokens (ids < 128)."""
    return tok.decode(list(ids), skip_special_tokens=skip_special)
