"""Readers for MiniMind's data formats (jsonl, or parquet via pyarrow), validated per record.

Formats (one JSON object per line, or one parquet row):
  pretrain      {"text": str}
  conversations {"conversations": [{"role": ..., "content": ...}, ...]}   (SFT, LoRA, RL chat)
  dpo           {"chosen": [msgs], "rejected": [msgs]}
  math          {"prompt" | "question": str, "answer": str | number}       (GSM8K: "... #### N")

Every bad record is reported as `file:line: reason` (parquet: `file:row N: reason`).
With strict=True the first one raises DataError; otherwise it is skipped, counted in the
ReadReport, and a warning summary is logged when the file is done — never dropped silently.
"""
from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Generic, Iterator, TypeVar

logger = logging.getLogger(__name__)

ROLES = frozenset({"system", "user", "assistant", "tool"})
Message = dict[str, Any]  # {"role", "content"} + MiniMind-3's reasoning_content / tools / tool_calls
T = TypeVar("T")


class DataError(ValueError):
    """A malformed record (strict mode); the message is `file:line: reason`."""


class _Bad(Exception):
    """Internal: raised by validators with the reason only (location added by the reader)."""


@dataclass
class ReadReport:
    """What happened while reading one file: every skipped record, counted per reason."""

    path: str
    n_ok: int = 0
    n_bad: int = 0
    issues: list[str] = field(default_factory=list)  # every `file:line: reason` message
    by_reason: dict[str, int] = field(default_factory=dict)
    max_issues: int = 20  # how many the summary line shows

    def add(self, message: str, reason: str | None = None) -> None:
        self.n_bad += 1
        self.issues.append(message)
        key = _reason_kind(reason if reason is not None else message.rsplit(": ", 1)[-1])
        self.by_reason[key] = self.by_reason.get(key, 0) + 1

    def summary(self) -> str:
        head = f"{self.path}: skipped {self.n_bad} bad record(s), kept {self.n_ok}"
        if self.by_reason:
            head += " (" + ", ".join(f"{n} x {r}" for r, n in sorted(self.by_reason.items(), key=lambda x: -x[1])) + ")"
        return head + ("; first: " + " | ".join(self.issues[:3]) if self.issues else "")

    def write(self, path: str | Path) -> None:
        """Append every skipped record as one JSON line {"source", "location", "reason"} to `path`."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(p, "a", encoding="utf-8") as f:
            for msg in self.issues:
                loc, _, reason = msg.partition(": ")
                f.write(json.dumps({"source": self.path, "location": loc, "reason": reason},
                                   ensure_ascii=False) + "\n")


def _reason_kind(reason: str) -> str:
    """A reason without its specifics (positions, indices, values) so that counts group by kind."""
    import re

    return re.sub(r"\[\d+\]|\d+|'[^']*'|\"[^\"]*\"", "#", reason)[:80]


@dataclass
class ReadResult(Generic[T]):
    records: list[T]
    report: ReadReport


@dataclass(frozen=True)
class DPOPair:
    chosen: list[Message]
    rejected: list[Message]


@dataclass(frozen=True)
class MathRecord:
    prompt: str
    answer: str  # the final answer only (for GSM8K-style text: the N after ####)
    solution: str | None = None  # the full answer text when it was a worked solution


def gsm8k_final_answer(answer_text: str) -> str:
    """'... #### 1,234' -> '1234'. Raises ValueError if there is no `####` marker."""
    if "####" not in answer_text:
        raise ValueError(f"no '####' marker in answer: {answer_text[-60:]!r}")
    final = answer_text.rsplit("####", 1)[1].strip()
    final = final.replace(",", "").replace("$", "").strip().rstrip(".")
    if not final:
        raise ValueError("empty final answer after '####'")
    return final


# ----- validators: raw JSON object -> typed record, or raise _Bad(reason) -----------------

def _obj(row: Any) -> dict:
    if not isinstance(row, dict):
        raise _Bad(f"expected a JSON object, got {type(row).__name__}")
    return row


def _nonempty_str(row: dict, key: str) -> str:
    if key not in row or row[key] is None:
        raise _Bad(f"missing field '{key}'")
    v = row[key]
    if not isinstance(v, str):
        raise _Bad(f"field '{key}' must be a string, got {type(v).__name__}")
    if not v.strip():
        raise _Bad(f"field '{key}' is empty")
    return v


def _messages(row: dict, key: str, allow_empty_last: bool = False) -> list[Message]:
    if key not in row or row[key] is None:
        raise _Bad(f"missing field '{key}'")
    msgs = row[key]
    if not isinstance(msgs, list):
        raise _Bad(f"field '{key}' must be a list of messages, got {type(msgs).__name__}")
    if not msgs:
        raise _Bad(f"field '{key}' is an empty list")
    out: list[Message] = []
    for i, m in enumerate(msgs):
        where = f"{key}[{i}]"
        if not isinstance(m, dict):
            raise _Bad(f"{where} must be an object, got {type(m).__name__}")
        role, content = m.get("role"), m.get("content")
        if role is None:
            raise _Bad(f"{where} missing field 'role'")
        if role not in ROLES:
            raise _Bad(f"{where} unknown role {role!r} (expected one of {sorted(ROLES)})")
        if content is None and not m.get("tool_calls"):
            raise _Bad(f"{where} missing field 'content'")
        content = "" if content is None else content
        if not isinstance(content, str):
            raise _Bad(f"{where} field 'content' must be a string, got {type(content).__name__}")
        msg: Message = {"role": role, "content": content}
        for extra in ("reasoning_content", "tools", "tool_calls"):  # MiniMind-3 fields, kept for the template
            v = m.get(extra)
            if v is None or v == "":
                continue
            if extra != "reasoning_content" and isinstance(v, str):
                try:
                    v = json.loads(v)  # MiniMind-3 stores tools / tool_calls as JSON strings
                except json.JSONDecodeError as e:
                    raise _Bad(f"{where} field '{extra}' is not valid JSON ({e.msg})") from None
            if extra == "reasoning_content" and not isinstance(v, str):
                raise _Bad(f"{where} field 'reasoning_content' must be a string, got {type(v).__name__}")
            if extra != "reasoning_content" and not isinstance(v, list):
                raise _Bad(f"{where} field '{extra}' must be a list, got {type(v).__name__}")
            msg[extra] = v
        last_assistant = role == "assistant" and i == len(msgs) - 1
        carries = msg.get("tool_calls") or msg.get("tools")  # a tool call or the tool list is the message
        if not content.strip() and not carries and not (allow_empty_last and last_assistant):
            raise _Bad(f"{where} has empty content")
        out.append(msg)
    return out


def chat_tools(messages: list[Message]) -> tuple[list[Message], list | None]:
    """(messages, tools): MiniMind-3 puts the tool list on the system message as `tools`."""
    tools = next((m["tools"] for m in messages if m.get("tools")), None)
    return [{k: v for k, v in m.items() if k != "tools"} for m in messages], tools


def parse_pretrain(row: Any) -> str:
    return _nonempty_str(_obj(row), "text")


def parse_conversation(row: Any, require_assistant: bool = True) -> list[Message]:
    """Messages of a conversations row; with require_assistant=False (RL prompts) the last
    assistant message may be empty (MiniMind-3's rlaif.jsonl leaves every one empty)."""
    msgs = _messages(_obj(row), "conversations", allow_empty_last=not require_assistant)
    if require_assistant and not any(m["role"] == "assistant" for m in msgs):
        raise _Bad("conversation has no assistant message (nothing to learn)")
    return msgs


def parse_dpo(row: Any) -> DPOPair:
    row = _obj(row)
    chosen, rejected = _messages(row, "chosen"), _messages(row, "rejected")
    for key, msgs in (("chosen", chosen), ("rejected", rejected)):
        if msgs[-1]["role"] != "assistant":
            raise _Bad(f"last message of '{key}' must be from the assistant")
    if chosen[:-1] != rejected[:-1]:
        raise _Bad("'chosen' and 'rejected' have different prompts")
    return DPOPair(chosen, rejected)


def parse_math(row: Any) -> MathRecord:
    row = _obj(row)
    key = "prompt" if row.get("prompt") is not None else "question"
    if row.get(key) is None:
        raise _Bad("missing field 'prompt' (or 'question')")
    prompt = _nonempty_str(row, key)
    if row.get("answer") is None:
        raise _Bad("missing field 'answer'")
    ans = row["answer"]
    if isinstance(ans, bool) or not isinstance(ans, (str, int, float)):
        raise _Bad(f"field 'answer' must be a string or number, got {type(ans).__name__}")
    if isinstance(ans, (int, float)):
        return MathRecord(prompt, _format_number(ans))
    if not ans.strip():
        raise _Bad("field 'answer' is empty")
    if "####" in ans:
        try:
            return MathRecord(prompt, gsm8k_final_answer(ans), solution=ans)
        except ValueError as e:
            raise _Bad(str(e)) from None
    return MathRecord(prompt, ans.strip())


def _format_number(x: int | float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


# ----- raw row iteration ------------------------------------------------------------------

def iter_rows(path: str | Path) -> Iterator[tuple[str, Any]]:
    """Yield (location, row-or-_Bad) for every record. Location is `file:line` for jsonl
    (1-based; blank lines are not records) and `file:row N` (0-based) for parquet."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: data file not found")
    if p.suffix == ".parquet":
        import pyarrow.parquet as pq

        i = 0
        for batch in pq.ParquetFile(p).iter_batches(batch_size=4096):  # bounded memory
            for row in batch.to_pylist():
                yield f"{p}:row {i}", row
                i += 1
        return
    # Binary mode + per-line decode: a bad byte costs one line (with its exact number),
    # not the rest of the file.
    with open(p, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # UTF-8 BOM written by some editors
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield f"{p}:{lineno}", _Bad(f"invalid UTF-8 at byte {e.start}")
                continue
            if not line.strip():
                continue
            try:
                yield f"{p}:{lineno}", json.loads(line)
            except json.JSONDecodeError as e:
                yield f"{p}:{lineno}", _Bad(f"bad JSON ({e.msg} at column {e.colno})")


def read_records(
    path: str | Path, parse: Callable[[Any], T], *, strict: bool = False, max_issues: int = 20,
    report_path: str | Path | None = None,
) -> ReadResult[T]:
    """Validate every row with `parse`; strict raises on the first bad one. Otherwise every bad row
    is counted per reason (printed to stderr) and, with `report_path`, appended to that jsonl file."""
    report = ReadReport(str(path), max_issues=max_issues)
    records: list[T] = []
    for loc, row in iter_rows(path):
        try:
            if isinstance(row, _Bad):
                raise row
            records.append(parse(row))
        except _Bad as e:
            message = f"{loc}: {e}"
            if strict:
                raise DataError(message) from None
            report.add(message, str(e))
    report.n_ok = len(records)
    finish_report(report, report_path)
    return ReadResult(records, report)


def finish_report(report: ReadReport, report_path: str | Path | None) -> None:
    """Once a source is read: its skipped records summed up on stderr (and appended to `report_path`);
    DataError if it gave no record at all, which says why here (not "dataset of 0 items" further down)."""
    if report.n_bad:
        logger.warning(report.summary())
        print(report.summary() + (f" -> every one in {report_path}" if report_path else ""), file=sys.stderr)
        if report_path is not None:
            report.write(report_path)
    if not report.n_ok:
        if not report.n_bad:
            raise DataError(f"{report.path}: the data file holds no records (it is empty)")
        where = f"; every one is listed in {report_path}" if report_path is not None else ""
        raise DataError(f"{report.path}: every record is bad ({report.n_bad} skipped, first: "
                        f"{report.issues[0]}){where}")


def read_pretrain(path: str | Path, *, strict: bool = False, report_path: str | Path | None = None,
                  max_chars: int | None = None) -> ReadResult[str]:
    """Texts; `max_chars` cuts a text before anything tokenizes it (a 10 MB line costs max_chars)."""
    parse = parse_pretrain if max_chars is None else (lambda r: parse_pretrain(r)[:max_chars])
    return read_records(path, parse, strict=strict, report_path=report_path)


def read_conversations(
    path: str | Path, *, strict: bool = False, require_assistant: bool = True,
    report_path: str | Path | None = None,
) -> ReadResult[list[Message]]:
    return read_records(path, lambda r: parse_conversation(r, require_assistant), strict=strict,
                        report_path=report_path)


def read_dpo(path: str | Path, *, strict: bool = False, report_path: str | Path | None = None) -> ReadResult[DPOPair]:
    return read_records(path, parse_dpo, strict=strict, report_path=report_path)


def read_math(path: str | Path, *, strict: bool = False, report_path: str | Path | None = None) -> ReadResult[MathRecord]:
    return read_records(path, parse_math, strict=strict, report_path=report_path)
