"""`eval --results` against hostile files: an input, a file it did not write, records edited by
hand, and empty inputs. Nothing it did not write is ever truncated or appended to."""

from __future__ import annotations

import json

from test_eval import remote_args, run_main

from spatialthinker_ros.testing import benchmark_files as bf


def unloadable(tmp_path) -> str:
    """A model directory that passes the reference check but cannot load: refusals that come
    before the load show their own error, not a load failure."""
    model = tmp_path / "unloadable_model"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text("{}")
    return str(model)


def one_line_error(code: int, err: str, expected: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("spatialthinker-ros: error:"), err
    assert expected in lines[0], lines[0]


def test_results_file_that_is_an_input_is_refused_untouched(tmp_path, capsys):
    """Before: the input's last line (without newline) was cut off, then results appended."""
    bench = bf.write_jsonl(tmp_path / "bench.jsonl", ["A", "B"])
    bench.write_bytes(bench.read_bytes().rstrip(b"\n"))  # an editor's file: no final newline
    link = tmp_path / "link.jsonl"
    link.symlink_to(bench)
    before = bench.read_bytes()
    for results in (bench, link):
        code, _, err = run_main(capsys, str(bench), "--model", unloadable(tmp_path),
                                "--results", str(results))
        one_line_error(code, err, "is the input")
        assert bench.read_bytes() == before


def test_a_file_that_is_not_a_results_file_is_refused_untouched(tmp_path, capsys):
    bench = bf.write_jsonl(tmp_path / "bench.jsonl", ["A"])
    other = tmp_path / "notes.jsonl"
    for content in (b'{"a": 1}\n{"b": 2}\n', b'{"a": 1}\n{"b": 2', b"some notes"):
        other.write_bytes(content)
        code, _, err = run_main(capsys, str(bench), "--model", unloadable(tmp_path),
                                "--results", str(other))
        one_line_error(code, err, "is not a results file")
        assert other.read_bytes() == content


def test_hand_edited_records_are_ignored_and_asked_again(server, tmp_path, capsys):
    """Before: a record without `outcome` (or with text for a number) was a KeyError traceback."""
    bench = bf.write_jsonl(tmp_path / "bench.jsonl", ["A", "B", "A", "B"])
    results = tmp_path / "results.jsonl"
    code, _, err = run_main(capsys, str(bench), *remote_args(server), "--results", str(results))
    assert code == 0, err
    records = [json.loads(line) for line in results.read_text().splitlines()]
    del records[0]["outcome"]
    records[1]["generated_tokens"] = "many"
    records[2]["benchmark"] = None
    records[3]["latency_s"] = "slow"
    results.write_text("".join(json.dumps(r) + "\n" for r in records))
    code, out, err = run_main(capsys, str(bench), *remote_args(server), "--results", str(results))
    assert code == 0, err
    assert "Traceback" not in err
    assert "answered 4 now" in out and "ignored 4 unreadable line(s)" in out


def test_empty_inputs_are_an_error_before_the_model_loads(tmp_path, capsys):
    for name, content in (("empty.jsonl", b""), ("blank.jsonl", b"\n  \n")):
        path = tmp_path / name
        path.write_bytes(content)
        code, _, err = run_main(capsys, str(path), "--model", unloadable(tmp_path))
        one_line_error(code, err, "no items to evaluate")
