"""The GPU smoke script (scripts/gpu_smoke.py, `make gpu-smoke`; issue 13 item 7): without a GPU it says so, writes its
report naming what it skipped and the packages it imported, and exits 0; its checks run on the CPU too (the GRPO
check, ~2 minutes on a CPU, is left to tests/test_rl.py and tests/test_rl_setup.py, which run the same code)."""
import configparser, importlib.util, shlex, subprocess, sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / 'scripts' / 'gpu_smoke.py'


def smoke():
    spec = importlib.util.spec_from_file_location('gpu_smoke', SCRIPT)
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod


@pytest.mark.skipif(torch.cuda.is_available(), reason='this machine has a GPU: make gpu-smoke runs the checks')
def test_without_a_gpu_it_says_so_and_exits_0(tmp_path):
    r = subprocess.run([sys.executable, str(SCRIPT), '--out', str(tmp_path / 'smoke')], capture_output=True,
                       text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith('no GPU') and 'no GPU: the checks need a CUDA device' in r.stdout
    md = (tmp_path / 'smoke' / 'gpu_smoke.md').read_text()
    assert md.startswith('# GPU smoke test: no GPU, nothing run')
    for name in ('torch', 'vllm', 'deepspeed', 'faiss'): assert f'- {name}: ' in md    # each is imported (or says why not)
    assert 'need the network' in md and 'DeepSpeed ZeRO-3' in md                        # the skips, with their reasons


def test_the_checks_run_on_the_cpu(tmp_path):
    g = smoke()
    tok = g.toy_tokenizer()
    folder = tmp_path / 'toy'
    g.tiny_policy(tok, 'cpu').save_pretrained(folder); tok.save_pretrained(folder)
    assert 'rounds away' in g.check_bf16('cpu', tok, folder)
    assert "protocol 'chat_tools'" in g.check_chat_tools('cpu', tok, folder)
    assert 'same text' in g.check_kv_cache('cpu', tok, folder)
    assert '5,000 x 384' in g.check_pool_search('cpu', tok, folder, pool=5000)
    report = {'verdict': 'x', 'device_line': 'cpu', 'packages': g.package_versions(), 'skipped': g.SKIPPED,
              'checks': [{'check': 'bf16', 'status': 'ok', 'seconds': 0.1, 'detail': 'fine'}]}
    assert '| bf16 | ok | 0.1 | fine |' in g.write_report(tmp_path / 'out', report).read_text()


def test_the_gpu_extra_pins_what_the_resolver_agreed_on():
    "settings.ini's [gpu] extra: vllm's exact torch pin is the project's torch (scripts/check_gpu_extra.sh resolves it)."
    cfg = configparser.ConfigParser(delimiters=['=']); cfg.read(REPO / 'settings.ini')
    gpu = dict(r.split('==') for r in shlex.split(cfg['DEFAULT']['gpu_requirements']))
    base = {r.split('==')[0]: r.split('==')[1] for r in shlex.split(cfg['DEFAULT']['requirements']) if '==' in r}
    assert set(gpu) == {'vllm', 'deepspeed'}
    assert (gpu['vllm'], base['torch']) == ('0.30.0', '2.13.0')     # vllm 0.30.0 declares torch==2.13.0
    assert 'gpu_requirements' in (REPO / 'setup.py').read_text()
