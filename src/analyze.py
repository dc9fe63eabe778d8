"""``python -m src.analyze costs | sweep DIR | budget DIR``: the analyses that need no training run (src/analysis/)."""

import sys

from src.analysis.__main__ import main

if __name__ == "__main__":
    sys.exit(main())
