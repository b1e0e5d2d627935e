"""Every tensor follows the device (seqmem.devices): read from the source with `ast`, every
tensor factory call of ops, mixers, models, analysis and continual names its device, so that
nothing is made on the CPU behind the back of a model on a GPU; and a draw from a generator
(a CPU `torch.Generator`) is made on the CPU, never on another device, and moved after.

A factory call passes when it
- passes `device=` (or `**options` where options is `self.state_options(...)`, or a name bound
  in the same function to it or to a dict literal with a "device" key);
- draws from a `generator=`, on the CPU (no device, or the literal "cpu");
- runs in a constructor (`__init__`): parameters and buffers are made on the CPU and follow
  the module with `.to`; or
- is in a function of ALLOWED, with the reason it is on the CPU.
A new module of these packages is checked as soon as it exists."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "seqmem"
PACKAGES = ("ops", "mixers", "models", "analysis", "continual")
FACTORIES = frozenset({
    "zeros", "ones", "empty", "full", "arange", "range", "eye", "tensor", "as_tensor",
    "scalar_tensor", "empty_strided", "randn", "rand", "randint", "randperm", "normal",
    "bernoulli", "poisson", "multinomial", "linspace", "logspace", "tril_indices",
    "triu_indices", "from_numpy",
})
# (module, function) -> why its factory calls are on the CPU
CONSTRUCTION = "construction: made on the CPU when the module is built; it follows the module"
ALLOWED = {
    ("mixers/parts.py", "dt_bias_init"): CONSTRUCTION,
    ("mixers/parts.py", "A_log_init"): CONSTRUCTION,
    ("mixers/ssm.py", "_log_dt"): CONSTRUCTION,
    ("mixers/lightnet.py", "_init_io"): CONSTRUCTION,
    ("mixers/ssm.py", "_here"): "reads the default device of the context (e.g. meta) itself",
    ("continual/hnet.py", "_torch_init"): "a CPU draw (the generator's device) copied into "
                                          "the parameter",
    ("continual/power_law.py", "power_law_pmf"): "the schedule's pmf: CPU bookkeeping",
    ("continual/rehearsal.py", "add"): "the reservoir's slot counts: CPU bookkeeping",
    ("continual/protocols.py", "permuted"): "task data: batches are made on the CPU and moved",
}


def _modules():
    for pkg in PACKAGES:
        for path in sorted((SRC / pkg).glob("*.py")):
            yield f"{pkg}/{path.name}", ast.parse(path.read_text(), filename=str(path))


def _factory_calls(tree: ast.Module):
    """(call, enclosing function or None) for every `torch.<factory>(...)` of the tree."""
    out = []

    def visit(node, fn):
        for child in ast.iter_child_nodes(node):
            here = child if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) else fn
            if isinstance(child, ast.Call):
                f = child.func
                if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) \
                        and f.value.id == "torch" and f.attr in FACTORIES:
                    out.append((child, fn))
            visit(child, here)

    visit(tree, None)
    return out


def _device_of_dict(node: ast.expr) -> ast.expr | bool | None:
    """What a `**` argument says of the device: the device expression of a dict literal, True
    for a `state_options(...)` call (the module's device), None when it names none."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
            and node.func.attr == "state_options":
        return True
    if isinstance(node, ast.Dict):
        for k, v in zip(node.keys, node.values, strict=True):
            if isinstance(k, ast.Constant) and k.value == "device":
                return v
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
            and node.func.id == "dict":
        for kw in node.keywords:
            if kw.arg == "device":
                return kw.value
    return None


def _bindings(scope: ast.AST) -> dict[str, ast.expr]:
    """name -> value of the plain assignments directly in a function or module."""
    out = {}
    for node in ast.walk(scope):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 \
                and isinstance(node.targets[0], ast.Name):
            out[node.targets[0].id] = node.value
    return out


def _device(call: ast.Call, fn, module_names) -> ast.expr | bool | None:
    """The device a factory call passes: an expression, True (a module's), None (none)."""
    for kw in call.keywords:
        if kw.arg == "device":
            return kw.value
    for kw in call.keywords:
        if kw.arg is None:
            value = kw.value
            if isinstance(value, ast.Name):
                value = (_bindings(fn) if fn is not None else {}).get(value.id) \
                    or module_names.get(value.id)
            if value is not None:
                found = _device_of_dict(value)
                if found is not None:
                    return found
    return None


def _is_cpu(device) -> bool:
    return isinstance(device, ast.Constant) and device.value == "cpu"


def _violations(rel: str, tree: ast.Module) -> list[str]:
    module_names = {k: v for k, v in _bindings(tree).items()}
    bad = []
    for call, fn in _factory_calls(tree):
        name = fn.name if fn is not None else "<module>"
        where = f"{rel}:{call.lineno} ({name}) {ast.unparse(call)[:80]}"
        device = _device(call, fn, module_names)
        if any(kw.arg == "generator" for kw in call.keywords):
            if device is not None and not _is_cpu(device):
                bad.append(f"{where}: a generator draw on another device than the CPU (the "
                           f"generator is a CPU one: draw on the CPU, then .to(device))")
            continue
        if device is not None or name == "__init__" or (rel, name) in ALLOWED:
            continue
        bad.append(f"{where}: no device= (pass the device of its inputs or module, or use "
                   f"x.new_* / *_like)")
    return bad


def test_every_factory_call_names_its_device():
    bad = [v for rel, tree in _modules() for v in _violations(rel, tree)]
    assert not bad, "tensors made without a device:\n" + "\n".join(bad)


def test_the_allow_list_names_only_functions_that_exist():
    have = {(rel, node.name) for rel, tree in _modules() for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef)}
    assert set(ALLOWED) <= have, sorted(set(ALLOWED) - have)


@pytest.mark.parametrize("source, expected", [
    ("def f(x):\n    return torch.zeros(3)\n", 1),
    ("def f(x):\n    return torch.zeros(3, device=x.device)\n", 0),
    ("def f(self, device, dtype):\n    kw = self.state_options(device, dtype)\n"
     "    return torch.zeros(3, **kw)\n", 0),
    ("def f(self, g, device, dtype):\n    kw = self.state_options(device, dtype)\n"
     "    return torch.rand(3, generator=g, **kw)\n", 1),
    ("def f(g, x):\n    return torch.randn(3, generator=g, device=x.device)\n", 1),
    ("def f(g, x):\n    return torch.randn(3, generator=g).to(x)\n", 0),
    ("DRAW = {'device': 'cpu'}\ndef f(g):\n    return torch.randn(3, generator=g, **DRAW)\n", 0),
    ("class M:\n    def __init__(self):\n        self.w = torch.empty(3)\n", 0),
    ("def f(x):\n    return x.new_zeros(3) + torch.zeros_like(x)\n", 0),
])
def test_the_check_refuses_what_it_should(source, expected):
    """The check itself, on small sources: a call it must refuse is refused."""
    assert len(_violations("ops/example.py", ast.parse(source))) == expected
