"""What the evaluation measures beyond the loss, for any model -- a GPT and the attention modules it runs with (none:
the teacher; a hybrid's sparse layers):

* **recall** -- the fixed test episodes of ``data=recall`` (src/data/recall.py): the share of answers recalled
  exactly, teacher-forced (the argmax at every character of the answer is right), per task and per depth of the
  needle; and for the passkey, generated (``passkey_greedy``): the text up to the answer as a prompt, the answer's
  characters generated greedily through the KV cache (the decoding path: a hybrid's sparse decoder), all right;
* **copy** -- the copy probe on any corpus: a passage and, ``gap`` characters after it, the same passage again; the
  mean loss on its second appearance over its first (Olsson et al.'s in-context-learning score: near 1 for a model
  that does not look back, towards 0 for one that copies), per gap.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from src.data import Vocab
from src.data.recall import Episode, copy_windows
from src.runs.records import read_json, write_json
from src.sparse.decode import decode_problem

log = logging.getLogger(__name__)

COPY_PASSAGE = 100  # characters of the copy probe's passage (at most a quarter of the context)
COPY_GAPS = (50, 200, 500, 1000, 1500)  # characters between its two appearances (those that fit the context)


@torch.no_grad()
def token_losses(forward: Callable, texts: list[str], vocab: Vocab, batch_size: int,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position loss and argmax-hit of each text (all of one length L): (N, L - 1) each, position p predicting
    text[p + 1]."""
    losses, hits = [], []
    for start in range(0, len(texts), batch_size):
        tokens = torch.stack([vocab.encode(t) if isinstance(t, str) else torch.as_tensor(t)
                              for t in texts[start:start + batch_size]]).to(device)
        x, y = tokens[:, :-1], tokens[:, 1:]
        logits = forward(x)
        losses.append(F.cross_entropy(logits.transpose(1, 2), y, reduction="none").cpu())
        hits.append((logits.argmax(-1) == y).cpu())
    return torch.cat(losses), torch.cat(hits)


def recall_accuracy(forward: Callable, episodes: list[Episode], vocab: Vocab, batch_size: int,
                    device: torch.device) -> dict[str, float]:
    """The share of answers recalled exactly: {task: share, "task/d0.3": share at that depth, "all": share}.
    Episodes in a model's tokens (teacher=hf) differ in length: one forward each."""
    if all(isinstance(e.text, str) for e in episodes):
        _, hits = token_losses(forward, [e.text for e in episodes], vocab, batch_size, device)
    else:
        hits = [token_losses(forward, [e.text], vocab, 1, device)[1][0] for e in episodes]
    right, count = defaultdict(int), defaultdict(int)
    for e, row in zip(episodes, hits):
        for a, b in e.answers:  # the characters a..b-1, predicted at positions a-1..b-2
            ok = bool(row[a - 1:b - 1].all())
            for key in (e.task, f"{e.task}/d{e.depth:g}", "all"):
                right[key] += ok
                count[key] += 1
    return {key: right[key] / count[key] for key in count}


@torch.no_grad()
def greedy_recall(gpt, attention, episodes: list[Episode], vocab: Vocab, device: torch.device,
                  task: str = "passkey") -> dict[str, float]:
    """The share of ``task``'s answers generated exactly, greedily (top-1) through the KV cache from the text before
    the answer: {"passkey_greedy": share, "passkey_greedy/d0.3": share at that depth}."""
    right, count = defaultdict(int), defaultdict(int)
    for e in (e for e in episodes if e.task == task):
        a, b = e.answers[-1]
        text = isinstance(e.text, str)  # else token ids (teacher=hf)
        prompt = vocab.encode(e.text[:a]) if text else torch.as_tensor(e.text[:a])
        out = gpt.generate(prompt[None].to(device), b - a, top_k=1, attention=attention)[0, a:].cpu()
        ok = vocab.decode(out) == e.text[a:b] if text else out.tolist() == list(e.text[a:b])
        for key in (f"{task}_greedy", f"{task}_greedy/d{e.depth:g}"):
            right[key] += ok
            count[key] += 1
    return {key: right[key] / count[key] for key in count}


def copy_gaps(T: int, gaps=COPY_GAPS) -> tuple[int, tuple[int, ...]]:
    """The copy probe's passage length and the gaps that fit a context of T + 1 characters (the longest that does
    when none of ``gaps`` does)."""
    passage = min(COPY_PASSAGE, (T + 1) // 4)
    fitting = tuple(g for g in gaps if 2 * passage + g <= T + 1)
    return passage, fitting or (T + 1 - 2 * passage,)


def copy_probe(forward: Callable, text: str, vocab: Vocab, T: int, n: int, batch_size: int, device: torch.device,
               seed: int = 0, gaps=COPY_GAPS) -> dict[str, float]:
    """The loss on a passage's second appearance over its first, per gap: {"g200": ratio, ...}, from ``n`` windows
    of T + 1 characters of ``text`` per gap. The passage's first character is not counted (nothing predicts it)."""
    passage, fitting = copy_gaps(T, gaps)
    windows = copy_windows(text, T + 1, passage, fitting, n, seed)
    losses, _ = token_losses(forward, [w for w, _, _, _ in windows], vocab, batch_size, device)
    first, second = defaultdict(float), defaultdict(float)
    for (_, gap, a, b), row in zip(windows, losses):  # characters a+1..a+passage-1 are predicted at a..a+passage-2
        first[gap] += float(row[a:a + passage - 1].mean())
        second[gap] += float(row[b:b + passage - 1].mean())
    return {f"g{gap}": second[gap] / first[gap] for gap in fitting}


def probe_results(cfg, models: dict[str, tuple], dm, device: torch.device,
                  cache: dict[str, str] | None = None) -> dict[str, float]:
    """The recall episodes of the data (``evaluate.recall``; data=recall has them; ``evaluate.greedy``: the passkey
    generated too, where every model can generate) and the copy probe (``evaluate.copy_windows`` windows per gap)
    of each of ``models`` -- name -> (GPT, its attention modules or None) on ``device``, all on the same texts:
    ``test/teacher_recall/passkey``, ``test/hybrid_recall/passkey/d0.3``, ``test/hybrid_recall/passkey_greedy``,
    ``test/teacher_copy/g200``... ``cache``: name -> the checkpoint a model's weights come from, whose results are
    kept beside it (probe_cache) and read again by every later run with the same probes (a budget curve's jobs share
    one teacher)."""
    out = {}
    episodes = dm.recall_episodes("test") if cfg.evaluate.recall else []
    text = "" if not cfg.evaluate.copy_windows else (  # a model's tokenizer (teacher=hf): the probe in its tokens
        dm.splits["test"].tolist() if getattr(dm, "tokens", False) else dm.vocab.decode(dm.splits["test"]))
    problems = [decode_problem(m.sparse.selector) for _, attention in models.values()
                for m in (attention or {}).values() if hasattr(m, "sparse")]  # an oracle cannot generate
    greedy = cfg.evaluate.get("greedy", True) and not any(problems)  # every model's or none (the table stays whole)
    if episodes and cfg.evaluate.get("greedy", True) and not greedy:
        log.info("passkey_greedy not measured: %s", next(p for p in problems if p))
    for name, (gpt, attention) in models.items():
        path = probe_cache(cfg, dm, (cache or {}).get(name), gpt, greedy, device)
        if path and isinstance(found := (read_json(path) or {}).get("results"), dict):
            log.info("%s probes read from %s", name, path)
            out.update({f"test/{name}_{key}": value for key, value in found.items()})
            continue
        found = {}
        if episodes:
            acc = recall_accuracy(lambda x: gpt(x, attention=attention), episodes, dm.vocab, cfg.data.batch_size,
                                  device)
            if greedy:
                acc.update(greedy_recall(gpt, attention, episodes, dm.vocab, device))
            found.update({f"recall/{key}": value for key, value in acc.items()})
        if text:
            ratio = copy_probe(lambda x: gpt(x, attention=attention), text, dm.vocab, cfg.model.seq_len,
                               cfg.evaluate.copy_windows, cfg.data.batch_size, device, cfg.seed)
            found.update({f"copy/{key}": value for key, value in ratio.items()})
        if path:
            write_json(path, {"checkpoint": cache[name], "results": found})
        out.update({f"test/{name}_{key}": value for key, value in found.items()})
    for key, value in out.items():
        log.info("%s %.4f", key, value)
    return out


def probe_cache(cfg, dm, checkpoint: str | None, gpt, greedy: bool, device) -> Path | None:
    """Where the probes of ``gpt``, whose weights come from ``checkpoint``, are kept: RUN/probes/<hash>.json in the
    checkpoint's run folder, the hash of everything the results depend on (the weights themselves, the probes' and
    episodes' settings, the device); None without a checkpoint file."""
    if not checkpoint or not Path(checkpoint).is_file():
        return None
    weights = hashlib.sha1()
    for key, tensor in sorted(gpt.state_dict().items()):
        weights.update(key.encode())
        weights.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    settings = {"weights": weights.hexdigest(), "seq_len": cfg.model.seq_len, "seed": cfg.seed, "greedy": greedy,
                "recall": bool(cfg.evaluate.recall), "copy_windows": cfg.evaluate.copy_windows, "device": str(device),
                "episodes": [getattr(dm, k, None) for k in ("name", "path", "filler", "tasks", "depths",
                                                            "test_episodes", "pairs", "queries", "seed",
                                                            "val_fraction", "test_fraction")],
                "version": 1}  # raise when a probe's definition changes
    digest = hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return Path(checkpoint).resolve().parent.parent / "probes" / f"{digest}.json"
