"""Reading checkpoints: the one place a .ckpt file is opened, checked and found in a run folder.

Every checkpoint of this project is a Lightning checkpoint whose ``hyper_parameters`` carry the model settings and
the vocabulary (a distillation stage's also the hybrid, selector and approximator settings), so that it can be
rebuilt without the config it was trained with (src/stages/common.py builds the modules). Whether a checkpoint fits a
run, and finding the newest that does, is src/runs/lookup.py.
"""

from __future__ import annotations

from pathlib import Path

import torch

from src.errors import UserError

HYBRID_KEYS = {"hybrid", "selector", "approximator"}  # hyper-parameters a hybrid's checkpoint has and a teacher's not


def read_checkpoint(path: str | Path, what: str = "", make: str = "", map_location: str = "cpu",
                    stage: str | None = None) -> dict:
    """The checkpoint at ``path`` as a dict, or one line naming the problem: missing, unreadable (cut short, not a
    torch file), not this project's (no model, vocabulary and weights) or, with ``stage``, another stage's (a
    teacher's where a distilled hybrid is wanted, or the other way round). ``what`` names the kind wanted
    ("teacher"), ``make`` how to make one ("train one with `...`")."""
    p = Path(path)
    fix = f": {make}" if make else ""
    kind = f"{what} " if what else ""
    if not p.is_file():
        raise UserError(f"no {kind}checkpoint at {p}{fix}")
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=False)
    except Exception as e:  # noqa: BLE001  truncated file, not a torch file, ...
        first = str(e).splitlines()[0][:120] if str(e) else ""
        raise UserError(f"cannot read checkpoint {p} ({type(e).__name__}: {first}){fix}") from None
    hp = ckpt.get("hyper_parameters", {}) if isinstance(ckpt, dict) else {}
    if not {"vocab", "model"} <= hp.keys() or "state_dict" not in ckpt:
        raise UserError(f"{p} is not a {kind}checkpoint of this project{fix}")
    if stage is not None and is_hybrid(ckpt) != (stage != "teacher"):
        found = "a distilled selector's or hybrid's" if is_hybrid(ckpt) else "a teacher's"
        wanted = what or stage
        raise UserError(f"{p} is {found} checkpoint, not {'an' if wanted[0] in 'aeiou' else 'a'} {wanted}'s{fix}"
                        + (" (a pipeline's teacher/checkpoints/best.ckpt is its teacher's)" if stage == "teacher"
                           else ""))
    return ckpt


def is_hybrid(ckpt: dict) -> bool:
    """A distillation stage's checkpoint (teacher + sparse parts), not a teacher's."""
    return HYBRID_KEYS <= ckpt["hyper_parameters"].keys()


def run_checkpoints(folder: Path, steps: tuple[str, ...] = ("",)) -> list[Path]:
    """The checkpoints of a run folder, best.ckpt before last.ckpt, in its ``steps`` sub-folders in that order ("":
    the folder itself; a pipeline's steps: "approximator", "teacher", ...)."""
    folders = [folder / step / "checkpoints" if step else folder / "checkpoints" for step in steps]
    return [f / name for f in folders for name in ("best.ckpt", "last.ckpt") if (f / name).is_file()]
