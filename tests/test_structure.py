"""The package's shape: no import cycles (lazy imports inside functions count), `__all__` lists only the module's own public
names, and methods defined after their class join it with fastcore's @patch, not by assignment."""
import ast, importlib, inspect, re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODULES = sorted(p.stem for p in (ROOT/"finetune").glob("*.py") if p.stem not in ("__init__", "_modidx"))


def _imports(mod:str) -> set[str]:
    "Every finetune module `mod` imports, at the top or inside a function."
    out = set()
    for n in ast.walk(ast.parse((ROOT/"finetune"/f"{mod}.py").read_text())):
        if isinstance(n, ast.ImportFrom):
            if n.level == 1 and n.module: out.add(n.module.split(".")[0])
            elif n.level == 1: out |= {a.name for a in n.names}
            elif n.module and n.module.startswith("finetune."): out.add(n.module.split(".")[1])
            elif n.module == "finetune": out |= {a.name for a in n.names}
        elif isinstance(n, ast.Import):
            out |= {a.name.split(".")[1] for a in n.names if a.name.startswith("finetune.")}
    return out & set(MODULES) - {mod}


def _cycle(graph:dict) -> list|None:
    "One import cycle in `graph` as a list of modules, or None."
    state, stack = {}, []
    def visit(m):
        state[m] = 1; stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1: return stack[stack.index(d):] + [d]
            if d not in state and (c := visit(d)): return c
        state[m] = 2; stack.pop()
    for m in graph:
        if m not in state and (c := visit(m)): return c
    return None


def test_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles():
    graph = {m: _imports(m) for m in MODULES}
    assert graph["train"] >= {"config", "data", "models"}  # the scan sees real imports
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_all_lists_own_public_names():
    for m in MODULES:
        mod = importlib.import_module(f"finetune.{m}")
        for name in getattr(mod, "__all__", []):
            assert not name.startswith("_"), f"finetune.{m}.__all__ lists private {name}"
            obj = getattr(mod, name, None)
            assert obj is not None, f"finetune.{m}.__all__ lists {name}, which the module does not define"
            if inspect.isfunction(obj) or inspect.isclass(obj):  # defined here, not imported from elsewhere
                assert obj.__module__ == f"finetune.{m}", f"finetune.{m}.__all__ lists {name} from {obj.__module__}"


def test_methods_join_their_class_by_patch():
    assign = re.compile(r"^[A-Z]\w*\.\w+(\s*,\s*[A-Z]\w*\.\w+)*\s*=\s*\w+", re.M)
    for m in MODULES:
        hits = assign.findall((ROOT/"finetune"/f"{m}.py").read_text())
        assert not hits, f"finetune/{m}.py assigns methods to a class by hand; use fastcore's @patch in its notebook"
