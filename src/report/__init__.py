"""What every tool and stage writes for a reader: tables (``tables``: markdown, CSV, the csv/json/md/png set, number
formats) and figures (``figures``: attention against the selected keys, curves, the benchmarks', sweeps' and cost
model's panels), drawn from plain rows so that a tool's PNG and the notebook show the same thing."""
