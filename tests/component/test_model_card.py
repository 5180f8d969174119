"""Every saved model/ gets a Hub model card (README.md: YAML front matter, what it is, data, key numbers, how to
load it, the command that reproduces it), and push_to_hub uploads it — or says plainly why it could not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

pytest.importorskip("torch")

from rlhflab.core.model_card import model_card  # noqa: E402
from rlhflab.core.config import load_config  # noqa: E402
from rlhflab.core.rundir import RunError  # noqa: E402
from rlhflab.train import sft  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def _sft(tmp_path: Path, *extra: str) -> tuple[sft.SFTConfig, Path]:
    cfg = load_config(sft.SFTConfig, REPO / "configs/sft/tiny.yaml", ["max_steps=2", "eval_every=0", *extra])
    return cfg, tmp_path / "sft"


def test_a_finished_sft_run_has_a_model_card_with_its_numbers(tmp_path, shared_data):
    cfg, run = _sft(tmp_path)
    sft.train(cfg, str(run))
    card = (run / "model/README.md").read_text()
    front = _front_matter(card)
    assert front["library_name"] == "transformers" and front["pipeline_tag"] == "text-generation"
    assert "rlhflab" in front["tags"] and "base_model" not in front  # "tiny" is no Hub id
    done = json.loads((run / "DONE.json").read_text())
    assert f"| step | {done['step']} |" in card
    assert f"- data.train: `{cfg.data.train}`" in card
    assert "rlhflab sft --config config.yaml --out" in card and "AutoModelForCausalLM" in card


def test_the_card_names_the_hub_base_model_and_the_rm_loading_recipe():
    card = model_card("rm", {"model": "smollm2-135m", "data": {"comparisons": "batch13.jsonl.gz"}},
                      {"stage": "rm", "dev_accuracy": 0.71234, "step": 40}, "abc123")
    front = _front_matter(card)
    assert front["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert front["pipeline_tag"] == "text-classification"
    assert "| dev_accuracy | 0.7123 |" in card and "AutoModelForSequenceClassification" in card
    assert "rlhflab_reward['offset']" in card and "`abc123`" in card
    assert _front_matter(model_card("sft", {"model": "./runs/x"}, {}, None)).get("base_model") is None


def test_push_to_hub_without_a_token_is_a_clear_error_and_the_run_stays_done(tmp_path, monkeypatch, shared_data):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    cfg, run = _sft(tmp_path, "push_to_hub=me/tldr-sft")
    with pytest.raises(RunError, match=r"push_to_hub=me/tldr-sft: no Hugging Face token .* retry with `hf upload"):
        sft.train(cfg, str(run))
    assert (run / "DONE.json").exists() and (run / "model/README.md").exists()


def test_push_to_hub_uploads_the_model_directory_with_its_card(tmp_path, monkeypatch, shared_data):
    import huggingface_hub

    calls = []
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_test")
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, repo, **kw: calls.append(("create", repo, kw)))
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder",
                        lambda self, **kw: calls.append(("upload", kw["repo_id"], sorted(p.name for p in
                                                                                      Path(kw["folder_path"]).iterdir()))))
    cfg, run = _sft(tmp_path, "push_to_hub=me/tldr-sft")
    sft.train(cfg, str(run))
    assert calls[0] == ("create", "me/tldr-sft", {"private": True, "exist_ok": True})
    assert calls[1][:2] == ("upload", "me/tldr-sft") and {"README.md", "config.json", "model.safetensors"} <= set(calls[1][2])
