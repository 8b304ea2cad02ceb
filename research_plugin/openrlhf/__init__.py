"""OpenRLHF glue: the agent executor for ``--train.agent_func_path`` (:mod:`.agent`; the file to pass is
:mod:`.agent_func`, ``research-plugin openrlhf-agent-path`` prints its path). Nothing is imported here."""
