"""``python -m src.bench``: one attention layer, dense against sparse (src/bench/layer.py); ``--decode``: generation,
one decode step and whole-model tokens per second (src/bench/decode.py); ``--train``: one training step of the
whole model, dense against natively sparse (src/bench/training.py); ``--teacher``: the dense teacher's training
against nanoGPT's (``--nanogpt PATH``, src/bench/teacher.py)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--decode" in argv:
        from src.bench import decode

        return decode.main(argv)
    if "--teacher" in argv or "--nanogpt" in argv:
        from src.bench import teacher

        return teacher.main(argv)
    if "--train" in argv:
        from src.bench import training

        return training.main(argv)
    from src.bench import layer

    return layer.main(argv)


if __name__ == "__main__":
    sys.exit(main())
