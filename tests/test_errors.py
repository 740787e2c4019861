"""The one CLI error wrapper: a user's error is one line and exit 2, anything else is a bug."""

import pytest

from task.errors import UserError, run_cli


def test_a_user_error_is_one_line_and_exit_2(capsys):
    def fail():
        raise UserError("seed=-1 is not allowed: use 0 or more.")

    assert run_cli(fail) == 2
    assert capsys.readouterr().err == "error: seed=-1 is not allowed: use 0 or more.\n"


def test_success_and_explicit_codes_pass_through():
    assert run_cli(lambda: None) == 0 and run_cli(lambda: 1) == 1


def test_a_bug_is_not_hidden():
    def bug():
        raise KeyError("x")

    with pytest.raises(KeyError):
        run_cli(bug)
