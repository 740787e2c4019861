"""The console: one progress line per round, plain without a terminal, redrawn on one."""

import io

from launcher.console import ProgressDisplay, progress_line, strip_ansi, summary
from task.objective import CLASSIFICATION, RECONSTRUCTION


def _round(n, acc, elapsed, nodes=10, asked=10, failures=()):
    return {
        "round": n,
        "server": {"loss": 0.3, "accuracy": acc, "mse": 0.01},
        "elapsed-s": elapsed,
        "clients-train": {"nodes": nodes, "asked": asked} if n else None,
        "failures": list(failures),
    }


def test_a_progress_line_says_rounds_metric_replies_speed_and_time_left():
    line = progress_line(_round(3, 0.931, 6.0, nodes=9, failures=[{}]), 10, CLASSIFICATION, per_round=2.0)
    assert line == "Round 3/10 | test accuracy 93.10% | replies 9/10 | 1 dropped | 2.0 s/round | about 14 s left"
    assert progress_line(_round(10, 0.97, 20.0), 10, CLASSIFICATION, 2.0).endswith("| done")
    assert "test MSE per pixel 0.01000" in progress_line(_round(1, 0.5, 1.0), 250, RECONSTRUCTION, 130.0)
    assert "about 8 h 59 min left" in progress_line(_round(1, 0.5, 1.0), 250, RECONSTRUCTION, 130.0)  # 249 x 130 s


class FakeTty(io.StringIO):
    def isatty(self):
        return True


def test_without_a_terminal_each_round_is_one_plain_line():
    out = io.StringIO()
    display = ProgressDisplay(3, CLASSIFICATION, out)
    rounds = [_round(0, 0.1, 0.0)]
    display.update({"rounds": rounds})
    rounds.append(_round(1, 0.9, 2.0))
    display.update({"rounds": rounds})
    display.update({"rounds": rounds})  # nothing new: nothing printed
    display.close()
    lines = out.getvalue().splitlines()
    assert lines == [
        "Round 0/3 | test accuracy 10.00%",
        "Round 1/3 | test accuracy 90.00% | replies 10/10 | 2.0 s/round | about 4 s left",
    ]
    assert "\x1b" not in out.getvalue() and "\r" not in out.getvalue()


def test_on_a_terminal_the_line_is_redrawn_in_place():
    out = FakeTty()
    display = ProgressDisplay(2, CLASSIFICATION, out)
    display.update({"rounds": [_round(0, 0.1, 0.0)]})
    display.update({"rounds": [_round(0, 0.1, 0.0), _round(1, 0.9, 2.0)]})
    display.close()
    text = out.getvalue()
    assert text.count("\r") == 2 and text.endswith("\n") and text.count("\n") == 1


def test_a_resumed_run_measures_speed_from_its_own_rounds():
    out = io.StringIO()
    ProgressDisplay(10, CLASSIFICATION, out).update({"rounds": [_round(4, 0.9, 40.0), _round(5, 0.91, 43.0)]})
    assert "3.0 s/round" in out.getvalue()


def test_strip_ansi_removes_flowers_colours():
    assert strip_ansi("\x1b[92mINFO \x1b[0m:      Starting") == "INFO :      Starting"


def test_summary_says_how_it_ended_and_the_numbers():
    history = {"status": "completed", "rounds": [_round(0, 0.1, 0.0), _round(1, 0.95, 2.0), _round(2, 0.975, 4.0)]}
    text = summary(history, CLASSIFICATION)
    assert text.splitlines()[0] == "Run completed."
    assert "2 rounds in 4 s; final test accuracy 97.50%, best 97.50%" in text and "first at 97.00%: round 2" in text
    failed = summary({"status": "failed", "rounds": [_round(0, 0.1, 0.0)], "error": "RoundFailed: x"}, CLASSIFICATION)
    assert "error: RoundFailed: x" in failed
