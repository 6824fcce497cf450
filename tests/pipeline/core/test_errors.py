"""The one-line error helpers: every message the user sees is one line."""

import pytest

from pipeline.core.errors import QatError, first_line


@pytest.mark.parametrize("exc, kwargs, expected", [
    (ValueError("bad shape\nTraceback-ish detail"), {}, "bad shape"),
    (ValueError("  \n  padded first line  \nrest"), {}, "padded first line"),
    (ValueError(""), {}, "ValueError"),                      # empty: the type names it
    (KeyError(), {}, "KeyError"),
    (RuntimeError("   \n  "), {}, "RuntimeError"),           # blank lines only
    (ValueError(""), {"empty": ""}, ""),                     # the caller prints the type
    (ValueError("x" * 500), {}, "x" * 200),                  # default limit
    (ValueError("x" * 500), {"limit": None}, "x" * 500),
])
def test_first_line(exc, kwargs, expected):
    assert first_line(exc, **kwargs) == expected


def test_qat_error_is_one_line_whatever_it_is_given():
    e = QatError("what\nfailed", "received\r\nvalue", "fix\nit")
    assert "\n" not in str(e) and "\r" not in str(e) and str(e).startswith("what failed.")
