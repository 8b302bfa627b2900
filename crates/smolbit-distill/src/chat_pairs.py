# Instruction/answer pairs from Python files, for chat-formatted distillation data: one JSON
# object per line, {"prompt": ..., "code": ...}, for each public top-level function with a
# docstring whose first paragraph reads as a task. File paths come on stdin, one per line.
# Run by smolbit-distill (data.rs); output order is input order, so the pairs are deterministic.
import ast
import json
import sys

for path in sys.stdin.read().splitlines():
    try:
        with open(path, encoding="utf-8") as f:
            src = f.read()
        tree = ast.parse(src)
    except (OSError, UnicodeDecodeError, SyntaxError, ValueError):
        continue
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef) or node.name.startswith("_"):
            continue
        doc = ast.get_docstring(node)
        if not doc:
            continue
        first = " ".join(doc.strip().split("\n\n")[0].split())
        if not 20 <= len(first) <= 400:
            continue
        code = ast.get_source_segment(src, node)
        if code is None or not 3 <= code.count("\n") + 1 <= 60:
            continue
        prompt = f"Write a Python function {node.name}({ast.unparse(node.args)}). {first}"
        print(json.dumps({"prompt": prompt, "code": code}))
