"""Item search checks that are better outside the notebook: wider bm25s vs rank-bm25 agreement, persistence, the
profile table, and the benchmark command end to end (subprocesses)."""
import numpy as np
import pandas as pd
import pytest
from mrrec.core import ConfigError, load_profile, read_json
from mrrec.search import (BM25Index, DenseIndex, RankBM25Index, RetrievalConfig, SearchResult, make_retriever,
                          rankings_match, select_top_k, target_ranks)
from mrrec.search_bench import bench_retrieval_main


def _corpus(seed, n_items=300, n_queries=40, n_words=150):
    rng = np.random.default_rng(seed)
    words = [f"t{j}" for j in range(n_words)]
    p = 1 / np.arange(1, n_words + 1) ** 1.2; p /= p.sum()
    docs = [' '.join(rng.choice(words, rng.integers(1, 30), p=p)) for _ in range(n_items)]
    docs[3] = docs[7] = docs[11]                       # exact duplicates: equal scores, ordered by row
    docs[5] = "the and of"                             # an item with no indexable word
    queries = [' '.join(rng.choice(words, rng.integers(1, 7), p=p)) for _ in range(n_queries)] + ["zzz unknown", ""]
    return docs, queries


@pytest.mark.parametrize('seed', [1, 2])
@pytest.mark.parametrize('variant,params', [('okapi', {}), ('okapi', {'k1': 2.0, 'b': 1.0}), ('okapi', {'b': 0.0}),
                                            ('bm25+', {}), ('bm25+', {'k1': 0.5, 'b': 0.3, 'delta': 0.25})])
@pytest.mark.parametrize('k', [1, 7, 400])
def test_bm25s_ranks_like_rank_bm25(seed, variant, params, k):
    docs, queries = _corpus(seed)
    fast = BM25Index(variant, **params).index(docs).search(queries, k=k)
    ref = RankBM25Index(variant, **params).index(docs).search(queries, k=k)
    ok = rankings_match(fast, ref)
    assert ok.all(), f"queries that rank differently: {np.flatnonzero(~ok).tolist()}"
    hit = fast.rows >= 0
    np.testing.assert_array_equal(hit, ref.rows >= 0)
    np.testing.assert_allclose(fast.scores[hit], ref.scores[hit], rtol=1e-5)
    assert not hit[-2:].any()                          # unknown words / empty query: nothing retrieved


def test_duplicates_tie_by_row_and_cut_keeps_lower_rows():
    docs = ["red shoe"] * 5 + ["blue hat"] * 20
    res = BM25Index().index(docs).search(["red shoe"], k=3)
    assert res.rows[0].tolist() == [0, 1, 2] and len(set(res.scores[0].tolist())) == 1
    ref = RankBM25Index().index(docs).search(["red shoe"], k=3)
    assert ref.rows[0].tolist() == [0, 1, 2]


def test_each_query_is_scored_on_its_own():
    docs, queries = _corpus(3, n_items=500, n_queries=200)
    idx = BM25Index('bm25+').index(docs)
    together = idx.search(queries, k=50)
    alone = SearchResult.concat([idx.search([q], k=50) for q in queries[::-1]])[::-1]
    np.testing.assert_array_equal(together.rows, alone.rows)
    np.testing.assert_array_equal(together.scores, alone.scores)


def test_bm25_save_load_mmap(tmp_path):
    docs, queries = _corpus(4)
    idx = BM25Index('bm25+', delta=0.7).index(docs, item_ids=[f"it{i}" for i in range(len(docs))])
    back = BM25Index.load(idx.save(tmp_path / 'bm25'), mmap=True)
    assert (back.variant, back.delta, back.item_ids[4]) == ('bm25+', 0.7, 'it4')
    a, b = idx.search(queries, k=20), back.search(queries, k=20)
    np.testing.assert_array_equal(a.rows, b.rows)
    np.testing.assert_array_equal(a.scores, b.scores)
    idx.save(tmp_path / 'bm25')                        # overwriting an existing index works
    assert not [p for p in tmp_path.iterdir() if p.name.startswith('.')]   # no temporary folder left behind


def _unit(n, d, seed):
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_exact_dense_equals_brute_force_at_depth_1000():
    x, q = _unit(5000, 48, 0), _unit(30, 48, 1)
    res = DenseIndex.build(x, 'flat', batch_size=7).search_vectors(q, k=1000)
    s = q @ x.T
    for i in range(len(q)):
        rows, scores = select_top_k(np.arange(len(x)), s[i], 1000)
        # float32 sums in another order may swap near-equal neighbours: compare as rankings with a tolerance
        assert rankings_match(res[i], SearchResult(rows[None], scores[None]), rtol=1e-5, atol=1e-5).all()
    ranks = target_ranks(res, res.rows[:, 499])
    assert (ranks == 500).all()


@pytest.mark.parametrize('kind', ['hnsw', 'ivf'])
def test_ann_save_load_same_results(tmp_path, kind):
    x, q = _unit(4000, 32, 2), _unit(20, 32, 3)
    idx = DenseIndex.build(x, kind, seed=5)
    back = DenseIndex.load(idx.save(tmp_path / kind))
    np.testing.assert_array_equal(idx.search_vectors(q, k=50).rows, back.search_vectors(q, k=50).rows)


def test_ivf_is_seeded():
    x, q = _unit(4000, 32, 2), _unit(20, 32, 3)
    a = DenseIndex.build(x, 'ivf', seed=1, threads=1).search_vectors(q, k=30, )
    b = DenseIndex.build(x, 'ivf', seed=1, threads=1).search_vectors(q, k=30)
    np.testing.assert_array_equal(a.rows, b.rows)


def test_profile_table_is_checked(tmp_path):
    for name in ('ci', 'demo', 'cpu', 'paper'):
        cfg = load_profile(name).section(RetrievalConfig)
        assert cfg.top_k == 1000 and cfg.retriever in ('dense', 'bm25')
    bad = tmp_path / 'bad.toml'
    bad.write_text('name = "bad"\nseed = 0\ndescription = "x"\n[retrieval]\nbm25_variant = "bm25l"\n')
    with pytest.raises(ConfigError, match=r"\[retrieval\] bm25_variant: 'bm25l' is not one of"):
        load_profile(bad).section(RetrievalConfig)
    bad.write_text('name = "bad"\nseed = 0\ndescription = "x"\n[retrieval]\ntop_k = "1000"\n')
    with pytest.raises(ConfigError, match="bad.toml"):
        load_profile(bad).section(RetrievalConfig)


def test_registry_builds_the_bm25_pair_alike():
    docs, queries = _corpus(6)
    pool = pd.DataFrame({'item_id': [f"p{i}" for i in range(len(docs))], 'category': 'c', 'metadata': docs})
    cfg = RetrievalConfig(bm25_variant='bm25+')
    a = make_retriever('bm25', pool, cfg).search(queries, k=25)
    b = make_retriever('bm25-rank', pool, cfg).search(queries, k=25)
    assert rankings_match(a, b).all()


def test_benchmark_command_small(tmp_path, capsys):
    out = tmp_path / 'bench.json'
    rc = bench_retrieval_main(['--items', '3000', '--queries', '120', '--compare-items', '2000', '--rank-queries', '6',
                               '--dim', '16', '--quiet', '--json', str(out)])
    assert rc == 0
    figures = read_json(out)
    cmp = figures['compare']
    assert cmp['rank_bm25']['queries'] == 6 and cmp['rank_bm25']['same_ranking'] == 6
    assert cmp['speedup'] > 1
    parts = {p['part']: p for p in figures['parts']}
    assert parts['bm25s']['items'] == 3000 and parts['faiss-flat']['dim'] == 16
    assert all(p['peak_rss_gib'] > 0 and p['search_s'] > 0 for p in parts.values())
    printed = capsys.readouterr().out
    assert 'random L2-normalised float32 vectors' in printed and 'SynthC4 item text and queries (synthetic)' in printed
    with pytest.raises(SystemExit):
        bench_retrieval_main(['--parts', 'nope'])


# ---- the MR.Rec agent (memory tool, protocol, answer parser, settings, trajectories) ----
import json, re
from mrrec.core import load_profile as _load_profile, read_jsonl
from mrrec.data import DataConfig, memory_first
from mrrec.fakes import HashEmbedder, ScriptedLLM
from mrrec.local_memory import LocalMemory, LocalMemoryConfig, build_local_memory
from mrrec.agent import (ANSWER_PREFIX, ANSWER_STATUSES, NO_MEMORY_TEXT, TOOL_CALL_PREFIX, AgentConfig, AgentOptions, MemoryTool,
                         agent_conversation, format_tool_call, lookup_memory, memory_call_aspects, memory_tool_fn,
                         memory_tool_schema, parse_answer, parse_boxed_answer, run_agent, search_text, tool_result_message)
from mrrec.experiments import (Setting, StageContext, read_trajectories, retrieve_main, run_setting, run_settings,
                               settings_registry)


USERS = {'alice': ['merino wool beanie', 'wool hiking socks', 'wool scarf'],
         'bob': ['merino wool beanie deluxe', 'wool wool wool blanket', 'wool gloves'],     # bob's entries match "wool" best
         'carol': ['steel tape measure', 'cordless drill', 'hammer']}


@pytest.fixture(scope='module')
def memory(tmp_path_factory):
    rows = [{'user_id': u, 'item_id': f'{u}-{n}', 'category': 'Clothing', 'timestamp': n, 'rating': 5, 'review_title': 'ok',
             'review_text': f'Love the {v}.', 'item_title': v.title(), 'item_text': f'A {v}.'}
            for u, vals in USERS.items() for n, v in enumerate(vals)]
    root = tmp_path_factory.mktemp('mem') / 'local'
    build_local_memory(pd.DataFrame(rows), None, HashEmbedder(), LocalMemoryConfig(levels=('record',), baselines=('naive',)), root,
                       progress=False)
    return LocalMemory(root, HashEmbedder())


def _owners(entries): return {e['entry_id'].split('/')[0] for e in entries}


@pytest.mark.parametrize('user', ['alice', 'bob', 'carol'])
@pytest.mark.parametrize('k', [1, 3, 10])
def test_memory_tool_returns_only_its_users_entries(memory, user, k):
    tool = MemoryTool(memory, user, k=k)
    text = tool.memory_retrieval_tool('wool wool beanie')             # matches bob's entries best, whoever is bound
    entries = tool.calls[-1]['entries']
    assert _owners(entries) == {user}
    assert len(entries) == min(k, len(USERS[user]))
    assert [l.split(']')[0][1:] for l in text.splitlines()] == [e['entry_id'] for e in entries]
    assert memory_tool_fn(memory, k=k)(user, 'wool wool beanie') == text


def test_batched_lookup_keeps_each_pair_on_its_user(memory):
    users = ['carol', 'alice', 'nobody', 'bob', 'alice']
    found = lookup_memory(memory, users, ['wool'] * len(users), k=2)
    assert [sorted(_owners(f)) for f in found] == [['carol'], ['alice'], [], ['bob'], ['alice']]
    assert MemoryTool(memory, 'nobody').memory_retrieval_tool('wool') == NO_MEMORY_TEXT
    assert MemoryTool(None, 'alice').memory_retrieval_tool('wool') == NO_MEMORY_TEXT


def test_lookup_refuses_an_entry_of_another_user(memory, monkeypatch):
    real = memory.retrieve_many
    def leaky(users, texts, k, levels=None):
        out = real(users, texts, k, levels)
        return [o + real(['bob'], ['wool'], 1, levels)[0] for o in out]     # a store bug: bob's entry leaks into every answer
    monkeypatch.setattr(memory, 'retrieve_many', leaky)
    with pytest.raises(RuntimeError, match="returned entry 'bob/"):
        MemoryTool(memory, 'alice').memory_retrieval_tool('wool')


GOOD = '\\boxed{"ideal_item_profile": "a merino wool beanie", "useful_memory_ids": ["alice/record/clothing/0"]}'

@pytest.mark.parametrize('text,status,profile,salvaged', [
    (GOOD, 'ok', 'a merino wool beanie', None),
    ('Reasoning first.\n' + GOOD + '\nThat is my answer {really}.', 'ok', 'a merino wool beanie', None),     # trailing prose
    ('```\n' + GOOD + '\n```', 'ok', 'a merino wool beanie', None),                                          # fenced
    ('```json\n{"ideal_item_profile": "a wool hat", "useful_memory_ids": []}\n```', 'no_box', None, 'a wool hat'),
    ('\\boxed{"ideal_item_profile": "a {nested} hat", "useful_memory_ids": ["x"], "why": {"a": {"b": "}"}}}', 'ok', 'a {nested} hat', None),
    ('\\boxed{"ideal_item_profile": "a hat"}', 'missing_keys', None, 'a hat'),
    ('\\boxed{"useful_memory_ids": []}', 'missing_keys', None, None),
    ('\\boxed{"ideal_item_profile": ["hat"], "useful_memory_ids": []}', 'bad_types', None, None),
    ('\\boxed{"ideal_item_profile": "a hat", "useful_memory_ids": [', 'unclosed_box', None, 'a hat'),
    ('\\boxed{"ideal_item_profile": "warm, warm, warm, warm wool', 'unclosed_box', None, 'warm wool'),
    ('\\boxed{ideal_item_profile: a hat}', 'bad_json', None, None),
    ('I recommend a wool hat.', 'no_box', None, None),
    ('', 'no_box', None, None),
    (None, 'no_box', None, None),
])
def test_answer_parser(text, status, profile, salvaged):
    a = parse_answer(text)
    assert a.status in ANSWER_STATUSES
    assert (a.status, a.profile, a.salvaged, a.format_ok) == (status, profile, salvaged, status == 'ok')
    assert (parse_boxed_answer(text) is not None) == (status == 'ok')


def test_parse_boxed_answer_keeps_the_rl_contract():
    "The cases the RL stage's own parser was written against (06_rl) give the same answers."
    good = 'I think... \\boxed{"ideal_item_profile": "a wool beanie {warm}", "useful_memory_ids": ["u1-p-0", 7]}'
    assert parse_boxed_answer(good) == {'ideal_item_profile': 'a wool beanie {warm}', 'useful_memory_ids': ['u1-p-0', '7']}
    assert parse_boxed_answer('\\boxed{{"ideal_item_profile": "x", "useful_memory_ids": []}}')['ideal_item_profile'] == 'x'
    for bad in [None, '', 'no box', '\\boxed{"ideal_item_profile": "x"}', '\\boxed{"ideal_item_profile": "x", "useful_memory_ids": []',
                '\\boxed{ideal_item_profile: x, useful_memory_ids: []}', '\\boxed{"ideal_item_profile": 3, "useful_memory_ids": []}',
                '\\boxed{"ideal_item_profile": "x", "useful_memory_ids": "m1"}', good + ' then \\boxed{"ideal_item_profile": "y"}']:
        assert parse_boxed_answer(bad) is None, bad
    assert memory_call_aspects('x ' + format_tool_call('fit, colour')) == 'fit, colour'
    assert tool_result_message('[m] a') == {'role': 'user', 'content': '<tool_response>\n[m] a\n</tool_response>'}
    rl = pytest.importorskip('mrrec.rl')
    if hasattr(rl, 'memory_tool_schema'): assert rl.memory_tool_schema() == memory_tool_schema()


def _reply(conv):
    if conv[-1]['role'] == 'assistant':                  # a partial message to continue: a model that plays along
        start, before = conv[-1]['content'], conv[-2]['content'] or ''
        if start.endswith(TOOL_CALL_PREFIX): return 'wool material"}}\n</tool_call>'
        if 'broken' in before or 'broken' in start: return 'merino wool beanie, merino wool beanie, merino wool beanie'
        ids = re.findall(r'^\[([^\]]+)\]', before, re.M)
        return 'merino wool beanie", "useful_memory_ids": ' + json.dumps(ids) + '}'
    last = conv[-1]['content'] or ''
    if conv[-1]['role'] == 'tool' or last.startswith('<tool_response>'):
        ids = re.findall(r'^\[([^\]]+)\]', last, re.M)
        return '\\boxed' + json.dumps({'ideal_item_profile': 'merino wool beanie', 'useful_memory_ids': ids})
    if 'broken' in last: return '\\boxed{"ideal_item_profile": "merino wool beanie, merino wool beanie, merino wool beanie'
    if 'prose' in last: return 'A hat would be nice.'
    return 'Material matters. ' + format_tool_call('wool material')


POOL = pd.DataFrame({'item_id': [f'i{j}' for j in range(8)], 'category': 'Clothing',
                     'metadata': ['merino wool beanie, warm', 'cotton beanie', 'steel tape measure', 'wool scarf', 'leather gloves',
                                  'fleece jacket', 'rain jacket', 'wool socks']})
QUERIES = pd.DataFrame({'qid': [0, 1, 2, 3], 'user_id': ['alice', 'bob', 'carol', 'nobody'], 'category': 'Clothing',
                        'query': ['a hat for winter', 'prose: a hat for winter', 'broken: a hat', 'a hat for winter'],
                        'item_id': ['i0', 'i0', 'i3', 'i1']})


def evaluation_queries(queries, users):
    "The queries every setting answers: those of users with local memory first (seeded order), then by qid."
    return memory_first(queries, users).sort_values('qid', kind='stable').reset_index(drop=True)


def _ctx(memory, cfg=None, reply=_reply):
    return StageContext(evaluation_queries(QUERIES, memory.users), POOL, memory, None, HashEmbedder(), cfg or AgentConfig(ablation_policy='base'),
                        RetrievalConfig(top_k=5), llm_factory=lambda policy: ScriptedLLM(reply))


def test_agent_fallback_path(memory):
    ctx = _ctx(memory)
    reg = settings_registry(ctx.cfg)
    base, _ = run_setting(reg['query_dense'], ctx)
    recs, summary = run_setting(reg['mrrec'], ctx)
    assert [r['retrieval_source'] for r in recs] == ['profile', 'query', 'query', 'profile']
    assert [r['fallback'] for r in recs] == [None, 'no_box', 'unclosed_box', None]
    for r, b in zip(recs, base):
        if r['retrieval_source'] == 'query': assert (r['search_text'], r['target_rank']) == (b['search_text'], b['target_rank'])
    assert recs[0]['memory_used'] and _owners([{'entry_id': e} for e in recs[0]['memory_ids']]) == {'alice'}
    assert recs[3]['memory_used'] and recs[3]['memory_ids'] == [] and recs[3]['memory_tokens'] == 0   # called, nothing there
    assert summary['searched_query'] == 0.5
    salv, _ = run_setting(reg['mrrec'], _ctx(memory, AgentConfig(ablation_policy='base', salvage_profile=True)))
    assert salv[2]['retrieval_source'] == 'salvaged' and salv[2]['search_text'] == 'merino wool beanie'
    assert search_text(parse_answer('\\boxed{"ideal_item_profile": "", "useful_memory_ids": []}'), 'q') == ('q', 'query', 'empty_profile')


def test_protocols_agree_and_batch_per_turn(memory):
    convs = [agent_conversation(q, 'Clothing', '- Material', tool=True) for q in QUERIES['query']]
    users = QUERIES['user_id'].tolist()
    out = {}
    for proto in ('text', 'chat_tools'):
        llm = ScriptedLLM(_reply, supports_tools=proto == 'chat_tools')
        out[proto] = run_agent(llm, convs, users, memory, AgentOptions(tools=True, protocol=proto))
        assert len(llm.calls) == 2                                       # one call per turn for all queries
        roles = [m['role'] for m in out[proto][0].messages]
        assert roles[-3:] == ['assistant', 'tool' if proto == 'chat_tools' else 'user', 'assistant']
    assert [r.answer for r in out['text']] == [r.answer for r in out['chat_tools']]
    assert [r.memory_ids for r in out['text']] == [r.memory_ids for r in out['chat_tools']]


def test_trajectories_resume_per_setting(memory, tmp_path):
    ctx = _ctx(memory)
    reg = settings_registry(ctx.cfg)
    chosen = [reg[n] for n in ('query_dense', 'mrrec', 'mrrec_wo_local', 'llm_naive', 'mrrec_k1')]
    first = run_settings(ctx, chosen, tmp_path, progress=False)
    assert first['status'].tolist() == ['ran'] * 5
    stamp = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    assert run_settings(ctx, chosen, tmp_path, progress=False)['status'].tolist() == ['skipped'] * 5
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == stamp          # nothing rewritten
    (tmp_path / 'mrrec.json').unlink()                                                 # an interrupted setting: records but no summary
    assert run_settings(ctx, chosen, tmp_path, progress=False)['status'].tolist() == ['skipped', 'ran', 'skipped', 'skipped', 'skipped']
    tr = read_trajectories(tmp_path)
    assert len(tr) == 5 * len(QUERIES) and set(tr['rank']) <= set(range(0, 6))
    k1 = pd.DataFrame(read_jsonl(tmp_path / 'mrrec_k1.jsonl'))
    assert all(len(c['entry_ids']) <= 1 for calls in k1['tool_calls'] for c in calls)
    assert not read_trajectories(tmp_path, ['mrrec_wo_local'])['memory_used'].any()


def test_memory_first_puts_memory_users_first():
    q = pd.DataFrame({'qid': range(10), 'user_id': [f'u{i}' for i in range(10)], 'query': 'q', 'item_id': 'i', 'category': 'c'})
    got = memory_first(q, ['u7', 'u3'], n=4, seed=1)
    assert {'u7', 'u3'} <= set(got.user_id) and len(got) == 4 and got.has_local_memory.tolist() == [True, True, False, False]
    assert got.equals(memory_first(q, ['u7', 'u3'], n=4, seed=1))
    assert len(evaluation_queries(q, [])) == 10


@pytest.mark.parametrize('name', ['ci', 'demo', 'cpu', 'paper'])
def test_profile_agent_tables(name):
    cfg = _load_profile(name).section(AgentConfig)
    assert cfg.memory_top_k == 3 and cfg.max_tool_calls == 1 and tuple(cfg.f6_top_k) == (1, 3, 5, 10)
    assert (_load_profile(name).section(DataConfig).eval_queries == 0) == (name == 'paper') and cfg.salvage_profile == (name != 'paper')
    assert cfg.answer_prefix == (name != 'paper') and (name != 'paper' or not cfg.tool_call_prefix)   # small-model aids only


def test_answer_prefix_is_continued_recorded_and_judged(memory):
    ctx = _ctx(memory, AgentConfig(ablation_policy='base', answer_prefix=True))
    reg = settings_registry(ctx.cfg)
    recs, summary = run_setting(reg['mrrec'], ctx)
    # alice and nobody call the tool and answer in the given box; bob's prose is continued with the prefix; carol's own
    # box is broken (no prefix was needed to start it)
    assert [r['answer_prefix_used'] for r in recs] == [True, True, False, True]
    assert [r['parse_status'] for r in recs] == ['ok', 'ok', 'unclosed_box', 'ok']
    assert all(r['answer_text'].count(ANSWER_PREFIX) == 1 for r in recs if r['answer_prefix_used'])
    assert recs[0]['turns'][-1]['prefix'] == ANSWER_PREFIX and recs[0]['messages'][-1]['content'] == recs[0]['answer_text']
    assert recs[0]['useful_memory_ids'] == recs[0]['memory_ids'] and recs[0]['memory_ids']
    assert recs[1]['answer_text'].startswith('A hat would be nice.\n' + ANSWER_PREFIX) and len(recs[1]['turns']) == 2
    assert summary['answer_prefixed'] == 0.75 and summary['format_ok'] == 0.75
    base, _ = run_setting(reg['llm_none'], ctx)                  # the baselines' answers are begun the same way
    assert all(r['answer_prefix_used'] for r in base)


@pytest.mark.parametrize('continuation,status', [('", "useful_memory_ids": []}', 'empty_profile'),
                                                 ('   ", "useful_memory_ids": ["x"]}', 'empty_profile'),
                                                 ('wool wool wool', 'unclosed_box'), ('a hat"}', 'missing_keys')])
def test_answer_prefix_does_not_pass_a_bad_answer(memory, continuation, status):
    ctx = _ctx(memory, AgentConfig(ablation_policy='base', answer_prefix=True), reply=lambda conv: continuation if conv[-1]['role'] == 'assistant' else 'Hmm.')
    recs, summary = run_setting(settings_registry(ctx.cfg)['mrrec_wo_local'], ctx)
    assert {(r['parse_status'], r['format_ok'], r['retrieval_source']) for r in recs} == {(status, False, 'query')}
    assert summary['format_ok'] == 0.0


def test_tool_call_prefix_makes_every_first_turn_a_call(memory):
    cfg = AgentConfig(ablation_policy='base', answer_prefix=True, tool_call_prefix=True)
    recs, summary = run_setting(settings_registry(cfg)['mrrec'], _ctx(memory, cfg))
    assert summary['tool_called'] == 1.0 and all(r['tool_call_prefix_used'] for r in recs)
    assert all(r['turns'][0]['prefix'] == TOOL_CALL_PREFIX and r['tool_calls'][0]['aspects'] == 'wool material' for r in recs)
    wo_local, _ = run_setting(settings_registry(cfg)['mrrec_wo_local'], _ctx(memory, cfg))     # no tool: no call prefix
    assert not any(r['tool_call_prefix_used'] for r in wo_local) and all(r['answer_prefix_used'] for r in wo_local)
    native = StageContext(evaluation_queries(QUERIES, memory.users), POOL, memory, None, HashEmbedder(), cfg, RetrievalConfig(top_k=5),
                          llm_factory=lambda policy: ScriptedLLM(_reply, supports_tools=True))
    with pytest.raises(ConfigError, match='text protocol only'):
        run_setting(settings_registry(cfg)['mrrec'], native)


def test_setting_names_are_unique_and_cli_lists_them(capsys):
    reg = settings_registry(trained=True)
    assert len(reg) == len(set(reg)) and {'mrrec', 'mrrec_rl', 'query_dense', 'llm_static', 'mrrec_k10_rl'} <= set(reg)
    assert retrieve_main(['--list']) == 0
    assert 'mrrec_wo_global' in capsys.readouterr().out
    with pytest.raises(ValueError, match='levels must be a subset'): Setting('x', 'agent', levels=('records',))


def test_agent_repetition_penalty_reaches_every_generate(memory):
    seen = []
    class Recording(ScriptedLLM):
        def generate(self, conversations, tools=None, stop=None, **kw):
            seen.append(kw.get('repetition_penalty'))
            return super().generate(conversations, tools, stop, **kw)
    for cfg, want in ((AgentConfig(ablation_policy='base', repetition_penalty=1.1, answer_prefix=True), 1.1), (AgentConfig(ablation_policy='base'), None)):
        seen.clear()
        ctx = StageContext(evaluation_queries(QUERIES, memory.users), POOL, memory, None, HashEmbedder(), cfg, RetrievalConfig(top_k=5),
                           llm_factory=lambda policy: Recording(_reply))
        run_setting(settings_registry(cfg)['mrrec'], ctx)
        assert len(seen) >= 2 and set(seen) == {want}          # None: the LLM's own [llm] penalty applies
