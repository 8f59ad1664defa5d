"""Tokenizers: the LLM's own for real runs; a small byte-level BPE for tiny/micro models.

`encode_conversation` renders a conversation with a template, tokenises each segment,
expands the image placeholder into one image token per vision patch, and masks every
token but the assistant's answers with -100.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerFast

from .templates import IGNORE_INDEX, IMAGE_PLACEHOLDER, ConversationTemplate

EOS = "<|endoftext|>"
PAD = "<pad>"


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 1024, min_frequency: int = 2
                        ) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `texts` (the micro world's corpus and VL text)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=[EOS, PAD, IMAGE_PLACEHOLDER],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return wrap_tokenizer(tok)


def wrap_tokenizer(tok) -> PreTrainedTokenizerFast:
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS,
                                   unk_token=EOS, pad_token=PAD,
                                   additional_special_tokens=[IMAGE_PLACEHOLDER])
    fast.padding_side = "left"
    return fast


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False) -> PreTrainedTokenizerFast:
    """Load a tokenizer (hub id or local dir), add the image token and a pad token."""
    try:
        tok = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except OSError as e:
        raise _model_path_error(
            f"could not load a tokenizer from {name_or_path!r}: it is neither a local directory "
            "with tokenizer files nor a reachable hub id (offline? set HF_HOME to a cache that "
            f"holds it, or point model.tokenizer at a local dir). Cause: {e}") from e
    return ensure_special_tokens(tok)


def ensure_special_tokens(tok) -> PreTrainedTokenizerFast:
    if IMAGE_PLACEHOLDER not in tok.get_vocab():
        tok.add_special_tokens({"additional_special_tokens": [IMAGE_PLACEHOLDER]})
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else IMAGE_PLACEHOLDER
    tok.padding_side = "left"
    return tok


def image_token_id(tok) -> int:
    return tok.convert_tokens_to_ids(IMAGE_PLACEHOLDER)


def encode_conversation(tok, template: ConversationTemplate, conversations: list[dict], *,
                        n_image_tokens: int, max_len: int, for_generation: bool = False
                        ) -> tuple[list[int], list[int]]:
    """Token ids and labels (-100 outside assistant answers) for one conversation.

    The single image placeholder expands to `n_image_tokens` image tokens. Truncation
    keeps the start (image and question) and cuts answers at `max_len`.
    """
    img_id = image_token_id(tok)
    ids: list[int] = []
    labels: list[int] = []
    for text, is_target in template.segments(conversations, for_generation=for_generation):
        parts = text.split(IMAGE_PLACEHOLDER)
        for j, part in enumerate(parts):
            if j > 0:
                ids.extend([img_id] * n_image_tokens)
                labels.extend([IGNORE_INDEX] * n_image_tokens)
            if part:
                part_ids = tok(part, add_special_tokens=False)["input_ids"]
                ids.extend(part_ids)
                labels.extend(part_ids if is_target else [IGNORE_INDEX] * len(part_ids))
    if len(ids) > max_len:
        n_img = ids[:max_len].count(img_id)
        if n_img < ids.count(img_id):
            from ..errors import DataError

            raise DataError(f"a {len(ids)}-token sample (text before the image: "
                            f"{ids.index(img_id)} tokens) does not fit model.max_seq_len "
                            f"{max_len} with its {n_image_tokens} image tokens: truncation would "
                            "cut the image; raise model.max_seq_len or shorten the question")
        ids, labels = ids[:max_len], labels[:max_len]
    return ids, labels


def save_tokenizer(tok, path: str | Path) -> None:
    tok.save_pretrained(str(path))


def _model_path_error(message: str):
    """A model that cannot be loaded as configured: a user error (errors.ModelNotFoundError,
    also a FileNotFoundError)."""
    from ..errors import ModelNotFoundError

    return ModelNotFoundError(message)
