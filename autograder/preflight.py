"""Reading the learner's file before anything runs (trusted side): does it exist, parse, define the names the check
calls, are they still the blank stubs, and, where the notebook asks for a mechanism built by hand, does it hand the
work to the library instead.

The by-hand read follows what the exercise's functions can reach: each name they use is resolved through the file's
imports (`import torch.distributed as dist`, `from torch.nn.parallel import DistributedDataParallel as DDP`) to a
dotted path, helper functions and classes of the same file are followed, and so is code that runs at import (outside
any function). A path into the library's own implementation of the mechanism (`LIBRARY`) is delegation. What a read
cannot see: a name built at run time (`getattr(module, "Distributed" + "DataParallel")`, `importlib` with a computed
string, `exec`); the README says so.
"""
from __future__ import annotations

import ast
from pathlib import Path

# What an exercise built by hand may not call: the library's implementation of the same mechanism (dotted prefixes).
LIBRARY = {
    "torch.nn.parallel.DistributedDataParallel": "DistributedDataParallel",
    "torch.nn.parallel.distributed": "DistributedDataParallel",
    "torch.distributed.optim.ZeroRedundancyOptimizer": "ZeroRedundancyOptimizer",
    "torch.distributed.optim.zero_redundancy_optimizer": "ZeroRedundancyOptimizer",
    "torch.distributed.pipelining": "torch.distributed.pipelining",
    "torch.distributed.fsdp": "FSDP (fully_shard)",
    "torch.distributed._composable.fsdp": "FSDP (fully_shard)",
    "torch.distributed._composable.replicate": "replicate (DDP)",
}


def _is_stub(fn: ast.FunctionDef) -> bool:
    body = [s for s in fn.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
    return (len(body) == 1 and isinstance(body[0], ast.Raise) and body[0].exc is not None
            and "NotImplementedError" in ast.unparse(body[0].exc))


def preflight(path: Path, functions: tuple[str, ...], by_hand: bool = False,
              avoid: dict[str, tuple[str, str]] | None = None) -> tuple[str, str, str] | None:
    """Read the learner's file without running it: (status, message, hint) when it cannot pass yet.

    `avoid`: dotted API -> (why, hint), operations an exercise built by hand may not use although they give the
    same results, where what they send cannot be told from outside (scratch.zero2's all-reduce under gloo)."""
    if not path.is_file():
        return ("error", f"{path.name} does not exist yet in {path.parent}",
                "Run the %%writefile cell that creates it (or pass --module with its path).")
    try:
        tree = ast.parse(path.read_text(), filename=path.name)
    except SyntaxError as exc:
        return ("fail", f"{path.name} has a syntax error on line {exc.lineno}: {exc.msg}",
                "Fix the line shown, run the %%writefile cell again, then re-check.")
    defined = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    for name in functions:
        if name not in defined:
            return ("fail", f"{path.name} does not define {name}",
                    f"Keep the name {name} from the exercise cell; the checks call it by name.")
    stubs = [name for name in functions if isinstance(defined[name], ast.FunctionDef) and _is_stub(defined[name])]
    stubs += [f"{name}.{m.name}" for name in functions if isinstance(defined[name], ast.ClassDef)
              for m in defined[name].body if isinstance(m, ast.FunctionDef) and _is_stub(m)]
    if stubs:
        verb = "raises" if len(stubs) == 1 else "raise"
        return ("not-implemented", f"{', '.join(n + '()' for n in stubs)} still {verb} NotImplementedError",
                "Replace '# YOUR CODE HERE' and the raise line with your code, run the cell, then re-check.")
    if by_hand and (found := delegation(tree, functions)):
        name, api, line = found
        return ("fail", f"{name} hands the work to {api} ({path.name} line {line}): this exercise builds that "
                        "mechanism by hand, so the library's version cannot be part of the answer",
                f"Write {name} with the process group's own operations (dist.all_reduce, broadcast, send/recv, "
                "reduce_scatter/all_gather) as the notebook describes; keep the library's class for comparing "
                "with yours outside this file.")
    if avoid and (found := delegation(tree, functions, {api: api for api in avoid})):
        name, api, line = found
        why, hint = avoid[api]
        return ("fail", f"{name} calls {api} ({path.name} line {line}): {why}", hint)
    return None


# ------------------------------------------------------------------ what the exercise's code reaches

def _imports(nodes) -> dict[str, str]:
    """Local name -> the dotted path it was imported as, for the import statements among `nodes`."""
    bound = {}
    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    bound[alias.asname] = alias.name
                else:   # `import torch.distributed` binds `torch`
                    bound[alias.name.split(".")[0]] = alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                bound[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return bound


def _dotted(node: ast.AST, bound: dict[str, str]) -> str | None:
    """`dist.optim.ZeroRedundancyOptimizer` -> 'torch.distributed.optim.ZeroRedundancyOptimizer' (None: not rooted
    in an import)."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name) and node.id in bound:
        return ".".join([bound[node.id], *reversed(parts)])
    return None


def _library(path: str, library: dict[str, str]) -> str | None:
    for prefix, api in library.items():
        if path == prefix or path.startswith(prefix + "."):
            return api
    return None


def _at_import(tree: ast.Module) -> list[ast.stmt]:
    """Statements that run when the file is imported, other than definitions and imports (and `__main__` blocks)."""
    def main_block(s):
        return isinstance(s, ast.If) and "__main__" in ast.unparse(s.test)
    return [s for s in tree.body if not isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef,
                                                      ast.Import, ast.ImportFrom)) and not main_block(s)]


def delegation(tree: ast.Module, functions: tuple[str, ...],
               library: dict[str, str] = LIBRARY) -> tuple[str, str, int] | None:
    """(function, library API, line) of the first of `library` (dotted prefix -> API name; default: the library's
    implementations of the mechanisms) that `functions` (or a helper of the file they use, or code run at import)
    reach; None when they reach none."""
    bound = _imports(tree.body)
    defined = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    for name in functions:
        todo, seen = [defined[name], *_at_import(tree)], set()
        while todo:
            root = todo.pop()
            if id(root) in seen:
                continue
            seen.add(id(root))
            local = {**bound, **_imports(ast.walk(root))}   # imports inside a function count too
            for node in ast.walk(root):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    module = node.module if isinstance(node, ast.ImportFrom) else None
                    paths = ([f"{module}.{a.name}" for a in node.names] if module and not node.level
                             else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
                elif isinstance(node, (ast.Attribute, ast.Name)):
                    paths = [p] if (p := _dotted(node, local)) else []
                    if isinstance(node, ast.Name) and node.id in defined and node.id not in local:
                        todo.append(defined[node.id])   # a helper of the same file
                else:
                    continue
                for p in paths:
                    if api := _library(p, library):
                        return name, api, node.lineno
    return None
