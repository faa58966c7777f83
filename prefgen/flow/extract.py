"""Step 6 of the flow: pull the SQL out of a model's answer."""

from __future__ import annotations

import re

# A <think>...</think> block, or an unclosed <think> that ran to the end of the answer.
_THINK = re.compile(r"<think>.*?(?:</think>|\Z)", re.DOTALL)

# A fenced block: ``` then an optional language tag on the same line, the body, then ```
# (an unclosed fence runs to the end of the answer, as when max-new-tokens cut it off).
_FENCE = re.compile(
    r"```[ \t]*(?P<lang>[A-Za-z0-9_+-]*)[ \t]*\n"  # opening fence and language tag
    r"(?P<body>.*?)"  # the code, non-greedy so the first closing fence ends it
    r"(?:\n?```|\Z)",  # closing fence, or the end of the answer
    re.DOTALL,
)


def extract_sql(answer: str) -> str:
    """The SQL in a model's answer: the ```sql block if there is one, else the trimmed text.

    A think block is dropped first. Returns "" when the answer holds no SQL.
    """
    text = _THINK.sub("", answer)
    blocks = list(_FENCE.finditer(text))
    sql_blocks = [b for b in blocks if b.group("lang").lower() in ("sql", "sqlite")]
    if sql_blocks:
        return sql_blocks[0].group("body").strip()
    if blocks:
        return blocks[0].group("body").strip()
    return text.strip()
