"""Evaluation and efficiency stages (mrrec.eval, mrrec.efficiency): the paper numbers ship in the wheel, the CLI
commands run end to end on a toy run folder in a subprocess, malformed inputs fail naming the file, and the tables
agree with a direct computation on random trajectories."""
import json, os, shutil, subprocess, sys, zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mrrec.core import REPO_DIR, paper_numbers, start_run, write_json, write_jsonl, write_parquet
from mrrec.eval import (EvalConfig, GLOBAL_HEADING, contribution_inputs, experiment_table,
                        heuristic_contribution, llm_contribution, read_reward_logs, t3_table)
from mrrec.experiments import experiment_specs, read_trajectories
from mrrec.fakes import ScriptedLLM
from mrrec.metrics import ndcg_at_k, recall_at_k

PAPER_FILES = ('README.md', 'table1_overall.csv', 'table2_local_memory.csv', 'table3_memory_contribution.csv',
               'table4_indexing.csv', 'table4_token_efficiency.csv', 'table5_dataset.csv')


def test_paper_numbers_ship_in_the_wheel(tmp_path):
    "A wheel built from the checkout's packaging files carries mrrec/paper_numbers/ (MANIFEST.in + include_package_data)."
    src = tmp_path / 'src'
    src.mkdir()
    for f in ('setup.py', 'settings.ini', 'README.md', 'MANIFEST.in', 'pyproject.toml'): shutil.copy(REPO_DIR / f, src / f)
    shutil.copytree(REPO_DIR / 'profiles', src / 'profiles')
    shutil.copytree(REPO_DIR / 'mrrec', src / 'mrrec', ignore=shutil.ignore_patterns('__pycache__'))
    out = subprocess.run([sys.executable, '-m', 'pip', 'wheel', '-q', '--no-deps', '--no-build-isolation', '.', '-w', str(tmp_path / 'dist')],
                         cwd=src, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    names = zipfile.ZipFile(next((tmp_path / 'dist').glob('mrrec-*.whl'))).namelist()
    assert {f'mrrec/paper_numbers/{f}' for f in PAPER_FILES} <= set(names)


def test_paper_numbers_are_the_shared_transcription():
    shared = Path('/work/shared/paper_numbers')
    if not shared.is_dir(): pytest.skip('no shared transcription on this machine')
    for f in PAPER_FILES:
        assert (REPO_DIR / 'mrrec' / 'paper_numbers' / f).read_bytes() == (shared / f).read_bytes(), f


SETTINGS = ('query_dense', 'query_bm25', 'llm_none', 'llm_naive', 'llm_static', 'mrrec', 'mrrec_wo_local', 'mrrec_records',
            'mrrec_patterns', 'mrrec_profile', 'mrrec_wo_global', 'mrrec_wo_reasoning', 'mrrec_bm25', 'mrrec_k1', 'mrrec_k5', 'mrrec_k10',
            'mrrec_teacher')


def _random_trajectories(seed=0, n=60):
    "Records as 05_retrieval writes them, per setting."
    rng = np.random.default_rng(seed)
    out = {}
    for s in SETTINGS:
        out[s] = [{'setting': s, 'method': 'query' if s.startswith('query') else 'agent', 'policy': 'teacher' if s == 'mrrec_teacher' else 'base', 'retriever': 'dense',
                   'qid': q, 'category': ['Home', 'Tools', 'Clothing'][q % 3], 'query': 'a warm cap', 'target_item_id': f'i{q % 5}',
                   'target_rank': int(rng.choice([0, rng.integers(1, 1001)])), 'memory_tokens': int(rng.integers(20, 400)),
                   'has_local_memory': True, 'profile': 'a merino wool cap, budget', 'memory_text': '[u/pattern/c/0] likes merino wool',
                   'messages': [{'role': 'user', 'content': f'Request: a warm cap\nScenario: Home\n{GLOBAL_HEADING}\n- Material: merino or cotton'}]}
                  for q in range(n)]
    return out


def _write_trajectories(folder, recs):
    for s, r in recs.items():
        write_jsonl(r, folder / f'{s}.jsonl')
        write_json({'signature': 'test', 'setting': {'name': s}, 'summary': {'setting': s, 'queries': len(r)}}, folder / f'{s}.json')


def test_experiment_table_matches_direct_computation(tmp_path):
    _write_trajectories(tmp_path, _random_trajectories(1))
    traj = read_trajectories(tmp_path)
    specs = experiment_specs('T1', set(traj.setting))
    t = experiment_table(traj, specs, paper_numbers('table1_overall'), per_category=True)
    for spec in specs:
        if not spec.setting or spec.setting not in set(traj.setting): continue   # mrrec_bc: no warm start here
        sub = traj[traj.setting == spec.setting]
        for cat, g in [('All', sub), *sub.groupby('category')]:
            row = t[(t['setting'] == spec.setting) & (t['category'] == cat)].iloc[0]
            assert row['queries'] == len(g) == (60 if cat == 'All' else 20)
            assert row['R@100'] == pytest.approx(recall_at_k(g['target_rank'], 100).mean())
            assert row['N@10'] == pytest.approx(ndcg_at_k(g['target_rank'], 10).mean())
    # paper numbers sit beside ours for the categories the paper reports
    mr = t[t['paper row'] == 'MR.Rec'].set_index('category')
    assert mr.loc['Tools', 'R@100 (paper)'] == 0.333 and mr.loc['All', 'N@10 (paper)'] == 0.084


def test_toy_run_end_to_end_with_cli(tmp_path):
    run = start_run('ci', tmp_path / 'run')
    write_json({'synthetic': True}, run.data / 'data_manifest.json')
    write_parquet(pd.DataFrame({'item_id': [f'i{n}' for n in range(5)], 'category': 'Home', 'metadata': ['merino wool cap'] * 5}), run.data / 'items.parquet')
    write_parquet(pd.DataFrame({'qid': [str(q) for q in range(30)], 'query': 'a warm cap', 'item_id': 'i0', 'user_id': 'u', 'category': 'Home', 'split': 'test'}),
                  run.data / 'queries.parquet')
    write_parquet(pd.DataFrame({'qid': ['0'], 'user_id': ['u']}), run.data / 'histories.parquet')
    _write_trajectories(run.trajectories, _random_trajectories(2, n=30))
    env = {**os.environ, 'HF_HUB_OFFLINE': '1', 'MPLBACKEND': 'Agg'}
    r = subprocess.run([sys.executable, '-c', 'import sys; from mrrec.eval import eval_main; sys.exit(eval_main(sys.argv[1:]))',
                        '--profile', 'ci', '--out', str(run.root), '--no-judge'], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    for name in ('t1_overall', 't1_by_category', 't2_local_memory', 'f3_ablation', 't3_memory_contribution',
                 'f4_reward_summary', 'f5_retrievers', 'f6_memory_top_k'):
        assert (run.tables / f'{name}.md').is_file(), name
    t1 = pd.read_csv(run.tables / 't1_overall.csv')
    ours = t1[t1['setting'].notna() & (t1['queries'] > 0)]   # mrrec_bc's row says it needs the warm start
    assert len(ours) == 6 and (ours['queries'] == 30).all() and ours['data'].eq('SynthC4 (synthetic)').all()
    assert pd.read_csv(run.tables / 'f4_reward_summary.csv')['note'].str.contains('has not run').all()
    t3 = pd.read_csv(run.tables / 't3_memory_contribution.csv')
    assert t3.query("judge == 'heuristic'")['queries'].eq(30).all() and t3.query("judge == 'llm'")['note'].str.contains('judge off').all()
    r = subprocess.run([sys.executable, '-c', 'import sys; from mrrec.efficiency import efficiency_main; sys.exit(efficiency_main(sys.argv[1:]))',
                        '--profile', 'ci', '--out', str(run.root), '--no-scaling'], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    eff = pd.read_csv(run.tables / 't4_token_efficiency.csv').set_index('memory setting')
    assert eff.loc['MR.Rec', 'efficiency'] == pytest.approx(100 * eff.loc['MR.Rec', 'R@100'] / eff.loc['MR.Rec', 'avg_memory_tokens'])
    assert pd.read_csv(run.tables / 't4_indexing.csv').set_index('quantity').loc['llm', 'local (this run)'] == '(not built)'


def test_malformed_trajectory_stops_the_cli_naming_the_file(tmp_path):
    run = start_run('ci', tmp_path / 'run')
    recs = _random_trajectories(3, n=3)
    recs['llm_none'][1]['target_rank'] = 'first'
    _write_trajectories(run.trajectories, recs)
    r = subprocess.run([sys.executable, '-c', 'import sys; from mrrec.eval import eval_main; sys.exit(eval_main(sys.argv[1:]))',
                        '--profile', 'ci', '--out', str(run.root), '--no-judge'], capture_output=True, text=True,
                       env={**os.environ, 'HF_HUB_OFFLINE': '1'})
    assert r.returncode != 0 and "llm_none.jsonl:2: field 'target_rank'" in r.stderr, r.stderr[-2000:]


def test_malformed_reward_log_names_the_file(tmp_path):
    (tmp_path / 'rl_instruct.csv').write_text('variant,split,step\ninstruct,train,x\n')
    with pytest.raises(ValueError, match='rl_instruct.csv: reward log lacks column'):
        read_reward_logs(tmp_path)
    pd.DataFrame({'variant': ['instruct'], 'split': ['train'], 'step': ['x'], 'format_reward': [0], 'memory_reward': [0],
                  'rec_reward': [0], 'total_reward': [0], 'recall': [0]}).to_csv(tmp_path / 'rl_instruct.csv', index=False)
    with pytest.raises(ValueError, match=r"rl_instruct.csv: line 2: field 'step'"):
        read_reward_logs(tmp_path)


def test_unreadable_judge_answers_are_counted_not_guessed():
    items = pd.DataFrame({'item_id': ['i0'], 'metadata': ['merino wool cap']})
    traj = pd.DataFrame([{**r, 'qid': str(r['qid']), 'item_id': 'i0'} for r in _random_trajectories(4, n=4)['mrrec']])
    inputs = contribution_inputs(traj, items)
    llm, detail = llm_contribution(inputs, ScriptedLLM(lambda conv: 'hmm, maybe'), EvalConfig(judge_queries=0))
    assert (llm['queries'] == 0).all() and (llm['failures'] == 4).all() and llm['value'].isna().all()
    assert len(detail) == 16 + 4 and (detail['how'] == 'failed').all()
    assert (llm['controls'] == '0/2 right').all()
    t3 = t3_table(heuristic_contribution(inputs), llm)
    assert (t3.query("judge == 'llm'")['note'] == 'no answer could be read').all()
    assert t3.query("judge == 'heuristic'")['value'].tolist() == [1.0, 1.0, 1.0, 1.0]
