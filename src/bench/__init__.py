"""Measured speed and memory, dense against sparse (``python -m src.bench``): every variant is the library's own code,
timed by one loop in one process beside SDPA, each speed-up reported beside its FLOP limit.

* ``timing``   the timing loop, phases of a sparse forward, peak memory, the machine;
* ``harness``  the benchmarks' shared command line;
* ``layer``    one attention layer's forward (the default);  ``decode``  generation (``--decode``);
* ``speed``    a trained hybrid against its teacher: the whole model's forward (evaluate), one layer (pipeline).
"""
