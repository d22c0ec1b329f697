"""``rewardflow models``: the registered generator adapters and the diffusers pipeline classes each one loads."""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser("models", help="list the generator adapters and their diffusers pipeline classes",
                              description="List the generator adapters. `rewardflow sample --model DIR|ID` picks "
                                          "the adapter from model_index.json's _class_name; --adapter NAME forces one.")
    p.set_defaults(fn=run_models)


def run_models(args) -> int:
    from rewardflow.pipelines.registry import list_generators

    rows = [(a["name"], ", ".join(a["pipeline_classes"]) or "-", a["description"]) for a in list_generators()]
    w0 = max(len("adapter"), *(len(r[0]) for r in rows))
    w1 = max(len("pipeline classes"), *(len(r[1]) for r in rows))
    print(f"{'adapter':<{w0}}  {'pipeline classes':<{w1}}  description")
    for name, classes, desc in rows:
        print(f"{name:<{w0}}  {classes:<{w1}}  {desc}")
    return 0
