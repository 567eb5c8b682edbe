"The package's shape: a strict one-way import order, rooms of a readable size, and nbdev-sized notebook cells."
import ast
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PKG, NBS = REPO / 'mrrec', REPO / 'nbs'

# Lowest first: a module may import only modules before it (lazy imports inside functions count too).
# fakes sits beside the LLM layer and is imported by tests and notebook test cells only, never by library code.
ORDER = ('core', 'text', 'metrics', 'readers', 'synthc4', 'data', 'llm', 'backends', 'embed', 'fakes',
         'local_memory', 'global_memory', 'search', 'search_bench', 'agent', 'experiments', 'warmstart', 'rl_setup',
         'rl', 'ablations', 'contribution', 'eval', 'efficiency', 'collab_memory', 'memrec')
GENERATED = {'__init__', '_modidx'}
MAX_MODULE_LINES, MAX_EXPORT_CELL_LINES, MAX_LINE_CHARS = 800, 60, 120


def package_imports(path: Path) -> set[str]:
    "The mrrec modules that `path` imports anywhere (top level or inside a function), by their short names."
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding='utf-8'))):
        if isinstance(node, ast.ImportFrom):
            mod = node.module or ''
            if node.level == 1: found.add(mod.split('.')[0] if mod else '')
            elif mod.startswith('mrrec.'): found.add(mod.split('.')[1])
            elif mod == 'mrrec': found.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name.split('.')[1] for a in node.names if a.name.startswith('mrrec.'))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and 'from mrrec.' in node.value:
            # code run in a subprocess (`python -c "from mrrec.x import ..."`) is an import too
            found.update(part.split()[0].split('.')[0] for part in node.value.split('from mrrec.')[1:])
    return found - {''}


def test_every_module_has_a_place_in_the_order():
    modules = {p.stem for p in PKG.glob('*.py')} - GENERATED
    assert modules == set(ORDER), f"not placed: {sorted(modules - set(ORDER))}; gone: {sorted(set(ORDER) - modules)}"


@pytest.mark.parametrize('module', ORDER)
def test_imports_run_one_way(module):
    below = set(ORDER[:ORDER.index(module)]) - ({'fakes'} if module != 'fakes' else set())
    back = package_imports(PKG / f'{module}.py') - below - {module}
    assert not back, f"mrrec/{module}.py imports {sorted(back)}, which are not below it in {ORDER}"


def test_the_import_parser_sees_lazy_and_relative_imports(tmp_path):
    p = tmp_path / 'm.py'
    p.write_text("from .core import x\ndef f():\n    from mrrec.eval import y\n    import mrrec.rl\n"
                 "code = 'import json; from mrrec.search import _bench_child'\n")
    assert package_imports(p) == {'core', 'eval', 'rl', 'search'}


@pytest.mark.parametrize('module', ORDER)
def test_no_module_is_a_god_module(module):
    n = len((PKG / f'{module}.py').read_text(encoding='utf-8').splitlines())
    assert n <= MAX_MODULE_LINES, f"mrrec/{module}.py has {n} lines (at most {MAX_MODULE_LINES})"


def notebook_code_cells(path: Path):
    for i, cell in enumerate(json.loads(path.read_text(encoding='utf-8'))['cells']):
        if cell['cell_type'] == 'code': yield i, ''.join(cell['source'])


@pytest.mark.parametrize('nb', sorted(p.name for p in NBS.glob('*.ipynb')))
def test_notebook_cells_are_nbdev_sized(nb):
    problems = []
    for i, src in notebook_code_cells(NBS / nb):
        lines = src.splitlines()
        if lines and lines[0].replace(' ', '').startswith('#|export') and len(lines) > MAX_EXPORT_CELL_LINES:
            problems.append(f"cell {i}: an export cell of {len(lines)} lines")
        problems += [f"cell {i} line {j + 1}: {len(l)} characters" for j, l in enumerate(lines) if len(l) > MAX_LINE_CHARS]
    assert not problems, f"{nb}: " + '; '.join(problems[:10]) + (f" (+{len(problems) - 10} more)" if len(problems) > 10 else '')


def test_index_notebook_is_the_readme():
    "settings.ini names index.ipynb as the README's notebook: its markdown is README.md, word for word."
    cells = json.loads((NBS / 'index.ipynb').read_text(encoding='utf-8'))['cells']
    text = '\n\n'.join(''.join(c['source']).strip() for c in cells if c['cell_type'] == 'markdown')
    assert text.strip() == (REPO / 'README.md').read_text(encoding='utf-8').strip(), \
        "nbs/index.ipynb and README.md differ: edit index.ipynb and run `make readme`"
