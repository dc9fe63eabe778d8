"""Training stages: each a LightningModule plus a ``run(cfg, run_dir)`` function that `src.train` dispatches to."""
