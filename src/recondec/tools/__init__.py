"""Tools that stand above one job (they build trainers as a job does): the training-step benchmark, each loss
term's share, parameter and FLOP counts. Used by src/bench.py."""
