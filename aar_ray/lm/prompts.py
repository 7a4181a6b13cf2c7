"""Rows as prompts in the released sandbox's shape, and the two label tokens read after them.

    binary:      Question: {question}\\nAnswer: {choice}\\nLabel:                 -> False / True
    comparison:  Question: {prompt}\\nAnswer A: {first}\\nAnswer B: {second}\\nLabel:  -> B / A

wrapped in the tokenizer's chat template for chat models and left as plain text for base models.
The same encoder feeds training, prediction and every inference engine, so all of them see
identical tokens for a row.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aar_ray.lm.config import CausalLMConfig

BINARY_TEMPLATE = "Question: {question}\nAnswer: {choice}\nLabel:"
COMPARISON_TEMPLATE = "Question: {prompt}\nAnswer A: {first}\nAnswer B: {second}\nLabel:"
# The sandbox's zero-shot prompts (its ue_zeroshot): a claim the base model judges True/False.
BINARY_ZERO_SHOT_TEMPLATE = ("Question: {question}\nProposed Answer: {choice}\n"
                             "Claim: This answer is correct.\nI think this claim is (True or False):")
COMPARISON_ZERO_SHOT_TEMPLATE = ("Question: {prompt}\nAnswer A: {first}\nAnswer B: {second}\n"
                                 "Claim: Answer A is more helpful than Answer B.\n"
                                 "I think this Claim is (True or False):")

TEXT_FIELDS = ("question", "choice", "prompt", "first", "second")
# Qwen3 chat templates may insert an empty thinking block; the sandbox strips it too.
_EMPTY_THINK = "<think>\n\n</think>\n\n"


@dataclass(frozen=True)
class PromptStyle:
    """A prompt template and its two label strings; `positive` is the one whose probability
    is reported (True for binary rows, A for comparison rows)."""

    template: str
    negative: str
    positive: str


# Label strings carry no leading space, as in the sandbox: in chat models they follow
# "assistant\n", in base models they follow "Label:" directly.
STYLES = {
    ("binary", False): PromptStyle(BINARY_TEMPLATE, "False", "True"),
    ("comparison", False): PromptStyle(COMPARISON_TEMPLATE, "B", "A"),
    ("binary", True): PromptStyle(BINARY_ZERO_SHOT_TEMPLATE, "False", "True"),
    ("comparison", True): PromptStyle(COMPARISON_ZERO_SHOT_TEMPLATE, " False", " True"),
}


def row_kind(row: dict) -> str:
    return "binary" if isinstance(row.get("choice"), str) else "comparison"


def as_records(rows) -> list[dict]:
    """Rows as a list of dicts, whether given as dicts or as a pandas DataFrame."""
    return rows.to_dict("records") if hasattr(rows, "to_dict") else list(rows)


@dataclass(frozen=True)
class EncodedPrompt:
    ids: list[int]
    negative: int  # token id of the negative label (False / B)
    positive: int  # token id of the positive label (True / A)


def _is_base_model(name: str) -> bool:
    return "base" in Path(name.rstrip("/")).name.lower()


class PromptEncoder:
    """Rows -> token ids ending where the label token would come, plus the label token ids.

    The same encoder feeds training, prediction and every inference engine, so all of them see
    identical tokens for a row.
    """

    def __init__(self, tokenizer, config: CausalLMConfig):
        self.tokenizer = tokenizer
        self.max_length = config.max_length
        has_template = bool(getattr(tokenizer, "chat_template", None))
        wanted = config.chat_template
        self.chat = has_template and (not _is_base_model(config.model) if wanted is None else wanted)
        self._label_ids: dict[str, int] = {}

    def label_id(self, label: str) -> int:
        if label not in self._label_ids:
            # The first token of the label string, as the sandbox reads it.
            self._label_ids[label] = self.tokenizer.encode(label, add_special_tokens=False)[0]
        return self._label_ids[label]

    def text(self, row: dict, zero_shot: bool = False) -> str:
        style = STYLES[(row_kind(row), zero_shot)]
        return self.wrap(style.template.format(**row), zero_shot)

    def wrap(self, user_text: str, zero_shot: bool = False) -> str:
        """The chat template around a user turn, ending at the assistant's first token.
        Zero-shot prompts are plain text, as the sandbox scores them."""
        if not self.chat or zero_shot:
            return user_text
        text = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": user_text}], tokenize=False, add_generation_prompt=True)
        return text.replace(_EMPTY_THINK, "")

    def encode(self, row: dict, zero_shot: bool = False) -> EncodedPrompt:
        style = STYLES[(row_kind(row), zero_shot)]
        ids = self.token_ids(self.text(row, zero_shot))
        if len(ids) > self.max_length:
            ids = self._truncated(row, zero_shot)
        return EncodedPrompt(ids, self.label_id(style.negative), self.label_id(style.positive))

    def encode_text(self, prompt: str, labels: tuple[str, str]) -> EncodedPrompt:
        """An already formatted prompt and its (negative, positive) label strings."""
        ids = self.token_ids(prompt)[-self.max_length:]
        return EncodedPrompt(ids, self.label_id(labels[0]), self.label_id(labels[1]))

    def token_ids(self, text: str) -> list[int]:
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        bos = self.tokenizer.bos_token_id
        if bos is not None and not self.chat and (not ids or ids[0] != bos):
            ids = [bos] + ids
        return ids

    def _truncated(self, row: dict, zero_shot: bool) -> list[int]:
        """Fit a long row into max_length: cut the longest text fields from their middle, to a
        common length, so short answers stay whole; the template lines ("Label:") always remain."""
        fields = [f for f in TEXT_FIELDS if isinstance(row.get(f), str)]
        tokens = {f: self.tokenizer.encode(row[f], add_special_tokens=False) for f in fields}
        template_only = self.text({**row, **dict.fromkeys(fields, "")}, zero_shot)
        budget = self.max_length - len(self.token_ids(template_only))
        for _ in range(3):  # decoding and re-encoding a cut can shift a few tokens: retry tighter
            cap = water_level([len(t) for t in tokens.values()], budget)
            cut = {f: self._cut_middle(t, cap) if len(t) > cap else row[f] for f, t in tokens.items()}
            ids = self.token_ids(self.text({**row, **cut}, zero_shot))
            if len(ids) <= self.max_length:
                return ids
            budget -= len(ids) - self.max_length
        return ids[-self.max_length:]

    def _cut_middle(self, ids: list[int], keep: int) -> str:
        head, tail = ids[: keep // 2], ids[len(ids) - (keep - keep // 2):]
        return f"{self.tokenizer.decode(head)} ... {self.tokenizer.decode(tail)}"


def water_level(lengths: list[int], budget: int) -> int:
    """The largest cap c with sum(min(length, c)) <= budget: long fields are cut to c, short
    ones are kept whole."""
    remaining, count = max(0, budget), len(lengths)
    for i, length in enumerate(sorted(lengths)):
        share = remaining // (count - i)
        if length > share:
            return share
        remaining -= length
    return max(lengths, default=0)
