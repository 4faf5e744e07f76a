"""A1111 prompt syntax, in pure Python (no torch, no parser library).

Three independent steps, applied by the conditioning code in this order:

* `split_and` cuts a prompt into composable-diffusion sub-prompts at the word ``AND``, each with an
  optional ``:weight`` suffix.
* `prompt_schedules` resolves prompt editing (``[from:to:when]``) and alternation (``[a|b]``) into
  the text to use at each sampling step.
* `parse_attention` turns the emphasis syntax (``(x)``, ``[x]``, ``(x:1.3)``) and ``BREAK`` of one
  such text into (fragment, weight) pairs.

The behaviour follows AUTOMATIC1111's webui (v1.10, default "new" scheduling), including its quirks;
see each function. Where A1111's own behaviour depends on chance or crashes, this module picks one
stable answer (documented on the function concerned).
"""

from __future__ import annotations

import math
import re

__all__ = ["parse_attention", "prompt_schedules", "split_and"]

# --------------------------------------------------------------------------------------------
# Emphasis

_ROUND_FACTOR = 1.1
_SQUARE_FACTOR = 1 / 1.1  # multiplied by, as A1111 does, so that the floats come out identical
_WEIGHT_CLOSE = re.compile(r":\s*([+-]?[.\d]+)\s*\)")  # ":1.3)" closing an explicit-weight group
_BREAK_WORD = re.compile(r"\bBREAK\b")
_ESCAPABLE = "()[]\\"
_SPECIAL = "\\()[]:"


def parse_attention(text: str) -> list[tuple[str, float]]:
    """Split `text` into (fragment, weight) pairs using A1111's "Original" emphasis rules.

    ``(x)`` multiplies by 1.1, ``[x]`` by 1/1.1, ``(x:w)`` by w; groups nest multiplicatively and
    groups still open at the end apply to the rest of the text. ``\\(`` ``\\)`` ``\\[`` ``\\]``
    ``\\\\`` are literal characters; any other backslash is dropped. A ``:`` or closing bracket that
    closes nothing is literal text. The word ``BREAK`` becomes the pair ("BREAK", -1) (with the
    whitespace around it removed); like A1111, a BREAK inside a bracket group gets its weight
    multiplied too, so it no longer reads as a break downstream. Neighbouring fragments with equal
    weights are merged; an empty text gives [("", 1.0)].

    A1111 raises on a malformed explicit weight such as ``(x:1.2.3)``; here its ``:`` is literal
    text and the ``)`` closes the group as a plain ``(x)``.
    """
    frags: list[list] = []  # [fragment, weight], mutable while brackets close
    round_opens: list[int] = []  # index into frags where each open "(" started
    square_opens: list[int] = []

    def scale_from(start: int, factor: float) -> None:
        for frag in frags[start:]:
            frag[1] *= factor

    def add_text(chunk: str) -> None:
        for n, part in enumerate(_split_breaks(chunk)):
            if n:
                frags.append(["BREAK", -1])
            frags.append([part, 1.0])

    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            if i + 1 < n and text[i + 1] in _ESCAPABLE:
                frags.append([text[i + 1], 1.0])
                i += 2
            else:  # a lone backslash vanishes (A1111 keeps an empty fragment in its place)
                frags.append(["", 1.0])
                i += 1
        elif c == "(":
            round_opens.append(len(frags))
            i += 1
        elif c == "[":
            square_opens.append(len(frags))
            i += 1
        elif c == ":":
            m = _WEIGHT_CLOSE.match(text, i)
            weight = _to_float(m.group(1)) if m else None
            if m and round_opens and weight is not None:
                scale_from(round_opens.pop(), weight)
                i = m.end()
            elif m and not round_opens:  # nothing to close: the whole ":w)" is text
                add_text(m.group(0))
                i = m.end()
            else:
                add_text(":")
                i += 1
        elif c == ")" and round_opens:
            scale_from(round_opens.pop(), _ROUND_FACTOR)
            i += 1
        elif c == "]" and square_opens:
            scale_from(square_opens.pop(), _SQUARE_FACTOR)
            i += 1
        elif c in ")]":
            add_text(c)
            i += 1
        else:
            j = i + 1
            while j < n and text[j] not in _SPECIAL:
                j += 1
            add_text(text[i:j])
            i = j

    for start in round_opens:  # unclosed groups run to the end; round ones first, as in A1111
        scale_from(start, _ROUND_FACTOR)
    for start in square_opens:
        scale_from(start, _SQUARE_FACTOR)

    if not frags:
        return [("", 1.0)]

    merged: list[list] = [frags[0]]
    for frag in frags[1:]:
        if frag[1] == merged[-1][1]:
            merged[-1][0] += frag[0]
        else:
            merged.append(frag)
    return [(fragment, weight) for fragment, weight in merged]


def _split_breaks(text: str) -> list[str]:
    """`text` split at each word BREAK, the whitespace around it removed (as A1111's ``\\s*\\bBREAK\\b\\s*``
    splits, in linear time: that pattern is quadratic on long runs of spaces)."""
    parts = _BREAK_WORD.split(text)
    before_breaks = [part.rstrip() for part in parts[:-1]] + parts[-1:]
    return before_breaks[:1] + [part.lstrip() for part in before_breaks[1:]]


def _to_float(s: str) -> float | None:
    try:
        return float(s)
    except ValueError:
        return None


# --------------------------------------------------------------------------------------------
# Prompt editing and alternation

# The step of [from:to:when]: lark's SIGNED_NUMBER, optionally surrounded by whitespace.
_WHEN = re.compile(r"\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*")


_OPENER = {")": "(", "]": "["}


class _ParseError(Exception):
    pass


class _Emphasis:
    """A bracket group kept as literal text: ``(a)``, ``(a:b)`` or ``[a]`` with resolved insides."""

    __slots__ = ("open", "parts", "close")

    def __init__(self, open_: str, parts: list[list], close: str):
        self.open, self.parts, self.close = open_, parts, close


class _Edit:
    """``[before:after:when]``: before up to and including step `when`, after from then on."""

    __slots__ = ("before", "after", "token", "when")

    def __init__(self, before: list, after: list, token: str):
        self.before, self.after, self.token = before, after, token
        self.when = 0


class _Alternate:
    """``[a|b|...]``: option (step - 1) mod n at each step."""

    __slots__ = ("options",)

    def __init__(self, options: list[list]):
        self.options = options


class _Frame:
    """An open bracket while scanning: its items so far, split at its own ``:`` / ``|``.

    A frame that turns out not to be editing/emphasis syntax stays in the tree as literal text:
    its bracket, then its parts joined by its separators (its closing bracket, if any, follows it).
    """

    __slots__ = ("char", "parts", "seps", "valid", "bare_pipe")

    def __init__(self, char: str):
        self.char = char
        self.parts: list[list] = [[]]  # items (str or node) between separators
        self.seps: list[str] = []  # the separators, in order
        self.valid = True  # False once the group cannot be well-formed editing/emphasis syntax
        self.bare_pipe = False  # a "|" in it, or in a literal frame inside it, separates nothing


def _close(frame: _Frame):
    """The node for a frame whose bracket just closed validly, or None if it is not well formed."""
    if not frame.valid:
        return None
    parts, seps = frame.parts, frame.seps
    if frame.char == "(":
        if "|" in seps or len(seps) > 1:
            return None
        return _Emphasis("(", parts, ")")
    if "|" in seps:
        return _Alternate(parts) if ":" not in seps else None
    if not seps:
        return _Emphasis("[", parts, "]")
    if len(seps) > 2:
        return None
    tail = parts[-1]
    if len(tail) != 1 or not isinstance(tail[0], str):
        return None
    m = _WHEN.fullmatch(tail[0])
    if m is None:
        return None
    before = parts[0] if len(seps) == 2 else []
    return _Edit(before, parts[-2], m.group(1))


def _parse(prompt: str) -> list:
    """Parse into a list of str and nodes. Raises _ParseError where A1111's grammar fails.

    Brackets are matched with a stack. A group whose insides are well formed becomes a node; one
    that is not (unbalanced, mismatched, or wrong use of ``:``/``|``) is literal text, and so is
    every group around it. ``|`` is legal only as an alternation separator, and a backslash must
    escape a following character (not a newline): otherwise the whole prompt fails to parse, as in
    A1111.
    """
    top: list = []
    stack: list[_Frame] = []

    def emit(item) -> None:
        (stack[-1].parts[-1] if stack else top).append(item)

    def dissolve(frame: _Frame) -> None:  # the frame is literal text, and so is any group around it
        frame.bare_pipe = frame.bare_pipe or "|" in frame.seps
        if stack:
            stack[-1].valid = False
            stack[-1].bare_pipe = stack[-1].bare_pipe or frame.bare_pipe
        elif frame.bare_pipe:
            raise _ParseError("'|' outside alternation")
        emit(frame)

    i, n = 0, len(prompt)
    while i < n:
        c = prompt[i]
        if c == "\\":
            if i + 1 >= n or prompt[i + 1] == "\n":
                raise _ParseError("dangling backslash")
            emit(prompt[i : i + 2])
            i += 2
            continue
        if c in "([":
            stack.append(_Frame(c))
        elif c in ")]":
            if stack and stack[-1].char == _OPENER[c]:
                frame = stack.pop()
                node = _close(frame)
                if node is not None:
                    emit(node)
                else:
                    dissolve(frame)
                    emit(c)
            else:  # closes nothing, or crosses an open group: every open group is literal text
                while stack:
                    dissolve(stack.pop())
                emit(c)
        elif c in ":|":
            if stack:
                stack[-1].seps.append(c)
                stack[-1].parts.append([])
            elif c == "|":
                raise _ParseError("'|' outside alternation")
            else:
                top.append(c)
        else:
            j = i + 1
            while j < n and prompt[j] not in "\\()[]:|":
                j += 1
            emit(prompt[i:j])
            i = j
            continue
        i += 1
    while stack:  # groups never closed are literal text
        dissolve(stack.pop())
    return top


def _edit_step(token: str, steps: int) -> int:
    """The last step (clamped to `steps`) that uses the "from" side of an edit; < 1 means never."""
    value = float(token)
    if "." in token:  # a fraction of the steps; an integer is a step number
        value *= steps
    if math.isinf(value):  # A1111 crashes here; treat as "at the very end" / "never"
        return steps if value > 0 else 0
    return min(steps, int(value))


def _nodes(items: list):
    """Every node in `items`, at any depth (iteratively: deep nesting cannot overflow the stack)."""
    todo = [items]
    while todo:
        for item in todo.pop():
            if isinstance(item, str):
                continue
            yield item
            if isinstance(item, _Edit):
                todo.extend((item.before, item.after))
            elif isinstance(item, (_Emphasis, _Frame)):
                todo.extend(item.parts)
            else:
                todo.extend(item.options)


def _render(items: list, step: int) -> str:
    """The text of `items` at sampling step `step` (1-based)."""
    out: list[str] = []
    todo = list(reversed(items))
    while todo:
        item = todo.pop()
        if isinstance(item, str):
            out.append(item)
            continue
        if isinstance(item, _Edit):
            expanded = item.before if step <= item.when else item.after
        elif isinstance(item, _Alternate):
            expanded = item.options[(step - 1) % len(item.options)]
        elif isinstance(item, _Frame):  # literal text
            expanded = [item.char]
            for k, part in enumerate(item.parts):
                if k:
                    expanded.append(item.seps[k - 1])
                expanded.extend(part)
        else:
            expanded = [item.open]
            for k, part in enumerate(item.parts):
                if k:
                    expanded.append(":")
                expanded.extend(part)
            expanded.append(item.close)
        todo.extend(reversed(expanded))
    return "".join(out)


def prompt_schedules(prompt: str, steps: int) -> list[tuple[int, str]]:
    """The prompt's text per sampling step, as a list of (end_at_step, text) sorted by step.

    Each entry applies to the steps after the previous entry's end, up to and including its own
    `end_at_step`; the last one ends at `steps`. Resolved here (as A1111's
    get_learned_conditioning_prompt_schedules with its default "new" scheduling):

    * ``[from:to:when]`` gives `from` up to step `when` and `to` after it; ``[to:when]`` and
      ``[from::when]`` leave out a side. An integer `when` is a step number; one with a "." is a
      fraction of `steps` (0.25 of 20 = step 5). It is clamped to `steps`; one below 1 means `to`
      from the start.
    * ``[a|b|c]`` alternates: step k uses option (k - 1) mod 3, so every step is a boundary.

    These nest, in each other and in emphasis groups; emphasis ``(...)`` and ``[x]`` (no ``:`` or
    ``|`` at its top level) stay in the text for `parse_attention`. Brackets that do not form this
    syntax are literal text. Where A1111's grammar rejects the prompt as a whole (a ``|`` outside
    an alternation, a trailing backslash) the prompt is returned unchanged: [(steps, prompt)].

    Unlike A1111, consecutive entries with identical text are merged (keeping the later end step);
    the text used at each step is the same. Where A1111's parse is ambiguous (its result then varies
    between runs), the outermost well-formed groups are always taken as editing syntax.
    """
    try:
        items = _parse(prompt)
    except _ParseError:
        return [(steps, prompt)]

    ends = {steps}
    for node in _nodes(items):
        if isinstance(node, _Edit):
            node.when = _edit_step(node.token, steps)
            if node.when >= 1:
                ends.add(node.when)
        elif isinstance(node, _Alternate):
            ends.update(range(1, steps + 1))

    schedule: list[tuple[int, str]] = []
    for end in sorted(ends):
        text = _render(items, end)
        if schedule and schedule[-1][1] == text:
            schedule[-1] = (end, text)
        else:
            schedule.append((end, text))
    return schedule


# --------------------------------------------------------------------------------------------
# Composable diffusion (AND)

_AND = re.compile(r"\bAND\b")
_AND_WEIGHT = re.compile(r":\s*([+-]?(?:\d+\.?\d*|\.\d+))")  # a sub-prompt's last ":" and what follows it


def split_and(prompt: str) -> list[tuple[str, float]]:
    """Split a prompt at each upper-case word ``AND`` into (sub-prompt, weight) pairs.

    A sub-prompt may end in ``:weight`` (``"a cat :1.2 AND a dog:0.5"``); the weight defaults to
    1.0. As in A1111, each sub-prompt loses its weight suffix and trailing whitespace but keeps its
    leading whitespace (" a dog"). Lower-case "and" is ordinary text. Without AND: [(prompt, 1.0)]
    (trailing whitespace and a ``:weight`` suffix are still taken off).
    """
    result: list[tuple[str, float]] = []
    for part in _AND.split(prompt):
        text = part.rstrip()  # str methods, not a `\s*$` search: that is quadratic on long runs of spaces
        head, colon, tail = text.rpartition(":")
        weight = _AND_WEIGHT.fullmatch(colon + tail) if colon else None
        result.append((head.rstrip(), float(weight.group(1))) if weight else (text, 1.0))
    return result
