"""The analytic cost model: ``formulas`` (what each piece of attention costs, one head; imports nothing of the
project's layers above the block count, so that selectors and approximators name their formula at the top) and
``accounting`` (layers, models, the prototype's tables and a run's FLOP columns, built from the registries).
Import the module you need: this package imports neither, so that importing the formulas stays light."""
