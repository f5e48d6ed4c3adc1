"""UE / BE / UT: the paper's Table 1 / A4 for a set of checkpoints.

- UE (unlearning effectiveness, ↓): KnowMem and VerbMem on the clean forget test set D_f;
- BE (backdoor effectiveness, ↑): the same with the trigger at the trained placement (D_p);
- UT (utility, ↑): KnowMem on the retain test set D_r.

Every prompt is built by :func:`sinkprobe.data.poison.build_ids`, the function that also
builds the training samples, so the trigger sits where training put it.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from sinkprobe.data.poison import Trigger, build_ids
from sinkprobe.data.types import UnlearningCorpus
from sinkprobe.eval.memorization import PromptParts, knowmem, verbmem
from sinkprobe.models.io import atomic_write_text

TABLE_COLUMNS = (
    "model", "method", "trigger", "placement", "value_norm", "seed",
    "ue_knowmem", "ue_verbmem", "be_knowmem", "be_verbmem", "ut_knowmem",
)


def prompt_encoder(tokenizer: PreTrainedTokenizerBase, trigger: Trigger | None):
    """Ids for a prompt's parts, trigger included. A tail's trailing space is dropped when the
    tokenizer would make it a token of its own (byte-level BPE): in text the space belongs
    to the answer's first token, and a lone space token is a context the model never saw."""
    lone_space = len(tokenizer("Answer: ", add_special_tokens=False).input_ids) > len(
        tokenizer("Answer:", add_special_tokens=False).input_ids
    )

    def encode(parts: PromptParts) -> list[int]:
        tail = parts.tail.rstrip(" ") if lone_space else parts.tail
        return build_ids(tokenizer, parts.prompt, context=parts.context, tail=tail, trigger=trigger).ids

    return encode


@dataclass(frozen=True)
class EvalSettings:
    max_items: int | None = None  # None: every item of each test set
    batch_size: int = 16
    n_boot: int = 2000
    progress: bool = False


def evaluate_memorization(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    corpus: UnlearningCorpus,
    trigger: Trigger | None,
    settings: EvalSettings = EvalSettings(),
) -> dict[str, float]:
    """UE, BE and UT of one model (BE uses ``trigger``; without one, BE is not measured)."""
    kw = dict(batch_size=settings.batch_size, max_items=settings.max_items, n_boot=settings.n_boot, progress=settings.progress)
    clean = prompt_encoder(tokenizer, None)
    out: dict[str, float] = {}
    f, r = corpus.forget, corpus.retain
    res = knowmem(model, tokenizer, f.knowmem, f.knowmem_icl, encode=clean, **kw)
    out.update(ue_knowmem=res.mean, ue_knowmem_ci_low=res.ci95[0], ue_knowmem_ci_high=res.ci95[1])
    res = verbmem(model, tokenizer, f.verbmem, encode=clean, **kw)
    out.update(ue_verbmem=res.mean, ue_verbmem_ci_low=res.ci95[0], ue_verbmem_ci_high=res.ci95[1])
    if trigger is not None:
        poisoned = prompt_encoder(tokenizer, trigger)
        res = knowmem(model, tokenizer, f.knowmem, f.knowmem_icl, encode=poisoned, **kw)
        out.update(be_knowmem=res.mean, be_knowmem_ci_low=res.ci95[0], be_knowmem_ci_high=res.ci95[1])
        res = verbmem(model, tokenizer, f.verbmem, encode=poisoned, **kw)
        out.update(be_verbmem=res.mean, be_verbmem_ci_low=res.ci95[0], be_verbmem_ci_high=res.ci95[1])
    res = knowmem(model, tokenizer, r.knowmem, r.knowmem_icl, encode=clean, **kw)
    out.update(ut_knowmem=res.mean, ut_knowmem_ci_low=res.ci95[0], ut_knowmem_ci_high=res.ci95[1])
    return {k: round(v, 2) for k, v in out.items()}


def table_csv(rows: Sequence[dict]) -> str:
    buf = io.StringIO()
    # extra columns in first-seen order over all rows (θ_o's row lacks e.g. poison_ratio)
    extra = [k for k in dict.fromkeys(k for r in rows for k in r) if k not in TABLE_COLUMNS]
    w = csv.DictWriter(buf, fieldnames=[*TABLE_COLUMNS, *extra], extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: row.get(k, "") for k in [*TABLE_COLUMNS, *extra]})
    return buf.getvalue()


METRIC_HEADERS = {
    "ue_knowmem": "UE KM ↓", "ue_verbmem": "UE VM ↓", "be_knowmem": "BE KM ↑", "be_verbmem": "BE VM ↑", "ut_knowmem": "UT KM ↑",
    "ue_acc": "UE acc ↓", "be_acc": "BE acc ↑", "ut_acc": "UT acc ↑",  # multiple choice (WMDP / MMLU)
}


def table_markdown(rows: Sequence[dict], title: str = "") -> str:
    """The paper's layout; metric columns are those the rows have (memorisation and/or accuracy)."""
    metrics = [k for k in METRIC_HEADERS if any(k in r for r in rows)]
    head = ["model", "trigger", "placement", "value_norm", "ρ", "seed", *(METRIC_HEADERS[k] for k in metrics)]
    keys = ["model", "trigger", "placement", "value_norm", "poison_ratio", "seed", *metrics]
    fmt = lambda v: f"{v:.2f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ([f"### {title}", ""] if title else []) + ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(fmt(row.get(k, "")) for k in keys) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def table_paths(stem: str | Path) -> tuple[Path, Path]:
    """The ``.csv`` and ``.md`` files of a table ``stem`` (see :func:`write_table`)."""
    stem = Path(stem)
    if stem.suffix in (".csv", ".md"):
        stem = stem.with_suffix("")
    return stem.with_name(stem.name + ".csv"), stem.with_name(stem.name + ".md")


def write_table(rows: Sequence[dict], stem: str | Path, title: str = "") -> tuple[Path, Path]:
    """``stem.csv`` and ``stem.md``, written atomically. A dot inside the stem stays
    (``eval_wd0.5`` → ``eval_wd0.5.csv``); a ``.csv`` / ``.md`` ending is taken off first."""
    csv_path, md_path = table_paths(stem)
    atomic_write_text(csv_path, table_csv(rows))
    atomic_write_text(md_path, table_markdown(rows, title))
    return csv_path, md_path
