"""Measured speed of training, dense against natively sparse: ``python -m src.bench --train``.

What is timed: one whole training step of the model -- forward, the cross-entropy loss, backward and AdamW's update
-- on one batch of random tokens (the time of a step does not depend on them), for the dense model (SDPA in every
layer) and for the same model with every layer natively sparse (``model.sparse``, src/model.py and src/hybrid.py
``build_gpt``: MoBA's parameter-free gate under a budget of ``--budget`` keys in blocks of ``--block-size``, on the
block-sparse kernel the model trains with). torch.utils.benchmark (src/bench/timing.py ``time_runs``: ``--repeats``
calls after one warm-up, the median). Each row gives tokens per second, the speed-up over the dense step and its
FLOP limit -- the dense step's training FLOPs over the sparse one's (src/costs/accounting.py ``training_flops``: the
attention's backward twice its forward, the gate once; the projections, MLP and lm_head the same in both) -- and
the peak memory of one step (src/bench/timing.py ``peak_bytes``). The layer-level view of the same question is
``python -m src.bench --backward``. Writes train.csv, train.json (machine and settings), train.md and train.png to
``--out``; bad arguments end with one line ``error: ...`` and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from src.bench.harness import DTYPES, command_line, name_list, write_bench
from src.bench.timing import machine_info, median_seconds, peak_bytes
from src.config import DEVICES, resolve_device
from src.costs.accounting import training_flops
from src.errors import Parser, UserError, int_list
from src.hybrid import build_gpt
from src.model import GATES, GPTConfig
from src.report.tables import markdown_table, megabytes

QUICK = dict(lens=(1024, 4096), repeats=2)  # --quick: about a minute on 2 CPU cores


@dataclass
class TrainSettings:
    lens: tuple[int, ...] = (2048, 4096, 8192, 16384)  # sequence lengths T
    gates: tuple[str, ...] = ("moba", "query_moba")  # the natively sparse variants (model.sparse); dense always
    d_model: int = 128  # the long presets' model: 4 layers of 4 heads of 32 (conf/model/long.yaml)
    n_head: int = 4
    n_layer: int = 4
    vocab: int = 65  # a character vocabulary (tiny-shakespeare's)
    batch: int = 1  # sequences per step
    budget: int = 512  # keys per query of the sparse layers (model.sparse_budget's default)
    block_size: int = 64  # model.sparse_block's default
    repeats: int = 3  # timed steps per cell after one warm-up, the median reported
    device: str = "auto"
    dtype: str = "fp32"
    seed: int = 0
    memory: bool = True  # each cell's peak memory (one extra, untimed step)
    out: str | None = None  # None: outputs/bench/train_TIMESTAMP
    quick: bool = False

    def describe(self, device: str) -> str:
        return (f"measured, {device}, {self.dtype}, batch {self.batch}, {self.n_layer} layers x {self.d_model}d / "
                f"{self.n_head} heads, budget {self.budget} keys in blocks of {self.block_size}, "
                f"{torch.get_num_threads()} threads, median of {self.repeats} steps after one warm-up")


def check(s: TrainSettings) -> None:
    if not s.lens:
        raise UserError("--lens is empty: give at least one sequence length")
    for gate in s.gates:
        if gate not in GATES or gate == "none":
            raise UserError(f"gate {gate!r} is unknown: use some of {', '.join(g for g in GATES if g != 'none')}")
    for name in ("d_model", "n_head", "n_layer", "vocab", "batch", "budget", "block_size", "repeats"):
        if getattr(s, name) <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {getattr(s, name)}")
    if s.d_model % s.n_head:
        raise UserError(f"--d-model {s.d_model} must be divisible by --n-head {s.n_head}")
    if s.dtype not in DTYPES:
        raise UserError(f"--dtype {s.dtype!r} is unknown: use one of {', '.join(DTYPES)}")
    short = [T for T in s.lens if T < s.budget]
    if short:
        raise UserError(f"sequence length {short[0]} is shorter than the budget of {s.budget} keys: nothing to skip "
                        "(give longer --lens or a smaller --budget)")
    resolve_device(s.device, "--device")


def config(T: int, gate: str, s: TrainSettings) -> GPTConfig:
    return GPTConfig(vocab_size=s.vocab, seq_len=T, n_layer=s.n_layer, n_head=s.n_head, d_model=s.d_model,
                     pos="rope", sparse=gate, sparse_budget=s.budget, sparse_block=s.block_size)


def training_step(cfg: GPTConfig, s: TrainSettings, device, dtype):
    """The model of ``cfg`` (random weights), AdamW, one batch of random tokens -> step(): one training step."""
    torch.manual_seed(s.seed)
    model = build_gpt(cfg).to(device, dtype).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tokens = torch.randint(0, cfg.vocab_size, (s.batch, cfg.seq_len + 1), device=device)
    x, y = tokens[:, :-1], tokens[:, 1:]

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x).flatten(0, 1), y.flatten()).backward()
        opt.step()

    return step


def flops(cfg: GPTConfig) -> int:
    return training_flops(cfg.d_model, cfg.n_head, cfg.n_layer, cfg.seq_len, cfg.vocab_size, cfg.sparse,
                          len(cfg.sparse_layer_list()), cfg.sparse_budget, cfg.sparse_block)


def cell(T: int, gate: str, s: TrainSettings, device, dtype, base: dict | None) -> dict:
    cfg = config(T, gate, s)
    step = training_step(cfg, s, device, dtype)
    seconds = median_seconds(step, (), device, repeats=s.repeats, warmup=1)
    peak = peak_bytes(step, (), device) if s.memory else None
    limit = 1.0 if base is None else base["flops"] / flops(cfg)  # the dense row is its own baseline
    speedup = 1.0 if base is None else base["median_ms"] / (seconds * 1e3)
    return dict(T=T, variant="dense" if gate == "none" else gate, median_ms=round(seconds * 1e3, 3),
                tokens_per_s=round(s.batch * T / seconds, 1), speedup=round(speedup, 3),
                flop_limit=round(limit, 3), of_limit=round(speedup / limit, 3), flops=flops(cfg),
                peak_mb=None if peak is None else round(peak / 1e6, 3), d_model=s.d_model, n_head=s.n_head,
                n_layer=s.n_layer, batch=s.batch, budget=s.budget, block_size=s.block_size)


def run(s: TrainSettings, log=print) -> list[dict]:
    check(s)
    device, dtype = resolve_device(s.device, "--device"), DTYPES[s.dtype]
    cells = [(T, g) for T in sorted(s.lens) for g in ("none", *s.gates)]
    rows: list[dict] = []
    for i, (T, gate) in enumerate(cells, 1):
        base = next((r for r in rows if r["T"] == T and r["variant"] == "dense"), None)
        try:
            row = cell(T, gate, s, device, dtype, base)
        except (RuntimeError, MemoryError) as e:  # out of memory at a long T: say so, keep the other cells
            first = (str(e).splitlines() or [""])[0][:160]
            log(f"[{i}/{len(cells)}] T={T} {gate}: skipped ({type(e).__name__}: {first})")
            continue
        rows.append(row)
        log(f"[{i}/{len(cells)}] {cell_text(row)}")
    return rows


def cell_text(r: dict) -> str:
    text = f"T={r['T']:<6} {r['variant']:<11} {r['median_ms']:10.1f} ms {r['tokens_per_s']:9.1f} tokens/s"
    if r["variant"] != "dense":
        text += f"  {r['speedup']:.2f}× dense (FLOP limit {r['flop_limit']:.2f}×)"
    if r["peak_mb"] is not None:
        text += f", peak {megabytes(r['peak_mb'] * 1e6)} MB"
    return text


def table(rows: list[dict]) -> str:
    cells = []
    for r in rows:
        up = "1.00× (baseline)" if r["variant"] == "dense" else f"{r['speedup']:.2f}×"
        cells.append([r["T"], r["variant"], f"{r['median_ms']:.1f}", f"{r['tokens_per_s']:.0f}", up,
                      "–" if r["variant"] == "dense" else f"{r['flop_limit']:.2f}×",
                      "–" if r["variant"] == "dense" else f"{r['of_limit']:.0%}",
                      megabytes(None if r["peak_mb"] is None else r["peak_mb"] * 1e6)])
    return markdown_table(["T", "model", "step ms", "tokens/s", "speed-up vs dense", "FLOP limit", "of limit",
                           "peak MB"], cells, "rlrrrrrr")


def write(rows: list[dict], s, out: Path, elapsed: float) -> list[Path]:
    from src.report.figures import training_figure

    return write_bench(out, "train", "one training step, dense vs natively sparse", rows, s, table(rows),
                       training_figure, __doc__, elapsed)


def build_parser() -> Parser:
    d = TrainSettings()
    p = Parser(prog="python -m src.bench --train", description=__doc__.splitlines()[0])
    p.add_argument("--train", action="store_true", help="this benchmark (without it: one layer's forward)")
    p.add_argument("--lens", type=int_list, default=None,
                   help=f"sequence lengths T (default {','.join(map(str, d.lens))}; --quick: "
                        f"{','.join(map(str, QUICK['lens']))})")
    p.add_argument("--gates", type=name_list, default=d.gates,
                   help=f"natively sparse models to time beside the dense one (model.sparse; default "
                        f"{','.join(d.gates)})")
    for name, text in (("d_model", "model width"), ("n_head", "attention heads"), ("n_layer", "layers"),
                       ("vocab", "vocabulary"), ("batch", "sequences per step"),
                       ("budget", "keys per query of the sparse layers (rounded up to whole blocks)"),
                       ("block_size", "keys per block of the sparse layers")):
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(d, name),
                       help=f"{text} (default {getattr(d, name)})")
    p.add_argument("--repeats", type=int, default=None,
                   help=f"timed steps per cell, median reported (default {d.repeats}; --quick: {QUICK['repeats']})")
    p.add_argument("--device", default=d.device, help=f"one of {', '.join(DEVICES)}")
    p.add_argument("--dtype", default=d.dtype, help=f"one of {', '.join(DTYPES)}")
    p.add_argument("--seed", type=int, default=d.seed, help="random weights and tokens")
    p.add_argument("--no-memory", action="store_true", help="skip each cell's peak-memory step")
    p.add_argument("--out", type=Path, default=None, help="output folder (default outputs/bench/train_TIMESTAMP)")
    p.add_argument("--quick", action="store_true", help="T 1024 and 4096, 2 steps per cell")
    return p


def settings_from_args(a: argparse.Namespace) -> TrainSettings:
    quick = QUICK if a.quick else {}
    return TrainSettings(
        lens=tuple(a.lens or quick.get("lens", TrainSettings.lens)), gates=tuple(a.gates), d_model=a.d_model,
        n_head=a.n_head, n_layer=a.n_layer, vocab=a.vocab, batch=a.batch, budget=a.budget, block_size=a.block_size,
        repeats=a.repeats if a.repeats is not None else quick.get("repeats", TrainSettings.repeats),
        device=a.device, dtype=a.dtype, seed=a.seed, memory=not a.no_memory, out=str(a.out) if a.out else None,
        quick=a.quick)


def main(argv: list[str] | None = None) -> int:
    return command_line(lambda: settings_from_args(build_parser().parse_args(argv)), check,
                        lambda s: s.describe(machine_info(resolve_device(s.device, "--device"))["device_name"]), run,
                        write, table, "train_")


if __name__ == "__main__":
    sys.exit(main())
