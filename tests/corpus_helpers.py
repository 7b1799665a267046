"""What the corpus and prepare tests share: a byte tokenizer with an end-of-text token, so that
documents can be cut apart again, and the words their generated documents are made of."""

from __future__ import annotations

from minigpt.tokenizer import ByteTokenizer

WORDS = "the model reads a token and predicts the next one while attention mixes them".split()


class EotByteTokenizer(ByteTokenizer):
    """Bytes plus an end-of-text token 256."""

    vocab_size = 257
    eot_token = 256

    def to_dict(self) -> dict:
        return {"type": "byte-eot"}
