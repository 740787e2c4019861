"""report.compare: several run folders in one table and one figure.

Run folders are written through the RunFolder API with made-up histories (no
training, no Flower), so every number the comparison shows is known here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import run_folder as rf
from report.compare import CompareError, compare, render, write_comparison
from report.compare import main as compare_cli
from run_folder import RunFolder, RunFolderError
from task.config import Settings
from task.models import build_model

NODES = 4
MLP = Settings().objective


def make_run(
    root: Path,
    name: str,
    values: list[float],
    *,
    status: str = rf.COMPLETED,
    seconds_per_round: float = 2.0,
    error: str | None = None,
    drop: tuple[str, ...] = (),
    **knobs,
) -> Path:
    """A run folder as the ServerApp leaves it, whose round r has server metric ``values[r]``."""
    settings = Settings.from_run_config({"num-server-rounds": max(len(values) - 1, 1), **knobs})
    key = settings.objective.key
    rounds = [
        {
            "round": r,
            "server": {key: v, "loss": 1.0 / (r + 1)},
            "clients-train": {"train-loss": 0.5, "nodes": 2, "num-examples": 1200} if r else None,
            "wall-time-s": seconds_per_round if r else 0.5,
            "elapsed-s": 0.5 + seconds_per_round * r,
        }
        for r, v in enumerate(values)
    ]
    folder = RunFolder.create(root, name, settings.model)
    config = {
        **settings.to_run_config(),
        "run-name": name,
        "run-id": hash(name) % 1000,
        "flwr-version": "1.41.0",
        "num-partitions": NODES,
    }
    folder.write_config({k: v for k, v in config.items() if k not in drop})
    folder.write_history(status, rounds, num_nodes=NODES, error=error)
    if status == rf.COMPLETED:
        folder.write_model(build_model(settings).state_dict())
    return folder.path


def cells(line: str) -> list[str]:
    """The cells of one Markdown table line; an escaped ``\\|`` stays inside its cell."""
    return [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]


def table_rows(text: str) -> list[list[str]]:
    """The cells of the first Markdown table's body."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| #"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append(cells(line))
    return rows


def header(text: str) -> list[str]:
    return cells(next(line for line in text.splitlines() if line.startswith("| #")))


@pytest.fixture
def three_mlp_runs(tmp_path):
    root = tmp_path / "outputs"
    slow = make_run(root, "slow", [0.10, 0.80, 0.90, 0.93], **{"learning-rate": 0.01})
    fast = make_run(root, "fast", [0.10, 0.95, 0.971, 0.975, 0.98], seconds_per_round=3.0, **{"learning-rate": 0.1})
    peak = make_run(root, "peaked", [0.10, 0.96, 0.99, 0.97], **{"learning-rate": 0.05})
    return slow, fast, peak


def test_table_numbers_order_and_differing_settings(three_mlp_runs, tmp_path):
    out = tmp_path / "cmp"
    md, replaced = write_comparison(list(three_mlp_runs), out)
    assert md == out / "comparison.md" and not replaced
    text = md.read_text()
    column = MLP.column
    assert header(text) == [
        "#",
        "run",
        "model",
        "settings that differ",
        "status",
        "rounds",
        f"final {column}",
        f"best {column} (round)",
        "first round at 97.00% (wall time)",
        "wall time",
    ]
    rows = table_rows(text)
    # ordered by the final value, best first: fast (98%), peaked (97%), slow (93%)
    assert [r[1] for r in rows] == ["fast", "peaked", "slow"]
    assert rows[0] == [
        "1",
        "fast",
        "mlp",
        "num-server-rounds=4, learning-rate=0.1",
        "completed",
        "4",
        "98.00%",
        "98.00% (4)",
        "2 (6 s)",
        "12 s",
    ]
    assert rows[1] == [
        "2",
        "peaked",
        "mlp",
        "num-server-rounds=3, learning-rate=0.05",
        "completed",
        "3",
        "97.00%",
        "99.00% (2)",
        "2 (4 s)",
        "6 s",
    ]
    assert rows[2][3:] == [
        "num-server-rounds=3, learning-rate=0.01",
        "completed",
        "3",
        "93.00%",
        "93.00% (3)",
        "not reached",
        "6 s",
    ]
    # the names of the runs and their Flower run ids differ too, but they are not settings
    assert "run-id=" not in text and "run-name=" not in text
    assert "`num-partitions=4`" in text and "`local-epochs=5`" in text  # shared settings, listed once
    # the figure sits beside the Markdown, which links it
    assert (out / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "](comparison.png)" in text
    # by round: one column per run, empty where a run has no such round
    assert "| 4 | 98.00% |  |  |" in text
    assert "| 2 | 97.10% | 99.00% | 90.00% |" in text


def test_every_differing_key_is_shown_and_a_missing_one_says_so(tmp_path):
    a = make_run(tmp_path, "a", [0.1, 0.9], **{"learning-rate": 0.1, "local-epochs": 1})
    b = make_run(tmp_path, "b", [0.1, 0.8], **{"learning-rate": 0.05, "local-epochs": 1}, drop=("num-partitions",))
    c = make_run(tmp_path, "c", [0.1, 0.7], **{"learning-rate": 0.05, "local-epochs": 2})
    comparison = compare([a, b, c])
    assert comparison.knobs == ["local-epochs", "learning-rate", "num-partitions"]
    assert [comparison.knob_text(r) for r in comparison.runs] == [
        "local-epochs=1, learning-rate=0.1, num-partitions=4",
        "local-epochs=1, learning-rate=0.05, num-partitions=(unset)",
        "local-epochs=2, learning-rate=0.05, num-partitions=4",
    ]
    assert "learning-rate" not in comparison.shared and comparison.shared["batch-size"] == 10
    text = render(comparison, "x.png", tmp_path)
    assert "- (unset): that run's config.json does not record it." in text


def test_a_knob_a_run_ignores_is_no_difference(tmp_path):
    """num-shards means nothing to an IID run, and the autoencoder's shape nothing to an MLP."""
    a = make_run(tmp_path, "a", [0.1, 0.9], **{"num-shards": 100, "ae-code-size": 20})
    b = make_run(tmp_path, "b", [0.1, 0.8], **{"num-shards": 300})
    assert compare([a, b]).knobs == []
    assert "num-shards" not in compare([a, b]).shared
    c = make_run(tmp_path, "c", [0.1, 0.7], **{"partitioning": "shards", "num-shards": 300})
    comparison = compare([a, c])
    assert comparison.knobs == ["partitioning", "num-shards", "shards-per-client"]
    assert [comparison.knob_text(r) for r in comparison.runs] == [
        "partitioning=iid, num-shards=-, shards-per-client=-",
        "partitioning=shards, num-shards=300, shards-per-client=0",
    ]


def test_a_setting_an_older_run_lacks_counts_at_its_default(tmp_path):
    old = make_run(tmp_path, "old", [0.1, 0.9], drop=("momentum", "max-grad-norm"))
    new = make_run(tmp_path, "new", [0.1, 0.8], **{"momentum": 0.5})
    comparison = compare([old, new])
    assert comparison.knobs == ["momentum"]  # max-grad-norm is 0.0 in both: the old run ran without it
    assert [comparison.knob_text(r) for r in comparison.runs] == ["momentum=0.0", "momentum=0.5"]
    text = render(comparison, "x.png", tmp_path)
    assert "- old's configuration has no momentum, max-grad-norm: it was written by a version" in text


def test_lower_is_better_orders_the_other_way_and_has_no_target_column(tmp_path):
    ae = {"model": "autoencoder", "learning-rate": 0.001, "optimizer": "adam"}
    worse = make_run(tmp_path, "worse", [0.1, 0.03, 0.02], **ae, **{"batch-size": 10})
    better = make_run(tmp_path, "better", [0.1, 0.02, 0.01], **ae, **{"batch-size": 20})
    md, _ = write_comparison([worse, better], tmp_path / "out")
    text = md.read_text()
    rows = table_rows(text)
    assert [r[1] for r in rows] == ["better", "worse"]
    assert rows[0][3:] == ["batch-size=20", "completed", "2", "0.01000", "0.01000 (2)", "4 s"]
    assert not any(h.startswith("first round at") for h in header(text))
    assert "lower is better" in text


def test_unfinished_runs_are_shown_with_their_status(tmp_path):
    done = make_run(tmp_path, "done", [0.1, 0.9, 0.95], **{"num-server-rounds": 2})
    going = make_run(tmp_path, "going", [0.1, 0.92], status=rf.RUNNING, **{"num-server-rounds": 5})
    broke = make_run(
        tmp_path, "broke", [0.1, 0.5], status=rf.FAILED, error="RuntimeError: out of memory", **{"num-server-rounds": 5}
    )
    paused = make_run(tmp_path, "paused", [0.1, 0.3, 0.4], status="interrupted", **{"num-server-rounds": 5})
    text = write_comparison([going, done, broke, paused], tmp_path / "out")[0].read_text()
    rows = {r[1]: r for r in table_rows(text)}
    assert [r[1] for r in table_rows(text)] == ["done", "going", "broke", "paused"]
    assert rows["paused"][4] == "interrupted at round 2 of 5"
    assert "- paused stopped after round 2 (status 'interrupted')." in text
    assert rows["going"][4:7] == ["running at round 1 of 5", "1", "92.00%"]
    assert rows["broke"][4] == "failed at round 1 of 5"
    assert "- broke failed: RuntimeError: out of memory." in text
    assert "- going was still running" in text


def test_writing_again_replaces_both_files_whole(three_mlp_runs, tmp_path, capsys):
    out = tmp_path / "cmp"
    slow, fast, peak = three_mlp_runs
    assert compare_cli([str(slow), str(fast), "--out", str(out), "--name", "lr"]) == 0
    assert capsys.readouterr().out.strip() == f"Comparison: {out / 'lr.md'}"
    first_png = (out / "lr.png").read_bytes()
    assert compare_cli([str(slow), str(peak), "--out", str(out), "--name", "lr"]) == 0
    assert "replaced the earlier comparison" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["lr.md", "lr.png"]  # no temporary files left
    text = (out / "lr.md").read_text()
    assert [r[1] for r in table_rows(text)] == ["peaked", "slow"]
    assert (out / "lr.png").read_bytes() != first_png
    assert write_comparison([slow, fast], out, "lr.md") == (out / "lr.md", True)  # the suffix is optional


def test_runs_with_the_same_folder_name_are_told_apart(tmp_path):
    a = make_run(tmp_path / "one", "run", [0.1, 0.9])
    b = make_run(tmp_path / "two", "run", [0.1, 0.8])
    assert [r.label for r in compare([a, b]).runs] == ["one/run", "two/run"]


def test_the_markdown_links_each_runs_report_when_it_has_one(three_mlp_runs, tmp_path):
    slow, fast, _ = three_mlp_runs
    RunFolder.open(fast).write_file(rf.REPORT, b"# report\n")
    text = write_comparison([slow, fast], tmp_path / "cmp")[0].read_text()
    assert f"[{rf.REPORT}](../outputs/fast/{rf.REPORT})" in text
    assert f"- slow: `../outputs/slow/{rf.HISTORY}`, {NODES} nodes" in text


def test_a_pipe_or_line_break_from_a_run_folder_cannot_break_a_table(tmp_path):
    """A run's folder name and its config.json's values are written by whoever made the run."""
    odd = make_run(tmp_path, "a|b", [0.1, 0.9], **{"learning-rate": 0.1})
    plain = make_run(tmp_path, "plain", [0.1, 0.8], **{"learning-rate": 0.05})
    folder = RunFolder.open(plain)
    folder.write_config({**folder.config(), "note": "x | y\nz"})
    text = write_comparison([odd, plain], tmp_path / "out")[0].read_text()
    tables = [block for block in text.split("\n\n") if block.startswith("|")]
    assert len(tables) == 3  # runs, settings, by round
    for table in tables:
        widths = [len(cells(line)) for line in table.splitlines()]
        assert len(set(widths)) == 1, f"a row has more or fewer cells than its header:\n{table}"
    rows = table_rows(text)
    assert [r[1] for r in rows] == [r"a\|b", "plain"]
    assert rows[1][3] == r"learning-rate=0.05, note=x \| y z"
    assert r"| note | (unset) | x \| y z |" in text


def test_different_objectives_are_refused_naming_the_runs(tmp_path):
    mlp = make_run(tmp_path, "mlp-run", [0.1, 0.9])
    ae = make_run(tmp_path, "ae-run", [0.1, 0.02], model="autoencoder")
    with pytest.raises(CompareError) as exc:
        write_comparison([mlp, ae], tmp_path / "out")
    message = str(exc.value)
    assert str(mlp) in message and str(ae) in message
    assert "model=mlp" in message and "model=autoencoder" in message and "different metrics" in message
    assert not (tmp_path / "out").exists()  # nothing written


@pytest.mark.parametrize(
    "case, expected",
    [
        ("one run", "two or more run folders"),
        ("same twice", "is given twice"),
        ("not a run", "not a run folder"),
        ("missing", "is not a folder"),
        ("no rounds yet", "no evaluated round yet"),
        ("completed without rounds", "lists no evaluated rounds"),
        ("no status", "not 'completed'"),
        ("out is a run folder", "is a run folder: put the comparison in a folder of its own"),
        ("bad name", "--name 'a/b' is not allowed"),
    ],
)
def test_refusals(tmp_path, case, expected):
    good = make_run(tmp_path, "good", [0.1, 0.9])
    other = make_run(tmp_path, "other", [0.1, 0.8])
    out, name = tmp_path / "out", "comparison"
    if case == "one run":
        runs = [good]
    elif case == "same twice":
        runs = [good, other, tmp_path / "." / "good"]
    elif case == "not a run":
        (tmp_path / "empty").mkdir()
        runs = [good, tmp_path / "empty"]
    elif case == "missing":
        runs = [good, tmp_path / "nowhere"]
    elif case == "no rounds yet":
        RunFolder.open(other).write_history(rf.RUNNING, [], num_nodes=0)
        runs = [good, other]
    elif case == "completed without rounds":
        RunFolder.open(other).write_history(rf.COMPLETED, [], num_nodes=0)
        runs = [good, other]
    elif case == "no status":
        RunFolder.open(other).write_history("", [], num_nodes=0)
        runs = [good, other]
    elif case == "out is a run folder":
        runs, out = [good, other], other
    else:
        runs, name = [good, other], "a/b"
    with pytest.raises((CompareError, RunFolderError), match=expected.replace("(", r"\(")):
        write_comparison(runs, out, name)


def test_cli_errors_are_one_line(tmp_path, capsys):
    mlp = make_run(tmp_path, "mlp-run", [0.1, 0.9])
    ae = make_run(tmp_path, "ae-run", [0.1, 0.02], model="autoencoder")
    for argv in ([str(mlp), str(ae)], [str(mlp), str(tmp_path / "nowhere")], [str(mlp)]):
        assert compare_cli([*argv, "--out", str(tmp_path / "out")]) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err.startswith("error: ") and captured.err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_by_default_the_comparison_goes_beside_the_runs(three_mlp_runs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert compare_cli(["outputs/slow", "outputs/fast/"]) == 0
    assert capsys.readouterr().out.strip() == "Comparison: outputs/comparison.md"
    assert (tmp_path / "outputs" / "comparison.png").is_file()
    assert "- slow: `slow/history.json`" in (tmp_path / "outputs" / "comparison.md").read_text()
    # runs in different folders: the comparison has no obvious home, so --out is asked for
    elsewhere = make_run(tmp_path / "elsewhere", "run", [0.1, 0.5])
    assert compare_cli(["outputs/slow", str(elsewhere)]) == 2
    assert "say where the comparison goes with --out DIR" in capsys.readouterr().err
