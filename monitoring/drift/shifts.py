"""Two more shifted slices beside the SQL one, for calibrating and testing the drift severity:

- `data/drift/spanish.jsonl` (another language): the same kind of standard-library questions, asked in Spanish
  ("¿Para qué sirve `json.dumps`?"): the topic stays, the users' language changes, which a model tuned on
  English answers badly;
- `data/drift/cooking.jsonl` (another topic): kitchen questions (substitutions, cooking times, storage,
  techniques) over fixed lists, answered from small fact tables.

Generated from templates with seeded choices, no download; deterministic (`--check` verifies the shipped files).
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

from llmops.data.text import record_id
from monitoring.drift.paraphrase import check_or_write

SPANISH_OUT = Path("data/drift/spanish.jsonl")
COOKING_OUT = Path("data/drift/cooking.jsonl")
DEFAULT_SEED = 20261207

_ES = [
    ("describe", "¿Qué hace `{q}`?"), ("describe", "¿Para qué sirve `{q}` en Python?"),
    ("describe", "Explícame brevemente qué hace {q}."), ("describe", "¿Me puedes explicar la función {q}, por favor?"),
    ("describe", "Estoy aprendiendo Python: ¿cuándo debería usar {q}?"),
    ("signature", "¿Cuál es la firma de `{q}`?"), ("signature", "¿Qué argumentos recibe {q}?"),
    ("signature", "Dame un ejemplo corto de cómo llamar a {q}."),
    ("module", "¿En qué módulo está definido `{n}`?"), ("module", "¿De dónde importo {n}?"),
]


def build_spanish(seed: int = DEFAULT_SEED, per_object: int = 1) -> list[dict[str, str]]:
    """Spanish questions about every documented stdlib function/class (answers: signature or module)."""
    from llmops.data.build import STDLIB_MODULES, collect_api

    api, _ = collect_api(STDLIB_MODULES)
    out: dict[str, dict[str, str]] = {}
    for module in STDLIB_MODULES:
        for obj in api[module]:
            r = random.Random(f"{seed}|es|{obj.qualname}")
            options = [t for t in _ES if t[0] != "signature" or obj.signature]
            for kind, template in r.sample(options, per_object):
                answer = {"describe": f"`{obj.qualname}` pertenece al módulo `{obj.module}`: "
                                      + (obj.summary or obj.signature or ""),
                          "signature": f"Se llama así: `{obj.signature}`.",
                          "module": f"Está en el módulo `{obj.module}`: from {obj.module} import {obj.name}"}[kind]
                rec = {"instruction": template.format(q=obj.qualname, n=obj.name), "input": "", "output": answer,
                       "source": f"spanish:{kind}"}
                out.setdefault(record_id(rec), {"id": record_id(rec), **rec})
    return list(out.values())


# ingredient -> (substitute, how)
_SUBS = {
    "buttermilk": ("milk with a spoon of lemon juice", "let it stand 5 minutes"),
    "eggs": ("a flax egg (1 tbsp ground flax + 3 tbsp water)", "works in muffins and pancakes"),
    "butter": ("the same weight of neutral oil, minus about 20%", "best in cakes and quick breads"),
    "sour cream": ("plain Greek yogurt", "one for one"), "heavy cream": ("milk plus melted butter", "3:1 by volume"),
    "brown sugar": ("white sugar with a little molasses", "1 tbsp molasses per cup"),
    "cornstarch": ("twice as much flour", "cook it a little longer"), "wine": ("stock with a splash of vinegar",
                                                                          "in stews and pan sauces"),
    "fresh herbs": ("a third as much dried herbs", "add them earlier"), "honey": ("maple syrup", "one for one"),
    "baking powder": ("baking soda plus cream of tartar", "1/4 tsp soda + 1/2 tsp cream of tartar per tsp"),
    "shallots": ("a mild onion with a little garlic", "use a bit less"),
}
_DISHES = ["pancakes", "banana bread", "lasagna", "chicken curry", "risotto", "brownies", "pizza dough", "chili",
           "apple pie", "omelette", "meatballs", "focaccia", "lentil soup", "roast potatoes", "carrot cake",
           "fried rice", "tomato sauce", "granola", "cheesecake", "stir-fried noodles"]
# food -> (fridge days, freezer months)
_STORE = {"cooked rice": (4, 6), "chicken stock": (4, 6), "bread": (0, 3), "cooked chicken": (3, 4),
          "soup": (4, 3), "cookie dough": (3, 3), "pesto": (5, 6), "hard-boiled eggs": (7, 0), "salsa": (5, 2),
          "cooked beans": (5, 6), "pie crust": (3, 3), "pancake batter": (2, 3), "curry": (4, 3), "berries": (5, 10)}
# food -> minutes at a temperature (C)
_TIMES = {"a whole chicken (1.5 kg)": (80, 190), "salmon fillets": (12, 200), "baked potatoes": (55, 200),
          "chocolate chip cookies": (11, 180), "a loaf of bread": (35, 220), "muffins": (20, 190),
          "roasted vegetables": (30, 210), "a pork shoulder": (300, 150), "meringues": (90, 100),
          "a frozen pizza": (14, 220), "stuffed peppers": (40, 190), "granola": (25, 160)}
_TECH = {"braising": "browning, then simmering slowly in a little liquid in a covered pot",
         "blanching": "boiling briefly, then plunging into ice water to stop the cooking",
         "searing": "browning the surface quickly in a very hot pan", "poaching": "cooking gently in barely "
         "simmering liquid", "folding": "mixing a light mixture into a heavier one without knocking the air out",
         "deglazing": "dissolving the browned bits in a pan with a splash of liquid",
         "proofing": "letting a yeast dough rise before baking", "tempering": "warming eggs or chocolate gradually "
         "so they do not curdle or bloom", "caramelizing": "cooking sugar or onions slowly until brown and sweet",
         "emulsifying": "whisking fat into a liquid so they form a stable mixture"}
_COOK = {
    "sub": ["What can I use instead of {i} in {d}?", "I'm out of {i}. What's a good substitute for {d}?",
            "Can I replace {i} when making {d}?", "No {i} at home - how do I still make {d}?"],
    "store": ["How long does {f} keep in the fridge?", "Can I freeze {f}, and for how long?",
              "Is {f} still safe to eat after a few days?", "What's the best way to store leftover {f}?"],
    "time": ["How long should I bake {t}?", "At what temperature and for how long do I cook {t}?",
             "Oven time for {t}?", "How do I know when {t} are done?"],
    "tech": ["What does {k} mean in a recipe?", "How do I do {k} properly?", "Why do recipes ask for {k}?",
             "Explain {k} to a beginner cook."],
    "dish": ["Give me a quick recipe for {d}.", "How do I keep my {d} from turning out dry?",
             "What goes well with {d} for dinner?", "Can I make {d} a day ahead?"],
}


def _cook_one(r: random.Random) -> dict[str, str]:
    kind = r.choice(sorted(_COOK))
    template = r.choice(_COOK[kind])
    if kind == "sub":
        i, d = r.choice(sorted(_SUBS)), r.choice(_DISHES)
        text, answer = template.format(i=i, d=d), f"Use {_SUBS[i][0]}; {_SUBS[i][1]}."
    elif kind == "store":
        f = r.choice(sorted(_STORE))
        days, months = _STORE[f]
        text = template.format(f=f)
        answer = (f"About {days} days in the fridge" if days else "Keep it at room temperature, not in the fridge")
        answer += f", and up to {months} months frozen." if months else "; it does not freeze well."
    elif kind == "time":
        t = r.choice(sorted(_TIMES))
        minutes, temp = _TIMES[t]
        text, answer = template.format(t=t), f"About {minutes} minutes at {temp} °C."
    elif kind == "tech":
        k = r.choice(sorted(_TECH))
        text, answer = template.format(k=k), f"{k.capitalize()} is {_TECH[k]}."
    else:
        d = r.choice(_DISHES)
        text, answer = template.format(d=d), f"For {d}: measure carefully, do not overmix, and check it early."
    rec = {"instruction": text, "input": "", "output": answer, "source": f"cooking:{kind}"}
    return {"id": record_id(rec), **rec}


def build_cooking(seed: int = DEFAULT_SEED, records: int = 1200) -> list[dict[str, str]]:
    """Up to `records` distinct cooking questions (fewer if the templates run out of combinations)."""
    r = random.Random(f"{seed}|cooking")
    out: dict[str, dict[str, str]] = {}
    for _ in range(records * 20):
        rec = _cook_one(r)
        out.setdefault(rec["id"], rec)
        if len(out) >= records:
            break
    return list(out.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--check", action="store_true", help="verify the shipped files hold what would be written")
    args = parser.parse_args(argv)
    rc = check_or_write(build_spanish(args.seed), SPANISH_OUT, args.check)
    return rc | check_or_write(build_cooking(args.seed), COOKING_OUT, args.check)


if __name__ == "__main__":
    sys.exit(main())
