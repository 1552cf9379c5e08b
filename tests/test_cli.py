"""The `soli` command line."""

from __future__ import annotations

import json

from soli_hf.cli import main


def test_info_reports_parameters_flops_vocab_and_input_size(saved_tiny_model, capsys, tokenizer):
    assert main(["info", "--model", str(saved_tiny_model), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["vocab_size"] == len(tokenizer)
    assert summary["input_size"] == [3, 64, 64]
    assert summary["parameters"]["total"] > summary["parameters"]["backbone"] > 0
    flops = summary["flops_per_image"]
    assert 0 < flops["lr"]["total"] < flops["both"]["total"]
    assert main(["info", "--model", str(saved_tiny_model)]) == 0
    assert "inference_branches=lr" in capsys.readouterr().out
