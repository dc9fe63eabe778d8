"""Analyses of what runs and the cost model produced (``python -m src.analyze ...``) and the notebook's readers.

* ``costs``         the cost model's tables and figure (``analyze costs``);
* ``jobs``          the one reader of a multirun's job folders;
* ``sweep``         one table + plot of a multirun's jobs (``analyze sweep``);
* ``budget_curve``  quality against key budget, one line per selector (``analyze budget``);
* ``explore``       what notebooks/explore.ipynb shows, as small functions.
"""
