"""Tests for engine.prompt_parser: A1111's emphasis, prompt editing/alternation and AND syntax.

Expected values are A1111's documented examples (webui v1.10 modules/prompt_parser.py docstrings)
plus the outputs A1111 gives for the other cases.
"""

import pytest

from engine.prompts.parser import parse_attention, prompt_schedules, split_and

BREAK = ("BREAK", -1)


def approx_pairs(expected):
    """Compare (text, weight) lists with exact texts and approximate weights."""
    return [(text, pytest.approx(weight)) for text, weight in expected]


# ------------------------------------------------------------------------------------------
# parse_attention: A1111's documented examples


@pytest.mark.parametrize(
    "text, expected",
    [
        ("normal text", [("normal text", 1.0)]),
        ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
        ("(unbalanced", [("unbalanced", 1.1)]),
        ("\\(literal\\]", [("(literal]", 1.0)]),
        ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
        (
            "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
            [
                ("a ", 1.0),
                ("house", 1.5730000000000004),
                (" ", 1.1),
                ("on", 1.0),
                (" a ", 1.1),
                ("hill", 0.55),
                (", sun, ", 1.1),
                ("sky", 1.4641000000000006),
                (".", 1.1),
            ],
        ),
    ],
)
def test_attention_documented_examples(text, expected):
    assert parse_attention(text) == approx_pairs(expected)


def test_attention_documented_example_exact_floats():
    # Same multiplication order as A1111, so even the float rounding matches.
    result = parse_attention("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).")
    assert result[1] == ("house", 1.5730000000000004)
    assert result[7] == ("sky", 1.4641000000000006)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("[x]", [("x", 1 / 1.1)]),
        ("[[x]]", [("x", 1 / 1.1 / 1.1)]),
        ("(x:1.3)", [("x", 1.3)]),
        ("(x:-0.5)", [("x", -0.5)]),
        ("(x:.5)", [("x", 0.5)]),
        ("(x: 1.5 )", [("x", 1.5)]),
        ("((x:2))", [("x", 2.2)]),
        ("[(x:2)]", [("x", 2 / 1.1)]),
        ("(a [b] c)", [("a ", 1.1), ("b", 1.0), (" c", 1.1)]),
        ("a [b", [("a ", 1.0), ("b", 1 / 1.1)]),
        ("a ((b", [("a ", 1.0), ("b", 1.21)]),
        # round and square brackets are tracked separately, so they may cross
        ("(a [b) c]", [("a ", 1.1), ("b", 1.0), (" c", 1 / 1.1)]),
    ],
)
def test_attention_weights_and_nesting(text, expected):
    assert parse_attention(text) == approx_pairs(expected)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("\\(x\\)", [("(x)", 1.0)]),
        ("\\[x\\]", [("[x]", 1.0)]),
        ("a\\\\b", [("a\\b", 1.0)]),
        ("(\\(x\\))", [("(x)", 1.1)]),
        ("\\(x:1.5\\)", [("(x:1.5)", 1.0)]),
        ("a\\b", [("ab", 1.0)]),  # a backslash escaping nothing is dropped
    ],
)
def test_attention_escapes(text, expected):
    assert parse_attention(text) == approx_pairs(expected)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a: b", [("a: b", 1.0)]),
        ("(a: b)", [("a: b", 1.1)]),
        ("time 10:30", [("time 10:30", 1.0)]),
        ("a:1.2) b", [("a:1.2) b", 1.0)]),  # ":w)" with no open "(" is text
        ("a) b] c", [("a) b] c", 1.0)]),  # closers that close nothing are text
        ("(x:1.2.3)", [("x:1.2.3", 1.1)]),  # malformed weight (A1111 raises)
    ],
)
def test_attention_literal_colons_and_brackets(text, expected):
    assert parse_attention(text) == approx_pairs(expected)


def test_attention_empty():
    assert parse_attention("") == [("", 1.0)]


def test_attention_break():
    assert parse_attention("a cat BREAK a dog") == [("a cat", 1.0), BREAK, ("a dog", 1.0)]
    assert parse_attention("(a) BREAK [b]") == approx_pairs(
        [("a", 1.1), ("", 1.0), BREAK, ("", 1.0), ("b", 1 / 1.1)]
    )
    assert parse_attention("BREAK") == [("", 1.0), BREAK, ("", 1.0)]


def test_attention_break_needs_upper_case_separate_word():
    assert parse_attention("a break b") == [("a break b", 1.0)]
    assert parse_attention("BREAKFAST") == [("BREAKFAST", 1.0)]
    assert parse_attention("aBREAK b") == [("aBREAK b", 1.0)]


def test_attention_break_inside_brackets_is_weighted_like_a1111():
    # A1111 multiplies the BREAK marker's -1 too, so it no longer equals ("BREAK", -1).
    assert parse_attention("(a BREAK b)") == approx_pairs([("a", 1.1), ("BREAK", -1.1), ("b", 1.1)])


def test_attention_merges_only_equal_neighbours():
    assert parse_attention("(a)(b) c (d)") == approx_pairs([("ab", 1.1), (" c ", 1.0), ("d", 1.1)])
    assert parse_attention("(a)[b](c)") == approx_pairs([("a", 1.1), ("b", 1 / 1.1), ("c", 1.1)])


def test_attention_returns_tuples():
    assert all(isinstance(pair, tuple) for pair in parse_attention("a (b) [c] BREAK d"))


# ------------------------------------------------------------------------------------------
# prompt_schedules: A1111's documented examples (steps=10)

DOCUMENTED_SCHEDULES = [
    ("test", [(10, "test")]),
    ("a [b:3]", [(3, "a "), (10, "a b")]),
    ("a [b: 3]", [(3, "a "), (10, "a b")]),
    ("a [[[b]]:2]", [(2, "a "), (10, "a [[b]]")]),
    ("[(a:2):3]", [(3, ""), (10, "(a:2)")]),
    ("a [b : c : 1] d", [(1, "a b  d"), (10, "a  c  d")]),
    ("a[b:[c:d:2]:1]e", [(1, "abe"), (2, "ace"), (10, "ade")]),
    ("a [unbalanced", [(10, "a [unbalanced")]),
    ("a [b:.5] c", [(5, "a  c"), (10, "a b c")]),
    ("((a][:b:c [d:3]", [(3, "((a][:b:c "), (10, "((a][:b:c d")]),
    (
        "[a|(b:1.1)]",
        [(1, "a"), (2, "(b:1.1)"), (3, "a"), (4, "(b:1.1)"), (5, "a"),
         (6, "(b:1.1)"), (7, "a"), (8, "(b:1.1)"), (9, "a"), (10, "(b:1.1)")],
    ),
    (
        "[fe|]male",
        [(1, "female"), (2, "male"), (3, "female"), (4, "male"), (5, "female"),
         (6, "male"), (7, "female"), (8, "male"), (9, "female"), (10, "male")],
    ),
    # A1111 lists [2, 'male'], [3, 'male'], [4, 'male'] apart; merged here (same text per step).
    (
        "[fe|||]male",
        [(1, "female"), (4, "male"), (5, "female"), (8, "male"), (9, "female"), (10, "male")],
    ),
    # A1111's docstring shows [[5, 'a  c'], [10, 'a {b|d{ c']] marked "not handling this right now",
    # but A1111 itself returns the prompt unchanged: "|" outside an alternation fails its grammar.
    ("a [{b|d{:.5] c", [(10, "a [{b|d{:.5] c")]),
]


@pytest.mark.parametrize("prompt, expected", DOCUMENTED_SCHEDULES)
def test_schedules_documented_examples(prompt, expected):
    assert prompt_schedules(prompt, 10) == expected


def test_schedules_documented_long_example():
    prompt = (
        "fantasy landscape with a [mountain:lake:0.25] and [an oak:a christmas tree:0.75]"
        "[ in foreground::0.6][ in background:0.25] [shoddy:masterful:0.5]"
    )
    assert prompt_schedules(prompt, 100) == [
        (25, "fantasy landscape with a mountain and an oak in foreground shoddy"),
        (50, "fantasy landscape with a lake and an oak in foreground in background shoddy"),
        (60, "fantasy landscape with a lake and an oak in foreground in background masterful"),
        (75, "fantasy landscape with a lake and an oak in background masterful"),
        (100, "fantasy landscape with a lake and a christmas tree in background masterful"),
    ]


def test_schedules_documented_crown_example():
    assert prompt_schedules("a red crown", 20) == [(20, "a red crown")]
    assert prompt_schedules("a [blue:green:5] jeweled crown", 20) == [
        (5, "a blue jeweled crown"),
        (20, "a green jeweled crown"),
    ]


def test_schedules_fantasy_scifi():
    assert prompt_schedules("a [fantasy:sci-fi:10] landscape", 20) == [
        (10, "a fantasy landscape"),
        (20, "a sci-fi landscape"),
    ]


# ------------------------------------------------------------------------------------------
# prompt_schedules: step numbers


@pytest.mark.parametrize(
    "prompt, steps, expected",
    [
        ("[a:b:0.25]", 20, [(5, "a"), (20, "b")]),  # fraction of the steps
        ("[a:b:5]", 20, [(5, "a"), (20, "b")]),  # integer: that step
        ("[a:b:1]", 20, [(1, "a"), (20, "b")]),  # integer 1 is step 1, not "all steps"
        ("[a:b:1.0]", 20, [(20, "a")]),  # 1.0 is the whole run
        ("[a:b:0.5]", 7, [(3, "a"), (7, "b")]),  # 3.5 truncates to 3
        ("[a:b:2.]", 10, [(10, "a")]),  # "2." is a fraction: 20 steps, clamped
        ("[a:b:30]", 20, [(20, "a")]),  # clamped to the step count
        ("[a:b:1.5]", 20, [(20, "a")]),  # 30 steps, clamped
        ("[a:b:0]", 20, [(20, "b")]),  # below step 1: "to" from the start
        ("[a:b:-3]", 20, [(20, "b")]),
        ("[a:b:0.01]", 20, [(20, "b")]),  # 0.2 of a step
        ("[a:b: 4 ]", 20, [(4, "a"), (20, "b")]),  # whitespace around the number
        ("[a:b:+4]", 20, [(4, "a"), (20, "b")]),
    ],
)
def test_schedules_when(prompt, steps, expected):
    assert prompt_schedules(prompt, steps) == expected


def test_schedules_empty_sides():
    assert prompt_schedules("a [b::3] c", 10) == [(3, "a b c"), (10, "a  c")]
    assert prompt_schedules("a [:b:3] c", 10) == [(3, "a  c"), (10, "a b c")]
    assert prompt_schedules("[::3]", 10) == [(10, "")]


def test_schedules_last_end_is_steps_and_sorted():
    for steps in (1, 3, 20, 50):
        schedule = prompt_schedules("[a:b:2] [c:d:0.5] [e|f]", steps)
        ends = [end for end, _ in schedule]
        assert ends == sorted(set(ends))
        assert ends[-1] == steps


# ------------------------------------------------------------------------------------------
# prompt_schedules: alternation


def test_schedules_alternation_cycles_per_step():
    assert prompt_schedules("a [cat|dog|bird] b", 5) == [
        (1, "a cat b"),
        (2, "a dog b"),
        (3, "a bird b"),
        (4, "a cat b"),
        (5, "a dog b"),
    ]


def test_schedules_alternation_merges_runs_of_equal_text():
    assert prompt_schedules("[a|a|b]", 6) == [(2, "a"), (3, "b"), (5, "a"), (6, "b")]


def test_schedules_nested_alternation_uses_the_global_step():
    assert prompt_schedules("[a|[b|c]]", 4) == [(1, "a"), (2, "c"), (3, "a"), (4, "c")]


def test_schedules_alternation_inside_edit():
    assert prompt_schedules("[x:[b|c]:3]", 6) == [(3, "x"), (4, "c"), (5, "b"), (6, "c")]


def test_schedules_edit_inside_alternation():
    assert prompt_schedules("[[a:b:2]|c]", 4) == [(1, "a"), (2, "c"), (3, "b"), (4, "c")]


# ------------------------------------------------------------------------------------------
# prompt_schedules: nesting and emphasis


def test_schedules_emphasis_inside_edit():
    assert prompt_schedules("[(cat:1.2):dog:5]", 20) == [(5, "(cat:1.2)"), (20, "dog")]


def test_schedules_edit_inside_emphasis():
    assert prompt_schedules("a (b [c:d:2] e:1.2)", 10) == [
        (2, "a (b c e:1.2)"),
        (10, "a (b d e:1.2)"),
    ]
    assert prompt_schedules("[[a:b:2]]", 10) == [(2, "[a]"), (10, "[b]")]


def test_schedules_edit_inside_edit_both_sides():
    assert prompt_schedules("[[a:b:2]:[c:d:6]:4]", 10) == [
        (2, "a"),
        (4, "b"),
        (6, "c"),
        (10, "d"),
    ]


def test_schedules_inner_boundary_hidden_by_outer_is_merged():
    # The inner edit's step 2 changes nothing visible: the outer one shows "" until step 3.
    assert prompt_schedules("[a [b:c:2] d:3]", 10) == [(3, ""), (10, "a c d")]


@pytest.mark.parametrize(
    "prompt",
    [
        "a (b) [c] ((d:1.3)) [[e]]",
        "(a:b)",
        "[x]",
        "a: b",
        "[a:b]",  # the last part is no number: not an edit
        "[a:b:c:2]",  # too many colons
        "[a:]",
        "(a:1.2:3)",
        "\\[a:b:2\\]",  # escaped brackets
        "a [unbalanced",
        "unbalanced] a",
        "time 10:30, (a) [b] c",
    ],
)
def test_schedules_leave_other_syntax_untouched(prompt):
    assert prompt_schedules(prompt, 10) == [(10, prompt)]


def test_schedules_keep_escapes_verbatim():
    assert prompt_schedules("\\(a\\) [b:2]", 10) == [(2, "\\(a\\) "), (10, "\\(a\\) b")]


def test_schedules_stray_brackets_and_colons_around_edits():
    assert prompt_schedules("a: b [c:2]", 10) == [(2, "a: b "), (10, "a: b c")]
    assert prompt_schedules("a ) b ] c [d:2]", 10) == [(2, "a ) b ] c "), (10, "a ) b ] c d")]
    assert prompt_schedules("[a:b:2]:3]", 10) == [(2, "a:3]"), (10, "b:3]")]
    assert prompt_schedules("[a:[b:2]", 10) == [(2, "[a:"), (10, "[a:b")]
    assert prompt_schedules("(a [b:2]", 10) == [(2, "(a "), (10, "(a b")]


def test_schedules_invalid_group_does_not_hide_valid_inner_edit():
    # The outer [...] is no valid syntax ("a:[...]" has no step), the inner edit still works.
    assert prompt_schedules("[a:[b:c:2]]", 10) == [(2, "[a:b]"), (10, "[a:c]")]


@pytest.mark.parametrize(
    "prompt",
    [
        "a | b [c:2]",  # "|" outside an alternation
        "[a|b:2]",  # "|" and ":" in one group
        "[a:2] a\\",  # trailing backslash
    ],
)
def test_schedules_parse_failure_returns_prompt_unchanged(prompt):
    assert prompt_schedules(prompt, 10) == [(10, prompt)]


def test_schedules_deep_nesting_does_not_recurse():
    prompt = "(" * 3000 + "[a:b:2]" + ")" * 3000
    assert prompt_schedules(prompt, 10) == [
        (2, "(" * 3000 + "a" + ")" * 3000),
        (10, "(" * 3000 + "b" + ")" * 3000),
    ]


# ------------------------------------------------------------------------------------------
# split_and


@pytest.mark.parametrize(
    "prompt, expected",
    [
        ("a cat", [("a cat", 1.0)]),
        ("a cat and a dog", [("a cat and a dog", 1.0)]),
        ("a cat AND a dog", [("a cat", 1.0), (" a dog", 1.0)]),
        ("a cat :1.2 AND a dog:0.5", [("a cat", 1.2), (" a dog", 0.5)]),
        ("a: 2 AND b : -0.5 AND c:.5", [("a", 2.0), (" b", -0.5), (" c", 0.5)]),
        ("a:1. AND b", [("a", 1.0), (" b", 1.0)]),
        ("ANDROID AND BRAND", [("ANDROID", 1.0), (" BRAND", 1.0)]),
        ("a:b AND c", [("a:b", 1.0), (" c", 1.0)]),  # not a number: stays text
        ("time 10:30 AND c", [("time 10", 30.0), (" c", 1.0)]),  # as in A1111
        ("a [b:c:5] AND d", [("a [b:c:5]", 1.0), (" d", 1.0)]),
        ("a (b:1.3) :0.7", [("a (b:1.3)", 0.7)]),
        ("", [("", 1.0)]),
    ],
)
def test_split_and(prompt, expected):
    assert split_and(prompt) == approx_pairs(expected)
