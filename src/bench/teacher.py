"""The dense teacher's training against nanoGPT's: ``python -m src.bench --teacher --nanogpt PATH``.

Both train the same model on the same text with the same hyper-parameters, one after the other on this machine, each
in its own process with ``--threads`` threads: nanoGPT's CPU "baby" run from its README (``train.py
config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20 --log_interval=1 --block_size=64
--batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0``: 4
layers of 4 heads, 128 wide, T = 64, batch 12, AdamW 1e-3 to 1e-4 after 100 warm-up steps, beta2 0.99, weight decay
0.1, gradient clip 1.0, validation every 250 steps on 20 batches), and ``python -m src.train +experiment=teacher``
with the same settings (``OVERRIDES``) at each of ``--precisions``. Without ``--nanogpt`` only the project's runs.

The text: nanoGPT's ``data/shakespeare_char/prepare.py`` downloads tiny-shakespeare; here it reads the project's
Shakespeare corpus instead (src/data/corpora.py, written to its ``input.txt``), so both train on the same first 90 %
of one text. nanoGPT validates on the remaining 10 %, the project on the next 5 % (then tests on the last 5 %): the
row that compares them evaluates nanoGPT's checkpoint on the project's validation windows, exactly as the project's
final validation does (every window of T characters once).

What is reported per run: training seconds per step (mean and median, validation excluded: nanoGPT's own per-step
times without its evaluation steps, the project's from Lightning's ThroughputMonitor), tokens per second (B x T
over the mean), the process's wall-clock and CPU seconds, and the validation loss. On a shared machine the load
comes and goes between runs minutes apart: ``--rounds R`` runs every job R times in turn and reports the median
round's times, and the speed ratio as the median of the rounds' ratios (each round's runs one after the other).
Writes teacher.csv, teacher.json (machine, settings, each run's validation curve), teacher.md and teacher.png to
``--out``; bad arguments end with one line ``error: ...`` and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pickle
import re
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F

from src.bench.harness import OUT, command_line, name_list, write_bench
from src.bench.timing import machine_info
from src.config import PRECISIONS, resolve_precision
from src.errors import Parser, UserError, positive_int
from src.report.tables import markdown_table

ROOT = Path(__file__).resolve().parents[2]
NANOGPT_ARGS = ["config/train_shakespeare_char.py", "--device=cpu", "--compile=False", "--eval_iters=20",
                "--log_interval=1", "--block_size=64", "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128",
                "--dropout=0.0"]  # its README's CPU run; --max_iters and --lr_decay_iters are --steps
EVAL_EVERY = 250  # nanoGPT's eval_interval in that config; the project's trainer.val_every below
OVERRIDES = ["+experiment=teacher", "data=shakespeare", "model=baby", "model.seq_len=64", "model.dropout=0.0",
             "data.batch_size=12", "optim.lr=1e-3", "optim.min_lr=1e-4", "optim.warmup_steps=100", "optim.beta1=0.9",
             "optim.beta2=0.99", "optim.weight_decay=0.1", "optim.grad_clip=1.0", "trainer.limit_val_batches=20",
             "trainer.enable_progress_bar=false"]  # + trainer.val_every: EVAL_EVERY (or --steps when fewer)
TOKENS_PER_STEP = 12 * 64
PAIRED_CHUNK = 25  # --paired: steps of each in turn


@dataclass
class TeacherSettings:
    nanogpt: str | None = None  # a checkout of karpathy/nanoGPT; None: the project's runs only
    steps: int = 2000  # optimisation steps of every run (nanoGPT's max_iters and lr_decay_iters)
    precisions: tuple[str, ...] = ("auto",)  # the project's runs: one per device.precision
    threads: int = 1  # OMP_NUM_THREADS / MKL_NUM_THREADS of every run
    rounds: int = 1  # every run this many times, in turn; the median round's times
    paired: bool = False  # the two training steps in this process, in turn every PAIRED_CHUNK steps (speed only)
    device: str = "cpu"  # nanoGPT's README run is a CPU run; the project's runs match it
    out: str | None = None  # None: outputs/bench/teacher_TIMESTAMP

    def describe(self, device: str) -> str:
        rounds = f", {self.rounds} rounds in turn, the median" if self.rounds > 1 else ""
        if self.paired:
            rounds = f", both steps in one process in turn every {PAIRED_CHUNK} steps"
        return (f"measured, {device}, {self.threads} thread(s), {self.steps} steps of 12 x 64 characters, nanoGPT's "
                f"baby hyper-parameters{rounds}")


def check(s: TeacherSettings) -> None:
    if s.nanogpt is not None:
        root = Path(s.nanogpt)
        missing = [p for p in ("train.py", "model.py", "data/shakespeare_char/prepare.py") if not (root / p).is_file()]
        if missing:
            raise UserError(f"--nanogpt {root}: no {missing[0]} there; give a checkout of "
                            "https://github.com/karpathy/nanoGPT")
    if s.paired and s.nanogpt is None:
        raise UserError("--paired times nanoGPT's step beside the project's: give --nanogpt PATH too")
    if s.nanogpt is not None and not s.paired and s.steps < EVAL_EVERY:  # its first checkpoint: at 250
        raise UserError(f"--steps {s.steps}: give {EVAL_EVERY} or more with --nanogpt (it validates and saves every "
                        f"{EVAL_EVERY} steps)")
    for p in s.precisions:
        if p not in PRECISIONS:
            raise UserError(f"--precisions: {p!r} is unknown; use some of {', '.join(PRECISIONS)}")


def timed_process(command: list[str], cwd: Path, log: Path, threads: int) -> tuple[float, float]:
    """Run ``command`` to the end, its output in ``log`` -> (wall-clock s, CPU s of the process); a failure ends with
    one line naming the log."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with log.open("w") as f:
        code = subprocess.run(command, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if code:
        raise UserError(f"{' '.join(command[:3])} ... failed (exit status {code}); see {log}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def prepare_nanogpt_data(root: Path, out: Path) -> None:
    """nanoGPT's shakespeare_char train.bin / val.bin / meta.pkl from the project's Shakespeare text (its prepare.py,
    with the download it would do replaced by that text)."""
    from src.data.corpora import corpus_text

    folder = root / "data" / "shakespeare_char"
    text = corpus_text("shakespeare", None, "torch")
    source = folder / "input.txt"
    if not source.is_file() or source.read_text(encoding="utf-8") != text:
        source.write_text(text, encoding="utf-8")
    # prepare.py imports requests for its download, which the file already there makes unnecessary
    stub = ("import runpy, sys, types; sys.modules['requests'] = types.ModuleType('requests'); "
            "runpy.run_path('prepare.py')")
    timed_process([sys.executable, "-c", stub], folder, out / "nanogpt_prepare.log", 1)


def nanogpt_run(s: TeacherSettings, out: Path) -> dict:
    root = Path(s.nanogpt)
    run_dir = out / "nanogpt"
    log = out / "nanogpt.log"
    wall, cpu = timed_process([sys.executable, "train.py", *NANOGPT_ARGS, f"--max_iters={s.steps}",
                               f"--lr_decay_iters={s.steps}", f"--out_dir={run_dir}"], root, log, s.threads)
    times, curve = read_nanogpt_log(log.read_text())
    return dict(run="nanoGPT", precision="32-true", wall_s=wall, cpu_s=cpu,
                mean_step_s=statistics.fmean(times), median_step_s=statistics.median(times),
                val_estimate=curve[-1][1] if curve else None, val_loss=nanogpt_val_loss(root, run_dir / "ckpt.pt"),
                curve=curve, folder=str(run_dir))


def read_nanogpt_log(text: str) -> tuple[list[float], list[tuple[int, float]]]:
    """nanoGPT's output -> (seconds of every training step but the evaluation steps, whose time holds the evaluation;
    its validation estimates [(step, loss), ...])."""
    steps = re.findall(r"^iter (\d+): loss [\d.]+, time ([\d.]+)ms", text, re.M)
    times = [float(ms) / 1e3 for i, ms in steps if int(i) % EVAL_EVERY]
    curve = re.findall(r"^step (\d+): train loss [\d.]+, val loss ([\d.]+)", text, re.M)
    return times, [(int(i), float(v)) for i, v in curve]


def nanogpt_module(root: Path):
    """nanoGPT's model.py, imported from its checkout."""
    spec = importlib.util.spec_from_file_location("nanogpt_model", root / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def nanogpt_val_loss(root: Path, ckpt_path: Path) -> float:
    """nanoGPT's checkpoint (its best validation estimate, as the project's best.ckpt) on the project's validation
    split: every window of 64 characters once, batches of 12, the mean loss per character."""
    from src.data import CharDataModule

    module = nanogpt_module(root)
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    model = module.GPT(module.GPTConfig(**ckpt["model_args"]))
    model.load_state_dict({k.removeprefix("_orig_mod."): v for k, v in ckpt["model"].items()})
    model.eval()
    dm = CharDataModule("shakespeare", seq_len=ckpt["model_args"]["block_size"], batch_size=12)
    dm.setup()
    with (root / "data" / "shakespeare_char" / "meta.pkl").open("rb") as f:
        itos = pickle.load(f)["itos"]
    if [itos[i] for i in range(len(itos))] != dm.vocab.itos:
        raise UserError(f"{root}/data/shakespeare_char was prepared from another text; delete its train.bin and "
                        "run again")
    total, count = 0.0, 0
    with torch.no_grad():
        for x, y in dm.val_dataloader():
            logits, _ = model(x, y)
            total += F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum").item()
            count += y.numel()
    return total / count


def nanogpt_step(root: Path, vocab_size: int):
    """nanoGPT's training step in this process: its model and optimizer (its model.py and configure_optimizers, the
    baby settings, seed 1337) and its train.py loop body on the CPU -- forward, the next batch from train.bin (its
    get_batch), backward, gradient clip, AdamW, zero_grad, loss.item()."""
    import numpy as np

    ng = nanogpt_module(root)
    torch.manual_seed(1337)
    model = ng.GPT(ng.GPTConfig(n_layer=4, n_head=4, n_embd=128, block_size=64, bias=False, vocab_size=vocab_size,
                                dropout=0.0))
    optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu")
    path = root / "data" / "shakespeare_char" / "train.bin"

    def get_batch():
        data = np.memmap(path, dtype=np.uint16, mode="r")
        ix = torch.randint(len(data) - 64, (12,))
        x = torch.stack([torch.from_numpy(data[i:i + 64].astype(np.int64)) for i in ix])
        return x, torch.stack([torch.from_numpy(data[i + 1:i + 65].astype(np.int64)) for i in ix])

    batch = [get_batch()]

    def step() -> None:
        _, loss = model(*batch[0])
        batch[0] = get_batch()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()

    return step


class InTurn(L.Callback):
    """Between two of the project's steps, every ``chunk`` steps: ``other()`` ``chunk`` times; the seconds per step of
    each chunk of both."""

    def __init__(self, other, chunk: int):
        self.other, self.chunk, self.start = other, chunk, None
        self.ours: list[float] = []
        self.theirs: list[float] = []

    def on_train_batch_start(self, trainer, *args) -> None:
        if trainer.global_step % self.chunk:
            return
        if self.start is not None:
            self.ours.append((time.perf_counter() - self.start) / self.chunk)
            start = time.perf_counter()
            for _ in range(self.chunk):
                self.other()
            self.theirs.append((time.perf_counter() - start) / self.chunk)
        self.start = time.perf_counter()


def paired_run(s: TeacherSettings, out: Path) -> list[dict]:
    """Both training steps in this process, in turn every PAIRED_CHUNK steps for --steps steps: the project's (its
    Trainer and teacher module under OVERRIDES, one validation at the end) and nanoGPT's (``nanogpt_step``), the
    first chunk of each a warm-up. Paired seconds apart, their ratio holds while other work comes and goes."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import src.train  # noqa: F401  registers the schemas and resolvers
    from src.runs.trainer import build_trainer
    from src.stages.common import build_datamodule, plain
    from src.stages.teacher import TeacherLM

    torch.set_num_threads(s.threads)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*OVERRIDES, f"trainer.max_steps={s.steps}",
                                                       f"trainer.val_every={s.steps}", "trainer.sample_chars=0",
                                                       f"device.precision={s.precisions[0]}",
                                                       f"paths.outputs={out}"])
    dm = build_datamodule(cfg)
    turn = InTurn(nanogpt_step(Path(s.nanogpt), len(dm.vocab)), PAIRED_CHUNK)
    module = TeacherLM(model=plain(cfg, "model"), vocab=dm.vocab.itos, optim=plain(cfg, "optim"),
                       max_steps=s.steps, sample_chars=0)
    trainer = build_trainer(cfg, out / "paired", monitor=None)
    trainer.callbacks.append(turn)
    trainer.fit(module, datamodule=dm)
    ours, theirs = turn.ours[1:], turn.theirs[1:]
    ratio = statistics.median(b / a for a, b in zip(ours, theirs))
    precision = resolve_precision(s.precisions[0], s.device)[0]
    return [dict(run=f"{name}, in turn every {PAIRED_CHUNK} steps", precision=p, mean_step_s=statistics.fmean(t),
                 median_step_s=statistics.median(t), round_ms=[], tokens_per_s=TOKENS_PER_STEP / statistics.fmean(t),
                 speedup=x, val_loss=None, loss_ratio=None, val_estimate=None, wall_s=None, cpu_s=None, curve=[],
                 chunks=len(t)) for name, p, t, x in (("nanoGPT", "32-true", theirs, 1.0),
                                                      ("this project", precision, ours, ratio))]


def project_run(s: TeacherSettings, precision: str, out: Path) -> dict:
    name = f"project_{precision}"
    outputs = out / name
    wall, cpu = timed_process([sys.executable, "-m", "src.train", *OVERRIDES, f"trainer.max_steps={s.steps}",
                               f"trainer.val_every={min(EVAL_EVERY, s.steps)}",
                               f"device.precision={precision}", f"paths.outputs={outputs}"], ROOT, out / f"{name}.log",
                              s.threads)
    metrics = next(outputs.rglob("metrics.json"))
    result = json.loads(metrics.read_text())
    scalars = tensorboard_scalars(metrics.parent / "tensorboard")
    # ThroughputMonitor: train/time is the training time so far (validation excluded), logged every log_every steps
    (_, seconds), (_, batches) = scalars["train/time"][-1], scalars["train/batches"][-1]
    windows = [TOKENS_PER_STEP / v for _, v in scalars["train/device/items_per_sec"]]  # seconds per step
    curve = scalars.get("val/loss", [])[:-1]  # the periodic validations (20 batches); the last: the final one
    return dict(run="this project", precision=resolve_precision(precision, s.device)[0], wall_s=wall, cpu_s=cpu,
                mean_step_s=seconds / batches, median_step_s=statistics.median(windows),
                val_estimate=curve[-1][1] if curve else None, val_loss=result["best_val_loss"], curve=curve,
                folder=str(metrics.parent))


def tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def run(s: TeacherSettings, log=print) -> list[dict]:
    check(s)
    out = Path(s.out or OUT / "teacher").resolve()
    out.mkdir(parents=True, exist_ok=True)
    if s.nanogpt:
        prepare_nanogpt_data(Path(s.nanogpt), out)
    if s.paired:
        log(f"both training steps in this process, in turn every {PAIRED_CHUNK} steps, {s.steps} steps each ...")
        return paired_run(s, out)
    jobs = ([("nanoGPT", lambda folder: nanogpt_run(s, folder))] if s.nanogpt else []) + [
        (f"project, device.precision={p}", lambda folder, p=p: project_run(s, p, folder)) for p in s.precisions]
    rounds: dict[str, list[dict]] = {name: [] for name, _ in jobs}
    for r in range(1, s.rounds + 1):  # in turn, so that a load coming and going weighs on every job alike
        folder = out if s.rounds == 1 else out / f"round_{r}"
        folder.mkdir(exist_ok=True)
        for i, (name, job) in enumerate(jobs, 1):
            where = f"[{i}/{len(jobs)}]" if s.rounds == 1 else f"[round {r}/{s.rounds}, {i}/{len(jobs)}]"
            log(f"{where} {name}: {s.steps} steps ...")
            row = job(folder)
            row["tokens_per_s"] = TOKENS_PER_STEP / row["mean_step_s"]
            rounds[name].append(row)
            log(f"{where} {row_text(row)}")
    first = next(iter(rounds.values()))
    rows = []
    for rs in rounds.values():  # the median round of each time; the losses and curves are the first round's (the
        row = dict(rs[0])       # runs are seeded: every round trains the same model)
        for key in ("mean_step_s", "median_step_s", "wall_s", "cpu_s"):
            row[key] = statistics.median(r[key] for r in rs)
        row["tokens_per_s"] = TOKENS_PER_STEP / row["mean_step_s"]
        row["round_ms"] = [round(r["mean_step_s"] * 1e3, 1) for r in rs]
        row["speedup"] = statistics.median(a["mean_step_s"] / b["mean_step_s"] for a, b in zip(first, rs))  # paired
        row["loss_ratio"] = row["val_loss"] / first[0]["val_loss"]
        rows.append(row)
    return rows


def row_text(r: dict) -> str:
    return (f"{r['run']} ({r['precision']}): {r['mean_step_s'] * 1e3:.1f} ms/step "
            f"(median {r['median_step_s'] * 1e3:.1f}), "
            f"{r['tokens_per_s']:,.0f} tokens/s, validation loss {r['val_loss']:.4f}; {r['wall_s']:.0f} s wall-clock, "
            f"{r['cpu_s']:.0f} s CPU")


def table(rows: list[dict]) -> str:
    def number(value, form: str, unit: str = "") -> str:
        return "–" if value is None else format(value, form) + unit

    cells = [[r["run"], r["precision"], f"{r['mean_step_s'] * 1e3:.1f}", f"{r['median_step_s'] * 1e3:.1f}",
              " / ".join(f"{ms:.1f}" for ms in r["round_ms"]) or "–", f"{r['tokens_per_s']:,.0f}",
              f"{r['speedup']:.2f}×", number(r["val_loss"], ".4f"), number(r["loss_ratio"], ".3f", "×"),
              number(r["val_estimate"], ".4f"), number(r["wall_s"], ".0f"), number(r["cpu_s"], ".0f")]
             for r in rows]
    return markdown_table(["run", "precision", "ms/step (mean)", "ms/step (median)", "mean ms/step, each round",
                           "tokens/s", "speed vs first", "val loss", "vs first", "val estimate, last step (20 batches)",
                           "wall s", "CPU s"], cells, "llrrrrrrrrrr")


def write(rows: list[dict], s: TeacherSettings, out: Path, elapsed: float) -> list[Path]:
    from src.report.figures import teacher_figure

    return write_bench(out, "teacher", "the dense teacher's training, nanoGPT's baby settings", rows, s, table(rows),
                       teacher_figure, __doc__, elapsed)


def build_parser() -> Parser:
    d = TeacherSettings()
    p = Parser(prog="python -m src.bench --teacher", description=__doc__.splitlines()[0])
    p.add_argument("--teacher", action="store_true", help="this benchmark")
    p.add_argument("--nanogpt", default=None, help="a checkout of karpathy/nanoGPT: run its baby config first")
    p.add_argument("--steps", type=positive_int, default=d.steps, help="optimisation steps of every run")
    p.add_argument("--precisions", type=name_list, default=d.precisions,
                   help=f"the project's runs, one per device.precision (default {','.join(d.precisions)})")
    p.add_argument("--threads", type=positive_int, default=d.threads, help="OMP_NUM_THREADS of every run")
    p.add_argument("--rounds", type=positive_int, default=d.rounds,
                   help="every run this many times in turn (a shared machine): each time the median round's")
    p.add_argument("--paired", action="store_true",
                   help=f"speed only: both training steps in this process, in turn every {PAIRED_CHUNK} steps")
    p.add_argument("--out", type=Path, default=None, help="output folder (default outputs/bench/teacher_TIMESTAMP)")
    return p


def settings_from_args(a: argparse.Namespace) -> TeacherSettings:
    out = a.out or OUT / datetime.now().strftime("teacher_%Y-%m-%d_%H-%M-%S")  # the runs' folders go in it too
    return TeacherSettings(nanogpt=a.nanogpt, steps=a.steps, precisions=tuple(a.precisions), threads=a.threads,
                           rounds=a.rounds, paired=a.paired, out=str(out.resolve()))


def main(argv: list[str] | None = None) -> int:
    return command_line(lambda: settings_from_args(build_parser().parse_args(argv)), check,
                        lambda s: s.describe(machine_info(torch.device("cpu"))["device_name"]), run, write, table)


if __name__ == "__main__":
    sys.exit(main())
