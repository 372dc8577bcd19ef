"""Every numeric option of every command has a declared range: nan, inf and out-of-range values are one line, exit 2.

The walking tests go through `build_parser()`, so an option added later with a plain `type=float` /
`type=int` (which accept nan, inf and negative counts) fails them until it is given a range from
onebert/ranges.py.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys

import pytest

from onebert import ranges
from onebert.cli import _nested_parsers, build_parser, main
from onebert.errors import OneBertError

NON_FINITE = ("nan", "inf", "-inf", "NaN", "Infinity", "1e999")


def _all_parsers() -> list[tuple[list[str], argparse.ArgumentParser]]:
    """(argv prefix, parser) for every command and sub-command (`tokenizer train`, ...)."""
    _, subparsers = build_parser()
    found = []
    for name, parser in subparsers.items():
        nested = _nested_parsers(parser)
        if not nested:
            found.append(([name], parser))
        for child in nested:
            found.append(([name, child.prog.split()[-1]], child))
    return found


def _numeric_options() -> list[tuple[list[str], argparse.Action]]:
    options = []
    for prefix, parser in _all_parsers():
        for action in parser._actions:
            if isinstance(action.type, ranges.RangedType):
                options.append((prefix, action))
    return options


def _out_of_range(action: argparse.Action) -> list[str]:
    rng = action.type.range
    return [str(int(v)) if rng.integer else repr(float(v)) for v in rng.outside()]


def _one_error_line(err: str, prefix: list[str]) -> str:
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"onebert {' '.join(prefix)}: error: "), err
    return lines[0]


def test_every_numeric_option_declares_a_range():
    """No plain int/float (nor an untyped option with a numeric default): each says what it accepts."""
    unranged = []
    for prefix, parser in _all_parsers():
        for action in parser._actions:
            numeric_default = isinstance(action.default, (int, float)) and not isinstance(action.default, bool)
            plain = action.type in (int, float) or (action.type is None and numeric_default
                                                      and action.nargs != 0 and action.const is None)
            custom = action.type is not None and not isinstance(action.type, ranges.RangedType)
            if plain or custom:
                unranged.append(f"onebert {' '.join(prefix)} {action.option_strings or action.dest}")
    assert not unranged, f"options without a declared range (use onebert/ranges.py): {unranged}"
    assert len(_numeric_options()) >= 60  # the walk really reaches the commands' options


def test_every_numeric_default_is_inside_its_range():
    for prefix, action in _numeric_options():
        if action.default is None:
            continue
        value = action.type(action.default) if isinstance(action.default, str) else action.default
        assert action.type.range.contains(value), (prefix, action.option_strings, action.default)


@pytest.mark.parametrize("prefix,action", _numeric_options(),
                         ids=lambda p: " ".join(p) if isinstance(p, list) else p.option_strings[0])
def test_non_finite_and_out_of_range_values_are_one_line_exit_2(prefix, action, capsys):
    option = action.option_strings[0]
    values = list(NON_FINITE) + _out_of_range(action)
    assert len(values) > len(NON_FINITE), f"{option}: a range with neither a minimum nor a maximum"
    for value in values:
        with pytest.raises(SystemExit) as exit_info:
            main([*prefix, f"{option}={value}"])  # '=': a value like -inf is not taken for an option
        assert exit_info.value.code == 2, (option, value)
        line = _one_error_line(capsys.readouterr().err, prefix)
        assert f"argument {option}" in line and ("must be" in line or "not " in line), line


@pytest.mark.parametrize("prefix,action", _numeric_options(),
                         ids=lambda p: " ".join(p) if isinstance(p, list) else p.option_strings[0])
def test_non_finite_and_out_of_range_config_values_are_one_line_naming_file_and_key(prefix, action, tmp_path,
                                                                                    capsys):
    key = action.option_strings[0].removeprefix("--")
    bad = [math.nan, math.inf, -math.inf, "inf", "nan", "many"]
    bad += [int(v) if action.type.range.integer else float(v) for v in action.type.range.outside()]
    for i, value in enumerate(bad):
        config = tmp_path / f"options{i}.json"
        config.write_text(json.dumps({key: value}))  # json writes NaN / Infinity, which Python's json reads
        assert main([*prefix, "--config", str(config)]) == 2, (key, value)
        line = _one_error_line(capsys.readouterr().err, prefix[:1])  # onebert.cli.main names the command
        assert f"{config}: option '{key}'" in line, line


@pytest.mark.parametrize("argv,expected", [
    (["pretrain", "--lr", "inf"], "argument --lr: must be a finite number > 0, got 'inf'"),
    (["pretrain", "--weight-decay", "nan"], "argument --weight-decay: must be a finite number >= 0, got 'nan'"),
    (["pretrain", "--max-grad-norm", "nan"], "argument --max-grad-norm: must be a finite number > 0, got 'nan'"),
    (["pretrain", "--max-time", "1" + "0" * 400], "argument --max-time: must be a number in (0, 31622400] seconds"),
    (["finetune", "--epochs", "inf"], "argument --epochs: must be a number in (0, 1000000], got 'inf'"),
    (["finetune", "--adam-eps=-1"], "argument --adam-eps: must be a finite number > 0, got '-1'"),
    (["finetune", "--batch-size=-8"], "argument --batch-size: must be an integer >= 1, got '-8'"),
    (["prepare", "--workers", "0"], "argument --workers: must be an integer >= 1, got '0'"),
    (["serve", "--port", "99999"], "argument --port: must be an integer in 1..65535, got '99999'"),
    (["serve", "--request-timeout", "nan"], "argument --request-timeout: must be a number in (0, 86400], got 'nan'"),
    (["serve", "--max-latency-ms", "inf"], "argument --max-latency-ms: must be a number in [0, 60000], got 'inf'"),
])
def test_reported_settings_are_refused_with_the_allowed_range(argv, expected, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert expected in _one_error_line(capsys.readouterr().err, argv[:1])


@pytest.mark.parametrize("length", ["0", "1", "2", "-5"])
def test_tokenizer_encode_max_length_below_cls_sep_and_one_token_is_refused(length, minilm_dir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["tokenizer", "encode", "--tokenizer", str(minilm_dir), f"--max-length={length}", "hello world"])
    assert exit_info.value.code == 2
    line = _one_error_line(capsys.readouterr().err, ["tokenizer", "encode"])
    assert "must be an integer >= 3 ([CLS], [SEP] and at least one token of text)" in line


def test_tokenizer_encode_pair_needs_five_tokens(minilm_dir, capsys):
    argv = ["tokenizer", "encode", "--tokenizer", str(minilm_dir), "--max-length", "4", "hello", "world"]
    assert main(argv) == 2
    assert "a text pair needs at least 5 tokens ([CLS] A [SEP] B [SEP]" in _one_error_line(
        capsys.readouterr().err, ["tokenizer"])
    assert main(argv[:5] + ["5", "hello", "world"]) == 0
    assert "5 tokens: [CLS] hello [SEP] world [SEP]" in capsys.readouterr().out


@pytest.mark.parametrize("text", ["lr: .nan\n", "lr: inf\n", "lr: -.inf\n", "lr: fast\n", "lr: 0\n"])
def test_yaml_config_learning_rate_must_be_finite_and_positive(text, tmp_path, capsys):
    config = tmp_path / "pretrain.yaml"
    config.write_text(text)
    assert main(["pretrain", "--config", str(config)]) == 2
    line = _one_error_line(capsys.readouterr().err, ["pretrain"])
    assert f"{config}: option 'lr': " in line and ("must be a finite number > 0" in line or "not a number" in line)


def test_toml_config_nan_is_refused(tmp_path, capsys):
    config = tmp_path / "serve.toml"
    config.write_text("request-timeout = nan\n")
    assert main(["serve", "--config", str(config)]) == 2
    assert "option 'request-timeout': must be a number in (0, 86400]" in capsys.readouterr().err


def test_real_command_line_exits_2_with_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "onebert", "finetune", "--epochs", "inf", "--task", "ner"],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == "onebert finetune: error: argument --epochs: must be a number in (0, 1000000], got 'inf'\n"


def test_argparse_mistakes_are_one_line_without_usage_block(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["embed", "--input", "x.txt"])
    assert exit_info.value.code == 2
    line = _one_error_line(capsys.readouterr().err, ["embed"])
    assert "the following arguments are required: --model, --output" in line


@pytest.mark.parametrize("field,value", [
    ("lr", math.inf), ("lr", math.nan), ("weight_decay", math.nan), ("max_grad_norm", math.nan),
    ("adam_eps", -1.0), ("warmup_ratio", math.nan), ("max_time", math.inf), ("grad_accum", 0), ("seed", -1),
])
def test_train_config_refuses_what_the_command_line_refuses(field, value, tmp_path):
    from onebert.train.config import TrainConfig

    config = TrainConfig(output_dir=str(tmp_path), max_steps=10, **{field: value})
    with pytest.raises(OneBertError, match=f"--{field.replace('_', '-')} must be "):
        config.validate()


def test_serve_settings_refuse_non_finite_waits():
    pytest.importorskip("fastapi")
    from onebert.serve.app import ServeSettings

    with pytest.raises(OneBertError, match="max_latency_ms must be a number in"):
        ServeSettings(max_latency_ms=math.inf)
    with pytest.raises(OneBertError, match="request_timeout_s must be a number in"):
        ServeSettings(request_timeout_s=math.nan)


def test_masking_config_refuses_nan_fractions():
    from onebert.data import MaskingConfig

    with pytest.raises(OneBertError, match="mask_fraction"):
        MaskingConfig(mask_fraction=math.nan).validate()


def test_declared_ranges_match_the_library_limits():
    from onebert.data.prepare import MAX_SEQ_LENGTH, MIN_SEQ_LENGTH
    from onebert.tokenizer import SPECIAL_TOKENS

    assert (ranges.PREPARE_SEQ_LENGTH.range.min, ranges.PREPARE_SEQ_LENGTH.range.max) == (MIN_SEQ_LENGTH,
                                                                                           MAX_SEQ_LENGTH)
    assert ranges.VOCAB_SIZE.range.min == len(SPECIAL_TOKENS) + 1
