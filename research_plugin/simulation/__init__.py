"""A GPU's timing on any machine: the cost model of a continuous-batching engine and scripted search agents, used
by the ``sim`` rollout backend and ``bench/rollout_scale.py``."""
