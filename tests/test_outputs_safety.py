"""fxpga never deletes or overwrites a file it did not write, and leaves no temporary file:
output directories (compile, build, a Markdown report's images), single output files, and what
happens on SIGTERM or a stdout that cannot be written."""

import errno
import json
import os
import signal
import sys

import pytest

from fxpga import outdir, report
from fxpga.cli import main
from fxpga.errors import FxpgaError
from fxpga.hw import output


def compile_(fxq, out, *extra):
    return main(["compile", str(fxq), "--no-verilog", "-o", str(out), "-q", *extra])


def listing(d):
    return sorted(p.relative_to(d).as_posix() for p in d.rglob("*"))


def test_compile_refuses_a_directory_with_a_users_file(digits_fxq, tmp_path, capsys):
    v = tmp_path / "v"
    v.mkdir()
    (v / "mine.txt").write_text("keep")
    assert compile_(digits_fxq, v) == 1
    assert "holds files fxpga did not write (mine.txt)" in capsys.readouterr().err
    assert listing(v) == ["mine.txt"] and (v / "mine.txt").read_text() == "keep"
    assert listing(tmp_path) == ["v", "v/mine.txt"]  # no staging directory left


@pytest.mark.parametrize("path", ["", ".", "..", "HOME", "/"])
def test_special_output_directories_are_refused(digits_fxq, tmp_path, monkeypatch, path, capsys):
    work = tmp_path / "home" / "work"
    work.mkdir(parents=True)
    (work / "notes.txt").write_text("keep")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(work)
    assert compile_(digits_fxq, str(tmp_path / "home") if path == "HOME" else path) == 1
    assert "refusing" in capsys.readouterr().err or path == ""
    assert listing(tmp_path / "home") == ["work", "work/notes.txt"]


def test_empty_output_path_names_the_likely_cause(digits_fxq, capsys):
    assert compile_(digits_fxq, "") == 1
    assert "an empty path (is a variable unset?)" in capsys.readouterr().err


def test_recompiling_replaces_only_fxpgas_files(digits_fxq, tmp_path, capsys):
    out = tmp_path / "e"
    assert compile_(digits_fxq, out) == 0
    assert "wbank7.hex" in listing(out)
    (out / "mine.txt").write_text("keep")  # a user's file beside fxpga's
    assert compile_(digits_fxq, out, "--lanes", "4") == 0
    files = listing(out)
    assert "wbank3.hex" in files and "wbank4.hex" not in files  # stale banks removed
    assert (out / "mine.txt").read_text() == "keep"
    manifest = json.loads((out / outdir.MANIFEST).read_text())["files"]
    assert set(manifest) == set(files) - {"mine.txt", outdir.MANIFEST}
    assert listing(tmp_path) == ["e", *(f"e/{f}" for f in files)]


def test_an_edited_output_is_not_overwritten(digits_fxq, tmp_path, capsys):
    out = tmp_path / "e"
    assert compile_(digits_fxq, out) == 0
    with open(out / "program.hex", "a") as f:
        f.write("00000000\n")
    edited = (out / "program.hex").read_bytes()
    assert compile_(digits_fxq, out) == 1
    assert "'program.hex' changed since fxpga wrote it" in capsys.readouterr().err
    assert (out / "program.hex").read_bytes() == edited


def test_an_interrupted_commit_is_recovered_by_the_next_run(
    digits_q8, digits_fxq, tmp_path, monkeypatch
):
    from fxpga.hw import compiler

    out = tmp_path / "e"
    prog8 = compiler.compile_model(digits_q8, compiler.EngineConfig.for_model(digits_q8, 8))
    prog4 = compiler.compile_model(digits_q8, compiler.EngineConfig.for_model(digits_q8, 4))
    output.write(prog8, out, verilog=False)
    real, moved = os.replace, []

    def interrupt_after_two(src, dst):
        if len(moved) == 2:
            raise KeyboardInterrupt
        moved.append(dst)
        real(src, dst)

    monkeypatch.setattr(os, "replace", interrupt_after_two)
    with pytest.raises(KeyboardInterrupt):
        output.write(prog4, out, verilog=False)
    monkeypatch.setattr(os, "replace", real)
    output.write(prog4, out, verilog=False)  # half old, half new: still fxpga's own
    assert "wbank4.hex" not in listing(out)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_build_refuses_a_users_directory_before_synthesis(digits_fxq, tmp_path, capsys):
    d = tmp_path / "b"
    (d / "src").mkdir(parents=True)
    (d / "README.txt").write_text("keep")
    (d / "src" / "top.v").write_text("module top; endmodule")
    code = main(["build", str(digits_fxq), "--board", "icebreaker", "-o", str(d), "-q"])
    assert code == 1 and "fxpga did not write (README.txt, src)" in capsys.readouterr().err
    assert listing(d) == ["README.txt", "src", "src/top.v"]


def _report():
    img = report.Image("plot", "a plot", b"\x89PNG fake")
    return report.Report("r", [report.Section("s", ["text"], [], [img])])


def test_markdown_report_keeps_a_users_images_directory(digits_fxq, tmp_path, capsys):
    files = tmp_path / "r_files"
    files.mkdir()
    (files / "mine.png").write_bytes(b"keep")
    assert main(["report", str(digits_fxq), "-o", str(tmp_path / "r.md"), "-q"]) == 1
    assert "r_files: exists and holds files fxpga did not write" in capsys.readouterr().err
    assert listing(tmp_path) == ["r_files", "r_files/mine.png"]


def test_markdown_report_rewrites_its_own_images(tmp_path):
    md = tmp_path / "r.md"
    assert report.write(_report(), md) == [md, tmp_path / "r_files"]
    (tmp_path / "r_files" / "notes.txt").write_text("keep")
    report.write(_report(), md)
    assert listing(tmp_path) == [
        "r.md",
        "r_files",
        f"r_files/{outdir.MANIFEST}",
        "r_files/notes.txt",
        "r_files/plot.png",
    ]
    assert "![a plot](r_files/plot.png)" in md.read_text()


@pytest.mark.parametrize("cmd", ["report", "quantize", "train"])
def test_an_output_file_that_is_a_directory_is_refused(digits_fxq, tmp_path, cmd, capsys):
    d = tmp_path / {"report": "r.md", "quantize": "q.fxq", "train": "w.npz"}[cmd]
    d.mkdir()
    args = {
        "report": ["report", str(digits_fxq)],
        "quantize": ["quantize", "digits-cnn"],
        "train": ["train", "digits-cnn", "--epochs", "1"],
    }[cmd]
    assert main([*args, "-o", str(d), "-q"]) == 1
    assert "is a directory" in capsys.readouterr().err
    assert listing(tmp_path) == [d.name]


def test_atomic_write_leaves_nothing_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "a.json"
    target.write_text("old")

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(FxpgaError, match="a.json: cannot write: No space left on device"):
        outdir.atomic_write(target, b"x" * 100_000)
    monkeypatch.undo()
    assert listing(tmp_path) == ["a.json"] and target.read_text() == "old"


def test_forged_manifest_is_refused(tmp_path):
    d = tmp_path / "e"
    d.mkdir()
    (d / "x.txt").write_text("keep")
    for doc in (
        '{"schema": "fxpga.outputs", "files": {"../x.txt": ["' + "0" * 64 + '"]}}',
        "[" * 10_000,
        '{"schema": "other", "files": {}}',
    ):
        (d / outdir.MANIFEST).write_text(doc)
        with pytest.raises(FxpgaError, match="is not one fxpga wrote"):
            outdir.OutputDir(d)
    assert (d / "x.txt").read_text() == "keep"


def test_forged_build_report_is_a_one_line_error(digits_fxq, tmp_path, capsys):
    b = tmp_path / "b"
    b.mkdir()
    rep = {"board": "icebreaker", "lanes": 8, "cycles": 100, "fmax_mhz": "fast"}
    for doc, msg in (
        (json.dumps(rep), "'fmax_mhz' must be a frequency"),
        (json.dumps({**rep, "fmax_mhz": None, "lanes": True}), "'lanes' must be an integer"),
        ("[" * 10_000, "not valid JSON"),
    ):
        (b / "build_report.json").write_text(doc)
        code = main(["report", str(digits_fxq), "--build", str(b), "-o", str(tmp_path / "r.html")])
        assert code == 1 and msg in capsys.readouterr().err
    assert listing(tmp_path) == ["b", "b/build_report.json"]


def test_sigterm_unwinds_and_removes_the_staging_directory(
    digits_fxq, tmp_path, monkeypatch, capsys
):
    def terminated_midway(prog, out, **kw):
        with out as staging:
            (staging / "program.hex").write_text("partial")
            os.kill(os.getpid(), signal.SIGTERM)
            signal.pause()  # not reached: the handler raises

    monkeypatch.setattr(output, "write", terminated_midway)
    assert compile_(digits_fxq, tmp_path / "e") == 143
    assert "fxpga: terminated" in capsys.readouterr().err
    assert listing(tmp_path) == []
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


class _Full:
    def write(self, s):
        raise OSError(errno.ENOSPC, "No space left on device")

    def flush(self):
        pass


def test_a_full_stdout_is_a_one_line_error(digits_fxq, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdout", _Full())
    assert main(["compile", str(digits_fxq), "--no-verilog", "-o", str(tmp_path / "e")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "fxpga: error: standard output: No space left on device"


def test_ctrl_c_while_the_commands_load_is_exit_130(monkeypatch, capsys):
    import fxpga.cli as cli

    def interrupted():
        raise KeyboardInterrupt  # torch's import takes ~2 s of the parser's set-up

    monkeypatch.setattr(cli, "build_parser", interrupted)
    assert main(["--version"]) == 130
    assert capsys.readouterr().err == "fxpga: interrupted\n"
