"""The papers this plugin reproduces, one record each, that the rest of the code indexes into by the paper's name
(which is also its dialect's name): the tags its policy writes (:mod:`.dialects`), the rules its prompts teach,
whether its prompts open the think block, the reward scheme its rows get by default (:mod:`.rewards`), how its
evaluation reports (normalisation, metrics in its tables' order, judge prompt), and the released code that
"faithful" options follow.
"""

from __future__ import annotations

from dataclasses import dataclass

from .dialects import DIALECTS, Dialect


@dataclass(frozen=True)
class Paper:
    name: str
    title: str
    code: str
    """The authors' released code, the reference for the schemes' ``original`` options."""
    rules: str
    """What the prompts teach the policy (system prompt, or the raw template's instructions)."""
    opens_think: bool
    """Whether its prompts end with the think open tag, so responses start inside a think block."""
    default_scheme: str
    """The reward scheme ``prepare`` records in its rows unless told otherwise."""
    normalization: str
    """The answer normalisation its evaluation uses."""
    metrics: tuple[tuple[str, str], ...]
    """(label in its tables, row metric key), in its tables' order."""
    judge_prompt: str
    """How its LLM judge is asked (:data:`..evaluation.protocols.JUDGE_PROMPTS`)."""

    @property
    def dialect(self) -> Dialect:
        return DIALECTS[self.name]


PAPERS: dict[str, Paper] = {
    p.name: p
    for p in (
        Paper(
            name="research",
            title="ReSearch",
            code="github.com/Agent-RL/ReSearch",
            rules=(
                "The assistant first thinks about the reasoning process and then gives the answer. While thinking, "
                "the assistant may search Wikipedia for facts about specific topics when needed. The reasoning is "
                "enclosed in <think> </think>, a search query in <search> </search>, the search result in "
                "<result> </result>, and the answer in <answer> </answer>. For example: <think> reasoning </think> "
                "<search> a search query </search> <result> the search result </result> <think> reasoning </think> "
                "<answer> The final answer is \\boxed{answer here} </answer>. The exact final answer goes in "
                "\\boxed{} at the end of the answer."
            ),
            opens_think=False,
            default_scheme="research",
            normalization="squad",
            metrics=(("EM", "em"), ("F1", "f1"), ("LJ", "lj")),
            judge_prompt="research",
        ),
        Paper(
            name="r1_searcher",
            title="R1-Searcher",
            code="github.com/RUCAIBox/R1-Searcher",
            rules=(
                "The assistant first thinks about the reasoning process and then gives the answer. The reasoning is "
                "enclosed in <think> </think> and the answer in <answer> </answer>. While thinking, the assistant can "
                "search for uncertain knowledge by writing <|begin_of_query|> keyword_1 keyword_2 ... <|end_of_query|> "
                "(keywords only). The system then returns documents in <|begin_of_documents|> ... "
                "<|end_of_documents|>. The assistant may search as often as it needs, and writes the final answer, "
                "as short as possible, in <answer> </answer>."
            ),
            opens_think=True,
            default_scheme="r1_stage2",
            normalization="r1_searcher",
            metrics=(("ACC_R (Cover-EM)", "acc_r"), ("ACC_L (LLM judge)", "lj"), ("EM", "em"), ("F1", "f1")),
            judge_prompt="r1_searcher",
        ),
        Paper(
            name="search_r1",
            title="Search-R1",
            code="github.com/PeterGriffinJin/Search-R1",
            rules=(
                "Answer the given question. Reason inside <think> and </think> first, every time you get new "
                "information. If you lack some knowledge, call a search engine with <search> query </search>; it "
                "returns the top results between <information> and </information>. You can search as many times as "
                "you want. When no further knowledge is needed, give the answer inside <answer> and </answer> without "
                "explanation, for example <answer> Beijing </answer>."
            ),
            opens_think=False,
            default_scheme="search_r1_em",
            normalization="squad",
            metrics=(("EM", "em"), ("sub-EM", "subem")),
            judge_prompt="yes_no",
        ),
    )
}
