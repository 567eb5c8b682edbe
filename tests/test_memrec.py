"MemRec (mrrec.collab_memory, mrrec.memrec) on SynthC4 data through the data stage, with the package's fakes."
import dataclasses
import json
import re

import numpy as np
import pandas as pd
import pytest

from mrrec.collab_memory import MemRecConfig, build_graph, curate, neighbour_candidates
from mrrec.core import load_profile, start_run
from mrrec.data import prepare_data
from mrrec.fakes import HashEmbedder, ScriptedLLM
from mrrec.memrec import memrec_stage, memrec_tables, run_memrec
from mrrec.text import content_words


def bundle_with(tmp_path, strength: float):
    prof = load_profile('ci')
    data = {**prof.tables['data'], 'n_items': 1500, 'n_queries': 120, 'collab_strength': strength}
    prof = dataclasses.replace(prof, tables={**prof.tables, 'data': data})
    run = start_run(prof, tmp_path / f'run-{strength}')
    return run, prepare_data(run, progress=False)


def lexical_reasoner(conv):
    """A stand-in LLMRec that reads its context: candidates by the words they share with the request, then with the
    rest of the context; other prompts (rules, facets, updates) get no JSON, so they take their fallbacks."""
    text = conv[-1]['content']
    if 'Candidates:' not in text: return 'no JSON here'
    head, cands = text.split('Candidates:', 1)
    request, context = re.match(r'A user asks: "(.*?)"\n(.*)', head, re.S).groups()
    q, c = set(content_words(request)), set(content_words(context))
    lines = re.findall(r'^(\d+)\. (.*)$', cands, re.M)
    score = {int(n): 100 * len(set(content_words(t)) & q) + len(set(content_words(t)) & c) for n, t in lines}
    return json.dumps({'ranking': sorted(score, key=lambda n: (-score[n], n))})


@pytest.fixture(scope='module')
def collab(tmp_path_factory):
    return bundle_with(tmp_path_factory.mktemp('memrec'), 0.6)


def test_curated_neighbours_share_the_users_taste(collab):
    run, b = collab
    prefs = [json.loads(l) for l in (run.data / 'synthc4' / 'latent_preferences.jsonl').read_text().splitlines()]
    cluster = {p['user_id']: p['taste_cluster'] for p in prefs}
    g = build_graph(b.histories)
    users = [u for u in b.split('test')['user_id'] if cluster[u] >= 0][:20]
    same = []
    for u in users:
        picked = curate(neighbour_candidates(g, u), MemRecConfig(), 'heuristic')
        nb = [n[2:] for n in picked['node'] if n.startswith('U:')]
        same.append(np.mean([cluster[v] == cluster[u] for v in nb]) if nb else 0.0)
    assert np.mean(same) > 0.5, same


def test_memrec_beats_the_isolated_agent_when_neighbours_carry_signal(collab, tmp_path):
    run, b = collab
    q = b.split('test').head(60)
    cfg = MemRecConfig(k_sweep=(4, 16), density_steps=(0.5, 1.0))
    llm = ScriptedLLM(lexical_reasoner)
    out = run_memrec(llm, HashEmbedder(), q, b.items, b.histories, tmp_path / 'store', cfg, seed=0)
    tabs = memrec_tables(out, n_boot=500)
    hit1 = tabs['M1'][tabs['M1']['metric'] == 'Hit@1'].set_index('setting')['value']
    assert hit1['memrec'] > hit1['isolated'], hit1
    assert tabs['M1']['verdict'].iloc[0] == 'holds', tabs['M1'].iloc[0]
    # every LLM call that is not a ranking was a counted format failure with its fallback, and nothing crashed
    assert out['rules']['format_failures'] == out['rules']['llm_calls']
    assert not out['warmup']['format_ok'].any() and (out['warmup']['llm_calls'] == 1).all()
    cost = tabs['M4_cost'].set_index('what')
    assert cost.loc['request: memrec', 'llm_calls'] == 2 and cost.loc['Stage W update', 'llm_calls'] == 1
    assert (tabs['M4_density']['llm_calls_per_update'] == 1).all()


def test_without_the_signal_memrec_gains_nothing_over_the_isolated_agent(collab, tmp_path):
    "The same reasoner on the same-sized data with collab_strength 0: the neighbourhood's edge is gone."
    edge = {}
    for strength, (run, b) in ((0.6, collab), (0.0, bundle_with(tmp_path, 0.0))):
        out = run_memrec(ScriptedLLM(lexical_reasoner), HashEmbedder(), b.split('test').head(60), b.items,
                         b.histories, tmp_path / f'store-{strength}', MemRecConfig(k_sweep=(16,), density_steps=(1.0,)))
        hit1 = memrec_tables(out, n_boot=200)['M1'].query("metric == 'Hit@1'").set_index('setting')['value']
        edge[strength] = hit1['memrec'] - hit1['isolated']
    assert edge[0.0] < 0.05 < 0.1 < edge[0.6], edge


def lexical_scorer(conv, answer):
    "A stand-in for `LLM.score`: the share of the answer's words that the prompt (request and context) holds."
    words = set(content_words(answer))
    return len(words & set(content_words(conv[-1]['content']))) / max(len(words), 1)


def test_the_stage_is_off_unless_the_profile_turns_it_on(collab):
    run, _ = collab
    prof = run.profile
    off = dataclasses.replace(prof, tables={**prof.tables, 'memrec': {**prof.tables['memrec'], 'enabled': False}})
    run = dataclasses.replace(run, profile=off)
    assert memrec_stage(run) == {}
    assert not list(run.tables.glob('memrec_*'))


def test_the_stage_on_writes_m1_to_m4(tmp_path):
    "[memrec] enabled on the data stage's queries, and on the InstructRec files; the fakes answer."
    prof = load_profile('ci')
    for data in ('run', 'instructrec', 'synthc4_collab'):
        memrec = {**prof.tables['memrec'], 'enabled': True, 'data': data, 'queries': 3, 'k_sweep': [16],
                  'ranking': 'likelihood' if data == 'synthc4_collab' else 'generate', 't1_row': False,
                  'instructrec_requests': 'data/samples/instructrec/booksAll_recagent.jsonl',
                  'instructrec_items': 'data/samples/instructrec/combined_books_asin_mapping.csv'}
        if data == 'instructrec': memrec.update(n_negatives=4, min_users=1, min_items=2)
        run = start_run(dataclasses.replace(prof, tables={**prof.tables, 'memrec': memrec}), tmp_path / data)
        if data == 'run': prepare_data(run, progress=False)
        tabs = memrec_stage(run, ScriptedLLM(lexical_reasoner, scorer=lexical_scorer), HashEmbedder())
        assert set(tabs) == {'M1', 'M2', 'M3', 'M4_cost', 'M4_density'}
        # the clustered SynthC4 gets MR.Rec's local memory built for its requesting users; the run's has none here
        memory = tabs['M1']['isolated_memory'].iloc[0]
        built = data == 'synthc4_collab'
        assert (memory == 'MR.Rec local memory (3 of 3 users)') if built else memory.startswith('none')
        assert tabs['M1']['queries'].eq(3).all() and tabs['M1']['llmrec_ranking'].eq(memrec['ranking']).all()
        assert {p.name for p in run.tables.glob('memrec_*.csv')} == {f'memrec_{n}.csv' for n in
                                                                     ('m1', 'm2', 'm3', 'm4_cost', 'm4_density')}
    bad = {**prof.tables['memrec'], 'enabled': True, 'data': 'instructrec', 'instructrec_requests': 'nowhere.pkl'}
    run = start_run(dataclasses.replace(prof, tables={**prof.tables, 'memrec': bad}), tmp_path / 'missing')
    with pytest.raises(FileNotFoundError, match='nowhere.pkl'): memrec_stage(run, ScriptedLLM(lexical_reasoner))


def test_memrec_reads_instructrec_as_it_reads_synthc4(tmp_path):
    "The InstructRec reader's frames go straight into run_memrec (the samples: 3 users, 12 items, no overlaps)."
    from mrrec.data import data_path
    from mrrec.readers import read_instructrec
    d = data_path('data/samples/instructrec')
    ir = read_instructrec(d / 'booksAll_recagent.jsonl', d / 'combined_books_asin_mapping.csv')
    cfg = MemRecConfig(k=4, min_users=1, min_items=2, n_negatives=4, k_sweep=(4,), density_steps=(1.0,))
    out = run_memrec(ScriptedLLM(lexical_reasoner), HashEmbedder(), ir.requests, ir.items, ir.histories,
                     tmp_path / 'store', cfg)
    assert set(out['ranks']['rank']) <= set(range(1, 6))
    assert len(memrec_tables(out, n_boot=50)['M1']) == 4 * 8
