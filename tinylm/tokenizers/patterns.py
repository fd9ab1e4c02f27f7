"""Pre-split patterns for byte-level BPE, selectable by name.

Before BPE runs, text is cut into chunks with a regex so that merges never cross a chunk
boundary: a word never fuses with the space or punctuation that follows it, so " dog", " dog."
and " dog!" share the token " dog" instead of learning three. This module owns the named
patterns and the rule for turning a user's `pattern` argument into a regex string. It does not
split text or know about tokens.

Both patterns need the third-party `regex` module (`\\p{L}` = any letter, `\\p{N}` = any digit,
possessive `++`), which the standard `re` lacks.
"""

from __future__ import annotations

import regex

from ..util.errors import UsageError

# GPT-2 (Radford et al. 2019, "Language Models are Unsupervised Multitask Learners", sec. 2.2):
# English contractions, then an optional space glued to a run of letters / digits / other
# symbols, then whitespace. `\s+(?!\S)` leaves the last space of a run for the next word, so
# "a   b" -> ["a", "  ", " b"].
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# cl100k_base (GPT-3.5/GPT-4), exactly as tiktoken defines it, so ids match tiktoken's: case-
# insensitive contractions, digits in groups of at most three, newlines kept apart from spaces,
# and one leading non-letter (e.g. "(" or "_") allowed before a word.
CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)

PATTERNS = {"gpt2": GPT2_PATTERN, "cl100k": CL100K_PATTERN}  # name -> regex string


def resolve_pattern(pattern: str) -> tuple[str | None, str]:
    """A pattern name or a custom regex -> (name or None, regex string).

    Anything made only of lowercase letters, digits, '_' and '-' is taken as a name, so a typo
    like "gpt4" is reported instead of being compiled as a regex that matches the word "gpt4".
    >>> resolve_pattern("gpt2")[0]
    'gpt2'
    >>> resolve_pattern(r"\\w+|\\W")
    (None, '\\\\w+|\\\\W')
    """
    if not isinstance(pattern, str) or not pattern:
        raise UsageError(f"BPE pattern must be a name ({', '.join(PATTERNS)}) or a regex, got {pattern!r}")
    if pattern in PATTERNS:
        return pattern, PATTERNS[pattern]
    if regex.fullmatch(r"[a-z0-9_\-]+", pattern):
        raise UsageError(f"unknown BPE pattern name {pattern!r}; use one of: {', '.join(PATTERNS)}, or a regex")
    try:
        regex.compile(pattern)
    except regex.error as e:
        raise UsageError(f"BPE pattern {pattern!r} is not a valid regex ({e}); fix it or use one of: {', '.join(PATTERNS)}") from None
    for name, pat in PATTERNS.items():
        if pat == pattern:
            return name, pat
    return None, pattern
