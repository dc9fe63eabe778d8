"""What ``+experiment=evaluate`` writes for a reader: results.md -- the prototype's "Expected Output" lines with the
run's numbers, the whole model's quality against its teacher (test and validation), the per-head selection and
approximation metrics, the whole-model speed, the configuration. The demo prints the same "Expected Output" lines."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from src.report.tables import markdown_table, percent
from src.stages.hybrid_module import HybridModule

# the prototype's published figures (random tokens, layer 0 head 0, top-3, mlp selector + mlp approximator)
PROTOTYPE = {"top1_acc": 0.092, "logits_rel_err": 0.5746}


def expected_output(r: dict, layer: int, head: int, pair: str, split: str = "test") -> list[str]:
    """The prototype's "Expected Output" block with this run's numbers (its first sparse head ``pair``, e.g. L0H0)."""
    top1, err = r[f"{split}/top1_acc/{pair}"], r[f"{split}/logits_rel_err"]
    return [
        f"[result] relative error (final logits, hybrid vs teacher): {err:.4f}",
        f"[result] key selector top-1 accuracy (head {head}, layer {layer}): {top1:.3f}",
        "",
        "Final Results:",
        f"- KeySelector top-1 accuracy: {percent(top1)}   (prototype: {percent(PROTOTYPE['top1_acc'])}, random tokens)",
        f"- Hybrid vs Teacher relative error: {percent(err)}   (prototype: {percent(PROTOTYPE['logits_rel_err'])})",
    ]


def speed_markdown(speed: dict) -> list[str]:
    if not speed:
        return []
    lines = [
        "## Whole-model forward speed",
        "",
        f"One test batch ({speed['batch']} × {speed['seq_len']} tokens) on {speed['device']}, median of "
        f"{speed['repeats']} forwards after a warm-up, teacher and hybrid timed in turns in one process"
        f"{', precision ' + speed['precision'] if 'precision' in speed else ''}.",
        "",
        markdown_table(["model", "kernel", "ms per forward", "tokens / s", "speed-up over the teacher"],
                       [["teacher", "SDPA", f"{speed['teacher_ms']:.1f}", f"{speed['teacher_tokens_per_s']:,.0f}",
                         "1.00×"]] +
                       [["hybrid", k, f"{speed[f'{k}_ms']:.1f}", f"{speed[f'{k}_tokens_per_s']:,.0f}",
                         f"{speed[f'{k}_speedup']:.2f}×"] for k in speed["kernels"]], "llrrr"),
    ]
    if "flop_limit" in speed:
        lines += ["", f"The hybrid's FLOP limit: {speed['flop_limit']:.2f}× (the teacher's FLOPs over the hybrid's, "
                      "full accounting -- selection included -- src/costs/accounting.py)."]
    return lines + [""]


def probe_markdown(r: dict) -> list[str]:
    """The recall episodes (per task and needle depth) and the copy probe (per gap), teacher beside hybrid."""
    lines = []
    recall = sorted({k.split("/", 2)[2] for k in r if k.startswith("test/teacher_recall/")},
                    key=lambda k: (k.split("/")[0] == "all", k))
    if recall:
        lines += ["## Recall episodes (the test set: every answer exact, teacher-forced; passkey_greedy: generated "
                  "greedily through the KV cache)", "",
                  markdown_table(["task / needle depth", "teacher", "hybrid"],
                                 [[k.replace("/d", ", depth "), percent(r[f"test/teacher_recall/{k}"]),
                                   percent(r[f"test/hybrid_recall/{k}"])] for k in recall], "lrr"), ""]
    gaps = sorted({k.rsplit("/", 1)[1] for k in r if k.startswith("test/teacher_copy/")}, key=lambda g: int(g[1:]))
    if gaps:
        lines += ["## Copy probe (loss on a passage's second appearance / its first; 1 = no copying)", "",
                  markdown_table(["gap (characters)", "teacher", "hybrid"],
                                 [[g[1:], f"{r[f'test/teacher_copy/{g}']:.3f}", f"{r[f'test/hybrid_copy/{g}']:.3f}"]
                                  for g in gaps], "rrr"), ""]
    return lines


def block_note(cfg: DictConfig, module: HybridModule) -> str:
    """For a block selector: the budget in blocks, and how much of the context one block is."""
    selector = next(iter(module.parts.selectors.values()))
    if not selector.whole_blocks:
        return ""
    T, bs = cfg.model.seq_len, selector.block_size
    n = module.spec.budget.blocks(T, bs)
    return (f" ({n} block{'s' * (n > 1)} of {bs} keys, the own block included; one block is {bs / T:.0%} of the "
            f"T={T} context)")


def model_name(cfg: DictConfig, module: HybridModule) -> str:
    """The model's preset, or a Hugging Face teacher's folder or hub name and family (teacher=hf; T in tokens)."""
    hf = module.hparams.get("teacher")
    return f"{hf['model']} ({module.teacher.cfg.family}, tokens)" if hf else cfg.model.name


def results_markdown(cfg: DictConfig, r: dict, module: HybridModule, source: str, speed: dict) -> str:
    first = module.pair_names[0]
    layer, head = module.spec.pairs()[0]
    val = lambda key, spec: format(r[f"val/{key}"], spec) if f"val/{key}" in r else "–"  # noqa: E731
    lines = [
        f"# Hybrid vs teacher: {cfg.selector.name} selector + {cfg.approximator.name} approximator",
        "",
        f"- data: {cfg.data.name}, test and validation splits; model: {model_name(cfg, module)} ({cfg.model.n_layer} "
        f"layers, {cfg.model.n_head} heads, d_model {cfg.model.d_model}, T={cfg.model.seq_len})",
        f"- sparse layers {list(module.spec.layers)}, heads {list(module.spec.heads)} "
        f"({len(module.pair_names)} of {cfg.model.n_layer * cfg.model.n_head} heads), budget {module.spec.budget} "
        f"per query, kernel {cfg.hybrid.kernel}{block_note(cfg, module)}",
        f"- loaded from: {source}",
        "",
        "## The prototype's \"Expected Output\", with this run's numbers",
        "",
        "```",
        *expected_output(r, layer, head, first),
        "```",
        "",
        "## Whole model (test split; validation split beside it)",
        "",
        markdown_table(["metric", "test", "validation"], [
            ["teacher loss (nats/token)", f"{r['test/teacher_loss']:.4f}", val("teacher_loss", ".4f")],
            ["hybrid loss (nats/token)", f"{r['test/hybrid_loss']:.4f}", val("hybrid_loss", ".4f")],
            ["loss change", f"{r['test/loss_change_pct']:+.2f}%", f"{val('loss_change_pct', '+.2f')}%"],
            ["teacher / hybrid perplexity", f"{r['test/teacher_ppl']:.3f} / {r['test/hybrid_ppl']:.3f}",
             f"{val('teacher_ppl', '.3f')} / {val('hybrid_ppl', '.3f')}"],
            ["KL(teacher ‖ hybrid) per token", f"{r['test/kl_teacher_hybrid']:.5f}", val("kl_teacher_hybrid", ".5f")],
            ["relative error of the final logits", f"{r['test/logits_rel_err']:.4f}", val("logits_rel_err", ".4f")],
        ], "lll"),
        "",
        markdown_table(["metric (test split)", "value"], [
            ["attention-mass recall (mean over sparse heads)", f"{r['test/mass_recall']:.4f}"],
            ["density: keys read per query / T (mean ± spread over queries and heads)",
             f"{r['test/density']:.4f} ± {r['test/density_std']:.4f}"],
            ["recall@K (mean)", f"{r['test/recall']:.4f}"],
            ["selector top-1 accuracy (mean)", f"{r['test/top1_acc']:.4f}"],
            ["approximator relative error (mean)", f"{r['test/approx_rel_err']:.4f}"],
        ], "ll"),
        "",
        *speed_markdown(speed),
        *probe_markdown(r),
        "## Per sparse head (teacher-forced)",
        "",
        markdown_table(["head", "top-1 acc", "recall@K", "mass recall", "approx MSE", "approx rel. error"],
                       [[p, f"{r[f'test/top1_acc/{p}']:.4f}", f"{r[f'test/recall/{p}']:.4f}",
                         f"{r[f'test/mass_recall/{p}']:.4f}", f"{r[f'test/approx_mse/{p}']:.5f}",
                         f"{r[f'test/approx_rel_err/{p}']:.4f}"] for p in module.pair_names], "llllll"),
    ]
    lines += ["", "## Configuration", "", "```yaml", OmegaConf.to_yaml(cfg).rstrip(), "```", ""]
    return "\n".join(lines)
