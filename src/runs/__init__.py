"""Run infrastructure, between the library and the stages: run folders, finding and checking checkpoints (the one
run lookup), resume, the shared Trainer and its callbacks, and the JSON records a run leaves.

* ``folders``     where a run writes, multirun job folders, leaving a folder as it was when a command is refused;
* ``lookup``      ``spec`` / ``mismatch`` / ``find`` / ``checkpoint_for``: which checkpoint a run starts from;
* ``checkpoints`` reading a .ckpt (one message for missing, unreadable, foreign), a folder's checkpoints;
* ``resume``      ``resume=RUN``: checks, the checkpoint to continue from, the command that continues;
* ``trainer``     the Trainer of every stage;  ``callbacks``  stop on NaN, save on Ctrl-C, the multirun summary;
* ``records``     metrics.json and friends;    ``commands``  the command that makes what a run needs.
"""
