"""The command line: every command has --help, config files set options, user errors are one line."""

from __future__ import annotations

import json

import pytest

from onebert.cli import COMMANDS, build_parser, load_option_file, main


def test_every_command_has_help(capsys):
    for name in COMMANDS:
        with pytest.raises(SystemExit) as exit_info:
            main([name, "--help"])
        assert exit_info.value.code == 0
        assert "usage: onebert " + name in capsys.readouterr().out


def test_top_level_help_lists_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


def test_info_on_real_checkpoint_prints_json(minilm_dir, capsys):
    assert main(["info", str(minilm_dir), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["parameters"] == 22_713_216 and info["layers"] == 6 and info["weight_dtypes"] == ["float32"]


def test_info_peak_reports_the_matmul_peak_per_precision_with_its_sizes(minilm_dir, capsys, monkeypatch):
    """Only with --peak (a probe of 1-3 s); the probe itself is tested in test_runtime."""
    from onebert import runtime

    measured = []
    monkeypatch.setattr(runtime, "resolve_device", lambda name: runtime.torch.device("cpu"))
    monkeypatch.setattr(runtime, "measure_peak", lambda device, precision: measured.append(precision) or
                        runtime.PeakFlops("cpu", precision, {1024: 1.0e11, 2048: 0.9e11}))
    assert main(["info", str(minilm_dir), "--json", "--peak"]) == 0
    peaks = json.loads(capsys.readouterr().out)["peak_gflops"]
    assert measured[0] == "fp32" and len(measured) == len(set(measured))
    assert peaks["device"] == "cpu" and peaks["fp32"] == {"gflops": 100.0, "per_size": {"1024": 100.0, "2048": 90.0}}
    assert main(["info", str(minilm_dir), "--peak"]) == 0
    assert "fp32 100.0" in capsys.readouterr().out
    measured.clear()
    assert main(["info", str(minilm_dir), "--json"]) == 0
    assert "peak_gflops" not in json.loads(capsys.readouterr().out) and measured == []


def test_user_error_is_one_line_without_traceback(tmp_path, capsys):
    assert main(["info", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "config.json" in err and "Traceback" not in err


def test_config_file_sets_options_and_command_line_overrides(tmp_path, minilm_dir, capsys):
    (tmp_path / "opts.yaml").write_text(f"model: {minilm_dir}\njson: true\n")
    assert main(["info", "--config", str(tmp_path / "opts.yaml")]) == 0
    assert json.loads(capsys.readouterr().out)["layers"] == 6
    (tmp_path / "opts.toml").write_text(f'model = "{tmp_path}"\njson = true\n')
    assert main(["info", "--config", str(tmp_path / "opts.toml"), str(minilm_dir)]) == 0  # positional overrides
    assert json.loads(capsys.readouterr().out)["layers"] == 6


def test_config_file_with_unknown_or_mistyped_option_is_named(tmp_path):
    _, subparsers = build_parser()
    (tmp_path / "bad.yaml").write_text("jsn: true\n")
    from onebert.errors import OneBertError

    with pytest.raises(OneBertError, match=r"bad.yaml: unknown option 'jsn' \(did you mean 'json'\?\)"):
        load_option_file(str(tmp_path / "bad.yaml"), subparsers["info"])
    (tmp_path / "bad2.yaml").write_text("json: 3\n")
    with pytest.raises(OneBertError, match="bad2.yaml: option 'json' must be true or false"):
        load_option_file(str(tmp_path / "bad2.yaml"), subparsers["info"])
    (tmp_path / "bad3.yaml").write_text("json: [unclosed\n")
    with pytest.raises(OneBertError, match="bad3.yaml: cannot parse"):
        load_option_file(str(tmp_path / "bad3.yaml"), subparsers["info"])


def test_import_onebert_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, onebert, onebert.cli; onebert.cli.build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_config_file_reaches_nested_subcommands(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat.\nthe dog sat on the log.\n" * 50)
    (tmp_path / "tok.yaml").write_text(f"input: [{corpus}]\nvocab-size: 120\noutput: {tmp_path / 'tok'}\n")
    assert main(["tokenizer", "train", "--config", str(tmp_path / "tok.yaml")]) == 0
    assert (tmp_path / "tok" / "vocab.txt").is_file()


def test_output_into_a_closed_pipe_stops_quietly(minilm_dir):
    """`onebert tokenizer encode ... | true`: the reader is gone before the first write; no BrokenPipeError traceback."""
    import shlex
    import subprocess
    import sys

    text = " ".join(["tokenization"] * 400)
    command = (f"{shlex.quote(sys.executable)} -m onebert tokenizer encode --tokenizer {shlex.quote(str(minilm_dir))} "
               f"{shlex.quote(text)} | true")
    result = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True, timeout=120)
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr, result.stderr
    assert result.returncode in (0, 141)
