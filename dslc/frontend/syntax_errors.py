"""lark's parse errors as messages for people: what was found, where, and what could come there.

lark reports terminal names (`RPAR`, `__ANON_1`) and every token the parser state accepts; this
module names them in words, folds the long sets into "an expression", "an operator" or "a
statement", and points out a bracket left open, the usual cause of a confusing error further down.
"""
from __future__ import annotations

import lark

from ..diagnostics import DslSyntaxError, Span

# How terminals read in a message; anonymous ones ('->', '|>', '...') are named from their pattern.
_WORDS = {
    "NAME": "a name", "INT": "an integer", "FLOAT": "a number", "STRING": "a string", "COMP_OP": "a comparison",
    "ADD_OP": "'+' or '-'", "MUL_OP": "'*', '/' or '@'", "$END": "end of file",
}
# Sets of terminals that read better as one word, tried in this order.
_GROUPS = [
    ("a declaration (model, layer, fn, step, train or import)", {"MODEL", "LAYER", "FN", "STEP", "TRAIN", "IMPORT"}),
    ("a statement", {"NAME", "RETURN", "MINIMIZE", "METRIC", "REPEAT"}),
    ("an expression", {"NAME", "INT", "FLOAT", "STRING", "LPAR", "LSQB", "MINUS", "TRUE", "FALSE"}),
    ("an operator", {"ADD_OP", "MUL_OP", "COMP_OP", "CIRCUMFLEX", "__ANON_1", "DOT", "LPAR", "LSQB"}),
]
_GROUP_MIN = 3  # fold a group when at least this many of its members are accepted
_ORDER = ["an expression", "an operator", "a statement", "a declaration (model, layer, fn, step, train or import)"]
# Keywords that start a declaration: inside a block they lex as plain names (lark's contextual lexer).
_DECL_WORDS = {"model", "layer", "fn", "step", "import"}
_CLOSER = {"(": ")", "[": "]", "{": "}"}
_CHAR_HINTS = {
    ";": "statements need no ';': start the next one on a new line",
    "'": "strings are written in double quotes",
    "|": "the pipe is written `|>`",
    "!": "`!` only appears in `!=`",
}


def syntax_error(e: lark.UnexpectedInput, text: str, file: str, literals: dict[str, str]) -> DslSyntaxError:
    """The DslSyntaxError for a lark error; `literals` maps terminal names to their text."""
    if isinstance(e, lark.UnexpectedCharacters):
        ch = text[e.pos_in_stream]
        span = Span(file, e.line, e.column, e.line, e.column + 1)
        return DslSyntaxError(f"unexpected character {ch!r}", span, _CHAR_HINTS.get(ch))

    token = getattr(e, "token", None)
    at_end = token is None or token.type == "$END"
    accepts = _accepts(e)
    history = getattr(e, "token_history", None) or []
    prev = history[-1] if history else None
    open_ = _unclosed(text, len(text) if at_end else token.start_pos)
    opener = open_[-1] if open_ else None

    if prev is not None and prev.type == "NAME" and prev.value in _DECL_WORDS and opener and opener[0] == "{":
        return DslSyntaxError(
            f"`{prev.value}` starts a declaration, but the '{{' at line {opener[1]} is never closed",
            Span(file, prev.line, prev.column, prev.end_line, prev.end_column),
            "add the missing '}' before this line")
    if prev is not None and prev.type == "NAME" and prev.value == "using" and "USING" in accepts:
        return DslSyntaxError("`updates` names no model", Span(file, prev.line, prev.column, prev.end_line,
                                                               prev.end_column),
                              "list the models the step trains: `updates Encoder, Decoder using adam()`")

    if at_end:
        span, what = _end_span(text, file), "end of file"
    else:
        span = Span(file, token.line, token.column, token.end_line, token.end_column)
        what = _token_words(token)
    hint = _after(prev, token) or (f"expected {_expected(accepts, literals)}" if accepts else None)
    note = None
    if not at_end and token.value in (")", "]", "}") and token.type != "STRING":
        # A closer with no opener of its kind, or one that leaves an inner bracket open.
        wanted = {")": "(", "]": "[", "}": "{"}[token.value]
        has_wanted = any(o[0] == wanted for o in open_)
        if opener and opener[0] != wanted and (opener[0] != "{" or has_wanted):
            note = f"the '{opener[0]}' at line {opener[1]}, column {opener[2]} is not closed"
        elif not has_wanted:
            note = f"there is no '{wanted}' to close here"
    elif opener and _CLOSER[opener[0]] in {literals.get(t) for t in accepts} and (
            at_end or token.line > opener[1]):
        note = f"the '{opener[0]}' at line {opener[1]}, column {opener[2]} is not closed"
    if note:
        hint = f"{hint} ({note})" if hint else note
    return DslSyntaxError(f"unexpected {what}", span, hint)


def _after(prev, token) -> str | None:
    """A hint for a mistake that the previous token gives away."""
    if prev is None:
        return None
    if prev.type == "__ANON_1":
        return "after `|>` write a function or a call: `x |> relu` or `x |> dense(10)`"
    if prev.type == "REPEAT":
        return "write the number of passes after `repeat`: `repeat 10 { ... }`"
    if prev.type == "EQUAL" and token is not None and token.value == "=":
        return "a binding is `name = value`; `==` compares two values"
    return None


def _accepts(e) -> set[str]:
    """The terminals the parser could take here: exact when lark can tell (`accepts`)."""
    exact = e.accepts if isinstance(e, lark.UnexpectedToken) else None
    return set(exact or getattr(e, "expected", None) or ())


def _token_words(token: lark.Token) -> str:
    if token.type == "NAME":
        return f"name `{token.value}`"
    if token.type in ("INT", "FLOAT"):
        return f"number {token.value}"
    if token.type == "STRING":
        return f"string {token.value}"
    return f"'{token.value}'"


def _describe(term: str, literals: dict[str, str]) -> str:
    if term in _WORDS:
        return _WORDS[term]
    return f"'{literals[term]}'" if term in literals else term.lower()


def _expected(terms: set[str], literals: dict[str, str]) -> str:
    terms, folded = set(terms), []
    for word, group in _GROUPS:
        if len(terms & group) >= _GROUP_MIN and (group & terms) >= {"NAME"} & group:
            folded.append((_ORDER.index(word), word))
            terms -= group
    words = [w for _, w in sorted(folded)] + sorted(_describe(t, literals) for t in terms)
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


def _end_span(text: str, file: str) -> Span:
    """Just after the last code on the last line that has any (skipping blank and comment lines)."""
    lines = text.split("\n")  # as the lexer counts lines (not at form feeds or U+2028)
    for n in range(len(lines), 0, -1):
        code = lines[n - 1].split("#")[0].rstrip()
        if code:
            return Span(file, n, len(code) + 1)
    return Span(file, 1, 1)


def _unclosed(text: str, pos: int) -> list[tuple[str, int, int]]:
    """The brackets opened before `pos` and not closed, innermost last: (bracket, line, column)."""
    stack, line, col, i = [], 1, 1, 0
    while i < pos:
        c = text[i]
        if c == "#":  # a comment: on to the end of the line
            end = text.find("\n", i)
            i = pos if end < 0 else end
            continue
        if c == '"':  # a string: one line, and closed, as the lexer has read it
            end = text.find('"', i + 1) + 1 or pos
            col, i = col + end - i, end
            continue
        if c in _CLOSER:
            stack.append((c, line, col))
        elif c in ")]}" and stack and _CLOSER[stack[-1][0]] == c:
            stack.pop()
        if c == "\n":
            line, col = line + 1, 1
        else:
            col += 1
        i += 1
    return stack
