"""Follow `cfg` from petclf.train.train through the calls that pass it on (static AST call graph).

A call "passes cfg on" when an argument mentions `cfg`, or a carrier of it (`ctx`, `recipe`, `self.cfg`,
`self.ctx`), or the call is a method of a carrier (`recipe.fit(...)`, `self.start(...)`). Callees are resolved
through each module's own definitions and its `from petclf.X import name` imports (inside functions too);
methods on a recipe resolve to every recipe class's method of that name (base and subclasses).
Counted: distinct petclf modules entered (train.py included), and call sites in reached train.py functions that
enter another module (each returns to train.py once).
usage: python tools/cfg_walk.py petclf [--fields] [-v]   (counts for issue-style reviews of how far cfg travels)
"""
import ast
import sys
from pathlib import Path

PKG = Path(sys.argv[1])
CARRIERS = {"cfg", "ctx", "recipe"}
RECIPE_CLASSES = {"Recipe", "FineTune", "Probe"}


def load(mod):
    p = PKG / f"{mod}.py"
    return ast.parse(p.read_text()) if p.is_file() else None


funcs = {}  # (mod, name) -> FunctionDef ; methods as (mod, "Class.meth")
imports = {}  # mod -> {name: (srcmod, name)}
for p in PKG.glob("*.py"):
    mod = p.stem
    tree = ast.parse(p.read_text())
    imports[mod] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("petclf."):
            for a in node.names:
                imports[mod][a.asname or a.name] = (node.module.split(".")[1], a.name)
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            funcs[(mod, node.name)] = node
        elif isinstance(node, ast.ClassDef):
            for b in node.body:
                if isinstance(b, ast.FunctionDef):
                    funcs[(mod, f"{node.name}.{b.name}")] = b


FIELDS = "--fields" in sys.argv  # also count a call that passes only a field of cfg (cfg.arch)


def chain(n):
    parts = []
    while isinstance(n, ast.Attribute):
        parts.append(n.attr)
        n = n.value
    if isinstance(n, ast.Name):
        parts.append(n.id)
        return ".".join(reversed(parts))
    return None


def carries(expr):
    """The expression hands on cfg: the object itself or a carrier (ctx, recipe, self.cfg, self.ctx, x.cfg);
    with --fields, any chain through cfg (cfg.arch, self.ctx.cfg.size)."""
    whole = set()
    def visit(n, inside_attr=False):
        c = chain(n) if isinstance(n, (ast.Attribute, ast.Name)) else None
        if c is not None:
            whole.add(c)
            return
        for ch in ast.iter_child_nodes(n):
            visit(ch)
    visit(expr)
    for c in whole:
        parts = c.split(".")
        ctx = len(parts) == 2 and parts[-1] == "ctx"
        if c in CARRIERS or c in ("self.cfg", "self.ctx") or parts[-1] == "cfg" or ctx:
            return True
        if FIELDS and "cfg" in parts:
            return True
    return False


def recipe_methods(name):
    return [k for k in funcs if "." in k[1] and k[1].split(".")[0] in RECIPE_CLASSES and k[1].split(".")[1] == name]


def callees(mod, fn, in_recipe):
    out = []
    for node in ast.walk(fn):
        if not isinstance(node, ast.Call):
            continue
        args = [*node.args, *(k.value for k in node.keywords)]
        f = node.func
        passes = any(carries(a) for a in args)
        targets = []
        if isinstance(f, ast.Name):
            if (mod, f.id) in funcs:
                targets = [(mod, f.id)]
            elif f.id in imports[mod]:
                src, name = imports[mod][f.id]
                targets = [(src, name)] if (src, name) in funcs else []
                if (src, name) not in funcs:  # a class: its __init__ / nothing
                    targets = []
        elif isinstance(f, ast.Attribute) and recipe_methods(f.attr):
            recv = ast.unparse(f.value)
            if recv == "recipe" or (recv == "self" and in_recipe) or recv.startswith(("recipe_class(", "FineTune(")):
                targets = recipe_methods(f.attr)
                passes = True  # the receiver carries cfg
        if passes and targets:
            out.append((node, targets))
    return out


def walk(start):
    """Depth-first over the calls that hand cfg on."""
    seen, modules, returns = set(), set(), 0
    stack = [start]
    while stack:
        key = stack.pop()
        if key in seen:
            continue
        seen.add(key)
        modules.add(key[0])
        in_recipe = "." in key[1] and key[1].split(".")[0] in RECIPE_CLASSES
        for _node, targets in callees(key[0], funcs[key], in_recipe):
            # one return per call site (a method of the recipe resolves to the base and its overrides)
            if key[0] == "train" and any(c[0] != "train" for c in targets):
                returns += 1
                if "-v" in sys.argv:
                    print("  ", key[1], "->", targets)
            stack += targets
    return seen, modules, returns


seen, modules, returns = walk(("train", "train"))
print(f"modules entered: {len(modules)}: {sorted(modules)}")
print(f"train.py -> other module calls (returns to train.py): {returns}")
print(f"functions reached: {len(seen)}")
