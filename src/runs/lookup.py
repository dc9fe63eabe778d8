"""Finding a stage's checkpoint and deciding whether it fits a run: the one place.

Every stage's output depends on some settings (``spec``): the model's shape and the data for a teacher; the sparse
layers and heads, the budget (only for what reads it) and the selector's architecture for a selector; the
approximator's too for a hybrid. A finished run records its spec in metrics.json, so a later run finds the newest one
that fits (``find``); a checkpoint carries the same settings in its hyper-parameters (``checkpoint_spec``), so any
checkpoint -- named by a setting, found, or resumed -- is checked against the run the same way (``mismatch``), and
``checkpoint_for`` does all of it for the stages: the path a setting names, else the newest fitting run, read and
checked, or one line naming the command that makes one.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from src.config import hf_teacher
from src.errors import UserError
from src.runs.checkpoints import HYBRID_KEYS, read_checkpoint
from src.runs.records import read_json

STAGES = ("teacher", "distill_selector", "distill_approximator")  # the stages whose checkpoints others start from
SHAPE = ("n_layer", "n_head", "d_model", "seq_len", "bias", "pos")  # model settings the weights depend on
SPARSE = ("sparse", "sparse_budget", "sparse_block", "sparse_layers")  # ... and, for a natively sparse model, the
#                                                                       attention it was trained with
SELECTOR = ("name", "hidden", "d_index", "loss", "block_size", "sinks")  # selector settings its weights depend on
APPROXIMATOR = ("name", "hidden")  # approximator settings its weights depend on
HYBRID = ("layers", "heads", "top_k", "budget")  # hybrid settings the trained parts depend on
BUDGET = ("top_k", "budget")  # ... of which these only matter to a hybrid that reads the budget
OLDER = {"pos": "learned"}  # settings an older checkpoint lacks, and the value it was made with


def reads_budget(selector: dict, stage: str) -> bool:
    """Whether a stage's output depends on the budget: an approximator always (it reads the kept keys); a selector
    only when distilled with the top-K loss (kl and ce read the teacher's attention, not K), so a selector distilled
    once serves every budget; fine-tuned weights always (trained through it)."""
    return stage in ("distill_approximator", "finetune") or selector.get("loss") == "topk"


def parts_spec(model: dict, hybrid: dict | None, selector: dict | None, approximator: dict | None,
               stage: str, hf: dict | None = None) -> dict:
    """The settings of ``stage``'s output among these plain dicts (a config's groups or a checkpoint's
    hyper-parameters): what ``spec`` and ``checkpoint_spec`` share. ``hf``: a Hugging Face teacher's settings (its
    folder or hub name is part of the model)."""
    model = model or {}
    out = {"model": {k: model.get(k, OLDER.get(k)) for k in SHAPE}}
    if hf:  # teacher=hf: which model (a native model's spec stays that of the runs before teacher=hf)
        out["model"]["hf"] = hf.get("model")
    if model.get("sparse", "none") != "none":  # a dense model's spec stays that of the runs before model.sparse
        out["model"].update({k: model.get(k) for k in SPARSE})
    if stage in ("distill_selector", "distill_approximator", "finetune"):
        selector = selector or {}
        keys = HYBRID if reads_budget(selector, stage) else tuple(k for k in HYBRID if k not in BUDGET)
        out["hybrid"] = {k: (hybrid or {}).get(k) for k in keys}
        out["selector"] = {k: selector.get(k) for k in SELECTOR}
    if stage in ("distill_approximator", "finetune"):
        out["approximator"] = {k: (approximator or {}).get(k) for k in APPROXIMATOR}
    return out


def data_spec(cfg: DictConfig) -> dict:
    """The data settings a teacher depends on: the corpus (its file or package), or the random tokens' size."""
    d = cfg.data
    out = {"name": d.name}
    corpus = d.filler if d.name == "recall" else d.name  # recall: episodes woven into the filler corpus
    if d.name == "recall":
        out.update(filler=d.filler, tasks=list(d.tasks), episodes=d.episodes, pairs=d.pairs, queries=d.queries)
    if corpus == "text_file":
        out["path"] = str(Path(d.path).expanduser().resolve()) if d.path else None
    if corpus == "python_source":
        out["package"] = d.package
    if d.name == "synthetic":
        out.update(vocab_size=d.vocab_size, num_tokens=d.num_tokens)
    if d.get("repeats"):  # the training mix, where it is not the corpus alone (unset: the spec of older runs)
        out["repeats"] = d.repeats
    if d.get("warmup"):
        out["warmup"] = [list(w) for w in d.warmup]
    if d.get("periodic"):
        out["periodic"] = d.periodic
    if d.get("lengths"):
        out["lengths"] = [list(w) for w in d.lengths]
    if d.get("repeat_text"):
        out["repeat_text"] = d.repeat_text
    if d.get("depth_power", 1.0) != 1.0:
        out["depth_power"] = d.depth_power
    if d.get("dictionary"):
        out["dictionary"] = d.dictionary
    if d.get("gap_power", 1.0) != 1.0:
        out["gap_power"] = d.gap_power
    return out


def plain(cfg: DictConfig, group: str) -> dict:
    return OmegaConf.to_container(cfg[group], resolve=True) if group in cfg else {}


def spec(cfg: DictConfig, stage: str) -> dict:
    """The settings ``stage``'s output depends on, from a run's config: a later run reuses an earlier one only when
    they are equal (``find``). ``evaluate`` reads a distill_approximator checkpoint: the same spec."""
    stage = "distill_approximator" if stage == "evaluate" else stage
    return {**parts_spec(plain(cfg, "model"), plain(cfg, "hybrid"), plain(cfg, "selector"),
                         plain(cfg, "approximator"), stage, hf_settings(cfg)), "data": data_spec(cfg)}


def hf_settings(cfg: DictConfig) -> dict | None:
    """teacher.hf's settings with its model located (an absolute folder, or the hub name); None for a native
    teacher."""
    hf = hf_teacher(cfg)
    if not hf:
        return None
    from src.hf.load import locate

    return {**hf, "model": locate(hf["model"])}


def hf_checkpoint(cfg: DictConfig) -> tuple[str, dict]:
    """A Hugging Face teacher where a teacher's checkpoint is read: its folder (or hub name) and the settings a
    checkpoint carries -- no weights, they load from there (src/hf/load.py)."""
    hf = hf_settings(cfg)
    return hf["model"], {"hyper_parameters": {"model": plain(cfg, "model"), "vocab": None, "teacher": hf},
                         "state_dict": {}}


def checkpoint_spec(checkpoint: dict, stage: str) -> dict:
    """The same settings, from a checkpoint's hyper-parameters (without the data: the vocabulary stands for it)."""
    hp = checkpoint["hyper_parameters"]
    return parts_spec(hp.get("model"), hp.get("hybrid"), hp.get("selector"), hp.get("approximator"), stage,
                      hp.get("teacher"))


def mismatch(checkpoint: dict, cfg: DictConfig, stage: str, vocab: list[str] | None = None) -> str:
    """How a ``stage`` checkpoint differs from what this run asks of one, e.g. "model.d_model=128 (this run: 64)";
    "" when it fits. ``vocab``: the run's data vocabulary, compared with the checkpoint's."""
    have, want = checkpoint_spec(checkpoint, stage), spec(cfg, stage)
    diffs = [f"{part}.{key}={have[part].get(key)} (this run: {want[part].get(key)})"
             for part in have for key in dict.fromkeys([*want[part], *have[part]])
             if have[part].get(key) != want[part].get(key)]
    theirs = checkpoint["hyper_parameters"].get("vocab")
    if vocab is not None and theirs is not None and list(theirs) != list(vocab):
        diffs.append(f"a vocabulary of {len(theirs)} symbols (this run's data={cfg.data.name}: {len(vocab)})")
    return ", ".join(diffs)


def find(cfg: DictConfig, stage: str, teacher: str | None = None, roots: tuple[Path, ...] = ()) -> str | None:
    """The checkpoint of the newest finished run of ``stage`` whose spec equals this run's, under ``roots`` (in that
    order; default ``paths.outputs``), and with ``teacher``, distilled from that teacher checkpoint. A teacher
    without a finite validation loss (it diverged, or never validated) is no teacher; a fast_dev_run is no run."""
    want = spec(cfg, stage)
    for root in roots or (Path(cfg.paths.outputs),):
        found = []
        for f in Path(root).glob("**/metrics.json"):
            m = read_json(f) or {}
            ckpt = m.get("checkpoint")
            if (m.get("stage") != stage or m.get("spec") != want or m.get("fast_dev_run") or not ckpt
                    or not Path(ckpt).is_file() or (teacher is not None and m.get("teacher_ckpt") != teacher)):
                continue
            if stage == "teacher" and not isinstance(m.get("best_val_loss"), (int, float)):
                continue
            found.append((Path(ckpt).stat().st_mtime, ckpt))
        if found:
            return max(found)[1]
    return None


SETTING = {"teacher": "teacher.ckpt", "distill_selector": "selector.ckpt", "distill_approximator": "approximator.ckpt",
           "finetune": "finetune.ckpt"}


def what(cfg: DictConfig, stage: str) -> str:
    """What a ``stage`` checkpoint is, in words: 'teacher', 'indexer selector', 'indexer + softmax hybrid'."""
    if stage == "teacher":
        return "teacher"
    if stage == "distill_selector":
        return f"{cfg.selector.name} selector"
    return ("fine-tuned " if stage == "finetune" else "") + f"{cfg.selector.name} + {cfg.approximator.name} hybrid"


def checkpoint_for(cfg: DictConfig, stage: str, make: str, vocab: list[str] | None = None) -> tuple[str, dict]:
    """The ``stage`` checkpoint this run starts from: the path its setting names (``teacher.ckpt``,
    ``selector.ckpt``, ``approximator.ckpt``), else the newest finished run that fits under ``paths.outputs``;
    read and checked against this run (and ``vocab``, the vocabulary of what it is to be used with). One line
    otherwise, naming the command that makes one (``make``)."""
    if stage == "teacher" and hf_teacher(cfg):  # a Hugging Face model: nothing to find, it loads from its folder
        return hf_checkpoint(cfg)
    setting, kind = SETTING[stage], what(cfg, stage)
    path = OmegaConf.select(cfg, setting) or find(cfg, stage)
    if not path:
        scope = "model and data" if stage == "teacher" else "model, data and hybrid.* settings"
        raise UserError(f"no trained {kind} for model={cfg.model.name} data={cfg.data.name} under "
                        f"{cfg.paths.outputs}/: make one with `{make}` (the same {scope}), or name one with "
                        f"{setting}=PATH")
    ckpt = read_checkpoint(path, kind, f"make one with `{make}`", stage=stage)
    diff = mismatch(ckpt, cfg, stage, vocab)
    if diff:
        raise UserError(f"{kind} {path} does not fit this run: it has {diff}; run with its settings, or make one "
                        f"that fits with `{make}`")
    return str(path), ckpt


__all__ = ["HYBRID_KEYS", "STAGES", "checkpoint_for", "checkpoint_spec", "data_spec", "find", "mismatch",
           "reads_budget", "spec"]
