"""A researcher's bounded context: what is sent to the model, kept under its context window.

The conversation grows by a message at a time (`Context.append`, each one recorded in the
append-only checkpoint log first). Before each model call the researcher calls `Context.fit`,
which keeps the request under the window in three stages, cheapest first, each recorded in the
log as an event so that a resumed researcher rebuilds the same context (`Context.replay`):

The thresholds are shares of the room the conversation has: the usable window (the window less
the reply's max_tokens and a ``margin``) less the system prompt, notes and tool definitions.

1. **clear**: when the estimate passes ``compact_at`` of that room, tool results longer than
   ``clear_over_chars`` are replaced by a short placeholder (as are long string arguments of old
   tool calls, such as a file written), except in the latest turns that fit ``compact_to`` of
   the room (at most ``keep_recent_turns``, at least the last). Every call keeps a result, so
   the pairing both APIs require holds. All that qualifies is cleared at once, so a prompt cache
   is invalidated rarely.
2. **compact**: if the context is still above the midpoint between ``compact_at`` and
   ``compact_to``, every message before the latest turns becomes one summary message (a user
   message, so the conversation still starts with the user and each tool result still follows
   its call). The summary comes from a `Summarise` callable: the researcher's model, or the
   deterministic `digest` (the search backend, or when the model call fails). The latest turns
   are kept while they fit ``compact_to`` (at most ``keep_recent_turns``, at least the last);
   the system prompt (with the direction) and the researcher's notes are not part of the
   conversation and always stay.
3. **truncate**: if the latest turn alone does not fit (one huge tool result in a small window),
   its largest results are cut to fit, with a note saying so.

Token counts are estimated from the characters of the request and calibrated on what the server
reports: each reply's prompt tokens, and the prompt size a context-length error states
(`observe`, `observe_overflow`). Starting at 3 characters a token (conservative for code, JSON
and English on current tokenizers), the estimate errs large, and the usable window keeps a
``margin`` for the rest.
"""

from __future__ import annotations

import json
import logging
import math
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterable

from aar_ray.agents.backends import ContextLengthExceeded, ToolSpec, user_message
from aar_ray.agents.checkpoint import Checkpoint

logger = logging.getLogger(__name__)

CLEARED_PREFIX = "[cleared to save context"
SUMMARY_HEADER = ("[Summary of your earlier work. The turns it covers were compacted to keep your context "
                  "under the model's window; your notes (in the system prompt), the forum and the "
                  "leaderboard hold the rest.]\n\n")

# (old messages, largest summary in tokens) -> (summary text, "model" | "digest")
Summarise = Callable[[list[dict], int], tuple[str, str]]


@dataclass
class ContextSettings:
    window: int = 0  # tokens; 0 until the backend says
    max_tokens: int = 4096  # the reply's tokens, as configured
    compact_at: float = 0.75  # share of the usable window that starts clearing
    compact_to: float = 0.3  # share a compaction aims for
    keep_recent_turns: int = 6  # turns kept verbatim (at least the last)
    clear_over_chars: int = 2000  # tool results (and call arguments) longer than this get cleared
    summary_max_tokens: int = 2048
    margin: float = 0.05  # share of the window left for estimation error

    def __post_init__(self):
        if not 0 < self.compact_to < self.compact_at <= 1:
            raise ValueError(f"context: need 0 < compact_to ({self.compact_to}) < compact_at "
                             f"({self.compact_at}) <= 1")

    def reply_tokens(self) -> int:
        """max_tokens to ask for: the configured one, at most a quarter of the window."""
        return min(self.max_tokens, max(256, self.window // 4))

    def usable(self) -> int:
        """Prompt tokens a request may have: the window less the reply and the margin."""
        return self.window - self.reply_tokens() - math.ceil(self.margin * self.window)


class TokenEstimator:
    """Prompt tokens from characters: chars / chars_per_token, where chars_per_token starts
    conservative and follows the smallest ratio the server reported recently (so it errs large)."""

    def __init__(self, chars_per_token: float = 3.0, recent: int = 20):
        self.chars_per_token = chars_per_token
        self._recent: deque[float] = deque(maxlen=recent)

    @staticmethod
    def chars(system: str, messages: list[dict], tools: list[ToolSpec]) -> int:
        return len(json.dumps({"system": system, "messages": messages,
                               "tools": [[t.name, t.description, t.input_schema] for t in tools]},
                              ensure_ascii=False))

    @staticmethod
    def message_chars(messages: Iterable[dict]) -> int:
        return sum(len(json.dumps(m, ensure_ascii=False)) + 2 for m in messages)

    def tokens(self, chars: int) -> int:
        return math.ceil(chars / self.chars_per_token)

    def observe(self, chars: int, tokens: int) -> None:
        """The server counted `tokens` for a prompt of `chars` characters."""
        if chars > 0 and tokens > 0:
            self._recent.append(chars / tokens)
            self.chars_per_token = max(1.0, min(self._recent))

    def to_dict(self) -> dict:
        return {"chars_per_token": self.chars_per_token, "recent": list(self._recent)}

    def load(self, data: dict) -> None:
        self.chars_per_token = float(data.get("chars_per_token", self.chars_per_token))
        self._recent.extend(data.get("recent") or [])


# ---- deterministic rewrites (the log records which messages; these say how) ---------------------
def cleared(message: dict, over: int) -> dict:
    """`message` with its bulky parts replaced by placeholders."""
    if message["role"] == "tool":
        n = len(message.get("content", ""))
        return {**message, "content": f"{CLEARED_PREFIX}: this result had {n:,} characters; call the "
                                      f"tool again if you need it]"}
    if message["role"] == "assistant" and message.get("tool_calls"):
        calls = []
        for call in message["tool_calls"]:
            args = {k: (f"{CLEARED_PREFIX}: {len(v):,} characters]" if isinstance(v, str) and len(v) > over
                        else v) for k, v in call["input"].items()}
            calls.append({**call, "input": args})
        return {**message, "tool_calls": calls}
    return message


def is_bulky(message: dict, over: int) -> bool:
    if message["role"] == "tool":
        content = message.get("content", "")
        return len(content) > over and not content.startswith(CLEARED_PREFIX)
    return any(isinstance(v, str) and len(v) > over and not v.startswith(CLEARED_PREFIX)
               for call in message.get("tool_calls") or [] for v in call["input"].values())


def truncated(message: dict, keep: int) -> dict:
    content = message.get("content", "")
    if len(content) <= keep:
        return message
    return {**message, "content": content[:keep] + f"\n[... cut to fit the context window: "
                                                   f"{len(content) - keep:,} of {len(content):,} characters]"}


def summary_message(summary: str) -> dict:
    return user_message(SUMMARY_HEADER + summary.strip())


def render(messages: list[dict], result_chars: int = 1500, text_chars: int = 4000) -> list[str]:
    """The conversation as lines of text, for a summary prompt or a digest."""
    lines = []
    for m in messages:
        if m["role"] == "user":
            lines.append(f"USER: {_cut(m.get('content', ''), text_chars)}")
        elif m["role"] == "assistant":
            if m.get("content"):
                lines.append(f"ASSISTANT: {_cut(m['content'], text_chars)}")
            for call in m.get("tool_calls") or []:
                lines.append(f"CALL {call['name']} {_cut(json.dumps(call['input'], ensure_ascii=False), result_chars)}"
                             f" [{call['id']}]")
        else:
            flag = "ERROR " if m.get("is_error") else ""
            lines.append(f"RESULT {flag}[{m['tool_call_id']}]: {_cut(m.get('content', ''), result_chars)}")
    return lines


def _cut(text: str, limit: int) -> str:
    text = text.replace("\n", " ")
    return text if len(text) <= limit else text[:limit] + f" ...[{len(text) - limit:,} more characters]"


def digest(messages: list[dict], max_chars: int) -> str:
    """A deterministic summary: one short line per message, the newest that fit `max_chars`
    (an earlier digest's lines carried along), older ones counted."""
    lines: list[str] = []
    for m in messages:
        content = m.get("content", "")
        if m["role"] == "user" and content.startswith(SUMMARY_HEADER):  # an earlier digest or summary
            lines += [line for line in content[len(SUMMARY_HEADER):].splitlines() if line.strip()]
        else:
            lines += render([m], result_chars=200, text_chars=300)
    kept: list[str] = []
    size = 0
    for line in reversed(lines):
        if size + len(line) + 1 > max_chars:
            break
        kept.append(line)
        size += len(line) + 1
    omitted = len(lines) - len(kept)
    head = [f"(digest: {omitted} earlier entries omitted)"] if omitted else []
    return "\n".join(head + kept[::-1])


# ---- the context ------------------------------------------------------------------------------
class Context:
    """The live conversation: (seq, message) pairs mirrored by the checkpoint log."""

    def __init__(self, checkpoint: Checkpoint, settings: ContextSettings,
                 estimator: TokenEstimator | None = None):
        self.checkpoint = checkpoint
        self.settings = settings
        self.estimator = estimator or TokenEstimator()
        self.items: list[tuple[int, dict]] = []
        self.notes = ""  # the notes last recorded
        self.events = {"clear": 0, "compact": 0, "truncate": 0}

    @property
    def messages(self) -> list[dict]:
        return [message for _, message in self.items]

    # -- recording and replaying ---------------------------------------------------------------
    def append(self, message: dict, **extra) -> None:
        """Record a message, then add it to the context."""
        seq = self.checkpoint.append("message", message=message, **extra)
        self.items.append((seq, message))

    def record_notes(self, text: str) -> None:
        if text != self.notes:
            self.checkpoint.append("notes", text=text)
            self.notes = text

    def _record(self, kind: str, **fields) -> None:
        seq = self.checkpoint.append(kind, **fields)
        self.apply({"seq": seq, "kind": kind, **fields})

    def replay(self, records: Iterable[dict]) -> None:
        for record in records:
            self.apply(record)

    def apply(self, record: dict) -> None:
        kind = record["kind"]
        if kind == "message":
            self.items.append((record["seq"], record["message"]))
        elif kind == "notes":
            self.notes = record["text"]
        elif kind == "clear":
            targets, over = set(record["seqs"]), record["over"]
            self.items = [(s, cleared(m, over) if s in targets else m) for s, m in self.items]
        elif kind == "truncate":
            self.items = [(s, truncated(m, record["keep"]) if s == record["target"] else m)
                          for s, m in self.items]
        elif kind == "compact":
            kept = [(s, m) for s, m in self.items if s > record["upto"]]
            self.items = [(record["seq"], summary_message(record["summary"]))] + kept
        else:
            raise ValueError(f"unknown checkpoint record kind {kind!r}")
        if kind in self.events:
            self.events[kind] += 1

    # -- estimating ----------------------------------------------------------------------------
    def chars(self, system: str, tools: list[ToolSpec]) -> int:
        return self.estimator.chars(system, self.messages, tools)

    def tokens(self, system: str, tools: list[ToolSpec]) -> int:
        return self.estimator.tokens(self.chars(system, tools))

    def observe(self, chars: int, prompt_tokens: int) -> None:
        self.estimator.observe(chars, prompt_tokens)

    def observe_overflow(self, chars: int, error: ContextLengthExceeded) -> None:
        """Learn from a context-length error: the real window, the real prompt size."""
        if error.window and (not self.settings.window or error.window < self.settings.window):
            logger.warning("context window is %d tokens, not %d as configured", error.window,
                           self.settings.window)
            self.settings.window = error.window
        if error.prompt_tokens:
            self.estimator.observe(chars, error.prompt_tokens)
        else:  # the message did not say: err larger from now on
            self.estimator.observe(chars, math.ceil(chars / self.estimator.chars_per_token * 1.25))

    # -- fitting -------------------------------------------------------------------------------
    def _groups(self) -> tuple[list[tuple[int, dict]], list[list[tuple[int, dict]]]]:
        """(messages before the first assistant turn, turns): a turn is an assistant message with
        the tool results and user messages that follow it."""
        prefix: list[tuple[int, dict]] = []
        groups: list[list[tuple[int, dict]]] = []
        for item in self.items:
            if item[1]["role"] == "assistant":
                groups.append([item])
            elif groups:
                groups[-1].append(item)
            else:
                prefix.append(item)
        return prefix, groups

    def fit(self, system: str, tools: list[ToolSpec], summarise: Summarise, force: bool = False) -> int:
        """Bring the context under the window (see the module doc); returns the max_tokens to
        ask for. `force` (after a context-length error) clears and compacts whatever the estimate.
        The thresholds apply to what the conversation may use: the usable window less the system
        prompt (with the notes) and the tool definitions."""
        s = self.settings
        if s.window <= 0:
            raise ValueError("context: the window is unknown; set settings.window first")
        usable = s.usable()
        fixed = self.estimator.tokens(self.estimator.chars(system, [], tools))
        room = max(0, usable - fixed)
        high, low = fixed + s.compact_at * room, fixed + s.compact_to * room
        if not force and self.tokens(system, tools) <= high:
            return s.reply_tokens()
        self._clear(low - fixed)
        if force or self.tokens(system, tools) > (high + low) / 2:
            summary_tokens = max(64, min(s.summary_max_tokens, s.reply_tokens(), int(s.compact_to * room / 2)))
            self._compact(system, tools, summarise, low - fixed - summary_tokens, summary_tokens)
        if self.tokens(system, tools) > usable:
            self._truncate(system, tools, usable)
        return s.reply_tokens()

    def _latest(self, groups: list, budget: float) -> list:
        """The latest turns that fit `budget` tokens, at most keep_recent_turns, at least one."""
        tail: list = []
        tail_tokens = 0
        for group in reversed(groups):
            size = self.estimator.tokens(self.estimator.message_chars(m for _, m in group))
            if tail and (len(tail) >= self.settings.keep_recent_turns or tail_tokens + size > budget):
                break
            tail.insert(0, group)
            tail_tokens += size
        return tail

    def _clear(self, keep_budget: float) -> None:
        """Clear the bulky parts of every turn but the latest that fit `keep_budget`."""
        _, groups = self._groups()
        protected = {seq for group in self._latest(groups, keep_budget) for seq, _ in group}
        over = self.settings.clear_over_chars
        targets = [seq for seq, m in self.items if seq not in protected and is_bulky(m, over)]
        if targets:
            self._record("clear", seqs=targets, over=over)

    def _compact(self, system: str, tools: list[ToolSpec], summarise: Summarise, tail_budget: float,
                 summary_tokens: int) -> None:
        """Summarise everything before the latest turns that fit `tail_budget` tokens (at most
        keep_recent_turns of them, at least the last one)."""
        _, groups = self._groups()
        if not groups:
            return
        tail = self._latest(groups, tail_budget)
        first_kept = tail[0][0][0]
        old = [(seq, m) for seq, m in self.items if seq < first_kept]
        if not old or (len(old) == 1 and old[0][1].get("content", "").startswith(SUMMARY_HEADER)):
            return  # nothing new to compact
        before = self.tokens(system, tools)
        text, by = summarise([m for _, m in old], summary_tokens)
        self._record("compact", upto=old[-1][0], summary=text, by=by, tokens_before=before)
        logger.info("context compacted by %s: %d messages into a summary; ~%d -> ~%d tokens", by,
                    len(old), before, self.tokens(system, tools))

    def _truncate(self, system: str, tools: list[ToolSpec], usable: int) -> None:
        for _ in range(len(self.items)):
            excess = self.tokens(system, tools) - usable
            if excess <= 0:
                return
            results = [(len(m.get("content", "")), seq) for seq, m in self.items if m["role"] == "tool"]
            if not results:
                return
            size, seq = max(results)
            keep = max(200, size - math.ceil(excess * self.estimator.chars_per_token * 1.1) - 200)
            if keep >= size:
                return
            self._record("truncate", target=seq, keep=keep)
