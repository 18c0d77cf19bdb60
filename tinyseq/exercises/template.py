"""The learner's file, cut from tinyseq's own source so an exercise can never drift from the code it teaches.

`given` names (the forward, its helpers and constants) are copied whole, with the comment lines right above
them. `to_write` functions keep their signature line (with its shape comment), their docstring, the comment
lines before the first statement, and every `# forward was: ...` line cut before its `->` (the derivation
after the arrow is the learner's job); the body becomes `raise NotImplementedError("write the backward")`.
"""
from __future__ import annotations

import ast
import inspect

NOT_WRITTEN = 'raise NotImplementedError("write the backward")'


HEADER_IMPORTS = ("math", "np")   # every learner's file starts with `import math` and `import numpy as np`


def _source_lines(module) -> tuple[list[str], dict[str, ast.AST]]:
    """The module's source lines and its top-level defs / assignments / imports by the name they bind."""
    src = inspect.getsource(module)
    nodes = {}
    for node in ast.parse(src).body:
        if isinstance(node, ast.FunctionDef):
            nodes[node.name] = node
        elif isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            nodes[node.targets[0].id] = node
        elif isinstance(node, (ast.Import, ast.ImportFrom)) and getattr(node, "module", None) != "__future__":
            nodes.update({(a.asname or a.name).split(".")[0]: node for a in node.names})
    return src.splitlines(), nodes


def given_names(module, roots, written) -> list[str]:
    """`roots` and every top-level name of `module` they use, directly or not, in source order; the names
    in `written` (the learner's functions) and the file's own imports are left out. Listing the forward is
    enough: a constant or helper it comes to use later is copied too."""
    _, nodes = _source_lines(module)
    need, todo = set(), list(roots) + list(written)
    while todo:
        name = todo.pop()
        used = {n.id for n in ast.walk(nodes[name]) if isinstance(n, ast.Name)} & nodes.keys()
        for u in used - need - set(written) - set(HEADER_IMPORTS):
            need.add(u)
            todo.append(u)
    need |= set(roots)
    first = {}                                       # one name per node: an import may bind several
    for n in sorted(need, key=lambda n: nodes[n].lineno):
        first.setdefault(id(nodes[n]), n)
    return list(first.values())


def _node(module, name):
    lines, nodes = _source_lines(module)
    if name not in nodes:
        raise KeyError(f"{module.__name__} has no top-level {name}")
    return lines, nodes[name]


def given_block(module, name: str) -> str:
    """A top-level function or constant of `module`, copied whole with the comment lines directly above it."""
    lines, node = _node(module, name)
    start = node.lineno - 1                          # 0-based index of the def / assignment line
    while start > 0 and lines[start - 1].lstrip().startswith("#"):
        start -= 1
    return "\n".join(lines[start:node.end_lineno])


def solution_block(module, name: str) -> str:
    """The reference backward, whole (what `start --solution` writes)."""
    lines, node = _node(module, name)
    return "\n".join(lines[node.lineno - 1:node.end_lineno])


def _signature_end(lines: list[str], node: ast.FunctionDef) -> int:
    """0-based index of the line holding the def's closing `:` (the signature may span several lines)."""
    i = node.lineno - 1
    while lines[i].split("#", 1)[0].rstrip()[-1:] != ":":
        i += 1
    return i


def _keep_comment(text: str, leading: bool, in_derivation: bool) -> str | None:
    """The comment line to keep in a blanked body (cut at '->' for a 'forward was' line), or None to drop it.
    in_derivation: the line above was a 'forward was' line or its continuation."""
    body = text.lstrip()[1:].strip()                 # after the '#'
    if body.startswith("forward was:"):
        return text.split("->", 1)[0].rstrip()
    if in_derivation and body.startswith("->"):      # the derivation, continued on the next line
        return None
    return text.rstrip() if leading else None


def blank_block(module, name: str) -> str:
    """A backward with its body blanked: signature, docstring, leading comments, 'forward was' lines kept."""
    lines, node = _node(module, name)
    sig_end = _signature_end(lines, node)
    first = node.body[0]
    doc = (range(first.lineno - 1, first.end_lineno) if isinstance(first, ast.Expr)
           and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str) else range(0))
    code = [s for s in node.body if s is not first or not doc]
    first_code = code[0].lineno - 1 if code else node.end_lineno
    indent = lines[first.lineno - 1][:len(lines[first.lineno - 1]) - len(lines[first.lineno - 1].lstrip())]
    kept, in_derivation = lines[node.lineno - 1:sig_end + 1], False
    for i in range(sig_end + 1, node.end_lineno):
        is_comment = i not in doc and lines[i].lstrip().startswith("#")
        if i in doc:
            kept.append(lines[i])
        elif is_comment:
            line = _keep_comment(lines[i], i < first_code, in_derivation)
            if line is not None:
                kept.append(line)
        in_derivation = is_comment and (in_derivation or "forward was:" in lines[i])
    kept.append(indent + NOT_WRITTEN)
    return "\n".join(kept)


def _join(blocks: list[str]) -> str:
    """Blocks two blank lines apart, except a constant right after a constant (one line apart)."""
    def is_constant(block):
        return not any(line.startswith("def ") for line in block.splitlines())
    out = blocks[0]
    for prev, block in zip(blocks, blocks[1:]):
        out += ("\n" if is_constant(prev) and is_constant(block) else "\n\n\n") + block
    return out


def learner_file(ex, solution: bool = False) -> str:
    """The whole file `tinyseq exercise start` writes for exercise `ex` (a catalog.Exercise)."""
    src = ex.source
    write = ", ".join(ex.to_write)
    header = (f'"""tinyseq exercise {ex.name}: {ex.about}.\n\n'
              f"Write the body of: {write}\n"
              f"The forward and its helpers are given, copied from {src}; the backward's signature, shapes\n"
              f"and 'forward was' comments are kept, and you write what follows each arrow.\n\n"
              f"{ex.task.strip()}\n\n"
              f"Check your work (as often as you like):   tinyseq exercise check <this file>\n"
              f"The check compares your gradients with central finite differences of the forward in {src}\n"
              f"(float64, tiny random shapes, a random upstream gradient) and names the first entry that is off.\n"
              f'"""\n')
    make = solution_block if solution else blank_block
    given = _join([given_block(ex.module, n) for n in given_names(ex.module, ex.given, ex.to_write)])
    to_write = "\n\n\n".join(make(ex.module, n) for n in ex.to_write)
    rule = "# " + "=" * 106
    return (f"{header}import math\n\nimport numpy as np\n\n"
            f'EXERCISE = "{ex.name}"   # tells `tinyseq exercise check` which forward to check against\n\n\n'
            f"{rule}\n# GIVEN: the forward, exactly as in {src}\n{rule}\n{given}\n\n\n"
            f"{rule}\n# " + ("THE REFERENCE BACKWARD from " + src if solution else "TO WRITE: the backward") +
            f"\n{rule}\n{to_write}\n")
