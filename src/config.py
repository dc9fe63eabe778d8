"""Structured-config schemas: Hydra checks every YAML and command-line override against these.

A misspelt key or a value of the wrong type fails at start with Hydra's own message, before any work is done.
The YAML files under ``conf/`` hold the values; these dataclasses hold the types and the defaults.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, make_dataclass
from typing import Any, Optional, get_type_hints

import torch
from hydra.core.config_store import ConfigStore

from src.errors import UserError
from src.model import GPTConfig


@dataclass
class DataConf:
    name: str = "shakespeare"  # shakespeare | python_source | text_file | synthetic | recall
    path: Optional[str] = None  # text_file only: the UTF-8 file to train on
    package: str = "torch"  # python_source only: the installed package whose .py files are the corpus
    batch_size: int = 32  # sequences per optimisation step (per device)
    vocab_size: int = 64  # synthetic only: number of distinct random tokens (the prototype's 64)
    num_tokens: int = 50_000  # synthetic only: corpus length (the prototype's 50 000)
    val_fraction: float = 0.05  # contiguous tail of the corpus held out for validation ...
    test_fraction: float = 0.05  # ... and, after it, for test
    num_workers: int = 0  # DataLoader workers; 0 is fastest for in-memory character data
    # recall only (src/data/recall.py): episodes whose answer lies far back, woven into the filler corpus
    filler: str = "shakespeare"  # the corpus the episodes are woven into: shakespeare | python_source | text_file
    tasks: Any = field(default_factory=lambda: ["passkey", "multikey", "mqar"])  # which episodes
    episodes: float = 0.5  # share of the training windows that carry an episode (the loss counts everywhere)
    pairs: int = 4  # multikey: needles in the text; mqar: key-value pairs in the list
    queries: int = 2  # mqar: keys asked at the end
    depths: Any = field(default_factory=lambda: [0.1, 0.3, 0.5, 0.7, 0.9])  # the test episodes' needle depths
    test_episodes: int = 20  # test episodes per task and depth (a fixed, seeded set from the test split)
    # teaching a small model to look back (src/data/recall.py; any text corpus): without them a 4 x 128 teacher at
    # T = 2048 does not copy at all after 3200 steps -- the few answer characters of the episodes are too rare a signal
    repeats: float = 0.0  # share of the training windows with passages of random characters repeated later on
    warmup: Any = field(default_factory=list)  # induction warm-up: [[length, steps], ...] -- the first steps train on
    #   periodic random strings of these short lengths (the copying forms in ~1000 steps at 64 characters, not in
    #   3200 at 2048), then the corpus's windows; e.g. [[64, 1200], [256, 300], [1024, 200]]
    periodic: float = 0.0  # share of the training windows, after the warm-up, that are periodic random strings of the
    #   whole window (the warm-up's text, kept in the mix: without it the copying the warm-up formed fades within a
    #   few hundred steps of the corpus)
    lengths: Any = field(default_factory=list)  # length curriculum after the warm-up: [[length, steps], ...] -- the
    #   mix at these shorter windows first (as many as hold batch_size x seq_len characters), then at model.seq_len;
    #   e.g. [[512, 1500], [1024, 500]] (a recall learned at 512 carries over to 2048 faster than it forms there);
    #   [length, steps, episodes] gives a stage its own share of episodes (data.episodes is the last stage's): a
    #   window of 2048 holds a quarter of the episodes per step that four of 512 do
    repeat_text: float = 0.0  # share of the repeated passages that are the corpus's own text rather than random
    #   characters (the copy probe repeats text: random passages teach a copying a small model may keep to them)
    depth_power: float = 1.0  # training episodes' needle depth drawn as u ** depth_power (u uniform in [0, 1)): 1
    #   uniform; 2 puts 45 % of the needles in the first fifth of the text -- the far answers, which the length
    #   curriculum trains at full length only in its last stage
    gap_power: float = 1.0  # the repeated passages' places drawn u ** gap_power from the window's ends (u uniform in
    #   [0, 1)): 1 uniform (at 2048, 12 % of the gaps reach 1000 characters, 2 % 1500); 2: 38 % and 14 %
    dictionary: float = 0.0  # share of the training windows, after the warm-up, that are key-value dictionaries
    #   ("tovel:732981 " items drawn from a few keys defined in the window; data=recall): the key-matching drill the
    #   multi-key needle and associative recall need, every repeated item an answer


# model.*: the preset's name (run folders, summaries) + every field of src/model.py's GPTConfig, where each is typed,
# defaulted and explained once; the vocabulary size comes from the data, not from here
ModelConf = make_dataclass("ModelConf", [("name", str, field(default="baby"))] + [
    (f.name, get_type_hints(GPTConfig)[f.name], field(default=f.default)) for f in fields(GPTConfig)
    if f.name != "vocab_size"])


@dataclass
class DeviceConf:
    name: str = "cpu"
    accelerator: str = "cpu"  # cpu | cuda | mps | auto (Lightning's names)
    devices: Any = 1  # how many, or "auto"
    strategy: str = "auto"  # auto | ddp (Lightning's names)
    precision: str = "auto"  # auto: bf16-mixed where the hardware multiplies bf16 natively (a CUDA GPU with bf16, a
    #                          CPU with AVX-512 BF16 or AMX), else 32-true; or any of PRECISIONS (resolve_precision)
    num_nodes: int = 1


@dataclass
class OptimConf:
    lr: float = 2e-3  # peak learning rate after warm-up (nanoGPT baby uses 1e-3 at batch 12; we use batch 32)
    min_lr: float = 2e-4  # end of the cosine decay (lr / 10, as nanoGPT)
    warmup_steps: int = 100  # linear warm-up from 0
    weight_decay: float = 0.1  # on matrices only, not on norms and biases
    beta1: float = 0.9
    beta2: float = 0.99  # nanoGPT's choice for small batches of characters
    grad_clip: float = 1.0  # clip the gradient norm at this value (0 disables)


@dataclass
class TrainerConf:
    max_steps: int = 2000  # optimisation steps
    val_every: int = 250  # validate every this many steps
    limit_val_batches: Any = 20  # batches per periodic validation (int or fraction); the final one: below
    limit_final_batches: Any = 1.0  # the teacher's final validation and test: 1.0 = the whole splits, an int = that
    #                                 many batches (a quick look at a large corpus; as evaluate.limit_batches)
    log_every: int = 10  # steps between logged training scalars and progress-bar redraws
    fast_dev_run: bool = False  # one batch of each loop, no checkpoints: a smoke test
    deterministic: bool = False
    enable_progress_bar: bool = True
    sample_chars: int = 200  # characters of generated text logged at each validation (0 disables)


@dataclass
class HFConf:
    model: Optional[str] = None  # teacher=hf: a hub name (org/model) or a local folder that save_pretrained wrote
    dtype: str = "float32"  # float32 | bfloat16 | float16: the weights' dtype (the sparse heads compute in float32)
    device: Optional[str] = None  # where the weights are loaded (cpu | cuda | ...); None: the CPU, then the run's


@dataclass
class TeacherConf:
    name: str = "native"  # native: the project's GPT, trained by the teacher stage | hf: a Hugging Face causal LM,
    #                       frozen (teacher.hf.*; src/hf/)
    ckpt: Optional[str] = None  # native: teacher checkpoint; None: the newest compatible teacher under outputs/
    hf: HFConf = field(default_factory=HFConf)


def hf_teacher(cfg) -> dict | None:
    """teacher.hf's settings when the teacher is a Hugging Face model (teacher=hf), else None."""
    teacher = cfg.get("teacher") if hasattr(cfg, "get") else None
    if teacher is None or teacher.get("name", "native") != "hf":
        return None
    hf = teacher.get("hf") or {}
    return {key: hf.get(key) for key in ("model", "dtype", "device")}


@dataclass
class HybridConf:
    layers: Any = field(default_factory=lambda: [0])  # sparse layers: a list of indices or "all"
    heads: Any = field(default_factory=lambda: [0])  # sparse heads in each of those layers: a list or "all"
    top_k: int = 8  # keys each query keeps (the prototype's script uses 3, its analyses 8 and 16)
    budget: Any = None  # keys per query for every selector: an int (512, as NSA's 16 x 64 + window) or a fraction
    #                     of T (0.125); None: top_k keys. Block selectors round it up to whole blocks
    kernel: str = "auto"  # auto | gather | flex | tiles | query_flex | query_tiles | masked (src/sparse/attention.py);
    #                       auto, with softmax: a block-sparse kernel when the selector picks blocks (flex on CUDA,
    #                       tiles elsewhere) or every query picks blocks (query_flex / query_tiles), masked for a token
    #                       selector; gather for any other approximator
    mass: Optional[float] = None  # dynamic budget: keep the fewest keys / blocks whose predicted attention reaches
    #                               this share (e.g. 0.9), at most the budget; None: always the whole budget


@dataclass
class SelectorConf:
    name: str = "indexer"  # mlp | indexer | oracle | window | sink_window | block | query_block | query_bound |
    #                        block_oracle | query_block_oracle | block_window | block_sink_window | moba | query_moba |
    #                        quest  (Hydra group selector/; src/selectors/__init__.py)
    hidden: int = 64  # mlp: hidden width (the prototype's 64)
    d_index: int = 16  # indexer: width of the index queries and keys
    block_size: int = 128  # block*: keys (and queries) per block; 128 is the fastest tile on the 2-core CPU (README)
    sinks: int = 4  # sink_window: first keys always kept (StreamingLLM's 4); block_sink_window: the blocks holding them
    recent: int = 0  # block, query_block: earlier blocks just before the own one always kept (NSA's sliding
    #                  window); not a weight: any value runs a trained selector
    pieces: int = 1  # query_block: mean index keys per key block (block_size / pieces keys each; a block scores log
    #                  mean exp of its pieces'), so that one matching run of keys shows; 1: the block's mean
    loss: Optional[str] = None  # ce (teacher's top-1) | topk (multi-label top-K) | kl (to attention) | kl_full (block
    #                             selectors: the KL weighted by each query's mass on earlier blocks); None: the
    #                             selector's own
    max_steps: int = 300  # distillation steps
    lr: float = 3e-3  # the prototype's 3e-3
    ckpt: Optional[str] = None  # a distill_selector checkpoint for the next stage; None: the newest compatible one


@dataclass
class ApproximatorConf:
    name: str = "softmax"  # mlp | softmax  (Hydra group approximator/)
    hidden: int = 64  # mlp: hidden width (the prototype's 64)
    max_steps: int = 300  # distillation steps (none for softmax: nothing to learn)
    lr: float = 3e-3
    ckpt: Optional[str] = None  # a distill_approximator checkpoint (the whole hybrid); None: the newest compatible one


def selector_settings(selector: dict) -> dict:
    """A selector's settings over SelectorConf's defaults (the one place they are written)."""
    return {**asdict(SelectorConf()), **selector}


def approximator_settings(approximator: dict) -> dict:
    """An approximator's settings over ApproximatorConf's defaults."""
    return {**asdict(ApproximatorConf()), **approximator}


@dataclass
class EvaluateConf:
    limit_batches: Any = 1.0  # test (and validation) batches evaluated: 1.0 = the whole splits, an int = that many
    validation: bool = True  # also evaluate on the validation split (results.md's second column)
    time_forward: bool = True  # time the whole model's forward on one test batch: the teacher (SDPA) against the
    #                            hybrid on each kernel (tokens per second in results.md / results.json)
    kernels: Any = "all"  # the hybrid's kernels to time: all that can serve it on this device, or a list
    repeats: int = 3  # timed forwards per model (median), after one untimed warm-up (which compiles flex)
    recall: bool = True  # data=recall: the share of the test episodes' answers recalled exactly, teacher and hybrid
    greedy: bool = True  # data=recall: the passkey also generated greedily through the KV cache (the decoding path)
    copy_windows: int = 8  # the copy probe: windows per gap, teacher and hybrid (0: no probe)


@dataclass
class FinetuneConf:
    lr: float = 3e-4  # the model's weights: a tenth of the teacher's 3e-3 peak (fine-tuning, not training anew)
    max_steps: int = 300  # optimisation steps through the sparse kernel
    ckpt: Optional[str] = None  # a finetune checkpoint for +experiment=evaluate: the fine-tuned hybrid against the
    #                             teacher it started from (unset: evaluate reads the distilled hybrid)
    kl_weight: float = 1.0  # the selector's KL to the dense attention's block mass beside the language-model loss
    #                         (DeepSeek V3.2's second stage; the selector's own lr is selector.lr); 0: frozen selector


@dataclass
class PipelineConf:
    measure_speed: bool = False  # after evaluation, time one attention layer: SDPA against this hybrid's sparse variant
    bench_repeats: int = 5  # timed forward passes per variant (median reported), after one warm-up
    reuse: bool = False  # reuse the newest finished teacher (same model and data) and selector (same settings, same
    #                      teacher) under outputs/ instead of training them again: a sweep trains each once


@dataclass
class PathsConf:
    outputs: str = "outputs"  # the root of every run folder, and where later stages look for earlier runs


@dataclass
class RunConf:
    stage: str = "teacher"  # which stage `python -m src.train` runs; set by +experiment=...
    seed: int = 1337
    resume: Optional[str] = None  # a run folder or a last.ckpt: continue that run


GROUPS = {"paths": PathsConf, "data": DataConf, "model": ModelConf, "device": DeviceConf, "optim": OptimConf,
          "trainer": TrainerConf, "teacher": TeacherConf, "hybrid": HybridConf, "selector": SelectorConf,
          "approximator": ApproximatorConf, "evaluate": EvaluateConf, "pipeline": PipelineConf,
          "finetune": FinetuneConf}  # key -> its schema
# the whole config: the run's own keys, then one key per group (each defaulted to its schema's defaults)
Config = make_dataclass("Config", [(key, conf, field(default_factory=conf)) for key, conf in GROUPS.items()],
                        bases=(RunConf,))


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)


@dataclass
class SampleConf:
    ckpt: Optional[str] = None  # a pipeline, approximator or teacher run folder, or a .ckpt file
    model: str = "auto"  # auto: the hybrid when ckpt holds one, else the teacher; hybrid; teacher
    prompt: Optional[str] = None  # text to continue (characters of the model's vocabulary, at most its T); unset: a
    #                                newline
    prompt_file: Optional[str] = None  # or a file whose text is the prompt (a long context: up to the model's T)
    num_chars: int = 500  # characters to generate
    temperature: float = 0.8  # < 1 sharper, > 1 more random
    top_k: Optional[int] = None  # sample only among the k likeliest characters
    num_samples: int = 1
    seed: int = 1337
    device: str = "cpu"


def register_sample_config() -> None:
    ConfigStore.instance().store(name="sample_schema", node=SampleConf)


DEVICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(name: str, setting: str = "device") -> torch.device:
    """The torch device ``setting`` names ("gpu" is "cuda"; "auto": CUDA when torch sees a GPU, else the CPU), or one
    line naming the setting and the fix when it is unknown or not on this machine."""
    name = {"gpu": "cuda"}.get(str(name), str(name))
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.split(":")[0] not in DEVICES:
        raise UserError(f"{setting}={name} is unknown: use one of {', '.join(DEVICES)}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"{setting}={name} but torch sees no CUDA GPU here: use {setting}=cpu (or {setting}=auto)")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"{setting}={name} but MPS is not available here: use {setting}=cpu (or {setting}=auto)")
    return torch.device(name)


PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true")  # Lightning's names


def cpu_multiplies_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic of its own (AVX-512 BF16 or AMX tiles); without it bf16 is emulated by
    conversions to fp32, slower than fp32 itself. False where torch cannot tell."""
    return any(getattr(torch.cpu, name, lambda: False)() for name in ("_is_avx512_bf16_supported",
                                                                      "_is_amx_tile_supported"))


def resolve_precision(precision: str, accelerator: str = "auto") -> tuple[str, str]:
    """device.precision -> (Lightning's precision, why): ``auto`` is bf16-mixed where the device multiplies bf16
    natively -- a CUDA GPU that supports it, a CPU with AVX-512 BF16 or AMX -- and 32-true elsewhere (MPS included);
    any other name is kept. An unknown one: one line naming the setting and the names it takes."""
    precision = str(precision)
    if precision not in PRECISIONS:
        raise UserError(f"device.precision={precision} is unknown: use one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision, f"device.precision={precision}"
    kind = resolve_device(accelerator, "device").type
    if kind == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16-mixed", "device.precision=auto: the GPU supports bf16"
    if kind == "cpu" and cpu_multiplies_bf16():
        return "bf16-mixed", "device.precision=auto: this CPU multiplies bf16 (AVX-512 BF16 or AMX)"
    if kind == "cpu":
        return "32-true", "device.precision=auto: this CPU has no AVX-512 BF16 or AMX; bf16 would be emulated, slower"
    return "32-true", f"device.precision=auto: no bf16 on {kind}"


def check_config(cfg) -> None:
    """The values a type cannot rule out, checked before any work: one line naming the setting and the fix
    (src.errors.UserError). A non-positive step count would train forever (-1, Lightning's "no limit") or save random
    weights as a finished run (0)."""

    def positive(key: str, value, what: str) -> None:
        if value is None or isinstance(value, bool) or not value > 0 or not math.isfinite(value):
            raise UserError(f"{key}={value} must be {what}")

    t, o = cfg.trainer, cfg.optim
    if not t.fast_dev_run:
        positive("trainer.max_steps", t.max_steps, "1 or more optimisation steps")
    positive("trainer.val_every", t.val_every, "1 or more: validate every this many steps")
    positive("trainer.log_every", t.log_every, "1 or more: log every this many steps")
    for key in ("limit_val_batches", "limit_final_batches"):
        positive(f"trainer.{key}", t[key], "a number of batches (1 or more) or a fraction in (0, 1]")
    positive("data.batch_size", cfg.data.batch_size, "1 or more sequences per step")
    positive("optim.lr", o.lr, "a positive learning rate, e.g. 2e-3")
    if not 0 <= o.min_lr <= o.lr:
        raise UserError(f"optim.min_lr={o.min_lr} must be in [0, optim.lr={o.lr}]: the end of the cosine decay")
    for key in ("warmup_steps", "weight_decay", "grad_clip"):
        if o[key] < 0:
            raise UserError(f"optim.{key}={o[key]} must be 0 or more")
    for key in ("beta1", "beta2"):
        if not 0 <= o[key] < 1:
            raise UserError(f"optim.{key}={o[key]} must be in [0, 1) (AdamW's moment decay)")
    for part in ("selector", "approximator"):
        if part in cfg:
            positive(f"{part}.max_steps", cfg[part].max_steps, "1 or more distillation steps")
            positive(f"{part}.lr", cfg[part].lr, "a positive learning rate, e.g. 3e-3")
    if "finetune" in cfg:
        positive("finetune.max_steps", cfg.finetune.max_steps, "1 or more fine-tuning steps")
        positive("finetune.lr", cfg.finetune.lr, "a positive learning rate, e.g. 3e-4")
        if cfg.finetune.kl_weight < 0:
            raise UserError(f"finetune.kl_weight={cfg.finetune.kl_weight} must be 0 or more")
    if str(cfg.device.accelerator) != "auto":
        resolve_device(cfg.device.accelerator, "device")
    resolve_precision(cfg.device.precision, cfg.device.accelerator)
