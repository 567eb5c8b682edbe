"""Package-level checks that are not tied to one notebook's demonstration."""
import subprocess, sys
from mrrec.core import load_profile, main

def test_every_profile_loads():
    for name in ('ci', 'demo', 'cpu', 'paper'):
        assert load_profile(name).name == name

def test_console_script_lists_commands():
    out = subprocess.run([sys.executable, '-c', 'from mrrec.core import main; raise SystemExit(main(["--help"]))'],
                         capture_output=True, text=True, check=True).stdout
    assert 'synth' in out

def test_commands_point_at_their_modules():
    from mrrec.core import COMMANDS
    targets = {name: target for name, (target, _) in COMMANDS.items()}
    assert targets['synth'] == 'mrrec.synthc4:synth_main'
    assert targets['retrieve'] == 'mrrec.experiments:retrieve_main'
    assert targets['bench retrieval'] == 'mrrec.search_bench:bench_retrieval_main'
    assert targets['bench llm'] == 'mrrec.backends:bench_llm_main'

def test_stage_notebooks_are_the_numbered_notebooks_with_a_parameters_cell(tmp_path):
    import json
    from mrrec.core import NBS_DIR, stage_notebooks
    def nb(name, tags):
        cells = [{'cell_type': 'code', 'metadata': {'tags': tags}, 'source': 'profile = "ci"', 'outputs': [],
                  'execution_count': None}]
        (tmp_path / name).write_text(json.dumps({'cells': cells, 'metadata': {}, 'nbformat': 4, 'nbformat_minor': 5}))
    for name, tags in (('00_core.ipynb', ['parameters']), ('01_data.ipynb', ['parameters']), ('01b_synthc4.ipynb', []),
                       ('02b_backends.ipynb', ['parameters']), ('02d_fakes.ipynb', ['other']),
                       ('09_extra.ipynb', ['parameters']), ('index.ipynb', ['parameters'])):
        nb(name, tags)
    assert [p.name for p in stage_notebooks(tmp_path)] == ['01_data.ipynb', '02b_backends.ipynb', '09_extra.ipynb']
    real = [p.name for p in stage_notebooks(NBS_DIR)]
    assert real[0] == '01_data.ipynb' and '01b_synthc4.ipynb' not in real and not any(n.startswith('00') for n in real)
