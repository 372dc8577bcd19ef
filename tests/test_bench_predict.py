"""benchmarks/bench_predict.py runs end to end on a tiny model: a refused flag set is reported, not a crash.

The benchmark is run by hand on a quiet machine; this only keeps it from rotting as the CLI changes
(its argument parsing, the OpenVINO script's outputs, the report of a variant the CLI refuses).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny_finetune import make_tiny_model

from benchmarks import bench_predict

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one torch thread (main() sets it to --threads)


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory) -> Path:
    """A random-weight 2-class classifier directory, as `onebert finetune` saves one."""
    import torch

    from onebert.model import BertForSequenceClassification
    from onebert.model.config import BertConfig
    from onebert.tasks.spec import TaskSpec
    from onebert.tokenizer import Tokenizer

    base = make_tiny_model(tmp_path_factory.mktemp("base"))
    out = tmp_path_factory.mktemp("classifier")
    spec = TaskSpec("classification", labels=["neg", "pos"], max_seq_length=16)
    torch.manual_seed(0)  # the head's random weights: the same model every run
    BertForSequenceClassification(spec.apply_to(BertConfig.load(base))).save_pretrained(out)
    Tokenizer.from_pretrained(base).save_pretrained(out)
    return out


def test_variants_parse_as_name_and_shell_split_flags():
    assert bench_predict.parse_variant("default=") == ("default", [])
    # int8="--precision int8" on a shell's command line arrives without the quotes
    assert bench_predict.parse_variant("int8=--precision int8") == ("int8", ["--precision", "int8"])
    args = bench_predict.parse_args(["--model", "m", "--texts", "t"])
    assert args.variant == [("default", [])] and args.repeats == 3
    with pytest.raises(SystemExit):
        bench_predict.parse_args(["--model", "m", "--texts", "t", "--variant", "openvino f32=--precision fp32"])


def test_the_clis_error_line_is_what_a_failed_variant_reports():
    line = "onebert predict: error: argument --precision: invalid choice: 'int8'"
    assert bench_predict.last_error_line(f"usage: onebert predict [-h]\n{line}\n") == line


def test_a_round_on_a_tiny_model_times_onebert_and_openvino_and_reports_a_refused_flag(tiny_classifier, tmp_path,
                                                                                       monkeypatch):
    pytest.importorskip("openvino", reason="openvino is not installed (pip install openvino)")
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS"):  # main() sets them; restored after
        monkeypatch.setenv(name, "1")
    texts = tmp_path / "texts.txt"
    texts.write_text("the good film\na bad plot and very bad acting\nmary\n", encoding="utf-8")
    result = tmp_path / "result.json"
    code = bench_predict.main(["--model", str(tiny_classifier), "--texts", str(texts), "--threads", "1",
                               "--repeats", "1", "--allocator", "inherit", "--json", str(result),
                               "--variant", "default=--batch-size 2", "--variant", "bad=--no-such-flag"])
    assert code == 0
    report = json.loads(result.read_text())
    rows = {row["name"]: row for row in report["results"]}
    assert report["header"]["sentences"] == 3 and report["header"]["threads"] == 1
    assert "unrecognized arguments: --no-such-flag" in rows["bad"]["error"] and not rows["bad"]["seconds"]
    for name in ("default", "openvino default", "openvino f32"):
        assert rows[name]["error"] is None and rows[name]["median_s"] > 0
    # The same fp32 model in two runtimes: the same labels.
    assert rows["default"]["agreement_with_openvino_f32"] == 1.0
    assert rows["openvino default"]["speed_vs_openvino_default"] == 1.0
