"""A run's chain as the one file the challenge counts: `train_gpt.py` (`golfctl submit`).

What goes in: the modules that the chain's entry (`stages/chain.py`) reaches through the
module-level imports of golfctl and stages modules, walked with `ast`, dependencies first.
Imports inside functions are not followed: they are the paths the chain never takes (the
eval planner), so the CLI, inspect, report, submit and the benchmarks stay out.

How: each module is re-printed by `ast.unparse` without its docstrings (which drops comments
too), and the program registers one module object per module in `sys.modules`, in that order,
so they import one another as installed modules do. It then calls `run_chain` with the run's
settings as literals. The program is compressed with raw LZMA2 and base85-wrapped in a short
`exec` stub, as the records ship theirs. The output is a pure function of the sources, the
settings and the revision, so the budget can count it (`golfctl.budget`) before it is written.
"""

from __future__ import annotations

import ast
import base64
import functools
import importlib.metadata
import lzma
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENTRY = "stages.chain"
PACKAGES = ("golfctl", "stages")
LZMA_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]
STUB = ('import lzma as L,base64 as B\n'
        'exec(L.decompress(B.b85decode("{payload}"),format=L.FORMAT_RAW,filters=[{{"id":L.FILTER_LZMA2}}]))\n')


def module_path(name: str) -> Path:
    base = ROOT.joinpath(*name.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def _parse(name: str) -> ast.Module:
    return ast.parse(module_path(name).read_text(encoding="utf-8"), filename=str(module_path(name)))


def _own_imports(tree: ast.Module) -> list[str]:
    """The golfctl/stages modules a module imports at its top level (a package for `from P import x`)."""
    found = []
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES:
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name.split(".")[0] in PACKAGES]
    return found


@functools.cache
def reached_modules(entry: str = ENTRY) -> tuple[str, ...]:
    """Every module reached from `entry`, each after the modules it imports (packages first).
    Cached: every budget line exports, and the sources do not change while golfctl runs."""
    order: list[str] = []

    def visit(name: str) -> None:
        if name in order:
            return
        parts = name.split(".")
        for i in range(1, len(parts)):  # a package's __init__ runs before its modules
            visit(".".join(parts[:i]))
        order.append(name)  # before its imports are visited: a cycle ends here instead of looping
        position = len(order) - 1
        for dependency in _own_imports(_parse(name)):
            visit(dependency)
        order.append(order.pop(position))  # then move it after them

    visit(entry)
    return tuple(order)


class _Minifier(ast.NodeTransformer):
    """Drops docstrings and the annotations nothing reads at run time: those of functions and of
    assignments outside class bodies (a dataclass's field annotations are its fields: kept)."""

    def _strip_docstring(self, node):
        body = node.body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
        return node

    def visit_Module(self, node: ast.Module) -> ast.Module:
        return self._strip_docstring(self.generic_visit(node))

    def visit_ClassDef(self, node: ast.ClassDef) -> ast.ClassDef:
        self._strip_docstring(node)
        node.body = [self.visit(child) if not isinstance(child, ast.AnnAssign) else child for child in node.body]
        return node

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.FunctionDef:
        node.returns = None
        for arg in [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs, node.args.vararg,
                    node.args.kwarg]:
            if arg is not None:
                arg.annotation = None
        return self._strip_docstring(self.generic_visit(node))

    def visit_AnnAssign(self, node: ast.AnnAssign) -> ast.stmt:
        if node.value is None:
            return ast.Pass()
        return ast.copy_location(ast.Assign(targets=[node.target], value=node.value), node)


def stripped_source(name: str) -> str:
    """The module without docstrings, comments and run-time-unused annotations (`ast.unparse`)."""
    return ast.unparse(ast.fix_missing_locations(_Minifier().visit(_parse(name))))


def third_party_imports(modules: tuple[str, ...]) -> set[str]:
    """Top-level names of every non-standard, non-golfctl module the bundled code imports anywhere."""
    names = set()
    for name in modules:
        for node in ast.walk(_parse(name)):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in PACKAGES and n != "__future__"}


def requirements(modules: tuple[str, ...]) -> list[str]:
    """`dist==version` for each installed distribution those imports come from."""
    distributions = importlib.metadata.packages_distributions()
    pins = set()
    for name in third_party_imports(modules):  # one not installed here is optional (FA3): not pinned
        # the public version: a local label (torch's +cpu, +cu128) names a build, not a release
        pins |= {f"{dist}=={importlib.metadata.version(dist).split('+')[0]}" for dist in distributions.get(name, [])}
    return sorted(pins, key=str.lower)


@functools.cache
def _bundle(modules: tuple[str, ...]) -> str:
    sources = {name: stripped_source(name) for name in modules}
    return "import sys,types\n" + "".join(
        f"_m({name!r},{source!r})\n" for name, source in sources.items())


def program(settings: dict, revision: str | None) -> str:
    """The uncompressed program: module loader, the bundled modules, then `run_chain(**settings)`."""
    loader = ("def _m(n,s):\n"
              " m=types.ModuleType(n);m.__file__=__file__\n"
              " if n in ('golfctl','stages'):m.__path__=[]\n"
              " sys.modules[n]=m;exec(compile(s,n,'exec'),m.__dict__)\n"
              " if n=='golfctl':m.EXPORTED={'revision':" + repr(revision) + ",'script':__file__}\n"
              " p,_,c=n.rpartition('.')\n"
              " if p:setattr(sys.modules[p],c,m)\n")
    return (_bundle(reached_modules()).replace("\n", "\n" + loader, 1)
            + f"sys.modules[{ENTRY!r}].run_chain(**{settings!r})\n")


def export_script(settings: dict, revision: str | None) -> bytes:
    """The whole train_gpt.py: the program, LZMA2-compressed and base85-wrapped in an exec stub."""
    compressed = lzma.compress(program(settings, revision).encode(), format=lzma.FORMAT_RAW, filters=LZMA_FILTERS)
    return STUB.format(payload=base64.b85encode(compressed).decode("ascii")).encode("ascii")
