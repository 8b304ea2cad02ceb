"""``research-plugin policy``: show the shipped policy's build record, or rebuild it from the code."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser(
        "policy",
        help="the embedded default's shipped policy: its build record, or rebuild it from the code",
        description="info: the shipped policy's build.json and whether the code that built it is the code now (exit "
        "1 when not); build: rebuild it from the code (tiny model, tokenizer, warm-up; ~20 min on 2 cores) into the "
        "package, or into --dir.",
    )
    p.add_argument("action", choices=["info", "build"])
    p.add_argument("--dir", help="a policy folder other than the package's (build: where to write it)")
    p.add_argument("--seed", type=int, default=0, help="build: the warm-up's seed (the shipped policy's is 0)")
    p.add_argument("--steps", type=int, help="build: warm-up steps (default: the shipped policy's)")
    p.set_defaults(func=run)


def run(args) -> int:
    """Show the shipped policy's build record, or rebuild it from the code."""
    import json

    from ..demo import policy

    out = args.dir or policy.SHIPPED
    if args.action == "info":
        info, code = policy.build_info(out), policy.code_fingerprint()
        print(json.dumps({"path": str(out), **info, "code_fingerprint_now": code}, indent=2))
        return 0 if info.get("fingerprint") == code else 1
    print(f"building the embedded default's policy in {out} (warm-up seed {args.seed}): ~20 min on 2 cores", flush=True)
    built = policy.build_policy(out, seed=args.seed, steps=args.steps)
    print(json.dumps({"path": str(built), **policy.build_info(built)}, indent=2))
    return 0
