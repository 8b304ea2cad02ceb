"""What the ``search_agent`` loop needs besides verl: prompt templates and retrievers.

The loop itself is :mod:`verl.experimental.agent_loop.search_agent_loop`; its tags, answer parsing and rewards live
in :mod:`verl.utils.reward_score.search_agent`.
"""
