"""The command line's shared conventions (issue 13, 15.4-15.7): options declared once, one --device and
--precision, errors from the subcommand with onebert's names for transformers' options, help texts, run
directories accepted as models, and --keep-last 0 / --overwrite for fine-tuning runs."""

from __future__ import annotations

import argparse
import json

import pytest

from onebert.cli import _nested_parsers, build_parser, load_option_file, main
from onebert.errors import OneBertError
from tiny_finetune import make_tiny_model, write_pairs

MODEL_COMMANDS = ("embed", "evaluate", "finetune", "predict", "pretrain", "serve")


def _all_parsers():
    _, subparsers = build_parser()
    for name, parser in subparsers.items():
        yield name, parser
        for nested in _nested_parsers(parser):
            yield f"{name} {nested.prog.split()[-1]}", nested


def _option(parser: argparse.ArgumentParser, flag: str) -> argparse.Action:
    return next(a for a in parser._actions if flag in a.option_strings)


def test_every_option_of_every_command_has_a_help_text():
    missing = [f"onebert {name} {action.option_strings or action.dest}" for name, parser in _all_parsers()
               for action in parser._actions
               if not (action.help or "").strip() and not isinstance(action, argparse._SubParsersAction)]
    assert not missing


def test_help_shows_no_default_for_required_or_unset_options(capsys):
    for name, parser in _all_parsers():
        text = parser.format_help()
        assert "(default: None)" not in text, name
        assert "(default: False)" not in text, name
        assert "(required) (default" not in " ".join(text.split()), name
    _, subparsers = build_parser()
    assert "(default: 5e-05)" in " ".join(subparsers["finetune"].format_help().split())  # real defaults stay


def test_precision_has_one_default_and_device_accepts_cuda_n_on_every_command():
    _, subparsers = build_parser()
    for name in MODEL_COMMANDS:
        parser = subparsers[name]
        assert _option(parser, "--device").default == "auto", name
        assert "cuda:N" in _option(parser, "--device").help, name
        if any("--precision" in a.option_strings for a in parser._actions):
            assert _option(parser, "--precision").default == "auto", name
    from onebert.cli.options import check_device

    assert check_device("cuda:1") == "cuda:1"
    with pytest.raises(OneBertError, match="not a device"):
        check_device("gpu")
    from onebert.runtime import device_type

    assert device_type("cuda:1") == "cuda"  # the training runtime takes cuda:N too (was refused by finetune)


def test_a_bad_device_is_one_line_from_the_command(capsys):
    assert main(["finetune", "--device", "gpu0", "--task", "classification", "--model", "m", "--train", "t",
                 "--output", "o"]) == 2
    assert capsys.readouterr().err.strip().startswith("onebert finetune: error: --device: not a device: 'gpu0'")


def test_training_options_are_generated_from_train_config_once_for_pretrain_and_finetune():
    from onebert.train.config import TrainConfig, option_fields, option_flag

    _, subparsers = build_parser()
    flags = {option_flag(item) for item in option_fields()}
    shared = flags - {"--max-time", "--ipex", "--early-stopping-patience"}  # pretraining has no metric to stop on
    for name in ("pretrain", "finetune"):
        parser = subparsers[name]
        have = {flag for action in parser._actions for flag in action.option_strings}
        assert shared <= have, (name, shared - have)
        # each flag's range is the field's declaration (the same object), not a hand-written copy
        field = next(item for item in option_fields() if item.name == "max_nonfinite")
        assert _option(parser, "--max-bad-steps").type is field.metadata["option"]["type"]
    args = subparsers["finetune"].parse_args(["--max-bad-steps", "2", "--keep-last", "0", "--lr", "3e-5"])
    config = TrainConfig.from_options(args, output_dir="x", max_steps=4)
    assert (config.max_nonfinite, config.keep_last, config.lr, config.adam_eps) == (2, 0, 3e-5, 1e-8)
    assert not config.keeps_checkpoints


@pytest.mark.parametrize("given, hint", [
    (["--learning_rate", "1e-4"], "onebert's is --lr"),
    (["--model_name_or_path", "m"], "onebert's is --model"),
    (["--num_train_epochs", "2"], "onebert's is --epochs"),
    (["--per_device_train_batch_size", "8"], "onebert's is --batch-size"),
    (["--per_device_eval_batch_size", "8"], "onebert's is --eval-batch-size"),
    (["--output_dir", "o"], "onebert's is --output"),
    (["--fp16"], "onebert's is --precision fp16"),
    (["--max_seq_length", "64"], "onebert's is --max-seq-length"),
    (["--warmup_ratio", "0.1"], "onebert's is --warmup-ratio"),
    (["--weight_decay", "0.1"], "onebert's is --weight-decay"),
    (["--do_train"], "--do_train is not needed"),
    (["--eval-bach-size", "3"], "did you mean --eval-batch-size?"),
])
def test_unknown_option_is_reported_by_the_subcommand_with_oneberts_name(capsys, given, hint):
    with pytest.raises(SystemExit) as exit_info:
        main(["finetune", *given])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"onebert finetune: error: unrecognized arguments: {given[0]}")
    assert hint in err
    assert "usage:" not in err and len(err.splitlines()) == 1


def test_unknown_config_file_key_gets_the_same_hint(tmp_path):
    _, subparsers = build_parser()
    (tmp_path / "c.yaml").write_text("learning_rate: 0.001\n")
    with pytest.raises(OneBertError, match=r"unknown option 'learning_rate' \('learning_rate' is transformers' "
                                           r"name; onebert's is 'lr'\)"):
        load_option_file(str(tmp_path / "c.yaml"), subparsers["finetune"])
    (tmp_path / "alias.yaml").write_text("max-length: 16\n")  # an alias is a key too
    assert load_option_file(str(tmp_path / "alias.yaml"), subparsers["embed"]) == {"max_length": 16}


def test_one_spelling_per_idea_keeps_the_other_as_an_alias():
    _, subparsers = build_parser()
    for name in ("embed", "serve", "finetune"):
        action = _option(subparsers[name], "--max-seq-length")
        assert "--max-length" in action.option_strings, name
    assert "--quiet" in _option(subparsers["embed"], "--no-progress").option_strings
    train = next(p for p in _nested_parsers(subparsers["tokenizer"]) if p.prog.endswith("train"))
    assert "--quiet" in _option(train, "--no-progress").option_strings


def test_bf16_is_a_deprecated_alias_of_precision_bf16(capsys):
    from onebert.cli.options import finish_runtime_options

    _, subparsers = build_parser()
    args = subparsers["evaluate"].parse_args(["--bf16"])
    finish_runtime_options(args, "onebert evaluate")
    assert args.precision == "bf16" and "deprecated" in capsys.readouterr().err
    args = subparsers["evaluate"].parse_args(["--bf16", "--precision", "fp16"])
    with pytest.raises(OneBertError, match="--bf16 contradicts --precision fp16"):
        finish_runtime_options(args, "onebert evaluate")


@pytest.fixture(scope="module")
def finetuned_run(tmp_path_factory):
    """One tiny fine-tuning run with --keep-last 0: best/ and final/, no checkpoints."""
    root = tmp_path_factory.mktemp("run")
    model = make_tiny_model(root / "model")
    train, dev = write_pairs(root / "train.tsv", 48, 0), write_pairs(root / "dev.tsv", 16, 1)
    run = root / "run"
    argv = ["finetune", "--task", "classification", "--model", str(model), "--train", str(train), "--validation",
            str(dev), "--output", str(run), "--max-steps", "4", "--batch-size", "16", "--device", "cpu",
            "--precision", "fp32", "--log-every", "100", "--keep-last", "0"]
    assert main(argv) == 0
    return run, argv


def test_keep_last_0_writes_no_resumable_checkpoints_but_the_model(finetuned_run):
    run, _ = finetuned_run
    assert (run / "final" / "config.json").is_file() and (run / "best" / "config.json").is_file()
    assert not (run / "checkpoints").exists() or not any((run / "checkpoints").iterdir())


def test_overwrite_replaces_only_a_run_directory_onebert_made(finetuned_run, capsys):
    run, argv = finetuned_run
    assert main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
    (run / "notes.txt").write_text("mine")  # a file of the user's: never deleted
    assert main([*argv, "--overwrite"]) == 2
    assert "also holds notes.txt" in capsys.readouterr().err and (run / "notes.txt").read_text() == "mine"
    (run / "notes.txt").unlink()
    assert main([*argv, "--overwrite"]) == 0
    assert (run / "final" / "config.json").is_file()


@pytest.mark.parametrize("command", ["info", "export"])
def test_a_run_directory_is_a_model_for_info_and_export(finetuned_run, tmp_path, capsys, command):
    run, _ = finetuned_run
    if command == "info":
        assert main(["info", str(run), "--json"]) == 0
        out, err = capsys.readouterr()
        assert json.loads(out)["directory"] == str(run / "best")
    else:
        assert main(["export", "--model", str(run), "--format", "hf", "--output", str(tmp_path / "hf"),
                     "--no-check"]) == 0
        err = capsys.readouterr().err
        assert (tmp_path / "hf" / "config.json").is_file()
    assert f"using its best/ model ({run / 'best'})" in err


def test_serve_takes_a_run_directory(finetuned_run, monkeypatch, capsys):
    """serve resolves the run directory before loading: the model path reaching create_app is best/."""
    pytest.importorskip("fastapi")
    import onebert.serve.app as app_module
    import onebert.serve.server as server_module

    run, _ = finetuned_run
    seen = {}

    def fake_create_app(model, settings):
        seen["model"] = model
        raise OneBertError("stop here")

    monkeypatch.setattr(app_module, "create_app", fake_create_app)
    monkeypatch.setattr(server_module, "listen", lambda host, port: None)
    assert main(["serve", "--model", str(run), "--device", "cpu"]) == 2
    assert seen["model"] == str(run / "best")
